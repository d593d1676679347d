"""Templates are capped per WABA as well as in all (``max_templates_per_waba``):
the count per WABA follows templates created, moved between WABAs, held by a
failed send, and restored from a snapshot or the journal."""

from __future__ import annotations

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.caps import CapReached, Caps
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, add_sender, admit, rcpt, service

APPROVED = ev.TemplateStatus.APPROVED


def _capped(per_waba: int = 2, templates: int = 100) -> AdmissionService:
    svc = service("meta-2025")
    svc.set_caps(Caps(templates=templates, templates_per_waba=per_waba))
    return svc


def _template(tid: str, waba: str = "", name: str = "") -> ev.TemplateUpdate:
    return ev.TemplateUpdate(tid, APPROVED, template_name=name, waba_id=waba)


def _refused(svc: AdmissionService, update: ev.TemplateUpdate, field: str) -> CapReached:
    with pytest.raises(CapReached) as err:
        svc.apply(update, T0)
    assert err.value.field == field
    assert err.value.setting == "max_templates_per_waba"
    return err.value


def test_one_waba_fills_only_its_own_share() -> None:
    svc = _capped()
    for tid in ("a1", "a2"):
        assert svc.apply(_template(tid, "wa"), T0).applied
    err = _refused(svc, _template("a3", "wa"), "template_id")
    assert err.cap == 2
    assert "2 templates of WABA 'wa' are known" in str(err)
    # another WABA, and templates naming none (one WABA of their own), still fit
    assert svc.apply(_template("b1", "wb"), T0).applied
    assert svc.apply(_template("n1"), T0).applied
    assert svc.apply(_template("n2"), T0).applied
    _refused(svc, _template("n3"), "template_id")
    # a known template is still updated at the cap, by id or by name
    assert svc.apply(_template("a1", "wa", name="promo"), T0).applied
    assert svc.apply(_template("promo", "wa"), T0).applied
    assert sorted(svc.state.templates) == ["a1", "a2", "b1", "n1", "n2"]
    assert svc.state.capped["max_templates_per_waba"] == 2


def test_moving_a_template_into_a_full_waba_is_refused_and_moves_free_room() -> None:
    svc = _capped()
    for tid, waba in (("a1", "wa"), ("a2", "wa"), ("b1", "wb")):
        assert svc.apply(_template(tid, waba), T0).applied
    _refused(svc, _template("b1", "wa"), "waba_id")
    assert svc.state.templates["b1"].waba_id == "wb"
    # a2 moves out of wa: wa has room again, wb is full
    assert svc.apply(_template("a2", "wb"), T0).applied
    assert dict(svc.state.waba_templates) == {"wa": 1, "wb": 2}
    assert svc.apply(_template("a3", "wa"), T0).applied
    _refused(svc, _template("b2", "wb"), "template_id")


def test_the_total_cap_still_holds_across_wabas() -> None:
    svc = _capped(per_waba=5, templates=3)
    for i, waba in enumerate(("wa", "wb", "wc")):
        assert svc.apply(_template(f"t{i}", waba), T0).applied
    with pytest.raises(CapReached) as err:
        svc.apply(_template("t9", "wd"), T0)
    assert err.value.setting == "max_templates"


def test_a_failed_send_holds_no_template_beyond_its_waba_cap() -> None:
    svc = _capped(per_waba=1)
    add_sender(svc, waba_id="wa")
    assert svc.apply(_template("a1", "wa"), T0).applied
    ticket = admit(svc, "s1", rcpt(1), T0, template="t-unknown").ticket
    failed = ev.SendResult(
        ev.SendStatus.FAILED, ticket=ticket, meta_error_code=132015, template_id="t-unknown"
    )
    result = svc.apply(failed, T0 + 1)
    assert "held" not in result.detail
    assert "t-unknown" not in svc.state.templates
    assert svc.state.capped["max_templates_per_waba"] == 1
    assert admit(svc, "s1", rcpt(2), T0 + 2, template="t-unknown").decision == c.ADMIT
    # with room, the same failure holds the template, counted in the sender's WABA
    svc.set_caps(Caps(templates_per_waba=2))
    ticket = admit(svc, "s1", rcpt(3), T0 + 3, template="t-unknown").ticket
    failed = ev.SendResult(
        ev.SendStatus.FAILED, ticket=ticket, meta_error_code=132015, template_id="t-unknown"
    )
    assert "held" in svc.apply(failed, T0 + 4).detail
    assert svc.state.waba_templates["wa"] == 2


@pytest.mark.parametrize("how", ["snapshot", "journal"])
def test_counts_per_waba_come_back_after_a_restart(how: str) -> None:
    svc = _capped()
    for tid, waba in (("a1", "wa"), ("a2", "wa"), ("b1", "wb"), ("b1", "wa")):
        if tid == "b1" and waba == "wa":
            _refused(svc, _template(tid, waba), "waba_id")
        else:
            assert svc.apply(_template(tid, waba), T0).applied
    assert svc.apply(_template("a2", "wb"), T0).applied  # moved: wa 1, wb 2
    if how == "snapshot":
        again = AdmissionService.from_snapshot(
            svc.profile, svc.snapshot(), clock="request", ticket_key=TICKET_KEY
        )
    else:
        again = service("meta-2025")
        for record in svc.drain_journal():
            again.replay(record)
    assert dict(again.state.waba_templates) == {"wa": 1, "wb": 2}
    again.set_caps(svc.caps)
    _refused(again, _template("b2", "wb"), "template_id")
    assert again.apply(_template("a3", "wa"), T0).applied
