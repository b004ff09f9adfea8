"""100 table swaps during continuous traffic: no frame lost, none sent where the table did not say.

A helper process (this file run as a module inside l4's namespace) drives fwd.live.LiveDataplane
directly: it starts the data plane on l4's eth0, then publishes a new table 100 times,
alternating between two backend sets whose rows differ (A = [b0, b1], B = [b1, b2], each b_i an
address of backend namespace i), and records every publish: its generation and the monotonic
time before and after the call (CLOCK_MONOTONIC is shared by every process and namespace).

Meanwhile the client sends a numbered UDP stream (sequence number in the payload, 64 distinct
clients) at a steady rate, and the three backend namespaces capture everything. Afterwards:

* every sent frame arrived exactly once (captures that lost frames in the kernel fail the test
  as a rig problem, not as fwd's);
* it arrived where the model (tests/model) says for a table version in effect around its send
  time: the outer destination is that version's primary and the GUE hop its secondary, and the
  whole frame equals the model's. A frame sent within MARGIN of a publish may have been handled
  by either the old or the new table (it may wait in a ring while the pointer changes, and a
  worker switches at its next batch boundary), so at a swap boundary both are accepted; elsewhere
  only the table in effect is.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.netns import topology as tp

SWAPS = 100
INTERVAL = 0.1  # s between publishes
RATE = 2000  # frames/s from the client
MARGIN = 0.01  # s either side of a publish where the old and the new table are both acceptable
CLIENTS = 64
MAGIC = b"fwdswap!"
VIP = "10.100.0.1"
PORT = 7000
MODES = ["xdp", "raw"]


def model_config(topo: tp.Topology, which: str):
    """Table "swap": A = [be0, be1] or B = [be1, be2] (first address of each namespace)."""
    from tests.model.config import Bind, ModelConfig, Node, Table
    from tests.model.table import Backend

    addr = [topo.backend_addresses(i)[0][0] for i in range(3)]
    names = [addr[0], addr[1]] if which == "A" else [addr[1], addr[2]]
    table = Table(
        "swap",
        bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
        bytes.fromhex("f0e0d0c0b0a090807060504030201000"),
        False,
        [Bind.make(VIP, "udp", PORT)],
        [Backend(ipaddress.ip_address(a)) for a in names],
    )
    node = Node(ipaddress.ip_address(tp.L4_OUT4), ipaddress.ip_address(tp.L4_OUT6))
    return ModelConfig(node, [table])


def frame(i: int, seq: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    return bytes(
        Ether(src=tp.Topology.CLIENT_MAC, dst=tp.Topology.L4_IN_MAC)
        / IP(src=tp.client_addr(i, 4), dst=VIP)
        / UDP(sport=30000 + i, dport=PORT, chksum=0)  # no checksum: the seq is patched in
        / (MAGIC + struct.pack("!Q", seq))
    )


def seq_of(gue_frame: bytes) -> int | None:
    k = gue_frame.find(MAGIC)
    return struct.unpack_from("!Q", gue_frame, k + len(MAGIC))[0] if k >= 0 else None


# ---------------------------------------------------------------------------------------- helper


def helper_main(argv: list[str]) -> int:
    """Inside l4: LiveDataplane on eth0, then swaps on 'go' from stdin; JSON record at the end."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-a")
    ap.add_argument("--config-b")
    ap.add_argument("--mode")
    ap.add_argument("--out")
    ap.add_argument("--swaps", type=int, default=SWAPS)
    ap.add_argument("--interval", type=float, default=INTERVAL)
    a = ap.parse_args(argv)

    from fwd.config import load_config
    from fwd.live import LiveDataplane

    cfg = {"A": load_config(a.config_a), "B": load_config(a.config_b)}
    live = LiveDataplane(cfg["A"], interfaces=["eth0"], mode=a.mode)
    live.start()
    print("ready", flush=True)
    record = {"publishes": [], "workers": None}
    try:
        if sys.stdin.readline().strip() != "go":
            return 3
        for n in range(a.swaps):
            which = "B" if n % 2 == 0 else "A"
            t0 = time.monotonic()
            gen = live.publish(cfg[which])
            t1 = time.monotonic()
            record["publishes"].append({"n": n, "table": which, "generation": gen, "t0": t0, "t1": t1})
            time.sleep(max(0.0, a.interval - (time.monotonic() - t0)))
        print("done", flush=True)
        sys.stdin.readline()  # "stop": the client's stream has ended
    finally:
        live.stop()
        record["summary"] = {k: v for k, v in live.summary().items() if k not in ("binds", "backends")}
        with open(a.out, "w") as f:
            json.dump(record, f)
    return 0


# ---------------------------------------------------------------------------------------- test


class Stream:
    """The client's numbered stream at RATE frames/s, on its own thread."""

    def __init__(self, topo: tp.Topology):
        self.frames = [frame(i, 0) for i in range(CLIENTS)]  # template per client
        self.sender = tp.Sender(topo.client, "eth0")
        self.sent: list[tuple[int, int, float]] = []  # (seq, client, send time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq, t_next = 0, time.monotonic()
        while not self._stop.is_set():
            i = seq % CLIENTS
            f = self.frames[i][:-8] + struct.pack("!Q", seq)
            t = time.monotonic()
            self.sender.send(f)
            self.sent.append((seq, i, t))
            seq += 1
            t_next += 1 / RATE
            delay = t_next - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sender.close()


def readline(proc: subprocess.Popen, timeout: float) -> str | None:
    """The helper's next line of output, or None when it says nothing for timeout seconds."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].strip() if box else None


def acceptable(t: float, publishes: list[dict]) -> set[str]:
    """Table versions a frame sent at t may have met: the one in effect, and at a swap boundary
    (within MARGIN of a publish) the one on the other side of it too."""
    current = "A"
    ok = set()
    for p in publishes:
        if p["t1"] <= t:
            current = p["table"]
        if p["t0"] - MARGIN <= t <= p["t1"] + MARGIN:
            ok |= {p["table"], "A" if p["table"] == "B" else "B"}
    return ok | {current}


@pytest.mark.parametrize("mode", MODES)
def test_100_swaps_under_traffic(mode, topo, fwd_run_ok, tmp_path):
    cfgs = {w: model_config(topo, w) for w in "AB"}
    paths = {}
    for w, c in cfgs.items():
        paths[w] = tmp_path / f"swap_{w}.toml"
        paths[w].write_text(c.to_toml())
    out = tmp_path / "publishes.json"
    log = open(tmp_path / "helper.log", "w")  # noqa: SIM115
    helper = subprocess.Popen(
        ["ip", "netns", "exec", topo.l4, sys.executable, "-m", "tests.netns.test_swap", "helper",
         "--config-a", str(paths["A"]), "--config-b", str(paths["B"]), "--mode", mode, "--out", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(tp.REPO),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    stream = None
    try:
        line = readline(helper, 60)
        assert line == "ready", f"helper did not start ({line!r}):\n{(tmp_path / 'helper.log').read_text()}"
        # next hops resolved and workers forwarding: the probes of table A arrive
        probes = tp.probe_frames(cfgs["A"], topo)

        class _Run:  # what wait_ready needs of a fwd process
            alive = staticmethod(lambda: helper.poll() is None)
            log = staticmethod(lambda: (tmp_path / "helper.log").read_text())

        tp.wait_ready(_Run, topo, probes)
        caps = tp.start_captures(topo, client=False)
        stream = Stream(topo)
        stream.start()
        time.sleep(0.3)
        helper.stdin.write("go\n")
        helper.stdin.flush()
        done = readline(helper, SWAPS * INTERVAL * 5 + 30)
        time.sleep(0.3)
        stream.stop()
        frames = tp.stop_captures(caps, settle=0.5)
        helper.stdin.write("stop\n")
        helper.stdin.flush()
        rc = helper.wait(30)
    finally:
        if stream is not None and stream._thread.is_alive():
            stream.stop()
        if helper.poll() is None:
            helper.kill()
            helper.wait(5)
        log.close()
    helper_log = (tmp_path / "helper.log").read_text()
    assert done == "done" and rc == 0, f"helper: {done!r}, exit {rc}:\n{helper_log[-4000:]}"
    record = json.loads(out.read_text())
    publishes = record["publishes"]
    assert len(publishes) == SWAPS
    gens = [p["generation"] for p in publishes]
    assert gens == sorted(gens) and len(set(gens)) == SWAPS, f"generations not increasing: {gens}"

    dropped = {ns: c.kernel_drops for ns, c in caps.items() if c.kernel_drops}
    assert not dropped, f"rig problem: the capture sockets lost frames {dropped}"

    # the model's answer per (client, table version)
    want = {}
    for w, c in cfgs.items():
        for i in range(CLIENTS):
            e = tp.expect_live(frame(i, 0), c, topo)
            assert e.verdict == "forward"
            want[(i, w)] = e.frame  # seq is 0 in it: compared with the seq put back to 0
    arrivals: dict[int, list[tuple[str, bytes]]] = {}
    for ns, fs in frames.items():
        for f in fs:
            if tp.is_gue(f.data) and (s := seq_of(f.data)) is not None:
                arrivals.setdefault(s, []).append((ns, f.data))

    lost, dup, wrong, boundary = [], [], [], 0
    for seq, i, t in stream.sent:
        got = arrivals.pop(seq, [])
        if not got:
            lost.append(seq)
            continue
        if len(got) > 1:
            dup.append((seq, [ns for ns, _ in got]))
        ok = acceptable(t, publishes)
        boundary += len(ok) > 1
        ns, data = got[0]
        zeroed = data[:-8] + bytes(8)
        if not any(zeroed == want[(i, w)] and topo.owner(tp._outer_dst(data)).ns == ns for w in ok):
            which = [w for w in "AB" if zeroed == want[(i, w)]]
            wrong.append(
                f"seq {seq} (client {i}, sent at {t:.4f}): allowed {sorted(ok)}, frame matches {which}"
            )
    stray = sorted(arrivals)
    n = len(stream.sent)
    took = sorted(p["t1"] - p["t0"] for p in publishes)
    summary = (
        f"{mode}: {n} frames sent over {SWAPS} swaps (publish call: median {took[SWAPS // 2] * 1000:.1f} ms, "
        f"max {took[-1] * 1000:.1f} ms), {boundary} sent within {MARGIN * 1000:.0f} ms of one; "
        f"lost {len(lost)}, duplicated {len(dup)}, wrong backend {len(wrong)}, never sent {len(stray)}"
    )
    print(summary)
    assert n > SWAPS * INTERVAL * RATE * 0.5, summary
    assert not (lost or dup or wrong or stray), (
        summary
        + f"\nlost: {lost[:20]}\nduplicated: {dup[:10]}\nwrong: "
        + "\n".join(wrong[:10])
        + f"\nfwd's counters: {json.dumps(record['summary'])}\nlink counters: {link_stats(topo)}"
    )


def link_stats(topo: tp.Topology) -> dict:
    """rx/tx drop counters of the links on the path (where a lost frame may have gone)."""
    out = {}
    for ns in [topo.client, topo.l4, topo.lan] + [b.ns for b in topo.backends]:
        for link in tp.ip_json("-s", "link", "show", ns=ns):
            st = link.get("stats64", {})
            drops = {f"{d}_{k}": st[d][k] for d in ("rx", "tx") if d in st for k in ("dropped", "errors")}
            if any(drops.values()):
                out[f"{ns.removeprefix(topo.prefix)}/{link['ifname']}"] = drops
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "helper":
        sys.exit(helper_main(sys.argv[2:]))
    sys.exit(2)
