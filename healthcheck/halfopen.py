"""The half-open TCP check: a SYN, answered by a SYN-ACK (pass) or a reset (refused).

The precedent is F5 BIG-IP's ``tcp_half_open`` monitor. A SYN-ACK proves what a full connect
proves (the host is up and something listens on the port; the checker resets a connect check at
once and sends nothing), but the backend never gets an accepted socket, and the checker pays
one ``sendmsg`` per check instead of socket, connect, ``TCP_INFO``, reset and close (the kernel
work that dominated the tcp check's CPU, docs/daemon.md "Health checker CPU").

How
---
* **Sending.** One raw socket per address family, ``socket(AF_INET[6], SOCK_RAW, IPPROTO_TCP)``
  with ``IP_HDRINCL`` / ``IPV6_HDRINCL``, sends every SYN with one ``sendto``: the IP header is
  made once per probe (the kernel fills in the IPv4 identification and header checksum), the TCP
  header per SYN (MSS option, checksum over the IPv4 or IPv6 pseudo header, whose fixed part is
  summed once per probe). The source address is chosen as the tunnel probes choose theirs — the
  address the kernel's route lookup gives for the backend (a connected UDP socket's, cached for
  a minute), or the check's ``source`` — and written into the header, so it is the one the
  checksum covers.
* **Source ports.** Each port a SYN leaves from is *reserved*: a real TCP socket bound to it on
  the wildcard address (so every local source address is covered), never listening. No local
  connection can take the port (``connect``'s ephemeral ports skip bound ones), and since no
  socket listens on it or is connected from it, the checker's kernel answers the backend's
  SYN-ACK with a reset by itself: the backend drops its half-open connection at once, nothing
  stays open on either side. Two checks in flight to the same ip:port leave from different
  reserved ports (the backend would otherwise answer the second SYN of one 4-tuple with an ACK
  for the first); the pool grows on demand to at most ``_MAX_PORTS`` per family.
* **Identifying the answer.** Each SYN's initial sequence number is a random token, unique among
  the checks in flight; an answer is the one for a check when its acknowledgment is token + 1 and
  its source address and port and destination port are the check's. A reset with that
  acknowledgment is the answer of a closed port: "connection refused".
* **Receiving.** The same raw socket receives a copy of every TCP segment the host receives; a
  classic BPF filter (``SO_ATTACH_FILTER``) lets through only segments to a reserved port with
  SYN+ACK or RST+ACK, so the socket is not flooded by the host's other TCP traffic (IPv4 raw
  sockets see the IP header, IPv6 ones start at the TCP header). Answers are read at the ticks
  of the checks' poller (healthcheck/checks.py ``_Poller.watch``), with their kernel arrival
  time (``SO_TIMESTAMPNS``): the latency is that time minus the time the SYN was sent. ICMP errors
  about a SYN (``IP_RECVERR``: host or port unreachable from a router) fail its check with the
  error; no answer by the timeout is a timeout. There is no SYN retransmission: a lost SYN or
  SYN-ACK is a failed check (a connect check's first retransmission comes after 1 s, the
  default timeout, so it would have failed too).

Raw sockets need root or CAP_NET_RAW. Without them (the socket cannot be opened) the tcp checks
run as connect checks: :class:`SynProber` logs that once and ``Checker.prepare`` falls back.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from healthcheck.checks import (
    _CMSG_TS,
    _RAW_RCVBUF,
    _SO_RCVBUFFORCE,
    _SO_TIMESTAMPNS,
    _SOCK_NONBLOCK,
    _SOURCE_TTL,
    CheckResult,
    _CheckFailed,
    _error_text,
    _Poller,
    _Run,
    _sum16,
    _target,
    _TunnelProber,
)
from healthcheck.config import CheckSpec

__all__ = ["HalfOpenPlan", "SynProber", "syn_filter"]

IPAddress = IPv4Address | IPv6Address

log = logging.getLogger("fwd.healthcheck")

_MAX_PORTS = 64  # reserved source ports per family: concurrent checks of one ip:port
_SYN, _RST, _ACK = 0x02, 0x04, 0x10
_MSS = {4: 1460, 6: 1440}  # announced in the SYN (nothing is ever sent on the connection)
_WINDOW = 64240
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_IP_HDRINCL = getattr(socket, "IP_HDRINCL", 3)
_IPV6_HDRINCL = 36  # linux/in6.h
_TS = struct.Struct("qq")  # struct timespec of SO_TIMESTAMPNS
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_SYN_SEG = struct.Struct("!HHIIHHHHI")  # ports, seq, ack, offset+flags, window, csum, urg, MSS
_SYN_PACKET = "!{}sHHIIHHHHI"  # the same behind an IP header of {} bytes
_ANSWER = struct.Struct("!HHII")  # source port, destination port, seq, ack

# classic BPF (linux/filter.h)
_LDX_MSH_B, _LDX_IMM = 0xB1, 0x01  # X = 4 * (pkt[k] & 0xf); X = k
_LD_H_IND, _LD_B_IND = 0x48, 0x50  # A = pkt[X + k] (16 / 8 bits)
_JEQ_K, _AND_K, _RET_K = 0x15, 0x54, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")


def _fold(s: int) -> int:
    """The one's complement sum s folded to 16 bits, complemented: an Internet checksum."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_filter(ports: list[int], ipv4: bool) -> list[tuple[int, int, int, int]]:
    """The classic BPF program of a raw TCP socket: accept segments to one of ports whose flags
    are SYN+ACK or RST+ACK (among SYN, RST, ACK), drop everything else. IPv4 raw sockets see the
    IP header first (its length from the IHL), IPv6 ones start at the TCP header."""
    n = len(ports)
    prog = [(_LDX_MSH_B, 0, 0, 0) if ipv4 else (_LDX_IMM, 0, 0, 0), (_LD_H_IND, 0, 0, 2)]
    for i, p in enumerate(ports):  # a match jumps to the flags test at n + 3
        prog.append((_JEQ_K, n - i, 0, p))
    prog += [
        (_RET_K, 0, 0, 0),
        (_LD_B_IND, 0, 0, 13),
        (_AND_K, 0, 0, _SYN | _RST | _ACK),
        (_JEQ_K, 2, 0, _SYN | _ACK),
        (_JEQ_K, 1, 0, _RST | _ACK),
        (_RET_K, 0, 0, 0),
        (_RET_K, 0, 0, 0xFFFF),
    ]
    return prog


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER (replaces the socket's filter at once; the kernel copies the program)."""
    buf = ctypes.create_string_buffer(b"".join(_SOCK_FILTER.pack(*ins) for ins in prog))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


class _SynTemplate:
    """The SYN of one probe: IP header, destination port, MSS and window fixed, their checksum
    sum and the pseudo header's (source, destination, protocol 6, length 24) made once; a SYN
    only adds its source port and sequence number. ``build`` gives the TCP header alone,
    ``packet`` the IP packet."""

    __slots__ = ("dport", "offset_flags", "mss", "fixed_sum", "ip", "pack")

    def __init__(self, src: IPAddress, dst: IPAddress, dport: int) -> None:
        self.dport = dport
        if dst.version == 4:  # identification and header checksum 0: the kernel fills them in
            self.ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0x4000, 64, 6, 0, src.packed, dst.packed)
        else:
            self.ip = struct.pack("!IHBB16s16s", 6 << 28, 24, 6, 64, src.packed, dst.packed)
        self.pack = struct.Struct(_SYN_PACKET.format(len(self.ip))).pack
        self.offset_flags = (6 << 12) | _SYN  # 24-byte header: 20 + the MSS option
        self.mss = (2 << 24) | (4 << 16) | _MSS[dst.version]
        if dst.version == 4:
            pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 24)
        else:
            pseudo = src.packed + dst.packed + struct.pack("!I3xB", 24, socket.IPPROTO_TCP)
        self.fixed_sum = _sum16(pseudo) + _sum16(
            _SYN_SEG.pack(0, dport, 0, 0, self.offset_flags, _WINDOW, 0, 0, self.mss)
        )

    def build(self, sport: int, isn: int) -> bytes:
        csum = _fold(self.fixed_sum + sport + (isn >> 16) + (isn & 0xFFFF))
        return _SYN_SEG.pack(sport, self.dport, isn, 0, self.offset_flags, _WINDOW, csum, 0, self.mss)

    def packet(self, sport: int, isn: int) -> bytes:
        s = self.fixed_sum + sport + (isn >> 16) + (isn & 0xFFFF)
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return self.pack(
            self.ip, sport, self.dport, isn, 0, self.offset_flags, _WINDOW, ~s & 0xFFFF, 0, self.mss
        )


class _Family:
    """One family's raw socket and reserved source ports."""

    __slots__ = ("family", "raw", "reserved", "ports")

    def __init__(self, family: int, raw: socket.socket) -> None:
        self.family = family
        self.raw = raw
        self.reserved: list[socket.socket] = []
        self.ports: list[int] = []


class SynProber:
    """What half-open checks share (one per Checker): per family a raw socket and the reserved
    source ports, the checks in flight by token and by destination, and the reading of answers."""

    def __init__(self, poller: _Poller) -> None:
        self.poller = poller
        self.families: dict[int, _Family] = {}
        self.unavailable: dict[int, str] = {}  # family -> why raw sockets cannot be opened
        self.warned = False
        self.rng = random.Random(os.urandom(16))  # the ISN tokens; not guessable from outside
        self.pending: dict[int, _SynRun] = {}  # token (ISN) -> run
        # (host, port) -> bit i set while a run from the i-th reserved port is in flight there
        self.by_dest: dict[tuple[str, int], int] = {}

    # -- sockets ---------------------------------------------------------------------------

    def family(self, family: int) -> _Family | None:
        """The family's sockets, opened at first use; None when they cannot be (logged once)."""
        fam = self.families.get(family)
        if fam is not None or family in self.unavailable:
            return fam
        try:
            fam = self._open(family)
        except OSError as e:
            why = (
                "raw sockets need root or CAP_NET_RAW"
                if isinstance(e, PermissionError)
                else "cannot open a raw TCP socket"
            )
            self.unavailable[family] = f"{why} ({_error_text(e)})"
            if not self.warned:
                self.warned = True
                log.warning(
                    "health checks: tcp checks run in connect mode instead of half-open: %s",
                    self.unavailable[family],
                )
            return None
        self.families[family] = fam
        return fam

    def _open(self, family: int) -> _Family:
        raw = socket.socket(family, socket.SOCK_RAW | _SOCK_NONBLOCK, socket.IPPROTO_TCP)
        try:
            _attach(raw, [(_RET_K, 0, 0, 0)])  # nothing queues until the real filter is on
            if family == socket.AF_INET:
                raw.setsockopt(socket.IPPROTO_IP, _IP_HDRINCL, 1)
            else:
                raw.setsockopt(socket.IPPROTO_IPV6, _IPV6_HDRINCL, 1)
            raw.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            if family == socket.AF_INET:
                raw.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            else:
                raw.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            # answers wait for the next tick: room for thousands
            for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE: over rmem_max (CAP_NET_ADMIN)
                try:
                    raw.setsockopt(socket.SOL_SOCKET, opt, _RAW_RCVBUF)
                    break
                except OSError:
                    pass
            fam = _Family(family, raw)
            self._reserve(fam)
            while True:  # drop what arrived before the drop-all filter was attached
                try:
                    raw.recv(64)
                except BlockingIOError:
                    break
                except OSError:
                    pass
        except BaseException:
            raw.close()
            raise
        self.poller.watch(raw.fileno(), lambda: self._on_answers(fam))
        return fam

    def _reserve(self, fam: _Family) -> None:
        """One more reserved source port, and the filter that lets its answers through."""
        s = socket.socket(fam.family, socket.SOCK_STREAM)
        try:
            if fam.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("0.0.0.0" if fam.family == socket.AF_INET else "::", 0))
            port = s.getsockname()[1]
            _attach(fam.raw, syn_filter([*fam.ports, port], fam.family == socket.AF_INET))
        except BaseException:
            s.close()
            raise
        fam.reserved.append(s)
        fam.ports.append(port)

    def close(self) -> None:
        for fam in self.families.values():
            self.poller.unwatch(fam.raw.fileno())
            fam.raw.close()
            for s in fam.reserved:
                s.close()
        self.families.clear()
        self.pending.clear()
        self.by_dest.clear()

    # -- checks in flight --------------------------------------------------------------------

    def book(self, run: _SynRun, fam: _Family) -> int:
        """Give run a token and a source port no other run in flight to its ip:port uses; the
        token (ISN), or -1 when _MAX_PORTS runs to that ip:port are in flight."""
        dest = run.plan.key
        busy = self.by_dest.get(dest, 0)
        slot = (~busy & (busy + 1)).bit_length() - 1  # the lowest free one
        if slot >= len(fam.ports):
            if slot >= _MAX_PORTS:
                return -1
            self._reserve(fam)
        self.by_dest[dest] = busy | (1 << slot)
        run.slot = slot
        run.sport = fam.ports[slot]
        pending, rng = self.pending, self.rng
        isn = rng.getrandbits(32)
        while isn in pending:
            isn = rng.getrandbits(32)
        pending[isn] = run
        run.isn = isn
        return isn

    def end(self, run: _SynRun) -> None:
        if self.pending.get(run.isn) is run:
            del self.pending[run.isn]
            key = run.plan.key
            busy = self.by_dest[key] & ~(1 << run.slot)
            if busy:
                self.by_dest[key] = busy
            else:
                del self.by_dest[key]

    # -- answers (called by the poller) --------------------------------------------------------

    def _on_answers(self, fam: _Family) -> None:
        raw, pending, v4 = fam.raw, self.pending, fam.family == socket.AF_INET
        unpack, ts = _ANSWER.unpack_from, _TS.unpack_from
        while True:
            try:
                data, anc, _, addr = raw.recvmsg(128, _CMSG_TS)
            except BlockingIOError:
                break
            except OSError:  # a pending ICMP error reported once (sk_err): its queue is read below
                continue
            off = (data[0] & 0x0F) * 4 if v4 else 0
            if len(data) < off + 14:
                continue
            sport, dport, _, ack = unpack(data, off)
            run = pending.get((ack - 1) & 0xFFFFFFFF)
            if run is None or run.finished:
                continue  # not ours, a duplicate, or too late
            plan = run.plan
            if sport != plan.port or dport != run.sport:
                continue
            if addr[0] != plan.host and addr[0].split("%", 1)[0] != plan.host:
                continue
            if data[off + 13] & _RST:
                run.refused()
            elif anc and anc[0][1] == _SO_TIMESTAMPNS:  # the only ancillary data asked for
                sec, nsec = ts(anc[0][2])
                run.answered(sec + nsec * 1e-9)
            else:
                run.answered(None)
        self._on_errors(fam)

    def _on_errors(self, fam: _Family) -> None:
        """ICMP errors about our SYNs (IP_RECVERR): the data is the SYN as sent, IP header first."""
        while True:
            try:
                data, anc, _, addr = fam.raw.recvmsg(128, 512, _MSG_ERRQUEUE)
            except OSError:  # drained
                return
            off = (data[0] & 0x0F) * 4 if fam.family == socket.AF_INET and data else 40
            data = data[off:]
            if len(data) < 8:
                continue
            err = 0
            for level, typ, d in anc:
                if (level, typ) in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                    (err,) = struct.unpack_from("=I", d)
            sport, dport, isn, _ = _ANSWER.unpack_from(data.ljust(12, b"\0"))
            run = self.pending.get(isn)
            if err and run is not None and not run.finished and run.sport == sport and run.plan.port == dport:
                if not addr or addr[0].split("%", 1)[0] == run.plan.host:
                    run.unreachable(err)


class HalfOpenPlan:
    """What every half-open check of one tcp spec of one address shares: the destination, the
    route's source address (re-checked every minute) and the SYN template. Made once per probe
    (``Checker.prepare``)."""

    __slots__ = ("prober", "fam", "spec", "address", "host", "port", "key", "dest", "src", "src_until",
                 "template")  # fmt: skip

    def __init__(self, prober: SynProber, fam: _Family, spec: CheckSpec, address: IPAddress) -> None:
        self.prober = prober
        self.fam = fam
        self.spec = spec
        self.address = address
        _, self.host = _target(address)
        self.port = spec.port
        self.key = (self.host, spec.port)
        self.dest = (self.host, 0)
        self.src: IPAddress | None = None
        self.src_until = -math.inf
        self.template: _SynTemplate | None = None

    def _refresh(self, now: float) -> None:
        src = _TunnelProber.source_for(self.fam.family, self.host, self.spec.source)
        if src != self.src or self.template is None:
            self.src = src
            self.template = _SynTemplate(src, self.address, self.port)
        self.src_until = now + _SOURCE_TTL

    def __call__(self, timeout: float, done: Callable[[CheckResult], None]) -> None:
        prober = self.prober
        poller = prober.poller
        now = poller.loop.time()
        run = _SynRun(timeout, now + timeout, done, self)
        try:
            if now >= self.src_until:
                self._refresh(now)
            isn = prober.book(run, self.fam)
        except (OSError, ValueError) as e:
            run.fail(e)
            return
        if isn < 0:
            run.fail(_CheckFailed(f"{_MAX_PORTS} checks of {self.host} port {self.port} already in flight"))
            return
        assert self.template is not None
        packet = self.template.packet(run.sport, isn)
        try:
            run.sent = time.time()
            self.fam.raw.sendto(packet, self.dest)
        except OSError as e:
            prober.end(run)
            run.fail(e)
            return
        poller.add(run)


class _SynRun(_Run):
    """One half-open check in flight: ended by the SYN-ACK, a reset, an ICMP error or its deadline."""

    __slots__ = ("plan", "isn", "slot", "sport", "sent")

    def __init__(
        self, timeout: float, deadline: float, done: Callable[[CheckResult], None], plan: HalfOpenPlan
    ) -> None:
        self.t0 = time.perf_counter()  # _Run's fields, without the call (one run per check)
        self.timeout = timeout
        self.deadline = deadline
        self.done = done
        self.finished = False
        self.plan = plan
        self.isn = -1
        self.slot = -1
        self.sport = 0
        self.sent = 0.0

    def answered(self, at: float | None) -> None:
        """Its SYN-ACK came (at: its arrival, CLOCK_REALTIME); the caller saw it unfinished."""
        self.plan.prober.end(self)
        self.finished = True
        latency = at - self.sent if at is not None else -1.0
        if latency < 0:
            latency = time.perf_counter() - self.t0
        self.done(CheckResult(True, latency, None, "SYN-ACK"))

    def refused(self) -> None:
        self.plan.prober.end(self)
        self.fail(ConnectionRefusedError())

    def unreachable(self, err: int) -> None:
        self.plan.prober.end(self)
        self.fail(
            OSError(err, os.strerror(err)) if err in errno.errorcode else _CheckFailed(f"ICMP error {err}")
        )

    def expire(self) -> None:
        self.plan.prober.end(self)
        self.timeout_msg("no answer")
