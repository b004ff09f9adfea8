"""``make demo``: the lab up, real client traffic with a live view, every scenario explained as it
happens, a table of connections kept and broken per scenario, the lab down. Exit status 0 when
every scenario held (no connection broke, every check passed), 1 otherwise.

The live view: per L4 node the packets per second its fwd forwards (fwd's own counters, over the
control socket; an L4 node sees packets, not requests: a request is about two client packets, the
request and the ACK of the answer), per L7 node the requests per second it answered (counted by
the clients from the answers, which name the node), the connections open and broken, and which
L4 nodes each router's ECMP route for each VIP uses right now.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lab import netns, render
from lab import topology as t
from lab.scenarios import Outcome, Scenarios

BACKGROUND = 40  # connections kept open through the whole demo


class Sampler:
    """Samples the lab once a second on a thread of its own; the view reads the last sample."""

    def __init__(self, lab: netns.NetnsLab, traffic: netns.Traffic) -> None:
        self.lab = lab
        self.traffic = traffic
        self.state: dict[str, Any] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._prev: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.sample()
            except Exception as e:  # never let the view stop the demo
                self.state["error"] = str(e)

    def sample(self) -> None:
        now = time.monotonic()
        c = self.traffic.counters()
        fwd: dict[str, int | None] = {}
        for n in self.lab.lab.l4:
            try:
                fwd[n.name] = int(self.lab.fwd_call(n.name, "status", timeout=2)["verdicts"]["forward"])
            except Exception:
                fwd[n.name] = None
        routes = {}
        for r in self.lab.lab.routers:
            try:
                table = self.lab.route_table(r.name)
                routes[r.name] = {v.name: sorted(table.get(f"{v.address}/32", ())) for v in self.lab.lab.vips}
            except Exception:
                routes[r.name] = None
        prev = self._prev
        dt = now - prev["t"] if prev else 0
        l7_rate = {}
        l4_rate: dict[str, float | None] = {}
        if dt > 0:
            for n in self.lab.lab.l7:
                l7_rate[n.name] = max(0, c["answers"].get(n.name, 0) - prev["answers"].get(n.name, 0)) / dt
            for n, v in fwd.items():
                p = prev["fwd"].get(n)
                l4_rate[n] = None if v is None else (max(0, v - p) / dt if p is not None and v >= p else 0.0)
        self._prev = {"t": now, "answers": dict(c["answers"]), "fwd": fwd}
        self.state = {"at": now, "clients": c, "l7": l7_rate, "l4": l4_rate, "routes": routes}

    def view(self, scenario: str) -> Panel:
        s = self.state
        top = Text()
        top.append(f"+{time.monotonic() - self.started:4.0f} s  ", style="dim")
        top.append(scenario or "", style="bold")
        if not s:
            return Panel(top, title="fwd lab — live")
        c = s["clients"]
        total = sum(s["l7"].values())
        line = Text(f"clients: {c['open']} connections open, {total:.0f} requests/s, ")
        line.append(f"{c['errors']} broken", style="red bold" if c["errors"] else "green")
        l4 = Table(box=None, pad_edge=False, show_edge=False)
        l4.add_column("L4 node")
        l4.add_column("fwd")
        l4.add_column("packets/s", justify="right")
        for n in self.lab.lab.l4:
            rate = s["l4"].get(n.name)
            running = self.lab.fwd_running(n.name)
            l4.add_row(
                n.name,
                Text("running" if running else "down", style="green" if running else "red"),
                "-" if rate is None else f"{rate:.0f}",
            )
        l7 = Table(box=None, pad_edge=False, show_edge=False)
        l7.add_column("L7 node")
        l7.add_column("requests/s", justify="right")
        for n in self.lab.lab.l7:
            l7.add_row(n.name, f"{s['l7'].get(n.name, 0):.0f}")
        grid = Table.grid(padding=(0, 6))
        grid.add_row(l4, l7)
        routes = Text()
        for r in self.lab.lab.routers:
            got = s["routes"].get(r.name)
            routes.append(f"\n{r.name} ECMP: ")
            if got is None:
                routes.append("?", style="red")
                continue
            for v in self.lab.lab.vips:
                hops = " ".join(got[v.name])
                routes.append(f"{v.name} {v.address} → ")
                routes.append(hops or "no route", style="" if hops else "red")
                routes.append("   ")
        return Panel(Group(top, line, grid, routes), title="fwd lab — live", expand=False)


def results_table(outcomes: list[Outcome], background: dict | None) -> Table:
    tb = Table(title="connections kept and broken, per scenario")
    for col, just in (
        ("#", "right"),
        ("scenario", "left"),
        ("connections", "right"),
        ("kept", "right"),
        ("broken", "right"),
        ("longest stall", "right"),
        ("held", "left"),
    ):
        tb.add_column(col, justify=just)  # type: ignore[arg-type]
    for o in outcomes:
        tb.add_row(
            o.key,
            o.title,
            str(o.conns),
            str(o.conns - len(o.broken)),
            str(len(o.broken)),
            f"{o.max_stall * 1000:.0f} ms",
            Text("yes", style="green") if o.held else Text("NO", style="red bold"),
        )
    if background is not None:
        n, b = background["conns"], len(background["broken"])
        tb.add_row(
            "",
            f"{n} connections held open through the whole demo",
            str(n),
            str(n - b),
            str(b),
            f"{background['max_stall'] * 1000:.0f} ms",
            Text("yes", style="green") if b == 0 else Text("NO", style="red bold"),
        )
    return tb


INTRO = f"""\
[bold]fwd — the multi-tier lab[/bold] (network namespaces on this machine; the same lab for containerlab
is in containerlab/). Clients → two routers (BIRD 2, ECMP) → three L4 nodes (fwd + ExaBGP) → GUE →
four L7 nodes (fwd-redirect + HAProxy + a small app); replies go straight from the L7 nodes back to
the clients. VIPs: {", ".join(f"{v.name} {v.address}:{v.port}" for v in t.VIPS)}. Each scenario runs with its
own {{conns}} long-lived connections (a request every 100 ms each); a broken connection is one that
was reset, closed, silent for 30 s, or answered by another L7 node than before."""


def run_demo(prefix: str = netns.DEFAULT_PREFIX, run_dir: Path = netns.DEFAULT_RUN_DIR) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=110)
    if os.geteuid() != 0:
        console.print("[red]make demo needs root[/red] (network namespaces, XDP, BGP on port 179)")
        return 1
    console.print(INTRO.format(conns=120))
    if render.VIP_ROUTES != "bgp":
        console.print(
            "[yellow]note: the routers use static ECMP routes (fwd's BGP is not wired in yet): "
            "scenarios that need withdrawals are expected to fail[/yellow]"
        )
    lab = netns.NetnsLab(prefix=prefix, run_dir=run_dir, log=lambda m: console.print(f"[dim]lab:[/dim] {m}"))
    traffic = None
    sampler = None
    outcomes: list[Outcome] = []
    background = None
    t0 = time.monotonic()
    try:
        console.print(
            "[bold]Bringing the lab up[/bold] (namespaces, links, BIRD, HAProxy, fwd-redirect, fwd)…"
        )
        lab.up()
        traffic = lab.traffic()
        current = {"text": "warming up"}
        plain = not console.is_terminal

        def say(text: str) -> None:
            if text.startswith(("Scenario", "Also")):
                current["text"] = text
                console.rule(text)
            else:
                console.print(f"  {text}")

        sc = Scenarios(lab, traffic, say=say)
        web = t.VIPS[0]
        sc.baseline()
        sc.backend_all("deactivate", t.L7_NODES[-1])
        traffic.open("demo", BACKGROUND, web.address, web.port)
        console.print(
            f"{BACKGROUND} connections stay open through the whole demo. They were opened while "
            f"{t.L7_NODES[-1]} was out of rotation ('inactive'): taking a node out abruptly like that breaks "
            "the connections on it — draining is the graceful way — and scenario 4 does it again."
        )
        sampler = Sampler(lab, traffic)
        sampler.sample()
        sampler.start()

        live = (
            contextlib.nullcontext()
            if plain
            else Live(
                get_renderable=lambda: sampler.view(current["text"]), console=console, refresh_per_second=2
            )
        )
        with live:
            time.sleep(3)
            if plain:
                console.print(sampler.view(current["text"]))
            for i, fn in enumerate(
                (
                    sc.add_l4,
                    sc.remove_l4,
                    sc.kill_l4,
                    sc.add_l7,
                    sc.drain_l7,
                    sc.lose_router,
                    sc.no_healthy_backend,
                    sc.node_drain,
                ),
                start=1,
            ):
                try:
                    o = fn()
                except Exception as e:  # the demo goes on; the scenario did not hold
                    o = Outcome(str(i), fn.__name__.replace("_", " "))
                    o.check(f"ran to the end ({type(e).__name__}: {e})", False)
                outcomes.append(o)
                style = "green" if o.held else "red bold"
                console.print(Text(f"  → {o.summary()}", style=style))
                for n in o.notes:
                    console.print(f"    [dim]{n}[/dim]")
                for what, ok in o.checks:
                    if not ok:
                        console.print(f"    [red]failed: {what}[/red]")
                if plain:
                    console.print(sampler.view(current["text"]))
            current["text"] = "done"
        background = traffic.report("demo")
    except Exception as e:  # the lab did not come up, or broke: say why, clean up, fail
        console.print(f"[red bold]the demo stopped: {type(e).__name__}: {e}[/red bold]")
    finally:
        if sampler is not None:
            sampler.stop()
        if traffic is not None:
            traffic.close()
        console.print("[bold]Tearing the lab down[/bold]…")
        lab.destroy()
    console.print(results_table(outcomes, background))
    for c in (background or {}).get("broken", [])[:5]:
        console.print(f"[red]broken background connection[/red] {c}")
    ok = (
        bool(outcomes)
        and all(o.held for o in outcomes)
        and background is not None
        and not background["broken"]
    )
    console.print(
        f"{'[green]every scenario held[/green]' if ok else '[red]not every scenario held[/red]'} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    return 0 if ok else 1


def print_status(lab: netns.NetnsLab) -> int:
    console = Console()
    tb = Table(title="the lab (lab/topology.py)")
    for col in ("node", "role", "addresses", "runs", "now"):
        tb.add_column(col)
    present = set(netns.netns_list())
    for name, role, addrs, procs in netns.node_summary():
        ns = lab.ns(name)
        now = "-"
        if ns in present:
            now = (
                ", ".join(sorted({cmd.split()[0].rsplit("/", 1)[-1] for cmd in lab.node_pids(name).values()}))
                or "up"
            )
        tb.add_row(name, role, addrs, procs, now)
    console.print(tb)
    return 0
