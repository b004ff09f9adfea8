"""The namespace fwd-redirect's tc program runs in for BPF_PROG_TEST_RUN (root), shared by
tests/netns/test_redirect_prog.py (crafted frames) and tests/netns/test_hostile_bpf.py (the
hostile-input corpus).

The frames are "received" on v0 (IPv4 and IPv6 forwarding on, permanent neighbours for the next
hops, so bpf_fib_lookup succeeds and gives the MACs) or v1 (forwarding off: the program falls back
to bpf_redirect_neigh on the receiving interface). The rig holds real sockets: listeners on the
VIPs (port 80) and an established connection per family, so the program's socket lookups have
something to find.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.netns import topology as tp

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
GUE_PORT = 19523

MAC0, MAC0P = "02:77:00:00:00:02", "02:77:00:00:00:fe"  # v0 (forwarding on) and its peer
MAC1, MAC1P = "02:78:00:00:00:02", "02:78:00:00:00:fe"  # v1 (forwarding off)
L4_MAC = "02:77:00:00:00:01"
NEIGH_MAC = "02:77:00:00:00:03"  # permanent neighbour entry of every next hop on v0
SELF4, SELF6 = "10.7.0.2", "fd07::2"  # v0's addresses: the outer destination of GUE to this node
SELF4_V1, SELF6_V1 = "10.8.0.2", "fd08::2"
L4_4, L4_6 = "10.7.0.1", "fd07::1"  # allowed L4 node
ROGUE4, ROGUE6 = "10.7.0.9", "fd07::9"  # not allowed
HOP4, HOP6 = "10.7.0.3", "fd07::3"
HOP4B, HOP6B = "10.7.0.4", "fd07::4"
HOP4_V1, HOP6_V1 = "10.8.0.3", "fd08::3"
VIP4, VIP6 = "10.100.0.1", "fd99:100::1"
CLIENT4, CLIENT6 = "10.66.0.50", "fd66::50"  # local addresses, so the rig can hold real connections
OTHER4, OTHER6 = "10.66.0.77", "fd66::77"  # clients without any socket
SRC6_EXPLICIT = "fd07::aaaa"  # a configured IPv6 source for cross-family forwarding


@dataclass
class Rig:
    ns: str
    prog: object
    ifindex: dict[str, int] = field(default_factory=dict)
    sockets: list[socket.socket] = field(default_factory=list)
    conn: dict[int, tuple[str, int]] = field(default_factory=dict)  # family -> client (addr, port)

    def run(self, frame: bytes, ifname: str = "v0") -> tuple[int, bytes, dict[str, int]]:
        """(verdict, output frame, counter deltas) of one frame through the program."""
        before = self.prog.counters()
        rc, out = tp.in_netns(self.ns, lambda: self.prog.run(frame, self.ifindex[ifname]))
        after = self.prog.counters()
        return rc, out, {k: after[k] - before[k] for k in after if after[k] != before[k]}

    def configure(self, sources=()) -> None:
        from fwd.redirect import Source

        allow = [ipaddress.ip_network(f"{L4_4}/32"), ipaddress.ip_network(f"{L4_6}/128"),
                 ipaddress.ip_network("10.8.0.1/32"), ipaddress.ip_network("fd08::1/128")]  # fmt: skip
        self.prog.configure(allow, [Source(ipaddress.ip_address(a), m) for a, m in sources])


def build_rig(ns: str) -> None:
    ip = tp.ip
    ip("netns", "add", ns)
    ip("link", "set", "lo", "up", ns=ns)
    for name, mac, peer_mac, a4, a6 in (
        ("v0", MAC0, MAC0P, SELF4, SELF6),
        ("v1", MAC1, MAC1P, SELF4_V1, SELF6_V1),
    ):
        peer = ("peer", "name", name + "p", "address", peer_mac)
        ip("link", "add", name, "address", mac, "type", "veth", *peer, ns=ns)
        ip("addr", "add", f"{a4}/24", "dev", name, ns=ns)
        ip("addr", "add", f"{a6}/64", "dev", name, "nodad", ns=ns)
        ip("link", "set", name, "up", ns=ns)
        ip("link", "set", name + "p", "up", ns=ns)
    for k, v in (
        ("net.ipv4.conf.all.rp_filter", 0),
        ("net.ipv4.conf.v0.rp_filter", 0),
        ("net.ipv4.conf.v0.forwarding", 1),
        ("net.ipv6.conf.v0.forwarding", 1),
        ("net.ipv4.conf.v1.forwarding", 0),
        ("net.ipv6.conf.v1.forwarding", 0),
    ):
        tp.sh("sysctl", "-qw", f"{k}={v}", ns=ns)
    for hop in (HOP4, HOP6, HOP4B, HOP6B, L4_4, L4_6):
        ip("neigh", "replace", hop, "lladdr", NEIGH_MAC, "dev", "v0", "nud", "permanent", ns=ns)
    for a in (f"{VIP4}/32", f"{CLIENT4}/32"):
        ip("addr", "add", a, "dev", "lo", ns=ns)
    for a in (f"{VIP6}/128", f"{CLIENT6}/128"):
        ip("addr", "add", a, "dev", "lo", "nodad", ns=ns)


def connections(rig: Rig) -> None:
    """Listeners on VIP:80 and one established connection per family, held by the rig."""

    def make():
        out = []
        for fam, vip, client in ((socket.AF_INET, VIP4, CLIENT4), (socket.AF_INET6, VIP6, CLIENT6)):
            srv = socket.socket(fam, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((vip, 80))
            srv.listen(16)
            cli = socket.socket(fam, socket.SOCK_STREAM)
            cli.bind((client, 0))
            cli.connect((vip, 80))
            acc, _ = srv.accept()
            out.append((fam, srv, cli, acc))
        return out

    for fam, srv, cli, acc in tp.in_netns(rig.ns, make):
        rig.sockets += [srv, cli, acc]
        rig.conn[4 if fam == socket.AF_INET else 6] = cli.getsockname()[:2]


@contextmanager
def open_rig(name: str) -> Iterator[Rig]:
    """The rig in namespace <run prefix><name>, the program loaded and configured; all removed after."""
    from fwd.redirect import RedirectProgram

    ns = f"{tp.prefix_for_run()}{name}"
    tp.ip("netns", "del", ns, check=False)
    prog = None
    r = None
    try:
        build_rig(ns)
        prog = RedirectProgram()
        r = Rig(ns, prog)
        r.ifindex = {
            name: tp.ip_json("link", "show", "dev", name, ns=ns)[0]["ifindex"] for name in ("v0", "v1")
        }
        connections(r)
        r.configure()
        yield r
    finally:
        if r is not None:
            for s in r.sockets:
                s.close()
        if prog is not None:
            prog.close()
        tp.ip("netns", "del", ns, check=False)
