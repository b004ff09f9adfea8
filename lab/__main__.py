"""python -m lab up | down | status | render [DIR] | demo — see lab/__init__.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lab import netns, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description="fwd's multi-tier lab")
    ap.add_argument(
        "--prefix", default=netns.DEFAULT_PREFIX, help="namespace name prefix (default %(default)s)"
    )
    ap.add_argument(
        "--run-dir", type=Path, default=netns.DEFAULT_RUN_DIR, help="runtime directory (default %(default)s)"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="build the lab in network namespaces and start every node")
    sub.add_parser("down", help="end every process of the lab, delete its namespaces and files")
    sub.add_parser("status", help="the layout, and what runs")
    rd = sub.add_parser("render", help="write containerlab/ (topology, node configs) from lab/topology.py")
    rd.add_argument("dir", nargs="?", type=Path, default=render.OUT)
    dm = sub.add_parser("demo", help="up, traffic with a live view, every scenario, the results, down")
    dm.add_argument("--no-setup-check", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.cmd == "render":
        for p in render.write(a.dir):
            print(p)
        return 0
    if a.cmd == "up":
        lab = netns.NetnsLab(prefix=a.prefix, run_dir=a.run_dir, log=lambda m: print(f"lab: {m}", flush=True))
        try:
            lab.up()
        except netns.LabError as e:
            print(f"lab: error: {e}", file=sys.stderr)
            return 1
        print(f"lab: up (namespaces {a.prefix}*, files in {a.run_dir}); `make lab-down` removes it")
        return 0
    if a.cmd == "down":
        lab = netns.NetnsLab.attach(a.prefix, a.run_dir)
        gone = lab.destroy()
        print(f"lab: removed {len(gone)} namespaces, their processes and {a.run_dir}")
        return 0
    if a.cmd == "status":
        from lab.demo import print_status

        return print_status(netns.NetnsLab.attach(a.prefix, a.run_dir))
    if a.cmd == "demo":
        from lab.demo import run_demo

        return run_demo(prefix=a.prefix, run_dir=a.run_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
