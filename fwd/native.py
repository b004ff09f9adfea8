"""Layer 2 of the binding: thin typed wrappers over the raw cffi extension.

Nothing but this module imports fwd._fwd_native. Each wrapper converts Python
values to the C structs of native/fwd_api.h, checks return codes and raises
NativeError with a message that says what was wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fwd._fwd_native import ffi, lib

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NONE = lib.FWD_NONE
ROWS = lib.FWD_ROWS
MAX_BACKENDS = lib.FWD_MAX_BACKENDS
MAX_TABLES = lib.FWD_MAX_TABLES
MAX_BINDS = lib.FWD_MAX_BINDS
HEADROOM = lib.FWD_MIN_HEADROOM
TAILROOM = 64

STATES = {
    "active": lib.FWD_STATE_ACTIVE,
    "filling": lib.FWD_STATE_FILLING,
    "draining": lib.FWD_STATE_DRAINING,
    "inactive": lib.FWD_STATE_INACTIVE,
}
HASH_FIELDS = {
    "src_addr": lib.FWD_HASH_SRC_ADDR,
    "dst_addr": lib.FWD_HASH_DST_ADDR,
    "src_port": lib.FWD_HASH_SRC_PORT,
    "dst_port": lib.FWD_HASH_DST_PORT,
}
PROTOS = {"tcp": 6, "udp": 17}
VERDICTS = ("pass", "forward", "drop", "reply")
DROP_REASONS = (
    "none",
    "truncated",
    "bad_ipv4",
    "bad_ipv6",
    "bad_l4",
    "bad_icmp",
    "no_backend",
    "too_big",
    "no_tunnel_source",
    "no_headroom",
)
assert len(DROP_REASONS) == lib.FWD_DROP_REASONS


class NativeError(RuntimeError):
    """A call into the C core failed."""


@dataclass(frozen=True)
class BackendSpec:
    address: IPAddress
    state: str
    healthy: bool


@dataclass(frozen=True)
class BindSpec:
    prefix: IPNetwork
    proto: str
    port_lo: int
    port_hi: int
    hash_fields: tuple[str, ...]
    table: int


@dataclass(frozen=True)
class NodeSpec:
    tunnel_src4: ipaddress.IPv4Address | None = None
    tunnel_src6: ipaddress.IPv6Address | None = None
    mtu: int = 1500
    forward_icmp_echo: bool = False
    src_mac: bytes | None = None
    dst_mac: bytes | None = None


@dataclass(frozen=True)
class UpdateStats:
    added: int
    removed: int
    changed: int
    rows_changed: int
    rows_rescored: int
    full_build: bool
    seconds: float


def _fill_addr(dst: Any, addr: IPAddress) -> None:
    packed = addr.packed
    dst.family = 4 if addr.version == 4 else 6
    ffi.memmove(dst.bytes, packed + bytes(16 - len(packed)), 16)


def seed_bytes(value: bytes, what: str) -> bytes:
    if len(value) != 16:
        raise NativeError(f"{what} must be 16 bytes, got {len(value)}")
    return value


def table_new(seed: bytes, hash_key: bytes, glb_compat: bool) -> Any:
    ptr = lib.fwd_table_new(seed_bytes(seed, "seed"), seed_bytes(hash_key, "hash_key"), int(glb_compat))
    if ptr == ffi.NULL:
        raise NativeError("fwd_table_new failed (out of memory)")
    return ffi.gc(ptr, lib.fwd_table_free)


def table_set_backends(table: Any, backends: Sequence[BackendSpec]) -> UpdateStats:
    if len(backends) > MAX_BACKENDS:
        raise NativeError(f"{len(backends)} backends: at most {MAX_BACKENDS} per table")
    specs = ffi.new("struct fwd_backend_spec[]", max(1, len(backends)))
    for spec, backend in zip(specs, backends, strict=False):
        _fill_addr(spec.addr, backend.address)
        spec.state = STATES[backend.state]
        spec.healthy = 1 if backend.healthy else 0
    stats = ffi.new("struct fwd_update_stats *")
    if lib.fwd_table_set_backends(table, specs, len(backends), stats) != 0:
        raise NativeError("fwd_table_set_backends rejected the backend list (duplicate address?)")
    return UpdateStats(
        added=stats.added,
        removed=stats.removed,
        changed=stats.changed,
        rows_changed=stats.rows_changed,
        rows_rescored=stats.rows_rescored,
        full_build=bool(stats.full_build),
        seconds=stats.nanoseconds / 1e9,
    )


def table_rows(table: Any) -> tuple[list[int | None], list[int | None]]:
    primary = ffi.new("uint16_t[]", ROWS)
    secondary = ffi.new("uint16_t[]", ROWS)
    lib.fwd_table_rows(table, primary, secondary)
    return _indices(primary), _indices(secondary)


def _indices(arr: Any) -> list[int | None]:
    raw = ffi.unpack(arr, ROWS)
    return [None if v == NONE else v for v in raw]


def snapshot_new(node: NodeSpec, binds: Sequence[BindSpec], tables: Sequence[Any]) -> Any:
    if len(binds) > MAX_BINDS:
        raise NativeError(f"{len(binds)} binds: at most {MAX_BINDS}")
    if len(tables) > MAX_TABLES:
        raise NativeError(f"{len(tables)} tables: at most {MAX_TABLES}")
    cnode = ffi.new("struct fwd_node_spec *")
    if node.tunnel_src4 is not None:
        cnode.has_tunnel_src4 = 1
        ffi.memmove(cnode.tunnel_src4, node.tunnel_src4.packed, 4)
    if node.tunnel_src6 is not None:
        cnode.has_tunnel_src6 = 1
        ffi.memmove(cnode.tunnel_src6, node.tunnel_src6.packed, 16)
    cnode.mtu = node.mtu
    cnode.forward_icmp_echo = 1 if node.forward_icmp_echo else 0
    if node.src_mac is not None:
        cnode.has_src_mac = 1
        ffi.memmove(cnode.src_mac, node.src_mac, 6)
    if node.dst_mac is not None:
        cnode.has_dst_mac = 1
        ffi.memmove(cnode.dst_mac, node.dst_mac, 6)
    cbinds = ffi.new("struct fwd_bind_spec[]", max(1, len(binds)))
    for cb, b in zip(cbinds, binds, strict=False):
        _fill_addr(cb.prefix, b.prefix.network_address)
        cb.prefix_len = b.prefix.prefixlen
        cb.proto = PROTOS[b.proto]
        cb.port_lo = b.port_lo
        cb.port_hi = b.port_hi
        bits = 0
        for name in b.hash_fields:
            bits |= HASH_FIELDS[name]
        cb.hash_fields = bits
        cb.table = b.table
    ctables = ffi.new("struct fwd_table *[]", max(1, len(tables)))
    for i, t in enumerate(tables):
        ctables[i] = t
    snap = lib.fwd_snapshot_new(cnode, cbinds, len(binds), ctables, len(tables))
    if snap == ffi.NULL:
        raise NativeError("fwd_snapshot_new rejected the binds/tables")
    return ffi.gc(snap, lib.fwd_snapshot_free)


def new_counters() -> Any:
    return ffi.new("struct fwd_counters *")


def new_results(n: int) -> Any:
    return ffi.new("struct fwd_result[]", max(1, n))


def new_buffer(size: int) -> Any:
    return ffi.new("uint8_t[]", size)


def process_batch(
    snap: Any, bufs: Any, stride: int, headroom: int, lens: Any, n: int, results: Any, counters: Any
) -> None:
    lib.fwd_process_batch(snap, bufs, stride, headroom, lens, n, results, counters)


def bench(snap: Any, bufs: Any, stride: int, headroom: int, lens: Any, n: int, iters: int, mode: int) -> int:
    return int(lib.fwd_bench(snap, bufs, stride, headroom, lens, n, iters, mode))


def siphash24(key: bytes, msg: bytes) -> bytes:
    out = ffi.new("uint8_t[8]")
    lib.fwd_siphash24(msg, len(msg), seed_bytes(key, "key"), out)
    return bytes(out)


def buffer_bytes(buf: Any, start: int, length: int) -> bytes:
    return bytes(ffi.buffer(buf)[start : start + length])


def copy_into(buf: Any, offset: int, data: bytes) -> None:
    ffi.memmove(buf + offset, data, len(data))


def uint32_array(values: Sequence[int]) -> Any:
    return ffi.new("uint32_t[]", list(values) or [0])
