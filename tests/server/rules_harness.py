"""Helpers of the rule replays: Meta's published webhook bodies, and the calls a
replay makes on a request-clock sidecar (``server_harness``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server_harness import T0, Harness, make_config, sender

from tiergate import config as cfg
from tiergate.v1 import admission_pb2 as pb

FIXTURES = Path(__file__).parents[1] / "fixtures" / "meta-webhooks"
#: The business number, WABA and template of Meta's reference examples.
DOCS_SENDER = "106540352242922"
DOCS_DISPLAY = "15550783881"
DOCS_WABA = "102290129340398"
CAPA_SENDER = "524126980791430"
CAPA_WABA = "524126980791429"  # the WABA of Meta's business_capability_update example
TEMPLATE_ID = "1689556908129832"
TEMPLATE_NAME = "order_confirmation"


def body(name: str) -> Any:
    """A fixture body, parsed (``derived/…`` names a derived one)."""
    return json.loads((FIXTURES / f"{name}.json").read_bytes())


def docs_config(**overrides: Any) -> cfg.ServeConfig:
    """Two senders: Meta's example number (WABA ``DOCS_WABA``) and one of the
    capability example's WABA, each its own portfolio."""
    return make_config(
        senders=(
            sender(
                DOCS_SENDER,
                display_phone_number=DOCS_DISPLAY,
                waba_id=DOCS_WABA,
                portfolio_id="p-docs",
                **overrides,
            ),
            sender(
                CAPA_SENDER,
                display_phone_number="15550000001",
                waba_id=CAPA_WABA,
                portfolio_id="p-capa",
            ),
        )
    )


async def ingest(h: Harness, doc: Any, at: int = T0) -> pb.IngestWebhookResponse:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    response: pb.IngestWebhookResponse = await h.stub.IngestWebhook(
        pb.IngestWebhookRequest(body=raw, at_unix_ms=at)
    )
    return response


async def state(h: Harness, sender_id: str = DOCS_SENDER, at: int = T0) -> pb.SenderState:
    response: pb.SenderState = await h.stub.GetSenderState(
        pb.GetSenderStateRequest(sender_id=sender_id, at_unix_ms=at)
    )
    return response


def request(
    recipient: str,
    at: int,
    *,
    template: str = TEMPLATE_NAME,
    sender_id: str = DOCS_SENDER,
    category: pb.Category.ValueType = pb.UTILITY,
    kind: pb.MessageKind.ValueType = pb.TEMPLATE,
    key: str = "",
) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=sender_id,
        recipient=recipient,
        kind=kind,
        category=category,
        template_id=template if kind == pb.TEMPLATE else "",
        idempotency_key=key,
        at_unix_ms=at,
    )


async def admit(h: Harness, recipient: str, at: int, **fields: Any) -> pb.AdmitResponse:
    response: pb.AdmitResponse = await h.stub.Admit(request(recipient, at, **fields))
    return response


async def refused_alike(h: Harness, recipient: str, at: int, **fields: Any) -> pb.AdmitResponse:
    """A request that is refused (so nothing is consumed), sent as an Admit and again
    in an AdmitBatch: the batch path must answer it the same way."""
    res = await admit(h, recipient, at, **fields)
    assert res.decision != pb.DECISION_ADMIT, res
    batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
        pb.AdmitBatchRequest(requests=[request(recipient, at, **fields)])
    )
    assert batch.responses[0] == res
    return res


async def feedback(h: Harness, **event: Any) -> pb.RecordFeedbackResponse:
    response: pb.RecordFeedbackResponse = await h.stub.RecordFeedback(
        pb.RecordFeedbackRequest(**event)
    )
    return response
