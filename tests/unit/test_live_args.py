"""`fwd run` refusals and argument handling that need no network namespace.

Each refusal is one `fwd: error:` line and exit status 1 (2 for usage errors). The privilege
test drops root with setpriv when the suite runs as root; the rest run as whoever runs the suite.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "examples" / "fwd.toml"
GLB = REPO / "examples" / "glb-forwarding-table.json"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def fwd(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "fwd", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{p.stderr}"
    assert lines[0].startswith("fwd: error: "), lines[0]
    return lines[0]


def a_missing_interface() -> str:
    names = set(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else set()
    return next(n for n in (f"fwdnoif{i}" for i in range(100)) if n not in names)


def test_help_describes_the_modes():
    p = fwd("run", "--help")
    assert p.returncode == 0
    for word in ("--mode", "xdp", "raw", "auto", "--interface", "--stats-interval", "fwd_raw", "SIGTERM"):
        assert word in p.stdout, word


def test_interface_is_required():
    p = fwd("run", "--config", str(CONFIG))
    assert p.returncode == 2
    assert "--interface" in one_error_line(p)


def test_bad_mode_is_a_usage_error():
    p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--mode", "dpdk")
    assert p.returncode == 2
    line = one_error_line(p)
    assert "--mode" in line and "dpdk" in line


def test_bad_xsk_mode_is_a_usage_error():
    p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--xsk-mode", "fast")
    assert p.returncode == 2
    assert "--xsk-mode" in one_error_line(p)


def test_rx_holdoff_out_of_range():
    for bad in ("-1", "10001"):
        p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--rx-holdoff-us", bad)
        assert p.returncode == 2, bad
        assert "--rx-holdoff-us" in one_error_line(p)


def test_negative_stats_interval():
    p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--stats-interval", "-1")
    assert p.returncode == 2
    assert "--stats-interval" in one_error_line(p)


def test_bad_config_is_refused_before_anything_else():
    p = fwd("run", "--config", str(REPO / "no-such.toml"), "--interface", "lo", "--mode", "raw")
    assert p.returncode == 2
    assert "no such file" in one_error_line(p)


def test_missing_interface():
    name = a_missing_interface()
    p = fwd("run", "--config", str(CONFIG), "--interface", name, "--mode", "raw")
    assert p.returncode == 1
    assert f"interface {name} does not exist" in one_error_line(p)


def test_missing_interface_glb_json():
    name = a_missing_interface()
    p = fwd("run", "--config", str(GLB), "--interface", "lo", "--interface", name, "--mode", "auto")
    assert p.returncode == 1
    assert f"interface {name} does not exist" in one_error_line(p)


def test_interface_given_twice():
    p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--interface", "lo", "--mode", "raw")
    assert p.returncode == 1
    assert "given twice" in one_error_line(p)


@pytest.mark.parametrize("mode", ["raw", "xdp", "auto"])
def test_not_root(mode):
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not installed")
        prefix = tuple(NOBODY)
    p = fwd("run", "--config", str(CONFIG), "--interface", "lo", "--mode", mode, prefix=prefix)
    assert p.returncode == 1, p.stderr
    line = one_error_line(p)
    assert "needs root" in line and "CAP_NET_RAW" in line
    if mode != "raw":
        assert "CAP_BPF" in line


# ---- pieces of fwd.live that need no privileges


def test_live_dataplane_rejects_bad_modes():
    live = pytest.importorskip("fwd.live")
    from fwd.config import load_config

    cfg = load_config(CONFIG)
    with pytest.raises(live.LiveError, match="bad mode"):
        live.LiveDataplane(cfg, ["lo"], "dpdk")
    with pytest.raises(live.LiveError, match="bind mode"):
        live.LiveDataplane(cfg, ["lo"], "raw", xsk_mode="fast")


def test_nft_elements():
    live = pytest.importorskip("fwd.live")
    from fwd.native import BindSpec

    net = ipaddress.ip_network
    binds = [
        BindSpec(net("10.0.0.0/24"), "tcp", 80, 80, ("src_addr",), 0),
        BindSpec(net("10.0.0.5/32"), "tcp", 443, 443, ("src_addr",), 0),
        BindSpec(net("10.0.1.0/24"), "udp", 5000, 5999, ("src_addr",), 1),
        BindSpec(net("2001:db8::/64"), "tcp", 80, 80, ("src_addr",), 1),
    ]
    sets = live.nft_elements(binds, forward_icmp_echo=False)
    assert sets["vip4"] == [
        "10.0.0.0/24 . tcp . 80-80",
        "10.0.0.5/32 . tcp . 443-443",
        "10.0.1.0/24 . udp . 5000-5999",
    ]
    assert sets["frag4"] == ["10.0.0.0/24 . tcp", "10.0.1.0/24 . udp"]  # 10.0.0.5 is inside 10.0.0.0/24
    assert sets["vip6"] == ["2001:db8::/64 . tcp . 80-80"]
    assert sets["echo4"] == [] and sets["echo6"] == []
    echo = live.nft_elements(binds, forward_icmp_echo=True)
    assert echo["echo4"] == ["10.0.0.0/23"] and echo["echo6"] == ["2001:db8::/64"]


def test_queues_in_use_of_loopback():
    live = pytest.importorskip("fwd.live")
    assert live.rx_queues_in_use("lo", 1, None, 1) >= 1
