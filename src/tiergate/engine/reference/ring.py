"""Bucket rings: counts of last-counted times by time bucket over a rolling window."""

from __future__ import annotations

from .bounds import NEVER


class Ring:
    """Counts of last-counted times by time bucket over a rolling window.

    ``strict=False`` (limit): a bucket counts while any part of it is inside
    the window. ``strict=True`` (eligibility): only while wholly inside.
    ``counts`` is empty until the first count: a scope that never counts a
    recipient keeps no buckets (as the compiled engine allocates them lazily).
    """

    __slots__ = ("counts", "lo", "n", "strict", "total", "width", "window")

    def __init__(self, width: int, window: int, strict: bool) -> None:
        self.width = width
        self.window = window
        self.strict = strict
        self.n = window // width + 2
        self.counts: list[int] = []
        self.lo = NEVER  # oldest live absolute bucket index
        self.total = 0

    def low_bucket(self, now: int) -> int:
        return (now - self.window) // self.width + (1 if self.strict else 0)

    def advance(self, now: int) -> None:
        new_lo = self.low_bucket(now)
        if new_lo <= self.lo:
            return
        if not self.counts:
            pass  # no buckets: nothing to drop
        elif new_lo - self.lo >= self.n:
            self.counts = [0] * self.n
            self.total = 0
        else:
            for b in range(self.lo, new_lo):
                i = b % self.n
                self.total -= self.counts[i]
                self.counts[i] = 0
        self.lo = new_lo

    def add(self, t: int) -> None:
        b = t // self.width
        if b >= self.lo:
            if not self.counts:
                self.counts = [0] * self.n
            self.counts[b % self.n] += 1
            self.total += 1

    def remove(self, t: int) -> None:
        b = t // self.width
        if b >= self.lo and self.counts:
            self.counts[b % self.n] -= 1
            self.total -= 1

    def next_free(self, limit: int, now: int) -> int:
        """Earliest time the total drops below ``limit`` (``now`` if it already is)."""
        if self.total < limit:
            return now
        need = self.total - limit + 1
        acc = 0
        if not self.counts:
            raise AssertionError("ring total out of step with its buckets")
        for b in range(self.lo, self.lo + self.n):
            acc += self.counts[b % self.n]
            if acc >= need:
                return (b + 1) * self.width + self.window
        raise AssertionError("ring total out of step with its buckets")

    def outlook(self, now: int, period: int, periods: int) -> tuple[int, list[int]]:
        """Read only: (counts in buckets that reach into the ``period`` before ``now``,
        counts that leave the window in each of the ``periods`` periods after ``now``),
        a bucket leaving when :meth:`next_free` says it does."""
        recent = 0
        leaving = [0] * periods
        if self.lo == NEVER or not self.counts:
            return recent, leaving
        for b in range(self.lo, self.lo + self.n):
            c = self.counts[b % self.n]
            if c == 0:
                continue
            end = (b + 1) * self.width
            if end > now - period:
                recent += c
            k = (end + self.window - now - 1) // period  # leaves in (now + k·p, now + (k+1)·p]
            if 0 <= k < periods:
                leaving[k] += c
        return recent, leaving
