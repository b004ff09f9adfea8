"""The scenarios of the multi-tier lab (lab/scenarios.py), each with its own 120 long-lived TCP
connections (HAProxy in front of the lab's app on the L7 nodes; one HTTP request every 100 ms per
connection), spread over the three L4 and four L7 nodes:

1. add an L4 node; 2. remove one gracefully (SIGTERM: withdraw, drain, stop); 3. kill one (its
network goes silent, SIGKILL: the routers drop it at the BGP hold timer); 4. add an L7 node
(filling, then active); 5. drain an L7 node; 6. lose a router (and get it back); also: no healthy
backend for a VIP withdraws it on every L4 node, and `fwd node drain` withdraws a node.

Each asserts 0 broken connections and the checks of what the network did; the longest stall is
reported (end of the pytest run). test_dsr checks the replies never pass an L4 node.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from lab import netns
from lab.scenarios import Scenarios


@pytest.fixture(scope="module")
def scenarios(lab, traffic):
    return Scenarios(lab, traffic, say=lambda s: print(f"  {s}"))


@pytest.fixture
def held(outcomes):
    def check(out) -> None:
        outcomes.append(out.summary())
        print(out.explain())
        assert out.held, out.explain()

    return check


def test_add_l4_node(scenarios, held):
    held(scenarios.add_l4())


def test_remove_l4_node_gracefully(scenarios, held):
    held(scenarios.remove_l4())


def test_kill_l4_node(scenarios, held):
    held(scenarios.kill_l4())


def test_add_l7_node(scenarios, held):
    held(scenarios.add_l7())


def test_drain_l7_node(scenarios, held):
    held(scenarios.drain_l7())


def test_lose_router(scenarios, held):
    held(scenarios.lose_router())


def test_no_healthy_backend_withdraws_vip(scenarios, held):
    held(scenarios.no_healthy_backend())


def test_node_drain_cli_withdraws(scenarios, held):
    held(scenarios.node_drain())


# ------------------------------------------------------------------------------------- DSR


class Tap:
    """Counts IPv4 frames from any of `sources` on one interface of a namespace (both directions)."""

    def __init__(self, ns: str, ifname: str, sources: set[str]):
        self.sources = {socket.inet_aton(s) for s in sources}
        self.count = 0
        self.sock = netns.in_netns(ns, lambda: self._open(ifname))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _open(ifname: str) -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: outgoing too
        s.bind((ifname, 3))
        s.settimeout(0.1)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if (
                len(frame) >= 34
                and struct.unpack_from("!H", frame, 12)[0] == 0x0800
                and frame[26:30] in self.sources
            ):
                self.count += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        return self.count


def test_dsr_replies_bypass_l4_nodes(lab, traffic, scenarios, outcomes):
    """While connections exchange data, no frame from a VIP crosses any interface of an L4 node,
    and the L7 nodes send such frames (the replies) on their own links to the routers."""
    scenarios.baseline()
    vips = {v.address for v in lab.lab.vips}
    l4_taps = [Tap(lab.ns(n.name), i.name, vips) for n in lab.lab.l4 for i in n.ifaces]
    l7_taps = [Tap(lab.ns(n.name), r, vips) for n in lab.lab.l7 for r in ("r1", "r2")]
    web = lab.lab.vip("web")
    traffic.open("dsr", 60, web.address, web.port)
    time.sleep(2)
    rep = traffic.report("dsr")
    traffic.close_batch("dsr")
    through_l4 = sum(t.stop() for t in l4_taps)
    from_l7 = sum(t.stop() for t in l7_taps)
    outcomes.append(
        f"DSR: {rep['requests']} requests; reply frames on the L7 nodes' router links: {from_l7}, "
        f"on any L4 node: {through_l4}"
    )
    assert not rep["broken"], rep["broken"]
    assert from_l7 >= rep["requests"] > 0
    assert through_l4 == 0
