"""fwd-redirect on an L7 node: the tc ingress program that decapsulates the L4 nodes' GUE packets
and gives GLB's "second chance" (native/bpf/redirect.bpf.c, loaded by native/redirect.c).

Two layers in one module, since they serve only this feature: the thin typed wrappers over
native/redirect_api.h (``_lib`` calls, return codes turned into RedirectError), and the API the CLI
uses: attach / detach / stats by interface name, and RedirectProgram, a loaded but unattached
program for BPF_PROG_TEST_RUN.

State between CLI invocations lives in the kernel: the tc filter (clsact ingress, handle and
priority 0x4657) holds the program, which holds its maps; the program and maps are also pinned in
/sys/fs/bpf/fwd/redirect/IFNAME/ (bpffs is mounted there when it is not). A later `stats` or
`detach` asks tc which program is attached and uses the pins when they name that program, else
reaches the maps through the program itself (under `ip netns exec` each command has its own
short-lived /sys, so pins made by one command are gone for the next).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from fwd import capabilities

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "OBJECT",
    "PIN_ROOT",
    "RedirectError",
    "RedirectProgram",
    "Source",
    "attach",
    "counter_names",
    "detach",
    "pin_dir",
    "stats",
]

OBJECT = Path(__file__).resolve().parent / "bpf" / "redirect.bpf.o"
PIN_ROOT = "/sys/fs/bpf/fwd/redirect"
TC_HANDLE = 0x4657
TC_PRIORITY = 0x4657
CLSACT_INGRESS = 0xFFFFFFF2
CLSACT_EGRESS = 0xFFFFFFF3
MODES = {"explicit": 1, "fallback": 2}
_ERRLEN = 512
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")


class RedirectError(RuntimeError):
    """fwd-redirect cannot do what was asked; the text is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# ----------------------------------------------------------------------------------------------
# layer 2: the C loader


def _native() -> tuple[Any, Any]:
    """The extension's ffi and lib, through fwd.native (the only importer of fwd._fwd_native); the
    import is late so that a missing build is one line of error, not an ImportError at start."""
    try:
        from fwd.native import ffi, lib
    except ImportError as e:
        raise RedirectError(f"the C loader is not built ({e}); build it with 'make build'") from None
    if not hasattr(lib, "fwd_redirect_load"):
        raise RedirectError("the C extension predates fwd-redirect; rebuild it with 'make build'")
    return ffi, lib


def counter_names() -> tuple[str, ...]:
    ffi, lib = _native()
    return tuple(
        ffi.string(lib.fwd_redirect_counter_name(i)).decode() for i in range(lib.fwd_redirect_counter_count())
    )


def _err(ffi: Any, buf: Any) -> str:
    return ffi.string(buf).decode(errors="replace")


@dataclass(frozen=True)
class Source:
    """Outer source address for forwarded packets whose next hop is of this address's family.

    explicit: always used (``--source``); fallback: used only when the outer family changes
    (otherwise the received packet's outer destination, this node's address, is the source).
    """

    address: IPAddress
    mode: str = "explicit"


def _prefixes(ffi: Any, nets: Sequence[IPNetwork]) -> Any:
    arr = ffi.new("struct fwd_redirect_prefix[]", max(1, len(nets)))
    for i, n in enumerate(nets):
        arr[i].family = n.version
        arr[i].prefixlen = n.prefixlen
        packed = n.network_address.packed
        ffi.memmove(arr[i].addr, packed, len(packed))
    return arr


def _sources(ffi: Any, sources: Sequence[Source]) -> Any:
    arr = ffi.new("struct fwd_redirect_source[]", max(1, len(sources)))
    for i, s in enumerate(sources):
        arr[i].family = s.address.version
        arr[i].mode = MODES[s.mode]
        ffi.memmove(arr[i].addr, s.address.packed, len(s.address.packed))
    return arr


def _check_sources(sources: Sequence[Source]) -> None:
    seen: dict[int, Source] = {}
    for s in sources:
        if s.address.version in seen:
            raise RedirectError(
                f"two IPv{s.address.version} sources ({seen[s.address.version].address}, {s.address}); "
                "give at most one per family"
            )
        seen[s.address.version] = s


class _Handle:
    """A loaded or found fwd_redirect program (struct fwd_redirect *), closed with close()."""

    def __init__(self, ptr: Any) -> None:
        self.ffi, self.lib = _native()
        self.ptr = ptr

    def close(self) -> None:
        if self.ptr is not None:
            self.lib.fwd_redirect_close(self.ptr)
            self.ptr = None

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _buf(self) -> Any:
        return self.ffi.new("char[]", _ERRLEN)

    def configure(self, allow: Sequence[IPNetwork], sources: Sequence[Source]) -> None:
        _check_sources(sources)
        err = self._buf()
        rc = self.lib.fwd_redirect_configure(
            self.ptr, _prefixes(self.ffi, allow), len(allow), _sources(self.ffi, sources), len(sources),
            err, _ERRLEN,
        )  # fmt: skip
        if rc != 0:
            raise RedirectError(_err(self.ffi, err))

    def counters(self) -> dict[str, int]:
        names = counter_names()
        out = self.ffi.new("uint64_t[]", len(names))
        err = self._buf()
        if self.lib.fwd_redirect_counters(self.ptr, out, len(names), err, _ERRLEN) != 0:
            raise RedirectError(_err(self.ffi, err))
        return {n: int(out[i]) for i, n in enumerate(names)}

    def state(self) -> dict[str, int]:
        st = self.ffi.new("struct fwd_redirect_state *")
        self.lib.fwd_redirect_get_state(self.ptr, st)
        return {"prog_id": st.prog_id, "pinned": st.pinned, "created_qdisc": st.created_qdisc}

    def sources(self) -> dict[str, dict[str, str | None]]:
        out = self.ffi.new("struct fwd_redirect_source[2]")
        err = self._buf()
        if self.lib.fwd_redirect_get_sources(self.ptr, out, err, _ERRLEN) != 0:
            raise RedirectError(_err(self.ffi, err))
        res: dict[str, dict[str, str | None]] = {}
        for i, fam in ((0, "ipv4"), (1, "ipv6")):
            mode = int(out[i].mode)
            raw = bytes(self.ffi.buffer(out[i].addr, 4 if i == 0 else 16))
            addr = str(ipaddress.ip_address(raw)) if mode else None
            name = {0: "packet destination", 1: "explicit", 2: "fallback"}.get(mode, "?")
            res[fam] = {"mode": name, "address": addr}
        return res

    def allow(self) -> list[str]:
        cap = 1024
        out = self.ffi.new("struct fwd_redirect_prefix[]", cap)
        err = self._buf()
        n = self.lib.fwd_redirect_get_allow(self.ptr, out, cap, err, _ERRLEN)
        if n < 0:
            raise RedirectError(_err(self.ffi, err))
        nets = []
        for i in range(min(n, cap)):
            size = 4 if out[i].family == 4 else 16
            addr = ipaddress.ip_address(bytes(self.ffi.buffer(out[i].addr, size)))
            nets.append(ipaddress.ip_network(f"{addr}/{out[i].prefixlen}"))
        return [str(n) for n in sorted(nets, key=lambda x: (x.version, x))]


class RedirectProgram(_Handle):
    """The program loaded from OBJECT but attached nowhere: configure it and run frames through it
    with BPF_PROG_TEST_RUN (tests), or attach it (attach() below)."""

    def __init__(self, obj_path: str | Path = OBJECT) -> None:
        ffi, lib = _native()
        if not Path(obj_path).exists():
            raise RedirectError(f"{obj_path} is missing; build it with 'make -C native/bpf'")
        err = ffi.new("char[]", _ERRLEN)
        ptr = lib.fwd_redirect_load(str(obj_path).encode(), err, _ERRLEN)
        if ptr == ffi.NULL:
            raise RedirectError(_err(ffi, err))
        super().__init__(ptr)

    def run(self, frame: bytes, ifindex: int = 0) -> tuple[int, bytes]:
        """(tc verdict, frame after the program) for one input frame."""
        room = len(frame) + 256
        out = self.ffi.new("uint8_t[]", room)
        out_len = self.ffi.new("uint32_t *", room)
        retval = self.ffi.new("uint32_t *")
        err = self._buf()
        rc = self.lib.fwd_redirect_test_run(
            self.ptr, frame, len(frame), ifindex, out, out_len, retval, err, _ERRLEN
        )
        if rc != 0:
            raise RedirectError(_err(self.ffi, err))
        return int(retval[0]), bytes(self.ffi.buffer(out, out_len[0]))


# ----------------------------------------------------------------------------------------------
# layer 3: by interface name


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    addresses: tuple[IPAddress, ...]  # global, non-tentative addresses in kernel order


def pin_dir(ifname: str) -> str:
    return f"{PIN_ROOT}/{ifname}"


def check_privileges(what: str, load: bool = False) -> None:
    """attach (load=True): CAP_NET_ADMIN (tc), CAP_BPF (program, maps, pins) and CAP_PERFMON (the
    verifier refuses the program's pointer comparisons without it); detach: CAP_NET_ADMIN (the
    pins are files). CAP_SYS_ADMIN implies CAP_BPF and CAP_PERFMON. stats needs none when it can
    read the pins (docs/redirect.md, "Privileges")."""
    caps = capabilities.effective()
    missing = [] if capabilities.has(capabilities.CAP_NET_ADMIN, caps) else ["CAP_NET_ADMIN"]
    if load:
        missing += capabilities.missing_bpf(caps)
    if missing:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        raise RedirectError(f"{what} needs root: running as {who} without {', '.join(missing)}")


def link(ifname: str) -> Link:
    if not _IFNAME.fullmatch(ifname):
        raise RedirectError(f"interface {ifname!r}: not a usable interface name")
    with IPRoute(groups=0) as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            links = ()
        if not links:
            raise RedirectError(f"interface {ifname} does not exist")
        index = links[0]["index"]
        addrs: list[IPAddress] = []
        for a in ipr.addr("dump", index=index):
            # scope global, not secondary/tentative/deprecated/dadfailed
            if a.get("scope") == 0 and not (a.get("IFA_FLAGS") or a.get("flags") or 0) & 0x69:
                text = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
                if text:
                    addrs.append(ipaddress.ip_address(text))
    return Link(ifname, index, tuple(addrs))


def _attached_id(lk: Link) -> int:
    ffi, lib = _native()
    pid = ffi.new("uint32_t *")
    err = ffi.new("char[]", _ERRLEN)
    if lib.fwd_redirect_query(lk.index, pid, err, _ERRLEN) != 0:
        raise RedirectError(f"{lk.name}: {_err(ffi, err)}")
    return int(pid[0])


def _open(lk: Link) -> _Handle:
    ffi, lib = _native()
    err = ffi.new("char[]", _ERRLEN)
    ptr = lib.fwd_redirect_open(lk.index, pin_dir(lk.name).encode(), err, _ERRLEN)
    if ptr == ffi.NULL:
        raise RedirectError(f"{lk.name}: {_err(ffi, err)}")
    return _Handle(ptr)


def attach(
    ifname: str,
    allow: Sequence[IPNetwork],
    sources: Iterable[IPAddress] = (),
    obj_path: str | Path = OBJECT,
) -> dict[str, Any]:
    """Load, configure and attach the program on ifname's tc ingress (replacing a fwd-redirect
    already there, counters starting from 0), pinned under pin_dir(ifname)."""
    if not allow:
        raise RedirectError("give at least one --allow prefix (the L4 nodes' addresses)")
    lk = link(ifname)
    check_privileges("fwd redirect attach", load=True)
    explicit = [Source(a, "explicit") for a in sources]
    _check_sources(explicit)
    have = {s.address.version for s in explicit}
    fallback = []
    for version in (4, 6):
        if version not in have:
            first = next((a for a in lk.addresses if a.version == version), None)
            if first is not None:
                fallback.append(Source(first, "fallback"))
    with RedirectProgram(obj_path) as prog:
        prog.configure(allow, explicit + fallback)
        ffi, lib = prog.ffi, prog.lib
        st = ffi.new("struct fwd_redirect_state *")
        err = ffi.new("char[]", _ERRLEN)
        if lib.fwd_redirect_attach(prog.ptr, lk.index, pin_dir(ifname).encode(), st, err, _ERRLEN) != 0:
            raise RedirectError(f"{ifname}: {_err(ffi, err)}")
        return {
            "interface": ifname,
            "ifindex": lk.index,
            "prog_id": int(st.prog_id),
            "replaced_prog_id": int(st.replaced_id) or None,
            "created_qdisc": bool(st.created_qdisc),
            "pin_dir": pin_dir(ifname),
            "allow": prog.allow(),
            "sources": prog.sources(),
        }


def _other_filters(ipr: IPRoute, index: int) -> int:
    n = 0
    for parent in (CLSACT_INGRESS, CLSACT_EGRESS):
        try:
            for f in ipr.get_filters(index=index, parent=parent):
                if f.get_attr("TCA_KIND"):
                    n += 1
        except NetlinkError:
            pass
    return n


def _has_clsact(ipr: IPRoute, index: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index))


def detach(ifname: str) -> dict[str, Any]:
    """Take the program off ifname: tc filter, pins, and the clsact qdisc when the attach
    created it and no other filter uses it. RedirectError when nothing is attached."""
    lk = link(ifname)
    check_privileges("fwd redirect detach")
    ffi, lib = _native()
    prog_id = _attached_id(lk)
    created = False
    if prog_id:
        with _open(lk) as h:
            created = bool(h.state()["created_qdisc"])
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.fwd_redirect_detach(lk.index, pin_dir(ifname).encode(), err, _ERRLEN)
    if rc < 0:
        raise RedirectError(f"{ifname}: {_err(ffi, err)}")
    if rc == 1:
        raise RedirectError(f"fwd-redirect is not attached to {ifname}")
    removed_qdisc = False
    if created:
        with IPRoute(groups=0) as ipr:
            if _has_clsact(ipr, lk.index) and _other_filters(ipr, lk.index) == 0:
                try:
                    ipr.tc("del", "clsact", index=lk.index)
                    removed_qdisc = True
                except NetlinkError as e:
                    raise RedirectError(f"{ifname}: filter removed, but not the clsact qdisc: {e}") from None
    return {"interface": ifname, "prog_id": prog_id, "removed_qdisc": removed_qdisc}


def stats(ifname: str) -> dict[str, Any]:
    """Counters (summed over CPUs), allow list and sources of the program attached to ifname."""
    lk = link(ifname)  # no privilege needed when the pins are readable (else CAP_SYS_ADMIN)
    with _open(lk) as h:
        st = h.state()
        return {
            "interface": ifname,
            "prog_id": st["prog_id"],
            "pinned": bool(st["pinned"]),
            "pin_dir": pin_dir(ifname) if st["pinned"] else None,
            "allow": h.allow(),
            "sources": h.sources(),
            "counters": h.counters(),
        }


def is_attached(ifname: str) -> bool:
    return _attached_id(link(ifname)) != 0
