"""Webhook bodies through IngestWebhook on a request-clock sidecar: what is
refused, what is left out with a reason, and what applies.

Bodies are Meta's published ones from ``tests/fixtures/meta-webhooks`` (see
its MANIFEST.md); a body put together from several published ones, or with a
value replaced, says so where it is built.
"""

from __future__ import annotations

import copy

import grpc
import pytest
from rules_harness import (
    CAPA_SENDER,
    DOCS_DISPLAY,
    DOCS_SENDER,
    DOCS_WABA,
    body,
    docs_config,
    ingest,
    state,
)
from server_harness import make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb


@run_async
async def test_a_bad_part_is_left_out_and_the_rest_of_the_body_applies() -> None:
    # Built from two published bodies: Meta's THROUGHPUT_UPGRADE example with a
    # second change before it whose event is a number (an account_update of
    # unknown shape), and an entry that is not an object.
    doc = body("phone_number_quality_update__throughput_upgrade-0__meta-docs")
    good = doc["entry"][0]["changes"][0]
    doc["entry"][0]["changes"] = [{"field": "account_update", "value": {"event": 7}}, good]
    doc["entry"].append("not an entry")
    async with serving(docs_config()) as h:
        assert (await state(h, DOCS_SENDER)).throughput_mps == 80
        out = await ingest(h, doc)
        assert out.applied == 1 and out.ignored == 2
        reasons = sorted((e.field, e.reason) for e in out.ignored_events)
        assert reasons[0][0] == "account_update"
        assert "entry[0].changes[0].value.event: must be a string" in reasons[0][1]
        assert reasons[1][0] == "entry" and "entry[1]: must be an object" in reasons[1][1]
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000


@run_async
async def test_a_published_body_with_placeholders_is_read_as_far_as_it_goes() -> None:
    # Bindambc's ACCOUNT_RESTRICTION has "<TIMESTAMP>" expirations: that change
    # cannot be read and is left out; the body itself is not refused.
    async with serving(docs_config()) as h:
        out = await ingest(
            h, body("account_update__account_restriction-placeholder-expiration__bindambc")
        )
        assert out.applied == 0 and out.ignored == 1
        (part,) = out.ignored_events
        assert part.field == "account_update"
        assert "restriction_info[0].expiration" in part.reason
        assert (await state(h, DOCS_SENDER)).status == pb.CONNECTED


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": {"id": "1"}}',
    ],
)
def test_only_a_body_that_is_not_a_webhook_is_refused(raw: bytes) -> None:
    @run_async
    async def scenario() -> None:
        async with serving(docs_config()) as h:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ingest(h, raw)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (info.value.details() or "").startswith("body: ")

    scenario()


# Every form Meta documents for the portfolio's messaging limit: tier names
# (business_capability_update and phone_number_quality_update references),
# integers with -1 for unlimited (the capability reference's example and its
# deprecated per-phone field), and the bare "UNLIMITED" of the change log.
LIMIT_FORMS = [
    (2000, "TIER_2K"),
    ("2000", "TIER_2K"),
    ("TIER_2K", "TIER_2K"),
    (10000, "TIER_10K"),
    ("TIER_100K", "TIER_100K"),
    (-1, "TIER_UNLIMITED"),
    ("-1", "TIER_UNLIMITED"),
    ("TIER_UNLIMITED", "TIER_UNLIMITED"),
    ("UNLIMITED", "TIER_UNLIMITED"),
    ("unlimited", "TIER_UNLIMITED"),
]


@pytest.mark.parametrize(("value", "tier"), LIMIT_FORMS)
def test_capability_limit_in_every_documented_form(value: object, tier: str) -> None:
    # Meta's business_capability_update example with its limit replaced.
    doc = body("business_capability_update__example-0__meta-docs")
    doc["entry"][0]["changes"][0]["value"]["max_daily_conversations_per_business"] = value

    @run_async
    async def scenario() -> None:
        async with serving(docs_config()) as h:
            out = await ingest(h, doc)
            assert (out.applied, out.ignored) == (1, 0), out.ignored_events
            assert (await state(h, CAPA_SENDER)).tier == tier

    scenario()


@pytest.mark.parametrize(("value", "tier"), LIMIT_FORMS[2:])
def test_quality_update_limit_in_every_documented_form(value: object, tier: str) -> None:
    # The derived ONBOARDING body (Meta's THROUGHPUT_UPGRADE example with the
    # reference page's documented fields; see MANIFEST.md) with its portfolio
    # limit replaced.
    doc = copy.deepcopy(
        body(
            "derived/phone_number_quality_update__onboarding-old_limit-portfolio__derived-meta-docs"
        )
    )
    doc["entry"][0]["changes"][0]["value"]["max_daily_conversations_per_business"] = value

    @run_async
    async def scenario() -> None:
        async with serving(docs_config()) as h:
            out = await ingest(h, doc)
            assert (out.applied, out.ignored) == (1, 0), out.ignored_events
            assert (await state(h, DOCS_SENDER)).tier == tier

    scenario()


@run_async
async def test_tier_not_set_names_no_limit() -> None:
    doc = body(
        "derived/phone_number_quality_update__onboarding-old_limit-portfolio__derived-meta-docs"
    )
    value = doc["entry"][0]["changes"][0]["value"]
    value["max_daily_conversations_per_business"] = "TIER_NOT_SET"
    value["current_limit"] = "TIER_NOT_SET"
    on_2k = sender(
        DOCS_SENDER, display_phone_number=DOCS_DISPLAY, waba_id=DOCS_WABA, tier="TIER_2K"
    )
    async with serving(make_config(senders=(on_2k,))) as h:
        out = await ingest(h, doc)
        assert out.applied == 1
        assert (await state(h, DOCS_SENDER)).tier == "TIER_2K"


@run_async
async def test_an_upgrade_by_current_limit_applies_to_the_portfolio() -> None:
    # The derived UPGRADE body (Bindambc's FLAGGED capture with its event
    # changed; no UPGRADE body is published): a non-numeric entry id, and only
    # the deprecated current_limit, which still names the portfolio's tier.
    number = sender(DOCS_SENDER, display_phone_number="16505551111", waba_id=DOCS_WABA)
    async with serving(make_config(senders=(number,))) as h:
        doc = body("derived/phone_number_quality_update__upgrade__derived-bindambc")
        out = await ingest(h, doc)
        assert (out.applied, out.ignored) == (1, 0), out.ignored_events
        st = await state(h, DOCS_SENDER)
        assert (st.tier, st.limit) == ("TIER_10K", 10_000)
