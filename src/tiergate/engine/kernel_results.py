"""What the columnar kernels return, named: both twins (``tiergate.engine.columns``
and the compiled ``tiergate._native.columns``) return these records."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["BadItem", "Finished", "KeyCheck", "Prepared"]


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
