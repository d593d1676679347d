"""A small asyncio client for gateways that ask tiergate before each send.

    async with TiergateClient("127.0.0.1:50051") as tg:
        r = await tg.admit("106540352242922", "15551234567",
                           kind=pb.TEMPLATE, category=pb.MARKETING, template_id="spring_sale")
        if r.decision == pb.DECISION_ADMIT:
            ...  # send through the Cloud API, then report the outcome:
            await tg.record_feedback(pb.SendResult(ticket=r.ticket, status=pb.SENT))

``admit_wait`` sleeps until ``retry_at_unix_ms`` and asks again, bounded by a
deadline. tiergate never answers ADMIT on an internal fault; what a gateway does
when tiergate itself is unreachable (send anyway or hold) is its own policy,
so errors surface here as ``grpc.aio.AioRpcError``.

A sidecar serving TLS and tokens (``--tls-cert``, ``--token-file``) is reached
with ``TiergateClient(target, ca_file=..., token=...)`` (``cert_file`` and
``key_file`` for mutual TLS); the token goes with every call as
``authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

FeedbackEvent = pb.InboundMessage | pb.SendResult | pb.OptOut | pb.SenderUpdate | pb.TemplateUpdate

_FEEDBACK_FIELDS: dict[type[FeedbackEvent], str] = {
    pb.InboundMessage: "inbound_message",
    pb.SendResult: "send_result",
    pb.OptOut: "opt_out",
    pb.SenderUpdate: "sender_update",
    pb.TemplateUpdate: "template_update",
}


@dataclass(frozen=True, slots=True)
class AdmitItem:
    """One item of :meth:`TiergateClient.admit_columns` (the fields of ``AdmitRequest``)."""

    sender_id: str
    recipient: str
    kind: int = pb.TEMPLATE
    category: int = pb.CATEGORY_UNSPECIFIED
    template_id: str = ""
    idempotency_key: str = ""
    at_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class ColumnsOutcome:
    """One item's answer from AdmitColumns (``AdmitResponse`` but ``detail``)."""

    decision: int
    reason: int
    retry_at_unix_ms: int
    ticket: str  # ADMIT: give it to record_feedback(pb.SendResult(ticket=...))
    counted: bool
    limit: int
    used: int
    meta_error_code: int


class ColumnsReply(Sequence[ColumnsOutcome]):
    """An ``AdmitColumnsResponse`` read item by item (``reply[i]``, ``len``, iteration);
    ``response`` is the message itself, for reading whole columns."""

    __slots__ = ("response",)

    def __init__(self, response: pb.AdmitColumnsResponse) -> None:
        self.response = response

    def __len__(self) -> int:
        return len(self.response.decisions)

    def _item(self, i: int) -> ColumnsOutcome:
        r = self.response
        return ColumnsOutcome(
            r.decisions[i],
            r.reasons[i],
            r.retry_at_unix_ms[i],
            r.tickets[i],
            r.counted[i] == 1,
            r.limit[i],
            r.used[i],
            r.meta_error_code[i],
        )

    def __getitem__(self, i: int) -> ColumnsOutcome:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._item(i % len(self))

    def __iter__(self) -> Iterator[ColumnsOutcome]:
        return (self._item(i) for i in range(len(self)))


def columns_request(
    items: Iterable[AdmitItem | pb.AdmitRequest], *, dry_run: bool = False
) -> pb.AdmitColumnsRequest:
    """The AdmitColumns request for ``items`` (senders and templates named once each)."""
    senders: dict[str, int] = {}
    templates: dict[str, int] = {}
    sender_index: list[int] = []
    template_index: list[int] = []
    recipients: list[str] = []
    kinds = bytearray()
    categories = bytearray()
    keys: list[str] = []
    at: list[int] = []
    for it in items:
        sender_index.append(senders.setdefault(it.sender_id, len(senders)))
        tpl = it.template_id
        template_index.append(templates.setdefault(tpl, len(templates) + 1) if tpl else 0)
        recipients.append(it.recipient)
        kinds.append(it.kind)
        categories.append(it.category)
        keys.append(it.idempotency_key)
        at.append(it.at_unix_ms)
    return pb.AdmitColumnsRequest(
        senders=list(senders),
        sender_index=sender_index,
        recipients=recipients,
        kinds=bytes(kinds),
        categories=bytes(categories),
        templates=list(templates),
        template_index=template_index,
        idempotency_keys=keys if any(keys) else [],
        at_unix_ms=at if any(at) else [],
        dry_run=dry_run,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def secure_channel(
    target: str,
    *,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.aio.Channel:
    """A TLS channel: the server checked against ``ca_file`` (default: the system's
    roots); with ``cert_file`` and ``key_file`` the client presents its certificate."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file are given together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )
    return grpc.aio.secure_channel(target, credentials)


class TiergateClient:
    """One channel to a tiergate sidecar; use as ``async with`` or call ``close()``."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        token: str | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> None:
        """``token``: sent as ``authorization: Bearer <token>``; ``tls`` (implied by
        ``ca_file`` or ``cert_file``): connect with TLS (see :func:`secure_channel`)."""
        self.target = target
        self.timeout = timeout
        if channel is None:
            if tls or ca_file or cert_file:
                channel = secure_channel(
                    target, ca_file=ca_file, cert_file=cert_file, key_file=key_file
                )
            else:
                channel = grpc.aio.insecure_channel(target)
        self._channel = channel
        self._stub = pb_grpc.AdmissionControlStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected (the sidecar is up)."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    # --- admission ---------------------------------------------------------------

    async def admit(
        self,
        sender_id: str,
        recipient: str,
        *,
        kind: pb.MessageKind.ValueType = pb.TEMPLATE,
        category: pb.Category.ValueType = pb.CATEGORY_UNSPECIFIED,
        template_id: str = "",
        idempotency_key: str = "",
        at_unix_ms: int = 0,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> pb.AdmitResponse:
        request = pb.AdmitRequest(
            sender_id=sender_id,
            recipient=recipient,
            kind=kind,
            category=category,
            template_id=template_id,
            idempotency_key=idempotency_key,
            at_unix_ms=at_unix_ms,
            dry_run=dry_run,
        )
        return await self.admit_request(request, timeout=timeout)

    async def admit_request(
        self, request: pb.AdmitRequest, *, timeout: float | None = None
    ) -> pb.AdmitResponse:
        return await self._stub.Admit(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )

    async def admit_batch(
        self, requests: Iterable[pb.AdmitRequest], *, timeout: float | None = None
    ) -> list[pb.AdmitResponse]:
        """Decide ``requests`` in order with one call; responses in the same order."""
        reply = await self._stub.AdmitBatch(
            pb.AdmitBatchRequest(requests=list(requests)),
            timeout=timeout or self.timeout,
            metadata=self._metadata,
        )
        return list(reply.responses)

    async def admit_columns(
        self,
        items: Iterable[AdmitItem | pb.AdmitRequest] | pb.AdmitColumnsRequest,
        *,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> ColumnsReply:
        """Decide ``items`` in order with one AdmitColumns call (the answers AdmitBatch
        gives); ``items`` may also be a ready ``AdmitColumnsRequest`` (``dry_run`` is then
        the request's own). ``reply[i]`` is item i's answer with its ticket."""
        if isinstance(items, pb.AdmitColumnsRequest):
            request = items
        else:
            request = columns_request(items, dry_run=dry_run)
        reply = await self._stub.AdmitColumns(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )
        return ColumnsReply(reply)

    async def admit_stream(
        self, requests: AsyncIterator[pb.AdmitRequest] | Iterator[pb.AdmitRequest]
    ) -> AsyncIterator[pb.AdmitResponse]:
        """One AdmitStream: responses in request order, as they are decided.

        The server decides whatever has arrived as one batch, so a busy stream
        costs one engine call per chunk; gRPC flow control slows ``requests``
        down when the server falls behind.
        """
        call = self._stub.AdmitStream(requests, metadata=self._metadata)
        async for response in call:
            yield response

    async def admit_wait(
        self,
        request: pb.AdmitRequest,
        *,
        deadline_s: float = 30.0,
        timeout: float | None = None,
    ) -> pb.AdmitResponse:
        """Admit, sleeping until ``retry_at_unix_ms`` after each RETRY_LATER.

        Returns the first ADMIT or REJECT, or the last RETRY_LATER when the
        next retry time is past the deadline (``deadline_s`` from now). Retries
        carry the same idempotency key: only admits are remembered by it.
        """
        deadline_ms = _now_ms() + int(deadline_s * 1000)
        while True:
            response = await self.admit_request(request, timeout=timeout)
            if response.decision != pb.DECISION_RETRY_LATER:
                return response
            retry_at = response.retry_at_unix_ms
            if retry_at <= 0 or retry_at > deadline_ms:
                return response
            await asyncio.sleep(max(0.0, (retry_at - _now_ms()) / 1000))

    # --- feedback and state ------------------------------------------------------

    async def record_feedback(
        self, event: FeedbackEvent | pb.RecordFeedbackRequest, *, timeout: float | None = None
    ) -> pb.RecordFeedbackResponse:
        """Report what happened: an inbound message, a send result, an opt-out,
        a sender or template change (any of the event messages, or a full request)."""
        if isinstance(event, pb.RecordFeedbackRequest):
            request = event
        else:
            request = pb.RecordFeedbackRequest()
            field = _FEEDBACK_FIELDS.get(type(event))
            if field is None:
                raise TypeError(f"not a feedback event: {type(event).__name__}")
            getattr(request, field).CopyFrom(event)
        return await self._stub.RecordFeedback(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )

    async def ingest_webhook(
        self, body: bytes, signature: str = "", *, at_unix_ms: int = 0, timeout: float | None = None
    ) -> pb.IngestWebhookResponse:
        request = pb.IngestWebhookRequest(body=body, signature=signature, at_unix_ms=at_unix_ms)
        return await self._stub.IngestWebhook(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )

    async def plan_campaign(
        self,
        sender_id: str,
        recipients: Sequence[str],
        *,
        template_id: str,
        category: int = pb.MARKETING,
        start_at_unix_ms: int = 0,
        at_unix_ms: int = 0,
        per_call: int = 100_000,
        timeout: float | None = None,
    ) -> tuple[list[int], pb.PlanCampaignResponse]:
        """PlanCampaign for a list of any length, ``per_call`` recipients a call (each
        carrying the plan on): the earliest time of every recipient (0: never) and
        the last response, whose summary covers the whole list."""
        times: list[int] = []
        token = ""
        res = pb.PlanCampaignResponse()
        for i in range(0, max(len(recipients), 1), per_call):
            part = recipients[i : i + per_call]
            request = pb.PlanCampaignRequest(
                sender_id=sender_id,
                template_id=template_id,
                category=category,  # type: ignore[arg-type]
                recipients=part,
                start_at_unix_ms=start_at_unix_ms,
                at_unix_ms=at_unix_ms,
                more_follow=i + per_call < len(recipients),
                continuation=token,
            )
            res = await self._stub.PlanCampaign(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
            times.extend(res.earliest_at_unix_ms)
            token = res.continuation
        return times, res

    async def sender_state(
        self, sender_id: str, *, at_unix_ms: int = 0, timeout: float | None = None
    ) -> pb.SenderState:
        request = pb.GetSenderStateRequest(sender_id=sender_id, at_unix_ms=at_unix_ms)
        return await self._stub.GetSenderState(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The gRPC health status of ``service`` ("" is the whole server, the one
        Kubernetes' ``grpc`` probes ask), by name: SERVING, NOT_SERVING …"""
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def watch_sender_state(
        self, sender_id: str = "", *, portfolio_id: str = ""
    ) -> AsyncIterator[pb.SenderState]:
        """The sender's (or each portfolio sender's) state, then every change, as they
        come; until the server ends the stream (no deadline)."""
        request = pb.WatchSenderStateRequest(sender_id=sender_id, portfolio_id=portfolio_id)
        async for state in self._stub.WatchSenderState(request, metadata=self._metadata):
            yield state
