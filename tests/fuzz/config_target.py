"""What the config-loader fuzz target checks for one input (also replayed by the regression test).

The input is a whole config file's bytes, loaded with fwd.config.load_config exactly as
`fwd check-config` / `fwd run` load it. Either it loads, and the result respects the limits the
C core checks again (so a config that passes validation is never refused later at run time), or
it raises ConfigError whose text is one printable line, "FILE: KEY: REASON". Any other exception
(a traceback for the user) escapes to the fuzzer and is a crash.
"""

from __future__ import annotations

from pathlib import Path

from fwd.config import (
    HASH_FIELDS,
    MAX_BACKENDS,
    MAX_BINDS,
    MAX_TABLES,
    MTU_MAX,
    MTU_MIN,
    PROTOS,
    STATES,
    Config,
    ConfigError,
    bind_json,
    describe_bind,
    load_config,
)


def check(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as e:
        check_error(e, str(path))
        return
    check_config(cfg)


def check_error(e: ConfigError, path: str) -> None:
    text = str(e)
    assert e.file == path, f"error names {e.file!r}, not the file {path!r}"
    assert e.key.strip() and e.reason.strip(), f"empty key or reason: {text!r}"
    assert text == f"{path}: {e.key}: {e.reason}", f"not 'file: key: reason': {text!r}"
    assert text.isprintable() and len(text.splitlines()) == 1, f"not one printable line: {text!r}"


def check_config(cfg: Config) -> None:
    assert cfg.format in ("toml", "glb-json")
    assert MTU_MIN <= cfg.node.mtu <= MTU_MAX
    assert len(cfg.tables) <= MAX_TABLES
    assert len(cfg.all_binds()) <= MAX_BINDS
    for t in cfg.tables:
        assert len(t.hash_key) == 16 and len(t.seed) == 16
        assert len(t.backends) <= MAX_BACKENDS
        assert len({b.address for b in t.backends}) == len(t.backends), "duplicate backend"
        for be in t.backends:
            assert be.state in STATES and isinstance(be.healthy, bool)
        for b in t.binds:
            assert b.proto in PROTOS
            assert 0 <= b.port_lo <= b.port_hi <= 65535
            assert b.hash_fields and set(b.hash_fields) <= set(HASH_FIELDS)
    # what `fwd check-config`, `fwd status` and the control API print about the binds
    for i, (_, b) in enumerate(cfg.all_binds()):
        assert bind_json(cfg, i)["index"] == i
        describe_bind(b)
