"""Fuzz targets of Meta webhook JSON: through IngestWebhook and the HTTP receiver.

Bodies are the real and synthetic fixtures aimed at the fuzz senders, as they are
or with nodes replaced by hostile JSON, truncated, random JSON or noise; most are
signed with the app secret, some carry a missing or wrong signature. A refused
body must change nothing and be counted (malformed or bad signature).
"""

from __future__ import annotations

from typing import Any

import pytest
import uvloop
from fuzz_session import run_program
from fuzz_strategies import (
    fuzz_steps,
    http_requests,
    ingest_request,
    programs,
    raw,
    webhooks,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiergate.config import Endpoint

CLOCKS = pytest.mark.parametrize("clock", ["request", "server"])
FUZZ = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@CLOCKS
@FUZZ
@given(steps=programs(fuzz_steps("IngestWebhook", webhooks(), raw(webhooks().map(ingest_request)))))
def test_fuzz_ingest_webhook(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock))


http_steps = st.tuples(st.just("fuzz"), st.just("HttpWebhook"), webhooks(), st.just(False))
http_raw_steps = st.tuples(st.just("fuzz"), st.just("HttpRequest"), http_requests(), st.just(True))


@CLOCKS
@FUZZ
@given(steps=programs(http_steps, http_raw_steps))
def test_fuzz_webhook_http_receiver(clock: str, steps: list[tuple[Any, ...]]) -> None:
    uvloop.run(run_program(steps, clock, webhook_listen=Endpoint("127.0.0.1", 0)))
