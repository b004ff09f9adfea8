"""The reference model against known answers (no fwd code involved).

* SipHash-2-4: the published vectors (key 00..0f, message 00..n-1).
* GLB Director's published example: flow hash, row, primary/secondary, GUE port,
  and the whole outer frame written out by hand.
* The row rules (GLB and fwd) on hand-made rank orders.
* The golden fixtures: the model's verdict/reason equals the one written by hand,
  and its output frames decode to what docs/packet-core.md §4/§5 say.
"""

from __future__ import annotations

import ipaddress
import struct
import tomllib

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from tests import golden
from tests.model import gue
from tests.model.config import Bind, ModelConfig, Node, Table
from tests.model.packet import expect, inet_checksum
from tests.model.siphash import siphash24, siphash24_le
from tests.model.table import Backend, build_rows, derive, lookup, rank, row_seed, sample_rows, score

# veorq/SipHash vectors.h, vectors_sip64[n]: key = 00 01 .. 0f, message = 00 01 .. (n-1)
SIPHASH_VECTORS = {
    0: "310e0edd47db6f72",
    1: "fd67dc93c539f874",
    2: "5a4fa9d909806c0d",
    3: "2d7efbd796666785",
    4: "b7877127e09427cf",
    7: "37d1018bf50002ab",
    8: "6224939a79f5f593",
    9: "b0e4a90bdf82009e",
    12: "fbe50e86bc8f1e75",
    15: "e545be4961ca29a1",
    16: "db9bc2577fcc2a3f",
    17: "9447be2cf5e99a69",
    24: "94af49f6c650adb8",
    31: "42c341d8fa92d832",
    32: "ce7cf2722f512771",
    40: "d0a704536ba93e0e",
    63: "724506eb4c328a95",
}

GLB_KEY = bytes.fromhex("12345678901234561234567890123456")
GLB_SEED = bytes.fromhex("34567890123456783456789012345678")
GLB_BACKENDS = ["1.2.3.4", "2.3.4.5", "3.4.5.6"]


@pytest.mark.parametrize("n", sorted(SIPHASH_VECTORS))
def test_siphash_published_vectors(n):
    assert siphash24(bytes(range(16)), bytes(range(n))).hex() == SIPHASH_VECTORS[n]


def test_siphash_int_is_little_endian_reading():
    for n in (0, 5, 8, 13, 40):
        out = siphash24(GLB_KEY, bytes(range(n)))
        assert siphash24_le(GLB_KEY, bytes(range(n))) == int.from_bytes(out, "little")


def test_siphash_rejects_bad_key():
    with pytest.raises(ValueError):
        siphash24(b"short", b"")


# ---------------------------------------------------------------- GLB's published example


def test_glb_example_flow_hash_and_row():
    flow_hash = siphash24_le(GLB_KEY, ipaddress.ip_address("10.11.12.13").packed)
    assert flow_hash == 0x008972F1657A5CBD
    assert flow_hash & 0xFFFF == 0x5CBD


def test_glb_example_primary_secondary():
    p, s = lookup(GLB_SEED, GLB_BACKENDS, False, 0x5CBD)
    assert (GLB_BACKENDS[p], GLB_BACKENDS[s]) == ("3.4.5.6", "2.3.4.5")
    assert lookup(GLB_SEED, GLB_BACKENDS, True, 0x5CBD) == (p, s)


def test_glb_example_gue_source_port():
    flow_hash = 0x008972F1657A5CBD
    assert 0x8000 | ((flow_hash ^ 45678) & 0x7FFF) == 61139


def _glb_cfg() -> ModelConfig:
    t = Table(
        "web",
        GLB_KEY,
        GLB_SEED,
        False,
        [Bind.make("1.1.1.1", "tcp", 80)],
        [Backend.of(a) for a in GLB_BACKENDS],
    )
    return ModelConfig(Node(ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")), [t])


def test_glb_example_whole_frame_by_hand():
    """The outer frame of the example, written byte by byte from ARCHITECTURE §5 (no scapy)."""
    inner = golden.tcp4()[14:]
    assert len(inner) == 40
    e = expect(golden.tcp4(), _glb_cfg())
    assert (e.verdict, e.flow_hash, e.row, e.primary, e.secondary, e.gue_sport) == (
        "forward",
        0x008972F1657A5CBD,
        0x5CBD,
        2,
        1,
        61139,
    )
    gue_hdr = bytes([2, 4, 0, 0, 0, 0, 0, 1]) + bytes([2, 3, 4, 5])  # hlen 2, IPv4, type 0, 1 hop
    udp = struct.pack("!HHHH", 61139, 19523, 8 + len(gue_hdr) + len(inner), 0)
    total = 20 + len(udp) + len(gue_hdr) + len(inner)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, bytes([192, 0, 2, 10]), bytes([3, 4, 5, 6])
    )
    ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
    eth = bytes.fromhex("0200000000010200000000fe0800")  # back to the router, from fwd's MAC
    want = eth + ip + udp + gue_hdr + inner
    assert e.frame == want, gue.diff(want, e.frame)


def test_glb_director_test_suite_routes():
    """Literal expectations of GLB Director's test_director_classify_v4/v6 (its own test tables)."""
    model = golden.configs()["glb_published"].model
    for desc, frame, outer_dst, hops in golden.glb_published_cases():
        e = expect(frame, model)
        g = gue.decode(e.frame)
        assert (e.verdict, g.outer_dst, g.hops, g.outer_src) == ("forward", outer_dst, hops, "65.65.65.65"), (
            desc
        )


@pytest.mark.parametrize(
    "sport, route",
    [(45678, ["1.2.3.4", "2.3.4.5"]), (45679, ["1.2.3.4", "3.4.5.6"]), (45680, ["2.3.4.5", "3.4.5.6"])],
)
def test_glb_director_hash_fields_src_addr_and_port(sport, route):
    """GLB Director's test_director_hash_fields.py, TestGLBHashFieldsSourceAddrAndPort."""
    flow_hash = siphash24_le(GLB_KEY, ipaddress.ip_address("10.11.12.13").packed + struct.pack("!H", sport))
    p, s = lookup(GLB_SEED, GLB_BACKENDS, True, flow_hash & 0xFFFF)
    assert [GLB_BACKENDS[p], GLB_BACKENDS[s]] == route


def test_glb_director_unhealthy_primary():
    """GLB Director's test_04_reload_and_unhealthy_primary: 3.4.5.6 unhealthy -> 2.3.4.5, hop 3.4.5.6."""
    bl = [Backend.of(a) for a in GLB_BACKENDS[:2]] + [Backend.of(("3.4.5.6", "active", False))]
    for glb_compat in (True, False):
        p, s = lookup(GLB_SEED, bl, glb_compat, 0x5CBD)
        assert (GLB_BACKENDS[p], GLB_BACKENDS[s]) == ("2.3.4.5", "3.4.5.6")


# GLB Director's test_rendezvous_table.py: seed, row -> row seed, per-host scores, order
GLB_RT_SEED = bytes.fromhex("49a3d861d661ae5ab06ed9326871a2f5")
GLB_RT_HOSTS = ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]
GLB_RT_ROWS = {
    0x0000: (
        "491c53a72df4c837",
        ["e47127dd8fe077de", "8b1ddec5575c8634", "705425e3e522989b", "6f022ce1ea607e16"],
        [3, 2, 1, 0],
    ),
    0xFFFF: (
        "f223c0cc65161620",
        ["0233ef12d7a983d9", "6414aa65f0a10601", "af48ea8c83867829", "a1f610df9fbb2025"],
        [0, 1, 3, 2],
    ),
    0xBB44: (
        "e290f8f430eb33d3",
        ["3595c936c995ae63", "db40d5031678c90a", "eb798632d691530c", "0676eaf9cb7d2f85"],
        [3, 0, 1, 2],
    ),
}


@pytest.mark.parametrize("r", sorted(GLB_RT_ROWS))
def test_glb_director_rendezvous_vectors(r):
    row_seed_hex, scores, order = GLB_RT_ROWS[r]
    assert row_seed(GLB_RT_SEED, r).hex() == row_seed_hex
    assert [f"{score(GLB_RT_SEED, r, h):016x}" for h in GLB_RT_HOSTS] == scores
    assert rank(GLB_RT_SEED, GLB_RT_HOSTS, [r])[r] == order


# ---------------------------------------------------------------- table model


def test_fast_ranking_equals_plain_scores():
    addrs = ["1.2.3.4", "2.3.4.5", "3.4.5.6", "2001:db8::1", "2001:db8::2", "10.0.0.1", "fe80::1:2:3:4"]
    for r in (0, 1, 0x5CBD, 0x8000, 0xFFFF, 12345):
        plain = sorted(range(len(addrs)), key=lambda i, r=r: score(GLB_SEED, r, addrs[i]))
        assert rank(GLB_SEED, addrs, [r])[r] == plain


def _bl(*states):
    """Backends 10.0.0.i with (state, healthy) specs."""
    return [Backend(ipaddress.ip_address(f"10.0.0.{i + 1}"), st, h) for i, (st, h) in enumerate(states)]


A, F, D, I = ("active", True), ("filling", True), ("draining", True), ("inactive", True)  # noqa: E741
AU, FU, DU = ("active", False), ("filling", False), ("draining", False)


@pytest.mark.parametrize(
    "states, glb, fwd",
    [
        ((A, A, A), (0, 1), (0, 1)),  # all good: the two best
        ((D, A, A), (1, 0), (1, 0)),  # draining primary, active secondary: swap
        ((AU, A, A), (1, 0), (1, 0)),  # unhealthy primary: swap
        ((F, A, A), (0, 1), (0, 1)),  # filling ranks like active
        ((D, F, A), (0, 1), (1, 0)),  # (b) GLB never promotes a filling secondary, fwd does
        ((D, AU, A), (1, 0), (2, 0)),  # (c) GLB promotes an unhealthy active secondary, fwd does not
        ((D, D, A), (0, 1), (2, 0)),  # (a) both bad: GLB keeps the bad primary, fwd walks on
        ((AU, DU, F), (0, 1), (2, 0)),
        ((D, D, D), (0, 1), (0, 1)),  # nobody good: fwd falls back to the GLB rule
        ((DU, A, D), (1, 0), (1, 0)),
        ((AU, AU, AU), (1, 0), (1, 0)),  # nobody good, GLB swaps to the active (unhealthy) one
        ((FU, F, A), (0, 1), (1, 0)),
    ],
)
def test_row_rules_on_rank_orders(states, glb, fwd):
    backends = _bl(*states)
    order = list(range(len(states)))  # rank order = list order here
    assert derive(order, backends, True) == glb
    assert derive(order, backends, False) == fwd


def test_row_rules_small_n():
    one = _bl(D)
    assert derive([0], one, True) == (0, 0)
    assert derive([0], one, False) == (0, 0)
    assert derive([], one, False) == (None, None)
    rows = build_rows(
        GLB_SEED, [("1.2.3.4", "inactive"), ("2.3.4.5", "draining", False)], rows=[0, 7, 0xFFFF]
    )
    assert set(rows.values()) == {(1, 1)}
    rows = build_rows(GLB_SEED, [("1.2.3.4", "inactive")], rows=[0, 7])
    assert set(rows.values()) == {(None, None)}


def test_inactive_is_not_ranked():
    bl = [Backend.of(a) for a in GLB_BACKENDS]
    rows = sample_rows(300)
    full = rank(GLB_SEED, bl, rows)
    without = build_rows(GLB_SEED, [bl[0], bl[1], Backend(bl[2].address, "inactive")], rows=rows)
    for r in rows:
        order = [i for i in full[r] if i != 2]
        assert without[r] == (order[0], order[1])


def test_sample_rows_deterministic_and_spread():
    s = sample_rows(2000)
    assert s == sample_rows(2000) and len(s) == 2000 and s[0] == 0 and s[-1] == 0xFFFF
    assert len({r >> 12 for r in s}) == 16


# ---------------------------------------------------------------- golden fixtures


FIXTURES = golden.fixtures()


@pytest.mark.parametrize("fx", FIXTURES, ids=[f"{i:03d}-{f.desc}" for i, f in enumerate(FIXTURES)])
def test_golden_fixture_intent(fx):
    """The model's verdict equals the one written by hand from the spec, without ambiguity."""
    e = fx.expected()
    assert e.ambiguous is None, e.ambiguous
    assert (e.verdict, e.reason) == (fx.verdict, fx.reason), e.note
    assert (e.frame is not None) == (e.verdict in ("forward", "reply"))


def _ip_len(frame: bytes) -> tuple[int, bytes]:
    l2 = 18 if frame[12:14] == b"\x81\x00" else 14
    ip = frame[l2:]
    n = struct.unpack_from("!H", ip, 2)[0] if ip[0] >> 4 == 4 else 40 + struct.unpack_from("!H", ip, 4)[0]
    return l2, ip[:n]


@pytest.mark.parametrize(
    "fx",
    [f for f in FIXTURES if f.verdict == "forward"],
    ids=[f.desc for f in FIXTURES if f.verdict == "forward"],
)
def test_golden_forward_frames_decode_as_specified(fx):
    """§4, checked through the independent GUE decoder rather than the builder."""
    e = fx.expected()
    t = fx.model.tables[e.table]
    node = fx.model.node
    g = gue.decode(e.frame)
    assert g is not None, gue.describe(e.frame)
    primary, secondary = t.backends[e.primary].address, t.backends[e.secondary].address
    _, inner = _ip_len(fx.frame)
    assert g.eth_dst == gue._mac(node.dst_mac or fx.frame[6:12])
    assert g.eth_src == gue._mac(node.src_mac or fx.frame[0:6])
    assert e.frame[12:14] == (b"\x08\x00" if primary.version == 4 else b"\x86\xdd")
    assert g.outer_dst == str(primary)
    assert g.outer_src == str(node.tunnel_src4 if primary.version == 4 else node.tunnel_src6)
    assert (g.udp_sport, g.udp_dport) == (e.gue_sport, 19523)
    assert (g.gue_version, g.control, g.flags, g.next_hop) == (0, 0, 0, 0)
    assert g.inner_proto == (4 if inner[0] >> 4 == 4 else 41)
    hops = [] if e.secondary == e.primary else [str(secondary)]
    assert g.hops == hops
    assert g.private_type == (1 if hops and secondary.version == 6 else 0)
    assert g.hlen == 1 + (4 if g.private_type else 1) * len(hops)
    assert g.inner == inner
    assert len(e.frame) - 14 <= node.mtu
    if primary.version == 4:
        assert g.outer_fields["id"] == 0 and g.outer_fields["flags_frag"] == "0x4000"
        assert g.outer_fields["ttl"] == 64 and g.udp_csum == 0
    else:
        assert g.outer_fields["hop_limit"] == 64 and g.outer_fields["first_word"] == "0x60000000"
        assert g.udp_csum != 0


def test_golden_hints():
    """gue_sport = 0x8000 | ((flow_hash ^ hint) & 0x7fff) with the hint of §2."""
    cases = {
        "tcp4 SYN, GLB's published example flow": 45678,
        "ipv4 first fragment (MF, offset 0)": 0x1234,
        "ipv4 later fragment (offset 1480)": 0x1234,
        "ipv6 first fragment": 0x1234,
        "icmp4 frag-needed quoting the GLB example flow": 45678,
        "icmp4 echo request, forward_icmp_echo on": 0x4242,
        "icmp6 echo request, forward_icmp_echo on (hint: flow label)": 0x2345,
    }
    by_desc = {f.desc: f for f in FIXTURES}
    for desc, hint in cases.items():
        e = by_desc[desc].expected()
        assert e.gue_sport == 0x8000 | ((e.flow_hash ^ hint) & 0x7FFF), desc


def test_golden_icmp_errors_follow_their_flow():
    """An ICMP error about VIP -> client reaches the backend of client -> VIP, with the same port."""
    by_desc = {f.desc: f for f in FIXTURES}
    pairs = [
        ("tcp4 SYN, GLB's published example flow", "icmp4 frag-needed quoting the GLB example flow"),
        ("tcp4 SYN, GLB's published example flow", "icmp4 port unreachable (code 3)"),
        ("tcp6", "icmp6 packet-too-big quoting a VIP flow"),
        ("udp4 to the all-fields bind", "icmp4 frag-needed quoting an all-fields flow"),
    ]
    for flow, err in pairs:
        a, b = by_desc[flow].expected(), by_desc[err].expected()
        assert (a.bind, a.table, a.flow_hash, a.primary, a.secondary, a.gue_sport) == (
            b.bind,
            b.table,
            b.flow_hash,
            b.primary,
            b.secondary,
            b.gue_sport,
        ), (flow, err)


def test_golden_fragments_follow_the_flow():
    """Default hash fields: fragments of a datagram and the unfragmented flow share a backend."""
    by_desc = {f.desc: f for f in FIXTURES}
    flow = by_desc["tcp4 SYN, GLB's published example flow"].expected()
    for d in ("ipv4 first fragment (MF, offset 0)", "ipv4 later fragment (offset 1480)"):
        e = by_desc[d].expected()
        assert (e.flow_hash, e.primary, e.secondary) == (flow.flow_hash, flow.primary, flow.secondary)
    first, later = by_desc["ipv6 first fragment"].expected(), by_desc["ipv6 later fragment"].expected()
    assert (first.flow_hash, first.gue_sport) == (later.flow_hash, later.gue_sport)


@pytest.mark.parametrize(
    "fx",
    [f for f in FIXTURES if f.verdict == "reply"],
    ids=[f.desc for f in FIXTURES if f.verdict == "reply"],
)
def test_golden_reply_frames(fx):
    """§5: ICMP frag-needed / packet-too-big back the way the packet came."""
    e = fx.expected()
    node = fx.model.node
    l2, inner = _ip_len(fx.frame)
    t = fx.model.tables[e.table]
    primary = t.backends[e.primary].address
    hop = 0 if e.secondary == e.primary else len(t.backends[e.secondary].address.packed)
    overhead = (20 if primary.version == 4 else 40) + 16 + hop
    assert len(inner) + overhead > node.mtu
    mtu = node.mtu - overhead
    out = Ether(e.frame)
    assert e.frame[0:6] == fx.frame[6:12] and e.frame[6:12] == fx.frame[0:6]
    if l2 == 18:
        assert Dot1Q in out and e.frame[12:16] == fx.frame[12:16]
    else:
        assert Dot1Q not in out
    if inner[0] >> 4 == 4:
        ip = out[IP]
        assert (ip.ihl, ip.tos, ip.id, ip.flags.value, ip.frag, ip.ttl, ip.proto) == (5, 0, 0, 0, 0, 64, 1)
        assert (ip.src, ip.dst) == (
            str(ipaddress.ip_address(inner[16:20])),
            str(ipaddress.ip_address(inner[12:16])),
        )
        assert ip.len <= 576
        icmp = out[ICMP]
        assert (icmp.type, icmp.code, icmp.nexthopmtu) == (3, 4, mtu)
        assert e.frame[l2 + 24 : l2 + 28] == struct.pack("!HH", 0, mtu)  # unused = 0, next-hop MTU
        assert inet_checksum(e.frame[l2 + 20 :]) == 0
        quote = e.frame[l2 + 28 :]
        assert quote == inner[: 576 - 28]
    else:
        ip6 = out[IPv6]
        assert (ip6.tc, ip6.fl, ip6.nh, ip6.hlim) == (0, 0, 58, 64)
        assert ip6.src == str(ipaddress.ip_address(inner[24:40]))
        assert ip6.plen + 40 <= 1280
        ptb = out[ICMPv6PacketTooBig]
        assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, mtu)
        assert e.frame[l2 + 48 :] == inner[: 1280 - 48]


def test_toml_rendering_round_trips():
    for name, gc in golden.configs().items():
        doc = tomllib.loads(gc.model.to_toml())
        m = gc.model
        assert doc["node"]["mtu"] == m.node.mtu, name
        assert doc["node"].get("tunnel_source6") == (str(m.node.tunnel_src6) if m.node.tunnel_src6 else None)
        assert [t["name"] for t in doc["tables"]] == [t.name for t in m.tables]
        for td, t in zip(doc["tables"], m.tables, strict=True):
            assert bytes.fromhex(td["hash_key"]) == t.hash_key and bytes.fromhex(td["seed"]) == t.seed
            assert [ipaddress.ip_address(b["ip"]) for b in td["backends"]] == [b.address for b in t.backends]
            assert [b["state"] for b in td["backends"]] == [b.state for b in t.backends]
            assert len(td["binds"]) == len(t.binds)
