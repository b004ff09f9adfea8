"""The fwd daemon: the control plane of an L4 node (``fwd run``), ARCHITECTURE §7.

One uvloop event loop in the main thread; the data plane's C threads forward packets meanwhile
(fwd.live.LiveDataplane). On the loop:

* **health → table**: the health checker (``healthcheck/``) reports verdict changes; each one
  updates its table incrementally (``ForwardingTable.set_backends``) and publishes a snapshot
  (``LiveDataplane.set_backends``) in the same loop callback — several verdicts that arrive
  together go out in one snapshot. The log says which backend changed, why, and how many rows
  moved.
* **reloads** (SIGHUP, ``fwd reload``): the config is read and validated off the loop; an invalid
  one is refused with its reason and the running table keeps serving; a valid one is applied
  with one snapshot publication (incremental where the table's identity is unchanged), and the
  log lists what changed.
* **runtime overrides** (``fwd backend drain|fill|activate|deactivate|clear``): the state of a
  backend set by the operator, over the config's; it persists across reloads until cleared, until
  the config says the same state, or until the backend leaves the config (fwd.overrides).
* the **control API** (fwd.api, a root-only Unix socket), **Prometheus metrics** (fwd.metrics) and
  **systemd notifications** (fwd.notify).
* **BGP** (fwd.bgp, when the config has ``[bgp]``): ExaBGP as a child process announces each VIP
  while the data plane runs and the VIP has a healthy backend; ``fwd node drain|undrain``.
* **SIGTERM**: STOPPING=1 → the withdraw hooks (the BGP speaker's) → ``drain_wait`` seconds
  of forwarding → health checks, API and metrics stop → ExaBGP and the data plane stop.

What the tables use for a backend (its *effective* state and health):
state = the runtime override, else the config's ``state``; healthy = the health checker's verdict
when the backend has checks and one has been reached, else the config's ``healthy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from fwd import __version__
from fwd.api import ApiError, ControlServer
from fwd.config import Backend, Config, ConfigError, Table, describe_bind, load_config
from fwd.logs import use_format
from fwd.metrics import CheckView, MetricsServer, MetricsView
from fwd.notify import Notifier
from fwd.overrides import ACTIONS, Overrides, describe_changes
from fwd.tasks import cancel_all

__all__ = ["Daemon", "DaemonError", "DaemonOptions"]

IPAddress = IPv4Address | IPv6Address
Key = tuple[str, IPAddress]  # (table name, backend address): a backend's identity across reloads


class DaemonError(RuntimeError):
    """The daemon cannot start; the text is one line."""


@dataclass
class DaemonOptions:
    """The command line's part of the daemon's settings (the rest is the config's [daemon])."""

    config_path: str
    interfaces: list[str]
    mode: str = "auto"
    xsk_mode: str = "auto"
    busy_poll: bool = False
    rx_holdoff_us: int = 0
    tunnel_src: list[IPAddress] = field(default_factory=list)
    control_socket: str | None = None  # overrides [daemon] control_socket
    metrics_address: str | None = None  # overrides [daemon] metrics_address ("" = none)
    log_format: str | None = None  # overrides [daemon] log_format
    drain_wait: float | None = None  # overrides [daemon] drain_wait
    stats_interval: float = 10.0  # seconds between stats lines on stdout (0: none)
    verbose: bool = False
    rate_interval: float = 1.0  # seconds between the counter samples rates are computed from


@dataclass
class ReloadResult:
    ok: bool
    source: str
    at: float
    message: str
    changes: list[str] = field(default_factory=list)
    generation: int | None = None
    rows_changed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HealthEvent:
    """The last table change a verdict caused (for `fwd status` and the benchmark)."""

    key: Key
    healthy: bool
    reason: str
    verdict_mono: float  # time.monotonic() when the verdict reached the daemon
    generation: int
    published_mono: float
    rows_changed: int


def _ago(t: float | None) -> float | None:
    return None if t is None else round(time.time() - t, 3)


class Daemon:
    def __init__(
        self,
        opts: DaemonOptions,
        cfg: Config,
        log: logging.Logger | None = None,
        *,
        notifier: Notifier | None = None,
        on_stats: Callable[[dict[str, Any]], None] | None = None,
        health_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.opts = opts
        self.cfg = cfg
        self.log = log or logging.getLogger("fwd.daemon")
        self.notify = notifier or Notifier(log=self.log)
        self.on_stats = on_stats
        # healthcheck.HealthChecker(on_change=...) unless given (the benchmark injects verdicts)
        self.health_factory = health_factory
        self.overrides = Overrides()
        # BGP (a later issue) appends callables here: called on SIGTERM before the drain wait,
        # while the data plane still forwards. A callable may return an awaitable.
        self.withdraw_hooks: list[Callable[[], Awaitable[None] | None]] = []
        self.bgp: Any = None  # fwd.bgp.BgpSpeaker when the config has [bgp]
        self.live: Any = None
        self.hc: Any = None
        self.api: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.ready = False
        self.stopping = False
        self.last_reload: ReloadResult | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.health_changes = 0
        self.last_health_event: HealthEvent | None = None
        self._index: dict[Key, tuple[int, int]] = {}
        self._pending: dict[Hashable, Any] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._table_lock = asyncio.Lock()
        self._busy = False  # a reload / override holds the tables: verdicts wait for it
        self._stop = asyncio.Event()
        self._skip_drain = asyncio.Event()
        self._stop_reason = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._rates: dict[str, Any] = {"binds": [], "backends": [], "at": None}
        self._prev_sample: tuple[float, Any, Any] | None = None
        self._owned_cache: dict[int, tuple[Any, list[tuple[int, int]]]] = {}
        self._reload_task: asyncio.Task[Any] | None = None
        self._reindex()

    # ------------------------------------------------------------------------------------------
    # settings

    @property
    def control_socket(self) -> str:
        return self.opts.control_socket or self.cfg.daemon.control_socket

    @property
    def metrics_address(self) -> str:
        if self.opts.metrics_address is not None:
            return self.opts.metrics_address
        return self.cfg.daemon.metrics_address

    @property
    def log_format(self) -> str:
        return self.opts.log_format or self.cfg.daemon.log_format

    @property
    def drain_wait(self) -> float:
        return self.opts.drain_wait if self.opts.drain_wait is not None else self.cfg.daemon.drain_wait

    def _reindex(self) -> None:
        self._index = {
            (t.name, b.address): (ti, bi)
            for ti, t in enumerate(self.cfg.tables)
            for bi, b in enumerate(t.backends)
        }

    # ------------------------------------------------------------------------------------------
    # what the tables use

    def verdict(self, key: Key) -> bool | None:
        return None if self.hc is None else self.hc.healthy(key)

    def effective_backend(self, table: Table, b: Backend, overrides: Overrides | None = None) -> Backend:
        key = (table.name, b.address)
        state = (overrides or self.overrides).state(key, b.state)
        healthy = b.healthy
        if b.checks and state != "inactive":
            v = self.verdict(key)
            if v is not None:
                healthy = v
        if state == b.state and healthy == b.healthy:
            return b
        return dataclasses.replace(b, state=state, healthy=healthy)

    def effective_config(self, cfg: Config, overrides: Overrides | None = None) -> Config:
        tables = [
            dataclasses.replace(t, backends=[self.effective_backend(t, b, overrides) for b in t.backends])
            for t in cfg.tables
        ]
        return dataclasses.replace(cfg, tables=tables)

    def targets(self) -> list[Any]:
        """Health-check targets: every ranked backend (effective state not inactive) with checks."""
        from healthcheck import DEFAULT_TIMING, targets_from_config

        eff = self.effective_config(self.cfg)
        node = getattr(self.live, "node", None)
        targets = targets_from_config(
            eff,
            timing=lambda t, b: b.timing or DEFAULT_TIMING,
            checks=lambda t, b: b.checks,
            tunnel_source=getattr(node, "tunnel_src4", None),
            tunnel_source6=getattr(node, "tunnel_src6", None),
        )
        return [t for t in targets if t.checks]

    # ------------------------------------------------------------------------------------------
    # running

    async def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop everything. 0 on a clean stop."""
        from fwd.live import LiveDataplane, check_privileges, interfaces_info
        from healthcheck import HealthChecker

        loop = asyncio.get_running_loop()
        self.loop = loop
        level = logging.DEBUG if self.opts.verbose else logging.INFO
        use_format(self.log_format, level)
        # the refusals `fwd run` always made come first, before anything is created
        interfaces_info(self.opts.interfaces)
        check_privileges(self.opts.mode)
        self.bgp = self._make_bgp(self.cfg)  # refuses now when ExaBGP is missing
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.request_stop, name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload, "SIGHUP")
        try:
            self.api = ControlServer(self.control_socket, self._handlers(), self.log)
            await self.api.start()
            self.log.info("control socket %s (mode 0600, root only)", self.control_socket)
            await self._start_metrics()
            eff = self.effective_config(self.cfg)
            self.live = LiveDataplane(
                eff,
                self.opts.interfaces,
                self.opts.mode,
                xsk_mode=self.opts.xsk_mode,
                busy_poll=self.opts.busy_poll,
                rx_holdoff_us=self.opts.rx_holdoff_us,
                tunnel_src=self.opts.tunnel_src,
                log=logging.getLogger("fwd.run"),
            )
            await loop.run_in_executor(None, self.live.start)
            self._log_running()
            self.hc = (self.health_factory or HealthChecker)(on_change=self._on_verdict)
            self.hc.set_targets(self.targets())
            n = sum(1 for _ in self.hc.status())
            if n:
                self.log.info("health checks: %d backend%s checked", n, "" if n == 1 else "s")
            self.ready = True
            self.notify.ready(self.status_line())
            await self._start_bgp()
            self._tasks.append(loop.create_task(self._sample_rates(), name="rates"))
            if self.opts.stats_interval > 0 and self.on_stats is not None:
                self._tasks.append(loop.create_task(self._print_stats(), name="stats"))
            if not self._stop.is_set():
                await self._stop.wait()
            await self._shutdown()
            return 0
        finally:
            await self._cleanup()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _log_running(self) -> None:
        live = self.live
        nworkers = len(live.workers)
        self.log.info(
            "running: mode %s, %d worker%s on %s, %s; config %s (%s)",
            live.mode_used,
            nworkers,
            "" if nworkers == 1 else "s",
            ", ".join(self.opts.interfaces),
            f"{len(live.binds)} bind{'' if len(live.binds) == 1 else 's'}",
            self.cfg.path,
            self.cfg.format,
            extra={"event": "start", "mode": live.mode_used, "workers": nworkers},
        )
        hops = list(live.hops.values())
        for hop in hops[:16]:
            self.log.info("next hop %s", hop.describe())
        if len(hops) > 16:
            bad = sum(1 for h in hops if not h.usable)
            self.log.info(
                "next hops: %d more backends (%d of all %d unresolved; fwd status --json lists each)",
                len(hops) - 16,
                bad,
                len(hops),
            )

    async def _start_metrics(self) -> None:
        addr = self.metrics_address
        if not addr:
            return
        server = MetricsServer(addr, self.metrics_view, self.log)
        try:
            await server.start()
        except OSError as e:
            raise DaemonError(str(e.strerror or e)) from None
        self.metrics = server
        host, port = server.bound or (server.host, server.port)
        self.log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    def request_stop(self, reason: str = "stop") -> None:
        if self._stop.is_set():
            self._skip_drain.set()  # a second signal: do not wait for the drain
            self.log.info("%s again: skipping the rest of the drain wait", reason)
            return
        self._stop_reason = reason
        self.log.info("%s: stopping", reason, extra={"event": "stop"})
        self._stop.set()

    async def _shutdown(self) -> None:
        self.stopping = True
        self.notify.stopping(f"stopping ({self._stop_reason})")
        for hook in list(self.withdraw_hooks):
            try:
                r = hook()
                if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future):
                    await asyncio.wait_for(r, 30)
            except Exception as e:
                self.log.error("withdraw hook %r failed: %s", hook, e)
        wait = self.drain_wait
        if wait > 0 and self.live is not None:
            self.log.info(
                "drain: forwarding for %g more second%s before stopping (drain_wait; signal again to skip)",
                wait,
                "" if wait == 1 else "s",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._skip_drain.wait(), wait)

    async def _cleanup(self) -> None:
        await cancel_all(self._tasks)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.hc is not None:
            with contextlib.suppress(Exception):
                await self.hc.stop()
        if self.api is not None:
            await self.api.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.bgp is not None:  # its routes were withdrawn by its SIGTERM hook
            await self.bgp.stop()
        if self.live is not None:
            assert self.loop is not None
            await self.loop.run_in_executor(None, self.live.stop)

    # ------------------------------------------------------------------------------------------
    # health verdicts -> tables

    def _on_verdict(self, v: Any) -> None:
        """HealthChecker.on_change: note it; the tables change in a callback of this loop turn."""
        self._pending[v.key] = (v, time.monotonic())
        if self._flush_handle is None and self.loop is not None:
            self._flush_handle = self.loop.call_soon(self.flush_health)
        self._bgp_changed()  # after the flush: BGP reads the tables it publishes

    def flush_health(self) -> None:
        """Apply the pending verdicts: one incremental update per table, one snapshot."""
        self._flush_handle = None
        if self._busy or not self._pending or self.live is None or self.stopping:
            return
        pending, self._pending = self._pending, {}
        changed: dict[int, list[Backend]] = {}
        why: dict[int, list[tuple[Key, Any, float]]] = {}
        for key, (v, mono) in pending.items():
            loc = self._index.get(key)
            if loc is None:
                continue  # the backend left the config since
            ti, bi = loc
            table = self.cfg.tables[ti]
            new = self.effective_backend(table, table.backends[bi])
            cur = self.live.tables[ti].backends[bi] if bi < len(self.live.tables[ti].backends) else None
            word = "up" if v.healthy else "down"
            if cur is not None and cur == new:
                self.log.info(
                    "health: backend %s (table %s) %s: %s; the table already has it so",
                    key[1],
                    key[0],
                    word,
                    v.reason,
                    extra={"event": "health", "table": key[0], "backend": str(key[1]), "healthy": v.healthy},
                )
                continue
            changed.setdefault(ti, [])
            why.setdefault(ti, []).append((key, v, mono))
        if not changed:
            return
        # the running lists with only the changed backends replaced (O(changes), not O(backends))
        lists = {ti: list(self.live.tables[ti].backends) for ti in changed}
        for ti, items in why.items():
            table = self.cfg.tables[ti]
            for key, _, _ in items:
                bi = self._index[key][1]
                lists[ti][bi] = self.effective_backend(table, table.backends[bi])
        t0 = time.perf_counter()
        try:
            stats, gen = self.live.set_backends(lists)
        except Exception as e:  # the data plane stopped under us: nothing to update
            self.log.error("health: cannot update the data plane: %s", e)
            return
        took = time.perf_counter() - t0
        now = time.monotonic()
        for ti, items in why.items():
            st = stats[ti]
            for key, v, mono in items:
                self.health_changes += 1
                self.last_health_event = HealthEvent(
                    key, v.healthy, v.reason, mono, gen, now, st.rows_changed
                )
                self.log.info(
                    "health: backend %s (table %s) %s: %s; %d row%s changed, generation %d (%.1f ms)",
                    key[1],
                    key[0],
                    "up" if v.healthy else "down",
                    v.reason,
                    st.rows_changed,
                    "" if st.rows_changed == 1 else "s",
                    gen,
                    took * 1000,
                    extra={
                        "event": "health",
                        "table": key[0],
                        "backend": str(key[1]),
                        "healthy": v.healthy,
                        "rows_changed": st.rows_changed,
                        "generation": gen,
                    },
                )
        if self.notify.enabled:
            self.notify.status(self.status_line())

    # ------------------------------------------------------------------------------------------
    # reloads

    def request_reload(self, source: str = "SIGHUP") -> None:
        assert self.loop is not None
        if not self.ready or self.stopping:
            self.log.warning(
                "%s: not reloading while %s", source, "stopping" if self.stopping else "starting"
            )
            return
        self._reload_task = self.loop.create_task(self.reload(source), name="reload")

    async def reload(self, source: str) -> ReloadResult:
        async with self._table_lock:
            self._busy = True
            try:
                result = await self._reload_locked(source)
            finally:
                self._busy = False
            self.flush_health()  # verdicts that arrived meanwhile
            return result

    async def _reload_locked(self, source: str) -> ReloadResult:
        assert self.loop is not None
        path = self.opts.config_path
        self.notify.reloading(f"reloading {path} ({source})")
        started = time.time()
        try:
            new = await self.loop.run_in_executor(None, load_config, path)
        except ConfigError as e:
            return self._reload_done(ReloadResult(False, source, started, f"config rejected: {e}"))
        except Exception as e:  # an unreadable file that load_config did not expect
            return self._reload_done(ReloadResult(False, source, started, f"config rejected: {e}"))
        refusal = self._refuse_config(new)
        if refusal:
            return self._reload_done(ReloadResult(False, source, started, f"config rejected: {refusal}"))
        changes = describe_changes(self.cfg, new)
        overrides = self.overrides.copy()
        cleared = overrides.prune(new)
        eff = self.effective_config(new, overrides)
        try:
            gen = await self.loop.run_in_executor(None, self.live.publish, eff)
        except Exception as e:
            # the data plane refused it: make sure it serves the old tables again
            try:
                await self.loop.run_in_executor(None, self.live.publish, self.effective_config(self.cfg))
            except Exception as e2:
                self.log.critical("reload: cannot restore the previous tables either: %s", e2)
            return self._reload_done(ReloadResult(False, source, started, f"the data plane refused it: {e}"))
        old = self.cfg
        self.cfg = new
        self.overrides = overrides
        self._reindex()
        self._owned_cache.clear()
        self._prev_sample = None
        rows = {t.name: self.live.tables[ti].last_update.rows_changed for ti, t in enumerate(new.tables)}
        self.hc.set_targets(self.targets())
        self._apply_daemon_settings(old, new)
        changes += cleared
        changes += await self._bgp_reload(old, new)
        moved = ", ".join(f"{name} {n}" for name, n in rows.items() if n) or "none"
        msg = f"applied {new.path} as generation {gen}: {'; '.join(changes)}; rows changed: {moved}"
        return self._reload_done(ReloadResult(True, source, started, msg, changes, gen, rows))

    def _refuse_config(self, new: Config) -> str | None:
        """What the running daemon cannot take from a valid config (its file is fine)."""
        if new.bgp is not None:
            from fwd.bgp import BgpError, find_exabgp

            try:
                find_exabgp(new.bgp)
            except BgpError as e:
                return str(e)
        return None

    def _reload_done(self, r: ReloadResult) -> ReloadResult:
        self.last_reload = r
        self.reloads["ok" if r.ok else "failed"] += 1
        extra = {"event": "reload", "ok": r.ok, "source": r.source, "generation": r.generation}
        if r.ok:
            self.log.info("reload (%s): %s", r.source, r.message, extra=extra)
        else:
            gen = self.live.generation() if self.live is not None else 0
            self.log.error(
                "reload (%s): %s; still serving the previous config (generation %d)",
                r.source,
                r.message,
                gen,
                extra=extra,
            )
        self.notify.ready(self.status_line())
        return r

    def _apply_daemon_settings(self, old: Config, new: Config) -> None:
        o, n = old.daemon, new.daemon
        if o.log_format != n.log_format and self.opts.log_format is None:
            use_format(n.log_format, logging.DEBUG if self.opts.verbose else logging.INFO)
        if o.control_socket != n.control_socket and self.opts.control_socket is None:
            self.log.warning(
                "daemon.control_socket changed to %s: it takes effect at the next start (still %s)",
                n.control_socket,
                self.api.path if self.api else o.control_socket,
            )
        if o.metrics_address != n.metrics_address and self.opts.metrics_address is None:
            assert self.loop is not None
            self.loop.create_task(self._restart_metrics(), name="metrics restart")

    async def _restart_metrics(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
        try:
            await self._start_metrics()
        except DaemonError as e:
            self.log.error("metrics: %s (no metrics endpoint until this is fixed)", e)

    # ------------------------------------------------------------------------------------------
    # runtime overrides

    def find_backend(self, table: str, address: str) -> tuple[int, int, Key]:
        import ipaddress

        names = [t.name for t in self.cfg.tables]
        if table not in names:
            raise ApiError(f"no table named {table!r} (tables: {', '.join(names)})")
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            raise ApiError(f"{address!r} is not an IPv4 or IPv6 address") from None
        key = (table, addr)
        loc = self._index.get(key)
        if loc is None:
            raise ApiError(f"table {table!r} has no backend {addr}")
        return loc[0], loc[1], key

    async def set_override(self, action: str, table: str, address: str, who: str) -> dict[str, Any]:
        if action not in ACTIONS:
            raise ApiError(f"unknown action {action!r} (expected one of: {', '.join(ACTIONS)})")
        assert self.loop is not None
        async with self._table_lock:
            self._busy = True
            try:
                ti, bi, key = self.find_backend(table, address)
                conf = self.cfg.tables[ti].backends[bi]
                before = self.overrides.copy()
                old_state = self.overrides.state(key, conf.state)
                note = self.overrides.apply(key, action, conf.state)
                try:
                    gen = await self.loop.run_in_executor(
                        None, self.live.publish, self.effective_config(self.cfg)
                    )
                except Exception as e:
                    self.overrides = before
                    raise ApiError(f"the data plane refused the change: {e}") from None
                self._owned_cache.pop(ti, None)
                self.hc.set_targets(self.targets())
                self._bgp_changed()
                rows = self.live.tables[ti].last_update.rows_changed
                new_state = self.overrides.state(key, conf.state)
                self.log.info(
                    "backend %s (table %s): %s -> %s by %s (%s); %d row%s changed, generation %d",
                    key[1],
                    table,
                    old_state,
                    new_state,
                    who,
                    note,
                    rows,
                    "" if rows == 1 else "s",
                    gen,
                    extra={
                        "event": "override",
                        "table": table,
                        "backend": str(key[1]),
                        "state": new_state,
                        "rows_changed": rows,
                        "generation": gen,
                    },
                )
                self.notify.status(self.status_line())
                return {
                    "table": table,
                    "address": str(key[1]),
                    "action": action,
                    "state": new_state,
                    "previous_state": old_state,
                    "config_state": conf.state,
                    "override": self.overrides.get(key),
                    "note": note,
                    "rows_changed": rows,
                    "generation": gen,
                }
            finally:
                self._busy = False
                self.flush_health()

    # ------------------------------------------------------------------------------------------
    # reading

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        if self.live is None:
            return "starting"
        eff = self.live.tables
        total = sum(len(t.backends) for t in eff)
        ranked = [b for t in eff for b in t.backends if b.state != "inactive"]
        healthy = sum(1 for b in ranked if b.healthy)
        binds = len(self.live.binds)
        return (
            f"forwarding ({self.live.mode_used}): {len(eff)} table{'s' if len(eff) != 1 else ''}, "
            f"{binds} VIP bind{'s' if binds != 1 else ''}, {healthy}/{len(ranked)} ranked backends healthy "
            f"({total} in all); generation {self.live.generation()}"
        )

    def owned(self, ti: int) -> list[tuple[int, int]]:
        table = self.live.tables[ti]
        hit = self._owned_cache.get(ti)
        if hit is not None and hit[0] is table.last_update:
            return hit[1]
        owned = table.owned()
        self._owned_cache[ti] = (table.last_update, owned)
        return owned

    async def _sample_rates(self) -> None:
        while True:
            try:
                self._take_sample()
            except Exception as e:  # pragma: no cover - never stop sampling
                self.log.debug("rate sample failed: %s", e)
            await asyncio.sleep(self.opts.rate_interval)

    def _take_sample(self) -> None:
        if self.live is None:
            return
        now = time.monotonic()
        c = self.live.counters()
        prev = self._prev_sample
        self._prev_sample = (now, c.binds, c.backends)
        if prev is None:
            return
        t0, binds0, backends0 = prev
        dt = now - t0
        if (
            dt <= 0
            or len(binds0) != len(c.binds)
            or [len(x) for x in backends0] != [len(x) for x in c.backends]
        ):
            self._rates = {"binds": [], "backends": [], "at": None}
            return

        def rate(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float]:
            return max(0, b[0] - a[0]) / dt, max(0, b[1] - a[1]) * 8 / dt

        self._rates = {
            "binds": [rate(a, b) for a, b in zip(binds0, c.binds, strict=True)],
            "backends": [
                [rate(a, b) for a, b in zip(ra, rb, strict=True)]
                for ra, rb in zip(backends0, c.backends, strict=True)
            ],
            "at": time.time(),
        }

    def _rate(self, kind: str, i: int, j: int | None = None) -> tuple[float, float]:
        try:
            r = self._rates[kind][i] if j is None else self._rates[kind][i][j]
            return float(r[0]), float(r[1])
        except (IndexError, KeyError, TypeError):
            return 0.0, 0.0

    async def _print_stats(self) -> None:
        assert self.on_stats is not None
        while True:
            await asyncio.sleep(self.opts.stats_interval)
            with contextlib.suppress(Exception):
                self.on_stats(self.live.summary())

    def _health_status(self) -> dict[Hashable, Any]:
        return {} if self.hc is None else {s.key: s for s in self.hc.status()}

    def status(self) -> dict[str, Any]:
        """Everything `fwd status` shows, as plain data (the API's answer)."""
        live = self.live
        c = live.counters()
        health = self._health_status()
        hops = live.hops
        tables = []
        bind_index = 0
        for ti, t in enumerate(self.cfg.tables):
            owned = self.owned(ti)
            binds = []
            for b in t.binds:
                pk, by = c.binds[bind_index] if bind_index < len(c.binds) else (0, 0)
                pps, bps = self._rate("binds", bind_index)
                binds.append(
                    {
                        "index": bind_index,
                        "prefix": str(b.prefix),
                        "proto": b.proto,
                        "port_lo": b.port_lo,
                        "port_hi": b.port_hi,
                        "packets": pk,
                        "bytes": by,
                        "pps": round(pps, 1),
                        "bps": round(bps, 1),
                    }
                )
                bind_index += 1
            backends = []
            eff_list = live.tables[ti].backends
            for bi, b in enumerate(t.backends):
                key = (t.name, b.address)
                eff = eff_list[bi] if bi < len(eff_list) else b
                hs = health.get(key)
                pk, by = c.backends[ti][bi] if ti < len(c.backends) and bi < len(c.backends[ti]) else (0, 0)
                pps, bps = self._rate("backends", ti, bi)
                p_rows, s_rows = owned[bi] if bi < len(owned) else (0, 0)
                backends.append(
                    {
                        "index": bi,
                        "address": str(b.address),
                        "state": eff.state,
                        "config_state": b.state,
                        "override": self.overrides.get(key),
                        "healthy": eff.healthy,
                        "config_healthy": b.healthy,
                        "health": _health_json(hs, bool(b.checks) and eff.state != "inactive"),
                        "primary_rows": p_rows,
                        "secondary_rows": s_rows,
                        "packets": pk,
                        "bytes": by,
                        "pps": round(pps, 1),
                        "bps": round(bps, 1),
                        "next_hop": hops[b.address].describe() if b.address in hops else None,
                    }
                )
            tables.append(
                {
                    "name": t.name,
                    "index": ti,
                    "glb_compat": t.glb_compat,
                    "binds": binds,
                    "backends": backends,
                }
            )
        r = self.last_reload
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started_at,
            "uptime": round(time.time() - self.started_at, 3),
            "config": self.cfg.path,
            "format": self.cfg.format,
            "mode": live.mode_used,
            "interfaces": list(self.opts.interfaces),
            "workers": list(live.workers),
            "generation": live.generation(),
            "acked_generation": live.acked_generation(),
            "control_socket": self.api.path if self.api else None,
            "metrics": self.metrics_address or None,
            "drain_wait": self.drain_wait,
            "rates_at": self._rates.get("at"),
            "last_reload": r.as_dict() if r else None,
            "reloads": dict(self.reloads),
            "health_changes": self.health_changes,
            "overrides": self.overrides.as_list(),
            "tables": tables,
            "bgp": self.bgp.status() if self.bgp is not None else None,
            "verdicts": c.verdicts,
            "drops": c.drops,
            "icmp_replies": c.icmp_replies,
            "ports": [{"worker": name, **vars(ps)} for name, ps in live.port_stats()],
        }

    def metrics_view(self) -> MetricsView:
        live = self.live
        v = MetricsView(start_time=self.started_at, version=__version__)
        if live is None:
            return v
        c = live.counters()
        v.mode = live.mode_used or ""
        i = 0
        for t in self.cfg.tables:
            for b in t.binds:
                pk, by = c.binds[i] if i < len(c.binds) else (0, 0)
                v.binds.append({"table": t.name, "bind": describe_bind(b), "packets": pk, "bytes": by})
                i += 1
        for ti, t in enumerate(self.cfg.tables):
            owned = self.owned(ti)
            eff_list = live.tables[ti].backends
            for bi, b in enumerate(t.backends):
                eff = eff_list[bi] if bi < len(eff_list) else b
                pk, by = c.backends[ti][bi] if ti < len(c.backends) and bi < len(c.backends[ti]) else (0, 0)
                p_rows, s_rows = owned[bi] if bi < len(owned) else (0, 0)
                v.backends.append(
                    {
                        "table": t.name,
                        "backend": str(b.address),
                        "state": eff.state,
                        "config_state": b.state,
                        "override": self.overrides.get((t.name, b.address)) is not None,
                        "healthy": eff.healthy,
                        "checked": bool(b.checks) and eff.state != "inactive",
                        "packets": pk,
                        "bytes": by,
                        "primary_rows": p_rows,
                        "secondary_rows": s_rows,
                    }
                )
        v.verdicts = dict(c.verdicts)
        v.drops = dict(c.drops)
        v.icmp_replies = c.icmp_replies
        v.ports = [{"worker": name, **vars(ps)} for name, ps in live.port_stats()]
        if self.hc is not None:
            for p in self.hc.probes():
                s = p.stats
                v.checks.append(
                    CheckView(
                        backend=str(p.address),
                        check=p.name,
                        up=p.up,
                        count=s.checks,
                        failures=s.failures,
                        latency_sum=s.latency_sum,
                        buckets=s.cumulative_buckets(),
                        latency_last=s.latency_last,
                    )
                )
        v.generation = live.generation()
        v.acked_generation = live.acked_generation()
        v.health_changes = self.health_changes
        if self.last_reload is not None:
            v.reload_success = self.last_reload.ok
            v.reload_timestamp = self.last_reload.at
        v.reloads = dict(self.reloads)
        v.bgp = self.bgp.metrics() if self.bgp is not None else None
        return v

    def lookup(self, frame: bytes, table: str | None) -> dict[str, Any]:
        """A frame through the core with the live tables (a copy of the running snapshot's rows)."""
        from fwd.dataplane import Dataplane, lookup_json

        live = self.live
        cfg = live.cfg
        names = [t.name for t in cfg.tables]
        if table is not None and table not in names:
            raise ApiError(f"no table named {table!r} (tables: {', '.join(names)})")
        selected = list(range(len(names))) if table is None else [names.index(table)]
        view = dataclasses.replace(cfg, tables=[cfg.tables[i] for i in selected])
        node = live.node
        tunnel: list[IPAddress] = [
            node.tunnel_src4 or IPv4Address("0.0.0.0"),
            node.tunnel_src6 or IPv6Address("::"),
        ]
        dp = Dataplane(view, tables=[live.tables[i] for i in selected], tunnel_src=tunnel)
        res = dp.process(frame)
        return {
            **lookup_json(cfg, selected, res),
            "generation": live.generation(),
            "live": True,
        }

    # ------------------------------------------------------------------------------------------
    # the control API

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "ping": self._api_ping,
            "status": self._api_status,
            "reload": self._api_reload,
            "backend": self._api_backend,
            "lookup": self._api_lookup,
            "node": self._api_node,
        }

    def _need_ready(self) -> None:
        if not self.ready or self.live is None:
            raise ApiError("the daemon is still starting")

    async def _api_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "ready": self.ready, "stopping": self.stopping}

    async def _api_status(self, args: dict[str, Any]) -> dict[str, Any]:
        self._need_ready()
        return self.status()

    async def _api_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        self._need_ready()
        if self.stopping:
            raise ApiError("the daemon is stopping")
        return (await self.reload(str(args.get("source") or "fwd reload"))).as_dict()

    async def _api_backend(self, args: dict[str, Any]) -> dict[str, Any]:
        self._need_ready()
        for k in ("action", "table", "address"):
            if not isinstance(args.get(k), str):
                raise ApiError(f"backend: {k!r} (a string) is required")
        return await self.set_override(
            args["action"], args["table"], args["address"], str(args.get("who") or "fwd backend")
        )

    async def _api_lookup(self, args: dict[str, Any]) -> dict[str, Any]:
        self._need_ready()
        frame_hex = args.get("frame")
        if not isinstance(frame_hex, str):
            raise ApiError("lookup: 'frame' (hex) is required")
        try:
            frame = bytes.fromhex(frame_hex)
        except ValueError:
            raise ApiError("lookup: 'frame' is not hex") from None
        table = args.get("table")
        if table is not None and not isinstance(table, str):
            raise ApiError("lookup: 'table' must be a string")
        async with self._table_lock:
            return self.lookup(frame, table)

    async def _api_node(self, args: dict[str, Any]) -> dict[str, Any]:
        """fwd node drain|undrain: withdraw (announce again) every VIP of this node."""
        self._need_ready()
        action = args.get("action")
        if action not in ("drain", "undrain"):
            raise ApiError(f"node: unknown action {action!r} (expected drain or undrain)")
        if self.bgp is None:
            raise ApiError(
                f"node {action}: BGP is not configured (no [bgp] section): nothing announces this node"
            )
        if self.stopping:
            raise ApiError("the daemon is stopping (its VIPs are being withdrawn)")
        return dict(
            await self.bgp.set_drained(action == "drain", str(args.get("who") or f"fwd node {action}"))
        )

    # ------------------------------------------------------------------------------------------
    # BGP (fwd.bgp: ExaBGP as a child process, driven through its text API; docs/bgp.md)

    def _make_bgp(self, cfg: Config) -> Any:
        if cfg.bgp is None:
            return None
        from fwd.bgp import BgpError, BgpSpeaker, daemon_inputs

        try:
            return BgpSpeaker(
                cfg.bgp,
                lambda drained, stopping: daemon_inputs(self, drained, stopping),
                logging.getLogger("fwd.bgp"),
                source=cfg.path,
            )
        except BgpError as e:
            raise DaemonError(str(e)) from None

    async def _start_bgp(self) -> None:
        if self.bgp is not None:
            await self.bgp.start()
            self.withdraw_hooks.append(self.bgp.withdraw_for_stop)

    def _bgp_changed(self) -> None:
        if self.bgp is not None:
            self.bgp.changed()

    async def _bgp_reload(self, old: Config, new: Config) -> list[str]:
        if self.bgp is not None and new.bgp is not None:
            changes: list[str] = await self.bgp.reconfigure(new.bgp, new.path)
            self.bgp.changed()
            return changes
        if self.bgp is not None:  # [bgp] removed: withdraw, then stop ExaBGP
            speaker, self.bgp = self.bgp, None
            with contextlib.suppress(ValueError):
                self.withdraw_hooks.remove(speaker.withdraw_for_stop)
            await speaker.withdraw_for_stop()
            await speaker.stop()
            return ["bgp: removed (VIPs withdrawn, ExaBGP stopped)"]
        if new.bgp is not None:
            try:
                self.bgp = self._make_bgp(new)
                await self._start_bgp()
            except (DaemonError, OSError) as e:
                self.log.error("bgp: cannot start: %s", e)
                self.bgp = None
                return [f"bgp: cannot start: {e}"]
            return ["bgp: added (ExaBGP started)"]
        return []


def _health_json(hs: Any, checked: bool) -> dict[str, Any]:
    if not checked or hs is None:
        return {"checked": False, "verdict": None, "reason": None, "since": None, "checks": []}
    return {
        "checked": True,
        "verdict": hs.healthy,
        "reason": hs.reason,
        "since": hs.since,
        "since_ago": _ago(hs.since),
        "checks": [
            {
                "check": p.name,
                "up": p.up,
                "last_ok": p.last.ok if p.last else None,
                "last_error": p.last.error if p.last else None,
                "last_latency_ms": round(p.last.latency * 1000, 3) if p.last else None,
                "checks": p.stats.checks,
                "failures": p.stats.failures,
            }
            for p in hs.checks
        ],
    }


def run_daemon(
    opts: DaemonOptions,
    cfg: Config,
    log: logging.Logger | None = None,
    on_stats: Callable[[dict[str, Any]], None] | None = None,
    on_started: Callable[[Daemon], None] | None = None,
) -> tuple[int, Daemon]:
    """Run the daemon on a uvloop event loop in this thread until it stops."""
    import uvloop

    daemon = Daemon(opts, cfg, log, on_stats=on_stats)
    if on_started is not None:
        on_started(daemon)

    async def main() -> int:
        return await daemon.run()

    return uvloop.run(main()), daemon
