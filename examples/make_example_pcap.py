#!/usr/bin/env python3
"""Write examples/example.pcap: a few dozen frames of mixed traffic for the VIPs of
examples/fwd.toml, plus traffic that is not fwd's.

    .venv/bin/python examples/make_example_pcap.py [OUT.pcap]

Each frame is listed with the verdict fwd should give it under examples/fwd.toml (tests compare
these with `fwd pcap`). The output is deterministic: fixed addresses, ports and timestamps.
Needs scapy (a test dependency); fwd itself does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

ROUTER_MAC = "02:00:00:00:00:01"  # the router that sends VIP traffic to this node
NODE_MAC = "02:00:00:00:00:02"  # the fwd node
VIP4 = "203.0.113.80"  # table "web": tcp/80 and tcp/443
VIP6 = "2001:db8:80::80"  # table "web6": tcp/443
T0 = 1_700_000_000.0

# Input frames: (expected verdict under examples/fwd.toml, description, frame)
Frame = tuple[str, str, Packet]


def _eth() -> Ether:
    return Ether(src=ROUTER_MAC, dst=NODE_MAC)


def example_frames() -> list[Frame]:
    frames: list[Frame] = []

    def add(verdict: str, what: str, pkt: Packet) -> None:
        frames.append((verdict, what, pkt))

    # IPv4 clients to web:80 — a SYN and a data segment each
    for i in range(1, 7):
        client = f"198.18.0.{i}"
        sport = 40000 + i
        base = _eth() / IP(src=client, dst=VIP4, flags="DF")
        add(
            "forward",
            f"SYN {client}:{sport} -> web:80",
            base / TCP(sport=sport, dport=80, flags="S", seq=1000),
        )
        add(
            "forward",
            f"GET {client}:{sport} -> web:80",
            base / TCP(sport=sport, dport=80, flags="PA", seq=1001, ack=1) / Raw(b"GET / HTTP/1.1\r\n\r\n"),
        )
    # IPv4 clients to web:443
    for i in range(7, 10):
        client = f"198.18.0.{i}"
        sport = 50000 + i
        base = _eth() / IP(src=client, dst=VIP4, flags="DF")
        add("forward", f"SYN {client}:{sport} -> web:443", base / TCP(sport=sport, dport=443, flags="S"))
        add(
            "forward",
            f"TLS {client}:{sport} -> web:443",
            base / TCP(sport=sport, dport=443, flags="PA", seq=1, ack=1) / Raw(b"\x16\x03\x01" + bytes(61)),
        )
    add(
        "forward",
        "SYN in VLAN 100 -> web:80",
        _eth() / Dot1Q(vlan=100) / IP(src="198.18.0.20", dst=VIP4, flags="DF") / TCP(sport=41000, dport=80),
    )
    # to the VIP, but no bind
    add(
        "pass",
        "DNS query to web's address (no udp bind)",
        _eth() / IP(src="198.18.0.1", dst=VIP4) / UDP(dport=53),
    )
    add("pass", "UDP to web:443 (no udp bind)", _eth() / IP(src="198.18.0.2", dst=VIP4) / UDP(dport=443))
    add(
        "pass",
        "SSH to web's address (no bind for port 22)",
        _eth() / IP(src="198.18.0.3", dst=VIP4) / TCP(dport=22),
    )
    for i in (1, 2):
        add(
            "pass",
            "ping to web (forward_icmp_echo = false)",
            _eth() / IP(src="198.18.0.4", dst=VIP4) / ICMP(type=8, id=7, seq=i),
        )
    # An ICMP "fragmentation needed" about a reply the L7 node sent (VIP:80 -> client) goes to the
    # backend that owns the client's flow.
    quoted = raw(IP(src=VIP4, dst="198.18.0.1", flags="DF") / TCP(sport=80, dport=40001, flags="A"))[:28]
    add(
        "forward",
        "ICMP frag-needed quoting web:80 -> 198.18.0.1:40001",
        _eth() / IP(src="198.18.255.1", dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(quoted),
    )
    # Too big once encapsulated (MTU 1500): DF set -> ICMP reply to the client; DF clear -> drop.
    big = Raw(bytes(1500 - 40))
    add(
        "reply",
        "1500-byte DF segment -> web:443 (ICMP frag-needed back)",
        _eth() / IP(src="198.18.0.7", dst=VIP4, flags="DF") / TCP(sport=50007, dport=443, flags="A") / big,
    )
    add(
        "drop",
        "1500-byte non-DF segment -> web:443 (too_big)",
        _eth() / IP(src="198.18.0.8", dst=VIP4) / TCP(sport=50008, dport=443, flags="A") / big,
    )
    # IPv4 fragments of one TCP segment: all reach the same backend
    whole = (
        IP(src="198.18.0.5", dst=VIP4, id=0x0309) / TCP(sport=40005, dport=80, flags="PA") / Raw(bytes(48))
    )
    for n, frag in enumerate(fragment(whole, fragsize=32)):
        add("forward", f"fragment {n} of a segment -> web:80", _eth() / frag)
    # IPv6 clients to web6:443
    for i in (1, 2):
        client = f"2001:db8:c1::{i}"
        sport = 60000 + i
        base = _eth() / IPv6(src=client, dst=VIP6)
        add("forward", f"SYN [{client}]:{sport} -> web6:443", base / TCP(sport=sport, dport=443, flags="S"))
        add(
            "forward",
            f"TLS [{client}]:{sport} -> web6:443",
            base / TCP(sport=sport, dport=443, flags="PA", seq=1, ack=1) / Raw(b"\x16\x03\x01" + bytes(61)),
        )
    add(
        "pass",
        "IPv6 to web6:80 (no bind)",
        _eth() / IPv6(src="2001:db8:c1::1", dst=VIP6) / TCP(sport=60003, dport=80, flags="S"),
    )
    add(
        "reply",
        "1500-byte IPv6 packet -> web6:443 (ICMPv6 packet-too-big back)",
        _eth()
        / IPv6(src="2001:db8:c1::2", dst=VIP6)
        / TCP(sport=60002, dport=443, flags="A")
        / Raw(bytes(1500 - 60)),
    )
    add(
        "pass",
        "ping6 to web6",
        _eth() / IPv6(src="2001:db8:c1::2", dst=VIP6) / ICMPv6EchoRequest(id=1, seq=1),
    )
    # not fwd's traffic at all
    add(
        "pass",
        "ARP who-has",
        Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="192.0.2.1", pdst=VIP4),
    )
    add(
        "pass",
        "ARP who-has",
        Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="192.0.2.1", pdst="192.0.2.10"),
    )
    add(
        "pass",
        "ARP reply",
        Ether(src=NODE_MAC, dst=ROUTER_MAC) / ARP(op=2, psrc="192.0.2.10", pdst="192.0.2.1"),
    )
    add(
        "pass",
        "TCP to another host",
        _eth() / IP(src="198.18.0.1", dst="192.0.2.99") / TCP(sport=40001, dport=80),
    )
    add(
        "pass",
        "IPv6 to another host",
        _eth() / IPv6(src="2001:db8:c1::1", dst="2001:db8::99") / UDP(dport=123),
    )
    add(
        "pass",
        "LLDP",
        Ether(src=ROUTER_MAC, dst="01:80:c2:00:00:0e", type=0x88CC)
        / Raw(bytes.fromhex("020700000000000000000000")),
    )
    # a frame cut short: the IPv4 total length says more than is present
    whole = _eth() / IP(src="198.18.0.6", dst=VIP4) / TCP(sport=40006, dport=80, flags="PA") / Raw(bytes(100))
    add("drop", "truncated IPv4 -> web:80", Ether(raw(whole)[:-50]))
    return frames


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("example.pcap")
    packets = []
    for i, (_, _, pkt) in enumerate(example_frames()):
        pkt.time = T0 + i * 0.0125
        packets.append(pkt)
    wrpcap(str(out), packets)
    print(f"wrote {len(packets)} frames to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
