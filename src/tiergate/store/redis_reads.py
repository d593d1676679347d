"""Read-only views of a scope's counting state in Redis: what GetSenderState, the
watch stream and PlanCampaign read on the shared store.

:func:`scope_counts` reads a scope's counts with the library's ``counts``
function (the 24 h ring's buckets, the 7-day totals, the scope's clock; nothing
written), as a :class:`ScopeCounts` whose usage and outlook are the reference
engine's statements (``engine.reference.ring.Ring``) over those buckets.

:func:`plan_engine` builds a local engine holding what a plan of one sender's
list depends on: the scope's 24 h ring as in Redis, and for each recipient of
the list its entries there (last counted time, marketing sends, opt-out, and
the sender's window, free-entry-point window and pair-rate burst with it), and
the number's throughput TAT, each made with the engine's own calls: sends
forced in time order (a recipient at its last counted time, a pair-rate burst
as that many sends at its start), windows opened, the throughput TAT set by a
take under an interval of the difference. Counts the ring holds for
recipients outside the list are stood for by recipient keys no request makes
(a one-digit E.164 key above 9), counted at their bucket's start on a second
number. The planner then runs on that engine unchanged; nothing is consumed
in Redis.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiergate.engine import DecisionBatch
from tiergate.engine.constants import F_FORCE, F_MARKETING, F_TEMPLATE, KEY_LENGTH_SHIFT
from tiergate.engine.reference.bounds import NEVER
from tiergate.engine.reference.ring import Ring
from tiergate.engine.results import Usage

from .redis_counting import NumberSpec, RedisCounting, ScopeSpec, shard

__all__ = [
    "ENTRIES_PER_CALL",
    "FILLER_KEY",
    "PlanCopy",
    "ScopeCounts",
    "plan_engine",
    "recipient_entries",
    "scope_counts",
]

#: Recipients whose entries one read-only ``entries`` call reads (a plan's list is
#: read in several, each within the call bound).
ENTRIES_PER_CALL = 2_000

#: The first key standing for a counted recipient outside a plan's list: a one-digit
#: E.164 key whose digits are 10 or more (no recipient text makes one).
FILLER_KEY = (1 << KEY_LENGTH_SHIFT) | 10


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    """A scope's counts in Redis at ``now`` (never before the scope's clock there)."""

    now: int
    used_24h: int
    unique_7d: int
    slots_7d: int
    #: The 24 h ring as of ``now`` (the engine's bucket rules).
    ring: Ring

    def usage(self, limit: int) -> Usage:
        """As the engine's ``usage``: (used_24h, next_slot_free_at, unique_7d, slots_7d)."""
        nxt = self.ring.next_free(limit, self.now) if limit > 0 else 0
        return Usage(self.used_24h, nxt, self.unique_7d, self.slots_7d)

    def outlook(self, period_ms: int, periods: int) -> tuple[int, list[int]]:
        """As the engine's ``outlook``: (counted in the ``period_ms`` before now, slots
        freeing in each of the ``periods`` after)."""
        return self.ring.outlook(self.now, period_ms, periods)

    def buckets(self) -> list[tuple[int, int]]:
        """(absolute bucket, count) of every bucket that counts, oldest first."""
        r = self.ring
        if not r.counts:
            return []
        out = []
        for b in range(r.lo, r.lo + r.n):
            c = r.counts[b % r.n]
            if c:
                out.append((b, c))
        return out


async def scope_counts(counting: RedisCounting, scope: ScopeSpec, now: int) -> ScopeCounts:
    """``scope``'s counts in Redis at ``now`` (Redis's clock on the server clock)."""
    res = await counting.counts(scope, now)
    at, used, unique, slots, lo = (int(v) for v in res[:5])
    bucket_ms, window_ms, _, _ = scope.geometry
    ring = Ring(bucket_ms, window_ms, False)
    ring.lo, ring.total = lo, used
    if len(res) > 5:
        ring.counts = [0] * ring.n
        for j in range(5, len(res), 2):
            ring.counts[int(res[j]) % ring.n] = int(res[j + 1])
    return ScopeCounts(at, used, unique, slots, ring)


@dataclass(slots=True)
class PlanCopy:
    """A local engine for one sender's plan: its scope and number indices in it, and
    the time the copy stands at (Redis's scope clock)."""

    engine: Any
    scope: int
    number: int
    now: int


def plan_engine(
    engine_type: Any,
    geometry: tuple[int, int, int, int],
    spec: ScopeSpec,
    number: NumberSpec,
    counts: ScopeCounts,
    entries: RecipientEntries,
) -> PlanCopy:
    """A fresh ``engine_type`` holding ``counts`` and ``entries`` (see the module
    docstring): the scope's decisions on it are Redis's for the list's recipients."""
    engine = engine_type(*geometry)
    scope = engine.add_scope(spec.freq_cap, spec.freq_window_ms)
    pair = (number.pair_interval_ms, number.pair_burst)
    # while the events are forced, the number's throughput moves by 1 µs a send
    real = engine.add_number(scope, 1, 1, *pair)
    filler = engine.add_number(scope)
    events = _events(counts, entries, geometry[0], number.pair_interval_ms)
    tat = NEVER  # the number's throughput TAT after the events (µs)
    if events:
        k = len(events)
        batch = DecisionBatch()
        batch.now = array("q", [e[0] for e in events])
        batch.recipient = array("Q", [e[1] for e in events])
        batch.flags = array("I", [e[2] | F_FORCE for e in events])
        batch.scope = array("i", [scope]) * k
        batch.number = array("i", [real if e[3] else filler for e in events])
        batch.limit = array("q", [0]) * k
        batch.ticket = array("Q", bytes(8 * k))
        engine.decide_batch(batch)
        for t, _, _, own in events:
            if own:
                tat = max(tat, t * 1000) + 1
    engine.usage(scope, counts.now, 0)  # the copy's clock: Redis's
    for rkey in entries.opted_out:
        engine.set_opt_out(scope, rkey, True)
    for rkey, (window, fep, pair_tat, pair_start) in entries.number.items():
        if window > counts.now or fep > counts.now:
            engine.open_window(real, rkey, window, fep)
        if pair_tat > counts.now and (
            pair_start == NEVER or not _burst(pair_tat, pair_start, pair[0])
        ):
            engine.hold_pair(real, rkey, pair_tat)  # a 131056 hold: no burst until paid
    _set_throughput(engine, real, number, entries.tput_tat, tat, counts.now)
    return PlanCopy(engine, scope, real, counts.now)


def _burst(tat: int, start: int, interval: int) -> int:
    """How many sends of one burst begun at ``start`` owe until ``tat`` (0: none)."""
    k, rest = divmod(tat - start, interval)
    return k if rest == 0 and k > 0 else 0


def _events(
    counts: ScopeCounts, entries: RecipientEntries, bucket_ms: int, pair_iv: int
) -> list[tuple[int, int, int, bool]]:
    """(time, recipient, flags, on the plan's number) forced in time order (a scope's
    clock only moves on): each list recipient counted at its last counted time,
    its marketing sends, the pair-rate burst it owes (free-form sends from the
    burst's start), and the ring's other counts at their bucket's start."""
    events: list[tuple[int, int, int, bool]] = []
    in_bucket: dict[int, int] = {}
    for rkey, last in entries.last.items():
        if last != NEVER and last // bucket_ms >= counts.ring.lo:  # its bucket counts it
            events.append((last, rkey, F_TEMPLATE, False))
            in_bucket[last // bucket_ms] = in_bucket.get(last // bucket_ms, 0) + 1
    for rkey, times in entries.marketing.items():
        events += [(t, rkey, F_MARKETING, False) for t in times if t != NEVER]
    for rkey, (_, _, tat, start) in entries.number.items():
        if tat > counts.now and start != NEVER:
            events += [(start, rkey, 0, True)] * _burst(tat, start, pair_iv)
    key = FILLER_KEY
    for b, c in counts.buckets():
        for _ in range(max(0, c - in_bucket.get(b, 0))):
            events.append((b * bucket_ms, key, F_TEMPLATE, False))
            key += 1
    events.sort()
    return events


def _set_throughput(
    engine: Any, number: int, spec: NumberSpec, tat: int, now_tat: int, now: int
) -> None:
    """Move ``number``'s throughput TAT (µs) from ``now_tat`` to Redis's ``tat``: one
    ``take_throughput`` at ``now`` under an interval of the difference, then the
    number's own parameters again."""
    base = max(now * 1000, now_tat)
    if tat > base:
        engine.set_number_params(number, tat - base, 1, spec.pair_interval_ms, spec.pair_burst)
        engine.take_throughput(number, now)
    engine.set_number_params(
        number, spec.tput_interval_us, spec.tput_burst, spec.pair_interval_ms, spec.pair_burst
    )


@dataclass(slots=True)
class RecipientEntries:
    """What Redis holds for a list's recipients (keys after aliasing)."""

    #: recipient → last counted time (only those with a scope entry)
    last: dict[int, int]
    #: recipient → its last four marketing send times (NEVER: none)
    marketing: dict[int, tuple[int, ...]]
    #: recipient → (window until, free-entry-point window until, pair TAT, pair burst
    #: start) of the number
    number: dict[int, tuple[int, int, int, int]]
    opted_out: list[int]
    #: the number's throughput TAT (µs; NEVER: none)
    tput_tat: int


#: A scope entry's last counted time is 6 bytes; its lowest value stands for NEVER
#: (the Lua's NEVER6).
_NEVER6 = -(1 << 47)


def parse_entries(
    keys: Sequence[int],
    values: Sequence[tuple[Any, Any, Any, Any]],
    opted: Sequence[Any],
    tat: Any,
) -> RecipientEntries:
    """:class:`RecipientEntries` from each key's (scope entry, marketing entry, window
    entry, pair entry) values as Redis holds them (layout tg3: a scope entry is the
    last counted time in 6 bytes and the slot generation in 2, a window entry the
    window's and free-entry-point window's ends, a pair entry the pair's TAT and
    burst start), its opt-out membership and the number's TAT."""
    # a Lua number as Redis stores it: "%.17g", exact for every TAT (below 2**53)
    tput_tat = max(NEVER, int(float(tat.decode() if isinstance(tat, bytes) else tat or NEVER)))
    out = RecipientEntries({}, {}, {}, [], tput_tat)
    for rkey, (se, mk, we, pe), opt in zip(keys, values, opted, strict=True):
        if se is not None:
            last = int.from_bytes(se[:6], "big", signed=True)
            out.last[rkey] = NEVER if last == _NEVER6 else last
        if mk is not None:
            out.marketing[rkey] = struct.unpack(">qqqq", mk)
        if we is not None or pe is not None:
            window = struct.unpack(">qq", we) if we is not None else (NEVER, NEVER)
            pair = struct.unpack(">qq", pe) if pe is not None else (NEVER, NEVER)
            out.number[rkey] = (*window, *pair)
        if int(opt):
            out.opted_out.append(rkey)
    return out


async def recipient_entries(
    counting: RedisCounting, scope: ScopeSpec, number: str, recipients: Sequence[int]
) -> tuple[list[tuple[Any, Any, Any, Any]], list[Any], Any]:
    """For each recipient, its (scope entry, marketing entry, ``number``'s window
    entry, ``number``'s pair entry) as stored (None where absent), whether it
    opted out, and the number's throughput TAT: calls of the library's read-only
    ``entries`` (one HMGET per shard hash inside Redis, one of the pair entries)
    of whole shard hashes, at most about :data:`ENTRIES_PER_CALL` recipients
    each, so each is bounded as any call is."""
    by_shard: dict[int, list[int]] = {}
    for r in recipients:
        by_shard.setdefault(shard(r), []).append(r)
    fixed, tag = scope.fixed_keys(), scope.tag
    got: dict[int, tuple[Any, Any, Any, Any]] = {}
    opted: dict[int, Any] = {}
    tat: Any = None
    parts: list[list[tuple[int, list[int]]]] = [[]]
    n = 0
    for item in by_shard.items():
        if parts[-1] and n + len(item[1]) > ENTRIES_PER_CALL:
            parts.append([])
            n = 0
        parts[-1].append(item)
        n += len(item[1])
    for part in parts:  # (one call for no recipients too: the TAT)
        keys = [fixed[0], fixed[4], fixed[5], *(f"{tag}:c{k}" for k, _ in part)]
        args = [number, *(" ".join(map(str, rs)) for _, rs in part)]
        res = await counting.run("entries", keys, args)
        tat = res[0]
        for (_, rs), (values, opt, pair) in zip(part, res[1:], strict=True):
            for j, r in enumerate(rs):
                got[r] = (values[3 * j], values[3 * j + 1], values[3 * j + 2], pair[j])
                opted[r] = opt[j]
    return [got[r] for r in recipients], [opted[r] for r in recipients], tat
