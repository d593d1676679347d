"""The store seam: both engine implementations are a CountingStore the service takes."""

from __future__ import annotations

import inspect

from conftest import Twin

from tiergate.engine import Engine
from tiergate.policy.seam import CountingStore
from tiergate.policy.service import AdmissionService

from .helpers import T0, add_sender, admit, rcpt, service


def test_each_engine_is_a_counting_store(twin: Twin) -> None:
    engine = twin.Engine()
    assert isinstance(engine, CountingStore)
    assert isinstance(engine.copy(), CountingStore)
    assert isinstance(type(engine).restore(engine.snapshot()), CountingStore)


def test_the_seam_names_only_what_each_engine_has(twin: Twin) -> None:
    engine_cls = twin.Engine
    members = [
        name
        for name, _ in inspect.getmembers(CountingStore)
        if not name.startswith("_") and name not in ("register",)
    ]
    assert "decide_batch" in members and "restore" in members
    for name in members:
        assert hasattr(engine_cls, name) or hasattr(engine_cls(), name), name


def test_the_default_engine_is_the_one_in_use() -> None:
    assert isinstance(service().engine, Engine)


def test_a_service_decides_on_either_engine(twin: Twin) -> None:
    engine_cls = twin.Engine
    svc = service()
    p = svc.profile
    other = AdmissionService(
        p,
        clock="request",
        engine=engine_cls(p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms),
        ticket_key=svc.ticket_key,
    )
    for s in (svc, other):
        add_sender(s)
    answers = [admit(s, "s1", rcpt(1), T0) for s in (svc, other)]
    assert answers[0] == answers[1]
