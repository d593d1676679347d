"""SIGHUP to a real ``tiergate serve``, and config files that are not UTF-8.

A rotated ``webhook_secret`` applies at once, to the IngestWebhook RPC and the
HTTP receiver alike (the old secret is refused, the new one accepted). A
config or profile file that is not UTF-8 is a config error naming the file:
``check-config`` and ``serve`` exit with 2; on SIGHUP it is logged and
ignored, and the sidecar goes on with the settings it had.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc
from tiergate.webhooks.signature import sign

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STOP = (REPO / "tests/fixtures/meta-webhooks-synthetic/user_preferences__stop.json").read_bytes()
SENDER = "106540352242922"  # the fixture's phone number id
STOP_AT = 1_764_000_000_000
LISTENING = re.compile(r"tiergate listening on 127\.0\.0\.1:(\d+)")
WEBHOOKS = re.compile(r"webhook receiver listening on 127\.0\.0\.1:(\d+)")
BAD_BYTES = b'profile = "meta-2025"\n# caf\xe9 in Latin-1\n'


def tiergate_command() -> list[str]:
    script = Path(sys.executable).with_name("tiergate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tiergate.cli"]


def config_text(secret: str) -> str:
    return f"""webhook_secret = "{secret}"
webhook_listen = "127.0.0.1:0"

[[senders]]
sender_id = "{SENDER}"
portfolio_id = "portfolio-sighup"
display_phone_number = "+15550783881"
tier = "TIER_250"
"""


class Serving:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log_path = log
        self.port = 0
        self.webhook_port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str | re.Pattern[str], after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + 60
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        while time.monotonic() < deadline:
            m = regex.search(self.log(), after)
            if m:
                return m
            assert self.process.poll() is None, f"tiergate serve exited:\n{self.log()}"
            time.sleep(0.02)
        pytest.fail(f"{regex.pattern!r} not logged:\n{self.log()}")

    def sighup(self, then: str) -> None:
        mark = len(self.log())
        self.process.send_signal(signal.SIGHUP)
        self.wait_for(then, mark)


@contextmanager
def serve(tmp_path: Path) -> Iterator[Serving]:
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *tiergate_command(),
                "serve",
                "--config",
                str(tmp_path / "tiergate.toml"),
                "--listen",
                "127.0.0.1:0",
                "--clock",
                "request",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    s = Serving(process, log)
    try:
        s.port = int(s.wait_for(LISTENING).group(1))
        s.webhook_port = int(s.wait_for(WEBHOOKS).group(1))
        yield s
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, s.log()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def post(port: int, secret: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(STOP)}\r\n"
        f"X-Hub-Signature-256: {sign(STOP, secret)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + STOP)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(data.split(b" ", 2)[1])


async def rpc(port: int, secret: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        request = pb.IngestWebhookRequest(
            body=STOP, signature=sign(STOP, secret), at_unix_ms=STOP_AT
        )
        try:
            await stub.IngestWebhook(request, timeout=20)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


def accepted(s: Serving, secret: str) -> tuple[grpc.StatusCode, int]:
    async def both() -> tuple[grpc.StatusCode, int]:
        return await rpc(s.port, secret), await post(s.webhook_port, secret)

    return asyncio.run(both())


def test_a_secret_rotated_by_sighup_applies_to_the_rpc_and_the_http_receiver(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text(config_text("old-secret"))
    with serve(tmp_path) as s:
        assert accepted(s, "old-secret") == (grpc.StatusCode.OK, 200)
        config.write_text(config_text("new-secret"))
        s.sighup("SIGHUP: reloaded (webhook_secret replaced)")
        assert accepted(s, "old-secret") == (grpc.StatusCode.UNAUTHENTICATED, 403)
        assert accepted(s, "new-secret") == (grpc.StatusCode.OK, 200)
        assert "new-secret" not in s.log()


def test_a_config_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(BAD_BYTES)
    profile = tmp_path / "latin1-profile.toml"
    profile.write_bytes(b'extends = "meta-2025"\nname = "caf\xe9"\n')
    for args in (
        ["check-config", "--config", str(config)],
        ["serve", "--config", str(config), "--listen", "127.0.0.1:0", "--data-dir", "none"],
        ["check-config", "--profile", str(profile), "--data-dir", "none"],
        ["serve", "--profile", str(profile), "--listen", "127.0.0.1:0", "--data-dir", "none"],
    ):
        out = subprocess.run(
            [*tiergate_command(), *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2, (args, out.stderr)
        named = config if "--config" in args else profile
        assert f"{named} is not UTF-8" in out.stderr or f"{named}: not UTF-8" in out.stderr
        assert "Traceback" not in out.stderr


def test_a_config_that_is_not_utf8_is_ignored_on_sighup(tmp_path: Path) -> None:
    config = tmp_path / "tiergate.toml"
    config.write_text(config_text("old-secret"))
    with serve(tmp_path) as s:
        config.write_bytes(BAD_BYTES)
        s.sighup(f"SIGHUP: config not reloaded: config: {config} is not UTF-8")
        assert "Traceback" not in s.log()
        assert accepted(s, "old-secret") == (grpc.StatusCode.OK, 200)  # as before
        config.write_text(config_text("new-secret"))
        s.sighup("SIGHUP: reloaded (webhook_secret replaced)")
        assert accepted(s, "new-secret") == (grpc.StatusCode.OK, 200)
