"""Meta's error codes that tiergate's decisions avoid or that feedback acts on.

Names follow Meta's Cloud API error reference; a decision's ``meta_error_code``
is the error Meta would have answered had the message been sent.
"""

from __future__ import annotations

import enum

__all__ = ["META_ERROR", "MetaError"]


class MetaError(enum.IntEnum):
    NONE = 0
    #: The account is blocked for policy violations, disabled or restricted.
    ACCOUNT_BLOCKED = 368
    #: Cloud API throughput reached.
    THROUGHPUT = 130429
    #: Re-engagement message: more than 24 hours since the user's last message.
    OUTSIDE_WINDOW = 131047
    #: Spam rate limit: the messaging limit, or the quality-based one.
    MESSAGING_LIMIT = 131048
    #: The same code in a failed send: Meta throttles the number (spam rate limit).
    SPAM_RATE_LIMIT = 131048
    #: Not delivered to maintain healthy ecosystem engagement (marketing declined;
    #: marketing templates to US numbers).
    ECOSYSTEM_ENGAGEMENT = 131049
    #: The user stopped marketing messages.
    OPTED_OUT = 131050
    #: Pair rate limit hit (business to one user).
    PAIR_RATE = 131056
    #: The template does not exist.
    TEMPLATE_MISSING = 132001
    #: The template is paused for low quality.
    TEMPLATE_PAUSED = 132015
    #: The template is disabled (paused too often).
    TEMPLATE_DISABLED = 132016


#: The Meta error each decision reason avoids (indexed by reason).
META_ERROR: tuple[int, ...] = tuple(
    int(code)
    for code in (
        MetaError.NONE,  # REASON_UNSPECIFIED
        MetaError.NONE,  # OK
        MetaError.ACCOUNT_BLOCKED,  # SENDER_BLOCKED
        MetaError.ACCOUNT_BLOCKED,  # SENDER_RESTRICTED
        MetaError.TEMPLATE_PAUSED,  # TEMPLATE_PAUSED
        MetaError.TEMPLATE_DISABLED,  # TEMPLATE_DISABLED
        MetaError.OUTSIDE_WINDOW,  # OUTSIDE_WINDOW
        MetaError.OPTED_OUT,  # RECIPIENT_OPTED_OUT
        MetaError.MESSAGING_LIMIT,  # MESSAGING_LIMIT
        MetaError.ECOSYSTEM_ENGAGEMENT,  # MARKETING_FREQUENCY
        MetaError.MESSAGING_LIMIT,  # QUALITY_PROTECTION
        MetaError.THROUGHPUT,  # THROUGHPUT
        MetaError.PAIR_RATE,  # PAIR_RATE
        MetaError.NONE,  # UNKNOWN_SENDER
        MetaError.ECOSYSTEM_ENGAGEMENT,  # NOT_DELIVERED_TO_REGION
    )
)
