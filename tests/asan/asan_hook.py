"""Make `import fwd._fwd_native` load the sanitizer build, and check that it did (`make test-asan`).

tests/asan/build_asan.py copies this file into build/asan/venv, whose .pth calls install() at every
interpreter start, so the pytest process and the fwd subprocesses it runs all get the ASan+UBSan
core whatever sys.path says. Loaded into pytest with `-p asan_hook`, the hooks below refuse to
run the tests unless that build (and the ASan runtime) really is what is mapped.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MODULE = "fwd._fwd_native"
_so: Path | None = None


class _SanitizedCore:
    """A meta path finder that answers for fwd._fwd_native only."""

    def __init__(self, so: Path) -> None:
        self.so = so

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        return importlib.util.spec_from_file_location(name, self.so)


def install(so: str) -> None:
    global _so
    _so = Path(so).resolve()
    if not _so.is_file():
        raise ImportError(f"asan_hook: {_so} is missing (run tests/asan/build_asan.py)")
    sys.meta_path.insert(0, _SanitizedCore(_so))


def _mapped() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted({line.split()[-1] for line in f if "/" in line})


def check() -> str:
    """Raise unless the loaded core is the sanitized build, running under the ASan runtime."""
    import fwd._fwd_native as core

    loaded = Path(core.__file__).resolve()
    if _so is None or loaded != _so:
        raise RuntimeError(f"{MODULE} came from {loaded}, not the ASan build {_so}")
    data = loaded.read_bytes()
    for symbol in (b"__asan_report_load", b"__ubsan_handle_"):
        if symbol not in data:
            raise RuntimeError(f"{loaded} is not instrumented ({symbol.decode()}* missing)")
    maps = _mapped()
    if not any("libasan.so" in m for m in maps):
        raise RuntimeError("the ASan runtime is not mapped (LD_PRELOAD missing?)")
    others = [m for m in maps if "_fwd_native" in m and Path(m) != loaded]
    if others:
        raise RuntimeError(f"another copy of the core is mapped too: {others}")
    return str(loaded)


def pytest_report_header(config):
    return f"test-asan: {MODULE} = {check()} (ASan+UBSan)"


def pytest_sessionstart(session):
    try:
        check()
    except RuntimeError as e:
        import pytest

        raise pytest.UsageError(f"test-asan: {e}") from None
