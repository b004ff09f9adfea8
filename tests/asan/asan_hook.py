"""Make `import fwd._fwd_native` (and healthcheck._lanes) load the sanitizer build, and check that
it did (`make test-asan`).

tests/asan/build_asan.py copies this file into build/asan/venv, whose .pth calls install() at every
interpreter start, so the pytest process and the fwd subprocesses it runs all get the ASan+UBSan
core whatever sys.path says. Loaded into pytest with `-p asan_hook`, the hooks below refuse to
run the tests unless that build (and the ASan runtime) really is what is mapped.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

MODULE = "fwd._fwd_native"
LANES = "healthcheck._lanes"  # the health checker's lanes (native/hc), their own extension
_so: Path | None = None
_sos: dict[str, Path] = {}
_guarded = {"batches": 0, "frames": 0}  # what went through guard_frame_tails, for the summary


class _SanitizedCore:
    """A meta path finder that answers for the sanitized modules only."""

    def __init__(self, sos: dict[str, Path]) -> None:
        self.sos = sos

    def find_spec(self, name, path=None, target=None):
        so = self.sos.get(name)
        if so is None:
            return None
        return importlib.util.spec_from_file_location(name, so)


def install(so: str, lanes: str) -> None:
    global _so
    _so = Path(so).resolve()
    _sos.update({MODULE: _so, LANES: Path(lanes).resolve()})
    for p in _sos.values():
        if not p.is_file():
            raise ImportError(f"asan_hook: {p} is missing (run tests/asan/build_asan.py)")
    sys.meta_path.insert(0, _SanitizedCore(_sos))


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
    import healthcheck._lanes as lanes

    lanes_so = Path(lanes.__file__).resolve()
    if lanes_so != _sos.get(LANES) or b"__asan_report_load" not in lanes_so.read_bytes():
        raise RuntimeError(f"{LANES} came from {lanes_so}, not the ASan build {_sos.get(LANES)}")
    return f"{loaded}, {LANES} = {lanes_so}"


class _MallocFFI:
    """fwd.native's ffi, except that new() takes its memory from C malloc.

    Python's own allocator (pymalloc, kept for speed: PYTHONMALLOC=malloc made the pure-Python
    reference model 5x slower) serves small ffi.new() buffers from its arenas, without redzones;
    from malloc, ASan surrounds every struct and array fwd.native hands to the core with them.
    """

    def __init__(self, ffi) -> None:
        import cffi

        libc = cffi.FFI()
        libc.cdef("void *malloc(size_t); void free(void *);")
        c = libc.dlopen(None)  # the preloaded libasan's malloc and free
        self._ffi = ffi
        self.new = ffi.new_allocator(alloc=c.malloc, free=c.free)  # zero-filled, as ffi.new's

    def __getattr__(self, name):
        return getattr(self._ffi, name)


def malloc_buffers() -> None:
    import fwd.native as native

    native.ffi = _MallocFFI(native.ffi)


def guard_frame_tails() -> None:
    """Poison each frame's tail during fwd_process_batch, so an over-read of a frame is reported.

    Frames sit at a fixed stride in one buffer with tailroom after each, so ASan alone only sees a
    read that leaves the whole buffer. The core may write after a frame (the API allows it), but
    it must never read there before writing; poisoning turns any access into a report. Test-only:
    wraps fwd.native.process_batch in this process (the C is unchanged).
    """
    import fwd.native as native

    ffi = native.ffi
    runtime = ctypes.CDLL(None)  # libasan is preloaded, so its interface is global
    poison, unpoison = runtime.__asan_poison_memory_region, runtime.__asan_unpoison_memory_region
    for f in (poison, unpoison):
        f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t], None
    poisoned = runtime.__asan_address_is_poisoned
    poisoned.argtypes, poisoned.restype = [ctypes.c_void_p], ctypes.c_int
    batch = native.process_batch

    def process_batch(snap, bufs, stride, headroom, lens, n, results, counters):
        base, size = int(ffi.cast("uintptr_t", bufs)), ffi.sizeof(bufs)
        for i in range(n):
            end = i * stride + headroom + lens[i]
            poison(base + end, max(0, (i + 1) * stride - end))
            if i == 0 and end < stride and not poisoned(base + end):  # the guard itself works
                raise RuntimeError(f"asan_hook: the byte after frame 0 is not poisoned ({base + end:#x})")
        _guarded["batches"] += 1
        _guarded["frames"] += n
        try:
            batch(snap, bufs, stride, headroom, lens, n, results, counters)
        finally:
            unpoison(base, size)

    native.process_batch = process_batch


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"test-asan: {MODULE} = {check()} (ASan+UBSan); {_guarded['frames']} frames in "
        f"{_guarded['batches']} fwd_process_batch calls ran with poisoned tails"
    )


def pytest_sessionstart(session):
    try:
        check()
        malloc_buffers()
        guard_frame_tails()
    except RuntimeError as e:
        import pytest

        raise pytest.UsageError(f"test-asan: {e}") from None
