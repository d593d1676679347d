"""The pure-Python reference engine: the specification the compiled engine mirrors.

Readable first: dicts for recipient tables, lists for bucket rings. The
compiled engine (``ext/tiergate/_native/engine.pyx``) must give identical
answers for identical calls; differential tests drive both.

Semantics (DESIGN.md §5):

* Time is an argument (Unix ms). Per limit scope it is clamped to the latest
  seen, so it never goes backwards.
* A recipient is counted at ``now`` when its last counted time ``t`` satisfies
  ``t > now - window``. The 24 h ring is conservative for the limit: bucket
  ``b`` (covering ``[b*g, (b+1)*g)``) counts while ``now < (b+1)*g + window``,
  so the ring total never under-states, and a slot is never reported free
  before it truly is. The 7 d rings under-state instead: a bucket counts only
  while it lies wholly inside the window, so upgrade eligibility is never
  reported early.
* Nothing is consumed unless every check passes.
"""

from __future__ import annotations

from .batch import DecisionBatch
from .constants import (
    ADMIT,
    F_DRY_RUN,
    F_FEP_FREE_FORM,
    F_FORCE,
    F_MARKETING,
    F_QUALITY_BLOCK,
    F_RESTRICTED,
    F_TEMPLATE,
    MARKETING_FREQUENCY,
    MARKETING_HISTORY,
    MESSAGING_LIMIT,
    OK,
    OUTSIDE_WINDOW,
    PAIR_RATE,
    QUALITY_PROTECTION,
    RECIPIENT_OPTED_OUT,
    REJECT,
    RETRY_LATER,
    SENDER_RESTRICTED,
    THROUGHPUT,
)

#: "Never happened": older than any real time, and safe to add a window to.
NEVER = -(1 << 62)

Decision = tuple[int, int, int, int, int, int]
"""(decision, reason, retry_at_ms, counted, used, prev_counted)"""


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


class Ring:
    """Counts of last-counted times by time bucket over a rolling window.

    ``strict=False`` (limit): a bucket counts while any part of it is inside
    the window. ``strict=True`` (eligibility): only while wholly inside.
    """

    __slots__ = ("counts", "lo", "n", "strict", "total", "width", "window")

    def __init__(self, width: int, window: int, strict: bool) -> None:
        self.width = width
        self.window = window
        self.strict = strict
        self.n = window // width + 2
        self.counts = [0] * self.n
        self.lo = NEVER  # oldest live absolute bucket index
        self.total = 0

    def low_bucket(self, now: int) -> int:
        return (now - self.window) // self.width + (1 if self.strict else 0)

    def advance(self, now: int) -> None:
        new_lo = self.low_bucket(now)
        if new_lo <= self.lo:
            return
        if new_lo - self.lo >= self.n:
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
            self.counts[b % self.n] += 1
            self.total += 1

    def remove(self, t: int) -> None:
        b = t // self.width
        if b >= self.lo:
            self.counts[b % self.n] -= 1
            self.total -= 1

    def next_free(self, limit: int, now: int) -> int:
        """Earliest time the total drops below ``limit`` (``now`` if it already is)."""
        if self.total < limit:
            return now
        need = self.total - limit + 1
        acc = 0
        for b in range(self.lo, self.lo + self.n):
            acc += self.counts[b % self.n]
            if acc >= need:
                return (b + 1) * self.width + self.window
        raise AssertionError("ring total out of step with its buckets")


class ScopeEntry:
    __slots__ = ("last_counted", "last_ticket", "marketing", "opt_out")

    def __init__(self) -> None:
        self.last_counted = NEVER
        self.last_ticket = 0
        self.opt_out = False
        self.marketing = [NEVER] * MARKETING_HISTORY


class NumberEntry:
    __slots__ = ("fep_until", "pair_tat", "window_until")

    def __init__(self) -> None:
        self.window_until = NEVER
        self.fep_until = NEVER
        self.pair_tat = NEVER


class Scope:
    """A limit scope: a business portfolio or a single phone number."""

    __slots__ = ("freq_cap", "freq_window", "last_now", "ring24", "ring7", "slots7", "table")

    def __init__(self, engine: Engine, freq_cap: int, freq_window: int) -> None:
        self.table: dict[int, ScopeEntry] = {}
        self.ring24 = Ring(engine.bucket_ms, engine.window_ms, strict=False)
        self.ring7 = Ring(engine.long_bucket_ms, engine.long_window_ms, strict=True)
        self.slots7 = Ring(engine.long_bucket_ms, engine.long_window_ms, strict=True)
        self.freq_cap = freq_cap
        self.freq_window = freq_window
        self.last_now = NEVER

    def clamp(self, now: int) -> int:
        if now < self.last_now:
            return self.last_now
        self.last_now = now
        self.ring24.advance(now)
        self.ring7.advance(now)
        self.slots7.advance(now)
        return now


class Number:
    """A business phone number (a sender)."""

    __slots__ = (
        "pair_interval",
        "pair_tolerance",
        "scope",
        "table",
        "tput_interval",
        "tput_tat",
        "tput_tolerance",
    )

    def __init__(self, scope: int) -> None:
        self.scope = scope
        self.table: dict[int, NumberEntry] = {}
        self.tput_tat = NEVER  # microseconds
        self.tput_interval = 1
        self.tput_tolerance = 0
        self.pair_interval = 1
        self.pair_tolerance = 0

    def set_params(
        self, tput_interval_us: int, tput_burst: int, pair_interval_ms: int, pair_burst: int
    ) -> None:
        if tput_interval_us < 1 or tput_burst < 1 or pair_interval_ms < 1 or pair_burst < 1:
            raise ValueError("intervals and bursts must be >= 1")
        self.tput_interval = tput_interval_us
        self.tput_tolerance = (tput_burst - 1) * tput_interval_us
        self.pair_interval = pair_interval_ms
        self.pair_tolerance = (pair_burst - 1) * pair_interval_ms


class Engine:
    """Recipient tables, bucket rings and GCRA buckets; decisions in one call."""

    def __init__(
        self,
        bucket_ms: int = 60_000,
        window_ms: int = 86_400_000,
        long_bucket_ms: int = 3_600_000,
        long_window_ms: int = 604_800_000,
    ) -> None:
        if min(bucket_ms, window_ms, long_bucket_ms, long_window_ms) < 1:
            raise ValueError("bucket widths and windows must be >= 1 ms")
        self.bucket_ms = bucket_ms
        self.window_ms = window_ms
        self.long_bucket_ms = long_bucket_ms
        self.long_window_ms = long_window_ms
        self.scopes: list[Scope] = []
        self.numbers: list[Number] = []

    # -- configuration -------------------------------------------------------

    def add_scope(self, freq_cap: int = 0, freq_window_ms: int = 0) -> int:
        self.scopes.append(Scope(self, 0, 0))
        idx = len(self.scopes) - 1
        self.set_scope_params(idx, freq_cap, freq_window_ms)
        return idx

    def set_scope_params(self, scope: int, freq_cap: int, freq_window_ms: int) -> None:
        if not 0 <= freq_cap <= MARKETING_HISTORY:
            raise ValueError(f"freq_cap must be 0..{MARKETING_HISTORY}")
        if freq_window_ms < 0:
            raise ValueError("freq_window_ms must be >= 0")
        s = self.scopes[scope]
        s.freq_cap = freq_cap
        s.freq_window = freq_window_ms

    def add_number(
        self,
        scope: int,
        tput_interval_us: int = 12_500,
        tput_burst: int = 1,
        pair_interval_ms: int = 6_000,
        pair_burst: int = 1,
    ) -> int:
        if not 0 <= scope < len(self.scopes):
            raise IndexError("scope out of range")
        n = Number(scope)
        n.set_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)
        self.numbers.append(n)
        return len(self.numbers) - 1

    def set_number_params(
        self,
        number: int,
        tput_interval_us: int,
        tput_burst: int,
        pair_interval_ms: int,
        pair_burst: int,
    ) -> None:
        self.numbers[number].set_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)

    # -- decisions -----------------------------------------------------------

    def decide(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int, ticket: int
    ) -> Decision:
        s = self.scopes[scope]
        num = self.numbers[number]
        now = s.clamp(now)
        se = s.table.get(recipient)
        ne = num.table.get(recipient)
        template = flags & F_TEMPLATE
        marketing = flags & F_MARKETING
        force = flags & F_FORCE
        last = se.last_counted if se is not None else NEVER
        in_window = ne is not None and now < ne.window_until
        in_fep = ne is not None and now < ne.fep_until
        counting = bool(template) and not in_window and not in_fep
        already = counting and last > now - self.window_ms
        needs_slot = counting and not already
        ring = s.ring24
        now_us = now * 1000
        tput_tat = max(num.tput_tat, now_us)
        pair_tat = max(ne.pair_tat if ne is not None else NEVER, now)

        if not force:
            # 4. free-form needs an open customer service window
            if not template and not (in_window or (in_fep and flags & F_FEP_FREE_FORM)):
                return (REJECT, OUTSIDE_WINDOW, 0, 0, ring.total, last)
            # 5. opted-out recipients get no marketing
            if marketing and se is not None and se.opt_out:
                return (REJECT, RECIPIENT_OPTED_OUT, 0, 0, ring.total, last)
            # 6. messaging limit (business-initiated messages only)
            if counting:
                if flags & F_RESTRICTED:
                    return (REJECT, SENDER_RESTRICTED, 0, 0, ring.total, last)
                if needs_slot and ring.total >= limit:
                    if limit <= 0:
                        return (REJECT, MESSAGING_LIMIT, 0, 0, ring.total, last)
                    retry = ring.next_free(limit, now)
                    return (RETRY_LATER, MESSAGING_LIMIT, retry, 0, ring.total, last)
            # 7. protective rules
            if marketing:
                if s.freq_cap > 0 and se is not None:
                    horizon = now - s.freq_window
                    recent = sorted(t for t in se.marketing if t > horizon)
                    if len(recent) >= s.freq_cap:
                        retry = recent[len(recent) - s.freq_cap] + s.freq_window
                        return (RETRY_LATER, MARKETING_FREQUENCY, retry, 0, ring.total, last)
                if flags & F_QUALITY_BLOCK:
                    return (REJECT, QUALITY_PROTECTION, 0, 0, ring.total, last)
            # 8. sender throughput (GCRA, microseconds)
            if tput_tat - num.tput_tolerance > now_us:
                retry = _ceil_div(tput_tat - num.tput_tolerance, 1000)
                return (RETRY_LATER, THROUGHPUT, retry, 0, ring.total, last)
            # 9. pair rate (GCRA, milliseconds)
            if pair_tat - num.pair_tolerance > now:
                retry = pair_tat - num.pair_tolerance
                return (RETRY_LATER, PAIR_RATE, retry, 0, ring.total, last)

        counted = 1 if needs_slot else 0
        if flags & F_DRY_RUN:
            return (ADMIT, OK, 0, counted, ring.total + counted, last)

        # every check passed: consume
        if counting:
            if se is None:
                se = s.table[recipient] = ScopeEntry()
            for r in (ring, s.ring7):
                r.remove(last)
                r.add(now)
            se.last_counted = now
            if needs_slot:
                s.slots7.add(now)
                se.last_ticket = ticket
            else:
                se.last_ticket = 0  # this admit relies on the earlier slot
        if marketing:
            if se is None:
                se = s.table[recipient] = ScopeEntry()
            hist = se.marketing
            hist[hist.index(min(hist))] = now
        num.tput_tat = tput_tat + num.tput_interval
        if ne is None:
            ne = num.table[recipient] = NumberEntry()
        ne.pair_tat = pair_tat + num.pair_interval
        return (ADMIT, OK, 0, counted, ring.total, last)

    def decide_batch(self, batch: DecisionBatch) -> None:
        n = batch.prepare_outputs()
        for i in range(n):
            d = self.decide(
                batch.now[i],
                batch.scope[i],
                batch.number[i],
                batch.recipient[i],
                batch.flags[i],
                batch.limit[i],
                batch.ticket[i],
            )
            batch.decision[i] = d[0]
            batch.reason[i] = d[1]
            batch.retry_at[i] = d[2]
            batch.counted[i] = d[3]
            batch.used[i] = d[4]
            batch.prev_counted[i] = d[5]

    # -- feedback ------------------------------------------------------------

    def release(self, scope: int, recipient: int, ticket: int, prev_counted: int) -> bool:
        """Give back the slot ``ticket`` created, if no later admit relied on it."""
        s = self.scopes[scope]
        se = s.table.get(recipient)
        if ticket == 0 or se is None or se.last_ticket != ticket:
            return False
        t = se.last_counted
        for r in (s.ring24, s.ring7):
            r.remove(t)
            r.add(prev_counted)
        s.slots7.remove(t)
        se.last_counted = prev_counted
        se.last_ticket = 0
        return True

    def open_window(self, number: int, recipient: int, window_until: int, fep_until: int) -> None:
        """Open or extend a window; never shortens one already open longer."""
        num = self.numbers[number]
        ne = num.table.get(recipient)
        if ne is None:
            ne = num.table[recipient] = NumberEntry()
        ne.window_until = max(ne.window_until, window_until)
        ne.fep_until = max(ne.fep_until, fep_until)

    def close_window(self, number: int, recipient: int) -> None:
        ne = self.numbers[number].table.get(recipient)
        if ne is not None:
            ne.window_until = NEVER
            ne.fep_until = NEVER

    def set_opt_out(self, scope: int, recipient: int, opted_out: bool) -> None:
        s = self.scopes[scope]
        se = s.table.get(recipient)
        if se is None:
            if not opted_out:
                return
            se = s.table[recipient] = ScopeEntry()
        se.opt_out = opted_out

    def slow_throughput(self, number: int, now: int, pause_ms: int) -> None:
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        num = self.numbers[number]
        num.tput_tat = max(num.tput_tat, (now + pause_ms) * 1000 + num.tput_tolerance)

    # -- reports -------------------------------------------------------------

    def usage(self, scope: int, now: int, limit: int) -> tuple[int, int, int, int]:
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``."""
        s = self.scopes[scope]
        now = s.clamp(now)
        nxt = s.ring24.next_free(limit, now) if limit > 0 else 0
        return (s.ring24.total, nxt, s.ring7.total, s.slots7.total)

    def open_windows(self, number: int, now: int) -> int:
        return sum(
            1
            for ne in self.numbers[number].table.values()
            if now < ne.window_until or now < ne.fep_until
        )

    def lookup(self, scope: int, number: int, recipient: int) -> tuple[int, bool, int, int, int]:
        """(last_counted, opted_out, window_until, fep_until, pair_tat) of one recipient."""
        se = self.scopes[scope].table.get(recipient)
        ne = self.numbers[number].table.get(recipient)
        return (
            se.last_counted if se is not None else NEVER,
            se.opt_out if se is not None else False,
            ne.window_until if ne is not None else NEVER,
            ne.fep_until if ne is not None else NEVER,
            ne.pair_tat if ne is not None else NEVER,
        )

    def scope_now(self, scope: int) -> int:
        return self.scopes[scope].last_now

    def entries(self) -> int:
        """Recipient entries held in all tables."""
        return sum(len(s.table) for s in self.scopes) + sum(len(n.table) for n in self.numbers)
