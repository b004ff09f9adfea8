"""Network-namespace test rig: hosts as namespaces joined by veth pairs, and the tools the live
tests use on them (packet sockets opened inside a namespace, capture, `fwd run` as a child).

    client ──veth── l4 (eth0 in)      l4 (eth1 out) ──veth── lan (bridge br0) ──veth── be0, be1, be2

* client  eth0 10.99.1.2/24 fd99:1::2/64; 10.100.0.0/16 and fd99:301f::/32 (the VIPs) via l4.
* l4      eth0 10.99.1.1/24 fd99:1::1/64 (receives VIP traffic); eth1 10.99.2.1/24 fd99:2::1/64
          (egress towards the backends, so it differs from the receiving interface).
* lan     br0 with one port per backend and one towards l4.
* be<i>   eth0 with several addresses each, 10.99.2.<10+…>/24 and fd99:2::<…>/64 (a table's
          backends are spread over the namespaces; a frame's receiver is the namespace holding
          its outer destination).

Every namespace is named PREFIX + role, PREFIX = "fwdt<pid>-", and all interfaces are created
directly inside their namespaces, so nothing appears in (or can clash with) the root namespace.
Topology.destroy() deletes the namespaces (and with them every veth and bridge);
sweep_stale() deletes those of earlier runs whose process is gone.

Addresses are the only ones the tests use: every frame stays inside these namespaces.
The golden frame set (tests/golden.py) uses documentation and public addresses; adapt_frame()
maps them into the topology's private ranges *checksum-neutrally* (the replacement has the
same 16-bit one's complement sum), so every checksum in a frame stays as valid or as broken
as the golden set made it, and no length changes.

    python -m tests.netns.topology sweep     deletes namespaces left by dead test runs
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NS_PREFIX_BASE = "fwdt"
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
GUE_PORT = 19523

CLIENT4, CLIENT6 = "10.99.1.2", "fd99:1::2"
L4_IN4, L4_IN6 = "10.99.1.1", "fd99:1::1"
L4_OUT4, L4_OUT6 = "10.99.2.1", "fd99:2::1"
VIP_NET4, VIP_NET6 = "10.100.0.0/16", "fd99:301f::/32"


def prefix_for_run() -> str:
    return f"{NS_PREFIX_BASE}{os.getpid()}-"


# ----------------------------------------------------------------------------- commands


def sh(*cmd: str, check: bool = True, timeout: float = 30, ns: str | None = None) -> str:
    """Run a setup command (optionally inside namespace ns); its stdout. Failures raise with stderr."""
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    return sh("ip", *(["-n", ns] if ns else []), *args, check=check)


def ip_json(*args: str, ns: str | None = None):
    out = ip("-j", *args, ns=ns)
    return json.loads(out) if out.strip() else []


def list_netns() -> list[str]:
    return [e["name"] for e in ip_json("netns", "list")]


def sweep_stale() -> list[str]:
    """Delete namespaces fwdt<pid>-* whose creating process no longer exists."""
    gone = []
    for name in list_netns():
        m = re.fullmatch(rf"{NS_PREFIX_BASE}(\d+)-.*", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            for pid in netns_pids(name):
                _kill(pid)
            ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- inside a namespace

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable):
    """Call fn() on a thread that has entered namespace ns; its result (or exception).

    Sockets keep the namespace they were created in, so a socket made here can be used
    from any thread of this process afterwards.
    """
    box: dict = {}

    def run():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    t = threading.Thread(target=run, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def packet_socket(ns: str, ifname: str, rcvbuf: int = 0) -> socket.socket:
    """An AF_PACKET raw socket bound to ifname in namespace ns (all EtherTypes)."""

    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        s.bind((ifname, ETH_P_ALL))
        return s

    return in_netns(ns, make)


class Sender:
    """Sends whole Ethernet frames, unchanged, on one interface of a namespace."""

    def __init__(self, ns: str, ifname: str):
        self.sock = in_netns(ns, lambda: _tx_socket(ifname))

    def send(self, frame: bytes) -> None:
        for _ in range(100):
            try:
                n = self.sock.send(frame)
                assert n == len(frame), f"short send {n}/{len(frame)}"
                return
            except BlockingIOError:
                time.sleep(0.001)
            except OSError as e:
                if e.errno != 105:  # ENOBUFS: the qdisc is full, try again
                    raise
                time.sleep(0.001)
        raise OSError("could not send: transmit queue stays full")

    def close(self) -> None:
        self.sock.close()


def _tx_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    s.bind((ifname, 0))
    return s


@dataclass
class Frame:
    t: float  # time.monotonic() when read
    data: bytes


class Capture:
    """Every frame arriving on ifname in namespace ns (outgoing ones left out), read by a thread
    into .frames. stop() returns them with the kernel's count of frames it dropped for us."""

    def __init__(self, ns: str, ifname: str, rcvbuf: int = 64 << 20):
        self.ns, self.ifname = ns, ifname
        self.sock = packet_socket(ns, ifname, rcvbuf)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.settimeout(0.05)
        self.frames: list[Frame] = []
        self.kernel_drops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{ns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, addr = self.sock.recvmsg(65536, 256)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            self.frames.append(Frame(time.monotonic(), with_vlan_tag(data, anc)))

    def stats(self) -> tuple[int, int]:
        """(packets, drops) since the last call (PACKET_STATISTICS resets on read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", raw)

    def stop(self, settle: float = 0.3) -> list[Frame]:
        time.sleep(settle)
        self.kernel_drops += self.stats()[1]
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return self.frames

    def gue(self) -> list[Frame]:
        return [f for f in self.frames if is_gue(f.data)]


def with_vlan_tag(data: bytes, ancillary) -> bytes:
    """The frame as it was on the wire: the kernel strips an 802.1Q tag on receive and reports it
    in PACKET_AUXDATA (struct tpacket_auxdata); put it back after the MAC addresses."""
    for level, kind, blob in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(blob) >= 20:
            status, _, _, _, _, tci, tpid = struct.unpack_from("IIIHHHH", blob)
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def is_gue(frame: bytes) -> bool:
    if len(frame) < 14:
        return False
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x0800 and len(frame) >= 38:
        ihl = (frame[14] & 15) * 4
        return frame[23] == 17 and len(frame) >= 14 + ihl + 4 and _u16(frame, 14 + ihl + 2) == GUE_PORT
    if et == 0x86DD and len(frame) >= 58:
        return frame[20] == 17 and _u16(frame, 56) == GUE_PORT
    return False


def _u16(b: bytes, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def udp_sink(ns: str, port: int = GUE_PORT) -> socket.socket:
    """A UDP socket on port in ns (IPv4 and IPv6), so that the backends' kernels take the GUE
    datagrams quietly instead of answering each with ICMP port unreachable."""

    def make():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        s.bind(("::", port))
        return s

    return in_netns(ns, make)


# ----------------------------------------------------------------------------- topology


@dataclass
class Backend:
    ns: str
    mac: str
    addrs: list[str] = field(default_factory=list)  # every address it holds (v4 and v6)


@dataclass
class Topology:
    prefix: str
    queues: int | None = 1
    nbackends: int = 3
    addrs_per_backend: int = 6  # v4 and v6 each
    built: bool = False
    namespaces: list[str] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)

    # fixed MACs: 02:99:<role>:00:00:<n>
    CLIENT_MAC = "02:99:01:00:00:02"
    L4_IN_MAC = "02:99:01:00:00:01"
    L4_OUT_MAC = "02:99:02:00:00:01"

    @property
    def client(self) -> str:
        return self.prefix + "client"

    @property
    def l4(self) -> str:
        return self.prefix + "l4"

    @property
    def lan(self) -> str:
        return self.prefix + "lan"

    def backend_ns(self, i: int) -> str:
        return f"{self.prefix}be{i}"

    def backend_addresses(self, i: int) -> tuple[list[str], list[str]]:
        n = self.addrs_per_backend
        v4 = [f"10.99.2.{10 + i * 16 + k}" for k in range(n)]
        v6 = [f"fd99:2::{10 + i * 16 + k:x}" for k in range(n)]
        return v4, v6

    def owner(self, address) -> Backend:
        """The backend namespace holding address."""
        a = str(ipaddress.ip_address(address))
        for b in self.backends:
            if a in b.addrs:
                return b
        raise KeyError(f"no backend namespace holds {a}")

    # -- build / destroy

    def build(self) -> Topology:
        # queues=None: a plain `ip link add ... type veth`, which on a machine with N CPUs allocates
        # N rx queues of which 1 is in use (num_rx_queues != real_num_rx_queues)
        q = ["numrxqueues", str(self.queues), "numtxqueues", str(self.queues)] if self.queues else []
        try:
            for role in ["client", "l4", "lan"] + [f"be{i}" for i in range(self.nbackends)]:
                ns = self.prefix + role
                ip("netns", "add", ns)
                self.namespaces.append(ns)
                ip("link", "set", "lo", "up", ns=ns)
            # client eth0 <-> l4 eth0 (multi-queue when asked)
            self._veth(self.client, "eth0", self.CLIENT_MAC, self.l4, "eth0", self.L4_IN_MAC, q)
            # l4 eth1 <-> lan p-l4
            self._veth(self.l4, "eth1", self.L4_OUT_MAC, self.lan, "p-l4", "02:99:02:00:00:fe", [])
            ip("link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0", ns=self.lan)
            ip("link", "set", "br0", "up", ns=self.lan)
            ip("link", "set", "p-l4", "master", "br0", "up", ns=self.lan)
            for i in range(self.nbackends):
                ns, mac = self.backend_ns(i), f"02:99:02:00:01:{i:02x}"
                self._veth(ns, "eth0", mac, self.lan, f"p-be{i}", f"02:99:02:00:fe:{i:02x}", [])
                ip("link", "set", f"p-be{i}", "master", "br0", "up", ns=self.lan)
                v4, v6 = self.backend_addresses(i)
                for a in v4:
                    ip("addr", "add", f"{a}/24", "dev", "eth0", ns=ns)
                for a in v6:
                    ip("addr", "add", f"{a}/64", "dev", "eth0", "nodad", ns=ns)
                ip("link", "set", "eth0", "up", ns=ns)
                ip("route", "add", "default", "via", L4_OUT4, ns=ns)
                self.backends.append(Backend(ns, mac, v4 + v6))
            # addresses and routes
            ip("addr", "add", f"{CLIENT4}/24", "dev", "eth0", ns=self.client)
            ip("addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad", ns=self.client)
            ip("link", "set", "eth0", "up", ns=self.client)
            ip("route", "add", VIP_NET4, "via", L4_IN4, ns=self.client)
            ip("route", "add", "10.99.2.0/24", "via", L4_IN4, ns=self.client)
            ip("-6", "route", "add", VIP_NET6, "via", L4_IN6, ns=self.client)
            ip("addr", "add", f"{L4_IN4}/24", "dev", "eth0", ns=self.l4)
            ip("addr", "add", f"{L4_IN6}/64", "dev", "eth0", "nodad", ns=self.l4)
            ip("addr", "add", f"{L4_OUT4}/24", "dev", "eth1", ns=self.l4)
            ip("addr", "add", f"{L4_OUT6}/64", "dev", "eth1", "nodad", ns=self.l4)
            ip("link", "set", "eth0", "up", ns=self.l4)
            ip("link", "set", "eth1", "up", ns=self.l4)
            self.built = True
            return self
        except BaseException:
            self.destroy()
            raise

    def _veth(self, ns_a, name_a, mac_a, ns_b, name_b, mac_b, q) -> None:
        ip(
            "link", "add", name_a, "netns", ns_a, *q, "address", mac_a, "type", "veth",
            "peer", "name", name_b, "netns", ns_b, *q, "address", mac_b,
        )  # fmt: skip

    def destroy(self) -> None:
        for ns in reversed(self.namespaces):
            for pid in netns_pids(ns):
                _kill(pid)
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        self.built = False

    # -- inspection

    def xdp_programs(self) -> dict[str, list[str]]:
        """{namespace: [interfaces with an XDP program attached]} over the whole topology."""
        found = {}
        for ns in self.namespaces:
            links = ip_json("-d", "link", "show", ns=ns)
            on = [link["ifname"] for link in links if link.get("xdp")]
            if on:
                found[ns] = on
        return found

    def nft_tables(self, ns: str) -> list[str]:
        out = sh("nft", "-j", "list", "tables", ns=ns)
        return [
            f"{e['table']['family']} {e['table']['name']}"
            for e in json.loads(out)["nftables"]
            if "table" in e
        ]

    def veth_queue_stats(self, ns: str, ifname: str) -> dict[str, int]:
        """ethtool -S of a veth: per-queue XDP counters (rx_queue_<n>_xdp_packets, ...)."""
        out = sh("ethtool", "-S", ifname, ns=ns)
        stats = {}
        for line in out.splitlines()[1:]:
            k, _, v = line.strip().partition(":")
            if v.strip().isdigit():
                stats[k] = int(v)
        return stats

    def neighbours(self, ns: str) -> dict[str, str]:
        """{address: MAC} of the usable neighbour entries in ns."""
        out = {}
        for fam in ("-4", "-6"):
            for e in ip_json(fam, "neigh", "show", ns=ns):
                if "lladdr" in e and not set(e.get("state", [])) & {"FAILED", "INCOMPLETE"}:
                    out[e["dst"]] = e["lladdr"]
        return out


# ----------------------------------------------------------------------------- fwd run


FWD = Path(os.environ.get("FWD_TEST_BIN") or REPO / ".venv" / "bin" / "fwd")  # override: another build


@functools.cache
def fwd_run_help() -> str:
    p = subprocess.run([str(FWD), "run", "--help"], capture_output=True, text=True, timeout=60)
    return p.stdout if p.returncode == 0 else ""


class FwdRun:
    """`fwd run` as a child process inside a namespace, its output going to a log file."""

    def __init__(
        self, ns: str, config: Path, interfaces: Iterable[str], mode: str, log: Path, extra=(), wrapper=()
    ):
        """wrapper: a command fwd runs under inside the namespace (setpriv ..., prlimit ...)."""
        self.ns, self.log_path = ns, log
        self.argv = [str(FWD), "run", "--config", str(config)]
        for i in interfaces:
            self.argv += ["--interface", i]
        self.argv += ["--mode", mode, *extra]
        if "--control-socket" not in extra and "--control-socket" in fwd_run_help():
            # a path of its own: several runs (tests, developers) may go at once on one machine
            self.argv += ["--control-socket", str(log.with_suffix(".sock"))]
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *wrapper, *self.argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(REPO),
        )
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid  # ip netns exec execs the command (and a wrapper execs fwd): fwd itself

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 20) -> re.Match | None:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self.log())
            if m:
                return m
            if not self.alive():
                return rx.search(self.log())
            time.sleep(0.05)
        return None

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait; the exit status (SIGKILL and -9 when it does not stop in time)."""
        if self.returncode is not None:
            return self.returncode
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            self.returncode = -9
        self._log.close()
        return self.returncode


def terminate(proc: subprocess.Popen | None, timeout: float = 5) -> None:
    """SIGTERM a helper process still running and wait for it; SIGKILL when it does not stop in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# ----------------------------------------------------------------------------- golden set, adapted


def ones_sum(b: bytes) -> int:
    """16-bit one's complement sum of b (even length), folded; 0xFFFF and 0 are the same value."""
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s % 0xFFFF


def neutral4(addr: str, net: str = VIP_NET4) -> str:
    """An address in net (a /16) whose 16-bit one's complement sum equals addr's."""
    a = ipaddress.ip_address(addr)
    n = ipaddress.ip_network(net)
    hi = ones_sum(n.network_address.packed[:2])
    w = (ones_sum(a.packed) - hi) % 0xFFFF or 0xFFFF
    out = ipaddress.IPv4Address(n.network_address.packed[:2] + w.to_bytes(2, "big"))
    assert ones_sum(out.packed) == ones_sum(a.packed)
    return str(out)


V6_DOC = bytes.fromhex("20010db8")  # 2001:db8::/32, the documentation prefix the golden set uses
V6_MAPPED = bytes.fromhex("fd99301f")  # same one's complement sum as 2001:0db8
assert ones_sum(V6_DOC) == ones_sum(V6_MAPPED)


@dataclass
class AddressMap:
    """How the golden set's addresses become the topology's (inputs checksum-neutrally)."""

    v4: dict[str, str] = field(default_factory=dict)  # non-10/8 IPv4 address -> 10.100.x.y
    backends: dict[str, str] = field(default_factory=dict)  # golden backend -> topology backend

    def addr(self, a) -> str:
        a = ipaddress.ip_address(a)
        if a.version == 6:
            return str(ipaddress.IPv6Address(self.bytes6(a.packed)))
        if a.is_private and str(a).startswith("10."):
            return str(a)
        if str(a) not in self.v4:
            m = neutral4(str(a))
            assert ipaddress.ip_address(m) not in ipaddress.ip_network("10.100.0.0/24"), m
            self.v4[str(a)] = m
        return self.v4[str(a)]

    @staticmethod
    def bytes6(b: bytes) -> bytes:
        return V6_MAPPED + b[4:] if b[:4] == V6_DOC else b

    def network(self, net) -> str:
        n = ipaddress.ip_network(net)
        if n.version == 6:
            assert n.prefixlen >= 32
            return f"{self.addr(n.network_address)}/{n.prefixlen}"
        if n.prefixlen == 32:
            return f"{self.addr(n.network_address)}/32"
        assert str(n.network_address).startswith("10."), f"cannot map prefix {n}"
        return str(n)


def live_config(model_cfg, topo: Topology, amap: AddressMap):
    """The golden ModelConfig turned into the topology's: binds and VIPs mapped, every backend
    moved to an address of a backend namespace (spread round robin over the namespaces), the
    tunnel sources set to l4's egress addresses, no MAC overrides."""
    from tests.model.config import Bind, ModelConfig, Node
    from tests.model.config import Table as MTable
    from tests.model.table import Backend as MBackend

    free = {4: [], 6: []}
    for k in range(topo.addrs_per_backend):
        for i in range(topo.nbackends):
            v4, v6 = topo.backend_addresses(i)
            free[4].append(v4[k])
            free[6].append(v6[k])
    tables = []
    for t in model_cfg.tables:
        binds = [Bind(ipaddress.ip_network(amap.network(b.prefix)), b.proto, b.port_lo, b.port_hi,
                      b.hash_fields) for b in t.binds]  # fmt: skip
        backends = []
        for b in t.backends:
            key = str(b.address)
            if key not in amap.backends:
                amap.backends[key] = free[b.address.version].pop(0)
            backends.append(MBackend(ipaddress.ip_address(amap.backends[key]), b.state, b.healthy))
        tables.append(MTable(t.name, t.hash_key, t.seed, t.glb_compat, binds, backends))
    node = Node(
        ipaddress.ip_address(L4_OUT4),
        ipaddress.ip_address(L4_OUT6),
        model_cfg.node.mtu,
        model_cfg.node.forward_icmp_echo,
    )
    return ModelConfig(node, tables)


def _l2(frame: bytes) -> int:
    return 18 if len(frame) >= 18 and frame[12:14] == b"\x81\x00" else 14


def adapt_frame(frame: bytes, amap: AddressMap, src_mac: str, dst_mac: str) -> bytes:
    """A golden input frame with the topology's MACs and addresses (same length, checksums
    exactly as valid as before). IPv4 addresses are rewritten where IPv4 headers put them (the
    packet's and, for ICMP, the quoted packet's); 2001:db8::/32 prefixes wherever they occur."""
    b = bytearray(frame)
    if len(b) >= 12:
        b[0:6] = bytes.fromhex(dst_mac.replace(":", ""))
        b[6:12] = bytes.fromhex(src_mac.replace(":", ""))
    l2 = _l2(frame)
    et = _u16(frame, l2 - 2) if len(frame) >= l2 else 0
    if et == 0x0800:
        _map_ip4_header(b, l2, amap)
        if len(b) >= l2 + 20 and b[l2 + 9] == 1:
            ihl = (b[l2] & 15) * 4
            q = l2 + ihl + 8
            if len(b) >= l2 + ihl + 1 and b[l2 + ihl] in (3, 11, 12) and len(b) >= q + 20 and b[q] >> 4 == 4:
                _map_ip4_header(b, q, amap)
    elif et == 0x86DD:
        i = b.find(V6_DOC, l2)
        while i >= 0:
            b[i : i + 4] = V6_MAPPED
            i = b.find(V6_DOC, i + 4)
    out = bytes(b)
    assert len(out) == len(frame)
    return out


def _map_ip4_header(b: bytearray, off: int, amap: AddressMap) -> None:
    for a in (off + 12, off + 16):
        if len(b) >= a + 4:
            old = bytes(b[a : a + 4])
            b[a : a + 4] = ipaddress.ip_address(amap.addr(ipaddress.IPv4Address(old))).packed


def expect_live(frame: bytes, cfg, topo: Topology):
    """The model's answer for frame with the MACs fwd must use on the wire: FORWARD frames from
    l4's egress MAC to the primary's namespace (on-link next hop), REPLY frames back the way the
    input came (the model does that by itself)."""
    from tests.model.packet import expect

    e = expect(frame, cfg)
    if e.verdict != "forward":
        return e
    primary = cfg.tables[e.table].backends[e.primary].address
    mac = bytes.fromhex(topo.owner(primary).mac.replace(":", ""))
    node = replace(cfg.node, src_mac=bytes.fromhex(Topology.L4_OUT_MAC.replace(":", "")), dst_mac=mac)
    return expect(frame, replace(cfg, node=node))


# ----------------------------------------------------------------------------- live helpers


def client_addr(i: int, version: int) -> str:
    """The i-th synthetic client behind the client namespace (10.98.0.0/16, fd99:98::/64)."""
    return f"10.98.{i >> 8 & 255}.{i & 255}" if version == 4 else f"fd99:98::{i + 1:x}"


def flow_frame(bind, i: int, src_mac: str, dst_mac: str, payload: bytes = b"") -> bytes:
    """A TCP SYN / UDP datagram from client i to bind's first address and lowest port."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    net = bind.prefix
    dst = net.network_address if net.num_addresses == 1 else net.network_address + 1
    l3 = (
        IP(src=client_addr(i, 4), dst=str(dst))
        if net.version == 4
        else IPv6(src=client_addr(i, 6), dst=str(dst))
    )
    l4 = (TCP if bind.proto == "tcp" else UDP)(sport=20000 + i % 40000, dport=bind.port_lo)
    return bytes(Ether(src=src_mac, dst=dst_mac) / l3 / l4 / payload)


def probe_frames(cfg, topo: Topology, tries: int = 400) -> list[tuple[str, bytes, object]]:
    """One frame per (table, backend that a tried flow has as primary), with its Expected:
    sending them exercises the next hops fwd must have resolved. Per table, clients are tried
    until every healthy active/filling backend was a primary once (or `tries` ran out)."""
    key = (cfg.to_toml(), tuple((b.ns, b.mac, tuple(b.addrs)) for b in topo.backends), tries)
    if key not in _PROBES:
        _PROBES[key] = _probe_frames(cfg, topo, tries)
    return _PROBES[key]


_PROBES: dict = {}


def _probe_frames(cfg, topo: Topology, tries: int):
    from tests.model.packet import expect

    out = []
    for t in cfg.tables:
        if not t.binds:
            continue
        want = {i for i, b in enumerate(t.backends) if b.healthy and b.state in ("active", "filling")}
        seen: set[int] = set()
        for i in range(tries):
            if want <= seen:
                break
            f = flow_frame(t.binds[0], i, Topology.CLIENT_MAC, Topology.L4_IN_MAC)
            e = expect(f, cfg)
            if e.verdict == "forward" and e.primary not in seen:
                seen.add(e.primary)
                desc = f"probe {t.name} -> backend {e.primary} ({t.backends[e.primary].address})"
                out.append((desc, f, expect_live(f, cfg, topo)))
    return out


def start_captures(topo: Topology, client: bool = True) -> dict[str, Capture]:
    caps = {b.ns: Capture(b.ns, "eth0") for b in topo.backends}
    if client:
        caps[topo.client] = Capture(topo.client, "eth0")
    return caps


def stop_captures(caps: dict[str, Capture], settle: float = 0.3) -> dict[str, list[Frame]]:
    time.sleep(settle)
    return {ns: c.stop(settle=0) for ns, c in caps.items()}


def delivered(frames_by_ns: dict[str, list[Frame]], expected: bytes) -> list[str]:
    """Namespaces where the frame `expected` arrived."""
    return [ns for ns, frames in frames_by_ns.items() for f in frames if f.data == expected]


def wait_ready(run: FwdRun, topo: Topology, probes, timeout: float = 30) -> None:
    """Send the probes until each has arrived, byte for byte, at its backend: fwd attached,
    workers running, next hops resolved. Fails with fwd's log when it does not happen."""
    caps = start_captures(topo, client=False)
    sender = Sender(topo.client, "eth0")
    deadline = time.monotonic() + timeout
    missing = list(probes)
    try:
        while missing and time.monotonic() < deadline:
            if not run.alive():
                break
            for _, f, _ in missing:
                sender.send(f)
            time.sleep(0.2)
            got = {ns: list(c.frames) for ns, c in caps.items()}
            missing = [
                p for p in missing if topo.owner(_outer_dst(p[2].frame)).ns not in delivered(got, p[2].frame)
            ]
    finally:
        stop_captures(caps, settle=0)
        sender.close()
    if missing:
        raise AssertionError(
            f"fwd did not forward the readiness probes within {timeout:.0f}s "
            f"(alive: {run.alive()}; l4 neighbours: {topo.neighbours(topo.l4)}):\n"
            + "\n".join(d for d, _, _ in missing)
            + f"\n--- fwd log:\n{run.log()[-4000:]}"
        )


def _outer_dst(frame: bytes) -> str:
    et = _u16(frame, 12)
    if et == 0x0800:
        return str(ipaddress.IPv4Address(frame[30:34]))
    return str(ipaddress.IPv6Address(frame[38:54]))


def leftovers(topo: Topology) -> list[str]:
    """What a stopped fwd left behind: XDP programs, nftables tables, processes in l4."""
    problems = []
    if xdp := topo.xdp_programs():
        problems.append(f"XDP programs still attached: {xdp}")
    if tables := topo.nft_tables(topo.l4):
        problems.append(f"nftables tables left in l4: {tables}")
    if pids := netns_pids(topo.l4):
        problems.append(f"processes left in l4: {pids}")
    return problems


# ----------------------------------------------------------------------------- module entry


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "sweep":
        print("\n".join(sweep_stale()))
    else:
        print(__doc__)
        sys.exit(2)
