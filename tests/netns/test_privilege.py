"""Least privilege (root; in CI a missing privilege fails instead of skipping): `fwd run` and
`fwd redirect` run as uid 65534 holding exactly their documented capabilities, and nothing else
(setpriv: inheritable = ambient = bounding set = the set, so the process's effective set after exec
is the set; RLIMIT_MEMLOCK at the kernel's default 8 MiB so CAP_IPC_LOCK matters).

A non-root uid is the stronger proof: root keeps privileges outside capabilities (it owns root's
files, /proc and sysfs entries); uid 65534 has nothing but the listed capabilities.

* test_fwd_run_with_only_its_capabilities[xdp|raw|xdp-sys_admin|auto-with-raw-set]: the golden
  frames forwarded, byte for byte against the reference model (tests/netns/test_forwarding.py's
  rig); the process's effective set is exactly the set; its control socket is 0600 and its own,
  another uid is refused; SIGTERM leaves nothing behind. CAP_SYS_ADMIN stands in for CAP_BPF +
  CAP_PERFMON; auto with raw's set falls back to raw and says why.
* test_fwd_run_without_each_capability[xdp|raw]: the set minus any one capability: exit status 1,
  one `fwd: error:` line naming the missing capability, no traceback, nothing left installed.
* test_redirect_with_only_its_capabilities: the whole path least-privileged: fwd-redirect attached
  on three L7 nodes by uid 65534 with CAP_NET_ADMIN + CAP_BPF + CAP_PERFMON, `fwd run` (xdp) on
  the L4 node as uid 65534 with its set, GUE health checks (raw ICMP sockets) marking the L7 nodes
  up; HTTP from many clients answered by the L7 node the reference model names; stats with no
  capability, detach with CAP_NET_ADMIN alone; nothing left behind.
* test_redirect_without_each_capability: attach without any one of its three, and detach without
  CAP_NET_ADMIN, refused with the missing capability named, nothing attached or the attached
  program and its pins left alone; another uid's stats is refused and told about CAP_SYS_ADMIN;
  without bpffs mounted the refusal says how to mount it.
* test_metrics_bind_default_loopback_and_configured: the default listens on 127.0.0.1 only (the
  client cannot connect); [daemon] metrics_address and --metrics-address are honoured.
* test_health_checks_only_reach_configured_backends: control-socket requests naming another
  address are refused, a check's Host naming another address does not send the check there, an
  inactive backend is not checked; a capture on that address's host sees nothing from the L4
  node, until it is configured (the capture works).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import resource
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import golden
from tests.netns import conftest
from tests.netns import redirect_rig as rr
from tests.netns import topology as tp
from tests.netns.test_forwarding import Live, assert_clean_exit, check_outputs, golden_inputs

UID, OTHER_UID = 65534, 65533
# the kernel's default RLIMIT_MEMLOCK (or less, if the hard limit is lower: raising it needs
# CAP_SYS_RESOURCE); one AF_XDP umem is 16 MiB
_hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
MEMLOCK = 8 << 20 if _hard == resource.RLIM_INFINITY else min(8 << 20, _hard)
SETS = {
    "xdp": ("net_admin", "net_raw", "bpf", "perfmon", "ipc_lock"),
    "raw": ("net_admin", "net_raw"),
}
REDIRECT_ATTACH = ("net_admin", "bpf", "perfmon")
REDIRECT_DETACH = ("net_admin",)  # the pins are files; stats needs no capability at all
CAP_BITS = {"net_admin": 12, "net_raw": 13, "ipc_lock": 14, "sys_admin": 21, "perfmon": 38, "bpf": 39}


def limited(caps, uid: int = UID, memlock: int | None = MEMLOCK) -> list[str]:
    """The command prefix that runs a program as uid with exactly caps."""
    c = ",".join(["-all", *(f"+{x}" for x in caps)])
    lim = (
        ["prlimit", f"--memlock={memlock}:{memlock}"]
        if memlock is not None
        else ["prlimit", "--memlock=unlimited"]
    )
    return [
        *lim,
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        f"--inh-caps={c}",
        f"--ambient-caps={c}",
        f"--bounding-set={c}",
    ]


def cap_mask(caps) -> int:
    return sum(1 << CAP_BITS[c] for c in caps)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def one_error(text: str) -> str:
    """The `fwd: error:` line of a refused command; no traceback around it."""
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("fwd: error:")]
    assert len(lines) == 1, f"expected one 'fwd: error:' line:\n{text[-3000:]}"
    return lines[0]


@pytest.fixture(scope="session")
def priv_tools(netns_ok):
    for tool in ("setpriv", "prlimit", "nsenter", "tc"):
        if shutil.which(tool) is None:
            conftest._skip_or_fail(f"needs {tool} (util-linux / iproute2)")
    return True


@pytest.fixture
def privdir():
    """A directory uid 65534 can read (the config) with a subdirectory it owns (its control
    socket); pytest's tmp_path is root's 0700."""
    d = Path(tempfile.mkdtemp(prefix="fwd-priv-"))
    d.chmod(0o755)
    (d / "run").mkdir()
    os.chown(d / "run", UID, UID)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_limited(fwd_run_ok, priv_tools, privdir):
    """start_limited(caps) -> start(topo, toml, mode) for Live / direct use: a
    `fwd run` under limited(caps); stopped at the end, its log printed."""
    runs: list[tp.FwdRun] = []

    def make(caps, uid: int = UID):
        def start(
            topo, toml: str, mode: str, interfaces=("eth0",), ns: str | None = None, extra=()
        ) -> tp.FwdRun:
            n = len(runs)
            cfg = privdir / f"fwd{n}.toml"
            cfg.write_text(toml)
            cfg.chmod(0o644)
            sock = ("--control-socket", str(privdir / "run" / f"fwd{n}.sock"))
            run = tp.FwdRun(
                ns or topo.l4, cfg, interfaces, mode, privdir / f"fwd{n}.log", (*sock, *extra),
                wrapper=limited(caps, uid),
            )  # fmt: skip
            runs.append(run)
            return run

        return start

    yield make
    for run in runs:
        rc = run.stop()
        print(f"\n--- fwd run ({' '.join(run.argv[1:])}) exit {rc}, log:\n{run.log()[-4000:]}")


def control_socket(run: tp.FwdRun) -> str:
    return run.argv[run.argv.index("--control-socket") + 1]


def fwd_cli(*args: str, user=()) -> subprocess.CompletedProcess:
    return subprocess.run([*user, str(tp.FWD), *args], capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------ fwd run


@pytest.mark.parametrize(
    "mode,caps,used",
    [
        pytest.param("xdp", SETS["xdp"], "xdp", id="xdp"),
        pytest.param("raw", SETS["raw"], "raw", id="raw"),
        # CAP_SYS_ADMIN implies CAP_BPF and CAP_PERFMON
        pytest.param("xdp", ("net_admin", "net_raw", "sys_admin", "ipc_lock"), "xdp", id="xdp-sys_admin"),
        # auto needs raw's set and falls back to raw, saying what xdp lacks
        pytest.param("auto", SETS["raw"], "raw", id="auto-with-raw-set"),
    ],
)
def test_fwd_run_with_only_its_capabilities(mode, caps, used, topo, start_limited):
    live = Live(topo, start_limited(caps), mode)  # waits until its probes are forwarded
    st = proc_status(live.run.pid)
    assert st["Uid"].split()[:2] == [str(UID)] * 2, st["Uid"]
    assert int(st["CapEff"], 16) == cap_mask(caps), f"effective {st['CapEff']}, wanted {caps}"
    assert int(st["CapBnd"], 16) == cap_mask(caps), st["CapBnd"]

    sent = golden_inputs(live)
    assert len(sent) > 40, "the adapted golden set lost its VIP frames"
    captures = tp.start_captures(topo)
    live.send_all(f for _, f, _ in sent)
    frames = tp.stop_captures(captures, settle=0.5)
    lost = {ns: c.kernel_drops for ns, c in captures.items() if c.kernel_drops}
    assert not lost, f"capture sockets dropped frames: {lost}"
    problems = check_outputs(live, sent, frames)
    assert not problems, f"{len(problems)} of {len(sent)} frames wrong ({mode}):\n" + "\n\n".join(
        problems[:5]
    )

    # the control socket: its owner's (uid 65534) and root's only
    sock = control_socket(live.run)
    s = os.stat(sock)
    assert stat.S_IMODE(s.st_mode) == 0o600 and s.st_uid == UID, (oct(s.st_mode), s.st_uid)
    p = fwd_cli("status", "--json", "--control-socket", sock)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["mode"] == used
    if mode == "auto":
        assert re.search(
            r"xdp mode unavailable \(needs CAP_BPF .*CAP_PERFMON .*\): falling back", live.run.log()
        )
    other = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups"]
    p = fwd_cli("status", "--control-socket", sock, user=other)
    assert p.returncode == 1 and "permission denied" in one_error(p.stderr), p.stderr
    assert live.run.alive()
    assert_clean_exit(live)


@pytest.mark.parametrize("mode", ["xdp", "raw"])
def test_fwd_run_without_each_capability(mode, topo, start_limited):
    cfg = tp.live_config(golden.configs()["golden"].model, topo, tp.AddressMap())
    problems = []
    for cap in SETS[mode]:
        run = start_limited([c for c in SETS[mode] if c != cap])(topo, cfg.to_toml(), mode)
        try:
            rc = run.proc.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
        run.stop()
        log = run.log()
        if rc != 1:
            problems.append(f"without CAP_{cap.upper()}: exit {rc}, not 1:\n{log[-1500:]}")
            continue
        try:
            line = one_error(log)
        except AssertionError as e:
            problems.append(f"without CAP_{cap.upper()}: {e}")
            continue
        if f"CAP_{cap.upper()}" not in line:
            problems.append(f"without CAP_{cap.upper()}: the error does not name it: {line}")
        if left := tp.leftovers(topo):
            problems.append(f"without CAP_{cap.upper()}: left behind: {left}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- fwd redirect


class Bpffs:
    """A mount namespace of the L7 node's network namespace with bpffs on /sys/fs/bpf, as a
    systemd host has (mounting it needs CAP_SYS_ADMIN, which fwd redirect does not get); commands
    entered into it share the pins, as on a host."""

    def __init__(self, ns: str):
        self.ns = ns
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                "mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep 3600",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--target={self.proc.pid}", "--mount", "--net", "--", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def fwd(self, caps, *args: str) -> subprocess.CompletedProcess:
        return self.run(*limited(caps), str(tp.FWD), *args)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def allow_args(topo: rr.RedirectTopology, i: int) -> list[str]:
    allow = [f"{rr.L4_4}/32", f"{rr.L4_6}/128"]
    allow += [
        f"{rr.l7_addr(j, v)}/{32 if v == 4 else 128}" for j in range(topo.n_l7) if j != i for v in (4, 6)
    ]
    return [a for x in allow for a in ("--allow", x)]


def tc_filters(ns: str) -> str:
    return tp.sh("tc", "filter", "show", "dev", "eth0", "ingress", ns=ns, check=False).strip()


@pytest.fixture
def l7(netns_ok, priv_tools, fwd_run_ok, tmp_path):
    for tool in ("bridge", "tc"):
        if shutil.which(tool) is None:
            conftest._skip_or_fail(f"needs {tool}")
    if not Path(rr.NGINX).exists():
        conftest._skip_or_fail(f"needs nginx ({rr.NGINX})")
    topo = rr.RedirectTopology(prefix=f"{tp.prefix_for_run()}p-")
    mounts: list[Bpffs] = []
    try:
        topo.build(tmp_path)
        for i in range(topo.n_l7):
            topo.start_nginx(i)
            mounts.append(Bpffs(topo.l7(i)))
        yield topo, mounts
    finally:
        for m in mounts:
            m.close()
        topo.destroy()


def redirect_toml(cfg) -> str:
    """The model's config with GUE health checks on every table (raw ICMP sockets: CAP_NET_RAW)."""
    text = cfg.to_toml()
    daemon = "[daemon]\nhealthcheck = { interval = 0.3, timeout = 0.25, rise = 1, fall = 2 }\n\n"
    text = text.replace("\n[[tables]]", "\n" + daemon + "[[tables]]", 1)
    return re.sub(r"(?m)^(glb_compat = \w+)$", r'\1\nchecks = [ { type = "gue" } ]', text)


def wait_all_healthy(run: tp.FwdRun, n: int, timeout: float = 20) -> None:
    sock = control_socket(run)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline and run.alive():
        p = fwd_cli("status", "--json", "--control-socket", sock)
        if p.returncode == 0:
            last = [
                (b["address"], b["health"]["verdict"])
                for t in json.loads(p.stdout)["tables"]
                for b in t["backends"]
            ]
            if len(last) == n and all(v is True for _, v in last):
                return
        time.sleep(0.2)
    raise AssertionError(f"backends not all healthy: {last}\n{run.log()[-3000:]}")


def test_redirect_with_only_its_capabilities(l7, start_limited):
    topo, mounts = l7
    for i, m in enumerate(mounts):
        p = m.fwd(REDIRECT_ATTACH, "redirect", "attach", "--interface", "eth0", *allow_args(topo, i))
        assert p.returncode == 0, f"attach on l7-{i}: {p.stderr}"
        assert "pinned in /sys/fs/bpf/fwd/redirect/eth0" in p.stdout, p.stdout
    cfg = rr.model_config([(0, "active", True), (1, "active", True), (2, "active", True)])
    run = start_limited(SETS["xdp"])(topo, redirect_toml(cfg), "xdp")
    wait_all_healthy(run, 2 * topo.n_l7)
    assert int(proc_status(run.pid)["CapEff"], 16) == cap_mask(SETS["xdp"])

    before = [json.loads(m.fwd((), "redirect", "stats", "--interface", "eth0", "--json").stdout)
              for m in mounts]  # fmt: skip
    wrong, answers = [], 0
    for i in range(topo.n_clients):
        for vip, v in ((rr.VIP4, 4), (rr.VIP6, 6)):
            if v == 6 and i % 2:
                continue
            src = rr.client_addr(i, v)
            body, port = rr.http_get(topo.client, vip, src)
            primary, _ = rr.owner_of(cfg, src, port, vip)
            answers += 1
            if body.split() != [f"l7-{primary}", src, str(port)]:
                wrong.append(f"{src}:{port} -> {vip}: {body.strip()!r}, model: l7-{primary}")
    assert not wrong, "\n".join(wrong[:20])

    syns = 0
    for m, b in zip(mounts, before, strict=True):
        p = m.fwd((), "redirect", "stats", "--interface", "eth0", "--json")
        assert p.returncode == 0, p.stderr
        after = json.loads(p.stdout)
        assert after["pinned"] is True
        syns += after["counters"]["decap_syn"] - b["counters"]["decap_syn"]
    assert syns >= answers, (syns, answers)

    assert run.stop() == 0, run.log()[-3000:]
    for i, m in enumerate(mounts):
        p = m.fwd(REDIRECT_DETACH, "redirect", "detach", "--interface", "eth0")
        assert p.returncode == 0, f"detach on l7-{i}: {p.stderr}"
        assert tc_filters(topo.l7(i)) == ""
        assert m.run("ls", "/sys/fs/bpf/fwd/redirect").stdout.strip() == "", "pins left"
    assert not tp.netns_pids(topo.l4)


def test_redirect_without_each_capability(l7):
    topo, mounts = l7
    m, ns, allow = mounts[0], topo.l7(0), allow_args(topo, 0)
    problems = []

    def refused(caps, missing: str, *args: str) -> None:
        p = m.fwd(caps, "redirect", *args, "--interface", "eth0", *(allow if args[0] == "attach" else ()))
        if p.returncode != 1:
            problems.append(
                f"{args[0]} without CAP_{missing.upper()}: exit {p.returncode}: {p.stderr[-800:]}"
            )
            return
        try:
            line = one_error(p.stderr)
        except AssertionError as e:
            problems.append(f"{args[0]} without CAP_{missing.upper()}: {e}")
            return
        if f"CAP_{missing.upper()}" not in line:
            problems.append(f"{args[0]} without CAP_{missing.upper()}: the error does not name it: {line}")

    for cap in REDIRECT_ATTACH:
        refused([c for c in REDIRECT_ATTACH if c != cap], cap, "attach")
        if tc_filters(ns):
            problems.append(f"attach without CAP_{cap.upper()} left a filter: {tc_filters(ns)}")

    p = m.fwd(REDIRECT_ATTACH, "redirect", "attach", "--interface", "eth0", *allow)
    assert p.returncode == 0, p.stderr
    attached = tc_filters(ns)
    assert "fwd_redirect" in attached, attached
    refused([], "net_admin", "detach")
    if tc_filters(ns) != attached:
        problems.append(f"a refused detach changed the filter: {tc_filters(ns)}")
    # stats needs no capability (it reads the pins, which the refused detach must have kept)
    p = m.fwd((), "redirect", "stats", "--interface", "eth0", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["pinned"] is True, p.stderr
    # another user cannot read them, and is told what would do instead
    p = m.run("setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", str(tp.FWD),
              "redirect", "stats", "--interface", "eth0")  # fmt: skip
    assert p.returncode == 1 and "CAP_SYS_ADMIN" in one_error(p.stderr), p.stderr
    p = m.fwd(REDIRECT_DETACH, "redirect", "detach", "--interface", "eth0")
    assert p.returncode == 0, p.stderr

    # no bpffs (ip netns exec gives a /sys without it): mounting it needs CAP_SYS_ADMIN
    argv = [*limited(REDIRECT_ATTACH), str(tp.FWD), "redirect", "attach", "--interface", "eth0", *allow]
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60)
    line = one_error(p.stderr)
    assert p.returncode == 1 and "cannot mount bpffs" in line and "CAP_SYS_ADMIN" in line, line
    assert "mount -t bpf bpf /sys/fs/bpf" in line, line
    assert tc_filters(ns) == "", "a failed attach left its filter"
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------ metrics


def listening(ns: str) -> set[str]:
    """Local addresses of the TCP listeners in ns."""
    out = tp.sh("ss", "-Hltn", ns=ns)
    return {line.split()[3] for line in out.splitlines() if line.strip()}


def http_status(ns: str, host: str, port: int) -> str:
    def get():
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((host, port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode(errors="replace")

    try:
        return tp.in_netns(ns, get)
    except OSError as e:
        return f"error: {e}"


def test_metrics_bind_default_loopback_and_configured(topo, start_fwd, tmp_path):
    from tests.netns.daemon_rig import Daemon
    from tests.netns.test_daemon import backend_ip, daemon_toml

    backends = [backend_ip(topo, 0)]
    d = Daemon(topo, start_fwd, daemon_toml(topo, backends, checks=False), tmp_path / "d0", mode="raw")
    assert listening(topo.l4) == {"127.0.0.1:9641"}, listening(topo.l4)
    assert "fwd_info" in http_status(topo.l4, "127.0.0.1", 9641)
    assert "refused" in http_status(topo.client, tp.L4_IN4, 9641), "the client reached the default metrics"
    assert d.run.stop() == 0

    # configured in the file: that address (the client reaches it)
    toml = daemon_toml(topo, backends, checks=False, daemon=f'metrics_address = "{tp.L4_IN4}:9642"')
    d = Daemon(topo, start_fwd, toml, tmp_path / "d1", mode="raw")
    assert listening(topo.l4) == {f"{tp.L4_IN4}:9642"}, listening(topo.l4)
    assert "fwd_info" in http_status(topo.client, tp.L4_IN4, 9642)
    assert d.run.stop() == 0

    # --metrics-address overrides the file
    d = Daemon(topo, start_fwd, toml, tmp_path / "d2", mode="raw", extra=("--metrics-address", "[::1]:9643"))
    assert listening(topo.l4) == {"[::1]:9643"}, listening(topo.l4)
    assert "fwd_info" in http_status(topo.l4, "::1", 9643)
    assert d.run.stop() == 0


# ------------------------------------------------------------------------------- health checks


def to_backend(topo: tp.Topology, frames, i: int) -> list[bytes]:
    """IPv4 packets the L4 node sent to one of backend i's addresses (not ARP, not flooding)."""
    mac = bytes.fromhex(tp.Topology.L4_OUT_MAC.replace(":", ""))
    mine = {ipaddress.IPv4Address(a).packed for a in topo.backend_addresses(i)[0]}
    return [
        f.data
        for f in frames
        if f.data[6:12] == mac and f.data[12:14] == b"\x08\x00" and f.data[30:34] in mine
    ]


def test_health_checks_only_reach_configured_backends(topo, start_fwd, tmp_path):
    """be2's address is named by API requests and by be0's check's Host, and configured inactive:
    nothing from the L4 node reaches be2. Configured active, its checks arrive (the capture works)."""
    from tests.netns.daemon_rig import Daemon
    from tests.netns.test_daemon import backend_ip, daemon_toml

    a0, a1, a2 = (backend_ip(topo, i) for i in range(3))
    checks = '[ { type = "http", port = 80 } ]'
    extra = {a0: f'checks = [ {{ type = "http", port = 80, host = "{a2}" }} ]', a1: f"checks = {checks}"}
    toml = daemon_toml(topo, [a0, a1], checks=False, backend_extra=extra)
    d = Daemon(topo, start_fwd, toml, tmp_path / "d", mode="raw")
    captures = {i: tp.Capture(topo.backend_ns(i), "eth0") for i in range(3)}
    try:
        for action in ("activate", "fill", "drain", "deactivate", "clear"):
            p = d.cli("backend", action, "--table", "web", a2)
            assert p.returncode == 1 and f"has no backend {a2}" in one_error(p.stderr), p.stderr
        from fwd.api import ApiError, ControlClient

        with ControlClient(d.sock) as c, pytest.raises(ApiError, match="has no backend"):
            c.call("backend", action="activate", table="web", address=a2)
        # configured, but inactive: never checked
        extra[a2] = f'state = "inactive"\n  checks = {checks}'
        d.config.write_text(daemon_toml(topo, [a0, a1, a2], checks=False, backend_extra=extra))
        p = d.cli("reload")
        assert p.returncode == 0, p.stderr
        time.sleep(1.5)  # 5 check intervals
        seen = {i: to_backend(topo, c.frames, i) for i, c in captures.items()}
        assert seen[0] and seen[1], "the configured backends were not checked: the capture proves nothing"
        assert not seen[2], (
            f"{len(seen[2])} packets from the L4 node reached {a2}, which is no active backend"
        )

        # now active: its checks arrive
        extra[a2] = f"checks = {checks}"
        d.config.write_text(daemon_toml(topo, [a0, a1, a2], checks=False, backend_extra=extra))
        assert d.cli("reload").returncode == 0
        time.sleep(1.0)
        assert to_backend(topo, captures[2].frames, 2), "no check reached the backend once configured"
    finally:
        for c in captures.values():
            c.stop(settle=0)
    assert d.run.stop() == 0
