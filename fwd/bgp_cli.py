"""``fwd node drain`` / ``fwd node undrain`` (through the daemon's control API) and the BGP part of
``fwd status`` (docs/bgp.md).

``fwd node drain`` withdraws every VIP of this node from its BGP peers and returns once ExaBGP
reports the withdraw sent to every established peer (or after ``bgp.withdraw_timeout``); the
data plane keeps forwarding what still arrives. ``fwd node undrain`` announces them again (the
VIPs that have a healthy backend). A daemon restart forgets the drain.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

__all__ = ["add_parser", "cmd_node", "render_bgp"]

CONTROL_HELP = "the daemon's control socket (default: $FWD_CONTROL_SOCKET, else /run/fwd/fwd.sock)"


def add_parser(sub: Any) -> None:
    nd = sub.add_parser(
        "node",
        help="drain or undrain this L4 node: withdraw / announce its VIPs over BGP",
        description="drain: the running daemon withdraws every VIP from its BGP peers (ExaBGP) and "
        "answers once the withdraw was sent to every established peer; traffic that still arrives "
        "is forwarded. undrain: the VIPs that have a healthy backend are announced again. Needs a "
        "[bgp] section in the config (docs/bgp.md). A restart of the daemon forgets the drain.",
    )
    nd.add_argument("action", choices=("drain", "undrain"), help="what to do")
    nd.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    nd.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    nd.set_defaults(func=cmd_node)


def cmd_node(args: argparse.Namespace) -> int:
    from fwd.cli import _ctl  # the daemon's refusals become one `fwd: error:` line, status 1

    return int(_ctl(lambda: _node(args)))


def _node(args: argparse.Namespace) -> int:
    from fwd.ctl import _client

    who = f"fwd node {args.action} (uid {os.getuid()}, pid {os.getpid()})"
    with _client(args) as c:
        r = c.call("node", action=args.action, who=who)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    drained = r["drained"]
    verb = "withdrawn" if drained else "announced"
    state = "drained" if drained else "active"
    if not r["changed"]:
        state += " (it already was)"
    print(f"node {state}")
    for v in r["vips"]:
        peers = ", ".join(v["advertised_to"]) or "no peer"
        if v["announce"]:
            print(f"  {v['prefix']}: announced, sent to {peers}")
        else:
            print(f"  {v['prefix']}: withdrawn ({v['reason']}); still advertised to: {peers}"
                  if v["advertised_to"] else f"  {v['prefix']}: withdrawn ({v['reason']})")  # fmt: skip
    if not r["settled"]:
        down = [p["address"] for p in r["peers"] if p["state"] != "up"]
        print(
            f"fwd: warning: not every peer was sent the routes within {r['seconds']:g}s"
            + (f" (not established: {', '.join(down)})" if down else ""),
        )
    elif r["vips"]:
        print(f"{verb} in {r['seconds'] * 1000:.0f} ms")
    return 0


def _ago(t: float | None) -> str:
    if t is None:
        return "-"
    from fwd.ctl import human_duration

    return human_duration(max(0.0, time.time() - t))


def render_bgp(b: dict[str, Any]) -> list[str]:
    """The lines ``fwd status`` prints for the daemon's ``bgp`` object."""
    from fwd.ctl import _render

    e = b["exabgp"]
    if e["running"]:
        ex = f"ExaBGP pid {e['pid']}, up {_ago(e['started'])}" + (
            "" if e["api_connected"] else ", API not connected"
        )
    else:
        ex = "ExaBGP NOT RUNNING" + (f" (last: {e['last_exit']})" if e["last_exit"] else "")
    node = "DRAINED (fwd node drain)" if b["drained"] else "stopping" if b["stopping"] else "active"
    lines = [
        f"bgp: AS {b['local_as']}, router id {b['router_id']}; node {node}; {ex}; restarts {e['restarts']}"
    ]
    rows: list[list[object]] = [["peer", "AS", "state", "since", "routes", "ups", "downs"]]
    for p in b["peers"]:
        state = p["state"] + (f" ({p['reason']})" if p["reason"] and p["state"] != "up" else "")
        rows.append(
            [p["address"], p["peer_as"], state, _ago(p["since"]), len(p["advertised"]), p["ups"], p["downs"]]
        )
    lines += _render(rows, {1, 4, 5, 6}, "  ")
    rows = [["VIP", "route", "sent to", "why"]]
    for v in b["vips"]:
        rows.append(
            [
                v["prefix"],
                "announce" if v["announce"] else "withdrawn",
                ", ".join(v["advertised_to"]) or "-",
                v["reason"],
            ]
        )
    lines += _render(rows, set(), "  ")
    if b.get("last_error"):
        lines.append(f"  last command ExaBGP refused: {b['last_error']}")
    return lines
