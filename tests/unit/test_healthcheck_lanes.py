"""The health checker's lanes in C (healthcheck._lanes, native/hc/hc_lanes.c).

The HTTP framer is a predicate: "this one read is exactly one complete response with the
expected status that keeps the connection". It must never say so when the Python framer
(healthcheck.checks._response, which the general path uses) does not, and it must say so for the
usual answers (else the lane is slow, not wrong). The send and read calls are tested on real
loopback TCP connections: what they hand back to Python (no bytes yet, the bytes and their
kernel timestamp, end of stream, a reset) is what the general path needs to go on.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import time

import cffi
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck import CheckSpec, HealthChecker, Target, Timing, Verdict
from healthcheck._lanes import ffi, lib
from healthcheck.checks import _SO_TIMESTAMPNS, _TOKEN_MAGIC, _CheckFailed, _ProbeTemplate, _response
from tests.fuzz.seeds import HTTP_RESPONSES

STATUSES = (200, 204, 304, 404, 503)


def python_passes(buf: bytes, expected: int) -> bool:
    try:
        return _response(buf, True) == (expected, len(buf))
    except _CheckFailed:
        return False


_libc = cffi.FFI()
_libc.cdef("void *malloc(size_t); void free(void *);")
_C = _libc.dlopen(None)
# exactly sized buffers from C malloc: under make test-asan any read past the bytes is a report
_exact = ffi.new_allocator(alloc=_C.malloc, free=_C.free, should_clear_after_alloc=False)


def c_passes(buf: bytes, expected: int) -> bool:
    copy = _exact("char[]", max(len(buf), 1))
    ffi.memmove(copy, buf, len(buf))
    return bool(lib.hc_http_complete(copy, len(buf), expected))


def test_framer_agrees_on_the_sample_answers():
    for buf in HTTP_RESPONSES:
        for expected in STATUSES:
            passes = python_passes(buf, expected)
            assert c_passes(buf, expected) == passes, (buf, expected)
            for cut in range(len(buf) if passes else 0):  # a part of an answer never passes
                assert not c_passes(buf[:cut], expected), (buf[:cut], expected)
    assert c_passes(HTTP_RESPONSES[0], 200) and not c_passes(HTTP_RESPONSES[0], 404)


# Well-formed responses built from parts, CRLF or bare LF throughout (the usual answers and the
# framings around them); the framer must agree with Python exactly on these.
_EOL = st.sampled_from([b"\r\n", b"\n"])
_FIELDS = st.lists(
    st.sampled_from(
        [
            b"Server: x",
            b"Content-Length: 2",
            b"content-length:0",
            b"Content-Length : 3",
            b"Content-Length: 70000",
            b"Connection: keep-alive",
            b"Connection: close",
            b"connection: Upgrade, keep-alive",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding: gzip",
            b"Transfer-Encoding: gzip,  chunked ",
            b"Transfer-Encoding:",
            b"X-Content-Length: 5",
            b" Content-Length: 5",
        ]
    ),
    max_size=4,
)
_BODY = st.sampled_from(
    [b"", b"ok", b"abc", b"2\r\nok\r\n0\r\n\r\n", b"1;e=1\nx\n0\nT: y\n\n", b"0\r\n\r\n", b"zz\r\n"]
)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    eol = draw(_EOL)
    parts = []
    if draw(st.booleans()) and draw(st.booleans()):
        parts.append(b"HTTP/1.1 100 Continue" + eol + eol)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"]))
    status = draw(st.sampled_from([b"200", b"204", b"304", b"404", b"101"]))
    reason = draw(st.sampled_from([b" OK", b"", b"\tfine", b" "]))
    head = version + b" " + status + reason + eol
    head += b"".join(f + eol for f in draw(_FIELDS)) + eol
    parts.append(head + draw(_BODY))
    buf = b"".join(parts)
    cut = draw(st.sampled_from([None, -1, -2, 1]))
    if cut is not None:
        buf = buf[:cut] if cut < 0 else buf + b"H"
    return buf


@settings(max_examples=3000, deadline=None)
@given(responses(), st.sampled_from(STATUSES))
def test_framer_agrees_on_generated_answers(buf: bytes, expected: int):
    assert c_passes(buf, expected) == python_passes(buf, expected), buf


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(STATUSES))
def test_framer_never_passes_what_python_does_not(noise: bytes, expected: int):
    for buf in (noise, b"HTTP/1.1 200 OK\r\n" + noise, HTTP_RESPONSES[0][:30] + noise):
        if c_passes(buf, expected):
            assert python_passes(buf, expected), buf


# ----------------------------------------------------------------------------- real sockets


@pytest.fixture
def pair():
    """A client and a server end of a loopback TCP connection, client with SO_TIMESTAMPNS."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname())
    cli.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    cli.setblocking(False)
    peer, _ = srv.accept()
    srv.close()
    yield cli, peer
    cli.close()
    peer.close()


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Lane:
    def __init__(self) -> None:
        self.c = ffi.gc(lib.hc_http_new(), lib.hc_http_free)
        self.slot = lib.hc_http_slot(self.c, REQUEST, len(REQUEST), 200)

    def send(self, fd: int) -> tuple[int, int]:
        codes, det = ffi.new("int[]", 1), ffi.new("struct hc_detail[]", 1)
        lib.hc_http_send(self.c, ffi.new("int[]", [self.slot]), ffi.new("int[]", [fd]), 1, codes, det)
        return codes[0], det[0].err

    def read(self, fd: int) -> tuple[int, float, int, bytes, int]:
        codes, lat = ffi.new("int[]", 1), ffi.new("double[]", 1)
        det = ffi.new("struct hc_detail[]", 1)
        lib.hc_http_read(self.c, ffi.new("int[]", [self.slot]), ffi.new("int[]", [fd]), 1, codes, lat, det)
        d = det[0]
        data = ffi.buffer(lib.hc_http_spill(self.c) + d.off, d.len)[:] if d.len else b""
        return codes[0], lat[0], d.err, data, d.ts_ns


def answered(peer: socket.socket, answer: bytes) -> None:
    assert peer.recv(4096) == REQUEST
    peer.sendall(answer)
    time.sleep(0.02)


def test_lane_pass_on_a_real_connection(pair):
    cli, peer = pair
    lane = Lane()
    assert lane.send(cli.fileno()) == (lib.HC_PASS, 0)
    sent = lib.hc_http_sent(lane.c, lane.slot)
    assert abs(sent * 1e-9 - time.time()) < 5
    assert lane.read(cli.fileno())[0] == lib.HC_AGAIN  # nothing yet: handed back
    answered(peer, HTTP_RESPONSES[0])
    code, latency, _, data, ts = lane.read(cli.fileno())
    assert code == lib.HC_PASS and data == b""
    assert 0 <= latency < 5
    # the next check on the same connection: another pass
    assert lane.send(cli.fileno())[0] == lib.HC_PASS
    answered(peer, HTTP_RESPONSES[0])
    assert lane.read(cli.fileno())[0] == lib.HC_PASS


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",  # a part
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",  # another status
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_lane_hands_back_the_bytes_and_timestamp(pair, answer):
    cli, peer = pair
    lane = Lane()
    lane.send(cli.fileno())
    sent = lib.hc_http_sent(lane.c, lane.slot)
    answered(peer, answer)
    code, _, _, data, ts = lane.read(cli.fileno())
    assert code == lib.HC_DATA and data == answer
    assert ts >= sent


def test_lane_bytes_from_before_the_request_are_not_the_answer(pair):
    cli, peer = pair
    lane = Lane()
    peer.sendall(HTTP_RESPONSES[0])  # the server speaks first (a 408 before closing, say)
    time.sleep(0.02)
    lane.send(cli.fileno())
    code, _, _, data, ts = lane.read(cli.fileno())
    assert code == lib.HC_DATA and data == HTTP_RESPONSES[0]
    assert 0 < ts < lib.hc_http_sent(lane.c, lane.slot)
    assert struct.pack("qq", *divmod(ts, 10**9))  # what the general path gets as ancillary data


def test_lane_end_of_stream(pair):
    cli, peer = pair
    lane = Lane()
    lane.send(cli.fileno())
    peer.recv(4096)
    peer.shutdown(socket.SHUT_WR)
    time.sleep(0.02)
    assert lane.read(cli.fileno())[:4] == (lib.HC_DATA, 0.0, 0, b"")  # end of stream: len 0


def test_lane_reset(pair):
    cli, peer = pair
    lane = Lane()
    lane.send(cli.fileno())
    peer.recv(4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    time.sleep(0.02)
    code, _, err, _, _ = lane.read(cli.fileno())
    assert code == lib.HC_ERROR and err == errno.ECONNRESET
    code, err = lane.send(cli.fileno())
    assert code == lib.HC_ERROR and err in (errno.EPIPE, errno.ECONNRESET)


def test_lane_slots_are_reused_and_checked():
    lane = Lane()
    other = lib.hc_http_slot(lane.c, b"x", 1, 200)
    lib.hc_http_release(lane.c, other)
    assert lib.hc_http_slot(lane.c, b"y", 1, 200) == other
    lib.hc_http_release(lane.c, other)
    codes, det = ffi.new("int[]", 1), ffi.new("struct hc_detail[]", 1)
    lib.hc_http_send(lane.c, ffi.new("int[]", [other]), ffi.new("int[]", [0]), 1, codes, det)
    assert codes[0] == lib.HC_ERROR and det[0].err == errno.EBADF  # a released slot is not used


# ----------------------------------------------------------------------------- the tunnel lane

IN_CI = os.environ.get("CI", "").lower() == "true"


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("cannot run in CI: needs root (raw sockets)", pytrace=False)
        pytest.skip("needs root (raw sockets)")


def test_gue_probe_bytes_are_the_python_ones():
    """The C lane writes a probe's counter and checksums itself: byte for byte what
    _ProbeTemplate.build (checked against build_tunnel_probe and scapy) makes, both families and
    kinds, counters that wrap the 16-bit sequence number."""
    nonce = b"\x01\x02\x03\x04"
    lane = ffi.gc(lib.hc_gue_new(0xBEEF, _TOKEN_MAGIC + nonce), lib.hc_gue_free)
    out = ffi.new("unsigned char[]", lib.HC_PROBE_MAX)
    for src_text, dst_text in (("192.0.2.10", "198.51.100.11"), ("2001:db8::10", "2001:db8:1::11")):
        src, dst = ipaddress.ip_address(src_text), ipaddress.ip_address(dst_text)
        for kind in ("gue", "fou"):
            t = _ProbeTemplate(kind, src, dst, 0xBEEF, nonce)
            probe = t.build(0)
            slot = lib.hc_gue_slot(lane, -1, probe, len(probe), dst.version == 6, dst.packed, 19523, -1)
            assert slot >= 0
            for counter in (1, 7, 0xFFFF, 0x10000, 2**40 + 12345, 2**64 - 1):
                n = lib.hc_gue_build(lane, slot, counter, out, lib.HC_PROBE_MAX)
                assert ffi.buffer(out, n)[:] == t.build(counter), (kind, dst, counter)
    assert lib.hc_gue_slot(lane, -1, b"short", 5, False, b"\0" * 4, 1, -1) == -1  # not a probe


def test_gue_lane_send_and_match_on_loopback():
    """Probes sent by the C lane to a stand-in decapsulator on loopback; the kernel answers
    their inner echo requests, the C read matches the replies to their slots (latency from the
    kernel timestamps); a reply to a probe taken off the lane is handed back with its bytes."""
    need_root()
    dst, port, decap, tx, rx, raw = _gue_loopback("127.0.0.5")
    try:
        lane, t, slots = _gue_lane(0x4242, dst, port, tx, 3)
        codes, errs = ffi.new("int[]", 3), ffi.new("int[]", 3)
        assert lib.hc_gue_send(lane, ffi.new("int[]", slots), 3, 1000, codes, errs) == 0
        counter, sent = ffi.new("uint64_t *"), ffi.new("int64_t *")
        assert lib.hc_gue_take(lane, slots[2], counter, sent) == 1 and counter[0] == 1002  # off the lane
        # the decapsulator: strip GUE, hand the inner packet to the kernel
        assert _decapsulate(decap, raw, dst, 3) == [t.build(1000 + i) for i in range(3)]
        time.sleep(0.05)
        m_slots, lat = ffi.new("int[]", 8), ffi.new("double[]", 8)
        others, n_others = ffi.new("struct hc_gue_other[]", 8), ffi.new("int *")
        m = lib.hc_gue_read(lane, rx.fileno(), True, m_slots, lat, 8, others, 8, n_others)
        assert sorted(ffi.unpack(m_slots, m)) == sorted(slots[:2])
        assert all(0 <= x < 1 for x in ffi.unpack(lat, m))
        assert n_others[0] == 1
        o = others[0]
        reply = ffi.buffer(lib.hc_gue_spill(lane) + o.off, o.len)[:]
        assert o.family == 4 and bytes(o.addr[0:4]) == dst.packed and o.ts_ns > 0
        assert reply[20:22] == b"\0\0" and reply[-8:] == (1002).to_bytes(8, "big")  # echo reply, its token
        # a slot that answered is no longer in flight: a duplicate reply goes to Python
        assert lib.hc_gue_take(lane, slots[0], counter, sent) == 0
    finally:
        for s in (decap, tx, rx, raw):
            s.close()


def test_gue_lane_in_the_scheduler():
    """A gue check through the scheduler against a stand-in decapsulator on loopback: the
    steady-state probes pass on the C lane; when the decapsulator stops, the lane's unanswered
    probes go on as general runs and time out (down after fall); back again, up after rise."""
    need_root()
    dst = ipaddress.ip_address("127.0.0.6")
    decap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    decap.bind((str(dst), 0))
    port = decap.getsockname()[1]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    changes: list[Verdict] = []
    state = {"answer": True, "probes": 0}

    async def go() -> dict[str, int]:
        loop = asyncio.get_running_loop()

        def on_probe() -> None:
            while True:
                try:
                    data = decap.recv(2048)
                except BlockingIOError:
                    return
                state["probes"] += 1
                if state["answer"]:
                    raw.sendto(data[8:], (str(dst), 0))

        loop.add_reader(decap.fileno(), on_probe)
        t = Timing(interval=0.02, timeout=0.1, rise=2, fall=2, jitter=0.0)
        hc = HealthChecker(on_change=changes.append, tick=0.01)
        hc.set_targets([Target("b", dst, (CheckSpec("gue", port),), t)])
        end = loop.time() + 20

        async def until(cond) -> None:
            while not cond():
                assert loop.time() < end, (state, changes)
                await asyncio.sleep(0.01)

        await until(lambda: state["probes"] >= 30)
        state["answer"] = False
        await until(lambda: len(changes) >= 2)
        state["answer"] = True
        await until(lambda: len(changes) >= 3)
        fast = hc.checker.fast_passes()
        await hc.stop()
        loop.remove_reader(decap.fileno())
        return fast

    try:
        fast = uvloop.run(go())
    finally:
        decap.close()
        raw.close()
    assert [(v.healthy, v.previous) for v in changes] == [(True, None), (False, True), (True, False)]
    assert "no echo reply" in (changes[1].result.error or "")
    # the steady state went through the C lane (>= 30 probes; a reply that misses the next tick
    # on a loaded machine goes on as a general run by design, hence not all of them)
    assert fast["tunnel"] >= 10


def _gue_loopback(dst_text: str):
    """A stand-in decapsulator on loopback and the lane's sockets: (dst, port, decap, tx, rx, raw)."""
    dst = ipaddress.ip_address(dst_text)
    decap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    decap.bind((str(dst), 0))
    decap.settimeout(5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    rx = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_ICMP)
    rx.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    rx.setsockopt(255, 1, struct.pack("I", ~1 & 0xFFFFFFFF))  # SOL_RAW, ICMP_FILTER: echo replies only
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    return dst, decap.getsockname()[1], decap, tx, rx, raw


def _gue_lane(ident: int, dst, port: int, tx: socket.socket, n: int):
    """A lane with a fresh nonce and n slots for probes to dst:port leaving by tx: (lane, template, slots)."""
    nonce = os.urandom(4)
    lane = ffi.gc(lib.hc_gue_new(ident, _TOKEN_MAGIC + nonce), lib.hc_gue_free)
    t = _ProbeTemplate("gue", ipaddress.ip_address("127.0.0.1"), dst, ident, nonce)
    probe = t.build(0)
    slots = [
        lib.hc_gue_slot(lane, -1, probe, len(probe), False, dst.packed, port, tx.fileno()) for _ in range(n)
    ]
    return lane, t, slots


def _decapsulate(decap: socket.socket, raw: socket.socket, dst, n: int) -> list[bytes]:
    """Receives n probes and hands their inner echo requests to the kernel, which answers them."""
    got = []
    for _ in range(n):
        data = decap.recv(2048)
        got.append(data)
        raw.sendto(data[8:], (str(dst), 0))
    return got


def _read_all(lane, rx, max_: int) -> tuple[list[int], list[float], int]:
    m_slots, lat = ffi.new("int[]", max_), ffi.new("double[]", max_)
    others, n_others = ffi.new("struct hc_gue_other[]", max_), ffi.new("int *")
    m = lib.hc_gue_read(lane, rx.fileno(), True, m_slots, lat, max_, others, max_, n_others)
    return ffi.unpack(m_slots, m), ffi.unpack(lat, m), n_others[0]


def test_gue_lane_more_probes_than_one_batch():
    """100 probes in one tick (more than one sendmmsg / recvmmsg batch): every probe reaches the
    decapsulator with its own counter, every reply is matched to its slot with a latency from
    the kernel timestamp; a read with less room than replies waiting leaves the rest queued."""
    need_root()
    n = 100
    dst, port, decap, tx, rx, raw = _gue_loopback("127.0.0.7")
    try:
        lane, t, slots = _gue_lane(0x4343, dst, port, tx, n)
        codes, errs = ffi.new("int[]", n), ffi.new("int[]", n)
        assert lib.hc_gue_send(lane, ffi.new("int[]", slots), n, 5000, codes, errs) == 0
        assert ffi.unpack(codes, n) == [lib.HC_PASS] * n and ffi.unpack(errs, n) == [0] * n
        got = _decapsulate(decap, raw, dst, n)
        assert sorted(got) == sorted(t.build(5000 + i) for i in range(n))
        time.sleep(0.05)
        first, lat1, others1 = _read_all(lane, rx, 40)  # room for 40: the other 60 stay queued
        rest, lat2, others2 = _read_all(lane, rx, 128)
        assert len(first) == 40 and len(rest) == 60 and others1 == others2 == 0
        assert sorted(first + rest) == sorted(slots)
        assert all(0 <= x < 5 for x in lat1 + lat2)
    finally:
        for s in (decap, tx, rx, raw):
            s.close()


def test_gue_lane_send_failures_among_good_probes():
    """A probe whose send fails (a broadcast destination without SO_BROADCAST) and a released
    slot among good probes on two sockets: each failure gets the errno sendto gives for that
    destination, every other probe is sent with its own counter and matched."""
    need_root()
    dst, port, decap, tx, rx, raw = _gue_loopback("127.0.0.8")
    tx2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    bcast = ipaddress.ip_address("255.255.255.255")
    nonce, ident = os.urandom(4), 0x4444
    lane = ffi.gc(lib.hc_gue_new(ident, _TOKEN_MAGIC + nonce), lib.hc_gue_free)
    try:
        t = _ProbeTemplate("gue", ipaddress.ip_address("127.0.0.1"), dst, ident, nonce)
        probe = t.build(0)
        with pytest.raises(OSError) as failed:  # what sendto says for that destination
            tx.sendto(probe, (str(bcast), port))
        want_errno = failed.value.errno

        def slot(addr, fd: int) -> int:
            return lib.hc_gue_slot(lane, -1, probe, len(probe), False, addr.packed, port, fd)

        plan = [
            slot(dst, tx.fileno()),
            slot(dst, tx.fileno()),
            slot(bcast, tx.fileno()),
            slot(dst, tx.fileno()),
            -1,  # a released slot, below
            slot(dst, tx2.fileno()),
            slot(bcast, tx2.fileno()),
            slot(dst, tx.fileno()),
        ]
        plan[4] = slot(dst, tx.fileno())
        lib.hc_gue_release(lane, plan[4])
        bad = {2: want_errno, 4: errno.EBADF, 6: want_errno}
        n = len(plan)
        codes, errs = ffi.new("int[]", n), ffi.new("int[]", n)
        assert lib.hc_gue_send(lane, ffi.new("int[]", plan), n, 700, codes, errs) == len(bad)
        for i in range(n):
            if i in bad:
                assert (codes[i], errs[i]) == (lib.HC_ERROR, bad[i]), i
            else:
                assert (codes[i], errs[i]) == (lib.HC_PASS, 0), i
        good = [i for i in range(n) if i not in bad]
        got = _decapsulate(decap, raw, dst, len(good))
        assert sorted(got) == sorted(t.build(700 + i) for i in good)
        time.sleep(0.05)
        matched, lat, n_others = _read_all(lane, rx, 16)
        assert sorted(matched) == sorted(plan[i] for i in good) and n_others == 0
        assert all(0 <= x < 5 for x in lat)
        counter, sent = ffi.new("uint64_t *"), ffi.new("int64_t *")
        assert lib.hc_gue_take(lane, plan[2], counter, sent) == 0  # a failed send is not in flight
    finally:
        for s in (decap, tx, tx2, rx, raw):
            s.close()
