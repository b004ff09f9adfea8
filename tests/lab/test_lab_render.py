"""The lab's two forms must not drift: the committed containerlab topology and node files
(containerlab/) are exactly what lab/render.py writes from lab/topology.py, the description the
network-namespace lab is built from; and the shipped configurations are valid for the real
programs (BIRD, HAProxy, fwd). No privileges needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from lab import render
from lab.netns import CONFIGS
from lab.topology import LAB

IN_CI = os.environ.get("CI", "").lower() == "true"


def test_committed_files_are_generated(tmp_path):
    """Regenerate everything into a temporary directory and compare with the committed tree."""
    render.write(tmp_path)
    want = {p.relative_to(tmp_path): p for p in tmp_path.rglob("*") if p.is_file()}
    have = {p.relative_to(render.OUT): p for p in (render.OUT / "configs").rglob("*") if p.is_file()}
    have[render.OUT.joinpath("fwd-lab.clab.yml").relative_to(render.OUT)] = render.OUT / "fwd-lab.clab.yml"
    missing = sorted(str(r) for r in want if r not in have)
    extra = sorted(str(r) for r in have if r not in want)
    differ = sorted(str(r) for r in want if r in have and have[r].read_text() != want[r].read_text())
    hint = "run `python -m lab render` and commit containerlab/"
    assert not missing, f"not committed: {missing}; {hint}"
    assert not extra, f"committed but no longer generated: {extra}; {hint}"
    assert not differ, f"out of date: {differ}; {hint}"
    for r, p in have.items():
        if p.suffix == ".sh":
            assert p.stat().st_mode & 0o111, f"{r} is not executable"


def test_clab_topology_matches_the_netns_lab():
    """Read the committed .clab.yml back: its nodes and links are the ones lab/netns.py builds."""
    text = (render.OUT / "fwd-lab.clab.yml").read_text()
    nodes_part = text.partition("\n  nodes:\n")[2].partition("\n  links:\n")[0]
    nodes = re.findall(r"^    ([a-z0-9-]+):$", nodes_part, re.M)
    links = {tuple(sorted(m)) for m in re.findall(r'endpoints: \["([^"]+)", "([^"]+)"\]', text)}
    assert nodes == [n.name for n in LAB.nodes]
    want = {
        tuple(sorted((f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}"))) for a, b in ((lk.a, lk.b) for lk in LAB.links)
    }
    assert links == want
    # every node's binds point at its committed files, which the netns lab runs
    for n in LAB.nodes:
        assert f"configs/{n.name}:/lab/config:ro" in text
        assert (CONFIGS / n.name / "network.sh").is_file()


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"needs {tool} (scripts/setup.sh installs it)"
        if IN_CI:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


@pytest.mark.parametrize("router", [n.name for n in LAB.routers])
def test_bird_accepts_config(router):
    bird = _need("bird")
    p = subprocess.run(
        [bird, "-p", "-c", str(CONFIGS / router / "bird.conf")], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("node", [n.name for n in LAB.l7])
def test_haproxy_accepts_config(node, tmp_path):
    haproxy = _need("haproxy")
    env = {"LAB_RUN": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    p = subprocess.run(
        [haproxy, "-c", "-f", str(CONFIGS / node / "haproxy.cfg")], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("node", [n.name for n in LAB.l4])
def test_fwd_accepts_config(node):
    from fwd.config import load_config

    cfg = load_config(str(CONFIGS / node / "fwd.toml"))
    assert [t.name for t in cfg.tables] == [v.name for v in LAB.vips]
    assert [str(b.address) for b in cfg.tables[0].backends] == [n.lan_ip for n in LAB.l7]
