"""Check the XDP steering program against the packet core (root; no traffic is sent).

    .venv/bin/python native/bpf/steer_vs_core.py [MUTATIONS_PER_FRAME]

Every golden frame (tests/golden.py, every config) plus random mutations of it
(cut, bytes changed, padding added) goes through the C core (fwd.dataplane)
and through the steering program (fwd/bpf/steer_check: BPF_PROG_TEST_RUN on
lo of a scratch network namespace). The program must redirect every frame
the core forwards or answers, never one the core passes, and every frame the
core drops whose destination is inside a bind prefix (drops of frames to
other addresses may go to the kernel, which drops them too). Frames over
3500 bytes are skipped: BPF_PROG_TEST_RUN would hand the program only their
first page. Needs make -C native/bpf check.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fwd import config, native  # noqa: E402
from fwd.dataplane import Dataplane  # noqa: E402
from tests import golden  # noqa: E402

TOOL = ROOT / "fwd" / "bpf" / "steer_check"
OBJ = ROOT / "fwd" / "bpf" / "steer.bpf.o"


def mutate(rnd: random.Random, fr: bytes) -> bytes:
    b = bytearray(fr)
    k = rnd.randrange(5)
    if k == 0:
        return bytes(b[: rnd.randrange(len(b) + 1)])
    if k == 1 and len(b) > 14:
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(14, len(b))] = rnd.randrange(256)
        return bytes(b)
    if k == 2:  # the header bytes that decide most
        i = rnd.choice([14, 15, 16, 17, 20, 21, 23, 24, 25, 34, 35, 36, 37, 46, 54, 55, 56, 57, 62, 74, 75])
        if i < len(b):
            b[i] = rnd.randrange(256)
        return bytes(b)
    if k == 3:
        return bytes(b) + bytes(rnd.randrange(1, 40))
    return bytes(b[: -rnd.randrange(1, 9)]) if len(b) > 20 else bytes(b)


def vip_dst(fr: bytes, binds) -> bool:
    l2 = 18 if fr[12:14] == b"\x81\x00" else 14
    kind = fr[l2 - 2 : l2]
    if kind == b"\x08\x00" and len(fr) >= l2 + 20:
        addr = ipaddress.ip_address(fr[l2 + 16 : l2 + 20])
    elif kind == b"\x86\xdd" and len(fr) >= l2 + 40:
        addr = ipaddress.ip_address(fr[l2 + 24 : l2 + 40])
    else:
        return False
    return any(b.prefix.version == addr.version and addr in b.prefix for b in binds)


def main() -> int:
    mutations = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    rnd = random.Random(7)
    bad = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (toml, pcap) in golden.write_files(Path(tmp)).items():
            cfg = config.load_config(toml)
            dp = Dataplane(cfg)
            frames = golden.read_pcap(pcap)
            frames += [mutate(rnd, f) for f in frames for _ in range(mutations)]
            results = dp.process_many(frames)
            binds = Path(tmp) / f"{name}.binds"
            size = native.ffi.sizeof("struct fwd_bind_spec") * len(dp.binds)
            binds.write_bytes(bytes(native.ffi.buffer(native._bind_specs(dp.binds), size)))
            stream = b"".join(struct.pack("=I", len(f)) + f for f in frames)
            run = f"ip link set lo up && {TOOL} {OBJ} {binds} {int(cfg.node.forward_icmp_echo)}"
            p = subprocess.run(["unshare", "-n", "sh", "-c", run], input=stream, capture_output=True)
            got = p.stdout.decode().strip()
            if p.returncode or len(got) != len(frames):
                print(f"{name}: steer_check failed ({p.returncode}): {p.stderr.decode()[-500:]}")
                return 2
            seen: dict[tuple[str, str], int] = {}
            for f, r, g in zip(frames, results, got, strict=True):
                if len(f) > 3500:
                    continue
                total += 1
                seen[(r.verdict, g)] = seen.get((r.verdict, g), 0) + 1
                if r.verdict == "pass":
                    ok = g == "P"
                elif r.verdict in ("forward", "reply"):
                    ok = g == "R"
                else:
                    ok = g == "R" or not vip_dst(f, dp.binds)
                if not ok:
                    bad += 1
                    if bad <= 10:
                        print(f"MISMATCH {name}: core {r.verdict}/{r.reason}, program {g}: {f[:80].hex()}")
            print(name, {f"{v}->{g}": n for (v, g), n in sorted(seen.items())})
    print(f"{total} frames, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
