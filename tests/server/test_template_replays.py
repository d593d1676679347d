"""Template pauses under the default profile, through gRPC on a request clock.

Only Meta's DISABLED disables; UNPAUSED or APPROVED always lifts a pause; a
pause without a FIRST_PAUSE / SECOND_PAUSE title (template pacing) holds until
Meta lifts it; a FAILED 132015 / 132016 holds the template; GetSenderState
shows each paused template and why.

Bodies: Meta's APPROVED example (pywa's copy) and the derived PAUSED /
DISABLED bodies of ``tests/fixtures/meta-webhooks/derived`` (Meta published no
whole body for those events; MANIFEST.md lists each edit). A body with its
title removed or its time moved says so where it is built.
"""

from __future__ import annotations

from typing import Any

from rules_harness import (
    DOCS_SENDER,
    TEMPLATE_ID,
    TEMPLATE_NAME,
    admit,
    body,
    docs_config,
    feedback,
    ingest,
    state,
)
from server_harness import Harness, run_async, serving

from tiergate.policy.state import HELD
from tiergate.v1 import admission_pb2 as pb

AT_S = 1751247548  # the time of the template bodies (Unix s)
T = AT_S * 1000
H = 3_600_000
D = 24 * H
APPROVED = "message_template_status_update__template_status_update-approved__pywa"
FIRST = "derived/message_template_status_update__paused-first_pause__derived-pywa"
SECOND = "derived/message_template_status_update__paused-second_pause__derived-pywa"
DISABLED = "derived/message_template_status_update__disabled__derived-pywa"


def at(name: str, at_s: int, *, titled: bool = True) -> Any:
    """The body ``name`` with its entry time moved to ``at_s`` (and its pause title
    removed when ``titled`` is false: template pacing's pause has none)."""
    doc = body(name)
    doc["entry"][0]["time"] = at_s
    if not titled:
        del doc["entry"][0]["changes"][0]["value"]["other_info"]
    return doc


async def paused(h: Harness, now: int, recipient: str = "15550001111") -> int:
    """The retry time of a send to the template now (it must be paused)."""
    res = await admit(h, recipient, now)
    assert (res.decision, res.reason, res.meta_error_code) == (
        pb.DECISION_RETRY_LATER,
        pb.TEMPLATE_PAUSED,
        132015,
    ), res
    return res.retry_at_unix_ms


async def admitted(h: Harness, now: int, recipient: str = "15550001111") -> bool:
    return (await admit(h, recipient, now)).decision == pb.DECISION_ADMIT


async def shown(h: Harness, now: int) -> list[tuple[str, str, int, bool, bool]]:
    return [
        (p.template_id, p.reason, p.paused_until_unix_ms, p.disabled, p.until_lifted)
        for p in (await state(h, DOCS_SENDER, now)).paused_templates
    ]


@run_async
async def test_titled_pauses_end_by_their_title_and_approved_lifts_them() -> None:
    async with serving(docs_config()) as h:
        assert (await ingest(h, at(FIRST, AT_S), T)).applied == 1
        assert await paused(h, T + H) == T + 3 * H
        assert await shown(h, T + H) == [(TEMPLATE_ID, "FIRST_PAUSE", T + 3 * H, False, False)]
        assert await admitted(h, T + 3 * H)
        assert await shown(h, T + 3 * H) == []
        t2 = T + D
        assert (await ingest(h, at(SECOND, t2 // 1000), t2)).applied == 1
        assert await paused(h, t2 + H) == t2 + 6 * H
        assert await shown(h, t2 + H) == [(TEMPLATE_ID, "SECOND_PAUSE", t2 + 6 * H, False, False)]
        # APPROVED lifts the pause early.
        assert (await ingest(h, at(APPROVED, t2 // 1000 + 3600), t2 + H)).applied == 1
        assert await admitted(h, t2 + H)


@run_async
async def test_a_pause_without_a_title_holds_until_meta_lifts_it() -> None:
    async with serving(docs_config()) as h:
        assert (await ingest(h, at(FIRST, AT_S, titled=False), T)).applied == 1
        assert await paused(h, T + H) == HELD
        assert await paused(h, T + 30 * D) == HELD  # no end of its own
        assert await shown(h, T + 30 * D) == [(TEMPLATE_ID, "PAUSED", 0, False, True)]
        lift = pb.TemplateUpdate(
            template_id=TEMPLATE_ID, status=pb.TEMPLATE_STATUS_UNPAUSED, at_unix_ms=T + 31 * D
        )
        assert (await feedback(h, template_update=lift)).applied
        assert await admitted(h, T + 31 * D)
        assert await shown(h, T + 31 * D) == []


@run_async
async def test_a_third_pause_never_disables_only_disabled_does() -> None:
    async with serving(docs_config()) as h:
        for k, name in enumerate((FIRST, SECOND, SECOND, FIRST)):
            now = T + k * D
            assert (await ingest(h, at(name, now // 1000), now)).applied == 1
            assert await paused(h, now + H) == now + (3 if name == FIRST else 6) * H
            unpause = pb.TemplateUpdate(
                template_id=TEMPLATE_ID, status=pb.TEMPLATE_STATUS_UNPAUSED, at_unix_ms=now + 2 * H
            )
            assert (await feedback(h, template_update=unpause)).applied
            assert await admitted(h, now + 2 * H, f"1555000{k}222")
        now = T + 5 * D
        assert (await ingest(h, at(DISABLED, now // 1000), now)).applied == 1
        res = await admit(h, "15550003333", now + H)
        assert (res.decision, res.reason, res.meta_error_code) == (
            pb.DECISION_REJECT,
            pb.TEMPLATE_DISABLED,
            132016,
        )
        assert await shown(h, now + H) == [(TEMPLATE_ID, "DISABLED", 0, True, False)]


@run_async
async def test_a_send_failing_with_132015_holds_its_template() -> None:
    async with serving(docs_config()) as h:
        first = await admit(h, "15550001111", T)
        assert first.decision == pb.DECISION_ADMIT
        failed = pb.SendResult(
            ticket=first.ticket,
            status=pb.FAILED,
            meta_error_code=132015,
            at_unix_ms=T + 1000,
            template_id=TEMPLATE_NAME,
        )
        out = await feedback(h, send_result=failed)
        assert out.applied and "held" in out.detail, out
        assert await paused(h, T + D, "15550002222") == HELD
        assert await shown(h, T + D) == [(TEMPLATE_NAME, "FAILED 132015", 0, False, True)]
        # Meta's APPROVED for the template (matched by its name) lifts the hold.
        assert (await ingest(h, at(APPROVED, AT_S + 86_400 + 60), T + D + 60_000)).applied == 1
        assert await admitted(h, T + D + 60_000, "15550002222")


@run_async
async def test_a_keyed_send_failing_with_132016_holds_the_template_its_key_names() -> None:
    async with serving(docs_config()) as h:
        first = await admit(h, "15550001111", T, template="welcome", key="k1")
        assert first.decision == pb.DECISION_ADMIT
        failed = pb.SendResult(
            sender_id=DOCS_SENDER,
            recipient="15550001111",
            idempotency_key="k1",
            status=pb.FAILED,
            meta_error_code=132016,
            at_unix_ms=T + 1000,
        )
        assert (await feedback(h, send_result=failed)).applied
        res = await admit(h, "15550002222", T + H, template="welcome")
        assert (res.decision, res.reason, res.retry_at_unix_ms) == (
            pb.DECISION_RETRY_LATER,
            pb.TEMPLATE_PAUSED,
            HELD,
        )
        assert await shown(h, T + H) == [("welcome", "FAILED 132016", 0, False, True)]
        # Other templates are not affected.
        assert await admitted(h, T + H, "15550003333")
