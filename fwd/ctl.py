"""The operator commands that talk to a running daemon over its control socket: ``fwd status``,
``fwd backend``, ``fwd reload``, ``fwd top`` and ``fwd lookup`` without ``--config``.

Each function takes the parsed arguments and returns an exit status; failures to reach the daemon
or refusals by it are raised as fwd.api.ApiError (the CLI prints them as one ``fwd: error:`` line).
The text views are rendered here; the JSON forms are the daemon's answers unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from fwd.api import ControlClient
from fwd.config import DEFAULT_CONTROL_SOCKET

__all__ = [
    "control_socket_path",
    "cmd_backend",
    "cmd_reload",
    "cmd_status",
    "cmd_top",
    "lookup_live",
    "render_status",
]

ENV_SOCKET = "FWD_CONTROL_SOCKET"


def control_socket_path(args: argparse.Namespace) -> str:
    return getattr(args, "control_socket", None) or os.environ.get(ENV_SOCKET) or DEFAULT_CONTROL_SOCKET


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(control_socket_path(args), timeout=getattr(args, "timeout", 30.0) or 30.0)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def _render(rows: Sequence[Sequence[object]], right: set[int], indent: str = "") -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [
        (
            indent
            + "  ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        ).rstrip()
        for r in cells
    ]


def human_rate(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def health_word(b: dict[str, Any]) -> str:
    """'up' / 'down' / 'pending' for a checked backend, 'yes' / 'no' (from the config) otherwise."""
    h = b["health"]
    if h.get("checked"):
        v = h.get("verdict")
        return "pending" if v is None else "up" if v else "down"
    return "yes" if b["healthy"] else "no"


# ----------------------------------------------------------------------------------------------
# fwd status


def render_status(s: dict[str, Any]) -> str:
    lines = []
    nworkers = len(s["workers"])
    lines.append(
        f"fwd {s['version']} (pid {s['pid']}), up {human_duration(s['uptime'])}: mode {s['mode']} on "
        f"{', '.join(s['interfaces'])} ({nworkers} worker{'' if nworkers == 1 else 's'}); "
        f"config {s['config']} ({s['format']})"
    )
    lines.append(
        f"generation {s['generation']} (acked {s['acked_generation']}); "
        f"control socket {s['control_socket']}; metrics {s['metrics'] or 'off'}; "
        f"health changes {s['health_changes']}"
    )
    r = s.get("last_reload")
    if r:
        ago = human_duration(max(0.0, time.time() - r["at"]))
        lines.append(
            f"last reload: {'ok' if r['ok'] else 'FAILED'} {ago} ago ({r['source']}): {r['message']}"
        )
    drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items() if v) or "none"
    v = s["verdicts"]
    lines.append(
        f"packets: forward {v.get('forward', 0)}, reply {v.get('reply', 0)}, pass {v.get('pass', 0)}, "
        f"drop {v.get('drop', 0)} ({drops})"
    )
    for t in s["tables"]:
        lines.append("")
        lines.append(f"table {t['name']} ({'GLB rule' if t['glb_compat'] else 'fwd rule'})")
        rows: list[list[object]] = [["VIP", "proto", "ports", "packets", "bytes", "pps", "bit/s"]]
        for b in t["binds"]:
            rows.append(
                [
                    b["prefix"],
                    b["proto"],
                    _ports(b["port_lo"], b["port_hi"]),
                    b["packets"],
                    b["bytes"],
                    f"{b['pps']:.0f}",
                    human_rate(b["bps"], "b/s"),
                ]
            )
        lines += _render(rows, {3, 4, 5, 6}, "  ")
        rows = [
            [
                "#",
                "backend",
                "state",
                "health",
                "primary",
                "%",
                "secondary",
                "packets",
                "bytes",
                "pps",
                "bit/s",
            ]
        ]
        marks = False
        for b in t["backends"]:
            state = b["state"] + ("*" if b["override"] else "")
            marks = marks or bool(b["override"])
            rows.append(
                [
                    b["index"],
                    b["address"],
                    state,
                    health_word(b),
                    b["primary_rows"],
                    f"{100.0 * b['primary_rows'] / 65536:.2f}",
                    b["secondary_rows"],
                    b["packets"],
                    b["bytes"],
                    f"{b['pps']:.0f}",
                    human_rate(b["bps"], "b/s"),
                ]
            )
        lines.append("")
        lines += _render(rows, {0, 4, 5, 6, 7, 8, 9}, "  ")
        if marks:
            lines.append("  * runtime override (fwd backend ...); the config says: " + ", ".join(
                f"{b['address']} {b['config_state']}" for b in t["backends"] if b["override"]
            ))  # fmt: skip
        down = [
            b for b in t["backends"] if b["health"].get("checked") and b["health"].get("verdict") is False
        ]
        for b in down:
            lines.append(f"  {b['address']} down: {b['health'].get('reason')}")
    if s.get("bgp"):
        from fwd.bgp_cli import render_bgp

        lines.append("")
        lines += render_bgp(s["bgp"])
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        s = c.call("status")
    if args.json:
        _print_json(s)
    else:
        print(render_status(s))
    return 0


# ----------------------------------------------------------------------------------------------
# fwd backend / reload / lookup


def cmd_backend(args: argparse.Namespace) -> int:
    who = f"fwd backend {args.action} (uid {os.getuid()}, pid {os.getpid()})"
    with _client(args) as c:
        r = c.call("backend", action=args.action, table=args.table, address=args.address, who=who)
    if args.json:
        _print_json(r)
    else:
        rows = r["rows_changed"]
        print(
            f"backend {r['address']} (table {r['table']}): {r['previous_state']} -> {r['state']} "
            f"({r['note']}); {rows} row{'' if rows == 1 else 's'} changed, generation {r['generation']}"
        )
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.call("reload", source=f"fwd reload (uid {os.getuid()}, pid {os.getpid()})")
    if args.json:
        _print_json(r)
    elif r["ok"]:
        print(f"reload: ok: {r['message']}")
    if not r["ok"]:
        if not args.json:
            print(
                f"fwd: error: reload refused: {r['message']}; the daemon keeps the previous config",
                file=sys.stderr,
            )
        return 1
    return 0


def lookup_live(args: argparse.Namespace, frame: bytes) -> dict[str, Any]:
    with _client(args) as c:
        return dict(c.call("lookup", frame=frame.hex(), table=args.table))


# ----------------------------------------------------------------------------------------------
# fwd top


def _top_view(s: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    v = s["verdicts"]
    drops = sum(s["drops"].values())
    head = Text.assemble(
        (f"fwd {s['version']}", "bold"),
        f"  pid {s['pid']}  up {human_duration(s['uptime'])}",
        f"  mode {s['mode']} on {', '.join(s['interfaces'])}",
        f"  generation {s['generation']} (acked {s['acked_generation']})",
        f"\nforward {v.get('forward', 0)}  reply {v.get('reply', 0)}  pass {v.get('pass', 0)}  drop {drops}",
        f"  health changes {s['health_changes']}",
    )
    parts: list[Any] = [head]
    for t in s["tables"]:
        vips = Table(title=f"table {t['name']}: VIPs", title_justify="left", expand=False)
        for col, right in (
            ("VIP", False),
            ("proto", False),
            ("ports", False),
            ("pps", True),
            ("bit/s", True),
            ("packets", True),
        ):
            vips.add_column(col, justify="right" if right else "left")
        for b in t["binds"]:
            vips.add_row(
                b["prefix"], b["proto"], _ports(b["port_lo"], b["port_hi"]), f"{b['pps']:.0f}",
                human_rate(b["bps"], "b/s"), str(b["packets"]),
            )  # fmt: skip
        total_pps = sum(b["pps"] for b in t["backends"]) or 1.0
        be = Table(title=f"table {t['name']}: backends", title_justify="left", expand=False)
        for col, right in (
            ("backend", False), ("state", False), ("health", False), ("rows", True), ("pps", True),
            ("share", True), ("bit/s", True), ("packets", True),
        ):  # fmt: skip
            be.add_column(col, justify="right" if right else "left")
        for b in t["backends"]:
            hw = health_word(b)
            style = {"down": "red", "pending": "yellow", "no": "red"}.get(hw, "")
            state = b["state"] + ("*" if b["override"] else "")
            st_style = "yellow" if b["state"] != "active" else ""
            be.add_row(
                b["address"], Text(state, style=st_style), Text(hw, style=style),
                str(b["primary_rows"]), f"{b['pps']:.0f}", f"{100 * b['pps'] / total_pps:.1f}%",
                human_rate(b["bps"], "b/s"), str(b["packets"]),
            )  # fmt: skip
        parts += [vips, be]
    return Group(*parts)


def cmd_top(args: argparse.Namespace) -> int:
    """A live view refreshed every --interval seconds; without a terminal (or with --iterations)
    it prints one view per refresh instead, like ``top -b``."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    n = 0
    try:
        with _client(args) as c:
            s = c.call("status")
            if not console.is_terminal:
                while True:
                    console.print(_top_view(s))
                    n += 1
                    if args.iterations and n >= args.iterations:
                        return 0
                    time.sleep(args.interval)
                    s = c.call("status")
            with Live(_top_view(s), console=console, refresh_per_second=4, screen=False) as live:
                while True:
                    n += 1
                    if args.iterations and n >= args.iterations:
                        return 0
                    time.sleep(args.interval)
                    s = c.call("status")
                    live.update(_top_view(s))
    except KeyboardInterrupt:
        return 0
