"""Hypothesis profiles, chosen by the environment variable HYPOTHESIS_PROFILE.

- ``dev`` (the default): a short run while editing;
- ``ci`` (``make test``): bounded and reproducible (derandomized);
- ``fuzz`` (``make fuzz``): rounds of ``tests/fuzz`` (``FUZZ_EXAMPLES`` examples per
  target each) that keep what they find in the example database and print how to
  reproduce a failure.

Tests that set ``max_examples`` keep their own number; the fuzz targets take
theirs from the profile. Tests marked ``fuzz`` run only with the fuzz profile.
Tests marked ``engine_independent`` run only when the compiled engine may be in use:
``TIERGATE_NO_EXTENSIONS=1`` (make test's pure-Python pass) deselects them.

The ``twin`` fixture runs a test once over each implementation of the engine
and its columnar kernels: the pure-Python reference and the compiled twin. The
compiled run is skipped when the extension is not built, and fails instead when
``TIERGATE_REQUIRE_EXTENSIONS=1`` (a build that silently failed must not pass).
"""

from __future__ import annotations

# The tests' servers run on the transport ``tiergate serve`` runs on: gRPC reads
# GRPC_EXPERIMENTS once, as it loads, so this comes before anything imports grpc.
import tiergate.transport  # noqa: F401

# isort: split
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=8)
settings.register_profile("ci", max_examples=10, derandomize=True, print_blob=True)
# One round of make fuzz; it runs rounds until its time is up.
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), print_blob=True
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
settings.load_profile(PROFILE)


# make test runs the suite twice: with the compiled engine, then with the pure-Python
# one (TIERGATE_NO_EXTENSIONS=1). Tests marked engine_independent answer the same
# whichever engine is built (webhook HTTP and parsing, config parsing, packaging
# files, benchmark harnesses): the pure-Python pass deselects them, so they run once.
PURE_PYTHON_PASS = os.environ.get("TIERGATE_NO_EXTENSIONS", "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engine_independent: answers the same whichever engine is built "
        "(deselected by TIERGATE_NO_EXTENSIONS=1: make test runs it once)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PURE_PYTHON_PASS:
        once = [item.get_closest_marker("engine_independent") is not None for item in items]
        config.hook.pytest_deselected(
            items=[item for item, o in zip(items, once, strict=True) if o]
        )
        items[:] = [item for item, o in zip(items, once, strict=True) if not o]
    if PROFILE == "fuzz":
        return
    skip = pytest.mark.skip(reason="a long fuzzing run: make fuzz (HYPOTHESIS_PROFILE=fuzz)")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)


@dataclass(frozen=True)
class Twin:
    """One implementation: its name, engine class and columnar kernels module."""

    name: str
    Engine: Any
    kernels: ModuleType


def _reference() -> Twin:
    from tiergate.engine import PyEngine, columns

    return Twin("reference", PyEngine, columns)


def _compiled() -> Twin:
    try:
        from tiergate._native import columns
        from tiergate._native.engine import Engine
    except ImportError as exc:
        if os.environ.get("TIERGATE_REQUIRE_EXTENSIONS", "") not in ("", "0"):
            pytest.fail(f"the compiled twin is missing (TIERGATE_REQUIRE_EXTENSIONS=1): {exc}")
        pytest.skip("the compiled extension is not built")
    return Twin("compiled", Engine, columns)


@pytest.fixture(params=["reference", "compiled"])
def twin(request: pytest.FixtureRequest) -> Twin:
    """Each implementation in turn (see the module docstring)."""
    return _reference() if request.param == "reference" else _compiled()
