"""An in-process sidecar on an ephemeral 127.0.0.1 port, driven from sync tests.

Each test body is a coroutine run with ``uvloop.run`` (the loop the sidecar runs
on in production); ``serving()`` starts a real ``grpc.aio`` server inside that
loop and yields a client connected to it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, ParamSpec

import grpc
import uvloop

from tiergate import config as cfg
from tiergate.client import TiergateClient
from tiergate.policy.events import Quality, SenderStatus, SenderUpdate
from tiergate.server import Sidecar
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

P = ParamSpec("P")

T0 = 1_760_000_000_000  # a fixed request-clock start (Unix ms)
SENDER = "100000000000001"
OTHER_SENDER = "100000000000002"
PORTFOLIO = "portfolio-test"


def run_async(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` test body on uvloop."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        uvloop.run(fn(*args, **kwargs))

    return wrapper


def sender(sender_id: str = SENDER, **overrides: Any) -> SenderUpdate:
    fields: dict[str, Any] = {
        "portfolio_id": PORTFOLIO,
        "display_phone_number": "+15550100001",
        "verified": True,
        "tier": "TIER_250",
        "quality": Quality.GREEN,
        "status": SenderStatus.CONNECTED,
        **overrides,
    }
    return SenderUpdate(sender_id=sender_id, **fields)


def make_config(**overrides: Any) -> cfg.ServeConfig:
    base = cfg.ServeConfig(
        listen=cfg.Endpoint("127.0.0.1", 0),
        clock="request",
        senders=(sender(),),
        shutdown_grace=2.0,
    )
    return replace(base, **overrides)


@dataclass
class Harness:
    sidecar: Sidecar
    channel: grpc.aio.Channel
    stub: pb_grpc.AdmissionControlAsyncStub
    client: TiergateClient

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sidecar.port}"


#: A ticket key for servers whose answers a test compares (each server otherwise
#: has its own, so their tickets differ).
TICKET_KEY = bytes(range(16))


def share_ticket_key(*harnesses: Harness) -> None:
    """Sign the tickets of these just-started servers with one key."""
    for h in harnesses:
        assert h.sidecar.service is not None
        h.sidecar.service.set_ticket_key(TICKET_KEY)


@contextlib.asynccontextmanager
async def serving(
    config: cfg.ServeConfig | None = None,
    *,
    server_clock: Callable[[], int] | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """A started sidecar and a client; ``server_clock`` replaces the wall clock (Unix ms)
    its RPCs and watches read under ``clock="server"``."""
    config = config if config is not None else make_config(**overrides)
    sidecar = Sidecar(config) if server_clock is None else Sidecar(config, server_clock)
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    client = TiergateClient(channel=channel)
    try:
        yield Harness(sidecar, channel, pb_grpc.AdmissionControlStub(channel), client)
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)


def template_request(
    recipient: str,
    at: int = T0,
    *,
    category: pb.Category.ValueType = pb.UTILITY,
    template_id: str = "t1",
    key: str = "",
) -> pb.AdmitRequest:
    """A template send from SENDER to ``recipient``."""
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=category,
        template_id=template_id,
        idempotency_key=key,
        at_unix_ms=at,
    )


def varint(v: int) -> bytes:
    """A protobuf varint (negative numbers as their 64-bit two's complement)."""
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)
