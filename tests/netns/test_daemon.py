"""`fwd run` as the daemon (fwd/daemon.py) with real nginx backends in network namespaces.

The rig is tests/netns/topology.py (client -> l4 -> bridged backends be0..be2); every backend
namespace runs a real nginx on port 80 (temporary config per namespace), and fwd in l4 checks them
over HTTP. Flows are TCP SYNs from many client addresses; where fwd sends each one is read from the
GUE frames captured in the backend namespaces (outer destination = primary, GUE hop = secondary).

* health: stop nginx on a backend -> it is marked down after `fall` failed checks and its flows move
  to their secondaries; start it -> up after `rise`, the flows come back;
* drain through the CLI: new flows avoid the backend and the GUE hop of its former flows names it
  (second chance); the override persists across a reload and is cleared when the config catches up;
* reload: a broken config is refused (fwd reload exits 1, the log says why) and the old table keeps
  forwarding; a config with a new backend applies and flows reach it;
* the control socket refuses a non-root user (file mode, and SO_PEERCRED when the mode is opened);
  `fwd status --json` matches the running state; `fwd top` and live `fwd lookup` work;
* SIGTERM: the systemd notifications (READY, RELOADING + MONOTONIC_USEC, STOPPING) reach a datagram
  socket that plays NOTIFY_SOCKET, the drain wait keeps forwarding, nothing is left behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import time
from pathlib import Path

import pytest

from tests.netns import conftest
from tests.netns import topology as tp
from tests.netns.daemon_rig import NGINX, Daemon, Nginx, verdict_of

VIP = "10.100.0.1"
PORT = 80
INTERVAL, TIMEOUT, RISE, FALL = 0.3, 0.25, 2, 3
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FLOWS = 150


# ------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def nginx_ok(netns_ok):
    if not os.access(NGINX, os.X_OK):
        conftest._skip_or_fail(f"needs nginx ({NGINX}); apt-get install nginx-light")
    return True


@pytest.fixture
def nginxes(nginx_ok, tmp_path):
    """nginxes(topo) -> [Nginx per backend namespace], started; all stopped at the end."""
    made: list[Nginx] = []

    def make(topo: tp.Topology) -> list[Nginx]:
        out = []
        for i, b in enumerate(topo.backends):
            n = Nginx(b.ns, tmp_path / f"nginx-{len(made)}-be{i}", f"be{i}")
            made.append(n)
            n.start()
            out.append(n)
        return out

    yield make
    for n in made:
        n.stop()


def backend_ip(topo: tp.Topology, i: int, k: int = 0) -> str:
    return topo.backend_addresses(i)[0][k]


def daemon_toml(
    topo: tp.Topology, backends: list[str], *, checks: bool = True, daemon: str = "", backend_extra=None
) -> str:
    backend_extra = backend_extra or {}
    lines = [
        "[node]",
        f'tunnel_source = "{tp.L4_OUT4}"',
        "",
        "[daemon]",
        f"healthcheck = {{ interval = {INTERVAL}, timeout = {TIMEOUT}, rise = {RISE}, fall = {FALL} }}",
        daemon,
        "",
        "[[tables]]",
        'name = "web"',
        'hash_key = "12345678901234561234567890123456"',
        'seed = "34567890123456783456789012345678"',
    ]
    if checks:
        lines.append(f'checks = [ {{ type = "http", port = {PORT} }} ]')
    lines += ["  [[tables.binds]]", f'  ip = "{VIP}"', '  proto = "tcp"', f"  port = {PORT}"]
    for b in backends:
        lines += ["  [[tables.backends]]", f'  ip = "{b}"']
        if b in backend_extra:
            lines.append("  " + backend_extra[b])
    return "\n".join(lines) + "\n"


class Flows:
    """TCP SYNs from FLOWS client addresses to the VIP; where each went (outer dst, GUE hop)."""

    def __init__(self, topo: tp.Topology, n: int = FLOWS):
        from fwd.config import Bind

        self.topo, self.n = topo, n
        self.bind = Bind(ipaddress.ip_network(f"{VIP}/32"), "tcp", PORT, PORT)
        self.frames = [
            tp.flow_frame(self.bind, i, tp.Topology.CLIENT_MAC, tp.Topology.L4_IN_MAC) for i in range(n)
        ]

    def send(self, settle: float = 0.4) -> dict[str, tuple[str, list[str]]]:
        caps = tp.start_captures(self.topo, client=False)
        sender = tp.Sender(self.topo.client, "eth0")
        try:
            for f in self.frames:
                sender.send(f)
                time.sleep(0.0005)
        finally:
            sender.close()
        got = tp.stop_captures(caps, settle=settle)
        out: dict[str, tuple[str, list[str]]] = {}
        for frames in got.values():
            for fr in frames:
                if tp.is_gue(fr.data):
                    client, dst, hops = gue_fields(fr.data)
                    out[client] = (dst, hops)
        return out


def gue_fields(frame: bytes) -> tuple[str, str, list[str]]:
    """(inner source, outer destination, GUE hop list) of an IPv4-in-IPv4 GUE frame."""
    outer_dst = str(ipaddress.IPv4Address(frame[30:34]))
    nhops = frame[49]
    hops = [str(ipaddress.IPv4Address(frame[50 + 4 * k : 54 + 4 * k])) for k in range(nhops)]
    inner = 50 + 4 * nhops
    return str(ipaddress.IPv4Address(frame[inner + 12 : inner + 16])), outer_dst, hops


def assert_all_arrived(flows: dict, n: int, log: str) -> None:
    assert len(flows) == n, (
        f"{n - len(flows)} of {n} flows did not arrive anywhere\n--- fwd log:\n{log[-3000:]}"
    )


# ------------------------------------------------------------------------------------- tests


def test_health_down_after_fall_up_after_rise(topo, start_fwd, nginxes, tmp_path):
    """Stop nginx on be0: after `fall` failed HTTP checks be0 is down, the log says why and how many
    rows moved, and its flows go to their secondaries; start it: up after `rise`, flows return."""
    ngx = nginxes(topo)
    addrs = [backend_ip(topo, i) for i in range(3)]
    d = Daemon(topo, start_fwd, daemon_toml(topo, addrs), tmp_path / "ctl")
    for a in addrs:
        d.wait_backend(a, lambda b: verdict_of(b) is True, what="up")
    flows = Flows(topo)
    before = flows.send()
    assert_all_arrived(before, flows.n, d.run.log())
    on_be0 = {c for c, (dst, _) in before.items() if dst == addrs[0]}
    assert on_be0, "no flow had be0 as primary: pick other addresses"

    t0 = time.monotonic()
    ngx[0].stop()
    b0 = d.wait_backend(addrs[0], lambda b: verdict_of(b) is False, what="down")
    took = time.monotonic() - t0
    # the first failure can come right after the stop; `fall` of them need (fall - 1) intervals
    assert took >= (FALL - 1) * INTERVAL * 0.85, f"down after {took:.2f}s: sooner than {FALL} checks"
    assert f"{FALL} failures in a row, fall {FALL}" in b0["health"]["reason"], b0["health"]
    assert b0["healthy"] is False and b0["primary_rows"] == 0
    log = d.run.log()
    m = re.search(
        rf"health: backend {re.escape(addrs[0])} \(table web\) down: .*?(\d+) rows? changed, "
        r"generation (\d+)",
        log,
    )
    assert m and int(m.group(1)) > 0, f"no health line with rows changed in the log:\n{log[-3000:]}"

    during = flows.send()
    assert_all_arrived(during, flows.n, d.run.log())
    for c, (dst, _) in during.items():
        assert dst != addrs[0], f"flow {c} still sent to the down backend"
        if c in on_be0:
            assert dst == before[c][1][0], f"flow {c}: went to {dst}, not its secondary {before[c][1][0]}"
        else:
            assert dst == before[c][0], (
                f"flow {c} moved from {before[c][0]} to {dst} though its backend is up"
            )

    t1 = time.monotonic()
    ngx[0].start()
    b0 = d.wait_backend(addrs[0], lambda b: verdict_of(b) is True, what="up again")
    assert f"{RISE} successes in a row, rise {RISE}" in b0["health"]["reason"], b0["health"]
    assert time.monotonic() - t1 >= (RISE - 1) * INTERVAL * 0.85
    after = flows.send()
    assert {c: v[0] for c, v in after.items()} == {c: v[0] for c, v in before.items()}, "flows did not return"
    metrics = d.metrics()
    assert re.search(
        rf'fwd_healthcheck_failures_total\{{backend="{re.escape(addrs[0])}",check="http://', metrics
    )
    assert re.search(r"^fwd_health_changes_total [2-9]", metrics, re.M), metrics[-2000:]


def test_drain_via_cli_and_overrides_across_reloads(topo, start_fwd, nginxes, tmp_path):
    """`fwd backend drain`: new flows avoid the backend, its former flows name it as their GUE hop
    (second chance on the backends); the override survives a reload of an unchanged config, is
    cleared when the config says draining too, and `fwd backend clear` undoes a drain."""
    nginxes(topo)
    addrs = [backend_ip(topo, i) for i in range(3)]
    d = Daemon(topo, start_fwd, daemon_toml(topo, addrs), tmp_path / "ctl")
    for a in addrs:
        d.wait_backend(a, lambda b: verdict_of(b) is True, what="up")
    flows = Flows(topo)
    before = flows.send()
    assert_all_arrived(before, flows.n, d.run.log())
    on_be1 = {c for c, (dst, _) in before.items() if dst == addrs[1]}
    assert on_be1

    p = d.cli("backend", "drain", "--table", "web", addrs[1])
    assert p.returncode == 0, p.stderr
    assert re.match(
        rf"backend {re.escape(addrs[1])} \(table web\): active -> draining .*\d+ rows? changed", p.stdout
    )
    b1 = d.backend(addrs[1])
    assert (b1["state"], b1["config_state"], b1["override"], b1["primary_rows"]) == (
        "draining",
        "active",
        "draining",
        0,
    )
    drained = flows.send()
    assert_all_arrived(drained, flows.n, d.run.log())
    for c, (dst, hops) in drained.items():
        assert dst != addrs[1], f"new flow {c} sent to the draining backend"
        if c in on_be1:
            assert hops == [addrs[1]], f"flow {c} formerly on be1: hop list {hops}, want the drained backend"

    # an unchanged config: the override stays
    p = d.cli("reload")
    assert p.returncode == 0 and "no changes" in p.stdout, p.stdout + p.stderr
    assert d.backend(addrs[1])["override"] == "draining"
    # the config says draining too: the override is cleared, the state stays draining
    d.config.write_text(daemon_toml(topo, addrs, backend_extra={addrs[1]: 'state = "draining"'}))
    p = d.cli("reload", "--json")
    r = json.loads(p.stdout)
    assert r["ok"] and any("now says draining too" in c for c in r["changes"]), r
    b1 = d.backend(addrs[1])
    assert (b1["state"], b1["override"]) == ("draining", None)
    # back to active in the config; then drain and clear through the CLI
    d.config.write_text(daemon_toml(topo, addrs))
    assert d.cli("reload").returncode == 0
    assert d.cli("backend", "drain", "--table", "web", addrs[1]).returncode == 0
    p = d.cli("backend", "clear", "--table", "web", addrs[1], "--json")
    assert json.loads(p.stdout)["state"] == "active"
    assert {c: v[0] for c, v in flows.send().items()} == {c: v[0] for c, v in before.items()}
    # refusals are one line
    p = d.cli("backend", "drain", "--table", "nope", addrs[1])
    assert p.returncode == 1 and p.stderr.startswith("fwd: error: no table named 'nope'")
    p = d.cli("backend", "drain", "--table", "web", "10.99.2.250")
    assert p.returncode == 1 and "has no backend 10.99.2.250" in p.stderr


def test_reload_broken_keeps_old_table_new_backend_applies(topo, start_fwd, nginxes, tmp_path):
    nginxes(topo)
    two = [backend_ip(topo, 0), backend_ip(topo, 1)]
    d = Daemon(topo, start_fwd, daemon_toml(topo, two), tmp_path / "ctl")
    flows = Flows(topo)
    before = flows.send()
    assert_all_arrived(before, flows.n, d.run.log())
    gen = d.status()["generation"]

    good = d.config.read_text()
    d.config.write_text(good.replace('proto = "tcp"', 'proto = "sctp"'))
    p = d.cli("reload")
    assert p.returncode == 1
    assert "reload refused" in p.stderr and 'bad protocol "sctp"' in p.stderr, p.stderr
    os.kill(d.run.pid, signal.SIGHUP)  # the same through SIGHUP
    assert d.run.wait_for_log(r"reload \(SIGHUP\): config rejected: .*bad protocol", 10), d.run.log()[-2000:]
    s = d.status()
    assert s["generation"] == gen and s["last_reload"]["ok"] is False
    assert re.search(r"^fwd_reload_success 0\.0$", d.metrics(), re.M)
    still = flows.send()
    assert {c: v[0] for c, v in still.items()} == {c: v[0] for c, v in before.items()}, (
        "the old table changed"
    )

    three = [*two, backend_ip(topo, 2)]
    d.config.write_text(daemon_toml(topo, three))
    p = d.cli("reload")
    assert p.returncode == 0, p.stderr
    assert f"table web: backend {three[2]} added (active)" in p.stdout
    m = re.search(r"rows changed: web (\d+)", p.stdout)
    assert m and int(m.group(1)) > 0, p.stdout
    s = d.status()
    assert s["generation"] > gen and s["last_reload"]["ok"] is True
    assert [b["address"] for b in s["tables"][0]["backends"]] == three
    after = flows.send()
    assert_all_arrived(after, flows.n, d.run.log())
    moved = [c for c, (dst, _) in after.items() if dst == three[2]]
    assert moved, "no flow reaches the new backend"
    for c in moved[:5]:  # the live lookup agrees with the wire
        a, b = c.split(".")[2:]
        sport = 20000 + int(a) * 256 + int(b)  # tp.client_addr(i) / tp.flow_frame's source port
        p = d.cli("lookup", "tcp", f"{c}:{sport}", f"{VIP}:{PORT}")
        assert p.returncode == 0 and json.loads(p.stdout)["primary"] == three[2], p.stdout + p.stderr
    assert re.search(r"^fwd_reload_success 1\.0$", d.metrics(), re.M)


def test_control_socket_root_only_and_status_json(topo, start_fwd, nginxes):
    nginxes(topo)
    addrs = [backend_ip(topo, i) for i in range(3)]
    sockdir = Path(f"/tmp/fwd-daemon-test-{os.getpid()}")
    sockdir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(sockdir, 0o755)
    try:
        d = Daemon(
            topo, start_fwd, daemon_toml(topo, addrs, backend_extra={addrs[2]: "checks = []"}), sockdir
        )
        st = os.stat(d.sock)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, oct(st.st_mode)
        # the file mode refuses other users at connect()
        p = d.cli("status", "--json", user=NOBODY)
        assert p.returncode == 1 and p.stdout == ""
        want = f"permission denied: the fwd control socket {d.sock} accepts root only (your uid is 65534)"
        assert p.stderr.strip() == f"fwd: error: {want}"
        # with the mode opened, the daemon's SO_PEERCRED check refuses them
        os.chmod(d.sock, 0o666)
        try:
            for args in (("status",), ("reload",), ("backend", "drain", "--table", "web", addrs[0])):
                p = d.cli(*args, user=NOBODY)
                assert p.returncode == 1 and "permission denied" in p.stderr and "uid is 65534" in p.stderr, (
                    p.stderr
                )
        finally:
            os.chmod(d.sock, 0o600)
        assert d.run.wait_for_log(r"control socket: refused a client \(pid \d+, uid 65534\)", 5)
        assert d.backend(addrs[0])["state"] == "active", "a refused client changed something"

        for a in addrs[:2]:
            d.wait_backend(a, lambda b: verdict_of(b) is True, what="up")
        flows = Flows(topo)
        sent = flows.send()
        assert_all_arrived(sent, flows.n, d.run.log())
        s = d.status()
        assert s["mode"] == "xdp" and s["interfaces"] == ["eth0"] and len(s["workers"]) == 1
        assert s["config"] == str(d.config) and s["control_socket"] == d.sock
        assert s["generation"] == s["acked_generation"] >= 1
        (t,) = s["tables"]
        assert t["name"] == "web" and [b["prefix"] for b in t["binds"]] == [f"{VIP}/32"]
        assert t["binds"][0]["packets"] == flows.n
        assert [b["address"] for b in t["backends"]] == addrs
        assert sum(b["primary_rows"] for b in t["backends"]) == 65536
        per_backend = {a: sum(1 for dst, _ in sent.values() if dst == a) for a in addrs}
        for b in t["backends"]:
            assert b["state"] == "active" and b["override"] is None and b["healthy"] is True
            assert b["packets"] == per_backend[b["address"]], (b, per_backend)
        assert [b["health"]["checked"] for b in t["backends"]] == [True, True, False]
        assert t["backends"][0]["health"]["checks"][0]["check"] == f"http://{addrs[0]}:{PORT}/"
        assert s["verdicts"]["forward"] == flows.n
        m = re.search(r"^fwd_table_generation (\d+)", d.metrics(), re.M)
        assert m and int(m.group(1)) == s["generation"]
        # text status and top
        p = d.cli("status")
        assert p.returncode == 0 and "table web (fwd rule)" in p.stdout and addrs[0] in p.stdout
        p = d.cli("top", "--iterations", "2", "--interval", "0.2")
        assert p.returncode == 0, p.stderr
        assert p.stdout.count("table web: backends") == 2 and addrs[1] in p.stdout and f"{VIP}/32" in p.stdout
        # live lookup = offline lookup while nothing differs from the config
        live = d.cli("lookup", "tcp", "10.98.0.7:20007", f"{VIP}:{PORT}")
        offline = d.cli("lookup", "--config", str(d.config), "tcp", "10.98.0.7:20007", f"{VIP}:{PORT}")
        assert live.returncode == offline.returncode == 0, live.stderr + offline.stderr
        lj, oj = json.loads(live.stdout), json.loads(offline.stdout)
        assert lj.pop("live") is True and lj.pop("generation") == s["generation"]
        assert lj == oj
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def test_sigterm_notify_drain_wait_and_nothing_left(topo, start_fwd, nginxes, tmp_path, monkeypatch):
    nginxes(topo)
    notify_path = tmp_path / "notify.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(notify_path))
    rx.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    addrs = [backend_ip(topo, i) for i in range(3)]
    toml = daemon_toml(topo, addrs, daemon='drain_wait = 1.5\nlog_format = "json"')
    with rx:
        d = Daemon(topo, start_fwd, toml, tmp_path / "ctl")
        msgs = [rx.recv(4096).decode()]
        assert msgs[0].startswith("READY=1\nSTATUS=forwarding (xdp): 1 table, 1 VIP bind"), msgs

        os.kill(d.run.pid, signal.SIGHUP)
        reloading = rx.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in reloading.splitlines())
        assert fields["RELOADING"] == "1"
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_us - int(fields["MONOTONIC_USEC"]) < 10_000_000, fields
        after = rx.recv(4096).decode()
        while after.startswith("STATUS="):  # health changes may say something in between
            after = rx.recv(4096).decode()
        assert after.startswith("READY=1"), after

        flows = Flows(topo, 40)
        t0 = time.monotonic()
        os.kill(d.run.pid, signal.SIGTERM)
        stopping = rx.recv(4096).decode()
        while stopping.startswith("STATUS="):
            stopping = rx.recv(4096).decode()
        assert stopping.startswith("STOPPING=1"), stopping
        during = flows.send(settle=0.2)  # the drain wait: still forwarding
        assert len(during) == flows.n, f"{len(during)} of {flows.n} forwarded during the drain wait"
        rc = d.run.proc.wait(20)
        took = time.monotonic() - t0
    assert rc == 0, d.run.log()[-3000:]
    assert took >= 1.5, f"stopped {took:.2f}s after SIGTERM, before the drain wait ended"
    assert tp.leftovers(topo) == []
    assert not os.path.exists(d.sock), "the control socket was left behind"
    log = d.run.log()
    json_lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert any(o.get("event") == "stop" for o in json_lines), log[-2000:]
    assert any(o.get("event") == "reload" and o.get("ok") for o in json_lines)
    assert all({"time", "level", "logger", "msg"} <= set(o) for o in json_lines)
    assert "final counters: " in log
