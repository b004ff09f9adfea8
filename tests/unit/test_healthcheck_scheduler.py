"""healthcheck.scheduler: rise/fall, the first result, all-checks-pass, inactive backends, the
verdict stream, reconfiguration, and 1,000 checks on one loop without threads.

Rise/fall sequences use a scripted checker (exact results in order, on the real tick grid); the
rest run real checks against asyncio listeners on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

import uvloop

from fwd.config import parse_config
from healthcheck import CheckResult, CheckSpec, HealthChecker, Target, Timing, Verdict, targets_from_config
from healthcheck.checks import Checker, Ticker

A = ipaddress.ip_address("127.0.0.1")
FAST = Timing(interval=0.05, timeout=0.5, rise=3, fall=2, jitter=0.0)


class ScriptedChecker:
    """Gives each (address, spec) the results of its script in order (then repeats the last)."""

    def __init__(self, scripts: dict[tuple, list[bool]], tick: float = 0.01) -> None:
        self.scripts = scripts
        self.tick = tick
        self.calls: dict[tuple, int] = {}
        self._ticker: Ticker | None = None

    @property
    def ticker(self) -> Ticker:
        if self._ticker is None:
            self._ticker = Ticker(asyncio.get_running_loop(), self.tick)
        return self._ticker

    def start(self, spec, address, timeout, done: Callable[[CheckResult], None]) -> None:
        key = (address, spec)
        n = self.calls.get(key, 0)
        self.calls[key] = n + 1
        script = self.scripts[key]
        ok = script[min(n, len(script) - 1)]
        r = (
            CheckResult(True, 0.001, None, "ok")
            if ok
            else CheckResult(False, 0.002, f"scripted failure #{n}")
        )
        asyncio.get_running_loop().call_soon(done, r)

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.close()


def run(coro):
    return uvloop.run(coro)


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_first_result_counts_then_fall_and_rise():
    spec = CheckSpec("tcp", 80)
    #          first   two failures -> down   two ok (rise 3: not yet)  third ok -> up
    script = [True, True, False, False, True, True, False, True, True, True, True]
    ck = ScriptedChecker({(A, spec): script})
    changes: list[Verdict] = []

    async def go():
        hc = HealthChecker(on_change=changes.append, checker=ck)  # type: ignore[arg-type]
        hc.set_targets([Target("b", A, (spec,), FAST)])
        await until(lambda: ck.calls.get((A, spec), 0) >= len(script))
        await asyncio.sleep(0.05)
        await hc.stop()

    run(go())
    assert [(v.healthy, v.previous) for v in changes] == [(True, None), (False, True), (True, False)]
    first, down, up = changes
    assert "first result" in first.reason
    assert "2 failures in a row, fall 2" in down.reason and "scripted failure #3" in down.reason
    assert down.result is not None and down.result.error == "scripted failure #3"
    assert down.check == spec
    # up only after 3 successes in a row: results 7, 8, 9 (the single success at 4-5 and the
    # failure at 6 reset the count)
    assert "3 successes in a row, rise 3" in up.reason


def test_first_failure_counts_at_once():
    spec = CheckSpec("tcp", 80)
    ck = ScriptedChecker({(A, spec): [False, True, True, True]})
    changes: list[Verdict] = []

    async def go():
        hc = HealthChecker(on_change=changes.append, checker=ck)  # type: ignore[arg-type]
        hc.set_targets([Target("b", A, (spec,), FAST)])
        await until(lambda: len(changes) >= 2)
        await hc.stop()

    run(go())
    assert [(v.healthy, v.previous) for v in changes[:2]] == [(False, None), (True, False)]
    assert ck.calls[(A, spec)] == 4  # down at once, up after rise (3) successes


def test_all_checks_must_pass_and_no_checks_is_healthy():
    http, gue = CheckSpec("http", 80), CheckSpec("gue", 19523)
    b = ipaddress.ip_address("127.0.0.9")
    ck = ScriptedChecker({(A, http): [True], (A, gue): [False], (b, http): [True]})
    changes: list[Verdict] = []

    async def go():
        hc = HealthChecker(on_change=changes.append, checker=ck)  # type: ignore[arg-type]
        hc.set_targets(
            [
                Target("two", A, (http, gue), FAST),
                Target("one", b, (http,), FAST),
                Target("none", ipaddress.ip_address("127.0.0.10"), (), FAST),
            ]
        )
        await until(lambda: len(changes) >= 3)
        await asyncio.sleep(0.2)
        status = {s.key: s for s in hc.status()}
        await hc.stop()
        return status

    status = run(go())
    by_key = {v.key: v for v in changes}
    assert by_key["two"].healthy is False and by_key["two"].check == gue
    assert by_key["one"].healthy is True
    assert by_key["none"].healthy is True and by_key["none"].reason == "no health checks configured"
    assert len(changes) == 3  # nothing flaps
    assert status["two"].healthy is False
    assert {p.spec.kind: p.up for p in status["two"].checks} == {"http": True, "gue": False}


def test_shared_probe_and_reconfigure_keeps_state():
    """Two tables listing one backend with the same check share one probe; a reload that keeps
    the target keeps its state (no new first result), a removed target stops being checked."""
    spec = CheckSpec("tcp", 80)
    ck = ScriptedChecker({(A, spec): [True]})
    changes: list[Verdict] = []

    async def go():
        hc = HealthChecker(on_change=changes.append, checker=ck)  # type: ignore[arg-type]
        t1, t2 = Target(("web", A), A, (spec,), FAST), Target(("web6", A), A, (spec,), FAST)
        hc.set_targets([t1, t2])
        await until(lambda: len(changes) == 2)
        assert len(hc.probes()) == 1
        calls = ck.calls[(A, spec)]
        await asyncio.sleep(0.2)
        assert ck.calls[(A, spec)] >= calls + 2  # one probe's rhythm, not two
        hc.set_targets([t1])  # reload: t1 unchanged
        await asyncio.sleep(0.2)
        assert len(changes) == 2 and hc.healthy(("web", A)) is True
        hc.set_targets([])
        await asyncio.sleep(0.05)
        n = ck.calls[(A, spec)]
        await asyncio.sleep(0.3)
        assert ck.calls[(A, spec)] == n  # no more checks
        assert hc.probes() == [] and hc.healthy(("web", A)) is None
        await hc.stop()

    run(go())


def test_changes_iterator():
    spec = CheckSpec("tcp", 80)
    ck = ScriptedChecker({(A, spec): [True, False, False]})

    async def go():
        hc = HealthChecker(checker=ck)  # type: ignore[arg-type]
        seen: list[Verdict] = []

        async def consume():
            async for v in hc.changes():
                seen.append(v)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        hc.set_targets([Target("b", A, (spec,), FAST)])
        await until(lambda: len(seen) >= 2)
        await hc.stop()
        await asyncio.wait_for(task, 1.0)  # the iterator ends at stop()
        return seen

    seen = run(go())
    assert [v.healthy for v in seen] == [True, False]


# ----------------------------------------------------------------------------- real checks


class Listener:
    """A TCP listener on loopback that counts connections per local address; close() makes it
    refuse (and reopen() accept again)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.by_addr: dict[str, int] = {}

    async def open(self) -> None:
        def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            a = w.get_extra_info("sockname")[0]
            self.by_addr[a] = self.by_addr.get(a, 0) + 1
            w.close()

        self.server = await asyncio.start_server(conn, self.host, self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_real_down_after_fall_up_after_rise():
    changes: list[Verdict] = []

    async def go():
        lst = Listener()
        await lst.open()
        spec = CheckSpec("tcp", lst.port)
        timing = Timing(interval=0.1, timeout=0.5, rise=3, fall=2, jitter=0.0)
        hc = HealthChecker(on_change=changes.append)
        hc.set_targets([Target("b", A, (spec,), timing)])
        await until(lambda: len(changes) == 1)
        assert changes[0].healthy and "first result" in changes[0].reason
        await lst.close()
        await until(lambda: len(changes) == 2)
        probe = hc.probes()[0]
        assert probe.stats.failures == 2  # fall = 2
        await lst.open()
        await until(lambda: len(changes) == 3)
        await hc.stop()

    run(go())
    assert [v.healthy for v in changes] == [True, False, True]
    assert "connection refused" in changes[1].reason and "fall 2" in changes[1].reason
    assert "rise 3" in changes[2].reason


def test_inactive_backends_are_not_checked():
    async def go():
        lst = Listener("0.0.0.0")
        await lst.open()
        text = """
[[tables]]
name = "web"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
binds = [{ ip = "10.0.0.1", proto = "tcp", port = 80 }]
backends = [
  { ip = "127.0.0.21", state = "active" },
  { ip = "127.0.0.22", state = "inactive" },
  { ip = "127.0.0.23", state = "draining" },
]
"""
        cfg = parse_config(text, "t.toml")
        spec = CheckSpec("tcp", lst.port, mode="connect")  # counted by the listener's accepts
        targets = targets_from_config(cfg, timing=FAST, checks=lambda t, b: (spec,))
        assert [str(t.address) for t in targets] == ["127.0.0.21", "127.0.0.23"]
        hc = HealthChecker()
        hc.set_targets(targets)
        await asyncio.sleep(0.5)
        await hc.stop()
        await lst.close()
        return lst.by_addr

    seen = run(go())
    assert seen.get("127.0.0.21", 0) >= 3 and seen.get("127.0.0.23", 0) >= 3
    assert "127.0.0.22" not in seen


def test_timeout_in_scheduler():
    """A server that accepts and never answers: the HTTP check fails with a timeout."""
    changes: list[Verdict] = []

    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        hc = HealthChecker(on_change=changes.append)
        hc.set_targets([Target("b", A, (CheckSpec("http", port),), Timing(interval=1, timeout=0.2))])
        await until(lambda: len(changes) == 1)
        await hc.stop()
        server.close()

    run(go())
    assert changes[0].healthy is False
    assert changes[0].result is not None and changes[0].result.error == "timeout: no answer within 0.2 s"
    assert 0.19 <= changes[0].result.latency < 0.5


SERVERS = r"""
import asyncio, sys, uvloop
class Http(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
    def data_received(self, data):
        if b"\r\n\r\n" in data:
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            self.t.close()
async def main():
    loop = asyncio.get_running_loop()
    tcp = await loop.create_server(asyncio.Protocol, "0.0.0.0", 0, backlog=4096)
    http = await loop.create_server(Http, "0.0.0.0", 0, backlog=4096)
    print(tcp.sockets[0].getsockname()[1], http.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
uvloop.run(main())
"""


def test_thousand_checks_one_loop_no_threads():
    """1,000 backends (127.1.x.y) with a TCP and an HTTP check each (2,000 probes) against two
    listeners in another process, at a 1 s interval: every backend becomes healthy, each probe
    runs repeatedly, and neither a thread nor a task per check is created."""
    servers = subprocess.Popen(
        [sys.executable, "-c", SERVERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    async def go():
        assert servers.stdout is not None
        tport, hport = map(int, servers.stdout.readline().split())
        base = int(ipaddress.IPv4Address("127.1.0.1"))
        specs = (CheckSpec("tcp", tport), CheckSpec("http", hport, uri="/health"))
        timing = Timing(interval=1.0, timeout=2.0, rise=2, fall=3, jitter=0.1)
        targets = [Target(i, ipaddress.IPv4Address(base + i), specs, timing) for i in range(1000)]
        threads = threading.active_count()
        healthy: set[int] = set()
        errors: set[str] = set()

        def on_result(p, r) -> None:
            if r.error:
                errors.add(r.error)

        hc = HealthChecker(
            on_change=lambda v: healthy.add(v.key) if v.healthy else healthy.discard(v.key),
            on_result=on_result,
        )
        hc.set_targets(targets)
        tasks = len(asyncio.all_tasks())
        try:
            await until(lambda: len(healthy) == 1000, timeout=30)
        except AssertionError:
            errs: dict[tuple[str, str], int] = {}
            for p in hc.probes():
                if p.last and p.last.error:
                    k = (p.spec.kind, p.last.error)
                    errs[k] = errs.get(k, 0) + 1
            raise AssertionError(f"{len(healthy)} healthy; last errors {errs}") from None
        await asyncio.sleep(2.5)
        assert threading.active_count() == threads
        assert len(asyncio.all_tasks()) <= tasks + 2  # no task per check
        probes = hc.probes()
        counts = [p.stats.checks for p in probes]
        assert len(counts) == 2000 and min(counts) >= 2
        total, failures = sum(counts), sum(p.stats.failures for p in probes)
        await hc.stop()
        return total, failures, errors

    try:
        total, failures, errors = run(go())
    finally:
        servers.kill()
        servers.wait()
    # a heavily loaded machine (the test suites of a whole team at once) may starve the
    # listeners' process past the timeout now and then; nothing else may fail
    assert errors <= {"timeout: no answer within 2 s"}, errors
    assert failures <= total * 0.2, f"{failures} of {total} checks failed"


def test_checker_run_one_off_without_scheduler():
    async def go():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            c = Checker()
            r = await c.run(CheckSpec("tcp", s.getsockname()[1]), A, 1.0)
            c.close()
            return r

    assert run(go()).ok
