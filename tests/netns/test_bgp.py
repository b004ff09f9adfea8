"""BGP through ExaBGP (fwd/bgp.py) against a real BIRD 2 router, in network namespaces.

The rig is tests/netns/topology.py with a router in the client's place: BIRD runs in the client
namespace (10.99.1.2, AS 65000) and peers with `fwd run` in l4 (10.99.1.1, AS 65001), whose ExaBGP
child announces the VIPs (10.100.0.1/32 and fd99:301f::1/128, both in one table whose backends are
real nginx servers in be0..be2, checked over HTTP). What BIRD has is read with `birdc show route`.

* a VIP is in BIRD's table (with the configured MED and communities) while fwd runs with a healthy
  backend; it leaves when every backend fails its checks and comes back with one;
* `fwd node drain` removes it (the command returns once the withdraw was sent), `undrain` brings
  it back; `fwd status` and the metrics show the peer, the VIPs and the drain;
* ExaBGP killed: fwd restarts it and the route returns; fwd killed (SIGKILL): ExaBGP goes too and
  the route leaves at once;
* SIGTERM: the route leaves BIRD while fwd still forwards VIP traffic (drain wait), and the log
  says "withdrawn" before the data plane stops.

Root is needed (namespaces, XDP); without it the tests skip, and fail in CI (CI=true), as every
test under tests/netns.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.netns import conftest
from tests.netns import test_daemon as td
from tests.netns import topology as tp
from tests.netns.bird import BIRD, BIRDC, Bird, Neighbor
from tests.netns.test_daemon import INTERVAL, PORT, Daemon, backend_ip, daemon_toml, verdict_of

nginx_ok, nginxes = td.nginx_ok, td.nginxes  # fixtures: real nginx backends in be0..be2

VIP4 = "10.100.0.1/32"
VIP6 = "fd99:301f::1/128"
ROUTER_AS, NODE_AS = 65000, 65001
HOLD = 3


@pytest.fixture(scope="session")
def bird_ok(netns_ok):
    for prog in (BIRD, BIRDC):
        if not os.access(prog, os.X_OK):
            conftest._skip_or_fail(f"needs BIRD 2 ({prog}); apt-get install bird2")
    exabgp = Path(tp.REPO / ".venv" / "bin" / "exabgp")
    if not os.access(exabgp, os.X_OK):
        conftest._skip_or_fail(f"needs ExaBGP in the venv ({exabgp}); make setup")
    return True


@pytest.fixture
def bird(bird_ok, tmp_path):
    """bird(topo) -> a started BIRD in the client namespace peering with l4; stopped at the end."""
    made: list[Bird] = []

    def make(topo: tp.Topology, password: str | None = None) -> Bird:
        b = Bird(
            topo.client,
            tmp_path / f"bird{len(made)}",
            tp.CLIENT4,
            tp.CLIENT4,
            ROUTER_AS,
            [Neighbor("l4", tp.L4_IN4, NODE_AS, password)],
            hold_time=HOLD,
        )
        made.append(b)
        b.start()
        return b

    yield make
    for b in made:
        b.stop()
        print(f"\n--- bird log ({b.dir}):\n{b.log()[-3000:]}")


def bgp_toml(topo: tp.Topology, *, drain_wait: float = 0, extra: str = "", peer_extra: str = "") -> str:
    """daemon_toml with an IPv6 VIP in the same table and a [bgp] section."""
    text = daemon_toml(topo, [backend_ip(topo, i) for i in range(3)], daemon=f"drain_wait = {drain_wait}")
    text = text.replace(
        "  [[tables.backends]]",
        f'  [[tables.binds]]\n  ip = "{VIP6.split("/")[0]}"\n  proto = "tcp"\n  port = {PORT}\n'
        "  [[tables.backends]]",
        1,
    )
    return text + (
        "\n[bgp]\n"
        f"local_as = {NODE_AS}\n"
        f'local_address = "{tp.L4_IN4}"\n'
        f'next_hop6 = "{tp.L4_IN6}"\n'
        "med = 42\n"
        'communities = ["65001:80", "no-export"]\n'
        f"hold_time = {HOLD}\n"
        "restart_delay = 0.5\n"
        "withdraw_timeout = 5\n"
        f"{extra}\n"
        "  [[bgp.peers]]\n"
        f'  address = "{tp.CLIENT4}"\n'
        f"  peer_as = {ROUTER_AS}\n"
        f"{peer_extra}\n"
    )


def both(routes: dict) -> bool:
    return VIP4 in routes and VIP6 in routes


def neither(routes: dict) -> bool:
    return VIP4 not in routes and VIP6 not in routes


def node(d: Daemon, action: str) -> dict:
    p = d.cli("node", action, "--json", "--control-socket", d.sock)
    assert p.returncode == 0, f"fwd node {action}: {p.stderr}\n{d.run.log()[-3000:]}"
    return json.loads(p.stdout)


def wait_status(d: Daemon, pred, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    s: dict = {}
    while time.monotonic() < deadline:
        s = d.status()["bgp"]
        if pred(s):
            return s
        time.sleep(0.1)
    raise AssertionError(
        f"fwd status: {what} not within {timeout}s: {json.dumps(s)[:2000]}\n{d.run.log()[-3000:]}"
    )


def start_all(topo, start_fwd, nginxes, bird, tmp_path, **kw) -> tuple[Daemon, Bird, list]:
    ngx = nginxes(topo)
    r = bird(topo)
    d = Daemon(topo, start_fwd, bgp_toml(topo, **kw), tmp_path / "ctl")
    return d, r, ngx


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait a while for its reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s+Z", status, re.M)


def probe_forwarded(topo: tp.Topology, tries: int = 5) -> bool:
    """A TCP SYN from the client to the IPv4 VIP arrives GUE-encapsulated at some backend."""
    from fwd.config import Bind

    bind = Bind(ipaddress.ip_network(VIP4), "tcp", PORT, PORT)
    frame = tp.flow_frame(bind, 7, tp.Topology.CLIENT_MAC, tp.Topology.L4_IN_MAC)
    caps = tp.start_captures(topo, client=False)
    sender = tp.Sender(topo.client, "eth0")
    try:
        for _ in range(tries):
            sender.send(frame)
            time.sleep(0.02)
    finally:
        sender.close()
    got = tp.stop_captures(caps, settle=0.1)
    return any(tp.is_gue(f.data) for frames in got.values() for f in frames)


# ------------------------------------------------------------------------------------- tests


def test_announced_with_attributes_and_withdrawn_without_healthy_backend(
    topo, start_fwd, nginxes, bird, tmp_path
):
    d, r, ngx = start_all(topo, start_fwd, nginxes, bird, tmp_path)
    r.wait(both, 30, f"{VIP4} and {VIP6} announced")
    detail = r.routes(detail=True)
    v4 = detail[VIP4]
    assert "BGP.med: 42" in v4, v4
    assert "(65001,80)" in v4 and "(65535,65281)" in v4, v4  # 65535:65281 = no-export
    assert f"BGP.next_hop: {tp.L4_IN4}" in v4 and f"AS{NODE_AS}" in v4, v4
    assert f"BGP.next_hop: {tp.L4_IN6}" in detail[VIP6], detail[VIP6]
    s = d.status()["bgp"]
    assert [p["state"] for p in s["peers"]] == ["up"], s["peers"]
    assert {v["prefix"]: v["announce"] for v in s["vips"]} == {VIP4: True, VIP6: True}
    assert all(v["advertised_to"] == [tp.CLIENT4] for v in s["vips"]), s["vips"]
    text = d.cli("status", "--control-socket", d.sock).stdout
    assert re.search(rf"bgp: AS {NODE_AS}, router id {tp.L4_IN4}; node active; ExaBGP pid \d+", text), text
    assert re.search(rf"^\s+{re.escape(tp.CLIENT4)}\s+{ROUTER_AS}\s+up\s", text, re.M), text
    m = d.metrics()
    assert re.search(rf'^fwd_bgp_peer_up\{{peer="{re.escape(tp.CLIENT4)}"\}} 1\.0$', m, re.M), m[-3000:]
    assert re.search(rf'^fwd_bgp_vip_announced\{{vip="{re.escape(VIP4)}"\}} 1\.0$', m, re.M)
    assert re.search(r"^fwd_bgp_exabgp_up 1\.0$", m, re.M)

    # every backend fails its checks -> withdrawn; one comes back -> announced again
    t0 = time.monotonic()
    for n in ngx:
        n.stop()
    r.wait(neither, 15, "the withdraw after all backends went down")
    took = time.monotonic() - t0
    s = d.status()["bgp"]
    assert all("no healthy backend" in v["reason"] for v in s["vips"]), s["vips"]
    assert all(not v["advertised_to"] for v in s["vips"]), s["vips"]
    assert re.search(rf"bgp: withdraw {re.escape(VIP4)}: no healthy backend", d.run.log())
    ngx[1].start()
    d.wait_backend(backend_ip(topo, 1), lambda b: verdict_of(b) is True, what="up")
    r.wait(both, 15, "the announcement after one backend came back")
    print(f"withdrawn {took:.2f}s after the backends stopped (checks every {INTERVAL}s)")


def test_node_drain_undrain_and_exabgp_restart(topo, start_fwd, nginxes, bird, tmp_path):
    d, r, _ = start_all(topo, start_fwd, nginxes, bird, tmp_path)
    r.wait(both, 30, "the announcement")

    ans = node(d, "drain")
    assert ans["drained"] and ans["changed"] and ans["settled"], ans
    # the CLI returns when ExaBGP reports the withdraw written to the session: BIRD has it at once
    r.wait(neither, 2, "the withdraw after fwd node drain")
    s = d.status()["bgp"]
    assert s["drained"] and all("drained" in v["reason"] for v in s["vips"]), s
    assert re.search(r"^fwd_bgp_node_drained 1\.0$", d.metrics(), re.M)
    p = d.cli("status", "--control-socket", d.sock)
    assert "node DRAINED" in p.stdout, p.stdout
    assert probe_forwarded(topo), "a drained node must still forward what reaches it"
    again = node(d, "drain")
    assert again["drained"] and not again["changed"], again

    ans = node(d, "undrain")
    assert not ans["drained"] and ans["changed"] and ans["settled"], ans
    r.wait(both, 2, "the announcement after fwd node undrain")
    p = d.cli("node", "undrain", "--control-socket", d.sock)
    assert p.returncode == 0 and "already" in p.stdout, p.stdout

    # ExaBGP dies: fwd restarts it and announces again
    pid = d.status()["bgp"]["exabgp"]["pid"]
    assert pid, d.status()["bgp"]
    os.kill(pid, signal.SIGKILL)
    r.wait(neither, 10, "the routes gone with the killed ExaBGP")
    s = wait_status(d, lambda s: s["exabgp"]["restarts"] == 1 and s["exabgp"]["pid"] not in (None, pid), 10,
                    "ExaBGP restarted")  # fmt: skip
    r.wait(both, 30, "the announcement from the restarted ExaBGP")
    wait_status(
        d, lambda s: s["peers"][0]["state"] == "up" and s["peers"][0]["ups"] == 2, 10, "peer up again"
    )
    assert re.search(r"bgp: ExaBGP \(pid \d+\) died: killed by SIGKILL", d.run.log())
    assert re.search(r"^fwd_bgp_exabgp_restarts_total 1\.0$", d.metrics(), re.M)

    # fwd dies (SIGKILL): its ExaBGP child is told to stop too (PR_SET_PDEATHSIG) and closes
    # the session, so the route does not outlive the data plane until the hold timer
    exa = d.status()["bgp"]["exabgp"]["pid"]
    os.kill(d.run.pid, signal.SIGKILL)
    r.wait(neither, HOLD - 0.5, "the withdraw after fwd was killed")
    deadline = time.monotonic() + 10
    while alive(exa) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(exa), "ExaBGP outlived the killed fwd"
    from fwd.bgp import sweep_runtime_dirs

    d.run.proc.wait(5)  # reaped: its pid is gone, and with it the owner of its runtime directory
    assert any(f"fwd-bgp-{d.run.pid}-" in x for x in sweep_runtime_dirs("/run")), "the killed fwd's directory"


def test_sigterm_withdraws_before_the_data_plane_stops(topo, start_fwd, nginxes, bird, tmp_path):
    d, r, _ = start_all(topo, start_fwd, nginxes, bird, tmp_path, drain_wait=3)
    r.wait(both, 30, "the announcement")
    assert probe_forwarded(topo)
    d.run.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    r.wait(neither, 5, "the withdraw after SIGTERM")
    gone = time.monotonic() - t0
    # the route has left the router and the data plane still forwards (drain_wait)
    assert d.run.alive(), f"fwd stopped before the route left BIRD:\n{d.run.log()[-3000:]}"
    assert probe_forwarded(topo), "VIP traffic not forwarded after the withdraw (during the drain wait)"
    assert d.run.alive(), "fwd stopped during the probe: the drain wait is too short for this test"
    rc = d.run.stop(timeout=20)
    assert rc == 0, d.run.log()[-3000:]
    log = d.run.log()
    withdrawn = re.search(r"bgp: withdrawn before stopping: (.*)", log)
    assert withdrawn and VIP4 in withdrawn.group(1) and tp.CLIENT4 in withdrawn.group(1), log[-3000:]
    detached = log.find("steering program detached")
    assert detached > withdrawn.start(), "the data plane stopped before the withdraw was logged"
    stopped = log.find("bgp: ExaBGP stopped")
    assert withdrawn.start() < stopped < detached, log[-3000:]
    assert not tp.leftovers(topo), tp.leftovers(topo)
    print(f"route left BIRD {gone * 1000:.0f} ms after SIGTERM")


def test_md5_password_and_reloads(topo, start_fwd, nginxes, bird, tmp_path):
    """A TCP-MD5 session; a reload that changes the MED re-announces without touching the session,
    one that changes the session (hold time) restarts ExaBGP and the route comes back."""
    nginxes(topo)
    r = bird(topo, password="s3cret")
    toml = bgp_toml(topo, peer_extra='  password = "s3cret"')
    d = Daemon(topo, start_fwd, toml, tmp_path / "ctl")
    r.wait(both, 30, "the announcement over the MD5 session")
    assert r.protocol_state("l4") == "Established"

    d.config.write_text(toml.replace("med = 42", "med = 7"))
    p = d.cli("reload", "--control-socket", d.sock)
    assert p.returncode == 0 and "route attributes changed" in p.stdout, p.stdout + p.stderr
    r.wait(lambda routes: "BGP.med: 7" in r.routes(detail=True).get(VIP4, ""), 10, "the new MED")
    s = d.status()["bgp"]
    assert s["peers"][0]["ups"] == 1 and s["exabgp"]["restarts"] == 0, s  # the session stayed

    d.config.write_text(toml.replace("med = 42", "med = 7").replace(f"hold_time = {HOLD}", "hold_time = 4"))
    p = d.cli("reload", "--control-socket", d.sock)
    assert p.returncode == 0 and "ExaBGP restarts" in p.stdout, p.stdout + p.stderr
    wait_status(
        d, lambda s: s["peers"][0]["ups"] == 2 and s["peers"][0]["state"] == "up", 30, "the new session"
    )
    r.wait(both, 10, "the announcement after ExaBGP restarted")
    assert d.status()["bgp"]["exabgp"]["restarts"] == 0  # asked for: not counted as a death
    assert "restarting ExaBGP with the new configuration" in d.run.log()

    d.config.write_text(toml.replace("s3cret", "wrong"))
    p = d.cli("reload", "--control-socket", d.sock)
    assert p.returncode == 0, p.stderr
    r.wait(neither, 15, "the routes gone when the passwords differ")
