"""XDP steering model: which frames the steering program must hand to fwd's AF_XDP socket.

The program's job (native/bpf/steer.bpf.c, docs/config.md "xdp" mode): redirect every frame the
packet core would not PASS — FORWARD, REPLY and DROP alike, so the core counts the drops — and
leave everything else to the kernel. It looks only at headers, so two kinds of drops stay with
the kernel (which drops them too): frames too short to show an IP destination, and frames whose
destination is inside no bind prefix (the VIP test comes first in the core as well, so only the
checks before it, the IPv4 version/IHL/length ones, can drop such a frame). Hence:

    redirect  <=>  the frame shows an IPv4/IPv6 destination inside a bind prefix
                   and the core's answer (tests/model/packet.py) is not PASS
"""

from __future__ import annotations

import ipaddress
import struct

from .config import ModelConfig
from .packet import expect

ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
# BPF_PROG_TEST_RUN hands an XDP program at most one page minus XDP_PACKET_HEADROOM (256) and
# skb_shared_info (320) of linear data; the rest of a longer frame goes into fragments, which
# the (single-buffer) steering program does not see: it decides on this many first bytes.
XDP_TEST_LINEAR = 4096 - 256 - 320


def destination(frame: bytes) -> bytes | None:
    """The IP destination the frame shows (one 802.1Q tag allowed), or None."""
    if len(frame) < 14:
        return None
    etype, l2 = struct.unpack_from("!H", frame, 12)[0], 14
    if etype == ETH_VLAN:
        if len(frame) < 18:
            return None
        etype, l2 = struct.unpack_from("!H", frame, 16)[0], 18
    if etype == ETH_IPV4 and len(frame) >= l2 + 20:
        return frame[l2 + 16 : l2 + 20]
    if etype == ETH_IPV6 and len(frame) >= l2 + 40:
        return frame[l2 + 24 : l2 + 40]
    return None


def shows_vip(frame: bytes, cfg: ModelConfig) -> bool:
    """The frame shows an IP destination inside a bind prefix."""
    dst = destination(frame)
    if dst is None:
        return False
    a = ipaddress.ip_address(dst)
    return any(a.version == b.prefix.version and a in b.prefix for _, _, b in cfg.binds())


def steer_expect(frame: bytes, cfg: ModelConfig) -> str:
    """The steering program's answer for one frame: "redirect" or "pass"."""
    if shows_vip(frame, cfg) and expect(frame, cfg).verdict != "pass":
        return "redirect"
    return "pass"
