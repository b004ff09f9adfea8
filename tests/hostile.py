"""The hostile-input corpus: malformed, truncated, looping and oversized frames.

Two families of frames, each generated lazily (the truncation class alone holds ~96,000
frames, some 9 KB long) and grouped in named classes:

* core_corpus(): Ethernet frames for the packet core and the XDP steering program, each
  with the golden config (tests/golden.py) it is meant for:
    golden         the golden frames themselves, uncut (the baseline)
    truncated      every golden frame cut at every byte offset (lengths 0 .. len-1)
    ipv4_header    IPv4 version, IHL and total length out of range, alone and combined,
                   in plain packets and in the packet an ICMP error quotes
    checksum       wrong IPv4 header / TCP / UDP / ICMP checksums (fwd checks none)
    ipv6_ext       IPv6 extension-header chains: long, looping (a header naming its own
                   type again and again), oversized, truncated at every byte, in quotes too
    fragment       IPv4/IPv6 fragments with overlapping, tiny and absurd offsets
    size           0..18-byte frames, Ethernet/VLAN headers alone, and jumbo frames up to
                   64 KiB IP packets (plus trailing junk past 64 KiB)
    mutated        20 seeded random damages per golden frame (cuts, random bytes, header
                   bytes, padding)
* gue_corpus(ep): GUE frames for fwd-redirect, addressed as `ep` (a GueEndpoints) says:
    gue_truncated  valid GUE frames cut at every byte (frame cut, and datagram cut with
                   consistent IP/UDP lengths)
    gue_header     every GUE header field out of range: byte 0 (version, C bit, hlen) all
                   256 values, proto all 256, every flag bit, private data type, next hop
                   index and hop count 0..255, hlen/hop count combinations up to 30 hops
    gue_inner      inner packets that are not what the GUE header says, bad inner IPv4/IPv6
                   headers and lengths, inner extension chains, broken ICMP quotes
    gue_outer      outer IPv4/IPv6/UDP headers out of range, fragments, checksums, ports,
                   non-host MACs
    gue_hops       hop addresses that are no unicast host (0.0.0.0, loopback, broadcast,
                   multicast, ::, v4-mapped...), hops to itself and back to the L4 node
    gue_mutated    200 seeded random damages per well-formed GUE frame (half aimed at the
                   GUE header, hops and inner header)

Expected answers come from the reference model (tests/model), never from here: this module
only builds frames. Nothing here imports fwd.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from tests import golden
from tests.golden import CLIENT4, CLIENT6, VIP4, VIP6, eth, icmp4_error, icmp6_ptb, reply_quote4, reply_quote6
from tests.model.packet import inet_checksum

GUE_PORT = 19523


@dataclass(frozen=True)
class Case:
    cls: str  # corpus class
    desc: str
    frame: bytes
    config: str = "golden"  # golden config (core corpus only)


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def _put(frame: bytes, off: int, data: bytes) -> bytes:
    return frame[:off] + data + frame[off + len(data) :]


def _put16(frame: bytes, off: int, value: int) -> bytes:
    return _put(frame, off, struct.pack("!H", value & 0xFFFF))


# ------------------------------------------------------------------------------- core corpus


def golden_frames() -> Iterator[Case]:
    """The golden frames themselves: the baseline (for the BPF programs, no other test runs them)."""
    for i, fx in enumerate(golden.fixtures()):
        yield Case("golden", f"golden #{i} ({fx.desc})", fx.frame, fx.config)


def truncated() -> Iterator[Case]:
    for i, fx in enumerate(golden.fixtures()):
        for n in range(len(fx.frame)):
            yield Case("truncated", f"golden #{i} ({fx.desc}) cut to {n} bytes", fx.frame[:n], fx.config)


def _ipv4_bases() -> list[tuple[str, bytes, str]]:
    return [
        ("tcp4", golden.tcp4(), "golden"),
        ("udp4", golden.udp4(), "golden"),
        ("tcp4 with options", golden.tcp4(options=[golden.IPOption_Router_Alert()]), "golden"),
        ("vlan tcp4", golden.tcp4(vlan=10), "golden"),
        ("icmp4 echo", bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP(type=8) / (b"p" * 32)), "golden_echo"),
        ("icmp4 frag-needed", icmp4_error(reply_quote4()), "golden"),
        ("ipv4 first fragment", golden.frag4(), "golden"),
        ("ipv4 later fragment", golden.frag4(first=False), "golden"),
        ("tcp4 to a non-VIP", golden.tcp4(dst="8.8.8.8"), "golden"),
    ]


def ipv4_header() -> Iterator[Case]:
    for name, frame, config in _ipv4_bases():
        l2 = 18 if frame[12:14] == b"\x81\x00" else 14
        ihl, tl = frame[l2] & 15, _u16(frame, l2 + 2)
        present = len(frame) - l2
        for v in range(16):
            if v != 4:
                yield Case(
                    "ipv4_header", f"{name}: version {v}", _put(frame, l2, bytes([v << 4 | ihl])), config
                )
        lengths = sorted({0, 1, 19, 20, 23, 24, tl - 1, tl, tl + 1, present, present + 1, 0xFFFF})
        for new_ihl in range(16):
            for new_tl in lengths:
                f = _put(frame, l2, bytes([0x40 | new_ihl]))
                yield Case(
                    "ipv4_header",
                    f"{name}: IHL {new_ihl}, total length {new_tl}",
                    _put16(f, l2 + 2, new_tl),
                    config,
                )
    # the packet an ICMP error quotes: version, IHL, total length
    quote = bytes(IP(src=VIP4, dst=CLIENT4, flags="DF") / TCP(sport=80, dport=45678) / (b"r" * 40))
    for qlen in (20, 23, 24, 28, 60, len(quote)):
        q = quote[:qlen]
        for v in range(16):
            for qihl in (0, 4, 5, 6, 15):
                qq = _put(q, 0, bytes([v << 4 | qihl]))
                yield Case("ipv4_header", f"quote of {qlen} bytes: version {v}, IHL {qihl}", icmp4_error(qq))
        for qtl in (0, 1, 19, 20, 40, 0xFFFF):
            yield Case(
                "ipv4_header", f"quote of {qlen} bytes: total length {qtl}", icmp4_error(_put16(q, 2, qtl))
            )


def _l4_offset(frame: bytes) -> tuple[int, int]:
    """(IP header offset, upper-layer offset) of a plain IPv4 frame or IPv6 frame without extensions."""
    l2 = 18 if frame[12:14] == b"\x81\x00" else 14
    return l2, l2 + ((frame[l2] & 15) * 4 if frame[l2] >> 4 == 4 else 40)


def checksum() -> Iterator[Case]:
    bases = [
        ("tcp4", golden.tcp4(payload=b"data"), "golden", 16),
        ("udp4", golden.udp4(), "golden", 6),
        ("tcp6", golden.tcp6(payload=b"data"), "golden", 16),
        ("udp6", golden.udp6(), "golden", 6),
        ("icmp4 echo", bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP(type=8)), "golden_echo", 2),
        ("icmp6 echo", bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest()), "golden_echo", 2),
        ("icmp4 frag-needed", icmp4_error(reply_quote4()), "golden", 2),
        ("icmp6 packet too big", icmp6_ptb(reply_quote6()), "golden", 2),
    ]
    for name, frame, config, csum_at in bases:
        l2, l4 = _l4_offset(frame)
        good = _u16(frame, l4 + csum_at)
        for bad in sorted({0, 0xFFFF, good ^ 1, good ^ 0x8000}):
            yield Case(
                "checksum", f"{name}: L4 checksum {bad:#06x}", _put16(frame, l4 + csum_at, bad), config
            )
        if frame[l2] >> 4 == 4:
            good = _u16(frame, l2 + 10)
            for bad in sorted({0, 0xFFFF, good ^ 1}):
                yield Case(
                    "checksum",
                    f"{name}: IPv4 header checksum {bad:#06x}",
                    _put16(frame, l2 + 10, bad),
                    config,
                )
    # the quoted packet's own checksums
    q = bytearray(reply_quote4())
    q[10:12] = b"\xde\xad"
    yield Case("checksum", "icmp4 error quoting a header with a bad checksum", icmp4_error(bytes(q)))


# -- IPv6 extension headers


def ext_header(nh: int, kind: int, size: int = 8) -> bytes:
    """Raw extension header of type `kind` (0, 43, 60: `size` bytes, a multiple of 8; 44: 8 bytes)."""
    if kind == 44:
        return struct.pack("!BBHI", nh, 0, 0, 0x1234)
    if kind == 43:  # routing type 4 (segment routing), segments left 0: no addresses needed
        return bytes([nh, size // 8 - 1, 4, 0]) + bytes(size - 4)
    return bytes([nh, size // 8 - 1]) + _padding(size - 2)


def _padding(n: int) -> bytes:
    """n bytes of IPv6 option padding (PadN options of at most 255 bytes, Pad1 for a last byte)."""
    out = b""
    while n > 0:
        if n == 1:
            return out + b"\0"
        run = min(n - 2, 255)
        out += bytes([1, run]) + bytes(run)
        n -= run + 2
    return out


def ext_chain(kinds: list[int], upper: int, sizes: list[int] | None = None) -> bytes:
    out = b""
    for i, kind in enumerate(kinds):
        nh = kinds[i + 1] if i + 1 < len(kinds) else upper
        out += ext_header(nh, kind, (sizes or [8] * len(kinds))[i])
    return out


def ipv6_raw(first_nh: int, payload: bytes, src=CLIENT6, dst=VIP6, plen: int | None = None) -> bytes:
    hdr = IPv6(src=src, dst=dst, nh=first_nh, plen=len(payload) if plen is None else plen)
    return bytes(eth() / hdr) + payload


TCP_HDR = bytes(TCP(sport=45678, dport=80))
UDP_HDR = bytes(UDP(sport=40000, dport=5050, len=8))


def ipv6_ext() -> Iterator[Case]:
    kinds = {"hop-by-hop": 0, "routing": 43, "dest opts": 60, "fragment": 44}
    # long and looping chains: n headers of one type (each naming its own type as the next)
    for name, k in kinds.items():
        for n in (1, 2, 7, 8, 9, 10, 16, 64, 255):
            chain = ext_chain([k] * n, 6)
            yield Case("ipv6_ext", f"{n} x {name} then TCP", ipv6_raw(k, chain + TCP_HDR))
            # a loop that never ends: the last header names its own type, the packet ends there
            yield Case("ipv6_ext", f"{n} x {name}, looping to the end", ipv6_raw(k, ext_chain([k] * n, k)))
    # mixed long chains, the walk limit (8) straddled, with every upper layer
    cycle = [0, 43, 60, 44]
    for n in range(1, 13):
        kind_list = [cycle[i % 4] for i in range(n)]
        for upper, body in ((6, TCP_HDR), (17, UDP_HDR), (58, b"\x80\0\0\0\0\0\0\0"), (59, b"")):
            dst = golden.VIP6_MIXED if upper == 17 else VIP6
            yield Case(
                "ipv6_ext",
                f"mixed chain of {n}, upper {upper}",
                ipv6_raw(0, ext_chain(kind_list, upper) + body, dst=dst),
                "golden_echo",
            )
    # oversized headers: hdr ext len 255 (2048 bytes), present or not
    big = ext_header(6, 60, 2048)
    yield Case("ipv6_ext", "2048-byte dest opts then TCP", ipv6_raw(60, big + TCP_HDR))
    yield Case("ipv6_ext", "2048-byte dest opts claimed, 8 present", ipv6_raw(60, big[:8] + TCP_HDR))
    yield Case(
        "ipv6_ext",
        "8 x 2048-byte dest opts then TCP",
        ipv6_raw(60, ext_chain([60] * 8, 6, [2048] * 8) + TCP_HDR),
    )
    # truncated: a 4-header chain cut at every byte, payload length consistent and not
    chain = ext_chain([0, 43, 44, 60], 6) + TCP_HDR
    for n in range(len(chain)):
        yield Case("ipv6_ext", f"chain cut at {n}, length consistent", ipv6_raw(0, chain[:n]))
        yield Case(
            "ipv6_ext", f"chain cut at {n}, length of the whole", ipv6_raw(0, chain[:n], plen=len(chain))
        )
    # the same in the packet an ICMPv6 packet-too-big quotes (VIP -> client)
    for n in (1, 8, 9, 64):
        for loop in (False, True):
            q = bytes(IPv6(src=VIP6, dst=CLIENT6, nh=60))
            q += ext_chain([60] * n, 60 if loop else 6) + (b"" if loop else bytes(TCP(sport=80, dport=45678)))
            yield Case("ipv6_ext", f"PTB quoting {n} dest opts{' looping' if loop else ''}", icmp6_ptb(q))
    q = (
        bytes(IPv6(src=VIP6, dst=CLIENT6, nh=0))
        + ext_chain([0, 43, 44, 60], 6)
        + bytes(TCP(sport=80, dport=45678))
    )
    for n in range(40, len(q)):
        yield Case("ipv6_ext", f"PTB quote with a chain, cut at {n}", icmp6_ptb(q[:n]))


# -- fragments


def _frag4(
    offset: int, mf: bool, proto: int, body: bytes, ipid: int = 0x4242, df: bool = False, dst=VIP4
) -> bytes:
    flags = (0x2000 if mf else 0) | (0x4000 if df else 0)
    ip = IP(src=CLIENT4, dst=dst, id=ipid, proto=proto)
    raw = bytearray(bytes(ip / body))
    struct.pack_into("!H", raw, 6, flags | offset)
    raw[10:12] = b"\0\0"  # checksum: not checked by fwd; recomputed for realism
    struct.pack_into("!H", raw, 10, inet_checksum(bytes(raw[:20])))
    return bytes(eth())[:12] + b"\x08\x00" + bytes(raw)


def _frag6(offset: int, m: bool, nh: int, body: bytes, ident: int = 0xABCD1234, res: int = 0) -> bytes:
    fh = struct.pack("!BBHI", nh, res & 0xFF, offset << 3 | (res >> 8 & 6) | int(m), ident)
    return ipv6_raw(44, fh + body)


def fragment() -> Iterator[Case]:
    tcp = bytes(TCP(sport=45678, dport=80)) + b"x" * 24
    for proto, body in (
        (6, tcp),
        (17, bytes(UDP(sport=5353, dport=53, len=52)) + b"y" * 44),
        (1, b"\x08" + bytes(31)),
    ):
        for off in (0, 1, 2, 3, 184, 185, 4096, 8189, 8190, 8191):
            for mf in (False, True):
                for df in (False, True):
                    yield Case(
                        "fragment",
                        f"ipv4 proto {proto} offset {off} MF {mf} DF {df}",
                        _frag4(off, mf, proto, body, df=df),
                        "golden_echo",
                    )
    # overlapping series (one datagram id): a first fragment, then pieces rewriting its ports
    yield Case("fragment", "overlap: first fragment", _frag4(0, True, 6, tcp, ipid=7))
    for off in (0, 1, 2):
        yield Case(
            "fragment",
            f"overlap: offset {off} rewrites the header",
            _frag4(off, True, 6, bytes(TCP(sport=1, dport=22)), ipid=7),
        )
    yield Case("fragment", "overlap: last fragment over everything", _frag4(0, False, 6, tcp + tcp, ipid=7))
    # tiny first fragments: fewer bytes than the ports
    for n in (0, 1, 2, 3, 4, 8, 12, 19):
        yield Case("fragment", f"ipv4 first fragment with {n} bytes of TCP", _frag4(0, True, 6, tcp[:n]))
        yield Case("fragment", f"ipv6 first fragment with {n} bytes of TCP", _frag6(0, True, 6, tcp[:n]))
    # absurd: offset * 8 + length past 65535, fragments of 64 KiB
    yield Case(
        "fragment",
        "ipv4 offset 8191 with 1400 bytes (ends past 64 KiB)",
        _frag4(8191, False, 6, b"z" * 1400),
        "golden_jumbo",
    )
    yield Case(
        "fragment", "ipv4 fragment of 65535 bytes", _frag4(100, True, 17, b"z" * (65535 - 20)), "golden_jumbo"
    )
    for off in (0, 1, 8191):
        for m in (False, True):
            yield Case("fragment", f"ipv6 offset {off} M {m}", _frag6(off, m, 6, tcp))
            yield Case(
                "fragment",
                f"ipv6 ICMPv6 fragment offset {off} M {m}",
                _frag6(off, m, 58, b"\x80" + bytes(15)),
                "golden_echo",
            )
    yield Case("fragment", "ipv6 fragment, reserved bits set", _frag6(0, True, 6, tcp, res=0x1FF))
    yield Case(
        "fragment", "ipv6 two fragment headers", _frag6(0, True, 44, struct.pack("!BBHI", 6, 0, 1, 9) + tcp)
    )
    yield Case(
        "fragment", "ipv6 fragment header then dest opts", _frag6(0, True, 60, ext_header(6, 60) + tcp)
    )
    yield Case("fragment", "ipv6 later fragment claiming an ext header", _frag6(50, False, 60, b"\xff" * 16))
    yield Case("fragment", "ipv6 fragment with nothing after it", _frag6(0, True, 6, b""))
    yield Case(
        "fragment",
        "ipv6 fragment of 65535 payload bytes",
        _frag6(1, True, 17, b"z" * (65535 - 8)),
        "golden_jumbo",
    )
    # a quoted fragment in an ICMP error
    yield Case(
        "fragment", "icmp4 error quoting a later fragment", icmp4_error(_frag4(185, False, 6, tcp)[14:][:28])
    )


# -- sizes


def size() -> Iterator[Case]:
    full = golden.tcp4()
    for n in range(0, 19):
        yield Case("size", f"{n}-byte frame of zeros", bytes(n))
        yield Case("size", f"{n}-byte frame of 0xff", b"\xff" * n)
    for etype in (0x0800, 0x86DD, 0x8100, 0x0806, 0x88A8, 0x0000, 0xFFFF):
        yield Case("size", f"Ethernet header alone, type {etype:#06x}", full[:12] + struct.pack("!H", etype))
        for inner in (0x0800, 0x86DD, 0x8100):
            yield Case(
                "size",
                f"{etype:#06x} / {inner:#06x} tag alone",
                full[:12] + struct.pack("!HHH", etype, 5, inner),
            )
    yield Case(
        "size",
        "double VLAN tag then IPv4",
        full[:12] + struct.pack("!HHHH", 0x8100, 5, 0x8100, 6) + full[14:],
    )
    yield Case("size", "802.1ad tag then IPv4", full[:12] + struct.pack("!HH", 0x88A8, 5) + full[12:])
    # jumbo frames: every size class, to a VIP and not, with each config's MTU
    for total in (1500, 1501, 3000, 4096, 9000, 9001, 16384, 65535):
        for config in ("golden", "golden_jumbo"):
            for df in (False, True):
                flags = "DF" if df else 0
                t4 = golden.tcp4(payload=b"J" * (total - 40), flags=flags)
                yield Case("size", f"tcp4 of {total} bytes DF {df}", t4, config)
            t6 = golden.tcp6(payload=b"J" * (total - 60))
            yield Case("size", f"tcp6 of {total} bytes", t6, config)
        yield Case(
            "size",
            f"tcp4 of {total} bytes to a non-VIP",
            golden.tcp4(dst="8.8.8.8", payload=b"J" * (total - 40)),
        )
    yield Case(
        "size",
        "udp4 of 65535 bytes, UDP length 0",
        _put16(golden.udp4(payload=b"u" * (65535 - 28)), 14 + 24, 0),
        "golden_jumbo",
    )
    yield Case(
        "size",
        "icmp4 echo of 65535 bytes",
        bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP(type=8) / (b"p" * (65535 - 28))),
        "golden_echo",
    )
    # IPv6 jumbogram: payload length 0 and a hop-by-hop jumbo option
    jumbo_opt = bytes([6, 0, 0xC2, 4]) + struct.pack("!I", 70000)
    yield Case(
        "size",
        "ipv6 jumbogram (payload length 0, jumbo option)",
        ipv6_raw(0, jumbo_opt + TCP_HDR + b"j" * 69952, plen=0),
        "golden_jumbo",
    )
    # trailing junk: a small packet in a huge frame, and a frame past 64 KiB
    yield Case("size", "tcp4 SYN + 65000 bytes of junk", full + b"\xa5" * 65000)
    yield Case("size", "tcp4 SYN + 100000 bytes of junk", full + b"\xa5" * 100000)
    yield Case(
        "size",
        "65535-byte IPv4 + 100 bytes of junk",
        golden.tcp4(payload=b"J" * (65535 - 40), flags="DF") + b"\xa5" * 100,
        "golden_jumbo",
    )


# -- random mutations (seeded: the same frames on every run)

HEADER_BYTES = (12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 34, 35, 36, 37, 38, 39, 40, 41,
                42, 43, 46, 47, 54, 55, 56, 57, 58, 59, 60, 61, 62, 74, 75, 76, 77)  # fmt: skip


def mutate(rnd: random.Random, frame: bytes) -> bytes:
    """One random damage: a cut, 1-3 random bytes, a header byte, padding, or a shortened tail."""
    b = bytearray(frame)
    kind = rnd.randrange(5)
    if kind == 0:
        return bytes(b[: rnd.randrange(len(b) + 1)])
    if kind == 1 and len(b) > 14:
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(14, len(b))] = rnd.randrange(256)
        return bytes(b)
    if kind == 2:
        i = rnd.choice(HEADER_BYTES)
        if i < len(b):
            b[i] = rnd.randrange(256)
        return bytes(b)
    if kind == 3:
        return bytes(b) + bytes(rnd.randrange(1, 40))
    return bytes(b[: -rnd.randrange(1, 9)]) if len(b) > 20 else bytes(b)


def mutated(per_frame: int = 20) -> Iterator[Case]:
    rnd = random.Random(7)
    for i, fx in enumerate(golden.fixtures()):
        for k in range(per_frame):
            yield Case("mutated", f"golden #{i} ({fx.desc}), mutation {k}", mutate(rnd, fx.frame), fx.config)


CORE_CLASSES: dict[str, Callable[[], Iterator[Case]]] = {
    "golden": golden_frames,
    "truncated": truncated,
    "ipv4_header": ipv4_header,
    "checksum": checksum,
    "ipv6_ext": ipv6_ext,
    "fragment": fragment,
    "size": size,
    "mutated": mutated,
}


def core_corpus() -> Iterator[Case]:
    for gen in CORE_CLASSES.values():
        yield from gen()


# -------------------------------------------------------------------------------- GUE corpus


@dataclass(frozen=True)
class GueEndpoints:
    """Where the GUE corpus's frames go: the receiver's MAC and addresses, the allowed L4 node
    that sends them, a not-allowed source, the hops and the inner flow's addresses."""

    dst_mac: str
    src_mac: str
    l4: tuple[str, str]  # allowed outer source (IPv4, IPv6)
    node: tuple[str, str]  # outer destination: the receiving node
    rogue: tuple[str, str]  # not allowed
    hop: tuple[str, str]  # a routable next hop
    client: tuple[str, str]  # inner source (no local socket)
    vip: tuple[str, str]  # inner destination


def gue_header(hops: list[str], inner_proto: int, next_hop: int = 0) -> bytes:
    """GUE base header + GLB private data + hops (docs/packet-core.md §4)."""
    hop_bytes = b"".join(ipaddress.ip_address(h).packed for h in hops)
    v6 = bool(hops) and ipaddress.ip_address(hops[0]).version == 6
    hlen = 1 + len(hop_bytes) // 4
    return struct.pack("!BBHHBB", hlen, inner_proto, 0, int(v6), next_hop, len(hops)) + hop_bytes


def gue_frame(
    ep: GueEndpoints,
    family: int,
    payload: bytes,
    *,
    src: str | None = None,
    dst_mac: str | None = None,
    options: bytes = b"",
    udp_len: int | None = None,
    ip_len: int | None = None,
) -> bytes:
    """Ethernet + outer IP of `family` (l4 -> node; IPv4: ID 0, DF, TTL 64, `options`) + UDP
    40000 -> 19523 (checksum 0 over IPv4, computed over IPv6) + payload; the UDP length and
    the IP total / payload length can be overridden (checksums are computed before)."""
    s = ipaddress.ip_address(src or ep.l4[family == 6]).packed
    d = ipaddress.ip_address(ep.node[family == 6]).packed
    n = 8 + len(payload)
    if family == 4:
        ihl = 5 + len(options) // 4
        ip = bytearray(
            struct.pack("!BBHHHBBH", 0x40 | ihl, 0, ihl * 4 + n, 0, 0x4000, 64, 17, 0) + s + d + options
        )
        struct.pack_into("!H", ip, 10, inet_checksum(bytes(ip)))
        udp = struct.pack("!HHHH", 40000, GUE_PORT, n, 0)
        if ip_len is not None:
            struct.pack_into("!H", ip, 2, ip_len)
    else:
        ip = bytearray(struct.pack("!IHBB", 6 << 28, n, 17, 64) + s + d)
        pseudo = s + d + struct.pack("!I3xB", n, 17)
        csum = inet_checksum(pseudo + struct.pack("!HHHH", 40000, GUE_PORT, n, 0) + payload) or 0xFFFF
        udp = struct.pack("!HHHH", 40000, GUE_PORT, n, csum)
        if ip_len is not None:
            struct.pack_into("!H", ip, 4, ip_len)
    if udp_len is not None:
        udp = udp[:4] + struct.pack("!H", udp_len) + udp[6:]
    macs = _mac(dst_mac or ep.dst_mac) + _mac(ep.src_mac)
    return macs + (b"\x08\x00" if family == 4 else b"\x86\xdd") + bytes(ip) + udp + payload


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@cache
def _inner(ep: GueEndpoints, family: int, kind: str) -> bytes:
    ip = IP(src=ep.client[0], dst=ep.vip[0]) if family == 4 else IPv6(src=ep.client[1], dst=ep.vip[1])
    if kind == "udp":
        return bytes(ip / UDP(sport=5353, dport=53) / b"query")
    if kind == "syn":
        return bytes(ip / TCP(sport=33000, dport=80, flags="S"))
    return bytes(ip / TCP(sport=33000, dport=80, flags="A", seq=1, ack=2) / b"data")


def _valid_gue(ep: GueEndpoints) -> list[tuple[str, int, bytes]]:
    """(name, outer family, GUE payload) of well-formed GUE: every family combination."""
    out = []
    for of in (4, 6):
        for inf in (4, 6):
            for hf in (4, 6):
                hops = [ep.hop[hf == 6]]
                for kind in ("ack", "udp"):
                    payload = gue_header(hops, 4 if inf == 4 else 41) + _inner(ep, inf, kind)
                    out.append((f"outer v{of} inner v{inf} {kind} hop v{hf}", of, payload))
        out.append((f"outer v{of}, no hops", of, gue_header([], 4) + _inner(ep, 4, "ack")))
    return out


def gue_truncated(ep: GueEndpoints) -> Iterator[Case]:
    for name, of, payload in _valid_gue(ep):
        frame = gue_frame(ep, of, payload)
        for n in range(14, len(frame)):
            yield Case("gue_truncated", f"{name}: frame cut to {n}", frame[:n])
        for n in range(len(payload)):
            yield Case(
                "gue_truncated", f"{name}: datagram cut to {n} GUE bytes", gue_frame(ep, of, payload[:n])
            )


def gue_header_cases(ep: GueEndpoints) -> Iterator[Case]:
    t4 = _inner(ep, 4, "ack")
    for of in (4, 6):
        base = gue_header([ep.hop[0]], 4) + t4  # hlen 2, proto 4, type 0, next 0, count 1

        def case(desc: str, payload: bytes, of=of) -> Case:
            return Case("gue_header", f"outer v{of}: {desc}", gue_frame(ep, of, payload))

        for b0 in range(256):
            yield case(
                f"byte 0 = {b0:#04x} (version {b0 >> 6}, C {b0 >> 5 & 1}, hlen {b0 & 31})",
                _put(base, 0, bytes([b0])),
            )
        for proto in range(256):
            yield case(f"proto {proto}", _put(base, 1, bytes([proto])))
        for bit in range(16):
            yield case(f"flags bit {bit}", _put16(base, 2, 1 << bit))
        yield case("flags 0xffff", _put16(base, 2, 0xFFFF))
        for ptype in (1, 2, 3, 0x80, 0x100, 0x8000, 0xFFFF):
            yield case(f"private type {ptype:#x}", _put16(base, 4, ptype))
        for nxt in range(256):
            yield case(f"next hop {nxt} of 1", _put(base, 6, bytes([nxt])))
        for cnt in range(256):
            yield case(f"hop count {cnt}, hlen 2", _put(base, 7, bytes([cnt])))
            yield case(f"hop count {cnt}, hlen 2, type 1", _put16(_put(base, 7, bytes([cnt])), 4, 1))
        # hlen and hop count consistent, the hops absent / present / up to the 5-bit maximum
        for hv, size in ((4, 4), (6, 16)):
            words = size // 4
            for cnt in range(0, 31 // words + 1):
                hlen = 1 + cnt * words
                hdr = struct.pack("!BBHHBB", hlen, 4, 0, int(hv == 6), 0, cnt)
                yield case(f"{cnt} IPv{hv} hops declared, none present", hdr + t4)
                hops = [ep.hop[hv == 6]] * cnt
                for nxt in sorted({0, max(cnt - 1, 0), cnt, cnt + 1}):
                    yield case(f"{cnt} IPv{hv} hops, next {nxt}", gue_header(hops, 4, nxt) + t4)


def gue_inner(ep: GueEndpoints) -> Iterator[Case]:
    hop = [ep.hop[0]]
    for of in (4, 6):

        def case(desc: str, inner: bytes, proto: int = 4, of=of) -> Case:
            return Case(
                "gue_inner", f"outer v{of}: {desc}", gue_frame(ep, of, gue_header(hop, proto) + inner)
            )

        t4, t6 = _inner(ep, 4, "ack"), _inner(ep, 6, "ack")
        yield case("proto 4 carrying IPv6", t6, 4)
        yield case("proto 41 carrying IPv4", t4, 41)
        for v in range(16):
            yield case(f"inner IPv4 version {v}", _put(t4, 0, bytes([v << 4 | 5])))
            yield case(f"inner IPv6 version {v}", _put(t6, 0, bytes([v << 4 | (t6[0] & 15)])), 41)
        for ihl in range(16):
            for tl in (0, 19, 20, ihl * 4 - 1, ihl * 4, len(t4) - 1, len(t4), len(t4) + 1, 0xFFFF):
                yield case(
                    f"inner IHL {ihl} total length {tl}", _put16(_put(t4, 0, bytes([0x40 | ihl])), 2, tl)
                )
        for plen in (0, 1, 19, 20, len(t6) - 41, len(t6) - 40, len(t6) - 39, 0xFFFF):
            yield case(f"inner IPv6 payload length {plen}", _put16(t6, 4, plen), 41)
        for n in range(len(t4)):
            yield case(
                f"inner IPv4 cut to {n}, lengths consistent", _put16(t4[:n], 2, n) if n >= 4 else t4[:n]
            )
        for n in range(len(t6)):
            yield case(
                f"inner IPv6 cut to {n}, lengths consistent",
                _put16(t6[:n], 4, n - 40) if n >= 40 else t6[:n],
                41,
            )
        for doff in range(16):
            yield case(f"inner TCP data offset {doff}", _put(t4, 32, bytes([doff << 4])))
        # inner fragments, inner extension chains
        yield case("inner IPv4 later fragment", _put16(t4, 6, 100))
        yield case("inner IPv4 first fragment", _put16(t4, 6, 0x2000))
        tcp6 = bytes(TCP(sport=33000, dport=80, flags="A"))
        for n in (1, 7, 8, 9, 64):
            for loop in (False, True):
                body = ext_chain([60] * n, 60 if loop else 6) + (b"" if loop else tcp6)
                ip6 = bytes(IPv6(src=ep.client[1], dst=ep.vip[1], nh=60, plen=len(body))) + body
                yield case(f"inner IPv6 with {n} dest opts{' looping' if loop else ''}", ip6, 41)
        body = ext_chain([0, 43, 44, 60], 6) + tcp6
        for n in range(len(body)):
            ip6 = bytes(IPv6(src=ep.client[1], dst=ep.vip[1], nh=0, plen=n)) + body[:n]
            yield case(f"inner IPv6 chain cut at {n}", ip6, 41)
        # inner ICMP errors with broken quotes
        q4 = bytes(IP(src=ep.vip[0], dst=ep.client[0]) / TCP(sport=80, dport=33000))
        for n in range(len(q4) + 1):
            err = bytes(IP(src="198.51.100.1", dst=ep.vip[0]) / ICMP(type=3, code=4) / q4[:n])
            yield case(f"inner ICMP error, quote of {n} bytes", err)
        for qihl in (0, 4, 15):
            err = bytes(
                IP(src="198.51.100.1", dst=ep.vip[0])
                / ICMP(type=3, code=4)
                / _put(q4, 0, bytes([0x40 | qihl]))
            )
            yield case(f"inner ICMP error, quote IHL {qihl}", err)
        q6 = bytes(IPv6(src=ep.vip[1], dst=ep.client[1]) / TCP(sport=80, dport=33000))
        for n in range(0, len(q6) + 1, 4):
            err = bytes(IPv6(src="fd99:99::1", dst=ep.vip[1]) / b"\x02\0\0\0\0\0\x05\0" / q6[:n])
            err = _put(err, 6, bytes([58]))
            yield case(f"inner ICMPv6 PTB, quote of {n} bytes", err, 41)


def gue_outer(ep: GueEndpoints) -> Iterator[Case]:
    payload = gue_header([ep.hop[0]], 4) + _inner(ep, 4, "ack")
    good4 = gue_frame(ep, 4, payload)
    for ihl in range(16):
        yield Case("gue_outer", f"outer IHL {ihl}", _put(good4, 14, bytes([0x40 | ihl])))
    for v in range(16):
        yield Case("gue_outer", f"outer IPv4 version {v}", _put(good4, 14, bytes([v << 4 | 5])))
        yield Case(
            "gue_outer", f"outer IPv6 version {v}", _put(gue_frame(ep, 6, payload), 14, bytes([v << 4]))
        )
    n = len(payload) + 8
    for ul in sorted({0, 1, 7, 8, 9, 15, 16, n - 1, n, n + 1, 0xFFFF}):
        yield Case("gue_outer", f"outer v4 UDP length {ul}", gue_frame(ep, 4, payload, udp_len=ul))
        yield Case("gue_outer", f"outer v6 UDP length {ul}", gue_frame(ep, 6, payload, udp_len=ul))
    for il in sorted({0, 1, 19, 20, 27, 28, n + 19, n + 20, n + 21, 0xFFFF}):
        yield Case("gue_outer", f"outer IPv4 total length {il}", gue_frame(ep, 4, payload, ip_len=il))
    for pl in sorted({0, 1, 7, 8, n - 1, n, n + 1, 0xFFFF}):
        yield Case("gue_outer", f"outer IPv6 payload length {pl}", gue_frame(ep, 6, payload, ip_len=pl))
    for ff in (0x2000, 0x0001, 0x1FFF, 0x3FFF, 0x6000, 0x8000):
        yield Case("gue_outer", f"outer IPv4 flags/offset {ff:#06x}", _put16(good4, 20, ff))
    yield Case(
        "gue_outer",
        "outer IPv4 options (IHL 15)",
        gue_frame(ep, 4, payload, options=b"\x01" * 40),
    )
    yield Case("gue_outer", "outer IPv4 header checksum wrong", _put16(good4, 24, _u16(good4, 24) ^ 1))
    yield Case("gue_outer", "outer IPv4 UDP checksum nonsense", _put16(good4, 14 + 20 + 6, 0x1234))
    good6 = gue_frame(ep, 6, payload)
    yield Case("gue_outer", "outer IPv6 UDP checksum 0", _put16(good6, 54 + 6, 0))
    yield Case("gue_outer", "outer IPv6 UDP checksum wrong", _put16(good6, 54 + 6, _u16(good6, 60) ^ 1))
    for port in (GUE_PORT - 1, GUE_PORT + 1, 0):
        yield Case("gue_outer", f"UDP port {port}", _put16(good4, 14 + 20 + 2, port))
    for of in (4, 6):
        yield Case(
            "gue_outer",
            f"outer v{of} from a source not allowed",
            gue_frame(ep, of, payload, src=ep.rogue[of == 6]),
        )
        for mac in ("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "02:00:00:00:00:99"):
            yield Case("gue_outer", f"outer v{of} to MAC {mac}", gue_frame(ep, of, payload, dst_mac=mac))
    # IPv6 outer with extension headers before UDP: not GUE for fwd-redirect (left to the kernel)
    udp = bytes(UDP(sport=40000, dport=GUE_PORT, len=8 + len(payload))) + payload
    for k in (0, 60, 44):
        ip6 = bytes(
            Ether(dst=ep.dst_mac, src=ep.src_mac)
            / IPv6(src=ep.l4[1], dst=ep.node[1], nh=k, plen=8 + len(udp))
        )
        yield Case("gue_outer", f"outer IPv6 with ext header {k} before UDP", ip6 + ext_header(17, k) + udp)
    # not IP at all / VLAN-tagged GUE
    yield Case("gue_outer", "VLAN-tagged GUE", good4[:12] + struct.pack("!HH", 0x8100, 5) + good4[12:])


def gue_hops(ep: GueEndpoints) -> Iterator[Case]:
    t4 = _inner(ep, 4, "ack")
    hostile4 = ["0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1", "239.255.255.250", "169.254.0.1",
                ep.vip[0], ep.node[0], ep.l4[0]]  # fmt: skip
    hostile6 = ["::", "::1", "ff02::1", "fe80::1", "::ffff:" + ep.hop[0], ep.vip[1], ep.node[1], ep.l4[1]]
    for of in (4, 6):
        for h in hostile4 + hostile6:
            yield Case("gue_hops", f"outer v{of}: hop {h}", gue_frame(ep, of, gue_header([h], 4) + t4))
        # a hop list bouncing between the node and the hop, at every position
        bounce = [ep.node[0], ep.hop[0]] * 15
        for nxt in range(0, 31, 5):
            yield Case(
                "gue_hops",
                f"outer v{of}: 30 bouncing hops, next {nxt}",
                gue_frame(ep, of, gue_header(bounce, 4, nxt) + t4),
            )


def gue_mutated(ep: GueEndpoints, per_frame: int = 100) -> Iterator[Case]:
    rnd = random.Random(19523)
    for name, of, payload in _valid_gue(ep):
        frame = gue_frame(ep, of, payload)
        for k in range(per_frame):
            b = bytearray(frame)  # GUE-aimed: the GUE header, hops and inner header bytes
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(14, min(len(b), 14 + 48 + 8 + 8 + 16 + 40))] = rnd.randrange(256)
            yield Case("gue_mutated", f"{name}: GUE mutation {k}", bytes(b))
            yield Case("gue_mutated", f"{name}: mutation {k}", mutate(rnd, frame))


def gue_corpus(ep: GueEndpoints) -> Iterator[Case]:
    for gen in GUE_CLASSES.values():
        yield from gen(ep)


GUE_CLASSES: dict[str, Callable[[GueEndpoints], Iterator[Case]]] = {
    "gue_truncated": gue_truncated,
    "gue_header": gue_header_cases,
    "gue_inner": gue_inner,
    "gue_outer": gue_outer,
    "gue_hops": gue_hops,
    "gue_mutated": gue_mutated,
}


def sizes(ep: GueEndpoints | None = None) -> dict[str, int]:
    """Frames per class (the GUE classes when endpoints are given)."""
    out = {name: sum(1 for _ in gen()) for name, gen in CORE_CLASSES.items()}
    if ep is not None:
        out |= {name: sum(1 for _ in gen(ep)) for name, gen in GUE_CLASSES.items()}
    return out


if __name__ == "__main__":
    for name, n in sizes().items():
        print(f"{name:12} {n}")
