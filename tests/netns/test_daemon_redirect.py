"""The daemon with real L7 nodes behind fwd-redirect (tests/netns/redirect_rig.py: client, l4 running
`fwd run`, three L7 namespaces with nginx on the VIP and fwd-redirect on eth0; replies go straight
to the client).

* the GUE health check through the daemon: with fwd-redirect detached on one L7 node its GUE check
  fails although its TCP check still passes, so the daemon marks it down and no new request
  reaches it; attached again, it comes back up after `rise`;
* drain via the CLI with real long-lived TCP connections: after `fwd backend drain`, new
  connections avoid the drained node, and every existing connection keeps working (the flows it
  owned reach it through the second chance: the new primary's fwd-redirect forwards them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.netns import conftest
from tests.netns import redirect_rig as rr
from tests.netns import topology as tp
from tests.netns.daemon_rig import Daemon, verdict_of

CHECK_PORT = 8080
INTERVAL, TIMEOUT, RISE, FALL = 0.3, 0.25, 2, 2
LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


@pytest.fixture
def l7rig(netns_ok, fwd_run_ok, tmp_path, request):
    """The redirect rig with nginx and fwd-redirect on every L7 node, plus a TCP listener on port
    CHECK_PORT of each (the TCP check's target)."""
    for tool in ("nginx", "tc", "bridge"):
        if shutil.which(tool) is None and not (tool == "nginx" and rr.Path(rr.NGINX).exists()):
            conftest._skip_or_fail(f"needs {tool}")
    p = subprocess.run([str(tp.FWD), "redirect", "--help"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        conftest._skip_or_fail("`fwd redirect` (fwd-redirect, issue 4) is not available")
    topo = rr.RedirectTopology(prefix=f"{tp.prefix_for_run()}{request.node.name[5:11]}d-")
    listeners: list[subprocess.Popen] = []
    try:
        topo.build(tmp_path)
        for i in range(topo.n_l7):
            topo.start_nginx(i)
            topo.attach_redirect(i)
            lp = subprocess.Popen(
                ["ip", "netns", "exec", topo.l7(i), sys.executable, "-c", LISTENER, str(CHECK_PORT)],
                stdout=subprocess.PIPE,
                text=True,
            )
            listeners.append(lp)
            assert lp.stdout is not None and lp.stdout.readline().strip() == "ready"
        yield topo
    finally:
        for lp in listeners:
            lp.kill()
            lp.wait()
        topo.destroy()


def toml(topo: rr.RedirectTopology, checks: str) -> str:
    lines = [
        "[node]",
        f'tunnel_source = "{rr.L4_4}"',
        "[daemon]",
        f"healthcheck = {{ interval = {INTERVAL}, timeout = {TIMEOUT}, rise = {RISE}, fall = {FALL} }}",
        "[[tables]]",
        'name = "web"',
        f'hash_key = "{rr.HASH_KEY.hex()}"',
        f'seed = "{rr.SEED.hex()}"',
        'hash_fields = ["src_addr", "src_port"]',
        f"checks = [ {checks} ]",
        "  [[tables.binds]]",
        f'  ip = "{rr.VIP4}"',
        '  proto = "tcp"',
        f"  port = {rr.HTTP_PORT}",
    ]
    for i in range(topo.n_l7):
        lines += ["  [[tables.backends]]", f'  ip = "{rr.l7_addr(i, 4)}"']
    return "\n".join(lines) + "\n"


def served_by(topo: rr.RedirectTopology, n: int = 40) -> dict[int, int]:
    """n new HTTP connections from the client addresses: how many each L7 node answered."""
    out: dict[int, int] = {}
    for k in range(n):
        body, _ = rr.http_get(topo.client, rr.VIP4, rr.client_addr(k % topo.n_clients, 4), timeout=3)
        node = int(body.split()[0].split("-")[1])
        out[node] = out.get(node, 0) + 1
    return out


def wait_http(topo: rr.RedirectTopology, d: Daemon, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            rr.http_get(topo.client, rr.VIP4, rr.client_addr(0, 4), timeout=1)
            return
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"no HTTP answer through fwd within {timeout}s ({last}):\n{d.run.log()[-3000:]}")


def test_gue_check_fails_without_fwd_redirect_though_tcp_answers(l7rig, start_fwd, tmp_path):
    topo = l7rig
    checks = f'{{ type = "tcp", port = {CHECK_PORT} }}, {{ type = "gue" }}'
    d = Daemon(topo, start_fwd, toml(topo, checks), tmp_path / "ctl")
    addrs = [rr.l7_addr(i, 4) for i in range(topo.n_l7)]
    for a in addrs:
        d.wait_backend(a, lambda b: verdict_of(b) is True, what="up (TCP and GUE)")
    wait_http(topo, d)
    assert set(served_by(topo)) == {0, 1, 2}

    topo.fwd(topo.l7(1), "redirect", "detach", "--interface", "eth0")
    b1 = d.wait_backend(addrs[1], lambda b: verdict_of(b) is False, what="down after the detach")
    checks_state = {c["check"].split()[0].split(":")[0]: c for c in b1["health"]["checks"]}
    assert checks_state["tcp"]["up"] is True, b1["health"]  # the host and its TCP still answer
    assert checks_state["gue"]["up"] is False, b1["health"]
    assert "gue" in b1["health"]["reason"] and "failed" in b1["health"]["reason"], b1["health"]
    assert b1["primary_rows"] == 0
    assert d.run.wait_for_log(rf"health: backend {addrs[1]} \(table web\) down: gue .*rows? changed", 5)
    got = served_by(topo)
    assert 1 not in got, f"l7-1 (no decapsulation) still got new connections: {got}"

    topo.attach_redirect(1)
    b1 = d.wait_backend(addrs[1], lambda b: verdict_of(b) is True, what="up after attaching again")
    assert f"rise {RISE}" in b1["health"]["reason"], b1["health"]
    assert 1 in served_by(topo, 60)


def test_drain_keeps_existing_connections(l7rig, start_fwd, tmp_path):
    topo = l7rig
    d = Daemon(topo, start_fwd, toml(topo, f'{{ type = "tcp", port = {CHECK_PORT} }}'), tmp_path / "ctl")
    addrs = [rr.l7_addr(i, 4) for i in range(topo.n_l7)]
    for a in addrs:
        d.wait_backend(a, lambda b: verdict_of(b) is True, what="up")
    wait_http(topo, d)
    conns = rr.LongLived(topo.client, [(rr.client_addr(i, 4), rr.VIP4) for i in range(topo.n_clients)])
    conns.open()
    try:
        conns.start()
        on_l7_1 = [c for c in conns.conns if c.served_by == 1]
        assert on_l7_1, "no long-lived connection landed on l7-1"
        time.sleep(0.5)

        p = d.cli("backend", "drain", "--table", "web", addrs[1])
        assert p.returncode == 0, p.stderr
        b1 = d.backend(addrs[1])
        assert (b1["state"], b1["override"], b1["primary_rows"]) == ("draining", "draining", 0)
        before = {id(c): c.requests for c in conns.conns}
        time.sleep(2.0)  # 20 exchanges per connection through the drained node's second chance
        broken = conns.broken()
        assert not broken, f"{len(broken)} connections broken by the drain: " + "; ".join(
            f"{c.src}:{c.port} on l7-{c.served_by}: {c.error}" for c in broken[:5]
        )
        assert all(c.requests > before[id(c)] + 5 for c in on_l7_1), "connections on l7-1 stopped exchanging"
        got = served_by(topo)
        assert 1 not in got, f"new connections still reach the drained l7-1: {got}"
        forwarded = sum(topo.redirect_stats(i).get("forwarded", 0) for i in (0, 2))
        assert forwarded > 0, "no packet took the second chance to l7-1"
    finally:
        conns.stop()
    assert not conns.broken()
