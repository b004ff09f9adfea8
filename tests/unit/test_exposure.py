"""Exposure checks that need no privileges (docs/hardening.md, "Least privilege and exposure").

* No shell anywhere: a static check over the sources of fwd/, healthcheck/ and lab/ (no
  shell=True, os.system, os.popen, os.spawn*, subprocess.getoutput, create_subprocess_shell, no
  command given as one string) and over native/ (no system(), popen(), exec*()).
* Names and addresses with shell metacharacters are refused where they enter: interface names
  (fwd run, fwd redirect), config values (backend and bind addresses, check Host and URI, the
  metrics address); the ExaBGP configuration fwd writes cannot be extended through the config path.
* The health checker connects to the backend's address only: a check's Host is a header, and a
  redirect is a failed check, never followed.
* The metrics endpoint's default address is loopback.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("fwd", "healthcheck", "lab")
SHELL_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"),
}
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec"}
METACHARACTERS = ["eth0;id", "eth0$(id)", "eth0`id`", 'eth0"', "eth0|x", "a b", "eth0&", "x>y", "x\ny"]


def python_sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 30, files
    return files


def dotted(node: ast.AST) -> tuple[str, ...]:
    if isinstance(node, ast.Attribute):
        return (*dotted(node.value), node.attr)
    if isinstance(node, ast.Name):
        return (node.id,)
    return ()


def shell_uses(path: Path) -> list[str]:
    """Calls in one file that run a shell, or give a command as one string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                found.append(f"{where}: shell={ast.unparse(kw.value)}")
        if name[-2:] in SHELL_CALLS or (len(name) >= 2 and name[-2] == "os" and name[-1].startswith("spawn")):
            found.append(f"{where}: {'.'.join(name)}()")
        if name[-2:-1] in (("subprocess",), ("asyncio",)) and name[-1] in RUNNERS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp) and not (
                name[-1] == "create_subprocess_exec"
            ):
                found.append(f"{where}: {'.'.join(name)}() given a command string: {ast.unparse(first)[:60]}")
    return found


def test_no_shell_in_the_python_sources():
    found = [f for p in python_sources() for f in shell_uses(p)]
    assert not found, "\n".join(found)


def test_the_static_check_finds_what_it_looks_for(tmp_path):
    """The check itself can fail: each forbidden form in a scratch file is reported."""
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import os, subprocess, asyncio\n"
        "subprocess.run(f'ip link del {x}', shell=True)\n"
        "os.system('nft flush ruleset')\n"
        "os.popen('id')\n"
        "subprocess.check_output('ip -j link')\n"
        "asyncio.create_subprocess_shell('exabgp x')\n"
        "subprocess.run(['ip', 'link'], shell=False)\n"
    )
    found = shell_uses(bad)
    assert [f.split(": ", 1)[1].split("(")[0] for f in found] == [
        "shell=True",
        "subprocess.run",
        "os.system",
        "os.popen",
        "subprocess.check_output",
        "asyncio.create_subprocess_shell",
    ], found


def test_no_shell_in_the_c_sources():
    pattern = re.compile(r"\b(system|popen|execl|execlp|execle|execv|execvp|execvpe|posix_spawnp?)\s*\(")
    files = sorted((REPO / "native").rglob("*.[ch]"))
    assert files
    found = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith(("*", "//", "/*"))
    ]
    assert not found, "\n".join(found)


# ------------------------------------------------------------------------ names and config values


def fwd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fwd", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("name", METACHARACTERS)
def test_interface_names_with_metacharacters_are_refused(name, tmp_path):
    """Refused before anything else happens (and before the privilege check: any user sees it)."""
    cfg = tmp_path / "fwd.toml"
    cfg.write_text(
        '[node]\ntunnel_source = "192.0.2.1"\n[[tables]]\nname = "t"\n'
        'hash_key = "12345678901234561234567890123456"\nseed = "34567890123456783456789012345678"\n'
        '  [[tables.binds]]\n  ip = "10.0.0.1"\n  proto = "tcp"\n  port = 80\n'
        '  [[tables.backends]]\n  ip = "10.1.0.1"\n'
    )
    for argv in (
        ("run", "--config", str(cfg), "--interface", name, "--mode", "raw"),
        ("redirect", "attach", "--interface", name, "--allow", "10.0.0.0/8"),
        ("redirect", "detach", "--interface", name),
    ):
        p = fwd(*argv)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, (argv, p.stderr)
        assert "not a usable interface name" in lines[0], lines[0]


BASE = """
[node]
tunnel_source = "192.0.2.1"
[daemon]
metrics_address = "{metrics}"
[[tables]]
name = "t"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
checks = [ {{ type = "http", port = 80, uri = "{uri}", host = "{host}" }} ]
  [[tables.binds]]
  ip = "{bind}"
  proto = "tcp"
  port = 80
  [[tables.backends]]
  ip = "{backend}"
"""
GOOD = {
    "metrics": "127.0.0.1:9641",
    "uri": "/",
    "host": "svc.example",
    "bind": "10.0.0.1",
    "backend": "10.1.0.1",
}


@pytest.mark.parametrize(
    "key,value",
    [
        ("backend", "10.1.0.1; touch /tmp/x"),
        ("backend", "$(id)"),
        ("backend", "backend.example"),
        ("bind", "10.0.0.1 || true"),
        ("host", "a b"),
        ("host", "x/../y"),
        ("uri", "/ HTTP/1.1\\r\\nX: y"),
        ("metrics", "127.0.0.1:9641; id"),
        ("metrics", "`id`:9641"),
    ],
)
def test_config_values_with_metacharacters_are_refused(key, value):
    from fwd.config import ConfigError, parse_config

    parse_config(BASE.format(**GOOD))  # the base is valid
    with pytest.raises(ConfigError) as e:
        parse_config(BASE.format(**{**GOOD, key: value}), "fwd.toml")
    assert str(e.value).startswith("fwd.toml: "), e.value


def test_exabgp_config_cannot_be_extended_through_the_config_path():
    from fwd.bgp import BgpPeer, BgpSettings, render_exabgp_config

    s = BgpSettings(
        65001, ipaddress.IPv4Address("10.0.0.1"), (BgpPeer(ipaddress.ip_address("10.0.0.2"), 65000),)
    )
    evil = "/etc/fwd.toml\nprocess evil {\n    run /bin/sh -c id;\n}\n#"
    text = render_exabgp_config(s, "/usr/bin/python3 /x/bgp_relay.py /run/s", evil)
    code = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert [ln for ln in code if re.match(r"\s*process\s", ln)] == ["process fwd {"], text
    assert [ln.strip() for ln in code if ln.lstrip().startswith("run")] == [
        "run /usr/bin/python3 /x/bgp_relay.py /run/s;"
    ]


def test_bgp_password_cannot_carry_exabgp_syntax():
    from fwd.config import ConfigError, parse_config

    head = BASE.format(**GOOD)
    for pw in ("a;b", 'a"b', "a}b", "a{b", "a b", "a\nb"):
        text = head + (
            f'[bgp]\nlocal_as = 65001\nrouter_id = "10.0.0.1"\nlocal_address = "10.0.0.1"\n'
            f'[[bgp.peers]]\naddress = "10.0.0.2"\npeer_as = 65000\npassword = {json.dumps(pw)}\n'
        )
        with pytest.raises(ConfigError, match="password"):
            parse_config(text, "fwd.toml")


# -------------------------------------------------------------------------------- health checks


def test_checks_connect_to_the_backend_only():
    """Host names another listening address, the answer redirects to it: nothing connects there."""
    from healthcheck import Checker, CheckSpec

    async def go():
        hits: dict[str, int] = {"backend": 0, "other": 0}

        def handler(who: str, answer: bytes):
            async def h(r, w):
                hits[who] += 1
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):  # the tcp check resets
                    await r.readuntil(b"\r\n\r\n")
                    w.write(answer)
                    await w.drain()
                w.close()

            return h

        other = await asyncio.start_server(handler("other", b"HTTP/1.0 200 OK\r\n\r\n"), "127.0.0.2", 0)
        port = other.sockets[0].getsockname()[1]
        redirect = f"HTTP/1.0 302 Found\r\nLocation: http://127.0.0.2:{port}/\r\n\r\n".encode()
        backend = await asyncio.start_server(handler("backend", redirect), "127.0.0.1", port)
        c = Checker()
        try:
            lo = ipaddress.ip_address("127.0.0.1")
            r1 = await c.run(CheckSpec("http", port, host=f"127.0.0.2:{port}"), lo, 1.0)
            r2 = await c.run(CheckSpec("http", port, host="127.0.0.2"), lo, 1.0)
            r3 = await c.run(CheckSpec("tcp", port, mode="connect"), lo, 1.0)
            r4 = await c.run(CheckSpec("tcp", port), lo, 1.0)  # half-open: a SYN, nothing accepted
            await asyncio.sleep(0.05)  # an accepted connection's handler has run by now
        finally:
            c.close()
            backend.close()
            other.close()
        return hits, (r1, r2, r3, r4)

    hits, (r1, r2, r3, r4) = uvloop.run(go())
    assert not r1.ok and "302" in r1.error and not r2.ok, (r1, r2)
    assert r3.ok and r4.ok, (r3, r4)
    # r4 connects only where it falls back to connect mode (no CAP_NET_RAW)
    connects = 3 + (r4.detail == "connected")
    assert r4.detail == ("SYN-ACK" if os.geteuid() == 0 else "connected"), r4
    assert hits == {"backend": connects, "other": 0}, hits


def test_targets_are_the_configured_ranked_backends():
    from fwd.config import parse_config
    from healthcheck import CheckSpec, targets_from_config

    text = BASE.format(**GOOD) + "".join(
        f'  [[tables.backends]]\n  ip = "10.1.0.{i}"\n  state = "{s}"\n'
        for i, s in ((2, "inactive"), (3, "draining"), (4, "filling"), (5, "active"))
    )
    cfg = parse_config(text)
    targets = targets_from_config(cfg, checks=lambda t, b: b.checks or (CheckSpec("tcp", 22),))
    assert [str(t.address) for t in targets] == ["10.1.0.1", "10.1.0.3", "10.1.0.4", "10.1.0.5"]


def test_metrics_default_address_is_loopback():
    from fwd.config import DEFAULT_METRICS_ADDRESS, parse_config

    host, _, _ = DEFAULT_METRICS_ADDRESS.rpartition(":")
    assert ipaddress.ip_address(host.strip("[]")).is_loopback
    cfg = parse_config(BASE.format(**GOOD).replace('metrics_address = "127.0.0.1:9641"\n', ""))
    assert cfg.daemon.metrics_address == DEFAULT_METRICS_ADDRESS
