"""BGP announcement of the VIPs through ExaBGP (ARCHITECTURE §7; docs/bgp.md).

fwd has no BGP code of its own: the real ExaBGP runs as a **child process** of the daemon and is
driven through its text API. This module owns

* the ``[bgp]`` settings (:class:`BgpSettings`, parsed by :func:`parse_bgp` for fwd.config);
* the **decision** — which VIP prefixes should be announced right now (:func:`decide`, pure);
* the **rendering** of ExaBGP's configuration and API commands (:func:`render_exabgp_config`,
  :func:`announce_command`, :func:`withdraw_command`, pure);
* the **speaker** (:class:`BgpSpeaker`): starts ExaBGP, restarts it with backoff when it dies,
  reads its JSON messages (peer up/down, the updates it sent to each peer, command acks), sends
  the commands that bring ExaBGP's routes to the decision, and waits, when asked, until the peers
  have been sent a withdraw.

How the pieces talk: ExaBGP runs ``fwd/bgp_relay.py`` as its API process; the relay connects to a
Unix socket of the speaker in a private (0700) runtime directory and copies lines both ways.

The decision, per VIP prefix (the ``ip`` of a bind, a /32 or /128 or a whole prefix; binds that
share a prefix are one route): **announce** while the data plane runs, the daemon is not stopping,
the node is not drained (``fwd node drain``) and at least one table binding the prefix has a
*serving* backend — ranked (state not inactive), healthy, and, when health checks decide its health,
checked at least once (no announcement on a guess before the first check result). Otherwise
**withdraw**. On SIGTERM the daemon calls :meth:`BgpSpeaker.withdraw_for_stop` (a withdraw hook)
before its drain wait and before the data plane stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from fwd.tasks import cancel_all

__all__ = [
    "BgpError",
    "BgpPeer",
    "BgpSettings",
    "BgpSpeaker",
    "Decision",
    "Inputs",
    "TableHealth",
    "Vip",
    "announce_command",
    "daemon_inputs",
    "decide",
    "find_exabgp",
    "parse_bgp",
    "render_exabgp_config",
    "vips_of",
    "withdraw_command",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ASN_MAX = 4294967295
DEFAULT_HOLD_TIME = 30
DEFAULT_WITHDRAW_TIMEOUT = 5.0
DEFAULT_RESTART_DELAY = 1.0
DEFAULT_RESTART_MAX = 30.0
WELL_KNOWN_COMMUNITIES = ("no-export", "no-advertise", "no-export-subconfed", "nopeer")
PASSWORD_OK = re.compile(r"[!#-:<-z|~]{1,80}")  # printable ASCII without space " ; { }
PROCESS_NAME = "fwd"
RELAY = Path(__file__).with_name("bgp_relay.py")
STABLE_RUN = 60.0  # an ExaBGP that ran this long restarts after the first delay again
PR_SET_PDEATHSIG = 1


class BgpError(RuntimeError):
    """BGP cannot start (e.g. ExaBGP is not installed); the text is one line."""


# ----------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class BgpPeer:
    """One BGP neighbour (a router) of this node."""

    address: IPAddress
    peer_as: int
    local_address: IPAddress | None = None  # None: the [bgp] local_address, else ExaBGP's "auto"
    password: str | None = field(default=None, repr=False)  # TCP MD5 (RFC 2385)
    hold_time: int | None = None  # None: the [bgp] hold_time
    port: int = 179


@dataclass(frozen=True)
class BgpSettings:
    """The ``[bgp]`` section (docs/config.md, docs/bgp.md)."""

    local_as: int
    router_id: IPv4Address
    peers: tuple[BgpPeer, ...]
    local_address: IPAddress | None = None
    next_hop: str = "self"  # "self" or an IPv4 address: next hop of IPv4 VIPs
    next_hop6: str = "self"  # "self" or an IPv6 address: next hop of IPv6 VIPs
    med: int | None = None
    communities: tuple[str, ...] = ()
    hold_time: int = DEFAULT_HOLD_TIME
    exabgp: str = ""  # the ExaBGP program ("" = next to this Python, else on PATH)
    withdraw_timeout: float = DEFAULT_WITHDRAW_TIMEOUT
    restart_delay: float = DEFAULT_RESTART_DELAY
    restart_max: float = DEFAULT_RESTART_MAX


BGP_KEYS = (
    "local_as",
    "router_id",
    "local_address",
    "next_hop",
    "next_hop6",
    "med",
    "communities",
    "hold_time",
    "exabgp",
    "withdraw_timeout",
    "restart_delay",
    "restart_max",
    "peers",
)
PEER_KEYS = ("address", "peer_as", "local_address", "password", "hold_time", "port")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_bgp(ld: Any, value: object, path: str, tables: Sequence[Any]) -> BgpSettings:
    """The ``[bgp]`` table, checked with fwd.config's loader ``ld`` (its helpers report
    ``FILE: KEY: REASON``); ``tables`` are the config's tables (for the next-hop checks)."""
    obj = ld.mapping(value, path)
    ld.keys(obj, path, BGP_KEYS, ("local_as", "peers"))
    kw: dict[str, Any] = {}
    kw["local_as"] = ld.integer(obj["local_as"], _join(path, "local_as"), 1, ASN_MAX, "AS number")
    local: IPAddress | None = None
    if "local_address" in obj:
        local = _unicast(ld, obj["local_address"], _join(path, "local_address"))
        kw["local_address"] = local
    if "router_id" in obj:
        p = _join(path, "router_id")
        rid = ld.address(obj["router_id"], p)
        if not isinstance(rid, IPv4Address) or rid.is_unspecified:
            ld.fail(p, f"{rid} is not a router id (an IPv4 address other than 0.0.0.0)")
        kw["router_id"] = rid
    elif isinstance(local, IPv4Address):
        kw["router_id"] = local
    else:
        ld.fail(_join(path, "router_id"), "missing required key (needed when local_address is not IPv4)")
    for key, version in (("next_hop", 4), ("next_hop6", 6)):
        if key in obj:
            p = _join(path, key)
            text = ld.string(obj[key], p)
            if text != "self":
                a = _unicast(ld, text, p)
                if a.version != version:
                    ld.fail(p, f'{a} is not an IPv{version} address (or "self")')
                text = str(a)
            kw[key] = text
    if "med" in obj:
        kw["med"] = ld.integer(obj["med"], _join(path, "med"), 0, ASN_MAX, "MED")
    if "communities" in obj:
        kw["communities"] = _communities(ld, obj["communities"], _join(path, "communities"))
    if "hold_time" in obj:
        kw["hold_time"] = _hold_time(ld, obj["hold_time"], _join(path, "hold_time"))
    if "exabgp" in obj:
        p = _join(path, "exabgp")
        prog = ld.string(obj["exabgp"], p)
        if not prog or any(c.isspace() for c in prog) or not prog.isprintable():
            ld.fail(p, "must be a program name or path without spaces")
        kw["exabgp"] = prog
    for key, lo, hi in (
        ("withdraw_timeout", 0.0, 60.0),
        ("restart_delay", 0.1, 60.0),
        ("restart_max", 0.1, 3600.0),
    ):
        if key in obj:
            kw[key] = ld.number(obj[key], _join(path, key), lo, hi, "seconds")
    if kw.get("restart_max", DEFAULT_RESTART_MAX) < kw.get("restart_delay", DEFAULT_RESTART_DELAY):
        ld.fail(_join(path, "restart_max"), "must not be smaller than restart_delay")
    raw_peers = ld.array(obj["peers"], _join(path, "peers"))
    if not raw_peers:
        ld.fail(_join(path, "peers"), "at least one peer is required")
    peers: list[BgpPeer] = []
    seen: dict[IPAddress, int] = {}
    for i, raw in enumerate(raw_peers):
        p = f"{_join(path, 'peers')}[{i}]"
        peer = _peer(ld, raw, p, local)
        if peer.address in seen:
            ld.fail(_join(p, "address"), f"duplicate peer {peer.address} (also peers[{seen[peer.address]}])")
        seen[peer.address] = i
        peers.append(peer)
    kw["peers"] = tuple(peers)
    settings = BgpSettings(**kw)
    _check_next_hops(ld, settings, tables, path)
    return settings


def _unicast(ld: Any, value: object, path: str) -> IPAddress:
    a: IPAddress = ld.address(value, path)
    if a.is_unspecified or a.is_multicast:
        ld.fail(path, f"{a} is not a unicast address")
    return a


def _hold_time(ld: Any, value: object, path: str) -> int:
    h: int = ld.integer(value, path, 0, 65535, "hold time")
    if 0 < h < 3:
        ld.fail(path, f"hold time {h} is not allowed (0, or 3..65535 seconds; RFC 4271)")
    return h


def _communities(ld: Any, value: object, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, item in enumerate(ld.array(value, path)):
        p = f"{path}[{i}]"
        text = ld.string(item, p).strip().lower()
        if text in WELL_KNOWN_COMMUNITIES:
            norm = text
        else:
            m = re.fullmatch(r"(\d{1,5}):(\d{1,5})", text)
            if not m or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
                ld.fail(
                    p,
                    f"{json.dumps(item)} is not a community (ASN:VALUE, both 0..65535, or one of: "
                    f"{', '.join(WELL_KNOWN_COMMUNITIES)})",
                )
            norm = f"{int(m.group(1))}:{int(m.group(2))}"
        if norm in out:
            ld.fail(p, f"community {norm} given twice")
        out.append(norm)
    return tuple(out)


def _peer(ld: Any, value: object, path: str, default_local: IPAddress | None) -> BgpPeer:
    obj = ld.mapping(value, path)
    ld.keys(obj, path, PEER_KEYS, ("address", "peer_as"))
    address = _unicast(ld, obj["address"], _join(path, "address"))
    kw: dict[str, Any] = {
        "address": address,
        "peer_as": ld.integer(obj["peer_as"], _join(path, "peer_as"), 1, ASN_MAX, "AS number"),
    }
    local = default_local
    if "local_address" in obj:
        local = _unicast(ld, obj["local_address"], _join(path, "local_address"))
        kw["local_address"] = local
    if local is not None and local.version != address.version:
        where = _join(path, "local_address") if "local_address" in obj else _join(path, "address")
        ld.fail(where, f"local address {local} and peer {address} are of different IP versions")
    if "password" in obj:
        p = _join(path, "password")
        pw = ld.string(obj["password"], p)
        if not PASSWORD_OK.fullmatch(pw):
            ld.fail(p, 'must be 1..80 printable ASCII characters without space, ", ;, { or }')
        if local is None:
            ld.fail(p, "a TCP MD5 password needs a local_address (here or in [bgp])")
        kw["password"] = pw
    if "hold_time" in obj:
        kw["hold_time"] = _hold_time(ld, obj["hold_time"], _join(path, "hold_time"))
    if "port" in obj:
        kw["port"] = ld.integer(obj["port"], _join(path, "port"), 1, 65535, "port")
    return BgpPeer(**kw)


def _check_next_hops(ld: Any, s: BgpSettings, tables: Sequence[Any], path: str) -> None:
    """ExaBGP's "next-hop self" is the session's local address: an IPv6 VIP announced over an
    IPv4 session (or the reverse) needs an explicit next hop of its own family."""
    versions = {b.prefix.version for t in tables for b in t.binds}
    for version, key, nh in ((4, "next_hop", s.next_hop), (6, "next_hop6", s.next_hop6)):
        if version not in versions or nh != "self":
            continue
        other = [str(p.address) for p in s.peers if p.address.version != version]
        if other:
            ld.fail(
                _join(path, key),
                f'"self" cannot be the next hop of IPv{version} VIPs sent over the IPv{10 - version} '
                f"session{'s' if len(other) > 1 else ''} with {', '.join(other)}: "
                f"give an IPv{version} address",
            )


# ----------------------------------------------------------------------------------------------
# the decision (pure)


@dataclass(frozen=True)
class Vip:
    """One route: a bind prefix, and the tables that have a bind on exactly that prefix."""

    prefix: IPNetwork
    tables: tuple[str, ...]


@dataclass(frozen=True)
class TableHealth:
    """What the decision needs to know about one table's backends."""

    serving: int  # ranked (not inactive), healthy and, if checked, checked at least once
    pending: int  # ranked, checked, no check result yet
    ranked: int  # not inactive
    total: int


@dataclass(frozen=True)
class Inputs:
    """Everything :func:`decide` looks at."""

    vips: tuple[Vip, ...]
    tables: Mapping[str, TableHealth]
    running: bool  # the data plane forwards
    stopping: bool = False  # SIGTERM/SIGINT: withdraw everything
    drained: bool = False  # fwd node drain


@dataclass(frozen=True)
class Decision:
    prefix: IPNetwork
    announce: bool
    reason: str


def vips_of(cfg: Any) -> tuple[Vip, ...]:
    """The routes of a config, in config order (one per distinct bind prefix)."""
    order: dict[IPNetwork, list[str]] = {}
    for t in cfg.tables:
        for b in t.binds:
            names = order.setdefault(b.prefix, [])
            if t.name not in names:
                names.append(t.name)
    return tuple(Vip(p, tuple(names)) for p, names in order.items())


def table_health(
    backends: Iterable[Any], checked: Callable[[int], bool], verdict: Callable[[int], Any]
) -> TableHealth:
    """Count a table's backends. ``backends`` are the running table's (effective state and
    health); ``checked(i)`` says whether health checks decide backend i's health and
    ``verdict(i)`` is the checker's verdict (None before the first result)."""
    serving = pending = ranked = total = 0
    for i, b in enumerate(backends):
        total += 1
        if b.state == "inactive":
            continue
        ranked += 1
        if checked(i) and verdict(i) is None:
            pending += 1
        elif b.healthy:
            serving += 1
    return TableHealth(serving, pending, ranked, total)


def decide(inputs: Inputs) -> list[Decision]:
    """Announce or withdraw each VIP, with the reason in words."""
    out = []
    for v in inputs.vips:
        if inputs.stopping:
            out.append(Decision(v.prefix, False, "the daemon is stopping"))
            continue
        if not inputs.running:
            out.append(Decision(v.prefix, False, "the data plane is not running"))
            continue
        if inputs.drained:
            out.append(Decision(v.prefix, False, "the node is drained (fwd node drain)"))
            continue
        words = []
        serving = pending = False
        for name in v.tables:
            h = inputs.tables.get(name)
            if h is None:
                continue
            serving = serving or h.serving > 0
            pending = pending or h.pending > 0
            extra = f", {h.pending} not checked yet" if h.pending else ""
            words.append(f"table {name}: {h.serving} of {h.ranked} ranked backends healthy{extra}")
        why = "; ".join(words) or "no table"
        if serving:
            out.append(Decision(v.prefix, True, why))
        elif pending:
            out.append(Decision(v.prefix, False, f"waiting for the first health check results ({why})"))
        else:
            out.append(Decision(v.prefix, False, f"no healthy backend ({why})"))
    return out


def daemon_inputs(daemon: Any, drained: bool, stopping: bool) -> Inputs:
    """The decision's inputs from a running fwd.daemon.Daemon: its config, the running tables
    (effective states and health) and the health checker's verdicts."""
    cfg = daemon.cfg
    live = daemon.live
    running = bool(daemon.ready and live is not None and not daemon.stopping)
    tables: dict[str, TableHealth] = {}
    if live is not None:
        for ti, t in enumerate(cfg.tables):
            eff = live.tables[ti].backends if ti < len(live.tables) else t.backends

            def checked(i: int, t: Any = t, eff: Any = eff) -> bool:
                return i < len(t.backends) and bool(t.backends[i].checks) and eff[i].state != "inactive"

            def verdict(i: int, t: Any = t) -> Any:
                return daemon.verdict((t.name, t.backends[i].address))

            tables[t.name] = table_health(eff, checked, verdict)
    return Inputs(vips_of(cfg), tables, running, stopping or daemon.stopping, drained)


# ----------------------------------------------------------------------------------------------
# rendering (pure)


def next_hop_for(s: BgpSettings, prefix: IPNetwork) -> str:
    return s.next_hop if prefix.version == 4 else s.next_hop6


def announce_command(s: BgpSettings, prefix: IPNetwork) -> str:
    """The ExaBGP API command that announces ``prefix`` with the configured attributes."""
    parts = [f"announce route {prefix} next-hop {next_hop_for(s, prefix)}"]
    if s.med is not None:
        parts.append(f"med {s.med}")
    if s.communities:
        parts.append(f"community [{' '.join(s.communities)}]")
    return " ".join(parts)


def withdraw_command(s: BgpSettings, prefix: IPNetwork) -> str:
    return f"withdraw route {prefix} next-hop {next_hop_for(s, prefix)}"


def render_exabgp_config(s: BgpSettings, run: str, source: str = "") -> str:
    """ExaBGP's configuration file: the API process ``fwd`` (``run``: the relay's command line)
    and one neighbor per peer, reporting state changes and the updates it sends to the process."""
    # the config's path is the only free text here: printed as a JSON string, a newline in it
    # cannot start a line of ExaBGP configuration (a `process` runs a program)
    origin = f" from {json.dumps(source)}" if source else ""
    lines = [
        f"# Written by fwd for its ExaBGP child{origin}; do not edit:",
        "# the fwd daemon writes it again at every start of ExaBGP.",
        "",
        f"process {PROCESS_NAME} {{",
        f"    run {run};",
        "    encoder json;",
        "}",
    ]
    for p in s.peers:
        local = p.local_address or s.local_address
        hold = p.hold_time if p.hold_time is not None else s.hold_time
        lines += [
            "",
            f"neighbor {p.address} {{",
            f'    description "fwd peer {p.address}";',
            f"    router-id {s.router_id};",
            f"    local-address {local if local is not None else 'auto'};",
            f"    local-as {s.local_as};",
            f"    peer-as {p.peer_as};",
            f"    hold-time {hold};",
        ]
        if p.port != 179:
            lines.append(f"    connect {p.port};")
        if p.password is not None:
            lines.append(f"    md5-password {p.password};")
        lines += [
            "    family {",
            "        ipv4 unicast;",
            "        ipv6 unicast;",
            "    }",
            "    api {",
            f"        processes [ {PROCESS_NAME} ];",
            "        neighbor-changes;",
            "        send {",
            "            parsed;",
            "            update;",
            "        }",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def exabgp_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """ExaBGP's settings, given as environment variables: stay the user fwd runs as (it would drop
    to nobody, and a relay it respawns could not reach fwd's socket), no CLI pipes, logs on stdout without
    the statistics noise, acks on, respawn the relay if it exits."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "exabgp_daemon_user": _user_name(),
            "exabgp_daemon_daemonize": "false",
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            "exabgp_api_respawn": "true",
            "exabgp_log_destination": "stdout",
            "exabgp_log_statistics": "false",
            "exabgp_log_short": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # pragma: no cover - a uid without a passwd entry
        return "root"


def find_exabgp(s: BgpSettings) -> str:
    """The ExaBGP program to run: ``bgp.exabgp`` if set, else the one installed beside this
    Python (fwd's venv), else ``exabgp`` on PATH. BgpError when there is none."""
    if s.exabgp:
        found = shutil.which(s.exabgp)
        if found is None:
            raise BgpError(f"bgp.exabgp: {s.exabgp!r} is not an executable program")
        return found
    beside = Path(sys.executable).with_name("exabgp")
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("exabgp")
    if found is None:
        raise BgpError(
            "[bgp] is configured but ExaBGP is not installed (make setup installs exabgp into the venv; "
            "or set bgp.exabgp to its path)"
        )
    return found


# ----------------------------------------------------------------------------------------------
# ExaBGP's messages


@dataclass
class PeerState:
    address: str
    peer_as: int
    state: str = "idle"  # idle (never seen) / connected / up / down
    since: float | None = None
    reason: str = ""
    ups: int = 0
    downs: int = 0
    advertised: set[str] = field(default_factory=set)  # prefixes ExaBGP sent to it, not withdrawn
    families: set[str] = field(default_factory=set)  # "ipv4 unicast" ...: the EORs it was sent

    def lost(self, reason: str, now: float) -> bool:
        """The session is gone (or ExaBGP is): True when it was up."""
        was_up = self.state == "up"
        if self.state in ("up", "connected"):
            self.state, self.since, self.reason = "down", now, reason
            if was_up:
                self.downs += 1
        self.advertised.clear()
        self.families.clear()
        return was_up


def update_prefixes(message: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(announced, withdrawn, end-of-rib families) of a parsed UPDATE in ExaBGP's JSON."""
    if "eor" in message:
        eor = message["eor"]
        return [], [], [f"{eor.get('afi')} {eor.get('safi')}"]
    upd = message.get("update", {})
    announced = [
        r["nlri"]
        for fam in upd.get("announce", {}).values()
        for routes in fam.values()
        for r in routes
        if isinstance(r, dict) and "nlri" in r
    ]
    withdrawn = [
        r["nlri"]
        for routes in upd.get("withdraw", {}).values()
        for r in routes
        if isinstance(r, dict) and "nlri" in r
    ]
    return announced, withdrawn, []


def sweep_runtime_dirs(base: str) -> list[str]:
    """Remove the runtime directories (fwd-bgp-PID-*) of fwd daemons that are gone: one killed
    with SIGKILL could not remove its own."""
    gone = []
    for d in Path(base).glob("fwd-bgp-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            gone.append(str(d))
    return gone


def _libc_prctl() -> Callable[[], None] | None:
    """preexec_fn for ExaBGP: SIGTERM it when fwd dies (so a killed fwd takes its routes along)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None

    def pre() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return pre


# ----------------------------------------------------------------------------------------------
# the speaker


@dataclass
class VipState:
    prefix: IPNetwork
    tables: tuple[str, ...]
    announce: bool = False
    reason: str = ""
    since: float | None = None  # when the decision last changed
    told: str | None = None  # the last command given to the running ExaBGP for it


class BgpSpeaker:
    """ExaBGP as a child process, kept announcing what :func:`decide` says.

    ``view(drained, stopping)`` returns the decision's :class:`Inputs` (the daemon passes
    :func:`daemon_inputs` bound to itself). Call :meth:`changed` whenever the tables or the
    node's state may have changed; the speaker also re-checks every ``resync`` seconds.
    """

    def __init__(
        self,
        settings: BgpSettings,
        view: Callable[[bool, bool], Inputs],
        log: logging.Logger | None = None,
        *,
        source: str = "",
        resync: float = 1.0,
    ) -> None:
        self.settings = settings
        self.view = view
        self.log = log or logging.getLogger("fwd.bgp")
        self.source = source
        self.resync = resync
        self.program = find_exabgp(settings)  # BgpError before anything starts
        self.drained = False
        self.stopping = False
        self.dir: Path | None = None
        self.sock_path = ""
        self.conf_path: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None  # the running ExaBGP's start
        self.restarts = 0  # ExaBGP exits fwd did not ask for
        self.last_exit: str | None = None
        self.output: list[str] = []  # ExaBGP's last lines
        self.commands = {"sent": 0, "done": 0, "error": 0}
        self.last_error: str | None = None
        self.peers: dict[str, PeerState] = {}
        self.vips: dict[IPNetwork, VipState] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.base_events.Server | None = None
        self._unacked: list[str] = []
        self._changed = asyncio.Event()  # pulsed on every message from ExaBGP
        self._sync_handle: asyncio.Handle | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._restart_now = asyncio.Event()
        self._wanted_restart = False
        self._reset_peers()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
        sweep_runtime_dirs(base)
        self.dir = Path(tempfile.mkdtemp(prefix=f"fwd-bgp-{os.getpid()}-", dir=base))
        self.sock_path = str(self.dir / "api.sock")
        self.conf_path = self.dir / "exabgp.conf"
        self._server = await asyncio.start_unix_server(self._serve, path=self.sock_path)
        os.chmod(self.sock_path, 0o600)
        self._write_config()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._supervise(), name="exabgp"))
        self._tasks.append(loop.create_task(self._resync_loop(), name="bgp resync"))
        self.log.info(
            "bgp: AS %d, router id %s, %d peer%s (%s); ExaBGP %s",
            self.settings.local_as,
            self.settings.router_id,
            len(self.settings.peers),
            "" if len(self.settings.peers) == 1 else "s",
            ", ".join(f"{p.address} AS {p.peer_as}" for p in self.settings.peers),
            self.program,
        )
        self.sync()

    async def stop(self) -> None:
        """Stop ExaBGP (it closes its sessions with a Cease notification) and clean up."""
        self.stopping = True
        await cancel_all(self._tasks)
        await self._terminate()
        if self._sync_handle is not None:
            self._sync_handle.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.log.info("bgp: ExaBGP stopped")

    async def reconfigure(self, settings: BgpSettings, source: str = "") -> list[str]:
        """New [bgp] settings (a reload). ExaBGP restarts only when its configuration changes
        (peers, AS, router id, addresses, timers); route attributes are sent as new
        announcements. Returns what changed, in words."""
        old = self.settings
        if settings == old:
            return []
        self.settings = settings
        self.source = source or self.source
        old_text = render_exabgp_config(old, self._run_line(), self.source)
        new_text = render_exabgp_config(settings, self._run_line(), self.source)
        changes = []
        if old_text != new_text:
            changes.append("bgp: sessions changed, ExaBGP restarts")
            self._reset_peers()
            self._write_config()
            self.log.warning("bgp: the [bgp] sessions changed: restarting ExaBGP with the new configuration")
            self._wanted_restart = True
            await self._terminate()
        else:
            changes.append("bgp: route attributes changed, routes announced again")
        self.sync()
        return changes

    def _reset_peers(self) -> None:
        old = self.peers
        self.peers = {}
        for p in self.settings.peers:
            a = str(p.address)
            prev = old.get(a)
            self.peers[a] = (
                prev if prev is not None and prev.peer_as == p.peer_as else PeerState(a, p.peer_as)
            )

    def _run_line(self) -> str:
        return f"{sys.executable} {RELAY} {self.sock_path}"

    def _write_config(self) -> None:
        assert self.conf_path is not None
        text = render_exabgp_config(self.settings, self._run_line(), self.source)
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold passwords
        with os.fdopen(fd, "w") as f:
            f.write(text)

    async def _supervise(self) -> None:
        delay = self.settings.restart_delay
        while not self.stopping:
            started = time.monotonic()
            try:
                await self._spawn()
            except OSError as e:
                self.last_exit = f"cannot start {self.program}: {e.strerror or e}"
                self.log.error("bgp: %s", self.last_exit)
            else:
                assert self.proc is not None
                reader = asyncio.get_running_loop().create_task(self._read_output(self.proc))
                rc = await self.proc.wait()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(reader, 2)
                self._lost_exabgp(f"ExaBGP exited ({_exit_words(rc)})")
                if self.stopping:
                    return
                if self._wanted_restart:
                    self._wanted_restart = False
                    delay = self.settings.restart_delay
                    continue
                self.restarts += 1
                self.last_exit = f"{_exit_words(rc)} after {time.monotonic() - started:.1f}s"
                tail = " | ".join(self.output[-3:])
                self.log.error(
                    "bgp: ExaBGP (pid %d) died: %s; restarting it in %.1fs%s",
                    self.proc.pid,
                    self.last_exit,
                    delay,
                    f" (its last lines: {tail})" if tail else "",
                    extra={"event": "bgp", "exabgp": "died"},
                )
            if time.monotonic() - started >= STABLE_RUN:
                delay = self.settings.restart_delay
            self._restart_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart_now.wait(), delay)
            delay = min(delay * 2, self.settings.restart_max)

    async def _spawn(self) -> None:
        assert self.conf_path is not None
        self.output.clear()
        self.proc = await asyncio.create_subprocess_exec(
            self.program,
            str(self.conf_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=exabgp_environment(),
            cwd=str(self.dir),
            start_new_session=True,  # a terminal's ^C goes to fwd only: fwd withdraws first
            preexec_fn=_libc_prctl(),
        )
        self.started_at = time.time()
        self.log.info(
            "bgp: ExaBGP started (pid %d)", self.proc.pid, extra={"event": "bgp", "exabgp": "started"}
        )

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            self.output = [*self.output[-19:], text]
            low = text.lower()
            if "error" in low or "warning" in low or "could not" in low or "traceback" in low:
                self.log.warning("exabgp: %s", text)
            else:
                self.log.debug("exabgp: %s", text)

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            self.log.warning("bgp: ExaBGP (pid %d) did not stop within 5s: killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    def _lost_exabgp(self, reason: str) -> None:
        now = time.time()
        for p in self.peers.values():
            if p.lost(reason, now):
                self.log.warning("bgp: peer %s down: %s", p.address, reason)
        for v in self.vips.values():
            v.told = None  # a new ExaBGP starts with an empty RIB
        self._unacked.clear()
        self.started_at = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._changed.set()

    # -- the API connection ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # a respawned relay replaces the old one
            self._writer.close()
        self._writer = writer
        self._unacked.clear()
        self.log.debug("bgp: ExaBGP's API process connected")
        # after a reconnect, what ExaBGP holds is not known for sure: say it all again
        for v in self.vips.values():
            if v.told is not None:
                v.told = "?"
        self.sync()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                self._message(line.decode(errors="replace").strip())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _send(self, command: str) -> bool:
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(command.encode() + b"\n")
        self._unacked.append(command)
        self.commands["sent"] += 1
        self.log.debug("bgp: -> exabgp: %s", command)
        return True

    def _message(self, line: str) -> None:
        if not line:
            return
        self._changed.set()
        if line in ("done", "error"):
            command = self._unacked.pop(0) if self._unacked else "?"
            self.commands[line] += 1
            if line == "error":
                self.last_error = command
                self.log.error("bgp: ExaBGP refused the command %r", command)
            return
        try:
            msg = json.loads(line)
        except ValueError:
            self.log.debug("bgp: <- exabgp (not JSON): %s", line)
            return
        if isinstance(msg, dict):
            self.handle(msg)

    def handle(self, msg: Mapping[str, Any]) -> None:
        """One JSON message from ExaBGP: peer state changes and the updates it sent."""
        kind = msg.get("type")
        now = time.time()
        neighbor = msg.get("neighbor") or {}
        peer_addr = str((neighbor.get("address") or {}).get("peer", ""))
        peer = self.peers.get(peer_addr)
        if kind == "state" and peer is not None:
            state = str(neighbor.get("state", ""))
            reason = str(neighbor.get("reason", ""))
            if state == "down":
                was = peer.state
                peer.lost(reason or "session closed", now)
                peer.state, peer.since, peer.reason = "down", now, reason
                if was in ("up", "connected"):
                    self.log.warning(
                        "bgp: peer %s (AS %d) down: %s",
                        peer.address,
                        peer.peer_as,
                        reason or "session closed",
                        extra={"event": "bgp", "peer": peer.address, "state": "down"},
                    )
            elif state in ("up", "connected"):
                if state == "up":
                    peer.ups += 1
                    self.log.info(
                        "bgp: peer %s (AS %d) up",
                        peer.address,
                        peer.peer_as,
                        extra={"event": "bgp", "peer": peer.address, "state": "up"},
                    )
                peer.state, peer.since, peer.reason = state, now, ""
        elif kind == "update" and peer is not None and neighbor.get("direction") == "send":
            announced, withdrawn, eors = update_prefixes(neighbor.get("message") or {})
            peer.families.update(eors)
            for p in announced:
                peer.advertised.add(p)
            for p in withdrawn:
                peer.advertised.discard(p)
            if announced or withdrawn:
                self.log.info(
                    "bgp: sent to %s: %s",
                    peer.address,
                    "; ".join(
                        x
                        for x in (
                            f"announce {', '.join(announced)}" if announced else "",
                            f"withdraw {', '.join(withdrawn)}" if withdrawn else "",
                        )
                        if x
                    ),
                    extra={
                        "event": "bgp",
                        "peer": peer.address,
                        "announced": announced,
                        "withdrawn": withdrawn,
                    },
                )
        elif kind == "notification" and msg.get("notification") == "shutdown":
            self.log.debug("bgp: ExaBGP is shutting down")

    # -- deciding and telling ---------------------------------------------------------------

    def changed(self) -> None:
        """Something the decision reads may have changed: re-decide in this loop turn."""
        if self._sync_handle is None:
            with contextlib.suppress(RuntimeError):
                self._sync_handle = asyncio.get_running_loop().call_soon(self.sync)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            try:
                self.sync()
            except Exception as e:  # pragma: no cover - never stop re-checking
                self.log.error("bgp: re-check failed: %s", e)

    def sync(self) -> None:
        """Decide, log what changed, and send ExaBGP the commands that bring it there."""
        self._sync_handle = None
        inputs = self.view(self.drained, self.stopping)
        tables = {v.prefix: v.tables for v in inputs.vips}
        now = time.time()
        for d in decide(inputs):
            v = self.vips.get(d.prefix)
            if v is None:
                v = self.vips[d.prefix] = VipState(d.prefix, tables[d.prefix], d.announce, d.reason, now)
                word = "announce" if d.announce else "not announcing"
                self.log.info("bgp: %s %s: %s", word, d.prefix, d.reason, extra=self._extra(d))
            elif v.announce != d.announce:
                word = "announce" if d.announce else "withdraw"
                self.log.info("bgp: %s %s: %s", word, d.prefix, d.reason, extra=self._extra(d))
                v.announce, v.since = d.announce, now
            v.reason, v.tables = d.reason, tables[d.prefix]
        for prefix in [p for p in self.vips if p not in tables]:  # no bind uses it any more
            v = self.vips.pop(prefix)
            if v.told is not None and not v.told.startswith("withdraw"):
                if self._send(withdraw_command(self.settings, prefix)):
                    self.log.info("bgp: withdraw %s: no bind uses it any more", prefix)
        for v in self.vips.values():
            if v.announce:
                want = announce_command(self.settings, v.prefix)
                if v.told != want and self._send(want):
                    v.told = want
            elif v.told is not None and not v.told.startswith("withdraw"):
                want = withdraw_command(self.settings, v.prefix)
                if self._send(want):
                    v.told = want

    @staticmethod
    def _extra(d: Decision) -> dict[str, Any]:
        return {"event": "bgp", "vip": str(d.prefix), "announce": d.announce}

    def _settled(self) -> bool:
        """Every established peer was sent what we want (ExaBGP acknowledged every command, no
        withdrawn prefix is still advertised to the peer, every announced one of a family the
        session carries is); true at once when no session is established."""
        up = self._up_peers()
        if not up:
            return True  # a peer that comes up later gets ExaBGP's RIB as it is then
        if self._writer is None or self._unacked:
            return False
        for p in up:
            for v in self.vips.values():
                s = str(v.prefix)
                if not v.announce and s in p.advertised:
                    return False
                fam = f"ipv{v.prefix.version} unicast"
                if v.announce and s not in p.advertised and (not p.families or fam in p.families):
                    return False
        return True

    def _up_peers(self) -> list[PeerState]:
        return [p for p in self.peers.values() if p.state == "up"]

    async def settle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until :meth:`_settled`; True when it is."""
        deadline = time.monotonic() + timeout
        while not self._settled():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
        return True

    async def set_drained(self, drained: bool, who: str = "") -> dict[str, Any]:
        """fwd node drain / undrain: withdraw (announce) every VIP and wait until the peers were
        sent it (at most withdraw_timeout)."""
        before = self.drained
        self.drained = drained
        if before != drained:
            self.log.info(
                "bgp: node %s by %s",
                "drained" if drained else "undrained",
                who or "the control API",
                extra={"event": "bgp", "drained": drained},
            )
        t0 = time.monotonic()
        self.sync()
        ok = await self.settle(self.settings.withdraw_timeout)
        return {
            "drained": drained,
            "changed": before != drained,
            "settled": ok,
            "seconds": round(time.monotonic() - t0, 3),
            "vips": self._vips_json(),
            "peers": self._peers_json(),
        }

    async def withdraw_for_stop(self) -> None:
        """The daemon's SIGTERM hook: withdraw every VIP and wait until every established peer
        was sent the withdraw (at most withdraw_timeout), while the data plane still forwards."""
        self.stopping = True
        t0 = time.monotonic()
        had = [
            str(v.prefix) for v in self.vips.values() if v.told is not None and v.told.startswith("announce")
        ]
        self.sync()
        ok = await self.settle(self.settings.withdraw_timeout)
        took = time.monotonic() - t0
        peers = [p.address for p in self._up_peers()]
        if ok:
            self.log.info(
                "bgp: withdrawn before stopping: %s; sent to %s (%.0f ms); the data plane still forwards",
                ", ".join(had) or "nothing was announced",
                ", ".join(peers) or "no established peer",
                took * 1000,
                extra={"event": "bgp", "withdrawn": had, "peers": peers},
            )
        else:
            self.log.warning(
                "bgp: the withdraw of %s was not confirmed within %gs (peers %s); stopping anyway",
                ", ".join(had) or "nothing",
                self.settings.withdraw_timeout,
                ", ".join(f"{p.address} {p.state}" for p in self.peers.values()),
            )
        # let the kernel put ExaBGP's last UPDATE on the wire (it reports it as it writes it)
        await asyncio.sleep(0.05)

    # -- reading --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _vips_json(self) -> list[dict[str, Any]]:
        out = []
        for v in self.vips.values():
            s = str(v.prefix)
            out.append(
                {
                    "prefix": s,
                    "tables": list(v.tables),
                    "announce": v.announce,
                    "reason": v.reason,
                    "since": v.since,
                    "told": v.told.split(" ", 1)[0] if v.told else None,
                    "advertised_to": [p.address for p in self.peers.values() if s in p.advertised],
                }
            )
        return out

    def _peers_json(self) -> list[dict[str, Any]]:
        return [
            {
                "address": p.address,
                "peer_as": p.peer_as,
                "state": p.state,
                "since": p.since,
                "reason": p.reason,
                "ups": p.ups,
                "downs": p.downs,
                "advertised": sorted(p.advertised),
                "families": sorted(p.families),
            }
            for p in self.peers.values()
        ]

    def status(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "local_as": self.settings.local_as,
            "router_id": str(self.settings.router_id),
            "drained": self.drained,
            "stopping": self.stopping,
            "exabgp": {
                "program": self.program,
                "pid": proc.pid if proc is not None and proc.returncode is None else None,
                "running": self.running,
                "api_connected": self._writer is not None,
                "started": self.started_at,
                "restarts": self.restarts,
                "last_exit": self.last_exit,
                "config": str(self.conf_path) if self.conf_path else None,
            },
            "commands": dict(self.commands),
            "last_error": self.last_error,
            "peers": self._peers_json(),
            "vips": self._vips_json(),
        }

    def metrics(self) -> dict[str, Any]:
        """Plain numbers for fwd.metrics (MetricsView.bgp)."""
        return {
            "exabgp_up": 1 if self.running and self._writer is not None else 0,
            "restarts": self.restarts,
            "drained": 1 if self.drained else 0,
            "commands": dict(self.commands),
            "peers": [
                {
                    "peer": p.address,
                    "up": 1 if p.state == "up" else 0,
                    "ups": p.ups,
                    "downs": p.downs,
                    "advertised": len(p.advertised),
                }
                for p in self.peers.values()
            ],
            "vips": [
                {
                    "vip": str(v.prefix),
                    "announce": 1 if v.announce else 0,
                    "peers": sum(1 for p in self.peers.values() if str(v.prefix) in p.advertised),
                }
                for v in self.vips.values()
            ],
        }


def _exit_words(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"
