"""An idle worker acknowledges a new snapshot because the publication wakes it, not because a
packet or its poll period came.

A helper process (this file run as a module inside l4's namespace) starts fwd.live.LiveDataplane
on l4's eth0 with the idle poll period set to one hour (the ``poll_ms`` knob), so a worker that
sleeps in poll() would only come back to its batch boundary when a frame arrives or the hour is
over. It then publishes new snapshots one after the other and, for each, waits (up to a generous
WAIT seconds, never measured against a target) until ``acked_generation`` reaches the published
generation, noting each worker's received-frame counter before and after.

The test asserts that every publication was acknowledged, and that the acknowledgements came
without a frame reaching any worker meanwhile - in xdp mode nothing but VIP traffic reaches the
AF_XDP socket and none is sent; raw mode's packet socket also sees whatever the kernel of the
client namespace says on the link (IPv6 neighbour discovery, MLD), so a sample where a frame came
in is set aside as inconclusive, and most samples must be conclusive. Finally stopping the data
plane must return (the stop request wakes the workers too), or the helper would hang for the hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from tests.netns import topology as tp
from tests.netns.test_swap import model_config, readline

POLL_MS = 3_600_000  # one hour: only a wake explains an acknowledgement within WAIT
PUBLISHES = 20
WAIT = 30.0  # s per acknowledgement before the helper gives up (a failure, not a measurement)
MODES = ["xdp", "raw"]


def helper_main(argv: list[str]) -> int:
    """Inside l4: LiveDataplane with a one-hour poll period, PUBLISHES publications; JSON out."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config-a")
    ap.add_argument("--config-b")
    ap.add_argument("--mode")
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    from fwd.config import load_config
    from fwd.live import LiveDataplane

    cfg = {"A": load_config(a.config_a), "B": load_config(a.config_b)}
    live = LiveDataplane(cfg["A"], interfaces=["eth0"], mode=a.mode, poll_ms=POLL_MS)
    live.start()
    samples = []
    try:
        time.sleep(0.5)  # the workers are asleep in poll() by now
        for n in range(PUBLISHES):
            rx0 = [ps.rx_packets for _, ps in live.port_stats()]
            gen = live.publish(cfg["B" if n % 2 == 0 else "A"])
            deadline = time.monotonic() + WAIT
            while live.acked_generation() < gen and time.monotonic() < deadline:
                time.sleep(0.001)
            acked = live.acked_generation()
            rx1 = [ps.rx_packets for _, ps in live.port_stats()]
            samples.append({"generation": gen, "acked": acked, "rx_before": rx0, "rx_after": rx1})
            time.sleep(0.05)
    finally:
        live.stop()  # returns only if the stop request wakes the sleeping workers
        with open(a.out, "w") as f:
            json.dump({"workers": live.workers, "samples": samples}, f)
    print("done", flush=True)
    return 0


@pytest.mark.parametrize("mode", MODES)
def test_idle_worker_acks_on_publish(mode, topo, fwd_run_ok, tmp_path):
    paths = {}
    for w in "AB":
        paths[w] = tmp_path / f"wake_{w}.toml"
        paths[w].write_text(model_config(topo, w).to_toml())
    out = tmp_path / "wake.json"
    log = open(tmp_path / "helper.log", "w")  # noqa: SIM115
    helper = subprocess.Popen(
        ["ip", "netns", "exec", topo.l4, sys.executable, "-m", "tests.netns.test_wake", "helper",
         "--config-a", str(paths["A"]), "--config-b", str(paths["B"]), "--mode", mode, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(tp.REPO),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = readline(helper, PUBLISHES * WAIT + 60)
        assert helper.wait(30) == 0 and line == "done", (
            f"helper did not finish ({line!r}): {(tmp_path / 'helper.log').read_text()[-3000:]}"
        )
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait(10)
        log.close()
    record = json.loads(out.read_text())
    assert record["workers"], "no worker started"
    samples = record["samples"]
    assert len(samples) == PUBLISHES
    late = [s for s in samples if s["acked"] < s["generation"]]
    assert not late, f"{len(late)} publication(s) not acknowledged within {WAIT} s: {late[:3]}"
    quiet = [s for s in samples if s["rx_before"] == s["rx_after"]]
    if mode == "xdp":  # nothing but VIP traffic can reach the AF_XDP socket, and none is sent
        assert len(quiet) == PUBLISHES, f"frames reached the AF_XDP worker: {samples}"
    else:
        assert len(quiet) >= PUBLISHES // 2, f"the rig was not quiet enough to conclude: {samples}"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "helper":
        sys.exit(helper_main(sys.argv[2:]))
