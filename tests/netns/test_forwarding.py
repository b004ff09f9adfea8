"""`fwd run` on real interfaces, in both back ends (AF_XDP and raw socket).

The golden frame set (tests/golden.py, config "golden") adapted to the topology (addresses mapped
checksum-neutrally, MACs of the client and l4's receiving interface) is sent from the client
namespace onto l4's eth0. What arrives in the backend namespaces (behind a bridge on l4's eth1)
and back at the client is compared byte for byte with the reference model's output frames
(tests/model), the MACs being the ones the topology implies: l4's eth1 MAC to the namespace that
holds the primary (an on-link next hop), the tunnel source l4's eth1 address.

Non-VIP traffic to l4 keeps working while fwd runs; after SIGTERM fwd exits 0 and leaves no XDP
program, nftables table or process behind; a multi-queue veth gets one worker per queue; the
malformed frames of the golden set are counted and fwd keeps forwarding afterwards.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter

import pytest

from tests import golden
from tests.model.gue import diff
from tests.netns import topology as tp

MODES = ["xdp", "raw"]
GOLDEN = golden.configs()["golden"].model
MAX_FRAME = 1514  # what fits a 1500-byte veth


class Live:
    """A topology with `fwd run` going in l4 and its configuration as the model sees it."""

    def __init__(self, topo: tp.Topology, start_fwd, mode: str, queues_log: bool = False, extra=()):
        self.topo, self.mode = topo, mode
        self.amap = tp.AddressMap()
        self.cfg = tp.live_config(GOLDEN, topo, self.amap)
        self.run = start_fwd(topo, self.cfg.to_toml(), mode, extra=extra)
        self.probes = tp.probe_frames(self.cfg, topo)
        tp.wait_ready(self.run, topo, self.probes)
        self.sender = tp.Sender(topo.client, "eth0")

    def adapt(self, frame: bytes) -> bytes:
        return tp.adapt_frame(frame, self.amap, tp.Topology.CLIENT_MAC, tp.Topology.L4_IN_MAC)

    def expect(self, frame: bytes):
        return tp.expect_live(frame, self.cfg, self.topo)

    def send_all(self, frames, gap: float = 0.001) -> None:
        for f in frames:
            self.sender.send(f)
            time.sleep(gap)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit status, log). The caller asserts on them."""
        self.sender.close()
        rc = self.run.stop()
        return rc, self.run.log()


def golden_inputs(live: Live, verdicts=("forward", "reply")) -> list[tuple[str, bytes, object]]:
    """(description, adapted frame, model answer) for the golden config's fixtures whose model
    answer on the adapted frame is one of verdicts. Frames the spec leaves ambiguous, shorter than
    an Ethernet header or longer than the veth can carry are left out."""
    out = []
    for fx in golden.fixtures():
        if fx.config != "golden" or not 14 <= len(fx.frame) <= MAX_FRAME:
            continue
        f = live.adapt(fx.frame)
        e = live.expect(f)
        if e.ambiguous is None and e.verdict in verdicts:
            out.append((fx.desc, f, e))
    return out


def where_expected(live: Live, e) -> str:
    """The namespace an output frame of the model must reach."""
    if e.verdict == "reply":
        return live.topo.client
    return live.topo.owner(tp._outer_dst(e.frame)).ns


def fwd_outputs(live: Live, frames_by_ns) -> dict[str, Counter]:
    """Frames fwd put on the wire, per namespace: GUE at the backends, ICMP too-big at the client."""
    out = {}
    for ns, frames in frames_by_ns.items():
        if ns == live.topo.client:
            mine = [
                f.data for f in frames if f.data[6:12] == _mac(tp.Topology.L4_IN_MAC) and _is_too_big(f.data)
            ]
        else:
            mine = [f.data for f in frames if tp.is_gue(f.data)]
        out[ns] = Counter(mine)
    return out


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _is_too_big(frame: bytes) -> bool:
    l2 = 18 if frame[12:14] == b"\x81\x00" else 14
    et = frame[l2 - 2 : l2]
    if et == b"\x08\x00" and len(frame) > l2 + 21:
        ihl = (frame[l2] & 15) * 4
        return frame[l2 + 9] == 1 and frame[l2 + ihl] == 3 and frame[l2 + ihl + 1] == 4
    if et == b"\x86\xdd" and len(frame) > l2 + 41:
        return frame[l2 + 6] == 58 and frame[l2 + 40] == 2
    return False


def check_outputs(live: Live, sent, frames_by_ns) -> list[str]:
    """Every model output frame arrived exactly once, where it should, and nothing else did."""
    got = fwd_outputs(live, frames_by_ns)
    want: dict[str, Counter] = {ns: Counter() for ns in got}
    for _, _, e in sent:
        want[where_expected(live, e)][e.frame] += 1
    problems = []
    for desc, f, e in sent:
        ns = where_expected(live, e)
        if got[ns][e.frame] >= 1:
            continue
        elsewhere = [n for n, c in got.items() if c[e.frame]]
        near = [g for g in got[ns] if len(g) == len(e.frame)] or list(got[ns])
        problems.append(
            f"{desc}: model {e.verdict} to {ns}; "
            + (f"arrived in {elsewhere} instead" if elsewhere else "not received")
            + f"\ninput {f.hex()}\n{diff(e.frame, near[0] if near else None)}"
        )
    for ns in got:
        for frame, n in got[ns].items():
            if n > want[ns][frame]:
                problems.append(f"{ns}: unexpected frame x{n - want[ns][frame]}:\n{diff(None, frame)}")
    return problems


def exit_stats(log: str) -> dict:
    """The counters fwd prints when it stops: the last JSON object in its log that has them."""
    for line in reversed(log.splitlines()):
        i = line.find("{")
        if i < 0:
            continue
        try:
            obj = json.loads(line[i:])
        except ValueError:
            continue
        if isinstance(obj, dict) and ("drops" in obj or "counters" in obj):
            return obj.get("counters", obj)
    raise AssertionError(f"no counters in fwd's log at exit:\n{log[-3000:]}")


def reaches_packet_taps(frame: bytes) -> bool:
    """Whether an AF_PACKET socket can see the frame at all: the kernel frees an 802.1Q frame
    too short to untag (< 20 bytes) before any packet tap runs, so the raw back end cannot
    count it (AF_XDP sees it: XDP runs first)."""
    return not (frame[12:14] == b"\x81\x00" and len(frame) < 20)


def assert_clean_exit(live: Live) -> str:
    rc, log = live.stop()
    assert rc == 0, f"fwd run exited {rc} after SIGTERM:\n{log[-4000:]}"
    problems = tp.leftovers(live.topo)
    assert not problems, "; ".join(problems)
    return log


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(("mode", "extra"), [(m, ()) for m in MODES] + [("xdp", ("--rx-holdoff-us", "500"))])
def test_golden_frames_live(mode, extra, topo, start_fwd):
    """The golden set's FORWARD and REPLY frames, sent on the wire: each output frame reaches the
    namespace holding the model's primary (GUE) or the client (ICMP too-big), byte for byte (also
    with a receive holdoff, which changes how frames are batched)."""
    live = Live(topo, start_fwd, mode, extra=extra)
    sent = golden_inputs(live)
    assert len(sent) > 40, "the adapted golden set lost its VIP frames"
    caps = tp.start_captures(topo)
    live.send_all(f for _, f, _ in sent)
    frames = tp.stop_captures(caps, settle=0.5)
    lost = {ns: c.kernel_drops for ns, c in caps.items() if c.kernel_drops}
    assert not lost, f"capture sockets dropped frames: {lost}"
    problems = check_outputs(live, sent, frames)
    assert live.run.alive(), f"fwd died:\n{live.run.log()[-4000:]}"
    assert_clean_exit(live)
    assert not problems, f"{len(problems)} of {len(sent)} frames wrong ({mode}):\n" + "\n\n".join(
        problems[:8]
    )


@pytest.mark.parametrize("mode", MODES)
def test_host_traffic_while_running_and_nothing_left(mode, topo, start_fwd):
    """Non-VIP traffic to l4 (ICMP echo over IPv4 and IPv6, a TCP connection to a local port)
    reaches its kernel while fwd runs; after SIGTERM: exit 0, no XDP program, no nftables table,
    no process in l4."""
    live = Live(topo, start_fwd, mode)
    for addr in (tp.L4_IN4, tp.L4_IN6):
        out = tp.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", addr, ns=topo.client, check=False)
        assert " 0% packet loss" in out, f"ping {addr} through l4 while fwd runs ({mode}):\n{out}"

    server = tp.in_netns(topo.l4, lambda: socket.create_server((tp.L4_IN4, 8080)))
    server.settimeout(10)
    answers = []

    def serve():
        conn, _ = server.accept()
        with conn:
            answers.append(conn.recv(100))
            conn.sendall(b"pong:" + answers[-1])

    t = threading.Thread(target=serve)
    t.start()
    client = tp.in_netns(topo.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    client.settimeout(10)
    try:
        client.connect((tp.L4_IN4, 8080))
        client.sendall(b"ping")
        reply = client.recv(100)
    finally:
        client.close()
        t.join(10)
        server.close()
    assert reply == b"pong:ping", f"TCP to l4:8080 while fwd runs ({mode}): {reply!r}"
    assert live.run.alive()
    assert_clean_exit(live)


@pytest.mark.parametrize("mode", MODES)
def test_malformed_frames_counted_no_crash(mode, topo, start_fwd):
    """The golden set's malformed frames sent live: fwd stays up, forwards the probes afterwards,
    and its counters at exit show the drops.

    raw: the socket sees every frame the kernel does not free first (reaches_packet_taps), so
    each drop reason's count equals the model's over those.
    xdp: frames the steering program cannot tie to a VIP bind (a header cut before the
    destination address or the ports) go to the kernel and never reach the core, so each
    reason's count is at most the model's, and at least one malformed frame must be counted.
    """
    live = Live(topo, start_fwd, mode)
    bad = golden_inputs(live, verdicts=("drop",))
    reasons = Counter(e.reason for _, _, e in bad if e.reason in golden.PARSE_DROPS)
    assert sum(reasons.values()) > 20, reasons
    for _ in range(3):
        live.send_all(f for _, f, _ in bad)
    time.sleep(0.3)
    assert live.run.alive(), f"fwd died on malformed input ({mode}):\n{live.run.log()[-4000:]}"
    caps = tp.start_captures(topo, client=False)
    live.send_all(f for _, f, _ in live.probes)
    frames = tp.stop_captures(caps)
    missing = [d for d, _, e in live.probes if not tp.delivered(frames, e.frame)]
    assert not missing, f"not forwarded after the malformed frames ({mode}): {missing}"
    log = assert_clean_exit(live)
    drops = exit_stats(log)["drops"]
    want = Counter()
    for _, f, e in bad:
        if e.reason in golden.PARSE_DROPS and (mode == "xdp" or reaches_packet_taps(f)):
            want[e.reason] += 3
    if mode == "raw":
        got = {r: drops.get(r, 0) for r in golden.PARSE_DROPS}
        assert got == {r: want.get(r, 0) for r in golden.PARSE_DROPS}, f"fwd {got}, model {want}"
    else:
        over = {
            r: (drops.get(r, 0), want.get(r, 0))
            for r in golden.PARSE_DROPS
            if drops.get(r, 0) > want.get(r, 0)
        }
        assert not over, f"more drops than malformed frames sent (fwd, model): {over}"
        assert sum(drops.get(r, 0) for r in golden.PARSE_DROPS) > 0, f"no malformed frame counted: {drops}"


@pytest.mark.parametrize("mode", MODES)
def test_multiqueue_one_worker_per_queue(mode, make_topology, start_fwd):
    """l4's eth0 with 2 rx/tx queues: fwd runs 2 workers (its log says so) and forwards flows
    hashed onto both queues, each to the model's backend, byte for byte."""
    topo = make_topology(queues=2)
    live = Live(topo, start_fwd, mode)
    log = live.run.log()
    assert re.search(r"\b2 workers?\b|workers?[=: ]+2\b", log), f"fwd's log does not say 2 workers:\n{log}"
    web = live.cfg.tables[0]
    sent = []
    for i in range(300):
        f = tp.flow_frame(web.binds[i % 2], 1000 + i, tp.Topology.CLIENT_MAC, tp.Topology.L4_IN_MAC, b"mq")
        sent.append((f"flow {i}", f, live.expect(f)))
    before = topo.veth_queue_stats(topo.l4, "eth0")
    caps = tp.start_captures(topo)
    live.send_all(f for _, f, _ in sent)
    frames = tp.stop_captures(caps, settle=0.5)
    after = topo.veth_queue_stats(topo.l4, "eth0")
    problems = check_outputs(live, sent, frames)
    log = assert_clean_exit(live)
    assert not problems, f"{len(problems)} of {len(sent)} flows wrong ({mode}):\n" + "\n\n".join(problems[:5])
    ports = exit_stats(log)["ports"]
    assert len(ports) == 2 and all(p["rx_packets"] > 0 for p in ports), f"per-worker counters: {ports}"
    if mode == "xdp":
        per_queue = [after.get(f"rx_queue_{q}_xdp_packets", 0) - before.get(f"rx_queue_{q}_xdp_packets", 0)
                     for q in range(2)]  # fmt: skip
        assert all(n > 0 for n in per_queue), f"traffic did not use both rx queues: {per_queue}"


def test_default_veth_fewer_queues_in_use_than_allocated(make_topology, start_fwd):
    """A veth made without numrxqueues: the kernel allocates one rx queue per CPU but uses one
    (ethtool -l: maximum N, current 1). fwd must serve the queues in use, not the allocated ones:
    it starts in xdp mode with one worker and forwards."""
    topo = make_topology(queues=None)
    live = Live(topo, start_fwd, "xdp")
    log = live.run.log()
    assert re.search(r"\b1 worker\b", log), f"fwd's log does not say 1 worker:\n{log}"
    assert_clean_exit(live)


@pytest.mark.parametrize("mode", MODES)
def test_restart_after_crash_replaces_stale_state(mode, topo, start_fwd):
    """fwd killed with SIGKILL leaves its XDP program (xdp) or its nftables table (raw) behind;
    the next `fwd run` replaces it, forwards, and on SIGTERM leaves nothing."""
    first = Live(topo, start_fwd, mode)
    first.sender.close()
    first.run.proc.kill()
    first.run.proc.wait(10)
    stale = tp.leftovers(topo)
    assert stale, f"a SIGKILLed fwd ({mode}) left nothing behind: the test proves nothing"
    second = Live(topo, start_fwd, mode)  # waits for its probes to arrive
    log = assert_clean_exit(second)
    assert re.search(r"stale|replac", log, re.I), (
        f"the second run does not say it replaced stale state:\n{log}"
    )
