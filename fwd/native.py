"""Layer 2 of the binding: thin typed wrappers over the raw cffi extension.

Nothing but this module imports fwd._fwd_native (fwd.redirect takes ffi and lib from here for
its own layer 2: the fwd-redirect loader). Each wrapper converts Python
values to the C structs of native/fwd_api.h, checks return codes and raises
NativeError with a message that says what was wrong.
"""

from __future__ import annotations

import functools
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
    "no_nexthop",
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


_SPEC_BYTES: dict[tuple[int, int, str, bool], bytes] = {}


def _backend_spec_bytes(address: IPAddress, state: str, healthy: bool) -> bytes:
    """One struct fwd_backend_spec as bytes, cached by plain ints (the daemon re-sends long, mostly
    unchanged lists on every health verdict; filling them field by field costs milliseconds, and
    so does hashing ipaddress objects)."""
    key = (int(address), address.version, state, healthy)
    raw = _SPEC_BYTES.get(key)
    if raw is None:
        spec = ffi.new("struct fwd_backend_spec *")
        _fill_addr(spec.addr, address)
        spec.state = STATES[state]
        spec.healthy = 1 if healthy else 0
        raw = bytes(ffi.buffer(spec))
        if len(_SPEC_BYTES) >= 1 << 17:
            _SPEC_BYTES.clear()
        _SPEC_BYTES[key] = raw
    return raw


BACKEND_SPEC_SIZE = ffi.sizeof("struct fwd_backend_spec")


def backend_specs(
    backends: Sequence[Any], prev: Sequence[Any] | None = None, prev_raw: bytearray | None = None
) -> bytearray:
    """The struct fwd_backend_spec array of ``backends`` as bytes. Given the previous list and its
    array, only the entries that differ are rebuilt (a health verdict changes one of 1,000)."""
    if prev_raw is not None and prev is not None and len(prev) == len(backends):
        raw = prev_raw
        size = BACKEND_SPEC_SIZE
        for i, (a, b) in enumerate(zip(prev, backends, strict=True)):
            if a is b or (
                a.address == b.address and a.state == b.state and bool(a.healthy) == bool(b.healthy)
            ):
                continue
            raw[i * size : (i + 1) * size] = _backend_spec_bytes(b.address, b.state, bool(b.healthy))
        return raw
    return bytearray(b"".join(_backend_spec_bytes(b.address, b.state, bool(b.healthy)) for b in backends))


def table_set_backends(table: Any, backends: Sequence[Any], raw: bytearray | None = None) -> UpdateStats:
    """backends: BackendSpec or anything with address, state and healthy (fwd.config.Backend);
    ``raw``: their backend_specs() when the caller keeps it."""
    if len(backends) > MAX_BACKENDS:
        raise NativeError(f"{len(backends)} backends: at most {MAX_BACKENDS} per table")
    if backends:
        if raw is None:
            raw = backend_specs(backends)
        specs = ffi.from_buffer("struct fwd_backend_spec[]", raw)
    else:
        specs = ffi.new("struct fwd_backend_spec[]", 1)
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


def _bind_specs(binds: Sequence[BindSpec]) -> Any:
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
    return cbinds


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
    cbinds = _bind_specs(binds)
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


def bench(
    snap: Any, bufs: Any, stride: int, headroom: int, lens: Any, n: int, iters: int, mode: int, slots: int
) -> int:
    ns = int(lib.fwd_bench(snap, bufs, stride, headroom, lens, n, iters, mode, slots))
    if ns == 0 and iters and n:
        raise NativeError("fwd_bench failed (bad layout or out of memory)")
    return ns


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


# ----------------------------------------------------------------------------------------------
# Live data plane (native/runtime_api.h): the runtime and its workers, next hops in a snapshot,
# the XDP steering program. Failing calls raise NativeError with the C side's one-line reason.

XSK_MODES = {
    "auto": lib.FWD_XSK_MODE_AUTO,
    "copy": lib.FWD_XSK_MODE_COPY,
    "zerocopy": lib.FWD_XSK_MODE_ZEROCOPY,
}
MAX_WORKERS = lib.FWD_MAX_WORKERS
_ERRLEN = 256


@dataclass(frozen=True)
class NextHopSpec:
    ifindex: int  # egress interface
    src_mac: bytes  # its MAC
    dst_mac: bytes  # the gateway's or on-link backend's MAC


@dataclass(frozen=True)
class PortStats:
    rx_packets: int
    tx_packets: int
    tx_dropped: int
    pass_dropped: int
    kernel_drops: int
    wakeups: int


def _errbuf() -> Any:
    return ffi.new("char[]", _ERRLEN)


def _errtext(buf: Any, fallback: str) -> str:
    text = ffi.string(buf).decode("utf-8", "replace").strip()
    return " ".join(text.split()) or fallback


def _ifname(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) > 15 or b"/" in raw or b"\0" in raw:
        raise NativeError(f"bad interface name {name!r}")
    return raw


@functools.lru_cache(maxsize=1 << 12)
def _nexthop_struct(ifindex: int, src_mac: bytes, dst_mac: bytes) -> Any:
    """A struct fwd_nexthop (cached: every publication sets one per backend; the C side copies it)."""
    c = ffi.new("struct fwd_nexthop *")
    c.ifindex = ifindex
    ffi.memmove(c.src_mac, src_mac, 6)
    ffi.memmove(c.dst_mac, dst_mac, 6)
    return c


def snapshot_set_nexthop(snap: Any, table: int, backend: int, nh: NextHopSpec) -> None:
    c = _nexthop_struct(nh.ifindex, bytes(nh.src_mac), bytes(nh.dst_mac))
    if lib.fwd_snapshot_set_nexthop(snap, table, backend, c) != 0:
        raise NativeError(f"fwd_snapshot_set_nexthop rejected table {table} backend {backend}")


def snapshot_set_nexthops(snap: Any, entries: Sequence[tuple[int, int, NextHopSpec]]) -> None:
    """Many (table, backend, next hop) at once; one C struct per distinct next hop."""
    cache: dict[NextHopSpec, Any] = {}
    by_id: dict[int, Any] = {}  # the entries hold their specs: ids are stable during the call
    set_one = lib.fwd_snapshot_set_nexthop
    for table, backend, nh in entries:
        c = by_id.get(id(nh))
        if c is None:
            c = by_id[id(nh)] = cache.get(nh)
        if c is None:
            c = cache[nh] = by_id[id(nh)] = ffi.new("struct fwd_nexthop *")
            c.ifindex = nh.ifindex
            ffi.memmove(c.src_mac, nh.src_mac, 6)
            ffi.memmove(c.dst_mac, nh.dst_mac, 6)
        if set_one(snap, table, backend, c) != 0:
            raise NativeError(f"fwd_snapshot_set_nexthop rejected table {table} backend {backend}")


def runtime_new() -> Any:
    rt = lib.fwd_runtime_new()
    if rt == ffi.NULL:
        raise NativeError("fwd_runtime_new failed (out of memory)")
    return ffi.gc(rt, lib.fwd_runtime_free)


def runtime_free(rt: Any) -> None:
    """Stop the workers, close their sockets, free every snapshot (now, not at GC)."""
    ffi.release(rt)


def runtime_add_raw(
    rt: Any, ifname: str, *, fanout_group: int = 0, block_size: int = 0, block_count: int = 0, batch: int = 0
) -> int:
    cfg = ffi.new("struct fwd_raw_config *")
    cfg.ifname = _ifname(ifname)
    cfg.fanout_group = fanout_group
    cfg.block_size = block_size
    cfg.block_count = block_count
    cfg.batch = batch
    err = _errbuf()
    index = lib.fwd_runtime_add_raw(rt, cfg, err, _ERRLEN)
    if index < 0:
        raise NativeError(_errtext(err, f"cannot open a raw socket on {ifname}"))
    return int(index)


def runtime_add_xsk(
    rt: Any,
    ifname: str,
    queue: int,
    mode: str,
    xsks_map_fd: int,
    *,
    busy_poll: bool = False,
    holdoff_us: int = 0,
    frame_count: int = 0,
    ring_size: int = 0,
    batch: int = 0,
) -> int:
    cfg = ffi.new("struct fwd_xsk_config *")
    cfg.ifname = _ifname(ifname)
    cfg.queue = queue
    cfg.mode = XSK_MODES[mode]
    cfg.frame_count = frame_count
    cfg.ring_size = ring_size
    cfg.batch = batch
    cfg.busy_poll = 1 if busy_poll else 0
    cfg.holdoff_us = holdoff_us
    cfg.xsks_map_fd = xsks_map_fd
    err = _errbuf()
    index = lib.fwd_runtime_add_xsk(rt, cfg, err, _ERRLEN)
    if index < 0:
        raise NativeError(_errtext(err, f"cannot open an AF_XDP socket on {ifname} queue {queue}"))
    return int(index)


def runtime_publish(rt: Any, snap: Any) -> int:
    """Hand snap to the runtime; it must not be used or freed from Python afterwards."""
    ffi.gc(snap, None)  # the runtime frees it now: detach the destructor (in place)
    return int(lib.fwd_runtime_publish(rt, snap))


def runtime_reclaim(rt: Any, timeout_ms: int = 0) -> int:
    return int(lib.fwd_runtime_reclaim(rt, timeout_ms))


def runtime_acked_generation(rt: Any) -> int:
    return int(lib.fwd_runtime_acked_generation(rt))


def runtime_set_poll_ms(rt: Any, ms: int) -> None:
    """Idle workers' housekeeping period (publications and stop wake them at once anyway)."""
    lib.fwd_runtime_set_poll_ms(rt, ms)


def runtime_start(rt: Any) -> None:
    err = _errbuf()
    if lib.fwd_runtime_start(rt, err, _ERRLEN) != 0:
        raise NativeError(_errtext(err, "cannot start the workers"))


def runtime_stop(rt: Any) -> None:
    lib.fwd_runtime_stop(rt)


def runtime_worker_count(rt: Any) -> int:
    return int(lib.fwd_runtime_worker_count(rt))


def runtime_counters(rt: Any, out: Any = None) -> Any:
    """The workers' counters summed into ``out`` (a new struct fwd_counters when None)."""
    if out is None:
        out = new_counters()
    lib.fwd_runtime_counters(rt, out)
    return out


def runtime_port_stats(rt: Any, worker: int) -> PortStats:
    c = ffi.new("struct fwd_port_stats *")
    lib.fwd_runtime_port_stats(rt, worker, c)
    return PortStats(
        rx_packets=c.rx_packets,
        tx_packets=c.tx_packets,
        tx_dropped=c.tx_dropped,
        pass_dropped=c.pass_dropped,
        kernel_drops=c.kernel_drops,
        wakeups=c.wakeups,
    )


def steer_attach(obj_path: str, ifname: str, mode: str) -> Any:
    err = _errbuf()
    st = lib.fwd_steer_attach(obj_path.encode(), _ifname(ifname), XSK_MODES[mode], err, _ERRLEN)
    if st == ffi.NULL:
        raise NativeError(_errtext(err, f"cannot attach the XDP steering program to {ifname}"))
    return ffi.gc(st, lib.fwd_steer_detach)


def steer_set_binds(st: Any, binds: Sequence[BindSpec], forward_icmp_echo: bool) -> None:
    cbinds = _bind_specs(binds)
    err = _errbuf()
    if lib.fwd_steer_set_binds(st, cbinds, len(binds), 1 if forward_icmp_echo else 0, err, _ERRLEN) != 0:
        raise NativeError(_errtext(err, "cannot load the binds into the XDP steering program"))


def steer_xsks_map_fd(st: Any) -> int:
    return int(lib.fwd_steer_xsks_map_fd(st))


def steer_counters(st: Any) -> tuple[int, int, int]:
    """(redirected, passed, redirect failed) of the steering program."""
    out = ffi.new("uint64_t[3]")
    lib.fwd_steer_counters(st, out)
    return int(out[0]), int(out[1]), int(out[2])


def steer_test_run(st: Any, frame: bytes) -> int:
    """The XDP return code of the steering program for one frame (BPF_PROG_TEST_RUN; tests)."""
    retval = ffi.new("uint32_t *")
    err = _errbuf()
    if lib.fwd_steer_test_run(st, frame, len(frame), retval, err, _ERRLEN) != 0:
        raise NativeError(_errtext(err, "BPF_PROG_TEST_RUN failed"))
    return int(retval[0])


def steer_detach(st: Any) -> None:
    """Detach and unload now (idempotent through cffi: a released pointer is not freed twice)."""
    ffi.release(st)


def steer_attach_mode(st: Any) -> str:
    """The XDP mode the steering program ended up in: "native" or "generic"."""
    return ffi.string(lib.fwd_steer_attach_mode(st)).decode()


def steer_replaced_stale(st: Any) -> int:
    """Id of the stale fwd steering program (crashed run) attach replaced, 0 if none."""
    return int(lib.fwd_steer_replaced_stale(st))
