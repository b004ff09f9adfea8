"""atheris target: fwd.config.load_config on arbitrary bytes (fwd TOML and GLB JSON).

    python tests/fuzz/fuzz_config.py [libFuzzer options] CORPUS_DIR...

fwd's and the health checker's modules and tomllib are instrumented for coverage; the checks are
in tests/fuzz/config_target.py. The fuzzed file is written to build/fuzz/work/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["fwd", "healthcheck", "tomllib", "json"]):
    from tests.fuzz import config_target

WORK = ROOT / "build" / "fuzz" / "work"
CONFIG = WORK / "fuzzed.conf"


def one_input(data: bytes) -> None:
    config_target.check(data, CONFIG)


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
