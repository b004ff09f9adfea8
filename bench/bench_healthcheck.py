"""CPU used by the health checker: N backends checked every second on one uvloop loop.

    python bench/bench_healthcheck.py [--backends 1000] [--interval 1] [--seconds 15] [--runs 3]
                                      [--kinds tcp,tcp-connect,http,http-close,gue,http+gue]
                                      [--where netns|loopback]

What is measured: the CPU time (user + system, getrusage of its own process) of a process that
does nothing but run healthcheck.HealthChecker — the daemon's checker, unchanged — on 1,000
backends at a 1 s interval (timeout 1 s, rise/fall 3, jitter 0.1), divided by the wall time, in
% of one core (target: under 5%). Kinds: ``tcp`` (the default half-open check: a SYN from a raw
socket, healthcheck/halfopen.py; it runs as a connect check without root), ``tcp-connect`` (the
full connect), ``http``, ``http-close``, ``gue`` (below); ``+`` combines them. Each kind runs
``--runs`` times in a fresh process after ``--warmup`` seconds, the kinds interleaved (run 1 of
each, then run 2, ...) so they share the machine's load; the table gives the median, the minimum
and the maximum, and the load average (other work on this 2-core machine inflates CPU time).

The backends are real: one child process serves every backend address — a TCP listener (accept,
close), an HTTP/1.1 server (200 with a Content-Length to every GET; the connection is kept, as
nginx keeps it, unless the request says ``Connection: close``: kinds ``http`` — the checker keeps
one connection per backend — and ``http-close`` — ``reuse_connection = false``, a new connection
per check) and, for the GUE check, a
user-space stand-in for fwd-redirect that strips the GUE header and hands the inner packet (the
checker's ICMP echo request) to its kernel through a raw socket; the kernel answers the echo
from the backend address straight to the checker, as on a real backend. It busy-polls (epoll
with a zero timeout), so the checker never pays for waking it.

``--where netns`` (the default as root): the checker and the backends live in two network
namespaces joined by a veth pair; the backends' namespace takes every address of 10.98.16.0/20
as its own (an AnyIP local route). The checker is pinned to CPU 0, the backends to CPU 1, and
the backend side's veth queue steers its receive processing to CPU 1 (RPS): the kernel work of
the backends (SYN handling, the accepted sockets, the GUE stand-in, the echo replies) and the
receive processing of the answers run there, as on other machines and in the checker node's
interrupt context, so the checker is charged for its own system calls only.
``--where loopback``: backends on 127.1.x.y in the current namespace; a loopback send runs the
receiver's kernel work in the sender's system call, so the checker is also charged for the
backends' TCP handshakes and teardowns: an upper bound (and what runs without root).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402

from healthcheck import DEFAULT_TICK, Checker, CheckSpec, HealthChecker, Target, Timing  # noqa: E402

HTTP_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
HTTP_ANSWER_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok"
)
TCP_PORT, HTTP_PORT, GUE_PORT = 18081, 18082, 19523
LOOPBACK_BASE = "127.1.0.1"
NETNS_BASE, NETNS_NET = "10.98.16.1", "10.98.16.0/20"
CHECKER_ADDR, BACKEND_ADDR = "10.98.0.1", "10.98.0.2"  # the veth pair's ends
CHECKER_CPU, BACKEND_CPU = 0, 1


def backend_addresses(base: str, n: int) -> list[ipaddress.IPv4Address]:
    first = int(ipaddress.IPv4Address(base))
    return [ipaddress.IPv4Address(first + i) for i in range(n)]


def pin(cpu: int) -> None:
    if (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


# ----------------------------------------------------------------------------- the backends


def serve(tcp_port: int, http_port: int, gue: bool) -> None:
    """The backends, busy-polling (epoll with a zero timeout) on their own core.

    On loopback the sender's system call does the receiver's kernel work too, including waking
    the receiving process (an inter-processor interrupt, which is expensive in a VM). A server
    that never sleeps is never woken, so that cost — which a real backend pays on its own
    machine — is not charged to the checker. The kernel's protocol work for both ends still is.
    """
    ep = select.epoll()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    http = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    for s, port in ((tcp, tcp_port), (http, http_port)):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(4096)
        ep.register(s.fileno(), select.EPOLLIN)
    udp = raw = None
    if gue:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        udp.bind(("0.0.0.0", 19523))
        ep.register(udp.fileno(), select.EPOLLIN)
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    conns: dict[int, tuple[socket.socket, bytes]] = {}
    print("ready", flush=True)
    parent, spins = os.getppid(), 0
    while True:
        spins += 1
        if spins % 100_000 == 0 and os.getppid() != parent:
            return  # the benchmark is gone (killed): do not busy-poll on forever
        for fd, _ in ep.poll(0):
            if fd == tcp.fileno():
                while True:
                    try:
                        tcp.accept()[0].close()
                    except BlockingIOError:
                        break
            elif fd == http.fileno():
                while True:
                    try:
                        c, _ = http.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    conns[c.fileno()] = (c, b"")
                    ep.register(c.fileno(), select.EPOLLIN)
            elif udp is not None and raw is not None and fd == udp.fileno():
                # the user-space stand-in for fwd-redirect: strip GUE, hand the inner packet over
                while True:
                    try:
                        data = udp.recv(2048)
                    except BlockingIOError:
                        break
                    if len(data) < 28 or data[0] & 0x1F != 1 or data[1] != 4:
                        continue
                    inner = data[4 + 4 * (data[0] & 0x1F) :]
                    try:
                        raw.sendto(inner, (socket.inet_ntoa(inner[16:20]), 0))
                    except OSError:
                        pass
            elif fd in conns:
                # HTTP/1.1 persistent connections, as nginx serves them: an answer per request,
                # the connection kept unless the request asks for the close
                c, buf = conns[fd]
                try:
                    chunk = c.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    chunk = b""
                buf += chunk
                close = not chunk
                while not close and b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    close = b"\r\nconnection: close" in head.lower()
                    try:
                        c.send(HTTP_ANSWER_CLOSE if close else HTTP_ANSWER)
                    except OSError:
                        close = True
                if close:
                    ep.unregister(fd)
                    del conns[fd]
                    c.close()
                else:
                    conns[fd] = (c, buf)


# ----------------------------------------------------------------------------- the checker


ADDRESS = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]*:[0-9a-fA-F:.]*:[0-9a-fA-F.]*)\b")


def generic(detail: str, backend: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """A check's detail with its addresses as <backend> and <source> ("echo reply from
    <backend> to <source>"), so that 1,000 backends' details make one line."""
    detail = re.sub(rf"(?<![\w.:]){re.escape(str(backend))}(?![\w.:])", "<backend>", detail)
    return ADDRESS.sub("<source>", detail)


def cpu_times() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def measure(
    specs: list[CheckSpec], addresses, interval: float, warmup: float, seconds: float, tick: float | None
) -> dict:
    timing = Timing(interval=interval, timeout=min(1.0, interval), rise=3, fall=3, jitter=0.1)
    targets = [Target(("bench", a), a, tuple(specs), timing) for a in addresses]
    changes = {"up": 0, "down": 0}

    def on_change(v) -> None:
        changes["up" if v.healthy else "down"] += 1

    hc = HealthChecker(on_change=on_change, checker=Checker(tick) if tick else None)
    hc.set_targets(targets)
    await asyncio.sleep(warmup)
    checks0 = sum(p.stats.checks for p in hc.probes())
    fails0 = sum(p.stats.failures for p in hc.probes())
    lat0 = sum(p.stats.latency_sum for p in hc.probes())
    (u0, s0), t0 = cpu_times(), time.monotonic()
    await asyncio.sleep(seconds)
    (u1, s1), t1 = cpu_times(), time.monotonic()
    checks = sum(p.stats.checks for p in hc.probes()) - checks0
    fails = sum(p.stats.failures for p in hc.probes()) - fails0
    lat = sum(p.stats.latency_sum for p in hc.probes()) - lat0
    errors = sorted({p.last.error for p in hc.probes() if p.last and p.last.error})[:3]
    # what the checks answered (SYN-ACK, connected, HTTP 200, ...), addresses left out
    details = sorted({generic(p.last.detail, p.address) for p in hc.probes() if p.last and p.last.detail})
    await hc.stop()
    wall = t1 - t0
    cpu = (u1 - u0) + (s1 - s0)
    return {
        "cpu_pct": 100 * cpu / wall,
        "user_pct": 100 * (u1 - u0) / wall,
        "checks_per_s": checks / wall,
        "failures": fails,
        "us_per_check": 1e6 * cpu / max(checks, 1),
        "mean_latency_ms": 1000 * lat / max(checks, 1),
        "down": changes["down"],
        "errors": errors,
        "details": details,
    }


def check_main(a: argparse.Namespace) -> int:
    """One measurement in this process (a child of main()): prints one JSON line."""
    pin(CHECKER_CPU)
    specs = {
        "tcp": CheckSpec("tcp", TCP_PORT),
        "tcp-connect": CheckSpec("tcp", TCP_PORT, mode="connect"),
        "http": CheckSpec("http", HTTP_PORT, uri="/health"),
        "http-close": CheckSpec("http", HTTP_PORT, uri="/health", reuse_connection=False),
        "gue": CheckSpec("gue", GUE_PORT),
    }
    addresses = backend_addresses(a.base, a.backends)
    kinds = [specs[x] for x in a.check.split("+")]
    if a.profile:  # where the checker's own (Python) time goes, cProfile's view of it
        import cProfile
        import pstats

        prof = cProfile.Profile()
        r = prof.runcall(uvloop.run, measure(kinds, addresses, a.interval, a.warmup, a.seconds, a.tick))
        with open(a.profile, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(40)
    else:
        r = uvloop.run(measure(kinds, addresses, a.interval, a.warmup, a.seconds, a.tick))
    print(json.dumps(r), flush=True)
    return 0


# ----------------------------------------------------------------------------- the places


def sh(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")


class Netns:
    """Two namespaces joined by a veth pair: the checker's and the backends' (module notes)."""

    def __init__(self) -> None:
        self.c, self.b = f"hcb{os.getpid()}-c", f"hcb{os.getpid()}-b"

    def build(self) -> None:
        for ns in (self.c, self.b):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.c, "link", "add", "c0", "type", "veth", "peer", "name", "b0", "netns", self.b)
        for ns, dev, addr in ((self.c, "c0", CHECKER_ADDR), (self.b, "b0", BACKEND_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.b, "route", "add", "local", NETNS_NET, "dev", "lo")  # AnyIP
        sh("ip", "-n", self.c, "route", "add", NETNS_NET, "via", BACKEND_ADDR)
        # the backend side's receive processing on the backends' CPU (RPS)
        mask = f"{1 << BACKEND_CPU:x}"
        sh(
            "ip",
            "netns",
            "exec",
            self.b,
            "sh",
            "-c",
            f"for q in /sys/class/net/b0/queues/rx-*; do echo {mask} > $q/rps_cpus; done",
        )

    def destroy(self) -> None:
        for ns in (self.c, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_kind(prefix: list[str], kind: str, a: argparse.Namespace, base: str) -> dict:
    argv = [
        *prefix, sys.executable, __file__, "--check", kind, "--base", base,
        "--backends", str(a.backends), "--interval", str(a.interval),
        "--warmup", str(a.warmup), "--seconds", str(a.seconds),
        *(["--tick", str(a.tick)] if a.tick else []),
        *(["--profile", f"{a.profile}.{kind}.txt"] if a.profile else []),
    ]  # fmt: skip
    p = subprocess.run(argv, capture_output=True, text=True, timeout=a.warmup + a.seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"the checker ({kind}) failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--kinds",
        default="tcp,tcp-connect,http,http-close,gue,http+gue",
        help="comma-separated; + combines checks",
    )
    ap.add_argument("--where", choices=("netns", "loopback"), help="default: netns as root, else loopback")
    ap.add_argument(
        "--tick", type=float, help=f"the checker's tick (default: DEFAULT_TICK, {DEFAULT_TICK:g} s)"
    )
    ap.add_argument("--profile", metavar="PREFIX", help="cProfile each run into PREFIX.KIND.txt")
    ap.add_argument("--serve", nargs=3, metavar=("TCP", "HTTP", "GUE"), help=argparse.SUPPRESS)
    ap.add_argument("--check", help=argparse.SUPPRESS)
    ap.add_argument("--base", default=LOOPBACK_BASE, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.serve:
        pin(BACKEND_CPU)
        serve(int(a.serve[0]), int(a.serve[1]), a.serve[2] == "1")
        return 0
    if a.check:
        return check_main(a)

    root = os.geteuid() == 0
    where = a.where or ("netns" if root else "loopback")
    if where == "netns" and not root:
        print("bench_healthcheck: --where netns needs root", file=sys.stderr)
        return 1
    netns = Netns() if where == "netns" else None
    server = None
    try:
        if netns is not None:
            netns.build()
        inside = (lambda ns: ["ip", "netns", "exec", ns]) if netns else (lambda ns: [])
        server = subprocess.Popen(
            [*inside(netns.b if netns else ""), sys.executable, __file__, "--serve",
             str(TCP_PORT), str(HTTP_PORT), "1" if root else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            print("bench_healthcheck: the backend process did not start", file=sys.stderr)
            return 1
        base = NETNS_BASE if netns else LOOPBACK_BASE
        place = (
            f"{a.backends} backends in a namespace ({NETNS_NET}, veth, RPS to CPU {BACKEND_CPU})"
            if netns
            else f"{a.backends} backends on loopback ({base}..; their kernel work is charged to the checker)"
        )
        print(
            f"health checker CPU: {place}, interval {a.interval:g} s, {a.runs} runs of {a.seconds:g} s "
            f"after {a.warmup:g} s per kind (uvloop {uvloop.__version__}, {os.cpu_count()} cores)"
        )
        print(
            f"  {'checks':10} {'checks/s':>9} {'CPU % of a core: median':>23} {'min':>6} {'max':>6}"
            f" {'(user)':>7} {'µs CPU/check':>13} {'latency ms':>11}  failures"
        )
        loads = [Path("/proc/loadavg").read_text().split()[0]]
        worst = 0.0
        kinds = []
        for kind in a.kinds.split(","):
            if "gue" in kind.split("+") and not root:
                print(f"  {kind:10} skipped: the GUE check needs root (raw sockets)")
            else:
                kinds.append(kind)
        # interleaved (run 1 of every kind, then run 2, ...): the kinds share the machine's load
        results: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(a.runs):
            for kind in kinds:
                results[kind].append(run_kind(inside(netns.c if netns else ""), kind, a, base))
            loads.append(Path("/proc/loadavg").read_text().split()[0])
        for kind, rs in results.items():
            med = statistics.median(r["cpu_pct"] for r in rs)
            worst = max(worst, med)
            pick = min(rs, key=lambda r: abs(r["cpu_pct"] - med))
            fails = sum(r["failures"] for r in rs)
            errors = sorted({e for r in rs for e in r["errors"]})[:2]
            err = f"  ({'; '.join(errors)})" if errors else ""
            err += f"  [{', '.join(sorted({d for r in rs for d in r['details']}))}]"
            print(
                f"  {kind:10} {pick['checks_per_s']:9.0f} {med:22.2f}% {min(r['cpu_pct'] for r in rs):5.2f}%"
                f" {max(r['cpu_pct'] for r in rs):5.2f}% {pick['user_pct']:6.2f}%"
                f" {pick['us_per_check']:13.1f} {pick['mean_latency_ms']:11.2f}  {fails}{err}"
            )
        print(f"  load average (1 min) at the start and after each round of kinds: {' '.join(loads)}")
        verdict = "ok" if worst < 5.0 else "ABOVE TARGET"
        print(f"  worst median: {worst:.2f}% of one core (target < 5%): {verdict}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if netns is not None:
            netns.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
