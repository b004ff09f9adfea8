"""make bench-redirect: CPU cost per packet of fwd-redirect's decapsulation, next to plain delivery
of the same inner packets without encapsulation, side by side in one run.

    gen ──veth── rcv (fwd-redirect on eth0; VIP 10.94.0.1 on lo; a UDP socket on VIP:9)

trafgen (netsniff-ng) on one core in gen sends, in turn:

  plain     the inner packets themselves: 64-byte IPv4/UDP datagrams from 10.93.0.1 to VIP:9
            (16 source ports), straight to rcv; no program on rcv's eth0
  redirect  the same inner packets GUE-encapsulated as an L4 node sends them (outer IPv4 from an
            allowed 10.95.0.1, UDP 19523, one IPv4 hop); fwd-redirect attached on rcv's eth0
            decapsulates them (decap_non_tcp) to the local stack
  floor     the plain frames to a MAC that is not rcv's: the kernel drops them on arrival, so this
            is the generator + veth part that both others contain

The datagrams end in the UDP socket, which is never read: the stack does the whole receive path
and drops them at the full socket buffer (UDP RcvbufErrors), the same for plain and redirect.
Delivered = UDP InDatagrams + RcvbufErrors in rcv (the floor: rcv's eth0 rx counter).

Measure: our CPU time per delivered packet (trafgen's rusage + the softirq time of all cores,
where veth delivers, fwd-redirect runs and the stack receives), and beside it the busy time of
the whole machine (/proc/stat; on a shared VM it also holds other work); the median over --rounds
rounds with the variants interleaved. Reported: each variant's ns/packet, the same less the floor
(the receive-side cost), and the ratios redirect / plain. Writes bench-report/redirect.md.
Needs root; touches only the namespaces it creates.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench-report"
FWD = ROOT / ".venv" / "bin" / "fwd"
PREFIX = f"fwdb{os.getpid()}-r"
NS_G, NS_R = PREFIX + "gen", PREFIX + "rcv"
MAC_G, MAC_R, MAC_OTHER = "02:96:00:00:00:01", "02:96:00:00:00:02", "02:96:00:00:00:99"
GEN4, RCV4, HOP4 = "10.95.0.1", "10.95.0.2", "10.95.0.3"
CLIENT4, VIP4, PORT = "10.93.0.1", "10.94.0.1", 9
VARIANTS = ("plain", "redirect", "floor")
CLONE_NEWNET = 0x40000000


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return sh("ip", *(["-n", ns] if ns else []), *args, check=check)


def cpu_busy_seconds() -> float:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time that is ours: finished children of this process (trafgen, via RUSAGE_CHILDREN) and
    the softirq time of all cores (where veth delivers, fwd-redirect runs and the stack receives).
    Other users of a shared machine barely show in it."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    softirq = int(Path("/proc/stat").read_text().splitlines()[0].split()[7])
    return ru.ru_utime + ru.ru_stime + softirq / os.sysconf("SC_CLK_TCK")


def prog_stats(prog_id: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a BPF program (kernel.bpf_stats_enabled must be 1)."""
    info = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)))
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def redirect_stats() -> dict:
    return json.loads(sh(str(FWD), "redirect", "stats", "--interface", "eth0", "--json", ns=NS_R))


def udp_delivered() -> int:
    lines = [ln.split() for ln in sh("cat", "/proc/net/snmp", ns=NS_R).splitlines() if ln.startswith("Udp:")]
    row = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return row["InDatagrams"] + row["RcvbufErrors"]


def rx_packets() -> int:
    link = json.loads(ip("-j", "-s", "link", "show", "eth0", ns=NS_R))[0]
    return int(link["stats64"]["rx"]["packets"])


# ----------------------------------------------------------------------------------- frames


def inner(sport: int) -> bytes:
    return bytes(IP(src=CLIENT4, dst=VIP4, id=0) / UDP(sport=sport, dport=PORT, chksum=0) / (b"B" * 36))


def gue(payload: bytes, src: str = GEN4, next_hop: int = 0) -> bytes:
    hops = [ipaddress_packed(HOP4)]
    hdr = bytes([1 + len(hops), 4, 0, 0, 0, 0, next_hop, len(hops)]) + b"".join(hops)
    return bytes(
        Ether(src=MAC_G, dst=MAC_R)
        / IP(src=src, dst=RCV4, id=0, flags="DF")
        / UDP(sport=40000, dport=19523, chksum=0)
        / (hdr + payload)
    )


def ipaddress_packed(a: str) -> bytes:
    return socket.inet_aton(a)


def trafgen_cfg(frames: list[bytes]) -> str:
    return "\n".join("{ " + ", ".join(f"0x{b:02x}" for b in f) + " }" for f in frames) + "\n"


# ----------------------------------------------------------------------------------- rig


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn):
    """fn() on a thread inside namespace ns; its result."""
    box: dict = {}

    def run():
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                box["error"] = OSError(ctypes.get_errno(), "setns")
                return
        finally:
            os.close(fd)
        try:
            box["result"] = fn()
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def tcp_inner(flags: str) -> bytes:
    from scapy.layers.inet import TCP

    return bytes(IP(src=CLIENT4, dst=VIP4, id=0) / TCP(sport=33000, dport=80, flags=flags))


PATHS = {
    # (frame, expected tc verdict): 0 OK (left alone or decapsulated), 2 SHOT, 7 REDIRECT
    "not GUE (left to the kernel)": (lambda: bytes(Ether(src=MAC_G, dst=MAC_R, type=0x0800)) + inner(7), 0),
    "GUE from outside --allow (dropped)": (lambda: gue(inner(7), src="10.95.0.9"), 2),
    "decap, inner UDP": (lambda: gue(inner(7)), 0),
    "decap, inner TCP SYN": (lambda: gue(tcp_inner("S")), 0),
    "decap, TCP ACK, socket lookup, last hop": (lambda: gue(tcp_inner("A"), next_hop=1), 0),
    "forward to the next hop, TCP ACK": (lambda: gue(tcp_inner("A")), 7),
}


def profile_paths(runs: int) -> dict[str, float]:
    """ns per run of the program alone on each path: BPF_PROG_TEST_RUN in rcv, one frame per run,
    timed by the kernel's BPF stats (the figures include the stats' own clock reads)."""
    from fwd.redirect import RedirectProgram, Source

    out = {}
    with RedirectProgram() as prog:
        prog.configure([ipaddress.ip_network(f"{GEN4}/32")], [Source(ipaddress.ip_address(RCV4), "fallback")])
        pid = prog.state()["prog_id"]
        ifindex = json.loads(ip("-j", "link", "show", "eth0", ns=NS_R))[0]["ifindex"]
        for name, (build, verdict) in PATHS.items():
            frame = build()
            rc, _ = in_netns(NS_R, lambda f=frame: prog.run(f, ifindex))
            if rc != verdict:
                raise RuntimeError(f"profile: {name}: verdict {rc}, expected {verdict}")
            t0, n0 = prog_stats(pid)
            in_netns(NS_R, lambda f=frame: [prog.run(f, ifindex) for _ in range(runs)])
            t1, n1 = prog_stats(pid)
            out[name] = (t1 - t0) / max(1, n1 - n0)
    return out


def socket_in(ns: str) -> socket.socket:
    """A UDP socket on VIP:PORT in namespace ns with a tiny receive buffer, never read."""
    box: dict = {}

    def run():
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                box["error"] = OSError(ctypes.get_errno(), "setns")
                return
        finally:
            os.close(fd)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((VIP4, PORT))
        box["sock"] = s

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]


def build() -> None:
    for ns in (NS_G, NS_R):
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", ns=ns)
    ip("link", "add", "eth0", "netns", NS_G, "numrxqueues", "1", "numtxqueues", "1", "address", MAC_G,
       "type", "veth", "peer", "name", "eth0", "netns", NS_R, "numrxqueues", "1", "numtxqueues", "1",
       "address", MAC_R)  # fmt: skip
    ip("addr", "add", f"{GEN4}/24", "dev", "eth0", ns=NS_G)
    ip("addr", "add", f"{RCV4}/24", "dev", "eth0", ns=NS_R)
    ip("addr", "add", f"{VIP4}/32", "dev", "lo", ns=NS_R)
    for ns in (NS_G, NS_R):
        ip("link", "set", "eth0", "up", ns=ns)
    ip("route", "add", "default", "via", GEN4, ns=NS_R)  # the client's way back (rp_filter)


def destroy() -> None:
    for ns in (NS_G, NS_R):
        ip("netns", "del", ns, check=False)


def redirect(action: str) -> None:
    args = ["redirect", action, "--interface", "eth0"]
    if action == "attach":
        args += ["--allow", f"{GEN4}/32"]
    sh(str(FWD), *args, ns=NS_R)


@dataclass
class Sample:
    variant: str
    seconds: float
    sent: int
    delivered: int
    cpu_s: float  # whole machine
    own_s: float  # trafgen + softirq
    prog_ns: float | None = None  # fwd-redirect's own run time per packet (kernel BPF stats)

    @property
    def ns_per_pkt(self) -> float:
        return self.own_s / self.delivered * 1e9 if self.delivered else float("inf")

    @property
    def machine_ns_per_pkt(self) -> float:
        return self.cpu_s / self.delivered * 1e9 if self.delivered else float("inf")


def generate(variant: str, cfg: Path, seconds: float) -> Sample:
    count = udp_delivered if variant != "floor" else rx_packets
    argv = ["timeout", "-s", "INT", f"{seconds:g}", "trafgen", "-o", "eth0", "-i", str(cfg), "-P", "1"]
    d0, c0, o0, t0 = count(), cpu_busy_seconds(), own_cpu_seconds(), time.monotonic()
    subprocess.run(["ip", "netns", "exec", NS_G, *argv], capture_output=True, timeout=seconds + 30)
    t1 = time.monotonic()
    c1, o1 = cpu_busy_seconds(), own_cpu_seconds()
    time.sleep(0.2)  # frames still in flight are counted as delivered
    d1 = count()
    link = json.loads(ip("-j", "-s", "link", "show", "eth0", ns=NS_G))[0]
    return Sample(variant, t1 - t0, int(link["stats64"]["tx"]["packets"]), d1 - d0, c1 - c0, o1 - o0)


def run(rounds: int, seconds: float) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="fwd-bench-redirect-"))
    plain = [bytes(Ether(src=MAC_G, dst=MAC_R, type=0x0800)) + inner(20000 + i) for i in range(16)]
    cfgs = {
        "plain": plain,
        "redirect": [gue(inner(20000 + i)) for i in range(16)],
        "floor": [bytes(Ether(src=MAC_G, dst=MAC_OTHER)) + f[14:] for f in plain],
    }
    for v, frames in cfgs.items():
        (tmp / f"{v}.cfg").write_text(trafgen_cfg(frames))
    sink = socket_in(NS_R)
    samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    stats_knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_was = stats_knob.read_text().strip()
    stats_knob.write_text("1")  # the kernel measures the program's run time (restored below)
    try:
        paths = profile_paths(2000)
        for r in range(rounds):
            for v in VARIANTS:
                if v == "redirect":
                    redirect("attach")
                try:
                    generate(v, tmp / f"{v}.cfg", 0.5)  # warm-up
                    if v == "redirect":
                        p0 = prog_stats(redirect_stats()["prog_id"])
                    s = generate(v, tmp / f"{v}.cfg", seconds)
                    if v == "redirect":
                        st = redirect_stats()
                        p1 = prog_stats(st["prog_id"])
                        if p1[1] > p0[1]:
                            s.prog_ns = (p1[0] - p0[0]) / (p1[1] - p0[1])
                        c = st["counters"]
                        bad = {
                            k: n for k, n in c.items() if n and (k.startswith("drop_") or k == "forwarded")
                        }
                        if bad or c["decap_non_tcp"] == 0:
                            raise RuntimeError(f"fwd-redirect did not decapsulate as expected: {c}")
                finally:
                    if v == "redirect":
                        redirect("detach")
                samples[v].append(s)
                print(
                    f"round {r + 1} {v:9s} delivered {s.delivered / s.seconds / 1e6:6.3f} Mpps, "
                    f"{s.ns_per_pkt:7.0f} ns CPU/packet",
                    flush=True,
                )
    finally:
        stats_knob.write_text(stats_was)
        sink.close()
    return samples, paths


def report(samples: dict[str, list[Sample]], paths: dict[str, float], seconds: float) -> str:
    med = {v: statistics.median(s.ns_per_pkt for s in ss) for v, ss in samples.items()}
    machine = {v: statistics.median(s.machine_ns_per_pkt for s in ss) for v, ss in samples.items()}
    mpps = {v: statistics.median(s.delivered / s.seconds / 1e6 for s in ss) for v, ss in samples.items()}
    above = {v: med[v] - med["floor"] for v in ("plain", "redirect")}
    progs = [s.prog_ns for s in samples["redirect"] if s.prog_ns is not None]
    prog = statistics.median(progs) if progs else None
    rounds = len(samples["plain"])
    lines = [
        "# fwd-redirect: CPU per decapsulated packet vs plain delivery",
        "",
        f"gen --veth--> rcv, trafgen on one core, {seconds:g} s per run, median of {rounds} rounds "
        "(variants interleaved). 64-byte inner IPv4/UDP datagrams to a UDP socket that is never read "
        "(dropped at its full buffer: the whole receive path runs). GUE adds 20 + 8 + 12 bytes (one "
        "IPv4 hop). **CPU** = our CPU time per delivered packet: trafgen's (rusage) + the softirq time "
        "of all cores, where veth delivers, fwd-redirect runs and the stack receives; **machine** = "
        "busy time of all cores (/proc/stat), which on a shared VM also holds other work.",
        "",
        "| variant | delivered Mpps | ns CPU/packet | above the floor | machine ns/packet |",
        "|---|---:|---:|---:|---:|",
        f"| plain (inner packets, no program) | {mpps['plain']:.3f} | {med['plain']:.0f} | "
        f"{above['plain']:.0f} | {machine['plain']:.0f} |",
        f"| redirect (GUE, fwd-redirect decap) | {mpps['redirect']:.3f} | {med['redirect']:.0f} | "
        f"{above['redirect']:.0f} | {machine['redirect']:.0f} |",
        f"| floor (dropped on arrival) | {mpps['floor']:.3f} | {med['floor']:.0f} | 0 | "
        f"{machine['floor']:.0f} |",
        "",
        f"* redirect / plain, CPU per packet: **{med['redirect'] / med['plain']:.2f}** "
        f"(machine: {machine['redirect'] / machine['plain']:.2f})",
        f"* redirect / plain, receive side (less the floor): **{above['redirect'] / above['plain']:.2f}**"
        if above["plain"] > 0
        else "* receive side: the floor is not below plain in this run (noise); no ratio",
        f"* decapsulation cost per packet (redirect - plain): {med['redirect'] - med['plain']:.0f} ns",
        f"* fwd-redirect's own run time per packet (kernel BPF stats, decap path): **{prog:.0f} ns** "
        "(parse, allow-list lookup, counters, bpf_skb_adjust_room); the rest of the difference is the "
        "larger frame through veth and the stack"
        if prog is not None
        else "* fwd-redirect's own run time: not available (kernel BPF stats)",
        "",
        "Per round (ns CPU/packet): "
        + "; ".join(f"{v} " + ", ".join(f"{s.ns_per_pkt:.0f}" for s in ss) for v, ss in samples.items()),
        "",
        "The program alone, per path (BPF_PROG_TEST_RUN, one frame per run, 2000 runs, timed by the "
        "kernel's BPF stats, whose own clock reads are included):",
        "",
        "| path | ns per run |",
        "|---|---:|",
        *(f"| {name} | {ns:.0f} |" for name, ns in paths.items()),
        "",
        "Absolute figures drift on a shared VM; the ratios come from one run.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench-redirect: needs root (network namespaces, tc BPF)", file=sys.stderr)
        return 1
    for tool in ("trafgen", "ip", "bpftool"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench-redirect: needs {tool} (make setup installs it)", file=sys.stderr)
            return 1
    try:
        build()
        samples, paths = run(a.rounds, a.seconds)
    finally:
        destroy()
    text = report(samples, paths, a.seconds)
    REPORT.mkdir(exist_ok=True)
    (REPORT / "redirect.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
