# The numbers both compiled modules share, declared once: decisions, reasons,
# request flags, recipient keys and the journal layout.
#
# They repeat src/tiergate/engine/constants.py (decision and reason values
# equal the tiergate.v1 proto enums) and src/tiergate/engine/records.py
# (tests/engine compare the compiled values with those).

from libc.stdint cimport int64_t

cdef extern from *:
    """
    #define TG_NEVER (-((int64_t)1 << 62))
    #define TG_UNLIMITED (((int64_t)1 << 62) - 1)
    """
    # An instant before every real time (no slot counted yet, nothing open).
    const int64_t NEVER "TG_NEVER"
    # An effectively unlimited messaging limit (engine/constants.py UNLIMITED).
    const int64_t UNLIMITED "TG_UNLIMITED"

cdef enum:
    # Decision (tiergate.v1.Decision)
    ADMIT = 1
    RETRY_LATER = 2
    REJECT = 3
    # Reason (tiergate.v1.Reason)
    OK = 1
    SENDER_BLOCKED = 2
    SENDER_RESTRICTED = 3
    TEMPLATE_PAUSED = 4
    TEMPLATE_DISABLED = 5
    OUTSIDE_WINDOW = 6
    RECIPIENT_OPTED_OUT = 7
    MESSAGING_LIMIT = 8
    MARKETING_FREQUENCY = 9
    QUALITY_PROTECTION = 10
    THROUGHPUT = 11
    PAIR_RATE = 12
    UNKNOWN_SENDER = 13
    NOT_DELIVERED_TO_REGION = 14
    # Reason slots per sender in the columnar counts table (every Reason fits below)
    REASON_SLOTS = 16
    # Request flags
    F_TEMPLATE = 1
    F_MARKETING = 2
    F_RESTRICTED = 4
    F_QUALITY_BLOCK = 8
    F_FEP_FREE_FORM = 16
    F_DRY_RUN = 32
    F_FORCE = 64
    F_FEP_PRICING = 128
    F_REPLY_RESTRICTED = 256
    # Shadow mode: flag bit SHADOW_SHIFT + reason shadows that reason
    SHADOW_SHIFT = 16
    # Message kinds (tiergate.v1.MessageKind)
    KIND_TEMPLATE = 1
    KIND_FREE_FORM = 2
    # Categories (tiergate.v1.Category)
    CATEGORY_MARKETING = 1
    CATEGORY_SERVICE = 4
    # Marketing sends remembered per recipient (frequency cap)
    MARKETING_HISTORY = 4
    # Recipient keys: E.164 digits packed exactly, their count from this bit on
    KEY_LENGTH_SHIFT = 50
    MAX_RECIPIENT_DIGITS = 15
    # An undeliverable (prefix, category) pair's key: the category from this bit on
    PREFIX_CATEGORY_SHIFT = 54
    # Journal records (engine/records.py): tag and version of admit and batch
    # records, batch head, row and binding sizes, kind and category shifts of
    # an idempotency key's binding
    TAG_ADMIT = 0x41
    ADMIT_VERSION = 3
    TAG_BATCH = 0x42
    BATCH_VERSION = 3
    BATCH_HEAD_SIZE = 6
    ROW_SIZE = 42
    BINDING_SIZE = 4
    KIND_SHIFT = 56
    CATEGORY_SHIFT = 59
