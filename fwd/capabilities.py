"""Linux capabilities of this process, read from /proc (no libcap needed).

fwd run and fwd redirect check what they need up front so that a missing capability is named
in one line instead of surfacing as a verifier dump or a bare errno (docs/hardening.md).
"""

from __future__ import annotations

from pathlib import Path

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective() -> int:
    """The effective set as a bit mask (0 when /proc cannot say)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has(cap: int, caps: int | None = None) -> bool:
    return bool((effective() if caps is None else caps) >> cap & 1)


def missing_bpf(caps: int | None = None) -> list[str]:
    """What loading a BPF program with pointer comparisons needs: CAP_BPF and CAP_PERFMON (the
    verifier refuses those comparisons without it), both implied by CAP_SYS_ADMIN."""
    caps = effective() if caps is None else caps
    if has(CAP_SYS_ADMIN, caps):
        return []
    return [
        f"{name} (or CAP_SYS_ADMIN)"
        for cap, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"))
        if not has(cap, caps)
    ]
