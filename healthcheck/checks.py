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

The outer IP/UDP headers are written by the kernel (a connected UDP socket per probe: its route
lookup picks the source address that goes into the inner packet, which is the address the
backend routes its answer to; UDP checksum 0 over IPv4 and DF, as fwd's data traffic; the
ephemeral source port, like fwd's, has its top bit set). The answers are read from one raw
ICMP (and one ICMPv6) socket per Checker, filtered in the kernel to echo replies and matched by
token and source address; an answer after the timeout is ignored. Raw sockets need root or
CAP_NET_RAW (the daemon has it); without it a tunnel check fails with that reason.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from healthcheck.config import CheckSpec

__all__ = ["CheckResult", "Checker", "build_tunnel_probe"]

IPAddress = IPv4Address | IPv6Address

# Linux constants the socket module may not export.
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1
_SO_NO_CHECK = 11
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_ICMP_ECHO_REPLY, _ICMP_ECHO = 0, 8
_ICMP6_ECHO, _ICMP6_ECHO_REPLY = 128, 129
_TOKEN_MAGIC = b"fwd-hc\0\0"
_MAX_STATUS_LINE = 8192
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: passed or not, how long it took (seconds, also on failure),
    why it failed (one line), and a short detail on success (e.g. ``HTTP 200``)."""

    ok: bool
    latency: float
    error: str | None = None
    detail: str | None = None


def _error_text(e: BaseException) -> str:
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


def _sockaddr(address: IPAddress, port: int) -> tuple[str, int]:
    return (str(address), port)


def _family(address: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


# --------------------------------------------------------------------------------------------
# HTTP


class _HttpProbe(asyncio.Protocol):
    """Sends one GET and resolves ``done`` with the status code of the answer's status line."""

    def __init__(self, request: bytes, done: asyncio.Future[int]) -> None:
        self.request = request
        self.done = done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n")
        if end < 0:
            end = self.buf.find(b"\n")
        if end < 0:
            if len(self.buf) > _MAX_STATUS_LINE:
                self.done.set_exception(_CheckFailed("no HTTP status line in the first 8 KiB"))
            return
        line = self.buf[:end].decode("latin-1")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            self.done.set_exception(_CheckFailed(f"not an HTTP status line: {line[:60]!r}"))
            return
        self.done.set_result(int(parts[1]))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or _CheckFailed("connection closed before an HTTP status line"))


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


class _TunnelProber:
    """Sends tunnel probes and matches the echo replies that come back (one per Checker)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rx: dict[int, socket.socket] = {}
        # identifier of our echo requests; the token in the payload makes each probe unique
        self.ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
        self.nonce = os.urandom(4)
        self.counter = 0
        self.pending: dict[bytes, tuple[IPAddress, asyncio.Future[None]]] = {}

    def _open_rx(self, version: int) -> socket.socket:
        s = self.rx.get(version)
        if s is not None:
            return s
        if version == 4:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            # ICMP_FILTER: a set bit blocks that type; let only echo replies through
            s.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << _ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            words = [0xFFFFFFFF] * 8  # ICMP6_FILTER: a set bit blocks that type
            words[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
            s.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))
        s.setblocking(False)
        self.loop.add_reader(s.fileno(), self._on_answer, s, version)
        self.rx[version] = s
        return s

    def _on_answer(self, s: socket.socket, version: int) -> None:
        while True:
            try:
                data, addr = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if version == 4:
                if len(data) < 20:
                    continue
                ihl = (data[0] & 0x0F) * 4
                icmp = data[ihl:]
                reply_type = _ICMP_ECHO_REPLY
            else:
                icmp = data
                reply_type = _ICMP6_ECHO_REPLY
            if len(icmp) < 8 + len(_TOKEN_MAGIC) or icmp[0] != reply_type:
                continue
            (ident,) = struct.unpack_from("!H", icmp, 4)
            if ident != self.ident:
                continue
            token = bytes(icmp[8:])
            entry = self.pending.get(token)
            if entry is None:
                continue  # not ours, duplicate, or too late
            want, fut = entry
            try:
                src = ipaddress.ip_address(addr[0].split("%", 1)[0])
            except ValueError:
                continue
            if src != want:
                continue
            del self.pending[token]
            if not fut.done():
                fut.set_result(None)

    async def probe(self, spec: CheckSpec, address: IPAddress) -> str:
        """Send one probe and wait (no timeout here) for its answer; the detail text on success.
        Raises OSError / ConnectionRefusedError with the reason on failure."""
        self._open_rx(address.version)
        fam = _family(address)
        udp = socket.socket(fam, socket.SOCK_DGRAM)
        token = b""
        try:
            udp.setblocking(False)
            if fam == socket.AF_INET:
                udp.setsockopt(socket.SOL_SOCKET, _SO_NO_CHECK, 1)  # checksum 0, like data traffic
                udp.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)  # DF
            if spec.source is not None:
                udp.bind((str(spec.source), 0))
            udp.connect(_sockaddr(address, spec.port))
            src = ipaddress.ip_address(udp.getsockname()[0].split("%", 1)[0])
            self.counter += 1
            seq = self.counter & 0xFFFF
            token = _TOKEN_MAGIC + self.nonce + self.counter.to_bytes(8, "big")
            fut: asyncio.Future[None] = self.loop.create_future()
            self.pending[token] = (address, fut)
            payload = build_tunnel_probe(spec.kind, src, address, self.ident, seq, token)

            def on_udp_readable() -> None:
                # Only errors are expected here: ICMP port unreachable -> ECONNREFUSED.
                try:
                    udp.recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    if not fut.done():
                        fut.set_exception(e)

            self.loop.add_reader(udp.fileno(), on_udp_readable)
            try:
                udp.send(payload)
                await fut
            finally:
                self.loop.remove_reader(udp.fileno())
            return f"echo reply from {address} to {src}"
        finally:
            if token:
                self.pending.pop(token, None)
            udp.close()

    def close(self) -> None:
        for s in self.rx.values():
            try:
                self.loop.remove_reader(s.fileno())
            except (ValueError, RuntimeError):
                pass
            s.close()
        self.rx.clear()
        for _, fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()


# --------------------------------------------------------------------------------------------


class Checker:
    """Runs checks on one event loop (the running one, taken at the first check).

    ``await checker.run(spec, address, timeout)`` -> :class:`CheckResult`; it never raises for
    a failed check (only cancellation propagates). ``close()`` releases the shared sockets.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tunnel: _TunnelProber | None = None
        self._tls: dict[bool, ssl.SSLContext] = {}

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
        loop = self._loop = self._loop or asyncio.get_running_loop()
        clock = time.perf_counter  # the loop's clock may tick in whole milliseconds (libuv)
        t0 = clock()
        try:
            async with asyncio.timeout(timeout):
                if spec.kind == "tcp":
                    detail = await self._tcp(loop, spec, address)
                elif spec.kind in ("http", "https"):
                    detail = await self._http(loop, spec, address)
                else:
                    if self._tunnel is None:
                        self._tunnel = _TunnelProber(loop)
                    detail = await self._tunnel.probe(spec, address)
        except TimeoutError:
            what = "no echo reply through the tunnel" if spec.is_tunnel else "no answer"
            return CheckResult(False, clock() - t0, f"timeout: {what} within {timeout:g} s")
        except PermissionError as e:
            latency = clock() - t0
            if spec.is_tunnel:
                return CheckResult(
                    False, latency, f"raw ICMP socket needs root or CAP_NET_RAW ({e.strerror})"
                )
            return CheckResult(False, latency, _error_text(e))
        except ConnectionRefusedError:
            latency = clock() - t0
            if spec.is_tunnel:
                return CheckResult(
                    False,
                    latency,
                    f"ICMP port unreachable for udp/{spec.port}: nothing decapsulates "
                    f"{spec.kind.upper()} on the backend (fwd-redirect not attached?)",
                )
            return CheckResult(False, latency, "connection refused")
        except _CheckFailed as e:
            return CheckResult(False, clock() - t0, str(e))
        except (OSError, ValueError, EOFError) as e:
            return CheckResult(False, clock() - t0, _error_text(e))
        return CheckResult(True, clock() - t0, None, detail)

    async def _tcp(self, loop: asyncio.AbstractEventLoop, spec: CheckSpec, address: IPAddress) -> str:
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if spec.source is not None:
                sock.bind((str(spec.source), 0))
            await loop.sock_connect(sock, _sockaddr(address, spec.port))
        finally:
            # reset rather than FIN: no TIME_WAIT left on the checker per check
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
            sock.close()
        return "connected"

    async def _http(self, loop: asyncio.AbstractEventLoop, spec: CheckSpec, address: IPAddress) -> str:
        done: asyncio.Future[int] = loop.create_future()
        request = _http_request(spec, address)
        tls = spec.kind == "https"
        kw: dict[str, object] = {}
        if tls:
            kw["ssl"] = self._tls_context(spec.tls_verify)
            kw["server_hostname"] = spec.host or str(address)
            if not spec.tls_verify and not spec.host:
                kw["server_hostname"] = ""  # no SNI for a bare address, nothing to verify
        if spec.source is not None:
            kw["local_addr"] = (str(spec.source), 0)
        transport, _ = await loop.create_connection(
            lambda: _HttpProbe(request, done), str(address), spec.port, **kw
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


class _CheckFailed(Exception):
    """A check failed for a reason its message says in full."""
