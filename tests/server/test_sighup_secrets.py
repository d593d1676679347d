"""SIGHUP to a real ``tiergate serve`` re-reads the token and webhook-secret files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_sighup import SENDER, post, serve

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


def config_text(tmp_path: Path) -> str:
    return f"""token_file = "{tmp_path / "token"}"
webhook_secret_file = "{tmp_path / "secret"}"
webhook_listen = "127.0.0.1:0"

[[senders]]
sender_id = "{SENDER}"
portfolio_id = "portfolio-sighup"
tier = "TIER_250"
"""


def state_call(port: int, token: str) -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AdmissionControlStub(channel)
            try:
                await stub.GetSenderState(
                    pb.GetSenderStateRequest(sender_id=SENDER),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=20,
                )
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

    return asyncio.run(call())


def test_sighup_rereads_the_token_and_secret_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("old-token\n")
    (tmp_path / "secret").write_text("old-secret\n")
    (tmp_path / "tiergate.toml").write_text(config_text(tmp_path))
    with serve(tmp_path) as s:
        assert state_call(s.port, "old-token") == grpc.StatusCode.OK
        assert asyncio.run(post(s.webhook_port, "old-secret")) == 200
        (tmp_path / "token").write_text("new-token\n")
        (tmp_path / "secret").write_text("new-secret\n")
        s.sighup("SIGHUP: reloaded (webhook_secret replaced; token replaced)")
        assert state_call(s.port, "old-token") == grpc.StatusCode.PERMISSION_DENIED
        assert state_call(s.port, "new-token") == grpc.StatusCode.OK
        assert asyncio.run(post(s.webhook_port, "old-secret")) == 403
        assert asyncio.run(post(s.webhook_port, "new-secret")) == 200
        log = s.log()
        for secret in ("old-token", "new-token", "old-secret", "new-secret"):
            assert secret not in log
