"""Bearer tokens on the gRPC port: who may decide, and who may change what tiergate believes.

Two planes, each with its token (``authorization: Bearer <token>`` metadata):

- the data plane (``token_file``): Admit, AdmitBatch, AdmitStream,
  AdmitColumns, GetSenderState, WatchSenderState, and the RecordFeedback events a gateway
  reports about its own sends (inbound messages, send results, opt-outs);
- the control plane (``admin_token_file``): the RecordFeedback events that
  change senders and templates (``sender_update``: tier, quality, status,
  capability, account; ``template_update``) and IngestWebhook. The admin token
  also works on the data plane.

With only a data token, it guards both planes; with only an admin token, the
data plane is open and the control plane needs it. A call without a token
where one is needed ends with UNAUTHENTICATED, a call with a token that is not
accepted (or a data token on the control plane) with PERMISSION_DENIED. Health
and reflection stay open.

With no token configured, the server registers its handlers unwrapped: nothing
is added to a call. With one, a handler first reads the call's metadata and
compares the token once in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from enum import IntEnum
from typing import Any, Final

import grpc

__all__ = ["ADMIN_FEEDBACK", "Access", "Guard"]

Context = grpc.aio.ServicerContext[Any, Any]

#: RecordFeedback events of the control plane (the request's ``event`` oneof).
ADMIN_FEEDBACK: Final = frozenset({"sender_update", "template_update"})

_NO_TOKEN: Final = "authorization: a 'Bearer <token>' is required"
_WRONG_TOKEN: Final = "authorization: the token is not accepted"
_NOT_ADMIN: Final = "authorization: changing senders, templates or webhooks needs the admin token"


class Access(IntEnum):
    """What a call's token allows."""

    NONE = 0
    DATA = 1
    ADMIN = 2


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, if any."""
    if metadata is None:
        return None
    for key, value in metadata:
        if key == "authorization":
            text = value if isinstance(value, str) else bytes(value).decode("latin-1")
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip().encode()
    return None


class Guard:
    """The configured tokens (replaceable while serving) and the checks made with them."""

    __slots__ = ("_admin", "_data")

    def __init__(self, token: str = "", admin_token: str = "") -> None:
        self._data = b""
        self._admin = b""
        self.set_tokens(token, admin_token)

    def set_tokens(self, token: str, admin_token: str) -> None:
        self._data = token.encode()
        self._admin = admin_token.encode()

    @property
    def active(self) -> bool:
        """Whether any token is configured (else handlers are left unwrapped)."""
        return bool(self._data or self._admin)

    def grant(self, metadata: Iterable[tuple[str, Any]] | None) -> tuple[Access, bool]:
        """What the call's token allows, and whether it presented one."""
        token = bearer(metadata)
        data, admin = self._data, self._admin
        if token is None:
            return (Access.NONE if data else Access.DATA), False
        if data and hmac.compare_digest(token, data):
            return (Access.DATA if admin else Access.ADMIN), True
        if admin and hmac.compare_digest(token, admin):
            return Access.ADMIN, True
        return Access.NONE, True

    async def require(self, context: Context, level: Access) -> tuple[Access, bool]:
        """The call's access (at least ``level``) and whether it presented a token;
        else the call ends (UNAUTHENTICATED without a token, PERMISSION_DENIED
        with one not accepted)."""
        granted, presented = self.grant(context.invocation_metadata())
        if granted < level:
            await deny(context, granted, presented)
        return granted, presented

    # --- handler wrappers ----------------------------------------------------

    def unary(
        self, method: Callable[[Any, Context], Awaitable[Any]], level: Access
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        """``method`` called only for calls with at least ``level``."""
        require = self.require

        async def guarded(request: Any, context: Context) -> Any:
            await require(context, level)
            return await method(request, context)

        return guarded

    def stream(
        self, method: Callable[[Any, Context], AsyncIterator[Any]], level: Access
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        """A streaming ``method`` served only for calls with at least ``level``."""
        require = self.require

        async def guarded(requests: Any, context: Context) -> AsyncIterator[Any]:
            await require(context, level)
            async for response in method(requests, context):
                yield response

        return guarded


async def deny(context: Context, granted: Access, presented: bool) -> None:
    """End the call: UNAUTHENTICATED without a token, else PERMISSION_DENIED."""
    if not presented:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _NO_TOKEN)
    if granted == Access.NONE:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, _WRONG_TOKEN)
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, _NOT_ADMIN)
