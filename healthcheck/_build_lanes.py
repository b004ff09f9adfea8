"""cffi build script (API mode, out of line) for healthcheck._lanes, the health checker's lanes
in C (native/hc/hc_lanes.c). Its own extension: the health checker does not depend on fwd's
packet core. The cdef is read from native/hc/hc_lanes.h between its cdef markers."""

from __future__ import annotations

import pathlib

from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
HC = ROOT / "native" / "hc"
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]
SOURCES = ["native/hc/hc_lanes.c"]


def api_declarations() -> str:
    text = (HC / "hc_lanes.h").read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


ffibuilder = FFI()
ffibuilder.cdef(api_declarations())
ffibuilder.set_source(
    "healthcheck._lanes",
    '#include "hc_lanes.h"\n',
    sources=SOURCES,
    include_dirs=[str(HC)],
    extra_compile_args=CFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
