"""Packet model: the verdict and output frame fwd must produce for an input frame.

docs/packet-core.md §2 (classification), §3 (flow hash), §4 (GUE) and §5 (ICMP
replies), written as straight-line Python. Parsing reads bytes with struct so
that each check of the spec is one visible line; output frames are built with
scapy layers (GUE as raw bytes: scapy has no GUE dissector) and every checksum
is verified independently with inet_checksum().

Where the spec does not fix the answer, Expected.ambiguous says why (the
verdict given is then only the model's best guess; tests do not compare it).
docs/packet-core.md's "Edge cases" table now fixes every case the model once
left open; the model follows it (each such line cites the table).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from .config import HASH_FIELDS, Bind, ModelConfig
from .siphash import siphash24_le
from .table import lookup

GUE_PORT = 19523
ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
IPV6_EXT = (0, 43, 60, 44)  # hop-by-hop, routing, destination options, fragment
MAX_EXT = 8
REPLY_LIMIT4 = 576  # largest ICMPv4 reply (IPv4 total length)
REPLY_LIMIT6 = 1280  # largest ICMPv6 reply (whole IPv6 packet)


@dataclass
class Expected:
    verdict: str  # pass | forward | drop | reply
    reason: str | None = None  # drop reason
    bind: int | None = None  # global bind index
    table: int | None = None
    primary: int | None = None
    secondary: int | None = None
    row: int | None = None
    flow_hash: int | None = None
    gue_sport: int | None = None
    frame: bytes | None = None  # output frame (FORWARD and REPLY)
    ambiguous: str | None = None  # set when docs/packet-core.md leaves the answer open
    note: str = ""  # how the model got there (for failure messages)


class _Done(Exception):
    """Raised to stop classification with a final answer."""

    def __init__(self, expected: Expected):
        self.expected = expected


def _pass(note: str = "") -> None:
    raise _Done(Expected("pass", note=note))


def _drop(reason: str, note: str = "", **kw) -> None:
    raise _Done(Expected("drop", reason, note=note, **kw))


def u16(b: bytes, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("!I", b, off)[0]


# ---------------------------------------------------------------- checksums


def inet_checksum(data: bytes) -> int:
    """RFC 1071 one's complement sum, complemented."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo_header6(src: bytes, dst: bytes, length: int, nh: int) -> bytes:
    return src + dst + struct.pack("!I3xB", length, nh)


def verify_checksums(frame: bytes, l2_len: int) -> None:
    """Independent check of the checksums in a frame the model built (raises AssertionError)."""
    ip = frame[l2_len:]
    if ip[0] >> 4 == 4:
        assert inet_checksum(ip[:20]) == 0, "model built a bad IPv4 header checksum"
        tl = u16(ip, 2)
        if ip[9] == IPPROTO_ICMP:
            assert inet_checksum(ip[20:tl]) == 0, "model built a bad ICMP checksum"
        if ip[9] == IPPROTO_UDP:
            assert u16(ip, 26) == 0, "outer UDP checksum over IPv4 must be 0"
    else:
        plen = u16(ip, 4)
        body = ip[40 : 40 + plen]
        ph = pseudo_header6(ip[8:24], ip[24:40], plen, ip[6])
        assert inet_checksum(ph + body) == 0, "model built a bad IPv6 upper-layer checksum"
        if ip[6] == IPPROTO_UDP:
            assert u16(body, 6) != 0, "UDP checksum over IPv6 may not be 0"


# ---------------------------------------------------------------- parsing


@dataclass
class _Flow:
    """What classification hands to hashing: the (possibly reversed) flow and its bind."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    hint: int
    bind: int
    table: int
    bind_obj: Bind
    icmp_error: bool = False


def walk_ext(pkt: bytes, nh: int, off: int):
    """Walk IPv6 extension headers from `off` (bounded by len(pkt)).

    Returns (upper-layer protocol, its offset, fragment identification or None), or
    raises ValueError("too_long") / ValueError("past_end").
    """
    count = 0
    frag_id = None
    while nh in IPV6_EXT:
        count += 1
        if count > MAX_EXT:
            # the 9th header, complete or not: edge cases, "a 9th IPv6 extension header that
            # also runs past the packet -> bad_ipv6 (the count is checked first)"
            raise ValueError("too_long")
        if nh == 44:  # fragment header: fixed 8 bytes
            if off + 8 > len(pkt):
                raise ValueError("past_end")
            frag_id = u32(pkt, off + 4)
            nxt, hlen = pkt[off], 8
        else:
            if off + 2 > len(pkt):
                raise ValueError("past_end")
            nxt, hlen = pkt[off], (pkt[off + 1] + 1) * 8
            if off + hlen > len(pkt):
                raise ValueError("past_end")
        nh, off = nxt, off + hlen
    return nh, off, frag_id


def _in_prefix(addr: bytes, prefix) -> bool:
    a = ipaddress.ip_address(addr)
    return a.version == prefix.version and a in prefix


def _match_bind(cfg: ModelConfig, dst: bytes, proto: int | None, dport: int | None):
    """First bind (config order) holding dst, with proto (None: any) and dport (None: any)."""
    for gi, ti, b in cfg.binds():
        if not _in_prefix(dst, b.prefix):
            continue
        if proto is not None and b.proto_number != proto:
            continue
        if dport is not None and not b.port_lo <= dport <= b.port_hi:
            continue
        return gi, ti, b
    return None


def _classify(frame: bytes, cfg: ModelConfig):
    """docs §2. Returns (l2_len, vlan_tci or None, ip_packet, flow, may_fragment)."""
    # -- Ethernet / 802.1Q
    if len(frame) < 14:
        _drop("truncated", "shorter than an Ethernet header")
    etype, l2, tci = u16(frame, 12), 14, None
    if etype == ETH_VLAN:
        if len(frame) < 18:
            _drop("truncated", "shorter than Ethernet + 802.1Q")
        tci, etype, l2 = u16(frame, 14), u16(frame, 16), 18
    if etype not in (ETH_IPV4, ETH_IPV6):
        _pass(f"EtherType {etype:#06x}")
    present = frame[l2:]

    # -- IP header
    if etype == ETH_IPV4:
        if len(present) < 20:
            _drop("truncated", "shorter than an IPv4 header")
        ver, ihl, tl = present[0] >> 4, present[0] & 15, u16(present, 2)
        if ver != 4 or ihl < 5 or tl < ihl * 4:
            _drop("bad_ipv4", f"version {ver} IHL {ihl} total length {tl}")
        if tl > len(present) or ihl * 4 > len(present):
            _drop("truncated", f"IPv4 total length {tl} > {len(present)} bytes present")
        pkt = present[:tl]
        src, dst, proto = pkt[12:16], pkt[16:20], pkt[9]
        flags_frag = u16(pkt, 6)
        is_frag = bool(flags_frag & 0x2000) or (flags_frag & 0x1FFF) != 0
        df = bool(flags_frag & 0x4000)
        l4off, frag_hint, echo_hint = ihl * 4, u16(pkt, 4), u16(pkt, 4)
        icmp_proto = IPPROTO_ICMP
    else:
        if len(present) < 40:
            _drop("truncated", "shorter than an IPv6 header")
        ver, plen = present[0] >> 4, u16(present, 4)
        if ver != 6 or plen == 0:
            _drop("bad_ipv6", f"version {ver} payload length {plen}")
        if 40 + plen > len(present):
            _drop("truncated", f"IPv6 40 + payload length {plen} > {len(present)} present")
        pkt = present[: 40 + plen]
        src, dst = pkt[8:24], pkt[24:40]
        df = True  # IPv6 packets are never fragmented on the way
        echo_hint = u32(pkt, 0) & 0xFFFF  # low 16 bits of the flow label
        icmp_proto = IPPROTO_ICMPV6

    # -- VIP test: nothing else is parsed for traffic that is not ours
    if not any(_in_prefix(dst, b.prefix) for _, _, b in cfg.binds()):
        _pass("destination is not in any bind prefix")

    if etype == ETH_IPV6:
        try:
            proto, l4off, frag_id = walk_ext(pkt, pkt[6], 40)
        except ValueError as e:
            if str(e) == "too_long":
                _drop("bad_ipv6", "more than 8 extension headers")
            _drop("truncated", "extension header runs past the packet")
        is_frag = frag_id is not None
        frag_hint = (frag_id or 0) & 0xFFFF

    l4 = pkt[l4off:]
    ctx = (l2, tci, pkt, df)

    # -- upper layer
    if proto in (IPPROTO_TCP, IPPROTO_UDP):
        if is_frag:
            m = _match_bind(cfg, dst, proto, None)
            if m is None:
                _pass("fragment: no bind for this address and protocol")
            return ctx, _Flow(src, dst, 0, 0, frag_hint, m[0], m[1], m[2])
        if proto == IPPROTO_TCP:
            if len(l4) < 20:
                _drop("truncated", f"{len(l4)} bytes of TCP")
            if l4[12] >> 4 < 5:
                _drop("bad_l4", f"TCP data offset {l4[12] >> 4}")
        else:
            if len(l4) < 8:
                _drop("truncated", f"{len(l4)} bytes of UDP")
            if u16(l4, 4) < 8:
                _drop("bad_l4", f"UDP length {u16(l4, 4)}")
        sport, dport = u16(l4, 0), u16(l4, 2)
        m = _match_bind(cfg, dst, proto, dport)
        if m is None:
            _pass(f"no bind for proto {proto} port {dport}")
        return ctx, _Flow(src, dst, sport, dport, sport, m[0], m[1], m[2])

    if proto != icmp_proto:
        _pass(f"protocol {proto}")

    echo_type, error_type = (8, 3) if etype == ETH_IPV4 else (128, 2)
    if is_frag:
        _pass("fragmented ICMP (edge cases: PASS)")
    if len(l4) == 0:
        _drop("truncated", "ICMP with no header bytes (edge cases)")
    icmp_type = l4[0]
    if icmp_type == echo_type:
        if not cfg.node.forward_icmp_echo:
            _pass("echo request, forward_icmp_echo off")
        m = _match_bind(cfg, dst, None, None)  # exists: the VIP test passed
        if len(l4) < 8:
            _drop("truncated", f"{len(l4)} bytes of ICMP echo")
        return ctx, _Flow(src, dst, 0, 0, echo_hint, m[0], m[1], m[2])
    if icmp_type != error_type:
        _pass(f"ICMP type {icmp_type}")
    if len(l4) < 8:
        _drop("bad_icmp", "ICMP error shorter than its 8-byte header (edge cases)")
    return ctx, _quoted_flow(cfg, etype, l4[8:])


def _quoted_flow(cfg: ModelConfig, etype: int, q: bytes) -> _Flow:
    """docs §2, ICMP errors: the quoted packet, reversed."""
    if etype == ETH_IPV4:
        if len(q) < 20 or q[0] >> 4 != 4:
            _drop("bad_icmp", "quote: no IPv4 header")
        ihl = q[0] & 15
        if ihl < 5 or ihl * 4 > len(q):
            _drop("bad_icmp", f"quote: IHL {ihl} with {len(q)} bytes")
        qproto, qoff, qsrc, qdst = q[9], ihl * 4, q[12:16], q[16:20]
    else:
        if len(q) < 40 or q[0] >> 4 != 6:
            _drop("bad_icmp", "quote: no IPv6 header")
        try:
            qproto, qoff, _ = walk_ext(q, q[6], 40)
        except ValueError:
            _drop("bad_icmp", "quote: extension headers too long or cut")
        qsrc, qdst = q[8:24], q[24:40]
    if qproto not in (IPPROTO_TCP, IPPROTO_UDP):
        _drop("bad_icmp", f"quote: protocol {qproto}")
    if len(q) < qoff + 4:
        _drop("bad_icmp", "quote: fewer than 4 bytes of ports")
    qsport, qdport = u16(q, qoff), u16(q, qoff + 2)
    # reversed: src = quoted dst, dst = quoted src, sport = quoted dport, dport = quoted sport
    m = _match_bind(cfg, qsrc, qproto, qsport)
    if m is None:
        _pass("ICMP error: no bind for the reversed quoted flow")
    # the quote's length field is not looked at, not even for sanity (edge cases: a quoted
    # IPv4 total length < IHL*4 or a quoted IPv6 payload length 0 is forwarded)
    return _Flow(qdst, qsrc, qdport, qsport, qdport, m[0], m[1], m[2], icmp_error=True)


# ---------------------------------------------------------------- hashing


def hash_input(flow: _Flow) -> bytes:
    f = flow.bind_obj.hash_fields
    parts = {
        "src_addr": flow.src,
        "dst_addr": flow.dst,
        "src_port": struct.pack("!H", flow.sport),
        "dst_port": struct.pack("!H", flow.dport),
    }
    return b"".join(parts[name] for name in HASH_FIELDS if name in f)


# ---------------------------------------------------------------- output frames


def gue_header(inner_version: int, hops: list) -> bytes:
    """GUE base header + GLB private data (docs §4)."""
    hop_bytes = b"".join(h.packed for h in hops)
    hop_v6 = bool(hops) and hops[0].version == 6
    hlen = 1 + len(hop_bytes) // 4  # 32-bit words after the 4-byte base header
    base = struct.pack("!BBH", hlen, 4 if inner_version == 4 else 41, 0)
    private = struct.pack("!HBB", 1 if hop_v6 else 0, 0, len(hops))
    return base + private + hop_bytes


def gue_frame(eth_dst: bytes, eth_src: bytes, tunnel_src, primary, hops, sport: int, inner: bytes):
    """docs §4: the untagged outer frame towards the primary."""
    payload = gue_header(inner[0] >> 4, hops) + inner
    mac = dict(dst=_mac(eth_dst), src=_mac(eth_src))
    if primary.version == 4:
        pkt = (
            Ether(**mac, type=ETH_IPV4)
            / IP(
                tos=0,
                id=0,
                flags="DF",
                frag=0,
                ttl=64,
                proto=IPPROTO_UDP,
                src=str(tunnel_src),
                dst=str(primary),
            )
            / UDP(sport=sport, dport=GUE_PORT, chksum=0)  # 0 over IPv4
            / Raw(payload)
        )
    else:
        pkt = (
            Ether(**mac, type=ETH_IPV6)
            / IPv6(tc=0, fl=0, nh=IPPROTO_UDP, hlim=64, src=str(tunnel_src), dst=str(primary))
            / UDP(sport=sport, dport=GUE_PORT)  # checksum computed by scapy, verified below
            / Raw(payload)
        )
    return pkt


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def icmp_reply(frame: bytes, tci, pkt: bytes, mtu_reported: int):
    """docs §5: frag-needed / packet-too-big back to the client, the way the packet came."""
    eth = Ether(dst=_mac(frame[6:12]), src=_mac(frame[0:6]))
    if tci is not None:
        eth = eth / Dot1Q(prio=tci >> 13, dei=(tci >> 12) & 1, vlan=tci & 0xFFF)
    if pkt[0] >> 4 == 4:
        vip, client = ipaddress.ip_address(pkt[16:20]), ipaddress.ip_address(pkt[12:16])
        quote = pkt[: REPLY_LIMIT4 - 20 - 8]
        icmp = ICMP(type=3, code=4, unused=0, nexthopmtu=mtu_reported)
        reply = (
            eth
            / IP(tos=0, id=0, flags=0, frag=0, ttl=64, proto=IPPROTO_ICMP, src=str(vip), dst=str(client))
            / icmp
            / Raw(quote)
        )
    else:
        vip, client = ipaddress.ip_address(pkt[24:40]), ipaddress.ip_address(pkt[8:24])
        quote = pkt[: REPLY_LIMIT6 - 40 - 8]
        reply = (
            eth
            / IPv6(tc=0, fl=0, nh=IPPROTO_ICMPV6, hlim=64, src=str(vip), dst=str(client))
            / ICMPv6PacketTooBig(mtu=mtu_reported)
            / Raw(quote)
        )
    return reply


def expect(frame: bytes, cfg: ModelConfig) -> Expected:
    """The model's answer for one input frame."""
    frame = bytes(frame)
    try:
        (l2, tci, pkt, df), flow = _classify(frame, cfg)
    except _Done as d:
        return d.expected

    table = cfg.tables[flow.table]
    flow_hash = siphash24_le(table.hash_key, hash_input(flow))
    row = flow_hash & 0xFFFF
    gue_sport = 0x8000 | ((flow_hash ^ flow.hint) & 0x7FFF)
    p, s = lookup(table.seed, table.backends, table.glb_compat, row)
    common = dict(bind=flow.bind, table=flow.table, row=row, flow_hash=flow_hash, primary=p, secondary=s)
    if p is None:
        return Expected("drop", "no_backend", **common, note="empty row")

    primary = table.backends[p].address
    hops = [] if s == p else [table.backends[s].address]
    node = cfg.node
    tunnel_src = node.tunnel_src4 if primary.version == 4 else node.tunnel_src6
    hop_bytes = sum(len(h.packed) for h in hops)
    outer_len = (20 if primary.version == 4 else 40) + 8 + 4 + 4 + hop_bytes + len(pkt)
    too_big = outer_len > node.mtu
    may_reply = df and not flow.icmp_error

    if tunnel_src is None:
        # checked before the size, even when a REPLY (which needs no tunnel) would do (edge cases)
        return Expected("drop", "no_tunnel_source", **common, note=f"no IPv{primary.version} source")

    if too_big:
        if not may_reply:
            return Expected("drop", "too_big", **common, note=f"outer {outer_len} > mtu")
        mtu_reported = node.mtu - (outer_len - len(pkt))
        reply = icmp_reply(frame, tci, pkt, mtu_reported)
        out = bytes(reply)
        verify_checksums(out, l2)
        return Expected(
            "reply",
            None,
            **common,
            gue_sport=gue_sport,
            frame=out,
            note=f"outer {outer_len} > mtu {node.mtu}: mtu {mtu_reported}",
        )

    eth_dst = node.dst_mac if node.dst_mac is not None else frame[6:12]
    eth_src = node.src_mac if node.src_mac is not None else frame[0:6]
    out = bytes(gue_frame(eth_dst, eth_src, tunnel_src, primary, hops, gue_sport, pkt))
    assert len(out) == 14 + outer_len
    verify_checksums(out, 14)
    return Expected("forward", None, **common, gue_sport=gue_sport, frame=out)
