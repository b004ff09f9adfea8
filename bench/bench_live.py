"""make bench-live: the live path client -> forwarder -> sink over veth, four forwarders side by side.

    client ──veth── fwd (eth0 in, eth1 out) ──veth── sink

The generator is trafgen (netsniff-ng) on one core in the client namespace: 60-byte UDP frames
(84 on the wire with preamble and gap; 96 bytes after GUE encapsulation) to the VIP 10.100.0.1,
source port counting up so that flows spread over the table. In the middle, in turn:

  fwd-xdp   `fwd run --mode xdp` (AF_XDP, copy mode on veth)
  fwd-xdp-holdoff  the same with `--rx-holdoff-us 100` (receive bursts batched, docs/config.md)
  fwd-raw   `fwd run --mode raw` (AF_PACKET TPACKET_V3)
  kernel    no fwd: the kernel's own IP forwarding of the same frames (route to the sink)
  xsk-noop  bench/xsk_noop: fwd's steering program + an AF_XDP loop that only rewrites MACs
  generator no forwarder at all: the frames die at the forwarder namespace's IP input (no route,
            no forwarding) - what the generator and the veth cost on their own, which every other
            figure includes

For each: packets the client sent (its eth0 tx counter), packets delivered at the sink (its eth0
rx counter; an nftables netdev-ingress rule then drops them so the sink's stack costs the same
for every forwarder), delivered packets/s, and the total CPU time of the whole machine (all
cores, busy jiffies from /proc/stat, generator included) per delivered packet. Each figure is
the median over --rounds rounds, the forwarders interleaved within a round so that drift hits
all alike. Then the no-op forwarder's loss-free rate (<= 0.1% lost: just under the generator's
full speed when it keeps up there, else bisection with trafgen --rate), and fwd-xdp and the
no-op both offered exactly that rate, --rounds times.

Ratios (targets from issue 3): fwd-xdp CPU/packet / kernel CPU/packet (<= 0.8) and fwd-xdp
delivered / xsk-noop delivered at the no-op's loss-free rate (>= 0.9). The generator's own cost per
packet sent is reported too, with the ratio a forwarder that cost nothing would reach, and each
forwarder's cost beyond the generator's (its CPU/packet less the generator's). Absolute figures drift
from run to run on a shared VM; the ratios come from one run. Writes bench-report/live.md and live.png; with
--combine also bench-report/README.md (core + live). Needs root; only namespaces it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench-report"
FWD = ROOT / ".venv" / "bin" / "fwd"
NOOP = ROOT / "bench" / "xsk_noop"
PREFIX = f"fwdb{os.getpid()}-"
NS_C, NS_F, NS_S = PREFIX + "client", PREFIX + "fwd", PREFIX + "sink"
MAC_C, MAC_FIN, MAC_FOUT, MAC_S = (
    "02:98:01:00:00:02",
    "02:98:01:00:00:01",
    "02:98:02:00:00:01",
    "02:98:02:00:00:02",
)
VIP, BACKENDS = "10.100.0.1", ("10.99.2.10", "10.99.2.11")
VARIANTS = ("fwd-xdp", "fwd-xdp-holdoff", "fwd-raw", "kernel", "xsk-noop", "generator")
FORWARDERS = VARIANTS[:5]  # generator delivers nothing: it is reported apart
HOLDOFF_US = 100  # fwd-xdp-holdoff's --rx-holdoff-us
LOSS_FREE = 0.001  # at most 0.1% lost
FWD_EXTRA: dict[str, list[str]] = {"fwd-xdp-holdoff": ["--rx-holdoff-us", str(HOLDOFF_US)]}

TRAFGEN_CFG = f"""{{
  eth(da={MAC_FIN}, sa={MAC_C}),
  ipv4(saddr=10.98.0.1, daddr={VIP}, ttl=64),
  udp(sport=dinc(1024, 65000), dport=9, csum=0),
  fill(0x41, 18)
}}
"""

FWD_CONFIG = f"""[node]
tunnel_source = "10.99.2.1"
mtu = 1500

[[tables]]
name = "bench"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
  [[tables.binds]]
  ip = "{VIP}"
  proto = "udp"
  port = 9
  hash_fields = ["src_addr", "src_port"]
""" + "".join(f'  [[tables.backends]]\n  ip = "{b}"\n' for b in BACKENDS)


# ----------------------------------------------------------------------------- plumbing


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return sh("ip", *(["-n", ns] if ns else []), *args, check=check)


def link_counter(ns: str, ifname: str, direction: str) -> int:
    link = json.loads(ip("-j", "-s", "link", "show", ifname, ns=ns))[0]
    return int(link["stats64"][direction]["packets"])


def cpu_busy_seconds() -> float:
    """Busy time of all cores since boot (user+nice+system+irq+softirq+steal), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def build() -> None:
    for ns in (NS_C, NS_F, NS_S):
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", ns=ns)
    ip("link", "add", "eth0", "netns", NS_C, "numrxqueues", "1", "numtxqueues", "1", "address", MAC_C,
       "type", "veth", "peer", "name", "eth0", "netns", NS_F, "numrxqueues", "1", "numtxqueues", "1",
       "address", MAC_FIN)  # fmt: skip
    ip("link", "add", "eth1", "netns", NS_F, "numrxqueues", "1", "numtxqueues", "1", "address", MAC_FOUT,
       "type", "veth", "peer", "name", "eth0", "netns", NS_S, "numrxqueues", "1", "numtxqueues", "1",
       "address", MAC_S)  # fmt: skip
    ip("addr", "add", "10.99.1.2/24", "dev", "eth0", ns=NS_C)
    ip("addr", "add", "10.99.1.1/24", "dev", "eth0", ns=NS_F)
    ip("addr", "add", "10.99.2.1/24", "dev", "eth1", ns=NS_F)
    for b in BACKENDS:
        ip("addr", "add", f"{b}/24", "dev", "eth0", ns=NS_S)
        ip("neigh", "replace", b, "lladdr", MAC_S, "dev", "eth1", "nud", "permanent", ns=NS_F)
    for ns, dev in ((NS_C, "eth0"), (NS_F, "eth0"), (NS_F, "eth1"), (NS_S, "eth0")):
        ip("link", "set", dev, "up", ns=ns)
    ip("route", "add", "10.100.0.0/16", "via", "10.99.1.1", ns=NS_C)
    ip("route", "add", "10.98.0.0/16", "via", "10.99.1.2", ns=NS_F)  # the generator's source, for rp_filter
    ip("neigh", "replace", "10.99.1.2", "lladdr", MAC_C, "dev", "eth0", "nud", "permanent", ns=NS_F)
    ip("neigh", "replace", "10.99.1.1", "lladdr", MAC_FIN, "dev", "eth0", "nud", "permanent", ns=NS_C)
    # the sink counts at its interface, then drops every IPv4 frame before its IP stack
    script = "table netdev sink {\n chain in {\n  type filter hook ingress device eth0 priority -500;\n"
    script += "  ether type ip drop\n }\n}\n"
    subprocess.run(["ip", "netns", "exec", NS_S, "nft", "-f", "-"], input=script, text=True, check=True)


def destroy() -> None:
    for ns in (NS_C, NS_F, NS_S):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        ip("netns", "del", ns, check=False)


# ----------------------------------------------------------------------------- forwarders


class Forwarder:
    """One of the four middles, started in the fwd namespace and stopped again."""

    def __init__(self, name: str, tmp: Path):
        self.name, self.tmp = name, tmp
        self.proc: subprocess.Popen | None = None
        self.log = tmp / f"{name}.log"

    def start(self) -> None:
        if self.name == "generator":
            return  # forwarding stays off, no route to the VIP: the frames die at IP input
        if self.name == "kernel":
            sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=NS_F)
            ip("route", "replace", "10.100.0.0/16", "via", BACKENDS[0], "dev", "eth1", ns=NS_F)
            return
        if self.name == "xsk-noop":
            argv = [str(NOOP), "eth0", "eth1", MAC_S, "--copy"]
            ready = "xsk_noop: eth0 -> eth1"
        else:
            cfg = self.tmp / "bench.toml"
            cfg.write_text(FWD_CONFIG)
            mode = self.name.split("-")[1]
            argv = [str(FWD), "run", "--config", str(cfg), "--interface", "eth0", "--mode", mode]
            argv += FWD_EXTRA.get(self.name, [])
            if (
                "--control-socket"
                in subprocess.run([str(FWD), "run", "--help"], capture_output=True, text=True).stdout
            ):
                argv += ["--control-socket", str(self.tmp / "fwd.sock")]  # other fwd runs may be going
            ready = "running: mode"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", NS_F, *argv], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while ready not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def stop(self) -> str:
        if self.name == "generator":
            return ""
        if self.name == "kernel":
            sh("sysctl", "-qw", "net.ipv4.ip_forward=0", ns=NS_F)
            ip("route", "del", "10.100.0.0/16", ns=NS_F, check=False)
            return ""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        text = self.log.read_text(errors="replace")
        if rc != 0:
            raise RuntimeError(f"{self.name} exited {rc}:\n{text[-3000:]}")
        return text


@dataclass
class Sample:
    variant: str
    offered: str  # "max" or "<n>pps"
    seconds: float
    sent: int
    delivered: int
    cpu_s: float  # busy time of all cores during the run, from /proc/stat
    background: float = 0.0  # cores busy before the forwarder started (other work on the machine)
    own_s: float = 0.0  # CPU time of the generator, the forwarder and ksoftirqd (own_cpu_seconds)

    @property
    def own_ns_per_sent(self) -> float:
        return self.own_s / self.sent * 1e9 if self.sent else float("inf")

    @property
    def ns_per_sent(self) -> float:
        return self.cpu_s / self.sent * 1e9 if self.sent else float("inf")

    @property
    def own_ns_per_pkt(self) -> float:
        return self.own_s / self.delivered * 1e9 if self.delivered else float("inf")

    @property
    def cpu_net_s(self) -> float:
        """cpu_s less what the machine was already doing before this forwarder started."""
        return max(0.0, self.cpu_s - self.background * self.seconds)

    @property
    def net_ns_per_pkt(self) -> float:
        return self.cpu_net_s / self.delivered * 1e9 if self.delivered else float("inf")

    @property
    def pps(self) -> float:
        return self.delivered / self.seconds

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds

    @property
    def loss(self) -> float:
        return 1 - self.delivered / self.sent if self.sent else 0.0

    @property
    def ns_per_pkt(self) -> float:
        return self.cpu_s / self.delivered * 1e9 if self.delivered else float("inf")


def _task_cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def _ksoftirqd() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("ksoftirqd/"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


KSOFTIRQD = _ksoftirqd()


def own_cpu_seconds(pid: int | None) -> float:
    """CPU seconds so far of what is ours: the finished children of this process (trafgen, via
    RUSAGE_CHILDREN), the forwarder process (all its threads) and the ksoftirqd threads. This
    kernel has no IRQ time accounting, so softirq work (kernel forwarding, veth's NAPI and XDP)
    is charged to the task it interrupts - trafgen, the forwarder or ksoftirqd - and is counted
    here once; other users of a shared machine barely show in it."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = ru.ru_utime + ru.ru_stime + sum(_task_cpu(p) for p in KSOFTIRQD)
    return own + (_task_cpu(pid) if pid is not None else 0.0)


def generate(variant: str, cfg: Path, seconds: float, rate: int | None, pid: int | None = None) -> Sample:
    """One trafgen run on one core, bounded by time and by count; counters around it."""
    argv = ["timeout", "-s", "INT", f"{seconds:g}", "trafgen", "-o", "eth0", "-i", str(cfg), "-P", "1"]
    argv += ["-n", str(int((rate or 5_000_000) * seconds * 1.2))]
    if rate:
        argv += ["-b", f"{rate}pps"]
    sent0, got0 = link_counter(NS_C, "eth0", "tx"), link_counter(NS_S, "eth0", "rx")
    cpu0, own0 = cpu_busy_seconds(), own_cpu_seconds(pid)
    t0 = time.monotonic()
    subprocess.run(["ip", "netns", "exec", NS_C, *argv], capture_output=True, timeout=seconds + 30)
    t1 = time.monotonic()
    time.sleep(0.3)  # let the rings drain: frames still in flight are counted as delivered
    sent, got = link_counter(NS_C, "eth0", "tx"), link_counter(NS_S, "eth0", "rx")
    cpu, own = cpu_busy_seconds(), own_cpu_seconds(pid)
    offered = f"{rate}pps" if rate else "max"
    return Sample(variant, offered, t1 - t0, sent - sent0, got - got0, cpu - cpu0, own_s=own - own0)


def background_cores(seconds: float = 1.0) -> float:
    """Cores busy with other work while nothing of ours runs (this machine may be shared)."""
    c0, t0 = cpu_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (cpu_busy_seconds() - c0) / (time.monotonic() - t0)


def run_variant(variant: str, tmp: Path, seconds: float, rates: list[int | None]) -> list[Sample]:
    """Start the forwarder, warm up, one measured run per offered rate (None: as fast as the
    generator goes), stop it."""
    bg = background_cores()
    fw = Forwarder(variant, tmp)
    fw.start()
    try:
        # a short warm-up: next hops, caches, first wake-ups
        pid = fw.proc.pid if fw.proc is not None else None  # ip netns exec execs: the forwarder
        generate(variant, tmp / "trafgen.cfg", 0.5, 10_000, pid)
        out = [generate(variant, tmp / "trafgen.cfg", seconds, rate, pid) for rate in rates]
    finally:
        fw.stop()
    bg = (bg + background_cores()) / 2  # before and after: the other work drifts
    for s in out:
        s.background = bg
    return out


def noop_loss_free_rate(tmp: Path, seconds: float, at_max: list[Sample], steps: int) -> tuple[int, bool]:
    """(offered rate at which the no-op forwarder loses <= 0.1%, generator-bound?): just under the
    generator's full speed when it keeps up there, else found by bisection."""
    full = statistics.median(s.sent_pps for s in at_max)
    if max(s.loss for s in at_max) <= LOSS_FREE:
        return int(full * 0.98), True
    lo, hi = 0.0, full
    for _ in range(steps):
        mid = (lo + hi) / 2
        (s,) = run_variant("xsk-noop", tmp, seconds, [int(mid)])
        print(f"  xsk-noop at {mid / 1e3:.0f} kpps offered: loss {s.loss * 100:.2f}%", flush=True)
        lo, hi = (mid, hi) if s.loss <= LOSS_FREE else (lo, mid)
    return int(lo), False


# ----------------------------------------------------------------------------- report


@dataclass
class Result:
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # as fast as the generator goes
    fixed: dict[str, list[Sample]] = field(default_factory=dict)  # at the common fixed rate
    loss_free_rate: int = 0  # the no-op forwarder's loss-free offered rate
    generator_bound: bool = False  # the no-op forwarder kept up with the generator's full speed
    at_rate: dict[str, list[Sample]] = field(default_factory=dict)  # fwd-xdp and xsk-noop at that rate

    def med(self, v: str, attr: str, fixed: bool = False) -> float:
        return statistics.median(getattr(s, attr) for s in (self.fixed if fixed else self.samples)[v])


QUIET = 0.15  # cores: below this much other work, the whole-machine figure is the headline


def write_report(res: Result, args) -> str:
    REPORT.mkdir(exist_ok=True)
    bg = statistics.median(s.background for ss in res.samples.values() for s in ss)
    headline = "ns_per_pkt" if bg < QUIET else "own_ns_per_pkt"
    fixed = f"{args.fixed_rate // 1000} kpps"
    rows = []
    for v in FORWARDERS:
        if v not in res.samples:
            continue
        m = res.med
        rows.append(
            f"| {v} | {m(v, 'sent_pps') / 1e3:.0f} | {m(v, 'pps') / 1e3:.0f} | {m(v, 'loss') * 100:.2f}% | "
            f"{m(v, 'ns_per_pkt'):.0f} | {m(v, 'own_ns_per_pkt'):.0f} | {m(v, 'loss', True) * 100:.2f}% | "
            f"{m(v, 'ns_per_pkt', True):.0f} | {m(v, 'net_ns_per_pkt', True):.0f} | "
            f"{m(v, 'own_ns_per_pkt', True):.0f} |"
        )
    lines = [
        "# Live path: client -> forwarder -> sink (veth, one trafgen core)",
        "",
        f"`make bench-live`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"kernel {os.uname().release}, {os.cpu_count()} cores. 60-byte UDP frames to the VIP, "
        f"{args.seconds:g} s per run, median of {args.rounds} interleaved rounds, each forwarder run "
        f"with the generator at full speed and at a common fixed rate of {fixed} (the same offered "
        "load for all, so CPU per packet compares forwarding cost).",
        "",
        "CPU per packet delivered at the sink, three ways: **machine** = busy time of all cores from "
        "/proc/stat (the issue's measure; generator included); **net** = machine less the other work "
        "the machine was doing before and after the run; **own** = CPU time of the generator, the "
        "forwarder process and the ksoftirqd threads (softirq work - kernel forwarding, veth's NAPI "
        "and XDP - is charged to the task it interrupts on this kernel, which has no IRQ time "
        "accounting), which other users of the machine barely touch. "
        f"Other work during this run: {bg:.2f} "
        f"cores (median); the ratios below use **{'machine' if headline == 'ns_per_pkt' else 'own'}** "
        f"CPU{'' if headline == 'ns_per_pkt' else ' because the machine was not quiet'}.",
        "",
        f"| forwarder | full speed: sent kpps | delivered kpps | loss | machine ns/pkt | own ns/pkt | "
        f"at {fixed}: loss | machine ns/pkt | net ns/pkt | own ns/pkt |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]

    def ratio(a: str, b: str, attr: str, fixed_rate: bool = True) -> float:
        return res.med(a, attr, fixed_rate) / res.med(b, attr, fixed_rate)

    ratios = []
    if {"fwd-xdp", "kernel"} <= res.samples.keys():
        ratios.append(
            f"* fwd AF_XDP CPU/packet ÷ kernel forwarding CPU/packet at {fixed}: "
            f"**{ratio('fwd-xdp', 'kernel', headline):.2f}** (target ≤ 0.8); machine "
            f"{ratio('fwd-xdp', 'kernel', 'ns_per_pkt'):.2f}, "
            f"net {ratio('fwd-xdp', 'kernel', 'net_ns_per_pkt'):.2f}, "
            f"own {ratio('fwd-xdp', 'kernel', 'own_ns_per_pkt'):.2f}; at full speed (machine) "
            f"{ratio('fwd-xdp', 'kernel', 'ns_per_pkt', False):.2f}"
        )
    if {"fwd-xdp", "xsk-noop"} <= res.at_rate.keys():
        a = statistics.median(s.pps for s in res.at_rate["fwd-xdp"])
        b = statistics.median(s.pps for s in res.at_rate["xsk-noop"])
        losses = ", ".join(f"{s.loss * 100:.2f}%" for s in res.at_rate["fwd-xdp"])
        bound = (
            " The no-op forwarder kept up with the generator's full speed, so its real limit lies "
            "above what one trafgen core can offer."
            if res.generator_bound
            else ""
        )
        sent = statistics.median(s.sent_pps for ss in res.at_rate.values() for s in ss)
        ratios.append(
            f"* fwd AF_XDP delivered ÷ no-op AF_XDP delivered, both offered the no-op's loss-free rate "
            f"{res.loss_free_rate / 1e3:.0f} kpps (the generator sent {sent / 1e3:.0f} kpps): "
            f"{a / 1e3:.0f} / {b / 1e3:.0f} kpps = **{a / b:.2f}** "
            f"(target ≥ 0.9; fwd's loss per round there: {losses}).{bound}"
        )
    for v in ("fwd-xdp-holdoff", "fwd-raw", "xsk-noop"):
        if {v, "kernel"} <= res.samples.keys():
            ratios.append(
                f"* {v} CPU/packet ÷ kernel forwarding CPU/packet at {fixed}: "
                f"{ratio(v, 'kernel', headline):.2f}"
            )
    if {"generator", "kernel"} <= res.samples.keys():
        per_sent = "ns_per_sent" if headline == "ns_per_pkt" else "own_ns_per_sent"
        g = res.med("generator", per_sent, True)
        k = res.med("kernel", headline, True)
        beyond = {v: res.med(v, headline, True) - g for v in FORWARDERS if v in res.samples}
        ratios.append(
            f"* the generator alone (no forwarder; frames dropped at the forwarder's IP input) at {fixed}: "
            f"{g:.0f} ns per packet sent = **{g / k:.2f}** × kernel forwarding's total: the ratio a "
            "forwarder that cost nothing would reach on this bench"
            + (" - the 0.8 target is below it, out of reach of any forwarder." if g / k > 0.8 else ".")
        )
        ratios.append(
            "* cost beyond the generator's (CPU/packet less the generator's): "
            + ", ".join(f"{v} {b:.0f} ns" for v, b in beyond.items())
            + (
                f"; fwd AF_XDP ÷ kernel on that basis: {beyond['fwd-xdp'] / beyond['kernel']:.2f}"
                if {"fwd-xdp", "kernel"} <= beyond.keys() and beyond["kernel"] > 0
                else ""
            )
        )
    reached = statistics.median(x.sent_pps for ss in res.fixed.values() for x in ss)
    if reached < 0.95 * args.fixed_rate:
        ratios.append(
            f"* note: at the fixed rate the generator reached only {reached / 1e3:.0f} kpps (median) "
            "on this machine at this time"
        )
    lines += ["Ratios from this run:", "", *ratios, "", "![delivered rate and CPU per packet](live.png)", ""]
    lines += [
        "Reading: a veth pair has no NIC working in parallel; with plain kernel forwarding the "
        "forwarding runs in the softirq of the sender's core, while an AF_XDP forwarder runs on the "
        "other core (and veth runs the XDP program in its NAPI softirq). trafgen paces a fixed rate "
        "by spinning, so the generator's core is busy at any rate: it is in every figure alike.",
        "",
    ]
    text = "\n".join(lines)
    (REPORT / "live.md").write_text(text)
    _chart(res, headline, fixed)
    return text


def _chart(res: Result, attr: str, fixed: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in FORWARDERS if v in res.samples]
    pps = [res.med(v, "pps") / 1e3 for v in names]
    cpu = [res.med(v, attr, True) for v in names]
    palette = {
        "fwd-xdp": "#1f77b4",
        "fwd-xdp-holdoff": "#17becf",
        "fwd-raw": "#ff7f0e",
        "kernel": "#7f7f7f",
        "xsk-noop": "#2ca02c",
    }
    colors = [palette[v] for v in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(names, pps, color=colors)
    a.set_title("delivered at the sink (kpps)")
    b.bar(names, cpu, color=colors)
    kind = "machine" if attr == "ns_per_pkt" else "own"
    b.set_title(f"{kind} CPU per delivered packet at {fixed} (ns)")
    for ax, vals in ((a, pps), (b, cpu)):
        for i, val in enumerate(vals):
            ax.annotate(f"{val:.0f}", (i, val), ha="center", va="bottom")
        ax.tick_params(axis="x", rotation=15)
    fig.suptitle("client → forwarder → sink over veth, one trafgen core, 60-byte UDP")
    fig.tight_layout()
    fig.savefig(REPORT / "live.png", dpi=100)
    plt.close(fig)


def combine() -> None:
    """bench-report/README.md: every benchmark's report in one page (core and live first)."""
    parts = ["# fwd benchmarks (`make bench`)", ""]
    others = sorted(p.name for p in REPORT.glob("*.md") if p.name not in ("README.md", "core.md", "live.md"))
    for name in ("core.md", "live.md", *others):
        p = REPORT / name
        if p.exists():
            parts += [p.read_text().replace("# ", "## ", 1), ""]
    (REPORT / "README.md").write_text("\n".join(parts))


# ----------------------------------------------------------------------------- main


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP)"
    for tool in ("trafgen", "nft", "ip"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"needs {tool} (apt-get install netsniff-ng nftables iproute2)"
    if not FWD.exists():
        return "fwd is not installed (make setup)"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one measured run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="bisection steps for a loss-free rate")
    ap.add_argument("--fixed-rate", type=int, default=100_000, help="offered pps for the CPU comparison")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--combine", action="store_true", help="only write bench-report/README.md")
    args = ap.parse_args()
    if args.combine:
        combine()
        return 0
    why = preflight()
    if why:
        print(f"bench-live: {why}", file=sys.stderr)
        return 1
    variants = [v for v in args.variants.split(",") if v]
    if "xsk-noop" in variants and not NOOP.exists():
        print(
            "bench-live: bench/xsk_noop is not built (make -C native/bpf noop): skipping it", file=sys.stderr
        )
        variants.remove("xsk-noop")
    res = Result()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as d:
        tmp = Path(d)
        (tmp / "trafgen.cfg").write_text(TRAFGEN_CFG)
        build()
        try:
            for r in range(args.rounds):
                for v in variants:
                    full, fixed = run_variant(v, tmp, args.seconds, [None, args.fixed_rate])
                    res.samples.setdefault(v, []).append(full)
                    res.fixed.setdefault(v, []).append(fixed)
                    for s in (full, fixed):
                        print(
                            f"round {r + 1} {v:9s} {s.offered:>10s}: sent {s.sent_pps / 1e3:4.0f} kpps, "
                            f"delivered {s.pps / 1e3:4.0f} kpps, loss {s.loss * 100:5.2f}%, CPU "
                            f"{s.ns_per_pkt:5.0f} ns/pkt, net {s.net_ns_per_pkt:5.0f}, own "
                            f"{s.own_ns_per_pkt:5.0f} (background "
                            f"{s.background:.2f} cores)",
                            flush=True,
                        )
            if {"fwd-xdp", "xsk-noop"} <= res.samples.keys():
                rate, res.generator_bound = noop_loss_free_rate(
                    tmp, args.seconds, res.samples["xsk-noop"], args.steps
                )
                res.loss_free_rate = rate
                for r in range(args.rounds):
                    for v in ("xsk-noop", "fwd-xdp"):
                        (s,) = run_variant(v, tmp, args.seconds, [rate])
                        res.at_rate.setdefault(v, []).append(s)
                        print(
                            f"at the no-op's loss-free rate {rate / 1e3:.0f} kpps, round {r + 1}, {v}: "
                            f"delivered {s.pps / 1e3:.0f} kpps, loss {s.loss * 100:.2f}%",
                            flush=True,
                        )
        finally:
            destroy()
    print(write_report(res, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
