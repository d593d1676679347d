# tiergate — build, run, test, benchmark. Two commands on a fresh machine:
#   make run    (virtual env, compiled engine, sidecar on 127.0.0.1:50051)
#   make test   (everything the tests need, then every check and the suite)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/tiergate.toml
PYTEST_ARGS ?=
# The repo's own toolchain: exact versions with hashes (make lock refreshes it).
LOCK := requirements.lock
UV_VERSION := 0.13.8
# The venv's tools first (cython-lint runs pycodestyle, protoc runs protoc-gen-mypy by name).
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: build run test check fuzz lint typecheck proto proto-check pytest pytest-compiled \
	pytest-python system-deps bench bench-full lock clean deploy-check

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Every package from the lock, checked against its hashes; then tiergate itself,
# built with the locked setuptools and Cython (no isolated build env to resolve).
$(STAMP): $(VENV)/bin/python $(LOCK) pyproject.toml setup.py
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve pyproject's ranges (dev and plot extras) to the newest releases, on
# purpose: run it to take upgrades, commit the lock, then make test.
lock: $(VENV)/bin/python
	$(PY) -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra plot --universal \
		--python-version 3.11 --generate-hashes --upgrade --quiet -o $(LOCK)

# Rebuilds the extension whenever its sources change; fails loudly if it cannot.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace
	@if [ "$${TIERGATE_NO_EXTENSIONS:-0}" = "0" ]; then \
		TIERGATE_REQUIRE_EXTENSIONS=1 $(PY) -c 'import tiergate.engine as e; print("tiergate engine:", e.IMPLEMENTATION)'; \
	fi

run: build
	$(BIN)/tiergate serve --config $(CONFIG)

# From Debian: redis-server for the tests and benchmarks that compare against
# Redis; h2load (nghttp2-client) for the overload benchmark's load.
SYSTEM_DEPS := redis-server:redis-server h2load:nghttp2-client
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
		command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing: install Debian's$$missing" >&2; exit 1; \
		fi; }

lint:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/cython-lint ext
	$(PY) scripts/shape.py

# The packaging files (no container can be built here): hadolint lints the
# Dockerfile, kubernetes-validate checks the manifests against the schemas it
# bundles (offline), and systemd-analyze verifies the unit where the machine has
# it (with this venv's tiergate standing in for /opt/tiergate's; a warning fails).
# tests/deploy checks the command lines they run with tiergate check-config.
deploy-check: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
	@if command -v systemd-analyze >/dev/null 2>&1; then \
		dir=$$(mktemp -d); \
		sed 's#/opt/tiergate/bin/tiergate#$(abspath $(BIN))/tiergate#g' \
			deploy/systemd/tiergate.service > $$dir/tiergate.service; \
		out=$$(systemd-analyze verify $$dir/tiergate.service 2>&1); rc=$$?; rm -rf $$dir; \
		if [ $$rc != 0 ] || [ -n "$$out" ]; then \
			echo "$$out" >&2; echo "deploy-check: systemd-analyze verify failed" >&2; exit 1; \
		fi; \
		echo "systemd-analyze verify deploy/systemd/tiergate.service: ok"; \
	else \
		echo "deploy-check: no systemd-analyze on this machine: the unit is not verified"; \
	fi

# The compiled modules' .pyi stubs are checked against the built modules (mypy's
# stubtest); without a build (make build, or TIERGATE_NO_EXTENSIONS=1) there is
# nothing to check them against.
COMPILED_MODULES := tiergate._native.engine tiergate._native.columns tiergate._native.wire
typecheck:
	$(BIN)/mypy
	@if $(PY) -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' $(COMPILED_MODULES); then \
		echo "stubtest $(COMPILED_MODULES)"; \
		$(PY) -m mypy.stubtest --mypy-config-file pyproject.toml $(COMPILED_MODULES); \
	else \
		echo "typecheck: the compiled modules are not built (make build): their stubs are not checked"; \
	fi

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# Generated code must be what the .proto says: regenerate, then no diff allowed.
proto-check: proto
	git diff --exit-code -- src/tiergate/v1 ext/tiergate/_native/wire_fields.pxd

# The suite runs with hypothesis's "ci" profile (tests/conftest.py): bounded, derandomized.
pytest-compiled:
	HYPOTHESIS_PROFILE=ci TIERGATE_REQUIRE_EXTENSIONS=1 $(BIN)/pytest $(PYTEST_ARGS)

pytest-python:
	HYPOTHESIS_PROFILE=ci TIERGATE_NO_EXTENSIONS=1 TIERGATE_REQUIRE_EXTENSIONS=0 \
		$(BIN)/pytest $(PYTEST_ARGS)

# The full gate (.ci/run calls it). It must leave the tree as it found it.
test:
	@before=$$(git status --porcelain | md5sum); \
	$(MAKE) --no-print-directory build system-deps lint deploy-check typecheck proto-check \
		pytest-compiled pytest-python \
		&& after=$$(git status --porcelain | md5sum) \
		&& { [ "$$before" = "$$after" ] || { echo "make test changed files in the tree:" >&2; \
			git status --short >&2; exit 1; }; }

# The quick loop while editing: lint, types and the compiled tests not marked slow
# (hypothesis's short "dev" profile, whatever HYPOTHESIS_PROFILE says; no fuzz runs).
check: build lint typecheck
	HYPOTHESIS_PROFILE=dev TIERGATE_REQUIRE_EXTENSIONS=1 $(BIN)/pytest -m "not slow and not fuzz" \
		-q $(PYTEST_ARGS)

# Long fuzzing of every RPC and of webhook JSON against in-process sidecars on
# 127.0.0.1 (tests/fuzz, hypothesis profile "fuzz"): rounds of fresh random programs,
# FUZZ_EXAMPLES per target, the compiled and the pure-Python engine in turn, until
# FUZZ_SECONDS have passed (a round still running then is stopped at most 2 minutes
# later). The first failure stops it and prints the minimal input; .hypothesis/
# keeps it, and the next run replays it first.
FUZZ_SECONDS ?= 600
FUZZ_EXAMPLES ?= 60
fuzz: build
	@end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ "$$(date +%s)" -lt "$$end" ]; do \
		round=$$((round + 1)); left=$$(( end - $$(date +%s) )); \
		if [ $$((round % 2)) = 1 ]; then engine="TIERGATE_REQUIRE_EXTENSIONS=1"; \
		else engine="TIERGATE_NO_EXTENSIONS=1 TIERGATE_REQUIRE_EXTENSIONS=0"; fi; \
		echo "make fuzz: round $$round ($$engine), $$left s left"; \
		env $$engine HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
			timeout --signal=INT --kill-after=30 $$((left + 120)) \
			$(BIN)/pytest tests/fuzz -x -q -p no:cacheprovider --timeout=600 \
			--hypothesis-show-statistics $(PYTEST_ARGS); \
		rc=$$?; \
		if [ $$rc = 124 ]; then echo "make fuzz: time is up during round $$round"; break; fi; \
		if [ $$rc != 0 ]; then echo "make fuzz: round $$round failed (exit $$rc)" >&2; exit $$rc; fi; \
	done; \
	echo "make fuzz: $$round rounds, nothing found"

bench: build system-deps
	$(PY) benchmarks/run_all.py --quick

bench-full: build system-deps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/tiergate/_native/*.so src/*.egg-info
