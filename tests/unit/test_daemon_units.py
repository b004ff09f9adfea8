"""The daemon's pieces that need no privileges: the control API protocol (server and client over a
real Unix socket), metrics rendering, the [daemon] config section, systemd notifications, runtime
overrides, the reload change list, JSON logs, and health verdicts -> table updates with a stand-in
data plane."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fwd import api
from fwd.config import ConfigError, parse_config
from fwd.metrics import CheckView, MetricsView, render
from fwd.notify import Notifier
from fwd.overrides import Overrides, describe_changes

BASE = """
[[tables]]
name = "web"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
{table_extra}
  [[tables.binds]]
  ip = "10.100.0.1"
  proto = "tcp"
  port = 80
  [[tables.backends]]
  ip = "10.0.0.1"
  {b0_extra}
  [[tables.backends]]
  ip = "10.0.0.2"
  [[tables.backends]]
  ip = "10.0.0.3"
"""


def cfg_text(daemon: str = "", table_extra: str = "", b0_extra: str = "") -> str:
    return daemon + BASE.format(table_extra=table_extra, b0_extra=b0_extra)


# ----------------------------------------------------------------------------------------------
# control API


class LoopThread:
    """An asyncio loop on a thread, for serving while the test uses the blocking client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


def handlers():
    async def echo(args):
        return {"args": args}

    async def refuse(args):
        raise api.ApiError("no thanks:\n  not today")

    async def crash(args):
        raise ZeroDivisionError("boom")

    return {"echo": echo, "refuse": refuse, "crash": crash}


def test_decode_request():
    assert api.decode_request(b'{"cmd": "status"}\n') == ("status", {})
    assert api.decode_request(b'{"cmd": "x", "args": {"a": 1}}') == ("x", {"a": 1})
    for bad, why in (
        (b"nope", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"cmd": 3}', '"cmd"'),
        (b'{"cmd": ""}', '"cmd"'),
        (b'{"cmd": "x", "args": []}', '"args"'),
        (b'{"cmd": "x", "extra": 1}', "unknown key"),
    ):
        with pytest.raises(api.ApiError, match=why):
            api.decode_request(bad)


def test_server_and_client_round_trip(tmp_path, loop_thread):
    path = str(tmp_path / "sub" / "fwd.sock")
    server = api.ControlServer(path, handlers())
    loop_thread.run(server.start())
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        if os.geteuid() == 0:
            assert st.st_uid == 0 and st.st_gid == 0
        with api.ControlClient(path) as c:
            # several exchanges on one connection
            assert c.call("echo", a=1, b="x") == {"args": {"a": 1, "b": "x"}}
            assert c.call("echo") == {"args": {}}
            with pytest.raises(api.ApiError, match="^no thanks: not today$"):
                c.call("refuse")
            with pytest.raises(api.ApiError, match="internal error: ZeroDivisionError: boom"):
                c.call("crash")
            with pytest.raises(api.ApiError, match="unknown command 'nope' .*known: crash, echo, refuse"):
                c.call("nope")
            assert c.call("echo", n=2) == {"args": {"n": 2}}
        # raw protocol: a bad line gets an error answer, the connection stays usable
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"garbage\n" + api.encode({"cmd": "echo", "args": {"k": True}}))
            f = s.makefile("rb")
            first, second = json.loads(f.readline()), json.loads(f.readline())
        assert first["ok"] is False and "not JSON" in first["error"]
        assert second == {"ok": True, "result": {"args": {"k": True}}}
    finally:
        loop_thread.run(server.stop())
    assert not os.path.exists(path), "stop() must remove its socket"


def test_peer_credentials_are_checked(tmp_path, loop_thread):
    """A peer whose uid is not allowed gets 'permission denied' and is disconnected, even when the
    file permissions let it connect (here: allow only a uid this test does not run as)."""
    path = str(tmp_path / "fwd.sock")
    other = 4242 if os.geteuid() != 4242 else 4243
    server = api.ControlServer(path, handlers(), allowed_uids=frozenset({other}))
    loop_thread.run(server.start())
    try:
        with pytest.raises(
            api.ApiError, match=rf"permission denied: .*root only \(your uid is {os.geteuid()}\)"
        ):
            api.ControlClient(path).call("echo")
        assert server.refused == 1
    finally:
        loop_thread.run(server.stop())


def test_peer_credentials_of_a_socket_pair():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        pid, uid, gid = api.peer_credentials(a)
    assert (pid, uid, gid) == (os.getpid(), os.geteuid(), os.getegid())


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path, loop_thread):
    path = tmp_path / "fwd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    server = api.ControlServer(str(path), handlers())
    loop_thread.run(server.start())
    try:
        assert api.ControlClient(str(path)).call("echo") == {"args": {}}
        second = api.ControlServer(str(path), handlers())
        with pytest.raises(api.ApiError, match="another fwd is running"):
            loop_thread.run(second.start())
    finally:
        loop_thread.run(server.stop())
    (tmp_path / "plain").write_text("x")
    with pytest.raises(api.ApiError, match="not a socket"):
        loop_thread.run(api.ControlServer(str(tmp_path / "plain"), handlers()).start())


def test_client_errors_are_one_line(tmp_path):
    with pytest.raises(api.ApiError, match="no fwd daemon at .*does not exist"):
        api.ControlClient(str(tmp_path / "none.sock")).call("status")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "dead.sock"))
    s.close()
    with pytest.raises(api.ApiError, match="stale socket"):
        api.ControlClient(str(tmp_path / "dead.sock")).call("status")


# ----------------------------------------------------------------------------------------------
# metrics


def sample_view() -> MetricsView:
    return MetricsView(
        binds=[{"table": "web", "bind": "tcp 10.100.0.1/32 port 80", "packets": 10, "bytes": 1000}],
        backends=[
            {
                "table": "web",
                "backend": "10.0.0.1",
                "state": "draining",
                "config_state": "active",
                "override": True,
                "healthy": False,
                "checked": True,
                "packets": 7,
                "bytes": 700,
                "primary_rows": 0,
                "secondary_rows": 30000,
            }
        ],
        verdicts={"pass": 1, "forward": 10, "drop": 2, "reply": 0},
        drops={"truncated": 2, "no_backend": 0},
        icmp_replies=3,
        ports=[
            {"worker": "xsk:eth0:0", "rx_packets": 13, "tx_packets": 10, "tx_dropped": 0, "kernel_drops": 0}
        ],
        checks=[
            CheckView(
                backend="10.0.0.1",
                check="http://10.0.0.1:80/",
                up=False,
                count=4,
                failures=3,
                latency_sum=0.5,
                buckets=[(0.1, 1), (1.0, 4), (float("inf"), 4)],
                latency_last=0.2,
            )
        ],
        generation=9,
        acked_generation=8,
        health_changes=2,
        reload_success=False,
        reload_timestamp=1700000000.5,
        reloads={"ok": 1, "failed": 1},
        start_time=1699999999.0,
        mode="xdp",
        version="0.1.0",
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_rendering():
    text = render(sample_view).decode()
    got = samples(text)
    web_b = (("backend", "10.0.0.1"), ("table", "web"))
    assert got[("fwd_bind_packets_total", (("bind", "tcp 10.100.0.1/32 port 80"), ("table", "web")))] == 10
    assert got[("fwd_bind_bytes_total", (("bind", "tcp 10.100.0.1/32 port 80"), ("table", "web")))] == 1000
    assert got[("fwd_backend_packets_total", web_b)] == 7
    assert got[("fwd_backend_bytes_total", web_b)] == 700
    assert got[("fwd_backend_healthy", web_b)] == 0
    assert got[("fwd_backend_override", web_b)] == 1
    assert got[("fwd_backend_state", (("backend", "10.0.0.1"), ("state", "draining"), ("table", "web")))] == 1
    assert got[("fwd_backend_state", (("backend", "10.0.0.1"), ("state", "active"), ("table", "web")))] == 0
    assert (
        got[("fwd_backend_rows", (("backend", "10.0.0.1"), ("role", "secondary"), ("table", "web")))] == 30000
    )
    assert got[("fwd_drops_total", (("reason", "truncated"),))] == 2
    assert got[("fwd_verdicts_total", (("verdict", "forward"),))] == 10
    assert got[("fwd_icmp_replies_total", ())] == 3
    assert got[("fwd_port_rx_packets_total", (("worker", "xsk:eth0:0"),))] == 13
    chk = (("backend", "10.0.0.1"), ("check", "http://10.0.0.1:80/"))
    assert got[("fwd_healthcheck_latency_seconds_bucket", (*chk, ("le", "0.1")))] == 1
    assert got[("fwd_healthcheck_latency_seconds_bucket", (*chk, ("le", "+Inf")))] == 4
    assert got[("fwd_healthcheck_latency_seconds_count", chk)] == 4
    assert got[("fwd_healthcheck_latency_seconds_sum", chk)] == 0.5
    assert got[("fwd_healthcheck_failures_total", chk)] == 3
    assert got[("fwd_healthcheck_up", chk)] == 0
    assert got[("fwd_table_generation", ())] == 9
    assert got[("fwd_runtime_acked_generation", ())] == 8
    assert got[("fwd_reload_success", ())] == 0
    assert got[("fwd_reload_timestamp_seconds", ())] == 1700000000.5
    assert got[("fwd_reloads_total", (("result", "failed"),))] == 1
    assert got[("fwd_health_changes_total", ())] == 2
    assert got[("fwd_info", (("mode", "xdp"), ("version", "0.1.0")))] == 1
    assert "# HELP fwd_backend_packets_total" in text and "# TYPE fwd_backend_healthy gauge" in text


def test_metrics_before_any_reload_has_no_reload_sample():
    text = render(lambda: MetricsView()).decode()
    got = samples(text)
    assert ("fwd_reload_success", ()) not in got
    assert got[("fwd_reloads_total", (("result", "ok"),))] == 0


def test_metrics_server_serves_http(loop_thread):
    from fwd.metrics import MetricsServer

    server = MetricsServer("127.0.0.1:0", sample_view)
    loop_thread.run(server.start())
    try:
        host, port = server.bound
        for path, code in (("/metrics", 200), ("/", 200), ("/nope", 404)):
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.split()[1] == str(code).encode(), head
            if path == "/metrics":
                assert b"fwd_table_generation 9.0" in body
                assert b"text/plain" in head
    finally:
        loop_thread.run(server.stop())


# ----------------------------------------------------------------------------------------------
# [daemon] and health-check config


def test_daemon_defaults():
    cfg = parse_config(cfg_text())
    d = cfg.daemon
    assert d.control_socket == "/run/fwd/fwd.sock"
    assert d.metrics_address == "127.0.0.1:9641"
    assert d.drain_wait == 0 and d.log_format == "text" and d.healthcheck is None
    assert all(b.checks == () for b in cfg.tables[0].backends)


def test_daemon_section():
    cfg = parse_config(
        cfg_text(
            '[daemon]\ncontrol_socket = "/tmp/x/fwd.sock"\nmetrics_address = "[::1]:9100"\n'
            'drain_wait = 5\nlog_format = "json"\n'
            "healthcheck = { interval = 1.0, timeout = 0.5, rise = 2, fall = 4, jitter = 0.2 }\n",
            table_extra='checks = [ { type = "http", port = 8080, uri = "/ping" }, { type = "gue" } ]\n'
            "healthcheck = { fall = 2 }",
            b0_extra='checks = [ { type = "tcp", port = 22 } ]\n  healthcheck = { rise = 5 }',
        )
    )
    d = cfg.daemon
    assert (d.control_socket, d.metrics_address, d.drain_wait, d.log_format) == (
        "/tmp/x/fwd.sock",
        "[::1]:9100",
        5.0,
        "json",
    )
    assert (d.healthcheck.interval, d.healthcheck.timeout, d.healthcheck.rise, d.healthcheck.fall) == (
        1,
        0.5,
        2,
        4,
    )
    b0, b1, _ = cfg.tables[0].backends
    assert [c.kind for c in b0.checks] == ["tcp"] and b0.checks[0].port == 22
    assert (b0.timing.rise, b0.timing.fall, b0.timing.interval) == (
        5,
        2,
        1.0,
    )  # backend over table over daemon
    assert [(c.kind, c.port) for c in b1.checks] == [("http", 8080), ("gue", 19523)]
    assert b1.checks[0].uri == "/ping"
    assert (b1.timing.rise, b1.timing.fall) == (2, 2)
    # checks take no part in equality
    assert b0 == dataclasses.replace(b0, checks=())


def test_backend_checks_empty_means_unchecked():
    cfg = parse_config(
        cfg_text(table_extra='checks = [ { type = "tcp", port = 80 } ]', b0_extra="checks = []")
    )
    b0, b1, _ = cfg.tables[0].backends
    assert b0.checks == () and b1.checks[0].kind == "tcp"


def test_glb_json_healthchecks_become_checks():
    doc = {
        "tables": [
            {
                "hash_key": "12345678901234561234567890123456",
                "seed": "34567890123456783456789012345678",
                "binds": [{"ip": "10.0.0.10", "proto": "tcp", "port": 80}],
                "backends": [
                    {
                        "ip": "10.0.0.1",
                        "state": "active",
                        "healthy": True,
                        "healthchecks": {"http": 81, "gue": 19523},
                    },
                    {"ip": "10.0.0.2", "state": "active", "healthy": True, "healthchecks": None},
                ],
            }
        ]
    }
    cfg = parse_config(json.dumps(doc))
    b0, b1 = cfg.tables[0].backends
    assert [(c.kind, c.port) for c in b0.checks] == [("http", 81), ("gue", 19523)]
    assert b1.checks == ()


@pytest.mark.parametrize(
    "daemon, key, reason",
    [
        ("[daemon]\nfoo = 1\n", "daemon.foo", "unknown key (allowed here: control_socket, metrics_address"),
        ('[daemon]\ncontrol_socket = "fwd.sock"\n', "daemon.control_socket", "not an absolute path"),
        (
            '[daemon]\ncontrol_socket = "/' + "x" * 120 + '"\n',
            "daemon.control_socket",
            "longer than 107 bytes",
        ),
        ("[daemon]\ncontrol_socket = 3\n", "daemon.control_socket", "expected a string, got integer 3"),
        ('[daemon]\nmetrics_address = "localhost:9641"\n', "daemon.metrics_address", "is not an IP address"),
        ('[daemon]\nmetrics_address = "127.0.0.1"\n', "daemon.metrics_address", "missing :PORT"),
        ('[daemon]\nmetrics_address = "127.0.0.1:0"\n', "daemon.metrics_address", "bad port"),
        ('[daemon]\nmetrics_address = "::1:9641"\n', "daemon.metrics_address", "[ADDRESS]:PORT"),
        ("[daemon]\ndrain_wait = -1\n", "daemon.drain_wait", "out of range 0..3600"),
        ('[daemon]\ndrain_wait = "5s"\n', "daemon.drain_wait", "expected a number"),
        ("[daemon]\ndrain_wait = true\n", "daemon.drain_wait", "expected a number"),
        (
            '[daemon]\nlog_format = "xml"\n',
            "daemon.log_format",
            'bad log format "xml" (expected one of: text, json)',
        ),
        ("[daemon]\nhealthcheck = { every = 1 }\n", "daemon.healthcheck.every", "unknown key"),
        ("[daemon]\nhealthcheck = { rise = 0 }\n", "daemon.healthcheck.rise", "rise"),
        ("[daemon]\nhealthcheck = { interval = 1, timeout = 2 }\n", "daemon.healthcheck.timeout", "exceeds"),
        ("[daemon]\nhealthcheck = 3\n", "daemon.healthcheck", "expected a table"),
        ("[daemon]\nhealthcheck = { jitter = 1.5 }\n", "daemon.healthcheck.jitter", "jitter"),
    ],
)
def test_daemon_errors(daemon, key, reason):
    with pytest.raises(ConfigError) as e:
        parse_config(cfg_text(daemon), "f.toml")
    assert e.value.key == key, str(e.value)
    assert reason in e.value.reason, str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "table_extra, b0_extra, key, reason",
    [
        ('checks = [ { type = "smtp" } ]', "", "tables[0].checks[0].type", "bad check type"),
        ('checks = [ { type = "tcp" } ]', "", "tables[0].checks[0].port", "a tcp check needs a port"),
        ('checks = { type = "tcp" }', "", "tables[0].checks", "expected an array"),
        ("checks = [ 80 ]", "", "tables[0].checks[0]", "expected a table"),
        (
            'checks = [ { type = "tcp", port = 80 }, { type = "tcp", port = 80 } ]',
            "",
            "tables[0].checks[1]",
            "the same check as tables[0].checks[0]",
        ),
        (
            "",
            'checks = [ { type = "http", prot = 1 } ]',
            "tables[0].backends[0].checks[0].prot",
            "unknown key",
        ),
        ("", "healthcheck = { fall = 0 }", "tables[0].backends[0].healthcheck.fall", "fall"),
        ("healthcheck = { interval = 0.1 }", "", "tables[0].healthcheck.timeout", "exceeds interval"),
        ("", "health = 1", "tables[0].backends[0].health", "unknown key"),
    ],
)
def test_check_errors(table_extra, b0_extra, key, reason):
    with pytest.raises(ConfigError) as e:
        parse_config(cfg_text(table_extra=table_extra, b0_extra=b0_extra), "f.toml")
    assert e.value.key == key, str(e.value)
    assert reason in e.value.reason, str(e.value)


def test_glb_json_refuses_daemon_section():
    doc = json.loads(
        Path(__file__).resolve().parents[2].joinpath("examples/glb-forwarding-table.json").read_text()
    )
    doc["daemon"] = {}
    with pytest.raises(ConfigError, match="daemon: unknown key"):
        parse_config(json.dumps(doc))


# ----------------------------------------------------------------------------------------------
# systemd notify


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_messages(tmp_path, abstract):
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"fwd-test-notify-{os.getpid()}"
        rx.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        rx.bind(address)
    rx.settimeout(2)
    with rx:
        n = Notifier(address)
        assert n.ready("forwarding: 1 table")
        assert n.reloading("reloading x")
        assert n.status("two\nlines")
        assert n.stopping()
        got = [rx.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=forwarding: 1 table"
    fields = dict(line.split("=", 1) for line in got[1].splitlines())
    assert fields["RELOADING"] == "1" and fields["STATUS"] == "reloading x"
    usec = int(fields["MONOTONIC_USEC"])
    assert abs(usec - __import__("time").clock_gettime_ns(__import__("time").CLOCK_MONOTONIC) // 1000) < 5e6
    assert got[2] == "STATUS=two lines"
    assert got[3] == "STOPPING=1"


def test_notify_without_socket_does_nothing(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().ready() is False
    n = Notifier(str(tmp_path / "absent.sock"), log=logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        assert n.ready() is False
        assert n.ready() is False
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------------------------------
# overrides and reload change lists


def test_overrides_apply_and_prune():
    a = ipaddress.ip_address
    o = Overrides()
    k = ("web", a("10.0.0.1"))
    assert "runtime override" in o.apply(k, "drain", "active")
    assert o.state(k, "active") == "draining"
    assert "the config says active too" in o.apply(k, "activate", "active")
    assert o.get(k) is None
    o.apply(k, "deactivate", "active")
    assert "back to the config's active" in o.apply(k, "clear", "active")
    assert "no override to clear" in o.apply(k, "clear", "active")
    with pytest.raises(ValueError):
        o.apply(k, "explode", "active")

    cfg = parse_config(cfg_text(b0_extra='state = "draining"'))
    o.apply(("web", a("10.0.0.1")), "drain", "active")  # the new config says draining too
    o.apply(("web", a("10.0.0.2")), "fill", "active")  # stays
    o.apply(("web", a("10.0.0.9")), "drain", "active")  # not in the new config
    o.apply(("api", a("10.0.0.2")), "drain", "active")  # table gone
    notes = o.prune(cfg)
    assert o.as_list() == [{"table": "web", "address": "10.0.0.2", "state": "filling"}]
    assert any("10.0.0.1" in n and "now says draining too" in n for n in notes)
    assert any("10.0.0.9" in n and "left the config" in n for n in notes)
    assert any("table api" in n and "left the config" in n for n in notes)


def test_describe_changes():
    old = parse_config(cfg_text())
    assert describe_changes(old, old) == ["no changes"]
    new = parse_config(
        cfg_text("[daemon]\ndrain_wait = 3\n", b0_extra='state = "draining"').replace(
            '  [[tables.backends]]\n  ip = "10.0.0.3"\n', '  [[tables.backends]]\n  ip = "10.0.0.4"\n'
        )
    )
    got = describe_changes(old, new)
    assert "table web: backend 10.0.0.4 added (active)" in got
    assert "table web: backend 10.0.0.3 removed" in got
    assert "table web: backend 10.0.0.1 state active -> draining" in got
    assert "daemon.drain_wait 0.0 -> 3.0" in got
    rebuilt = parse_config(cfg_text().replace("3456789012345678345", "0456789012345678345"))
    assert any("seed changed (table rebuilt)" in c for c in describe_changes(old, rebuilt))


# ----------------------------------------------------------------------------------------------
# JSON logs


def test_json_log_lines(capsys):
    from fwd.logs import use_format

    try:
        use_format("json", logging.INFO, "fwd.testjson")
        logging.getLogger("fwd.testjson").info(
            "backend %s down:\n why", "10.0.0.1", extra={"event": "health", "rows_changed": 5}
        )
        use_format("text", logging.INFO, "fwd.testjson")
        logging.getLogger("fwd.testjson").warning("plain  text")
    finally:
        logging.getLogger("fwd.testjson").handlers.clear()
    err = capsys.readouterr().err.splitlines()
    obj = json.loads(err[0])
    assert obj["level"] == "info" and obj["logger"] == "fwd.testjson"
    assert obj["msg"] == "backend 10.0.0.1 down: why"
    assert obj["event"] == "health" and obj["rows_changed"] == 5
    assert obj["time"].endswith("+00:00")
    assert err[1] == "fwd: warning: plain text"


# ----------------------------------------------------------------------------------------------
# health verdicts -> tables, with a stand-in data plane


class FakeLive:
    """What the daemon uses of LiveDataplane: tables, set_backends, publish, generation."""

    def __init__(self, cfg):
        from fwd.table import ForwardingTable

        self.tables = [ForwardingTable.from_config(t) for t in cfg.tables]
        self.binds = [b for t in cfg.tables for b in t.binds]
        self.mode_used = "fake"
        self.gen = 1
        self.calls = []

    def set_backends(self, changes):
        self.calls.append(changes)
        stats = {ti: self.tables[ti].set_backends(b) for ti, b in changes.items()}
        self.gen += 1
        return stats, self.gen

    def generation(self):
        return self.gen


class FakeChecker:
    def __init__(self):
        self.verdicts = {}

    def healthy(self, key):
        return self.verdicts.get(key)


def test_verdicts_update_the_table(caplog):
    pytest.importorskip("fwd.native")
    from fwd.daemon import Daemon, DaemonOptions
    from healthcheck import Verdict

    cfg = parse_config(
        cfg_text(table_extra='checks = [ { type = "tcp", port = 80 } ]', b0_extra="checks = []")
    )
    d = Daemon(DaemonOptions("x.toml", ["eth0"]), cfg, notifier=Notifier(""))
    d.live = FakeLive(d.effective_config(cfg))
    d.hc = FakeChecker()
    key = ("web", ipaddress.ip_address("10.0.0.2"))
    before = d.live.tables[0].owned()[1][0]
    assert before > 0

    def verdict(k, healthy):
        d.hc.verdicts[k] = healthy
        return Verdict(k, k[1], healthy, not healthy, None, None, f"test says {healthy}", 0.0)

    with caplog.at_level(logging.INFO, logger="fwd.daemon"):
        d._on_verdict(verdict(key, False))
        d.flush_health()
    assert d.live.tables[0].owned()[1][0] == 0, "a down backend keeps no primary rows"
    assert d.live.tables[0].backends[1].healthy is False
    assert d.health_changes == 1 and d.last_health_event.rows_changed > 0
    line = next(r.getMessage() for r in caplog.records if "health:" in r.getMessage())
    assert "backend 10.0.0.2 (table web) down: test says False" in line
    assert f"{d.last_health_event.rows_changed} rows changed, generation 2" in line

    # an unchecked backend ignores verdicts (its config health stands)
    d._on_verdict(verdict(("web", ipaddress.ip_address("10.0.0.1")), False))
    d.flush_health()
    assert d.live.tables[0].backends[0].healthy is True and len(d.live.calls) == 1

    # a verdict for a backend that left the config is ignored
    d._on_verdict(verdict(("web", ipaddress.ip_address("10.0.0.99")), False))
    d.flush_health()
    assert len(d.live.calls) == 1

    # several verdicts at once: one update
    d._on_verdict(verdict(key, True))
    d._on_verdict(verdict(("web", ipaddress.ip_address("10.0.0.3")), False))
    d.flush_health()
    assert len(d.live.calls) == 2
    assert [b.healthy for b in d.live.tables[0].backends] == [True, True, False]

    # an override wins over the config's state; health still counts
    d.overrides.apply(key, "drain", "active")
    eff = d.effective_config(cfg).tables[0].backends
    assert (eff[1].state, eff[1].healthy) == ("draining", True)


def test_patched_backend_specs_match_a_fresh_build():
    """ForwardingTable keeps its spec array and patches only changed entries: any sequence of
    updates gives the rows a table built from scratch gives."""
    pytest.importorskip("fwd.native")
    from fwd.config import Backend
    from fwd.table import ForwardingTable

    rng = __import__("random").Random(7)
    base = [Backend(ipaddress.ip_address("10.1.0.0") + i) for i in range(40)]
    t = ForwardingTable(b"s" * 16, b"k" * 16, False, base)
    cur = list(base)
    for _ in range(30):
        i = rng.randrange(len(cur))
        cur[i] = dataclasses.replace(
            cur[i],
            state=rng.choice(("active", "draining", "filling", "inactive")),
            healthy=rng.random() < 0.7,
        )
        if rng.random() < 0.2:  # sometimes a new list object with equal, non-identical entries
            cur = [dataclasses.replace(b) for b in cur]
        t.set_backends(list(cur))
        assert t.rows() == ForwardingTable(b"s" * 16, b"k" * 16, False, cur).rows()
    with pytest.raises(Exception, match="duplicate"):
        t.set_backends([*cur[:-1], cur[0]])
    t.set_backends(cur)  # after a refusal the array is rebuilt, not patched from the refused one
    assert t.rows() == ForwardingTable(b"s" * 16, b"k" * 16, False, cur).rows()
