"""What to check and how often: small typed specs, independent of fwd's data plane.

* :class:`CheckSpec` — one check (``tcp``, ``http``, ``https``, ``gue`` or GLB's legacy ``fou``)
  of a backend address: port, HTTP request line and Host, expected status, TLS verification,
  source address.
* :class:`Timing` — interval, timeout, rise, fall and jitter (per backend or per table).
* :class:`Target` — one backend to judge: the caller's key, its address, its checks and timing.

Inputs come from fwd's configuration (``fwd.config`` dataclasses; nothing else of fwd is
imported): :func:`checks_from_glb` reads a GLB backend's ``"healthchecks"`` object exactly as
glb-healthcheck does, :func:`parse_check` / :func:`parse_timing` read a generic mapping (for a
TOML section) and report problems as ``fwd.config.ConfigError`` (``FILE: KEY: REASON``), and
:func:`targets_from_config` turns a whole ``Config`` into targets (inactive backends are left out:
they are never checked).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from fwd.config import Backend, Config, ConfigError, Table

__all__ = [
    "CHECK_KINDS",
    "DEFAULT_TIMING",
    "GUE_PORT",
    "TCP_MODES",
    "CheckSpec",
    "Target",
    "Timing",
    "checks_from_glb",
    "parse_check",
    "parse_timing",
    "targets_from_config",
]

IPAddress = IPv4Address | IPv6Address

GUE_PORT = 19523
CHECK_KINDS = ("tcp", "http", "https", "gue", "fou")
# how a tcp check probes: a SYN from a raw socket (healthcheck/halfopen.py), or a full connect
TCP_MODES = ("half-open", "connect")
_DEFAULT_PORTS = {"http": 80, "https": 443, "gue": GUE_PORT}


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check of one backend. Hashable: identical specs of one address are run once.

    kind        ``tcp`` (SYN / SYN-ACK, or a connect), ``http`` / ``https`` (GET), ``gue`` (tunnel probe, see
                healthcheck/checks.py), ``fou`` (GLB's legacy GRE-in-UDP tunnel probe).
    port        TCP port, or the UDP port of the tunnel (19523).
    uri         request target of the GET (``/`` by default, as GLB).
    host        Host header (and TLS server name); default: the backend's address.
    status      expected HTTP status (GLB: 200).
    tls_verify  https: verify the certificate chain and name (``False``: accept any).
    source      local address to send from; for tunnel probes the outer *and* inner source,
                i.e. the address the backend answers to (normally the node's tunnel source).
    reuse_connection  http/https: keep one HTTP/1.1 connection (https: and its TLS session)
                open and send each check's GET on it (a new connection after any error,
                timeout or ``Connection: close``, and at least every 30 s); ``False``: a new
                connection per check.
    mode        tcp only: ``half-open`` (the default: a SYN, passed by a SYN-ACK, no connection
                is made; needs CAP_NET_RAW, else it runs as ``connect``) or ``connect``.
                Set to ``half-open`` for tcp when left out, None for other kinds.
    """

    kind: str
    port: int
    uri: str = "/"
    host: str | None = None
    status: int = 200
    tls_verify: bool = True
    source: IPAddress | None = None
    reuse_connection: bool = True
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise ValueError(f"bad check kind {self.kind!r} (expected one of: {', '.join(CHECK_KINDS)})")
        if self.kind == "tcp":
            if self.mode is None:
                object.__setattr__(self, "mode", TCP_MODES[0])  # equal to a spec that names it
            elif self.mode not in TCP_MODES:
                raise ValueError(f"bad tcp mode {self.mode!r} (expected one of: {', '.join(TCP_MODES)})")
        elif self.mode is not None:
            raise ValueError(f"only tcp checks take a mode, not {self.kind}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range 1..65535")
        if not 100 <= self.status <= 599:
            raise ValueError(f"HTTP status {self.status} out of range 100..599")
        if not self.uri.startswith("/") or any(c.isspace() for c in self.uri):
            raise ValueError(f"uri {self.uri!r} must start with '/' and contain no white space")
        if self.host is not None and (not self.host or any(c.isspace() or c in "/@" for c in self.host)):
            raise ValueError(f"bad Host {self.host!r}")

    @property
    def is_tunnel(self) -> bool:
        return self.kind in ("gue", "fou")

    def describe(self, address: IPAddress | None = None) -> str:
        """Short text naming the check, for logs and metric labels: ``http://10.0.0.1:80/ping``."""
        a = "" if address is None else (f"[{address}]" if address.version == 6 else str(address))
        if self.kind in ("http", "https"):
            text = f"{self.kind}://{a}:{self.port}{self.uri}"
            if self.host:
                text += f" Host {self.host}"
            if self.status != 200:
                text += f" expect {self.status}"
            return text
        if self.is_tunnel:
            return f"{self.kind} {a or '-'} udp/{self.port}"
        text = f"tcp {a}:{self.port}" if a else f"tcp :{self.port}"
        return text + " connect" if self.mode == "connect" else text


@dataclass(frozen=True, slots=True)
class Timing:
    """How often a check runs and how its results become a verdict (defaults: GLB's).

    interval  seconds from the start of one check to the start of the next;
    timeout   seconds a check may take before it counts as failed (GLB: 1 s);
    rise      consecutive successes that make a failed check pass again;
    fall      consecutive failures that make a passing check fail;
    jitter    each wait is ``interval * (1 ± jitter)`` (uniform), and the first check starts
              within ``interval * jitter``, so many checks do not fire together.
    The first result of a check counts at once (no rise/fall for it).
    """

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 3
    fall: int = 3
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        for name in ("rise", "fall"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.jitter, int | float) and 0 <= self.jitter < 1):
            raise ValueError(f"jitter must be a fraction 0 <= jitter < 1, got {self.jitter!r}")


DEFAULT_TIMING = Timing()


@dataclass(frozen=True, slots=True)
class Target:
    """One backend to judge. ``key`` is the caller's identity for it (fwd: (table name, address));
    the backend is healthy when every check passes, and healthy at once when it has none."""

    key: Hashable
    address: IPAddress
    checks: tuple[CheckSpec, ...] = ()
    timing: Timing = field(default=DEFAULT_TIMING)


# --------------------------------------------------------------------------------------------
# GLB's per-backend "healthchecks" object


def checks_from_glb(healthchecks: Mapping[str, int | str] | None) -> tuple[CheckSpec, ...]:
    """The checks glb-healthcheck runs for a backend: ``http`` (GET ``http_uri``, default ``/``,
    expects 200), ``gue`` and ``fou`` tunnel probes on the given UDP port. None: no checks."""
    if not healthchecks:
        return ()
    out: list[CheckSpec] = []
    if "http" in healthchecks:
        uri = healthchecks.get("http_uri", "/")
        out.append(CheckSpec("http", int(healthchecks["http"]), uri=str(uri)))
    for kind in ("gue", "fou"):
        if kind in healthchecks:
            out.append(CheckSpec(kind, int(healthchecks[kind])))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# generic mappings (a TOML section), errors as fwd.config.ConfigError

_CHECK_KEYS = ("type", "port", "uri", "host", "status", "tls_verify", "source", "reuse_connection", "mode")
_TIMING_KEYS = ("interval", "timeout", "rise", "fall", "jitter")


def _kind(v: object) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"float {v}"
    if isinstance(v, str):
        return f"string {v!r}"
    return type(v).__name__


def _keys(obj: object, file: str, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConfigError(file, key, f"expected a table, got {_kind(obj)}")
    for k in obj:
        if k not in allowed:
            raise ConfigError(file, f"{key}.{k}", f"unknown key (allowed here: {', '.join(allowed)})")
    return obj


def parse_check(obj: object, file: str, key: str) -> CheckSpec:
    """A check from a mapping: ``{type = "http", port = 8080, uri = "/ping", host = "x",
    status = 204, tls_verify = false, source = "192.0.2.1", reuse_connection = false}``,
    ``{type = "tcp", port = 22, mode = "connect"}``; only ``type`` is required (ports default to
    80 / 443 / 19523; a tcp check needs its port). Problems raise
    ConfigError(file, "KEY.sub", reason)."""
    m = _keys(obj, file, key, _CHECK_KEYS)
    if "type" not in m:
        raise ConfigError(file, f"{key}.type", "missing required key")
    kind = m["type"]
    if not isinstance(kind, str) or kind not in CHECK_KINDS:
        raise ConfigError(
            file, f"{key}.type", f"bad check type {_kind(kind)} (expected one of: {', '.join(CHECK_KINDS)})"
        )
    kw: dict[str, Any] = {}
    if "port" in m:
        p = m["port"]
        if not isinstance(p, int) or isinstance(p, bool):
            raise ConfigError(file, f"{key}.port", f"expected an integer, got {_kind(p)}")
        if not 1 <= p <= 65535:
            raise ConfigError(file, f"{key}.port", f"port {p} out of range 1..65535")
        kw["port"] = p
    elif kind == "tcp":
        raise ConfigError(file, f"{key}.port", "missing required key (a tcp check needs a port)")
    else:
        kw["port"] = _DEFAULT_PORTS.get(kind, GUE_PORT)
    for name, typ, word in (("uri", str, "a string"), ("host", str, "a string")):
        if name in m:
            if not isinstance(m[name], typ):
                raise ConfigError(file, f"{key}.{name}", f"expected {word}, got {_kind(m[name])}")
            kw[name] = m[name]
    if "status" in m:
        s = m["status"]
        if not isinstance(s, int) or isinstance(s, bool):
            raise ConfigError(file, f"{key}.status", f"expected an integer, got {_kind(s)}")
        kw["status"] = s
    for name in ("tls_verify", "reuse_connection"):
        if name in m:
            if not isinstance(m[name], bool):
                raise ConfigError(file, f"{key}.{name}", f"expected a boolean, got {_kind(m[name])}")
            kw[name] = m[name]
    if "source" in m:
        try:
            kw["source"] = ipaddress.ip_address(m["source"])
        except ValueError:
            raise ConfigError(
                file, f"{key}.source", f"{m['source']!r} is not an IPv4 or IPv6 address"
            ) from None
    if kind not in ("http", "https"):
        for name in ("uri", "host", "status", "tls_verify", "reuse_connection"):
            if name in m:
                raise ConfigError(file, f"{key}.{name}", f"only http and https checks take {name}")
    if "mode" in m:
        mode = m["mode"]
        if kind != "tcp":
            raise ConfigError(file, f"{key}.mode", "only tcp checks take mode")
        if not isinstance(mode, str) or mode not in TCP_MODES:
            raise ConfigError(
                file, f"{key}.mode", f"bad tcp mode {_kind(mode)} (expected one of: {', '.join(TCP_MODES)})"
            )
        kw["mode"] = mode
    try:
        return CheckSpec(kind, **kw)
    except ValueError as e:
        bad = next((n for n in ("uri", "host", "status") if n in str(e).lower()), "type")
        raise ConfigError(file, f"{key}.{bad}", str(e)) from None


def parse_timing(obj: object, file: str, key: str, base: Timing = DEFAULT_TIMING) -> Timing:
    """Timing from a mapping (``{interval = 1.0, timeout = 0.5, rise = 2, fall = 3, jitter = 0.1}``);
    keys left out keep ``base``'s values (so a table can override the node's defaults)."""
    m = _keys(obj, file, key, _TIMING_KEYS)
    kw: dict[str, Any] = {}
    for name in _TIMING_KEYS:
        if name not in m:
            continue
        v = m[name]
        if name in ("rise", "fall"):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(file, f"{key}.{name}", f"expected an integer, got {_kind(v)}")
        elif not isinstance(v, int | float) or isinstance(v, bool):
            raise ConfigError(file, f"{key}.{name}", f"expected a number, got {_kind(v)}")
        kw[name] = v
    try:
        return replace(base, **kw)
    except ValueError as e:
        bad = next((n for n in _TIMING_KEYS if str(e).startswith(n)), "(timing)")
        raise ConfigError(file, f"{key}.{bad}", str(e)) from None


# --------------------------------------------------------------------------------------------
# a whole fwd config


def targets_from_config(
    cfg: Config,
    *,
    timing: Timing | Callable[[Table, Backend], Timing] = DEFAULT_TIMING,
    checks: Callable[[Table, Backend], Iterable[CheckSpec]] | None = None,
    tunnel_source: IPv4Address | None = None,
    tunnel_source6: IPv6Address | None = None,
) -> list[Target]:
    """One :class:`Target` per non-inactive backend of every table, keyed ``(table name, address)``.

    ``checks(table, backend)`` gives a backend's checks; by default its GLB ``healthchecks``
    (:func:`checks_from_glb`; none → no checks → healthy). ``timing`` is one Timing for all, or a
    function of (table, backend). Tunnel probes without a source get the node's tunnel source of
    the backend's family (the arguments, else ``cfg.node``): the backend answers that address,
    and fwd-redirect only accepts GUE from its allowed L4 prefixes.
    """
    src4 = tunnel_source or cfg.node.tunnel_source
    src6 = tunnel_source6 or cfg.node.tunnel_source6
    out: list[Target] = []
    for table in cfg.tables:
        for b in table.backends:
            if b.state == "inactive":
                continue
            specs = tuple(checks(table, b) if checks else checks_from_glb(b.healthchecks))
            src = src4 if b.address.version == 4 else src6
            if src is not None:
                specs = tuple(
                    replace(s, source=src) if s.is_tunnel and s.source is None else s for s in specs
                )
            t = timing(table, b) if callable(timing) else timing
            out.append(Target(key=(table.name, b.address), address=b.address, checks=specs, timing=t))
    return out
