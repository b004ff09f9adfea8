"""make bench-core: the packet core and the table builder on one core.

Prints ns/packet and Mpps for copy+fwd_process over an in-memory mix of frames,
next to a loop that only copies the same frames (the floor), and the table
timings (full build, health change, add, remove). Both packet loops copy each
frame once and call the core exactly as the back ends do (fwd_process per
frame), in thread CPU time. Two layouts: one reused buffer (the issue's
figure), and groups of 64 frames copied into 64 buffers before they are
processed, as an rx burst of 64 (the back ends' default) lands.

Why the figures are taken this way: on this shared VM the host alternates, for
seconds at a time, between a quiet state and a slow one (a neighbour on the
same physical core, frequency) in which the floor takes ~1.35x and the core
~1.6x as long; a run of whole-second samples fell into one state or the other,
so bench-core's ratio was bimodal (~3.2x or ~4x). Placement was ruled out:
fwd_bench copies the frames into a page-aligned arena and starts its work
buffers 2048 bytes into a page, the same for both loops in every run (sweeping
that offset and the frames' alignment moved nothing beyond noise). So each
figure is many short runs (~1 ms), each core run between two floor runs; a
core run counts as quiet when both its floor runs are within 10% of the low
floor (2nd percentile) — chosen by the floor alone, the same test for both
loops — and the figures are medians over the quiet runs (core, floor, and the
per-run ratio core / mean of its two floors). The median over all runs is
printed too. The report also lands in bench-report/core.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
import tempfile
import time

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether

from fwd.config import Backend, load_config
from fwd.dataplane import Dataplane
from fwd.table import ForwardingTable

CONFIG = """
[node]
tunnel_source = "192.0.2.10"
tunnel_source6 = "2001:db8::10"
mtu = 1500
forward_icmp_echo = true

[[tables]]
name = "v4"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
  [[tables.binds]]
  ip = "198.51.100.0/24"
  proto = "tcp"
  port_start = 80
  port_end = 443
  [[tables.binds]]
  ip = "198.51.100.10"
  proto = "udp"
  port = 53
{v4_backends}

[[tables]]
name = "v6"
hash_key = "abcdef0123456789abcdef0123456789"
seed = "0123456789abcdef0123456789abcdef"
  [[tables.binds]]
  ip = "2001:db8:100::/64"
  proto = "tcp"
  port = 443
  hash_fields = ["src_addr", "src_port"]
{v6_backends}
"""


RX_BURST = 64  # frames per rx burst: the AF_XDP and raw socket back ends' default batch
QUIET = 1.10  # a floor run within 10% of the low floor: the host was quiet
MIN_QUIET = 100  # quiet core runs wanted per figure


def backends_toml(addrs: list[str]) -> str:
    return "\n".join(f'  [[tables.backends]]\n  ip = "{a}"' for a in addrs)


def frame_mix() -> list[bytes]:
    mac = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
    frames = []
    for i in range(64):
        client4 = f"203.0.113.{i + 1}"
        client6 = f"2001:db8:c::{i + 1:x}"
        sport = 10000 + i * 7
        frames += [
            Ether(**mac) / IP(src=client4, dst="198.51.100.10") / TCP(sport=sport, dport=80, flags="A"),
            Ether(**mac) / IP(src=client4, dst="198.51.100.20") / TCP(sport=sport, dport=443) / (b"x" * 200),
            Ether(**mac) / IP(src=client4, dst="198.51.100.10") / UDP(sport=sport, dport=53) / (b"q" * 40),
            Ether(**mac) / IPv6(src=client6, dst="2001:db8:100::1") / TCP(sport=sport, dport=443, flags="A"),
            Ether(**mac) / Dot1Q(vlan=10) / IP(src=client4, dst="198.51.100.10") / TCP(sport=sport, dport=80),
            Ether(**mac) / IP(src=client4, dst="198.51.100.10") / ICMP(type=8, id=i),
            Ether(**mac)
            / IPv6(src=client6, dst="2001:db8:100::1")
            / IPv6ExtHdrFragment(id=i, m=1)
            / (b"f" * 64),
            Ether(**mac) / IP(src=client4, dst="192.0.2.99") / TCP(sport=sport, dport=22),  # not a VIP: PASS
        ]
    return [bytes(f) for f in frames]


def median_run(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def bench_packets(
    dp: Dataplane, frames: list[bytes], iterations: int, seconds: float, slots: int
) -> dict[str, float]:
    """Short core runs, each between two floor runs, for `seconds` (up to 4 × that while fewer
    than MIN_QUIET are quiet); the figures are medians over the quiet ones (see the docstring)."""
    core: list[float] = []
    floors: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while True:
        r = dp.bench(frames, iterations, slots, samples=25)
        fl = r["copy_ns_per_pkt"]
        core += r["core_ns_per_pkt"]
        floors += list(zip(fl[:-1], fl[1:], strict=True))
        elapsed = time.monotonic() - t0
        quiet = quiet_runs(floors)
        if elapsed >= 4 * seconds or (elapsed >= seconds and len(quiet) >= MIN_QUIET):
            break
    ratio = [c / ((f0 + f1) / 2) for c, (f0, f1) in zip(core, floors, strict=True)]
    q_core = [core[i] for i in quiet]
    q_floor = [sum(floors[i]) / 2 for i in quiet]
    q_ratio = [ratio[i] for i in quiet]
    c = statistics.median(q_core)
    return {
        "core_ns": c,
        "floor_ns": statistics.median(q_floor),
        "ratio": statistics.median(q_ratio),
        "mpps": 1e3 / c,
        "quiet": len(quiet),
        "low_floor": low_floor(floors),
        "runs": len(core),
        "ratio_all": statistics.median(ratio),
        "core_all": statistics.median(core),
        "floor_all": statistics.median(f for pair in floors for f in pair),
    }


def low_floor(floors: list[tuple[float, float]]) -> float:
    every = sorted(f for pair in floors for f in pair)
    return every[len(every) // 50]


def quiet_runs(floors: list[tuple[float, float]]) -> list[int]:
    """Core runs whose two floor runs both came within QUIET of the run's low floor (its 2nd
    percentile): the host was in its quiet state for both loops. Chosen by the floor only."""
    low = low_floor(floors)
    return [i for i, (f0, f1) in enumerate(floors) if max(f0, f1) <= QUIET * low]


def v4_backends(n: int, state: str = "active", healthy: bool = True) -> list[Backend]:
    base = int(ipaddress.IPv4Address("10.0.0.1"))
    return [Backend(ipaddress.IPv4Address(base + i), state, healthy) for i in range(n)]


def bench_table(repeats: int) -> dict[str, float]:
    seed, key = bytes(range(16)), bytes(range(16, 32))
    out: dict[str, float] = {}
    for n in (256, 1000):
        out[f"full_build_{n}_ms"] = 1e3 * median_run(
            lambda n=n: timed(lambda: ForwardingTable(seed, key, False, v4_backends(n))), max(1, repeats // 2)
        )
    table = ForwardingTable(seed, key, False, v4_backends(1000))
    base = v4_backends(1000)
    sick = list(base)
    sick[500] = Backend(base[500].address, "active", False)
    drain = list(base)
    drain[123] = Backend(base[123].address, "draining", True)
    grown = base + v4_backends(1001)[1000:]
    shrunk = base[:700] + base[701:]
    cases = {"health_change": sick, "state_change": drain, "add_one": grown, "remove_one": shrunk}
    for name, new in cases.items():
        times = []
        for _ in range(repeats):
            table.set_backends(base)
            times.append(table.set_backends(new).seconds)
        out[f"{name}_1000_ms"] = 1e3 * statistics.median(times)
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=50, help="rounds over the frame mix per packet run")
    ap.add_argument("--seconds", type=float, default=8.0, help="sampling time per packet layout")
    ap.add_argument("--repeats", type=int, default=7, help="runs per table figure (the median is reported)")
    ap.add_argument("--report", default="bench-report/core.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.toml")
        v4 = [f"10.0.0.{i}" for i in range(1, 9)]
        v6 = [f"2001:db8:b::{i}" for i in range(1, 5)]
        with open(path, "w") as f:
            f.write(CONFIG.format(v4_backends=backends_toml(v4), v6_backends=backends_toml(v6)))
        cfg = load_config(path)
    dp = Dataplane(cfg)
    frames = frame_mix()
    verdicts: dict[str, int] = {}
    for r in dp.process_many(frames):
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1

    pk = bench_packets(dp, frames, args.iterations, args.seconds, 1)
    rx = bench_packets(dp, frames, args.iterations, args.seconds, RX_BURST)
    tb = bench_table(args.repeats)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# bench-core",
        "",
        f"Frames: {len(frames)} in the mix ({', '.join(f'{k} {v}' for k, v in sorted(verdicts.items()))}), "
        f"packet runs of {args.iterations} rounds, each core run between two floor runs, one core, "
        f"thread CPU time; medians over the quiet runs (both floor runs within {QUIET:.2f}× of the "
        f"low floor): one buffer {pk['quiet']} of {pk['runs']} (low floor {pk['low_floor']:.1f} ns), "
        f"rx burst {rx['quiet']} of {rx['runs']} (low floor {rx['low_floor']:.1f} ns); "
        f"table figures: median of {args.repeats}; load average {load} (1/5/15 min) at the end.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| core: copy + fwd_process | {pk['core_ns']:.1f} ns/packet ({pk['mpps']:.2f} Mpps) | ≤ 60 ns |",
        f"| floor: copy only | {pk['floor_ns']:.1f} ns/packet | |",
        f"| core / floor | {pk['ratio']:.2f}× | ≤ 3× |",
        f"| core / floor, all runs (quiet or not) | {pk['ratio_all']:.2f}× "
        f"({pk['core_all']:.1f} / {pk['floor_all']:.1f} ns) | |",
        f"| rx burst of {RX_BURST}: core | {rx['core_ns']:.1f} ns/packet ({rx['mpps']:.2f} Mpps) | |",
        f"| rx burst of {RX_BURST}: floor | {rx['floor_ns']:.1f} ns/packet | |",
        f"| rx burst of {RX_BURST}: core / floor | {rx['ratio']:.2f}× | |",
        f"| table full build, 256 backends | {tb['full_build_256_ms']:.0f} ms | ≤ 1000 ms |",
        f"| table full build, 1,000 backends | {tb['full_build_1000_ms']:.0f} ms | |",
        f"| health change at 1,000 backends | {tb['health_change_1000_ms']:.2f} ms | ≤ 10 ms |",
        f"| state change (draining) at 1,000 | {tb['state_change_1000_ms']:.2f} ms | ≤ 10 ms |",
        f"| add one backend at 1,000 | {tb['add_one_1000_ms']:.2f} ms | ≤ 10 ms |",
        f"| remove one backend at 1,000 | {tb['remove_one_1000_ms']:.2f} ms | ≤ 10 ms |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.report) or ".", exist_ok=True)
    with open(args.report, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
