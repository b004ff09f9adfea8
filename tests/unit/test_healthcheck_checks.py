"""healthcheck.checks against real servers on loopback: asyncio listeners, real nginx (HTTP and
HTTPS with a self-signed certificate made here with the openssl CLI), and the GUE probe's bytes.

nginx and openssl are needed for the HTTP(S) tests (skip without them, fail in CI); the GUE
tests that open raw sockets need root (skip without, fail in CI).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
import uvloop

from healthcheck import Checker, CheckSpec, build_tunnel_probe
from healthcheck.checks import _csum

IN_CI = os.environ.get("CI", "").lower() == "true"
LO = ipaddress.ip_address("127.0.0.1")


def need(reason: str | None) -> None:
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def run(coro):
    return uvloop.run(coro)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- real nginx


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """nginx on 127.0.0.2: HTTP on one port (Host good.example -> /health 200, else 421), a
    /teapot answering 418, HTTPS (self-signed, CN/SAN good.example) on another port."""
    need(None if shutil.which("nginx") else "needs nginx (nginx-light)")
    need(None if shutil.which("openssl") else "needs the openssl command")
    d = tmp_path_factory.mktemp("nginx")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=good.example", "-addext", "subjectAltName=DNS:good.example",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    http, https = free_port("127.0.0.2"), free_port("127.0.0.2")
    (d / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
    uwsgi_temp_path {d}; scgi_temp_path {d};
    server {{
        listen 127.0.0.2:{http} default_server;
        listen 127.0.0.2:{https} ssl default_server;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ return 421; }}
    }}
    server {{
        listen 127.0.0.2:{http};
        listen 127.0.0.2:{https} ssl;
        server_name good.example;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location = /health {{ return 200 "ok\\n"; }}
        location = /teapot {{ return 418; }}
        location / {{ return 404; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.2", http), timeout=0.2).close()
            socket.create_connection(("127.0.0.2", https), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
    yield {"http": http, "https": https, "address": ipaddress.ip_address("127.0.0.2"), "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


def check(spec: CheckSpec, address=LO, timeout: float = 2.0):
    async def go():
        c = Checker()
        try:
            return await c.run(spec, address, timeout)
        finally:
            c.close()

    return run(go())


def test_http_nginx_host_and_status(nginx):
    a, port = nginx["address"], nginx["http"]
    r = check(CheckSpec("http", port, uri="/health", host="good.example"), a)
    assert r.ok, r
    assert r.detail == "HTTP 200"
    assert 0 < r.latency < 1
    # without the Host header nginx's default server answers 421: a wrong status fails
    r = check(CheckSpec("http", port, uri="/health"), a)
    assert not r.ok
    assert r.error == "HTTP 421, expected 200"
    r = check(CheckSpec("http", port, uri="/nope", host="good.example"), a)
    assert not r.ok and r.error == "HTTP 404, expected 200"
    # an expected status other than 200
    assert check(CheckSpec("http", port, uri="/teapot", host="good.example", status=418), a).ok


def test_https_nginx_self_signed(nginx):
    a, port = nginx["address"], nginx["https"]
    r = check(CheckSpec("https", port, uri="/health", host="good.example", tls_verify=False), a)
    assert r.ok, r
    assert r.detail == "HTTP 200"
    # verification on: the self-signed certificate is refused
    r = check(CheckSpec("https", port, uri="/health", host="good.example"), a)
    assert not r.ok
    assert "certificate" in r.error
    r = check(CheckSpec("https", port, uri="/nope", host="good.example", tls_verify=False), a)
    assert not r.ok and r.error == "HTTP 404, expected 200"


# ----------------------------------------------------------------------------- asyncio listeners


def need_raw() -> None:
    """The half-open tcp check needs CAP_NET_RAW (without it, it would run as a connect check)."""
    need(None if os.geteuid() == 0 else "needs root (raw sockets)")


@pytest.mark.parametrize(("mode", "detail"), [("connect", "connected"), ("half-open", "SYN-ACK")])
def test_tcp_connect_and_refused(mode, detail):
    if mode == "half-open":
        need_raw()

    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Checker()
        ok = await c.run(CheckSpec("tcp", port, mode=mode), LO, 1.0)
        server.close()
        await server.wait_closed()
        refused = await c.run(CheckSpec("tcp", port, mode=mode), LO, 1.0)
        c.close()
        return ok, refused

    ok, refused = run(go())
    assert ok.ok and ok.detail == detail and ok.latency < 0.5, ok
    assert not refused.ok and refused.error == "connection refused", refused


@pytest.mark.parametrize("mode", ["connect", "half-open"])
def test_timeouts(mode):
    """A server that accepts but never answers: the HTTP check times out; a listener whose
    accept queue is full (SYNs dropped): the TCP check times out, connect or half-open."""
    if mode == "half-open":
        need_raw()

    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fport = full.getsockname()[1]
        fillers = []
        for _ in range(3):  # fill the accept queue (never accepted)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", fport))
            fillers.append(s)
        await asyncio.sleep(0.1)
        c = Checker()
        t0 = time.monotonic()
        http = await c.run(CheckSpec("http", port), LO, 0.3)
        t_http = time.monotonic() - t0
        t0 = time.monotonic()
        tcp = await c.run(CheckSpec("tcp", fport, mode=mode), LO, 0.3)
        t_tcp = time.monotonic() - t0
        c.close()
        server.close()
        for s in fillers:
            s.close()
        full.close()
        return http, t_http, tcp, t_tcp

    http, t_http, tcp, t_tcp = run(go())
    assert not http.ok and http.error == "timeout: no answer within 0.3 s"
    assert 0.29 <= t_http < 0.6
    assert not tcp.ok and tcp.error == "timeout: no answer within 0.3 s"
    assert 0.29 <= t_tcp < 0.6


def test_http_garbage_and_close():
    async def go():
        async def garbage(r, w):
            await r.readuntil(b"\r\n\r\n")
            w.write(b"SSH-2.0-OpenSSH\r\n")
            await w.drain()
            w.close()

        async def hangup(r, w):
            await r.readuntil(b"\r\n\r\n")
            w.close()

        s1 = await asyncio.start_server(garbage, "127.0.0.1", 0)
        s2 = await asyncio.start_server(hangup, "127.0.0.1", 0)
        c = Checker()
        r1 = await c.run(CheckSpec("http", s1.sockets[0].getsockname()[1]), LO, 1.0)
        r2 = await c.run(CheckSpec("http", s2.sockets[0].getsockname()[1]), LO, 1.0)
        c.close()
        return r1, r2

    r1, r2 = run(go())
    assert not r1.ok and r1.error.startswith("not an HTTP status line")
    assert not r2.ok and r2.error == "connection closed before an HTTP status line"


def test_http_request_line_and_host():
    """What the checker sends: GET uri, Host (address:port when no host is given)."""

    async def go():
        got: list[bytes] = []

        async def handler(r, w):
            got.append(await r.readuntil(b"\r\n\r\n"))
            w.write(b"HTTP/1.0 204 No Content\r\n\r\n")
            await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Checker()
        r1 = await c.run(CheckSpec("http", port, uri="/ping?x=1", status=204), LO, 1.0)
        r2 = await c.run(CheckSpec("http", port, host="svc.example"), LO, 1.0)
        c.close()
        return got, port, r1, r2

    got, port, r1, r2 = run(go())
    assert r1.ok
    assert got[0].startswith(b"GET /ping?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in got[0]
    assert b"\r\nHost: svc.example\r\n" in got[1]
    assert not r2.ok and r2.error == "HTTP 204, expected 200"


# ----------------------------------------------------------------------------- GUE probe


def test_gue_probe_bytes_v4():
    """GUE header per docs/packet-core.md §4 with no hop; inner ICMP echo request with valid
    checksums, from the checker's address to the backend's own address."""
    src, dst = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("198.51.100.11")
    p = build_tunnel_probe("gue", src, dst, 0x1234, 7, b"fwd-hc\0\0token123")
    assert p[:8] == bytes([0x01, 0x04, 0, 0, 0, 0, 0, 0])  # hlen 1, IPv4, private type 0, 0 hops
    inner = p[8:]
    assert inner[0] == 0x45 and inner[9] == 1  # IPv4, ICMP
    assert struct.unpack("!H", inner[2:4])[0] == len(inner)
    assert inner[6:8] == b"\x40\x00"  # DF
    assert inner[12:16] == src.packed and inner[16:20] == dst.packed
    assert _csum(inner[:20]) == 0
    icmp = inner[20:]
    assert icmp[0] == 8 and icmp[1] == 0  # echo request
    assert struct.unpack("!HH", icmp[4:8]) == (0x1234, 7)
    assert _csum(icmp) == 0
    assert icmp[8:] == b"fwd-hc\0\0token123"
    # the same through scapy (an independent decoder)
    from scapy.layers.inet import ICMP, IP

    pkt = IP(inner)
    assert pkt[ICMP].type == 8 and pkt.src == str(src) and pkt.dst == str(dst)
    fou = build_tunnel_probe("fou", src, dst, 1, 1, b"x")
    assert fou[:8] == bytes([0x20, 0, 0x08, 0, 0, 0, 0, 0])


def test_gue_probe_bytes_v6():
    src, dst = ipaddress.ip_address("2001:db8::10"), ipaddress.ip_address("2001:db8:1::11")
    p = build_tunnel_probe("gue", src, dst, 0xBEEF, 9, b"fwd-hc\0\0abcdefgh")
    assert p[:8] == bytes([0x01, 41, 0, 0, 0, 0, 0, 0])
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    pkt = IPv6(p[8:])
    assert pkt.src == str(src) and pkt.dst == str(dst) and pkt.nh == 58 and pkt.hlim == 64
    echo = pkt[ICMPv6EchoRequest]
    assert echo.id == 0xBEEF and echo.seq == 9
    chk = echo.cksum
    del echo.cksum
    assert IPv6(bytes(pkt))[ICMPv6EchoRequest].cksum == chk  # scapy recomputes the same sum


def test_probe_template_matches_build_tunnel_probe():
    """The checker's precomputed probe (fixed parts and checksum sums made once per backend) is
    byte for byte the probe build_tunnel_probe makes (checked against scapy above), for every
    kind and family and counters that wrap the 16-bit sequence number."""
    from healthcheck.checks import _TOKEN_MAGIC, _ProbeTemplate

    pairs = [("192.0.2.10", "198.51.100.11"), ("2001:db8::10", "2001:db8:1::11")]
    for src_text, dst_text in pairs:
        src, dst = ipaddress.ip_address(src_text), ipaddress.ip_address(dst_text)
        for kind in ("gue", "fou"):
            t = _ProbeTemplate(kind, src, dst, 0xBEEF, b"\x01\x02\x03\x04")
            for counter in (1, 7, 0xFFFF, 0x10000, 2**40 + 12345, 2**64 - 1):
                token = _TOKEN_MAGIC + b"\x01\x02\x03\x04" + counter.to_bytes(8, "big")
                assert t.build(counter) == build_tunnel_probe(kind, src, dst, 0xBEEF, counter & 0xFFFF, token)


def _root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (raw ICMP socket)"


def test_gue_without_decapsulator_fails_fast():
    """Nothing listens on udp/19523 on loopback: the kernel's port unreachable fails the check
    at once, naming the reason."""
    need(_root())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.3", 19523))
        except OSError:
            pytest.skip("udp/19523 is in use on this machine")
    r = check(CheckSpec("gue", 19523), ipaddress.ip_address("127.0.0.3"), timeout=1.0)
    assert not r.ok
    assert "port unreachable" in r.error and "fwd-redirect" in r.error
    assert r.latency < 0.5


def test_gue_with_userspace_decapsulator_passes():
    """A stand-in for fwd-redirect on loopback (strip GUE, hand the inner packet to the kernel):
    the kernel answers the inner echo request itself and the check passes."""
    need(_root())

    async def go():
        loop = asyncio.get_running_loop()
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        seen: list[bytes] = []

        class Decap(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                seen.append(data)
                hlen = data[0] & 0x1F
                inner = data[4 + 4 * hlen :]
                raw.sendto(inner, (socket.inet_ntoa(inner[16:20]), 0))

        port = free_port()
        transport, _ = await loop.create_datagram_endpoint(Decap, local_addr=("127.0.0.4", port))
        c = Checker()
        r = await c.run(CheckSpec("gue", port), ipaddress.ip_address("127.0.0.4"), 1.0)
        c.close()
        transport.close()
        raw.close()
        return r, seen

    r, seen = run(go())
    assert r.ok, r
    assert r.detail.startswith("echo reply from 127.0.0.4")
    assert 0 < r.latency < 0.5
    assert len(seen) == 1 and seen[0][:8] == bytes([1, 4, 0, 0, 0, 0, 0, 0])


# ----------------------------------------------------------------------------- HTTP framing


def test_response_framing():
    """_response: where one response ends on a kept connection (end), None while more is to
    come, -1 when the connection cannot carry another request; the status as _status_of reads it."""
    from healthcheck.checks import _MAX_BODY, _response

    ok = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
    assert _response(ok, True) == (200, len(ok))
    assert _response(ok, False) == (200, -1)  # reuse off: the status line is all that is read
    for cut in (5, 20, len(ok) - 4, len(ok) - 1):  # split anywhere: status, then the end later
        r = _response(ok[:cut], True)
        assert r is None or r == (200, None), (cut, r)
    assert _response(ok + b"HTTP/1.1 200", True) == (200, len(ok))  # bytes after it: caller closes
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n"
    assert _response(chunked, True) == (200, len(chunked))
    assert _response(chunked[:-2], True) == (200, None)
    assert _response(b"HTTP/1.1 204 No Content\r\n\r\n", True) == (204, 27)
    not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"  # no body all the same
    assert _response(not_modified, True) == (304, len(not_modified))
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    interim += b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert _response(interim, True) == (404, len(interim))
    assert _response(b"HTTP/1.1 103 Early Hints\r\n\r\n", True) is None  # the final status is to come
    lf_only = b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx"
    assert _response(lf_only, True) == (200, len(lf_only))
    for head in (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",  # 1.0 without keep-alive
        b"HTTP/1.1 200 OK\r\n\r\nuntil the close",  # no length
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",  # unclear
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (_MAX_BODY + 1),  # too long to drain
    ):
        assert _response(head, True) == (200, -1), head
    keep10 = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    assert _response(keep10, True) == (200, len(keep10))
    with pytest.raises(Exception, match="not an HTTP status line"):
        _response(b"SSH-2.0-OpenSSH_9.2\r\n", True)


def test_http_kept_connection_loopback():
    """Checker.run keeps the connection between checks of one spec (one accept for 5 checks);
    reuse_connection=False: one accept per check; the request says Connection: close then."""

    async def go():
        accepts, requests = [], []

        async def handler(r, w):
            accepts.append(1)
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                requests.append(head)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Checker()
        kept = [await c.run(CheckSpec("http", port), LO, 1.0) for _ in range(5)]
        n_kept = len(accepts)
        fresh = [await c.run(CheckSpec("http", port, reuse_connection=False), LO, 1.0) for _ in range(3)]
        c.close()
        server.close()
        return kept, n_kept, fresh, len(accepts) - n_kept, requests

    kept, n_kept, fresh, n_fresh, requests = run(go())
    assert all(r.ok for r in kept + fresh), kept + fresh
    assert n_kept == 1 and n_fresh == 3
    assert not any(b"Connection: close" in h for h in requests[:5])
    assert all(b"\r\nConnection: close\r\n" in h for h in requests[5:])


def test_http_kept_connection_max_age(monkeypatch):
    """A kept connection older than _REUSE_MAX_AGE is not used again: the check opens a new one
    (so a server that stopped accepting connections is noticed)."""
    import healthcheck.checks as hc

    monkeypatch.setattr(hc, "_REUSE_MAX_AGE", 0.0)

    async def go():
        accepts = []

        async def handler(r, w):
            accepts.append(1)
            while True:
                try:
                    await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Checker()
        rs = [await c.run(CheckSpec("http", port), LO, 1.0) for _ in range(3)]
        c.close()
        server.close()
        return rs, len(accepts)

    rs, n = run(go())
    assert all(r.ok for r in rs), rs
    assert n == 3


def test_https_kept_connection(nginx):
    """https keeps its TLS connection too: 4 checks, one TLS handshake (a Python TLS server
    counts accepts); reuse_connection=False: one per check. The nginx one passes either way."""
    import ssl as _ssl

    ctx = _ssl.create_default_context(_ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(nginx["dir"] / "cert.pem", nginx["dir"] / "key.pem")

    async def go():
        accepts = []

        async def handler(r, w):
            accepts.append(1)
            while True:
                try:
                    await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, _ssl.SSLError):
                    break
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        c = Checker()
        spec = CheckSpec("https", port, host="good.example", tls_verify=False)
        kept = [await c.run(spec, LO, 2.0) for _ in range(4)]
        n_kept = len(accepts)
        off = CheckSpec("https", port, host="good.example", tls_verify=False, reuse_connection=False)
        fresh = [await c.run(off, LO, 2.0) for _ in range(3)]
        a, p = nginx["address"], nginx["https"]
        ng = [await c.run(CheckSpec("https", p, uri="/health", host="good.example", tls_verify=False), a, 2.0)
              for _ in range(3)]  # fmt: skip
        c.close()
        server.close()
        return kept, n_kept, fresh, len(accepts) - n_kept, ng

    kept, n_kept, fresh, n_fresh, ng = run(go())
    assert all(r.ok for r in kept + fresh + ng), kept + fresh + ng
    assert n_kept == 1 and n_fresh == 3
