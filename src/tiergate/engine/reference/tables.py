"""Limit scopes and phone numbers, and their recipient tables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..constants import MARKETING_HISTORY
from .bounds import MAX_TOLERANCE, NEVER
from .ring import Ring
from .warmup import Warmup

if TYPE_CHECKING:
    from .engine import Engine

#: Recipient tables start with this nominal capacity and double when 70 % full.
INITIAL_CAPACITY = 16
#: Number tables start nominally larger: their entries expire within seconds to
#: days (pair-rate TATs, windows), and a small table would reclaim every few inserts.
NUMBER_INITIAL_CAPACITY = 4096
#: Largest capacity a snapshot may declare.
MAX_CAPACITY = 1 << 40


def max_fill(capacity: int) -> int:
    """Entries a table of ``capacity`` slots holds before it must make room."""
    return capacity * 7 // 10


#: A sweep takes one step per this many nominal slots (``capacity >> SWEEP_SHIFT``) ...
SWEEP_SHIFT = 4
#: ... from this nominal capacity on for a number table; below it, one step (its
#: entries live seconds: it sweeps every few thousand inserts, a short pass).
SWEEP_NUMBER_FROM = 1 << 16
_U64 = (1 << 64) - 1


def mix(key: int) -> int:
    """The compiled engine's hash of a recipient key (splitmix64's finalizer)."""
    key = (key + 0x9E3779B97F4A7C15) & _U64
    key = ((key ^ (key >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    key = ((key ^ (key >> 27)) * 0x94D049BB133111EB) & _U64
    return key ^ (key >> 31)


def sweep_steps(capacity: int, number: bool = False) -> int:
    """Steps of a sweep of a table of nominal ``capacity`` (``number``: a number's)."""
    if number and capacity < SWEEP_NUMBER_FROM:
        return 1
    return max(capacity >> SWEEP_SHIFT, 1)


class Sweep:
    """The reclaim a full table makes, one step per insert.

    It begins when an insert finds the table at its fill and takes that
    insert's step and the next ones', :func:`sweep_steps` in all. Step ``b``
    drops the entries expired as of the cut when the sweep began (``cut``)
    whose ``mix(key)`` lies in the ``b``-th of that many equal parts of
    ``[0, 2**64)`` (the compiled engine's tables hold their entries in that
    order, so a step there is a short run of slots)."""

    __slots__ = ("at", "cut", "keys", "steps")

    def __init__(self, keys: Iterable[int], steps: int, cut: int, at: int = 0) -> None:
        self.steps = steps
        self.cut = cut
        self.at = at  # the next step
        self.keys: dict[int, list[int]] = {}  # by part, those not swept yet
        for key in keys:
            self.add(key)

    def add(self, key: int) -> None:
        """A key inserted since the sweep began."""
        part = (mix(key) * self.steps) >> 64
        if part >= self.at:
            self.keys.setdefault(part, []).append(key)

    def step(self, table: dict[int, ScopeEntry] | dict[int, NumberEntry]) -> bool:
        """Take the next step; whether it was the last."""
        for key in self.keys.pop(self.at, ()):
            e = table.get(key)
            if e is not None and e.expired(self.cut):
                del table[key]
        self.at += 1
        return self.at == self.steps


def make_room(owner: Scope | Number, cut: int) -> None:
    """What an insert into ``owner``'s table does first: the next step of the
    sweep under way, or of one begun at the fill; after its last step the
    capacity doubles unless the table is below half its fill."""
    table = owner.table
    if owner.sweep is None:
        if len(table) < max_fill(owner.capacity):
            return
        owner.sweep = Sweep(table, sweep_steps(owner.capacity, isinstance(owner, Number)), cut)
    if owner.sweep.step(table):
        owner.sweep = None
        if len(table) >= max_fill(owner.capacity) // 2:
            owner.capacity *= 2


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
    __slots__ = ("fep_until", "pair_start", "pair_tat", "window_until")

    def __init__(self) -> None:
        self.window_until = NEVER
        self.fep_until = NEVER
        self.pair_tat = NEVER
        self.pair_start = NEVER  # when the pair's current burst began (at or before pair_tat)

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
        "sweep",
        "table",
    )

    def __init__(self, engine: Engine, freq_cap: int, freq_window: int) -> None:
        self.table: dict[int, ScopeEntry] = {}
        self.capacity = INITIAL_CAPACITY
        self.sweep: Sweep | None = None
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
        make_room(self, self.last_now - self.horizon)
        e = self.table[recipient] = ScopeEntry()
        if self.sweep is not None:
            self.sweep.add(recipient)
        return e


class Number:
    """A business phone number (a sender)."""

    __slots__ = (
        "capacity",
        "clock",
        "pair_interval",
        "pair_tolerance",
        "scope",
        "sweep",
        "table",
        "tput_interval",
        "tput_tat",
        "tput_tolerance",
        "warm",
    )

    def __init__(self, scope: int) -> None:
        self.scope = scope
        self.table: dict[int, NumberEntry] = {}
        self.capacity = NUMBER_INITIAL_CAPACITY
        self.sweep: Sweep | None = None
        self.clock = NEVER  # latest time seen for this number
        self.tput_tat = NEVER  # microseconds
        self.tput_interval = 1
        self.tput_tolerance = 0
        self.pair_interval = 1
        self.pair_tolerance = 0
        #: its own count while in warm-up under a shared scope (None: not in warm-up)
        self.warm: Warmup | None = None

    def spend_throughput(self, now: int, tat: int) -> None:
        """Move the throughput bucket's TAT to at least ``tat`` (µs) as of ``now`` (ms)."""
        if now > self.clock:
            self.clock = now
        self.tput_tat = max(self.tput_tat, tat)

    def pair_refuses(self, now: int, tat: int, start: int) -> bool:
        """Whether the pair rate refuses a send at ``now`` to a recipient whose
        pair owes until ``tat`` (at least ``now``) on a burst begun at ``start``:
        a burst holds up to ``burst`` sends within one interval of its start;
        after it nothing goes until it is paid back at one per interval."""
        return tat > now and (
            now - start >= self.pair_interval or tat - start > self.pair_tolerance
        )

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
        make_room(self, cut)
        e = self.table[recipient] = NumberEntry()
        if self.sweep is not None:
            self.sweep.add(recipient)
        return e
