"""The hostile-input corpus (tests/hostile.py) through the BPF programs with BPF_PROG_TEST_RUN (root).

* The XDP steering program (native/bpf/steer.bpf.c, loaded by native/steer.c as `fwd run` does)
  on lo of a scratch namespace, an AF_XDP socket of fwd's runtime in its XSKMAP for queue 0, so
  a redirect is a real XDP_REDIRECT. Every core-corpus frame, with its golden config's binds:
  exactly one return code (XDP_REDIRECT or XDP_PASS), exactly one of the program's counters
  moves (redirected / passed; never redirect_failed), and the program redirects exactly the
  frames tests/model/steer.py says it must (the frames the core would not PASS, as far as
  their destination shows) — nothing the model would leave to the kernel is taken;
  the same against the C core's own verdicts (what native/bpf/steer_vs_core.py checked).
* fwd-redirect's tc program (native/bpf/redirect.bpf.c) in the rig of
  tests/netns/redirect_prog_rig.py: the GUE corpus and the core corpus (addressed to the rig's
  MAC). Exactly one return code, `rx` +1 for GUE and exactly one path counter (plus
  icmp_tcp_quote when a quote decided), the decapsulated frame byte for byte, and the path
  tests/model/redirect.py gives; a forward goes to the model's hop and nowhere else.

What BPF_PROG_TEST_RUN cannot show is in docs/hardening.md ("Hostile input").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests import golden, hostile
from tests.model.redirect import RedirectNode, expect_redirect
from tests.model.steer import XDP_TEST_LINEAR, shows_vip, steer_expect
from tests.netns import redirect_prog_rig as rr
from tests.netns import topology as tp

XDP_PASS, XDP_REDIRECT = 2, 4
ETH_MIN = 14  # BPF_PROG_TEST_RUN refuses shorter frames (for XDP and tc alike)
XDP_TEST_MAX = XDP_TEST_LINEAR + 17 * 4096  # XDP: the linear part + MAX_SKB_FRAGS pages
SKB_TEST_MAX = 4096 - 64 - 320  # tc test runs: one page minus NET_SKB_PAD and skb_shared_info
MAX_REPORTED = 15


def _report(frames: int, failures: list[str]) -> str:
    return f"{len(failures)} of {frames} frames:\n" + "\n".join(failures[:MAX_REPORTED])


# ------------------------------------------------------------------------------ steering program


class SteerRig:
    """steer.bpf.o on lo of namespace ns, with one AF_XDP socket (queue 0) in its XSKMAP."""

    def __init__(self, ns: str, obj: str = str(tp.REPO / "fwd" / "bpf" / "steer.bpf.o")):
        from fwd import native

        self.native, self.ns, self.config = native, ns, None

        def attach():
            st = native.steer_attach(obj, "lo", "copy")
            rt = native.runtime_new()
            native.runtime_add_xsk(rt, "lo", 0, "copy", native.steer_xsks_map_fd(st))
            return st, rt

        self.st, self.rt = tp.in_netns(ns, attach)

    def use(self, config: str) -> None:
        if config != self.config:
            dp = golden.dataplane(config)
            self.native.steer_set_binds(self.st, dp.binds, dp.node.forward_icmp_echo)
            self.config = config

    def run(self, frame: bytes) -> tuple[int, tuple[int, int, int]]:
        """(XDP return code, counter deltas: redirected, passed, redirect failed)."""
        before = self.native.steer_counters(self.st)
        rc = self.native.steer_test_run(self.st, frame)
        after = self.native.steer_counters(self.st)
        return rc, tuple(a - b for a, b in zip(after, before, strict=True))

    def close(self) -> None:
        self.native.runtime_free(self.rt)
        tp.in_netns(self.ns, lambda: self.native.steer_detach(self.st))  # lo of this namespace


@pytest.fixture(scope="module")
def steer(netns_ok) -> Iterator[SteerRig]:
    ns = f"{tp.prefix_for_run()}hostile-steer"
    tp.ip("netns", "del", ns, check=False)
    rig = None
    try:
        tp.ip("netns", "add", ns)
        tp.ip("link", "set", "lo", "up", ns=ns)
        rig = SteerRig(ns)
        yield rig
    finally:
        if rig is not None:
            rig.close()
        tp.ip("netns", "del", ns, check=False)


@pytest.mark.parametrize("name", list(hostile.CORE_CLASSES))
def test_steering_program(steer, name):
    from fwd.native import NativeError

    frames, failures, seen = 0, [], {XDP_PASS: 0, XDP_REDIRECT: 0}
    for case in hostile.CORE_CLASSES[name]():
        steer.use(case.config)
        frames += 1
        if len(case.frame) < ETH_MIN or len(case.frame) > XDP_TEST_MAX:
            refusal = "Invalid argument" if len(case.frame) < ETH_MIN else "Cannot allocate memory"
            with pytest.raises(NativeError, match=refusal):
                steer.native.steer_test_run(steer.st, case.frame)
            continue
        rc, moved = steer.run(case.frame)
        # the program sees the first XDP_TEST_LINEAR bytes of longer frames (the rest in fragments)
        seen_bytes = case.frame[:XDP_TEST_LINEAR]
        model = golden.configs()[case.config].model
        want = steer_expect(seen_bytes, model)
        want_rc = XDP_REDIRECT if want == "redirect" else XDP_PASS
        problems = []
        if rc != want_rc:
            problems.append(f"return code {rc}, model wants {want}")
        # and against the C core itself (native/bpf/steer_vs_core.py's check, now here)
        core = golden.dataplane(case.config).process(seen_bytes).verdict
        if (rc == XDP_REDIRECT) != (shows_vip(seen_bytes, model) and core != "pass"):
            problems.append(f"return code {rc}, core verdict {core}")
        if moved != ((1, 0, 0) if rc == XDP_REDIRECT else (0, 1, 0)):
            problems.append(f"counters (redirected, passed, failed) moved by {moved} for return code {rc}")
        seen[rc] = seen.get(rc, 0) + 1
        if problems:
            failures.append(
                f"[{case.config}] {case.desc} ({len(case.frame)} bytes {case.frame[:80].hex()}): {problems}"
            )
    assert frames > 0
    assert not failures, _report(frames, failures)
    print(f"{name}: {frames} frames, {seen[XDP_REDIRECT]} redirected, {seen[XDP_PASS]} passed")


# ------------------------------------------------------------------------------ fwd-redirect


ENDPOINTS = hostile.GueEndpoints(
    dst_mac=rr.MAC0,
    src_mac=rr.L4_MAC,
    l4=(rr.L4_4, rr.L4_6),
    node=(rr.SELF4, rr.SELF6),
    rogue=(rr.ROGUE4, rr.ROGUE6),
    hop=(rr.HOP4, rr.HOP6),
    client=(rr.OTHER4, rr.OTHER6),
    vip=(rr.VIP4, rr.VIP6),
)
ALLOWED = [
    ipaddress.ip_network(n) for n in (f"{rr.L4_4}/32", f"{rr.L4_6}/128", "10.8.0.1/32", "fd08::1/128")
]  # what Rig.configure() loads
NODE = RedirectNode(bytes.fromhex(rr.MAC0.replace(":", "")), ALLOWED, {})
# v0 has forwarding on: bpf_fib_lookup answers. Next hops it can reach: the permanent neighbours
# (forwarded with their MAC) and the rest of v0's subnets (no neighbour yet: bpf_redirect_neigh).
ON_LINK = [ipaddress.ip_network(n) for n in ("10.7.0.0/24", "fd07::/64")]
LOCAL = {ipaddress.ip_address(a) for a in (rr.SELF4, rr.SELF6, rr.VIP4, rr.VIP6, rr.CLIENT4, rr.CLIENT6)}


def fib_outcome(hop) -> str:
    """What the kernel's FIB says about a (unicast) next hop seen from v0: v0's subnets only."""
    if hop in LOCAL or hop.is_link_local:
        return "drop_no_route"
    if any(hop.version == n.version and hop in n for n in ON_LINK):
        return "forwarded"
    return "drop_no_route"


# v1 has forwarding off: bpf_fib_lookup declines (the packet goes to bpf_redirect_neigh, whose
# route lookup happens after the program) except for IPv6 link-local hops, never forwarded.
ENDPOINTS_V1 = hostile.GueEndpoints(
    dst_mac=rr.MAC1,
    src_mac=rr.L4_MAC,
    l4=("10.8.0.1", "fd08::1"),
    node=(rr.SELF4_V1, rr.SELF6_V1),
    rogue=(rr.ROGUE4, rr.ROGUE6),
    hop=(rr.HOP4_V1, rr.HOP6_V1),
    client=(rr.OTHER4, rr.OTHER6),
    vip=(rr.VIP4, rr.VIP6),
)
NODE_V1 = RedirectNode(bytes.fromhex(rr.MAC1.replace(":", "")), ALLOWED, {})


def fib_outcome_v1(hop) -> str:
    return "drop_no_route" if hop.version == 6 and hop.is_link_local else "forwarded"


# v0 with an outer source of each family (as `fwd redirect attach` derives them): hops of the
# other family are converted (bpf_skb_change_proto) instead of dropped for want of a source
SOURCES = {4: ("fallback", ipaddress.ip_address(rr.SELF4)), 6: ("fallback", ipaddress.ip_address(rr.SELF6))}
NODE_SOURCES = RedirectNode(NODE.mac, ALLOWED, SOURCES)
SIDES = {
    "v0": (NODE, fib_outcome),
    "v1": (NODE_V1, fib_outcome_v1),
    "v0-sources": (NODE_SOURCES, fib_outcome),
}
IFNAME = {"v0": "v0", "v1": "v1", "v0-sources": "v0"}


RC = {"drop": rr.TC_ACT_SHOT, "decap": rr.TC_ACT_OK, "ignore": rr.TC_ACT_OK}


def redirect_problems(
    frame: bytes, rc: int, out: bytes, moved: dict[str, int], side: str = "v0"
) -> list[str]:
    """What is wrong with the program's answer (return code, output, counter deltas) for frame."""
    node, outcome = SIDES[side]
    e = expect_redirect(frame, node)
    if e.action == "ignore":
        return [] if (rc, out, moved) == (rr.TC_ACT_OK, frame, {}) else [f"not GUE, but {rc} {moved}"]
    counter = e.counter
    want_rc = RC.get(e.action)
    if e.action == "forward":
        counter = outcome(e.hop)
        want_rc = rr.TC_ACT_REDIRECT if counter == "forwarded" else rr.TC_ACT_SHOT
    want = {"rx": 1, counter: 1} | ({"icmp_tcp_quote": 1} if e.icmp_quote else {})
    problems = []
    if (rc, moved) != (want_rc, want):
        problems.append(
            f"return code {rc} counters {moved}; model: {e.action} {counter} {e.note} -> {want_rc} {want}"
        )
    if e.action == "decap" and rc == rr.TC_ACT_OK and out != e.frame:
        problems.append(f"decapsulated frame\n   got  {out.hex()}\n   want {e.frame.hex()}")
    if e.action == "forward" and rc == rr.TC_ACT_REDIRECT:
        dst = out[30:34] if out[12:14] == b"\x08\x00" else out[38:54]
        if dst != e.hop.packed:
            problems.append(f"forwarded to {dst.hex()}, model hop {e.hop}")
    return problems


def run_in_rig(rig: rr.Rig, frames: list[bytes], count_each: bool, side: str = "v0") -> list:
    """Each frame through the program on `side`, inside the rig's namespace (one thread for the
    batch): (return code, output, counter deltas or None) or the RedirectError it raised."""
    from fwd.redirect import RedirectError

    def run() -> list:
        out = []
        for f in frames:
            before = rig.prog.counters() if count_each else None
            try:
                rc, frame_out = rig.prog.run(f, rig.ifindex[IFNAME[side]])
            except RedirectError as err:
                out.append(err)
                continue
            moved = None
            if count_each:
                after = rig.prog.counters()
                moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
            out.append((rc, frame_out, moved))
        return out

    return tp.in_netns(rig.ns, run)


def _chunks(cases, n: int = 2000):
    chunk = []
    for c in cases:
        chunk.append(c)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@pytest.fixture(scope="module")
def redirect_rig(netns_ok) -> Iterator[rr.Rig]:
    with rr.open_rig("hostile-redirect") as r:
        yield r


def skb_test_refuses(frame: bytes) -> bool:
    """BPF_PROG_TEST_RUN for tc refuses (EINVAL) frames outside 14..SKB_TEST_MAX bytes and IPv4 /
    IPv6 frames (by EtherType) too short for the fixed IP header; the real receive path hands them
    to the program all the same."""
    if not ETH_MIN <= len(frame) <= SKB_TEST_MAX:
        return True
    etype = frame[12:14]
    return (etype == b"\x08\x00" and len(frame) < 14 + 20) or (etype == b"\x86\xdd" and len(frame) < 14 + 40)


def _run_redirect(
    rig: rr.Rig, cases, count_each: bool = True, side: str = "v0"
) -> tuple[int, list[str], int]:
    """Run cases, checking each answer; count_each=False: the caller checks that no counter
    moved over the whole run instead (non-GUE frames: counters only grow, so none moved for any)."""
    frames, failures, refused = 0, [], 0
    for chunk in _chunks(cases):
        results = run_in_rig(rig, [c.frame for c in chunk], count_each, side)
        for case, res in zip(chunk, results, strict=True):
            frames += 1
            if isinstance(res, Exception) or skb_test_refuses(case.frame):
                if (
                    isinstance(res, Exception)
                    and skb_test_refuses(case.frame)
                    and "Invalid argument" in str(res)
                ):
                    refused += 1
                    continue
                problems = [
                    f"BPF_PROG_TEST_RUN said {res!r}, refusal expected: {skb_test_refuses(case.frame)}"
                ]
            elif count_each:
                problems = redirect_problems(case.frame, *res, side)
            else:
                rc, out, _ = res
                problems = [] if (rc, out) == (rr.TC_ACT_OK, case.frame) else [f"not GUE, but {rc}"]
            if problems:
                head = case.frame[:96].hex()
                failures.append(f"{case.desc} ({len(case.frame)} bytes {head}):\n  " + "\n  ".join(problems))
    return frames, failures, refused


@pytest.mark.parametrize("name", list(hostile.GUE_CLASSES))
def test_redirect_program_gue(redirect_rig, name):
    frames, failures, refused = _run_redirect(redirect_rig, hostile.GUE_CLASSES[name](ENDPOINTS))
    assert frames > 0
    assert not failures, _report(frames, failures)
    print(f"{name}: {frames} frames, {refused} refused by BPF_PROG_TEST_RUN (size)")


def test_redirect_program_hops_forwarding_off(redirect_rig):
    """Hostile hops received where forwarding is off (the usual L7 node): no hop that is no
    unicast address is handed on (regression: 0.0.0.0, 127.0.0.1, 255.255.255.255, 224.0.0.1,
    ::, ::ffff:a.b.c.d were counted forwarded and given to bpf_redirect_neigh)."""
    frames, failures, _ = _run_redirect(redirect_rig, hostile.gue_hops(ENDPOINTS_V1), side="v1")
    assert frames > 0
    assert not failures, _report(frames, failures)


@pytest.mark.parametrize("name", ["gue_header", "gue_hops"])
def test_redirect_program_gue_with_sources(redirect_rig, name):
    """Hops of the other family converted, not dropped: the conversion path under hostile input."""
    redirect_rig.configure([(a, mode) for mode, a in (SOURCES[4], SOURCES[6])])
    try:
        frames, failures, _ = _run_redirect(
            redirect_rig, hostile.GUE_CLASSES[name](ENDPOINTS), side="v0-sources"
        )
    finally:
        redirect_rig.configure()
    assert frames > 0
    assert not failures, _report(frames, failures)


def _to_rig(case: hostile.Case) -> hostile.Case:
    """A core-corpus frame addressed to the rig's v0 (so the program takes it as the host's)."""
    f = case.frame
    return hostile.Case(case.cls, case.desc, NODE.mac + f[6:] if len(f) >= 6 else f, case.config)


@pytest.mark.parametrize("name", list(hostile.CORE_CLASSES))
def test_redirect_program_core_corpus(redirect_rig, name):
    """Not GUE: every frame left alone (TC_ACT_OK, unchanged, no counter)."""
    before = redirect_rig.prog.counters()
    frames, failures, refused = _run_redirect(redirect_rig, map(_to_rig, hostile.CORE_CLASSES[name]()), False)
    after = redirect_rig.prog.counters()
    assert after == before, {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert frames > 0
    assert not failures, _report(frames, failures)
    print(f"{name}: {frames} frames, {refused} refused by BPF_PROG_TEST_RUN (size)")


def test_model_knows_gue_ports():
    """The corpus's GUE frames do reach the GUE checks (a guard against a corpus that tests nothing)."""
    actions = {}
    for case in hostile.gue_corpus(ENDPOINTS):
        e = expect_redirect(case.frame, NODE)
        actions[e.action] = actions.get(e.action, 0) + 1
    assert set(actions) == {"ignore", "drop", "decap", "forward"}, actions
    assert actions["drop"] > actions["ignore"], actions
