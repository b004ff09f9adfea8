"""The lab's scenarios: what an operator does to a running load balancer, and what it costs the
clients. The scenario tests (tests/lab) and ``make demo`` run these same functions.

Each scenario first brings the lab to its baseline (every L4 node running and announcing, every
L7 node active, both routers up), then opens its own batch of long-lived connections (>= 100,
one HTTP request every 100 ms each, lab/traffic.py), checks they are spread over every L4 and L7
node, acts, waits for the network to settle (the routers' routes, polled: liveness timeouts only)
and keeps the traffic running a few more seconds. The outcome counts **broken** connections
(reset, closed, answered by another L7 node, or silent for 30 s) and reports the **longest
stall** (the longest a request waited for its answer). A scenario *holds* when no connection
broke and every check of what the network did (routes withdrawn, new connections avoiding a
drained node, ...) passed. No outcome depends on how long something took.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab import render
from lab import topology as t
from lab.netns import LabError, NetnsLab, Traffic, sh, wait_until

CONNS = 120  # per scenario
HOLD = 3.0  # seconds of traffic after the network settled
WARM = 1.0  # seconds of traffic before acting


@dataclass
class Outcome:
    key: str
    title: str
    conns: int = 0
    broken: list[dict] = field(default_factory=list)
    max_stall: float = 0.0
    requests: int = 0
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    l4_before: dict[str, int] = field(default_factory=dict)  # packets per L4 node before acting
    l4_after: dict[str, int] = field(default_factory=dict)  # ... and after the action
    l7_conns: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return self.conns > 0 and not self.broken and all(ok for _, ok in self.checks)

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        return bool(ok)

    def summary(self) -> str:
        failed = [w for w, ok in self.checks if not ok]
        text = (
            f"{self.key} {self.title}: {self.conns - len(self.broken)}/{self.conns} connections kept, "
            f"{len(self.broken)} broken, longest stall {self.max_stall * 1000:.0f} ms"
        )
        if failed:
            text += "; FAILED: " + "; ".join(failed)
        return text

    def explain(self) -> str:
        lines = [self.summary()]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  check {'ok ' if ok else 'FAIL'}: {w}" for w, ok in self.checks]
        lines += [f"  broken: {b}" for b in self.broken[:10]]
        lines.append(
            f"  packets per L4 node before the action: {_fmt_counts(self.l4_before)}; after: "
            f"{_fmt_counts(self.l4_after)}; connections per L7 node: {_fmt_counts(self.l7_conns)}"
        )
        return "\n".join(lines)


class Scenarios:
    def __init__(
        self,
        lab: NetnsLab,
        traffic: Traffic,
        say: Callable[[str], None] = lambda s: None,
        conns: int = CONNS,
        hold: float = HOLD,
    ) -> None:
        self.lab = lab
        self.traffic = traffic
        self.say = say
        self.conns = conns
        self.hold = hold
        self.web = lab.lab.vip("web")
        self.api = lab.lab.vip("api")
        self._n = 0

    # ------------------------------------------------------------------------------ plumbing

    @property
    def bgp(self) -> bool:
        return render.VIP_ROUTES == "bgp"

    def l4_names(self) -> list[str]:
        return [n.name for n in self.lab.lab.l4]

    def l7_names(self) -> list[str]:
        return [n.name for n in self.lab.lab.l7]

    def all_vips(self, nodes) -> dict[str, set[str]]:
        return {v.address: set(nodes) for v in self.lab.lab.vips}

    def forwarded(self) -> dict[str, int]:
        """Packets each running L4 node forwarded so far (its fwd's counter)."""
        out = {}
        for n in self.l4_names():
            if self.lab.fwd_running(n):
                try:
                    out[n] = int(self.lab.fwd_call(n, "status", timeout=5)["verdicts"]["forward"])
                except Exception:  # a daemon that is stopping: no count
                    pass
        return out

    def backend_all(self, action: str, l7: str, tables=None) -> None:
        """`fwd backend ACTION` for l7 in every table on every running L4 node (through the control
        socket, as the CLI does, without starting a Python per call)."""
        addr = self.lab.lab.node(l7).lan_ip
        for n in self.l4_names():
            if self.lab.fwd_running(n):
                for v in tables or self.lab.lab.vips:
                    self.lab.fwd_call(n, "backend", action=action, table=v.name, address=addr, who="lab")

    def baseline(self) -> None:
        """Every L4 node running, undrained, without overrides; every router up; HAProxy serving."""
        lab = self.lab
        for r in lab.lab.routers:
            if not (lab.procs.get((r.name, "bird")) and lab.procs[(r.name, "bird")].alive()):
                lab.router_return(r.name)
        for n in self.l4_names():
            self.uncrash(n)
            if not lab.fwd_running(n):
                lab.start_fwd(n)
        for n in self.l4_names():
            st = lab.fwd_call(n, "status")
            for ov in st.get("overrides") or []:
                lab.fwd_call(
                    n, "backend", action="clear", table=ov["table"], address=ov["address"], who="lab"
                )
            if self.bgp and (st.get("bgp") or {}).get("drained"):
                lab.fwd_cli(n, "node", "undrain")
        for n in self.l7_names():
            for v in lab.lab.vips:
                lab.haproxy(n, f"enable server app_{v.name}/app")
        lab.wait_routes(self.all_vips(self.l4_names()), timeout=60)
        # every L4 node sees every backend healthy (the same table everywhere)
        wait_until(self._all_healthy, 30, "every backend healthy on every L4 node")

    def _all_healthy(self) -> bool:
        for n in self.l4_names():
            for tb in self.lab.fwd_call(n, "status")["tables"]:
                if not all(b["healthy"] and b["state"] == "active" for b in tb["backends"]):
                    return False
        return True

    def crash_table(self, node: str) -> str:
        chains = []
        for i in self.lab.lab.node(node).ifaces:
            chains.append(
                f'  chain in_{i.name} {{ type filter hook ingress device "{i.name}" priority -1000; '
                "policy drop; }"
            )
            chains.append(
                f'  chain out_{i.name} {{ type filter hook egress device "{i.name}" priority -1000; '
                "policy drop; }"
            )
        return "table netdev lab_crash {\n" + "\n".join(chains) + "\n}\n"

    def crash(self, node: str) -> None:
        """The node dies: from now on nothing enters or leaves it (not even a FIN), and every
        process in it is killed with SIGKILL."""
        import subprocess

        p = subprocess.run(
            ["ip", "netns", "exec", self.lab.ns(node), "nft", "-f", "-"],
            input=self.crash_table(node),
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise LabError(f"nft on {node}: {p.stderr.strip()}")
        self.lab.stop_fwd(node, signal.SIGKILL, timeout=10)
        for pid in self.lab.node_pids(node):
            import os

            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def uncrash(self, node: str) -> None:
        sh("nft", "delete", "table", "netdev", "lab_crash", ns=self.lab.ns(node), check=False)

    # ------------------------------------------------------------------------------ a batch

    def run(
        self, key: str, title: str, act: Callable[[Outcome], None], prepare: Callable[[], None] | None = None
    ) -> Outcome:
        """Baseline (then prepare()), open a batch, act(outcome), hold, report."""
        vip = self.web
        out = Outcome(key, title)
        self.baseline()
        if prepare is not None:
            prepare()
        self._n += 1
        batch = f"s{key}-{self._n}"
        opened = self.traffic.open(batch, self.conns, vip.address, vip.port)
        if opened["failed"]:
            raise LabError(f"{len(opened['failed'])} connections could not be opened: {opened['failed'][:3]}")
        c0 = self.forwarded()
        self.say(
            f"{self.conns} long-lived connections open (one request every 100 ms each), "
            f"served by {_fmt_counts(opened['served_by'])}"
        )
        time.sleep(WARM)
        c1 = self.forwarded()
        out.l4_before = _delta(c0, c1)
        try:
            act(out)
            c2 = self.forwarded()
            time.sleep(self.hold)
        finally:
            rep = self.traffic.report(batch)
            self.traffic.close_batch(batch)
        out.l4_after = _delta(c2, self.forwarded())
        out.conns = rep["conns"]
        out.broken = rep["broken"]
        out.max_stall = rep["max_stall"]
        out.requests = rep["requests"]
        out.l7_conns = rep["served_by"]
        return out

    def spread(self, out: Outcome, before: list[str], after: list[str], l7: list[str]) -> None:
        """The batch crossed every L4 node of `before` before the action and every one of `after`
        after it, and had connections on every L7 node of `l7`."""
        out.check(
            f"before the action, traffic crossed {', '.join(before)}",
            all(out.l4_before.get(n, 0) > 0 for n in before),
        )
        out.check(
            f"after the action, traffic crossed {', '.join(after)}",
            all(out.l4_after.get(n, 0) > 0 for n in after),
        )
        out.check(f"connections on {', '.join(l7)}", all(out.l7_conns.get(n, 0) > 0 for n in l7))

    # ------------------------------------------------------------------------------ scenarios

    def add_l4(self, node: str = "l4-3") -> Outcome:
        others = [n for n in self.l4_names() if n != node]

        def prepare() -> None:
            self.lab.stop_fwd(node)
            self.lab.wait_routes(self.all_vips(others))

        def act(out: Outcome) -> None:
            self.say(
                f"Starting fwd on {node}. It checks its backends, then announces the VIPs; both routers "
                f"add it to their ECMP routes and move about a third of the flows onto it. {node} sends "
                "each of them to the same L7 node as the others did: same table, same hash."
            )
            t0 = time.monotonic()
            self.lab.start_fwd(node)
            self.lab.wait_routes(self.all_vips(self.l4_names()))
            out.notes.append(
                f"{node} in both routers' ECMP routes {time.monotonic() - t0:.1f} s after its start"
            )

        self.say(
            f"Scenario 1 — add an L4 node. First {node} is taken out (SIGTERM), so that it can be added back."
        )
        out = self.run("1", f"add an L4 node ({node})", act, prepare)
        self.spread(out, others, self.l4_names(), self.l7_names())
        return out

    def remove_l4(self, node: str = "l4-3") -> Outcome:
        others = [n for n in self.l4_names() if n != node]

        def act(out: Outcome) -> None:
            self.say(
                f"SIGTERM to fwd on {node}: it withdraws the VIPs first (the routers move its flows to "
                f"the other L4 nodes), keeps forwarding for drain_wait = {t.DRAIN_WAIT:g} s for packets "
                "still on their way, then stops."
            )
            p = self.lab.procs[(node, "fwd")]
            t0 = time.monotonic()
            p.signal(signal.SIGTERM)
            gone_at = exit_at = None
            deadline = t0 + 60
            while (gone_at is None or exit_at is None) and time.monotonic() < deadline:
                now = time.monotonic()
                if gone_at is None and all(
                    self.lab.routes(r.name, self.web.address) == set(others) for r in self.lab.lab.routers
                ):
                    gone_at = now - t0
                if exit_at is None and not p.alive():
                    exit_at = now - t0
                time.sleep(0.05)
            out.notes.append(
                f"routes without {node} after {_s(gone_at)}, fwd exited after {_s(exit_at)}"
                f" (exit status {p.popen.returncode if p.popen else '?'})"
            )
            out.check(
                f"the routers dropped {node} before its fwd stopped",
                gone_at is not None and exit_at is not None and gone_at < exit_at,
            )
            out.check(f"fwd on {node} exited with status 0", p.popen is not None and p.popen.returncode == 0)
            self.lab.wait_routes(self.all_vips(others))

        self.say(f"Scenario 2 — remove an L4 node gracefully ({node}).")
        out = self.run("2", f"remove an L4 node gracefully ({node}, SIGTERM)", act)
        self.spread(out, self.l4_names(), others, self.l7_names())
        return out

    def kill_l4(self, node: str = "l4-2") -> Outcome:
        others = [n for n in self.l4_names() if n != node]

        def act(out: Outcome) -> None:
            self.say(
                f"{node} dies: its network goes silent and every process in it gets SIGKILL (fwd, and "
                f"ExaBGP with it). Nobody withdraws anything: the routers keep sending a third of the flows "
                f"into the void until the BGP hold timer ({t.BGP_HOLD} s) expires. TCP retransmits; the "
                "retransmissions then reach another L4 node, which picks the same L7 node."
            )
            t0 = time.monotonic()
            self.crash(node)
            try:
                wait_until(lambda: not self.lab.node_pids(node), 10, f"every process of {node} to end")
                out.check(f"nothing left running in {node} after SIGKILL", True)
            except LabError:
                out.check(f"nothing left running in {node} after SIGKILL", False)
                out.notes.append(f"left running in {node}: {self.lab.node_pids(node)}")
            self.lab.wait_routes(self.all_vips(others), timeout=60)
            out.notes.append(
                f"routes without {node} after {time.monotonic() - t0:.1f} s (BGP hold time {t.BGP_HOLD} s)"
            )

        self.say(f"Scenario 3 — kill an L4 node ({node}).")
        out = self.run("3", f"kill an L4 node ({node}, SIGKILL)", act)
        self.spread(out, self.l4_names(), others, self.l7_names())
        return out

    def add_l7(self, node: str = "l7-4") -> Outcome:
        others = [n for n in self.l7_names() if n != node]

        def act(out: Outcome) -> None:
            self.say(
                f"{node} joins: every L4 node marks it 'filling'. It takes over about a quarter of the "
                "table's rows as primary; the old owner becomes the row's secondary. A packet of an "
                f"existing connection now reaches {node} first, which finds no socket for it and passes it "
                "on to the secondary (fwd-redirect's second chance): old connections stay where they are, "
                f"new ones land on {node}."
            )
            self.backend_all("fill", node)
            time.sleep(1.0)
            probe = self.traffic.probe(40, self.web.address, self.web.port)
            out.notes.append(f"new connections while filling: {_fmt_counts(probe['served_by'])}")
            out.check(f"new connections reach {node} while it fills", probe["served_by"].get(node, 0) > 0)
            out.check(
                "every new connection was served", not any(k.startswith("error") for k in probe["served_by"])
            )
            self.say(f"{node} becomes 'active' (the same rows: nothing moves).")
            self.backend_all("activate", node)

        self.say(f"Scenario 4 — add an L7 node ({node}). It starts out of rotation ('inactive').")
        out = self.run(
            "4",
            f"add an L7 node ({node}: filling, then active)",
            act,
            lambda: self.backend_all("deactivate", node),
        )
        out.check(f"no connection of the batch was on {node} before it joined", node not in out.l7_conns)
        self.spread(out, self.l4_names(), self.l4_names(), others)
        self.backend_all("clear", node)
        return out

    def drain_l7(self, node: str = "l7-1") -> Outcome:
        def act(out: Outcome) -> None:
            self.say(
                f"Draining {node} on every L4 node: its rows get their secondary as primary and keep "
                f"{node} as the GUE hop, so its connections still reach it through the second chance "
                "while new connections go elsewhere."
            )
            self.backend_all("drain", node)
            time.sleep(1.0)
            probe = self.traffic.probe(40, self.web.address, self.web.port)
            out.notes.append(f"new connections while {node} drains: {_fmt_counts(probe['served_by'])}")
            out.check(f"no new connection reaches {node}", probe["served_by"].get(node, 0) == 0)
            out.check(
                "every new connection was served", not any(k.startswith("error") for k in probe["served_by"])
            )

        self.say(f"Scenario 5 — drain an L7 node ({node}).")
        out = self.run("5", f"drain an L7 node ({node})", act)
        self.spread(out, self.l4_names(), self.l4_names(), self.l7_names())
        out.check(f"{node} kept serving its connections", out.l7_conns.get(node, 0) > 0)
        self.backend_all("clear", node)
        return out

    def lose_router(self, router: str = "r1") -> Outcome:
        def act(out: Outcome) -> None:
            self.say(
                f"{router} loses power: BIRD dies and every link of {router} goes down. The clients' and "
                f"the L7 nodes' routes through it die with the links; the other router carries everything. "
                "Its ECMP hash puts many flows on a different L4 node than before: same decision there."
            )
            self.lab.router_lose(router)
            time.sleep(self.hold)
            self.say(
                f"{router} comes back: links to the L4 nodes and BIRD first; the client link only once "
                "BGP has given it the VIP routes, so that it never attracts traffic it cannot deliver."
            )
            t0 = time.monotonic()
            self.lab.router_return(router)
            out.notes.append(f"{router} back in service {time.monotonic() - t0:.1f} s after BIRD restarted")

        self.say(f"Scenario 6 — lose a router ({router}).")
        out = self.run("6", f"lose a router ({router}), and get it back", act)
        self.spread(out, self.l4_names(), self.l4_names(), self.l7_names())
        return out

    def no_healthy_backend(self) -> Outcome:
        api, web = self.api, self.web

        def act(out: Outcome) -> None:
            self.say(
                f"The '{api.name}' service fails on every L7 node (HAProxy's servers for it disabled). "
                f"fwd's health checks see /healthz/{api.name} fail on every backend: with no healthy "
                f"backend left, every L4 node withdraws {api.address}; '{web.name}' is untouched."
            )
            for n in self.l7_names():
                self.lab.haproxy(n, f"disable server app_{api.name}/app")
            t0 = time.monotonic()
            want = {api.address: set(), web.address: set(self.l4_names())}
            try:
                self.lab.wait_routes(want)
                out.check(f"every L4 node withdrew {api.address}", True)
                out.notes.append(f"{api.address} gone from both routers after {time.monotonic() - t0:.1f} s")
            except LabError as e:
                out.check(f"every L4 node withdrew {api.address}", False)
                out.notes.append(str(e))
            for n in self.l7_names():
                self.lab.haproxy(n, f"enable server app_{api.name}/app")
            t0 = time.monotonic()
            self.lab.wait_routes(self.all_vips(self.l4_names()))
            out.notes.append(
                f"{api.address} announced again {time.monotonic() - t0:.1f} s after the service returned"
            )

        self.say("Also — no healthy backend for a VIP.")
        out = self.run("7", f"no healthy backend for {api.address}: every L4 node withdraws it", act)
        self.spread(out, self.l4_names(), self.l4_names(), self.l7_names())
        return out

    def node_drain(self, node: str = "l4-1") -> Outcome:
        others = [n for n in self.l4_names() if n != node]

        def act(out: Outcome) -> None:
            self.say(
                f"`fwd node drain` on {node}: it withdraws every VIP but keeps forwarding what still "
                "arrives; the routers move its flows to the other L4 nodes. `fwd node undrain` brings it "
                "back."
            )
            t0 = time.monotonic()
            self.lab.fwd_cli(node, "node", "drain")
            try:
                self.lab.wait_routes(self.all_vips(others))
                out.check(f"`fwd node drain` withdrew {node}'s routes", True)
                out.notes.append(f"routes without {node} after {time.monotonic() - t0:.1f} s")
            except LabError as e:
                out.check(f"`fwd node drain` withdrew {node}'s routes", False)
                out.notes.append(str(e))
            time.sleep(0.5)
            c0 = self.forwarded()
            time.sleep(1.0)
            idle = _delta(c0, self.forwarded())
            out.notes.append(f"packets forwarded in 1 s while {node} was drained: {_fmt_counts(idle)}")
            out.check(f"the routers sent nothing to {node} while it was drained", idle.get(node, 0) == 0)
            self.lab.fwd_cli(node, "node", "undrain")
            self.lab.wait_routes(self.all_vips(self.l4_names()))

        self.say(f"Also — drain an L4 node through the CLI ({node}).")
        out = self.run("8", f"`fwd node drain` / `undrain` on {node}", act)
        self.spread(out, self.l4_names(), self.l4_names(), self.l7_names())
        return out

    def all(self) -> list[Outcome]:
        return [
            self.add_l4(),
            self.remove_l4(),
            self.kill_l4(),
            self.add_l7(),
            self.drain_l7(),
            self.lose_router(),
            self.no_healthy_backend(),
            self.node_drain(),
        ]


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Counter growth per node from a to b (a node whose fwd restarted counts from 0)."""
    return {n: b[n] - a.get(n, 0) if b[n] >= a.get(n, 0) else b[n] for n in b}


def _fmt_counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "nobody"


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"
