"""fwd-redirect's tc program over crafted frames with BPF_PROG_TEST_RUN (root).

The program runs inside a namespace built for it (tests/netns/redirect_prog_rig.py): frames are
"received" on v0 (forwarding on) or v1 (forwarding off); the rig holds listeners on the VIPs and an
established connection per family.

Every expected output is computed here from the GUE layout (docs/packet-core.md §4,
native/bpf/redirect.bpf.c's header comment for the rules), never from the program: decapsulated
frames are the input's Ethernet header (type of the inner packet) + the inner packet; forwarded
frames are the input with the outer header rewritten as the spec says, checksums recomputed here.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterator

import pytest

from tests.model.packet import inet_checksum
from tests.netns import topology as tp

pytest.importorskip("scapy")
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402

from tests.netns.redirect_prog_rig import (
    GUE_PORT,
    HOP4,
    HOP4_V1,
    HOP4B,
    HOP6,
    HOP6_V1,
    L4_4,
    L4_6,
    L4_MAC,
    MAC0,
    MAC1,
    NEIGH_MAC,
    OTHER4,
    OTHER6,
    ROGUE4,
    ROGUE6,
    SELF4,
    SELF4_V1,
    SELF6,
    SELF6_V1,
    SRC6_EXPLICIT,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    VIP4,
    VIP6,
    Rig,
    open_rig,
)

# --------------------------------------------------------------------------------------- frames


def gue_payload(
    inner: bytes,
    hops: list[str] = (),
    next_hop: int = 0,
    *,
    proto: int | None = None,
    byte0: int | None = None,
    flags: int = 0,
    ptype: int | None = None,
    hop_count: int | None = None,
) -> bytes:
    """GUE base header + GLB private data + hops + inner, with overrides for malformed cases."""
    hop_bytes = b"".join(ipaddress.ip_address(h).packed for h in hops)
    v6hops = bool(hops) and ipaddress.ip_address(hops[0]).version == 6
    hlen = 1 + len(hop_bytes) // 4
    if proto is None:
        proto = 4 if inner[0] >> 4 == 4 else 41
    base = struct.pack("!BBH", hlen if byte0 is None else byte0, proto, flags)
    private = struct.pack(
        "!HBB",
        (1 if v6hops else 0) if ptype is None else ptype,
        next_hop,
        len(hops) if hop_count is None else hop_count,
    )
    return base + private + hop_bytes + inner


def outer(src: str, dst: str, payload: bytes, *, dst_mac: str = MAC0, ttl: int = 64, tos: int = 0,
          frag: bool = False, options: bytes = b"", sport: int = 40000) -> bytes:  # fmt: skip
    """Ethernet + outer IPv4/IPv6 + UDP to port 19523 (checksum 0 over IPv4, computed over IPv6)."""
    eth = Ether(dst=dst_mac, src=L4_MAC)
    if ipaddress.ip_address(src).version == 4:
        ip = IP(src=src, dst=dst, ttl=ttl, tos=tos, id=0, flags="MF" if frag else "DF", options=options)
        return bytes(eth / ip / UDP(sport=sport, dport=GUE_PORT, chksum=0) / payload)
    ip6 = IPv6(src=src, dst=dst, hlim=ttl, tc=tos, fl=0)
    return bytes(eth / ip6 / UDP(sport=sport, dport=GUE_PORT) / payload)


def tcp4(src=OTHER4, sport=33000, dst=VIP4, dport=80, flags="A", payload=b"") -> bytes:
    return bytes(
        IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000) / payload
    )


def tcp6(src=OTHER6, sport=33000, dst=VIP6, dport=80, flags="A", payload=b"") -> bytes:
    return bytes(
        IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000) / payload
    )


def udp4() -> bytes:
    return bytes(IP(src=OTHER4, dst=VIP4) / UDP(sport=5353, dport=53) / b"query")


def udp6() -> bytes:
    return bytes(IPv6(src=OTHER6, dst=VIP6) / UDP(sport=5353, dport=53) / b"query")


# ------------------------------------------------------------------------------------ headers


def ipv4_header(src: str, dst: str, tot_len: int, ttl: int, tos: int, rest: bytes = b"") -> bytes:
    """20-byte IPv4 header (+ options in rest), ID 0, DF, proto UDP, checksum computed."""
    ihl = 5 + len(rest) // 4
    h = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            tos,
            tot_len,
            0,
            0x4000,
            ttl,
            17,
            0,
            ipaddress.ip_address(src).packed,
            ipaddress.ip_address(dst).packed,
        )  # fmt: skip
        + rest
    )
    struct.pack_into("!H", h, 10, inet_checksum(bytes(h)))
    return bytes(h)


def udp6_checksum(src: str, dst: str, udp: bytes) -> int:
    ph = (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!I3xB", len(udp), 17)
    )
    zeroed = udp[:6] + b"\0\0" + udp[8:]
    c = inet_checksum(ph + zeroed)
    return c or 0xFFFF


def split(frame: bytes) -> tuple[bytes, bytes, bytes]:
    """(ethernet, outer ip header, udp datagram) of a GUE frame."""
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x0800:
        ihl = (frame[14] & 15) * 4
        tot = struct.unpack_from("!H", frame, 16)[0]
        return frame[:14], frame[14 : 14 + ihl], frame[14 + ihl : 14 + tot]
    plen = struct.unpack_from("!H", frame, 18)[0]
    return frame[:14], frame[14:54], frame[54 : 54 + plen]


def expected_forward(frame: bytes, src: str, hop: str, macs: tuple[str, str] | None) -> bytes:
    """The spec's forwarded frame: outer src -> hop of hop's family, next hop + 1, TTL/TOS kept,
    IPv4: header checksum, UDP checksum 0; IPv6: UDP checksum over the datagram."""
    eth, iph, udp = split(frame)
    udp = bytearray(udp)
    udp[8 + 6] += 1  # next hop index
    if iph[0] >> 4 == 4:
        ttl, tos, options = iph[8], iph[1], iph[20:]
    else:
        ttl = iph[7]
        tos = (struct.unpack_from("!I", iph)[0] >> 20) & 0xFF
        options = b""
    if ipaddress.ip_address(hop).version == 4:
        if iph[0] >> 4 == 4:
            new_ip = ipv4_header(src, hop, len(iph) + len(udp), ttl, tos, options)
            ident_flags = iph[4:8]  # kept as received
            new_ip = bytearray(new_ip)
            new_ip[4:8] = ident_flags
            new_ip[10:12] = b"\0\0"
            struct.pack_into("!H", new_ip, 10, inet_checksum(bytes(new_ip)))
            new_ip = bytes(new_ip)
        else:
            new_ip = ipv4_header(src, hop, 20 + len(udp), ttl, tos)
        udp[6:8] = b"\0\0"
        et = b"\x08\x00"
    else:
        if iph[0] >> 4 == 6:
            new_ip = bytearray(iph)
            new_ip[8:24] = ipaddress.ip_address(src).packed
            new_ip[24:40] = ipaddress.ip_address(hop).packed
            new_ip = bytes(new_ip)
        else:
            first = (6 << 28) | (tos << 20)
            new_ip = struct.pack("!IHBB", first, len(udp), 17, ttl)
            new_ip += ipaddress.ip_address(src).packed + ipaddress.ip_address(hop).packed
        struct.pack_into("!H", udp, 6, udp6_checksum(src, hop, bytes(udp)))
        et = b"\x86\xdd"
    dst_mac, src_mac = (eth[0:6], eth[6:12]) if macs is None else (mac_bytes(macs[0]), mac_bytes(macs[1]))
    return dst_mac + src_mac + et + new_ip + bytes(udp)


def expected_decap(frame: bytes) -> bytes:
    """Ethernet header of the input (type = the inner packet's) + the GUE payload's inner packet."""
    _, _, udp = split(frame)
    hlen = udp[8] & 0x1F
    inner = udp[8 + 4 + 4 * hlen :]
    et = b"\x08\x00" if inner[0] >> 4 == 4 else b"\x86\xdd"
    return frame[:12] + et + inner


def mac_bytes(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


# ------------------------------------------------------------------------------------------ rig


@pytest.fixture(scope="module")
def rig(netns_ok) -> Iterator[Rig]:
    with open_rig("rprog") as r:
        yield r


# ------------------------------------------------------------------------------------ malformed


def _malformed_cases():
    t4 = tcp4()
    ok = gue_payload(t4, [HOP4])
    cases = [
        ("not allowed (IPv4)", lambda: outer(ROGUE4, SELF4, ok), "drop_not_allowed"),
        ("not allowed (IPv6)", lambda: outer(ROGUE6, SELF6, gue_payload(tcp6(), [HOP6])), "drop_not_allowed"),
        ("outer fragment", lambda: outer(L4_4, SELF4, ok, frag=True), "drop_fragment"),
        ("GUE header cut to 6 bytes", lambda: outer(L4_4, SELF4, ok[:6]), "drop_truncated"),
        ("hop list cut", lambda: outer(L4_4, SELF4, ok[:10]), "drop_truncated"),
        ("inner header cut", lambda: outer(L4_4, SELF4, ok[: 12 + 10]), "drop_truncated"),
        ("inner length past the datagram", lambda: outer(L4_4, SELF4, ok[:-4]), "drop_truncated"),
        (
            "inner TCP header cut",
            lambda: outer(L4_4, SELF4, gue_payload(_cut_tcp(t4), [HOP4])),
            "drop_truncated",
        ),
        (
            "UDP length past the IP packet",
            lambda: _patch_udp_len(outer(L4_4, SELF4, ok), +8),
            "drop_truncated",
        ),
        ("IP length past the frame", lambda: outer(L4_4, SELF4, ok)[:-6], "drop_truncated"),
        (
            "GUE version 1",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], byte0=0x40 | 2)),
            "drop_bad_version",
        ),
        (
            "GUE C bit",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], byte0=0x20 | 2)),
            "drop_bad_version",
        ),
        ("GUE flags", lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], flags=0x8000)), "drop_bad_flags"),
        ("hlen 0", lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], byte0=0)), "drop_bad_hlen"),
        (
            "hlen 3 for 1 IPv4 hop",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], byte0=3)),
            "drop_bad_hlen",
        ),
        (
            "hlen 2 for 1 IPv6 hop",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP6], byte0=2)),
            "drop_bad_hlen",
        ),
        (
            "hop count 2 with 1 hop",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], hop_count=2)),
            "drop_bad_hlen",
        ),
        ("private type 2", lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], ptype=2)), "drop_bad_hop_type"),
        (
            "private type 0x100",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], ptype=0x100)),
            "drop_bad_hop_type",
        ),
        (
            "next hop 2 of 1",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], next_hop=2)),
            "drop_bad_next_hop",
        ),
        (
            "inner proto 17",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], proto=17)),
            "drop_bad_inner_proto",
        ),
        (
            "inner proto 0",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], proto=0)),
            "drop_bad_inner_proto",
        ),
        (
            "proto 4, inner IPv6",
            lambda: outer(L4_4, SELF4, gue_payload(tcp6(), [HOP4], proto=4)),
            "drop_bad_inner",
        ),
        (
            "proto 41, inner IPv4",
            lambda: outer(L4_4, SELF4, gue_payload(t4, [HOP4], proto=41)),
            "drop_bad_inner",
        ),
        (
            "inner IHL 4",
            lambda: outer(L4_4, SELF4, gue_payload(_patch(t4, 0, 0x44), [HOP4])),
            "drop_bad_inner",
        ),
        (
            "inner total length < IHL",
            lambda: outer(L4_4, SELF4, gue_payload(_patch16(t4, 2, 12), [HOP4])),
            "drop_bad_inner",
        ),
        (
            "IPv6 outer, inner cut",
            lambda: outer(L4_6, SELF6, gue_payload(tcp6(), [HOP6])[: 8 + 16 + 30]),
            "drop_truncated",
        ),
        (
            "IPv6 outer, bad next hop",
            lambda: outer(L4_6, SELF6, gue_payload(tcp6(), [HOP6], next_hop=5)),
            "drop_bad_next_hop",
        ),
    ]
    return cases


def _patch(b: bytes, off: int, val: int) -> bytes:
    return b[:off] + bytes([val]) + b[off + 1 :]


def _patch16(b: bytes, off: int, val: int) -> bytes:
    return b[:off] + struct.pack("!H", val) + b[off + 2 :]


def _cut_tcp(ip4: bytes) -> bytes:
    """The IPv4+TCP packet with only 12 bytes of TCP header (total length adjusted)."""
    cut = ip4[: 20 + 12]
    h = bytearray(_patch16(cut, 2, len(cut)))
    h[10:12] = b"\0\0"
    struct.pack_into("!H", h, 10, inet_checksum(bytes(h[:20])))
    return bytes(h)


def _patch_udp_len(frame: bytes, delta: int) -> bytes:
    off = 14 + (frame[14] & 15) * 4 + 4
    return _patch16(frame, off, struct.unpack_from("!H", frame, off)[0] + delta)


@pytest.mark.parametrize("name,build,counter", _malformed_cases(), ids=[c[0] for c in _malformed_cases()])
def test_malformed_dropped_and_counted(rig, name, build, counter):
    rc, _, delta = rig.run(build())
    assert rc == TC_ACT_SHOT, f"{name}: verdict {rc}"
    assert delta == {"rx": 1, counter: 1}, f"{name}: counters {delta}"


# ----------------------------------------------------------------------------------- not ours


def _not_ours():
    return [
        ("TCP to this node", bytes(Ether(dst=MAC0, src=L4_MAC) / IP(src=L4_4, dst=SELF4) / TCP(dport=22))),
        (
            "UDP to another port",
            bytes(Ether(dst=MAC0, src=L4_MAC) / IP(src=L4_4, dst=SELF4) / UDP(dport=19524) / b"x"),
        ),
        ("ARP", bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=L4_MAC) / ARP(psrc=L4_4, pdst=SELF4))),
        (
            "GUE for another host's MAC",
            outer(L4_4, SELF4, gue_payload(tcp4(), [HOP4]), dst_mac="02:77:00:00:00:99"),
        ),
        (
            "GUE from a non-allowed source for another MAC",
            outer(ROGUE4, SELF4, b"\0" * 8, dst_mac="02:77:00:00:00:99"),
        ),
        (
            "IPv6 UDP to another port",
            bytes(Ether(dst=MAC0, src=L4_MAC) / IPv6(src=L4_6, dst=SELF6) / UDP(dport=53)),
        ),
    ]


@pytest.mark.parametrize("name,frame", _not_ours(), ids=[c[0] for c in _not_ours()])
def test_other_traffic_untouched(rig, name, frame):
    rc, out, delta = rig.run(frame)
    assert (rc, out, delta) == (TC_ACT_OK, frame, {}), name


# ----------------------------------------------------------------------------------- decap


def _decap_cases():
    c = []
    for ov, src, dst in ((4, L4_4, SELF4), (6, L4_6, SELF6)):
        hop = HOP4 if ov == 4 else HOP6
        for iv, tcp, udp in ((4, tcp4, udp4), (6, tcp6, udp6)):
            tag = f"outer v{ov} inner v{iv}"
            data = tcp(payload=b"x" * 100)
            c += [
                (f"{tag}: UDP", outer(src, dst, gue_payload(udp(), [hop])), "decap_non_tcp"),
                (f"{tag}: SYN", outer(src, dst, gue_payload(tcp(flags="S"), [hop])), "decap_syn"),
                (f"{tag}: no hop left", outer(src, dst, gue_payload(tcp(), [hop], 1)), "decap_last_hop"),
                (f"{tag}: empty hop list", outer(src, dst, gue_payload(tcp())), "decap_last_hop"),
                (f"{tag}: next hop is this node", outer(src, dst, gue_payload(data, [dst])), "decap_self"),
            ]
    echo4 = bytes(IP(src=OTHER4, dst=VIP4) / ICMP())
    echo6 = bytes(IPv6(src=OTHER6, dst=VIP6) / ICMPv6EchoRequest())
    frag = bytes(IP(src=OTHER4, dst=VIP4, flags="MF") / TCP(flags="A"))
    opts = b"\x01\x01\x01\x00"
    c += [
        ("ICMP echo", outer(L4_4, SELF4, gue_payload(echo4, [HOP4])), "decap_non_tcp"),
        ("ICMPv6 echo", outer(L4_6, SELF6, gue_payload(echo6, [HOP6])), "decap_non_tcp"),
        ("inner IPv4 fragment of TCP", outer(L4_4, SELF4, gue_payload(frag, [HOP4])), "decap_non_tcp"),
        ("IPv6 hops, IPv4 outer, SYN", outer(L4_4, SELF4, gue_payload(tcp4(flags="S"), [HOP6])), "decap_syn"),
        ("two hops, next 2", outer(L4_4, SELF4, gue_payload(tcp4(), [HOP4, HOP4B], 2)), "decap_last_hop"),
        (
            "outer IPv4 options",
            outer(L4_4, SELF4, gue_payload(udp4(), [HOP4]), options=opts),
            "decap_non_tcp",
        ),
    ]
    return c


@pytest.mark.parametrize("name,frame,counter", _decap_cases(), ids=[c[0] for c in _decap_cases()])
def test_decapsulated(rig, name, frame, counter):
    rc, out, delta = rig.run(frame)
    assert rc == TC_ACT_OK, f"{name}: verdict {rc}, counters {delta}"
    assert delta == {"rx": 1, counter: 1}, name
    assert out == expected_decap(frame), f"{name}:\n got  {out.hex()}\n want {expected_decap(frame).hex()}"


def test_local_sockets_own_their_flows(rig):
    """An ACK of the established connection is taken here even with a hop left; so is an ICMP
    error quoting the connection's reply direction (the flow reversed)."""
    for v in (4, 6):
        caddr, cport = rig.conn[v]
        src, dst, hop = (L4_4, SELF4, HOP4) if v == 4 else (L4_6, SELF6, HOP6)
        tcp = tcp4 if v == 4 else tcp6
        vip = VIP4 if v == 4 else VIP6
        f = outer(src, dst, gue_payload(tcp(src=caddr, sport=cport, payload=b"data"), [hop]))
        rc, out, delta = rig.run(f)
        assert (rc, delta) == (TC_ACT_OK, {"rx": 1, "decap_socket": 1}), f"IPv{v} established"
        assert out == expected_decap(f)
        # an ICMP error about a reply the node sent (VIP:80 -> client): reversed, it is the connection
        quoted_ip = IP(src=vip, dst=caddr) if v == 4 else IPv6(src=vip, dst=caddr)
        quoted = bytes(quoted_ip / TCP(sport=80, dport=cport, flags="A"))[: 48 if v == 4 else 68]
        err = (
            IP(src="10.99.99.1", dst=vip) / ICMP(type=3, code=4, nexthopmtu=1400) / quoted
            if v == 4
            else IPv6(src="fd99:99::1", dst=vip) / ICMPv6PacketTooBig(mtu=1280) / quoted
        )
        f = outer(src, dst, gue_payload(bytes(err), [hop]))
        rc, out, delta = rig.run(f)
        assert (rc, delta) == (TC_ACT_OK, {"rx": 1, "decap_socket": 1, "icmp_tcp_quote": 1}), f"IPv{v} ICMP"
        assert out == expected_decap(f)
        # the same error about an unknown flow follows that flow: forwarded to the hop
        quoted = bytes(quoted_ip / TCP(sport=80, dport=cport + 1, flags="A"))[: 48 if v == 4 else 68]
        err = (
            IP(src="10.99.99.1", dst=vip) / ICMP(type=3, code=4, nexthopmtu=1400) / quoted
            if v == 4
            else IPv6(src="fd99:99::1", dst=vip) / ICMPv6PacketTooBig(mtu=1280) / quoted
        )
        f = outer(src, dst, gue_payload(bytes(err), [hop]))
        rc, out, delta = rig.run(f)
        assert (rc, delta) == (TC_ACT_REDIRECT, {"rx": 1, "forwarded": 1, "icmp_tcp_quote": 1}), (
            f"IPv{v} ICMP fwd"
        )
        assert out == expected_forward(f, dst, hop, (NEIGH_MAC, MAC0))


def test_request_socket_owns_its_flow(rig):
    """A SYN received by the rig's kernel leaves a request socket (SYN-ACK sent, no ACK yet): the
    handshake's last ACK is taken here; the same ACK from another port goes on to the hop."""
    half = "10.66.0.88"
    tp.ip("route", "replace", f"{half}/32", "dev", "v0", ns=rig.ns)
    tp.ip("neigh", "replace", half, "lladdr", NEIGH_MAC, "dev", "v0", "nud", "permanent", ns=rig.ns)
    syn = bytes(
        Ether(dst=MAC0, src=NEIGH_MAC) / IP(src=half, dst=VIP4) / TCP(sport=40000, dport=80, flags="S")
    )
    sender = tp.Sender(rig.ns, "v0p")
    try:
        sender.send(syn)
    finally:
        sender.close()
    for _ in range(100):
        if f"{half}:40000" in tp.sh("ss", "-Htn", "state", "syn-recv", ns=rig.ns):
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the rig's kernel made no request socket for the SYN")
    f = outer(L4_4, SELF4, gue_payload(tcp4(src=half, sport=40000), [HOP4]))
    rc, out, delta = rig.run(f)
    assert (rc, delta) == (TC_ACT_OK, {"rx": 1, "decap_socket": 1})
    assert out == expected_decap(f)
    f = outer(L4_4, SELF4, gue_payload(tcp4(src=half, sport=40001), [HOP4]))
    rc, _, delta = rig.run(f)
    assert (rc, delta) == (TC_ACT_REDIRECT, {"rx": 1, "forwarded": 1})


def test_listener_without_cookie_is_not_an_owner(rig):
    """An ACK to the listening port that is neither a connection nor a valid SYN cookie goes on."""
    f = outer(L4_4, SELF4, gue_payload(tcp4(src=OTHER4, sport=40001), [HOP4]))
    rc, out, delta = rig.run(f)
    assert (rc, delta) == (TC_ACT_REDIRECT, {"rx": 1, "forwarded": 1})


# ----------------------------------------------------------------------------------- forward


def _forward_cases():
    data4, data6 = tcp4(payload=b"p" * 333), tcp6(payload=b"q" * 777)
    macs = (NEIGH_MAC, MAC0)  # from the FIB: the neighbour's and v0's
    opts = b"\x01\x01\x01\x00"
    v1_4 = outer("10.8.0.1", SELF4_V1, gue_payload(data4, [HOP4_V1]), dst_mac=MAC1)
    v1_6 = outer("fd08::1", SELF6_V1, gue_payload(data6, [HOP6_V1]), dst_mac=MAC1)
    explicit = ((SRC6_EXPLICIT, "explicit"),)
    # (name, frame, receiving interface, expected source, hop, MACs (None: unchanged), sources config)
    return [
        (
            "v4 -> v4",
            outer(L4_4, SELF4, gue_payload(data4, [HOP4]), ttl=17, tos=0x28),
            "v0",
            SELF4,
            HOP4,
            macs,
            (),
        ),
        (
            "v6 -> v6",
            outer(L4_6, SELF6, gue_payload(data6, [HOP6]), ttl=9, tos=0x28),
            "v0",
            SELF6,
            HOP6,
            macs,
            (),
        ),
        ("v6 outer, inner v4", outer(L4_6, SELF6, gue_payload(data4, [HOP6])), "v0", SELF6, HOP6, macs, ()),
        (
            "second of two hops",
            outer(L4_4, SELF4, gue_payload(data4, [HOP4, HOP4B], 1)),
            "v0",
            SELF4,
            HOP4B,
            macs,
            (),
        ),
        (
            "v4 with options",
            outer(L4_4, SELF4, gue_payload(data4, [HOP4]), options=opts),
            "v0",
            SELF4,
            HOP4,
            macs,
            (),
        ),
        (
            "v4 -> v6 hop",
            outer(L4_4, SELF4, gue_payload(data4, [HOP6]), ttl=33, tos=16),
            "v0",
            SELF6,
            HOP6,
            macs,
            (),
        ),
        (
            "v4 options -> v6",
            outer(L4_4, SELF4, gue_payload(data6, [HOP6]), options=opts * 2),
            "v0",
            SELF6,
            HOP6,
            macs,
            (),
        ),
        ("v6 -> v4 hop", outer(L4_6, SELF6, gue_payload(data6, [HOP4]), ttl=5), "v0", SELF4, HOP4, macs, ()),
        (
            "explicit source",
            outer(L4_6, SELF6, gue_payload(data6, [HOP6])),
            "v0",
            SRC6_EXPLICIT,
            HOP6,
            macs,
            explicit,
        ),
        ("v4, forwarding off: redirect_neigh", v1_4, "v1", SELF4_V1, HOP4_V1, None, ()),
        ("v6, forwarding off: redirect_neigh", v1_6, "v1", SELF6_V1, HOP6_V1, None, ()),
    ]


@pytest.mark.parametrize("case", _forward_cases(), ids=[c[0] for c in _forward_cases()])
def test_forwarded_to_next_hop(rig, case):
    name, frame, ifname, src, hop, macs, sources = case
    # the fallback source of the other family is v0's address (as `fwd redirect attach` derives it)
    fallback = [(SELF4, "fallback"), (SELF6, "fallback")]
    given = {ipaddress.ip_address(a).version for a, _ in sources}
    rig.configure(list(sources) + [s for s in fallback if ipaddress.ip_address(s[0]).version not in given])
    try:
        rc, out, delta = rig.run(frame, ifname)
    finally:
        rig.configure()
    assert (rc, delta) == (TC_ACT_REDIRECT, {"rx": 1, "forwarded": 1}), f"{name}: {rc} {delta}"
    want = expected_forward(frame, src, hop, macs)
    assert out == want, f"{name}:\n got  {out.hex()}\n want {want.hex()}"
    _, iph, udp = split(out)
    if iph[0] >> 4 == 4:
        assert inet_checksum(iph) == 0 and udp[6:8] == b"\0\0"
    else:
        assert udp6_checksum(src, hop, udp) == struct.unpack_from("!H", udp, 6)[0]


def test_forward_refusals(rig):
    data = tcp4(payload=b"z" * 100)
    # a hop of the other family and no source of that family (no fallback configured)
    rc, _, delta = rig.run(outer(L4_4, SELF4, gue_payload(data, [HOP6])))
    assert (rc, delta) == (TC_ACT_SHOT, {"rx": 1, "drop_no_source": 1})
    # no route to the hop (forwarding on, so the FIB answers)
    rc, _, delta = rig.run(outer(L4_4, SELF4, gue_payload(data, ["192.0.2.77"])))
    assert (rc, delta) == (TC_ACT_SHOT, {"rx": 1, "drop_no_route": 1})
    # growing a 1500-byte IPv4 packet into IPv6 exceeds the 1500 MTU
    rig.configure([(SELF6, "fallback")])
    try:
        big = tcp4(payload=b"b" * (1500 - 20 - 8 - 8 - 16 - 40))
        f = outer(L4_4, SELF4, gue_payload(big, [HOP6]))
        assert len(f) - 14 == 1500
        rc, _, delta = rig.run(f)
    finally:
        rig.configure()
    assert (rc, delta) == (TC_ACT_SHOT, {"rx": 1, "drop_too_big": 1})
