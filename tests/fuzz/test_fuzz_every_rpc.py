"""Every RPC's fuzzed requests in one program, then a restart from the data directory:
state that was acknowledged is still there, and nothing a refused request sent."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import uvloop
from fuzz_session import run_with_restart
from fuzz_strategies import (
    FEEDBACK_EVENTS,
    admit_requests,
    batch_requests,
    columns_requests,
    feedback_requests,
    fuzz_steps,
    ingest_request,
    plan_requests,
    programs,
    raw,
    state_requests,
    stream_requests,
    webhooks,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CLOCKS = pytest.mark.parametrize("clock", ["request", "server"])
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
raw_stream = st.lists(
    st.one_of(admit_requests().map(lambda m: m.SerializeToString()), raw(admit_requests())),
    max_size=8,
)
EVERY_RPC = [
    fuzz_steps("Admit", admit_requests()),
    fuzz_steps("AdmitBatch", batch_requests()),
    fuzz_steps("AdmitStream", stream_requests(), raw_stream),
    fuzz_steps("AdmitColumns", columns_requests()),
    *(fuzz_steps("RecordFeedback", feedback_requests(e)) for e in sorted(FEEDBACK_EVENTS)),
    fuzz_steps("IngestWebhook", webhooks(), raw(webhooks().map(ingest_request))),
    fuzz_steps("GetSenderState", state_requests()),
    fuzz_steps("PlanCampaign", plan_requests()),
]


def restart(steps: list[tuple[Any, ...]], clock: str) -> None:
    with tempfile.TemporaryDirectory(prefix="tiergate-fuzz-") as d:
        uvloop.run(run_with_restart(steps, clock, Path(d)))


@CLOCKS
@settings(deadline=None, suppress_health_check=HEALTH)
@given(steps=programs(*EVERY_RPC, max_size=30))
def test_fuzz_every_rpc_then_restart(clock: str, steps: list[tuple[Any, ...]]) -> None:
    restart(steps, clock)


@pytest.mark.fuzz
@CLOCKS
@settings(deadline=None, suppress_health_check=HEALTH, max_examples=25)
@given(steps=programs(*EVERY_RPC, max_size=400))
def test_fuzz_soak_every_rpc_then_restart(clock: str, steps: list[tuple[Any, ...]]) -> None:
    """Long programs (make fuzz only): state built over hundreds of requests."""
    restart(steps, clock)
