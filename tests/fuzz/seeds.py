"""Seed corpora for the fuzz targets, generated (not committed) into DIR/<target>/.

    python -m tests.fuzz.seeds DIR

core:   every golden frame (tests/golden.py), prefixed with the two control bytes of
        native/fuzz/fuzz_core.c: the variant matching the frame's golden config, then a small-MTU
        variant (too-big replies start from real frames) and one other, default headroom; and
        the small classes of tests/hostile.py's core corpus (bad headers, checksums, extension
        chains, fragments, sizes) under their config's variant.
table:  a few update sequences: a build, a health flip, a drain, an add and a removal, a reorder.
config: the golden configs (TOML), examples/fwd.toml and examples/glb-forwarding-table.json.
hc_http: HTTP_RESPONSES (usual and unusual answers to a health check), each after the byte of
        native/fuzz/fuzz_hc_http.c that picks the expected status 200.
hc_gue: echo replies as native/fuzz/fuzz_hc_gue.c lays them out: one to each probe from its own
        address, one from another address, a duplicate, one to a counter not in flight, IPv4 with
        options, cut and overlong ones.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from tests import golden

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("core", "table", "config", "hc_http", "hc_gue")

# fuzz_core.c's VARIANTS: the one that mirrors each golden config.
CORE_VARIANT = {"golden": 0, "golden_echo": 1, "golden_mac": 1, "golden_v4only": 2, "golden_jumbo": 5}
CORE_VARIANTS = 8
SMALL_MTU_VARIANTS = (3, 4)  # MTU 576, 120
DEFAULT_LAYOUT = 0x40  # FWD_MIN_HEADROOM, no tailroom


def core_seeds() -> list[bytes]:
    out = []
    for i, f in enumerate(golden.fixtures()):
        variant = CORE_VARIANT.get(f.config, 0)
        out.append(bytes([variant, DEFAULT_LAYOUT]) + f.frame)
        out.append(bytes([SMALL_MTU_VARIANTS[i % 2], DEFAULT_LAYOUT]) + f.frame)
        out.append(bytes([(variant + 1 + i) % CORE_VARIANTS, DEFAULT_LAYOUT]) + f.frame)
    return out


# tests/hostile.py's small core classes (the truncations are left to the fuzzer's own cuts)
HOSTILE_CLASSES = ("ipv4_header", "checksum", "ipv6_ext", "fragment", "size")
MAX_CORE_FRAME = 9200  # fuzz_core.c's MAX_FRAME


def hostile_core_seeds() -> list[bytes]:
    from tests import hostile

    out = []
    for cls in HOSTILE_CLASSES:
        for c in hostile.CORE_CLASSES[cls]():
            if len(c.frame) <= MAX_CORE_FRAME:
                out.append(bytes([CORE_VARIANT.get(c.config, 0), DEFAULT_LAYOUT]) + c.frame)
    return out


def _entry(pool_index: int, state: int = 0, healthy: bool = True) -> bytes:
    return bytes([pool_index, state | (8 if healthy else 0)])


def _step(*entries: bytes) -> bytes:
    return bytes([len(entries)]) + b"".join(entries)


def table_seeds() -> list[bytes]:
    # fuzz_table.c's input: flags, then steps (count, then (address, state|health) pairs).
    # Pool: even indices IPv4, odd IPv6. States: 0 active, 1 filling, 2 draining, 3 inactive.
    base = [_entry(i) for i in range(6)]
    mixed = [_entry(0), _entry(1, 2), _entry(2, 0, False), _entry(3, 1), _entry(4, 3), _entry(5)]
    v4_literal = bytes([0x80, 192, 0, 2, 1, 0x08])
    v6_literal = bytes([0xC0]) + bytes(15) + b"\x01" + b"\x08"
    # 16 backends, mostly bad: rows whose kept list (8) holds only bad ones ("deep" rows), then
    # the few good ones turn bad and back
    bad = [_entry(i, 2 if i % 3 == 0 else 0, i % 3 == 0) for i in range(2, 16)]
    deep = [
        _step(_entry(0), _entry(1), *bad),
        _step(_entry(0, 0, False), _entry(1), *bad),
        _step(_entry(0), _entry(1, 2), *bad),
        _step(_entry(0, 0, False), _entry(1, 0, False), *bad),
        _step(_entry(0, 1), _entry(1, 0, False), *bad),
    ]
    return [
        b"\x00" + b"".join(deep),
        b"\x01" + b"".join(deep),
        b"\x00" + _step(*base),
        b"\x00" + _step(*base) + _step(base[0], _entry(1, 0, False), *base[2:]),
        b"\x00" + _step(*base) + _step(_entry(0, 2), *base[1:]) + _step(*base[1:]),
        b"\x00" + _step(*base[:3]) + _step(*base) + _step(*reversed(base)),
        b"\x01" + _step(*mixed) + _step(*mixed[:3]) + _step(*mixed, _entry(7), _entry(8, 1)),
        b"\x02" + _step(base[0]) + _step(base[0], base[1]) + _step() + _step(*base),
        b"\x00" + _step(*mixed) + _step(mixed[0], mixed[0]) + _step(*mixed[1:]),
        b"\x00" + _step(v4_literal, v6_literal, *base[:2]) + _step(v6_literal),
    ]


def config_seeds() -> list[bytes]:
    out = [gc.model.to_toml().encode() for gc in golden.configs().values()]
    for name in ("fwd.toml", "glb-forwarding-table.json"):
        out.append((ROOT / "examples" / name).read_bytes())
    return out


# Answers a backend may send on a kept connection: usual ones, the framings the Python framer
# handles (healthcheck.checks._response) and ones that cannot keep the connection.
HTTP_RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nabcd\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\nx\n0\n\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
)


def hc_http_seeds() -> list[bytes]:
    return [b"\x00" + r for r in HTTP_RESPONSES]


# fuzz_hc_gue.c's constants: the lane's identifier and token head, the first probe's counter
GUE_IDENT = 0x4242
GUE_TOKEN_HEAD = b"fwd-hc-fuzz\x00"
GUE_FIRST = 0x1000
GUE_FROM = {"127.0.0.1": 0, "127.0.0.2": 1, "::1": 2}


def _echo_reply(counter: int, ihl: int = 5) -> bytes:
    """An ICMP echo reply carrying the lane's token, after an IPv4 header of ihl words (0: none)."""
    ip = bytes([0x40 | ihl]) + bytes(4 * ihl - 1) if ihl else b""
    icmp = bytes([0, 0, 0, 0]) + GUE_IDENT.to_bytes(2, "big") + (counter & 0xFFFF).to_bytes(2, "big")
    return ip + icmp + GUE_TOKEN_HEAD + counter.to_bytes(8, "big")


def _gue_input(sent: int, *dgrams: tuple[str, bytes]) -> bytes:
    out = bytes([sent])
    for source, d in dgrams:
        out += bytes([GUE_FROM[source], len(d)]) + d
    return out


def hc_gue_seeds() -> list[bytes]:
    c = [GUE_FIRST + i for i in range(6)]
    return [
        _gue_input(0b000001, ("127.0.0.1", _echo_reply(c[0]))),
        # all six sent: slots 0-3 are IPv4 (127.0.0.1, .2, .1, .3), 4-5 IPv6 (::1)
        _gue_input(
            0b111111,
            ("127.0.0.1", _echo_reply(c[0])),
            ("127.0.0.2", _echo_reply(c[1])),
            ("127.0.0.1", _echo_reply(c[2], ihl=15)),
            ("127.0.0.1", _echo_reply(c[3])),  # slot 3's counter from the wrong address
            ("::1", _echo_reply(c[4], ihl=0)),
            ("::1", _echo_reply(c[5], ihl=0)),
            ("::1", _echo_reply(c[5], ihl=0)),  # a duplicate
        ),
        _gue_input(0b000011, ("127.0.0.2", _echo_reply(c[0])), ("127.0.0.1", _echo_reply(c[0] + 65536))),
        _gue_input(0b010000, ("::1", _echo_reply(c[0], ihl=0)[:-1]), ("127.0.0.1", _echo_reply(c[0]) + b"x")),
    ]


def write(directory: Path) -> dict[str, Path]:
    """Write every target's seeds into directory/<target>/ (named by content); {target: dir}."""
    makers = {
        "core": lambda: core_seeds() + hostile_core_seeds(),
        "table": table_seeds,
        "config": config_seeds,
        "hc_http": hc_http_seeds,
        "hc_gue": hc_gue_seeds,
    }
    dirs = {}
    for target in TARGETS:
        d = Path(directory) / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():  # seeds of an older harness layout
            old.unlink()
        for data in makers[target]():
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        dirs[target] = d
    return dirs


if __name__ == "__main__":
    for target, d in write(Path(sys.argv[1])).items():
        print(f"{target}: {len(list(d.iterdir()))} seeds in {d}")
