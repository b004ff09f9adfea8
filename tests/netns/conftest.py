"""Fixtures for the live tests: namespaces + veth topologies and `fwd run` inside them.

These tests need root, network namespaces and the real kernel. Without them they skip with the
reason, except in CI (CI=true), where CI runs as root: a missing privilege or a missing
`fwd run` is then a failure, never a silent skip.

Everything a test builds is torn down by fixture finalizers, also when the test fails or is
interrupted; namespaces are named fwdt<pid>-<role>, and the session starts by deleting those
left behind by runs whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.netns import topology as tp

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing_privilege() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, XDP)"
    for tool in ("ip", "nft", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command"
    probe = f"{tp.prefix_for_run()}probe"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _missing_fwd_run() -> str | None:
    if not tp.FWD.exists():
        return f"{tp.FWD} is not installed (make setup)"
    p = subprocess.run([str(tp.FWD), "run", "--help"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return f"`fwd run` is not available: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    return None


def _skip_or_fail(reason: str | None) -> None:
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"live tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def netns_ok():
    """Root and namespaces available (skip, or fail in CI); sweeps stale namespaces first."""
    _skip_or_fail(_missing_privilege())
    tp.sweep_stale()
    return True


@pytest.fixture(scope="session")
def fwd_run_ok(netns_ok):
    _skip_or_fail(_missing_fwd_run())
    return True


_counter = iter(range(1_000_000))


@pytest.fixture
def make_topology(netns_ok, request):
    """make_topology(queues=1) -> a built Topology, destroyed when the test ends."""
    made: list[tp.Topology] = []

    def make(queues: int = 1, **kw) -> tp.Topology:
        t = tp.Topology(prefix=f"{tp.prefix_for_run()}{next(_counter)}", queues=queues, **kw)
        made.append(t)
        return t.build()

    yield make
    for t in made:
        t.destroy()


@pytest.fixture
def topo(make_topology):
    return make_topology()


@pytest.fixture
def start_fwd(fwd_run_ok, tmp_path, request):
    """start_fwd(topo, toml_text, mode, interfaces=("eth0",)) -> FwdRun in topo.l4.

    The finalizer stops any run still going (SIGTERM) and prints each run's log, so a failing
    test shows what fwd said.
    """
    runs: list[tp.FwdRun] = []

    def start(topo: tp.Topology, toml: str, mode: str, interfaces=("eth0",), extra=()) -> tp.FwdRun:
        n = len(runs)
        cfg = tmp_path / f"fwd{n}.toml"
        cfg.write_text(toml)
        run = tp.FwdRun(topo.l4, cfg, interfaces, mode, tmp_path / f"fwd{n}.log", extra)
        runs.append(run)
        return run

    yield start
    for run in runs:
        rc = run.stop()
        log = run.log_path.read_text(errors="replace") if Path(run.log_path).exists() else ""
        print(f"\n--- fwd run ({' '.join(run.argv[1:])}) exit {rc}, log:\n{log[-6000:]}")
