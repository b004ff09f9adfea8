"""Prove the sanitizer harness can fail (`make test-asan` runs this before the tests).

Each case calls the ASan+UBSan core the wrong way on purpose, in a child interpreter with the
test-asan environment, and passes only if the child is killed with the expected report:
an out-of-bounds heap read (AddressSanitizer) and a misaligned struct (UndefinedBehaviorSanitizer).
Nothing here is part of the extension; the misuse is on the caller's side.
"""

from __future__ import annotations

import subprocess
import sys

PRELUDE = "import asan_hook; asan_hook.check()\nfrom fwd._fwd_native import ffi, lib\n"

CASES = {
    # SipHash over 4,100 bytes of a 4,096-byte buffer: reads 4 bytes past its end.
    "heap-buffer-overflow": (
        "buf = ffi.new('uint8_t[]', 4096)\nkey = ffi.new('uint8_t[]', 16)\nout = ffi.new('uint8_t[]', 8)\n"
        "lib.fwd_siphash24(buf, 4100, key, out)\n",
        "ERROR: AddressSanitizer: heap-buffer-overflow",
    ),
    # fwd_update_stats one byte off its alignment: the core's stores into it are undefined.
    "misaligned": (
        "t = lib.fwd_table_new(bytes(16), bytes(16), 0)\nraw = ffi.new('uint8_t[]', 128)\n"
        "stats = ffi.cast('struct fwd_update_stats *', raw + 1)\n"
        "lib.fwd_table_set_backends(t, ffi.NULL, 0, stats)\n",
        "runtime error: ",
    ),
}


def main() -> int:
    failed = 0
    for name, (code, expect) in CASES.items():
        proc = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True)
        caught = proc.returncode != 0 and expect in proc.stderr
        first = next((line for line in proc.stderr.splitlines() if expect in line), "(no report)")
        verdict = "caught" if caught else "NOT CAUGHT"
        print(f"canary {name}: {verdict} (exit {proc.returncode}) {first.strip()}")
        if not caught:
            failed += 1
            sys.stderr.write(proc.stderr[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
