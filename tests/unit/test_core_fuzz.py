"""Property tests: random and mutated frames through fwd.dataplane.Dataplane.process.

For every input the C core must not crash, and its verdict, reason, bind, row,
backends, GUE port and output frame must agree with the reference model. Where
docs/packet-core.md leaves the answer open (Expected.ambiguous), only sanity is
checked. FWD_FUZZ_EXAMPLES scales the number of examples (default 400 per test).
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests import golden
from tests.model.gue import diff
from tests.model.packet import expect

EXAMPLES = int(os.environ.get("FWD_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIXTURES = golden.fixtures()
CONFIG_NAMES = list(golden.configs())
VERDICTS = ("pass", "forward", "drop", "reply")
REASONS = (
    "truncated",
    "bad_ipv4",
    "bad_ipv6",
    "bad_l4",
    "bad_icmp",
    "no_backend",
    "too_big",
    "no_tunnel_source",
    "no_headroom",
)


def run(frame: bytes, config: str) -> None:
    e = expect(frame, golden.configs()[config].model)
    r = golden.dataplane(config).process(frame)
    assert r.verdict in VERDICTS
    assert (r.reason in REASONS) if r.verdict == "drop" else r.reason is None
    assert (r.frame is not None) == (r.verdict in ("forward", "reply"))
    if r.verdict == "pass":
        assert r.bind is None
    if e.ambiguous:
        return
    problems = golden.compare(e, r)
    assert not problems, (
        "; ".join(problems)
        + f"\n[{config}] input {frame.hex()}\nmodel: {e.verdict} {e.reason or ''} ({e.note})"
        + f"\nfwd: {r.verdict} {r.reason or ''}\n"
        + diff(e.frame, r.frame)
    )


@FUZZ
@given(st.binary(max_size=160), st.sampled_from(CONFIG_NAMES))
def test_random_bytes(data, config):
    run(data, config)


ETHERTYPES = st.sampled_from([0x0800, 0x86DD, 0x8100, 0x0806, 0x88A8])


@FUZZ
@given(ETHERTYPES, st.binary(max_size=200), st.sampled_from(CONFIG_NAMES))
def test_random_after_ethernet(etype, rest, config):
    run(b"\x02\0\0\0\0\xfe\x02\0\0\0\0\x01" + struct.pack("!H", etype) + rest, config)


VIPS4 = [bytes([1, 1, 1, i]) for i in range(1, 6)] + [bytes([10, 100, 0, 7])]


@FUZZ
@given(
    st.sampled_from(VIPS4),
    st.sampled_from([1, 6, 17, 47]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=120),
    st.integers(5, 15),
    st.sampled_from(CONFIG_NAMES),
)
def test_random_ipv4_to_a_vip(vip, proto, flags_frag, l4, ihl, config):
    """A consistent IPv4 header to a VIP with random flags/fragment offset and random upper layer."""
    options = bytes((ihl - 5) * 4)
    tl = ihl * 4 + len(l4)
    hdr = struct.pack(
        "!BBHHHBB2s4s4s",
        0x40 | ihl,
        0,
        tl,
        0x1234,
        flags_frag,
        64,
        proto,
        b"\0\0",
        bytes([10, 11, 12, 13]),
        vip,
    )
    run(bytes.fromhex("0200000000fe0200000000010800") + hdr + options + l4, config)


def _mutate(frame: bytes, ops) -> bytes:
    b = bytearray(frame)
    for kind, pos, value in ops:
        if not b and kind != "append":
            continue
        i = pos % max(len(b), 1)
        if kind == "set":
            b[i] = value
        elif kind == "xor":
            b[i] ^= 1 << (value & 7)
        elif kind == "cut":
            del b[i:]
        elif kind == "delete":
            del b[i]
        elif kind == "insert":
            b.insert(i, value)
        else:  # append
            b += bytes([value]) * (1 + pos % 64)
    return bytes(b)


MUTATION = st.tuples(
    st.sampled_from(["set", "set", "xor", "xor", "cut", "delete", "insert", "append"]),
    st.integers(0, 2000),
    st.integers(0, 255),
)


@FUZZ
@given(st.sampled_from(range(len(FIXTURES))), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_golden_frames(index, ops):
    fx = FIXTURES[index]
    frame = _mutate(fx.frame, ops)
    assume(frame != fx.frame)
    run(frame, fx.config)


@FUZZ
@given(
    st.sampled_from(range(len(FIXTURES))),
    st.lists(st.tuples(st.integers(14, 120), st.integers(0, 255)), max_size=3),
)
def test_header_bytes_of_golden_frames(index, sets):
    """Mutations aimed at the L3/L4 headers (bytes 14..120) of golden frames."""
    fx = FIXTURES[index]
    b = bytearray(fx.frame)
    for pos, value in sets:
        if pos < len(b):
            b[pos] = value
    run(bytes(b), fx.config)


def test_every_golden_prefix():
    """Every prefix of every golden frame (truncation at every byte)."""
    for fx in FIXTURES:
        for n in range(0, min(len(fx.frame), 130)):
            run(fx.frame[:n], fx.config)
