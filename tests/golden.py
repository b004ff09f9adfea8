"""The golden frame set: table-driven fixtures built with scapy.

Each Fixture is (description, input frame, config name, intended verdict, intended
reason). The expected *output* comes from the reference model (tests/model); the
intended verdict/reason is written here by hand so that tests/unit/test_model.py
can check the model against a human reading of docs/packet-core.md, and
tests/pcap/test_golden.py can check fwd against the model.

    python -m tests.golden DIR      writes DIR/<config>.toml and DIR/<config>_in.pcap
                                    (golden_in.pcap for the main config) for every config

Nothing here imports fwd (fwd_config() imports it lazily, for the tests that drive fwd).
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from tests.model.config import Bind, ModelConfig, Node, Table
from tests.model.packet import expect
from tests.model.table import Backend

HASH_KEY = bytes.fromhex("12345678901234561234567890123456")  # GLB's published example
SEED = bytes.fromhex("34567890123456783456789012345678")
ROUTER_MAC = "02:00:00:00:00:01"  # the input frames' source (the router in front of fwd)
NODE_MAC = "02:00:00:00:00:fe"  # the input frames' destination (fwd's interface)
OVERRIDE_SRC_MAC = bytes.fromhex("0a0000000001")
OVERRIDE_DST_MAC = bytes.fromhex("0a0000000002")

CLIENT4 = "10.11.12.13"
CLIENT6 = "2001:db8:c::1"
VIP4 = "1.1.1.1"  # table web
VIP6 = "2001:db8:1::1"  # table web
VIP4_MIXED = "1.1.1.2"  # table mixed (IPv6 and IPv4 backends)
VIP6_MIXED = "2001:db8:1::2"
VIP4_SINGLE = "1.1.1.3"
VIP4_EMPTY = "1.1.1.4"
VIP4_GLB = "1.1.1.5"
NET4_ALL = "10.100.0.0/24"  # table hashall: all four hash fields
NET6_ALL = "2001:db8:100::/64"


def _b(*specs) -> list[Backend]:
    return [Backend.of(s) for s in specs]


STATES_MIX = _b(
    "10.1.0.1",
    ("10.1.0.2", "draining", True),
    ("10.1.0.3", "active", False),
    ("10.1.0.4", "filling", True),
    "10.1.0.5",
    ("10.1.0.6", "inactive", True),
)


def _tables() -> list[Table]:
    return [
        Table(
            "web",
            HASH_KEY,
            SEED,
            False,
            [
                Bind.make(VIP4, "tcp", 80),
                Bind.make(VIP4, "tcp", 443),
                Bind.make(VIP6, "tcp", 80),
                Bind.make(VIP4, "udp", 53),
            ],
            _b("1.2.3.4", "2.3.4.5", "3.4.5.6"),
        ),
        Table(
            "mixed",
            bytes.fromhex("00112233445566778899aabbccddeeff"),
            bytes.fromhex("ffeeddccbbaa99887766554433221100"),
            False,
            [Bind.make(VIP4_MIXED, "tcp", 80), Bind.make(VIP6_MIXED, "udp", (5000, 5100))],
            _b("2001:db8:b::1", "2001:db8:b::2", "10.0.0.3", "10.0.0.4"),
        ),
        Table("single", HASH_KEY, SEED, False, [Bind.make(VIP4_SINGLE, "tcp", 80)], _b("10.0.0.9")),
        Table(
            "empty", HASH_KEY, SEED, False, [Bind.make(VIP4_EMPTY, "tcp", 80)], _b(("10.0.0.10", "inactive"))
        ),
        Table(
            "hashall",
            bytes.fromhex("0f0e0d0c0b0a09080706050403020100"),
            SEED,
            False,
            [
                Bind.make(NET4_ALL, "udp", (1000, 2000), ("src_addr", "dst_addr", "src_port", "dst_port")),
                Bind.make(NET6_ALL, "tcp", (1, 65535), ("dst_addr", "dst_port")),
            ],
            STATES_MIX,
        ),
        Table("glb", HASH_KEY, SEED, True, [Bind.make(VIP4_GLB, "tcp", 80)], STATES_MIX),
    ]


def _glb_test_tables() -> list[Table]:
    """The forwarding tables of GLB Director's own test suite (tests/glb_test_utils.py), whose
    test_director_classify_v4/v6 expectations are literal known answers."""
    return [
        Table(
            "glb-test-0",
            HASH_KEY,
            SEED,
            True,
            [Bind.make("1.1.1.1", "tcp", 80), Bind.make("1.1.1.1", "tcp", 443)],
            _b("1.2.3.4", "2.3.4.5", "3.4.5.6"),
        ),
        Table(
            "glb-test-1",
            HASH_KEY,
            HASH_KEY,  # seed 12345678901234561234567890123456
            True,
            [
                Bind.make("1.1.1.2", "tcp", 80),
                Bind.make("1.1.1.3", "tcp", 80),
                Bind.make("fdb4:98ce:52d4::42", "tcp", 80),
            ],
            _b("4.5.6.7", "5.6.7.8", "6.7.8.9", "7.8.9.0"),
        ),
    ]


# GLB Director's test suite: (description, frame, expected outer destination, expected hops)
GLB_V6_CLIENT, GLB_V6_VIP = "fd91:79d3:d621::1234", "fdb4:98ce:52d4::42"


def glb_published_cases() -> list[tuple[str, bytes, str, list[str]]]:
    e = eth()  # (GLB's tests use scapy's default MACs, which depend on the host's routes)
    return [
        (
            "GLB v4 test_01_route_classified_v4",
            bytes(e / IP(src=CLIENT4, dst=VIP4) / TCP(sport=45678, dport=80)),
            "3.4.5.6",
            ["2.3.4.5"],
        ),
        (
            "GLB v4 test_02_icmp_fragmentation_required",
            bytes(
                e
                / IP(src="10.11.99.99", dst=VIP4)
                / ICMP(type=3, code=4)
                / IP(src=VIP4, dst=CLIENT4)
                / TCP(sport=80, dport=45678)
            ),
            "3.4.5.6",
            ["2.3.4.5"],
        ),
        (
            "GLB v4 test_03_icmp_echo_request",
            bytes(e / IP(src=CLIENT4, dst=VIP4) / ICMP(type=8, code=0)),
            "3.4.5.6",
            ["2.3.4.5"],
        ),
        (
            "GLB v6 test_01_route_classified_v6",
            bytes(e / IPv6(src=GLB_V6_CLIENT, dst=GLB_V6_VIP) / TCP(sport=45678, dport=80)),
            "5.6.7.8",
            ["6.7.8.9"],
        ),
        (
            "GLB v6 test_02_icmp_fragmentation_required",
            bytes(
                e
                / IPv6(src="fd91:79d3:d621::6666", dst=GLB_V6_VIP)
                / ICMPv6PacketTooBig()
                / IPv6(src=GLB_V6_VIP, dst=GLB_V6_CLIENT)
                / TCP(sport=80, dport=45678)
            ),
            "5.6.7.8",
            ["6.7.8.9"],
        ),
        (
            "GLB v6 test_03_icmp_echo_request",
            bytes(e / IPv6(src=GLB_V6_CLIENT, dst=GLB_V6_VIP) / ICMPv6EchoRequest()),
            "5.6.7.8",
            ["6.7.8.9"],
        ),
    ]


@dataclass
class GoldenConfig:
    model: ModelConfig
    cli_args: list[str] = field(default_factory=list)  # extra `fwd pcap` options
    cli: bool = True  # False: `fwd pcap` refuses this config on purpose; test it via the Python API


@cache
def configs() -> dict[str, GoldenConfig]:
    node = Node(ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10"))
    main = ModelConfig(node, _tables())
    return {
        "golden": GoldenConfig(main),
        "golden_echo": GoldenConfig(ModelConfig(replace(node, forward_icmp_echo=True), _tables())),
        "golden_mac": GoldenConfig(
            ModelConfig(replace(node, src_mac=OVERRIDE_SRC_MAC, dst_mac=OVERRIDE_DST_MAC), _tables()),
            ["--src-mac", "0a:00:00:00:00:01", "--dst-mac", "0a:00:00:00:00:02"],
        ),
        "golden_v4only": GoldenConfig(ModelConfig(replace(node, tunnel_src6=None), _tables()), cli=False),
        "golden_jumbo": GoldenConfig(ModelConfig(replace(node, mtu=9000, forward_icmp_echo=True), _tables())),
        "glb_published": GoldenConfig(
            ModelConfig(Node(ipaddress.ip_address("65.65.65.65"), forward_icmp_echo=True), _glb_test_tables())
        ),
    }


def table_index(name: str) -> int:
    return [t.name for t in _tables()].index(name)


@dataclass
class Fixture:
    desc: str
    frame: bytes
    config: str
    verdict: str
    reason: str | None = None

    @property
    def model(self) -> ModelConfig:
        return configs()[self.config].model

    def expected(self):
        return expect(self.frame, self.model)


# ------------------------------------------------------------------ frame builders


def eth(vlan: int | None = None):
    e = Ether(src=ROUTER_MAC, dst=NODE_MAC)
    return e / Dot1Q(prio=5, vlan=vlan) if vlan is not None else e


def tcp4(src=CLIENT4, dst=VIP4, sport=45678, dport=80, payload=b"", vlan=None, **ip):
    return bytes(eth(vlan) / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport) / payload)


def udp4(src=CLIENT4, dst=VIP4, sport=5353, dport=53, payload=b"q" * 12, vlan=None, **ip):
    return bytes(eth(vlan) / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload)


def tcp6(src=CLIENT6, dst=VIP6, sport=45678, dport=80, payload=b"", vlan=None, ext=None, **ip):
    pkt = IPv6(src=src, dst=dst, **ip)
    if ext is not None:
        pkt = pkt / ext
    return bytes(eth(vlan) / pkt / TCP(sport=sport, dport=dport) / payload)


def udp6(src=CLIENT6, dst=VIP6_MIXED, sport=40000, dport=5050, payload=b"u" * 20, **ip):
    return bytes(eth() / IPv6(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload)


def frag4(src=CLIENT4, dst=VIP4, proto=6, first=True, dport=80, ipid=0x1234, size=64):
    """A TCP/UDP IPv4 fragment: the first (MF, offset 0, with L4 header) or a later one."""
    if first:
        l4 = TCP(sport=45678, dport=dport) if proto == 6 else UDP(sport=5353, dport=dport, len=200)
        return bytes(eth() / IP(src=src, dst=dst, id=ipid, flags="MF", proto=proto) / l4 / (b"f" * size))
    return bytes(eth() / IP(src=src, dst=dst, id=ipid, frag=185, proto=proto) / Raw(b"g" * size))


def frag6(src=CLIENT6, dst=VIP6, first=True, ident=0xABCD1234, dport=80):
    if first:
        fh = IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=ident)
        return bytes(eth() / IPv6(src=src, dst=dst) / fh / TCP(sport=45678, dport=dport) / (b"f" * 64))
    fh = IPv6ExtHdrFragment(nh=6, offset=100, m=0, id=ident)
    return bytes(eth() / IPv6(src=src, dst=dst) / fh / Raw(b"g" * 64))


def icmp4_error(quote: bytes, dst=VIP4, src="203.0.113.1", code=4, mtu=1400, **ip):
    """ICMPv4 type 3 sent by a router to the VIP, quoting `quote` (raw bytes)."""
    return bytes(eth() / IP(src=src, dst=dst, **ip) / ICMP(type=3, code=code, nexthopmtu=mtu) / Raw(quote))


def icmp6_ptb(quote: bytes, dst=VIP6, src="2001:db8:ffff::1", mtu=1400):
    return bytes(eth() / IPv6(src=src, dst=dst) / ICMPv6PacketTooBig(mtu=mtu) / Raw(quote))


def reply_quote4(vip=VIP4, client=CLIENT4, sport=80, dport=45678, proto="tcp", extra=8):
    """The start of a reply VIP -> client as a router quotes it: IP header + 8 bytes."""
    l4 = TCP(sport=sport, dport=dport) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return bytes(IP(src=vip, dst=client, flags="DF") / l4 / (b"r" * 100))[: 20 + extra]


def reply_quote6(vip=VIP6, client=CLIENT6, sport=80, dport=45678):
    return bytes(IPv6(src=vip, dst=client) / TCP(sport=sport, dport=dport) / (b"r" * 100))[:48]


def set_ip4(frame: bytes, l2: int = 14, **fields) -> bytes:
    """Patch raw IPv4 header fields (no checksum fix: fwd does not check it)."""
    b = bytearray(frame)
    if "ver_ihl" in fields:
        b[l2] = fields["ver_ihl"]
    if "total_length" in fields:
        struct.pack_into("!H", b, l2 + 2, fields["total_length"])
    return bytes(b)


def with_l4_len(frame: bytes, l4_bytes: int, l2: int = 14) -> bytes:
    """Cut the IPv4 packet to IHL*4 + l4_bytes and make the total length say so."""
    ihl = (frame[l2] & 15) * 4
    tl = ihl + l4_bytes
    return set_ip4(frame[: l2 + tl], l2, total_length=tl)


def with_l4_len6(frame: bytes, l4_off: int, l4_bytes: int, l2: int = 14) -> bytes:
    """Cut an IPv6 packet (upper layer at l4_off) and fix its payload length."""
    b = bytearray(frame[: l2 + l4_off + l4_bytes])
    struct.pack_into("!H", b, l2 + 4, l4_off + l4_bytes - 40)
    return bytes(b)


def dest_opts_chain(n: int):
    chain = IPv6ExtHdrDestOpt()
    for _ in range(n - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    return chain


def client(i: int, family: int = 4) -> str:
    """The i-th synthetic client address (10.20.x.y or 2001:db8:20::x)."""
    return f"10.20.{i >> 8 & 255}.{i & 255}" if family == 4 else f"2001:db8:20::{i:x}"


def find_frame(make, want, config: str = "golden", start: int = 1) -> bytes:
    """The first frame make(i), i = start, start+1, ..., for which the model's answer e (with a
    primary) satisfies want(e, table): picks clients that land on a wanted kind of row."""
    model = configs()[config].model
    for i in range(start, start + 50000):
        frame = make(i)
        e = expect(frame, model)
        if e.primary is not None and want(e, model.tables[e.table]):
            return frame
    raise LookupError("no frame found")


def fam(e, t: Table) -> tuple[int, int]:
    """(primary family, secondary family) of a model answer."""
    return t.backends[e.primary].address.version, t.backends[e.secondary].address.version


# ------------------------------------------------------------------ the fixtures


@cache
def fixtures() -> list[Fixture]:
    F = Fixture
    fx: list[Fixture] = []
    add = fx.append
    big_payload = b"x" * (1480 - 40)  # a 1480-byte IPv4 TCP packet

    # -- TCP/UDP over IPv4/IPv6
    add(F("tcp4 SYN, GLB's published example flow", tcp4(), "golden", "forward"))
    add(F("tcp4 with payload", tcp4(payload=b"GET / HTTP/1.0\r\n\r\n", flags="DF"), "golden", "forward"))
    add(F("tcp4 to the second port bind (443)", tcp4(dport=443, sport=50001), "golden", "forward"))
    add(F("udp4 to the udp bind", udp4(), "golden", "forward"))
    add(F("tcp6", tcp6(payload=b"hello"), "golden", "forward"))
    add(F("udp6 inside a port range bind", udp6(), "golden", "forward"))
    add(F("udp6 at the low end of the port range", udp6(dport=5000), "golden", "forward"))
    add(F("udp6 at the high end of the port range", udp6(dport=5100), "golden", "forward"))
    add(F("udp6 just past the port range: PASS", udp6(dport=5101), "golden", "pass"))
    add(F("tcp4 with FIN/ACK and data", tcp4(payload=b"bye"), "golden", "forward"))

    # -- clients landing on each backend of the web table (as primary, IPv4 and IPv6)
    for want in range(3):
        add(
            F(
                f"tcp4 from a client whose primary is web backend {want}",
                find_frame(
                    lambda i: tcp4(src=client(i), sport=40000 + i), lambda e, t, w=want: e.primary == w
                ),
                "golden",
                "forward",
            )
        )
        add(
            F(
                f"tcp6 from a client whose primary is web backend {want}",
                find_frame(lambda i: tcp6(src=client(i, 6)), lambda e, t, w=want: e.primary == w),
                "golden",
                "forward",
            )
        )

    # -- IPv4 options, IPv6 extension headers
    add(
        F(
            "ipv4 with Router Alert option (IHL 6)",
            tcp4(options=[IPOption_Router_Alert()]),
            "golden",
            "forward",
        )
    )
    add(F("ipv4 with 40 bytes of options (IHL 15)", tcp4(options=[IPOption_NOP()] * 40), "golden", "forward"))
    add(F("ipv6 hop-by-hop", tcp6(ext=IPv6ExtHdrHopByHop()), "golden", "forward"))
    add(F("ipv6 routing header", tcp6(ext=IPv6ExtHdrRouting(addresses=[])), "golden", "forward"))
    add(F("ipv6 destination options", tcp6(ext=IPv6ExtHdrDestOpt()), "golden", "forward"))
    chain4 = (
        IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt()
    )
    add(F("ipv6 hop-by-hop, dest opts, routing, dest opts", tcp6(ext=chain4), "golden", "forward"))
    add(
        F(
            "ipv6 chain of 8 extension headers (the most allowed)",
            tcp6(ext=dest_opts_chain(8)),
            "golden",
            "forward",
        )
    )
    add(F("ipv6 chain of 9 extension headers", tcp6(ext=dest_opts_chain(9)), "golden", "drop", "bad_ipv6"))
    add(F("ipv6 destination options header of 32 bytes", tcp6_raw_ext(dest_opts(6, 32)), "golden", "forward"))
    atomic = IPv6ExtHdrFragment(nh=6, offset=0, m=0, id=7)
    add(F("ipv6 atomic fragment (fragment header, offset 0, M 0)", tcp6(ext=atomic), "golden", "forward"))

    # -- VLAN
    add(F("vlan-tagged tcp4 (output untagged)", tcp4(vlan=100), "golden", "forward"))
    add(F("vlan-tagged tcp6", tcp6(vlan=4094), "golden", "forward"))
    add(F("vlan-tagged udp4 with padding", udp4(payload=b"", vlan=7) + b"\0" * 14, "golden", "forward"))

    # -- fragments
    add(F("ipv4 first fragment (MF, offset 0)", frag4(), "golden", "forward"))
    add(F("ipv4 later fragment (offset 1480)", frag4(first=False), "golden", "forward"))
    add(
        F("ipv4 first fragment to a port with no bind (ports not read)", frag4(dport=81), "golden", "forward")
    )
    add(
        F(
            "ipv4 udp later fragment: the first udp bind of the VIP",
            frag4(proto=17, first=False),
            "golden",
            "forward",
        )
    )
    add(F("ipv4 udp first fragment", frag4(proto=17, dport=53), "golden", "forward"))
    add(F("ipv4 fragment, tcp, VIP with no tcp bind: PASS", frag4(dst="10.100.0.7"), "golden", "pass"))
    add(
        F(
            "ipv4 fragment to the all-fields bind (ports as 0)",
            frag4(dst="10.100.0.7", proto=17),
            "golden",
            "forward",
        )
    )
    add(F("ipv4 later fragment with DF set", set_df(frag4(first=False)), "golden", "forward"))
    add(F("ipv6 first fragment", frag6(), "golden", "forward"))
    add(F("ipv6 later fragment", frag6(first=False), "golden", "forward"))
    add(F("ipv6 fragment to the all-fields (dst) bind", frag6(dst="2001:db8:100::9"), "golden", "forward"))

    # -- ICMP errors about a VIP flow (router -> VIP, quoting VIP -> client)
    add(F("icmp4 frag-needed quoting the GLB example flow", icmp4_error(reply_quote4()), "golden", "forward"))
    add(F("icmp4 port unreachable (code 3)", icmp4_error(reply_quote4(), code=3), "golden", "forward"))
    add(
        F(
            "icmp4 frag-needed quoting a udp flow",
            icmp4_error(reply_quote4(sport=53, dport=5353, proto="udp")),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed, quote with exactly 4 bytes of L4",
            icmp4_error(reply_quote4(extra=4)),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed, quote with the whole packet",
            icmp4_error(bytes(IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=45678) / (b"z" * 200))),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed quoting an all-fields flow",
            icmp4_error(
                reply_quote4(vip="10.100.0.77", sport=1500, dport=40000, proto="udp"), dst="10.100.0.77"
            ),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed quoting a port with no bind: PASS",
            icmp4_error(reply_quote4(sport=8080)),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "icmp4 frag-needed quoting a non-VIP source: PASS",
            icmp4_error(reply_quote4(vip="9.9.9.9")),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "icmp4 frag-needed quoting a fragment",
            icmp4_error(bytes(IP(src=VIP4, dst=CLIENT4, flags="MF") / TCP(sport=80, dport=45678))[:28]),
            "golden",
            "forward",
        )
    )
    quote_opts = bytes(
        IP(src=VIP4, dst=CLIENT4, options=[IPOption_Router_Alert()]) / TCP(sport=80, dport=45678)
    )
    add(F("icmp4 frag-needed, quote with IPv4 options", icmp4_error(quote_opts[:32]), "golden", "forward"))
    add(F("icmp6 packet-too-big quoting a VIP flow", icmp6_ptb(reply_quote6()), "golden", "forward"))
    q6ext = bytes(IPv6(src=VIP6, dst=CLIENT6) / IPv6ExtHdrDestOpt() / TCP(sport=80, dport=45678))[:56]
    add(F("icmp6 packet-too-big, quote with an extension header", icmp6_ptb(q6ext), "golden", "forward"))
    add(
        F(
            "icmp6 packet-too-big to the mixed table (udp)",
            icmp6_ptb(
                bytes(IPv6(src=VIP6_MIXED, dst=CLIENT6) / UDP(sport=5050, dport=40000))[:48], dst=VIP6_MIXED
            ),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 echo reply (type 0) to the VIP: PASS",
            bytes(eth() / IP(src=CLIENT4, dst=VIP4) / ICMP(type=0)),
            "golden",
            "pass",
        )
    )
    add(F("icmp4 time exceeded (type 11) to the VIP: PASS", icmp_type11(), "golden", "pass"))
    add(F("icmp6 dest unreachable (type 1) to the VIP: PASS", icmp6_raw(1, reply_quote6()), "golden", "pass"))

    # -- ICMP echo
    echo4 = bytes(eth() / IP(src=CLIENT4, dst=VIP4, id=0x4242) / ICMP(type=8, id=1, seq=1) / (b"p" * 56))
    echo6 = bytes(
        eth() / IPv6(src=CLIENT6, dst=VIP6, fl=0x12345) / ICMPv6EchoRequest(id=1, seq=1, data=b"p" * 56)
    )
    add(F("icmp4 echo request, forward_icmp_echo off: PASS", echo4, "golden", "pass"))
    add(F("icmp6 echo request, forward_icmp_echo off: PASS", echo6, "golden", "pass"))
    add(F("icmp4 echo request, forward_icmp_echo on", echo4, "golden_echo", "forward"))
    add(F("icmp6 echo request, forward_icmp_echo on (hint: flow label)", echo6, "golden_echo", "forward"))
    add(
        F(
            "icmp4 echo request to an all-fields prefix (any proto bind)",
            bytes(eth() / IP(src=CLIENT4, dst="10.100.0.7", id=77) / ICMP(type=8)),
            "golden_echo",
            "forward",
        )
    )
    add(
        F(
            "icmp4 echo request with 4 bytes of ICMP",
            with_l4_len(echo4, 4),
            "golden_echo",
            "drop",
            "truncated",
        )
    )
    add(
        F(
            "icmp6 echo request with 4 bytes of ICMP",
            with_l4_len6(echo6, 40, 4),
            "golden_echo",
            "drop",
            "truncated",
        )
    )
    add(F("icmp4 echo request, 4 bytes of ICMP, echo off: PASS", with_l4_len(echo4, 4), "golden", "pass"))
    add(
        F(
            "icmp4 echo request, oversize, DF: REPLY",
            bytes(eth() / IP(src=CLIENT4, dst=VIP4, flags="DF") / ICMP(type=8) / (b"p" * 1452)),
            "golden_echo",
            "reply",
        )
    )
    add(F("tcp4 through the echo config too", tcp4(), "golden_echo", "forward"))

    # -- not ours: PASS
    add(F("tcp4 to a non-VIP address", tcp4(dst="8.8.8.8"), "golden", "pass"))
    add(F("tcp6 to a non-VIP address", tcp6(dst="2001:db8:9::9"), "golden", "pass"))
    add(
        F(
            "ARP request",
            bytes(Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP4)),
            "golden",
            "pass",
        )
    )
    add(F("ARP in a VLAN", bytes(eth(vlan=5) / ARP(pdst=VIP4)), "golden", "pass"))
    add(
        F(
            "LLDP EtherType",
            bytes(Ether(src=ROUTER_MAC, dst=NODE_MAC, type=0x88CC) / Raw(b"\0" * 46)),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "802.1ad outer tag (0x88a8)",
            bytes(
                Ether(src=ROUTER_MAC, dst=NODE_MAC, type=0x88A8)
                / Raw(b"\x00\x64\x08\x00" + bytes(IP(src=CLIENT4, dst=VIP4) / TCP(dport=80)))
            ),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "double 802.1Q tag",
            bytes(eth(vlan=5) / Dot1Q(vlan=6) / IP(src=CLIENT4, dst=VIP4) / TCP(dport=80)),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "Ethernet header only, ARP EtherType",
            bytes(Ether(src=ROUTER_MAC, dst=NODE_MAC, type=0x0806)),
            "golden",
            "pass",
        )
    )
    add(F("VIP, tcp, other port", tcp4(dport=81), "golden", "pass"))
    add(F("VIP, udp to a tcp-only port", udp4(dport=80), "golden", "pass"))
    add(F("VIP, GRE", bytes(eth() / IP(src=CLIENT4, dst=VIP4, proto=47) / Raw(b"\0" * 24)), "golden", "pass"))
    add(
        F(
            "VIP6, ICMPv4 protocol number inside IPv6: PASS",
            bytes(eth() / IPv6(src=CLIENT6, dst=VIP6, nh=1) / Raw(bytes([8, 0, 0, 0, 0, 0, 0, 0]))),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "non-VIP with a broken TCP header: PASS (not parsed)",
            set_tcp_doff(tcp4(dst="8.8.8.8"), 2),
            "golden",
            "pass",
        )
    )
    add(
        F(
            "non-VIP IPv6 with 9 extension headers: PASS (not parsed)",
            tcp6(dst="2001:db8:9::9", ext=dest_opts_chain(9)),
            "golden",
            "pass",
        )
    )

    # -- truncated at every header boundary
    base4 = tcp4(payload=b"data" * 4)
    for n in (0, 1, 6, 12, 13):
        add(F(f"frame of {n} bytes", base4[:n], "golden", "drop", "truncated"))
    add(F("Ethernet header only, IPv4 EtherType", base4[:14], "golden", "drop", "truncated"))
    add(F("IPv4 header cut at 19 bytes", base4[:33], "golden", "drop", "truncated"))
    add(F("IPv4 header only, total length says more", base4[:34], "golden", "drop", "truncated"))
    add(F("IPv4 + 10 bytes of TCP, total length says more", base4[:44], "golden", "drop", "truncated"))
    add(F("IPv4 + TCP header, data cut", base4[:55], "golden", "drop", "truncated"))
    add(
        F(
            "IPv4 options cut (IHL 15, 24 bytes present)",
            tcp4(options=[IPOption_NOP()] * 40)[:38],
            "golden",
            "drop",
            "truncated",
        )
    )
    add(
        F(
            "TCP header of 19 bytes (total length consistent)",
            with_l4_len(base4, 19),
            "golden",
            "drop",
            "truncated",
        )
    )
    add(
        F(
            "TCP header of 0 bytes (total length consistent)",
            with_l4_len(base4, 0),
            "golden",
            "drop",
            "truncated",
        )
    )
    add(
        F(
            "UDP header of 7 bytes (total length consistent)",
            with_l4_len(udp4(), 7),
            "golden",
            "drop",
            "truncated",
        )
    )
    add(F("TCP header of 20 bytes, no data (consistent)", with_l4_len(base4, 20), "golden", "forward"))
    vl = tcp4(vlan=9)
    for n in (14, 16, 17):
        add(F(f"VLAN frame cut at {n} bytes", vl[:n], "golden", "drop", "truncated"))
    add(F("VLAN + IPv4 EtherType, no IP header", vl[:18], "golden", "drop", "truncated"))
    add(F("VLAN + IPv4 header cut at 19 bytes", vl[:37], "golden", "drop", "truncated"))
    base6 = tcp6(payload=b"data" * 4)
    add(F("IPv6 header cut at 39 bytes", base6[:53], "golden", "drop", "truncated"))
    add(F("IPv6 header only, payload length says more", base6[:54], "golden", "drop", "truncated"))
    add(F("IPv6 + 10 bytes of TCP (payload length says more)", base6[:64], "golden", "drop", "truncated"))
    add(
        F(
            "IPv6 TCP header of 12 bytes (payload length consistent)",
            with_l4_len6(base6, 40, 12),
            "golden",
            "drop",
            "truncated",
        )
    )
    add(
        F(
            "IPv6 UDP header of 4 bytes (consistent)",
            with_l4_len6(udp6(), 40, 4),
            "golden",
            "drop",
            "truncated",
        )
    )
    ext16 = tcp6_raw_ext(dest_opts(6, 16))
    add(
        F(
            "IPv6 dest options of 16 bytes, 8 present",
            with_l4_len6(ext16, 40, 8),
            "golden",
            "drop",
            "truncated",
        )
    )
    add(F("IPv6 dest options, 1 byte present", with_l4_len6(ext16, 40, 1), "golden", "drop", "truncated"))
    add(F("IPv6 fragment header cut at 4 bytes", with_l4_len6(frag6(), 40, 4), "golden", "drop", "truncated"))
    add(F("IPv6 dest opts complete, TCP missing", with_l4_len6(ext16, 40, 16), "golden", "drop", "truncated"))
    add(
        F(
            "IPv4 first fragment with only 4 bytes of TCP (ports not needed)",
            with_l4_len(frag4(), 4),
            "golden",
            "forward",
        )
    )

    # -- malformed
    add(F("IPv4 IHL 4", set_ip4(base4, ver_ihl=0x44), "golden", "drop", "bad_ipv4"))
    add(F("IPv4 IHL 0", set_ip4(base4, ver_ihl=0x40), "golden", "drop", "bad_ipv4"))
    add(F("IPv4 EtherType, version 5", set_ip4(base4, ver_ihl=0x55), "golden", "drop", "bad_ipv4"))
    add(F("IPv4 EtherType, version 6", set_ip4(base4, ver_ihl=0x65), "golden", "drop", "bad_ipv4"))
    add(F("IPv4 total length 19 (< IHL*4)", set_ip4(base4, total_length=19), "golden", "drop", "bad_ipv4"))
    add(
        F(
            "IPv4 total length 23 with IHL 6",
            set_ip4(tcp4(options=[IPOption_Router_Alert()]), total_length=23),
            "golden",
            "drop",
            "bad_ipv4",
        )
    )
    add(F("IPv4 total length too big", set_ip4(base4, total_length=1000), "golden", "drop", "truncated"))
    add(F("IPv4 total length 65535", set_ip4(base4, total_length=65535), "golden", "drop", "truncated"))
    add(F("IPv6 EtherType, version 4", set_byte(base6, 14, 0x45), "golden", "drop", "bad_ipv6"))
    add(F("IPv6 payload length 0 (jumbogram)", set_u16(base6, 18, 0), "golden", "drop", "bad_ipv6"))
    add(F("TCP data offset 4", set_tcp_doff(base4, 4), "golden", "drop", "bad_l4"))
    add(
        F(
            "TCP data offset 0 to a VIP port with no bind (checked first)",
            set_tcp_doff(tcp4(dport=81), 0),
            "golden",
            "drop",
            "bad_l4",
        )
    )
    add(F("TCP6 data offset 3", set_tcp_doff(base6, 3, l4=54), "golden", "drop", "bad_l4"))
    add(F("UDP length 7", set_u16(udp4(), 38, 7), "golden", "drop", "bad_l4"))
    add(F("UDP length 0", set_u16(udp4(), 38, 0), "golden", "drop", "bad_l4"))
    add(F("UDP length larger than the packet (not checked)", set_u16(udp4(), 38, 999), "golden", "forward"))
    add(
        F(
            "TCP data offset 15 with a 20-byte segment (not checked)",
            set_tcp_doff(base4, 15),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed quoting garbage",
            icmp4_error(bytes(range(0x50, 0x70))),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(F("icmp4 frag-needed with an empty quote", icmp4_error(b""), "golden", "drop", "bad_icmp"))
    add(
        F(
            "icmp4 frag-needed quoting 19 bytes of IP",
            icmp4_error(reply_quote4()[:19]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(
        F(
            "icmp4 frag-needed quote with 3 bytes of L4",
            icmp4_error(reply_quote4(extra=3)),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(
        F(
            "icmp4 frag-needed quote with IHL 3",
            icmp4_error(bytes([0x43]) + reply_quote4()[1:]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(
        F(
            "icmp4 frag-needed quote IHL 15 with 28 bytes",
            icmp4_error(bytes([0x4F]) + reply_quote4()[1:]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(F("icmp4 frag-needed quoting IPv6", icmp4_error(reply_quote6()), "golden", "drop", "bad_icmp"))
    add(
        F(
            "icmp4 frag-needed quoting ICMP",
            icmp4_error(bytes(IP(src=VIP4, dst=CLIENT4) / ICMP(type=0))[:28]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(
        F(
            "icmp6 packet-too-big quoting 39 bytes",
            icmp6_ptb(reply_quote6()[:39]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(F("icmp6 packet-too-big quoting IPv4", icmp6_ptb(reply_quote4()), "golden", "drop", "bad_icmp"))
    q9 = bytes(IPv6(src=VIP6, dst=CLIENT6) / dest_opts_chain(9) / TCP(sport=80, dport=45678))
    add(
        F(
            "icmp6 packet-too-big quoting 9 extension headers",
            icmp6_ptb(q9[:120]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )
    add(F("icmp6 packet-too-big, quoted ext header cut", icmp6_ptb(q6ext[:50]), "golden", "drop", "bad_icmp"))
    add(
        F(
            "icmp6 packet-too-big quoting ICMPv6",
            icmp6_ptb(bytes(IPv6(src=VIP6, dst=CLIENT6) / ICMPv6EchoRequest())[:48]),
            "golden",
            "drop",
            "bad_icmp",
        )
    )

    # -- too big for the MTU
    big4 = tcp4(payload=big_payload, flags="DF")
    add(F("tcp4 1480 bytes DF: REPLY frag-needed (quote cut to 576)", big4, "golden", "reply"))
    add(F("tcp4 1480 bytes, no DF: DROP too_big", tcp4(payload=big_payload), "golden", "drop", "too_big"))
    add(
        F(
            "tcp4 1460 bytes DF: exactly the MTU after encapsulation",
            tcp4(payload=b"x" * 1420, flags="DF"),
            "golden",
            "forward",
        )
    )
    add(F("tcp4 1461 bytes DF: one byte over", tcp4(payload=b"x" * 1421, flags="DF"), "golden", "reply"))
    add(F("tcp4 1461 bytes, no DF: one byte over", tcp4(payload=b"x" * 1421), "golden", "drop", "too_big"))
    add(
        F(
            "vlan tcp4 1480 bytes DF: REPLY keeps the VLAN tag",
            tcp4(payload=big_payload, flags="DF", vlan=100),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "tcp6 1480 bytes: REPLY packet-too-big (quote cut to 1280)",
            tcp6(payload=b"x" * 1420),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "udp6 1500 bytes to an IPv6-outer row: REPLY",
            find_frame(
                lambda i: udp6(src=client(i, 6), payload=b"x" * 1452), lambda e, t: fam(e, t) == (6, 6)
            ),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "tcp4 1480 DF to the single backend (no hop)",
            tcp4(dst=VIP4_SINGLE, payload=big_payload, flags="DF"),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "tcp4 1464 DF to the single backend: fits exactly",
            tcp4(dst=VIP4_SINGLE, payload=b"x" * 1424, flags="DF"),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "icmp4 frag-needed, oversize, DF: DROP too_big (no reply to an error)",
            icmp4_error(
                bytes(IP(src=VIP4, dst=CLIENT4) / TCP(sport=80, dport=45678) / (b"z" * 1440)), flags="DF"
            ),
            "golden",
            "drop",
            "too_big",
        )
    )
    add(
        F(
            "icmp6 packet-too-big, oversize: DROP too_big",
            icmp6_ptb(bytes(IPv6(src=VIP6, dst=CLIENT6) / TCP(sport=80, dport=45678) / (b"z" * 1400))),
            "golden",
            "drop",
            "too_big",
        )
    )
    add(
        F("ipv4 first fragment, oversize, no DF: DROP too_big", frag4(size=1440), "golden", "drop", "too_big")
    )
    add(
        F(
            "udp4 oversize with padding-free jumbo payload, DF",
            udp4(payload=b"j" * 3000, flags="DF"),
            "golden",
            "reply",
        )
    )

    add(
        F(
            "ipv4 with options, oversize, DF: REPLY quotes the options",
            tcp4(options=[IPOption_Router_Alert()], payload=big_payload, flags="DF"),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "icmp6 echo request, oversize: REPLY packet-too-big",
            bytes(eth() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(data=b"p" * 1500)),
            "golden_echo",
            "reply",
        )
    )
    add(
        F(
            "vlan tcp6 oversize: REPLY packet-too-big keeps the tag",
            tcp6(payload=b"x" * 1500, vlan=33),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "ipv6 fragment, oversize: REPLY (IPv6 is never fragmented on the way)",
            bytes(
                eth()
                / IPv6(src=CLIENT6, dst=VIP6)
                / IPv6ExtHdrFragment(nh=6, m=1, id=5)
                / TCP(dport=80)
                / (b"f" * 1440)
            ),
            "golden",
            "reply",
        )
    )
    add(
        F(
            "ipv6 hop-by-hop then fragment header",
            tcp6(ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(nh=6, m=1, id=0x10001)),
            "golden",
            "forward",
        )
    )
    # MTU 9000
    add(
        F(
            "mtu 9000: udp4 of 3000 bytes DF forwarded",
            udp4(payload=b"j" * 3000, flags="DF"),
            "golden_jumbo",
            "forward",
        )
    )
    add(F("mtu 9000: tcp6 of 8900 bytes forwarded", tcp6(payload=b"x" * 8840), "golden_jumbo", "forward"))
    add(
        F(
            "mtu 9000: tcp4 of 8980 bytes DF: REPLY (quote 576)",
            tcp4(payload=b"x" * 8940, flags="DF"),
            "golden_jumbo",
            "reply",
        )
    )
    add(
        F(
            "mtu 9000: tcp6 of 9000 bytes: REPLY (quote 1280)",
            tcp6(payload=b"x" * 8940),
            "golden_jumbo",
            "reply",
        )
    )
    add(
        F(
            "mtu 9000: icmp4 echo of 8000 bytes DF forwarded",
            bytes(eth() / IP(src=CLIENT4, dst=VIP4, flags="DF") / ICMP(type=8) / (b"p" * 7972)),
            "golden_jumbo",
            "forward",
        )
    )
    add(
        F(
            "mtu 9000: tcp4 of 9000 bytes, no DF: DROP too_big",
            tcp4(payload=b"x" * 8960),
            "golden_jumbo",
            "drop",
            "too_big",
        )
    )

    # -- IPv6 and mixed-family backends
    for pv, sv in ((6, 6), (6, 4), (4, 6), (4, 4)):
        add(
            F(
                f"tcp4 to the mixed table, primary IPv{pv}, secondary IPv{sv}",
                find_frame(
                    lambda i: tcp4(src=client(i), dst=VIP4_MIXED), lambda e, t, w=(pv, sv): fam(e, t) == w
                ),
                "golden",
                "forward",
            )
        )
        add(
            F(
                f"udp6 to the mixed table, primary IPv{pv}, secondary IPv{sv}",
                find_frame(lambda i: udp6(src=client(i, 6)), lambda e, t, w=(pv, sv): fam(e, t) == w),
                "golden",
                "forward",
            )
        )
    add(
        F(
            "IPv6 primary without an IPv6 tunnel source: DROP no_tunnel_source",
            find_frame(lambda i: tcp4(src=client(i), dst=VIP4_MIXED), lambda e, t: fam(e, t)[0] == 6),
            "golden_v4only",
            "drop",
            "no_tunnel_source",
        )
    )
    add(
        F(
            "IPv4 primary, IPv6 secondary, no IPv6 tunnel source: FORWARD",
            find_frame(lambda i: tcp4(src=client(i), dst=VIP4_MIXED), lambda e, t: fam(e, t) == (4, 6)),
            "golden_v4only",
            "forward",
        )
    )
    add(F("tcp4 GLB example through the v4-only config", tcp4(), "golden_v4only", "forward"))

    # -- single backend, empty table, states
    add(F("single-backend table: no hop", tcp4(dst=VIP4_SINGLE), "golden", "forward"))
    add(
        F("single-backend table, another client", tcp4(dst=VIP4_SINGLE, src="10.99.0.1"), "golden", "forward")
    )
    add(
        F(
            "empty table (only an inactive backend): DROP no_backend",
            tcp4(dst=VIP4_EMPTY),
            "golden",
            "drop",
            "no_backend",
        )
    )
    add(
        F(
            "udp4 to the all-fields bind",
            udp4(dst="10.100.0.77", sport=40000, dport=1500),
            "golden",
            "forward",
        )
    )
    add(
        F(
            "udp4 to the all-fields bind, other client port",
            udp4(dst="10.100.0.77", sport=40001, dport=1500),
            "golden",
            "forward",
        )
    )
    add(F("tcp6 to the dst-only bind", tcp6(dst="2001:db8:100::9", dport=8443), "golden", "forward"))
    states = (
        ("draining", lambda e, t: 1 in (e.primary, e.secondary)),
        ("unhealthy", lambda e, t: 2 in (e.primary, e.secondary)),
        ("filling", lambda e, t: e.primary == 3),
        ("healthy", lambda e, t: e.primary in (0, 4) and e.secondary in (0, 4)),
    )
    for what, want in states:
        add(
            F(
                f"all-fields table: row with the {what} backend",
                find_frame(lambda i: udp4(src="10.30.0.1", dst="10.100.0.78", sport=i, dport=1000), want),
                "golden",
                "forward",
            )
        )
        add(
            F(
                f"glb_compat table: row with the {what} backend",
                find_frame(lambda i: tcp4(src=client(i), dst=VIP4_GLB), want),
                "golden",
                "forward",
            )
        )

    # -- Ethernet padding
    syn = tcp4(sport=1234)
    add(F("tcp4 SYN padded to 60 bytes", syn + b"\0" * (60 - len(syn)), "golden", "forward"))
    add(F("tcp4 with 100 bytes of trailing junk", syn + b"\xee" * 100, "golden", "forward"))
    add(F("tcp6 with trailing junk", tcp6() + b"\xee" * 7, "golden", "forward"))
    add(F("non-VIP padded frame: PASS", tcp4(dst="8.8.8.8") + b"\0" * 6, "golden", "pass"))
    add(
        F("oversize DF tcp4 with padding: reply quotes IP bytes only", big4 + b"\xee" * 30, "golden", "reply")
    )

    # -- GLB Director's own test suite (known answers, checked in tests/unit/test_model.py)
    for desc, frame, _, _ in glb_published_cases():
        add(F(desc, frame, "glb_published", "forward"))

    # -- the same flows with MAC overrides
    for f in list(fx):
        if f.config == "golden" and f.verdict in ("forward", "reply") and "vlan" in f.desc.lower():
            add(F(f"[mac override] {f.desc}", f.frame, "golden_mac", f.verdict, f.reason))
    add(F("[mac override] tcp4 GLB example", tcp4(), "golden_mac", "forward"))
    add(
        F(
            "[mac override] udp6 to an IPv6-outer row",
            find_frame(lambda i: udp6(src=client(i, 6)), lambda e, t: fam(e, t)[0] == 6, "golden_mac"),
            "golden_mac",
            "forward",
        )
    )
    add(F("[mac override] oversize DF: the reply ignores the overrides", big4, "golden_mac", "reply"))
    return fx


def dest_opts(nh: int, size: int) -> bytes:
    """A raw destination options header of `size` bytes (a multiple of 8), padded with PadN."""
    return bytes([nh, size // 8 - 1, 1, size - 4]) + bytes(size - 4)


def tcp6_raw_ext(ext: bytes, src=CLIENT6, dst=VIP6) -> bytes:
    """tcp6 with raw extension header bytes (first one: destination options) before TCP."""
    tcp = bytes(TCP(sport=45678, dport=80))
    return bytes(eth() / IPv6(src=src, dst=dst, nh=60) / Raw(ext + tcp))


def set_df(frame: bytes, l2: int = 14) -> bytes:
    b = bytearray(frame)
    b[l2 + 6] |= 0x40
    return bytes(b)


def set_byte(frame: bytes, off: int, value: int) -> bytes:
    b = bytearray(frame)
    b[off] = value
    return bytes(b)


def set_u16(frame: bytes, off: int, value: int) -> bytes:
    b = bytearray(frame)
    struct.pack_into("!H", b, off, value)
    return bytes(b)


def set_tcp_doff(frame: bytes, doff: int, l4: int = 34) -> bytes:
    b = bytearray(frame)
    b[l4 + 12] = (doff << 4) | (b[l4 + 12] & 15)
    return bytes(b)


def icmp_type11() -> bytes:
    return bytes(eth() / IP(src="203.0.113.1", dst=VIP4) / ICMP(type=11, code=0) / Raw(reply_quote4()))


def icmp6_raw(icmp_type: int, body: bytes) -> bytes:
    """An ICMPv6 message of any type, checksum left 0 (fwd does not check it)."""
    return bytes(
        eth()
        / IPv6(src="2001:db8:ffff::1", dst=VIP6, nh=58)
        / Raw(bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + body)
    )


# ------------------------------------------------------------------ files


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """Classic pcap, microsecond timestamps, link type Ethernet; one frame per second."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(fr), len(fr)))
            f.write(fr)


def read_pcap(path: Path) -> list[bytes]:
    """Frames of a classic pcap (either byte order, us or ns)."""
    blob = Path(path).read_bytes()
    magic = blob[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off, out = 24, []
    while off < len(blob):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", blob, off)
        out.append(blob[off + 16 : off + 16 + incl])
        off += 16 + incl
    return out


def pcap_name(config: str) -> str:
    return "golden_in.pcap" if config == "golden" else f"{config}_in.pcap"


def write_files(directory: Path) -> dict[str, tuple[Path, Path]]:
    """Write <config>.toml and its input pcap for every config; {config: (toml, pcap)}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, gc in configs().items():
        toml = directory / f"{name}.toml"
        toml.write_text(gc.model.to_toml())
        pcap = directory / pcap_name(name)
        write_pcap(pcap, [f.frame for f in fixtures() if f.config == name])
        out[name] = (toml, pcap)
    return out


def fwd_config(model: ModelConfig, path: str = "<golden>"):
    """The same configuration as fwd.config objects (imports fwd: only for tests that drive fwd)."""
    from fwd import config as fc

    tables = [
        fc.Table(
            name=t.name,
            hash_key=t.hash_key,
            seed=t.seed,
            glb_compat=t.glb_compat,
            binds=[fc.Bind(b.prefix, b.proto, b.port_lo, b.port_hi, tuple(b.hash_fields)) for b in t.binds],
            backends=[fc.Backend(b.address, b.state, b.healthy) for b in t.backends],
        )
        for t in model.tables
    ]
    n = model.node
    node = fc.Node(
        tunnel_source=n.tunnel_src4,
        tunnel_source6=n.tunnel_src6,
        mtu=n.mtu,
        forward_icmp_echo=n.forward_icmp_echo,
    )
    return fc.Config(path=path, format="toml", node=node, tables=tables)


def new_dataplane(name: str):
    """A fresh fwd.dataplane.Dataplane for golden config `name` (MAC overrides included)."""
    from fwd.dataplane import Dataplane

    model = configs()[name].model
    cfg = fwd_config(model, f"<{name}>")
    return Dataplane(cfg, src_mac=model.node.src_mac, dst_mac=model.node.dst_mac)


_DATAPLANES: dict = {}


def dataplane(name: str):
    """A shared Dataplane per golden config (counters accumulate: use new_dataplane to count)."""
    if name not in _DATAPLANES:
        _DATAPLANES[name] = new_dataplane(name)
    return _DATAPLANES[name]


PARSE_DROPS = ("truncated", "bad_ipv4", "bad_ipv6", "bad_l4", "bad_icmp")


def compare(e, r) -> list[str]:
    """Differences between the model's Expected e and fwd's Result r, one line each.

    bind/table are not compared for drops decided while parsing (whether a bind was
    already chosen then is not part of the contract); row, hash and backends only when
    the model hashed a flow; the GUE port only for FORWARD.
    """
    out = []

    def field(name, want, got):
        if want != got:
            out.append(f"{name}: model {want!r}, fwd {got!r}")

    field("verdict", e.verdict, r.verdict)
    field("reason", e.reason, r.reason)
    if e.reason not in PARSE_DROPS:
        field("bind", e.bind, r.bind)
        field("table", e.table, r.table)
    if e.bind is not None:
        field("row", e.row, r.row)
        field("flow_hash", hex(e.flow_hash), hex(r.flow_hash))
        field("primary", e.primary, r.primary)
        field("secondary", e.secondary, r.secondary)
    if e.verdict == "forward":
        field("gue_sport", e.gue_sport, r.gue_sport)
    if e.frame != r.frame:
        out.append("output frame differs")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "pcap" / "data"
    for name, (toml, pcap) in write_files(target).items():
        print(f"{name}: {toml} {pcap}")
