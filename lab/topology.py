"""The one description of the lab: nodes, links, addresses, VIPs, AS numbers, timers.

Everything else is derived from this module: the node configuration files and scripts
(lab/render.py writes them to containerlab/configs/), the containerlab topology
(containerlab/fwd-lab.clab.yml) and the network-namespace lab (lab/netns.py). Change the lab
here, run ``python -m lab render``, commit both.

Layout (every link is a point-to-point veth; the server LAN is a bridge inside the ``sw`` node)::

                         cl  (clients 10.1.0.0/24, ECMP to both routers)
                        /  \\
                      r1    r2          BIRD 2: BGP with every L4 node, ECMP into the kernel
                     / | \\  / | \\        (each router has one link to cl and one to every server)
          l4-1  l4-2  l4-3   l7-1  l7-2  l7-3  l7-4
             \\    |    |      |     |     |    /
                         sw  (server LAN 10.0.0.0/24, bridge)

* **cl** — the clients (any address of 10.1.0.0/24 is local: AnyIP route on lo) and the
  "internet" in front of the routers: the VIP prefix via r1 and r2 (multipath, L4 hash).
* **r1, r2** — routers: learn each VIP over BGP from every L4 node that announces it and install
  one ECMP route (``merge paths``), hash on the 5-tuple (``fib_multipath_hash_policy=1``); a
  static route to the clients. Link to node N on router R: 10.20R.N.0/30 (router .1, node .2).
* **l4-1..3** — fwd (``fwd run``, XDP) receiving VIP traffic on its links to the routers (``r1``,
  ``r2``) and sending GUE over the server LAN (``lan``); ExaBGP (driven by fwd) announces the
  VIPs to both routers with itself as next hop.
* **l7-1..4** — HAProxy on the VIPs (the VIPs are on ``lo``) in front of a small app
  (lab/app.py), fwd-redirect on ``lan`` (GUE decapsulation + second chance). Replies leave
  straight to the clients over the node's own links to the routers (DSR): they never pass an
  L4 node.
* **sw** — the server LAN's switch (a bridge, one port per server).

Node numbers (the last octet of a node's LAN address and the third octet of its router links):
cl 1, l4-K 10+K, l7-K 20+K.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

# ------------------------------------------------------------------------------------ constants

NAME = "fwd-lab"
LAN = ipaddress.ip_network("10.0.0.0/24")  # the server LAN (GUE, health checks, second chance)
CLIENTS = ipaddress.ip_network("10.1.0.0/24")  # client addresses (all local on cl)
VIP_NET = ipaddress.ip_network("10.100.0.0/24")  # where the VIPs live (cl routes it to the routers)
ROUTER_AS = 65000
L4_AS = 65100
BGP_HOLD = 3  # seconds: short, so that a dead L4 node or router is dropped quickly
BGP_KEEPALIVE = 1
BGP_CONNECT_RETRY = 1
GUE_PORT = 19523
APP_PORT = 8080  # the app behind HAProxy on each L7 node (127.0.0.1)
HEALTH = {"interval": 0.5, "timeout": 0.4, "rise": 2, "fall": 2, "jitter": 0.1}  # fwd's checks
DRAIN_WAIT = 2.0  # fwd: seconds of forwarding after the withdrawal on SIGTERM
HASH_FIELDS = ("src_addr", "src_port")


@dataclass(frozen=True)
class Vip:
    """A service: a VIP (/32), TCP port, fwd table and HAProxy frontend/backend of that name."""

    name: str
    address: str
    port: int
    hash_key: str
    seed: str

    @property
    def health_uri(self) -> str:
        return f"/healthz/{self.name}"


VIPS = (
    Vip("web", "10.100.0.1", 80, "6c61622d7765622d686173682d6b6579", "6c61622d7765622d7365656421212121"),
    Vip("api", "10.100.0.2", 80, "6c61622d6170692d686173682d6b6579", "6c61622d6170692d7365656421212121"),
)


# ------------------------------------------------------------------------------------ nodes


@dataclass(frozen=True)
class Iface:
    """One end of a link, inside a node: its name there, its address (CIDR) if any, the peer."""

    name: str
    address: str | None
    peer: str  # node name at the other end
    peer_iface: str

    @property
    def ip(self) -> str | None:
        return None if self.address is None else self.address.split("/")[0]


@dataclass(frozen=True)
class Link:
    a: tuple[str, str]  # (node, interface)
    b: tuple[str, str]


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # client | router | l4 | l7 | switch
    num: int  # 0 for the switch
    ifaces: tuple[Iface, ...] = ()

    def iface(self, name: str) -> Iface:
        for i in self.ifaces:
            if i.name == name:
                return i
        raise KeyError(f"{self.name} has no interface {name}")

    @property
    def lan_ip(self) -> str:
        return self.iface("lan").ip  # type: ignore[return-value]

    def uplink(self, router: str) -> Iface:
        """This node's end of its link to router (its interface is named after the router)."""
        return self.iface(router)

    @property
    def router_id(self) -> str:
        return f"10.255.0.{self.num}"


ROUTERS = ("r1", "r2")
L4_NODES = ("l4-1", "l4-2", "l4-3")
L7_NODES = ("l7-1", "l7-2", "l7-3", "l7-4")
CLIENT = "cl"
SWITCH = "sw"


def node_number(name: str) -> int:
    if name == CLIENT:
        return 1
    if name in L4_NODES:
        return 10 + L4_NODES.index(name) + 1
    if name in L7_NODES:
        return 20 + L7_NODES.index(name) + 1
    if name in ROUTERS:
        return ROUTERS.index(name) + 1
    return 0


def router_link(router: str, node: str) -> tuple[str, str]:
    """(router address, node address) with prefix length on the router<->node link."""
    r = ROUTERS.index(router) + 1
    n = node_number(node)
    return f"10.20{r}.{n}.1/30", f"10.20{r}.{n}.2/30"


@dataclass(frozen=True)
class Lab:
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    vips: tuple[Vip, ...] = VIPS

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        return self.by_name[name]

    def role(self, role: str) -> list[Node]:
        return [n for n in self.nodes if n.role == role]

    @property
    def routers(self) -> list[Node]:
        return self.role("router")

    @property
    def l4(self) -> list[Node]:
        return self.role("l4")

    @property
    def l7(self) -> list[Node]:
        return self.role("l7")

    @property
    def client(self) -> Node:
        return self.node(CLIENT)

    def vip(self, name: str) -> Vip:
        return next(v for v in self.vips if v.name == name)

    def l4_next_hop(self, router: str, l4: str) -> str:
        """The address router sees as next hop for a VIP that l4 announces (l4's end of the link)."""
        return self.node(l4).uplink(router).ip  # type: ignore[return-value]

    def l4_of_next_hop(self, router: str, address: str) -> str | None:
        for n in self.l4:
            if n.uplink(router).ip == address:
                return n.name
        return None

    def l7_of(self, address: str) -> str | None:
        for n in self.l7:
            if n.lan_ip == address:
                return n.name
        return None


def build() -> Lab:
    """The lab as described in this module's docstring."""
    ifaces: dict[str, list[Iface]] = {}
    links: list[Link] = []

    def connect(a: str, a_if: str, a_addr: str | None, b: str, b_if: str, b_addr: str | None) -> None:
        ifaces.setdefault(a, []).append(Iface(a_if, a_addr, b, b_if))
        ifaces.setdefault(b, []).append(Iface(b_if, b_addr, a, a_if))
        links.append(Link((a, a_if), (b, b_if)))

    servers = list(L4_NODES) + list(L7_NODES)
    # every server and the client is wired to both routers; interfaces are named after the peer
    for r in ROUTERS:
        for n in [CLIENT, *servers]:
            r_addr, n_addr = router_link(r, n)
            connect(r, n, r_addr, n, r, n_addr)
    # the server LAN: one switch port per server (port named after the server)
    for n in servers:
        connect(n, "lan", f"{LAN.network_address + node_number(n)}/{LAN.prefixlen}", SWITCH, n, None)

    roles = {CLIENT: "client", SWITCH: "switch"}
    roles.update({r: "router" for r in ROUTERS})
    roles.update({n: "l4" for n in L4_NODES})
    roles.update({n: "l7" for n in L7_NODES})
    order = [CLIENT, *ROUTERS, *L4_NODES, *L7_NODES, SWITCH]
    nodes = tuple(Node(n, roles[n], node_number(n), tuple(ifaces[n])) for n in order)
    return Lab(nodes, tuple(links))


LAB = build()
