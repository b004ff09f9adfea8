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

__all__ = ["DEFAULT_TICK", "CheckResult", "Checker", "build_tunnel_probe"]

IPAddress = IPv4Address | IPv6Address

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
# readiness, harvested once per tick


class _Poller:
    """The checks' sockets in one private epoll set, read once per tick by a loop timer.

    ``wait(fd, write, deadline)`` -> a future resolved at the first tick at which fd is ready,
    or failed with TimeoutError at the first tick past ``deadline`` (loop time); ``watch(fd,
    callback)`` calls back at every tick at which fd is readable (shared sockets); ``expire(fut,
    deadline)`` only times a future out. The timer runs only while something waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self.loop = loop
        self.tick = tick
        self.ep = select.epoll()
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.registered: set[int] = set()
        self.watched: dict[int, Callable[[], None]] = {}
        self.deadlines: list[tuple[float, int, asyncio.Future[None]]] = []
        self.seq = 0
        self.timer: asyncio.TimerHandle | None = None

    def wait(self, fd: int, write: bool, deadline: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        events = (_EPOLLOUT if write else _EPOLLIN) | _EPOLLONESHOT
        if fd in self.registered:
            self.ep.modify(fd, events)
        else:
            self.ep.register(fd, events)
            self.registered.add(fd)
        self.waiting[fd] = fut
        self.expire(fut, deadline)
        return fut

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

    def expire(self, fut: asyncio.Future[None], deadline: float) -> None:
        self.seq += 1
        heapq.heappush(self.deadlines, (deadline, self.seq, fut))
        if self.timer is None:
            when = (math.floor(self.loop.time() / self.tick) + 1) * self.tick
            self.timer = self.loop.call_at(when, self._on_tick)

    def _on_tick(self) -> None:
        self.timer = None
        while True:
            ready = self.ep.poll(0, 1024)
            for fd, _ in ready:
                fut = self.waiting.pop(fd, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(None)
                    continue
                cb = self.watched.get(fd)
                if cb is not None:
                    cb()
            if len(ready) < 1024:
                break
        now = self.loop.time()
        dl = self.deadlines
        while dl and (dl[0][0] <= now or dl[0][2].done()):
            fut = heapq.heappop(dl)[2]
            if not fut.done():
                fut.set_exception(TimeoutError())
        if dl:
            self.timer = self.loop.call_at((math.floor(now / self.tick) + 1) * self.tick, self._on_tick)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for _, _, fut in self.deadlines:
            if not fut.done():
                fut.cancel()
        self.deadlines.clear()
        self.ep.close()


# --------------------------------------------------------------------------------------------
# TCP and HTTP


async def _connect(poller: _Poller, spec: CheckSpec, address: IPAddress, deadline: float) -> socket.socket:
    """A connected non-blocking TCP socket to address:spec.port (closed again on failure)."""
    family, host = _target(address)
    sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
    try:
        if spec.source is not None:
            sock.bind((str(spec.source), 0))
        err = sock.connect_ex((host, spec.port))
        if err == errno.EINPROGRESS:
            await poller.wait(sock.fileno(), True, deadline)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        poller.forget(sock.fileno())
        _reset_close(sock)
        raise
    return sock


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


class _Pending:
    __slots__ = ("host", "fut", "arrived")

    def __init__(self, host: str, fut: asyncio.Future[None]) -> None:
        self.host = host
        self.fut = fut
        self.arrived: float | None = None


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
        self.pending: dict[bytes, _Pending] = {}
        # (backend address text, port) -> probes in flight, for the ICMP errors of the outer UDP
        self.by_dest: dict[tuple[str, int], set[asyncio.Future[None]]] = {}

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
            if entry is None or entry.fut.done():
                continue  # not ours, a duplicate, or too late
            if addr[0].split("%", 1)[0] != entry.host:
                continue
            entry.arrived = _timestamp(anc)
            entry.fut.set_result(None)

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
            for fut in self.by_dest.get((addr[0].split("%", 1)[0], addr[1]), ()):
                if not fut.done():
                    fut.set_exception(OSError(err, os.strerror(err)))

    # -- a probe ---------------------------------------------------------------------------

    async def probe(self, spec: CheckSpec, address: IPAddress, deadline: float) -> tuple[str, float | None]:
        """Send one probe and wait for its answer until deadline (loop time).
        Returns (detail text, latency from the kernel's timestamps or None)."""
        family, host = _target(address)
        self._rx_socket(family)
        tx = self._tx_socket(family, spec.source)
        src = self._source_for(family, address, host, spec.source)
        self.counter += 1
        token = _TOKEN_MAGIC + self.nonce + self.counter.to_bytes(8, "big")
        payload = build_tunnel_probe(spec.kind, src, address, self.ident, self.counter & 0xFFFF, token)
        fut: asyncio.Future[None] = self.loop.create_future()
        dest = (host, spec.port)
        entry = self.pending[token] = _Pending(host, fut)
        waiting = self.by_dest.setdefault(dest, set())
        waiting.add(fut)
        self.poller.expire(fut, deadline)
        try:
            for attempt in (0, 1):
                try:
                    sent = time.time()
                    tx.sendto(payload, dest)
                    break
                except OSError as e:
                    # an ICMP error of an earlier probe (any destination) fails the next send
                    # once; its report is on the error queue, so send again
                    if attempt or e.errno not in _ASYNC_SEND_ERRORS:
                        raise
            try:
                await fut
            except OSError as e:
                raise _tunnel_failure(spec.kind, spec.port, e.errno or 0) from None
        finally:
            del self.pending[token]
            waiting.discard(fut)
            if not waiting:
                del self.by_dest[dest]
        latency = entry.arrived - sent if entry.arrived is not None else None
        return f"echo reply from {host} to {src}", latency

    def close(self) -> None:
        for s in (*self.rx.values(), *self.tx.values()):
            self.poller.unwatch(s.fileno())
            s.close()
        self.rx.clear()
        self.tx.clear()
        for entry in self.pending.values():
            if not entry.fut.done():
                entry.fut.cancel()


# --------------------------------------------------------------------------------------------


class Checker:
    """Runs checks on one event loop (the running one, taken at the first check).

    ``await checker.run(spec, address, timeout)`` -> :class:`CheckResult`; it never raises for
    a failed check (only cancellation propagates). ``tick``: the grid (seconds) on which the
    checks' sockets are harvested (see the module's notes). ``close()`` releases the shared
    sockets.
    """

    def __init__(self, tick: float = DEFAULT_TICK) -> None:
        self.tick = tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: _Poller | None = None
        self._tunnel: _TunnelProber | None = None
        self._tls: dict[bool, ssl.SSLContext] = {}
        self._requests: dict[tuple[CheckSpec, IPAddress], bytes] = {}

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
        loop = self._loop
        poller = self._poller
        if loop is None or poller is None:
            loop = self._loop = asyncio.get_running_loop()
            poller = self._poller = _Poller(loop, self.tick)
        t0 = time.perf_counter()
        deadline = loop.time() + timeout
        kind = spec.kind
        latency: float | None = None
        try:
            if kind == "tcp":
                sock = await _connect(poller, spec, address, deadline)
                latency = _handshake_rtt(sock)
                poller.forget(sock.fileno())
                _reset_close(sock)
                detail = "connected"
            elif kind == "http":
                detail, latency = await self._http(poller, spec, address, deadline)
            elif kind == "https":
                async with asyncio.timeout_at(deadline):
                    detail = await self._https(loop, spec, address)
            else:
                if self._tunnel is None:
                    self._tunnel = _TunnelProber(loop, poller)
                detail, latency = await self._tunnel.probe(spec, address, deadline)
        except TimeoutError:
            what = "no echo reply through the tunnel" if spec.is_tunnel else "no answer"
            return CheckResult(False, time.perf_counter() - t0, f"timeout: {what} within {timeout:g} s")
        except PermissionError as e:
            error = _error_text(e)
            if spec.is_tunnel:
                error = f"raw ICMP socket needs root or CAP_NET_RAW ({e.strerror})"
            return CheckResult(False, time.perf_counter() - t0, error)
        except (OSError, ValueError, EOFError, _CheckFailed) as e:
            return CheckResult(False, time.perf_counter() - t0, _error_text(e))
        if latency is None or latency < 0:
            latency = time.perf_counter() - t0
        return CheckResult(True, latency, None, detail)

    def _request(self, spec: CheckSpec, address: IPAddress) -> bytes:
        req = self._requests.get((spec, address))
        if req is None:
            if len(self._requests) > 65536:
                self._requests.clear()
            req = self._requests[(spec, address)] = _http_request(spec, address)
        return req

    async def _http(
        self, poller: _Poller, spec: CheckSpec, address: IPAddress, deadline: float
    ) -> tuple[str, float | None]:
        sock = await _connect(poller, spec, address, deadline)
        fd = sock.fileno()
        try:
            rtt = _handshake_rtt(sock)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            request = self._request(spec, address)
            sent = time.time()
            if sock.send(request) != len(request):  # a few hundred bytes into an empty buffer
                raise _CheckFailed("could not send the request at once")
            buf = b""
            first: float | None = None
            while True:
                await poller.wait(fd, False, deadline)
                try:
                    chunk, anc, _, _ = sock.recvmsg(4096, _CMSG_TS)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    raise _CheckFailed("connection closed before an HTTP status line")
                if first is None:
                    first = _timestamp(anc)
                buf += chunk
                status = _status_of(buf)
                if status is not None:
                    break
        finally:
            poller.forget(fd)
            _reset_close(sock)
        if status != spec.status:
            raise _CheckFailed(f"HTTP {status}, expected {spec.status}")
        latency = None
        if first is not None and rtt is not None:
            latency = rtt + max(0.0, first - sent)
        return f"HTTP {status}", latency

    async def _https(self, loop: asyncio.AbstractEventLoop, spec: CheckSpec, address: IPAddress) -> str:
        done: asyncio.Future[int] = loop.create_future()
        request = self._request(spec, address)
        server_hostname = spec.host or str(address)
        if not spec.tls_verify and not spec.host:
            server_hostname = ""  # no SNI for a bare address, and nothing to verify
        local = (str(spec.source), 0) if spec.source is not None else None
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
        if status != spec.status:
            raise _CheckFailed(f"HTTP {status}, expected {spec.status}")
        return f"HTTP {status}"

    def close(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        self._loop = None
