"""Layer 3: the forwarding table (GLB rendezvous hashing), built and updated in C.

A ForwardingTable owns one C fwd_table. set_backends() applies a new backend
list incrementally (only the rows a change touches move); rows() reads the
65,536 (primary, secondary) pairs as indices into the current list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fwd import native
from fwd.native import UpdateStats

ROWS = native.ROWS


class BackendLike(Protocol):
    @property
    def address(self) -> native.IPAddress: ...
    @property
    def state(self) -> str: ...
    @property
    def healthy(self) -> bool: ...


class ForwardingTable:
    def __init__(self, seed: bytes, hash_key: bytes, glb_compat: bool, backends: Sequence[BackendLike]):
        self.seed = bytes(seed)
        self.hash_key = bytes(hash_key)
        self.glb_compat = glb_compat
        self._ptr = native.table_new(self.seed, self.hash_key, glb_compat)
        self.backends: list[BackendLike] = []
        self._raw: bytearray | None = None
        self.last_update = self.set_backends(backends)

    @classmethod
    def from_config(cls, table: Any) -> ForwardingTable:
        """Build from a fwd.config.Table."""
        return cls(table.seed, table.hash_key, table.glb_compat, table.backends)

    @property
    def c_table(self) -> Any:
        return self._ptr

    def set_backends(self, backends: Sequence[BackendLike]) -> UpdateStats:
        # the spec array is kept and patched where the list differs from the previous one
        raw = native.backend_specs(backends, self.backends, self._raw)
        try:
            stats = native.table_set_backends(self._ptr, backends, raw)
        except native.NativeError:
            self._raw = None  # patched for a list the table refused: rebuild next time
            raise
        self._raw = raw
        self.backends = list(backends)
        self.last_update = stats
        return stats

    def rows(self) -> tuple[list[int | None], list[int | None]]:
        return native.table_rows(self._ptr)

    def row(self, index: int) -> tuple[int | None, int | None]:
        primary, secondary = self.rows()
        return primary[index], secondary[index]

    def owned(self) -> list[tuple[int, int]]:
        """Rows owned per backend: (as primary, as secondary)."""
        counts = [[0, 0] for _ in self.backends]
        primary, secondary = self.rows()
        for p in primary:
            if p is not None:
                counts[p][0] += 1
        for s in secondary:
            if s is not None:
                counts[s][1] += 1
        return [(p, s) for p, s in counts]
