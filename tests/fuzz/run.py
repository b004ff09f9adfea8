"""`make fuzz`: run every fuzz target for N seconds, print executions and coverage per target.

    python -m tests.fuzz.run [--seconds N] [--only TARGET...]

Targets: core, table, hc_http and hc_gue (the health checker's HTTP framer and GUE reply reader;
libFuzzer binaries from native/fuzz, built by `make -C native/fuzz` into build/fuzz/), config (atheris,
tests/fuzz/fuzz_config.py). Each runs from its seeds (regenerated into build/fuzz/seeds/), the
committed reproducers (tests/fuzz_regressions/) and its working corpus kept between runs
(build/fuzz/corpus/). Full logs go to build/fuzz/logs/.
Exit status 1 when any target crashed, timed out or broke an invariant; the reproducer's path is
printed (libFuzzer writes it to build/fuzz/crashes/TARGET/).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import seeds

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "fuzz"
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
TARGETS = ("core", "table", "config", "hc_http", "hc_gue")
# per-target libFuzzer options: frames up to a jumbo frame; configs up to 16 KiB
EXTRA = {
    "core": ["-max_len=9216"],
    "table": ["-max_len=512"],
    "config": ["-max_len=16384"],
    "hc_http": ["-max_len=16385"],  # one recv of an answer (HC_READ_MAX) after the status byte
    "hc_gue": ["-max_len=4096"],  # up to 16 datagrams of up to 255 bytes, with their 2-byte heads
}
DICTS = {"config": ROOT / "tests" / "fuzz" / "config.dict"}
# the sources each C target is about, for the line coverage figure
COVERED_SOURCES = {
    "core": ("core_parse.h", "core_encap.h", "core.c"),
    "table": ("table.c",),
    "hc_http": ("hc/hc_lanes.c",),
    "hc_gue": ("hc/hc_lanes.c",),
}


@dataclass
class Outcome:
    target: str
    returncode: int
    runs: int | None
    exec_per_sec: int | None
    cov: int | None
    ft: int | None
    corpus: int | None
    edges: int | None  # instrumented edges (libFuzzer's inline 8-bit counters), C targets
    reproducer: str | None
    log: Path
    lines: str | None = None  # line coverage of COVERED_SOURCES after the run

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def command(target: str, seconds: int) -> list[str]:
    if target == "config":
        argv = [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_config.py")]
    else:
        argv = [str(BUILD / f"fuzz_{target}")]
    crashes = BUILD / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    corpus = BUILD / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    argv += [
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        "-timeout=30",  # an input slower than this is a hang: reported like a crash
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/",
        *EXTRA[target],
    ]
    if target in DICTS:
        argv.append(f"-dict={DICTS[target]}")
    return argv + corpus_dirs(target)


def corpus_dirs(target: str) -> list[str]:
    dirs = [BUILD / "corpus" / target, BUILD / "seeds" / target, REGRESSIONS / target]  # new units: first
    return [str(d) for d in dirs if d.is_dir()]


def line_coverage(target: str) -> str | None:
    """Replay the target's corpus through its coverage build; "core_parse.h 99.5%, ..." of lines covered."""
    binary = BUILD / "cov" / f"fuzz_{target}"
    if target not in COVERED_SOURCES or not binary.exists():
        return None
    raw, data = BUILD / "cov" / f"{target}.profraw", BUILD / "cov" / f"{target}.profdata"
    env = dict(os.environ, LLVM_PROFILE_FILE=str(raw))
    # crashes of this replay (a stale coverage build) go with the fuzzer's, not into the cwd
    artifacts = f"-artifact_prefix={BUILD / 'crashes' / target}/"
    replay = [str(binary), "-runs=0", artifacts, *corpus_dirs(target)]
    subprocess.run(replay, env=env, capture_output=True, check=False)
    sources = [str(ROOT / "native" / name) for name in COVERED_SOURCES[target]]
    try:
        subprocess.run(["llvm-profdata", "merge", "-sparse", str(raw), "-o", str(data)], check=True)
        report = subprocess.run(
            ["llvm-cov", "report", str(binary), f"-instr-profile={data}", *sources],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # a figure is missing, not a failure
        print(f"fuzz: {target}: no line coverage: {e}", file=sys.stderr)
        return None
    out = []
    for line in report.splitlines():
        cols = line.split()
        # Filename Regions Missed Cover Functions Missed Executed Lines Missed Cover ...
        if cols and Path(cols[0]).name in {Path(n).name for n in COVERED_SOURCES[target]} and len(cols) >= 10:
            lines, missed = int(cols[7]), int(cols[8])
            out.append(f"{Path(cols[0]).name} {lines - missed}/{lines} ({cols[9]})")
    return ", ".join(out) or None


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None


def parse(target: str, returncode: int, text: str, log: Path) -> Outcome:
    written = re.findall(r"Test unit written to (\S+)", text)
    return Outcome(
        target=target,
        returncode=returncode,
        runs=_last_int(r"stat::number_of_executed_units: (\d+)", text)
        or _last_int(r"Done (\d+) runs", text)
        or _last_int(r"^#(\d+)", text + "\n"),
        exec_per_sec=_last_int(r"stat::average_exec_per_sec:\s+(\d+)", text),
        cov=_last_int(r"\bcov: (\d+)", text),
        ft=_last_int(r"\bft: (\d+)", text),
        corpus=_last_int(r"\bcorp: (\d+)/", text),
        edges=_last_int(r"Loaded \d+ modules\s+\((\d+) inline 8-bit counters\)", text),
        reproducer=str(Path(written[-1]).resolve()) if written else None,
        log=log,
    )


def run_target(target: str, seconds: int) -> Outcome:
    logs = BUILD / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{target}.log"
    argv = command(target, seconds)
    env = dict(os.environ)
    # leaks are bugs too; symbolized stacks in the log
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:symbolize=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env["PYTHONPATH"] = str(ROOT)
    print(f"fuzz: {target}: {seconds} s ({log.relative_to(ROOT)})", flush=True)
    with log.open("w") as out:
        out.write(" ".join(argv) + "\n")
        out.flush()
        proc = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    text = log.read_text(errors="replace")
    outcome = parse(target, proc.returncode, text, log)
    outcome.lines = line_coverage(target)
    if not outcome.ok:
        tail = [line for line in text.splitlines() if not line.startswith('"')][-60:]
        print("\n".join(tail), file=sys.stderr)
    return outcome


def _num(v: int | None) -> str:
    return "?" if v is None else str(v)


def summary(outcomes: list[Outcome], seconds: int) -> str:
    head = ("target", "result", "executions", "exec/s", "cov", "ft", "corpus")
    lines = [f"fuzz summary ({seconds} s per target; cov = edges covered, ft = features):"]
    lines.append("  {:<8} {:<7} {:>11} {:>7} {:>6} {:>6} {:>7}".format(*head))
    for o in outcomes:
        cols = (
            o.target,
            "ok" if o.ok else "FAILED",
            *map(_num, (o.runs, o.exec_per_sec, o.cov, o.ft, o.corpus)),
        )
        line = "  {:<8} {:<7} {:>11} {:>7} {:>6} {:>6} {:>7}".format(*cols)
        lines.append(line + (f"   (of {o.edges} instrumented edges)" if o.edges else ""))
    for o in outcomes:
        if o.lines:
            lines.append(f"  {o.target}: lines covered by its corpus: {o.lines}")
    for o in outcomes:
        if not o.ok:
            where = o.reproducer or "(none written: see the log)"
            lines.append(f"  {o.target}: exit {o.returncode}; reproducer: {where}; log: {o.log}")
            lines.append(f"    replay: {replay_hint(o)}")
    return "\n".join(lines)


def replay_hint(o: Outcome) -> str:
    path = o.reproducer or "REPRODUCER"
    if o.target == "config":
        return f".venv/bin/fwd check-config {path}"
    return f"build/fuzz/fuzz_{o.target} {path}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS))
    args = p.parse_args(argv)
    for target in args.only:
        if target != "config" and not (BUILD / f"fuzz_{target}").exists():
            print(f"fuzz: build/fuzz/fuzz_{target} missing: run make -C native/fuzz", file=sys.stderr)
            return 2
    seeds.write(BUILD / "seeds")
    outcomes = [run_target(t, args.seconds) for t in args.only]
    print(summary(outcomes, args.seconds))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
