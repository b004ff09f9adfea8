"""The half-open tcp check's parts on loopback: its config key, the SYN's bytes and checksum
against the reference model's RFC 1071 sum, the BPF filter on a real raw socket fed by real
connections, checks in flight at once to one backend, nothing left booked afterwards.

The whole check against a real backend kernel over a veth pair (IPv4 and IPv6, refused, timeout,
ICMP errors, the packets on the wire, no accepted connection, the fallback without CAP_NET_RAW):
tests/netns/test_halfopen_check.py. Raw sockets need root (skip, or fail in CI).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import struct

import pytest
import uvloop

from fwd.config import ConfigError
from healthcheck import Checker, CheckSpec, parse_check
from healthcheck.halfopen import _attach, _SynTemplate, syn_filter
from tests.model.packet import inet_checksum, pseudo_header6

IN_CI = os.environ.get("CI", "").lower() == "true"


def need_root() -> None:
    if os.geteuid() == 0:
        return
    if IN_CI:
        pytest.fail("cannot run in CI: needs root (raw sockets)", pytrace=False)
    pytest.skip("needs root (raw sockets)")


# ----------------------------------------------------------------------------- config


def test_tcp_mode_key():
    assert parse_check({"type": "tcp", "port": 22}, "f", "k") == CheckSpec("tcp", 22)
    assert CheckSpec("tcp", 22).mode == "half-open"  # the default, and equal to naming it
    assert CheckSpec("tcp", 22) == CheckSpec("tcp", 22, mode="half-open")
    assert parse_check({"type": "tcp", "port": 22, "mode": "connect"}, "f", "k").mode == "connect"
    assert CheckSpec("http", 80).mode is None
    a = ipaddress.ip_address("10.0.0.1")
    assert CheckSpec("tcp", 22).describe(a) == "tcp 10.0.0.1:22"
    assert CheckSpec("tcp", 22, mode="connect").describe(a) == "tcp 10.0.0.1:22 connect"
    cases = [
        ({"type": "tcp", "port": 22, "mode": "syn"},
         "f: k.mode: bad tcp mode string 'syn' (expected one of: half-open, connect)"),
        ({"type": "tcp", "port": 22, "mode": 1}, "f: k.mode: bad tcp mode integer 1"),
        ({"type": "tcp", "port": 22, "mode": True}, "f: k.mode: bad tcp mode boolean true"),
        ({"type": "http", "mode": "connect"}, "f: k.mode: only tcp checks take mode"),
        ({"type": "gue", "mode": "half-open"}, "f: k.mode: only tcp checks take mode"),
    ]  # fmt: skip
    for obj, msg in cases:
        with pytest.raises(ConfigError) as e:
            parse_check(obj, "f", "k")
        assert str(e.value).startswith(msg), (obj, str(e.value))
    with pytest.raises(ValueError, match="bad tcp mode"):
        CheckSpec("tcp", 22, mode="half")
    with pytest.raises(ValueError, match="only tcp checks take a mode"):
        CheckSpec("http", 80, mode="connect")


def test_fwd_config_bad_mode(tmp_path):
    """The key through fwd's own config: a bad mode is one FILE: KEY: REASON line."""
    from fwd.config import load_config

    base = (
        '[node]\n[[tables]]\nname = "web"\nhash_key = "' + "0" * 32 + '"\nseed = "' + "1" * 32 + '"\n'
        '[[tables.binds]]\nip = "10.0.0.1"\nproto = "tcp"\nport = 80\n'
        '[[tables.backends]]\nip = "10.1.0.1"\nchecks = [ {{ type = "tcp", port = 22, mode = {mode} }} ]\n'
    )
    good = tmp_path / "good.toml"
    good.write_text(base.format(mode='"connect"'))
    cfg = load_config(good)
    assert cfg.tables[0].backends[0].checks[0].mode == "connect"
    bad = tmp_path / "bad.toml"
    bad.write_text(base.format(mode='"syn-only"'))
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "tables[0].backends[0].checks[0].mode: bad tcp mode string 'syn-only'" in str(e.value), str(
        e.value
    )


# ----------------------------------------------------------------------------- the SYN


@pytest.mark.parametrize(("src", "dst"), [("192.0.2.1", "198.51.100.7"), ("2001:db8::1", "2001:db8:1::7")])
def test_syn_bytes_and_checksum(src, dst):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    t = _SynTemplate(s, d, 8080)
    rng = random.Random(7)
    for _ in range(2000):
        sport, isn = rng.randrange(1, 65536), rng.getrandbits(32)
        seg = t.build(sport, isn)
        assert len(seg) == 24
        assert struct.unpack_from("!HHII", seg) == (sport, 8080, isn, 0)
        assert seg[12] >> 4 == 6 and seg[13] == 0x02  # 24-byte header, SYN only
        assert seg[20:22] == b"\x02\x04"  # MSS option
        if s.version == 4:
            pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 6, len(seg))
        else:
            pseudo = pseudo_header6(s.packed, d.packed, len(seg), 6)
        zeroed = seg[:16] + b"\0\0" + seg[18:]
        assert struct.unpack_from("!H", seg, 16)[0] == inet_checksum(pseudo + zeroed)
        pkt = t.packet(sport, isn)  # what is sent: the IP header (IP_HDRINCL), then the segment
        if s.version == 4:  # identification and header checksum left 0 for the kernel
            assert pkt[:20] == struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0x4000, 64, 6, 0, s.packed, d.packed
            )
        else:
            assert pkt[:40] == struct.pack("!IHBB16s16s", 6 << 28, 24, 6, 64, s.packed, d.packed)
        assert pkt[-24:] == seg and len(pkt) == (44 if s.version == 4 else 64)


# ----------------------------------------------------------------------------- the filter


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_filter_passes_only_answers_to_the_reserved_port(family):
    """Real connections on loopback: a handshake and data from the reserved port, a refused
    connect from it, and a connection between other ports. The filtered raw socket gets the
    SYN-ACK and the reset to the reserved port, and nothing else."""
    need_root()
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    lport = listener.getsockname()[1]
    closed = socket.socket(family, socket.SOCK_STREAM)
    closed.bind((host, 0))  # bound, not listening: a connect to it is refused
    cport = closed.getsockname()[1]
    res = socket.socket(family, socket.SOCK_STREAM)
    res.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    res.bind((host, 0))
    port = res.getsockname()[1]
    _attach(raw, syn_filter([port + 1, port, port + 2], family == socket.AF_INET))
    try:
        res.connect((host, lport))  # SYN-ACK to port (passes), then ACK, data, FIN (dropped)
        conn, _ = listener.accept()
        res.sendall(b"x" * 100)
        conn.sendall(b"y" * 100)
        res.recv(100)
        conn.recv(100)  # read everything: the closes are FINs, not resets
        conn.close()
        res.close()
        other = socket.create_connection((host, lport))  # another port: dropped
        other.sendall(b"z")
        listener.accept()[0].close()
        other.close()
        res = socket.socket(family, socket.SOCK_STREAM)
        res.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        res.bind((host, port))
        assert res.connect_ex((host, cport)) != 0  # RST+ACK to port (passes)
        got = []
        raw.settimeout(0.3)
        while True:
            try:
                data = raw.recv(2048)
            except TimeoutError:
                break
            off = (data[0] & 0x0F) * 4 if family == socket.AF_INET else 0
            sport, dport = struct.unpack_from("!HH", data, off)
            got.append((sport, dport, data[off + 13] & 0x3F))
    finally:
        for s in (raw, listener, closed, res):
            s.close()
    assert got == [(lport, port, 0x12), (cport, port, 0x14)], got


# ----------------------------------------------------------------------------- in flight


def test_checks_in_flight_to_one_backend():
    """Eight checks of one ip:port at once pass, from distinct reserved ports; one after the
    other they use one port; nothing stays booked."""
    need_root()

    async def go():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            port = s.getsockname()[1]
            c = Checker()
            lo = ipaddress.ip_address("127.0.0.1")
            spec = CheckSpec("tcp", port)
            seq = [await c.run(spec, lo, 1.0) for _ in range(5)]
            ports_seq = list(c._syn.families[socket.AF_INET].ports)
            together = await asyncio.gather(*(c.run(spec, lo, 1.0) for _ in range(8)))
            ports = list(c._syn.families[socket.AF_INET].ports)
            left = len(c._syn.pending) + len(c._syn.by_dest)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.accept()  # nothing was accepted
            c.close()
            return seq, ports_seq, together, ports, left

    seq, ports_seq, together, ports, left = uvloop.run(go())
    assert all(r.ok and r.detail == "SYN-ACK" for r in seq + together), seq + together
    assert len(ports_seq) == 1, ports_seq
    assert len(ports) == 8 and len(set(ports)) == 8, ports
    assert left == 0
