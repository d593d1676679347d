"""Feedback events: everything that changes tiergate's state besides an Admit.

The gRPC edge (RecordFeedback) and the webhook parser both produce these; the
policy layer applies them (``AdmissionService.apply``); the journal records
them. Enum-valued fields hold the protobuf enum numbers of ``tiergate.v1``.
Times are Unix ms; ``at_unix_ms == 0`` means "now" (the server clock, or the
request clock's latest time).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


def specified(values: type[enum.IntEnum]) -> tuple[int, ...]:
    """The values of an enum a field may hold: all but UNSPECIFIED (0)."""
    return tuple(int(v) for v in values if v != 0)


class Kind(enum.IntEnum):
    UNSPECIFIED = 0
    TEMPLATE = 1
    FREE_FORM = 2


class Category(enum.IntEnum):
    UNSPECIFIED = 0
    MARKETING = 1
    UTILITY = 2
    AUTHENTICATION = 3
    SERVICE = 4


class EntryPoint(enum.IntEnum):
    UNSPECIFIED = 0
    ORGANIC = 1
    CTWA_AD = 2
    PAGE_CTA = 3


class SendStatus(enum.IntEnum):
    UNSPECIFIED = 0
    SENT = 1
    DELIVERED = 2
    READ = 3
    FAILED = 4


class Quality(enum.IntEnum):
    UNSPECIFIED = 0
    GREEN = 1
    YELLOW = 2
    RED = 3
    UNKNOWN = 4


class SenderStatus(enum.IntEnum):
    UNSPECIFIED = 0
    CONNECTED = 1
    FLAGGED = 2
    RESTRICTED = 3
    BANNED = 4
    DISABLED = 5


class TemplateStatus(enum.IntEnum):
    UNSPECIFIED = 0
    APPROVED = 1
    PAUSED = 2
    UNPAUSED = 3
    DISABLED = 4
    REJECTED = 5


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A user wrote to the sender: opens or extends the customer service window."""

    sender_id: str
    recipient: str
    at_unix_ms: int = 0
    entry_point: EntryPoint = EntryPoint.ORGANIC
    message_id: str = ""
    #: The user's business-scoped user ID when the webhook names it beside the
    #: phone number ``recipient``: one recipient for counting (``aliases.py``).
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class SendResult:
    """What Meta said about a send tiergate admitted (by ticket, or by
    sender_id + recipient + idempotency_key)."""

    status: SendStatus
    ticket: str = ""
    sender_id: str = ""
    recipient: str = ""
    idempotency_key: str = ""
    meta_error_code: int = 0
    at_unix_ms: int = 0
    message_id: str = ""
    template_id: str = ""  # the template sent (a 132015 / 132016 failure holds it)
    user_id: str = ""  # as InboundMessage.user_id


@dataclass(frozen=True, slots=True)
class OptOut:
    """The recipient stopped (or resumed) marketing messages: per portfolio or sender."""

    recipient: str
    portfolio_id: str = ""
    sender_id: str = ""
    at_unix_ms: int = 0
    opted_out: bool = True


@dataclass(frozen=True, slots=True)
class SenderUpdate:
    """Upsert of a sender (phone number). ``None`` means unchanged."""

    sender_id: str
    portfolio_id: str | None = None
    waba_id: str | None = None
    display_phone_number: str | None = None
    verified: bool | None = None
    tier: str | None = None  # Meta's names: TIER_250 … TIER_UNLIMITED
    quality: Quality | None = None
    status: SenderStatus | None = None
    throughput_mps: int | None = None
    coexistence: bool | None = None
    registered_at_unix_ms: int | None = None
    restricted_until_unix_ms: int | None = None
    at_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class TemplateUpdate:
    """A template's status changed (paused, unpaused, disabled, approved …)."""

    template_id: str
    status: TemplateStatus
    template_name: str = ""
    paused_until_unix_ms: int = 0  # 0: from the pause title, else the profile's rule
    at_unix_ms: int = 0
    waba_id: str = ""
    pause_reason: str = ""  # Meta's pause title (other_info.title): FIRST_PAUSE …


@dataclass(frozen=True, slots=True)
class QualityUpdate:
    """phone_number_quality_update: FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE,
    THROUGHPUT_UPGRADE, ONBOARDING … matched to a sender by display number."""

    display_phone_number: str
    event: str
    current_limit: str = ""  # Meta tier name, e.g. TIER_10K
    old_limit: str = ""
    max_daily_conversations_per_business: str = ""  # portfolio-level limit name
    at_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class CapabilityUpdate:
    """business_capability_update: the portfolio-level messaging limit (and
    numbers allowed), for the WABA the webhook entry names."""

    waba_id: str
    max_daily_conversations_per_business: str = ""  # e.g. TIER_2K, or a number
    max_phone_numbers_per_business: int = 0
    at_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """account_update: ACCOUNT_RESTRICTION (with expiry), DISABLED_UPDATE (ban),
    ACCOUNT_VIOLATION … for a WABA (all its senders)."""

    waba_id: str
    event: str
    restriction_types: tuple[str, ...] = ()
    expires_at_unix_ms: int = 0  # 0: no known expiry
    #: Each restriction type's own expiry (0: none known); empty in events
    #: journaled before, which use ``expires_at_unix_ms`` for every type.
    restriction_expiries: tuple[int, ...] = ()
    ban_state: str = ""
    at_unix_ms: int = 0


@dataclass(frozen=True, slots=True)
class TemplateQualityUpdate:
    """message_template_quality_update: recorded; a RED template is reported."""

    template_id: str
    new_quality: str
    previous_quality: str = ""
    template_name: str = ""
    at_unix_ms: int = 0
    waba_id: str = ""


Event = (
    InboundMessage
    | SendResult
    | OptOut
    | SenderUpdate
    | TemplateUpdate
    | QualityUpdate
    | CapabilityUpdate
    | AccountUpdate
    | TemplateQualityUpdate
)
