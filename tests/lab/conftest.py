"""Fixtures for the lab tests (tests/lab): the whole multi-tier lab of lab/topology.py in network
namespaces, once per module, with its traffic client.

These tests need root, network namespaces and the real components: BIRD 2 (bird, birdc),
HAProxy, ExaBGP (fwd's [bgp] runs it), nftables, ethtool and fwd itself. Without them they skip
with the reason, except in CI (CI=true), where a missing privilege or component is a failure.

The lab's namespaces are named fwdt<pid>-lab-NODE (tests/netns's sweep removes those of runs
whose process is gone) and its runtime files live in pytest's temporary directory; the fixture's
finalizer ends every process and deletes every namespace, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import netns

IN_CI = os.environ.get("CI", "").lower() == "true"
OUTCOMES: list[str] = []  # one line per scenario, printed at the end of the run


def skip_or_fail(reason: str | None) -> None:
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"lab tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, BGP)"
    for tool in ("ip", "bird", "birdc", "haproxy", "nft", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (scripts/setup.sh installs it)"
    fwd = Path(netns.REPO / ".venv" / "bin" / "fwd")
    if not fwd.exists():
        return f"{fwd} is not installed (make setup)"
    cfg = netns.CONFIGS / "l4-1" / "fwd.toml"
    p = subprocess.run([str(fwd), "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return f"fwd refuses the lab's config: {p.stderr.strip()}"
    try:
        from fwd.bgp import BgpError, find_exabgp
        from fwd.config import load_config

        bgp = load_config(str(cfg)).bgp
        if bgp is not None:
            find_exabgp(bgp)  # the config's [bgp] runs ExaBGP
    except ImportError as e:
        return f"fwd has no BGP support: {e}"
    except BgpError as e:
        return str(e)
    probe = f"fwdt{os.getpid()}-labprobe"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    skip_or_fail(missing())
    from tests.netns import topology as tp

    tp.sweep_stale()
    run_dir = tmp_path_factory.mktemp("lab")
    the_lab = netns.NetnsLab(prefix=f"fwdt{os.getpid()}-lab-", run_dir=run_dir, log=print)
    try:
        the_lab.up()
        yield the_lab
    finally:
        logs = {
            p.relative_to(run_dir): p.read_text(errors="replace")[-3000:]
            for p in sorted(run_dir.glob("*/*.log"))
            if p.is_file()
        }
        fwd_pids = list(the_lab.fwd_pids)
        the_lab.destroy()
        left = [n for n in netns.netns_list() if n.startswith(the_lab.prefix)]
        left += [str(d) for pid in fwd_pids for d in Path("/run").glob(f"fwd-bgp-{pid}-*")]
        left += [str(run_dir)] if run_dir.exists() else []
        assert not left, f"left behind: {left}"
        if os.environ.get("LAB_LOGS"):
            for rel, text in logs.items():
                print(f"--- {rel}:\n{text}")


@pytest.fixture(scope="module")
def traffic(lab):
    tr = lab.traffic()
    yield tr
    tr.close()


@pytest.fixture(scope="session")
def outcomes() -> list[str]:
    """Lines for the end-of-run summary (scenario results, longest stalls)."""
    return OUTCOMES


def pytest_terminal_summary(terminalreporter):
    if OUTCOMES:
        terminalreporter.section("lab scenarios: connections kept / broken, longest stall")
        for line in OUTCOMES:
            terminalreporter.write_line(line)
