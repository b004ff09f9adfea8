"""fwd-redirect model: what the L7 node's tc program must do with one received frame.

docs/redirect.md ("What it does with a packet") and the rule list at the top of
native/bpf/redirect.bpf.c, as straight-line Python over the frame's bytes. The answer is one of

    ignore    not GUE for this host: TC_ACT_OK, frame unchanged, no counter
    drop      TC_ACT_SHOT and one drop counter
    decap     TC_ACT_OK, one decap counter, the decapsulated frame
    forward   the packet must go on to `hop` (a unicast address) from `source`: what happens
              then (forwarded, drop_no_route, drop_too_big) is the kernel FIB's answer, which
              the caller knows

with `icmp_quote` set when an inner ICMP error quoting TCP decided the path (icmp_tcp_quote is
counted as well). `rx` is counted for every answer but ignore. Local sockets are the caller's:
owner(tuple) says whether one owns a flow ("socket", "cookie" or None).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

GUE_PORT = 19523
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
INNER_EXT = (0, 43, 60)  # walked in inner IPv6 (a fragment header ends the walk)
MAX_INNER_EXT = 8
ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)


@dataclass
class RedirectExpected:
    action: str  # ignore | drop | decap | forward
    counter: str | None = None  # the path counter (drop_*, decap_*), None for ignore/forward
    frame: bytes | None = None  # decap: the frame handed to the stack
    hop: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None  # forward
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None  # forward: new outer source
    icmp_quote: bool = False
    note: str = ""


@dataclass(frozen=True)
class RedirectNode:
    """The receiving node as the program sees it: its interface MAC, the allow list and the
    configured outer sources per family (mode "explicit" or "fallback", docs/redirect.md)."""

    mac: bytes
    allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
    sources: dict[int, tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]  # family -> (mode, addr)


Owner = Callable[[int, bytes, bytes, int, int], str | None]  # (family, src, dst, sport, dport)


def no_owner(family: int, src: bytes, dst: bytes, sport: int, dport: int) -> None:
    return None


class _Done(Exception):
    def __init__(self, e: RedirectExpected):
        self.e = e


def _drop(counter: str, note: str = "") -> None:
    raise _Done(RedirectExpected("drop", counter, note=note))


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def _allowed(node: RedirectNode, src: bytes) -> bool:
    a = ipaddress.ip_address(src)
    return any(a.version == n.version and a in n for n in node.allow)


def expect_redirect(frame: bytes, node: RedirectNode, owner: Owner = no_owner) -> RedirectExpected:
    try:
        return _expect(bytes(frame), node, owner)
    except _Done as d:
        return d.e


def _expect(f: bytes, node: RedirectNode, owner: Owner) -> RedirectExpected:
    ignore = RedirectExpected("ignore")
    # -- GUE for this host? (pkt_type HOST: the frame is addressed to the interface's MAC)
    if len(f) < 14 or f[0:6] != node.mac:
        return ignore
    etype = _u16(f, 12)
    if etype == ETH_IPV4:
        if len(f) < 14 + 20:
            return ignore
        ihl = (f[14] & 15) * 4
        if f[14] >> 4 != 4 or ihl < 20 or f[14 + 9] != IPPROTO_UDP:
            return ignore
        frag = _u16(f, 14 + 6)
        if frag & 0x1FFF:
            return ignore  # a later fragment: no UDP header to recognise
        family, src, dst, udp = 4, f[26:30], f[30:34], 14 + ihl
        ip_len = _u16(f, 16)
        if len(f) < udp + 8 or _u16(f, udp + 2) != GUE_PORT:
            return ignore
        if not _allowed(node, src):
            _drop("drop_not_allowed")
        if frag & 0x2000:
            _drop("drop_fragment")
        if ip_len < ihl + 8:
            _drop("drop_truncated", "IPv4 total length < header + UDP")
        ip_end = 14 + ip_len
    elif etype == ETH_IPV6:
        if len(f) < 14 + 40:
            return ignore
        if f[14] >> 4 != 6 or f[14 + 6] != IPPROTO_UDP:
            return ignore
        family, src, dst, udp = 6, f[22:38], f[38:54], 54
        if len(f) < udp + 8 or _u16(f, udp + 2) != GUE_PORT:
            return ignore
        if not _allowed(node, src):
            _drop("drop_not_allowed")
        plen = _u16(f, 18)
        if plen < 8:
            _drop("drop_truncated", "IPv6 payload length < UDP")
        ip_end = 54 + plen
    else:
        return ignore

    # -- lengths, GUE header
    if ip_end > len(f):
        _drop("drop_truncated", "IP length past the frame")
    udp_len = _u16(f, udp + 4)
    end = udp + udp_len
    if udp_len < 8 or end > ip_end:
        _drop("drop_truncated", "UDP length")
    gue = udp + 8
    if gue + 8 > end:
        _drop("drop_truncated", "fewer than 8 bytes of GUE")
    h = f[gue : gue + 8]
    if h[0] & 0xE0:
        _drop("drop_bad_version")
    if h[2] or h[3]:
        _drop("drop_bad_flags")
    hlen = h[0] & 0x1F
    if hlen == 0:
        _drop("drop_bad_hlen", "hlen 0")
    if h[4] != 0 or h[5] > 1:
        _drop("drop_bad_hop_type")
    hop_family, hop_size = (4, 4) if h[5] == 0 else (6, 16)
    next_hop, hop_count = h[6], h[7]
    if hlen != 1 + hop_count * hop_size // 4:
        _drop("drop_bad_hlen", f"hlen {hlen} for {hop_count} hops")
    if next_hop > hop_count:
        _drop("drop_bad_next_hop")
    if h[1] not in (4, 41):
        _drop("drop_bad_inner_proto")
    inner_family = 4 if h[1] == 4 else 6
    inner = gue + 4 + hlen * 4

    # -- inner header
    if inner_family == 4:
        if inner + 20 > end:
            _drop("drop_truncated", "inner IPv4 header")
        ihl4, tl = (f[inner] & 15) * 4, _u16(f, inner + 2)
        if f[inner] >> 4 != 4 or ihl4 < 20 or tl < ihl4:
            _drop("drop_bad_inner")
        if inner + tl > end:
            _drop("drop_truncated", "inner IPv4 length")
        path, quote = _inner4(f, inner, inner + tl, owner)
    else:
        if inner + 40 > end:
            _drop("drop_truncated", "inner IPv6 header")
        if f[inner] >> 4 != 6:
            _drop("drop_bad_inner")
        if inner + 40 + _u16(f, inner + 4) > end:
            _drop("drop_truncated", "inner IPv6 length")
        path, quote = _inner6(f, inner, inner + 40 + _u16(f, inner + 4), owner)

    decapsulated = f[:12] + struct.pack("!H", ETH_IPV4 if inner_family == 4 else ETH_IPV6) + f[inner:]
    if path == "truncated":
        return RedirectExpected("drop", "drop_truncated", icmp_quote=quote, note="inner TCP header cut")
    if path != "hops":
        return RedirectExpected("decap", f"decap_{path}", decapsulated, icmp_quote=quote)
    if next_hop >= hop_count:
        return RedirectExpected("decap", "decap_last_hop", decapsulated, icmp_quote=quote)

    # -- second chance: the next hop
    off = gue + 8 + next_hop * hop_size
    hop = ipaddress.ip_address(f[off : off + hop_size])
    mode, configured = node.sources.get(hop_family, ("none", None))
    if mode == "explicit":
        source = configured
    elif hop_family == family:
        source = ipaddress.ip_address(dst)
    else:
        source = configured if mode == "fallback" else None
    if (hop_family == family and hop.packed == dst) or (source is not None and hop == source):
        return RedirectExpected("decap", "decap_self", decapsulated, icmp_quote=quote)
    if source is None:
        return RedirectExpected("drop", "drop_no_source", icmp_quote=quote)
    if not unicast(hop):
        return RedirectExpected("drop", "drop_no_route", icmp_quote=quote, note=f"{hop}: no unicast address")
    return RedirectExpected("forward", hop=hop, source=source, icmp_quote=quote)


def unicast(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A possible next hop: not 0/8, 127/8, 224/4 and above (IPv4); not ff00::/8 or ::/80 (IPv6:
    unspecified, loopback, IPv4-compatible and -mapped)."""
    b = a.packed
    if a.version == 4:
        return b[0] not in (0, 127) and b[0] < 224
    return b[0] != 0xFF and any(b[:10])


def _owned(own: str | None) -> str:
    return {"socket": "socket", "cookie": "syncookie"}.get(own or "", "hops")


def _inner4(f: bytes, ip: int, end: int, owner: Owner) -> tuple[str, bool]:
    """Path of an inner IPv4 packet (header valid, inside the datagram): non_tcp, syn, socket,
    syncookie, hops or truncated; and whether an ICMP error's quote decided it."""
    l4 = ip + (f[ip] & 15) * 4
    if _u16(f, ip + 6) & 0x3FFF:
        return "non_tcp", False
    proto = f[ip + 9]
    if proto == IPPROTO_ICMP:
        if l4 + 8 + 20 > end or f[l4] not in ICMP4_ERRORS:
            return "non_tcp", False
        q = l4 + 8
        if f[q] >> 4 != 4 or f[q] & 15 < 5 or f[q + 9] != IPPROTO_TCP:
            return "non_tcp", False
        ql4 = q + (f[q] & 15) * 4
        if ql4 + 4 > end:
            return "non_tcp", False
        # the quote is the flow's other direction: reversed (no SYN-cookie test)
        own = owner(4, f[q + 16 : q + 20], f[q + 12 : q + 16], _u16(f, ql4 + 2), _u16(f, ql4))
        return ("socket" if own == "socket" else "hops"), True
    if proto != IPPROTO_TCP:
        return "non_tcp", False
    if l4 + 20 > end:
        return "truncated", False
    flags = f[l4 + 13]
    if flags & 0x02 and not flags & 0x10:
        return "syn", False
    return _owned(owner(4, f[ip + 12 : ip + 16], f[ip + 16 : ip + 20], _u16(f, l4), _u16(f, l4 + 2))), False


def _inner6(f: bytes, ip: int, end: int, owner: Owner) -> tuple[str, bool]:
    l4, nh = ip + 40, f[ip + 6]
    for _ in range(MAX_INNER_EXT):
        if nh not in INNER_EXT:
            break
        if l4 + 8 > end:
            return "non_tcp", False
        nh, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
    if nh == IPPROTO_ICMPV6:
        if l4 + 8 + 40 + 4 > end or f[l4] not in ICMP6_ERRORS:
            return "non_tcp", False
        q = l4 + 8
        if f[q] >> 4 != 6 or f[q + 6] != IPPROTO_TCP:
            return "non_tcp", False
        own = owner(6, f[q + 24 : q + 40], f[q + 8 : q + 24], _u16(f, q + 42), _u16(f, q + 40))
        return ("socket" if own == "socket" else "hops"), True
    if nh != IPPROTO_TCP:
        return "non_tcp", False
    if l4 + 20 > end:
        return "truncated", False
    flags = f[l4 + 13]
    if flags & 0x02 and not flags & 0x10:
        return "syn", False
    return _owned(owner(6, f[ip + 8 : ip + 24], f[ip + 24 : ip + 40], _u16(f, l4), _u16(f, l4 + 2))), False
