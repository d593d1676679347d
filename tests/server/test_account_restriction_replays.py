"""Meta's account restrictions through gRPC on a request clock, under the default
profile: RESTRICTED_BIZ_INITIATED_MESSAGING refuses business-initiated (counting)
sends, RESTRICTED_CUSTOMER_INITIATED_MESSAGING refuses replies (sends inside an
open customer service window), each until its own expiry; GetSenderState shows
both. The bodies are pywa's ACCOUNT_RESTRICTION example with its restriction
types changed by hand (the three types together are the shape Wati documents)."""

from __future__ import annotations

from typing import Any

from rules_harness import DOCS_SENDER, DOCS_WABA, admit, docs_config, feedback, ingest, state
from server_harness import T0, Harness, run_async, serving

from tiergate.v1 import admission_pb2 as pb

USER = "15550002222"  # writes in: replies go to them
NEW = "15550001111"  # a business-initiated send goes to them
H = 3_600_000
END = T0 + 2 * H  # the restrictions' expiry (whole seconds)
UNTIL_LIFTED = 1 << 62
BUSINESS = "RESTRICTED_BIZ_INITIATED_MESSAGING"
REPLIES = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"


def restriction(*types: str, expiry: int | None = END) -> dict[str, Any]:
    info = [{"restriction_type": t} for t in types]
    if expiry is not None:
        for item in info:
            item["expiration"] = expiry // 1000
    change = {"value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": info}}
    change["field"] = "account_update"
    entry = {"id": DOCS_WABA, "time": T0 // 1000, "changes": [change]}
    return {"object": "whatsapp_business_account", "entry": [entry]}


async def user_writes(h: Harness, at: int) -> None:
    inbound = pb.InboundMessage(sender_id=DOCS_SENDER, recipient=USER, at_unix_ms=at)
    assert (await feedback(h, inbound_message=inbound)).applied


async def refused(h: Harness, res: pb.AdmitResponse, retry_at: int) -> None:
    expected = (pb.DECISION_RETRY_LATER, retry_at) if retry_at else (pb.DECISION_REJECT, 0)
    assert (res.decision, res.retry_at_unix_ms) == expected, res
    assert res.reason == pb.SENDER_RESTRICTED and not res.counted, res


async def batch(h: Harness, recipient: str, at: int, kind: int) -> pb.AdmitResponse:
    request = pb.AdmitRequest(
        sender_id=DOCS_SENDER,
        recipient=recipient,
        kind=pb.MessageKind.ValueType(kind),
        category=pb.UTILITY,
        template_id="order_confirmation" if kind == pb.TEMPLATE else "",
        at_unix_ms=at,
        dry_run=True,
    )
    out: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[request]))
    return out.responses[0]


@run_async
async def test_a_customer_initiated_restriction_refuses_replies_only_until_its_end() -> None:
    async with serving(docs_config()) as h:
        await user_writes(h, T0)
        out = await ingest(h, restriction(REPLIES), T0 + 1000)
        assert out.applied == 1, out
        reply = await admit(h, USER, T0 + 2000, kind=pb.FREE_FORM)
        await refused(h, reply, END)
        await refused(h, await batch(h, USER, T0 + 2000, pb.FREE_FORM), END)
        # a template inside the window is a reply too
        await refused(h, await admit(h, USER, T0 + 3000), END)
        # business-initiated sends pass
        first = await admit(h, NEW, T0 + 4000)
        assert first.decision == pb.DECISION_ADMIT and first.counted, first
        shown = await state(h, at=T0 + 5000)
        assert shown.status == pb.CONNECTED
        assert shown.replies_restricted_until_unix_ms == END
        assert shown.restricted_until_unix_ms == 0
        # at its end replies pass again
        again = await admit(h, USER, END, kind=pb.FREE_FORM)
        assert again.decision == pb.DECISION_ADMIT, again
        assert (await state(h, at=END)).replies_restricted_until_unix_ms == 0


@run_async
async def test_a_business_initiated_restriction_still_admits_replies() -> None:
    async with serving(docs_config()) as h:
        await user_writes(h, T0)
        assert (await ingest(h, restriction(BUSINESS), T0 + 1000)).applied == 1
        await refused(h, await admit(h, NEW, T0 + 2000), END)
        await refused(h, await batch(h, NEW, T0 + 2000, pb.TEMPLATE), END)
        reply = await admit(h, USER, T0 + 3000, kind=pb.FREE_FORM)
        assert reply.decision == pb.DECISION_ADMIT, reply
        shown = await state(h, at=T0 + 4000)
        assert (shown.status, shown.restricted_until_unix_ms) == (pb.RESTRICTED, END)
        assert shown.replies_restricted_until_unix_ms == 0


@run_async
async def test_both_restrictions_and_one_without_an_end() -> None:
    async with serving(docs_config()) as h:
        await user_writes(h, T0)
        both = restriction("RESTRICTED_ADD_PHONE_NUMBER_ACTION", BUSINESS, REPLIES)
        assert (await ingest(h, both, T0 + 1000)).applied == 1
        await refused(h, await admit(h, NEW, T0 + 2000), END)
        await refused(h, await admit(h, USER, T0 + 2000, kind=pb.FREE_FORM), END)
        shown = await state(h, at=T0 + 3000)
        assert shown.status == pb.RESTRICTED
        assert (shown.restricted_until_unix_ms, shown.replies_restricted_until_unix_ms) == (
            END,
            END,
        )
        after = await admit(h, NEW, END)
        assert after.decision == pb.DECISION_ADMIT, after
        # A restriction of replies without an expiry holds until Meta lifts it.
        await user_writes(h, END + 1000)
        assert (await ingest(h, restriction(REPLIES, expiry=None), END + 2000)).applied == 1
        await refused(h, await admit(h, USER, END + 3000, kind=pb.FREE_FORM), 0)
        shown = await state(h, at=END + 4000)
        assert shown.replies_restricted_until_unix_ms == UNTIL_LIFTED
        assert (await admit(h, NEW, END + 5000)).decision == pb.DECISION_ADMIT
