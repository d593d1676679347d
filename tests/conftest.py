"""Hypothesis profiles, chosen by the environment variable HYPOTHESIS_PROFILE.

- ``dev`` (the default): a short run while editing;
- ``ci`` (``make test``): bounded and reproducible (derandomized);
- ``fuzz`` (``make fuzz``): rounds of ``tests/fuzz`` (``FUZZ_EXAMPLES`` examples per
  target each) that keep what they find in the example database and print how to
  reproduce a failure.

Tests that set ``max_examples`` keep their own number; the fuzz targets take
theirs from the profile. Tests marked ``fuzz`` run only with the fuzz profile.
"""

from __future__ import annotations

import os

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if PROFILE == "fuzz":
        return
    skip = pytest.mark.skip(reason="a long fuzzing run: make fuzz (HYPOTHESIS_PROFILE=fuzz)")
    for item in items:
        if item.get_closest_marker("fuzz") is not None:
            item.add_marker(skip)
