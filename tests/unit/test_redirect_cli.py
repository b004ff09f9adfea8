"""`fwd redirect` argument handling and refusals that need no network namespace (no root needed;
the privilege test drops root with setpriv when the suite runs as root).

Every refusal is one `fwd: error:` line; exit status 2 for usage errors, 1 for the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fwd: error: "), p.stderr
    return lines[0]


@pytest.mark.parametrize("sub", [(), ("attach",), ("detach",), ("stats",)])
def test_help(sub):
    p = fwd("redirect", *sub, "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: fwd redirect"), p.stderr
    if sub == ("attach",):
        assert "--allow" in p.stdout and "--source" in p.stdout


@pytest.mark.parametrize(
    "args,words",
    [
        ((), "required"),
        (("attach", "--interface", "lo"), "--allow"),
        (("attach", "--interface", "lo", "--allow", "10.0.0.1/24"), "host bits"),
        (("attach", "--interface", "lo", "--allow", "10.0.0.0/33"), "10.0.0.0/33"),
        (("attach", "--interface", "lo", "--allow", "::ffff:10.0.0.0/120"), "IPv4"),
        (("attach", "--interface", "lo", "--allow", "10.0.0.0/8", "--source", "nope"), "not an IPv4"),
        (("attach", "--interface", "lo", "--allow", "10.0.0.0/8", "--source", "0.0.0.0"), "unicast"),
        (
            (
                "attach",
                "--interface",
                "lo",
                "--allow",
                "10.0.0.0/8",
                "--source",
                "10.0.0.1",
                "--source",
                "10.0.0.2",
            ),
            "at most one per family",
        ),
        (("stats",), "--interface"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_usage_errors(args, words):
    p = fwd("redirect", *args)
    assert p.returncode == 2, p.stderr
    assert words in one_error_line(p)


def test_missing_interface():
    p = fwd("redirect", "stats", "--interface", "fwdnosuch0")
    assert p.returncode == 1
    assert "fwdnosuch0 does not exist" in one_error_line(p)


@pytest.mark.parametrize("sub", ["attach", "detach", "stats"])
def test_not_root(sub):
    """attach needs CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON, detach CAP_NET_ADMIN; stats needs
    none (it reads the pins), so unprivileged it only finds nothing attached."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not installed")
        prefix = tuple(NOBODY)
    extra = ("--allow", "10.0.0.0/8") if sub == "attach" else ()
    p = fwd("redirect", sub, "--interface", "lo", *extra, prefix=prefix)
    assert p.returncode == 1, p.stderr
    line = one_error_line(p)
    if sub == "stats":
        assert "fwd-redirect is not attached" in line, line
        return
    assert "needs root" in line and "CAP_NET_ADMIN" in line
    assert ("CAP_BPF" in line and "CAP_PERFMON" in line) == (sub == "attach"), line


def test_counter_names_match_the_header():
    """The names the CLI prints come from native/bpf/redirect.h through the C loader."""
    redirect = pytest.importorskip("fwd.redirect")
    try:
        names = redirect.counter_names()
    except redirect.RedirectError as e:
        pytest.skip(str(e))
    header = (REPO / "native" / "bpf" / "redirect.h").read_text()
    assert names[0] == "rx" and len(names) == len(set(names))
    for n in names:
        assert f'"{n}"' in header
    assert {n for n in names if n.startswith("decap_")} == {
        "decap_non_tcp",
        "decap_syn",
        "decap_socket",
        "decap_syncookie",
        "decap_last_hop",
        "decap_self",
    }
