"""fwd.nexthop follows the kernel: a neighbour event re-resolves only the backends behind that
neighbour; a route event re-resolves all of them.

One namespace with a veth (the other end in a second namespace): 40 backends on-link, each with
a permanent neighbour entry, and 10 behind a gateway (one permanent entry). The resolver runs its
watcher on a loop inside the namespace; the test changes entries with `ip` and counts which
backends the resolver looked up again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess

import pytest

from fwd.nexthop import NextHopResolver
from tests.netns import topology as tp

ONLINK = [ipaddress.ip_address(f"10.97.1.{i}") for i in range(1, 41)]
BEHIND = [ipaddress.ip_address(f"10.98.50.{i}") for i in range(1, 11)]
GATEWAY = "10.97.0.254"


def mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def mac_bytes(i: int) -> bytes:
    return bytes.fromhex(mac(i).replace(":", ""))


class Counting(NextHopResolver):
    """A resolver that records every backend it looks up."""

    def __init__(self) -> None:
        super().__init__(probe=False)
        self.looked_up: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []

    async def _resolve(self, addr, cache):
        self.looked_up.append(addr)
        return await super()._resolve(addr, cache)


@pytest.fixture
def nsname(netns_ok):
    ns, peer = f"{tp.prefix_for_run()}nh", f"{tp.prefix_for_run()}nhpeer"
    try:
        for n in (ns, peer):
            tp.ip("netns", "add", n)
        tp.ip("link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", peer, ns=ns)
        tp.ip("addr", "add", "10.97.0.1/16", "dev", "a0", ns=ns)
        tp.ip("link", "set", "a0", "up", ns=ns)
        tp.ip("link", "set", "b0", "up", ns=peer)
        tp.ip("route", "add", "10.98.50.0/24", "via", GATEWAY, ns=ns)
        for i, a in enumerate(ONLINK):
            tp.ip("neigh", "add", str(a), "lladdr", mac(i), "dev", "a0", "nud", "permanent", ns=ns)
        tp.ip("neigh", "add", GATEWAY, "lladdr", mac(999), "dev", "a0", "nud", "permanent", ns=ns)
        yield ns
    finally:
        for n in (ns, peer):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_neighbour_event_resolves_only_its_backends(nsname):
    async def scenario():
        r = Counting()
        r.set_targets([*ONLINK, *BEHIND])
        hops = await r.resolve_all()
        assert all(h.usable for h in hops.values()), [h.describe() for h in hops.values() if not h.usable]
        changes: asyncio.Queue = asyncio.Queue()
        watcher = asyncio.create_task(r.watch(changes.put_nowait))
        await asyncio.sleep(0.3)  # subscribed

        async def ip(*args: str) -> None:
            p = await asyncio.create_subprocess_exec("ip", "-n", nsname, *args)
            assert await p.wait() == 0

        try:
            # one on-link backend's neighbour: that backend only
            r.looked_up.clear()
            await ip("neigh", "replace", str(ONLINK[7]), "lladdr", mac(500), "dev", "a0", "nud", "permanent")
            got = await asyncio.wait_for(changes.get(), 10)
            assert set(got) == {ONLINK[7]} and got[ONLINK[7]].dst_mac == mac_bytes(500)
            assert r.looked_up == [ONLINK[7]]
            assert r.hops[ONLINK[7]].dst_mac == mac_bytes(500) and r.hops[ONLINK[8]].dst_mac == mac_bytes(8)

            # the gateway's entry: every backend behind it, none of the on-link ones
            r.looked_up.clear()
            await ip("neigh", "replace", GATEWAY, "lladdr", mac(501), "dev", "a0", "nud", "permanent")
            got = await asyncio.wait_for(changes.get(), 10)
            assert set(got) == set(BEHIND)
            assert all(h.dst_mac == mac_bytes(501) for h in got.values())
            assert sorted(r.looked_up) == sorted(BEHIND)

            # a route event may change anything: every backend is looked up again
            r.looked_up.clear()
            await ip("route", "add", "10.98.60.0/24", "via", GATEWAY)
            for _ in range(100):
                if len(set(r.looked_up)) == len(ONLINK) + len(BEHIND):
                    break
                await asyncio.sleep(0.05)
            assert set(r.looked_up) == {*ONLINK, *BEHIND}
            assert changes.empty()  # nothing differs after that route
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            r.close()

    tp.in_netns(nsname, lambda: asyncio.run(scenario()))
