"""The engine snapshot format: its writer and its reader.

Snapshot format, version 6 (all integers little-endian; ``q`` signed and
``Q`` unsigned 64-bit, ``I`` unsigned 32-bit, ``B`` one byte):

* header ``<8sIIqqqqII``: magic ``TGENGINE``, format version, reserved 0,
  bucket_ms, window_ms, long_bucket_ms, long_window_ms, scopes, numbers;
* per scope ``<qqq``: freq_cap, freq_window_ms, clock (latest time seen);
  then three rings (24 h, 7 d unique, 7 d slots), each ``<qqq`` (buckets n,
  oldest live bucket, total) and, when the total is not 0, n ``q`` counts,
  bucket ``b`` at ``b mod n`` (versions 1 to 4 wrote the counts of every
  ring: a sender that never counted cost 14 KB there);
  then the table ``<QQQq`` (capacity, entries, the next step of the sweep
  under way and the cut it drops by, 0 and 0 when none; versions 1 to 5 had
  ``<QQ``, read as no sweep) and its entries sorted by key,
  each ``<QqQqqqqB``: key, last_counted, slot state (bit 11: fresh; bits
  0 .. 10: generation; version 1 held the creating ticket id here, read as
  state 0), 4 marketing times, opt-out;
* per number ``<Iqqqqqq``: scope, clock, throughput TAT (µs), throughput
  interval and tolerance (µs), pair interval and tolerance (ms); then its
  table ``<QQQq`` and entries sorted by key, each ``<Qqqqq``: key,
  window_until, fep_until, pair TAT (ms), start of the pair's burst (ms;
  versions 1 and 2 had no such field, read as NEVER: a pair that owes is
  held until it has paid back); then (from version 4) ``<q`` the number's
  warm-up cap, -1 when it has none, and when it has one its ring (as a
  scope's ring: its counts only when its total is not 0, from version 5)
  and ``<Q`` entries sorted by key, each ``<Qq``: key, the last time the
  number counted the recipient (only entries whose bucket is still in the
  ring).

A reader refuses a newer version with a ValueError; a format change bumps
:data:`SNAPSHOT_VERSION`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ..constants import MARKETING_HISTORY, UNLIMITED
from .bounds import MAX_KEY, MAX_TIME, NEVER, SLOT_FRESH, SLOT_GEN_MAX
from .ring import Ring
from .tables import (
    INITIAL_CAPACITY,
    MAX_CAPACITY,
    NumberEntry,
    ScopeEntry,
    Sweep,
    max_fill,
    sweep_steps,
)
from .warmup import Warmup

if TYPE_CHECKING:
    from .engine import Engine

E = TypeVar("E", bound="Engine")

#: Snapshot header: magic, then the format version this engine writes.
SNAPSHOT_MAGIC = b"TGENGINE"
SNAPSHOT_VERSION = 6

_HEADER = struct.Struct("<8sIIqqqqII")
_SCOPE = struct.Struct("<qqq")
_RING = struct.Struct("<qqq")
_NUMBER = struct.Struct("<Iqqqqqq")
_TABLE = struct.Struct("<QQQq")
_TABLE_5 = struct.Struct("<QQ")  # versions 1 to 5: no sweep
_SCOPE_ENTRY = struct.Struct("<QqQ" + "q" * MARKETING_HISTORY + "B")
_NUMBER_ENTRY = struct.Struct("<Qqqqq")
_NUMBER_ENTRY_2 = struct.Struct("<Qqqq")
_WARM = struct.Struct("<q")
_WARM_COUNT = struct.Struct("<Q")
_WARM_ENTRY = struct.Struct("<Qq")


def write_snapshot(engine: Engine) -> bytes:
    """The whole engine state as bytes (format :data:`SNAPSHOT_VERSION`)."""
    out: list[bytes] = [
        _HEADER.pack(
            SNAPSHOT_MAGIC,
            SNAPSHOT_VERSION,
            0,
            engine.bucket_ms,
            engine.window_ms,
            engine.long_bucket_ms,
            engine.long_window_ms,
            len(engine.scopes),
            len(engine.numbers),
        )
    ]
    for s in engine.scopes:
        out.append(_SCOPE.pack(s.freq_cap, s.freq_window, s.last_now))
        for ring in (s.ring24, s.ring7, s.slots7):
            _write_ring(out, ring)
        out.append(_TABLE.pack(s.capacity, len(s.table), *_sweep_state(s.sweep)))
        pack = _SCOPE_ENTRY.pack
        for key in sorted(s.table):
            e = s.table[key]
            state = (SLOT_FRESH if e.fresh else 0) | e.gen
            out.append(pack(key, e.last_counted, state, *e.marketing, e.opt_out))
    for num in engine.numbers:
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
        out.append(_TABLE.pack(num.capacity, len(num.table), *_sweep_state(num.sweep)))
        pack = _NUMBER_ENTRY.pack
        for key in sorted(num.table):
            ne = num.table[key]
            out.append(pack(key, ne.window_until, ne.fep_until, ne.pair_tat, ne.pair_start))
        _write_warmup(out, num.warm)
    return b"".join(out)


def _write_warmup(out: list[bytes], warm: Warmup | None) -> None:
    if warm is None:
        out.append(_WARM.pack(-1))
        return
    out.append(_WARM.pack(warm.cap))
    _write_ring(out, warm.ring)
    live = warm.live_entries()
    out.append(_WARM_COUNT.pack(len(live)))
    out.extend(_WARM_ENTRY.pack(k, t) for k, t in live)


def _write_ring(out: list[bytes], r: Ring) -> None:
    """n, lo, total, then the n counts unless total is 0 (format 5 on)."""
    out.append(_RING.pack(r.n, r.lo, r.total))
    if r.total:
        out.append(struct.pack(f"<{r.n}q", *r.counts))


def _read_ring(r: _Reader, ring: Ring, version: int) -> None:
    n, lo, total = r.take(_RING)
    if n != ring.n:
        raise ValueError("engine snapshot is corrupt: ring size does not match")
    if version >= 5 and total == 0:  # written without its buckets
        ring.lo, ring.total, ring.counts = lo, 0, [0] * n if ring.counts else []
        return
    counts = list(r.take(struct.Struct(f"<{n}q")))
    if sum(counts) != total or min(counts) < 0:
        raise ValueError("engine snapshot is corrupt: ring total does not match")
    ring.lo, ring.total, ring.counts = lo, total, counts if total else []


def _read_warmup(r: _Reader, eng: Engine, number: int, version: int) -> None:
    (cap,) = r.take(_WARM)
    if cap == -1:
        return
    if not 0 <= cap < UNLIMITED:
        raise ValueError("engine snapshot is corrupt: warm-up cap out of range")
    eng.set_warmup(number, cap)
    warm = eng.numbers[number].warm
    assert warm is not None
    _read_ring(r, warm.ring, version)
    (count,) = r.take(_WARM_COUNT)
    for key, t in _take_entries(r, _WARM_ENTRY, count):
        if not 0 < key <= MAX_KEY or not -MAX_TIME <= t <= MAX_TIME or not warm.live(t):
            raise ValueError("engine snapshot is corrupt: warm-up entry")
        warm.counted[key] = t


def read_snapshot(engine_class: type[E], data: bytes) -> E:
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
    eng = engine_class(bucket, window, long_bucket, long_window)
    for _ in range(n_scopes):
        freq_cap, freq_window, last_now = r.take(_SCOPE)
        s = eng.scopes[eng.add_scope(freq_cap, freq_window)]
        _check_snapshot_time(last_now)
        s.last_now = last_now
        for ring in (s.ring24, s.ring7, s.slots7):
            _read_ring(r, ring, version)
        s.capacity, count, sweep, cut = _take_table(r, version)
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
        if sweep:
            s.sweep = Sweep(s.table, sweep_steps(s.capacity), cut, sweep)
    for number in range(n_numbers):
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
        num.capacity, count, sweep, cut = _take_table(r, version, number=True)
        layout = _NUMBER_ENTRY if version >= 3 else _NUMBER_ENTRY_2
        for key, wu, fu, pt, *start in _take_entries(r, layout, count):
            ne = NumberEntry()
            ne.window_until, ne.fep_until, ne.pair_tat = wu, fu, pt
            if start:
                _check_snapshot_time(start[0])
                ne.pair_start = start[0]
            num.table[key] = ne
        if sweep:
            num.sweep = Sweep(num.table, sweep_steps(num.capacity, True), cut, sweep)
        if version >= 4:
            _read_warmup(r, eng, number, version)
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


def _sweep_state(sweep: Sweep | None) -> tuple[int, int]:
    return (sweep.at, sweep.cut) if sweep else (0, 0)


def _take_table(r: _Reader, version: int, number: bool = False) -> tuple[int, int, int, int]:
    capacity, count, *rest = r.take(_TABLE if version >= 6 else _TABLE_5)
    sweep, cut = rest or (0, 0)
    if (
        capacity < INITIAL_CAPACITY
        or capacity & (capacity - 1)
        or capacity > MAX_CAPACITY
        or sweep >= sweep_steps(capacity, number)
        or (sweep == 0 and cut != 0)
        # a sweep under way has taken up to one insert per step past the fill
        or count > max_fill(capacity) + (sweep_steps(capacity, number) if sweep else 0)
    ):
        raise ValueError("engine snapshot is corrupt: table capacity")
    return capacity, count, sweep, cut


def _take_entries(r: _Reader, st: struct.Struct, count: int) -> Iterator[tuple[int, ...]]:
    prev = 0
    for rec in st.iter_unpack(r.block(st.size * count)):
        if rec[0] <= prev:
            raise ValueError("engine snapshot is corrupt: keys not strictly ascending")
        prev = rec[0]
        yield rec
