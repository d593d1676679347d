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
# The venv's tools first (cython-lint runs pycodestyle, protoc runs protoc-gen-mypy by name).
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: build run test lint typecheck proto proto-check pytest pytest-compiled pytest-python \
	system-deps bench bench-full clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml setup.py
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	touch $(STAMP)

# Rebuilds the extension whenever its sources change; fails loudly if it cannot.
build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace
	@if [ "$${TIERGATE_NO_EXTENSIONS:-0}" = "0" ]; then \
		TIERGATE_REQUIRE_EXTENSIONS=1 $(PY) -c 'import tiergate.engine as e; print("tiergate engine:", e.IMPLEMENTATION)'; \
	fi

run: build
	$(BIN)/tiergate serve --config $(CONFIG)

# A redis-server for the tests and benchmarks that compare against Redis.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server missing: install Debian's redis-server package" >&2; exit 1; \
		fi; }

lint:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/cython-lint ext

typecheck:
	$(BIN)/mypy

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# Generated code must be what the .proto says: regenerate, then no diff allowed.
proto-check: proto
	git diff --exit-code -- src/tiergate/v1

pytest-compiled:
	TIERGATE_REQUIRE_EXTENSIONS=1 $(BIN)/pytest $(PYTEST_ARGS)

pytest-python:
	TIERGATE_NO_EXTENSIONS=1 TIERGATE_REQUIRE_EXTENSIONS=0 $(BIN)/pytest $(PYTEST_ARGS)

test: build system-deps lint typecheck proto-check pytest-compiled pytest-python

bench: build system-deps
	$(PY) benchmarks/run_all.py --quick

bench-full: build system-deps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/tiergate/_native/*.so src/*.egg-info
