"""Bearer tokens on the gRPC port: the data plane (``token_file``) and the control
plane (``admin_token_file``); health and reflection stay open."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import SENDER, T0, Harness, run_async, serving, template_request

from tiergate import cli
from tiergate import config as cfg
from tiergate.client import TiergateClient
from tiergate.server import SERVICE_NAME
from tiergate.server.auth import Access, Guard, bearer
from tiergate.v1 import admission_pb2 as pb

DATA = "data-token-0123456789"
ADMIN = "admin-token-9876543210"
Metadata = tuple[tuple[str, str], ...] | None


def auth(token: str | None) -> Metadata:
    return None if token is None else (("authorization", f"Bearer {token}"),)


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def stream_code(h: Harness, metadata: Metadata) -> grpc.StatusCode:
    async def requests() -> AsyncIterator[pb.AdmitRequest]:
        yield template_request("15550000001")

    try:
        async for _ in h.stub.AdmitStream(requests(), metadata=metadata, timeout=10):
            pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


async def watch_code(h: Harness, metadata: Metadata) -> grpc.StatusCode:
    """WatchSenderState's first message read (the stream then cancelled), or its error."""
    call = h.stub.WatchSenderState(
        pb.WatchSenderStateRequest(sender_id=SENDER), metadata=metadata, timeout=10
    )
    try:
        await call.read()
    except grpc.aio.AioRpcError as e:
        return e.code()
    call.cancel()
    return grpc.StatusCode.OK


async def data_plane_codes(h: Harness, token: str | None) -> set[grpc.StatusCode]:
    md = auth(token)
    columns = pb.AdmitColumnsRequest(
        senders=[SENDER],
        sender_index=[0],
        recipients=["15550000003"],
        kinds=bytes([pb.TEMPLATE]),
        categories=bytes([pb.UTILITY]),
        templates=["t1"],
        template_index=[1],
        at_unix_ms=[T0],
    )
    codes = [
        await code_of(h.stub.Admit(template_request("15550000001"), metadata=md)),
        await code_of(
            h.stub.AdmitBatch(
                pb.AdmitBatchRequest(requests=[template_request("15550000002")]), metadata=md
            )
        ),
        await code_of(h.stub.AdmitColumns(columns, metadata=md)),
        await stream_code(h, md),
        await watch_code(h, md),
        await code_of(
            h.stub.GetSenderState(
                pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=T0), metadata=md
            )
        ),
        await code_of(
            h.stub.RecordFeedback(
                pb.RecordFeedbackRequest(
                    opt_out=pb.OptOut(recipient="15550000009", sender_id=SENDER, opted_out=True)
                ),
                metadata=md,
            )
        ),
    ]
    return set(codes)


def sender_update(tier: str = "TIER_2K") -> pb.RecordFeedbackRequest:
    return pb.RecordFeedbackRequest(
        sender_update=pb.SenderUpdate(sender_id=SENDER, tier=tier, at_unix_ms=T0)
    )


def template_update() -> pb.RecordFeedbackRequest:
    return pb.RecordFeedbackRequest(
        template_update=pb.TemplateUpdate(template_id="t9", status=pb.TEMPLATE_STATUS_PAUSED)
    )


async def control_plane_codes(h: Harness, token: str | None) -> set[grpc.StatusCode]:
    md = auth(token)
    return {
        await code_of(h.stub.RecordFeedback(sender_update(), metadata=md)),
        await code_of(h.stub.RecordFeedback(template_update(), metadata=md)),
        await code_of(
            h.stub.IngestWebhook(pb.IngestWebhookRequest(body=b"{}", at_unix_ms=T0), metadata=md)
        ),
    }


async def tier(h: Harness) -> str:
    state = await h.stub.GetSenderState(
        pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=T0), metadata=auth(ADMIN)
    )
    return state.tier


OK = {grpc.StatusCode.OK}
# IngestWebhook of "{}" is a malformed webhook: past the token check.
CONTROL_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


@run_async
async def test_data_plane_needs_the_token() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        assert await data_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}
        assert await data_plane_codes(h, "wrong") == {grpc.StatusCode.PERMISSION_DENIED}
        assert await data_plane_codes(h, DATA) == OK
        # The admin token also works on the data plane.
        assert await data_plane_codes(h, ADMIN) == OK


@run_async
async def test_control_plane_needs_the_admin_token() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        before = await tier(h)
        assert await control_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}
        assert await control_plane_codes(h, "wrong") == {grpc.StatusCode.PERMISSION_DENIED}
        assert await control_plane_codes(h, DATA) == {grpc.StatusCode.PERMISSION_DENIED}
        assert await tier(h) == before  # no refused update raised the tier
        assert await control_plane_codes(h, ADMIN) == CONTROL_OK
        assert await tier(h) == "TIER_2K"


@run_async
async def test_a_data_token_alone_guards_both_planes() -> None:
    async with serving(token=DATA) as h:
        assert await data_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}
        assert await control_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}
        assert await control_plane_codes(h, "wrong") == {grpc.StatusCode.PERMISSION_DENIED}
        assert await data_plane_codes(h, DATA) == OK
        assert await control_plane_codes(h, DATA) == CONTROL_OK


@run_async
async def test_an_admin_token_alone_leaves_the_data_plane_open() -> None:
    async with serving(admin_token=ADMIN) as h:
        assert await data_plane_codes(h, None) == OK
        assert await control_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}
        assert await control_plane_codes(h, ADMIN) == CONTROL_OK


@run_async
async def test_without_tokens_every_call_is_open() -> None:
    async with serving() as h:
        assert await data_plane_codes(h, None) == OK
        assert await control_plane_codes(h, None) == CONTROL_OK


@run_async
async def test_health_and_reflection_need_no_token() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        health = health_pb2_grpc.HealthStub(h.channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        stub = reflection_pb2_grpc.ServerReflectionStub(h.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in answer.list_services_response.service}
            assert SERVICE_NAME in names


@run_async
async def test_the_token_is_checked_before_the_request_is_read() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        for rpc in (
            "RecordFeedback",
            "IngestWebhook",
            "GetSenderState",
            "PlanCampaign",
            "Admit",
            "AdmitBatch",
        ):
            call = h.channel.unary_unary(f"/{SERVICE_NAME}/{rpc}")
            assert await code_of(call(b"\xff\xff")) == grpc.StatusCode.UNAUTHENTICATED
        assert h.sidecar.metrics.invalid_requests == {}


@run_async
async def test_the_client_sends_its_token() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        async with TiergateClient(h.target, token=ADMIN) as client:
            answer = await client.admit(
                SENDER, "15550000001", category=pb.UTILITY, template_id="t1", at_unix_ms=T0
            )
            assert answer.decision == pb.DECISION_ADMIT
            await client.record_feedback(sender_update().sender_update)
            assert (await client.sender_state(SENDER, at_unix_ms=T0)).tier == "TIER_2K"
        async with TiergateClient(h.target, token=DATA) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.record_feedback(sender_update("TIER_10K").sender_update)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


@run_async
async def test_reload_replaces_the_tokens() -> None:
    async with serving(token=DATA, admin_token=ADMIN) as h:
        config = h.sidecar.config
        changes = await h.sidecar.reload(dataclasses.replace(config, token="new-data-token"))
        assert changes == ["token replaced"]
        assert await data_plane_codes(h, DATA) == {grpc.StatusCode.PERMISSION_DENIED}
        assert await data_plane_codes(h, "new-data-token") == OK
        # Removing every token needs a restart: the current ones stay.
        await h.sidecar.reload(dataclasses.replace(config, token="", admin_token=""))
        assert await data_plane_codes(h, None) == {grpc.StatusCode.UNAUTHENTICATED}


def test_token_files_are_read_from_flags_env_and_toml(tmp_path: Path) -> None:
    data = tmp_path / "data.token"
    data.write_text(DATA + "\n")
    admin = tmp_path / "admin.token"
    admin.write_text(ADMIN)
    loaded = cfg.load({"token_file": str(data), "admin_token_file": str(admin)}, env={})
    assert (loaded.token, loaded.admin_token) == (DATA, ADMIN)
    assert DATA not in repr(loaded) and ADMIN not in repr(loaded)
    loaded = cfg.load({}, env={"TIERGATE_TOKEN_FILE": str(data)})
    assert (loaded.token, loaded.admin_token) == (DATA, "")
    toml = tmp_path / "tiergate.toml"
    toml.write_text(f'admin_token_file = "{admin}"\n')
    assert cfg.load({"config": str(toml)}, env={}).admin_token == ADMIN


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("two words", "without spaces"), ("x" * 5000, "larger than")],
)
def test_bad_token_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(cfg.ConfigError, match=message) as info:
        cfg.load({"token_file": str(path)}, env={})
    assert info.value.key == "token_file"
    with pytest.raises(cfg.ConfigError, match="cannot read") as info:
        cfg.load({"admin_token_file": str(tmp_path / "missing")}, env={})
    assert info.value.key == "admin_token_file"


def test_bearer_metadata() -> None:
    assert bearer((("authorization", "Bearer abc"),)) == b"abc"
    assert bearer((("x", "y"), ("authorization", "bearer  abc "))) == b"abc"
    assert bearer((("authorization", "Basic abc"),)) is None
    assert bearer(()) is None
    assert bearer(None) is None
    guard = Guard(DATA, ADMIN)
    assert guard.grant(auth(DATA)) == (Access.DATA, True)
    assert guard.grant(auth(ADMIN)) == (Access.ADMIN, True)
    assert guard.grant(auth("nope")) == (Access.NONE, True)
    assert guard.grant(None) == (Access.NONE, False)
    assert Guard(DATA).grant(auth(DATA)) == (Access.ADMIN, True)
    assert Guard(admin_token=ADMIN).grant(None) == (Access.DATA, False)
    assert not Guard().active


def test_state_command_sends_the_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(DATA + "\n")

    @run_async
    async def main() -> None:
        async with serving(token=DATA, admin_token=ADMIN) as h:
            base = ["state", SENDER, "--target", h.target, "--at-unix-ms", str(T0)]
            assert await asyncio.to_thread(cli.main, [*base, "--token-file", str(token)]) == 0
            assert await asyncio.to_thread(cli.main, base) == 1

    main()
    captured = capsys.readouterr()
    assert SENDER in captured.out
    assert "UNAUTHENTICATED" in captured.err
