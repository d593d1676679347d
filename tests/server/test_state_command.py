"""``tiergate state`` against a running sidecar: the table shows each paused
template with why and until when, the path to the next tier, the hold after
Meta's 131048 and Meta's account restrictions (business-initiated sends and
replies), each as GetSenderState reports it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from rules_harness import DOCS_SENDER, DOCS_WABA, admit, docs_config, feedback, ingest, state
from server_harness import T0, Harness, run_async, serving

from tiergate import cli
from tiergate.v1 import admission_pb2 as pb

H = 3_600_000
END = T0 + 2 * H  # the restrictions' expiry (whole seconds)
BUSINESS = "RESTRICTED_BIZ_INITIATED_MESSAGING"
REPLIES = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"


def stamp(ms: int) -> str:
    utc = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{utc} UTC ({ms})"


def row(table: str, name: str) -> str:
    """The value of the table's row ``name``."""
    found = [line[len(name) :].strip() for line in table.splitlines() if line.startswith(name)]
    assert len(found) == 1, (name, table)
    return found[0]


def restriction(*types: str, expiry: int | None) -> dict[str, Any]:
    """An account_update ACCOUNT_RESTRICTION for ``DOCS_WABA`` (pywa's example's shape)."""
    info: list[dict[str, Any]] = [{"restriction_type": t} for t in types]
    if expiry is not None:
        for item in info:
            item["expiration"] = expiry // 1000
    value = {"event": "ACCOUNT_RESTRICTION", "restriction_info": info}
    change = {"field": "account_update", "value": value}
    entry = {"id": DOCS_WABA, "time": T0 // 1000, "changes": [change]}
    return {"object": "whatsapp_business_account", "entry": [entry]}


async def failed(h: Harness, ticket: str, code: int, at: int, template_id: str = "") -> None:
    result = pb.SendResult(
        ticket=ticket,
        status=pb.FAILED,
        meta_error_code=code,
        at_unix_ms=at,
        template_id=template_id,
    )
    assert (await feedback(h, send_result=result)).applied


async def table_at(h: Harness, at: int) -> None:
    args = ["state", DOCS_SENDER, "--target", h.target, "--at-unix-ms", str(at)]
    assert await asyncio.to_thread(cli.main, args) == 0


def test_state_shows_pauses_holds_and_restrictions(capsys: pytest.CaptureFixture[str]) -> None:
    shown: list[pb.SenderState] = []

    @run_async
    async def main() -> None:
        async with serving(docs_config()) as h:
            first = await admit(h, "15550001111", T0)
            second = await admit(h, "15550001112", T0, template="winter_sale")
            assert first.decision == second.decision == pb.DECISION_ADMIT
            await failed(h, first.ticket, 131048, T0 + 1000)  # spam rate limit: a hold
            await failed(h, second.ticket, 132015, T0 + 1000, "winter_sale")  # held until lifted
            paused = pb.TemplateUpdate(
                template_id="spring_sale",
                status=pb.TEMPLATE_STATUS_PAUSED,
                at_unix_ms=T0 + 2000,
                waba_id=DOCS_WABA,
                pause_reason="FIRST_PAUSE",
            )
            assert (await feedback(h, template_update=paused)).applied
            gone = pb.TemplateUpdate(
                template_id="old", status=pb.TEMPLATE_STATUS_DISABLED, at_unix_ms=T0 + 2000
            )
            assert (await feedback(h, template_update=gone)).applied
            assert (await ingest(h, restriction(BUSINESS, REPLIES, expiry=END), T0 + 3000)).applied
            await table_at(h, T0 + 4000)
            shown.append(await state(h, at=T0 + 4000))

    main()
    table = capsys.readouterr().out
    st = shown[0]
    assert st.status == pb.RESTRICTED and st.spam_held_until_unix_ms == T0 + 1000 + H
    assert row(table, "restricted until") == stamp(END)
    assert row(table, "replies held") == stamp(END)
    assert row(table, "spam hold") == stamp(T0 + 1000 + H)
    spring = next(t for t in st.paused_templates if t.template_id == "spring_sale")
    assert spring.paused_until_unix_ms > T0
    paused = row(table, "paused templates")
    assert f"spring_sale (FIRST_PAUSE, until {stamp(spring.paused_until_unix_ms)})" in paused
    assert "winter_sale (FAILED 132015, until lifted)" in paused
    assert "old (disabled)" in paused
    assert st.upgrade.path and st.upgrade.next_tier
    assert f"next {st.upgrade.next_tier} by {st.upgrade.path}" in row(table, "upgrade")


def test_state_shows_restrictions_without_an_end(capsys: pytest.CaptureFixture[str]) -> None:
    @run_async
    async def main() -> None:
        async with serving(docs_config()) as h:
            await table_at(h, T0)
            doc = restriction(BUSINESS, REPLIES, expiry=None)
            assert (await ingest(h, doc, T0 + 1000)).applied
            await table_at(h, T0 + 2000)

    main()
    before, after = capsys.readouterr().out.split("\nsender", 1)
    for name in ("restricted until", "replies held", "spam hold"):
        assert row(before, name) == "-"
    assert row(after, "restricted until") == "no known end"
    assert row(after, "replies held") == "no known end"
    assert row(after, "spam hold") == "-"
    assert row(after, "status") == "RESTRICTED"
