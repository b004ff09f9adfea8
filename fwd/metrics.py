"""Prometheus metrics of the daemon, served over HTTP from the daemon's event loop.

Nothing is counted twice: at each scrape a collector asks the daemon for a :class:`MetricsView`
(plain numbers read from the data plane's C counters, the health checker and the daemon's own
state) and turns it into metric families. The HTTP side is a minimal asyncio server (GET
``/metrics``; ``/`` says where to look), so there is no extra thread. Metric names and labels are
listed in docs/daemon.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from fwd.config import STATES, parse_metrics_address

__all__ = ["MetricsServer", "MetricsView", "FwdCollector", "render"]

MAX_REQUEST = 8192


@dataclass
class CheckView:
    """One health check (probe) of one backend address."""

    backend: str
    check: str
    up: bool | None
    count: int
    failures: int
    latency_sum: float
    buckets: list[tuple[float, int]]  # cumulative, the last bound +inf
    latency_last: float


@dataclass
class MetricsView:
    """Everything one scrape shows, as plain data (built by fwd.daemon.Daemon.metrics_view)."""

    binds: list[dict[str, Any]] = field(default_factory=list)  # table, bind, packets, bytes
    # table, backend, state, config_state, override, healthy, checked, packets, bytes,
    # primary_rows, secondary_rows
    backends: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    icmp_replies: int = 0
    ports: list[dict[str, Any]] = field(default_factory=list)  # worker, rx_packets, tx_packets, ...
    checks: list[CheckView] = field(default_factory=list)
    generation: int = 0
    acked_generation: int = 0
    health_changes: int = 0
    reload_success: bool | None = None
    reload_timestamp: float | None = None
    reloads: dict[str, int] = field(default_factory=dict)  # ok / failed
    start_time: float = 0.0
    mode: str = ""
    version: str = ""
    bgp: dict[str, Any] | None = None  # fwd.bgp.BgpSpeaker.metrics() when [bgp] is configured


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


def families(v: MetricsView) -> Iterator[Metric]:
    """The metric families of one view."""
    info = _gauge("fwd_info", "fwd's version and data plane back end (always 1)", ["version", "mode"])
    info.add_metric([v.version, v.mode], 1)
    yield info
    start = _gauge("fwd_start_time_seconds", "when the daemon started (Unix time)")
    start.add_metric([], v.start_time)
    yield start

    bp = _counter("fwd_bind_packets", "packets that matched a bind (VIP)", ["table", "bind"])
    bb = _counter("fwd_bind_bytes", "bytes of the packets that matched a bind (VIP)", ["table", "bind"])
    for b in v.binds:
        bp.add_metric([b["table"], b["bind"]], b["packets"])
        bb.add_metric([b["table"], b["bind"]], b["bytes"])
    yield bp
    yield bb

    labels = ["table", "backend"]
    kp = _counter("fwd_backend_packets", "packets forwarded to a backend (counted on the primary)", labels)
    kb = _counter(
        "fwd_backend_bytes", "bytes forwarded to a backend (GUE frames, counted on the primary)", labels
    )
    healthy = _gauge("fwd_backend_healthy", "1 when the table treats the backend as healthy, else 0", labels)
    checked = _gauge("fwd_backend_checked", "1 when health checks decide the backend's health", labels)
    state = _gauge(
        "fwd_backend_state", "1 for the backend's state in the running table (others 0)", [*labels, "state"]
    )
    override = _gauge(
        "fwd_backend_override", "1 when a runtime override (fwd backend ...) sets the state", labels
    )
    rows = _gauge("fwd_backend_rows", "table rows the backend owns, by role", [*labels, "role"])
    for b in v.backends:
        lv = [b["table"], b["backend"]]
        kp.add_metric(lv, b["packets"])
        kb.add_metric(lv, b["bytes"])
        healthy.add_metric(lv, 1 if b["healthy"] else 0)
        checked.add_metric(lv, 1 if b["checked"] else 0)
        for s in STATES:
            state.add_metric([*lv, s], 1 if b["state"] == s else 0)
        override.add_metric(lv, 1 if b["override"] else 0)
        rows.add_metric([*lv, "primary"], b["primary_rows"])
        rows.add_metric([*lv, "secondary"], b["secondary_rows"])
    yield from (kp, kb, healthy, checked, state, override, rows)

    verdicts = _counter("fwd_verdicts", "packets by the core's verdict", ["verdict"])
    for name, n in v.verdicts.items():
        verdicts.add_metric([name], n)
    yield verdicts
    drops = _counter("fwd_drops", "packets dropped by the core, by reason", ["reason"])
    for name, n in v.drops.items():
        drops.add_metric([name], n)
    yield drops
    icmp = _counter("fwd_icmp_replies", "ICMP fragmentation-needed / packet-too-big replies sent", [])
    icmp.add_metric([], v.icmp_replies)
    yield icmp

    port_fields = (
        ("rx_packets", "frames taken off the receive ring"),
        ("tx_packets", "frames handed to the transmit ring"),
        ("tx_dropped", "frames that found no room to transmit"),
        ("kernel_drops", "frames the kernel dropped for the socket (ring full)"),
    )
    for key, doc in port_fields:
        fam = _counter(f"fwd_port_{key}", f"per worker: {doc}", ["worker"])
        for p in v.ports:
            fam.add_metric([p["worker"]], p.get(key, 0))
        yield fam

    lat = HistogramMetricFamily(
        "fwd_healthcheck_latency_seconds",
        "duration of health checks (failed ones too), per check",
        labels=["backend", "check"],
    )
    count = _counter("fwd_healthcheck_checks", "health checks run", ["backend", "check"])
    fail = _counter("fwd_healthcheck_failures", "health checks that failed", ["backend", "check"])
    up = _gauge(
        "fwd_healthcheck_up",
        "1 when the check passes (after rise/fall), 0 when it fails",
        ["backend", "check"],
    )
    last = _gauge("fwd_healthcheck_last_latency_seconds", "duration of the last check", ["backend", "check"])
    for c in v.checks:
        lv = [c.backend, c.check]
        lat.add_metric(lv, [(_bound(b), float(n)) for b, n in c.buckets], c.latency_sum)
        count.add_metric(lv, c.count)
        fail.add_metric(lv, c.failures)
        if c.up is not None:
            up.add_metric(lv, 1 if c.up else 0)
        last.add_metric(lv, c.latency_last)
    yield from (lat, count, fail, up, last)
    changes = _counter("fwd_health_changes", "verdict changes applied to the tables", [])
    changes.add_metric([], v.health_changes)
    yield changes

    gen = _gauge("fwd_table_generation", "generation of the last snapshot published to the data plane")
    gen.add_metric([], v.generation)
    yield gen
    acked = _gauge(
        "fwd_runtime_acked_generation", "the oldest generation a data-plane worker still uses (all have it)"
    )
    acked.add_metric([], v.acked_generation)
    yield acked

    ok = _gauge("fwd_reload_success", "1 when the last reload applied, 0 when it was refused")
    ts = _gauge("fwd_reload_timestamp_seconds", "when the last reload was attempted (Unix time)")
    if v.reload_success is not None:
        ok.add_metric([], 1 if v.reload_success else 0)
    if v.reload_timestamp is not None:
        ts.add_metric([], v.reload_timestamp)
    yield ok
    yield ts
    reloads = _counter("fwd_reloads", "reloads attempted, by result", ["result"])
    for result in ("ok", "failed"):
        reloads.add_metric([result], v.reloads.get(result, 0))
    yield reloads
    if v.bgp is not None:
        yield from bgp_families(v.bgp)


def bgp_families(b: dict[str, Any]) -> Iterator[Metric]:
    """BGP (fwd.bgp): ExaBGP, the peers' sessions and the VIPs' announcements."""
    up = _gauge("fwd_bgp_exabgp_up", "1 while the ExaBGP child runs and its API is connected")
    up.add_metric([], b["exabgp_up"])
    restarts = _counter("fwd_bgp_exabgp_restarts", "times ExaBGP died and was restarted", [])
    restarts.add_metric([], b["restarts"])
    drained = _gauge("fwd_bgp_node_drained", "1 while the node is drained (fwd node drain)")
    drained.add_metric([], b["drained"])
    commands = _counter("fwd_bgp_commands", "API commands sent to ExaBGP, by its answer", ["result"])
    for result in ("sent", "done", "error"):
        commands.add_metric([result], b["commands"].get(result, 0))
    yield from (up, restarts, drained, commands)
    peer_up = _gauge("fwd_bgp_peer_up", "1 while the BGP session with the peer is established", ["peer"])
    ups = _counter("fwd_bgp_peer_established", "times the session with the peer came up", ["peer"])
    downs = _counter("fwd_bgp_peer_lost", "times an established session with the peer went down", ["peer"])
    adv = _gauge("fwd_bgp_peer_routes", "VIP routes the peer was sent and not withdrawn", ["peer"])
    for p in b["peers"]:
        peer_up.add_metric([p["peer"]], p["up"])
        ups.add_metric([p["peer"]], p["ups"])
        downs.add_metric([p["peer"]], p["downs"])
        adv.add_metric([p["peer"]], p["advertised"])
    yield from (peer_up, ups, downs, adv)
    wanted = _gauge("fwd_bgp_vip_announced", "1 when fwd wants the VIP announced, 0 when withdrawn", ["vip"])
    peers = _gauge("fwd_bgp_vip_peers", "peers the VIP's route was sent to (and not withdrawn)", ["vip"])
    for vip in b["vips"]:
        wanted.add_metric([vip["vip"]], vip["announce"])
        peers.add_metric([vip["vip"]], vip["peers"])
    yield from (wanted, peers)


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


class FwdCollector(Collector):
    def __init__(self, view: Callable[[], MetricsView]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from families(self.view())


def render(view: Callable[[], MetricsView]) -> bytes:
    """The text exposition of one view (what GET /metrics returns)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FwdCollector(view))
    return generate_latest(registry)


class MetricsServer:
    """GET /metrics on ``HOST:PORT`` in the running event loop."""

    def __init__(
        self, address: str, view: Callable[[], MetricsView], log: logging.Logger | None = None
    ) -> None:
        self.address = address
        self.host, self.port = parse_metrics_address(address, allow_port_zero=True)
        self.log = log or logging.getLogger("fwd.metrics")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FwdCollector(view))
        self._server: asyncio.base_events.Server | None = None
        self.scrapes = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        except OSError as e:
            raise OSError(e.errno, f"metrics: cannot listen on {self.address}: {e.strerror or e}") from None

    @property
    def bound(self) -> tuple[str, int] | None:
        """The address actually listened on (port 0 resolved)."""
        if self._server is None or not self._server.sockets:
            return None
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        try:
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await self._reply(writer, 405, b"only GET\n", "text/plain", method == "HEAD")
            elif path == "/metrics":
                self.scrapes += 1
                try:
                    body = generate_latest(self.registry)
                except Exception:
                    self.log.exception("metrics: collecting failed")
                    await self._reply(writer, 500, b"collecting the metrics failed\n", "text/plain", False)
                else:
                    await self._reply(writer, 200, body, CONTENT_TYPE_PLAIN_0_0_4, method == "HEAD")
            elif path == "/":
                await self._reply(writer, 200, b"fwd metrics: /metrics\n", "text/plain", method == "HEAD")
            else:
                await self._reply(writer, 404, b"not found (try /metrics)\n", "text/plain", method == "HEAD")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str, head_only: bool
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}[code]
        header = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        writer.write(header if head_only else header + body)
        await writer.drain()
