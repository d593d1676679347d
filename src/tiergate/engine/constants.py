"""Numbers shared by the compiled engine, its pure-Python twin and the policy layer.

Decision and reason values equal the protobuf enum numbers of
``tiergate.v1.Decision`` and ``tiergate.v1.Reason`` so no translation table is
needed at the gRPC edge. ``ext/tiergate/_native/constants.pxd`` repeats them for
both compiled modules.
"""

from collections.abc import Iterable
from typing import Final

# Decision (tiergate.v1.Decision)
DECISION_UNSPECIFIED: Final = 0
ADMIT: Final = 1
RETRY_LATER: Final = 2
REJECT: Final = 3

# Reason (tiergate.v1.Reason)
REASON_UNSPECIFIED: Final = 0
OK: Final = 1
SENDER_BLOCKED: Final = 2
SENDER_RESTRICTED: Final = 3
TEMPLATE_PAUSED: Final = 4
TEMPLATE_DISABLED: Final = 5
OUTSIDE_WINDOW: Final = 6
RECIPIENT_OPTED_OUT: Final = 7
MESSAGING_LIMIT: Final = 8
MARKETING_FREQUENCY: Final = 9
QUALITY_PROTECTION: Final = 10
THROUGHPUT: Final = 11
PAIR_RATE: Final = 12
UNKNOWN_SENDER: Final = 13
NOT_DELIVERED_TO_REGION: Final = 14

# Message kinds (tiergate.v1.MessageKind) and the categories the kernels name
# (tiergate.v1.Category).
KIND_TEMPLATE: Final = 1
KIND_FREE_FORM: Final = 2
CATEGORY_MARKETING: Final = 1
CATEGORY_SERVICE: Final = 4

# Per-request flags the policy layer hands to the engine.
F_TEMPLATE: Final = 1  # a template message; otherwise free-form (needs an open window)
F_MARKETING: Final = 2  # marketing category: opt-out, frequency cap, quality block apply
F_RESTRICTED: Final = 4  # sender restricted by Meta: business-initiated (counting) sends refused
F_QUALITY_BLOCK: Final = 8  # the profile blocks marketing now (quality Red)
F_FEP_FREE_FORM: Final = 16  # a free-entry-point (72 h) window allows free-form messages
F_DRY_RUN: Final = 32  # evaluate only, consume nothing
F_FORCE: Final = 64  # journal replay: skip every check, apply the consumption
F_FEP_PRICING: Final = 128  # a free-entry-point window is a pricing window: templates count
F_REPLY_RESTRICTED: Final = 256  # customer-initiated messaging restricted: replies refused
#: Shadow mode: flag bit SHADOW_SHIFT + r marks reason r as shadowed. A rule whose
#: reason is shadowed does not refuse: the engine goes on with the other rules and,
#: if none refuses, consumes as for an admit and answers the first shadowed
#: refusal (what it would have answered), so state follows what the gateway sends.
SHADOW_SHIFT: Final = 16

#: The reasons shadow mode may hold back from the answer: the rules the engine
#: decides (DESIGN §2 steps 4 to 9). Unknown and blocked senders, template states
#: and undeliverable regions are decided before (sends Meta refuses whatever the
#: count); bad input is never an answer.
SHADOWABLE: Final = (
    OUTSIDE_WINDOW,
    RECIPIENT_OPTED_OUT,
    SENDER_RESTRICTED,
    MESSAGING_LIMIT,
    MARKETING_FREQUENCY,
    QUALITY_PROTECTION,
    THROUGHPUT,
    PAIR_RATE,
)


def shadow_flags(reasons: Iterable[int]) -> int:
    """The request flag bits that shadow ``reasons`` (each one of :data:`SHADOWABLE`)."""
    bits = 0
    for r in reasons:
        bits |= 1 << (SHADOW_SHIFT + r)
    return bits


def shadowed(flags: int, reason: int) -> bool:
    """Whether request ``flags`` shadow ``reason`` (see :data:`SHADOW_SHIFT`)."""
    return bool(flags >> (SHADOW_SHIFT + reason) & 1)


# Entry points of a customer service window.
ENTRY_ORGANIC: Final = 1
ENTRY_CTWA_AD: Final = 2
ENTRY_PAGE_CTA: Final = 3

# An effectively unlimited messaging limit (TIER_UNLIMITED).
UNLIMITED: Final = (1 << 62) - 1

# Marketing sends remembered per recipient for the frequency cap.
MARKETING_HISTORY: Final = 4

# Recipient keys: E.164 digits (1..15) packed exactly, length in bits 50..53,
# so "01" and "1" differ and 0 never names a recipient (it marks empty slots).
KEY_LENGTH_SHIFT: Final = 50
MAX_RECIPIENT_DIGITS: Final = 15
#: Every key recipient_key makes is at most this (the engines refuse larger ones).
MAX_RECIPIENT_KEY: Final = (1 << (KEY_LENGTH_SHIFT + 4)) - 1
#: An undeliverable (prefix, category) pair's key: the prefix packed as a recipient
#: key, the category from this bit on (see ``engine.columns.undeliverable``).
PREFIX_CATEGORY_SHIFT: Final = KEY_LENGTH_SHIFT + 4


#: A business-scoped user ID (BSUID): a two-letter country code, '.', an optional
#: ``ENT.`` (the parent form), then 1 to 128 ASCII letters and digits.
MAX_BSUID_ID: Final = 128
#: The longest recipient text: a parent-form BSUID ("CC.ENT." and the id).
MAX_RECIPIENT_TEXT: Final = 7 + MAX_BSUID_ID
#: A BSUID's key is the low BSUID_KEY_BITS bits of its SipHash-2-4 under
#: BSUID_HASH_KEY (1 when they are all 0): length bits 50..53 stay 0, which no
#: E.164 key has, so the two kinds never meet and the key stays below 2**50.
BSUID_KEY_BITS: Final = KEY_LENGTH_SHIFT
BSUID_HASH_KEY: Final = b"tiergate.bsuid.1"


def is_bsuid(recipient: str) -> bool:
    """Whether ``recipient`` is a well-formed business-scoped user ID."""
    n = len(recipient)
    if n < 4 or recipient[2:3] != "." or not recipient.isascii():
        return False
    cc = recipient[:2]
    if not (cc.isalpha() and cc.isupper()):
        return False
    rest = recipient[7:] if recipient[3:7] == "ENT." else recipient[3:]
    return 0 < len(rest) <= MAX_BSUID_ID and rest.isalnum()


def bsuid_key(recipient: str) -> int:
    """The key of a well-formed BSUID (see :func:`is_bsuid`): never 0, below 2**50."""
    from .tickets import siphash24

    low = siphash24(BSUID_HASH_KEY, recipient.encode()) & ((1 << BSUID_KEY_BITS) - 1)
    return low or 1


def is_bsuid_key(key: int) -> bool:
    """Whether ``key`` names a BSUID (its length bits are 0)."""
    return key > 0 and key >> KEY_LENGTH_SHIFT == 0


def recipient_key(recipient: str) -> int:
    """Pack an E.164 wa_id (digits, optional leading '+') into its exact uint64 key,
    or key a business-scoped user ID (:func:`bsuid_key`).

    Raises ValueError naming the problem; callers turn it into INVALID_ARGUMENT.
    """
    if recipient[2:3] == ".":
        if is_bsuid(recipient):
            return bsuid_key(recipient)
        raise ValueError(
            "recipient is not a business-scoped user ID: two capital letters, '.',"
            " an optional 'ENT.', then 1 to 128 letters and digits"
        )
    digits = recipient[1:] if recipient.startswith("+") else recipient
    n = len(digits)
    if n == 0 or n > MAX_RECIPIENT_DIGITS:
        raise ValueError(f"recipient must have 1 to 15 digits, got {n}")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError("recipient must be E.164 digits with an optional leading '+'")
    return int(digits) | (n << KEY_LENGTH_SHIFT)


def prefix_key(prefix: str, category: int) -> int:
    """The key of an undeliverable (prefix, category) pair: the prefix's digits
    packed as :func:`recipient_key` packs a number's, the category above them."""
    return recipient_key(prefix) | category << PREFIX_CATEGORY_SHIFT


def recipient_digits(key: int) -> str:
    """The digits a phone number's key was made from (inverse of :func:`recipient_key`)."""
    n = key >> KEY_LENGTH_SHIFT
    return str(key & ((1 << KEY_LENGTH_SHIFT) - 1)).zfill(n)
