"""The store seam: both engine implementations are a CountingStore the service takes."""

from __future__ import annotations

import inspect

import pytest

from tiergate.engine import Engine, PyEngine
from tiergate.policy.seam import CountingStore
from tiergate.policy.service import AdmissionService

from .helpers import T0, add_sender, admit, rcpt, service

IMPLEMENTATIONS = [pytest.param(PyEngine, id="python")]
try:
    from tiergate._native.engine import Engine as CompiledEngine
except ImportError:  # pure-Python build
    pass
else:
    IMPLEMENTATIONS.append(pytest.param(CompiledEngine, id="compiled"))


@pytest.mark.parametrize("engine_cls", IMPLEMENTATIONS)
def test_each_engine_is_a_counting_store(engine_cls: type[CountingStore]) -> None:
    engine = engine_cls()
    assert isinstance(engine, CountingStore)
    assert isinstance(engine.copy(), CountingStore)
    assert isinstance(type(engine).restore(engine.snapshot()), CountingStore)


@pytest.mark.parametrize("engine_cls", IMPLEMENTATIONS)
def test_the_seam_names_only_what_each_engine_has(engine_cls: type[CountingStore]) -> None:
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


@pytest.mark.parametrize("engine_cls", IMPLEMENTATIONS)
def test_a_service_decides_on_either_engine(engine_cls: type[CountingStore]) -> None:
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
