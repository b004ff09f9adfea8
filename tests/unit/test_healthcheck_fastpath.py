"""The scheduler's steady-state fast path for http checks on kept connections (healthcheck/checks.py
``_HttpLane``): a stream of passes goes through it, and what it hands back to the general code
(a failure, a connection the server closes as the request arrives) ends exactly as before — the
right fall/rise verdicts, one reconnect, statistics and histogram that add up.

Real sockets on loopback: a small threaded HTTP/1.1 server whose answer to the n-th request is
scripted, counting connections and requests. No result callback (``on_result``) is set, so the
scheduler's inline accounting of passes is what runs. Nothing here asserts on a time.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import socket
import threading
from collections.abc import Callable

import uvloop

from healthcheck import LATENCY_BUCKETS, CheckSpec, HealthChecker, Target, Timing, Verdict

A = ipaddress.ip_address("127.0.0.1")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ERR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad"


class Server:
    """HTTP/1.1 on loopback; ``answer(n)`` gives the bytes for the n-th request (1-based), or
    None: close the connection without an answer."""

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = c.recv(4096)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                _, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests += 1
                    n = self.requests
                data = self.answer(n)
                if data is None:
                    return
                c.sendall(data)

    def close(self) -> None:
        self.sock.close()


def check(
    answer: Callable[[int], bytes | None], until: Callable[[HealthChecker, Server], bool], **timing
) -> tuple[HealthChecker, Server, list[Verdict], dict[str, int]]:
    """Runs a HealthChecker (tick 10 ms) on one http check until ``until`` holds."""
    server = Server(answer)
    changes: list[Verdict] = []
    t = Timing(**{"interval": 0.02, "timeout": 0.5, "rise": 2, "fall": 2, "jitter": 0.0, **timing})
    spec = CheckSpec("http", server.port, uri="/health")

    async def go() -> tuple[HealthChecker, dict[str, int]]:
        hc = HealthChecker(on_change=changes.append, tick=0.01)
        hc.set_targets([Target("b", A, (spec,), t)])
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not until(hc, server):
            assert loop.time() < end, f"not reached: {server.requests} requests, {changes}"
            await asyncio.sleep(0.01)
        fast = hc.checker.fast_passes()
        await hc.stop()
        return hc, fast

    try:
        hc, fast = uvloop.run(go())
    finally:
        server.close()
    return hc, server, changes, fast


def checks(hc: HealthChecker) -> int:
    return sum(p.stats.checks for p in hc.probes()) if hc.probes() else 0


def assert_stats_add_up(stats) -> None:
    """Every result is in the histogram, between the buckets of the least and the greatest."""
    assert sum(stats.buckets) == stats.checks
    lo = bisect.bisect_left(LATENCY_BUCKETS, stats.latency_min)
    hi = bisect.bisect_left(LATENCY_BUCKETS, stats.latency_max)
    used = [i for i, n in enumerate(stats.buckets) if n]
    assert used[0] == lo and used[-1] == hi, (stats, lo, hi)
    assert 0 <= stats.latency_min <= stats.latency_last <= stats.latency_max
    assert stats.latency_min * stats.checks <= stats.latency_sum <= stats.latency_max * stats.checks


def test_steady_passes_take_the_fast_path():
    """40 passes on one kept connection: all but the first (the connect) on the fast path."""
    seen = {}

    def enough(hc: HealthChecker, server: Server) -> bool:
        if hc.probes():
            seen["stats"] = hc.probes()[0].stats
        return server.requests >= 40

    hc, server, changes, fast = check(lambda n: OK, enough)
    stats = seen["stats"]
    assert server.connections == 1
    assert [(v.healthy, v.previous) for v in changes] == [(True, None)]
    assert stats.failures == 0
    assert server.requests - 1 <= stats.checks <= server.requests  # the last may be in flight
    # only the first check connected; an answer that misses the next tick (a loaded machine)
    # goes on in the general path by design, so not every later pass need be fast
    assert fast["http"] >= (stats.checks - 1) // 2
    assert_stats_add_up(stats)


def test_failures_in_a_fast_stream_fall_and_rise_exactly():
    """Requests 1-6 pass, 7-9 answer 500, then pass again (fall 2, rise 2): up at the first
    result, down at the 8th (two failures in a row), up again at the 11th (two passes); the
    failures leave the fast path and close the connection, the passes after them return to it."""
    seen = {}

    def answer(n: int) -> bytes:
        return ERR if 7 <= n <= 9 else OK

    def enough(hc: HealthChecker, server: Server) -> bool:
        if hc.probes():
            seen["stats"] = hc.probes()[0].stats
        return server.requests >= 30

    hc, server, changes, fast = check(answer, enough)
    stats = seen["stats"]
    assert [(v.healthy, v.previous) for v in changes] == [(True, None), (False, True), (True, False)]
    _, down, up = changes
    assert down.result is not None and down.result.error == "HTTP 500, expected 200"
    assert "2 failures in a row, fall 2" in down.reason
    assert "2 successes in a row, rise 2" in up.reason
    assert stats.failures == 3
    # a failed check closes its connection: 1 + 3 connections; the passes in between are fast
    assert server.connections == 4
    # all passes but the 1st and 10th, less those whose answer missed the next tick (load)
    assert fast["http"] >= (stats.checks - stats.failures - 2) // 2
    assert_stats_add_up(stats)


def test_connection_closed_as_the_request_arrives_one_reconnect():
    """Every 5th request is met with a close and no answer: the fast path hands the check to
    the general code, which opens one new connection, sends again and passes — no failure."""
    seen = {}

    def answer(n: int) -> bytes | None:
        return None if n % 5 == 0 else OK

    def enough(hc: HealthChecker, server: Server) -> bool:
        if hc.probes():
            seen["stats"] = hc.probes()[0].stats
        with server.lock:  # past a close, its new connection has carried a request
            return server.requests >= 40 and server.requests % 5 != 0

    hc, server, changes, fast = check(answer, enough)
    stats = seen["stats"]
    assert stats.failures == 0, stats
    assert [(v.healthy, v.previous) for v in changes] == [(True, None)]
    closes = server.requests // 5
    assert server.connections == closes + 1  # one new connection per close, no other
    # each close costs its check the fast path (the retried request is not counted as a check)
    # (and an answer that missed the next tick on a loaded machine costs it too: hence // 2)
    assert (stats.checks - closes - 1) // 2 <= fast["http"] <= stats.checks - closes
    assert_stats_add_up(stats)


def test_a_crashing_lane_fails_its_checks_and_the_rest_goes_on():
    """A bug that makes the http lane raise (injected: its start raises for a while) fails the
    checks it was handed with an internal error, so the backend goes down after fall, and is
    checked again afterwards (not left running forever): up again after rise."""
    changes: list[Verdict] = []
    server = Server(lambda n: OK)
    t = Timing(interval=0.02, timeout=0.5, rise=2, fall=2, jitter=0.0)

    async def go() -> None:
        hc = HealthChecker(on_change=changes.append, tick=0.01)
        hc.set_targets([Target("b", A, (CheckSpec("http", server.port),), t)])
        loop = asyncio.get_running_loop()

        async def until(pred) -> None:
            end = loop.time() + 20
            while not pred():
                assert loop.time() < end, changes
                await asyncio.sleep(0.01)

        await until(lambda: server.requests >= 5)
        lane = hc.checker.poller.http_lane
        start = lane.start

        def broken(probes, sink):
            raise RuntimeError("injected")

        lane.start = broken  # type: ignore[method-assign]
        await until(lambda: len(changes) >= 2)
        lane.start = start  # type: ignore[method-assign]
        await until(lambda: len(changes) >= 3)
        await hc.stop()

    try:
        uvloop.run(go())
    finally:
        server.close()
    assert [(v.healthy, v.previous) for v in changes] == [(True, None), (False, True), (True, False)]
    down = changes[1]
    assert down.result is not None and down.result.error == "internal error: RuntimeError: injected"
