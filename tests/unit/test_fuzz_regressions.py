"""The fuzz targets' checks on the committed reproducers and on the seed corpora.

Every file under tests/fuzz_regressions/TARGET/ reproduced a defect a fuzz run found (or one found
while writing the target); replaying it keeps the defect fixed. The C targets replay through their
libFuzzer binaries (native/fuzz, built here with clang: ASan + UBSan + the harness's invariants),
the config target through the same check function atheris drives. The seeds (golden frames,
update sequences, the golden and example configs) go through the same checks, so these tests
also hold when no reproducer is committed yet.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fuzz import config_target, run, seeds

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"


def reproducers(target: str) -> list[Path]:
    d = REGRESSIONS / target
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.fixture(scope="module")
def harness_dir() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "fuzz")], check=True)
    return ROOT / "build" / "fuzz"


@pytest.mark.parametrize("target", ["core", "table", "hc_http", "hc_gue"])
def test_c_target_replays_reproducers_and_seeds(target: str, harness_dir: Path, tmp_path: Path) -> None:
    seed_dir = seeds.write(tmp_path)[target]
    files = reproducers(target) + sorted(seed_dir.iterdir())
    proc = subprocess.run(
        [str(harness_dir / f"fuzz_{target}"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    executed = re.findall(r"^Executed (\S+) in", proc.stderr, re.M)
    assert len(executed) == len(files), proc.stderr[-2000:]


@pytest.mark.parametrize("name", [p.name for p in reproducers("config")])
def test_config_reproducer(name: str, tmp_path: Path) -> None:
    config_target.check((REGRESSIONS / "config" / name).read_bytes(), tmp_path / "fuzzed.conf")


def test_config_seeds(tmp_path: Path) -> None:
    for data in seeds.config_seeds():
        config_target.check(data, tmp_path / "fuzzed.conf")


def test_config_check_rejects_a_multiline_message(tmp_path: Path) -> None:
    """The check itself can fail: a ConfigError text with a line break is refused."""
    from fwd.config import ConfigError

    e = ConfigError(str(tmp_path / "x"), "node", "ok")
    e.key = "a\nb"
    e.args = (f"{e.file}: {e.key}: {e.reason}",)
    with pytest.raises(AssertionError, match="one printable line"):
        config_target.check_error(e, str(tmp_path / "x"))


LIBFUZZER_CRASH = """INFO: Loaded 1 modules   (1848 inline 8-bit counters): 1848 [0x1, 0x2),
#408	INITED cov: 251 ft: 335 corp: 81/11380b exec/s: 0 rss: 96Mb
#9000	NEW    cov: 260 ft: 400 corp: 90/12Kb lim: 9016 exec/s: 4500 rss: 100Mb
fuzz_core: fuzz_core.c:1: invariant failed: x
==1== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/build/fuzz/crashes/core/'; Test unit written to /w/build/fuzz/crashes/core/crash-ab12
stat::number_of_executed_units: 9001
stat::average_exec_per_sec:     4500
"""


def test_runner_reads_libfuzzer_output(tmp_path: Path) -> None:
    o = run.parse("core", 1, LIBFUZZER_CRASH, tmp_path / "core.log")
    assert (o.runs, o.exec_per_sec, o.cov, o.ft, o.corpus, o.edges) == (9001, 4500, 260, 400, 90, 1848)
    assert o.reproducer == "/w/build/fuzz/crashes/core/crash-ab12" and not o.ok
    text = run.summary([o], 60)
    assert "FAILED" in text and "/w/build/fuzz/crashes/core/crash-ab12" in text
