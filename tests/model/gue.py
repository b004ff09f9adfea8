"""Decode fwd's output frames (GUE outer frames and ICMP replies) for readable test diffs.

scapy has no GUE dissector, so decode() splits an outer frame into its parts
(Ethernet, outer IP, UDP, GUE base header, GLB private data, hops, inner packet)
and describe() prints them, with scapy's show() of the outer and inner packets.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

GUE_PORT = 19523


@dataclass
class Gue:
    eth_dst: str
    eth_src: str
    outer_version: int
    outer_src: str
    outer_dst: str
    outer_fields: dict = field(default_factory=dict)  # length, ttl/hlim, id/flags, checksum...
    udp_sport: int = 0
    udp_dport: int = 0
    udp_len: int = 0
    udp_csum: int = 0
    hlen: int = 0
    gue_version: int = 0
    control: int = 0
    inner_proto: int = 0
    flags: int = 0
    private_type: int = 0
    next_hop: int = 0
    hop_count: int = 0
    hops: list[str] = field(default_factory=list)
    inner: bytes = b""


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def decode(frame: bytes) -> Gue | None:
    """The GUE view of an outer frame, or None when the frame is not (well-formed) GUE."""
    try:
        if len(frame) < 14:
            return None
        etype = struct.unpack_from("!H", frame, 12)[0]
        ip = frame[14:]
        if etype == 0x0800 and ip[0] >> 4 == 4:
            ihl = (ip[0] & 15) * 4
            if ip[9] != 17:
                return None
            src, dst = str(ipaddress.ip_address(ip[12:16])), str(ipaddress.ip_address(ip[16:20]))
            tl, ipid, ff, ttl, csum = struct.unpack_from("!2xHHHBxH", ip)
            fields = dict(total_length=tl, id=ipid, flags_frag=hex(ff), ttl=ttl, checksum=hex(csum))
            udp, version = ip[ihl:tl], 4
        elif etype == 0x86DD and ip[0] >> 4 == 6:
            if ip[6] != 17:
                return None
            plen = struct.unpack_from("!H", ip, 4)[0]
            src, dst = str(ipaddress.ip_address(ip[8:24])), str(ipaddress.ip_address(ip[24:40]))
            first_word = hex(struct.unpack_from("!I", ip)[0])  # version, traffic class, flow label
            fields = dict(payload_length=plen, hop_limit=ip[7], first_word=first_word)
            udp, version = ip[40 : 40 + plen], 6
        else:
            return None
        sport, dport, ulen, ucsum = struct.unpack_from("!HHHH", udp)
        g = udp[8:]
        hlen = g[0] & 0x1F
        private_type, next_hop, hop_count = struct.unpack_from("!HBB", g, 4)
        hop_size = 16 if private_type == 1 else 4
        hops = [
            str(ipaddress.ip_address(g[8 + i * hop_size : 8 + (i + 1) * hop_size])) for i in range(hop_count)
        ]
        return Gue(
            eth_dst=_mac(frame[0:6]),
            eth_src=_mac(frame[6:12]),
            outer_version=version,
            outer_src=src,
            outer_dst=dst,
            outer_fields=fields,
            udp_sport=sport,
            udp_dport=dport,
            udp_len=ulen,
            udp_csum=ucsum,
            hlen=hlen,
            gue_version=g[0] >> 6,
            control=(g[0] >> 5) & 1,
            inner_proto=g[1],
            flags=struct.unpack_from("!H", g, 2)[0],
            private_type=private_type,
            next_hop=next_hop,
            hop_count=hop_count,
            hops=hops,
            inner=bytes(g[4 + 4 * hlen :]),
        )
    except (IndexError, struct.error, ValueError):
        return None


def describe(frame: bytes | None) -> str:
    """A multi-line readable rendering of an output frame (GUE decoded when it is GUE)."""
    if frame is None:
        return "(no frame)"
    frame = bytes(frame)
    lines = [f"{len(frame)} bytes: {frame.hex()}"]
    g = decode(frame)
    if g is not None and g.udp_dport == GUE_PORT:
        lines += [
            f"Ethernet  dst {g.eth_dst}  src {g.eth_src}",
            f"Outer IPv{g.outer_version} {g.outer_src} -> {g.outer_dst}  {g.outer_fields}",
            f"UDP       sport {g.udp_sport} dport {g.udp_dport} len {g.udp_len} csum {g.udp_csum:#06x}",
            f"GUE       ver {g.gue_version} C {g.control} hlen {g.hlen} proto {g.inner_proto}"
            f" flags {g.flags:#x}",
            f"GLB       private type {g.private_type} next hop {g.next_hop}"
            f" hop count {g.hop_count} hops {g.hops}",
            f"Inner     {len(g.inner)} bytes:",
        ]
        inner = IP(g.inner) if g.inner[:1] and g.inner[0] >> 4 == 4 else IPv6(g.inner)
        lines.append(inner.show(dump=True))
    else:
        lines.append(Ether(frame).show(dump=True))
    return "\n".join(lines)


def diff(expected: bytes | None, got: bytes | None) -> str:
    """Readable comparison: first differing offset plus both frames described."""
    out = []
    if expected is not None and got is not None:
        n = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
        if n is None and len(expected) != len(got):
            n = min(len(expected), len(got))
        out.append(f"first difference at byte {n} (expected {len(expected)} bytes, got {len(got)})")
    out += ["--- expected (model)", describe(expected), "--- got (fwd)", describe(got)]
    return "\n".join(out)
