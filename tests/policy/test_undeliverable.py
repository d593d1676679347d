"""Templates Meta does not deliver to a number (``[delivery]``): the profile data,
the decision on the scalar and the batch path, and what a snapshot keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.columnar import AdmitColumns, admit_columns
from tiergate.policy.profile import ProfileError, load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, add_sender, custom, req, service

US = "12125550143"  # New York (212)
CANADA = "14165550143"  # Toronto (416)


def test_meta_2025_lists_us_area_codes_for_marketing_only() -> None:
    p = load_profile("meta-2025")
    prefixes = {prefix for prefix, cat in p.undeliverable if cat == ev.Category.MARKETING}
    assert len(prefixes) == len(p.undeliverable) == 359
    assert {"1201", "1212", "1907", "1808", "1989"} <= prefixes  # AK, HI included
    # Canada, the Caribbean and US territories with their own codes, toll-free and
    # other non-geographic codes shared by every +1 country are not US numbers.
    assert not {"1416", "1613", "1876", "1787", "1671", "1800", "1888", "1900", "1500"} & prefixes
    assert p.undeliverable_lengths == b"\x04"
    for name in ("meta-2024", "legacy-2x"):
        q = load_profile(name)
        assert (
            q.undeliverable == () and q.undeliverable_lengths == b"" and not q.undeliverable_table
        )


def test_a_user_profile_replaces_the_list(tmp_path: Path) -> None:
    body = '[delivery]\nundeliverable = [{ category = "UTILITY", prefixes = ["44", "4930"] }]\n'
    p = custom(tmp_path, "meta-2025", body)
    assert set(p.undeliverable) == {("44", ev.Category.UTILITY), ("4930", ev.Category.UTILITY)}
    assert p.undeliverable_lengths == b"\x02\x04"
    svc = service(p)
    add_sender(svc, "s1", portfolio_id="pf")
    util = svc.admit(req("s1", "447700900123", T0, category=ev.Category.UTILITY), T0)
    assert (util.decision, util.reason) == (c.REJECT, c.NOT_DELIVERED_TO_REGION)
    market = svc.admit(req("s1", "447700900123", T0), T0)
    assert market.decision == c.ADMIT
    assert svc.admit(req("s1", US, T0), T0).decision == c.ADMIT  # the US list was replaced


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("[delivery]\nundeliverable = 3\n", "delivery.undeliverable"),
        (
            '[delivery]\nundeliverable = [{ category = "SERVICE", prefixes = ["1"] }]\n',
            "delivery.undeliverable[0].category",
        ),
        (
            '[delivery]\nundeliverable = [{ category = "MARKETING", prefixes = ["+1"] }]\n',
            "delivery.undeliverable[0].prefixes",
        ),
        (
            '[delivery]\nundeliverable = [{ category = "MARKETING", prefixes = [""] }]\n',
            "delivery.undeliverable[0].prefixes",
        ),
        ('[delivery]\nundeliverable = [{ category = "MARKETING" }]\n', "delivery.undeliverable[0]"),
        ("[delivery]\nundeliverable = []\nother = 1\n", "delivery.other"),
    ],
)
def test_bad_delivery_tables_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    with pytest.raises(ProfileError) as err:
        custom(tmp_path, "meta-2025", body)
    assert err.value.key == key, err.value


def test_scalar_and_batch_answers_and_snapshot() -> None:
    svc = service("meta-2025")
    add_sender(svc, "s1", portfolio_id="pf")
    items: list[AdmitRequest] = [
        req("s1", US, T0),
        req("s1", "+" + US, T0 + 1),
        req("s1", CANADA, T0 + 2),
        req("s1", US, T0 + 3, category=ev.Category.UTILITY),
        req("s1", US, T0 + 4, free_form=True, category=ev.Category.MARKETING),
    ]
    one = [svc.admit(r, r.at_unix_ms) for r in items]
    assert [(a.decision, a.reason) for a in one] == [
        (c.REJECT, c.NOT_DELIVERED_TO_REGION),
        (c.REJECT, c.NOT_DELIVERED_TO_REGION),
        (c.ADMIT, c.OK),
        (c.ADMIT, c.OK),
        (c.REJECT, c.OUTSIDE_WINDOW),  # free-form: the window rule, not this one
    ]
    assert one[0].meta_error_code == 131049 and not one[0].counted and not one[0].ticket
    report = svc.sender_state("s1", T0 + 10)
    assert report.decision_counts[c.NOT_DELIVERED_TO_REGION] == 2
    restored = AdmissionService.from_snapshot(
        load_profile("meta-2025"), svc.snapshot(), clock="request", ticket_key=TICKET_KEY
    )
    assert restored.sender_state("s1", T0 + 10).decision_counts == report.decision_counts
    # The batch paths answer the same requests the same way.
    for batch in ("admit_many", "admit_columns"):
        other = service("meta-2025")
        add_sender(other, "s1", portfolio_id="pf")
        if batch == "admit_many":
            many = [(a.decision, a.reason, a.meta_error_code) for a in other.admit_many(items, T0)]
        else:
            got = admit_columns(other, AdmitColumns.from_requests(items), T0)
            many = [got.item(i)[:2] + got.item(i)[7:8] for i in range(len(items))]
        assert many == [(a.decision, a.reason, a.meta_error_code) for a in one], batch
