"""Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer into build/asan (`make test-asan`).

The in-place extension fwd/_fwd_native*.so is never touched (other test runs may be using it).
What this writes, all under build/asan:

* fwd/_fwd_native*.so - the same cffi module (same cdef, same sources) compiled with
  -fsanitize=address,undefined -fno-sanitize-recover=undefined, linked to gcc's libasan/libubsan;
* healthcheck/_lanes*.so - the health checker's lanes (native/hc) built the same way;
* venv/ - a tiny virtualenv over .venv's packages whose startup hook (asan_hook.py, copied from
  tests/asan/) makes every `import fwd._fwd_native` (and healthcheck._lanes) load those, also in
  subprocesses (the CLI tests run bin/fwd next to sys.executable); venv/bin/fwd is the console
  script for it;
* core_smoke - native/tests/core_smoke.c linked with the sanitized core, a pure C run in which
  leak detection works (Python itself leaks at exit, so leaks are not checked inside pytest);
* env - the environment the runs need (LD_PRELOAD of the matching libasan, *SAN_OPTIONS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "asan"
sys.path.insert(0, str(ROOT))

from fwd import _build_native as native  # noqa: E402
from healthcheck import _build_lanes as lanes  # noqa: E402

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
# -O1 + frame pointers: readable stacks in reports; -g: file:line in them.
CFLAGS = [*native.CFLAGS, *SANITIZE, "-O1", "-g", "-fno-omit-frame-pointer"]
CC = os.environ.get("CC", "gcc")
# No leak checks inside Python (the interpreter leaks by design at exit); core_smoke checks them.
ASAN_OPTIONS = "detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1"
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:abort_on_error=1"


def runtime_library() -> str:
    """The libasan the compiler links against: the one to LD_PRELOAD into the (uninstrumented) Python."""
    name = subprocess.run(
        [CC, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(name).resolve()
    if not path.is_file():
        sys.exit(f"build_asan: {CC} has no libasan.so (install its sanitizer runtime, e.g. libgcc-12-dev)")
    return str(path)


def build_extension() -> Path:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(native.api_declarations())
    headers = sorted(str(p) for p in native.NATIVE.glob("*.h"))
    ffi.set_source(
        "fwd._fwd_native",
        '#include "fwd_api.h"\n#include "runtime_api.h"\n#include "redirect_api.h"\n',
        # cffi compiles from inside OUT, so the paths must be absolute.
        sources=[str(ROOT / s) for s in native.native_sources()],
        depends=[*headers, __file__, native.__file__],  # rebuild when any of them changes
        include_dirs=[str(native.NATIVE)],
        extra_compile_args=CFLAGS,
        extra_link_args=SANITIZE,
        libraries=["xdp", "bpf"],
    )
    os.environ["CC"] = CC
    os.environ["LDSHARED"] = f"{CC} -shared"
    return Path(ffi.compile(tmpdir=str(OUT), verbose=False))


def build_lanes() -> Path:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(lanes.api_declarations())
    ffi.set_source(
        "healthcheck._lanes",
        '#include "hc_lanes.h"\n',
        sources=[str(ROOT / s) for s in lanes.SOURCES],
        depends=[str(lanes.HC / "hc_lanes.h"), __file__, lanes.__file__],
        include_dirs=[str(lanes.HC)],
        extra_compile_args=CFLAGS,
        extra_link_args=SANITIZE,
    )
    os.environ["CC"] = CC
    os.environ["LDSHARED"] = f"{CC} -shared"
    return Path(ffi.compile(tmpdir=str(OUT), verbose=False))


def build_core_smoke() -> Path:
    exe = OUT / "core_smoke"
    srcs = [ROOT / "native/tests/core_smoke.c"] + [
        native.NATIVE / f for f in ("core.c", "snapshot.c", "table.c", "siphash.c")
    ]
    deps = [*srcs, *native.NATIVE.glob("*.h"), Path(__file__)]
    if not exe.exists() or any(p.stat().st_mtime > exe.stat().st_mtime for p in deps):
        flags = [*CFLAGS, "-fno-sanitize-recover=all", f"-I{native.NATIVE}"]
        subprocess.run([CC, *flags, *map(str, srcs), "-o", str(exe)], check=True)
    return exe


def build_venv(so: Path, lanes_so: Path) -> Path:
    """A venv over .venv's packages with the import hook installed at interpreter start."""
    venv = OUT / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    main_site = sysconfig.get_path("purelib")  # .venv's, as this script runs under .venv/bin/python
    shutil.copyfile(ROOT / "tests" / "asan" / "asan_hook.py", site / "asan_hook.py")
    (site / "fwd_asan.pth").write_text(
        f"import site; site.addsitedir({main_site!r}); import asan_hook; "
        f"asan_hook.install({str(so)!r}, {str(lanes_so)!r})\n"
    )
    fwd = venv / "bin" / "fwd"
    fwd.write_text(f"#!{py}\nimport sys\nfrom fwd.cli import main\nsys.exit(main())\n")
    fwd.chmod(0o755)
    # Tests look for other tools (exabgp, ...) next to sys.executable: link .venv's.
    for tool in Path(sys.executable).parent.iterdir():
        link = venv / "bin" / tool.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(tool)
    return py


def write_env(libasan: str) -> Path:
    env = OUT / "env"
    env.write_text(
        f"export LD_PRELOAD={libasan}\n"
        f"export ASAN_OPTIONS={ASAN_OPTIONS}\n"
        f"export UBSAN_OPTIONS={UBSAN_OPTIONS}\n"
    )
    return env


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    libasan = runtime_library()
    so = build_extension()
    lanes_so = build_lanes()
    smoke = build_core_smoke()
    py = build_venv(so, lanes_so)
    env = write_env(libasan)
    print("build_asan:", ", ".join(str(p.relative_to(ROOT)) for p in (so, lanes_so, smoke, py, env)))


if __name__ == "__main__":
    main()
