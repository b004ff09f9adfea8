"""The model's view of a configuration, and its rendering in fwd's TOML format.

Deliberately separate from fwd.config: the model never imports fwd. Tests that
drive the C core either write to_toml() to a file for `fwd pcap --config`, or
convert to fwd.config objects themselves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .table import Backend

HASH_FIELDS = ("src_addr", "dst_addr", "src_port", "dst_port")  # hashed in this order


@dataclass(frozen=True)
class Bind:
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    proto: str  # "tcp" | "udp"
    port_lo: int
    port_hi: int
    hash_fields: tuple[str, ...] = ("src_addr",)

    @classmethod
    def make(cls, ip: str, proto: str, port, hash_fields=("src_addr",)) -> Bind:
        lo, hi = (port, port) if isinstance(port, int) else port
        return cls(ipaddress.ip_network(ip), proto, lo, hi, tuple(hash_fields))

    @property
    def proto_number(self) -> int:
        return {"tcp": 6, "udp": 17}[self.proto]


@dataclass
class Table:
    name: str
    hash_key: bytes
    seed: bytes
    glb_compat: bool = False
    binds: list[Bind] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)


@dataclass
class Node:
    tunnel_src4: ipaddress.IPv4Address | None = None
    tunnel_src6: ipaddress.IPv6Address | None = None
    mtu: int = 1500
    forward_icmp_echo: bool = False
    src_mac: bytes | None = None  # overrides (not expressible in TOML: Dataplane(src_mac=...))
    dst_mac: bytes | None = None


@dataclass
class ModelConfig:
    node: Node
    tables: list[Table]

    def binds(self) -> list[tuple[int, int, Bind]]:
        """(global bind index, table index, bind), numbered across tables in config order."""
        out = []
        for ti, t in enumerate(self.tables):
            for b in t.binds:
                out.append((len(out), ti, b))
        return out

    def to_toml(self) -> str:
        """This configuration in fwd's TOML format (MAC overrides are not part of it)."""
        n = self.node
        lines = ["[node]"]
        if n.tunnel_src4 is not None:
            lines.append(f'tunnel_source = "{n.tunnel_src4}"')
        if n.tunnel_src6 is not None:
            lines.append(f'tunnel_source6 = "{n.tunnel_src6}"')
        lines.append(f"mtu = {n.mtu}")
        lines.append(f"forward_icmp_echo = {'true' if n.forward_icmp_echo else 'false'}")
        for t in self.tables:
            lines += [
                "",
                "[[tables]]",
                f'name = "{t.name}"',
                f'hash_key = "{t.hash_key.hex()}"',
                f'seed = "{t.seed.hex()}"',
                f"glb_compat = {'true' if t.glb_compat else 'false'}",
            ]
            for b in t.binds:
                lines += ["  [[tables.binds]]", f'  ip = "{b.prefix}"', f'  proto = "{b.proto}"']
                if b.port_lo == b.port_hi:
                    lines.append(f"  port = {b.port_lo}")
                else:
                    lines += [f"  port_start = {b.port_lo}", f"  port_end = {b.port_hi}"]
                fields = ", ".join(f'"{f}"' for f in b.hash_fields)
                lines.append(f"  hash_fields = [{fields}]")
            for be in t.backends:
                lines += [
                    "  [[tables.backends]]",
                    f'  ip = "{be.address}"',
                    f'  state = "{be.state}"',
                    f"  healthy = {'true' if be.healthy else 'false'}",
                ]
        return "\n".join(lines) + "\n"
