"""Configuration loading and validation for fwd.

Two input formats are accepted, chosen by the file's content:

* fwd's own TOML (``[node]`` + ``[[tables]]``), and
* GitHub GLB Director's forwarding-table JSON, unchanged (a JSON object, so the
  file's first non-blank character is ``{``).

Both are turned into the same :class:`Config`. Every problem is reported as a
:class:`ConfigError` whose text is one line, ``FILE: KEY: REASON``, where KEY is
the path of the offending value (``tables[0].backends[3].ip``). Nothing here
touches the data plane; the documentation of every key is docs/config.md.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # healthcheck.config imports this module: import it lazily at run time
    from fwd.bgp import BgpSettings
    from healthcheck.config import CheckSpec, Timing

__all__ = [
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_METRICS_ADDRESS",
    "HASH_FIELDS",
    "MAX_BACKENDS",
    "MAX_BINDS",
    "MAX_TABLES",
    "MTU_MAX",
    "MTU_MIN",
    "PROTOS",
    "STATES",
    "Backend",
    "Bind",
    "Config",
    "ConfigError",
    "Daemon",
    "LOG_FORMATS",
    "Node",
    "bind_json",
    "describe_bind",
    "parse_metrics_address",
    "Table",
    "load_config",
    "parse_config",
]

log = logging.getLogger("fwd.config")

MAX_TABLES = 16
MAX_BACKENDS = 2048  # per table
MAX_BINDS = 1024  # over all tables
MTU_MIN = 68
MTU_MAX = 65535
STATES = ("active", "filling", "draining", "inactive")
PROTOS = ("tcp", "udp")
# Canonical order: the order in which the core hashes the fields.
HASH_FIELDS = ("src_addr", "dst_addr", "src_port", "dst_port")
DEFAULT_HASH_FIELDS = ("src_addr",)
# Keys of a GLB backend's "healthchecks" object (glb-healthcheck's GLBHealthcheckConfig).
GLB_HEALTHCHECK_KEYS = {"http": int, "http_uri": str, "gue": int, "fou": int}
# [daemon]
DEFAULT_CONTROL_SOCKET = "/run/fwd/fwd.sock"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9641"
LOG_FORMATS = ("text", "json")
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL
DRAIN_WAIT_MAX = 3600.0

# Python's TOML and JSON parsers recurse per nesting level (RecursionError past ~1,000 levels).
TOO_DEEP = "arrays or tables nested too deeply"

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class ConfigError(Exception):
    """A configuration problem: ``str(e) == f"{file}: {key}: {reason}"``, one line."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = _printable(file)
        self.key = _printable(key)  # a quoted TOML key may hold "\n"
        self.reason = " ".join(reason.split())  # never more than one line
        super().__init__(f"{self.file}: {self.key}: {self.reason}")


def _printable(text: str) -> str:
    """text with line breaks and other unprintable characters escaped (\\n, \\u2028...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True)
class Backend:
    """One backend (L7 node). Its index in ``Table.backends`` is its identity in the table.

    ``healthchecks`` is GLB's per-backend health check definition, kept as read-only data for
    the health checker. ``checks`` and ``timing`` are what the daemon's health checker runs for
    this backend (healthcheck.config CheckSpec / Timing, resolved at load time: the backend's own
    ``checks`` / ``healthcheck``, else its table's, else the ``[daemon]`` defaults; GLB's
    ``healthchecks`` in GLB JSON). None of the three takes part in equality or hashing.
    """

    address: IPAddress
    state: str = "active"
    healthy: bool = True
    healthchecks: Mapping[str, int | str] | None = field(default=None, compare=False, repr=False)
    checks: tuple[CheckSpec, ...] = field(default=(), compare=False, repr=False)
    timing: Timing | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Bind:
    """A VIP: destination prefix, protocol and inclusive destination port range."""

    prefix: IPNetwork
    proto: str
    port_lo: int
    port_hi: int
    hash_fields: tuple[str, ...] = DEFAULT_HASH_FIELDS


@dataclass
class Table:
    name: str
    hash_key: bytes
    seed: bytes
    glb_compat: bool
    binds: list[Bind]
    backends: list[Backend]


@dataclass
class Node:
    tunnel_source: IPv4Address | None = None
    tunnel_source6: IPv6Address | None = None
    mtu: int = 1500
    forward_icmp_echo: bool = False


@dataclass(frozen=True)
class Daemon:
    """The ``[daemon]`` section: settings of the long-running ``fwd run`` (docs/daemon.md)."""

    control_socket: str = DEFAULT_CONTROL_SOCKET
    metrics_address: str = DEFAULT_METRICS_ADDRESS  # "" = no metrics endpoint
    drain_wait: float = 0.0
    log_format: str = "text"
    healthcheck: Timing | None = None  # check timing defaults (None: healthcheck's DEFAULT_TIMING)


@dataclass
class Config:
    path: str
    format: str  # 'toml' | 'glb-json'
    node: Node
    tables: list[Table]
    daemon: Daemon = field(default_factory=Daemon)
    bgp: BgpSettings | None = None  # [bgp]: announce the VIPs through ExaBGP (fwd.bgp, docs/bgp.md)

    def all_binds(self) -> list[tuple[int, Bind]]:
        """Binds in global order (table 0's first) as (table index, bind)."""
        return [(ti, b) for ti, t in enumerate(self.tables) for b in t.binds]


# --------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path) -> Config:
    """Read and validate a config file (TOML or GLB JSON); raise ConfigError on any problem."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, "(file)", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(name, "(file)", "is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(name, "(file)", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(name, "(file)", f"not UTF-8 text (byte offset {e.start})") from None
    return parse_config(text, name)


def parse_config(text: str, path: str = "<string>") -> Config:
    """Validate config text; ``path`` is only used in error messages and ``Config.path``."""
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("{"):
        return _parse_glb_json(text, path)
    return _parse_toml(text, path)


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers keys given more than once (json keeps the last)."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    obj.duplicates = []
    for k, v in pairs:
        if k in obj and k not in obj.duplicates:
            obj.duplicates.append(k)
        obj[k] = v
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_toml(text: str, path: str) -> Config:
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(path, "(file)", f"invalid TOML: {TOO_DEEP}") from None
    except tomllib.TOMLDecodeError as e:
        try:
            other = json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigError(path, "(file)", f"invalid TOML: {e}") from None
        raise ConfigError(
            path,
            "(file)",
            f"neither TOML nor a GLB forwarding table: JSON {type(other).__name__} at the top level "
            '(a GLB forwarding table is a JSON object: {"tables": [...]})',
        ) from None
    return _Loader(path, "toml").config(data)


def _parse_glb_json(text: str, path: str) -> Config:
    try:
        data = json.loads(
            text.lstrip("\ufeff"),
            object_pairs_hook=_json_object,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as e:
        raise ConfigError(
            path,
            "(file)",
            f"invalid JSON (GLB forwarding table): {e.msg} (at line {e.lineno}, column {e.colno})",
        ) from None
    except RecursionError:
        raise ConfigError(path, "(file)", f"invalid JSON (GLB forwarding table): {TOO_DEEP}") from None
    except ValueError as e:
        raise ConfigError(path, "(file)", f"invalid JSON (GLB forwarding table): {e}") from None
    return _Loader(path, "glb-json").config(data)


# --------------------------------------------------------------------------------------------
# validation


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Loader:
    """Walks the parsed document, checking every value and building the dataclasses."""

    def __init__(self, file: str, fmt: str) -> None:
        self.file = file
        self.fmt = fmt
        self.json = fmt == "glb-json"
        self.timing_default: Timing | None = None

    # -- helpers -----------------------------------------------------------------------------

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, key or "(top level)", reason)

    def kind(self, value: object) -> str:
        """The document's own name for a value's type."""
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"boolean {'true' if value else 'false'}"
        if isinstance(value, int):
            return f"{'number' if self.json else 'integer'} {value}"
        if isinstance(value, float):
            return f"{'number' if self.json else 'float'} {value!r}"
        if isinstance(value, str):
            return f"string {json.dumps(value)}" if len(value) <= 60 else "a string"
        if isinstance(value, list):
            return "an array"
        if isinstance(value, dict):
            return "an object" if self.json else "a table"
        if isinstance(value, (datetime, date, time)):
            return "a date/time"
        return type(value).__name__

    @property
    def obj_word(self) -> str:
        return "an object" if self.json else "a table"

    def mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected {self.obj_word}, got {self.kind(value)}")
        return value

    def keys(
        self, obj: dict[str, Any], path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> None:
        dups = getattr(obj, "duplicates", None)
        if dups:
            self.fail(_join(path, dups[0]), "key given more than once")
        for k in obj:
            if k not in allowed:
                self.fail(_join(path, k), f"unknown key (allowed here: {', '.join(allowed)})")
        for k in required:
            if k not in obj:
                self.fail(_join(path, k), "missing required key")

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {self.kind(value)}")
        return value

    def integer(self, value: object, path: str, lo: int, hi: int, what: str = "value") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"expected an integer, got {self.kind(value)}")
        if not lo <= value <= hi:
            self.fail(path, f"{what} {value} out of range {lo}..{hi}")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"expected a boolean (true or false), got {self.kind(value)}")
        return value

    def array(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, f"expected an array, got {self.kind(value)}")
        return value

    def choice(self, value: object, path: str, choices: Sequence[str], what: str) -> str:
        s = self.string(value, path)
        if s not in choices:
            self.fail(path, f"bad {what} {json.dumps(s)} (expected one of: {', '.join(choices)})")
        return s

    def address(self, value: object, path: str) -> IPAddress:
        s = self.string(value, path)
        try:
            addr = ipaddress.ip_address(s)
        except ValueError:
            self.fail(path, f"{json.dumps(s)} is not an IPv4 or IPv6 address")
        if isinstance(addr, IPv6Address) and addr.scope_id is not None:
            self.fail(path, f"{json.dumps(s)}: a scoped (%zone) address cannot be used here")
        return addr

    def hexkey(self, value: object, path: str) -> bytes:
        s = self.string(value, path)
        if len(s) != 32:
            self.fail(path, f"must be exactly 32 hex digits (16 bytes), got {len(s)} characters")
        try:
            return bytes.fromhex(s)
        except ValueError:
            self.fail(path, "must be exactly 32 hex digits (16 bytes): contains a non-hex character")

    # -- document ----------------------------------------------------------------------------

    def config(self, data: object) -> Config:
        top = self.mapping(data, "")
        if self.json:
            self.keys(top, "", ("tables",), ("tables",))
            node = Node()
            daemon = Daemon()
        else:
            self.keys(top, "", ("node", "daemon", "bgp", "tables"), ("tables",))
            node = self.node(top.get("node", {}), "node")
            daemon = self.daemon(top.get("daemon", {}), "daemon")
        self.timing_default = daemon.healthcheck
        raw_tables = self.array(top["tables"], "tables")
        if not raw_tables:
            self.fail("tables", "at least one table is required")
        if len(raw_tables) > MAX_TABLES:
            self.fail("tables", f"{len(raw_tables)} tables, at most {MAX_TABLES} are supported")
        tables: list[Table] = []
        names: dict[str, int] = {}
        for i, raw in enumerate(raw_tables):
            path = f"tables[{i}]"
            table = self.table(raw, path, i)
            if table.name in names:
                key = _join(path, "name") if not self.json or "name" in raw else path
                other = names[table.name]
                self.fail(key, f"duplicate table name {json.dumps(table.name)} (also tables[{other}])")
            names[table.name] = i
            tables.append(table)
        self.check_binds(tables)
        self.warn_missing_health(raw_tables, tables)
        bgp = None
        if not self.json and "bgp" in top:
            from fwd.bgp import parse_bgp  # [bgp] is checked by the BGP module (docs/bgp.md)

            bgp = parse_bgp(self, top["bgp"], "bgp", tables)
        return Config(path=self.file, format=self.fmt, node=node, tables=tables, daemon=daemon, bgp=bgp)

    def node(self, value: object, path: str) -> Node:
        obj = self.mapping(value, path)
        self.keys(obj, path, ("tunnel_source", "tunnel_source6", "mtu", "forward_icmp_echo"))
        node = Node()
        if "tunnel_source" in obj:
            p = _join(path, "tunnel_source")
            addr = self.address(obj["tunnel_source"], p)
            if not isinstance(addr, IPv4Address):
                self.fail(p, f"{addr} is not an IPv4 address (put IPv6 in tunnel_source6)")
            node.tunnel_source = addr
        if "tunnel_source6" in obj:
            p = _join(path, "tunnel_source6")
            addr = self.address(obj["tunnel_source6"], p)
            if not isinstance(addr, IPv6Address):
                self.fail(p, f"{addr} is not an IPv6 address (put IPv4 in tunnel_source)")
            node.tunnel_source6 = addr
        for p, a in (
            (_join(path, "tunnel_source"), node.tunnel_source),
            (_join(path, "tunnel_source6"), node.tunnel_source6),
        ):
            if a is not None and (a.is_unspecified or a.is_multicast):
                self.fail(p, f"{a} is not a unicast address")
        if "mtu" in obj:
            node.mtu = self.integer(obj["mtu"], _join(path, "mtu"), MTU_MIN, MTU_MAX, "MTU")
        if "forward_icmp_echo" in obj:
            node.forward_icmp_echo = self.boolean(obj["forward_icmp_echo"], _join(path, "forward_icmp_echo"))
        return node

    def table(self, value: object, path: str, index: int) -> Table:
        obj = self.mapping(value, path)
        if self.json:
            allowed: tuple[str, ...] = ("name", "hash_key", "seed", "binds", "backends")
            required: tuple[str, ...] = ("hash_key", "seed", "binds", "backends")
        else:
            allowed = (
                "name",
                "hash_key",
                "seed",
                "glb_compat",
                "hash_fields",
                "healthcheck",
                "checks",
                "binds",
                "backends",
            )
            required = ("name", "hash_key", "seed", "binds", "backends")
        self.keys(obj, path, allowed, required)
        if "name" in obj:
            p = _join(path, "name")
            name = self.string(obj["name"], p)
            if not name.strip():
                self.fail(p, "must not be empty")
            if not name.isprintable():
                self.fail(p, "must not contain control characters")
        else:
            name = f"table{index}"
        hash_key = self.hexkey(obj["hash_key"], _join(path, "hash_key"))
        seed = self.hexkey(obj["seed"], _join(path, "seed"))
        glb_compat = True
        if not self.json:
            glb_compat = self.boolean(obj.get("glb_compat", False), _join(path, "glb_compat"))
        default_fields = DEFAULT_HASH_FIELDS
        if "hash_fields" in obj:
            default_fields = self.hash_fields(obj["hash_fields"], _join(path, "hash_fields"))

        p = _join(path, "binds")
        raw_binds = self.array(obj["binds"], p)
        if not raw_binds:
            self.fail(p, "at least one bind is required")
        binds = [self.bind(b, f"{p}[{i}]", default_fields) for i, b in enumerate(raw_binds)]

        table_timing = self.timing_default
        if "healthcheck" in obj:
            table_timing = self.timing(obj["healthcheck"], _join(path, "healthcheck"), table_timing)
        table_checks: tuple[CheckSpec, ...] | None = None
        if "checks" in obj:
            table_checks = self.checks(obj["checks"], _join(path, "checks"))

        p = _join(path, "backends")
        raw_backends = self.array(obj["backends"], p)
        if not raw_backends:
            self.fail(p, "at least one backend is required")
        if len(raw_backends) > MAX_BACKENDS:
            self.fail(p, f"{len(raw_backends)} backends, at most {MAX_BACKENDS} per table are supported")
        backends: list[Backend] = []
        seen: dict[IPAddress, int] = {}
        for i, b in enumerate(raw_backends):
            bp = f"{p}[{i}]"
            backend = self.backend(b, bp, table_timing, table_checks)
            if backend.address in seen:
                other = seen[backend.address]
                self.fail(_join(bp, "ip"), f"duplicate backend address {backend.address} (also {p}[{other}])")
            seen[backend.address] = i
            backends.append(backend)
        return Table(
            name=name, hash_key=hash_key, seed=seed, glb_compat=glb_compat, binds=binds, backends=backends
        )

    def hash_fields(self, value: object, path: str) -> tuple[str, ...]:
        items = self.array(value, path)
        if not items:
            self.fail(path, f"must list at least one of: {', '.join(HASH_FIELDS)}")
        got: list[str] = []
        for i, item in enumerate(items):
            f = self.choice(item, f"{path}[{i}]", HASH_FIELDS, "hash field")
            if f in got:
                self.fail(f"{path}[{i}]", f"hash field {json.dumps(f)} listed twice")
            got.append(f)
        return tuple(f for f in HASH_FIELDS if f in got)

    def bind(self, value: object, path: str, default_fields: tuple[str, ...]) -> Bind:
        obj = self.mapping(value, path)
        allowed: tuple[str, ...] = ("ip", "proto", "port", "port_start", "port_end")
        if not self.json:
            allowed += ("hash_fields",)
        self.keys(obj, path, allowed, ("ip", "proto"))
        prefix = self.prefix(obj["ip"], _join(path, "ip"))
        proto = self.choice(obj["proto"], _join(path, "proto"), PROTOS, "protocol")
        if "port" in obj:
            for k in ("port_start", "port_end"):
                if k in obj:
                    self.fail(_join(path, k), "give either port or port_start + port_end, not both")
            lo = hi = self.integer(obj["port"], _join(path, "port"), 0, 65535, "port")
        elif "port_start" in obj or "port_end" in obj:
            for k in ("port_start", "port_end"):
                if k not in obj:
                    self.fail(_join(path, k), "missing required key (port_start and port_end go together)")
            lo = self.integer(obj["port_start"], _join(path, "port_start"), 0, 65535, "port")
            hi = self.integer(obj["port_end"], _join(path, "port_end"), 0, 65535, "port")
            if hi < lo:
                self.fail(_join(path, "port_end"), f"port range reversed: port_end {hi} < port_start {lo}")
        else:
            self.fail(_join(path, "port"), "missing required key (give port, or port_start + port_end)")
        fields = default_fields
        if "hash_fields" in obj:
            fields = self.hash_fields(obj["hash_fields"], _join(path, "hash_fields"))
        return Bind(prefix=prefix, proto=proto, port_lo=lo, port_hi=hi, hash_fields=fields)

    def prefix(self, value: object, path: str) -> IPNetwork:
        s = self.string(value, path)
        addr_s, slash, len_s = s.partition("/")
        try:
            addr = ipaddress.ip_address(addr_s)
        except ValueError:
            self.fail(path, f"{json.dumps(s)} is not an IPv4/IPv6 address or CIDR prefix")
        if isinstance(addr, IPv6Address) and addr.scope_id is not None:
            self.fail(path, f"{json.dumps(s)}: a scoped (%zone) address cannot be used here")
        if not slash:
            return ipaddress.ip_network(addr)
        if not len_s.isascii() or not len_s.isdigit() or len(len_s) > 3:
            self.fail(path, f"{json.dumps(s)}: prefix length must be a number 0..{addr.max_prefixlen}")
        plen = int(len_s)
        if plen > addr.max_prefixlen:
            self.fail(path, f"{json.dumps(s)}: prefix length {plen} out of range 0..{addr.max_prefixlen}")
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
        if net.network_address != addr:
            self.fail(path, f"{json.dumps(s)} has host bits set (did you mean {net}?)")
        return net

    def backend(
        self, value: object, path: str, timing: Timing | None, table_checks: tuple[CheckSpec, ...] | None
    ) -> Backend:
        obj = self.mapping(value, path)
        if self.json:
            self.keys(obj, path, ("ip", "state", "healthy", "healthchecks"), ("ip", "state"))
        else:
            self.keys(obj, path, ("ip", "state", "healthy", "healthcheck", "checks"), ("ip",))
        p = _join(path, "ip")
        addr = self.address(obj["ip"], p)
        if addr.is_unspecified or addr.is_multicast:
            self.fail(p, f"{addr} is not a unicast address")
        state = self.choice(obj.get("state", "active"), _join(path, "state"), STATES, "state")
        # GLB's build-config reads a missing "healthy" as false; fwd's TOML defaults to true.
        healthy = self.boolean(obj.get("healthy", not self.json), _join(path, "healthy"))
        glb_checks = None
        specs: tuple[CheckSpec, ...] = table_checks or ()
        if self.json and obj.get("healthchecks") is not None:
            glb_checks = self.healthchecks(obj["healthchecks"], _join(path, "healthchecks"))
            from healthcheck.config import checks_from_glb

            specs = checks_from_glb(glb_checks)
        if "checks" in obj:
            specs = self.checks(obj["checks"], _join(path, "checks"))
        if "healthcheck" in obj:
            timing = self.timing(obj["healthcheck"], _join(path, "healthcheck"), timing)
        return Backend(
            address=addr, state=state, healthy=healthy, healthchecks=glb_checks, checks=specs, timing=timing
        )

    def healthchecks(self, value: object, path: str) -> Mapping[str, int | str]:
        obj = self.mapping(value, path)
        self.keys(obj, path, tuple(GLB_HEALTHCHECK_KEYS))
        out: dict[str, int | str] = {}
        for k, v in obj.items():
            p = _join(path, k)
            if GLB_HEALTHCHECK_KEYS[k] is int:
                out[k] = self.integer(v, p, 1, 65535, "port")
            else:
                out[k] = self.string(v, p)
        return MappingProxyType(out)

    def number(self, value: object, path: str, lo: float, hi: float, what: str = "value") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"expected a number, got {self.kind(value)}")
        if not lo <= value <= hi:
            self.fail(path, f"{what} {value} out of range {lo:g}..{hi:g}")
        return float(value)

    def daemon(self, value: object, path: str) -> Daemon:
        obj = self.mapping(value, path)
        self.keys(obj, path, ("control_socket", "metrics_address", "drain_wait", "log_format", "healthcheck"))
        kw: dict[str, Any] = {}
        if "control_socket" in obj:
            p = _join(path, "control_socket")
            sock = self.string(obj["control_socket"], p)
            if not sock.startswith("/"):
                self.fail(p, f"{json.dumps(sock)} is not an absolute path")
            if len(sock.encode()) > SUN_PATH_MAX:
                self.fail(p, f"path longer than {SUN_PATH_MAX} bytes (a Unix socket address cannot hold it)")
            if "\0" in sock or not sock.isprintable():
                self.fail(p, "must not contain control characters")
            kw["control_socket"] = sock
        if "metrics_address" in obj:
            p = _join(path, "metrics_address")
            text = self.string(obj["metrics_address"], p)
            if text:
                try:
                    parse_metrics_address(text)
                except ValueError as e:
                    self.fail(p, str(e))
            kw["metrics_address"] = text
        if "drain_wait" in obj:
            kw["drain_wait"] = self.number(
                obj["drain_wait"], _join(path, "drain_wait"), 0, DRAIN_WAIT_MAX, "seconds"
            )
        if "log_format" in obj:
            kw["log_format"] = self.choice(
                obj["log_format"], _join(path, "log_format"), LOG_FORMATS, "log format"
            )
        if "healthcheck" in obj:
            kw["healthcheck"] = self.timing(obj["healthcheck"], _join(path, "healthcheck"), None)
        return Daemon(**kw)

    def timing(self, value: object, path: str, base: Timing | None) -> Timing:
        """A healthcheck timing table (interval, timeout, rise, fall, jitter) over ``base``."""
        from healthcheck.config import DEFAULT_TIMING, parse_timing

        self.mapping(value, path)
        t = parse_timing(value, self.file, path, base if base is not None else DEFAULT_TIMING)
        if t.timeout > t.interval:
            self.fail(
                _join(path, "timeout"),
                f"timeout {t.timeout:g}s exceeds interval {t.interval:g}s (a check must end before "
                "the next one starts)",
            )
        return t

    def checks(self, value: object, path: str) -> tuple[CheckSpec, ...]:
        """An array of checks ({type = "http", port = 80, uri = "/"}, ...); [] = not checked."""
        from healthcheck.config import parse_check

        items = self.array(value, path)
        out: list[CheckSpec] = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            self.mapping(item, p)
            spec = parse_check(item, self.file, p)
            if spec in out:
                self.fail(p, f"the same check as {path}[{out.index(spec)}]")
            out.append(spec)
        return tuple(out)

    # -- whole-config checks ---------------------------------------------------------------

    def check_binds(self, tables: list[Table]) -> None:
        total = sum(len(t.binds) for t in tables)
        if total > MAX_BINDS:
            self.fail("tables", f"{total} binds in all tables, at most {MAX_BINDS} are supported")
        # (path, proto, version, first, last, port_lo, port_hi) in config order
        seen: dict[tuple[str, int], list[tuple[str, Bind, int, int]]] = {}
        for ti, t in enumerate(tables):
            for bi, b in enumerate(t.binds):
                path = f"tables[{ti}].binds[{bi}]"
                first = int(b.prefix.network_address)
                last = int(b.prefix.broadcast_address)
                group = seen.setdefault((b.proto, b.prefix.version), [])
                for opath, ob, ofirst, olast in group:
                    ports_meet = b.port_lo <= ob.port_hi and ob.port_lo <= b.port_hi
                    if ports_meet and first <= olast and ofirst <= last:
                        self.fail(
                            path,
                            f"ambiguous: {describe_bind(b)} overlaps {opath} ({describe_bind(ob)}); "
                            "a packet could match both",
                        )
                group.append((path, b, first, last))

    def warn_missing_health(self, raw_tables: list[Any], tables: list[Table]) -> None:
        if not self.json:
            return
        for ti, (raw, t) in enumerate(zip(raw_tables, tables, strict=True)):
            raw_backends = raw["backends"]
            missing = [str(t.backends[i].address) for i, b in enumerate(raw_backends) if "healthy" not in b]
            if missing:
                log.warning(
                    '%s: tables[%d] (%s): no "healthy" key for backend%s %s: treated as unhealthy '
                    "(false), as GLB's build-config does",
                    self.file,
                    ti,
                    t.name,
                    "" if len(missing) == 1 else "s",
                    ", ".join(missing),
                )


def parse_metrics_address(text: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """'127.0.0.1:9641' / '[::1]:9641' -> (host, port); ValueError with the reason. Port 0 (any
    free port) only with allow_port_zero (tests)."""
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{json.dumps(text)}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"{json.dumps(text)}: missing :PORT (e.g. 127.0.0.1:9641)")
        if ":" in host:
            raise ValueError(f"{json.dumps(text)}: write an IPv6 address as [ADDRESS]:PORT")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{json.dumps(text)}: {json.dumps(host)} is not an IP address") from None
    lowest = 0 if allow_port_zero else 1
    if not (port_s.isascii() and port_s.isdigit()) or not lowest <= int(port_s) <= 65535:
        raise ValueError(f"{json.dumps(text)}: bad port {json.dumps(port_s)} (want 1..65535)")
    return str(addr), int(port_s)


def bind_json(cfg: Config, index: int) -> dict[str, object]:
    """Bind number `index` (global, in config order) as plain JSON values, for CLI and API output."""
    ti, b = cfg.all_binds()[index]
    return {
        "index": index,
        "table": cfg.tables[ti].name,
        "prefix": str(b.prefix),
        "proto": b.proto,
        "port_lo": b.port_lo,
        "port_hi": b.port_hi,
        "hash_fields": list(b.hash_fields),
    }


def describe_bind(b: Bind) -> str:
    """Human form of a bind, e.g. ``tcp 192.0.2.1/32 port 80``."""
    ports = f"port {b.port_lo}" if b.port_lo == b.port_hi else f"ports {b.port_lo}-{b.port_hi}"
    return f"{b.proto} {b.prefix} {ports}"
