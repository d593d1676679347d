"""What the policy layer answers: an admit decision, a feedback event's outcome.

The refusals that the policy layer itself gives (unknown sender, blocked
sender, template steps) and its reading of the engine's refusals (steps 4 to
9) are stated here once, for the scalar and the columnar path alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiergate.engine import records as rec
from tiergate.engine.constants import (
    ADMIT,
    F_QUALITY_BLOCK,
    MARKETING_FREQUENCY,
    NOT_DELIVERED_TO_REGION,
    OK,
    QUALITY_PROTECTION,
    REJECT,
    RETRY_LATER,
    SENDER_BLOCKED,
    SENDER_RESTRICTED,
    TEMPLATE_PAUSED,
    UNKNOWN_SENDER,
)

from .meta_errors import META_ERROR, MetaError
from .requests import MARKETING
from .state import Sender

__all__ = [
    "BACK_OFF_DETAIL",
    "DETAIL",
    "DRY_RUN_DETAIL",
    "META_ERROR",
    "META_TEMPLATE_MISSING",
    "UNAVAILABLE_DETAIL",
    "AdmitResult",
    "ApplyResult",
    "blocked",
    "not_delivered",
    "refusal",
    "remembered",
    "template_detail",
    "unknown_sender",
    "unknown_sender_detail",
]

META_TEMPLATE_MISSING = int(MetaError.TEMPLATE_MISSING)
_DECLINED = int(MetaError.ECOSYSTEM_ENGAGEMENT)

DETAIL = (
    "",
    "admitted",
    "sender is banned or disabled",
    "sender is restricted by Meta (business-initiated messages, or replies)",
    "template is paused",
    "template is disabled",
    "free-form message needs an open customer service window",
    "recipient opted out of marketing messages",
    "messaging limit reached: retry when the oldest unique recipient leaves the window",
    "marketing frequency cap for this recipient",
    "marketing blocked while quality is Red",
    "sender throughput limit",
    "pair rate limit for this recipient",
    "unknown sender",
    "Meta does not deliver this category to the recipient's number (region)",
)
#: Details of answers that say more than their reason's DETAIL entry (the server's
#: AdmitBatch wire writer gives the same from an answer's columns).
DRY_RUN_DETAIL = "dry run: would admit"
BACK_OFF_DETAIL = "Meta declined marketing to this recipient (131049): back-off"
#: The detail of a RETRY_LATER answered while the shared store cannot be reached.
UNAVAILABLE_DETAIL = "store unavailable: retry shortly"


@dataclass(slots=True)
class AdmitResult:
    decision: int
    reason: int
    retry_at_unix_ms: int
    ticket: str
    counted: bool
    limit: int
    used: int
    meta_error_code: int
    detail: str
    #: Shadow mode: what tiergate would have answered to this ADMIT (0: the answer stands).
    shadow_decision: int = 0
    shadow_reason: int = 0
    shadow_retry_at_unix_ms: int = 0


@dataclass(slots=True)
class ApplyResult:
    applied: bool
    detail: str


def unknown_sender_detail(sender_id: str) -> str:
    return f"unknown sender {sender_id!r}"


def template_detail(reason: int, meta_error_code: int, template_id: str) -> str:
    """The detail of a TEMPLATE_PAUSED or TEMPLATE_DISABLED answer."""
    if reason == TEMPLATE_PAUSED:
        return f"template {template_id!r} is paused"
    if meta_error_code == META_TEMPLATE_MISSING:
        return f"unknown template {template_id!r}"
    return f"template {template_id!r} is disabled"


def unknown_sender(sender_id: str) -> AdmitResult:
    """Step 2 for a sender tiergate does not know."""
    return AdmitResult(
        REJECT, UNKNOWN_SENDER, 0, "", False, 0, 0, 0, unknown_sender_detail(sender_id)
    )


def not_delivered(limit: int) -> AdmitResult:
    """A template Meta does not deliver to the recipient's number (the profile's
    undeliverable (prefix, category) pairs): nothing counted or spent."""
    return AdmitResult(
        REJECT,
        NOT_DELIVERED_TO_REGION,
        0,
        "",
        False,
        limit,
        0,
        META_ERROR[NOT_DELIVERED_TO_REGION],
        DETAIL[NOT_DELIVERED_TO_REGION],
    )


def blocked(limit: int) -> AdmitResult:
    """Step 2 for a BANNED or DISABLED sender."""
    return AdmitResult(
        REJECT,
        SENDER_BLOCKED,
        0,
        "",
        False,
        limit,
        0,
        META_ERROR[SENDER_BLOCKED],
        DETAIL[SENDER_BLOCKED],
    )


def template_refused(reason: int, retry_at: int, limit: int, code: int, tpl: str) -> AdmitResult:
    """Step 3's refusal: TEMPLATE_PAUSED (until ``retry_at``) or TEMPLATE_DISABLED."""
    decision = RETRY_LATER if reason == TEMPLATE_PAUSED else REJECT
    return AdmitResult(
        decision, reason, retry_at, "", False, limit, 0, code, template_detail(reason, code, tpl)
    )


def remembered(entry: rec.Entry) -> AdmitResult:
    """The answer a repeated idempotency key gets."""
    return AdmitResult(ADMIT, OK, 0, entry[0], entry[1], entry[2], entry[3], 0, DETAIL[OK])


def refusal(
    sender: Sender, d: int, r: int, retry: int, limit: int, used: int, back_off_end: int
) -> AdmitResult:
    """The answer for a row the engine did not admit (steps 4 to 9). ``back_off_end``:
    the end of a 131049 back-off that blocked marketing to the recipient (0: none)."""
    if back_off_end and r == QUALITY_PROTECTION and not (sender.flags[MARKETING] & F_QUALITY_BLOCK):
        # Meta answered 131049 for this recipient: hold marketing until back-off ends.
        return AdmitResult(
            RETRY_LATER,
            MARKETING_FREQUENCY,
            back_off_end,
            "",
            False,
            limit,
            used,
            _DECLINED,
            BACK_OFF_DETAIL,
        )
    if r == SENDER_RESTRICTED and sender.restricted_retry_at > 0:
        return AdmitResult(
            RETRY_LATER,
            r,
            sender.restricted_retry_at,
            "",
            False,
            limit,
            used,
            META_ERROR[SENDER_RESTRICTED],
            DETAIL[r],
        )
    return AdmitResult(d, r, retry, "", False, limit, used, META_ERROR[r], DETAIL[r])
