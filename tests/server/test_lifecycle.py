"""Health, reflection, graceful shutdown, durable restarts, webhooks and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import OTHER_SENDER as OTHER
from server_harness import SENDER, T0, make_config, run_async, sender, serving, template_request

from tiergate.config import Endpoint
from tiergate.server import SERVICE_NAME, Sidecar, StartupError
from tiergate.store import StoreFailedError
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc
from tiergate.webhooks.signature import sign

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta-webhooks"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def admit(recipient: str, at: int = T0) -> pb.AdmitRequest:
    return template_request(recipient, at, category=pb.MARKETING, template_id="spring_sale")


@run_async
async def test_health_serving_for_the_server_and_the_service() -> None:
    async with serving() as h:
        health = health_pb2_grpc.HealthStub(h.channel)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@run_async
async def test_reflection_lists_the_service() -> None:
    async with serving() as h:
        stub = reflection_pb2_grpc.ServerReflectionStub(h.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
        assert replies[0].file_descriptor_response.file_descriptor_proto


@contextlib.asynccontextmanager
async def _started(**overrides: Any) -> AsyncIterator[tuple[Sidecar, grpc.aio.Channel]]:
    """A started sidecar and a channel to it; both closed at the end."""
    sidecar = Sidecar(make_config(**overrides))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield sidecar, channel
    finally:
        await channel.close(None)
        await sidecar.stop(0)


@run_async
async def test_shutdown_goes_not_serving_then_finishes_in_flight_calls() -> None:
    async with _started(shutdown_grace=5.0) as (sidecar, channel):
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert (await watch.read()).status == SERVING

        stub = pb_grpc.AdmissionControlStub(channel)
        stream = stub.AdmitStream()
        await stream.write(admit("15550000001"))
        assert (await stream.read()).decision == pb.DECISION_ADMIT

        stopping = asyncio.ensure_future(sidecar.stop())
        update = await asyncio.wait_for(watch.read(), 5)
        assert update.status == NOT_SERVING
        # The stream that was open when shutdown began is still answered.
        await stream.write(admit("15550000002", T0 + 1))
        assert (await stream.read()).decision == pb.DECISION_ADMIT
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 5)
        # Stopped: new calls find nobody.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Admit(admit("15550000003"), timeout=1)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@run_async
async def test_at_stop_new_calls_are_unavailable_and_open_streams_end_after_their_answers() -> None:
    """Every call ends before the gRPC server stops (whose transport would reset
    it, INTERNAL): a call starting during the grace period is UNAVAILABLE, an
    open AdmitStream is served until near its end, then ends UNAVAILABLE."""
    async with _started(shutdown_grace=1.0) as (sidecar, channel):
        stub = pb_grpc.AdmissionControlStub(channel)
        stream = stub.AdmitStream()
        await stream.write(admit("15550000001"))
        assert (await stream.read()).decision == pb.DECISION_ADMIT
        stopping = asyncio.ensure_future(sidecar.stop())
        while not sidecar._servicer.in_flight.closing:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        for call in (
            stub.Admit(admit("15550000002")),
            stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (info.value.details() or "")
        await stream.write(admit("15550000003", T0 + 1))  # still served
        assert (await stream.read()).decision == pb.DECISION_ADMIT
        with pytest.raises(grpc.aio.AioRpcError) as info:  # ended near the grace's end
            await stream.read()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "AdmitStream: shutting down" in (info.value.details() or "")
        await asyncio.wait_for(stopping, 5)


@run_async
async def test_a_stop_ends_health_watches_with_not_serving() -> None:
    """A watcher hears NOT_SERVING, then its stream ends cleanly; the stop does not
    wait for the watch (the grace period here is far longer than the test)."""
    sidecar = Sidecar(make_config(shutdown_grace=600.0))
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [
            health.Watch(health_pb2.HealthCheckRequest(service=name))
            for name in ("", SERVICE_NAME, "no.such.Service")
        ]
        firsts = [(await w.read()).status for w in watches]
        assert firsts == [SERVING, SERVING, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
        stopping = asyncio.ensure_future(sidecar.stop())
        for w in watches:
            assert (await w.read()).status == NOT_SERVING
            assert await w.read() is grpc.aio.EOF
            assert await w.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 60)
    finally:
        await channel.close(None)
        await sidecar.stop(0)


@run_async
async def test_state_survives_a_restart_and_config_senders_do_not_overwrite_it(
    tmp_path: Path,
) -> None:
    config = make_config(data_dir=tmp_path / "data", durability="write")
    async with serving(config) as h:
        await h.client.admit_batch([admit(f"1555000{i:04d}", T0 + i) for i in range(7)])
        await h.client.record_feedback(
            pb.SenderUpdate(sender_id=SENDER, tier="TIER_2K", at_unix_ms=T0 + 10)
        )
    async with serving(config) as h:
        s = await h.client.sender_state(SENDER, at_unix_ms=T0 + 20)
        assert s.used_24h == 7
        assert s.tier == "TIER_2K"  # recovered, not reset to the config's TIER_250
        again = await h.stub.Admit(admit("15550000003", T0 + 30))
        assert again.decision == pb.DECISION_ADMIT and not again.counted


@run_async
async def test_second_sidecar_on_the_same_data_dir_or_port_fails(tmp_path: Path) -> None:
    config = make_config(data_dir=tmp_path / "data")
    async with serving(config) as h:
        with pytest.raises(StartupError, match="data_dir"):
            await Sidecar(config).start()
        same_port = make_config(listen=Endpoint("127.0.0.1", h.sidecar.port))
        other = Sidecar(same_port)
        with pytest.raises(StartupError, match="listen"):
            await other.start()
        await other.stop(0)


@run_async
async def test_bad_profile_fails_at_start() -> None:
    with pytest.raises(StartupError, match="profile"):
        await Sidecar(make_config(profile="meta-1999")).start()


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


TEXT_MESSAGE = "messages__message-text__pywa.json"
WEBHOOK_SENDER = "1122334455667"  # metadata.phone_number_id of the fixture
WEBHOOK_USER = "972987654321"
WEBHOOK_AT = 1697043223000  # the message's timestamp


def reply_to_webhook_user(at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=WEBHOOK_SENDER,
        recipient=WEBHOOK_USER,
        kind=pb.FREE_FORM,
        category=pb.SERVICE,
        at_unix_ms=at,
    )


@run_async
async def test_ingest_webhook_verifies_then_applies() -> None:
    body = fixture_body(TEXT_MESSAGE)
    config = make_config(senders=(sender(WEBHOOK_SENDER),), webhook_secret="app-secret")
    async with serving(config) as h:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.client.ingest_webhook(body, "sha256=" + "0" * 64)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signature" in str(info.value.details())
        closed = await h.stub.Admit(reply_to_webhook_user(WEBHOOK_AT + 60_000))
        assert closed.reason == pb.OUTSIDE_WINDOW  # the forged body changed nothing

        reply = await h.client.ingest_webhook(body, sign(body, "app-secret"))
        assert reply.applied == 1
        assert reply.ignored == len(reply.ignored_events)
        # The user's message opened the customer service window.
        opened = await h.stub.Admit(reply_to_webhook_user(WEBHOOK_AT + 60_000))
        assert opened.decision == pb.DECISION_ADMIT

        again = await h.client.ingest_webhook(body, sign(body, "app-secret"))
        assert again.applied == 0  # Meta's redelivery is recognised

        broken = b'{"object": "whatsapp_business_account", "entry": 7}'
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.client.ingest_webhook(broken, sign(broken, "app-secret"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "body" in str(info.value.details())


async def http_post(
    port: int, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write((head + "Connection: close\r\n\r\n").encode() + body)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@run_async
async def test_webhook_http_receiver_applies_and_commits(tmp_path: Path) -> None:
    body = fixture_body(TEXT_MESSAGE)
    config = make_config(
        senders=(sender(WEBHOOK_SENDER),),
        webhook_secret="app-secret",
        webhook_listen=Endpoint("127.0.0.1", 0),
        data_dir=tmp_path / "data",
    )
    async with serving(config) as h:
        port = h.sidecar.webhook_port
        assert port
        status, _ = await http_post(port, "/webhook", body, {"X-Hub-Signature-256": "sha256=00"})
        assert status == 403
        signature = sign(body, "app-secret")
        status, payload = await http_post(
            port, "/webhook", body, {"X-Hub-Signature-256": signature}
        )
        assert status == 200, payload
        assert json.loads(payload)["applied"] == 1
    async with serving(config) as h:
        # Acknowledged with 200 only after the store had it: it survives a restart.
        opened = await h.stub.Admit(reply_to_webhook_user(WEBHOOK_AT + 60_000))
        assert opened.decision == pb.DECISION_ADMIT


@run_async
async def test_metrics_endpoint_counts_decisions() -> None:
    config = make_config(metrics_listen=make_config().listen)
    async with serving(config) as h:
        await h.stub.Admit(admit("15550000001"))
        await h.stub.Admit(admit("15550000001", T0 + 1))
        await h.stub.Admit(pb.AdmitRequest(sender_id="nobody", recipient="1555", kind=pb.FREE_FORM))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.sidecar.metrics_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        text = (await reader.read()).decode()
        writer.close()
        assert text.startswith("HTTP/1.1 200 OK")
        assert 'tiergate_decisions_total{decision="ADMIT",reason="OK"} 2' in text
        assert 'tiergate_decisions_total{decision="REJECT",reason="UNKNOWN_SENDER"} 1' in text
        assert "tiergate_senders 1" in text
        assert 'tiergate_rpc_duration_seconds_count{rpc="Admit"} 3' in text
        # prometheus-client writes the labels sorted by name.
        assert 'tiergate_rpc_duration_seconds_bucket{le="+Inf",rpc="Admit"} 3' in text
        assert 'tiergate_admit_chunk_size_bucket{le="1",rpc="Admit"} 3' in text
        assert "tiergate_webhook_bodies_total 0" in text


@run_async
async def test_reload_swaps_the_profile_on_live_state_and_adds_new_senders(
    tmp_path: Path,
) -> None:
    config = make_config(data_dir=tmp_path / "data")
    async with serving(config) as h:
        await h.client.admit_batch([admit(f"1555000{i:04d}", T0 + i) for i in range(10)])
        before = await h.client.sender_state(SENDER, at_unix_ms=T0 + 100)
        assert (before.effective_limit, before.used_24h) == (250, 10)

        profile = tmp_path / "cautious.toml"
        profile.write_text(
            'extends = "meta-2025"\nname = "cautious"\n[protection]\nheadroom_pct = 80\n'
        )
        newer = make_config(
            data_dir=tmp_path / "data",
            profile=str(profile),
            senders=(sender(), sender(OTHER, display_phone_number="+15550100002")),
        )
        changes = await h.sidecar.reload(newer)
        assert changes == ["profile meta-2025 -> cautious", f"sender {OTHER} added"]
        after = await h.client.sender_state(SENDER, at_unix_ms=T0 + 200)
        assert after.profile == "cautious"
        assert (after.effective_limit, after.used_24h) == (200, 10)  # usage carried over
        assert (await h.client.sender_state(OTHER, at_unix_ms=T0 + 200)).tier == "TIER_250"
        again = await h.stub.Admit(admit("15550000003", T0 + 300))  # known recipient
        assert again.decision == pb.DECISION_ADMIT and not again.counted

        with pytest.raises(StartupError, match="limit_scope"):
            await h.sidecar.reload(make_config(profile="meta-2024"))
        assert (await h.client.sender_state(SENDER, at_unix_ms=T0 + 400)).profile == "cautious"


@run_async
async def test_config_sender_the_service_refuses_fails_at_start() -> None:
    clash = make_config(senders=(sender(), sender(OTHER)))  # same display number twice
    with pytest.raises(StartupError, match=r"senders\[1\]: display number"):
        await Sidecar(clash).start()


@run_async
async def test_a_failed_store_answers_internal_and_goes_not_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(make_config(data_dir=tmp_path / "data")) as h:
        store = h.sidecar.store
        assert store is not None and store._commit.writer is not None
        ok = await h.stub.Admit(admit("15550000001"))
        assert ok.decision == pb.DECISION_ADMIT

        def broken(data: bytes, last_seq: int) -> None:
            raise OSError(5, "Input/output error")

        # The write the Admit awaits fails: INTERNAL, and health goes NOT_SERVING.
        monkeypatch.setattr(store._commit.writer, "write", broken)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.Admit(admit("15550000002"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        health = health_pb2_grpc.HealthStub(h.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == NOT_SERVING
        assert isinstance(store._commit.failed, StoreFailedError) and h.sidecar.store_failed
        # From now on the store refuses at once; every admission RPC answers INTERNAL.
        monkeypatch.undo()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.Admit(admit("15550000003"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        batch = pb.AdmitBatchRequest(requests=[admit("15550000004")])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.AdmitBatch(batch)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in h.stub.AdmitStream(iter([admit("15550000005")])):
                pytest.fail("an answer from a failed store")
        assert info.value.code() == grpc.StatusCode.INTERNAL


@run_async
async def test_a_store_failure_between_calls_goes_not_serving(tmp_path: Path) -> None:
    """The fsync thread fails while no call waits: NOT_SERVING at the next call."""
    async with serving(make_config(data_dir=tmp_path / "data")) as h:
        store = h.sidecar.store
        assert store is not None and store._commit.flusher is not None
        store._commit.flusher.error = OSError(5, "Input/output error")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await h.stub.Admit(admit("15550000001"))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        health = health_pb2_grpc.HealthStub(h.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == NOT_SERVING
