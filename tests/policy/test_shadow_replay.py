"""Shadow admits are journaled like any admit: replay rebuilds the same state, whatever
the replaying profile shadows, and a release gives a shadowed slot back."""

from __future__ import annotations

import dataclasses

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.profile import Profile, load_profile

from .helpers import T0, H, add_sender, admit, rcpt, send_unique, service


def shadowing() -> Profile:
    return dataclasses.replace(load_profile("meta-2025"), shadow_reasons=frozenset(c.SHADOWABLE))


def test_replay_of_shadow_admits_gives_the_same_state() -> None:
    live = service(shadowing())
    add_sender(live, "a", tier="TIER_250")
    batch = send_unique(live, "a", T0, 240)  # the batch path
    lone = [admit(live, "a", rcpt(1_000 + i), T0 + H + 20 * i) for i in range(20)]  # scalar
    assert all(r.decision == c.ADMIT for r in batch + lone)
    assert [r.shadow_reason for r in lone[10:]] == [c.MESSAGING_LIMIT] * 10
    records = live.drain_journal()
    for profile in (shadowing(), load_profile("meta-2025")):
        copy = service(profile)
        for record in records:
            copy.replay(record)
        at = T0 + 2 * H
        assert copy.sender_state("a", at).used_24h == live.sender_state("a", at).used_24h == 260
        copy.engine.reclaim(at)
        live.engine.reclaim(at)
        assert copy.engine.snapshot() == live.engine.snapshot()


def test_a_failed_shadow_admit_gives_its_slot_back() -> None:
    svc = service(shadowing())
    add_sender(svc, "a", tier="TIER_250")
    send_unique(svc, "a", T0, 250)
    over = admit(svc, "a", rcpt(5_000), T0 + H)
    assert (over.decision, over.shadow_reason, over.used, over.counted) == (
        c.ADMIT,
        c.MESSAGING_LIMIT,
        251,
        True,
    )
    svc.apply(ev.SendResult(ev.SendStatus.FAILED, ticket=over.ticket, meta_error_code=131048), 0)
    assert svc.sender_state("a", T0 + H).used_24h == 250
