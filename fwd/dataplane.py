"""Layer 3: a data-plane snapshot and the packet core, for offline use.

Dataplane turns a fwd.config.Config into C tables plus an immutable C snapshot
and runs frames through the same fwd_process() the live back ends use: one
frame (process), a batch in one C call (process_many), or a timing loop
(bench). Counters accumulate across calls.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fwd import native
from fwd.config import Config, bind_json
from fwd.table import ForwardingTable


@dataclass(frozen=True)
class Result:
    verdict: str
    reason: str | None
    bind: int | None
    table: int | None
    primary: int | None
    secondary: int | None
    row: int
    flow_hash: int
    gue_sport: int
    frame: bytes | None


@dataclass(frozen=True)
class Counters:
    verdicts: dict[str, int]
    drops: dict[str, int]
    icmp_replies: int
    binds: list[tuple[int, int]]
    backends: list[list[tuple[int, int]]]


BATCH = 4096  # frames per C call: bounds the buffer memory for large captures


def _opt(value: int) -> int | None:
    return None if value == native.NONE else value


def _stride(max_len: int) -> int:
    size = native.HEADROOM + max_len + native.TAILROOM
    return (size + 63) // 64 * 64


class Dataplane:
    def __init__(
        self,
        cfg: Any,
        *,
        tables: Sequence[ForwardingTable] | None = None,
        tunnel_src: Sequence[native.IPAddress] = (),
        src_mac: bytes | None = None,
        dst_mac: bytes | None = None,
    ):
        self.cfg = cfg
        self.tables = (
            list(tables) if tables is not None else [ForwardingTable.from_config(t) for t in cfg.tables]
        )
        src4 = cfg.node.tunnel_source
        src6 = cfg.node.tunnel_source6
        for addr in tunnel_src:
            if addr.version == 4:
                src4 = addr
            else:
                src6 = addr
        self.node = native.NodeSpec(
            tunnel_src4=src4,
            tunnel_src6=src6,
            mtu=cfg.node.mtu,
            forward_icmp_echo=cfg.node.forward_icmp_echo,
            src_mac=src_mac,
            dst_mac=dst_mac,
        )
        self.binds = [
            native.BindSpec(b.prefix, b.proto, b.port_lo, b.port_hi, tuple(b.hash_fields), t)
            for t, table in enumerate(cfg.tables)
            for b in table.binds
        ]
        self._counters = native.new_counters()
        self.rebuild()

    def rebuild(self) -> None:
        """Publish a new snapshot from the tables' current rows."""
        self._snap = native.snapshot_new(self.node, self.binds, [t.c_table for t in self.tables])

    def process(self, frame: bytes) -> Result:
        return self.process_many([frame])[0]

    def process_many(self, frames: Sequence[bytes]) -> list[Result]:
        out: list[Result] = []
        for start in range(0, len(frames), BATCH):
            out.extend(self._process_batch(frames[start : start + BATCH]))
        return out

    def _process_batch(self, frames: Sequence[bytes]) -> list[Result]:
        stride = _stride(max(len(f) for f in frames))
        bufs = native.new_buffer(stride * len(frames))
        for i, frame in enumerate(frames):
            native.copy_into(bufs, i * stride + native.HEADROOM, frame)
        lens = native.uint32_array([len(f) for f in frames])
        results = native.new_results(len(frames))
        native.process_batch(
            self._snap, bufs, stride, native.HEADROOM, lens, len(frames), results, self._counters
        )
        out = []
        for i in range(len(frames)):
            r = results[i]
            verdict = native.VERDICTS[r.verdict]
            frame_out = None
            if verdict in ("forward", "reply"):
                frame_out = native.buffer_bytes(bufs, i * stride + r.out_off, r.out_len)
            out.append(
                Result(
                    verdict=verdict,
                    reason=native.DROP_REASONS[r.reason] if verdict == "drop" else None,
                    bind=_opt(r.bind),
                    table=_opt(r.table),
                    primary=_opt(r.primary),
                    secondary=_opt(r.secondary),
                    row=r.row,
                    flow_hash=r.flow_hash,
                    gue_sport=r.gue_sport,
                    frame=frame_out,
                )
            )
        return out

    def counters(self) -> Counters:
        c = self._counters
        return Counters(
            verdicts={name: c.verdicts[i] for i, name in enumerate(native.VERDICTS)},
            drops={name: c.drops[i] for i, name in enumerate(native.DROP_REASONS) if i},
            icmp_replies=c.icmp_replies,
            binds=[(c.binds[i].packets, c.binds[i].bytes) for i in range(len(self.binds))],
            backends=[
                [(c.backends[t][b].packets, c.backends[t][b].bytes) for b in range(len(table.backends))]
                for t, table in enumerate(self.tables)
            ],
        )

    def bench(
        self, frames: Sequence[bytes], iterations: int, slots: int = 1, samples: int = 1
    ) -> dict[str, list[float]]:
        """ns of thread CPU time per packet: `samples` runs of copy+fwd_process (core) taken
        alternately with copy only (floor), floor first and last, so core run i lies between
        floor runs i and i + 1 (both loops see the same machine state). slots: frames copied
        before they are processed (1: one reused buffer; 64: a back end's rx burst, each frame
        in its own buffer). Each run is `iterations` rounds over the frames."""
        stride = _stride(max(len(f) for f in frames))
        bufs = native.new_buffer(stride * len(frames))
        for i, frame in enumerate(frames):
            native.copy_into(bufs, i * stride + native.HEADROOM, frame)
        lens = native.uint32_array([len(f) for f in frames])
        total = len(frames) * iterations
        args = (self._snap, bufs, stride, native.HEADROOM, lens, len(frames), iterations)
        floor = [native.bench(*args, 1, slots) / total]
        core: list[float] = []
        for _ in range(samples):
            core.append(native.bench(*args, 0, slots) / total)
            floor.append(native.bench(*args, 1, slots) / total)
        return {"core_ns_per_pkt": core, "copy_ns_per_pkt": floor}


def lookup_json(cfg: Config, selected: Sequence[int], res: Result) -> dict[str, Any]:
    """A lookup's answer as plain JSON values (CLI and control API).

    `res` came from a Dataplane built over the tables `selected` (indices into `cfg.tables`, in
    order); table and bind numbers in the answer are the full config's.
    """
    first_bind = [sum(len(t.binds) for t in cfg.tables[:i]) for i in range(len(cfg.tables))]
    view_binds = [first_bind[ti] + j for ti in selected for j in range(len(cfg.tables[ti].binds))]
    table_index = selected[res.table] if res.table is not None else None
    table = cfg.tables[table_index] if table_index is not None else None
    bind_index = view_binds[res.bind] if res.bind is not None else None
    matched = res.verdict != "pass"

    def backend(i: int | None) -> str | None:
        return None if table is None or i is None else str(table.backends[i].address)

    return {
        "table": table.name if table else None,
        "table_index": table_index,
        "bind": bind_json(cfg, bind_index) if bind_index is not None else None,
        "row": res.row if matched else None,
        "flow_hash": f"0x{res.flow_hash:016x}" if matched else None,
        "primary": backend(res.primary),
        "secondary": backend(res.secondary),
        "primary_index": res.primary if matched else None,
        "secondary_index": res.secondary if matched else None,
        "gue_sport": res.gue_sport if res.verdict == "forward" else None,
        "verdict": res.verdict,
        "reason": res.reason,
    }


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"bad MAC address {text!r}: want six hex bytes like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}: want six hex bytes like 02:00:00:00:00:01") from None


def parse_ip(text: str) -> native.IPAddress:
    return ipaddress.ip_address(text)
