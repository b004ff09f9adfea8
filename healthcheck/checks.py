"""The checks themselves: one probe of one backend, as a coroutine on the running event loop.

Everything is non-blocking sockets driven by the loop (uvloop in the daemon): no thread per
check, no blocking call, so thousands of checks share one loop. :class:`Checker` holds what the
checks share (the sockets that receive tunnel-probe answers, TLS contexts) and runs a
:class:`~healthcheck.config.CheckSpec` against an address with a timeout, returning a
:class:`CheckResult` (never raising for a failed check).

* ``tcp``   — the connection is established (then reset: no TIME_WAIT on the checker).
* ``http``  — GET ``uri`` with ``Host``; passes when the status line carries the expected
  status (the body is not read). ``https`` is the same over TLS, optionally without verification.
* ``gue``   — the GUE tunnel probe (below); ``fou`` is GLB's legacy GRE-in-UDP variant of it.

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
(10 ms, the same grid on which the scheduler starts checks): one wake-up serves every check
that started, completed or timed out in that tick. TCP and HTTP use plain non-blocking sockets
(no Protocol/transport objects), tunnel probes share their sockets. A check's wall time is thus
rounded up to ticks, so its reported *latency* comes from the kernel instead: the handshake's
RTT from ``TCP_INFO`` (tcp), plus the time from sending the request to the arrival of the
first byte of the answer (``SO_TIMESTAMPNS``; http), or from sending the probe to the arrival
of the echo reply (gue). Timeouts are honoured to within a tick. HTTPS uses asyncio's TLS
transport on the loop (a TLS handshake costs far more than a wake-up).
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import math
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address

from healthcheck.config import CheckSpec

__all__ = ["DEFAULT_TICK", "CheckResult", "Checker", "Ticker", "build_tunnel_probe"]

IPAddress = IPv4Address | IPv6Address

log = logging.getLogger("fwd.healthcheck")

# Checks start, and their sockets are harvested, on a grid of this many seconds.
DEFAULT_TICK = 0.01

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
_ICMP_ECHO_REPLY, _ICMP_ECHO = 0, 8
_ICMP6_ECHO, _ICMP6_ECHO_REPLY = 128, 129
_TOKEN_MAGIC = b"fwd-hc\0\0"
_MAX_STATUS_LINE = 8192
_LINGER_RESET = struct.pack("ii", 1, 0)
_CMSG_TS = socket.CMSG_SPACE(16)
_SOURCE_TTL = 60.0  # seconds a cached route source address is trusted
_ASYNC_SEND_ERRORS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
_EPOLLIN, _EPOLLOUT, _EPOLLONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: passed or not, its latency (seconds, see the module's notes;
    on failure the time until the failure was seen), why it failed (one line), and a short
    detail on success (e.g. ``HTTP 200``)."""

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
                for cb in slots.pop(heapq.heappop(heap)):
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


class _Wait:
    """One pending wait: ``cb(None)`` when ready, ``cb(TimeoutError())`` at the deadline, or
    ``cb(error)`` from whoever else finishes it; exactly once."""

    __slots__ = ("fd", "cb", "done")

    def __init__(self, fd: int, cb: Callable[[BaseException | None], None]) -> None:
        self.fd = fd
        self.cb = cb
        self.done = False

    def finish(self, err: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self.cb(err)


class _Poller:
    """The checks' sockets in one private epoll set, harvested once per tick.

    ``wait(fd, write, deadline, cb)`` -> a :class:`_Wait` finished at the first tick at which
    fd is ready, or with TimeoutError at the first tick past ``deadline`` (loop time);
    ``expire(w, deadline)`` only times a wait out; ``watch(fd, cb)`` calls cb at every tick at
    which fd is readable (shared sockets). Ticks are requested only while something waits.
    """

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.loop = ticker.loop
        self.ep = select.epoll()
        self.waiting: dict[int, _Wait] = {}
        self.registered: set[int] = set()
        self.watched: dict[int, Callable[[], None]] = {}
        self.deadlines: list[tuple[float, int, _Wait]] = []
        self.seq = 0
        self.scheduled = False

    def wait(
        self, fd: int, write: bool, deadline: float, cb: Callable[[BaseException | None], None]
    ) -> _Wait:
        events = (_EPOLLOUT if write else _EPOLLIN) | _EPOLLONESHOT
        if fd in self.registered:
            self.ep.modify(fd, events)
        else:
            self.ep.register(fd, events)
            self.registered.add(fd)
        w = self.waiting[fd] = _Wait(fd, cb)
        self.expire(w, deadline)
        return w

    def forget(self, fd: int) -> None:
        """fd is about to be closed (closing removes it from the epoll set)."""
        self.waiting.pop(fd, None)
        self.registered.discard(fd)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.ep.register(fd, _EPOLLIN)
        self.watched[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self.watched.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    def expire(self, w: _Wait, deadline: float) -> None:
        self.seq += 1
        heapq.heappush(self.deadlines, (deadline, self.seq, w))
        if not self.scheduled:
            self.scheduled = True
            self.ticker.next(self._on_tick)

    def _on_tick(self) -> None:
        self.scheduled = False
        while True:
            ready = self.ep.poll(0, 1024)
            for fd, _ in ready:
                w = self.waiting.pop(fd, None)
                if w is not None:
                    w.finish(None)
                    continue
                cb = self.watched.get(fd)
                if cb is not None:
                    cb()
            if len(ready) < 1024:
                break
        now = self.loop.time()
        dl = self.deadlines
        while dl and (dl[0][0] <= now or dl[0][2].done):
            w = heapq.heappop(dl)[2]
            if not w.done:
                if self.waiting.get(w.fd) is w:
                    del self.waiting[w.fd]
                w.finish(TimeoutError())
        if dl and not self.scheduled:
            self.scheduled = True
            self.ticker.next(self._on_tick)

    def close(self) -> None:
        self.deadlines.clear()
        self.waiting.clear()
        self.ep.close()


# --------------------------------------------------------------------------------------------
# TCP and HTTP


def _handshake_rtt(sock: socket.socket) -> float | None:
    """The kernel's RTT estimate (seconds) right after the handshake: the SYN -> SYN-ACK time."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_RTT_OFFSET + 4)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    (rtt_us,) = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)
    return rtt_us * 1e-6 if rtt_us else None


def _http_request(spec: CheckSpec, address: IPAddress) -> bytes:
    if spec.host:
        host = spec.host
    else:
        host = f"[{address}]" if address.version == 6 else str(address)
        if spec.port != (443 if spec.kind == "https" else 80):
            host = f"{host}:{spec.port}"
    return (
        f"GET {spec.uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fwd-healthcheck\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


def _status_of(buf: bytes) -> int | None:
    """The status code once buf holds the status line; None while it is incomplete."""
    end = buf.find(b"\n")
    if end < 0:
        if len(buf) > _MAX_STATUS_LINE:
            raise _CheckFailed("no HTTP status line in the first 8 KiB")
        return None
    line = buf[:end].rstrip(b"\r").decode("latin-1")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _CheckFailed(f"not an HTTP status line: {line[:60]!r}")
    return int(parts[1])


class _HttpAnswer:
    """Reads an HTTP answer up to its status line, one harvest at a time."""

    __slots__ = ("poller", "sock", "spec", "deadline", "finish", "rtt", "sent", "close", "buf", "first")

    def __init__(
        self,
        poller: _Poller,
        sock: socket.socket,
        spec: CheckSpec,
        deadline: float,
        finish: _Finish,
        rtt: float | None,
        sent: float,
        close: Callable[[], None],
    ) -> None:
        self.poller, self.sock, self.spec, self.deadline = poller, sock, spec, deadline
        self.finish, self.rtt, self.sent, self.close = finish, rtt, sent, close
        self.buf = b""
        self.first: float | None = None

    def wait(self) -> None:
        self.poller.wait(self.sock.fileno(), False, self.deadline, self.readable)

    def readable(self, err: BaseException | None) -> None:
        if isinstance(err, TimeoutError):
            self.close()
            self.finish.timeout_msg("no answer")
            return
        try:
            if err is not None:
                raise err
            try:
                chunk, anc, _, _ = self.sock.recvmsg(4096, _CMSG_TS)
            except (BlockingIOError, InterruptedError):
                self.wait()
                return
            if not chunk:
                raise _CheckFailed("connection closed before an HTTP status line")
            if self.first is None:
                self.first = _timestamp(anc)
            self.buf += chunk
            status = _status_of(self.buf)
            if status is None:
                self.wait()
                return
        except (OSError, _CheckFailed) as e:
            self.close()
            self.finish.fail(e)
            return
        self.close()
        if status != self.spec.status:
            self.finish.fail(_CheckFailed(f"HTTP {status}, expected {self.spec.status}"))
            return
        latency = None
        if self.first is not None and self.rtt is not None:
            latency = self.rtt + max(0.0, self.first - self.sent)
        self.finish.ok(f"HTTP {status}", latency)


class _TlsProbe(asyncio.Protocol):
    """HTTPS: sends one GET over the TLS transport and resolves ``done`` with the status."""

    def __init__(self, request: bytes, done: asyncio.Future[int]) -> None:
        self.request = request
        self.done = done
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        try:
            status = _status_of(self.buf)
        except _CheckFailed as e:
            self.done.set_exception(e)
            return
        if status is not None:
            self.done.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or _CheckFailed("connection closed before an HTTP status line"))


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


def _icmp4_of(packet: bytes) -> bytes:
    """A raw IPv4 socket delivers the IP header too."""
    return packet[(packet[0] & 0x0F) * 4 :] if packet else b""


def _icmp6_of(packet: bytes) -> bytes:
    return packet


class _TunnelProber:
    """Sends tunnel probes and matches the echo replies that come back (one per Checker)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, poller: _Poller) -> None:
        self.loop = loop
        self.poller = poller
        self.rx: dict[int, socket.socket] = {}
        self.tx: dict[tuple[int, IPAddress | None], socket.socket] = {}
        self.sources: dict[tuple[IPAddress, IPAddress | None], tuple[IPAddress, float]] = {}
        # identifier of our echo requests; the token in the payload makes each probe unique
        self.ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
        self.ident_bytes = struct.pack("!H", self.ident)
        self.nonce = os.urandom(4)
        self.counter = 0
        # token -> (backend address text, wait); (address text, port) -> waits, for ICMP errors
        self.pending: dict[bytes, tuple[str, _Wait]] = {}
        self.by_dest: dict[tuple[str, int], set[_Wait]] = {}

    # -- sockets ---------------------------------------------------------------------------

    def _rx_socket(self, family: int) -> None:
        if family in self.rx:
            return
        if family == socket.AF_INET:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW | _SOCK_NONBLOCK, socket.IPPROTO_ICMP)
            # ICMP_FILTER: a set bit blocks that type; let only echo replies through
            s.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << _ICMP_ECHO_REPLY) & 0xFFFFFFFF))
            parse: Callable[[bytes], bytes] = _icmp4_of
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW | _SOCK_NONBLOCK, socket.IPPROTO_ICMPV6)
            words = [0xFFFFFFFF] * 8  # ICMP6_FILTER: a set bit blocks that type
            words[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
            s.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))
            parse = _icmp6_of
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.poller.watch(s.fileno(), lambda: self._on_answer(s, parse))
        self.rx[family] = s

    def _tx_socket(self, family: int, source: IPAddress | None) -> socket.socket:
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

    def _source_for(self, family: int, address: IPAddress, host: str, source: IPAddress | None) -> IPAddress:
        """The source address the kernel uses towards address (a connected socket's), cached."""
        key = (address, source)
        now = self.loop.time()
        hit = self.sources.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if source is not None:
                s.bind((str(source), 0))
            s.connect((host, 9))
            src_text = s.getsockname()[0].split("%", 1)[0]
        src = IPv4Address(src_text) if family == socket.AF_INET else IPv6Address(src_text)
        self.sources[key] = (src, now + _SOURCE_TTL)
        return src

    # -- answers and errors (called by the poller) -----------------------------------------

    def _on_answer(self, s: socket.socket, parse: Callable[[bytes], bytes]) -> None:
        while True:
            try:
                data, anc, _, addr = s.recvmsg(2048, _CMSG_TS)
            except OSError:  # BlockingIOError: drained
                return
            icmp = parse(data)
            if len(icmp) < 8 + len(_TOKEN_MAGIC) or icmp[4:6] != self.ident_bytes:
                continue
            entry = self.pending.get(bytes(icmp[8:]))
            if entry is None or entry[1].done:
                continue  # not ours, a duplicate, or too late
            if addr[0].split("%", 1)[0] != entry[0]:
                continue
            entry[1].finish(_Arrived(_timestamp(anc)))

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
            for w in tuple(self.by_dest.get((addr[0].split("%", 1)[0], addr[1]), ())):
                w.finish(OSError(err, os.strerror(err)))

    # -- a probe ---------------------------------------------------------------------------

    def start(self, spec: CheckSpec, address: IPAddress, deadline: float, finish: _Finish) -> None:
        """Send one probe; ``finish`` gets the result when the answer, an ICMP error or the
        deadline (loop time) comes."""
        family, host = _target(address)
        self._rx_socket(family)
        tx = self._tx_socket(family, spec.source)
        src = self._source_for(family, address, host, spec.source)
        self.counter += 1
        token = _TOKEN_MAGIC + self.nonce + self.counter.to_bytes(8, "big")
        payload = build_tunnel_probe(spec.kind, src, address, self.ident, self.counter & 0xFFFF, token)
        dest = (host, spec.port)
        sent = 0.0

        def done(how: BaseException | None) -> None:
            del self.pending[token]
            waiting.discard(w)
            if not waiting:
                self.by_dest.pop(dest, None)
            if isinstance(how, _Arrived):
                latency = how.at - sent if how.at is not None else None
                finish.ok(f"echo reply from {host} to {src}", latency)
            elif isinstance(how, TimeoutError):
                finish.timeout_msg("no echo reply through the tunnel")
            elif isinstance(how, OSError):
                finish.fail(_tunnel_failure(spec.kind, spec.port, how.errno or 0))
            else:
                finish.fail(how or _CheckFailed("cancelled"))

        w = _Wait(-1, done)
        self.pending[token] = (host, w)
        waiting = self.by_dest.setdefault(dest, set())
        waiting.add(w)
        for attempt in (0, 1):
            try:
                sent = time.time()
                tx.sendto(payload, dest)
                break
            except OSError as e:
                # an ICMP error of an earlier probe (any destination) fails the next send once;
                # its report is on the error queue, so send again
                if attempt or e.errno not in _ASYNC_SEND_ERRORS:
                    w.finish(e if e.errno not in _ASYNC_SEND_ERRORS else _CheckFailed(_error_text(e)))
                    return
        self.poller.expire(w, deadline)

    def close(self) -> None:
        for s in (*self.rx.values(), *self.tx.values()):
            self.poller.unwatch(s.fileno())
            s.close()
        self.rx.clear()
        self.tx.clear()


class _Arrived(Exception):
    """The echo reply arrived (at ``at``, CLOCK_REALTIME seconds, from the kernel)."""

    def __init__(self, at: float | None) -> None:
        self.at = at


# --------------------------------------------------------------------------------------------


class _Finish:
    """Builds the CheckResult of one check and hands it to ``done`` exactly once."""

    __slots__ = ("t0", "timeout", "done", "finished")

    def __init__(self, timeout: float, done: Callable[[CheckResult], None]) -> None:
        self.t0 = time.perf_counter()
        self.timeout = timeout
        self.done = done
        self.finished = False

    def _give(self, r: CheckResult) -> None:
        if not self.finished:
            self.finished = True
            self.done(r)

    def ok(self, detail: str, latency: float | None) -> None:
        if latency is None or latency < 0:
            latency = time.perf_counter() - self.t0
        self._give(CheckResult(True, latency, None, detail))

    def fail(self, e: BaseException) -> None:
        self._give(CheckResult(False, time.perf_counter() - self.t0, _error_text(e)))

    def timeout_msg(self, what: str) -> None:
        self._give(
            CheckResult(False, time.perf_counter() - self.t0, f"timeout: {what} within {self.timeout:g} s")
        )


class Checker:
    """Runs checks on one event loop without a task or thread per check.

    ``start(spec, address, timeout, done)`` starts a check now; ``done(CheckResult)`` is called
    once, from the loop. ``await run(spec, address, timeout)`` does the same for one check.
    Neither raises for a failed check. ``tick``: the grid (seconds) on which sockets are
    harvested (module notes); ``ticker`` is shared with the scheduler. ``close()`` releases the
    shared sockets.
    """

    def __init__(self, tick: float = DEFAULT_TICK) -> None:
        self.tick = tick
        self._ticker: Ticker | None = None
        self._poller: _Poller | None = None
        self._tunnel: _TunnelProber | None = None
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._requests: dict[tuple[CheckSpec, IPAddress], bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ticker(self) -> Ticker:
        """The grid's ticker (bound to the running loop at first use)."""
        if self._ticker is None:
            self._ticker = Ticker(asyncio.get_running_loop(), self.tick)
        return self._ticker

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

    def start(
        self, spec: CheckSpec, address: IPAddress, timeout: float, done: Callable[[CheckResult], None]
    ) -> None:
        ticker = self.ticker
        poller = self._poller
        if poller is None:
            poller = self._poller = _Poller(ticker)
        finish = _Finish(timeout, done)
        deadline = ticker.loop.time() + timeout
        kind = spec.kind
        try:
            if kind == "tcp" or kind == "http":
                self._start_tcp(poller, spec, address, deadline, finish)
            elif kind == "https":
                task = ticker.loop.create_task(self._https(spec, address, timeout, finish))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                if self._tunnel is None:
                    self._tunnel = _TunnelProber(ticker.loop, poller)
                self._tunnel.start(spec, address, deadline, finish)
        except PermissionError as e:
            if spec.is_tunnel:
                finish.fail(_CheckFailed(f"raw ICMP socket needs root or CAP_NET_RAW ({e.strerror})"))
            else:
                finish.fail(e)
        except (OSError, ValueError, _CheckFailed) as e:
            finish.fail(e)

    # -- tcp and http ----------------------------------------------------------------------

    def _start_tcp(
        self, poller: _Poller, spec: CheckSpec, address: IPAddress, deadline: float, finish: _Finish
    ) -> None:
        family, host = _target(address)
        sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
        fd = sock.fileno()

        def close() -> None:
            poller.forget(fd)
            _reset_close(sock)

        def connected(err: BaseException | None) -> None:
            if err is None:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    err = OSError(code, os.strerror(code))
            if err is not None:
                close()
                if isinstance(err, TimeoutError):
                    finish.timeout_msg("no answer")
                else:
                    finish.fail(err)
                return
            rtt = _handshake_rtt(sock)
            if spec.kind == "tcp":
                close()
                finish.ok("connected", rtt)
                return
            try:
                self._send_request(poller, sock, spec, address, deadline, finish, rtt, close)
            except (OSError, _CheckFailed) as e:
                close()
                finish.fail(e)

        try:
            if spec.source is not None:
                sock.bind((str(spec.source), 0))
            code = sock.connect_ex((host, spec.port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
        except BaseException:
            close()
            raise
        if code == 0:
            connected(None)
        else:
            poller.wait(fd, True, deadline, connected)

    def _send_request(
        self,
        poller: _Poller,
        sock: socket.socket,
        spec: CheckSpec,
        address: IPAddress,
        deadline: float,
        finish: _Finish,
        rtt: float | None,
        close: Callable[[], None],
    ) -> None:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        request = self._request(spec, address)
        sent = time.time()
        if sock.send(request) != len(request):  # a few hundred bytes into an empty buffer
            raise _CheckFailed("could not send the request at once")
        _HttpAnswer(poller, sock, spec, deadline, finish, rtt, sent, close).wait()

    def _request(self, spec: CheckSpec, address: IPAddress) -> bytes:
        req = self._requests.get((spec, address))
        if req is None:
            if len(self._requests) > 65536:
                self._requests.clear()
            req = self._requests[(spec, address)] = _http_request(spec, address)
        return req

    # -- https (asyncio's TLS transport) ---------------------------------------------------

    async def _https(self, spec: CheckSpec, address: IPAddress, timeout: float, finish: _Finish) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        request = self._request(spec, address)
        server_hostname = spec.host or str(address)
        if not spec.tls_verify and not spec.host:
            server_hostname = ""  # no SNI for a bare address, and nothing to verify
        local = (str(spec.source), 0) if spec.source is not None else None
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: _TlsProbe(request, done),
                    str(address),
                    spec.port,
                    ssl=self._tls_context(spec.tls_verify),
                    server_hostname=server_hostname,
                    local_addr=local,
                )
                try:
                    status = await done
                finally:
                    transport.abort()
        except TimeoutError:
            finish.timeout_msg("no answer")
            return
        except (OSError, ValueError, EOFError, _CheckFailed) as e:
            finish.fail(e)
            return
        if status != spec.status:
            finish.fail(_CheckFailed(f"HTTP {status}, expected {spec.status}"))
        else:
            finish.ok(f"HTTP {status}", None)

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None
