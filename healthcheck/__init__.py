"""fwd's health checker: its own package, with no dependency on the data plane.

Checks (TCP half-open or connect, HTTP/HTTPS GET, the GUE tunnel probe through fwd-redirect) run on one
event loop (uvloop in the daemon) with no thread and no task per check; :class:`HealthChecker`
schedules them per target with interval, timeout, rise, fall and jitter, and reports verdict
changes::

    hc = HealthChecker(on_change=lambda v: print(v.key, v.healthy, v.reason))
    hc.set_targets(targets_from_config(cfg))
    ...
    await hc.stop()
"""

from healthcheck.checks import DEFAULT_TICK, Checker, CheckResult, build_tunnel_probe
from healthcheck.config import (
    CHECK_KINDS,
    DEFAULT_TIMING,
    GUE_PORT,
    TCP_MODES,
    CheckSpec,
    Target,
    Timing,
    checks_from_glb,
    parse_check,
    parse_timing,
    targets_from_config,
)
from healthcheck.scheduler import (
    LATENCY_BUCKETS,
    CheckStats,
    HealthChecker,
    ProbeState,
    TargetStatus,
    Verdict,
)

__all__ = [
    "CHECK_KINDS",
    "DEFAULT_TICK",
    "DEFAULT_TIMING",
    "GUE_PORT",
    "LATENCY_BUCKETS",
    "TCP_MODES",
    "CheckResult",
    "CheckSpec",
    "CheckStats",
    "Checker",
    "HealthChecker",
    "ProbeState",
    "Target",
    "TargetStatus",
    "Timing",
    "Verdict",
    "build_tunnel_probe",
    "checks_from_glb",
    "parse_check",
    "parse_timing",
    "targets_from_config",
]
