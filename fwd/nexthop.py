"""Next hops of the backends, from the kernel's routing and neighbour tables (pyroute2 only).

For each backend address: ``route get`` gives the egress interface and whether the backend is
on-link or behind a gateway; the egress interface gives the source MAC (and its primary address
of the backend's family, the default tunnel source); the neighbour table gives the destination
MAC of the gateway or of the backend itself. A missing neighbour entry is created with
``NTF_USE`` (the kernel then resolves it as if it were about to send there: ARP / neighbour
solicitation), and a STALE one is re-confirmed the same way now and then, because frames fwd
sends never pass through the kernel's neighbour code.

:class:`NextHopResolver` is asyncio-native (the daemon runs it as a task); :class:`NextHopThread`
runs it in a thread of its own for synchronous callers (``fwd run``). Both watch netlink
(RTM_NEWNEIGH/DELNEIGH, routes, links, addresses), re-resolve after a change and call back with
the backends whose next hop differs. A neighbour event re-resolves only the backends that use
that neighbour (as gateway or on-link); a route, link or address event, and a periodic pass
every FULL_PASS seconds (events can be lost), re-resolve all. A backend without a usable next hop
maps to a :class:`NextHop` whose ``usable`` is False (with the reason); only those are retried
every second. Within one pass an interface's link, its primary address and a neighbour entry
are each asked once, whatever the number of backends behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_USE,
    NUD_DELAY,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["NextHop", "NextHopResolver", "NextHopThread", "IPAddress", "run_netlink"]

T = TypeVar("T")

RTN_UNICAST = 1
RTN_NAMES = {
    2: "a local address",
    3: "broadcast",
    5: "multicast",
    6: "blackholed",
    7: "unreachable",
    8: "prohibited",
}
ARPHRD_ETHER = 1
IFA_F_SECONDARY = 0x01
IFA_F_TENTATIVE = 0x40
IFA_F_DEPRECATED = 0x20
RT_SCOPE_UNIVERSE = 0
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP
EVENT_GROUPS = (
    RTMGRP_LINK
    | RTMGRP_NEIGH
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
)
DEBOUNCE = 0.05  # seconds between an event and the re-resolution it causes
RETRY = 1.0  # seconds between attempts for backends without a next hop
REFRESH = 20.0  # seconds between re-confirmations of STALE neighbour entries in use
# seconds between passes over every backend without an event asking for one (a lost netlink
# event would otherwise go unnoticed); one costs about a second of CPU at 1,000 backends
FULL_PASS = 120.0
DISCARD_PORT = 9


@dataclass(frozen=True)
class NextHop:
    """Where frames for one backend leave, or why they cannot (``error``)."""

    backend: IPAddress
    ifindex: int = 0
    ifname: str = ""
    gateway: IPAddress | None = None  # None: the backend is on-link
    src_mac: bytes | None = None
    dst_mac: bytes | None = None
    source: IPAddress | None = None  # primary address of the egress interface, backend's family
    mtu: int = 0
    error: str | None = None

    @property
    def usable(self) -> bool:
        return (
            self.error is None and self.ifindex > 0 and self.src_mac is not None and self.dst_mac is not None
        )

    @property
    def neighbour(self) -> IPAddress:
        return self.gateway if self.gateway is not None else self.backend

    def key(self) -> tuple[object, ...]:
        """What the data plane uses: a change here means a new snapshot."""
        return (self.ifindex, self.src_mac, self.dst_mac, self.source, self.mtu, self.usable)

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.backend}: no next hop ({self.error})"
        via = f"via {self.gateway}" if self.gateway is not None else "on-link"
        dst = _mac(self.dst_mac) if self.dst_mac else "unresolved"
        return f"{self.backend}: {via} dev {self.ifname} ({_mac(self.src_mac)} -> {dst})"


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else "-"


def _mac_bytes(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        raw = bytes(int(p, 16) for p in text.split(":"))
    except ValueError:
        return None
    return raw if len(raw) == 6 else None


def _errno_text(e: NetlinkError) -> str:
    code = getattr(e, "code", 0)
    if code == errno.ENETUNREACH:
        return "no route"
    if code == errno.EHOSTUNREACH:
        return "host unreachable"
    return f"route lookup failed: {e}"


@dataclass
class _Pass:
    """What one resolution pass asks the kernel once, however many backends share it."""

    links: dict[int, Any] = field(default_factory=dict)
    sources: dict[tuple[int, int], IPAddress | None] = field(default_factory=dict)
    neighbours: dict[tuple[int, IPAddress], tuple[bytes | None, int]] = field(default_factory=dict)


class NextHopResolver:
    """Resolves next hops over one netlink socket; ``watch`` follows changes (asyncio)."""

    def __init__(self, log: logging.Logger | None = None, *, probe: bool = True) -> None:
        self.log = log or logging.getLogger("fwd.nexthop")
        self.probe = probe
        self._ipr: Any = None
        self._targets: tuple[IPAddress, ...] = ()
        self._target_set: frozenset[IPAddress] = frozenset()
        self.hops: dict[IPAddress, NextHop] = {}
        self._dirty: asyncio.Event | None = None  # created in the loop by watch()
        self._resolving: asyncio.Lock | None = None
        # neighbour -> backends whose next hop uses it (gateway, or the backend on-link)
        self._users: dict[IPAddress, set[IPAddress]] = {}
        self._changed: set[IPAddress] = set()  # backends a neighbour event concerns
        self._everything = False  # a route/link/address event: re-resolve every backend

    async def open(self) -> None:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(groups=0)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def set_targets(self, backends: Iterable[IPAddress]) -> None:
        """The backend addresses to follow (order kept, duplicates dropped)."""
        self._targets = tuple(dict.fromkeys(backends))
        self._target_set = frozenset(self._targets)
        if self._dirty is not None:
            self._everything = True
            self._dirty.set()

    @property
    def targets(self) -> tuple[IPAddress, ...]:
        return self._targets

    # -- one resolution ------------------------------------------------------------------------

    async def resolve_all(self) -> dict[IPAddress, NextHop]:
        """Resolve every target now (probing missing neighbours); stores and returns the map.

        One resolution at a time (the watcher and a caller's resolve() share the loop), each for
        the targets current when it starts.
        """
        return await self._resolve_many(None)

    async def resolve_some(self, backends: Iterable[IPAddress]) -> dict[IPAddress, NextHop]:
        """Resolve these targets again (others keep their entries); returns those whose next
        hop changed (``NextHop.key``), with their new entries."""
        return await self._resolve_many(set(backends))

    async def _resolve_many(self, only: set[IPAddress] | None) -> dict[IPAddress, NextHop]:
        if self._resolving is None:
            self._resolving = asyncio.Lock()
        async with self._resolving:
            await self.open()
            cache = _Pass()
            if only is None:
                hops = {}
                for addr in self._targets:
                    hops[addr] = await self._resolve(addr, cache)
                self.hops = hops
                self._users = {}
                for addr, h in hops.items():
                    self._users.setdefault(h.neighbour, set()).add(addr)
                return hops
            old = self.hops
            new = dict(old)
            changed = {}
            for addr in only & self._target_set:
                h = new[addr] = await self._resolve(addr, cache)
                before = old.get(addr)
                if before is not None and before.neighbour != h.neighbour:
                    self._users.get(before.neighbour, set()).discard(addr)
                self._users.setdefault(h.neighbour, set()).add(addr)
                if before is None or before.key() != h.key():
                    changed[addr] = h
            self.hops = new
            return changed

    async def _resolve(self, addr: IPAddress, cache: _Pass) -> NextHop:
        ipr = self._ipr
        try:
            routes = await ipr.route("get", dst=str(addr))
        except NetlinkError as e:
            return NextHop(addr, error=_errno_text(e))
        if not routes:
            return NextHop(addr, error="no route")
        r = routes[0]
        if r.get("type") != RTN_UNICAST:
            return NextHop(addr, error=f"route type {RTN_NAMES.get(r.get('type'), r.get('type'))}")
        oif = r.get("RTA_OIF") or 0
        gw_text = r.get("RTA_GATEWAY")
        gateway = ipaddress.ip_address(gw_text) if gw_text else None
        if gateway is not None and gateway.version != addr.version:
            return NextHop(addr, ifindex=oif, error=f"gateway {gateway} of another address family")
        link = cache.links.get(oif)
        if link is None:
            try:
                link = (await ipr.link("get", index=oif))[0]
            except (NetlinkError, IndexError):
                return NextHop(addr, ifindex=oif, gateway=gateway, error=f"egress interface {oif} vanished")
            cache.links[oif] = link
        ifname = link.get("IFLA_IFNAME") or str(oif)
        mtu = link.get("IFLA_MTU") or 0
        if link.get("ifi_type") != ARPHRD_ETHER:
            return NextHop(addr, oif, ifname, gateway, error=f"egress interface {ifname} is not Ethernet")
        src_mac = _mac_bytes(link.get("IFLA_ADDRESS"))
        key = (oif, addr.version)
        if key not in cache.sources:
            cache.sources[key] = await self._primary_address(oif, addr.version)
        source = cache.sources[key]
        if source is None:
            pref = r.get("RTA_PREFSRC")
            source = ipaddress.ip_address(pref) if pref else None
        hop = NextHop(addr, oif, ifname, gateway, src_mac, None, source, mtu)
        neigh = hop.neighbour
        found = cache.neighbours.get((oif, neigh))
        if found is None:
            found = cache.neighbours[(oif, neigh)] = await self._neighbour(oif, neigh)
            dst_mac, state = found
            if dst_mac is None or not state & NUD_USABLE:
                await self._probe(oif, neigh, addr)  # once per neighbour and pass
        dst_mac, state = found
        if dst_mac is None or not state & NUD_USABLE:
            return NextHop(addr, oif, ifname, gateway, src_mac, None, source, mtu)
        return NextHop(addr, oif, ifname, gateway, src_mac, dst_mac, source, mtu)

    async def _primary_address(self, ifindex: int, version: int) -> IPAddress | None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        best = None
        async for a in await self._ipr.addr("dump", family=family, index=ifindex):
            flags = a.get("IFA_FLAGS") or a.get("flags") or 0
            if a.get("scope") != RT_SCOPE_UNIVERSE or flags & (IFA_F_SECONDARY | IFA_F_TENTATIVE):
                continue
            text = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
            if not text:
                continue
            addr = ipaddress.ip_address(text)
            if best is None and not flags & IFA_F_DEPRECATED:
                best = addr
        return best

    async def _neighbour(self, ifindex: int, addr: IPAddress) -> tuple[bytes | None, int]:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        try:
            found = await self._ipr.neigh("get", dst=str(addr), ifindex=ifindex, family=family)
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None, 0
            # RTM_GETNEIGH for one entry is recent (Linux 5.x): search a dump instead
            found = [
                n
                async for n in await self._ipr.neigh("dump", ifindex=ifindex, family=family)
                if n.get("NDA_DST") and ipaddress.ip_address(n.get("NDA_DST")) == addr
            ]
        for n in found:
            return _mac_bytes(n.get("NDA_LLADDR")), n.get("state") or 0
        return None, 0

    async def _probe(self, ifindex: int, neigh: IPAddress, backend: IPAddress) -> None:
        """Make the kernel resolve ``neigh`` (NTF_USE); a UDP datagram to discard if that fails."""
        if not self.probe:
            return
        family = socket.AF_INET if neigh.version == 4 else socket.AF_INET6
        try:
            await self._ipr.neigh("replace", dst=str(neigh), ifindex=ifindex, family=family, flags=NTF_USE)
            return
        except NetlinkError as e:
            self.log.debug("NTF_USE for %s failed (%s): sending a UDP probe", neigh, e)
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(b"", (str(backend), DISCARD_PORT))

    async def refresh_stale(self) -> None:
        """Ask the kernel to re-confirm neighbour entries in use that are STALE now.

        One neighbour dump per interface and family in use (not one request per backend), so
        an entry that went STALE without telling anyone is found too.
        """
        if not self.probe:
            return
        in_use: dict[tuple[int, int], set[IPAddress]] = {}
        for h in self.hops.values():
            if h.usable:
                in_use.setdefault((h.ifindex, h.neighbour.version), set()).add(h.neighbour)
        for (ifindex, version), neighbours in in_use.items():
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            stale = []
            async for n in await self._ipr.neigh("dump", ifindex=ifindex, family=family):
                state = n.get("state") or 0
                dst = n.get("NDA_DST")
                # only entries STALE right now: NTF_USE also clears NUD_PERMANENT (Linux >= 5.16),
                # and an administrator's permanent entry must stay as it is
                if not state & NUD_STALE or state & (NUD_PERMANENT | NUD_NOARP) or not dst:
                    continue
                if n.get("ifindex") == ifindex and ipaddress.ip_address(dst) in neighbours:
                    stale.append(dst)
            for dst in stale:
                with contextlib.suppress(NetlinkError):
                    await self._ipr.neigh("replace", dst=dst, ifindex=ifindex, family=family, flags=NTF_USE)

    async def wait_resolved(self, timeout: float) -> dict[IPAddress, NextHop]:
        """Resolve, then retry every 10 ms until every routable backend has a MAC or time is up."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        await self.resolve_all()
        while loop.time() < end:
            waiting = [a for a, h in self.hops.items() if h.error is None and not h.usable]
            if not waiting:
                break
            await asyncio.sleep(0.01)
            await self.resolve_some(waiting)
        return self.hops

    # -- following changes ---------------------------------------------------------------------

    async def watch(self, on_change: Callable[[dict[IPAddress, NextHop]], None]) -> None:
        """Run until cancelled: re-resolve on netlink events, retry unresolved, refresh stale.

        ``on_change`` is called (in this task) with the backends whose next hop differs from
        the previous resolution, and their new next hops (``self.hops`` has them all).
        """
        await self.open()
        self._dirty = asyncio.Event()
        events = AsyncIPRoute(groups=0)
        await events.bind(groups=EVENT_GROUPS)
        reader = asyncio.create_task(self._read_events(events))
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + REFRESH
        next_retry = loop.time() + RETRY
        next_full = loop.time() + FULL_PASS
        try:
            while True:
                pending = any(not h.usable for h in self.hops.values())
                until = min(next_refresh, next_full, next_retry if pending else next_full)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), max(0.01, until - loop.time()))
                if reader.done():
                    reader.result()  # re-raise a dead reader's error
                self._dirty.clear()
                await asyncio.sleep(DEBOUNCE)  # let a burst of events settle
                self._dirty.clear()
                now = loop.time()
                everything, self._everything = self._everything, False
                some, self._changed = self._changed, set()
                if now >= next_refresh:
                    await self.refresh_stale()
                    next_refresh = loop.time() + REFRESH
                if now >= next_full:
                    everything = True  # now and then all of them: an event may have been lost
                if everything:
                    next_full = loop.time() + FULL_PASS
                if everything:
                    before = {a: h.key() for a, h in self.hops.items()}
                    hops = await self.resolve_all()
                    changed = {a: h for a, h in hops.items() if before.get(a) != h.key()}
                else:
                    if now >= next_retry:
                        some |= {a for a, h in self.hops.items() if not h.usable}
                    changed = await self.resolve_some(some) if some else {}
                if now >= next_retry:
                    next_retry = loop.time() + RETRY
                if changed:
                    on_change(changed)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            events.close()

    async def _read_events(self, events: Any) -> None:
        neighbour_events = {"RTM_NEWNEIGH", "RTM_DELNEIGH"}
        while True:
            async for msg in events.get():
                if msg.get("event") in neighbour_events:
                    users = self._users_of(msg.get("NDA_DST"))
                    if not users:
                        continue
                    self._changed |= users
                else:
                    self._everything = True
                assert self._dirty is not None
                self._dirty.set()

    def _users_of(self, text: str | None) -> set[IPAddress]:
        """The backends whose next hop goes through neighbour ``text`` (or that are it)."""
        if not text:
            return set()
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return set()
        users = self._users.get(addr, set())
        if addr in self._target_set:
            users = users | {addr}
        return users


def in_thread(fn: Callable[[], T], name: str) -> T:
    """fn() on a thread of its own, its result or exception handed back: pyroute2 must not meet
    the caller's running (uv)loop."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def run_netlink(coro_factory: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``coro_factory(AsyncIPRoute)`` to completion on a selector event loop in a thread of
    its own: callable from anywhere, also from inside a running (uv)loop."""

    async def main() -> T:
        ipr = AsyncIPRoute(groups=0)
        try:
            return await coro_factory(ipr)
        finally:
            ipr.close()

    def run() -> T:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(main())

    return in_thread(run, "fwd-netlink")


class NextHopThread:
    """A NextHopResolver on an event loop of its own, for synchronous callers.

    ``on_change`` runs in the resolver's thread.
    """

    def __init__(
        self,
        on_change: Callable[[dict[IPAddress, NextHop]], None],
        log: logging.Logger | None = None,
        *,
        probe: bool = True,
    ) -> None:
        self.log = log or logging.getLogger("fwd.nexthop")
        self.resolver = NextHopResolver(self.log, probe=probe)
        self._on_change = on_change
        # pyroute2's asyncio core needs datagram endpoints on AF_NETLINK, which uvloop lacks:
        # a plain selector loop whatever the process's policy (the daemon runs uvloop)
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name="fwd-nexthop", daemon=True)
        self._watch: Future[None] | None = None
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def resolve(self, backends: Iterable[IPAddress], wait: float = 1.0) -> dict[IPAddress, NextHop]:
        """Set the targets and resolve them now, waiting up to ``wait`` s for neighbours."""
        targets = tuple(backends)

        async def go() -> dict[IPAddress, NextHop]:
            self.resolver.set_targets(targets)
            return await self.resolver.wait_resolved(wait)

        return dict(self._call(go()))

    def set_targets(self, backends: Iterable[IPAddress]) -> None:
        targets = tuple(backends)
        self._loop.call_soon_threadsafe(self.resolver.set_targets, targets)

    def start_watching(self) -> None:
        if self._watch is None:
            self._watch = asyncio.run_coroutine_threadsafe(self._watch_forever(), self._loop)

    async def _watch_forever(self) -> None:
        while True:
            try:
                await self.resolver.watch(self._changed)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a netlink hiccup must not end next-hop tracking
                self.log.warning("next-hop watcher failed (%s: %s); restarting it", type(e).__name__, e)
                self.resolver.close()
                await asyncio.sleep(RETRY)

    def _changed(self, hops: Mapping[IPAddress, NextHop]) -> None:
        try:
            self._on_change(dict(hops))
        except Exception:
            self.log.exception("publishing after a next-hop change failed")

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._watch is not None:
            self._loop.call_soon_threadsafe(self._watch.cancel)

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.resolver.close()

        with contextlib.suppress(Exception):
            self._call(shutdown(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
