"""The half-open tcp check (healthcheck/halfopen.py) against a real backend kernel, in two
network namespaces:

    chk  eth0 10.96.0.1/24 fd96::1/64  ──veth──  be  eth0 10.96.0.2/24 fd96::2/64

``be`` runs a TCP listener on both families (never accepting), forwards, and routes
10.96.9.0/24 and fd96:9::/64 into a blackhole (dropped without an answer) and 10.96.8.0/24 and
fd96:8::/64 as unreachable (an ICMP error); ``chk`` routes both through ``be``. The checker
runs inside ``chk`` (a child process).

* test_half_open_results: over IPv4 and IPv6, a listener passes (SYN-ACK), a closed port is
  refused (the backend's reset), a blackholed address times out, an unreachable one fails with
  the ICMP error; two checks in flight to one backend both pass, from two source ports.
* test_half_open_on_the_wire: captures on both ends: the backend receives a SYN (valid checksum
  by the reference model's RFC 1071 sum, MSS option; the backend's kernel verifies it too, else
  no SYN-ACK) and then the checker kernel's RST (sequence
  = ISN + 1), the checker receives the SYN-ACK (ack = ISN + 1), and nothing else goes from the
  checker to the backend; the listener's accept queue stays empty and no connection is left on
  the backend. The same capture of a connect check sees the checker's ACK and the queued
  connection (the capture can tell).
* test_half_open_falls_back_without_cap_net_raw: the checker as uid 65534 without capabilities
  runs tcp checks as connect checks (they pass and say ``connected``) and logs why, once.

Needs root (skip, or fail in CI).
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
import time

import pytest

from tests.model.packet import inet_checksum, pseudo_header6
from tests.netns import topology as tp

CHK4, CHK6 = "10.96.0.1", "fd96::1"
BE4, BE6 = "10.96.0.2", "fd96::2"
HOLE4, HOLE6 = "10.96.9.9", "fd96:9::9"  # blackholed behind be
UNREACH4, UNREACH6 = "10.96.8.8", "fd96:8::8"  # be answers "unreachable"
PORT, CLOSED = 8080, 8081

CHECK_SCRIPT = r"""
import asyncio, ipaddress, json, logging, sys, uvloop
from healthcheck import Checker, CheckSpec

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

async def main():
    c = Checker()
    checks = json.loads(sys.argv[1])
    async def one(mode, port, addr, timeout):
        r = await c.run(CheckSpec("tcp", port, mode=mode), ipaddress.ip_address(addr), timeout)
        return {"mode": mode, "port": port, "address": addr, "ok": r.ok, "error": r.error,
                "detail": r.detail, "latency": r.latency}
    out = []
    for group in checks:  # the checks of a group run at the same time
        out += await asyncio.gather(*(one(*chk) for chk in group))
    syn = c._syn
    ports = {} if syn is None else {fam: f.ports for fam, f in syn.families.items()}
    left = None if syn is None else len(syn.pending) + len(syn.by_dest)
    c.close()
    print(json.dumps({"results": out, "ports": ports, "left": left}))

uvloop.run(main())
"""

LISTENER = r"""
import socket, sys
socks = []
for fam, addr in ((socket.AF_INET, "10.96.0.2"), (socket.AF_INET6, "fd96::2")):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(sys.argv[1])))
    s.listen(64)
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def pair(netns_ok):
    prefix = f"{tp.prefix_for_run()}syn-"
    chk, be = f"{prefix}chk", f"{prefix}be"
    for ns in (chk, be):
        tp.sh("ip", "netns", "add", ns)
    listener = None
    try:
        tp.sh("ip", "link", "add", "eth0", "netns", chk, "type", "veth", "peer", "name", "eth0", "netns", be)
        for ns, a4, a6 in ((chk, CHK4, CHK6), (be, BE4, BE6)):
            tp.sh("ip", "link", "set", "lo", "up", ns=ns)
            tp.sh("ip", "addr", "add", f"{a4}/24", "dev", "eth0", ns=ns)
            tp.sh("ip", "addr", "add", f"{a6}/64", "dev", "eth0", "nodad", ns=ns)
            tp.sh("ip", "link", "set", "eth0", "up", ns=ns)
        for net4, net6, kind in (
            ("10.96.9.0/24", "fd96:9::/64", "blackhole"),
            ("10.96.8.0/24", "fd96:8::/64", "unreachable"),
        ):
            tp.sh("ip", "route", "add", net4, "via", BE4, ns=chk)
            tp.sh("ip", "-6", "route", "add", net6, "via", BE6, ns=chk)
            tp.sh("ip", "route", "add", kind, net4, ns=be)
            tp.sh("ip", "-6", "route", "add", kind, net6, ns=be)
        tp.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=be)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", be, sys.executable, "-c", LISTENER, str(PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        for a in (BE4, BE6):  # links up, neighbours resolvable
            deadline = time.monotonic() + 10
            while subprocess.run(["ip", "netns", "exec", chk, "ping", "-c1", "-W1", a],
                                 capture_output=True).returncode != 0:  # fmt: skip
                assert time.monotonic() < deadline, f"{a} does not answer ping from {chk}"
                time.sleep(0.1)
        yield chk, be
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        for ns in (chk, be):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run_checks(chk: str, groups: list[list[tuple[str, int, str, float]]], *, as_nobody: bool = False) -> dict:
    """Runs the groups of (mode, port, address, timeout) in chk; {"results", "ports", "left",
    "stderr"}. as_nobody: as uid 65534 without any capability."""
    argv = [sys.executable, "-c", CHECK_SCRIPT, json.dumps(groups)]
    if as_nobody:
        argv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps", "-all",
                "--ambient-caps", "-all", "--bounding-set", "-all", *argv]  # fmt: skip
    p = subprocess.run(
        ["ip", "netns", "exec", chk, *argv], capture_output=True, text=True, timeout=60, cwd=tp.REPO
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    out["stderr"] = p.stderr
    return out


def accept_queue(be: str) -> dict[str, int]:
    """The listeners' accept queues (Recv-Q of a listening socket) by local address."""
    out = tp.sh("ss", "-Hltn", f"sport = :{PORT}", ns=be)
    return {line.split()[3]: int(line.split()[1]) for line in out.splitlines() if line.strip()}


def connections(be: str) -> list[str]:
    """Every TCP socket of be's port that is not the listener (SYN-RECV, ESTAB, ...)."""
    out = tp.sh("ss", "-Htan", "state", "all", f"sport = :{PORT}", ns=be)
    return [line for line in out.splitlines() if line.strip() and not line.startswith("LISTEN")]


# ----------------------------------------------------------------------------- results


def test_half_open_results(pair):
    chk, be = pair
    groups = []
    for be_addr, hole, unreach in ((BE4, HOLE4, UNREACH4), (BE6, HOLE6, UNREACH6)):
        groups += [
            [("half-open", PORT, be_addr, 1.0)],
            [("half-open", CLOSED, be_addr, 1.0)],
            [("half-open", PORT, hole, 0.3)],
            [("half-open", PORT, unreach, 1.0)],
            [("half-open", PORT, be_addr, 1.0), ("half-open", PORT, be_addr, 1.0)],  # two in flight
        ]
    out = run_checks(chk, groups)
    rs = out["results"]
    assert len(rs) == 12, rs
    for i, (be_addr, hole, unreach) in enumerate(((BE4, HOLE4, UNREACH4), (BE6, HOLE6, UNREACH6))):
        ok, refused, timeout, unreachable, two_a, two_b = rs[6 * i : 6 * i + 6]
        assert [r["address"] for r in (ok, timeout, unreachable)] == [be_addr, hole, unreach], rs
        assert ok["ok"] and ok["detail"] == "SYN-ACK" and 0 < ok["latency"] < 1, ok
        assert not refused["ok"] and refused["error"] == "connection refused", refused
        assert not timeout["ok"] and timeout["error"] == "timeout: no answer within 0.3 s", timeout
        # ICMP host unreachable (IPv4), no route to destination (ICMPv6): EHOSTUNREACH, ENETUNREACH
        assert not unreachable["ok"] and "UNREACH)" in unreachable["error"], unreachable
        assert two_a["ok"] and two_b["ok"], (two_a, two_b)
    # the two checks in flight to one ip:port left from two reserved source ports; nothing is
    # left booked once every check is done
    assert all(len(ports) == 2 for ports in out["ports"].values()), out["ports"]
    assert out["left"] == 0
    assert accept_queue(be) == {f"{BE4}:{PORT}": 0, f"[{BE6}]:{PORT}": 0}


# ----------------------------------------------------------------------------- the wire


def tcp_segments(frames: list[tp.Frame]) -> list[dict]:
    """The TCP segments among Ethernet frames (IPv4 without options' surprises, IPv6 without
    extension headers), with their checksum verified by the reference model's RFC 1071 sum."""
    out = []
    for f in frames:
        d = f.data
        etype = struct.unpack_from("!H", d, 12)[0]
        if etype == 0x0800 and d[23] == 6:
            ihl = (d[14] & 0x0F) * 4
            total = struct.unpack_from("!H", d, 16)[0]
            src, dst = d[26:30], d[30:34]
            seg = d[14 + ihl : 14 + total]
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
        elif etype == 0x86DD and d[20] == 6:
            plen = struct.unpack_from("!H", d, 18)[0]
            src, dst = d[22:38], d[38:54]
            seg = d[54 : 54 + plen]
            pseudo = pseudo_header6(src, dst, len(seg), 6)
        else:
            continue
        sport, dport, seq, ack = struct.unpack_from("!HHII", seg)
        out.append({
            "src": str(ipaddress.ip_address(src)), "dst": str(ipaddress.ip_address(dst)),
            "sport": sport, "dport": dport, "seq": seq, "ack": ack, "flags": seg[13] & 0x3F,
            "options": seg[20 : (seg[12] >> 4) * 4], "csum_ok": inet_checksum(pseudo + seg) == 0,
        })  # fmt: skip
    return out


SYN, RST, ACK = 0x02, 0x04, 0x10


def test_half_open_on_the_wire(pair):
    chk, be = pair
    at_be, at_chk = tp.Capture(be, "eth0"), tp.Capture(chk, "eth0")  # each sees what arrives
    try:
        out = run_checks(chk, [[("half-open", PORT, BE4, 1.0)], [("half-open", PORT, BE6, 1.0)]])
        assert all(r["ok"] for r in out["results"]), out["results"]
        time.sleep(0.2)
        queue, conns = accept_queue(be), connections(be)
    finally:
        to_be, to_chk = tcp_segments(at_be.stop()), tcp_segments(at_chk.stop())
    assert queue == {f"{BE4}:{PORT}": 0, f"[{BE6}]:{PORT}": 0}, "a connection was accepted"
    assert conns == [], conns
    for chk_addr, be_addr in ((CHK4, BE4), (CHK6, BE6)):
        sent = [s for s in to_be if s["src"] == chk_addr and s["dst"] == be_addr]
        got = [s for s in to_chk if s["src"] == be_addr and s["dst"] == chk_addr]
        assert [s["flags"] for s in sent] == [SYN, RST], sent  # no ACK: no connection was made
        syn, rst = sent
        assert syn["csum_ok"], syn  # ours (the kernels' segments may be left to checksum offload)
        assert syn["dport"] == PORT and syn["options"][:2] == b"\x02\x04", syn  # MSS option
        assert rst["sport"] == syn["sport"] and rst["seq"] == (syn["seq"] + 1) & 0xFFFFFFFF, (syn, rst)
        assert [s["flags"] for s in got] == [SYN | ACK], got
        assert got[0]["ack"] == (syn["seq"] + 1) & 0xFFFFFFFF and got[0]["dport"] == syn["sport"]

    # the control: a connect check, seen by the same captures, completes the handshake
    at_be = tp.Capture(be, "eth0")
    try:
        out = run_checks(chk, [[("connect", PORT, BE4, 1.0)]])
        assert out["results"][0]["ok"] and out["results"][0]["detail"] == "connected", out
        time.sleep(0.2)
        queue = accept_queue(be)
    finally:
        to_be = tcp_segments(at_be.stop())
    flags = [s["flags"] for s in to_be if s["src"] == CHK4 and s["dport"] == PORT]
    assert SYN in flags and ACK in flags, flags
    assert queue[f"{BE4}:{PORT}"] == 1, queue


# ----------------------------------------------------------------------------- no CAP_NET_RAW


def test_half_open_falls_back_without_cap_net_raw(pair):
    chk, be = pair
    out = run_checks(
        chk,
        [[("half-open", PORT, BE4, 1.0)], [("half-open", PORT, BE6, 1.0)], [("half-open", CLOSED, BE4, 1.0)]],
        as_nobody=True,
    )
    ok4, ok6, refused = out["results"]
    assert ok4["ok"] and ok4["detail"] == "connected", ok4
    assert ok6["ok"] and ok6["detail"] == "connected", ok6
    assert not refused["ok"] and refused["error"] == "connection refused", refused
    warnings = [line for line in out["stderr"].splitlines() if "connect mode instead of half-open" in line]
    assert len(warnings) == 1, out["stderr"]
    assert "CAP_NET_RAW" in warnings[0], warnings
    assert out["ports"] == {}  # no raw socket, no reserved port
