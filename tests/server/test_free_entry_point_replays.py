"""The free-entry-point window (a click-to-WhatsApp ad or a Page call-to-action),
through gRPC on a request clock. Under ``meta-2025`` it is a pricing window only:
a template sent after the 24 h customer service window has closed counts toward
the messaging limit, even within 72 h of the click, and free-form needs the 24 h
window. ``meta-2024`` keeps seed 000's reading: for 72 h the window admits
free-form messages and its templates do not count. The inbound message is the
referral body of pywa's test data (a CTWA click, ``ctwa_clid``)."""

from __future__ import annotations

from rules_harness import admit, body, ingest, state
from server_harness import Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

PYWA = "1122334455667"  # the business number of pywa's payloads (display 972123456789)
USER = "972987654321"  # the user who clicked the ad
CLICK = 1_697_045_000_000  # the message's timestamp
H = 3_600_000


def config(profile: str) -> object:
    return make_config(
        profile=profile,
        senders=(sender(PYWA, display_phone_number="972123456789", waba_id="5467539754836534"),),
    )


async def clicked(h: Harness) -> None:
    out = await ingest(h, body("messages__message-referral__pywa"), CLICK + 1000)
    assert out.applied == 1, out


async def batch_answer(h: Harness, at: int) -> pb.AdmitResponse:
    request = pb.AdmitRequest(
        sender_id=PYWA,
        recipient=USER,
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="promo",
        at_unix_ms=at,
        dry_run=True,
    )
    batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[request]))
    return batch.responses[0]


@run_async
async def test_meta_2025_counts_templates_after_the_service_window_within_72_hours() -> None:
    async with serving(config("meta-2025")) as h:
        await clicked(h)
        inside = await admit(h, USER, CLICK + H, sender_id=PYWA, template="promo")
        assert inside.decision == pb.DECISION_ADMIT and not inside.counted, inside
        late = CLICK + 25 * H
        free_form = await admit(h, USER, late, sender_id=PYWA, kind=pb.FREE_FORM)
        assert (free_form.decision, free_form.reason) == (pb.DECISION_REJECT, pb.OUTSIDE_WINDOW)
        probe = await batch_answer(h, late)  # the batch path agrees (dry run)
        assert probe.decision == pb.DECISION_ADMIT and probe.counted, probe
        after = await admit(h, USER, late, sender_id=PYWA, template="promo")
        assert after.decision == pb.DECISION_ADMIT and after.counted and after.used == 1, after
        assert (await state(h, PYWA, late)).used_24h == 1


@run_async
async def test_meta_2024_keeps_the_72_hour_window_free() -> None:
    async with serving(config("meta-2024")) as h:
        await clicked(h)
        late = CLICK + 71 * H
        free_form = await admit(h, USER, late, sender_id=PYWA, kind=pb.FREE_FORM)
        assert free_form.decision == pb.DECISION_ADMIT, free_form
        probe = await batch_answer(h, late)
        assert probe.decision == pb.DECISION_ADMIT and not probe.counted, probe
        tpl = await admit(h, USER, late, sender_id=PYWA, template="promo")
        assert tpl.decision == pb.DECISION_ADMIT and not tpl.counted, tpl
        assert (await state(h, PYWA, late)).used_24h == 0
        # After 72 h the template counts.
        out = await admit(h, USER, CLICK + 72 * H, sender_id=PYWA, template="promo")
        assert out.decision == pb.DECISION_ADMIT and out.counted, out
