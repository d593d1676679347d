"""Requests read from their bytes by tiergate rather than by gRPC's generated code.

A generated handler deserializes the request before the servicer runs, and bytes
that are not the method's message then end the call with UNKNOWN ("Unexpected
DecodeError"), where every other bad request gets INVALID_ARGUMENT naming its
field. The handlers made here take the request's bytes, parse them, and answer
INVALID_ARGUMENT naming ``request`` when they are not the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from tiergate.server.auth import Access, Guard, deny
from tiergate.server.metrics import Metrics

__all__ = ["unary"]

Req = TypeVar("Req", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


def unary(
    method: Callable[[Req, Context], Awaitable[Message]],
    request_type: type[Req],
    rpc: str,
    metrics: Metrics,
    *,
    guard: Guard | None = None,
    level: Access = Access.DATA,
    level_of: Callable[[Req], Access] | None = None,
) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A unary handler of wire bytes that parses them as ``request_type`` for ``method``.

    With a ``guard``, calls need at least ``level`` before their bytes are read,
    and ``level_of(request)`` (when given) after.
    """
    name = request_type.DESCRIPTOR.name
    article = "an" if name[0] in "AEIOU" else "a"

    async def parse(data: bytes, context: Context) -> Req:
        try:
            return request_type.FromString(data)
        except DecodeError as e:
            metrics.invalid(rpc)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"request: not {article} {name} ({e})"
            )

    async def handle(data: bytes, context: Context) -> bytes:
        reply = await method(await parse(data, context), context)
        return reply.SerializeToString()

    if guard is None:
        return grpc.unary_unary_rpc_method_handler(handle)

    async def guarded(data: bytes, context: Context) -> bytes:
        # The token is checked before the bytes are read: a caller without
        # access learns nothing from how its request is parsed.
        granted, presented = await guard.require(context, level)
        request = await parse(data, context)
        if level_of is not None and level_of(request) > granted:
            await deny(context, granted, presented)
        reply = await method(request, context)
        return reply.SerializeToString()

    return grpc.unary_unary_rpc_method_handler(guarded)
