"""The checks themselves: one probe of one backend, as a coroutine on the running event loop.

Everything is non-blocking sockets driven by the loop (uvloop in the daemon): no thread per
check, no blocking call, so thousands of checks share one loop. :class:`Checker` holds what the
checks share (the sockets that receive tunnel-probe answers, TLS contexts) and runs a
:class:`~healthcheck.config.CheckSpec` against an address with a timeout, returning a
:class:`CheckResult` (never raising for a failed check).

* ``tcp``   — half-open (the default, healthcheck/halfopen.py): a SYN from a raw socket passes
  on the SYN-ACK, no connection is made; needs CAP_NET_RAW, else (and with ``mode = "connect"``)
  the connection is established (then reset: no TIME_WAIT on the checker).
* ``http``  — GET ``uri`` with ``Host``; passes when the status line carries the expected
  status. By default on a kept connection (below). ``https`` is the same over TLS, optionally
  without verification, also on a kept connection (one TLS handshake per connection).
* ``gue``   — the GUE tunnel probe (below); ``fou`` is GLB's legacy GRE-in-UDP variant of it.

Kept HTTP connections
---------------------
With ``reuse_connection`` (the default; Envoy's HTTP health checker and Go's http.Client, which
glb-healthcheck uses, do the same) an http check keeps one HTTP/1.1 connection per backend
and sends each check's GET on it: two system calls per check (send, and one read at the next
tick) instead of a handshake and a teardown. So that the next answer is never mixed up with
this one, a check reads exactly one response and frames it (RFC 9112 §6.3): status line and
fields, then a ``Content-Length`` body or a chunked one (extensions and trailers allowed), 204
and 304 without a body, interim 1xx skipped; heads up to 16 KiB, bodies up to 64 KiB are read.
The status alone decides, as on a new connection (a status line that came in time decides even
if the rest of the response did not); the rest only decides whether the connection can be kept.
It is closed — and the next check opens a new one — after a failed check, a timeout,
``Connection: close`` (or HTTP/1.0 without keep-alive), a body ended by the close, bytes after
the response, anything longer than those limits or not clearly framed, and when it is 30 s old
(a new connection then proves again that the server accepts them). Between checks
it waits in the epoll set for input and hang-up: the server's close, a reset, or bytes it sends
on its own (a 408 before it closes) end it before a check could send on it or read those bytes
as its answer; bytes that arrived before the request was sent (their kernel timestamp says so)
are not taken for the answer either. If the kept connection turns out dead when the check uses
it (send fails, or end of stream / reset before any byte of the answer), the check opens one
new connection and sends again; only that outcome counts. The latency of a check on a kept
connection is request to first byte of the answer (no handshake).

GUE tunnel probe
----------------
It proves that the backend *decapsulates* fwd's traffic, not merely that the host is up. The
probe is framed exactly like fwd's data traffic (docs/packet-core.md §4): outer IPv4/IPv6 +
UDP to port 19523 + the 8-byte GUE header (version 0, hlen 1, inner protocol 4 or 41, private
type 0, next hop 0, **hop count 0** — no hop list, so fwd-redirect delivers it locally and never
forwards it) + an inner IP packet:

    inner = ICMP echo request (ICMPv6 for IPv6), source = the checker's address, destination =
    the backend's own address, identifier/sequence/payload = a token unique to this probe.

Why an ICMP echo request (GLB's glb-healthcheck sends the same): after decapsulation the inner
packet is addressed to one of the backend's own addresses, so a plain Linux kernel answers it
by itself — no server, no listening port, no configuration — and the answer (an echo reply from
the backend's address to the checker's) is routed **directly** to the checker, unencapsulated,
exactly as a real reply to a client leaves a backend (DSR). fwd-redirect decapsulates every
non-TCP inner packet locally, so the echo always takes the "decapsulate" path. Echo replies are
not rate-limited by Linux (``icmp_ratemask`` leaves them out), unlike the port-unreachable an
inner UDP probe would rely on; an inner TCP SYN would need a port that listens and would make
the checker's kernel reset the SYN-ACK. Without a decapsulator the outer UDP datagram reaches the
backend's UDP stack, nothing listens on 19523, and the kernel answers "port unreachable": the
probe's connected UDP socket sees ``ECONNREFUSED`` and the check fails at once with that reason
(if the ICMP error is filtered, it fails at the timeout). A backend that is up but does not
decapsulate therefore fails this check even though TCP and HTTP still pass.

The outer IP/UDP headers are written by the kernel: one UDP socket per family and source
address sends every probe (UDP checksum 0 over IPv4 and DF set, as fwd's data traffic; its
ephemeral source port, like fwd's, has the top bit set), with ``IP_RECVERR`` so ICMP errors come
back with the destination they concern. The inner source is the address the kernel's route
lookup picks for the backend (what a connected socket would use, cached for a minute), i.e. the
address the backend routes its answer to. The answers are read from one raw ICMP (and one
ICMPv6) socket per Checker, filtered in the kernel to echo replies and matched by identifier,
token and source address; an answer after the timeout is ignored. Raw sockets need root or
CAP_NET_RAW (the daemon has it); without it a tunnel check fails with that reason.

Cost and latency
----------------
A wake-up of the process costs more than the work of a check (tens of µs in a VM, measured in
bench/bench_healthcheck.py), so the checks' sockets are not registered with the event loop one
by one. They sit in one private epoll set that a :class:`_Poller` harvests once per *tick*
(50 ms, the same grid on which the scheduler starts checks): one wake-up serves every check
that started, completed or timed out in that tick. TCP and HTTP use plain non-blocking sockets
(no Protocol/transport objects), tunnel probes share their sockets. Each step is first tried
directly at the next tick — on a LAN the handshake or the answer is there by then — and only a
socket that is not ready yet is registered with the epoll set: a TCP check is socket, connect,
one ``TCP_INFO`` read (state and RTT), the reset and close; an http check on its kept connection
is one send and one read. Whatever the checks of one spec and
address share (address tuple, request bytes, the tunnel probe's bytes with their checksums
precomputed, so a probe only patches its sequence number and token) is made once per probe
(:meth:`Checker.prepare`); deadlines sit in one FIFO per timeout value. A check's wall time is thus
rounded up to ticks, so its reported *latency* comes from the kernel instead: the handshake's
RTT from ``TCP_INFO`` (tcp), plus the time from sending the request to the arrival of the
first byte of the answer (``SO_TIMESTAMPNS``; http), or from sending the probe to the arrival
of the echo reply (gue). Timeouts are honoured to within a tick, and a tick looks at the
sockets before it expires anything, so an answer that is there in time is never counted as a
timeout. No tick runs while no check is in flight. HTTPS uses asyncio's TLS
transport on the loop (a TLS handshake costs far more than a wake-up), a task per check; its
kept connection follows the same rules (a close or stray bytes while idle are seen by the
protocol, ``_TlsProbe``).

The steady state (lanes)
------------------------
Most checks, once running, are an http GET on a kept connection answered by one complete
response with the expected status, or a tunnel probe answered by its echo reply. For those the
per-check Python (a run object, callbacks, a booking on the tick grid) cost more than the
system calls, so the scheduler hands all the probes due at a grid point to the checker's
*lane* for their kind (``_HttpLane``, ``_TunnelProber.start``), which sends them in one loop
with the state it needs taken straight from the plan; the answers are read in one loop per
tick (the http lane reads its connections first thing at the next tick, before the epoll
harvest), and the passes go back to the scheduler as one batch. The per-check work of a tick
is done in C, one call per tick and lane (``healthcheck._lanes``, built from
native/hc/hc_lanes.c — its own small extension, not fwd's packet core; a slot per plan): the
http lane's sends, and its reads with the framing and timestamps (the framer only says "the
usual answer" when ``_response`` would say so too, and hands everything else back with the
bytes); the tunnel lane's probes (counter and checksums written in C) and the matching of echo
replies where the raw socket is drained (other replies of ours are handed back to the Python
matching of the general runs). A tunnel probe still unanswered after a tick becomes a general
run (``_TunnelProber.settle``), as does one whose destination reports an ICMP error.
Whatever is not that usual case — no kept connection yet or a 30 s old one, the first tunnel
probe of a plan and one a minute (route lookup), a send that fails, no answer by the next tick,
part of one, another status, ``Connection: close``, a close, bytes from before the request, ICMP
errors, timeouts — continues in the general code from where the lane stopped (a ``_TcpRun`` adopting the kept
connection with its request already sent; the tunnel run is the general one), so its outcome
is exactly the general one. ``Checker.fast_passes()`` counts the checks that passed on a lane.
"""

from __future__ import annotations

import _socket  # the C socket type: no Python-level __init__/close per check
import asyncio
import errno
import heapq
import logging
import math
import os
import re
import select
import socket
import ssl
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable
from functools import lru_cache, partial
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, NamedTuple

from healthcheck._lanes import ffi as _ffi
from healthcheck._lanes import lib as _lib
from healthcheck.config import CheckSpec

if TYPE_CHECKING:
    from healthcheck.halfopen import SynProber

__all__ = ["DEFAULT_TICK", "CheckResult", "Checker", "Ticker", "build_tunnel_probe"]

IPAddress = IPv4Address | IPv6Address

log = logging.getLogger("fwd.healthcheck")

# Checks start, and their sockets are harvested, on a grid of this many seconds: every tick is
# a wake-up of the process (tens of µs in a VM), so 20 a second serve any number of checks.
DEFAULT_TICK = 0.05

# Linux constants the socket module may not export.
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1
_SO_NO_CHECK = 11
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0o4000)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then u32 rto ... rcv_ssthresh, rtt
_TCP_ESTABLISHED, _TCP_SYN_SENT, _TCP_CLOSE_WAIT = 1, 2, 8  # tcpi_state, the first byte
_U32 = struct.Struct("I")
_U64 = struct.Struct("!Q")
_TIMESPEC = struct.Struct("qq")
_SOCK_STREAM_NONBLOCK = socket.SOCK_STREAM | _SOCK_NONBLOCK
_ICMP_ECHO_REPLY, _ICMP_ECHO = 0, 8
_ICMP6_ECHO, _ICMP6_ECHO_REPLY = 128, 129
_TOKEN_MAGIC = b"fwd-hc\0\0"
_MAX_STATUS_LINE = 8192
_MAX_HEAD = 16384  # the head of a response read to keep its connection (status line + fields)
_MAX_BODY = 65536  # a longer body is not drained: the connection is closed instead
_REUSE_MAX_AGE = 30.0  # seconds a kept connection serves checks (a new one proves accept works)
_STATUS_LINE = re.compile(rb"HTTP/[0-9.]+[ \t]+([0-9]+)(?:[ \t][^\n]*)?\n")
_USUAL_STATUS = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])[^\r\n]*\r\n")
_FRAMING_FIELDS = re.compile(rb"\n(content-length|connection|transfer-encoding)[ \t]*:([^\n]*)", re.I)
_LINGER_RESET = struct.pack("ii", 1, 0)
_CMSG_TS = socket.CMSG_SPACE(16)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_RAW_RCVBUF = 4 << 20
_SOURCE_TTL = 60.0  # seconds a cached route source address is trusted
_READ_BATCH = 1024  # echo replies matched per C call
_ASYNC_SEND_ERRORS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
_EPOLLIN, _EPOLLOUT, _EPOLLONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
_EPOLLRDHUP = select.EPOLLRDHUP


class CheckResult(NamedTuple):
    """The outcome of one check: passed or not, its latency (seconds, see the module's notes;
    on failure the time until the failure was seen), why it failed (one line), and a short
    detail on success (e.g. ``HTTP 200``). A named tuple: one is made per check, and a frozen
    dataclass costs several times more to make."""

    ok: bool
    latency: float
    error: str | None = None
    detail: str | None = None


class _CheckFailed(Exception):
    """A check failed for a reason its message says in full."""


def _error_text(e: BaseException) -> str:
    if isinstance(e, _CheckFailed):
        return str(e)
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate: {e.verify_message or e.reason}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, OSError):
        if e.errno is not None and e.strerror:
            return f"{e.strerror} ({errno.errorcode.get(e.errno, e.errno)})"
        return str(e) or type(e).__name__
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@lru_cache(maxsize=65536)
def _target(address: IPAddress) -> tuple[int, str]:
    """(socket family, address text) of an address, cached: both are needed on every check."""
    return (socket.AF_INET if address.version == 4 else socket.AF_INET6, str(address))


def _timestamp(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The SO_TIMESTAMPNS arrival time (CLOCK_REALTIME seconds) in recvmsg's ancillary data."""
    for level, typ, data in ancdata:
        if level == socket.SOL_SOCKET and typ == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return sec + nsec * 1e-9
    return None


def _reset_close(sock: socket.socket) -> None:
    """Close with a reset rather than a FIN: no TIME_WAIT left on the checker per check."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


# --------------------------------------------------------------------------------------------
# the tick: one loop timer for everything due on the grid


class Ticker:
    """Runs callbacks on a grid of ``tick`` seconds with a single loop timer.

    ``at(when, cb)`` runs cb at the first grid point >= when (and after the current one);
    everything due at a grid point runs in the same loop iteration — one wake-up. Shared by a
    :class:`Checker` (harvesting sockets) and the scheduler (starting checks).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self.loop = loop
        self.tick = tick
        self.slots: dict[int, list[Callable[[], None]]] = {}
        self.heap: list[int] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_k = -1
        self.firing = False
        self.current = -1  # the grid point being (or last) fired

    def at(self, when: float, cb: Callable[[], None]) -> None:
        tick = self.tick
        k = max(math.ceil(when / tick - 1e-6), math.floor(self.loop.time() / tick) + 1)
        lst = self.slots.get(k)
        if lst is None:
            self.slots[k] = [cb]
            heapq.heappush(self.heap, k)
            if not self.firing and (self.timer is None or k < self.timer_k):
                self._arm(k)
        else:
            lst.append(cb)

    def next(self, cb: Callable[[], None]) -> None:
        self.at(0.0, cb)

    def _arm(self, k: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_k = k
        self.timer = self.loop.call_at(k * self.tick, self._fire)

    def _fire(self) -> None:
        self.timer = None
        limit = (self.loop.time() + self.tick / 2) / self.tick
        heap, slots = self.heap, self.slots
        self.firing = True  # callbacks book later slots; the timer is armed once, below
        try:
            while heap and heap[0] <= limit:
                self.current = k = heapq.heappop(heap)
                for cb in slots.pop(k):
                    try:
                        cb()
                    except Exception:
                        log.exception("health check tick callback failed")
        finally:
            self.firing = False
        if heap:
            self._arm(heap[0])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.slots.clear()
        self.heap.clear()


class _Run:
    """One running check: builds its CheckResult and hands it to ``done`` exactly once.

    Subclasses say what to do at the first tick after the start (``poke``), when epoll finds
    their socket ready (``ready``) and at the deadline (``expire``, only if still unfinished).
    """

    __slots__ = ("t0", "timeout", "deadline", "done", "finished")

    def __init__(self, timeout: float, deadline: float, done: Callable[[CheckResult], None]) -> None:
        self.t0 = time.perf_counter()
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        self.finished = False

    def _give(self, r: CheckResult) -> None:
        if not self.finished:
            self.finished = True
            self.done(r)

    def ok(self, detail: str, latency: float | None) -> None:
        if self.finished:
            return
        self.finished = True
        if latency is None or latency < 0:
            latency = time.perf_counter() - self.t0
        self.done(CheckResult(True, latency, None, detail))

    def fail(self, e: BaseException) -> None:
        self._give(CheckResult(False, time.perf_counter() - self.t0, _error_text(e)))

    def timeout_msg(self, what: str) -> None:
        self._give(
            CheckResult(False, time.perf_counter() - self.t0, f"timeout: {what} within {self.timeout:g} s")
        )

    def poke(self) -> None:
        pass

    def ready(self) -> None:
        pass

    def expire(self) -> None:
        self.timeout_msg("no answer")


class _Poller:
    """The checks' sockets in one private epoll set, harvested once per tick.

    ``add(run)`` books a run's deadline: ``run.expire()`` at the first tick past it (runs with
    the same timeout expire in start order, so a FIFO per timeout value is enough, no heap);
    ``soon(run)`` calls ``run.poke()`` at the next tick, where a check first tries its
    non-blocking step directly — on a LAN the answer is usually there, which saves the epoll
    registration; ``wait(run, fd, events)`` registers fd (one-shot) and calls ``run.ready()``
    at the first tick at which it is ready; ``watch(fd, cb)`` calls cb at every tick at which a
    shared socket is readable. Ticks are requested only while some run is unfinished.
    """

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.loop = ticker.loop
        self.ep = select.epoll()
        self.waiting: dict[int, _Run] = {}
        self.watched: dict[int, Callable[[], None]] = {}
        self.expiring: dict[float, deque[_Run]] = {}
        self.pokes: deque[tuple[int, _Run]] = deque()
        self.keeping: weakref.WeakSet[_TcpPlan | _HttpsPlan] = weakref.WeakSet()  # plans keeping connections
        self.idle: dict[int, _TcpPlan] = {}  # fd of a kept connection between checks -> its plan
        self.http_lane = _HttpLane(self)
        self.tunnel: _TunnelProber | None = None  # its lane's probes are settled after each harvest
        self.harvested = -1  # the tick of the last harvest
        self.scheduled = False

    def add(self, run: _Run) -> None:
        q = self.expiring.get(run.timeout)
        if q is None:
            q = self.expiring[run.timeout] = deque()
        q.append(run)
        if not self.scheduled:
            self.scheduled = True
            self.ticker.next(self._on_tick)

    def soon(self, run: _Run) -> None:
        # tagged with the slot being fired: a run started in this tick is poked at the next one
        self.pokes.append((self.ticker.current, run))

    def wait(self, run: _Run, fd: int, events: int, registered: bool) -> None:
        if registered:
            self.ep.modify(fd, events | _EPOLLONESHOT)
        else:
            self.ep.register(fd, events | _EPOLLONESHOT)
        self.waiting[fd] = run

    def forget(self, fd: int, run: _Run) -> None:
        """fd is about to be closed (closing removes it from the epoll set)."""
        if self.waiting.get(fd) is run:
            del self.waiting[fd]

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.ep.register(fd, _EPOLLIN)
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self.watched.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def harvest(self) -> None:
        """Everything the epoll set has ready: runs waiting, shared sockets, kept connections."""
        self.harvested = self.ticker.current
        waiting, watched, idle = self.waiting, self.watched, self.idle
        while True:
            ready = self.ep.poll(0, 1024)
            for fd, _ in ready:
                run = waiting.pop(fd, None)
                if run is not None:
                    if not run.finished:
                        run.ready()
                    continue
                plan = idle.get(fd)
                if plan is not None:
                    plan.idle_event()
                    continue
                cb = watched.get(fd)
                if cb is not None:
                    cb()
            if len(ready) < 1024:
                break

    def _on_tick(self) -> None:
        self.scheduled = False
        pokes, now_k = self.pokes, self.ticker.current
        lane = self.http_lane
        if lane.batches:
            lane.read(now_k)
        while pokes and pokes[0][0] < now_k:
            run = pokes.popleft()[1]
            if not run.finished:
                run.poke()
        self.harvest()
        tunnel = self.tunnel
        if tunnel is not None and tunnel.batches:
            tunnel.settle(now_k)  # probes still unanswered after a tick: to the general path
        now = self.loop.time()
        busy = bool(pokes) or bool(lane.batches) or (tunnel is not None and bool(tunnel.batches))
        for q in self.expiring.values():
            # finished runs leave from the front too: once every run is done, no more ticks
            while q and (q[0].finished or q[0].deadline <= now):
                run = q.popleft()
                if not run.finished:
                    run.expire()
            busy = busy or bool(q)
        if busy and not self.scheduled:
            self.scheduled = True
            self.ticker.next(self._on_tick)

    def ensure_tick(self) -> None:
        """A tick is to come (something is in flight)."""
        if not self.scheduled:
            self.scheduled = True
            self.ticker.next(self._on_tick)

    def close(self) -> None:
        for plan in tuple(self.keeping):
            plan.close()
        for batch in self.http_lane.batches:  # requests of the last tick, unread
            for entry in batch[2]:
                _reset_close(entry[2])
        self.http_lane.batches.clear()
        self.expiring.clear()
        self.pokes.clear()
        self.waiting.clear()
        self.ep.close()


# --------------------------------------------------------------------------------------------
# TCP and HTTP


def _http_request(spec: CheckSpec, address: IPAddress) -> bytes:
    if spec.host:
        host = spec.host
    else:
        host = f"[{address}]" if address.version == 6 else str(address)
        if spec.port != (443 if spec.kind == "https" else 80):
            host = f"{host}:{spec.port}"
    # a kept connection says nothing (HTTP/1.1 keeps it by default); otherwise ask for the close
    close = "" if spec.reuse_connection else "Connection: close\r\n"
    return (
        f"GET {spec.uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fwd-healthcheck\r\n"
        f"Accept: */*\r\n{close}\r\n"
    ).encode("latin-1")


def _status_of(buf: bytes, start: int = 0) -> int | None:
    """The status code once buf holds the status line starting at start; None while it is
    incomplete."""
    m = _STATUS_LINE.match(buf, start)
    if m is not None:  # the usual line, without decoding it
        return int(m[1])
    end = buf.find(b"\n", start)
    if end < 0:
        if len(buf) - start > _MAX_STATUS_LINE:
            raise _CheckFailed("no HTTP status line in the first 8 KiB")
        return None
    line = buf[start:end].rstrip(b"\r").decode("latin-1")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _CheckFailed(f"not an HTTP status line: {line[:60]!r}")
    return int(parts[1])


def _head_end(buf: bytes, start: int) -> int:
    """Index just past the empty line that ends the head starting at start; -1 if not there yet
    (lines end with CRLF, or a bare LF, which RFC 9112 lets a recipient accept)."""
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    if lf < 0 or crlf < lf:
        return crlf + 3
    return lf + 2


def _chunked_end(buf: bytes, p: int) -> int | None:
    """Index just past a chunked body starting at p (trailers included); None while incomplete,
    -1 if it cannot be framed or is longer than _MAX_BODY."""
    start = p
    while True:
        nl = buf.find(b"\n", p)
        if nl < 0:
            return -1 if len(buf) - p > 1024 else None
        size_field = buf[p:nl].split(b";", 1)[0].strip()  # chunk extensions are ignored
        if not size_field or len(size_field) > 8 or size_field.strip(b"0123456789abcdefABCDEF"):
            return -1
        size = int(size_field, 16)
        p = nl + 1
        if size == 0:
            break
        if p + size - start > _MAX_BODY:
            return -1
        if len(buf) < p + size + 1:
            return None
        c = buf[p + size]
        if c == 0x0A:
            p += size + 1
        elif c == 0x0D:
            if len(buf) < p + size + 2:
                return None
            if buf[p + size + 1] != 0x0A:
                return -1
            p += size + 2
        else:
            return -1
    while True:  # trailer fields, up to an empty line
        nl = buf.find(b"\n", p)
        if nl < 0:
            return -1 if len(buf) - p > _MAX_HEAD else None
        line, p = buf[p:nl], nl + 1
        if line == b"" or line == b"\r":
            return p


def _response(buf: bytes, frame: bool) -> tuple[int, int | None] | None:
    """The response at the start of buf, read to be able to send the next request on the same
    connection. None until the final status line is complete; then (status, end): end is the
    index just past the whole response, None while the rest of it is still to come, or -1 when
    this connection cannot carry another request — ``frame`` False (only the status is wanted),
    ``Connection: close``, HTTP/1.0 without keep-alive, a body delimited by the close, a head or
    body over the limits, or framing that is not clear (RFC 9112 §6.3). Interim 1xx responses
    are skipped. Raises _CheckFailed for an answer that is not HTTP."""
    if frame:  # the usual answer first: HTTP/1.1, CRLFs, a Content-Length, maybe keep-alive
        m = _USUAL_STATUS.match(buf)
        if m is not None and m[1] != b"204" and m[1] != b"304":  # those two have no body
            head = buf.find(b"\r\n\r\n", m.end() - 2)
            if head >= 0:
                end, n = head + 4, -1
                for name, value in _FRAMING_FIELDS.findall(buf, m.end() - 2, end):
                    name = name.lower()
                    if name == b"content-length" and n == -1 and value.strip().isdigit():
                        n = int(value)
                    elif name != b"connection" or value.strip().lower() != b"keep-alive":
                        n = -2
                        break
                if 0 <= n <= _MAX_BODY:
                    n += end
                    return int(m[1]), (n if len(buf) >= n else None)
    return _response_general(buf, frame)


def _response_general(buf: bytes, frame: bool) -> tuple[int, int | None] | None:
    pos = 0
    while True:
        status = _status_of(buf, pos)
        if status is None:
            return None
        interim = 100 <= status < 200 and status != 101
        if not (frame or interim):
            return status, -1
        end = _head_end(buf, pos)
        if end < 0:
            if len(buf) - pos > _MAX_HEAD:
                return (status, -1) if not interim else None
            return None if interim else (status, None)
        if not interim:
            break
        pos = end
    if status == 101:
        return status, -1
    version = buf[pos : pos + 8]
    conn, te, lengths = b"", b"", set()
    # only three fields matter; one regex over the head (lower-cased) finds them
    for name, value in _FRAMING_FIELDS.findall(buf, pos, end):
        name = name.lower()
        if name == b"content-length":
            lengths.add(value.strip())
        elif name == b"connection":
            conn += b"," + value.lower()
        else:
            te += b"," + value.lower()
    tokens = {t.strip() for t in conn.split(b",")} if conn else ()
    if b"close" in tokens or (version != b"HTTP/1.1" and b"keep-alive" not in tokens):
        return status, -1
    if status == 204 or status == 304:
        return status, end
    if te:
        codings = [t.strip() for t in te.split(b",") if t.strip()]
        if lengths or not codings or codings[-1] != b"chunked":
            return status, -1
        return status, _chunked_end(buf, end)
    if len(lengths) != 1:
        return status, -1  # none: the body ends with the connection; several: unclear
    (value,) = lengths
    if not value.isdigit() or int(value) > _MAX_BODY:
        return status, -1
    n = end + int(value)
    return status, (n if len(buf) >= n else None)


class _TcpPlan:
    """What every check of one tcp/http spec of one address shares: the address tuple to
    connect to, the request bytes, the texts, and for http the kept connection between checks
    (``reuse_connection``). Made once per probe (``Checker.prepare``)."""

    __slots__ = (
        "poller", "spec", "family", "dest", "bind", "http", "request", "status", "passed", "reuse",
        "conn", "conn_fd", "conn_born", "closed", "lane", "slot", "__weakref__",
    )  # fmt: skip

    def __init__(self, poller: _Poller, spec: CheckSpec, address: IPAddress) -> None:
        self.poller = poller
        self.spec = spec
        self.family, host = _target(address)
        self.dest = (host, spec.port)
        self.bind = (str(spec.source), 0) if spec.source is not None else None
        self.http = spec.kind == "http"
        self.request = _http_request(spec, address) if self.http else b""
        self.status = spec.status
        self.passed = f"HTTP {spec.status}"  # the detail of a passed check
        self.reuse = self.http and spec.reuse_connection
        self.conn: _socket.socket | None = None  # the kept connection while no check uses it
        self.conn_fd = -1
        self.conn_born = 0.0  # loop time it was opened
        self.closed = False
        self.lane = poller.http_lane if self.reuse else None  # the scheduler's way in (_HttpLane)
        self.slot = -1  # the lane's C slot: request and expected status
        if self.reuse:
            poller.keeping.add(self)  # Checker.close closes what is kept
            self.slot = poller.http_lane.slot(self)

    def __call__(self, timeout: float, done: Callable[[CheckResult], None]) -> None:
        poller = self.poller
        now = poller.loop.time()
        run = _TcpRun(timeout, now + timeout, done, self)
        if self.conn is not None and poller.harvested != poller.ticker.current:
            poller.harvest()  # news from the idle connection first (once per tick for all checks)
        conn = self.conn
        if conn is not None:
            self.conn = None
            del poller.idle[self.conn_fd]
            if now - self.conn_born < _REUSE_MAX_AGE:
                run.adopt(conn, self.conn_fd, self.conn_born)
                poller.add(run)
                run.send()
                return
            _reset_close(conn)
        run.connect()
        if not run.finished:
            poller.add(run)

    def park(self, run: _TcpRun) -> None:
        """Keep run's connection for the next check (or close it if one is kept already).

        While idle it is in the epoll set for input and hang-up (level-triggered, registered
        once per connection): anything it reports then — the server's close, a reset, bytes
        the server sent on its own — ends the connection at the next harvest, before a check
        could send on it or take those bytes for its answer."""
        poller = self.poller
        poller.forget(run.fd, run)
        if self.conn is not None or self.closed:
            _reset_close(run.sock)
            return
        try:
            if not run.registered:
                poller.ep.register(run.fd, _EPOLLIN | _EPOLLRDHUP)
            elif not run.level:
                poller.ep.modify(run.fd, _EPOLLIN | _EPOLLRDHUP)
        except OSError:
            _reset_close(run.sock)
            return
        self.conn, self.conn_fd, self.conn_born = run.sock, run.fd, run.born
        poller.idle[run.fd] = self

    def idle_event(self) -> None:
        """The idle kept connection has news (module notes of park): not to be used again."""
        if self.conn is not None:
            del self.poller.idle[self.conn_fd]
            _reset_close(self.conn)
            self.conn = None

    def close(self) -> None:
        """Close the kept connection; checks still running close theirs when they end."""
        self.closed = True
        self.idle_event()


class _TcpRun(_Run):
    """One tcp or http check: connect (state and RTT from TCP_INFO), then for http send the GET
    and read the answer (on a kept connection: send at once, and read the whole response)."""

    __slots__ = (
        "plan", "sock", "fd", "registered", "level", "rtt", "sent", "buf", "first", "kept", "reused", "born",
        "status",
    )  # fmt: skip

    def __init__(self, timeout: float, deadline: float, done: Callable[[CheckResult], None], plan: _TcpPlan):
        self.t0 = time.perf_counter()  # _Run's fields, without the call (one run per check)
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        self.finished = False
        self.plan = plan
        self.registered = False  # fd in the epoll set
        self.level = False  # with the idle registration (park), not a one-shot one
        self.rtt: float | None = None
        self.sent = 0.0  # 0 while connecting; time.time() the request left once sent
        self.buf = b""
        self.first: float | None = None
        self.kept = False  # on a kept connection
        self.reused = False  # on a kept connection, no byte of the answer read yet
        self.born = 0.0
        self.status: int | None = None  # the answer's status, once known

    def adopt(self, conn: _socket.socket, fd: int, born: float) -> None:
        """Run on the kept connection conn (its level-triggered idle registration stays)."""
        self.sock, self.fd, self.born = conn, fd, born
        self.registered = self.level = self.kept = self.reused = True

    def connect(self) -> None:
        """Open a new connection (the first step of a check, or its one retry)."""
        plan = self.plan
        try:
            sock = self.sock = _socket.socket(plan.family, _SOCK_STREAM_NONBLOCK)
        except OSError as e:
            self.fail(e)
            return
        self.fd = sock.fileno()
        self.registered = self.level = False
        self.born = plan.poller.loop.time()
        try:
            if plan.bind is not None:
                sock.bind(plan.bind)
            code = sock.connect_ex(plan.dest)
            if code and code != errno.EINPROGRESS:
                raise OSError(code, os.strerror(code))
        except OSError as e:
            self.close()
            self.fail(e)
            return
        plan.poller.soon(self)  # connected by the next tick on a LAN: TCP_INFO says so, no epoll

    def _reconnect(self) -> None:
        """The kept connection turned out dead before any byte of the answer: one new one."""
        self.close()
        self.kept = self.reused = False
        self.sent = 0.0
        self.buf = b""
        self.first = None
        self.connect()

    def close(self) -> None:
        self.plan.poller.forget(self.fd, self)
        _reset_close(self.sock)

    def poke(self) -> None:
        if self.sent:
            self._read()
        else:
            self._connecting()

    ready = poke

    def expire(self) -> None:
        self.close()
        if self.status is not None:  # the status came in time, not the rest: the status decides
            self._verdict(self.status)
        else:
            self.timeout_msg("no answer")

    def _wait(self, events: int) -> None:
        self.plan.poller.wait(self, self.fd, events, self.registered)
        self.registered = True
        self.level = False

    def _connecting(self) -> None:
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_RTT_OFFSET + 4)
        except OSError as e:
            self.close()
            self.fail(e)
            return
        state = info[0]
        if state == _TCP_SYN_SENT:
            self._wait(_EPOLLOUT)
            return
        if state != _TCP_ESTABLISHED and state != _TCP_CLOSE_WAIT:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.close()
            self.fail(OSError(code, os.strerror(code)) if code else _CheckFailed("connection reset"))
            return
        rtt_us = _U32.unpack_from(info, _TCPI_RTT_OFFSET)[0]
        self.rtt = rtt_us * 1e-6 if rtt_us else None
        if not self.plan.http:
            self.close()
            self.ok("connected", self.rtt)
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError as e:
            self.close()
            self.fail(e)
            return
        self.send()

    def send(self) -> None:
        request = self.plan.request
        try:
            self.sent = time.time()
            if self.sock.send(request) != len(request):  # a few hundred bytes, empty buffer
                raise _CheckFailed("could not send the request at once")
        except OSError as e:
            if self.reused:  # reset while idle
                self._reconnect()
                return
            self.close()
            self.fail(e)
            return
        except _CheckFailed as e:
            self.close()
            self.fail(e)
            return
        self.plan.poller.soon(self)  # the answer is usually there by the next tick

    def _read(self) -> None:
        sock = self.sock
        while True:
            try:
                chunk, anc, _, _ = sock.recvmsg(16384, _CMSG_TS)
            except (BlockingIOError, InterruptedError):
                self._wait(_EPOLLIN)
                return
            except OSError as e:
                self.lost(e)
                return
            if not self.take(chunk, anc):
                return

    def lost(self, e: OSError) -> None:
        """Reading failed with e."""
        if self.reused:
            self._reconnect()
            return
        self.close()
        self.fail(e)

    def take(self, chunk: bytes, anc: list[tuple[int, int, bytes]]) -> bool:
        """One read's bytes: True while more of the answer is to be read."""
        if not chunk:
            if self.reused:  # closed by the server while idle
                self._reconnect()
                return False
            self.close()
            if self.status is not None:  # a body that ends with the connection
                self._verdict(self.status)
            else:
                self.fail(_CheckFailed("connection closed before an HTTP status line"))
            return False
        if self.first is None:
            if anc:  # SO_TIMESTAMPNS is the only ancillary data of these sockets
                typ, ts = anc[0][1], anc[0][2]
                if typ == _SO_TIMESTAMPNS and len(ts) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(ts)
                    self.first = sec + nsec * 1e-9
            if self.reused and self.first is not None and self.first < self.sent:
                # bytes the server sent on its own while the connection was idle (a 408
                # before it closes, say): not the answer, and the connection is not clean
                self._reconnect()
                return False
        self.reused = False
        self.buf += chunk
        try:
            r = _response(self.buf, self.plan.reuse)
        except _CheckFailed as e:
            self.close()
            self.fail(e)
            return False
        if r is None:
            return True
        self.status, end = r
        if end is None:
            return True
        if end == len(self.buf) and self.status == self.plan.status:
            self.plan.park(self)  # exactly one response, nothing after it: keep
        else:
            self.close()
        self._verdict(self.status)
        return False

    def _verdict(self, status: int) -> None:
        plan = self.plan
        if status != plan.status:
            self.fail(_CheckFailed(f"HTTP {status}, expected {plan.status}"))
            return
        if self.finished:
            return
        self.finished = True  # _Run.ok written out: one per check
        latency = -1.0
        if self.first is not None:
            wait = max(0.0, self.first - self.sent)
            if self.rtt is not None:  # a new connection: its handshake, then the request
                latency = self.rtt + wait
            elif self.kept:
                latency = wait
        if latency < 0:
            latency = time.perf_counter() - self.t0
        self.done(CheckResult(True, latency, None, plan.passed))


class _HttpLane:
    """The steady state of http checks on kept connections, all the checks of a tick at once.

    The scheduler hands it the probes due at a grid point (``start``); for each whose plan
    keeps a connection younger than 30 s the request is sent right there, and at the next
    tick (``read``) the answer is read: one complete response with the expected status, nothing
    after it, arrived after the request — the usual case — is a passed check, handed to the
    scheduler with the others of that tick in one batch; the connection goes back to idle.
    The sends, the reads, the framing and the timestamps of a tick are one C call each
    (native/hc/hc_lanes.c: a slot per plan holds its request and expected status); no run
    object, no per-check callback. Everything else (no kept connection, a failed or short
    send, no answer yet, a part of one, another status, the server's close, bytes from before
    the request, ``Connection: close`` ...) goes on in the general code (_TcpPlan / _TcpRun)
    from where the lane stopped, with the bytes the lane read, so its outcome is exactly the
    general one. ``fast`` counts the checks that passed here."""

    def __init__(self, poller: _Poller) -> None:
        self.poller = poller
        self.c = _ffi.gc(_lib.hc_http_new(), _lib.hc_http_free)
        if self.c == _ffi.NULL:
            raise MemoryError("hc_http_new")
        # (grid point of the sends, result sink, [(probe, plan, conn)], slots, fds, start, t0)
        self.batches: deque[tuple[int, Callable[[list], None], list, Any, Any, float, float]] = deque()
        self.fast = 0

    def slot(self, plan: _TcpPlan) -> int:
        """A C slot for plan, given back when plan goes (the finalizer keeps the lane alive)."""
        i = _lib.hc_http_slot(self.c, plan.request, len(plan.request), plan.status)
        if i < 0:
            raise MemoryError("hc_http_slot")
        weakref.finalize(plan, _lib.hc_http_release, self.c, i)
        return i

    def start(self, probes: list, sink: Callable[[list], None]) -> None:
        poller = self.poller
        k = poller.ticker.current
        if self.batches:
            self.read(k)  # answers to the last tick's requests first: fewer idle events below
        if poller.harvested != k:
            poller.harvest()  # news from idle connections (a close, stray bytes) before using them
        idle = poller.idle
        now = poller.loop.time()
        t0 = time.perf_counter()
        flying, slots, fds = [], [], []
        for p in probes:
            plan = p.launch
            try:
                conn = plan.conn
                if conn is None or now - plan.conn_born >= _REUSE_MAX_AGE or plan.closed:
                    plan(p.timing.timeout, p.on_done)  # a new connection: the general path
                    continue
                plan.conn = None
                fd = plan.conn_fd
                del idle[fd]
                flying.append((p, plan, conn))
                slots.append(plan.slot)
                fds.append(fd)
            except Exception as e:  # a bug in a check must not stop the others
                log.exception("health check of %s crashed", plan.dest)
                p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
        if not flying:
            return
        n = len(flying)
        c_slots, c_fds = _ffi.new("int[]", slots), _ffi.new("int[]", fds)
        codes, details = _ffi.new("int[]", n), _ffi.new("struct hc_detail[]", n)
        if _lib.hc_http_send(self.c, c_slots, c_fds, n, codes, details):
            sent_ok = []
            for entry, code in zip(flying, _ffi.unpack(codes, n), strict=True):
                if code == _lib.HC_PASS:
                    sent_ok.append(entry)
                    continue
                p, plan, conn = entry
                try:
                    run = self._general(p, plan, conn, now, t0)
                    if code == _lib.HC_ERROR:  # dead while idle: the one new connection
                        run._reconnect()
                    else:
                        run.close()
                        run.fail(_CheckFailed("could not send the request at once"))
                except Exception as e:  # a bug in a check must not stop the others
                    log.exception("health check of %s crashed", plan.dest)
                    p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
            if not sent_ok:
                return
            flying = sent_ok
            c_slots = _ffi.new("int[]", [e[1].slot for e in flying])
            c_fds = _ffi.new("int[]", [e[1].conn_fd for e in flying])
        self.batches.append((k, sink, flying, c_slots, c_fds, now, t0))
        poller.ensure_tick()

    def _general(self, p: Any, plan: _TcpPlan, conn: _socket.socket, start: float, t0: float) -> _TcpRun:
        """The check as a _TcpRun that sent its request on the kept connection (when: the slot's)."""
        timeout = p.timing.timeout
        run = _TcpRun(timeout, start + timeout, p.on_done, plan)
        run.t0 = t0
        run.adopt(conn, plan.conn_fd, plan.conn_born)
        run.sent = _lib.hc_http_sent(self.c, plan.slot) * 1e-9
        self.poller.add(run)
        return run

    def read(self, now_k: int) -> None:
        """The answers to the requests sent before grid point now_k."""
        batches, idle, c = self.batches, self.poller.idle, self.c
        while batches and batches[0][0] < now_k:
            _, sink, flying, c_slots, c_fds, start, t0 = batches.popleft()
            n = len(flying)
            codes, latency = _ffi.new("int[]", n), _ffi.new("double[]", n)
            details = _ffi.new("struct hc_detail[]", n)
            unusual = _lib.hc_http_read(c, c_slots, c_fds, n, codes, latency, details)
            results = []
            if not unusual:
                for (p, plan, conn), lat in zip(flying, _ffi.unpack(latency, n), strict=True):
                    if plan.conn is None and not plan.closed:  # _TcpPlan.park
                        plan.conn = conn
                        idle[plan.conn_fd] = plan
                    else:
                        _reset_close(conn)
                    results.append((p, CheckResult(True, lat, None, plan.passed)))
            else:
                lats, others = _ffi.unpack(latency, n), []
                for i, code in enumerate(_ffi.unpack(codes, n)):
                    p, plan, conn = flying[i]
                    if code == _lib.HC_PASS:
                        if plan.conn is None and not plan.closed:
                            plan.conn = conn
                            idle[plan.conn_fd] = plan
                        else:
                            _reset_close(conn)
                        results.append((p, CheckResult(True, lats[i], None, plan.passed)))
                    else:  # what the C read saw, copied before any Python runs
                        d = details[i]
                        chunk = _ffi.buffer(_lib.hc_http_spill(c) + d.off, d.len)[:] if d.len else b""
                        others.append((flying[i], code, d.err, chunk, d.ts_ns))
                for (p, plan, conn), code, err, chunk, ts in others:
                    try:
                        self._unusual(p, plan, conn, start, t0, code, err, chunk, ts)
                    except Exception as e:  # a bug in a check must not stop the others
                        log.exception("health check of %s crashed", plan.dest)
                        p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
            if results:
                self.fast += len(results)
                try:
                    sink(results)
                except Exception:
                    log.exception("health check results: callback failed")

    def _unusual(
        self,
        p: Any,
        plan: _TcpPlan,
        conn: _socket.socket,
        start: float,
        t0: float,
        code: int,
        err: int,
        chunk: bytes,
        ts: int,
    ) -> None:
        """Not the usual answer: the general code goes on from what the C read saw (no bytes
        yet, a failed read, or the bytes of one read with their kernel timestamp)."""
        run = self._general(p, plan, conn, start, t0)
        if code == _lib.HC_AGAIN:
            run._wait(_EPOLLIN)
            return
        if code == _lib.HC_ERROR:
            run.lost(OSError(err, os.strerror(err)))
            return
        anc = [(socket.SOL_SOCKET, _SO_TIMESTAMPNS, _TIMESPEC.pack(*divmod(ts, 1_000_000_000)))] if ts else []
        if run.take(chunk, anc):
            run._read()


class _Dead(Exception):
    """A connection ended before any byte of the answer (``error``: what ended it)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _TlsProbe(asyncio.Protocol):
    """HTTPS: one TLS connection; ``ask(request)`` sends a GET and gives a future of
    ``(status, end)`` as _response frames the answer (end -1: the connection is not to be used
    again). Bytes while no request is out (``stray``) or the close (``closed``) make a kept
    connection unusable."""

    def __init__(self, frame: bool, born: float) -> None:
        self.frame = frame
        self.born = born
        self.transport: asyncio.Transport | None = None
        self.pending: asyncio.Future[tuple[int, int]] | None = None
        self.buf = b""
        self.status: int | None = None  # the pending answer's, once known
        self.stray = self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, request: bytes) -> asyncio.Future[tuple[int, int]]:
        assert self.transport is not None
        self.pending = fut = asyncio.get_running_loop().create_future()
        self.buf, self.status = b"", None
        self.transport.write(request)
        return fut

    def data_received(self, data: bytes) -> None:
        fut = self.pending
        if fut is None or fut.done():
            self.stray = True
            return
        self.buf += data
        try:
            r = _response(self.buf, self.frame)
        except _CheckFailed as e:
            fut.set_exception(e)
            return
        if r is None:
            return
        self.status, end = r
        if end is not None:
            fut.set_result((self.status, end if end == len(self.buf) else -1))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self.pending
        if fut is None or fut.done():
            return
        if self.status is not None:  # a body that ends with the connection
            fut.set_result((self.status, -1))
        elif not self.buf:
            fut.set_exception(_Dead(exc or _CheckFailed("connection closed before an HTTP status line")))
        else:
            fut.set_exception(exc or _CheckFailed("connection closed before an HTTP status line"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _HttpsPlan:
    """What every https check of one spec and address shares: the request, the TLS names, and
    with ``reuse_connection`` the kept TLS connection (its session: no handshake per check),
    used like a kept http connection (module notes)."""

    def __init__(self, checker: Checker, spec: CheckSpec, address: IPAddress) -> None:
        self.checker = checker
        self.spec = spec
        self.host = str(address)
        self.request = _http_request(spec, address)
        self.server_hostname = spec.host or self.host
        if not spec.tls_verify and not spec.host:
            self.server_hostname = ""  # no SNI for a bare address, and nothing to verify
        self.local = (str(spec.source), 0) if spec.source is not None else None
        self.kept: _TlsProbe | None = None
        self.closed = False

    def __call__(self, timeout: float, done: Callable[[CheckResult], None]) -> None:
        run = _Run(timeout, 0.0, done)
        checker = self.checker
        task = checker.ticker.loop.create_task(self._check(timeout, run))
        checker._tasks.add(task)
        task.add_done_callback(checker._tasks.discard)

    async def _open(self) -> _TlsProbe:
        loop = asyncio.get_running_loop()
        _, probe = await loop.create_connection(
            lambda: _TlsProbe(self.spec.reuse_connection, loop.time()),
            self.host,
            self.spec.port,
            ssl=self.checker._tls_context(self.spec.tls_verify),
            server_hostname=self.server_hostname,
            local_addr=self.local,
        )
        return probe

    async def _check(self, timeout: float, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        spec = self.spec
        probe, self.kept = self.kept, None
        if probe is not None and (probe.closed or probe.stray or loop.time() - probe.born >= _REUSE_MAX_AGE):
            probe.abort()
            probe = None
        try:
            async with asyncio.timeout(timeout):
                if probe is not None:
                    try:
                        status, end = await probe.ask(self.request)
                    except _Dead:  # the kept connection was dead: one new one
                        probe.abort()
                        probe = None
                if probe is None:
                    probe = await self._open()
                    try:
                        status, end = await probe.ask(self.request)
                    except _Dead as e:
                        raise e.error from None
        except TimeoutError:
            if probe is not None:
                probe.abort()
                if probe.status is not None:  # the status came in time, not the rest
                    self._verdict(run, probe.status)
                    return
            run.timeout_msg("no answer")
            return
        except (OSError, ValueError, EOFError, _CheckFailed) as e:
            if probe is not None:
                probe.abort()
            run.fail(e)
            return
        if end >= 0 and status == spec.status and not probe.closed and not self.closed and self.kept is None:
            self.kept = probe
        else:
            probe.abort()
        self._verdict(run, status)

    def _verdict(self, run: _Run, status: int) -> None:
        if status != self.spec.status:
            run.fail(_CheckFailed(f"HTTP {status}, expected {self.spec.status}"))
        else:
            run.ok(f"HTTP {status}", None)

    def close(self) -> None:
        self.closed = True
        if self.kept is not None:
            self.kept.abort()
            self.kept = None


# --------------------------------------------------------------------------------------------
# tunnel probes (GUE, and GLB's legacy FOU)


def _csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _inner_echo(src: IPAddress, dst: IPAddress, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request from src to dst, IP header included."""
    if dst.version == 4:
        icmp = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq) + payload
        icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
        total = 20 + len(icmp)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, seq, 0x4000, 64, 1, 0, src.packed, dst.packed)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        return hdr + icmp
    icmp = struct.pack("!BBHHH", _ICMP6_ECHO, 0, 0, ident, seq) + payload
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _csum(pseudo + icmp)) + icmp[4:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, src.packed, dst.packed)
    return hdr + icmp


def build_tunnel_probe(
    kind: str, src: IPAddress, dst: IPAddress, ident: int, seq: int, payload: bytes
) -> bytes:
    """The UDP payload of a tunnel probe: encapsulation header + inner echo request.

    ``gue``: GUE exactly as fwd's data traffic with no hop (docs/packet-core.md §4):
    ``01 PP 0000 0000 00 00`` — hlen 1, inner protocol PP (4 or 41), flags 0, private type 0,
    next hop 0, hop count 0. ``fou``: GLB's legacy GRE header with the key bit set and key 0
    (``2000 0800|86dd 00000000``)."""
    inner = _inner_echo(src, dst, ident, seq, payload)
    if kind == "gue":
        head = bytes((1, 4 if dst.version == 4 else 41, 0, 0, 0, 0, 0, 0))
    elif kind == "fou":
        head = struct.pack("!HHI", 0x2000, 0x0800 if dst.version == 4 else 0x86DD, 0)
    else:
        raise ValueError(f"not a tunnel check: {kind!r}")
    return head + inner


def _tunnel_failure(kind: str, port: int, err: int) -> _CheckFailed:
    if err == errno.ECONNREFUSED:
        return _CheckFailed(
            f"ICMP port unreachable for udp/{port}: nothing decapsulates {kind.upper()} "
            "on the backend (fwd-redirect not attached?)"
        )
    return _CheckFailed(f"ICMP error for the probe: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def _sum16(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of data (even length), not folded."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


_PROBE4 = struct.Struct("!8s4sH4sH8sHHHH12sQ")  # head, IPv4 (id, csum), ICMP (csum, id, seq), token
_PROBE6 = struct.Struct("!8s40sHHHH12sQ")  # head, IPv6, ICMPv6 (type/code, csum, id, seq), token


class _ProbeTemplate:
    """The bytes of build_tunnel_probe(kind, src, dst, ident, seq, token) for one (kind, src,
    dst), with the fixed parts and their checksum sums computed once: a probe only differs in
    its sequence number (also the IPv4 id) and the counter at the end of its token
    (``_TOKEN_MAGIC + nonce + counter``, 8 bytes big-endian)."""

    __slots__ = ("head", "v4", "fixed", "ident", "tok", "ip_sum", "icmp_sum")

    def __init__(self, kind: str, src: IPAddress, dst: IPAddress, ident: int, nonce: bytes) -> None:
        self.head = build_tunnel_probe(kind, src, dst, ident, 0, b"")[:8]
        self.v4 = dst.version == 4
        self.ident = ident
        self.tok = _TOKEN_MAGIC + nonce
        icmp_len = 8 + len(self.tok) + 8
        fixed_icmp = _sum16(struct.pack("!HH", 0, ident) + self.tok)
        if self.v4:
            w1 = struct.pack("!BBH", 0x45, 0, 20 + icmp_len)
            w3 = struct.pack("!HBB", 0x4000, 64, 1)
            self.fixed = (w1, w3, src.packed + dst.packed)
            self.ip_sum = _sum16(w1 + w3 + src.packed + dst.packed)
            self.icmp_sum = fixed_icmp + (_ICMP_ECHO << 8)
        else:
            ip6 = struct.pack("!IHBB16s16s", 6 << 28, icmp_len, 58, 64, src.packed, dst.packed)
            self.fixed = (ip6,)
            self.ip_sum = 0
            pseudo = src.packed + dst.packed + struct.pack("!I3xB", icmp_len, 58)
            self.icmp_sum = fixed_icmp + (_ICMP6_ECHO << 8) + _sum16(pseudo)

    def build(self, counter: int) -> bytes:
        seq = counter & 0xFFFF
        # the counter's 16-bit words added, and the sums folded (twice is enough under 2**32)
        hi = counter >> 16
        c = self.icmp_sum + 2 * seq + (hi >> 32) + ((hi >> 16) & 0xFFFF) + (hi & 0xFFFF)
        c = (c & 0xFFFF) + (c >> 16)
        icmpc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
        if self.v4:
            w1, w3, addrs = self.fixed
            c = self.ip_sum + seq
            c = (c & 0xFFFF) + (c >> 16)
            ipc = ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF
            return _PROBE4.pack(
                self.head, w1, seq, w3, ipc, addrs, _ICMP_ECHO << 8, icmpc, self.ident, seq, self.tok, counter
            )
        return _PROBE6.pack(
            self.head, self.fixed[0], _ICMP6_ECHO << 8, icmpc, self.ident, seq, self.tok, counter
        )


class _TunnelPlan:
    """What every probe of one tunnel spec of one address shares: the destination, the socket
    it leaves by, the route's source address (re-checked every minute) and the probe template."""

    __slots__ = (
        "prober",
        "spec",
        "address",
        "family",
        "host",
        "dest",
        "tx",
        "src",
        "src_until",
        "template",
        "detail",
        "runs",
        "lane",
        "slot",
        "__weakref__",
    )

    def __init__(self, prober: _TunnelProber, spec: CheckSpec, address: IPAddress) -> None:
        self.prober = prober
        self.spec = spec
        self.address = address
        self.family, self.host = _target(address)
        self.dest = (self.host, spec.port)
        self.tx: socket.socket | None = None
        self.src: IPAddress | None = None
        self.src_until = -math.inf
        self.template: _ProbeTemplate | None = None
        self.detail = ""
        self.runs: list[_TunnelRun] = []  # in flight (one at a time under the scheduler)
        self.lane = prober  # the scheduler's way in (_TunnelProber.start)
        self.slot = -1  # the lane's C slot (probe bytes, destination, socket) once there is a template

    def _refresh(self, now: float) -> None:
        prober = self.prober
        src = prober.source_for(self.family, self.host, self.spec.source)
        if src != self.src or self.template is None:
            self.src = src
            self.template = _ProbeTemplate(self.spec.kind, src, self.address, prober.ident, prober.nonce)
            self.detail = f"echo reply from {self.host} to {src}"
            prober.lane_slot(self)
        self.src_until = now + _SOURCE_TTL

    def __call__(self, timeout: float, done: Callable[[CheckResult], None]) -> None:
        prober = self.prober
        now = prober.loop.time()
        run = _TunnelRun(timeout, now + timeout, done, self, time.perf_counter())
        if now >= self.src_until:  # the first probe, then once a minute
            try:
                if self.tx is None:
                    prober.rx_socket(self.family)
                    self.tx = prober.tx_socket(self.family, self.spec.source)
                    prober.by_dest.setdefault(self.dest, []).append(self)
                self._refresh(now)
            except PermissionError as e:
                run.fail(_CheckFailed(f"raw ICMP socket needs root or CAP_NET_RAW ({e.strerror})"))
                return
            except (OSError, ValueError) as e:
                run.fail(e)
                return
        assert self.template is not None and self.tx is not None
        prober.counter = c = prober.counter + 1
        run.counter = c
        payload = self.template.build(c)
        prober.pending[c] = run
        self.runs.append(run)
        for attempt in (0, 1):
            try:
                run.sent = time.time()
                self.tx.sendto(payload, self.dest)
                break
            except OSError as e:
                # an ICMP error of an earlier probe (any destination) fails the next send once;
                # its report is on the error queue, so send again
                if attempt or e.errno not in _ASYNC_SEND_ERRORS:
                    run.end()
                    run.fail(e if e.errno not in _ASYNC_SEND_ERRORS else _CheckFailed(_error_text(e)))
                    return
        prober.poller.add(run)

    def close(self) -> None:
        """No longer used (by the scheduler): ICMP errors for its destination no longer concern it."""
        lst = self.prober.by_dest.get(self.dest)
        if lst is not None and self in lst:
            lst.remove(self)
            if not lst:
                del self.prober.by_dest[self.dest]


class _TunnelRun(_Run):
    """One tunnel probe in flight: ended by its echo reply, an ICMP error or its deadline."""

    __slots__ = ("plan", "counter", "sent", "probe")

    def __init__(
        self,
        timeout: float,
        deadline: float,
        done: Callable[[CheckResult], None],
        plan: _TunnelPlan,
        t0: float,
        probe: Any = None,
    ) -> None:
        self.t0 = t0  # _Run's fields, without the call (one run per check)
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        self.finished = False
        self.plan = plan
        self.counter = 0
        self.sent = 0.0
        self.probe = probe  # the scheduler's probe when started by the lane: its echo goes to sink

    def end(self) -> None:
        plan = self.plan
        plan.prober.pending.pop(self.counter, None)
        if self in plan.runs:
            plan.runs.remove(self)

    def answered(self, at: float | None) -> None:
        """Its echo reply came (at: its arrival, CLOCK_REALTIME); it left ``pending`` already."""
        plan = self.plan
        plan.runs.remove(self)
        self.finished = True
        latency = at - self.sent if at is not None else -1.0
        if latency < 0:
            latency = time.perf_counter() - self.t0
        self.done(CheckResult(True, latency, None, plan.detail))

    def error(self, err: int) -> None:
        self.end()
        self.fail(_tunnel_failure(self.plan.spec.kind, self.plan.spec.port, err))

    def expire(self) -> None:
        self.end()
        self.timeout_msg("no echo reply through the tunnel")


class _TunnelProber:
    """The sockets tunnel probes share (one per Checker) and the matching of their answers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, poller: _Poller) -> None:
        self.loop = loop
        self.poller = poller
        self.rx: dict[int, socket.socket] = {}
        self.tx: dict[tuple[int, IPAddress | None], socket.socket] = {}
        # identifier of our echo requests; the token in the payload makes each probe unique
        self.ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
        self.ident_bytes = struct.pack("!H", self.ident)
        self.nonce = os.urandom(4)
        self.token_head = _TOKEN_MAGIC + self.nonce
        self.counter = 0
        # counter -> run in flight; (address text, port) -> plans, for ICMP errors
        self.pending: dict[int, _TunnelRun] = {}
        self.by_dest: dict[tuple[str, int], list[_TunnelPlan]] = {}
        self.sink: Callable[[list], None] | None = None  # the scheduler's, for the lane's runs
        self.fast = 0  # lane checks passed by an echo reply
        # the lane in C (native/hc/hc_lanes.c): a slot per plan; probes in flight by slot;
        # (grid point of the sends, [probes], their slots, start, t0) per tick, until settled
        self.c = _ffi.gc(_lib.hc_gue_new(self.ident, self.token_head), _lib.hc_gue_free)
        if self.c == _ffi.NULL:
            raise MemoryError("hc_gue_new")
        self.flying: dict[int, Any] = {}
        self.batches: deque[tuple[int, list, Any, float, float]] = deque()
        self.m_slots = _ffi.new("int[]", _READ_BATCH)
        self.m_latency = _ffi.new("double[]", _READ_BATCH)
        self.others = _ffi.new("struct hc_gue_other[]", _READ_BATCH)
        self.n_others = _ffi.new("int *")
        poller.tunnel = self

    def lane_slot(self, plan: _TunnelPlan) -> None:
        """Give plan's current probe template, destination and socket to its C slot (a new slot
        the first time, released when the plan goes). A destination with a scope stays on the
        general path."""
        if "%" in plan.host or plan.tx is None or plan.template is None:
            return
        probe = plan.template.build(0)
        first = plan.slot < 0
        i = _lib.hc_gue_slot(
            self.c, plan.slot, probe, len(probe), plan.family == socket.AF_INET6,
            plan.address.packed, plan.spec.port, plan.tx.fileno(),
        )  # fmt: skip
        if i < 0:
            raise MemoryError("hc_gue_slot")
        if first:
            plan.slot = i
            weakref.finalize(plan, _lib.hc_gue_release, self.c, i)

    # -- the lane: the steady state, all the probes due at a grid point at once -------------

    def start(self, probes: list, sink: Callable[[list], None]) -> None:
        """Send the probes of plans whose source address is fresh with one C call (the probe
        bytes made there from the plan's slot); their echo replies are matched in C when the raw
        socket is read (_on_answer) and go to sink in batches; a probe still unanswered after a
        tick becomes a general run (settle). The first probe of a plan and one a minute (a new
        route lookup), and a send that fails, take the general path (_TunnelPlan.__call__)."""
        self.sink = sink
        poller = self.poller
        now = self.loop.time()
        t0 = time.perf_counter()
        flying, slots, inflight = [], [], self.flying
        for p in probes:
            plan = p.launch
            try:
                if now >= plan.src_until or plan.slot < 0:
                    plan(p.timing.timeout, p.on_done)
                    continue
                inflight[plan.slot] = p
                flying.append(p)
                slots.append(plan.slot)
            except Exception as e:  # a bug in a check must not stop the others
                log.exception("health check of %s crashed", plan.dest)
                p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
        if not flying:
            return
        n = len(flying)
        first = self.counter + 1
        self.counter += n
        c_slots, codes, errs = _ffi.new("int[]", slots), _ffi.new("int[]", n), _ffi.new("int[]", n)
        if _lib.hc_gue_send(self.c, c_slots, n, first, codes, errs):
            sent = []
            for p, code in zip(flying, _ffi.unpack(codes, n), strict=True):
                if code == _lib.HC_PASS:
                    sent.append(p)
                    continue
                try:  # an earlier probe's ICMP error, say: the general path sends again
                    p.launch(p.timing.timeout, p.on_done)
                except Exception as e:
                    log.exception("health check of %s crashed", p.launch.dest)
                    p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))
            if not sent:
                return
            flying = sent
            c_slots = _ffi.new("int[]", [p.launch.slot for p in flying])
        self.batches.append((poller.ticker.current, flying, c_slots, now, t0))
        poller.ensure_tick()

    def settle(self, now_k: int) -> None:
        """The lane's probes sent before grid point now_k and still unanswered go on as general
        runs (their deadline, ICMP errors, a late reply matched by Python)."""
        batches = self.batches
        while batches and batches[0][0] < now_k:
            _, flying, c_slots, start, t0 = batches.popleft()
            self._take(flying, c_slots, start, t0)

    def _take(self, flying: list, c_slots: Any, start: float, t0: float) -> None:
        n = len(flying)
        taken, counters = _ffi.new("int[]", n), _ffi.new("uint64_t[]", n)
        sent = _ffi.new("int64_t[]", n)
        for i in _ffi.unpack(taken, _lib.hc_gue_take_all(self.c, c_slots, n, taken, counters, sent)):
            p = flying[i]
            plan = p.launch
            try:
                timeout = p.timing.timeout
                run = _TunnelRun(timeout, start + timeout, p.on_done, plan, t0, p)
                run.counter = counters[i]
                run.sent = sent[i] * 1e-9
                self.pending[run.counter] = run
                plan.runs.append(run)
                self.poller.add(run)
            except Exception as e:  # a bug in a check must not stop the others
                log.exception("health check of %s crashed", plan.dest)
                p.on_done(CheckResult(False, 0.0, f"internal error: {type(e).__name__}: {e}"))

    def _take_plan(self, plan: _TunnelPlan) -> None:
        """plan's probe on the lane, if one is in flight, becomes a general run now (an ICMP
        error for its destination is to end it)."""
        for _, flying, _, start, t0 in self.batches:
            for p in flying:
                if p.launch is plan:
                    self._take([p], _ffi.new("int[]", [plan.slot]), start, t0)
                    return

    # -- sockets ---------------------------------------------------------------------------

    def rx_socket(self, family: int) -> None:
        if family in self.rx:
            return
        if family == socket.AF_INET:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW | _SOCK_NONBLOCK, socket.IPPROTO_ICMP)
            # ICMP_FILTER: a set bit blocks that type; let only echo replies through
            s.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << _ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW | _SOCK_NONBLOCK, socket.IPPROTO_ICMPV6)
            words = [0xFFFFFFFF] * 8  # ICMP6_FILTER: a set bit blocks that type
            words[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
            s.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        # answers wait for the next tick (longer when the loop is busy): room for thousands
        for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE: over rmem_max, with CAP_NET_ADMIN
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, _RAW_RCVBUF)
                break
            except OSError:
                pass
        self.poller.watch(s.fileno(), partial(self._on_answer, s, family == socket.AF_INET))
        self.rx[family] = s

    def tx_socket(self, family: int, source: IPAddress | None) -> socket.socket:
        s = self.tx.get((family, source))
        if s is None:
            s = socket.socket(family, socket.SOCK_DGRAM | _SOCK_NONBLOCK)
            try:
                if family == socket.AF_INET:
                    s.setsockopt(socket.SOL_SOCKET, _SO_NO_CHECK, 1)  # checksum 0, like data traffic
                    s.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)  # DF
                    s.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                if source is not None:
                    s.bind((str(source), 0))
            except BaseException:
                s.close()
                raise
            sock = s
            self.poller.watch(s.fileno(), lambda: self._on_error(sock))
            self.tx[(family, source)] = s
        return s

    @staticmethod
    def source_for(family: int, host: str, source: IPAddress | None) -> IPAddress:
        """The source address the kernel uses towards host (a connected socket's)."""
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if source is not None:
                s.bind((str(source), 0))
            s.connect((host, 9))
            src_text = s.getsockname()[0].split("%", 1)[0]
        return IPv4Address(src_text) if family == socket.AF_INET else IPv6Address(src_text)

    # -- answers and errors (called by the poller) -----------------------------------------

    def _on_answer(self, s: socket.socket, v4: bool) -> None:
        """Drains the raw socket in C: echo replies to the lane's probes are matched there (their
        passes batched to sink); the other replies of ours are matched here (general runs)."""
        c, fd, inflight, flying_slots = self.c, s.fileno(), self.flying, self.m_slots
        results = []  # the lane's runs that passed
        while True:
            m = _lib.hc_gue_read(
                c, fd, v4, flying_slots, self.m_latency, _READ_BATCH, self.others, _READ_BATCH, self.n_others
            )
            if m:
                for slot, latency in zip(
                    _ffi.unpack(flying_slots, m), _ffi.unpack(self.m_latency, m), strict=True
                ):
                    p = inflight.pop(slot)
                    if latency < 0:  # no kernel timestamp: the wall time so far (a bound)
                        latency = time.perf_counter() - (self.batches[0][4] if self.batches else 0.0)
                    results.append((p, CheckResult(True, latency, None, p.launch.detail)))
            n_others = self.n_others[0]
            if n_others:
                self._match_others(n_others, v4, results)
            if m < _READ_BATCH and n_others < _READ_BATCH:
                break
        if results and self.sink is not None:
            self.fast += len(results)
            try:
                self.sink(results)
            except Exception:
                log.exception("health check results: callback failed")

    def _match_others(self, n: int, v4: bool, results: list) -> None:
        """Replies handed back by the C read: the general runs' (Python's pending table)."""
        pending, spill = self.pending, _lib.hc_gue_spill(self.c)
        for o in self.others[0:n]:
            data = _ffi.buffer(spill + o.off, o.len)[:]
            off = (data[0] & 0x0F) * 4 if v4 else 0
            c = _U64.unpack_from(data, off + 20)[0]
            run = pending.get(c)
            if run is None:
                continue  # a duplicate, or too late
            family = socket.AF_INET6 if o.family == 6 else socket.AF_INET
            host = socket.inet_ntop(family, _ffi.buffer(o.addr, 16 if o.family == 6 else 4)[:])
            if host != run.plan.host:
                continue
            del pending[c]
            at = o.ts_ns * 1e-9 if o.ts_ns else None
            if run.probe is None:
                run.answered(at)
                continue
            run.plan.runs.remove(run)  # answered() written out, the result batched
            run.finished = True
            latency = at - run.sent if at is not None else -1.0
            if latency < 0:
                latency = time.perf_counter() - run.t0
            results.append((run.probe, CheckResult(True, latency, None, run.plan.detail)))

    def _on_error(self, s: socket.socket) -> None:
        while True:
            try:
                _, anc, _, addr = s.recvmsg(512, 512, _MSG_ERRQUEUE)
            except OSError:  # drained
                return
            err = 0
            for level, typ, data in anc:
                if (level, typ) in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                    (err,) = struct.unpack_from("=I", data)
            if not err or not addr:
                continue
            for plan in tuple(self.by_dest.get((addr[0].split("%", 1)[0], addr[1]), ())):
                self._take_plan(plan)  # its probe on the lane, if any, ends with the error too
                for run in tuple(plan.runs):
                    run.error(err)

    def close(self) -> None:
        self.batches.clear()
        self.flying.clear()
        for s in (*self.rx.values(), *self.tx.values()):
            self.poller.unwatch(s.fileno())
            s.close()
        self.rx.clear()
        self.tx.clear()


# --------------------------------------------------------------------------------------------


class Checker:
    """Runs checks on one event loop without a task or thread per check.

    ``start(spec, address, timeout, done)`` starts a check now; ``done(CheckResult)`` is called
    once, from the loop. ``await run(spec, address, timeout)`` does the same for one check.
    Neither raises for a failed check. ``prepare(spec, address)`` returns a starter
    ``starter(timeout, done)`` with everything the checks of that spec and address share made
    once (the scheduler keeps one per probe). ``tick``: the grid (seconds) on which sockets are
    harvested (module notes); ``ticker`` is shared with the scheduler. ``close()`` releases the
    shared sockets.
    """

    def __init__(self, tick: float = DEFAULT_TICK) -> None:
        self.tick = tick
        self._ticker: Ticker | None = None
        self._poller: _Poller | None = None
        self._tunnel: _TunnelProber | None = None
        self._syn: SynProber | None = None
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._plans: dict[
            tuple[CheckSpec, IPAddress], Callable[[float, Callable[[CheckResult], None]], None]
        ] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ticker(self) -> Ticker:
        """The grid's ticker (bound to the running loop at first use)."""
        if self._ticker is None:
            self._ticker = Ticker(asyncio.get_running_loop(), self.tick)
        return self._ticker

    @property
    def poller(self) -> _Poller:
        if self._poller is None:
            self._poller = _Poller(self.ticker)
        return self._poller

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._tls.get(verify)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context()
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls[verify] = ctx
        return ctx

    async def run(self, spec: CheckSpec, address: IPAddress, timeout: float) -> CheckResult:
        fut: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()

        def done(r: CheckResult) -> None:
            if not fut.done():
                fut.set_result(r)

        self.start(spec, address, timeout, done)
        return await fut

    def prepare(
        self, spec: CheckSpec, address: IPAddress
    ) -> Callable[[float, Callable[[CheckResult], None]], None]:
        """The starter of checks of spec at address (call from the running loop)."""
        if spec.kind == "tcp" and spec.mode == "half-open":
            from healthcheck.halfopen import HalfOpenPlan, SynProber  # it builds on this module

            if self._syn is None:
                self._syn = SynProber(self.poller)
            fam = self._syn.family(_target(address)[0])
            if fam is not None:  # else: no raw socket (logged once), a connect check instead
                return HalfOpenPlan(self._syn, fam, spec, address)
        if spec.kind == "tcp" or spec.kind == "http":
            return _TcpPlan(self.poller, spec, address)
        if spec.kind == "https":
            plan = _HttpsPlan(self, spec, address)
            self.poller.keeping.add(plan)  # Checker.close closes what is kept
            return plan
        if self._tunnel is None:
            self._tunnel = _TunnelProber(self.ticker.loop, self.poller)
        return _TunnelPlan(self._tunnel, spec, address)

    def fast_passes(self) -> dict[str, int]:
        """How many checks passed on the steady-state fast path of the scheduler's lanes (kept
        http connections, tunnel probes) so far: ``{"http": n, "tunnel": n}`` (a diagnostic)."""
        return {
            "http": self._poller.http_lane.fast if self._poller is not None else 0,
            "tunnel": self._tunnel.fast if self._tunnel is not None else 0,
        }

    def start(
        self, spec: CheckSpec, address: IPAddress, timeout: float, done: Callable[[CheckResult], None]
    ) -> None:
        plan = self._plans.get((spec, address))
        if plan is None:
            if len(self._plans) > 65536:
                self._plans.clear()
            plan = self._plans[(spec, address)] = self.prepare(spec, address)
        plan(timeout, done)

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._plans.clear()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._syn is not None:
            self._syn.close()
            self._syn = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None
