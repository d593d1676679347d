"""The idempotency-key memory: what each key answers, what it is bound to, until when.

A key's entry lives in its sender's table (``Sender.idem``: the compiled
kernels of the columnar path read and write those tables directly); the
memory keeps the expiry order of every entry, to drop them when they expire.
An entry (``engine.records.Entry``) is the first answer, always an ADMIT,
and what the key is bound to: recipient, kind, category and template.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from tiergate.engine import records as rec

from .requests import KeyConflict

if TYPE_CHECKING:
    from .column_checks import Items
    from .state import PolicyState, Sender

__all__ = ["KeyMemory", "KeyRead", "conflict", "differs", "unheld_keys"]


def differs(entry: rec.Entry, bound: int, template: str) -> str:
    """What of a request differs from what ``entry``'s key is bound to (the word
    :class:`KeyConflict` uses): recipient, kind, category or template."""
    known = entry[rec.E_BOUND]
    if (known ^ bound) & rec.RECIPIENT_BITS:
        return "recipient"
    if (known ^ bound) >> rec.KIND_SHIFT & 3:
        return "kind"
    if known >> rec.CATEGORY_SHIFT != bound >> rec.CATEGORY_SHIFT:
        return "category"
    return "template"


def conflict(
    r: Items,
    idems: list[dict[str, rec.Entry] | None],
    at: Sequence[int] | None,
    now_ms: int,
    i: int,
) -> KeyConflict:
    """The error for item ``i``, whose key the kernels found bound to another request."""
    key = r.keys[i]
    t = r.template_index[i]
    tpl = r.templates[t - 1] if t else ""
    bound = rec.bind(r.rkeys[i], r.kinds[i], r.categories[i])
    idem = idems[r.sender_index[i]]
    first = idem.get(key) if idem is not None else None
    now = high = now_ms  # item i's time, as the kernels have it
    for k in range(i + 1):
        if idems[r.sender_index[k]] is not None:
            now = at[k] if at and at[k] > 0 else high
            high = max(high, now)
    field = f"idempotency_keys[{i}]"
    if first is not None and first[rec.E_UNTIL] > now and not rec.bound_to(first, bound, tpl):
        return KeyConflict(field, i, differs(first, bound, tpl))
    sid = r.senders[r.sender_index[i]]
    for j in range(i):
        if r.keys[j] == key and r.senders[r.sender_index[j]] == sid:
            tj = r.template_index[j]
            earlier = rec.bind(r.rkeys[j], r.kinds[j], r.categories[j])
            other = ("", False, 0, 0, 0, earlier, r.templates[tj - 1] if tj else "")
            return KeyConflict(field, i, differs(other, bound, tpl))
    raise AssertionError(f"item {i}: no conflict to name")


class KeyMemory:
    """Every sender's idempotency entries, in expiry order: ``order`` holds
    (expiry, sender id, key) in the order the entries were made."""

    __slots__ = ("order",)

    def __init__(self) -> None:
        self.order: deque[tuple[int, str, str]] = deque()

    @staticmethod
    def lookup(sender: Sender, key: str, now: int) -> rec.Entry | None:
        """The entry of ``key`` still valid at ``now`` (None: none)."""
        first = sender.idem.get(key)
        if first is not None and first[rec.E_UNTIL] <= now:  # expired (not dropped yet)
            return None
        return first

    @staticmethod
    def check(entry: rec.Entry, bound: int, template: str, field: str, item: int) -> None:
        """Raise :class:`KeyConflict` naming ``field`` when ``entry``'s key is bound to
        another request than (``bound``, ``template``)."""
        if not rec.bound_to(entry, bound, template):
            raise KeyConflict(field, item, differs(entry, bound, template))

    def remember(self, sender: Sender, key: str, entry: rec.Entry) -> None:
        """``key`` answers with ``entry`` until its expiry."""
        sender.idem[key] = entry
        self.order.append((entry[rec.E_UNTIL], sender.id, key))

    def prune(self, senders: Mapping[str, Sender], now: int) -> None:
        """Drop the entries expired at ``now``."""
        order = self.order
        while order and order[0][0] <= now:
            until, sid, key = order.popleft()
            s = senders.get(sid)
            if s is not None:
                entry = s.idem.get(key)
                # Only the entry this expiry belongs to (the key may have been used
                # again after it expired, before this was dropped).
                if entry is not None and entry[rec.E_UNTIL] == until:
                    del s.idem[key]


class KeyRead(NamedTuple):
    """Before anything of a batch is checked or decided (steps made ``remote``): its
    items ``asked`` (each of a known sender, with a key that holds no answer in this
    process at the item's time, in ``times``). The driver remembers, in the senders'
    key memory, what the shared store holds for those keys (another process's first
    admits), so the batch's keys are checked and answered as one process would."""

    items: Items
    asked: list[int]
    times: list[int]


def unheld_keys(
    st: PolicyState, r: Items, objs: list[Sender | None], now_ms: int
) -> tuple[list[int], list[int]]:
    """The items of known senders whose key holds no answer here at the item's time
    (that time as ``kernels.repeated_keys`` has it), and those times."""
    at = r.at if st.request_clock and len(r.at) else None
    sidx = r.sender_index
    asked: list[int] = []
    times: list[int] = []
    high = now_ms
    for i, key in enumerate(r.keys):
        sender = objs[sidx[i]]
        if sender is None:
            continue
        now = at[i] if at is not None and at[i] > 0 else high
        if now > high:
            high = now
        if key and KeyMemory.lookup(sender, key, now) is None:
            asked.append(i)
            times.append(now)
    return asked, times
