"""A real BIRD 2 router inside a network namespace, for the BGP tests.

``Bird(ns, workdir, ...)`` writes a BIRD config with one BGP protocol per neighbour (import all,
export none, short timers so a lost session is noticed within seconds), starts
``bird -c CONF -s SOCK -f`` in ``ns`` and reads its table with ``birdc -s SOCK show route``.
Nothing of it leaves the namespace and its work directory; ``stop()`` ends it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.netns import topology as tp

BIRD = shutil.which("bird") or "/usr/sbin/bird"
BIRDC = shutil.which("birdc") or "/usr/sbin/birdc"


@dataclass
class Neighbor:
    name: str
    address: str
    peer_as: int
    password: str | None = None


class Bird:
    def __init__(
        self,
        ns: str,
        workdir: Path,
        router_id: str,
        local_address: str,
        local_as: int,
        neighbors: list[Neighbor],
        hold_time: int = 3,
    ) -> None:
        self.ns, self.dir = ns, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "bird.conf"
        self.sock = str(workdir / "bird.ctl")
        self.log_path = workdir / "bird.log"
        lines = [
            f'log "{self.log_path}" all;',
            f"router id {router_id};",
            "protocol device { scan time 1; }",
        ]
        for n in neighbors:
            lines += [
                f"protocol bgp {n.name} {{",
                f"  local {local_address} as {local_as};",
                f"  neighbor {n.address} as {n.peer_as};",
                f"  hold time {hold_time}; keepalive time 1;",
                "  connect delay time 1; connect retry time 1; error wait time 1, 2;",
                *([f'  password "{n.password}";'] if n.password else []),
                "  ipv4 { import all; export none; };",
                "  ipv6 { import all; export none; };",
                "}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, BIRD, "-c", str(self.conf), "-s", self.sock, "-f"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bird exited: {(self.dir / 'stderr').read_text()[-800:]}")
            if self.birdc("show status", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("bird does not answer on its control socket")

    def birdc(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [BIRDC, "-s", self.sock, *command.split()], capture_output=True, text=True, timeout=10
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"birdc {command}: {p.stderr or p.stdout}")
        return p

    def routes(self, detail: bool = False) -> dict[str, str]:
        """{prefix: its lines of `show route [all]`} over BIRD's IPv4 and IPv6 tables."""
        out: dict[str, str] = {}
        for table in ("master4", "master6"):
            text = self.birdc(f"show route {'all ' if detail else ''}table {table}").stdout
            current = None
            for line in text.splitlines():
                m = re.match(r"^([0-9a-fA-F.:]+/\d+)\s", line)
                if m:
                    current = m.group(1)
                    out[current] = line + "\n"
                elif current and line.startswith(("\t", " ")):
                    out[current] += line + "\n"
        return out

    def protocol_state(self, name: str) -> str:
        """BIRD's words for the BGP session: 'Established', 'Active', 'Connect', ..."""
        text = self.birdc(f"show protocols {name}").stdout
        for line in text.splitlines():
            if line.startswith(name + " "):
                return line.split()[-1]
        return "?"

    def wait(self, pred, timeout: float, what: str):
        """Poll routes() until pred(routes) is true; the routes, or AssertionError naming `what`."""
        deadline = time.monotonic() + timeout
        routes: dict[str, str] = {}
        while time.monotonic() < deadline:
            routes = self.routes()
            if pred(routes):
                return routes
            time.sleep(0.05)
        raise AssertionError(f"BIRD: {what} not seen within {timeout}s; its routes: {sorted(routes)}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        tp.terminate(self.proc)
        self.proc = None
