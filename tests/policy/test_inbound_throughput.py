"""Inbound messages and the number's throughput (meta-2025 ``count_inbound``)."""

from __future__ import annotations

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.feedback import INBOUND_HORIZON_MS

from .helpers import T0, H, S, add_sender, admit, rcpt, service


@pytest.mark.parametrize(
    ("behind", "refused"),
    [(0, True), (INBOUND_HORIZON_MS - S, True), (INBOUND_HORIZON_MS + S, False), (2 * H, False)],
)
def test_an_inbound_message_takes_throughput_only_near_the_latest_decision(
    behind: int, refused: bool
) -> None:
    """Inbound messages compete with sends in their own second; one learned of far
    behind the sender's latest decision (a replay out of order) takes nothing."""
    svc = service("meta-2025")
    add_sender(svc, "s1", throughput_mps=1)
    assert admit(svc, "s1", rcpt(1), T0).decision == c.ADMIT
    for j in range(5):
        at = T0 - behind
        assert svc.apply(ev.InboundMessage("s1", rcpt(100 + j), at_unix_ms=at), at).applied
    answer = admit(svc, "s1", rcpt(2), T0 + S)
    assert (answer.reason == c.THROUGHPUT) is refused, answer
