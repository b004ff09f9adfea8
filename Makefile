# fwd — common tasks. `make test` works on a fresh machine (it runs setup first).
PY := .venv/bin/python

.PHONY: setup build test lint unit pcap-tests bench bench-core example clean

setup:
	bash scripts/setup.sh

# Rebuild the cffi extension in place after editing native/ or fwd/_build_native.py.
build: setup

lint: setup
	.venv/bin/ruff check fwd tests examples bench
	.venv/bin/ruff format --check fwd tests examples bench

test: setup lint
	$(PY) -m pytest -q tests

unit: setup
	$(PY) -m pytest -q tests/unit

pcap-tests: setup
	$(PY) -m pytest -q tests/pcap

bench-core: setup
	$(PY) bench/bench_core.py

bench: bench-core

# The README's example: a capture run through the C core.
example: setup
	.venv/bin/fwd pcap --config examples/fwd.toml examples/example.pcap /tmp/fwd-example-out.pcap

clean:
	rm -rf build dist *.egg-info fwd/_fwd_native*.so fwd/_fwd_native.c native/*.o .pytest_cache .ruff_cache
