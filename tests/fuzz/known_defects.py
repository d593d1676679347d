"""Defects of tiergate the fuzz targets know about, until their fixes merge.

While a flag is True, the tests that show the defect are ``xfail(strict=True)``
and the generic fuzz targets do not send its trigger, so they stay a gate for
everything else. When a fix lands, set its flag to False: the tests that show
the defect must then pass (a strict xfail that passes fails the suite until its
flag goes), and the generic targets start sending the trigger as well.
"""

from __future__ import annotations

import pytest

#: With ``--clock request``, a refused request stamped ahead of the clock (any
#: RPC: INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED) still moves the clock.
REFUSED_REQUESTS_MOVE_THE_REQUEST_CLOCK = False
#: An idempotency key re-used for another request (another recipient, say)
#: returns the first request's answer instead of an error naming the key.
KEYS_ARE_NOT_BOUND_TO_THEIR_REQUEST = False
#: A ticket tiergate never issued (a real one with its first field altered)
#: releases a slot when sent back as a FAILED send result.
FORGED_TICKETS_RELEASE_SLOTS = False


def xfail(flag: bool, defect: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(flag, reason=f"known defect: {defect}", strict=True)


clock_moved_by_refused_requests = xfail(
    REFUSED_REQUESTS_MOVE_THE_REQUEST_CLOCK,
    "a refused future-stamped request moves the request clock",
)
keys_not_bound = xfail(
    KEYS_ARE_NOT_BOUND_TO_THEIR_REQUEST,
    "an idempotency key re-used for another request returns the first answer",
)
forged_tickets_release = xfail(FORGED_TICKETS_RELEASE_SLOTS, "a forged ticket releases a slot")
