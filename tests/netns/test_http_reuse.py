"""HTTP checks on a kept connection (``reuse_connection``), against real servers in namespaces:

    chk  eth0 10.96.0.1/24  ──veth──  be  eth0 10.96.0.2/24

``be`` runs a real nginx (access log with nginx's connection serial number, so the test counts
the TCP connections the checks used) and, for what nginx never does, a small Python HTTP server
(answers split across reads, ``Connection: close`` without closing, a connection closed by the
server just as the next request arrives). The checker runs inside ``chk`` as the daemon runs it:
a HealthChecker on uvloop (a child process), printing every result and verdict as a JSON line.

Needs root, nginx (skip, or fail in CI). Nothing here asserts on a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import conftest
from tests.netns import topology as tp

CHK, BE = "10.96.0.1", "10.96.0.2"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PLAIN, IDLE_CLOSE, FEW_REQUESTS, TLS = 80, 81, 82, 443  # nginx ports (below)
PY_PORT = 8080

# A HealthChecker on one backend with the checks and timing given as JSON; every result and
# verdict goes to stdout as a JSON line. A line "mark" on stdin records the time: results of
# checks that *started* after it say so ("after_mark"). End of stdin: stop.
CHECKER = r"""
import asyncio, ipaddress, json, sys, uvloop
from healthcheck import CheckSpec, HealthChecker, Target, Timing

def out(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    conf = json.loads(sys.argv[1])
    loop = asyncio.get_running_loop()
    mark = [None]
    def on_result(p, r):
        out(kind="result", ok=r.ok, error=r.error, detail=r.detail,
            after_mark=mark[0] is not None and p.due > mark[0])
    def on_change(v):
        out(kind="verdict", healthy=v.healthy, reason=v.reason)
    hc = HealthChecker(on_result=on_result, on_change=on_change)
    specs = tuple(CheckSpec(c.pop("kind", "http"), **c) for c in conf["checks"])
    t = Target("be", ipaddress.ip_address(conf["address"]), specs, Timing(**conf["timing"]))
    hc.set_targets([t])
    done = asyncio.Event()
    def on_stdin():
        line = sys.stdin.readline()
        if not line:
            done.set()
        elif line.strip() == "mark":
            mark[0] = loop.time()
            out(kind="marked")
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    out(kind="started")
    await done.wait()
    await hc.stop()

uvloop.run(main())
"""

# HTTP/1.1 in be for what nginx does not do; one mode per run (argv[2]). Prints
# {"conn": n} per accepted connection and {"req": n, "conn": c} per request read.
PY_SERVER = r"""
import json, socket, sys, threading, time
port, mode = int(sys.argv[1]), sys.argv[2]
lock, count = threading.Lock(), {"conn": 0, "req": 0}

def log(**kw):
    with lock:
        print(json.dumps(kw), flush=True)

def serve(c, n):
    buf, served = b"", 0
    while True:
        while b"\r\n\r\n" not in buf:
            try:
                chunk = c.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                c.close()
                return
            buf += chunk
        _, buf = buf.split(b"\r\n\r\n", 1)
        with lock:
            count["req"] += 1
            r = count["req"]
        log(req=r, conn=n, served=served)
        if mode == "split":
            # the status line, the fields and the body in three writes, a pause between them
            for part in (b"HTTP/1.1 2", b"00 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhe", b"llo"):
                c.sendall(part)
                time.sleep(0.12)
        elif mode == "chunked-split":
            for part in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nab",
                         b"cd\r\n3\r\nefg\r\n0\r\nX-Trailer: yes\r\n", b"\r\n"):
                c.sendall(part)
                time.sleep(0.12)
        elif mode == "close-but-stay":
            # says Connection: close but keeps the connection: a checker that sent a second
            # request on it would show up here as served > 0
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        elif mode == "stale-408":
            # answers, then, idle, sends a 408 on its own and keeps the connection (and would
            # answer a request on it again): the 408 must not be taken for the next answer
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.1)
            c.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        elif mode == "close-on-second":
            # answers the first request of a connection; on the second it closes without answer
            # (a server that closed its idle connection just as the request came)
            if served:
                c.close()
                return
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        served += 1

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(64)
print(json.dumps({"ready": True}), flush=True)
while True:
    c, _ = s.accept()
    with lock:
        count["conn"] += 1
        n = count["conn"]
    log(conn=n)
    threading.Thread(target=serve, args=(c, n), daemon=True).start()
"""


class Nginx:
    """nginx in be: PLAIN (keep-alive, /health 200 with a Content-Length, /chunked 200 chunked,
    /teapot 418), IDLE_CLOSE (closes a connection idle for 0.2 s), FEW_REQUESTS (3 requests per
    connection, the third answered with Connection: close). The access log has nginx's
    connection serial number and the request's number on it."""

    def __init__(self, ns: str, d: Path):
        self.ns, self.dir, self.log = ns, d, d / "access.log"
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=be",
             "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        temp = " ".join(
            f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        loc = (
            'location = /health { return 200 "ok\\n"; } '
            "location = /chunked { default_type text/html; sub_filter_once off; sub_filter o 0; "
            'return 200 "hello world\\n"; } '
            "location = /teapot { return 418; }"
        )
        (d / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n"
            f"error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  {temp}\n"
            "  log_format conns '$remote_addr $server_port $connection $connection_requests "
            "$request_uri $status';\n"
            f"  access_log {self.log} conns;\n  keepalive_timeout 60s;\n"
            f"  server {{ listen {PLAIN}; {loc} }}\n"
            f"  server {{ listen {IDLE_CLOSE}; keepalive_timeout 200ms; {loc} }}\n"
            f"  server {{ listen {FEW_REQUESTS}; keepalive_requests 3; {loc} }}\n"
            f"  server {{ listen {TLS} ssl; ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; "
            f"{loc} }}\n}}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, NGINX, "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not raw_get(self.ns, PLAIN, "/health").startswith(b"HTTP/1.1 200"):
            assert self.proc.poll() is None, f"nginx exited: {self.proc.stderr.read().decode()[-500:]}"
            assert time.monotonic() < deadline, "nginx does not answer"
            time.sleep(0.05)

    def stop(self) -> None:
        tp.terminate(self.proc)
        self.proc = None

    def requests(self, port: int, uri: str) -> list[tuple[int, int, int]]:
        """[(connection serial, request number on it, status)] of the checker's requests."""
        out = []
        for line in self.log.read_text().splitlines() if self.log.exists() else ():
            addr, p, conn, nreq, u, status = line.split()
            if addr == CHK and int(p) == port and u == uri:
                out.append((int(conn), int(nreq), int(status)))
        return out


def raw_get(ns: str, port: int, uri: str) -> bytes:
    """One GET with a plain socket from inside ns (connection: close): the raw answer."""

    def get() -> bytes:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(f"GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data
        except OSError:
            return b""

    return tp.in_netns(ns, get)


@pytest.fixture
def pair(netns_ok, tmp_path):
    conftest._skip_or_fail(None if Path(NGINX).exists() else "needs nginx (nginx-light)")
    conftest._skip_or_fail(None if shutil.which("openssl") else "needs the openssl command")
    prefix = f"{tp.prefix_for_run()}hka-"
    chk, be = f"{prefix}chk", f"{prefix}be"
    for ns in (chk, be):
        tp.sh("ip", "netns", "add", ns)
    nginx = None
    try:
        tp.sh("ip", "link", "add", "eth0", "netns", chk, "type", "veth", "peer", "name", "eth0", "netns", be)
        for ns, a in ((chk, CHK), (be, BE)):
            tp.sh("ip", "link", "set", "lo", "up", ns=ns)
            tp.sh("ip", "addr", "add", f"{a}/24", "dev", "eth0", ns=ns)
            tp.sh("ip", "link", "set", "eth0", "up", ns=ns)
        nginx = Nginx(be, tmp_path / "nginx")
        nginx.start()
        yield chk, be, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        for ns in (chk, be):
            for pid in tp.netns_pids(ns):
                subprocess.run(["kill", "-9", str(pid)], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Checker:
    """The CHECKER script in chk; results() collects its JSON lines."""

    def __init__(self, chk: str, checks: list[dict], interval=0.3, timeout=0.25, rise=1, fall=3):
        conf = {
            "address": BE,
            "checks": checks,
            "timing": {"interval": interval, "timeout": timeout, "rise": rise, "fall": fall, "jitter": 0.0},
        }
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", chk, sys.executable, "-c", CHECKER, json.dumps(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tp.REPO,
        )
        self.lines: list[dict] = []
        assert self._next()["kind"] == "started"

    def _next(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the checker ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        d = json.loads(line)
        self.lines.append(d)
        return d

    def results(self, n: int, deadline: float = 30) -> list[dict]:
        """Reads until n more results came (a guard against hanging, not a timing assertion)."""
        end = time.monotonic() + deadline
        got: list[dict] = []
        while len(got) < n:
            assert time.monotonic() < end, f"only {len(got)} of {n} results: {self.lines[-5:]}"
            d = self._next()
            if d["kind"] == "result":
                got.append(d)
        return got

    def mark(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("mark\n")
        self.proc.stdin.flush()
        while self._next()["kind"] != "marked":
            pass

    def verdicts(self) -> list[dict]:
        return [d for d in self.lines if d["kind"] == "verdict"]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class PyServer:
    def __init__(self, be: str, mode: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", be, sys.executable, "-c", PY_SERVER, str(PY_PORT), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and json.loads(self.proc.stdout.readline()) == {"ready": True}

    def events(self) -> list[dict]:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        return [json.loads(line) for line in self.proc.stdout.read().splitlines()]


def run_checks(chk: str, checks: list[dict], n: int, **timing) -> list[dict]:
    c = Checker(chk, checks, **timing)
    try:
        return c.results(n)
    finally:
        c.stop()


# ----------------------------------------------------------------------------- nginx


def test_one_connection_for_many_checks(pair):
    """Kept connection: N checks of /health (Content-Length body) and N of /chunked (a chunked
    body: proven by the raw answer) are N requests on one TCP connection each."""
    chk, be, nginx = pair
    assert b"\r\nTransfer-Encoding: chunked\r\n" in raw_get(be, PLAIN, "/chunked")
    n = 6
    rs = run_checks(chk, [{"port": PLAIN, "uri": "/health"}, {"port": PLAIN, "uri": "/chunked"}], 2 * n + 2)
    assert all(r["ok"] and r["detail"] == "HTTP 200" for r in rs), rs
    for uri in ("/health", "/chunked"):
        reqs = nginx.requests(PLAIN, uri)
        assert len(reqs) >= n
        assert len({c for c, _, _ in reqs}) == 1, f"{uri}: {reqs}"
        assert [k for _, k, _ in reqs] == list(range(1, len(reqs) + 1))


def test_reuse_off_new_connection_per_check(pair):
    """reuse_connection = false: the old behaviour, a new connection (and Connection: close) per check."""
    chk, be, nginx = pair
    rs = run_checks(chk, [{"port": PLAIN, "uri": "/health", "reuse_connection": False}], 5)
    assert all(r["ok"] for r in rs), rs
    reqs = nginx.requests(PLAIN, "/health")
    assert len(reqs) >= 5
    assert len({c for c, _, _ in reqs}) == len(reqs), reqs
    assert all(k == 1 for _, k, _ in reqs)


def test_server_closes_idle_connection(pair):
    """nginx closes a connection idle for 0.2 s, the checks are 0.5 s apart: every check finds
    its kept connection closed and passes on one new connection (no failure, no extra one)."""
    chk, be, nginx = pair
    rs = run_checks(chk, [{"port": IDLE_CLOSE, "uri": "/health"}], 5, interval=0.5, timeout=0.4)
    assert all(r["ok"] for r in rs), rs
    reqs = nginx.requests(IDLE_CLOSE, "/health")
    assert len(reqs) >= 5
    assert len({c for c, _, _ in reqs}) == len(reqs), reqs  # one connection per check


def test_connection_close_every_third_answer(pair):
    """keepalive_requests 3: nginx's third answer on a connection says Connection: close and
    nginx closes it; the checks all pass and a connection never carries more than three."""
    chk, be, nginx = pair
    rs = run_checks(chk, [{"port": FEW_REQUESTS, "uri": "/health"}], 8)
    assert all(r["ok"] for r in rs), rs
    reqs = nginx.requests(FEW_REQUESTS, "/health")
    per_conn: dict[int, int] = {}
    for c, _, _ in reqs:
        per_conn[c] = per_conn.get(c, 0) + 1
    assert max(per_conn.values()) == 3 and len(per_conn) >= 3, per_conn


def test_wrong_status_fails(pair):
    """418 where 200 is expected fails every check (and each failure closes the connection)."""
    chk, be, nginx = pair
    c = Checker(chk, [{"port": PLAIN, "uri": "/teapot"}], fall=1)
    try:
        rs = c.results(3)
    finally:
        c.stop()
    assert all(not r["ok"] and r["error"] == "HTTP 418, expected 200" for r in rs), rs
    assert c.verdicts()[0]["healthy"] is False
    reqs = nginx.requests(PLAIN, "/teapot")
    assert len({conn for conn, _, _ in reqs}) == len(reqs), reqs
    # and the status the check expects passes on the same server
    rs = run_checks(chk, [{"port": PLAIN, "uri": "/teapot", "status": 418}], 3)
    assert all(r["ok"] for r in rs), rs


def test_nginx_stopped_fails_after_fall(pair):
    """Healthy on a kept connection; nginx stopped: every check started after that fails
    (no pass from the stale connection) and the backend goes down after `fall` failures."""
    chk, be, nginx = pair
    c = Checker(chk, [{"port": PLAIN, "uri": "/health"}], fall=3)
    try:
        assert all(r["ok"] for r in c.results(4))
        assert len({conn for conn, _, _ in nginx.requests(PLAIN, "/health")}) == 1
        nginx.stop()
        c.mark()
        rs = c.results(5)
    finally:
        c.stop()
    after = [r for r in rs if r["after_mark"]]
    assert len(after) >= 4
    assert all(not r["ok"] and r["error"] == "connection refused" for r in after), rs
    v = c.verdicts()
    assert [x["healthy"] for x in v] == [True, False], v
    assert "3 failures in a row, fall 3" in v[-1]["reason"], v[-1]


def test_backend_gone_silent_fails(pair):
    """The backend's link goes down with the connection kept (no FIN, no RST): the checks time
    out and fail, none passes."""
    chk, be, nginx = pair
    c = Checker(chk, [{"port": PLAIN, "uri": "/health"}], fall=2)
    try:
        assert all(r["ok"] for r in c.results(3))
        tp.sh("ip", "link", "set", "eth0", "down", ns=be)
        c.mark()
        rs = c.results(4)
    finally:
        c.stop()
    after = [r for r in rs if r["after_mark"]]
    assert after and all(not r["ok"] and r["error"].startswith("timeout") for r in after), rs
    assert c.verdicts()[-1]["healthy"] is False


# ----------------------------------------------------------------------------- other servers


def test_answer_split_across_reads(pair):
    """Status line, fields and body arrive in three segments a pause apart (longer than the
    checker's tick): one response is framed from them, and the connection is kept."""
    chk, be, _ = pair
    server = PyServer(be, "split")
    rs = run_checks(chk, [{"port": PY_PORT}], 4, interval=0.6, timeout=0.5)
    ev = server.events()
    assert all(r["ok"] and r["detail"] == "HTTP 200" for r in rs), rs
    assert len([e for e in ev if "req" in e]) >= 4
    assert len([e for e in ev if "req" not in e and "conn" in e]) == 1, ev


def test_chunked_split_with_extension_and_trailer(pair):
    chk, be, _ = pair
    server = PyServer(be, "chunked-split")
    rs = run_checks(chk, [{"port": PY_PORT}], 4, interval=0.6, timeout=0.5)
    ev = server.events()
    assert all(r["ok"] for r in rs), rs
    assert len([e for e in ev if "req" not in e and "conn" in e]) == 1, ev


def test_connection_close_is_honoured(pair):
    """The server says Connection: close and keeps the connection open: the checker must not
    send its next request on it (the server would log a request with served > 0)."""
    chk, be, _ = pair
    server = PyServer(be, "close-but-stay")
    rs = run_checks(chk, [{"port": PY_PORT}], 4)
    ev = server.events()
    assert all(r["ok"] for r in rs), rs
    reqs = [e for e in ev if "req" in e]
    assert len(reqs) >= 4 and all(e["served"] == 0 for e in reqs), ev


def test_closed_as_request_arrives_one_reconnect(pair):
    """The server closes the kept connection when the next request arrives, without an answer:
    the check opens one new connection, sends again and passes."""
    chk, be, _ = pair
    server = PyServer(be, "close-on-second")
    rs = run_checks(chk, [{"port": PY_PORT}], 4)
    ev = server.events()
    assert all(r["ok"] for r in rs), rs
    conns = [e for e in ev if "req" not in e and "conn" in e]
    reqs = [e for e in ev if "req" in e]
    # check 1: connection 1; each later check: its request on the kept connection (closed
    # unanswered), then exactly one new connection, whose first request is answered
    assert len([e for e in reqs if e["served"] == 1]) >= 3, ev
    assert all(e["served"] <= 1 for e in reqs), ev
    assert len(conns) <= len([e for e in reqs if e["served"] == 0]) + 1, ev


def test_bytes_sent_while_idle_are_not_the_answer(pair):
    """The server sends a 408 on the idle kept connection (and keeps it open): the next check
    sees bytes that arrived before its request, drops that connection and passes on a new one."""
    chk, be, _ = pair
    server = PyServer(be, "stale-408")
    rs = run_checks(chk, [{"port": PY_PORT}], 4, interval=0.5, timeout=0.4)
    ev = server.events()
    assert all(r["ok"] for r in rs), rs
    conns = [e for e in ev if "req" not in e and "conn" in e]
    assert len(conns) >= 4, ev  # a new connection for every check after the first


def test_https_one_connection_then_nginx_stopped(pair):
    """https keeps its TLS connection (one TLS handshake for all the checks); nginx stopped:
    every check started after that fails and the backend goes down after `fall`."""
    chk, be, nginx = pair
    c = Checker(chk, [{"kind": "https", "port": TLS, "uri": "/health", "tls_verify": False}], fall=2)
    try:
        assert all(r["ok"] and r["detail"] == "HTTP 200" for r in c.results(5))
        reqs = nginx.requests(TLS, "/health")
        assert len(reqs) >= 5 and len({conn for conn, _, _ in reqs}) == 1, reqs
        nginx.stop()
        c.mark()
        rs = c.results(4)
    finally:
        c.stop()
    after = [r for r in rs if r["after_mark"]]
    assert len(after) >= 3 and all(not r["ok"] and r["error"] == "connection refused" for r in after), rs
    assert [x["healthy"] for x in c.verdicts()] == [True, False], c.verdicts()


def test_https_reuse_off_new_connection_per_check(pair):
    chk, be, nginx = pair
    spec = {"kind": "https", "port": TLS, "uri": "/health", "tls_verify": False, "reuse_connection": False}
    rs = run_checks(chk, [spec], 4)
    assert all(r["ok"] for r in rs), rs
    reqs = nginx.requests(TLS, "/health")
    assert len(reqs) >= 4 and len({conn for conn, _, _ in reqs}) == len(reqs), reqs
