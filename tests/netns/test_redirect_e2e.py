"""fwd-redirect end to end (root): client -> L4 node running fwd -> three L7 nodes running real nginx
behind fwd-redirect, replies straight back to the client (tests/netns/redirect_rig.py).

* test_http_dsr: `fwd run` on the L4 node; HTTP requests (Python sockets and real curl) from many
  client addresses and ports to both VIPs; every answer comes from the L7 node the reference model
  (tests/model) names for the flow and shows the client's own address and port; captures show the
  replies leave the L7 nodes to the client with the VIP as source and never reach the L4 node.
  GUE from outside --allow and each kind of malformed GUE sent over the wire is dropped and counted.
* test_second_chance: >= 50 long-lived keep-alive connections, each asking nginx something every
  100 ms, while the table changes under them (a helper drives fwd.live.LiveDataplane in the L4
  namespace and publishes each new table): a backend added in `filling` (0 broken, new connections
  reach it), one `draining` (existing ones keep working, new go elsewhere), one unhealthy (the same);
  an ICMP error quoting a moved connection follows it to its owner; a non-SYN packet of an unknown
  flow goes through the second-chance hop to the last one, whose kernel resets it.
* test_syncookies: with tcp_syncookies=2 on the L7 nodes the handshake's last ACK only matches a
  listener: fwd-redirect takes it locally because the cookie is valid (decap_syncookie).
* test_detach_leaves_nothing: no tc filter, no clsact qdisc it added, no pins; a clsact qdisc and
  filter that were there before are left alone.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time

import pytest

from tests.netns import redirect_rig as rr
from tests.netns import topology as tp

pytest.importorskip("scapy")

MODE = "xdp"


_counter = iter(range(1_000_000))


@pytest.fixture
def rig(netns_ok, tmp_path):
    for tool in ("nginx", "curl", "bridge", "tc"):
        if shutil.which(tool) is None and not (tool == "nginx" and rr.Path(rr.NGINX).exists()):
            msg = f"needs {tool}"
            if tp.os.environ.get("CI", "").lower() == "true":
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
    topo = rr.RedirectTopology(prefix=f"{tp.prefix_for_run()}{next(_counter)}r-")
    try:
        topo.build(tmp_path)
        for i in range(topo.n_l7):
            topo.start_nginx(i)
            topo.attach_redirect(i)
        yield topo
    finally:
        topo.destroy()


def write_config(path, backends, **kw):
    cfg = rr.model_config(backends, **kw)
    path.write_text(cfg.to_toml())
    return cfg


def stats_all(topo) -> list[dict[str, int]]:
    return [topo.redirect_stats(i) for i in range(topo.n_l7)]


def delta(after, before) -> list[dict[str, int]]:
    return [{k: a[k] - b[k] for k in a if a[k] != b[k]} for a, b in zip(after, before, strict=True)]


def fwd_run(topo, tmp_path, cfg_path) -> tp.FwdRun:
    extra: list[str] = []
    help_text = subprocess.run([str(tp.FWD), "run", "--help"], capture_output=True, text=True).stdout
    if "--control-socket" in help_text:
        extra += ["--control-socket", str(tmp_path / "fwd.sock")]
    if "--metrics-address" in help_text:
        extra += ["--metrics-address", ""]
    return tp.FwdRun(topo.l4, cfg_path, ["eth0"], MODE, tmp_path / "fwd.log", extra)


def wait_http(topo, log, timeout=30) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            rr.http_get(topo.client, rr.VIP4, rr.client_addr(0, 4), timeout=1)
            rr.http_get(topo.client, rr.VIP6, rr.client_addr(0, 6), timeout=1)
            return
        except OSError as e:
            last = e
            time.sleep(0.2)
    raise AssertionError(f"no HTTP answer through fwd within {timeout}s ({last}):\n{log()[-4000:]}")


# ------------------------------------------------------------------------------------------ DSR


def test_http_dsr(rig, tmp_path):
    topo = rig
    cfg_path = tmp_path / "fwd.toml"
    cfg = write_config(cfg_path, [(0, "active", True), (1, "active", True), (2, "active", True)])
    run = fwd_run(topo, tmp_path, cfg_path)
    try:
        wait_http(topo, run.log)
        before = stats_all(topo)
        caps = {ns: rr.AllCapture(ns) for ns in [topo.client, topo.l4] + [topo.l7(i) for i in range(3)]}
        answers = []  # (src, port, vip, body)
        for i in range(topo.n_clients):
            for vip, v in ((rr.VIP4, 4), (rr.VIP6, 6)):
                if v == 6 and i % 2:
                    continue
                src = rr.client_addr(i, v)
                body, port = rr.http_get(topo.client, vip, src)
                answers.append((src, port, vip, body))
        # real curl, from other client addresses and fixed ports
        for i in range(8):
            v, vip = (4, rr.VIP4) if i % 2 == 0 else (6, rr.VIP6)
            src, port = rr.client_addr(40 + i, v), 41000 + i
            url = f"http://{vip}/" if v == 4 else f"http://[{vip}]/"
            p = subprocess.run(
                ["ip", "netns", "exec", topo.client, "curl", "-sS", "--max-time", "5", "--interface", src,
                 "--local-port", str(port), url],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert p.returncode == 0, f"curl from {src}:{port}: {p.stderr}"
            answers.append((src, port, vip, p.stdout))
        frames = {ns: c.stop() for ns, c in caps.items()}
        after = stats_all(topo)
    finally:
        rc = run.stop()
    assert rc == 0, f"fwd run exit {rc}:\n{run.log()[-3000:]}"

    # every request answered by the model's primary, which saw the client's own address and port
    wrong = []
    for src, port, vip, body in answers:
        primary, _ = rr.owner_of(cfg, src, port, vip)
        if body.split() != [f"l7-{primary}", src, str(port)]:
            wrong.append(f"{src}:{port} -> {vip}: {body.strip()!r}, model: l7-{primary}")
    assert not wrong, "\n".join(wrong[:20])
    served = {int(b.split()[0].split("-")[1]) for *_, b in answers}
    assert served == {0, 1, 2}, f"only {served} served"

    # counters: every connection's SYN decapsulated; nothing forwarded or dropped
    d = delta(after, before)
    syns = sum(x.get("decap_syn", 0) for x in d)
    assert syns >= len(answers), d
    assert all(not k.startswith("drop_") and k != "forwarded" for x in d for k in x), d

    # captures: replies (TCP from a VIP) leave the L7 nodes to the client and never touch l4
    vips = {rr.VIP4, str(ipaddress.ip_address(rr.VIP6))}
    l7_macs = {rr.l7_mac(i) for i in range(3)}
    at_l4 = [s for _, f in frames[topo.l4] if (s := rr.tcp_segment(f)) and not s.gue and s.src in vips]
    assert not at_l4, f"{len(at_l4)} replies crossed the L4 node: {at_l4[:3]}"
    replies = [s for out, f in frames[topo.client] if not out and (s := rr.tcp_segment(f)) and s.src in vips]
    assert len(replies) >= 2 * len(answers), f"only {len(replies)} reply segments at the client"
    bad = [s for s in replies if s.src_mac not in l7_macs or s.dst_mac != rr.CLIENT_MAC]
    assert not bad, f"replies not straight from an L7 node: {bad[:3]}"
    sent_by_l7 = 0
    for i in range(3):
        for out, f in frames[topo.l7(i)]:
            s = rr.tcp_segment(f)
            if out and s and not s.gue and s.src in vips:
                assert s.dst_mac == rr.CLIENT_MAC and s.src_mac == rr.l7_mac(i), s
                sent_by_l7 += 1
    assert sent_by_l7 == len(replies)
    # requests reached the L7 nodes only as GUE from l4 (no plain TCP to a VIP arrives there)
    for i in range(3):
        plain = [s for out, f in frames[topo.l7(i)] if not out and (s := rr.tcp_segment(f)) and not s.gue
                 and s.dst in vips]  # fmt: skip
        assert not plain, f"l7-{i} got plain VIP traffic: {plain[:3]}"


def test_hostile_gue_dropped_and_counted(rig):
    """GUE sent over the wire from outside --allow, and each malformed kind from an allowed
    address (spoofed by the client), is dropped and counted on the L7 node; nginx sees nothing."""
    from tests.netns.test_redirect_prog import gue_payload, outer

    topo = rig
    l7, mac = rr.l7_addr(0, 4), rr.l7_mac(0)
    syn = rr.syn_frame(rr.client_addr(5, 4), 45000, rr.VIP4)[14:]
    ack = bytes(bytearray(syn[:33]) + bytes([0x10]) + syn[34:])  # flags: ACK
    hop = [rr.l7_addr(1, 4)]
    cases = [
        ("drop_not_allowed", outer(rr.CLIENT_BASE4, l7, gue_payload(syn, hop), dst_mac=mac)),
        ("drop_fragment", outer(rr.L4_4, l7, gue_payload(syn, hop), dst_mac=mac, frag=True)),
        ("drop_truncated", outer(rr.L4_4, l7, gue_payload(syn, hop)[:6], dst_mac=mac)),
        ("drop_bad_version", outer(rr.L4_4, l7, gue_payload(syn, hop, byte0=0x42), dst_mac=mac)),
        ("drop_bad_flags", outer(rr.L4_4, l7, gue_payload(syn, hop, flags=1), dst_mac=mac)),
        ("drop_bad_hlen", outer(rr.L4_4, l7, gue_payload(syn, hop, byte0=5), dst_mac=mac)),
        ("drop_bad_hop_type", outer(rr.L4_4, l7, gue_payload(syn, hop, ptype=7), dst_mac=mac)),
        ("drop_bad_next_hop", outer(rr.L4_4, l7, gue_payload(ack, hop, next_hop=3), dst_mac=mac)),
        ("drop_bad_inner_proto", outer(rr.L4_4, l7, gue_payload(syn, hop, proto=6), dst_mac=mac)),
        ("drop_bad_inner", outer(rr.L4_4, l7, gue_payload(syn, hop, proto=41), dst_mac=mac)),
    ]
    sender = tp.Sender(topo.client, "eth0")
    cap = rr.AllCapture(topo.client)
    try:
        before = topo.redirect_stats(0)
        for _, f in cases:
            sender.send(f)
        time.sleep(0.3)
        after = topo.redirect_stats(0)
    finally:
        sender.close()
        frames = cap.stop()
    d = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    want = {"rx": len(cases), **{name: 1 for name, _ in cases}}
    assert d == want
    answered = [s for out, f in frames if not out and (s := rr.tcp_segment(f)) and s.sport == 80]
    assert not answered, f"the L7 node answered a dropped packet: {answered}"


# -------------------------------------------------------------------------------- second chance


def test_second_chance(rig, tmp_path):
    topo = rig
    cfgs, paths = {}, {}
    phases = {
        "A": [(0, "active", True), (1, "active", True)],
        "filling": [(0, "active", True), (1, "active", True), (2, "filling", True)],
        "draining": [(0, "draining", True), (1, "active", True), (2, "active", True)],
        "unhealthy": [(0, "active", True), (1, "active", False), (2, "active", True)],
    }
    for name, backends in phases.items():
        paths[name] = tmp_path / f"{name}.toml"
        cfgs[name] = write_config(paths[name], backends)
    helper = rr.L4Helper(topo, paths["A"], MODE, tmp_path / "l4-helper.log")
    clients = None
    try:
        wait_http(topo, helper.log)
        endpoints = [(rr.client_addr(i, 4), rr.VIP4) for i in range(48)]
        endpoints += [(rr.client_addr(i, 6), rr.VIP6) for i in range(48, 64)]
        clients = rr.LongLived(topo.client, endpoints, period=0.1)
        clients.open()
        clients.start()
        owners = {(c.src, c.port): c.served_by for c in clients.conns}
        assert set(owners.values()) <= {0, 1} and len(set(owners.values())) == 2, owners
        time.sleep(1.0)
        assert not clients.broken(), [c.error for c in clients.broken()]

        def new_connections(cfg, n, base):
            """n fresh connections: each served by the model's primary; the set of nodes serving."""
            seen = set()
            for k in range(n):
                i = (base + k) % topo.n_clients
                v, vip = (4, rr.VIP4) if k % 3 else (6, rr.VIP6)
                src = rr.client_addr(i, v)
                body, port = rr.http_get(topo.client, vip, src)
                node = int(body.split()[0].split("-")[1])
                primary, _ = rr.owner_of(cfg, src, port, vip)
                assert node == primary, f"{src}:{port}: served by l7-{node}, model primary l7-{primary}"
                seen.add(node)
            return seen

        results = {}
        for phase in ("filling", "draining", "unhealthy"):
            before = stats_all(topo)
            reqs = sum(c.requests for c in clients.conns)
            helper.publish(paths[phase])
            time.sleep(2.0)
            broken = clients.broken()
            assert not broken, f"{phase}: {len(broken)} broken: " + "; ".join(
                f"{c.src}:{c.port} (l7-{c.served_by}) {c.error}" for c in broken[:5]
            )
            seen = new_connections(cfgs[phase], 30, base=len(results) * 17)
            d = delta(stats_all(topo), before)
            results[phase] = (seen, d, sum(c.requests for c in clients.conns) - reqs)
            if phase == "filling":
                assert 2 in seen, f"no new connection reached the filling backend: {seen}"
            if phase == "draining":
                assert 0 not in seen, "a new connection went to the draining backend"
            if phase == "unhealthy":
                assert 1 not in seen, "a new connection went to the unhealthy backend"
            # flows that moved away from their owner are forwarded by the new primary, and the owner
            # takes them as its own sockets' packets
            moved = [
                c for c in clients.conns if rr.owner_of(cfgs[phase], c.src, c.port, c.vip)[0] != c.served_by
            ]
            if moved:
                assert sum(x.get("forwarded", 0) for x in d) > 0, (phase, d)
                assert sum(x.get("decap_socket", 0) for x in d) > 0, (phase, d)
            assert all(not k.startswith("drop_") for x in d for k in x), (phase, d)
            # every connection kept exchanging: at least half of 20 requests each in 2 s
            assert results[phase][2] >= len(clients.conns) * 10, (phase, results[phase][2])

        # an ICMP "fragmentation needed" quoting the node's reply on a moved connection follows it
        cfg = cfgs["unhealthy"]
        moved = [
            c
            for c in clients.conns
            if c.vip == rr.VIP4 and rr.owner_of(cfg, c.src, c.port, c.vip)[0] != c.served_by
        ]
        assert moved, "no connection moved (try other client addresses)"
        c = moved[0]
        primary, secondary = rr.owner_of(cfg, c.src, c.port, c.vip)
        assert secondary == c.served_by
        from scapy.layers.inet import ICMP, IP, TCP
        from scapy.layers.l2 import Ether

        quote = bytes(IP(src=rr.VIP4, dst=c.src) / TCP(sport=80, dport=c.port, flags="PA"))
        icmp = (
            Ether(src=rr.CLIENT_MAC, dst=rr.L4_MAC)
            / IP(src=rr.CLIENT_BASE4, dst=rr.VIP4)
            / ICMP(type=3, code=4, nexthopmtu=1400)
        )
        before = stats_all(topo)
        sender = tp.Sender(topo.client, "eth0")
        sender.send(bytes(icmp / quote))
        time.sleep(0.3)
        d = delta(stats_all(topo), before)
        assert d[primary].get("forwarded", 0) >= 1 and d[primary].get("icmp_tcp_quote", 0) == 1, d
        assert d[c.served_by].get("icmp_tcp_quote", 0) == 1 and d[c.served_by].get("decap_socket", 0) >= 1, d

        # a non-SYN packet of an unknown flow: primary -> second chance hop -> last hop's kernel: RST
        src, sport = rr.client_addr(63, 4), 61000
        primary, secondary = rr.owner_of(cfg, src, sport, rr.VIP4)
        assert primary != secondary
        cap = rr.AllCapture(topo.client)
        before = stats_all(topo)
        ack = (
            Ether(src=rr.CLIENT_MAC, dst=rr.L4_MAC)
            / IP(src=src, dst=rr.VIP4)
            / TCP(sport=sport, dport=80, flags="A", seq=12345, ack=67890)
        )
        sender.send(bytes(ack))
        time.sleep(0.5)
        sender.close()
        d = delta(stats_all(topo), before)
        frames = cap.stop()
        segs = [rr.tcp_segment(f) for out, f in frames if not out]
        rst = [s for s in segs if s and s.src == rr.VIP4 and s.dport == sport and s.flags & 0x04]
        assert rst, f"no RST for the unknown flow (counters {d})"
        assert rst[0].src_mac == rr.l7_mac(secondary), (
            f"RST from {rst[0].src_mac}, last hop is l7-{secondary}"
        )
        assert d[primary].get("forwarded", 0) >= 1, d
        assert d[secondary].get("decap_last_hop", 0) >= 1, d

        time.sleep(0.5)
        assert not clients.broken(), [c.error for c in clients.broken()]
        print(
            f"second chance: {len(clients.conns)} connections, "
            + ", ".join(f"{p}: {r[2]} exchanges, new served by {sorted(r[0])}" for p, r in results.items())
        )
    finally:
        if clients is not None:
            clients.stop()
        helper.stop()


def test_syncookies(rig, tmp_path):
    """Every handshake's last ACK arrives where only the listener exists (tcp_syncookies=2): taken
    locally because the SYN cookie is valid, even though the row has a second-chance hop."""
    topo = rig
    for i in range(topo.n_l7):
        tp.sh("sysctl", "-qw", "net.ipv4.tcp_syncookies=2", ns=topo.l7(i))
    cfg_path = tmp_path / "fwd.toml"
    cfg = write_config(cfg_path, [(0, "active", True), (1, "active", True), (2, "active", True)])
    helper = rr.L4Helper(topo, cfg_path, MODE, tmp_path / "l4-helper.log")
    try:
        wait_http(topo, helper.log)
        before = stats_all(topo)
        for i in range(20):
            v, vip = (4, rr.VIP4) if i % 2 else (6, rr.VIP6)
            src = rr.client_addr(i, v)
            body, port = rr.http_get(topo.client, vip, src)
            assert body.split()[0] == f"l7-{rr.owner_of(cfg, src, port, vip)[0]}"
        d = delta(stats_all(topo), before)
    finally:
        helper.stop()
    assert sum(x.get("decap_syncookie", 0) for x in d) >= 20, d
    assert sum(x.get("forwarded", 0) for x in d) == 0, d


# ------------------------------------------------------------------------------------- detach


def test_detach_leaves_nothing(netns_ok, tmp_path):
    ns = f"{tp.prefix_for_run()}rdet"
    tp.ip("netns", "del", ns, check=False)
    tp.ip("netns", "add", ns)
    try:
        tp.ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", "peer0", "netns", ns)
        tp.ip("link", "set", "eth0", "up", ns=ns)
        tp.ip("addr", "add", "10.55.0.2/24", "dev", "eth0", ns=ns)
        fwd = str(tp.FWD)
        # one shell = one mount namespace, so the bpffs the attach mounts is still there afterwards
        script = f"""
set -e
{fwd} redirect attach --interface eth0 --allow 10.55.0.1/32 >/dev/null
echo "pins: $(ls /sys/fs/bpf/fwd/redirect/eth0 | tr '\\n' ' ')"
echo "stats: $({fwd} redirect stats --interface eth0 --json)"
{fwd} redirect detach --interface eth0 >/dev/null
echo "after: $(ls -A /sys/fs/bpf | grep -v debug | tr '\\n' ' ')"
echo "qdisc: $(tc qdisc show dev eth0 | grep -c clsact || true)"
echo "filters: $(tc filter show dev eth0 ingress | wc -l)"
"""
        out = tp.sh("sh", "-c", script, ns=ns)
        lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
        assert lines["pins"].split() == ["allow", "config", "counters", "prog"], out
        assert json.loads(lines["stats"])["pinned"] is True, out
        assert lines["after"].strip() == "", out
        assert lines["qdisc"].strip() == "0" and lines["filters"].strip() == "0", out

        # a clsact qdisc with someone else's filter: attach + detach leave both
        tp.sh("tc", "qdisc", "add", "dev", "eth0", "clsact", ns=ns)
        # classic BPF "return -1": TC_ACT_UNSPEC in direct-action mode, the next filter runs
        cbpf = ("bpf", "da", "bytecode", "1,6 0 0 4294967295,")
        tp.sh("tc", "filter", "add", "dev", "eth0", "ingress", "pref", "7", *cbpf, ns=ns)
        for args in (("attach", "--allow", "10.55.0.1/32"), ("stats",), ("detach",)):
            argv = ["ip", "netns", "exec", ns, fwd, "redirect", args[0], "--interface", "eth0", *args[1:]]
            p = subprocess.run(argv, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            if args[0] == "stats":
                assert "found through tc" in p.stdout, p.stdout  # another mount namespace: no pins
        filters = tp.sh("tc", "filter", "show", "dev", "eth0", "ingress", ns=ns)
        assert "pref 7 bpf" in filters and "fwd_redirect" not in filters, filters
        assert "clsact" in tp.sh("tc", "qdisc", "show", "dev", "eth0", ns=ns)
        # detach again: nothing attached, one-line error, exit 1
        p = subprocess.run(["ip", "netns", "exec", ns, fwd, "redirect", "detach", "--interface", "eth0"],
                           capture_output=True, text=True)  # fmt: skip
        assert p.returncode == 1 and p.stderr.count("\n") == 1 and "not attached" in p.stderr, p.stderr
    finally:
        tp.ip("netns", "del", ns, check=False)
