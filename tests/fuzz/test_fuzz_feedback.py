"""Fuzz targets of RecordFeedback (every event of its oneof) and GetSenderState."""

from __future__ import annotations

from typing import Any

import pytest
import uvloop
from fuzz_session import run_program
from fuzz_strategies import (
    FEEDBACK_EVENTS,
    feedback_requests,
    fuzz_steps,
    programs,
    state_requests,
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
PROGRAMS = {
    event: programs(fuzz_steps("RecordFeedback", feedback_requests(event)))
    for event in FEEDBACK_EVENTS
}


@CLOCKS
@pytest.mark.parametrize("event", sorted(FEEDBACK_EVENTS))
@FUZZ
@given(data=st.data())
def test_fuzz_record_feedback(clock: str, event: str, data: st.DataObject) -> None:
    steps: list[tuple[Any, ...]] = data.draw(PROGRAMS[event], label="steps")
    uvloop.run(run_program(steps, clock))


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("GetSenderState", state_requests())))
def test_fuzz_get_sender_state(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))
