"""Meta's pause on marketing templates to US numbers under the default profile,
through gRPC on a request clock: a marketing template to +1 and a US area code
is REJECTed with NOT_DELIVERED_TO_REGION and Meta's 131049, on every decision
path (Admit, AdmitBatch, AdmitStream, AdmitColumns), without counting the
recipient or spending throughput. Canada and the other +1 countries, and other
categories, are not affected; ``meta-2024`` does not have the rule."""

from __future__ import annotations

from rules_harness import admit, state
from server_harness import SENDER, T0, Harness, make_config, run_async, sender, serving

from tiergate.v1 import admission_pb2 as pb

US = "12025550143"  # Washington, DC (202)
US_PLUS = "+13125550143"  # Chicago (312), written with '+'
CANADA = "16135550143"  # Ottawa (613)
PUERTO_RICO = "17875550143"  # 787: a +1 country of its own in numbering
UK = "447700900123"


def request(recipient: str, category: pb.Category.ValueType, at: int = T0) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=category,
        template_id="promo",
        at_unix_ms=at,
    )


def assert_not_delivered(res: pb.AdmitResponse) -> None:
    assert (res.decision, res.reason, res.meta_error_code) == (
        pb.DECISION_REJECT,
        pb.NOT_DELIVERED_TO_REGION,
        131049,
    ), res
    assert not res.ticket and not res.counted and res.used == 0, res
    assert res.retry_at_unix_ms == 0


async def every_path(h: Harness, requests: list[pb.AdmitRequest]) -> list[pb.AdmitResponse]:
    """The answers of AdmitBatch, checked against AdmitStream's and AdmitColumns'
    for the same requests (dry runs, so the three see the same state)."""
    dry = [pb.AdmitRequest(**{**_fields(r), "dry_run": True}) for r in requests]
    batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=dry))
    stream = [res async for res in h.stub.AdmitStream(iter(dry))]
    assert list(batch.responses) == stream
    cols: pb.AdmitColumnsResponse = await h.stub.AdmitColumns(
        pb.AdmitColumnsRequest(
            senders=[SENDER],
            sender_index=[0] * len(dry),
            recipients=[r.recipient for r in dry],
            kinds=bytes(r.kind for r in dry),
            categories=bytes(r.category for r in dry),
            templates=["promo"],
            template_index=[1] * len(dry),
            at_unix_ms=[r.at_unix_ms for r in dry],
            dry_run=True,
        )
    )
    assert list(cols.reasons) == [r.reason for r in batch.responses]
    assert list(cols.decisions) == [r.decision for r in batch.responses]
    assert list(cols.meta_error_code) == [r.meta_error_code for r in batch.responses]
    return list(batch.responses)


def _fields(r: pb.AdmitRequest) -> dict[str, object]:
    return {f.name: v for f, v in r.ListFields()}


@run_async
async def test_a_marketing_template_to_a_us_number_is_rejected_with_131049() -> None:
    async with serving(make_config()) as h:
        assert_not_delivered(await admit(h, US, T0, sender_id=SENDER, category=pb.MARKETING))
        assert_not_delivered(await admit(h, US_PLUS, T0, sender_id=SENDER, category=pb.MARKETING))
        s = await state(h, SENDER, T0)
        assert s.used_24h == 0
        counts = {pb.Reason.Name(c.reason): c.count for c in s.decision_counts if c.count}
        assert counts == {"NOT_DELIVERED_TO_REGION": 2}, counts
        # The same numbers get utility and authentication templates; Canada, Puerto
        # Rico and the UK get marketing.
        for recipient, category in (
            (US, pb.UTILITY),
            (US, pb.AUTHENTICATION),
            (CANADA, pb.MARKETING),
            (PUERTO_RICO, pb.MARKETING),
            (UK, pb.MARKETING),
        ):
            res = await admit(h, recipient, T0 + 1, sender_id=SENDER, category=category)
            assert res.decision == pb.DECISION_ADMIT, (recipient, category, res)
        assert (await state(h, SENDER, T0 + 1)).used_24h == 4  # US, Canada, PR, UK


@run_async
async def test_every_decision_path_rejects_the_same_items() -> None:
    async with serving(make_config()) as h:
        requests = [
            request(US, pb.MARKETING),
            request(CANADA, pb.MARKETING),
            request(US_PLUS, pb.UTILITY),
            request(US_PLUS, pb.MARKETING),
        ]
        answers = await every_path(h, requests)
        assert_not_delivered(answers[0])
        assert_not_delivered(answers[3])
        assert answers[1].decision == answers[2].decision == pb.DECISION_ADMIT
        assert (
            answers[0].detail
            == "Meta does not deliver this category to the recipient's number (region)"
        )
        one = await admit(h, US, T0, sender_id=SENDER, category=pb.MARKETING)
        assert one == answers[0]


@run_async
async def test_a_rejected_send_spends_no_throughput() -> None:
    # One message a second, a one-second bucket: a single token at T0.
    config = make_config(senders=(sender(throughput_mps=1),))
    async with serving(config) as h:
        batch: pb.AdmitBatchResponse = await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(requests=[request(US, pb.MARKETING)] * 3)
        )
        for res in batch.responses:
            assert_not_delivered(res)
        for _ in range(3):
            assert_not_delivered(await admit(h, US, T0, sender_id=SENDER, category=pb.MARKETING))
        first = await admit(h, CANADA, T0, sender_id=SENDER, category=pb.MARKETING)
        assert first.decision == pb.DECISION_ADMIT, first
        second = await admit(h, UK, T0, sender_id=SENDER, category=pb.MARKETING)
        assert second.reason == pb.THROUGHPUT, second


@run_async
async def test_meta_2024_delivers_marketing_to_us_numbers() -> None:
    async with serving(make_config(profile="meta-2024")) as h:
        res = await admit(h, US, T0, sender_id=SENDER, category=pb.MARKETING)
        assert res.decision == pb.DECISION_ADMIT, res
