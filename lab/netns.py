"""The lab in network namespaces, on this machine (no Docker needed): ``make lab-up`` /
``make lab-down``, the scenario tests (tests/lab) and ``make demo``.

Each node of lab/topology.py becomes a namespace PREFIX+NAME (``fwdlab-r1``, ...); each link a
veth pair whose ends are created directly inside their namespaces (nothing appears in the root
namespace). Each node then runs its committed ``containerlab/configs/NODE/network.sh`` and starts
the processes lab/render.py's ``steps()`` lists, with the node's runtime directory
RUN_DIR/NODE holding sockets and logs. :meth:`NetnsLab.destroy` ends every process of the lab's
namespaces, deletes the namespaces and the runtime directory: nothing is left behind.

The rest of this module is what the scenarios need to act on the lab and to look at it: start,
stop (SIGTERM) and kill (SIGKILL) fwd on an L4 node; ask a daemon (control socket) or run
``fwd`` in a node; HAProxy's runtime API; the routers' kernel routes (pyroute2) and BIRD's
protocol states (birdc); a router's loss (BIRD killed, every link down) and return.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import render
from lab import topology as t
from lab.topology import LAB, Lab

REPO = render.REPO
CONFIGS = render.OUT / "configs"
DEFAULT_PREFIX = "fwdlab-"
DEFAULT_RUN_DIR = Path("/run/fwd-lab")
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ helpers


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 30, env=None) -> str:
    cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> {p.returncode}: {(p.stderr or p.stdout).strip()[-2000:]}")
    return p.stdout


def netns_list() -> list[str]:
    """Named network namespaces (those `ip netns` manages: /run/netns/NAME)."""
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """fn() on a thread that entered namespace ns; its result or exception. Sockets made there
    stay in that namespace and may be used from any thread afterwards."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    th = threading.Thread(target=run, name=f"netns-{ns}")
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def http_get(ns: str, host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """One GET from inside ns: (status, body)."""

    def go() -> tuple[int, str]:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode(errors="replace")

    return in_netns(ns, go)


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # the condition is not there yet
            last_err = e
        if time.monotonic() > deadline:
            raise LabError(
                f"timed out after {timeout:g} s waiting for {what}" + (f" ({last_err})" if last_err else "")
            )
        time.sleep(interval)


# ------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    node: str
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    pid: int = 0

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        if self.popen is not None:
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None if self.alive() else 0

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# ------------------------------------------------------------------------------------ the lab


@dataclass
class NetnsLab:
    prefix: str = DEFAULT_PREFIX
    run_dir: Path = DEFAULT_RUN_DIR
    lab: Lab = LAB
    configs: Path = CONFIGS
    fwd: str = str(REPO / ".venv" / "bin" / "fwd")
    python: str = sys.executable
    log: Callable[[str], None] = field(default=lambda msg: None)
    procs: dict[tuple[str, str], Proc] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    fwd_pids: list[int] = field(default_factory=list)  # every fwd this lab started (ExaBGP's files)
    _iprs: dict[str, Any] = field(default_factory=dict, repr=False)
    _ipr_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- names and places

    def ns(self, node: str) -> str:
        return self.prefix + node

    def run(self, node: str) -> Path:
        return self.run_dir / node

    def config(self, node: str) -> Path:
        return self.configs / node

    def env(self, node: str) -> dict[str, str]:
        return {
            "LAB_CONFIG": str(self.config(node)),
            "LAB_RUN": str(self.run(node)),
            "FWD": self.fwd,
            "PYTHON": self.python,
        }

    # -- build

    def check_configs(self) -> None:
        """The committed node files must be what lab/render.py writes (python -m lab render)."""
        stale = [
            rel
            for rel, text in render.files(self.lab).items()
            if not (self.configs.parent / rel).is_file() or (self.configs.parent / rel).read_text() != text
        ]
        if stale:
            raise LabError(
                f"{self.configs.parent}: {len(stale)} generated file(s) out of date "
                f"({', '.join(stale[:4])}...): run `python -m lab render`"
            )

    def create(self) -> None:
        """Namespaces, links, each node's network.sh. Raises (after cleaning up) on failure."""
        self.check_configs()
        for name in netns_list():
            if name.startswith(self.prefix):
                raise LabError(
                    f"namespace {name} exists: a lab with prefix {self.prefix!r} is up (make lab-down)"
                )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for n in self.lab.nodes:
                sh("ip", "netns", "add", self.ns(n.name))
                self.namespaces.append(self.ns(n.name))
                self.run(n.name).mkdir(parents=True, exist_ok=True)
            for link in self.lab.links:
                (a, a_if), (b, b_if) = link.a, link.b
                sh(
                    "ip",
                    "link",
                    "add",
                    a_if,
                    "netns",
                    self.ns(a),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    b_if,
                    "netns",
                    self.ns(b),
                )
            for n in self.lab.nodes:
                sh("sh", str(self.config(n.name) / "network.sh"), ns=self.ns(n.name))
            self.save_state()
        except BaseException:
            self.destroy()
            raise

    def start_step(self, node: str, step: render.Step) -> Proc | None:
        env = self.env(node)
        argv = [string.Template(a).substitute(env) for a in step.argv]
        full_env = {**os.environ, **env, **step.env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        if step.kind == "once":
            sh(*argv, ns=self.ns(node), env=full_env, timeout=60)
            return None
        log = self.run(node) / f"{step.name}.log"
        with open(log, "ab") as f:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *argv],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=str(REPO),
                start_new_session=True,
            )
        proc = Proc(node, step.name, argv, log, p, p.pid)
        self.procs[(node, step.name)] = proc
        if step.name == "fwd":
            self.fwd_pids.append(p.pid)
        self.save_state()
        return proc

    def step(self, node: str, name: str) -> render.Step:
        return next(s for s in render.steps(self.lab.node(node)) if s.name == name)

    def start(self) -> None:
        """Start every node's processes; return when the lab serves the VIPs."""
        try:
            for r in self.lab.routers:
                self.start_step(r.name, self.step(r.name, "bird"))
            for r in self.lab.routers:
                wait_until(
                    lambda r=r: self.birdc(r.name, "show status").find("Daemon is up") >= 0,
                    20,
                    f"BIRD on {r.name}",
                )
            self.log("routers: BIRD up")
            for n in self.lab.l7:
                for s in render.steps(n):
                    self.start_step(n.name, s)
            for n in self.lab.l7:
                for v in self.lab.vips:
                    wait_until(
                        lambda n=n, v=v: http_get(self.ns(n.name), n.lan_ip, 80, v.health_uri)[0] == 200,
                        20,
                        f"HAProxy and the app on {n.name} ({v.name})",
                    )
            self.log("L7 nodes: fwd-redirect attached, app and HAProxy up")
            for n in self.lab.l4:
                self.start_fwd(n.name, wait=False)
            for n in self.lab.l4:
                self.wait_fwd_ready(n.name)
            self.log("L4 nodes: fwd running")
            self.wait_routes({v.address: {n.name for n in self.lab.l4} for v in self.lab.vips})
            self.log("routers: every VIP routed over every L4 node")
        except BaseException:
            self.save_state()
            raise

    def up(self) -> None:
        self.create()
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise

    # -- teardown

    def destroy(self) -> list[str]:
        """End every process in the lab's namespaces, delete them and the runtime directory.
        Returns what was removed (namespaces)."""
        with self._ipr_lock:
            for ipr in self._iprs.values():
                with contextlib.suppress(Exception):
                    ipr.close()
            self._iprs.clear()
        names = sorted(set(self.namespaces) | {n for n in netns_list() if n.startswith(self.prefix)})
        pids = {pid for ns in names for pid in netns_pids(ns)}
        pids |= {p.pid for p in self.procs.values() if p.alive()}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.procs.values():
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(5)
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        # fwd keeps ExaBGP's files in /run/fwd-bgp-PID-*; one that was killed could not remove them
        for pid in set(self.fwd_pids) | {p.pid for p in self.procs.values() if p.name == "fwd"}:
            for d in Path("/run").glob(f"fwd-bgp-{pid}-*"):
                shutil.rmtree(d, ignore_errors=True)
        self.fwd_pids.clear()
        self.procs.clear()
        self.namespaces.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return names

    # -- state (so that `python -m lab down` / `status` find a lab another process started)

    def save_state(self) -> None:
        if not self.run_dir.is_dir():
            return
        state = {
            "prefix": self.prefix,
            "namespaces": self.namespaces,
            "procs": [
                {"node": p.node, "name": p.name, "pid": p.pid, "argv": p.argv, "log": str(p.log)}
                for p in self.procs.values()
            ],
        }
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def attach(cls, prefix: str = DEFAULT_PREFIX, run_dir: Path = DEFAULT_RUN_DIR) -> NetnsLab:
        lab = cls(prefix=prefix, run_dir=run_dir)
        try:
            state = json.loads((run_dir / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        lab.namespaces = [n for n in state.get("namespaces", []) if n in netns_list()]
        for p in state.get("procs", []):
            lab.procs[(p["node"], p["name"])] = Proc(
                p["node"], p["name"], p["argv"], Path(p["log"]), None, p["pid"]
            )
        return lab

    # -- L4 nodes: fwd

    def fwd_socket(self, node: str) -> str:
        return str(self.run(node) / "fwd.sock")

    def start_fwd(self, node: str, wait: bool = True) -> Proc:
        old = self.procs.get((node, "fwd"))
        if old is not None and old.alive():
            raise LabError(f"fwd already runs on {node} (pid {old.pid})")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.fwd_socket(node))
        p = self.start_step(node, self.step(node, "fwd"))
        assert p is not None
        if wait:
            self.wait_fwd_ready(node)
        return p

    def wait_fwd_ready(self, node: str, timeout: float = 30) -> None:
        p = self.procs[(node, "fwd")]

        def ready() -> bool:
            if not p.alive():
                raise LabError(f"fwd on {node} exited:\n{p.tail()}")
            return bool(self.fwd_call(node, "ping", timeout=2).get("ready"))

        try:
            wait_until(ready, timeout, f"fwd on {node}", interval=0.2)
        except LabError as e:
            raise LabError(f"{e}\n--- fwd log ({node}):\n{p.tail()}") from None

    def stop_fwd(self, node: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send sig to fwd on node; wait for it to exit (not for SIGKILL's aftermath elsewhere)."""
        p = self.procs[(node, "fwd")]
        p.signal(sig)
        rc = p.wait(timeout)
        if rc is None:
            raise LabError(f"fwd on {node} did not exit within {timeout:g} s after signal {sig}:\n{p.tail()}")
        return rc

    def fwd_call(self, node: str, cmd: str, timeout: float = 10, **args: Any) -> Any:
        from fwd.api import ControlClient

        with ControlClient(self.fwd_socket(node), timeout=timeout) as c:
            return c.call(cmd, **args)

    def fwd_cli(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`fwd ARGS` inside node (with the node's control socket)."""
        env = {**os.environ, "FWD_CONTROL_SOCKET": self.fwd_socket(node)}
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns(node), self.fwd, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if check and p.returncode != 0:
            raise LabError(
                f"fwd {' '.join(args)} on {node}: exit {p.returncode}: {(p.stderr or p.stdout).strip()}"
            )
        return p

    def node_pids(self, node: str) -> dict[int, str]:
        """pid -> command line of every live process in node's namespace (zombies left out)."""
        out = {}
        for pid in netns_pids(self.ns(node)):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("Z", "X"):
                    out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except (OSError, IndexError):
                pass
        return out

    # -- L7 nodes: HAProxy runtime API

    def haproxy(self, node: str, command: str) -> str:
        path = str(self.run(node) / "haproxy.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    # -- routers

    def birdc(self, router: str, command: str) -> str:
        sock = str(self.run(router) / "bird.ctl")
        return sh("birdc", "-s", sock, *command.split(), timeout=10)

    def bgp_states(self, router: str) -> dict[str, str]:
        """BIRD's BGP protocols on router: {L4 node: state} (Established, Active, Connect, ...)."""
        out = {}
        for line in self.birdc(router, "show protocols").splitlines():
            f = line.split()
            if len(f) >= 6 and f[1] == "BGP":
                out[f[0].replace("_", "-")] = f[5] if f[3] == "up" else f[3]
        return out

    def route_table(self, router: str) -> dict[str, set[str]]:
        """router's kernel IPv4 routes (main table): {"PREFIX/LEN": next hops, by L4 node name where
        the next hop is an L4 node}; dead next hops left out. One netlink socket per router, kept."""
        from pyroute2 import IPRoute

        with self._ipr_lock:
            ipr = self._iprs.get(router)
            if ipr is None:
                ipr = self._iprs[router] = IPRoute(netns=self.ns(router))
            dump = list(ipr.route("dump", family=socket.AF_INET))
        out: dict[str, set[str]] = {}
        for r in dump:
            if r["table"] != 254 or not r.get("RTA_DST"):
                continue
            gws = [r.get("RTA_GATEWAY")] if r.get("RTA_GATEWAY") else []
            gws += [nh.get("RTA_GATEWAY") for nh in r.get("RTA_MULTIPATH") or [] if not nh["flags"] & 1]
            hops = {self.lab.l4_of_next_hop(router, gw) or gw for gw in gws if gw}
            out.setdefault(f"{r.get('RTA_DST')}/{r['dst_len']}", set()).update(hops)
        return out

    def routes(self, router: str, vip: str) -> set[str]:
        """The L4 nodes router's kernel forwards vip (a /32) to, by name."""
        return self.route_table(router).get(f"{vip}/32", set())

    def wait_routes(
        self, want: dict[str, set[str]], routers: Iterable[str] | None = None, timeout: float = 30
    ) -> float:
        """Wait until every router forwards each VIP to exactly the given L4 nodes; seconds taken."""
        routers = list(routers or [r.name for r in self.lab.routers])
        t0 = time.monotonic()

        def ok() -> bool:
            tables = {r: self.route_table(r) for r in routers}
            return all(
                tables[r].get(f"{vip}/32", set()) == nodes for r in routers for vip, nodes in want.items()
            )

        try:
            wait_until(ok, timeout, "the routers' routes", interval=0.1)
        except LabError:
            have = {r: {vip: sorted(self.routes(r, vip)) for vip in want} for r in routers}
            bgp = {}
            for r in routers:
                try:
                    bgp[r] = self.bgp_states(r)
                except Exception as e:  # BIRD is down: say so
                    bgp[r] = str(e)[:200]
            raise LabError(f"routes: want {want}, have {have}; BGP sessions: {bgp}") from None
        return time.monotonic() - t0

    def router_lose(self, router: str) -> None:
        """Power loss: BIRD dies (SIGKILL) and every link of the router goes down at once."""
        p = self.procs[(router, "bird")]
        p.signal(signal.SIGKILL)
        p.wait(5)
        for i in self.lab.node(router).ifaces:
            sh("ip", "link", "set", i.name, "down", ns=self.ns(router))

    def router_return(self, router: str) -> None:
        """The router comes back in the order that never attracts traffic it cannot deliver: links to
        the L4 nodes, BIRD, BGP routes installed; then the client link (traffic arrives); then the
        links to the L7 nodes (their replies may use it once it routes to the clients)."""
        node = self.lab.node(router)
        for i in node.ifaces:
            if i.peer in t.L4_NODES:
                sh("ip", "link", "set", i.name, "up", ns=self.ns(router))
        self.start_step(router, self.step(router, "bird"))
        wait_until(lambda: "Daemon is up" in self.birdc(router, "show status"), 20, f"BIRD on {router}")
        running = {n.name for n in self.lab.l4 if self.fwd_running(n.name)}
        if render.VIP_ROUTES == "bgp":
            self.wait_routes({v.address: running for v in self.lab.vips}, routers=[router])
        sh("ip", "link", "set", node.iface(t.CLIENT).name, "up", ns=self.ns(router))
        wait_until(lambda: self.has_route(router, str(t.CLIENTS)), 10, f"{router}: route to the clients")
        for i in node.ifaces:
            if i.peer in t.L7_NODES:
                sh("ip", "link", "set", i.name, "up", ns=self.ns(router))

    def has_route(self, router: str, prefix: str) -> bool:
        return prefix in self.route_table(router)

    def fwd_running(self, node: str) -> bool:
        p = self.procs.get((node, "fwd"))
        return p is not None and p.alive()

    # -- the clients

    def traffic(self) -> Traffic:
        return Traffic(self)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Traffic:
    """lab/traffic.py running in the client node, driven over its stdin/stdout."""

    def __init__(self, lab: NetnsLab) -> None:
        self.lab = lab
        log = lab.run(t.CLIENT) / "traffic.log"
        self._log = open(log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(t.CLIENT), lab.python, "-m", "lab.traffic"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        )
        self._lock = threading.Lock()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if '"ready"' not in line:
            self.close()
            raise LabError(f"the traffic client did not start: {line!r} {log.read_text()[-2000:]}")

    def call(self, cmd: str, **args: Any) -> Any:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise LabError(f"the traffic client exited ({self.proc.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise LabError(f"traffic {cmd}: {reply.get('error')}")
        return reply["result"]

    def open(self, batch: str, count: int, vip: str, port: int = 80) -> dict:
        return self.call("open", batch=batch, count=count, vip=vip, port=port)

    def report(self, batch: str) -> dict:
        return self.call("report", batch=batch)

    def close_batch(self, batch: str) -> dict:
        return self.call("close", batch=batch)

    def probe(self, count: int, vip: str, port: int = 80) -> dict:
        return self.call("probe", count=count, vip=vip, port=port)

    def counters(self) -> dict:
        return self.call("counters")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def node_summary(lab: Lab = LAB) -> list[tuple[str, str, str, str]]:
    """(node, role, addresses, processes) per node: the lab's layout, for `python -m lab status`."""
    rows = []
    for n in lab.nodes:
        addrs = ", ".join(f"{i.name} {i.address}" for i in n.ifaces if i.address)
        if n.role == "l7":
            addrs += ", lo " + " ".join(f"{v.address}/32" for v in lab.vips)
        if n.role == "client":
            addrs += f", lo {t.CLIENTS} (AnyIP)"
        names = {"fwd": "fwd run (+ ExaBGP, its child)", "redirect": "fwd-redirect (tc, attached once)"}
        procs = ", ".join(names.get(s.name, s.name) for s in render.steps(n))
        procs = procs or ("bridge br0" if n.role == "switch" else "the traffic client, when driven")
        rows.append((n.name, n.role, addrs, procs))
    return rows
