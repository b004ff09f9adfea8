"""Layer 3: the live data plane on real interfaces (``fwd run``, later the daemon).

LiveDataplane puts the C runtime (native/runtime_api.h) on a set of interfaces, one worker per
rx queue, in one of two back ends:

* ``xdp``: the XDP steering program (fwd/bpf/steer.bpf.o) sends VIP traffic to an AF_XDP socket
  per queue and passes everything else to the kernel;
* ``raw``: AF_PACKET sockets with a TPACKET_V3 ring in a fanout group per interface. The socket
  is a tap, the kernel keeps its own copy of every frame: an nftables ``netdev`` table
  (``fwd_raw``, one ingress chain per interface, priority -500) drops exactly the VIP traffic
  the core does not PASS, so the kernel never handles a packet fwd forwards. Taps see frames
  before the ingress hook, so fwd still gets them.

``auto`` tries xdp and falls back to raw, saying why in one log line. Snapshots are built from
the current ForwardingTables plus each backend's next hop (fwd.nexthop, followed from netlink
events) and handed to the runtime with one atomic publication. stop() removes everything
start() installed; it is idempotent.

Refusals (not privileged, interface missing, back end unavailable) raise LiveError with one line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from fwd import capabilities, native
from fwd.config import Config
from fwd.dataplane import Counters
from fwd.nexthop import IPAddress, NextHop, NextHopThread, in_thread, run_netlink
from fwd.table import ForwardingTable

__all__ = ["LiveDataplane", "LiveError", "MODES", "XSK_MODES", "NFT_TABLE", "Interface"]

MODES = ("xdp", "raw", "auto")
XSK_MODES = ("auto", "copy", "zerocopy")
STEER_OBJECT = Path(__file__).resolve().parent / "bpf" / "steer.bpf.o"
NFT_TABLE = "fwd_raw"
NFT_PRIORITY = -500
NEXTHOP_WAIT = 1.0  # seconds start() waits for neighbour resolution before the first snapshot

T = TypeVar("T")

# One AF_XDP socket's umem (native/xsk.c: 4096 frames of 4 KiB). The kernel charges it to the
# user's locked memory (RLIMIT_MEMLOCK) unless the process has CAP_IPC_LOCK.
XSK_UMEM_BYTES = 4096 * 4096


class LiveError(RuntimeError):
    """fwd cannot run (or stop) as asked; the text is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# ----------------------------------------------------------------------------------------------
# what the host offers


def missing_capabilities(mode: str, caps: int | None = None) -> list[str]:
    """The capabilities --mode MODE lacks (docs/daemon.md, "Capabilities"): raw sockets need
    CAP_NET_ADMIN (nftables, ethtool, netlink) and CAP_NET_RAW (AF_PACKET); xdp also needs
    CAP_BPF (load the steering program) and CAP_PERFMON (the verifier refuses its pointer
    comparisons without it), both implied by CAP_SYS_ADMIN. "auto" is checked as raw: it falls
    back to raw when xdp lacks something."""
    caps = capabilities.effective() if caps is None else caps
    missing = [
        name
        for cap, name in (
            (capabilities.CAP_NET_ADMIN, "CAP_NET_ADMIN"),
            (capabilities.CAP_NET_RAW, "CAP_NET_RAW"),
        )
        if not capabilities.has(cap, caps)
    ]
    if mode == "xdp":
        missing += capabilities.missing_bpf(caps)
    return missing


def check_privileges(mode: str) -> None:
    """Refuse unless root or holding the capabilities the mode needs."""
    missing = missing_capabilities(mode)
    if missing:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        if mode == "auto":
            what = "raw sockets need these; xdp also CAP_BPF and CAP_PERFMON"
        else:
            what = f"it attaches sockets{' and XDP programs' if mode == 'xdp' else ''} to interfaces"
        raise LiveError(
            f"fwd run needs root: running as {who} without {', '.join(missing)} (--mode {mode}: {what})"
        )


def check_locked_memory(sockets: int) -> None:
    """Refuse AF_XDP when its umems cannot be locked: without CAP_IPC_LOCK the kernel charges
    them to RLIMIT_MEMLOCK (8 MiB by default) and bind() fails with ENOBUFS."""
    if capabilities.has(capabilities.CAP_IPC_LOCK):
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    need = sockets * XSK_UMEM_BYTES
    if soft != resource.RLIM_INFINITY and soft < need:
        raise LiveError(
            f"{sockets} AF_XDP socket{'s' if sockets != 1 else ''} lock {need >> 20} MiB of umem but "
            f"RLIMIT_MEMLOCK is {soft >> 10} KiB and fwd lacks CAP_IPC_LOCK: give it CAP_IPC_LOCK or "
            "raise the limit (LimitMEMLOCK=infinity under systemd, ulimit -l)"
        )


def check_xdp_privileges() -> None:
    """What xdp needs beyond raw (auto mode falls back to raw, saying this)."""
    missing = [m for m in missing_capabilities("xdp") if m not in missing_capabilities("raw")]
    if missing:
        raise LiveError(f"needs {', '.join(missing)} to load the XDP steering program")


@dataclass(frozen=True)
class Interface:
    name: str
    ifindex: int
    rx_queues: int
    mtu: int
    mac: bytes | None
    up: bool
    addresses: tuple[IPAddress, ...]  # primary (non-secondary) global addresses, in kernel order


IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")


def rx_queues_in_use(name: str, ifindex: int, mac: str | None, allocated: int) -> int:
    """Rx queues the interface uses (not the ones allocated: a default veth allocates one per CPU
    and uses one). /sys/class/net/IF/queues when that sysfs belongs to this network namespace,
    else the ethtool channel counts, else what netlink says is allocated."""
    base = Path("/sys/class/net") / name
    try:
        same = int((base / "ifindex").read_text()) == ifindex and (
            mac is None or (base / "address").read_text().strip() == mac
        )
        if same:
            n = sum(1 for q in (base / "queues").iterdir() if q.name.startswith("rx-"))
            if n:
                return n
    except (OSError, ValueError):
        pass
    try:
        ch = _in_thread(lambda: _ethtool(lambda e: e.get_channels(name)))
        if ch.rx_count + ch.combined_count:
            return int(ch.rx_count + ch.combined_count)
    except Exception:  # no ethtool channel support: fall back
        pass
    return max(1, allocated)


def _in_thread(fn: Callable[[], T]) -> T:
    """fn() on a thread of its own: pyroute2's sync API must not meet a running (uv)loop."""
    return in_thread(fn, "fwd-ethtool")


def _ethtool(fn: Callable[[Any], T]) -> T:
    from pyroute2.ethtool import Ethtool

    e = Ethtool()
    try:
        return fn(e)
    finally:
        e.close()


# Receive offloads that merge frames before an AF_PACKET tap sees them.
MERGING_OFFLOADS = ("rx-gro", "rx-gro-hw", "rx-lro", "rx-gro-list")


def offloads_off(name: str) -> list[str]:
    """Turn off the merging receive offloads of an interface; returns those that were on."""

    def go(e: Any) -> list[str]:
        feats = e.get_features(name)
        on = [k for k in MERGING_OFFLOADS if k in feats.features and feats.features[k].enable]
        if on:
            for k in on:
                feats.features[k].enable = False
            e.set_features(name, feats)
        return on

    return _in_thread(lambda: _ethtool(go))


def offloads_on(name: str, features: Sequence[str]) -> None:
    def go(e: Any) -> None:
        feats = e.get_features(name)
        for k in features:
            if k in feats.features:
                feats.features[k].enable = True
        e.set_features(name, feats)

    _in_thread(lambda: _ethtool(go))


def interfaces_info(names: Sequence[str]) -> list[Interface]:
    """Look the interfaces up over netlink (correct in any network namespace; callable from
    inside a running event loop: the netlink work runs on a thread of its own)."""
    if not names:
        raise LiveError("no interface given (--interface IF)")
    seen = set()
    for name in names:
        if name in seen:
            raise LiveError(f"interface {name} given twice")
        seen.add(name)
        if not IFNAME.fullmatch(name):
            raise LiveError(f"interface {name!r}: not a usable interface name")

    async def lookup(ipr: Any) -> list[tuple[Any, list[Any]]]:
        out = []
        for name in names:
            try:
                links = await ipr.link("get", ifname=name)
            except NetlinkError:
                links = ()
            if not links:
                raise LiveError(f"interface {name} does not exist")
            link = links[0]
            addrs = [a async for a in await ipr.addr("dump", index=link["index"])]
            out.append((link, addrs))
        return out

    result = []
    for name, (link, addr_msgs) in zip(names, run_netlink(lookup), strict=True):
        index = link["index"]
        mac_text = link.get("IFLA_ADDRESS")
        mac = bytes.fromhex(mac_text.replace(":", "")) if mac_text else None
        addrs: list[IPAddress] = []
        for a in addr_msgs:
            # scope global, neither secondary (0x01) nor tentative (0x40)
            if a.get("scope") == 0 and not (a.get("IFA_FLAGS") or a.get("flags") or 0) & 0x41:
                text = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
                if text:
                    addrs.append(ipaddress.ip_address(text))
        result.append(
            Interface(
                name=name,
                ifindex=index,
                rx_queues=rx_queues_in_use(name, index, mac_text, link.get("IFLA_NUM_RX_QUEUES") or 1),
                mtu=link.get("IFLA_MTU") or 0,
                mac=mac if mac and len(mac) == 6 else None,
                up=bool(link["flags"] & 1),
                addresses=tuple(addrs),
            )
        )
    return result


# ----------------------------------------------------------------------------------------------
# raw mode: keep the kernel off the VIP traffic fwd handles


def _collapse(nets: Iterable[native.IPNetwork]) -> list[native.IPNetwork]:
    return list(ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]


def nft_elements(binds: Sequence[native.BindSpec], forward_icmp_echo: bool) -> dict[str, list[str]]:
    """Set elements by set name, formatted from validated ipaddress/int values only.

    vip: prefix . proto . dport range (TCP/UDP to a bind); frag: prefix . proto (fragments: the core
    sends any fragment whose destination and protocol match a bind); echo: prefixes (ICMP echo
    requests, only when forwarded). ICMP errors are left to the kernel as well as forwarded.
    """
    sets: dict[str, list[str]] = {f"{k}{v}": [] for k in ("vip", "frag", "echo") for v in (4, 6)}
    for v in (4, 6):
        mine = [b for b in binds if b.prefix.version == v]
        for b in mine:
            ports = f"{int(b.port_lo)}-{int(b.port_hi)}"
            sets[f"vip{v}"].append(f"{b.prefix} . {b.proto} . {ports}")
        for proto in ("tcp", "udp"):
            for net in _collapse(b.prefix for b in mine if b.proto == proto):
                sets[f"frag{v}"].append(f"{net} . {proto}")
        if forward_icmp_echo:
            sets[f"echo{v}"] = [str(net) for net in _collapse(b.prefix for b in mine)]
    return sets


def _set_decl(name: str, elements: list[str]) -> str:
    v = name[-1]
    addr = "ipv4_addr" if v == "4" else "ipv6_addr"
    kind = {"vip": f"{addr} . inet_proto . inet_service", "frag": f"{addr} . inet_proto", "echo": addr}[
        name[:-1]
    ]
    body = f"type {kind}; flags interval;"
    if elements:
        body += " elements = { " + ", ".join(elements) + " };"
    return f"  set {name} {{ {body} }}\n"


def _chain_name(iface: Interface) -> str:
    return "in_" + re.sub(r"[^A-Za-z0-9_]", "_", iface.name) + f"_{iface.ifindex}"


RULES = (
    "meta protocol ip ip frag-off & 0x3fff != 0 ip daddr . meta l4proto @frag4 counter drop",
    "meta protocol ip ip daddr . meta l4proto . th dport @vip4 counter drop",
    "meta protocol ip icmp type echo-request ip daddr @echo4 counter drop",
    "meta protocol ip6 exthdr frag exists ip6 daddr . meta l4proto @frag6 counter drop",
    "meta protocol ip6 ip6 daddr . meta l4proto . th dport @vip6 counter drop",
    "meta protocol ip6 icmpv6 type echo-request ip6 daddr @echo6 counter drop",
)


class NftGuard:
    """The ``netdev fwd_raw`` table: one ingress chain per interface, rules over six sets."""

    def __init__(self, interfaces: Sequence[Interface], log: logging.Logger) -> None:
        self.interfaces = list(interfaces)
        self.log = log
        self.installed = False
        nft = shutil.which("nft") or next(
            (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
        )
        if nft is None:
            raise LiveError(
                "raw mode needs the nft command (nftables) to keep the kernel off the VIP traffic"
            )
        self.nft = nft

    def _run(self, script: str, what: str) -> None:
        p = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            detail = " ".join((p.stderr or p.stdout).split())[:400]
            raise LiveError(f"nftables: cannot {what}: {detail}")

    def existing(self) -> dict[str, Any] | None:
        """The fwd_raw table of this network namespace, if any: {"owner": pid or None}.

        The owner is read from the rules' comments ("fwd pid N"): nft's JSON output carries
        rule comments but not table comments.
        """
        p = subprocess.run(
            [self.nft, "-j", "list", "table", "netdev", NFT_TABLE], capture_output=True, text=True, timeout=30
        )
        if p.returncode != 0:
            return None
        owner = None
        try:
            for e in json.loads(p.stdout)["nftables"]:
                owner = owner or _owner_pid(str(e.get("rule", {}).get("comment", "")))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return {"owner": owner}

    def check_owner(self) -> dict[str, Any] | None:
        """Refuse when a running fwd owns the table; returns the table found (None: none)."""
        old = self.existing()
        if old is not None:
            owner = old["owner"]
            if owner and owner != os.getpid() and _is_fwd(owner):
                raise LiveError(
                    f"nftables table netdev {NFT_TABLE} belongs to a running fwd (pid {owner}): "
                    "one raw-mode fwd per network namespace"
                )
        return old

    def install(self, binds: Sequence[native.BindSpec], forward_icmp_echo: bool) -> None:
        old = self.check_owner()
        prefix = ""
        if old is not None:
            owner = old["owner"]
            by = f" (pid {owner})" if owner else ""
            self.log.warning(
                "replacing the stale nftables table netdev %s left by an earlier run%s", NFT_TABLE, by
            )
            # declaring it first makes the delete valid; all of it is one transaction
            prefix = f"table netdev {NFT_TABLE}\ndelete table netdev {NFT_TABLE}\n"
        sets = nft_elements(binds, forward_icmp_echo)
        script = prefix + f'table netdev {NFT_TABLE} {{\n  comment "fwd pid {os.getpid()}"\n'
        for name, elements in sets.items():
            script += _set_decl(name, elements)
        for iface in self.interfaces:
            script += f"  chain {_chain_name(iface)} {{\n"
            hook = f'type filter hook ingress device "{iface.name}" priority {NFT_PRIORITY}'
            script += f"    {hook}; policy accept;\n"
            for rule in RULES:
                script += f'    {rule} comment "fwd pid {os.getpid()}"\n'
            script += "  }\n"
        script += "}\n"
        self._run(script, f"install table netdev {NFT_TABLE}")
        self.installed = True

    def update(self, binds: Sequence[native.BindSpec], forward_icmp_echo: bool) -> None:
        """Replace the sets' elements in one transaction (the chains stay hooked)."""
        script = ""
        for name, elements in nft_elements(binds, forward_icmp_echo).items():
            script += f"flush set netdev {NFT_TABLE} {name}\n"
            if elements:
                script += f"add element netdev {NFT_TABLE} {name} {{ {', '.join(elements)} }}\n"
        self._run(script, f"update table netdev {NFT_TABLE}")

    def remove(self) -> None:
        if not self.installed:
            return
        p = subprocess.run(
            [self.nft, "delete", "table", "netdev", NFT_TABLE], capture_output=True, text=True, timeout=30
        )
        if p.returncode != 0 and self.existing() is not None:
            raise LiveError(f"nftables: cannot delete table netdev {NFT_TABLE}: {' '.join(p.stderr.split())}")
        self.installed = False

    def dropped(self) -> int:
        """Packets the table dropped so far (sum of the rule counters)."""
        p = subprocess.run(
            [self.nft, "-j", "list", "table", "netdev", NFT_TABLE], capture_output=True, text=True, timeout=30
        )
        total = 0
        if p.returncode == 0:
            for e in json.loads(p.stdout).get("nftables", []):
                for x in e.get("rule", {}).get("expr", []):
                    if "counter" in x:
                        total += int(x["counter"].get("packets", 0))
        return total


def _owner_pid(comment: str) -> int | None:
    m = re.fullmatch(r"fwd pid (\d+)", comment.strip())
    return int(m.group(1)) if m else None


def _is_fwd(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"fwd") or b"fwd.cli" in part or part == b"run" for part in cmdline[:3])


# ----------------------------------------------------------------------------------------------
# the live data plane


def _binds_of(cfg: Config) -> list[native.BindSpec]:
    return [
        native.BindSpec(b.prefix, b.proto, b.port_lo, b.port_hi, tuple(b.hash_fields), t)
        for t, table in enumerate(cfg.tables)
        for b in table.binds
    ]


def _xdp_prog_ids(ifindexes: Sequence[int]) -> dict[int, int]:
    """The id of the XDP program attached to each interface (netlink IFLA_XDP)."""

    async def look(ipr: Any) -> dict[int, int]:
        out = {}
        for index in ifindexes:
            with contextlib.suppress(NetlinkError, IndexError):
                xdp = (await ipr.link("get", index=index))[0].get("IFLA_XDP")
                prog = xdp.get("IFLA_XDP_PROG_ID") if xdp is not None else None
                if prog:
                    out[index] = int(prog)
        return out

    try:
        return run_netlink(look)
    except (OSError, NetlinkError):
        return {}


def _backend_addresses(tables: Iterable[Any], *, inactive: bool = False) -> list[IPAddress]:
    """Backends that can be in a row (inactive ones never are, unless asked for), config order."""
    return [b.address for t in tables for b in t.backends if inactive or b.state != "inactive"]


def _table_identity(t: Any) -> tuple[object, ...]:
    return (t.name, bytes(t.seed), bytes(t.hash_key), t.glb_compat)


class LiveDataplane:
    def __init__(
        self,
        cfg: Config,
        interfaces: Sequence[str],
        mode: str = "auto",
        *,
        xsk_mode: str = "auto",
        busy_poll: bool = False,
        rx_holdoff_us: int = 0,
        tunnel_src: Sequence[IPAddress] = (),
        log: logging.Logger | None = None,
        nexthop_wait: float = NEXTHOP_WAIT,
        poll_ms: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise LiveError(f"bad mode {mode!r} (expected one of: {', '.join(MODES)})")
        if xsk_mode not in XSK_MODES:
            raise LiveError(f"bad AF_XDP bind mode {xsk_mode!r} (expected one of: {', '.join(XSK_MODES)})")
        self.cfg = cfg
        self.interface_names = list(interfaces)
        self.mode = mode
        self.xsk_mode = xsk_mode
        self.busy_poll = busy_poll
        self.rx_holdoff_us = rx_holdoff_us
        self.tunnel_src = {a.version: a for a in tunnel_src}
        self.log = log or logging.getLogger("fwd.live")
        self.nexthop_wait = nexthop_wait
        # idle workers' housekeeping period (None: the C default, FWD_POLL_MS); a publication
        # wakes them whatever it is - tests set it very large to show that
        self.poll_ms = poll_ms
        self.tables = [ForwardingTable.from_config(t) for t in cfg.tables]
        self.binds = _binds_of(cfg)
        self.interfaces: list[Interface] = []
        self.mode_used: str | None = None
        self.fallback_reason: str | None = None
        self.workers: list[str] = []
        self.hops: dict[IPAddress, NextHop] = {}
        self.node = native.NodeSpec()
        self._tunnel_why: dict[int, str] = {}
        self._lock = threading.RLock()
        self._rt: Any = None
        self._steers: dict[str, Any] = {}
        self._nft: NftGuard | None = None
        self._nh: NextHopThread | None = None
        self._gen = 0
        self._final: Any = None
        self._final_ports: list[tuple[str, native.PortStats]] = []
        self._started = False
        self._stopped = False
        self._mtu_warned: set[str] = set()
        # per table: (the hops map, its addresses, its next-hop entries), see _set_nexthops
        self._nh_entries: dict[int, tuple[Any, tuple[IPAddress, ...], list[Any]]] = {}
        self._offloads: dict[str, list[str]] = {}  # receive offloads raw mode turned off

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                raise LiveError("the data plane is already started")
            self._started = True
            self.interfaces = interfaces_info(self.interface_names)
            check_privileges(self.mode)
            for iface in self.interfaces:
                if not iface.up:
                    self.log.warning("interface %s is down: nothing will arrive until it is up", iface.name)
            try:
                self._nh = NextHopThread(self._on_nexthops, self.log)
                # inactive backends too: set_backends() may rank them later without a lookup
                self.hops = self._nh.resolve(
                    _backend_addresses(self.tables, inactive=True), self.nexthop_wait
                )
                self.node = self._node_spec(initial=True)
                if self.mode == "raw":
                    self._start_raw()
                elif self.mode == "xdp":
                    self._start_xdp()
                else:
                    try:
                        self._start_xdp()
                    except LiveError as e:
                        self.fallback_reason = str(e).removeprefix("xdp mode: ")
                        self._teardown_backend()
                        self.log.warning(
                            "xdp mode unavailable (%s): falling back to raw sockets", self.fallback_reason
                        )
                        self._start_raw()
                self._nh.start_watching()
            except BaseException:
                self.stop()
                raise

    def _backend_addresses(self) -> list[IPAddress]:
        return _backend_addresses(self.tables)

    def _node_spec(self, initial: bool = False) -> native.NodeSpec:
        """Node settings: tunnel sources from the CLI, the config, else the egress interfaces."""
        node = self.cfg.node
        given = {4: node.tunnel_source, 6: node.tunnel_source6}
        given.update(self.tunnel_src)
        chosen: dict[int, IPAddress | None] = {}
        for v in (4, 6):
            if given.get(v) is not None:
                chosen[v] = given[v]
                continue
            addr, why = self._derive_source(v)
            chosen[v] = addr
            if addr is not None and self._tunnel_why.get(v) != f"{addr} {why}":
                self.log.info("tunnel source IPv%d: %s (%s)", v, addr, why)
                self._tunnel_why[v] = f"{addr} {why}"
            if addr is None and initial and any(a.version == v for a in self._backend_addresses()):
                where = "set [node] tunnel_source%s in the config, " % ("" if v == 4 else "6")
                raise LiveError(
                    f"no IPv{v} tunnel source: no route to an IPv{v} backend and no IPv{v} address on "
                    f"{', '.join(self.interface_names)}; {where if self.cfg.format == 'toml' else ''}"
                    f"pass --tunnel-src IPV{v}_ADDRESS"
                )
        return native.NodeSpec(
            tunnel_src4=chosen[4],  # type: ignore[arg-type]
            tunnel_src6=chosen[6],  # type: ignore[arg-type]
            mtu=node.mtu,
            forward_icmp_echo=node.forward_icmp_echo,
        )

    def _derive_source(self, version: int) -> tuple[IPAddress | None, str]:
        for addr in self._backend_addresses():
            h = self.hops.get(addr)
            if addr.version == version and h is not None and h.source is not None:
                return h.source, f"primary address of {h.ifname}, the egress towards {addr}"
        for iface in self.interfaces:
            for a in iface.addresses:
                if a.version == version:
                    return a, f"primary address of {iface.name}"
        return None, ""

    def _start_raw(self) -> None:
        nft = NftGuard(self.interfaces, self.log)
        nft.check_owner()  # before any socket: a second fwd must not forward a single frame
        for iface in self.interfaces:
            # GRO/LRO merge TCP segments before the tap: fwd would see 64 KiB frames that do not
            # fit the MTU once encapsulated. Off while fwd runs, back on at stop.
            try:
                was_on = offloads_off(iface.name)
            except Exception as e:
                self.log.warning(
                    "raw: %s: cannot turn off GRO/LRO (%s): merged frames may be refused", iface.name, e
                )
                continue
            if was_on:
                self._offloads[iface.name] = was_on
                self.log.info(
                    "raw: %s: turned off %s (frames must reach fwd as they were on the wire); "
                    "turned back on at stop",
                    iface.name,
                    ", ".join(was_on),
                )
        rt = native.runtime_new()
        self._rt = rt
        if self.poll_ms is not None:
            native.runtime_set_poll_ms(rt, self.poll_ms)
        try:
            for iface in self.interfaces:
                for q in range(iface.rx_queues):
                    native.runtime_add_raw(rt, iface.name)
                    self.workers.append(f"raw:{iface.name}:{q}")
            self._publish_locked()
            native.runtime_start(rt)
        except native.NativeError as e:
            raise LiveError(f"raw mode: {e}") from None
        self._nft = nft
        nft.install(self.binds, self.cfg.node.forward_icmp_echo)
        self.mode_used = "raw"
        for iface in self.interfaces:
            n = iface.rx_queues
            self.log.info(
                "raw: %s (ifindex %d): %d worker%s (one per rx queue), AF_PACKET TPACKET_V3, fanout hash",
                iface.name,
                iface.ifindex,
                n,
                "" if n == 1 else "s",
            )
        self.log.info(
            "raw: nftables table netdev %s drops the VIP traffic fwd handles at ingress of %s",
            NFT_TABLE,
            ", ".join(i.name for i in self.interfaces),
        )

    def _start_xdp(self) -> None:
        if not STEER_OBJECT.exists():
            raise LiveError(f"the XDP steering program {STEER_OBJECT} is not built (make build)")
        try:
            check_xdp_privileges()
            check_locked_memory(sum(i.rx_queues for i in self.interfaces))
        except LiveError as e:
            raise LiveError(f"xdp mode: {e}") from None
        attach_mode = "zerocopy" if self.xsk_mode == "zerocopy" else "auto"
        rt = native.runtime_new()
        self._rt = rt
        if self.poll_ms is not None:
            native.runtime_set_poll_ms(rt, self.poll_ms)
        try:
            for iface in self.interfaces:
                st = native.steer_attach(str(STEER_OBJECT), iface.name, attach_mode)
                self._steers[iface.name] = st
                native.steer_set_binds(st, self.binds, self.cfg.node.forward_icmp_echo)
                fd = native.steer_xsks_map_fd(st)
                for q in range(iface.rx_queues):
                    native.runtime_add_xsk(
                        rt,
                        iface.name,
                        q,
                        self.xsk_mode,
                        fd,
                        busy_poll=self.busy_poll,
                        holdoff_us=self.rx_holdoff_us,
                    )
                    self.workers.append(f"xsk:{iface.name}:{q}")
            self._publish_locked()
            native.runtime_start(rt)
        except native.NativeError as e:
            raise LiveError(f"xdp mode: {e}") from None
        except AttributeError as e:  # an extension built without the AF_XDP back end
            raise LiveError(f"xdp mode: the C extension lacks the AF_XDP back end ({e})") from None
        self.mode_used = "xdp"
        prog_ids = _xdp_prog_ids([i.ifindex for i in self.interfaces])
        for iface in self.interfaces:
            st = self._steers[iface.name]
            n = iface.rx_queues
            stale = native.steer_replaced_stale(st)
            if stale:
                self.log.warning(
                    "xdp: replaced the stale fwd steering program (id %d) left on %s by an earlier run",
                    stale,
                    iface.name,
                )
            self.log.info(
                "xdp: %s (ifindex %d): steering program id %s attached (%s XDP), %d worker%s "
                "(one AF_XDP socket per rx queue, bind mode %s%s)",
                iface.name,
                iface.ifindex,
                prog_ids.get(iface.ifindex, "?"),
                native.steer_attach_mode(st),
                n,
                "" if n == 1 else "s",
                self.xsk_mode,
                ", busy polling" if self.busy_poll else "",
            )
        if self.rx_holdoff_us:
            self.log.info(
                "xdp: receive holdoff %d us (after a burst smaller than the batch)", self.rx_holdoff_us
            )

    def _teardown_backend(self) -> None:
        """Undo a half-started back end (auto mode's xdp attempt)."""
        if self._rt is not None:
            native.runtime_stop(self._rt)
        for st in self._steers.values():
            native.steer_detach(st)
        self._steers.clear()
        if self._rt is not None:
            native.runtime_free(self._rt)
            self._rt = None
        self.workers.clear()

    # -- publication -----------------------------------------------------------------------

    def publish(self, cfg_or_tables: Config | Sequence[ForwardingTable] | None = None) -> int:
        """Build a snapshot from the current tables (or a new config / new tables) and next hops,
        and publish it. Returns its generation."""
        hops = None
        if isinstance(cfg_or_tables, Config) and self._nh is not None:
            addrs = _backend_addresses(cfg_or_tables.tables, inactive=True)
            known = self.hops
            if all(a in known and known[a].usable for a in addrs):
                self._nh.set_targets(addrs)  # nothing new to look up: the watcher follows them
            else:
                # a new backend: wait (up to NEXTHOP_WAIT) for its neighbour, so that the new
                # table does not start with no_nexthop drops; outside the lock, which the
                # next-hop thread's callback takes
                hops = self._nh.resolve(addrs, wait=self.nexthop_wait)
        with self._lock:
            if self._rt is None or self._stopped:
                raise LiveError("the data plane is not running")
            if isinstance(cfg_or_tables, Config):
                if hops is not None:
                    self.hops = hops
                self._apply_config(cfg_or_tables)
            elif cfg_or_tables is not None:
                tables = list(cfg_or_tables)
                if len(tables) != len(self.cfg.tables):
                    raise LiveError(f"{len(tables)} tables given, the config has {len(self.cfg.tables)}")
                self.tables = tables
            return self._publish_locked()

    def set_backends(self, changes: dict[int, Sequence[Any]]) -> tuple[dict[int, native.UpdateStats], int]:
        """Give some tables new backend lists (incremental updates) and publish one snapshot.

        For state and health changes of the backends the tables already have (the daemon's
        health verdicts): next hops are not looked up again, so a backend that was inactive and
        becomes ranked must come through publish(cfg) instead. Returns the update statistics
        per table index and the published generation."""
        with self._lock:
            if self._rt is None or self._stopped:
                raise LiveError("the data plane is not running")
            stats = {ti: self.tables[ti].set_backends(backends) for ti, backends in changes.items()}
            return stats, self._publish_locked()

    def _apply_config(self, cfg: Config) -> None:
        same = [_table_identity(t) for t in cfg.tables] == [_table_identity(t) for t in self.cfg.tables]
        if same:
            for table, new in zip(self.tables, cfg.tables, strict=True):
                table.set_backends(new.backends)
        else:
            self.tables = [ForwardingTable.from_config(t) for t in cfg.tables]
        binds = _binds_of(cfg)
        echo_changed = cfg.node.forward_icmp_echo != self.cfg.node.forward_icmp_echo
        self.cfg = cfg
        if binds != self.binds or echo_changed:
            self.binds = binds
            if self._nft is not None:
                self._nft.update(binds, cfg.node.forward_icmp_echo)
            for st in self._steers.values():
                native.steer_set_binds(st, binds, cfg.node.forward_icmp_echo)
        self.node = self._node_spec()

    def _publish_locked(self) -> int:
        snap = native.snapshot_new(self.node, self.binds, [t.c_table for t in self.tables])
        self._set_nexthops(snap)
        self._gen = native.runtime_publish(self._rt, snap)
        return self._gen

    def _set_nexthops(self, snap: Any) -> None:
        """Every backend gets its next hop; an unresolved one gets ifindex 0 (no_nexthop).

        A table's (table, backend, spec) list is kept while the next hops and the table's
        addresses stay the same (a health verdict changes neither), and equal specs are one
        object: a publication at 1,000 backends then costs the C calls, not 1,000 lookups."""
        entries: list[tuple[int, int, native.NextHopSpec]] = []
        for ti, table in enumerate(self.tables):
            addrs = tuple(b.address for b in table.backends)
            hit = self._nh_entries.get(ti)
            if hit is not None and hit[0] is self.hops and hit[1] == addrs:
                entries += hit[2]
                continue
            unresolved = native.NextHopSpec(0, bytes(6), bytes(6))
            shared: dict[native.NextHopSpec, native.NextHopSpec] = {}
            mine = []
            for bi, addr in enumerate(addrs):
                spec = self._spec_of(self.hops.get(addr)) or unresolved
                mine.append((ti, bi, shared.setdefault(spec, spec)))
            self._nh_entries[ti] = (self.hops, addrs, mine)
            entries += mine
        native.snapshot_set_nexthops(snap, entries)

    def _spec_of(self, h: NextHop | None) -> native.NextHopSpec | None:
        if h is None or not h.usable:
            return None
        assert h.src_mac is not None and h.dst_mac is not None
        if h.mtu and self.cfg.node.mtu > h.mtu and h.ifname not in self._mtu_warned:
            self._mtu_warned.add(h.ifname)
            self.log.warning(
                "config mtu %d exceeds the MTU %d of %s: larger GUE frames will not leave",
                self.cfg.node.mtu,
                h.mtu,
                h.ifname,
            )
        return native.NextHopSpec(h.ifindex, h.src_mac, h.dst_mac)

    def _on_nexthops(self, hops: dict[IPAddress, NextHop]) -> None:
        """From the next-hop thread: a backend's next hop changed."""
        with self._lock:
            if self._rt is None or self._stopped:
                return
            changed = False
            for addr, h in hops.items():
                old = self.hops.get(addr)
                if old is None or old.key() != h.key():
                    self.log.info("next hop %s", h.describe())
                    changed = True
            if not changed:
                return
            # merge: the map may have been resolved for an older backend set than publish(cfg) set
            self.hops = {**self.hops, **hops}
            self.node = self._node_spec()
            gen = self._publish_locked()
            self.log.info("published generation %d after a next-hop change", gen)

    # -- reading ---------------------------------------------------------------------------

    def generation(self) -> int:
        return self._gen

    def acked_generation(self) -> int:
        with self._lock:
            if self._rt is None:
                return self._gen
            return native.runtime_acked_generation(self._rt)

    def _raw_counters(self) -> Any:
        with self._lock:
            if self._rt is None:
                return self._final if self._final is not None else native.new_counters()
            return native.runtime_counters(self._rt)

    def counters(self) -> Counters:
        c = self._raw_counters()
        return Counters(
            verdicts={name: int(c.verdicts[i]) for i, name in enumerate(native.VERDICTS)},
            drops={name: int(c.drops[i]) for i, name in enumerate(native.DROP_REASONS) if i},
            icmp_replies=int(c.icmp_replies),
            binds=[(int(c.binds[i].packets), int(c.binds[i].bytes)) for i in range(len(self.binds))],
            backends=[
                [
                    (int(c.backends[t][b].packets), int(c.backends[t][b].bytes))
                    for b in range(len(table.backends))
                ]
                for t, table in enumerate(self.tables)
            ],
        )

    def port_stats(self) -> list[tuple[str, native.PortStats]]:
        with self._lock:
            if self._rt is None:
                return list(self._final_ports)
            return [(name, native.runtime_port_stats(self._rt, i)) for i, name in enumerate(self.workers)]

    def steer_counters(self) -> dict[str, tuple[int, int, int]]:
        with self._lock:
            return {name: native.steer_counters(st) for name, st in self._steers.items()}

    def summary(self) -> dict[str, Any]:
        """Counters as plain data (what ``fwd run`` prints)."""
        c = self.counters()
        return {
            "mode": self.mode_used,
            "generation": self._gen,
            "verdicts": c.verdicts,
            "drops": c.drops,
            "icmp_replies": c.icmp_replies,
            "ports": [{"worker": name, **vars(ps)} for name, ps in self.port_stats()],
            "binds": [
                {"index": i, "prefix": str(b.prefix), "proto": b.proto, "packets": p, "bytes": n}
                for i, (b, (p, n)) in enumerate(zip(self.binds, c.binds, strict=True))
            ],
            "backends": [
                {
                    "table": self.cfg.tables[ti].name,
                    "index": bi,
                    "address": str(b.address),
                    "packets": p,
                    "bytes": n,
                }
                for ti, (table, rows) in enumerate(zip(self.tables, c.backends, strict=True))
                for bi, (b, (p, n)) in enumerate(zip(table.backends, rows, strict=True))
            ],
        }

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the workers and remove everything start() installed. Safe to call again."""
        nh = None
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            nh, self._nh = self._nh, None
        if nh is not None:
            nh.stop()  # outside the lock: its callback takes the lock
        with self._lock:
            errors = []
            if self._rt is not None:
                native.runtime_stop(self._rt)
                self._final = native.runtime_counters(self._rt)
                self._final_ports = [
                    (name, native.runtime_port_stats(self._rt, i)) for i, name in enumerate(self.workers)
                ]
            if self._nft is not None:
                try:
                    self._nft.remove()
                except LiveError as e:
                    errors.append(str(e))
            for name, features in self._offloads.items():
                try:
                    offloads_on(name, features)
                    self.log.info("raw: %s: turned %s back on", name, ", ".join(features))
                except Exception as e:  # the interface may be gone
                    errors.append(f"{name}: cannot turn {', '.join(features)} back on: {e}")
            self._offloads.clear()
            for name, st in self._steers.items():
                native.steer_detach(st)
                self.log.info("xdp: steering program detached from %s", name)
            self._steers.clear()
            if self._rt is not None:
                native.runtime_free(self._rt)
                self._rt = None
            if self._nft is not None and not self._nft.installed:
                self.log.info("raw: nftables table netdev %s removed", NFT_TABLE)
            if errors:
                raise LiveError("; ".join(errors))

    def __enter__(self) -> LiveDataplane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
