"""cffi build script (API mode, out of line) for the C packet core.

The cdef is read from native/fwd_api.h, native/runtime_api.h and native/redirect_api.h
between their cdef markers, so the headers stay the single source of truth for what Python
may call.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]


def _cdef_section(header: str) -> str:
    text = (NATIVE / header).read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


def api_declarations() -> str:
    return _cdef_section("fwd_api.h") + _cdef_section("runtime_api.h") + _cdef_section("redirect_api.h")


def native_sources() -> list[str]:
    # Every top-level .c file under native/ is part of the core; tools and BPF
    # programs live in subfolders.
    return sorted(str(p.relative_to(ROOT)) for p in NATIVE.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(api_declarations())
ffibuilder.set_source(
    "fwd._fwd_native",
    '#include "fwd_api.h"\n#include "runtime_api.h"\n#include "redirect_api.h"\n',
    sources=native_sources(),
    include_dirs=[str(NATIVE)],
    extra_compile_args=CFLAGS,
    # library-internal calls (the back ends and fwd_bench calling fwd_process) bind to the
    # library's own definitions: a direct call, not one through the PLT
    extra_link_args=["-Wl,-Bsymbolic-functions"],
    libraries=["xdp", "bpf"],  # AF_XDP sockets (xsk.c) and the XDP steering loader (steer.c)
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
