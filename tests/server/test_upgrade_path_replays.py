"""The step out of TIER_250 under the default profile follows Meta's scaling
paths, through gRPC on a request clock: business verification, or 2 000
unique users reached outside customer service windows within 30 days with
high-quality templates — then Meta's review, whose business_capability_update
raises the limit. GetSenderState says which path applies (``upgrade.path``).

Bodies: Meta's business_capability_update example and pywa's
message_template_quality_update (GREEN → YELLOW), as published.
"""

from __future__ import annotations

from rules_harness import CAPA_SENDER, CAPA_WABA, body, feedback, ingest, state
from server_harness import T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

H = 3_600_000
D = 24 * H
DAY = D + 5 * 60_000  # a day and the minute the last day's slots take to free


def config(verified: bool) -> object:
    return make_config(
        senders=(
            sender(
                CAPA_SENDER,
                display_phone_number="15550000001",
                waba_id=CAPA_WABA,
                portfolio_id="p-new",
                verified=verified,
            ),
        )
    )


async def reach(h: Harness, first: int, count: int, at: int) -> None:
    """Templates to ``count`` new users, one batch: every one admitted and counted."""
    requests = [
        pb.AdmitRequest(
            sender_id=CAPA_SENDER,
            recipient=f"4915{first + i:09d}",
            kind=pb.TEMPLATE,
            category=pb.UTILITY,
            template_id="order_update",
            at_unix_ms=at + 20 * i,  # 50 a second: within the number's throughput
        )
        for i in range(count)
    ]
    out: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests))
    assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in out.responses)


async def upgrade(h: Harness, at: int) -> pb.UpgradeState:
    return (await state(h, CAPA_SENDER, at)).upgrade


@run_async
async def test_unverified_business_reaches_2000_users_in_30_days_then_meta_raises_it() -> None:
    async with serving(config(verified=False)) as h:
        up = await upgrade(h, T0)
        assert (up.path, up.next_tier, up.progress, up.eligible) == (
            "MESSAGING_VOLUME",
            "TIER_2K",
            0.0,
            False,
        )
        for day in range(8):  # 250 new users a day: the whole limit each day
            await reach(h, day * 250, 250, T0 + day * DAY)
            up = await upgrade(h, T0 + day * DAY + H)
            assert up.progress == min(1.0, (day + 1) * 250 / 2000)
            assert up.eligible == (day == 7)
        assert up.predicted_at_unix_ms == 0  # Meta's review names no time
        st = await state(h, CAPA_SENDER, T0 + 7 * DAY + H)
        assert (st.tier, st.limit) == ("TIER_250", 250)  # until Meta says so
        # Meta's review passes: its business_capability_update example (limit 2000).
        out = await ingest(h, body("business_capability_update__example-0__meta-docs"), T0 + 8 * D)
        assert out.applied == 1
        st = await state(h, CAPA_SENDER, T0 + 8 * D)
        assert (st.tier, st.limit, st.upgrade.path) == ("TIER_2K", 2000, "AUTOMATIC_SCALING")


@run_async
async def test_users_older_than_30_days_leave_the_count() -> None:
    async with serving(config(verified=False)) as h:
        await reach(h, 0, 250, T0)
        await reach(h, 250, 250, T0 + 20 * D)
        assert (await upgrade(h, T0 + 20 * D + H)).progress == 500 / 2000
        assert (await upgrade(h, T0 + 31 * D)).progress == 250 / 2000


@run_async
async def test_a_failed_send_leaves_the_count() -> None:
    async with serving(config(verified=False)) as h:
        res: pb.AdmitResponse = await h.stub.Admit(
            pb.AdmitRequest(
                sender_id=CAPA_SENDER,
                recipient="491500000001",
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="order_update",
                at_unix_ms=T0,
            )
        )
        assert (await upgrade(h, T0 + 1)).progress == 1 / 2000
        failed = pb.SendResult(ticket=res.ticket, status=pb.FAILED, at_unix_ms=T0 + 2)
        assert (await feedback(h, send_result=failed)).applied
        assert (await upgrade(h, T0 + 3)).progress == 0.0


@run_async
async def test_a_verified_business_awaits_meta_review_unless_a_template_is_rated_low() -> None:
    async with serving(config(verified=True)) as h:
        up = await upgrade(h, T0)
        assert (up.path, up.progress, up.eligible, up.predicted_at_unix_ms) == (
            "BUSINESS_VERIFICATION",
            1.0,
            True,
            0,
        )
        # pywa's quality update (GREEN -> YELLOW) for a template of this WABA.
        doc = body("message_template_quality_update__template_quality_update-yellow__pywa")
        doc["entry"][0]["id"] = CAPA_WABA
        tpl = doc["entry"][0]["changes"][0]["value"]
        approved = pb.TemplateUpdate(
            template_id=str(tpl["message_template_id"]),
            template_name=tpl["message_template_name"],
            status=pb.TEMPLATE_STATUS_APPROVED,
            waba_id=CAPA_WABA,
            at_unix_ms=T0,
        )
        assert (await feedback(h, template_update=approved)).applied
        assert (await ingest(h, doc, T0 + 1)).applied == 1
        up = await upgrade(h, T0 + 2)
        assert (up.path, up.eligible) == ("BUSINESS_VERIFICATION", False)
