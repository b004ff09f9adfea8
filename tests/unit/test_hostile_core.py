"""The hostile-input corpus (tests/hostile.py) through the C packet core, one class per test.

For every frame: the core returns (no crash: it runs in this process, a crash kills the test
run), its counters move by exactly one verdict (and the matching drop reason, ICMP reply, bind
and backend counters, nothing else), and its answer is the reference model's (tests/model):
verdict, reason, bind, row, backends, GUE port and output frame byte for byte. A frame the model
does not forward or answer is never forwarded or answered. docs/hardening.md, "Hostile input".
"""

from __future__ import annotations

import pytest

from tests import golden, hostile
from tests.model.gue import diff
from tests.model.packet import expect

MAX_REPORTED = 15


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def counter_problems(before, after, r, frame_len: int) -> list[str]:
    """What is wrong with the counter movement (before -> after) for one frame with result r."""
    out = []
    verdicts = _delta(before.verdicts, after.verdicts)
    if verdicts != {r.verdict: 1}:
        out.append(f"verdict counters moved by {verdicts}, result {r.verdict}")
    drops = _delta(before.drops, after.drops)
    if drops != ({r.reason: 1} if r.verdict == "drop" else {}):
        out.append(f"drop counters moved by {drops}, result {r.verdict}/{r.reason}")
    replies = after.icmp_replies - before.icmp_replies
    if replies != (r.verdict == "reply"):
        out.append(f"icmp_replies moved by {replies}, result {r.verdict}")
    binds = {
        i: (a[0] - b[0], a[1] - b[1])
        for i, (b, a) in enumerate(zip(before.binds, after.binds, strict=True))
        if a != b
    }
    if binds != ({r.bind: (1, frame_len)} if r.bind is not None else {}):
        out.append(f"bind counters moved by {binds}, result bind {r.bind}")
    backends = {
        (t, i): (a[0] - b[0], a[1] - b[1])
        for t, (bt, at) in enumerate(zip(before.backends, after.backends, strict=True))
        for i, (b, a) in enumerate(zip(bt, at, strict=True))
        if a != b
    }
    want = {(r.table, r.primary): (1, len(r.frame))} if r.verdict == "forward" else {}
    if backends != want:
        out.append(f"backend counters moved by {backends}, result {r.verdict} {r.table}/{r.primary}")
    return out


def model_problems(case: hostile.Case, r) -> list[str]:
    e = expect(case.frame, golden.configs()[case.config].model)
    if e.ambiguous:  # only the part the spec fixes: never forwarded/answered when the guess is not
        if r.verdict in ("forward", "reply") and e.verdict not in ("forward", "reply"):
            return [f"fwd {r.verdict}, model {e.verdict} ({e.ambiguous})"]
        return []
    problems = golden.compare(e, r)
    if problems and e.frame != r.frame and e.frame is not None and r.frame is not None:
        problems.append(diff(e.frame, r.frame))
    if problems:
        problems.insert(
            0, f"model: {e.verdict} {e.reason or ''} ({e.note}); fwd: {r.verdict} {r.reason or ''}"
        )
    return problems


def run_class(name: str) -> tuple[int, list[str]]:
    dataplanes = {n: golden.new_dataplane(n) for n in golden.configs()}
    state = {n: dp.counters() for n, dp in dataplanes.items()}
    frames, failures = 0, []
    for case in hostile.CORE_CLASSES[name]():
        dp = dataplanes[case.config]
        r = dp.process(case.frame)
        after = dp.counters()
        problems = counter_problems(state[case.config], after, r, len(case.frame))
        problems += model_problems(case, r)
        state[case.config] = after
        frames += 1
        if problems:
            head = case.frame[:96].hex()
            failures.append(
                f"[{case.config}] {case.desc} ({len(case.frame)} bytes {head}...):\n  "
                + "\n  ".join(problems)
            )
    return frames, failures


@pytest.mark.parametrize("name", list(hostile.CORE_CLASSES))
def test_hostile_corpus_through_the_core(name):
    frames, failures = run_class(name)
    assert frames > 0
    assert not failures, f"{len(failures)} of {frames} frames:\n" + "\n".join(failures[:MAX_REPORTED])
