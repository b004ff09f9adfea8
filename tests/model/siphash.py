"""SipHash-2-4 (Aumasson & Bernstein), pure Python.

The public entry points are siphash24() (the 8 output bytes, as the reference
C code writes them: little-endian) and siphash24_le() (that value as an int).
The four-word state helpers (init, compress, finish) let the table model absorb
a common prefix once and finish many messages from there (see model/table.py).
"""

MASK = 0xFFFFFFFFFFFFFFFF


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    """n SipRounds (rotations written out: this is the model's hot loop)."""
    for _ in range(n):
        v0 = (v0 + v1) & MASK
        v1 = (((v1 << 13) | (v1 >> 51)) & MASK) ^ v0
        v0 = ((v0 << 32) | (v0 >> 32)) & MASK
        v2 = (v2 + v3) & MASK
        v3 = (((v3 << 16) | (v3 >> 48)) & MASK) ^ v2
        v0 = (v0 + v3) & MASK
        v3 = (((v3 << 21) | (v3 >> 43)) & MASK) ^ v0
        v2 = (v2 + v1) & MASK
        v1 = (((v1 << 17) | (v1 >> 47)) & MASK) ^ v2
        v2 = ((v2 << 32) | (v2 >> 32)) & MASK
    return v0, v1, v2, v3


def init(key: bytes) -> tuple[int, int, int, int]:
    """The state after keying (16-byte key)."""
    if len(key) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    return (
        0x736F6D6570736575 ^ k0,
        0x646F72616E646F6D ^ k1,
        0x6C7967656E657261 ^ k0,
        0x7465646279746573 ^ k1,
    )


def compress(state: tuple[int, int, int, int], m: int) -> tuple[int, int, int, int]:
    """Absorb one 8-byte block m (read little-endian): two SipRounds (the "2" of 2-4)."""
    v0, v1, v2, v3 = state
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3 ^ m, 2)
    return v0 ^ m, v1, v2, v3


def finish(state: tuple[int, int, int, int], b: int) -> int:
    """Absorb the last block b, then four finalization rounds (the "4")."""
    v0, v1, v2, v3 = compress(state, b)
    v0, v1, v2, v3 = _rounds(v0, v1, v2 ^ 0xFF, v3, 4)
    return v0 ^ v1 ^ v2 ^ v3


def last_block(tail: bytes, total_len: int) -> int:
    """The final block: the 0..7 tail bytes, little-endian, with the message length in the top byte."""
    assert len(tail) < 8
    return int.from_bytes(tail, "little") | ((total_len & 0xFF) << 56)


def siphash24_le(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 of msg as a 64-bit integer (the little-endian reading of the 8 output bytes)."""
    state = init(key)
    full = len(msg) - len(msg) % 8
    for i in range(0, full, 8):
        state = compress(state, int.from_bytes(msg[i : i + 8], "little"))
    return finish(state, last_block(msg[full:], len(msg)))


def siphash24(key: bytes, msg: bytes) -> bytes:
    """SipHash-2-4 of msg: the 8 output bytes as the reference implementation writes them."""
    return siphash24_le(key, msg).to_bytes(8, "little")
