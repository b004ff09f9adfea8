"""Helpers for the daemon's namespace tests: a real nginx per namespace, and a running `fwd run`
with its control socket and the CLI pointed at it (tests/netns/test_daemon*.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.netns import topology as tp

PORT = 80
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """A real nginx (one process, no daemon) in namespace ns, answering `name` on port 80."""

    def __init__(self, ns: str, workdir: Path, name: str):
        self.ns, self.dir, self.name = ns, workdir, name
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        temp = "\n".join(
            f"  {k}_temp_path {workdir}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf.write_text(
            f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log off;\n{temp}\n"
            f'  server {{ listen {PORT}; location / {{ return 200 "{name}\\n"; }} }}\n}}\n'
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, NGINX, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx in {self.ns} exited: {(self.dir / 'stderr').read_text()[-500:]}")
            if self.answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx in {self.ns} does not answer on port {PORT}")

    def answers(self) -> bool:
        def probe():
            try:
                with socket.create_connection(("127.0.0.1", PORT), timeout=0.5):
                    return True
            except OSError:
                return False

        return tp.in_netns(self.ns, probe)

    def stop(self) -> None:
        tp.terminate(self.proc)
        self.proc = None


class Daemon:
    """A `fwd run` in l4 with its own control socket, and the CLI pointed at it."""

    def __init__(self, topo, start_fwd, toml: str, sockdir: Path, mode: str = "xdp", extra=()):
        self.topo = topo
        sockdir.mkdir(parents=True, exist_ok=True)
        self.sock = str(sockdir / "fwd.sock")
        self.run = start_fwd(topo, toml, mode, extra=("--control-socket", self.sock, *extra))
        self.config = Path(self.run.argv[self.run.argv.index("--config") + 1])
        self.wait_ready()

    def cli(
        self, *args: str, user: list[str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        argv = [*(user or []), str(tp.FWD), *args]
        if "--control-socket" not in args and args[0] in ("status", "backend", "reload", "top", "lookup"):
            argv += ["--control-socket", self.sock]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        p = self.cli("status", "--json")
        assert p.returncode == 0, f"fwd status failed: {p.stderr}\n--- fwd log:\n{self.run.log()[-3000:]}"
        return json.loads(p.stdout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run.alive():
                break
            if os.path.exists(self.sock):
                p = self.cli("status", "--json")
                if p.returncode == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(
            f"fwd did not become ready (alive {self.run.alive()}):\n{self.run.log()[-4000:]}"
        )

    def backend(self, address: str) -> dict:
        return next(b for b in self.status()["tables"][0]["backends"] if b["address"] == address)

    def wait_backend(self, address: str, pred, timeout: float = 15, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        b = None
        while time.monotonic() < deadline:
            b = self.backend(address)
            if pred(b):
                return b
            time.sleep(0.05)
        raise AssertionError(
            f"backend {address}: not {what} within {timeout}s: {b}\n{self.run.log()[-3000:]}"
        )

    def metrics(self) -> str:
        def get():
            with socket.create_connection(("127.0.0.1", 9641), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: l4\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            return data.partition(b"\r\n\r\n")[2].decode()

        return tp.in_netns(self.topo.l4, get)


def verdict_of(b: dict):
    return b["health"]["verdict"]
