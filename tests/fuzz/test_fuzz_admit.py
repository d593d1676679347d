"""Fuzz targets of the admission RPCs: Admit, AdmitBatch, AdmitStream, AdmitColumns.

Each runs a program of valid traffic mixed with fuzzed requests (messages and raw
bytes) against a real in-process sidecar, under the request clock and the server
clock; ``fuzz_session`` holds the oracles.
"""

from __future__ import annotations

from typing import Any

import pytest
import uvloop
from fuzz_session import run_program
from fuzz_strategies import (
    admit_requests,
    batch_requests,
    columns_requests,
    fuzz_steps,
    programs,
    raw,
    stream_requests,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CLOCKS = pytest.mark.parametrize("clock", ["request", "server"])
FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
raw_stream = st.lists(
    st.one_of(admit_requests().map(lambda m: m.SerializeToString()), raw(admit_requests())),
    max_size=8,
)


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("Admit", admit_requests())))
def test_fuzz_admit(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("AdmitBatch", batch_requests())))
def test_fuzz_admit_batch(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("AdmitStream", stream_requests(), raw_stream)))
def test_fuzz_admit_stream(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("AdmitColumns", columns_requests())))
def test_fuzz_admit_columns(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))
