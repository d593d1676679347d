"""Read-only views of a scope's counting state in Redis: what GetSenderState, the
watch stream and PlanCampaign read on the shared store.

:func:`scope_counts` reads a scope's counts with the library's ``counts``
function (the 24 h ring's buckets, the 7-day totals, the scope's clock; nothing
written), as a :class:`ScopeCounts` whose usage and outlook are the reference
engine's statements (``engine.reference.ring.Ring``) over those buckets.

:func:`plan_reads` reads everything a plan of one sender's list depends on with
the library's read-only ``entries`` (one call, so one state of the scope, for a
list of up to :data:`READ_PART` recipients; bounded calls for a longer one), and
:func:`plan_engine` builds from it a local engine holding the scope's 24 h ring
as in Redis (its 7-day counts Redis's too: :class:`LongCounts`), and for each
recipient of the list its entries there (last counted
time, marketing sends, opt-out, and the sender's window, free-entry-point window
and pair-rate burst with it), and the number's throughput TAT, and for a number
in warm-up its cap, its own ring and each listed recipient's last count by it,
each made with the engine's own calls: sends forced in time order (a recipient
at its last counted time, a pair-rate burst as that many sends at its start, the
number's own count of a recipient one of them where it can be), windows opened,
the throughput TAT set by a take under an interval of the difference. Counts the
ring holds for recipients outside the list are stood for by recipient keys no
request makes (a one-digit E.164 key above 9), counted at their bucket's start
on a second number (the number's own ring's other counts: filler keys counted by
the number too). The planner then runs on that engine unchanged; nothing is
consumed in Redis.
"""

from __future__ import annotations

import struct
from array import array
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tiergate.engine import DecisionBatch
from tiergate.engine.constants import (
    F_FORCE,
    F_MARKETING,
    F_TEMPLATE,
    KEY_LENGTH_SHIFT,
    UNLIMITED,
)
from tiergate.engine.reference.bounds import NEVER
from tiergate.engine.reference.ring import Ring
from tiergate.engine.results import Usage

from .redis_counting import RedisCounting
from .redis_layout import MIX, SHARD_BITS, U64, NumberSpec, ScopeSpec

__all__ = [
    "FILLER_KEY",
    "READ_PART",
    "READ_S_PER_RECIPIENT",
    "LongCounts",
    "PlanCopy",
    "ScopeCounts",
    "plan_engine",
    "plan_reads",
    "scope_counts",
]

#: How much longer than any call a plan's read may take, per recipient of its list
#: (s): Redis runs the read whole.
READ_S_PER_RECIPIENT = 100e-6

#: The most recipients one call of a plan's read asks for: at the Redis time a
#: repeat campaign's recipient costs (about 10 µs, benchmarks/plan_read.py) a call
#: holds Redis for about 10 ms, and under 50 ms at most.
READ_PART = 1_000

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
    #: A number's own ring in warm-up as of ``now`` (None: none read).
    warm: Ring | None = None
    #: The 7-day rings as of ``now``, recipients and slots (None: not read).
    long: tuple[Ring, Ring] | None = None
    #: A scope on Meta's volume scaling path: the recipients counted within the
    #: path's window and since its tier began (None: not read).
    path_users: int | None = None

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
        return _buckets(self.ring)


def _buckets(r: Ring) -> list[tuple[int, int]]:
    """(absolute bucket, count) of every bucket of ``r`` that counts, oldest first."""
    if not r.counts:
        return []
    out = []
    for b in range(r.lo, r.lo + r.n):
        c = r.counts[b % r.n]
        if c:
            out.append((b, c))
    return out


def _ring(
    geometry: tuple[int, int, int, int],
    lo: int,
    total: int,
    pairs: Sequence[Any],
    long: bool = False,
) -> Ring:
    """A 24 h ring (``long``: a 7-day ring) from the library's (low bucket, total,
    (bucket, count) pairs)."""
    ring = Ring(*((geometry[2], geometry[3], True) if long else (geometry[0], geometry[1], False)))
    ring.lo, ring.total = lo, total
    if pairs:
        ring.counts = [0] * ring.n
        for j in range(0, len(pairs), 2):
            ring.counts[int(pairs[j]) % ring.n] = int(pairs[j + 1])
    return ring


async def scope_counts(
    counting: RedisCounting,
    scope: ScopeSpec,
    now: int,
    number: NumberSpec | None = None,
    path_since: int | None = None,
) -> ScopeCounts:
    """``scope``'s counts in Redis at ``now`` (Redis's clock on the server clock),
    ``number``'s own ring when it is in warm-up, and for a scope on the volume path
    (``scope.path_window_ms``; ``path_since``: its tier's start) the recipients of
    its reach within the path's window: the library's ``counts`` (read only) answers
    the time used, used_24h, unique_7d, slots_7d, the 24 h ring's low bucket,
    (bucket, count) pairs, for a number in warm-up its own ring's [total, low
    bucket, pairs], then that count."""
    warm = number.warm_key(scope) if number is not None else None
    keys = scope.fixed_keys()[:4]
    warm_name = ""
    if number is not None and warm is not None:
        keys.append(warm)
        warm_name = number.name
    args: list[object] = [*scope.geometry, counting.read_time(now), warm_name]
    reach = path_since is not None and scope.path_window_ms > 0
    if reach:
        keys.append(scope.reach_key)
        args += [scope.path_window_ms, path_since]
    res = list(await counting.run("counts", keys, args))
    path_users = int(res.pop()) if reach else None
    return replace(_scope_counts(scope, res, number), path_users=path_users)


def _scope_counts(scope: ScopeSpec, res: list[Any], number: NumberSpec | None) -> ScopeCounts:
    """:class:`ScopeCounts` of the library's ``counts`` answer."""
    warm = None
    if number is not None and number.warm_key(scope) is not None:
        own = res.pop()
        warm = _ring(scope.geometry, int(own[1]), int(own[0]), own[2:])
    at, used, unique, slots, lo = (int(v) for v in res[:5])
    return ScopeCounts(at, used, unique, slots, _ring(scope.geometry, lo, used, res[5:]), warm)


@dataclass(slots=True)
class PlanCopy:
    """A local engine for one sender's plan: its scope and number indices in it, and
    the time the copy stands at (Redis's scope clock)."""

    engine: Any
    scope: int
    number: int
    now: int


#: Where a forced event is decided: on the filler number, on the plan's number with
#: its own pair rate (a pair-rate burst, and its own count in warm-up of a recipient
#: made by one of the burst's sends), or on the plan's number with a pair rate of
#: 1 ms (its own count in warm-up of another: made before the burst the recipient
#: owes, which replaces what it left, or with none owed, or under a hold set after).
_FILLER, _OWN, _WARM = 0, 1, 2


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
    if number.warm_cap < UNLIMITED:
        engine.set_warmup(real, number.warm_cap)
    events = _events(counts, entries, geometry[0], number.pair_interval_ms)
    tat = NEVER  # the number's throughput TAT after the events (µs)
    start = 0
    while start < len(events):
        end = _run_end(events, start)
        mode = max(e[3] for e in events[start:end])
        engine.set_number_params(real, 1, 1, *(pair if mode != _WARM else (1, 1)))
        _force(engine, events[start:end], scope, real, filler)
        start = end
    for t, _, _, where in events:
        if where != _FILLER:
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
    if counts.long is not None:
        engine = LongCounts(engine, scope, counts.long)
    return PlanCopy(engine, scope, real, counts.now)


class LongCounts:
    """A plan's copy whose 7-day counts are Redis's: ``usage`` answers the 7-day
    rings read (``long``, aged to the time asked) plus what the plan's sends changed
    in the copy's own (its counts then less those it held when made, ``base``). The
    copy holds each list recipient's last counted time, so a send moves it there as
    it would in Redis; the counts outside the list only age. Everything else is the
    copy's."""

    def __init__(self, engine: Any, scope: int, long: tuple[Ring, Ring]) -> None:
        self.engine = engine
        self.base = engine.copy()
        self.scope = scope
        self.long = long

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.engine, name)
        setattr(self, name, value)  # (found directly from then on: once a chunk)
        return value

    def usage(self, scope: int, now: int, limit: int) -> Usage:
        used, nxt, unique, slots = self.engine.usage(scope, now, limit)
        if scope == self.scope:
            _, _, b_unique, b_slots = self.base.usage(scope, now, 0)
            for r in self.long:
                r.advance(now)
            unique += self.long[0].total - b_unique
            slots += self.long[1].total - b_slots
        return Usage(used, nxt, unique, slots)


def _run_end(events: list[tuple[int, int, int, int]], start: int) -> int:
    """The end of the run of events from ``start`` whose sends on the plan's number
    share one pair rate (filler events go with any)."""
    mode = _FILLER
    for j in range(start, len(events)):
        where = events[j][3]
        if where != _FILLER:
            if mode != _FILLER and where != mode:
                return j
            mode = where
    return len(events)


def _force(
    engine: Any, events: list[tuple[int, int, int, int]], scope: int, real: int, filler: int
) -> None:
    """``events`` decided forced, in one batch."""
    k = len(events)
    batch = DecisionBatch()
    batch.now = array("q", [e[0] for e in events])
    batch.recipient = array("Q", [e[1] for e in events])
    batch.flags = array("I", [e[2] | F_FORCE for e in events])
    batch.scope = array("i", [scope]) * k
    batch.number = array("i", [filler if e[3] == _FILLER else real for e in events])
    batch.limit = array("q", [0]) * k
    batch.ticket = array("Q", bytes(8 * k))
    engine.decide_batch(batch)


def _burst(tat: int, start: int, interval: int) -> int:
    """How many sends of one burst begun at ``start`` owe until ``tat`` (0: none)."""
    k, rest = divmod(tat - start, interval)
    return k if rest == 0 and k > 0 else 0


def _in_burst(own: int, tat: int, start: int, interval: int) -> bool:
    """Whether a send at ``own`` can be the last counted one of the burst begun at
    ``start`` that owes until ``tat``: the burst's other sends at its start, then one
    at ``own``, leave Redis's pair entry (a send keeps the burst's start only while
    the pair still owes at its time)."""
    k = _burst(tat, start, interval)
    return k > 0 and start <= own and (own == start or own < start + (k - 1) * interval)


def _events(
    counts: ScopeCounts, entries: RecipientEntries, bucket_ms: int, pair_iv: int
) -> list[tuple[int, int, int, int]]:
    """(time, recipient, flags, where) forced in time order (a scope's clock only
    moves on): each list recipient counted at its last counted time, its marketing
    sends, the pair-rate burst it owes (free-form sends at the burst's start), its
    last count by the plan's number in warm-up (one of that burst's sends where it
    can be: see ``_in_burst``), and the rings' other counts at
    their bucket's start: a count of the number's own ring outside the list is a
    filler key counted by the number and then by the scope's count in the same or
    a later bucket (a recipient the number counted is counted by the scope no
    earlier), so the scope's ring counts it once."""
    events: list[tuple[int, int, int, int]] = []
    in_bucket: dict[int, int] = {}
    lo = counts.ring.lo
    warm_lo = counts.warm.lo if counts.warm is not None else lo
    own_bucket: dict[int, int] = {}
    sent = set()  # recipients whose own count in warm-up is one of their burst's sends
    for rkey, own in entries.warm.items():
        if own != NEVER and own // bucket_ms >= warm_lo:  # its own ring counts it
            _, _, tat, start = entries.number.get(rkey, (NEVER,) * 4)
            in_burst = tat > counts.now and _in_burst(own, tat, start, pair_iv)
            if in_burst:
                sent.add(rkey)
            events.append((own, rkey, F_TEMPLATE, _OWN if in_burst else _WARM))
            own_bucket[own // bucket_ms] = own_bucket.get(own // bucket_ms, 0) + 1
    for rkey, last in entries.last.items():
        own = entries.warm.get(rkey, NEVER)
        last = max(last, own if own // bucket_ms >= warm_lo else NEVER)
        if last == NEVER:
            continue
        # (one the 24 h ring no longer counts too: the 7-day rings and the slot rule
        # see it as Redis does)
        events.append((last, rkey, F_TEMPLATE, _FILLER))
        if last // bucket_ms >= lo:  # its bucket counts it
            in_bucket[last // bucket_ms] = in_bucket.get(last // bucket_ms, 0) + 1
    for rkey, times in entries.marketing.items():
        events += [(t, rkey, F_MARKETING, _FILLER) for t in times if t != NEVER]
    for rkey, (_, _, tat, start) in entries.number.items():
        if tat > counts.now and start != NEVER:
            k = _burst(tat, start, pair_iv) - (rkey in sent)
            events += [(start, rkey, 0, _OWN)] * k
    slots = [b for b, c in counts.buckets() for _ in range(max(0, c - in_bucket.get(b, 0)))]
    own_slots = [] if counts.warm is None else _buckets(counts.warm)
    warm = [b for b, c in own_slots for _ in range(max(0, c - own_bucket.get(b, 0)))]
    key = FILLER_KEY
    j = 0
    for wb in warm:  # each matched to the earliest scope count no earlier
        while j < len(slots) and slots[j] < wb:
            events.append((slots[j] * bucket_ms, key, F_TEMPLATE, _FILLER))
            key, j = key + 1, j + 1
        events.append((wb * bucket_ms, key, F_TEMPLATE, _WARM))
        if j < len(slots):
            events.append((slots[j] * bucket_ms, key, F_TEMPLATE, _FILLER))
            j += 1
        key += 1
    for b in slots[j:]:
        events.append((b * bucket_ms, key, F_TEMPLATE, _FILLER))
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
    #: recipient → last counted time by the number in warm-up (only those with one)
    warm: dict[int, int]


#: A scope entry's last counted time is 6 bytes; its lowest value stands for NEVER
#: (the Lua's NEVER6).
_NEVER6 = -(1 << 47)


def _parse_entries(got: dict[int, tuple[Any, ...]], tat: Any) -> RecipientEntries:
    """:class:`RecipientEntries` from the recipients' (scope entry, marketing entry,
    window entry, warm-up entry, pair entry, opted out) as Redis holds them (layout
    tg3: a scope entry is the last counted time in 6 bytes and the slot generation
    in 2, a window entry the window's and free-entry-point window's ends, a warm-up
    entry the number's last count of it in 8, a pair entry the pair's TAT and burst
    start; recipients with none absent) and the number's TAT."""
    # a Lua number as Redis stores it: "%.17g", exact for every TAT (below 2**53)
    tput_tat = max(NEVER, int(float(tat.decode() if isinstance(tat, bytes) else tat or NEVER)))
    out = RecipientEntries({}, {}, {}, [], tput_tat, {})
    for rkey, (se, mk, we, warm, pe, opt) in got.items():
        if se is not None:
            last = int.from_bytes(se[:6], "big", signed=True)
            out.last[rkey] = NEVER if last == _NEVER6 else last
        if mk is not None:
            out.marketing[rkey] = struct.unpack(">qqqq", mk)
        if we is not None or pe is not None:
            window = struct.unpack(">qq", we) if we is not None else (NEVER, NEVER)
            pair = struct.unpack(">qq", pe) if pe is not None else (NEVER, NEVER)
            out.number[rkey] = (*window, *pair)
        if warm is not None:
            out.warm[rkey] = struct.unpack(">q", warm)[0]
        if int(opt):
            out.opted_out.append(rkey)
    return out


async def plan_reads(
    counting: RedisCounting,
    scope: ScopeSpec,
    now: int,
    number: NumberSpec,
    recipients: Sequence[int],
) -> tuple[ScopeCounts, RecipientEntries]:
    """Everything a plan of ``recipients`` by ``number`` reads in Redis, with the
    library's read-only ``entries``: the scope's counts at ``now`` (as
    :func:`scope_counts`, with the number's own ring in warm-up, and the 7-day
    rings), each recipient's entries (scope entry, marketing entry, the number's
    window, warm-up and pair entries, opt-out; one HMGET per shard hash inside
    Redis, one of the pair entries) and the number's throughput TAT.

    A list of at most :data:`READ_PART` recipients is read in one call (one state
    of the scope: no decision of any sidecar between its reads). A longer one is
    read in calls of that many, in shard order, so no call holds Redis long; the
    counts, the 7-day rings and the TAT are the last call's, which follow every
    admit made before it, while an earlier call's recipient entries may miss one
    made since (docs/redis.md, "How long a plan's read holds Redis")."""
    by_shard: defaultdict[int, list[int]] = defaultdict(list)
    shift = 64 - SHARD_BITS
    for r in recipients:  # (shard() inlined: a plan's list is long)
        by_shard[((r * MIX) & U64) >> shift].append(r)
    called = [r for rs in by_shard.values() for r in rs]
    got: dict[int, tuple[Any, ...]] = {}
    res: list[Any] = []
    for at in range(0, max(1, len(called)), READ_PART):
        part = called[at : at + READ_PART]
        res = await _read_part(counting, scope, now, number, part)
        for j in range(3, len(res), 7):
            got[part[res[j]]] = tuple(res[j + 1 : j + 7])
    counts = _scope_counts(scope, list(res[0]), number)
    counts = replace(counts, long=_long_rings(scope.geometry, res[2]))
    return counts, _parse_entries(got, res[1])


async def _read_part(
    counting: RedisCounting, scope: ScopeSpec, now: int, number: NumberSpec, part: list[int]
) -> list[Any]:
    """One call of ``entries`` for ``part`` (recipients in shard order)."""
    by_shard: dict[int, list[int]] = {}
    shift = 64 - SHARD_BITS
    for r in part:
        by_shard.setdefault(((r * MIX) & U64) >> shift, []).append(r)
    # (keys and arguments: ``entries`` in redis_functions.lua)
    warm = number.warm_key(scope)
    keys = [*scope.fixed_keys()[:6], *([warm] if warm is not None else [])]
    keys += [f"{scope.tag}:c{k}" for k in by_shard]
    args = [*scope.geometry, counting.read_time(now), number.name, "0" if warm is None else "1"]
    args += [" ".join(map(str, rs)) for rs in by_shard.values()]
    bound = counting.timeout + len(part) * READ_S_PER_RECIPIENT
    return list(await counting.run("entries", keys, args, bound))


def _long_rings(geometry: tuple[int, int, int, int], got: Sequence[Any]) -> tuple[Ring, Ring]:
    """The 7-day rings of ``entries``' answer: [recipients' low bucket, (bucket,
    count)..., -1, slots' low bucket, (bucket, count)...]."""
    vals = [int(v) for v in got]
    cut = vals.index(-1)
    rings = []
    for part in (vals[:cut], vals[cut + 1 :]):
        pairs = part[1:]
        rings.append(_ring(geometry, part[0], sum(pairs[1::2]), pairs, long=True))
    return rings[0], rings[1]
