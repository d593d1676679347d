"""Bounded under overload and abuse: requests measured before protobuf parses them,
the in-flight limit, calls past their deadline, message and stream caps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import SENDER, Harness, run_async, serving, template_request

from tiergate import cli, transport
from tiergate import config as cfg
from tiergate.server import grpc_server
from tiergate.server.metrics import Metrics
from tiergate.server.servicer import AdmissionControl, InFlight
from tiergate.server.wire_scan import count_items
from tiergate.v1 import admission_pb2 as pb

#: 1.3 M empty AdmitRequests: 2.6 MB on the wire.
EMPTY_ITEMS = 1_300_000
SERVICE = "/tiergate.v1.AdmissionControl/"


class _Context:
    """A servicer context: records the abort, with a chosen time remaining."""

    def __init__(self, remaining: float | None = None) -> None:
        self.aborted: list[tuple[grpc.StatusCode, str]] = []
        self.remaining = remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted.append((code, details))
        raise grpc.aio.AbortError()

    def time_remaining(self) -> float | None:
        return self.remaining


def _never(*args: object) -> Any:
    raise AssertionError("protobuf parsed a request that was refused by its size")


def _raw(h: Harness, method: str) -> Any:
    return h.channel.unary_unary(SERVICE + method)


def _servicer(h: Harness) -> AdmissionControl:
    s = h.sidecar._servicer
    assert s is not None
    return s


# --- item 1: requests measured before protobuf parses them -------------------


def test_count_items_reads_tags_and_lengths_only() -> None:
    assert count_items(b"\x0a\x00" * 3 + b"\x12\x01x", {1: False}) == {1: 3}
    # A field of another wire type, an unknown group and a fixed field are skipped.
    data = b"\x0a\x00\x08\x01\x13\x0a\x00\x14\x09" + bytes(8) + b"\x0a\x00"
    assert count_items(data, {1: False}) == {1: 2}
    # Packed varints: one item per varint.
    assert count_items(b"\x12\x04\x01\x81\x01\x02", {2: True}) == {2: 3}
    # Malformed data: the items before the fault (a lower bound).
    assert count_items(b"\x0a\x00\x0a\x00\x0a\x05ab", {1: False}) == {1: 2}
    assert count_items(b"\x0a\x00\xff", {1: False}) == {1: 1}


@pytest.mark.parametrize(
    "tail",
    [b"", b"\x08\x01", b"\x0a\x05ab"],
    ids=["well-formed", "requests-field-as-varint", "cut-short"],
)
@run_async
async def test_an_oversized_batch_is_refused_before_protobuf_builds_it(
    tail: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2.6 MB of empty items, well-formed or not: INVALID_ARGUMENT naming ``requests``,
    and protobuf never parses it (in either engine mode)."""
    monkeypatch.setattr(pb.AdmitBatchRequest, "FromString", _never)
    async with serving() as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _raw(h, "AdmitBatch")(b"\x0a\x00" * EMPTY_ITEMS + tail)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == f"requests: at most 1000 per call, got {EMPTY_ITEMS}"
        assert h.sidecar.metrics.invalid_requests["AdmitBatch"] == 1


@run_async
async def test_an_oversized_batch_costs_memory_in_proportion_to_its_size() -> None:
    async with serving() as h:
        s = _servicer(h)
        # Malformed (read by the Python scan in either mode), 200 000 empty items.
        data = b"\x0a\x00" * 200_000 + b"\x08\x01"
        ctx = _Context()
        tracemalloc.start()
        try:
            with pytest.raises(grpc.aio.AbortError):
                await s.AdmitBatch(data, ctx)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert ctx.aborted[0][0] == grpc.StatusCode.INVALID_ARGUMENT
        assert peak < len(data)  # parsed, it held ~1 KiB per item


@run_async
async def test_oversized_columns_are_refused_before_protobuf_builds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pb.AdmitColumnsRequest, "FromString", _never)
    async with serving() as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _raw(h, "AdmitColumns")(b"\x1a\x00" * EMPTY_ITEMS)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            f"recipients: at most 1000 items per call, got {EMPTY_ITEMS}"
        )


@run_async
async def test_a_message_over_max_message_bytes_is_refused_by_grpc() -> None:
    async with serving(max_message_bytes=64 * 1024) as h:
        batch = pb.AdmitBatchRequest(
            requests=[template_request(f"1555{i:07d}", key="k" * 200) for i in range(400)]
        )
        assert batch.ByteSize() > 64 * 1024
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.AdmitBatch(batch)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A stream message over the limit as well.
        call = h.stub.AdmitStream()
        await call.write(template_request("15550000001", key="k" * (70 * 1024)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Smaller requests are served.
        reply = await h.stub.Admit(template_request("15550000002"))
        assert reply.decision == pb.DECISION_ADMIT


def test_message_limit_default_and_setting() -> None:
    assert cfg.message_limit(cfg.ServeConfig()) == 4 << 20
    assert cfg.message_limit(cfg.ServeConfig(max_batch=10_000)) == 10_000 * 1024
    assert cfg.message_limit(cfg.ServeConfig(max_message_bytes=65_536)) == 65_536


# --- item 2: admission control ----------------------------------------------


async def _idle_stream() -> AsyncIterator[pb.AdmitRequest]:
    await asyncio.Event().wait()  # never sends; the stream stays open
    yield pb.AdmitRequest()  # pragma: no cover


async def _hold_streams(h: Harness, n: int) -> list[Any]:
    """Open ``n`` streams that stay open; returns once the server counts them."""
    calls = [h.stub.AdmitStream(_idle_stream()) for _ in range(n)]
    in_flight = _servicer(h).in_flight
    while in_flight.count < n:
        await asyncio.sleep(0.01)
    return calls


@run_async
async def test_calls_beyond_max_in_flight_are_resource_exhausted_and_health_answers() -> None:
    async with serving(max_in_flight=2) as h:
        calls = await _hold_streams(h, 2)
        crossings = h.sidecar.metrics.engine_crossings
        for rpc in (
            h.stub.Admit(template_request("15550000001")),
            h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[template_request("15550000002")])),
            h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rpc
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 calls in flight" in (info.value.details() or "")
        third = h.stub.AdmitStream(_idle_stream())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await third.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert h.sidecar.metrics.engine_crossings == crossings  # nothing decided
        # Health is never shed.
        health = health_pb2_grpc.HealthStub(h.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert h.sidecar.metrics.unserved_calls[("Admit", "RESOURCE_EXHAUSTED")] == 1
        assert "tiergate_unserved_calls_total" in h.sidecar.metrics.render()
        # Once the streams end, calls are served again.
        for call in calls:
            call.cancel()
        in_flight = _servicer(h).in_flight
        while in_flight.count:
            await asyncio.sleep(0.01)
        reply = await h.stub.Admit(template_request("15550000003"))
        assert reply.decision == pb.DECISION_ADMIT


def _calls_from_a_thread(channel: grpc.Channel, rpcs: list[tuple[str, bytes]]) -> list[Any]:
    """Start each (method, request bytes) call from another thread, on a blocking
    channel; the calls' futures, in order."""
    futures: list[Any] = []

    def start() -> None:
        futures.extend(channel.unary_unary(m).future(body, timeout=10) for m, body in rpcs)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    return futures


def _outcome(future: Any) -> str:
    exc = future.exception()
    return "OK" if exc is None else str(exc.code().name)


@run_async
async def test_calls_queued_before_the_loop_takes_them_are_shed_at_once() -> None:
    # The event loop is held (as by a burst of work it cannot keep up with)
    # while calls arrive: gRPC core queues them for the loop, up to
    # max_queued per method, and ends the rest at once, RESOURCE_EXHAUSTED,
    # with no Python run for them. Health checks queue apart and are answered.
    # (The tests' servers run on the transport tiergate serve runs on.)
    assert transport.enabled(), "gRPC loaded before tiergate.transport named its transport"
    shed_code = "RESOURCE_EXHAUSTED"
    async with serving(max_in_flight=100, max_queued=4) as h:
        admit = SERVICE + "Admit"
        health = "/grpc.health.v1.Health/Check"
        rpcs = [(admit, template_request(f"1555000{i:04d}").SerializeToString()) for i in range(40)]
        rpcs += [(health, health_pb2.HealthCheckRequest(service="").SerializeToString())] * 3
        channel = grpc.insecure_channel(h.target)
        grpc.channel_ready_future(channel).result(timeout=5)
        futures = _calls_from_a_thread(channel, rpcs)
        shed_while_held = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and shed_while_held < 35:
            time.sleep(0.05)  # the loop is held: nothing of tiergate's runs
            shed_while_held = sum(f.done() for f in futures[:40])
        assert all(_outcome(f) == shed_code for f in futures[:40] if f.done())
        # at most 4 pending and 1 already taken by the loop's open request
        assert shed_while_held >= 35
        while not all(f.done() for f in futures):
            await asyncio.sleep(0.01)
        outcomes = Counter(_outcome(f) for f in futures[:40])
        assert outcomes["OK"] + outcomes[shed_code] == 40 and 1 <= outcomes["OK"] <= 5
        assert all(_outcome(f) == "OK" for f in futures[40:])  # health: never shed
        channel.close()
        state = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        assert state.used_24h == outcomes["OK"]  # the shed ones decided nothing


def test_the_promise_based_transport_is_named_unless_grpc_experiments_names_it() -> None:
    for before, after in [
        ("", "ph2_server"),
        ("event_engine_client", "event_engine_client,ph2_server"),
        ("ph2_server", "ph2_server"),
        ("-ph2_server", "-ph2_server"),  # kept off
    ]:
        env = {"GRPC_EXPERIMENTS": before} if before else {}
        assert transport.prefer_promise_transport(env) == (not before.startswith("-"))
        assert env["GRPC_EXPERIMENTS"] == after


#: Prints GRPC_EXPERIMENTS as it was when grpc started loading for ``tiergate.cli``.
_SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
sys.meta_path.insert(0, Spy())
import tiergate.cli
print(seen[0])
"""


def test_every_tiergate_command_loads_grpc_with_the_promise_based_transport() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    run = subprocess.run(
        [sys.executable, "-c", _SPY], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == transport.PROMISE_TRANSPORT


def test_pending_limits_follow_max_queued() -> None:
    assert dict(grpc_server.pending_limits(64)) == {
        "grpc.server.max_pending_requests": 32,
        "grpc.server.max_pending_requests_hard_limit": 64,
    }
    assert dict(grpc_server.pending_limits(1))["grpc.server.max_pending_requests"] == 1


@run_async
async def test_a_call_past_its_deadline_is_dropped_before_deciding() -> None:
    async with serving() as h:
        s = _servicer(h)
        crossings = h.sidecar.metrics.engine_crossings
        request = template_request("15550000001").SerializeToString()
        batch = pb.AdmitBatchRequest(requests=[template_request("15550000002")])
        # Admit checks deadlines while other calls are in flight.
        with s.in_flight:
            ctx = _Context(remaining=-0.5)
            with pytest.raises(grpc.aio.AbortError):
                await s.Admit(request, ctx)
            assert ctx.aborted[0][0] == grpc.StatusCode.DEADLINE_EXCEEDED
        ctx = _Context(remaining=0.0)
        with pytest.raises(grpc.aio.AbortError):
            await s.AdmitBatch(batch.SerializeToString(), ctx)
        assert ctx.aborted[0][0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert h.sidecar.metrics.engine_crossings == crossings  # nothing decided
        assert s.in_flight.count == 0
        # With time left, the same requests are decided.
        assert await s.Admit(request, _Context(remaining=5.0))
        state = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
        assert state.used_24h == 1


def test_in_flight_reports_why_a_call_is_not_served() -> None:
    in_flight = InFlight(limit=1)
    assert in_flight.unserved(_Context()) is None  # type: ignore[arg-type]
    assert in_flight.unserved(_Context(remaining=1.0)) is None  # type: ignore[arg-type]
    code, _ = in_flight.unserved(_Context(remaining=-1.0)) or (None, "")  # type: ignore[arg-type]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    with in_flight:
        code, _ = in_flight.unserved(_Context()) or (None, "")  # type: ignore[arg-type]
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_streams_per_connection_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[str, Any]]] = []
    real = grpc.aio.server

    def server(*, options: list[tuple[str, Any]]) -> grpc.aio.Server:
        seen.append(options)
        return real(options=options)

    monkeypatch.setattr(grpc_server.grpc.aio, "server", server)

    async def build() -> None:
        h = grpc_server.health.HealthServicer()
        s = AdmissionControl(
            None,  # type: ignore[arg-type]  # never called
            commit=lambda: None,
            metrics=Metrics(),
            max_in_flight=10,
        )
        grpc_server.build_server(s, h, 1000, Metrics(), max_message_bytes=65_536, max_queued=6)

    asyncio.run(build())
    options = dict(seen[0])
    assert options["grpc.max_concurrent_streams"] == 10 + grpc_server.STREAM_HEADROOM
    # gRPC core's queue for the event loop: max_queued, whatever max_in_flight is
    assert options["grpc.server.max_pending_requests_hard_limit"] == 6
    assert options["grpc.max_receive_message_length"] == 65_536


# --- settings ----------------------------------------------------------------


def test_settings_from_flag_env_and_file(tmp_path: Any) -> None:
    c = cfg.load({}, env={})
    assert c.max_in_flight == cfg.DEFAULT_MAX_IN_FLIGHT
    assert c.max_message_bytes == 0
    path = tmp_path / "t.toml"
    path.write_text("max_in_flight = 50\nmax_message_bytes = 1048576\n")
    c = cfg.load({"config": str(path)}, env={})
    assert (c.max_in_flight, c.max_message_bytes) == (50, 1 << 20)
    c = cfg.load({"config": str(path)}, env={"TIERGATE_MAX_IN_FLIGHT": "60"})
    assert c.max_in_flight == 60 and c.origins["max_in_flight"] == "env"
    c = cfg.load({"config": str(path), "max_in_flight": "70"}, env={})
    assert c.max_in_flight == 70 and c.origins["max_in_flight"] == "flag"
    assert c.max_queued == cfg.DEFAULT_MAX_QUEUED
    c = cfg.load({"max_queued": "8"}, env={"TIERGATE_MAX_QUEUED": "4"})
    assert c.max_queued == 8 and c.origins["max_queued"] == "flag"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--max-in-flight", "0"], "max_in_flight"),
        (["--max-in-flight", "many"], "max_in_flight"),
        (["--max-queued", "0"], "max_queued"),
        (["--max-message-bytes", "100"], "max_message_bytes"),
    ],
)
def test_check_config_rejects_bad_limits(
    args: list[str], key: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    assert cli.main(["check-config", *args]) == 2
    assert f"{key}: " in capsys.readouterr().err


def test_serve_takes_the_limit_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    assert cli.main(["check-config", "--max-in-flight", "33", "--max-message-bytes", "2048"]) == 0
    out = capsys.readouterr().out
    assert "33" in out and "2048" in out
