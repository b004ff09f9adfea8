"""Namespace rig for fwd-redirect's end-to-end tests: a client, an L4 node running fwd and three
L7 nodes running real nginx behind fwd-redirect, all on one bridge (direct server return).

    client ─┐
    l4 ─────┼── lan (br0) ── l7-0, l7-1, l7-2
            │
* client  eth0 10.97.0.2/24 fd97::2/64, plus the client addresses 10.97.0.100+i / fd97::100+i on
          eth0; the VIPs (10.96.0.1, fd96::1) routed via l4 (10.97.0.1 / fd97::1). Replies come
          back from the L7 nodes directly: the client's addresses are on their link. Transmit
          checksum offload is off on eth0, so its frames carry full checksums, as on a wire.
* l4      eth0 10.97.0.1/24 fd97::1/64: fwd receives VIP traffic on eth0 and sends GUE out of
          eth0 to the L7 nodes (on-link). The bridge port towards l4 does not flood unknown
          unicast, so a frame reaches l4 only when it is addressed to it.
* l7-i    eth0 10.97.0.(10+i)/24 fd97::(10+i)/64; the VIPs on lo; arp_ignore=1, arp_announce=2,
          rp_filter=1 (docs/redirect.md); nginx listening on VIP:80 and [VIP6]:80, answering
          "l7-i ADDR PORT" (who served, and the client as nginx saw it); fwd-redirect on eth0
          accepting GUE from l4's and the other L7 nodes' addresses only.

Namespaces are named fwdt<pid>-<n>r-<role> (tests/netns/topology.py sweeps stale ones).
Run as a module inside l4 for the helper that drives fwd.live.LiveDataplane and publishes tables on
request (the second-chance test): python -m tests.netns.redirect_rig l4 --config CFG --mode MODE
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import topology as tp

VIP4, VIP6 = "10.96.0.1", "fd96::1"
L4_4, L4_6 = "10.97.0.1", "fd97::1"
CLIENT_BASE4, CLIENT_BASE6 = "10.97.0.2", "fd97::2"
HTTP_PORT = 80
LAN_MAC = "02:97:00:00:00:fe"
CLIENT_MAC = "02:97:00:00:00:02"
L4_MAC = "02:97:00:00:00:01"
HASH_KEY = bytes.fromhex("12345678901234561234567890123456")
SEED = bytes.fromhex("34567890123456783456789012345678")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def l7_addr(i: int, version: int) -> str:
    return f"10.97.0.{10 + i}" if version == 4 else f"fd97::{10 + i:x}"


def l7_mac(i: int) -> str:
    return f"02:97:00:00:01:{i:02x}"


def client_addr(i: int, version: int) -> str:
    return f"10.97.0.{100 + i}" if version == 4 else f"fd97::{0x100 + i:x}"


# ------------------------------------------------------------------------------------ topology


@dataclass
class RedirectTopology:
    prefix: str
    n_l7: int = 3
    n_clients: int = 64
    namespaces: list[str] = field(default_factory=list)
    nginx: dict[int, subprocess.Popen] = field(default_factory=dict)
    workdir: Path | None = None

    @property
    def lan(self) -> str:
        return self.prefix + "lan"

    @property
    def client(self) -> str:
        return self.prefix + "client"

    @property
    def l4(self) -> str:
        return self.prefix + "l4"

    def l7(self, i: int) -> str:
        return f"{self.prefix}l7-{i}"

    def build(self, workdir: Path) -> RedirectTopology:
        ip = tp.ip
        self.workdir = workdir
        try:
            for ns in [self.lan, self.client, self.l4] + [self.l7(i) for i in range(self.n_l7)]:
                ip("netns", "add", ns)
                self.namespaces.append(ns)
                ip("link", "set", "lo", "up", ns=ns)
            ip("link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0", ns=self.lan)
            ip("link", "set", "br0", "up", ns=self.lan)
            hosts = [(self.client, "p-client", CLIENT_MAC), (self.l4, "p-l4", L4_MAC)]
            hosts += [(self.l7(i), f"p-l7-{i}", l7_mac(i)) for i in range(self.n_l7)]
            for n, (ns, port, mac) in enumerate(hosts):
                peer = ("peer", "name", port, "netns", self.lan, "address", f"02:97:00:00:fe:{n:02x}")
                ip("link", "add", "eth0", "netns", ns, "address", mac, "type", "veth", *peer)
                ip("link", "set", port, "master", "br0", "up", ns=self.lan)
            tp.sh("bridge", "link", "set", "dev", "p-l4", "flood", "off", ns=self.lan)
            # client
            ip("addr", "add", f"{CLIENT_BASE4}/24", "dev", "eth0", ns=self.client)
            ip("addr", "add", f"{CLIENT_BASE6}/64", "dev", "eth0", "nodad", ns=self.client)
            for i in range(self.n_clients):
                ip("addr", "add", f"{client_addr(i, 4)}/24", "dev", "eth0", ns=self.client)
                ip("addr", "add", f"{client_addr(i, 6)}/64", "dev", "eth0", "nodad", ns=self.client)
            ip("link", "set", "eth0", "up", ns=self.client)
            # veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL), which the L4 node's
            # AF_XDP/raw copy of the frame never completes; a real NIC would fill them in
            tp.sh("ethtool", "-K", "eth0", "tx", "off", ns=self.client)
            ip("route", "add", f"{VIP4}/32", "via", L4_4, ns=self.client)
            ip("-6", "route", "add", f"{VIP6}/128", "via", L4_6, ns=self.client)
            # l4
            ip("addr", "add", f"{L4_4}/24", "dev", "eth0", ns=self.l4)
            ip("addr", "add", f"{L4_6}/64", "dev", "eth0", "nodad", ns=self.l4)
            ip("link", "set", "eth0", "up", ns=self.l4)
            # l7 nodes
            for i in range(self.n_l7):
                ns = self.l7(i)
                ip("addr", "add", f"{l7_addr(i, 4)}/24", "dev", "eth0", ns=ns)
                ip("addr", "add", f"{l7_addr(i, 6)}/64", "dev", "eth0", "nodad", ns=ns)
                ip("addr", "add", f"{VIP4}/32", "dev", "lo", ns=ns)
                ip("addr", "add", f"{VIP6}/128", "dev", "lo", "nodad", ns=ns)
                for k, v in (
                    ("net.ipv4.conf.all.arp_ignore", 1),
                    ("net.ipv4.conf.all.arp_announce", 2),
                    ("net.ipv4.conf.all.rp_filter", 1),
                    ("net.ipv4.conf.eth0.rp_filter", 1),
                ):
                    tp.sh("sysctl", "-qw", f"{k}={v}", ns=ns)
                ip("link", "set", "eth0", "up", ns=ns)
            return self
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        for p in self.nginx.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
        self.nginx.clear()
        for ns in reversed(self.namespaces):
            for pid in tp.netns_pids(ns):
                tp._kill(pid)
            tp.ip("netns", "del", ns, check=False)
        self.namespaces.clear()

    # -- servers

    def start_nginx(self, i: int) -> None:
        assert self.workdir is not None
        d = self.workdir / f"nginx-l7-{i}"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(nginx_conf(i, d))
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.l7(i), NGINX, "-p", str(d), "-c", str(conf),
             "-e", str(d / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        self.nginx[i] = p
        deadline = time.monotonic() + 10
        while True:
            try:
                body, _ = http_get(self.l7(i), VIP4, timeout=1)
                if body.startswith(f"l7-{i} "):
                    return
            except OSError:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                log = (d / "error.log").read_text(errors="replace") if (d / "error.log").exists() else ""
                raise RuntimeError(f"nginx on l7-{i} did not start (exit {p.poll()}):\n{log[-2000:]}")
            time.sleep(0.05)

    def fwd(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["ip", "netns", "exec", ns, str(tp.FWD), *args], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        if check and p.returncode != 0:
            raise RuntimeError(f"fwd {' '.join(args)} in {ns}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def attach_redirect(self, i: int) -> None:
        """--allow: the L4 node, and the other L7 nodes (the sources of second-chance packets)."""
        allow = [f"{L4_4}/32", f"{L4_6}/128"]
        allow += [
            f"{l7_addr(j, v)}/{32 if v == 4 else 128}" for j in range(self.n_l7) if j != i for v in (4, 6)
        ]
        self.fwd(
            self.l7(i),
            "redirect",
            "attach",
            "--interface",
            "eth0",
            *(a for x in allow for a in ("--allow", x)),
        )

    def redirect_stats(self, i: int) -> dict[str, int]:
        import json

        return json.loads(self.fwd(self.l7(i), "redirect", "stats", "--interface", "eth0", "--json").stdout)[
            "counters"
        ]


def nginx_conf(i: int, d: Path) -> str:
    temp = "\n".join(
        f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{
        listen {VIP4}:{HTTP_PORT} backlog=4096;
        listen [{VIP6}]:{HTTP_PORT} backlog=4096;
        default_type text/plain;
        location / {{ return 200 "l7-{i} $remote_addr $remote_port\\n"; }}
    }}
}}
"""


# ------------------------------------------------------------------------------------ config


def model_config(backends: list[tuple[int, str, bool]], hash_fields=("src_addr", "src_port")):
    """Tables "web4" (VIP4:80, IPv4 backends) and "web6" (VIP6:80, IPv6 backends), the backend list
    given as (l7 index, state, healthy) in config order."""
    from tests.model.config import Bind, ModelConfig, Node, Table
    from tests.model.table import Backend

    tables = []
    for v, vip in ((4, VIP4), (6, VIP6)):
        bes = [Backend(ipaddress.ip_address(l7_addr(i, v)), state, healthy) for i, state, healthy in backends]
        tables.append(
            Table(f"web{v}", HASH_KEY, SEED, False, [Bind.make(vip, "tcp", HTTP_PORT, hash_fields)], bes)
        )
    node = Node(ipaddress.ip_address(L4_4), ipaddress.ip_address(L4_6))
    return ModelConfig(node, tables)


def syn_frame(src: str, sport: int, dst: str, dport: int = HTTP_PORT) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    l3 = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return bytes(Ether(src=CLIENT_MAC, dst=L4_MAC) / l3 / TCP(sport=sport, dport=dport, flags="S"))


def owner_of(cfg, src: str, sport: int, dst: str) -> tuple[int, int]:
    """(primary, secondary) l7 indices the model gives the flow (config order = l7 index order)."""
    from tests.model.packet import expect

    e = expect(syn_frame(src, sport, dst), cfg)
    assert e.verdict == "forward", e
    t = cfg.tables[e.table]
    idx = {str(b.address): n for n, b in enumerate(t.backends)}
    return idx[str(t.backends[e.primary].address)], idx[str(t.backends[e.secondary].address)]


def l7_index(addr: str) -> int:
    a = ipaddress.ip_address(addr)
    return (int(a) & 0xFF) - 10 if a.version == 4 else (int(a) & 0xFFFF) - 0x10


# ------------------------------------------------------------------------------------ clients


def http_get(ns: str, vip: str, src: str | None = None, timeout: float = 5) -> tuple[str, int]:
    """One HTTP/1.1 GET / to vip:80 from src (in namespace ns); (body, local port)."""
    fam = socket.AF_INET6 if ":" in vip else socket.AF_INET

    def make():
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        return s

    s = tp.in_netns(ns, make)
    try:
        s.connect((vip, HTTP_PORT))
        port = s.getsockname()[1]
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(f"bad answer {head[:60]!r}")
    return body.decode(), port


@dataclass
class Conn:
    sock: socket.socket
    src: str
    port: int
    vip: str
    served_by: int | None = None
    requests: int = 0
    error: str | None = None
    buf: bytes = b""


class LongLived:
    """N keep-alive HTTP connections to the VIPs, each sending one request every `period` seconds
    and reading the answer, on one thread. A connection is broken when a request fails, times out
    (3 s without an answer) or is answered by another L7 node than its first answer's."""

    REQ = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"

    def __init__(self, ns: str, endpoints: list[tuple[str, str]], period: float = 0.1):
        self.ns, self.period = ns, period
        self.conns: list[Conn] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.endpoints = endpoints

    def open(self) -> None:
        def make(src, vip):
            s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            s.bind((src, 0))
            return s

        for src, vip in self.endpoints:
            s = tp.in_netns(self.ns, lambda src=src, vip=vip: make(src, vip))
            s.connect((vip, HTTP_PORT))
            self.conns.append(Conn(s, src, s.getsockname()[1], vip))

    def _exchange(self, c: Conn) -> None:
        c.sock.sendall(self.REQ)
        deadline = time.monotonic() + 3
        while True:
            head, sep, rest = c.buf.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                if len(rest) >= length:
                    body, c.buf = rest[:length].decode(), rest[length:]
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("no answer within 3 s")
            chunk = c.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            c.buf += chunk
        node = int(body.split()[0].split("-")[1])
        if not head.startswith(b"HTTP/1.1 200") or body.split()[1:] != [c.src, str(c.port)]:
            raise ConnectionError(f"wrong answer {head[:40]!r} {body!r}")
        if c.served_by is None:
            c.served_by = node
        elif c.served_by != node:
            raise ConnectionError(f"answered by l7-{node}, first by l7-{c.served_by}")
        c.requests += 1

    def _run(self) -> None:
        t_next = time.monotonic()
        while not self._stop.is_set():
            for c in self.conns:
                if c.error is None:
                    try:
                        self._exchange(c)
                    except (OSError, ConnectionError, ValueError, StopIteration) as e:
                        c.error = f"{type(e).__name__}: {e}"
            t_next += self.period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def start(self) -> None:
        for c in self.conns:  # first exchange before the clock starts: who serves each
            self._exchange(c)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def broken(self) -> list[Conn]:
        return [c for c in self.conns if c.error is not None]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for c in self.conns:
            c.sock.close()


# ------------------------------------------------------------------------------------ captures


class AllCapture:
    """Every frame on ifname in ns, both directions: (outgoing, frame) pairs."""

    def __init__(self, ns: str, ifname: str = "eth0"):
        self.sock = tp.packet_socket(ns, ifname, rcvbuf=64 << 20)
        self.sock.settimeout(0.05)
        self.frames: list[tuple[bool, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.frames.append((addr[2] == tp.PACKET_OUTGOING, data))

    def stop(self) -> list[tuple[bool, bytes]]:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.frames


@dataclass
class Seg:
    src_mac: str
    dst_mac: str
    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    gue: bool


def tcp_segment(frame: bytes) -> Seg | None:
    """The TCP segment of a plain (not encapsulated) IPv4/IPv6 frame, or a marker for GUE."""
    if len(frame) < 34:
        return None
    et = struct.unpack_from("!H", frame, 12)[0]
    macs = (frame[6:12].hex(":"), frame[0:6].hex(":"))
    if et == 0x0800:
        ihl = (frame[14] & 15) * 4
        proto, src, dst, l4 = frame[23], frame[26:30], frame[30:34], 14 + ihl
    elif et == 0x86DD and len(frame) >= 54:
        proto, src, dst, l4 = frame[20], frame[22:38], frame[38:54], 54
    else:
        return None
    if proto == 17 and len(frame) >= l4 + 4 and struct.unpack_from("!H", frame, l4 + 2)[0] == tp.GUE_PORT:
        return Seg(*macs, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), 0, 0, 0, True)
    if proto != 6 or len(frame) < l4 + 14:
        return None
    sport, dport = struct.unpack_from("!HH", frame, l4)
    return Seg(*macs, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport,
               frame[l4 + 13], False)  # fmt: skip


# ------------------------------------------------------------------------------------ l4 helper


def l4_helper_main(argv: list[str]) -> int:
    """Inside l4: LiveDataplane on eth0; stdin lines 'publish PATH' -> 'ok GENERATION' / 'error ...';
    'stop' (or EOF) stops it."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", default="xdp")
    a = ap.parse_args(argv)

    from fwd.config import load_config
    from fwd.live import LiveDataplane

    live = LiveDataplane(load_config(a.config), interfaces=["eth0"], mode=a.mode)
    live.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "publish":
                try:
                    print(f"ok {live.publish(load_config(arg))}", flush=True)
                except Exception as e:  # reported to the test, which fails with it
                    print(f"error {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
            elif cmd == "stop":
                break
    finally:
        live.stop()
    return 0


class L4Helper:
    def __init__(self, topo: RedirectTopology, config: Path, mode: str, log: Path):
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.l4, sys.executable, "-m", "tests.netns.redirect_rig", "l4",
             "--config", str(config), "--mode", mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=str(tp.REPO),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"l4 helper did not start ({line!r}):\n{self.log()[-3000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def publish(self, config: Path) -> int:
        self.proc.stdin.write(f"publish {config}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ok "):
            raise RuntimeError(f"publish {config}: {line!r}\n{self.log()[-2000:]}")
        return int(line.split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "l4":
        sys.exit(l4_helper_main(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
