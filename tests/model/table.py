"""Forwarding table model: GLB Director's rendezvous ranking and fwd's row rule.

docs/packet-core.md §1, written out plainly:

    row_seed = siphash24(seed, u32_be(r))                          # 8 raw bytes
    score(b) = u64_be(siphash24(seed, row_seed ++ addr(b)))
    order    = non-inactive backends sorted by score ascending

then (primary, secondary) by the GLB rule (glb_compat) or the fwd rule.

Speed: see _ScoreCache (scores memoised per address and row; the shared row_seed
block absorbed once per row). Results are identical to calling siphash24() on the
concatenation (checked in tests/unit/test_model.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import siphash

ROWS = 65536
STATES = ("active", "filling", "draining", "inactive")


@dataclass(frozen=True)
class Backend:
    """A backend as the model sees it (index = position in the table's list)."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    state: str = "active"
    healthy: bool = True

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"bad backend state {self.state!r}")

    @classmethod
    def of(cls, b) -> Backend:
        """Accept a Backend, an (address, state, healthy) tuple, an address (str or ipaddress),
        or anything with .address/.state/.healthy attributes (e.g. fwd.config.Backend)."""
        if isinstance(b, Backend):
            return b
        if isinstance(b, tuple):
            return cls(ipaddress.ip_address(b[0]), *b[1:])
        if isinstance(b, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return cls(ipaddress.ip_address(b))
        return cls(ipaddress.ip_address(b.address), b.state, bool(b.healthy))

    @property
    def good(self) -> bool:
        """Healthy and taking new flows (docs §1: good(b))."""
        return self.healthy and self.state in ("active", "filling")


def row_seed(seed: bytes, r: int) -> bytes:
    """siphash24(seed, u32_big_endian(r)): the 8 raw output bytes."""
    return siphash.siphash24(seed, r.to_bytes(4, "big"))


def score(seed: bytes, r: int, address) -> int:
    """The rendezvous score of one backend for row r, computed the plain way (for tests)."""
    packed = ipaddress.ip_address(address).packed
    return int.from_bytes(siphash.siphash24(seed, row_seed(seed, r) + packed), "big")


class _ScoreCache:
    """Rendezvous scores of one seed, memoised per (backend address, row).

    A score depends only on the seed, the row and the backend's own address, never on
    the other backends or on states, so tests that rebuild tables with other states or
    with one backend more or less reuse everything already computed.
    Every score of a row starts with the same 8-byte block (row_seed): the SipHash state
    after that block is kept per row, and each address only finishes its own pre-split
    blocks from there.
    """

    def __init__(self, seed: bytes):
        self.seed = seed
        self.key_state = siphash.init(seed)
        self.after_row_seed: dict[int, tuple[int, int, int, int]] = {}
        self.scores: dict[bytes, dict[int, int]] = {}

    def _state(self, r: int):
        st = self.after_row_seed.get(r)
        if st is None:
            rs = siphash.siphash24_le(self.seed, r.to_bytes(4, "big"))  # row_seed as LE int
            st = self.after_row_seed[r] = siphash.compress(self.key_state, rs)
        return st

    def fill(self, packed: bytes, rows: Iterable[int]) -> dict[int, int]:
        """Make sure the scores of address `packed` for `rows` are known; return its row->score."""
        known = self.scores.setdefault(packed, {})
        total = 8 + len(packed)  # the message is row_seed (8 bytes) ++ address
        full = len(packed) - len(packed) % 8
        blocks = [int.from_bytes(packed[k : k + 8], "little") for k in range(0, full, 8)]
        last = siphash.last_block(packed[full:], total)
        for r in rows:
            if r in known:
                continue
            st = self._state(r)
            for m in blocks:
                st = siphash.compress(st, m)
            le = siphash.finish(st, last)
            # score = the 8 output bytes read big-endian = the byte-swapped LE value
            known[r] = int.from_bytes(le.to_bytes(8, "little"), "big")
        return known


_CACHES: dict[bytes, _ScoreCache] = {}


def _cache(seed: bytes) -> _ScoreCache:
    if seed not in _CACHES:
        _CACHES[seed] = _ScoreCache(seed)
    return _CACHES[seed]


def glb_rule(order: Sequence[int], backends: Sequence[Backend]) -> tuple[int, int]:
    """GLB Director: swap a bad primary with an exactly-`active` secondary (health not checked)."""
    p, s = order[0], order[1]
    bp, bs = backends[p], backends[s]
    if (bp.state in ("draining", "inactive") or not bp.healthy) and bs.state == "active":
        p, s = s, p
    return p, s


def fwd_rule(order: Sequence[int], backends: Sequence[Backend]) -> tuple[int, int]:
    """fwd: a good first-ranked backend keeps the row; else the first good one takes it, with
    the old owner as second chance; with no good backend at all, fall back to the GLB rule."""
    if backends[order[0]].good:
        return order[0], order[1]
    for i in order:
        if backends[i].good:
            return i, order[0]
    return glb_rule(order, backends)


def derive(order: Sequence[int], backends: Sequence[Backend], glb_compat: bool):
    """(primary, secondary) of one row from its rank order (ranked backend indices)."""
    if not order:
        return None, None
    if len(order) == 1:
        return order[0], order[0]
    return (glb_rule if glb_compat else fwd_rule)(order, backends)


def rank(seed: bytes, backends: Iterable, rows: Iterable[int]) -> dict[int, list[int]]:
    """{row: ranked backend indices, lowest score first} (inactive backends left out;
    equal scores, never seen in practice, fall back to list order)."""
    bl = [Backend.of(b) for b in backends]
    wanted = list(rows)
    cache = _cache(seed)
    ranked = [i for i, b in enumerate(bl) if b.state != "inactive"]
    score_of = {i: cache.fill(bl[i].address.packed, wanted) for i in ranked}
    return {r: sorted(ranked, key=lambda i: (score_of[i][r], i)) for r in wanted}


def build_rows(
    seed: bytes,
    backends: Iterable,
    glb_compat: bool = False,
    rows: Iterable[int] | None = None,
):
    """The table rows for `backends` (see Backend.of for the accepted forms).

    rows=None: a list of all 65,536 (primary, secondary) pairs (None = no backend).
    rows=iterable: a dict {row: (primary, secondary)} for just those rows.
    """
    if len(seed) != 16:
        raise ValueError("seed must be 16 bytes")
    bl = [Backend.of(b) for b in backends]
    wanted = range(ROWS) if rows is None else rows
    out = {r: derive(order, bl, glb_compat) for r, order in rank(seed, bl, wanted).items()}
    return [out[r] for r in range(ROWS)] if rows is None else out


def lookup(seed: bytes, backends: Iterable, glb_compat: bool, r: int):
    """(primary, secondary) of a single row."""
    return build_rows(seed, backends, glb_compat, rows=[r])[r]


def sample_rows(count: int, salt: int = 0) -> list[int]:
    """A deterministic, well spread sample of `count` distinct rows (always incl. 0 and 65535)."""
    picked = {0, ROWS - 1}
    x = 0x9E3779B97F4A7C15 ^ salt
    while len(picked) < min(count, ROWS):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        picked.add(x >> 48)
    return sorted(picked)
