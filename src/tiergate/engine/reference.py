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
* Memory: every recipient table has a nominal capacity (a power of two, at
  least :data:`INITIAL_CAPACITY`; number tables start at
  :data:`NUMBER_INITIAL_CAPACITY`) filled to at most 70 %. When an insert finds
  the table full, expired entries are reclaimed first; the capacity doubles
  unless that freed at least half. A scope entry is expired when it is not
  opted out and its every time is older than the scope's clock minus the
  reclaim horizon (longest window plus one bucket, or the marketing frequency
  window if longer). A number entry (window, entry point window and pair-rate
  TAT) is expired once every time in it is at or before its scope's clock:
  from then on it changes no decision. The compiled engine follows the same
  rule, so both reclaim at the same moments and keep giving identical
  answers; its hash tables size their slots on their own. Recipient keys are
  1 .. 2**54 - 1.
* Snapshots (:meth:`Engine.snapshot`) are little-endian fixed-width records,
  byte-identical between the two engines; either restores the other's.

Snapshot format, version 2 (all integers little-endian; ``q`` signed and
``Q`` unsigned 64-bit, ``I`` unsigned 32-bit, ``B`` one byte):

* header ``<8sIIqqqqII``: magic ``TGENGINE``, format version, reserved 0,
  bucket_ms, window_ms, long_bucket_ms, long_window_ms, scopes, numbers;
* per scope ``<qqq``: freq_cap, freq_window_ms, clock (latest time seen);
  then three rings (24 h, 7 d unique, 7 d slots), each ``<qqq`` (buckets n,
  oldest live bucket, total) and n ``q`` counts, bucket ``b`` at ``b mod n``;
  then the table ``<QQ`` (capacity, entries) and its entries sorted by key,
  each ``<QqQqqqqB``: key, last_counted, slot state (bit 11: fresh; bits
  0 .. 10: generation; version 1 held the creating ticket id here, read as
  state 0), 4 marketing times, opt-out;
* per number ``<Iqqqqqq``: scope, clock, throughput TAT (µs), throughput
  interval and tolerance (µs), pair interval and tolerance (ms); then its
  table ``<QQ`` and entries sorted by key, each ``<Qqqq``: key,
  window_until, fep_until, pair TAT (ms).

A reader refuses a newer version with a ValueError; a format change bumps
:data:`SNAPSHOT_VERSION`.

Neither engine is safe for concurrent use from several threads; the service
serialises calls (the compiled engine never releases the GIL).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

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
    MAX_RECIPIENT_KEY,
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

#: Times (ms) the engine accepts: far beyond any real clock, small enough that
#: microsecond and window arithmetic never overflows 64 bits.
MAX_TIME = 1 << 50
#: Longest bucket width or window (ms), and most buckets in one ring.
MAX_WINDOW = 1 << 40
MAX_RING_BUCKETS = 1 << 20
#: Largest GCRA burst tolerance ((burst - 1) * interval).
MAX_TOLERANCE = 1 << 52

#: Recipient tables start with this nominal capacity and double when 70 % full.
INITIAL_CAPACITY = 16
#: Number tables start nominally larger: their entries expire within seconds to
#: days (pair-rate TATs, windows), and a small table would reclaim every few inserts.
NUMBER_INITIAL_CAPACITY = 4096
#: Largest capacity a snapshot may declare.
MAX_CAPACITY = 1 << 40

#: Snapshot header: magic, then the format version this engine writes.
SNAPSHOT_MAGIC = b"TGENGINE"
SNAPSHOT_VERSION = 2

#: Slot stamps and states: an admit that creates a slot answers the stamp
#: ``((now + MAX_TIME) << SLOT_GEN_BITS) | gen``; a release must name it.
SLOT_GEN_BITS = 11
SLOT_GEN_MAX = (1 << SLOT_GEN_BITS) - 1
SLOT_FRESH = 1 << SLOT_GEN_BITS

Decision = tuple[int, int, int, int, int, int, int]
"""(decision, reason, retry_at_ms, counted, used, prev_counted, slot)"""

_U64 = (1 << 64) - 1
#: Largest recipient key: the range constants.recipient_key packs E.164 numbers
#: into (the compiled engine keeps its probe distance and flags above it).
MAX_KEY = MAX_RECIPIENT_KEY
_HEADER = struct.Struct("<8sIIqqqqII")
_SCOPE = struct.Struct("<qqq")
_RING = struct.Struct("<qqq")
_NUMBER = struct.Struct("<Iqqqqqq")
_TABLE = struct.Struct("<QQ")
_SCOPE_ENTRY = struct.Struct("<QqQ" + "q" * MARKETING_HISTORY + "B")
_NUMBER_ENTRY = struct.Struct("<Qqqq")


def max_fill(capacity: int) -> int:
    """Entries a table of ``capacity`` slots holds before it must make room."""
    return capacity * 7 // 10


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _check_time(name: str, value: int) -> None:
    if not -MAX_TIME <= value <= MAX_TIME:
        raise ValueError(f"{name} must be within ±2**50 ms, got {value}")


def _check_recipient(name: str, value: int) -> None:
    if not 0 < value <= MAX_KEY:
        raise ValueError(f"{name} must be a recipient key in 1 .. 2**54 - 1, got {value}")


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
    """One recipient in a limit scope. ``fresh``: its latest counting admit
    created the slot and no later admit relied on it; ``gen``: the generation
    of the latest slot created (1 .. 2 047, then 1 again; 0 before the
    first), which tells apart slots created within one millisecond."""

    __slots__ = ("fresh", "gen", "last_counted", "marketing", "opt_out")

    def __init__(self) -> None:
        self.last_counted = NEVER
        self.fresh = False
        self.gen = 0
        self.opt_out = False
        self.marketing = [NEVER] * MARKETING_HISTORY

    def expired(self, cut: int) -> bool:
        return not self.opt_out and self.last_counted < cut and all(t < cut for t in self.marketing)


class NumberEntry:
    __slots__ = ("fep_until", "pair_tat", "window_until")

    def __init__(self) -> None:
        self.window_until = NEVER
        self.fep_until = NEVER
        self.pair_tat = NEVER

    def expired(self, cut: int) -> bool:
        return self.window_until < cut and self.fep_until < cut and self.pair_tat < cut


class Scope:
    """A limit scope: a business portfolio or a single phone number."""

    __slots__ = (
        "capacity",
        "freq_cap",
        "freq_window",
        "horizon",
        "last_now",
        "ring7",
        "ring24",
        "slots7",
        "table",
    )

    def __init__(self, engine: Engine, freq_cap: int, freq_window: int) -> None:
        self.table: dict[int, ScopeEntry] = {}
        self.capacity = INITIAL_CAPACITY
        self.ring24 = Ring(engine.bucket_ms, engine.window_ms, strict=False)
        self.ring7 = Ring(engine.long_bucket_ms, engine.long_window_ms, strict=True)
        self.slots7 = Ring(engine.long_bucket_ms, engine.long_window_ms, strict=True)
        self.freq_cap = freq_cap
        self.freq_window = freq_window
        self.horizon = engine.horizon_ms
        self.last_now = NEVER

    def clamp(self, now: int) -> int:
        if now < self.last_now:
            return self.last_now
        self.last_now = now
        self.ring24.advance(now)
        self.ring7.advance(now)
        self.slots7.advance(now)
        return now

    def reclaim(self) -> int:
        cut = self.last_now - self.horizon
        dead = [k for k, e in self.table.items() if e.expired(cut)]
        for k in dead:
            del self.table[k]
        return len(dead)

    def insert(self, recipient: int) -> ScopeEntry:
        if len(self.table) >= max_fill(self.capacity):
            self.reclaim()
            if len(self.table) >= max_fill(self.capacity) // 2:
                self.capacity *= 2
        e = self.table[recipient] = ScopeEntry()
        return e


class Number:
    """A business phone number (a sender)."""

    __slots__ = (
        "capacity",
        "clock",
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
        self.capacity = NUMBER_INITIAL_CAPACITY
        self.clock = NEVER  # latest time seen for this number
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
        tput_tolerance = (tput_burst - 1) * tput_interval_us
        pair_tolerance = (pair_burst - 1) * pair_interval_ms
        if max(tput_interval_us, pair_interval_ms, tput_tolerance, pair_tolerance) > MAX_TOLERANCE:
            raise ValueError("interval * burst must stay below 2**52")
        self.tput_interval = tput_interval_us
        self.tput_tolerance = tput_tolerance
        self.pair_interval = pair_interval_ms
        self.pair_tolerance = pair_tolerance

    def reclaim(self, cut: int) -> int:
        dead = [k for k, e in self.table.items() if e.expired(cut)]
        for k in dead:
            del self.table[k]
        return len(dead)

    def insert(self, recipient: int, cut: int) -> NumberEntry:
        if len(self.table) >= max_fill(self.capacity):
            self.reclaim(cut)
            if len(self.table) >= max_fill(self.capacity) // 2:
                self.capacity *= 2
        e = self.table[recipient] = NumberEntry()
        return e


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
        if max(bucket_ms, window_ms, long_bucket_ms, long_window_ms) > MAX_WINDOW:
            raise ValueError("bucket widths and windows must be <= 2**40 ms")
        if max(window_ms // bucket_ms, long_window_ms // long_bucket_ms) > MAX_RING_BUCKETS:
            raise ValueError("a window may span at most 2**20 buckets")
        self.bucket_ms = bucket_ms
        self.window_ms = window_ms
        self.long_bucket_ms = long_bucket_ms
        self.long_window_ms = long_window_ms
        #: Entries older than a table's clock minus this are reclaimable.
        self.horizon_ms = max(window_ms + bucket_ms, long_window_ms + long_bucket_ms)
        self.scopes: list[Scope] = []
        self.numbers: list[Number] = []

    def _scope(self, scope: int) -> Scope:
        if not 0 <= scope < len(self.scopes):
            raise IndexError(f"scope {scope} out of range")
        return self.scopes[scope]

    def _number(self, number: int) -> Number:
        if not 0 <= number < len(self.numbers):
            raise IndexError(f"number {number} out of range")
        return self.numbers[number]

    def _number_cut(self, num: Number) -> int:
        """A number's entries expire once every time in them is at or before its
        scope's clock: decisions for the number (clamped to that clock) see such an
        entry exactly as no entry at all."""
        return self.scopes[num.scope].last_now + 1

    # -- configuration -------------------------------------------------------

    def add_scope(self, freq_cap: int = 0, freq_window_ms: int = 0) -> int:
        self._check_scope_params(freq_cap, freq_window_ms)
        self.scopes.append(Scope(self, 0, 0))
        idx = len(self.scopes) - 1
        self.set_scope_params(idx, freq_cap, freq_window_ms)
        return idx

    @staticmethod
    def _check_scope_params(freq_cap: int, freq_window_ms: int) -> None:
        if not 0 <= freq_cap <= MARKETING_HISTORY:
            raise ValueError(f"freq_cap must be 0..{MARKETING_HISTORY}")
        if not 0 <= freq_window_ms <= MAX_TIME:
            raise ValueError("freq_window_ms must be 0..2**50")

    def set_scope_params(self, scope: int, freq_cap: int, freq_window_ms: int) -> None:
        self._check_scope_params(freq_cap, freq_window_ms)
        s = self._scope(scope)
        s.freq_cap = freq_cap
        s.freq_window = freq_window_ms
        s.horizon = max(self.horizon_ms, freq_window_ms)

    def add_number(
        self,
        scope: int,
        tput_interval_us: int = 12_500,
        tput_burst: int = 1,
        pair_interval_ms: int = 6_000,
        pair_burst: int = 1,
    ) -> int:
        self._scope(scope)
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
        self._number(number).set_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)

    # -- decisions -----------------------------------------------------------

    def decide(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int
    ) -> Decision:
        s = self._scope(scope)
        num = self._number(number)
        _check_time("now", now)
        _check_recipient("recipient", recipient)
        if not 0 <= flags < 1 << 32:
            raise ValueError(f"flags must be a 32-bit unsigned value, got {flags}")
        if not -(1 << 63) <= limit < 1 << 63:
            raise ValueError(f"limit must be a signed 64-bit value, got {limit}")
        return self._decide(now, s, num, recipient, flags, limit)

    def _decide(
        self, now: int, s: Scope, num: Number, recipient: int, flags: int, limit: int
    ) -> Decision:
        now = s.clamp(now)
        if now > num.clock:
            num.clock = now
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
                return (REJECT, OUTSIDE_WINDOW, 0, 0, ring.total, last, 0)
            # 5. opted-out recipients get no marketing
            if marketing and se is not None and se.opt_out:
                return (REJECT, RECIPIENT_OPTED_OUT, 0, 0, ring.total, last, 0)
            # 6. messaging limit (business-initiated messages only)
            if counting:
                if flags & F_RESTRICTED:
                    return (REJECT, SENDER_RESTRICTED, 0, 0, ring.total, last, 0)
                if needs_slot and ring.total >= limit:
                    if limit <= 0:
                        return (REJECT, MESSAGING_LIMIT, 0, 0, ring.total, last, 0)
                    retry = ring.next_free(limit, now)
                    return (RETRY_LATER, MESSAGING_LIMIT, retry, 0, ring.total, last, 0)
            # 7. protective rules
            if marketing:
                if s.freq_cap > 0 and se is not None:
                    horizon = now - s.freq_window
                    recent = sorted(t for t in se.marketing if t > horizon)
                    if len(recent) >= s.freq_cap:
                        retry = recent[len(recent) - s.freq_cap] + s.freq_window
                        return (RETRY_LATER, MARKETING_FREQUENCY, retry, 0, ring.total, last, 0)
                if flags & F_QUALITY_BLOCK:
                    return (REJECT, QUALITY_PROTECTION, 0, 0, ring.total, last, 0)
            # 8. sender throughput (GCRA, microseconds)
            if tput_tat - num.tput_tolerance > now_us:
                retry = _ceil_div(tput_tat - num.tput_tolerance, 1000)
                return (RETRY_LATER, THROUGHPUT, retry, 0, ring.total, last, 0)
            # 9. pair rate (GCRA, milliseconds)
            if pair_tat - num.pair_tolerance > now:
                retry = pair_tat - num.pair_tolerance
                return (RETRY_LATER, PAIR_RATE, retry, 0, ring.total, last, 0)

        counted = 1 if needs_slot else 0
        if flags & F_DRY_RUN:
            return (ADMIT, OK, 0, counted, ring.total + counted, last, 0)

        # every check passed: consume
        slot = 0
        if counting:
            if se is None:
                se = s.insert(recipient)
            for r in (ring, s.ring7):
                r.remove(last)
                r.add(now)
            se.last_counted = now
            if needs_slot:
                s.slots7.add(now)
                se.gen = se.gen + 1 if se.gen < SLOT_GEN_MAX else 1
                se.fresh = True
                slot = ((now + MAX_TIME) << SLOT_GEN_BITS) | se.gen
            else:
                se.fresh = False  # this admit relies on the earlier slot
        if marketing:
            if se is None:
                se = s.insert(recipient)
            hist = se.marketing
            hist[hist.index(min(hist))] = now
        num.tput_tat = tput_tat + num.tput_interval
        if ne is None:
            ne = num.insert(recipient, self._number_cut(num))
        ne.pair_tat = pair_tat + num.pair_interval
        return (ADMIT, OK, 0, counted, ring.total, last, slot)

    def decide_batch(self, batch: DecisionBatch) -> None:
        """Decide every request of ``batch`` in order; fills its output columns.

        The whole batch is validated first (ValueError / IndexError naming the
        item), so a bad item decides nothing.
        """
        n = len(batch.now)
        for col in ("scope", "number", "recipient", "flags", "limit"):
            if len(getattr(batch, col)) != n:
                raise ValueError(
                    f"batch column {col} has {len(getattr(batch, col))} items, not {n}"
                )
        ns, nn = len(self.scopes), len(self.numbers)
        for i in range(n):
            if not 0 <= batch.scope[i] < ns:
                raise IndexError(f"batch item {i}: scope {batch.scope[i]} out of range")
            if not 0 <= batch.number[i] < nn:
                raise IndexError(f"batch item {i}: number {batch.number[i]} out of range")
            if not 0 < batch.recipient[i] <= MAX_KEY:
                raise ValueError(
                    f"batch item {i}: recipient key {batch.recipient[i]} is not in 1 .. 2**54 - 1"
                )
            if not -MAX_TIME <= batch.now[i] <= MAX_TIME:
                raise ValueError(f"batch item {i}: now must be within ±2**50 ms")
        batch.prepare_outputs()
        for i in range(n):
            d = self._decide(
                batch.now[i],
                self.scopes[batch.scope[i]],
                self.numbers[batch.number[i]],
                batch.recipient[i],
                batch.flags[i],
                batch.limit[i],
            )
            batch.decision[i] = d[0]
            batch.reason[i] = d[1]
            batch.retry_at[i] = d[2]
            batch.counted[i] = d[3]
            batch.used[i] = d[4]
            batch.prev_counted[i] = d[5]
            batch.slot[i] = d[6]

    # -- feedback ------------------------------------------------------------

    def release(self, scope: int, recipient: int, slot: int, prev_counted: int) -> bool:
        """Give back the slot an admit created (``slot``: its decision's ``slot``
        stamp), if no later admit relied on it.

        ``prev_counted`` is the decision's ``prev_counted``: never later than
        the time the admit counted the recipient. Stamps come back from
        gateways inside tickets, so one that cannot be a stamp this engine
        gave (a key, stamp or time out of range, or a ``prev_counted`` after
        the slot) releases nothing and returns False, like an unknown one.
        """
        s = self._scope(scope)
        if not (0 < recipient <= _U64 and 0 < slot <= _U64):
            return False
        if prev_counted != NEVER and not -MAX_TIME <= prev_counted <= MAX_TIME:
            return False
        gen, t = slot & SLOT_GEN_MAX, (slot >> SLOT_GEN_BITS) - MAX_TIME
        if gen == 0 or t > MAX_TIME:
            return False
        se = s.table.get(recipient)
        if se is None or not se.fresh or se.gen != gen or se.last_counted != t:
            return False
        if prev_counted > t:
            return False
        for r in (s.ring24, s.ring7):
            r.remove(t)
            r.add(prev_counted)
        s.slots7.remove(t)
        se.last_counted = prev_counted
        se.fresh = False
        return True

    def open_window(self, number: int, recipient: int, window_until: int, fep_until: int) -> None:
        """Open or extend a window; never shortens one already open longer."""
        num = self._number(number)
        _check_recipient("recipient", recipient)
        if window_until != NEVER:
            _check_time("window_until", window_until)
        if fep_until != NEVER:
            _check_time("fep_until", fep_until)
        ne = num.table.get(recipient)
        if ne is None:
            ne = num.insert(recipient, self._number_cut(num))
        ne.window_until = max(ne.window_until, window_until)
        ne.fep_until = max(ne.fep_until, fep_until)

    def close_window(self, number: int, recipient: int) -> None:
        ne = self._number(number).table.get(recipient)
        if ne is not None:
            ne.window_until = NEVER
            ne.fep_until = NEVER

    def set_opt_out(self, scope: int, recipient: int, opted_out: bool) -> None:
        s = self._scope(scope)
        _check_recipient("recipient", recipient)
        se = s.table.get(recipient)
        if se is None:
            if not opted_out:
                return
            se = s.insert(recipient)
        se.opt_out = bool(opted_out)

    def slow_throughput(self, number: int, now: int, pause_ms: int) -> None:
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        num = self._number(number)
        _check_time("now", now)
        if not 0 <= pause_ms <= MAX_TIME:
            raise ValueError("pause_ms must be 0..2**50")
        if now > num.clock:
            num.clock = now
        num.tput_tat = max(num.tput_tat, (now + pause_ms) * 1000 + num.tput_tolerance)

    # -- memory --------------------------------------------------------------

    def reclaim(self, now: int) -> int:
        """Drop every expired entry (as of ``now``, clamped per scope); return how many.

        Advances each scope's clock to ``now`` like any call that takes time.
        """
        _check_time("now", now)
        removed = 0
        for s in self.scopes:
            s.clamp(now)
            removed += s.reclaim()
        for num in self.numbers:
            if now > num.clock:
                num.clock = now
            removed += num.reclaim(self._number_cut(num))
        return removed

    # -- reports -------------------------------------------------------------

    def usage(self, scope: int, now: int, limit: int) -> tuple[int, int, int, int]:
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``."""
        s = self._scope(scope)
        _check_time("now", now)
        now = s.clamp(now)
        nxt = s.ring24.next_free(limit, now) if limit > 0 else 0
        return (s.ring24.total, nxt, s.ring7.total, s.slots7.total)

    def open_windows(self, number: int, now: int) -> int:
        return sum(
            1
            for ne in self._number(number).table.values()
            if now < ne.window_until or now < ne.fep_until
        )

    def lookup(self, scope: int, number: int, recipient: int) -> tuple[int, bool, int, int, int]:
        """(last_counted, opted_out, window_until, fep_until, pair_tat) of one recipient."""
        se = self._scope(scope).table.get(recipient)
        ne = self._number(number).table.get(recipient)
        return (
            se.last_counted if se is not None else NEVER,
            se.opt_out if se is not None else False,
            ne.window_until if ne is not None else NEVER,
            ne.fep_until if ne is not None else NEVER,
            ne.pair_tat if ne is not None else NEVER,
        )

    def scope_now(self, scope: int) -> int:
        return self._scope(scope).last_now

    def entries(self) -> int:
        """Recipient entries held in all tables."""
        return sum(len(s.table) for s in self.scopes) + sum(len(n.table) for n in self.numbers)

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole engine state as bytes (format :data:`SNAPSHOT_VERSION`)."""
        out: list[bytes] = [
            _HEADER.pack(
                SNAPSHOT_MAGIC,
                SNAPSHOT_VERSION,
                0,
                self.bucket_ms,
                self.window_ms,
                self.long_bucket_ms,
                self.long_window_ms,
                len(self.scopes),
                len(self.numbers),
            )
        ]
        for s in self.scopes:
            out.append(_SCOPE.pack(s.freq_cap, s.freq_window, s.last_now))
            for r in (s.ring24, s.ring7, s.slots7):
                out.append(_RING.pack(r.n, r.lo, r.total))
                out.append(struct.pack(f"<{r.n}q", *r.counts))
            out.append(_TABLE.pack(s.capacity, len(s.table)))
            pack = _SCOPE_ENTRY.pack
            for key in sorted(s.table):
                e = s.table[key]
                state = (SLOT_FRESH if e.fresh else 0) | e.gen
                out.append(pack(key, e.last_counted, state, *e.marketing, e.opt_out))
        for num in self.numbers:
            out.append(
                _NUMBER.pack(
                    num.scope,
                    num.clock,
                    num.tput_tat,
                    num.tput_interval,
                    num.tput_tolerance,
                    num.pair_interval,
                    num.pair_tolerance,
                )
            )
            out.append(_TABLE.pack(num.capacity, len(num.table)))
            pack = _NUMBER_ENTRY.pack
            for key in sorted(num.table):
                ne = num.table[key]
                out.append(pack(key, ne.window_until, ne.fep_until, ne.pair_tat))
        return b"".join(out)

    def copy_sizes(self) -> tuple[int, ...]:
        """What ``copy_room`` needs to know ahead of a copy (nothing, here)."""
        return ()

    @staticmethod
    def copy_room(sizes: tuple[int, ...]) -> object:
        """Memory for a copy, made ahead in another thread (the compiled engine's
        tables; nothing here)."""
        return None

    def copy(self, room: object = None) -> Engine:
        """A new engine holding this one's state, sharing nothing with it (what a
        snapshot is serialised from in another thread). Here by way of the
        snapshot format; the compiled engine copies its tables as they lie."""
        return type(self).restore(self.snapshot())

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """A new engine holding the state ``data`` (from either engine's snapshot) describes."""
        r = _Reader(data)
        magic, version, _, bucket, window, long_bucket, long_window, n_scopes, n_numbers = r.take(
            _HEADER
        )
        if magic != SNAPSHOT_MAGIC:
            raise ValueError("not a tiergate engine snapshot (bad magic)")
        if version > SNAPSHOT_VERSION:
            raise ValueError(
                f"engine snapshot format version {version} is newer than this tiergate "
                f"supports ({SNAPSHOT_VERSION}); upgrade tiergate to load it"
            )
        if version < 1:
            raise ValueError(f"engine snapshot format version {version} is not valid")
        eng = cls(bucket, window, long_bucket, long_window)
        for _ in range(n_scopes):
            freq_cap, freq_window, last_now = r.take(_SCOPE)
            s = eng.scopes[eng.add_scope(freq_cap, freq_window)]
            _check_snapshot_time(last_now)
            s.last_now = last_now
            for ring in (s.ring24, s.ring7, s.slots7):
                n, lo, total = r.take(_RING)
                if n != ring.n:
                    raise ValueError("engine snapshot is corrupt: ring size does not match")
                counts = list(r.take(struct.Struct(f"<{n}q")))
                if sum(counts) != total or min(counts) < 0:
                    raise ValueError("engine snapshot is corrupt: ring total does not match")
                ring.lo, ring.total, ring.counts = lo, total, counts
            s.capacity, count = _take_table(r)
            for key, last, state, *rest in _take_entries(r, _SCOPE_ENTRY, count):
                # format 1 kept the ticket id that created the slot: such
                # tickets name no slot stamp, so their slots restore as not
                # releasable
                state = state if version >= 2 else 0
                _check_snapshot_time(last)
                if state > SLOT_FRESH | SLOT_GEN_MAX:
                    raise ValueError("engine snapshot is corrupt: slot state out of range")
                e = ScopeEntry()
                e.last_counted = last
                e.fresh, e.gen = bool(state & SLOT_FRESH), state & SLOT_GEN_MAX
                e.marketing = list(rest[:MARKETING_HISTORY])
                e.opt_out = bool(rest[MARKETING_HISTORY])
                s.table[key] = e
        for _ in range(n_numbers):
            scope, clock, tput_tat, t_int, t_tol, p_int, p_tol = r.take(_NUMBER)
            if scope >= n_scopes:
                raise ValueError("engine snapshot is corrupt: number refers to a missing scope")
            if t_tol % t_int or p_tol % p_int:
                raise ValueError("engine snapshot is corrupt: bucket tolerance")
            num = eng.numbers[
                eng.add_number(scope, t_int, t_tol // t_int + 1, p_int, p_tol // p_int + 1)
            ]
            _check_snapshot_time(clock)
            num.clock = clock
            num.tput_tat = tput_tat
            num.capacity, count = _take_table(r)
            for key, wu, fu, pt in _take_entries(r, _NUMBER_ENTRY, count):
                ne = NumberEntry()
                ne.window_until, ne.fep_until, ne.pair_tat = wu, fu, pt
                num.table[key] = ne
        if r.pos != len(data):
            raise ValueError("engine snapshot is corrupt: trailing bytes")
        return eng


def _check_snapshot_time(t: int) -> None:
    if t != NEVER and not -MAX_TIME <= t <= MAX_TIME:
        raise ValueError("engine snapshot is corrupt: time out of range")


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data).cast("B")
        self.pos = 0

    def take(self, st: struct.Struct) -> tuple[Any, ...]:
        end = self.pos + st.size
        if end > len(self.data):
            raise ValueError("engine snapshot is truncated")
        vals = st.unpack_from(self.data, self.pos)
        self.pos = end
        return vals

    def block(self, size: int) -> memoryview:
        end = self.pos + size
        if end > len(self.data):
            raise ValueError("engine snapshot is truncated")
        view = self.data[self.pos : end]
        self.pos = end
        return view


def _take_table(r: _Reader) -> tuple[int, int]:
    capacity, count = r.take(_TABLE)
    if (
        capacity < INITIAL_CAPACITY
        or capacity & (capacity - 1)
        or capacity > MAX_CAPACITY
        or count > max_fill(capacity)
    ):
        raise ValueError("engine snapshot is corrupt: table capacity")
    return capacity, count


def _take_entries(r: _Reader, st: struct.Struct, count: int) -> Iterator[tuple[int, ...]]:
    prev = 0
    for rec in st.iter_unpack(r.block(st.size * count)):
        if rec[0] <= prev:
            raise ValueError("engine snapshot is corrupt: keys not strictly ascending")
        prev = rec[0]
        yield rec
