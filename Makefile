# fwd — common tasks. `make test` works on a fresh machine (it runs setup first).
PY := .venv/bin/python

.PHONY: setup build test lint unit pcap-tests netns-tests fuzz test-asan bench bench-core bench-live bench-redirect bench-healthcheck bench-daemon example lab-up lab-down demo clean

setup:
	bash scripts/setup.sh

# Rebuild the cffi extension in place after editing native/ or fwd/_build_native.py.
build: setup

lint: setup
	.venv/bin/ruff check fwd healthcheck lab tests examples bench
	.venv/bin/ruff format --check fwd healthcheck lab tests examples bench

test: setup lint
	$(PY) -m pytest -q tests
	$(MAKE) fuzz FUZZ_SECONDS=60
	$(MAKE) test-asan

unit: setup
	$(PY) -m pytest -q tests/unit

pcap-tests: setup
	$(PY) -m pytest -q tests/pcap

netns-tests: setup
	$(MAKE) -C native/bpf
	$(PY) -m pytest -q tests/netns

# Fuzzing (docs/hardening.md): the packet core and the table builder (libFuzzer + ASan + UBSan,
# native/fuzz) and the config loaders (atheris), FUZZ_SECONDS each; executions and coverage per
# target; non-zero exit and the reproducer's path on a crash.
FUZZ_SECONDS ?= 60
fuzz: setup
	$(MAKE) -s -C native/fuzz all cov
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# The C core with AddressSanitizer + UndefinedBehaviorSanitizer (build/asan; the in-place extension
# is not touched): core_smoke with leak checks, the canaries (a report must kill its process), then
# the unit and pcap tests against it; any report fails. docs/hardening.md ("Sanitizers"). The
# libFuzzer replay is left out: its binaries carry clang's ASan runtime, which cannot share a
# process with the gcc one preloaded here (make test runs it).
ASAN_FUZZ_EXAMPLES ?= 100
test-asan: setup
	$(PY) tests/asan/build_asan.py
	. build/asan/env && ASAN_OPTIONS=$$ASAN_OPTIONS:detect_leaks=1 build/asan/core_smoke 200000
	. build/asan/env && build/asan/venv/bin/python tests/asan/canary.py
	. build/asan/env && FWD_FUZZ_EXAMPLES=$(ASAN_FUZZ_EXAMPLES) build/asan/venv/bin/python -m pytest -q \
	  -p asan_hook -W "ignore::pytest.PytestAssertRewriteWarning" --capture=sys tests/unit tests/pcap \
	  --deselect tests/unit/test_fuzz_regressions.py::test_c_target_replays_reproducers_and_seeds

bench-core: setup
	$(PY) bench/bench_core.py

# The live path (root: network namespaces, XDP): fwd AF_XDP, fwd raw socket, kernel forwarding
# and a no-op AF_XDP forwarder side by side; bench-report/live.md + live.png.
bench-live: setup
	$(MAKE) -C native/bpf all noop
	$(PY) bench/bench_live.py

# fwd-redirect (root: namespaces, tc BPF): CPU per decapsulated packet next to plain delivery of
# the same inner packets; bench-report/redirect.md.
bench-redirect: setup
	$(PY) bench/bench_redirect.py

# The health checker's CPU for 1,000 backends at a 1 s interval (target: under 5% of one core).
bench-healthcheck: setup
	$(PY) bench/bench_healthcheck.py

# Health verdict -> new table used by the data plane, 1,000 backends (root: namespaces, XDP);
# bench-report/daemon.md.
bench-daemon: setup
	$(MAKE) -C native/bpf
	$(PY) bench/bench_daemon.py

# All of them, then bench-report/README.md (core + live, with the chart).
bench: bench-core bench-live bench-redirect bench-healthcheck bench-daemon
	$(PY) bench/bench_live.py --combine

# The multi-tier lab (lab/, root: network namespaces): clients, two BIRD routers (ECMP), three L4
# nodes (fwd + ExaBGP), four L7 nodes (HAProxy behind fwd-redirect). lab-down removes every
# namespace, process and file of it. containerlab/ holds the same lab for Docker + containerlab.
lab-up: setup
	$(PY) -m lab up

lab-down:
	$(PY) -m lab down

# The README's main job: the lab up, live traffic, every scenario explained, the results, down.
demo: setup
	$(PY) -m lab demo

# The README's example: a capture run through the C core.
example: setup
	.venv/bin/fwd pcap --config examples/fwd.toml examples/example.pcap /tmp/fwd-example-out.pcap

clean:
	rm -rf build dist *.egg-info fwd/_fwd_native*.so fwd/_fwd_native.c healthcheck/_lanes*.so healthcheck/_lanes.c native/*.o .pytest_cache .ruff_cache
