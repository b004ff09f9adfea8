"""Scheduling checks and turning their results into verdicts.

:class:`HealthChecker` runs on the daemon's event loop (uvloop) with no task and no thread per
check: a *probe* (one check spec of one address with one timing) is a small record that waits
for its next start in the bucket of a grid point of the checker's tick (50 ms); one ticker
callback per grid point starts every check due then, in one loop iteration. Checks that have a
*lane* in the checker (http on a kept connection, the tunnel probes: healthcheck/checks.py) are
handed to it together, and their passes come back in batches; the others start one by one and
report through a callback. A result that changes nothing (same state as the probe, no
``on_result``) only updates the statistics, in place. Targets that share an identical probe
(the same backend listed in two tables with the same checks) share its runs and its state.

Per probe (each check on its own, like HAProxy's and GLB's):

* the **first result counts at once**: the probe passes or fails after one check;
* afterwards a passing probe fails after ``fall`` consecutive failures, and a failing one passes
  again after ``rise`` consecutive successes;
* checks start ``interval`` apart (start to start, ± ``jitter``), the first within
  ``interval * jitter`` of the target being added.

A target (a backend) is **healthy when all its checks pass**, unhealthy as soon as one fails,
undecided while some have no result yet; a target without checks is healthy at once (GLB).
Inactive backends are not given to the checker at all (``targets_from_config`` leaves them out).

Every change of a target's verdict is delivered as a :class:`Verdict` (which target, new and
old state, the check that decided it, its error and latency, a one-line reason) to the
``on_change`` callback and to every ``changes()`` async iterator. Latency statistics per probe
(count, failures, sum, min, max, last, histogram buckets) are kept for metrics (``stats()``);
``on_result`` sees every single result.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from healthcheck.checks import DEFAULT_TICK, Checker, CheckResult
from healthcheck.config import CheckSpec, Target, Timing

__all__ = [
    "LATENCY_BUCKETS",
    "CheckStats",
    "HealthChecker",
    "ProbeState",
    "TargetStatus",
    "Verdict",
]

log = logging.getLogger("fwd.healthcheck")

IPAddress = IPv4Address | IPv6Address

# Upper bounds (seconds) of the latency histogram, Prometheus style (+Inf implied).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

ProbeKey = tuple[IPAddress, CheckSpec, Timing]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A target's verdict changed. ``previous`` is None for its first verdict.

    ``check`` / ``result`` are the check whose result decided the change and that result (None
    for a target without checks); ``reason`` says it in one line, e.g.
    ``http://10.0.0.1:80/ failed: connection refused (3 failures in a row, fall 3)``.
    """

    key: Hashable
    address: IPAddress
    healthy: bool
    previous: bool | None
    check: CheckSpec | None
    result: CheckResult | None
    reason: str
    at: float  # time.time()


@dataclass(slots=True)
class CheckStats:
    """Counters of one probe since it started (for metrics; latency in seconds)."""

    checks: int = 0
    failures: int = 0
    latency_sum: float = 0.0
    latency_min: float = float("inf")
    latency_max: float = 0.0
    latency_last: float = 0.0
    # buckets[i] counts results with latency <= LATENCY_BUCKETS[i] (not cumulative; +Inf last)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def add(self, r: CheckResult) -> None:
        self.checks += 1
        if not r.ok:
            self.failures += 1
        lat = r.latency
        self.latency_sum += lat
        self.latency_last = lat
        if lat < self.latency_min:
            self.latency_min = lat
        if lat > self.latency_max:
            self.latency_max = lat
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, lat)] += 1

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """[(upper bound, count <= bound)], the last bound being +inf: a Prometheus histogram."""
        out, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(slots=True)
class ProbeState:
    """One check spec of one address with one timing, shared by the targets that list it."""

    address: IPAddress
    spec: CheckSpec
    timing: Timing
    up: bool | None = None  # None until the first result
    streak: int = 0  # consecutive results contradicting ``up`` (toward rise or fall)
    last: CheckResult | None = None
    stats: CheckStats = field(default_factory=CheckStats)
    targets: set[Hashable] = field(default_factory=set)
    active: bool = True  # False once no target lists it
    running: bool = False  # a check is in flight
    due: float = 0.0  # loop time of the next start
    # the next start is step + spread * random() after this one: interval * (1 ± jitter)
    step: float = field(default=0.0, repr=False)
    spread: float = field(default=0.0, repr=False)
    # made once per probe: the checker's starter (timeout, done), the scheduler's result
    # callback, and the checker's lane for this kind of check if it has one (module notes)
    launch: Callable[[float, Callable[[CheckResult], None]], None] | None = field(default=None, repr=False)
    on_done: Callable[[CheckResult], None] | None = field(default=None, repr=False)
    lane: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.describe(self.address)


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A snapshot of one target for status output: its verdict and each check's state."""

    key: Hashable
    address: IPAddress
    healthy: bool | None
    since: float | None  # time.time() of the last verdict change
    reason: str | None
    checks: tuple[ProbeState, ...]


@dataclass(slots=True)
class _TargetState:
    target: Target
    probes: list[ProbeState]
    healthy: bool | None = None
    since: float | None = None
    reason: str | None = None


class HealthChecker:
    """Health checks of many targets on the running event loop.

    ``set_targets()`` gives the complete set of targets (again on every reload: unchanged probes
    keep running and keep their state, gone ones stop, new ones start). Verdict changes go to
    ``on_change(verdict)`` and to ``changes()`` iterators; ``on_result(probe, result)`` sees
    every result. ``stop()`` cancels everything. Use it from one event loop only.
    """

    def __init__(
        self,
        *,
        on_change: Callable[[Verdict], None] | None = None,
        on_result: Callable[[ProbeState, CheckResult], None] | None = None,
        checker: Checker | None = None,
        rng: random.Random | None = None,
        tick: float = DEFAULT_TICK,
    ) -> None:
        self.on_change = on_change
        self.on_result = on_result
        self.checker = checker or Checker(tick)
        self._rng = rng or random.Random()
        self.tick = tick
        self._targets: dict[Hashable, _TargetState] = {}
        self._probes: dict[ProbeKey, ProbeState] = {}
        self._queues: list[asyncio.Queue[Verdict | None]] = []
        self._stopped = False
        self._random = self._rng.random
        self._loop_time: Callable[[], float] = time.monotonic  # the loop's, from set_targets on
        self._at: Callable[[float, Callable[[], None]], None] = lambda when, cb: None
        self._ticker: Any = None
        self._grid = tick  # the ticker's tick, from set_targets on
        # grid point -> the probes that start then (one ticker callback per grid point)
        self._buckets: dict[int, list[ProbeState]] = {}

    # -- configuration ---------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Replace the set of targets. Must be called from within the running loop."""
        if self._stopped:
            raise RuntimeError("HealthChecker is stopped")
        loop = asyncio.get_running_loop()
        ticker = self._ticker = self.checker.ticker  # bound once: every start and result uses them
        self._loop_time, self._at, self._grid = ticker.loop.time, ticker.at, ticker.tick
        new: dict[Hashable, Target] = {}
        for t in targets:
            if t.key in new:
                raise ValueError(f"duplicate target key {t.key!r}")
            new[t.key] = t
        # new and changed targets take their probes first, so probes they keep go on running
        for key, t in new.items():
            st = self._targets.get(key)
            if st is not None and st.target == t:
                continue
            probes = [self._acquire(loop, t, spec, key) for spec in dict.fromkeys(t.checks)]
            if st is None:
                st = self._targets[key] = _TargetState(t, probes)
            else:
                old, st.target, st.probes = st.probes, t, probes
                for p in old:
                    if not any(p is q for q in probes):
                        self._release(p, key)
            if not probes:
                loop.call_soon(self._decide, st, None, None)
            elif any(p.up is not None for p in probes):
                self._decide(st, None, None)
        for key in [k for k in self._targets if k not in new]:
            for p in self._targets.pop(key).probes:
                self._release(p, key)

    def _acquire(
        self, loop: asyncio.AbstractEventLoop, t: Target, spec: CheckSpec, key: Hashable
    ) -> ProbeState:
        pk = (t.address, spec, t.timing)
        p = self._probes.get(pk)
        if p is None:
            p = self._probes[pk] = ProbeState(t.address, spec, t.timing)
            prepare = getattr(self.checker, "prepare", None)  # a stand-in checker may lack it
            p.launch = prepare(spec, t.address) if prepare else partial(self.checker.start, spec, t.address)
            p.lane = getattr(p.launch, "lane", None)
            p.step = t.timing.interval * (1 - t.timing.jitter)
            p.spread = 2 * t.timing.interval * t.timing.jitter
            p.on_done = partial(self._done, p)
            p.due = loop.time() + self._rng.uniform(0.0, t.timing.interval * t.timing.jitter)
            self._book(p, math.floor(loop.time() / self._grid) + 1)
        p.targets.add(key)
        return p

    def _release(self, p: ProbeState, key: Hashable) -> None:
        p.targets.discard(key)
        if not p.targets:
            p.active = False  # its pending start (or result) finds it inactive and stops
            self._probes.pop((p.address, p.spec, p.timing), None)
            close = getattr(p.launch, "close", None)  # an http check's kept connection
            if close is not None:
                close()

    # -- running ---------------------------------------------------------------------------
    # No task per probe: each probe waits in the bucket of the grid point at which it is due;
    # the ticker calls _walk once per grid point (every check due then starts in the same loop
    # iteration, one wake-up). Checks with a lane (kept http connections, tunnel probes) are
    # handed to it together, the others start one by one. Results come back to _results, in
    # batches from the lanes, one at a time (_done) from the other checks and the lanes'
    # general path; _results books the next start: interval after this start, ± jitter.

    def _book(self, p: ProbeState, first: int) -> None:
        """Put p in the bucket of the first grid point >= p.due, and not before ``first``."""
        k = math.ceil(p.due / self._grid - 1e-6)
        if k < first:
            k = first
        lst = self._buckets.get(k)
        if lst is None:
            self._buckets[k] = [p]
            self._at(k * self._grid, partial(self._walk, k))
        else:
            lst.append(p)

    def _walk(self, k: int) -> None:
        probes = self._buckets.pop(k, None)
        if not probes or self._stopped:
            return
        now = self._loop_time()
        lanes: dict[Any, list[ProbeState]] | None = None
        for p in probes:
            if not p.active:
                continue
            p.running = True
            p.due = now
            lane = p.lane
            if lane is not None:
                if lanes is None:
                    lanes = {lane: [p]}
                elif lane in lanes:
                    lanes[lane].append(p)
                else:
                    lanes[lane] = [p]
                continue
            try:
                p.launch(p.timing.timeout, p.on_done)  # type: ignore[misc]
            except Exception as e:  # a bug in a check must not stop the others
                log.exception("health check %s crashed", p.name)
                self._done(p, CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
        if lanes is not None:
            for lane, ps in lanes.items():
                try:
                    lane.start(ps, self._results)  # a lane guards each of its checks itself
                except Exception as e:  # a bug in the lane itself: fail its checks, keep going
                    log.exception("health check lane %s crashed", type(lane).__name__)
                    err = CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}")
                    self._results([(p, err) for p in ps])

    def _done(self, p: ProbeState, result: CheckResult) -> None:
        self._results(((p, result),))

    def _results(self, results: Iterable[tuple[ProbeState, CheckResult]]) -> None:
        """Results of checks (a lane's batch, or one): statistics, verdicts, the next start."""
        if self._stopped:
            for p, _ in results:
                p.running = False
            return
        tick, buckets, rnd, on_result = self._grid, self._buckets, self._random, self.on_result
        first = math.floor(self._loop_time() / tick) + 1
        current = self._ticker.current + 1 if self._ticker is not None else first
        if current > first:
            first = current
        for p, r in results:
            if not p.running:
                continue
            p.running = False
            if not p.active:
                continue
            if r.ok is p.up and on_result is None:
                # the usual: no news; CheckStats.add and _record written out (no calls)
                s = p.stats
                s.checks += 1
                if not r.ok:
                    s.failures += 1
                lat = r.latency
                s.latency_sum += lat
                s.latency_last = lat
                if lat < s.latency_min:
                    s.latency_min = lat
                if lat > s.latency_max:
                    s.latency_max = lat
                s.buckets[bisect.bisect_left(LATENCY_BUCKETS, lat)] += 1
                p.last = r
                p.streak = 0
            else:
                self._record(p, r)
                if self._stopped:  # a callback stopped the checker
                    return
            p.due += p.step + p.spread * rnd()  # interval * uniform(1 ± jitter)
            k = math.ceil(p.due / tick - 1e-6)
            if k < first:
                k = first
            lst = buckets.get(k)
            if lst is None:
                buckets[k] = [p]
                self._at(k * tick, partial(self._walk, k))
            else:
                lst.append(p)

    def _record(self, p: ProbeState, r: CheckResult) -> None:
        p.stats.add(r)
        p.last = r
        if self.on_result is not None:
            try:
                self.on_result(p, r)
            except Exception:
                log.exception("on_result callback failed")
        changed = False
        if p.up is None:
            p.up, p.streak, changed = r.ok, 0, True
        elif r.ok == p.up:
            p.streak = 0
        else:
            p.streak += 1
            if p.streak >= (p.timing.rise if r.ok else p.timing.fall):
                p.up, p.streak, changed = r.ok, 0, True
        if changed:
            for key in tuple(p.targets):
                st = self._targets.get(key)
                if st is not None:
                    self._decide(st, p, r)

    def _decide(self, st: _TargetState, p: ProbeState | None, r: CheckResult | None) -> None:
        if self._stopped or self._targets.get(st.target.key) is not st:
            return
        ups = [q.up for q in st.probes]
        healthy: bool | None
        if False in ups:
            healthy = False
        elif None in ups:
            healthy = None
        else:
            healthy = True
        if healthy is None or healthy == st.healthy:
            return
        if p is None or r is None:
            # decided without a new result: no checks, or a reconfigured target re-evaluated
            bad = next((q for q in st.probes if q.up is False), None)
            if not st.probes:
                reason = "no health checks configured"
            elif bad is not None:
                p, r = bad, bad.last
                reason = f"{bad.name} failing: {r.error if r else '?'}"
            else:
                reason = "all checks passing"
        else:
            reason = self._reason(p, r)
        previous, st.healthy, st.since, st.reason = st.healthy, healthy, time.time(), reason
        v = Verdict(
            st.target.key, st.target.address, healthy, previous, p.spec if p else None, r, reason, st.since
        )
        if self.on_change is not None:
            try:
                self.on_change(v)
            except Exception:
                log.exception("on_change callback failed")
        for q in self._queues:
            q.put_nowait(v)

    @staticmethod
    def _reason(p: ProbeState, r: CheckResult) -> str:
        t = p.timing
        if p.stats.checks == 1:
            count = "first result"
        elif r.ok:
            count = f"{t.rise} successes in a row, rise {t.rise}"
        else:
            count = f"{t.fall} failures in a row, fall {t.fall}"
        if r.ok:
            detail = f", {r.detail}" if r.detail else ""
            return f"{p.name} passed in {r.latency * 1000:.1f} ms{detail} ({count})"
        return f"{p.name} failed after {r.latency * 1000:.1f} ms: {r.error} ({count})"

    # -- reading ---------------------------------------------------------------------------

    async def changes(self) -> AsyncIterator[Verdict]:
        """Verdict changes from now on, until ``stop()``: ``async for v in hc.changes(): ...``."""
        q: asyncio.Queue[Verdict | None] = asyncio.Queue()
        self._queues.append(q)
        try:
            while True:
                v = await q.get()
                if v is None:
                    return
                yield v
        finally:
            if q in self._queues:
                self._queues.remove(q)

    def healthy(self, key: Hashable) -> bool | None:
        """The target's verdict: True / False, None while undecided (or unknown key)."""
        st = self._targets.get(key)
        return None if st is None else st.healthy

    def status(self) -> list[TargetStatus]:
        """A snapshot of every target, in the order they were first given."""
        return [
            TargetStatus(k, st.target.address, st.healthy, st.since, st.reason, tuple(st.probes))
            for k, st in self._targets.items()
        ]

    def probes(self) -> list[ProbeState]:
        """Every running probe (one per distinct check), with its state and CheckStats."""
        return list(self._probes.values())

    def stats(self) -> dict[str, CheckStats]:
        """Latency/count statistics per check, keyed by the check's description
        (``http://10.0.0.1:80/``; a probe listed with two timings appears once, the last wins)."""
        return {p.name: p.stats for p in self._probes.values()}

    async def stop(self) -> None:
        """Stop every check, end the ``changes()`` iterators, close the shared sockets."""
        self._stopped = True
        for p in self._probes.values():
            p.active = False
        self._probes.clear()
        self._buckets.clear()
        self._targets.clear()
        for q in self._queues:
            q.put_nowait(None)
        self.checker.close()
        await asyncio.sleep(0)
