"""A phone number's own count while it is in warm-up (under a shared limit scope).

Under portfolio scope the scope's 24 h ring counts the whole portfolio; a
number in warm-up is capped on its *own* unique recipients. Only such a
number holds a :class:`Warmup`: its cap, a ring of minute buckets like the
scope's 24 h ring (same conservative rounding: a slot is never reported free
before it truly is) and the last time it counted each recipient.

A recipient's entry changes no decision once its bucket has left the ring
(below ``lo``): its time is outside the window, and removing it from the ring
is a no-op. Such entries are dropped (:meth:`Warmup.prune`) and never written
to snapshots.
"""

from __future__ import annotations

from ..constants import UNLIMITED
from .bounds import NEVER
from .ring import Ring

#: Entries a :class:`Warmup` holds before it first drops the dead ones.
WARM_INITIAL_MARK = 16


class Warmup:
    """A number's warm-up cap, ring and per-recipient last counted times."""

    __slots__ = ("cap", "counted", "mark", "ring")

    def __init__(self, bucket_ms: int, window_ms: int, cap: int) -> None:
        self.cap = cap
        self.ring = Ring(bucket_ms, window_ms, strict=False)
        self.counted: dict[int, int] = {}
        self.mark = WARM_INITIAL_MARK  # prune before growing past this

    @classmethod
    def with_cap(cls, warm: Warmup | None, width: int, window: int, cap: int) -> Warmup | None:
        """A number's Warmup once its cap is set to ``cap`` (UNLIMITED: none):
        ``warm`` with the new cap, else a new empty one."""
        if cap == UNLIMITED:
            return None
        if warm is None:
            return cls(width, window, cap)
        warm.cap = cap
        return warm

    def usage(self, now: int) -> tuple[int, int]:
        """(count, when it next drops below the cap) as of ``now``."""
        self.ring.advance(now)
        return self.ring.total, self.ring.next_free(self.cap, now) if self.cap > 0 else 0

    def look(self, recipient: int, now: int) -> int:
        """The recipient's last counted time by this number, as of ``now``."""
        self.ring.advance(now)
        return self.counted.get(recipient, NEVER)

    def live(self, t: int) -> bool:
        """Whether a recipient last counted at ``t`` can still change a decision."""
        return t // self.ring.width >= self.ring.lo

    def count(self, recipient: int, last: int, now: int) -> None:
        """A counting admit from the number: the recipient's time moves to ``now``."""
        self.ring.remove(last)
        self.ring.add(now)
        if recipient not in self.counted and len(self.counted) >= self.mark:
            self.prune()
            self.mark = max(WARM_INITIAL_MARK, 2 * len(self.counted))
        self.counted[recipient] = now

    def release(self, recipient: int, t: int, prev: int) -> None:
        """The admit that counted ``recipient`` at ``t`` failed: back to ``prev``."""
        if self.counted.get(recipient) == t:
            self.ring.remove(t)
            self.ring.add(prev)
            self.counted[recipient] = prev

    def prune(self, now: int | None = None) -> int:
        """Drop the entries that can no longer change a decision (as of ``now``)."""
        if now is not None:
            self.ring.advance(now)
        dead = [k for k, t in self.counted.items() if not self.live(t)]
        for k in dead:
            del self.counted[k]
        return len(dead)

    def live_entries(self) -> list[tuple[int, int]]:
        """(recipient, last counted) of the entries that can change a decision, by key."""
        return sorted((k, t) for k, t in self.counted.items() if self.live(t))
