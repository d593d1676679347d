"""What the engines and the columnar kernels return, named: both twins of each (the
reference ``Engine`` and ``tiergate._native.engine``; ``tiergate.engine.columns``
and ``tiergate._native.columns``) return these records, and the idempotency-key
kernels of both take their columns as one :class:`KeyColumns`."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "BadItem",
    "Decided",
    "Finished",
    "KeyCheck",
    "KeyColumns",
    "Lookup",
    "Prepared",
    "Usage",
]


class Decided(NamedTuple):
    """``Engine.decide``: one request's decision, as a DecisionBatch's output columns
    give it per item."""

    decision: int
    reason: int
    retry_at: int
    counted: int
    used: int
    prev_counted: int
    slot: int


class Usage(NamedTuple):
    """``Engine.usage``: a limit scope's counts at a time."""

    used_24h: int
    next_slot_free_at: int
    unique_7d: int
    slots_7d: int


class Lookup(NamedTuple):
    """``Engine.lookup``: what the engine holds for one recipient."""

    last_counted: int
    opted_out: bool
    window_until: int
    fep_until: int
    pair_tat: int


class BadItem(NamedTuple):
    """``check_items``: the first malformed item and its problem code; (-1, 0): none."""

    item: int
    problem: int


class Prepared(NamedTuple):
    """``prepare``: the latest time of an item from a known sender, the number of
    items from unknown senders, and the number of engine rows gathered."""

    high: int
    unknown: int
    rows: int


class Finished(NamedTuple):
    """``finish``: the last ticket id handed out (0: none) and how many rows
    ``counted_rows`` holds."""

    last_tid: int
    n_counted: int


class KeyCheck(NamedTuple):
    """``repeated_keys``: the first item whose key is bound to another request (-1:
    none), the items already answered (one byte each, 1: skip), those items with
    the idempotency entry that answers each, and whether a key repeats within the
    request for a sender that keeps keys (not a dry run)."""

    bad: int
    skip: bytearray
    hits: list[tuple[int, Any]]
    repeated: bool


class KeyColumns(NamedTuple):
    """The columns ``repeated_keys`` and ``remember_keys`` read, one entry per item
    unless said: each item's idempotency key ("": none) and sender index; the
    request's sender ids and each one's key table (None: unknown sender); the
    recipient keys, kinds and categories (SERVICE (4) for a free-form item without
    one) the keys are bound to; each item's template index (0: none) into the
    request's templates (index 1 = ``templates[0]``)."""

    keys: Sequence[str]
    sender_index: Sequence[int]
    senders: Sequence[str]
    idems: Sequence[dict[str, Any] | None]
    rkeys: Sequence[int]
    kinds: bytes
    categories: bytes
    template_index: Sequence[int]
    templates: Sequence[str]


class AnswerColumns(NamedTuple):
    """A batch's answers as the compiled response writers take them (wire.pyx
    ``encode_response`` and ``encode_batch_response``), one entry per item."""

    decisions: bytearray
    reasons: bytearray
    counted: bytearray  # 1: a new unique-recipient slot was used
    retry_at: array[int]
    limit: array[int]
    used: array[int]
    meta: array[int]  # Meta's error code the decision avoids (0: none)
    tickets: list[str]
