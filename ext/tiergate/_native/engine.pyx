# cython: autotestdict=False
# The compiled decision engine: the Cython twin of src/tiergate/engine/reference/.
#
# Same class, same methods, identical answers for identical calls (the
# differential tests drive both). Recipient tables are Robin Hood hash tables
# (exact keys, splitmix64 scaled to any table size, key 0 = empty) that
# reclaim exactly when the reference's nominal capacities say so and size
# their slots on their own, half to four fifths full. Time is always an
# argument; the decision core touches no Python object and allocates only when
# a table grows.
#
# One module built from included parts, each one concern: support.pxi (C
# helpers: table memory, prefetch, the two-thread copy), rings.pxi (arithmetic,
# slot words, bucket rings), tables.pxi (recipient tables, reclaim), growth.pxi
# (tables growing a few entries per insert), sweep.pxi (the reclaim at the
# nominal fill, a step per insert), decide.pxi
# (the decision core, batch checks, releases), snapshot.pxi (snapshot and
# restore) and copy.pxi (Engine.copy's memory). The Engine class below holds
# the state and the Python-visible methods, which call into them.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from tiergate._native.records cimport record_set, tg_alloc_record

from tiergate.engine.results import Decided, Lookup, Usage

cdef int64_t MAX_TIME = 1 << 50
cdef int64_t MAX_WINDOW = 1 << 40
# The most periods an outlook reports.
cdef enum:
    MAX_OUTLOOK = 1000
cdef int64_t MAX_RING_BUCKETS = 1 << 20
cdef int64_t MAX_TOLERANCE = 1 << 52
cdef object U64_MAX = (1 << 64) - 1
cdef bytes SNAPSHOT_MAGIC = b"TGENGINE"
cdef type DECIDED = Decided  # what Engine.decide answers, whatever the name is bound to

include "support.pxi"

cdef enum:
    # Snapshot entries whose table slots are prefetched ahead of the one being
    # worked on, so that several cache misses overlap.
    PREFETCH_AHEAD = 8
    # decide_batch prefetches the table lines of the item BATCH_AHEAD places on
    # while it decides the current one, so the memory fetches run under the
    # decisions instead of before them. Far enough ahead for DRAM latency, near
    # enough that the lines (scope lines fetched non-temporal) are still cached
    # when read.
    BATCH_AHEAD = 8
    # Small tables (fewer slots than this, ~0.8 MB of scope entries) are
    # rebuilt a third full rather than half: fewer rebuilds and shorter probes
    # where the room costs little.
    SMALL_SLOTS = 1 << 15
    # Old slots a growing table moves into its new ones per decision, and
    # again per insert (see table_move): a growth ends within a tenth of the
    # inserts the table takes before it next grows.
    MOVE_STEP = 16
    # decide_batch prefetches once all of an engine's tables together hold
    # this much (a core's L2 cache), however small each one is.
    PREFETCH_BYTES = 1 << 20
    RADIX_BITS = 11
    RADIX_BUCKETS = 1 << RADIX_BITS

# Record sizes of the snapshot format (see reference/snapshot.py: struct formats).
cdef enum:
    HEADER_SIZE = 56
    SCOPE_SIZE = 24
    RING_SIZE = 24
    NUMBER_SIZE = 52
    TABLE_SIZE = 32
    TABLE_SIZE_5 = 16  # formats 1 to 5: no sweep
    SCOPE_ENTRY_SIZE = 57
    NUMBER_ENTRY_SIZE = 40
    NUMBER_ENTRY_SIZE_2 = 32  # formats 1 and 2: no burst start

include "rings.pxi"
include "tables.pxi"
include "growth.pxi"
include "sweep.pxi"
include "decide.pxi"
include "snapshot.pxi"
include "copy.pxi"
include "warmup.pxi"


cdef class Engine:
    """Recipient tables, bucket rings and GCRA buckets; decisions in one call."""

    def __cinit__(self):
        self.scopes = NULL
        self.numbers = NULL
        self.n_scopes = self.cap_scopes = 0
        self.n_numbers = self.cap_numbers = 0

    def __init__(self, bucket_ms=60_000, window_ms=86_400_000,
                 long_bucket_ms=3_600_000, long_window_ms=604_800_000):
        if min(bucket_ms, window_ms, long_bucket_ms, long_window_ms) < 1:
            raise ValueError("bucket widths and windows must be >= 1 ms")
        if max(bucket_ms, window_ms, long_bucket_ms, long_window_ms) > MAX_WINDOW:
            raise ValueError("bucket widths and windows must be <= 2**40 ms")
        if max(window_ms // bucket_ms, long_window_ms // long_bucket_ms) > MAX_RING_BUCKETS:
            raise ValueError("a window may span at most 2**20 buckets")
        if self.n_scopes or self.n_numbers:
            raise RuntimeError("Engine.__init__ called twice")
        self.bucket_ms = bucket_ms
        self.window_ms = window_ms
        self.long_bucket_ms = long_bucket_ms
        self.long_window_ms = long_window_ms
        self.horizon_ms = max64(self.window_ms + self.bucket_ms,
                                self.long_window_ms + self.long_bucket_ms)

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n_scopes):
            scope_free(&self.scopes[i])
        for i in range(self.n_numbers):
            table_free(&self.numbers[i].table)
            warmup_free(self.numbers[i].warm)
        free(self.scopes)
        free(self.numbers)

    def __reduce__(self):
        # pickle / copy through the snapshot format
        return (type(self).restore, (self.snapshot(),))

    cdef Scope *_scope(self, Py_ssize_t scope) except NULL:
        if not 0 <= scope < self.n_scopes:
            raise IndexError(f"scope {scope} out of range")
        return &self.scopes[scope]

    cdef Number *_number(self, Py_ssize_t number) except NULL:
        if not 0 <= number < self.n_numbers:
            raise IndexError(f"number {number} out of range")
        return &self.numbers[number]

    cdef bint prefetching(self) noexcept nogil:
        # Whether this engine's recipient tables, all together, outgrow the
        # CPU caches (PREFETCH_BYTES), so decide_batch should fetch ahead.
        # Counted again only after a table was allocated or freed anywhere.
        cdef uint64_t seen = tg_table_generation()
        cdef uint64_t total = 0
        cdef Py_ssize_t i
        if seen != self.tables_seen:
            for i in range(self.n_scopes):
                total += (self.scopes[i].table.capacity * sizeof(ScopeEntry)
                          + self.scopes[i].table.marketing.capacity * sizeof(MarketingEntry))
            for i in range(self.n_numbers):
                total += self.numbers[i].table.capacity * sizeof(NumberEntry)
            self.prefetch = total >= PREFETCH_BYTES
            self.tables_seen = seen
        return self.prefetch

    # -- configuration -------------------------------------------------------

    @staticmethod
    def _check_scope_params(freq_cap, freq_window_ms):
        if not 0 <= freq_cap <= MARKETING_HISTORY:
            raise ValueError(f"freq_cap must be 0..{MARKETING_HISTORY}")
        if not 0 <= freq_window_ms <= MAX_TIME:
            raise ValueError("freq_window_ms must be 0..2**50")

    def add_scope(self, freq_cap=0, freq_window_ms=0):
        cdef Scope *grown
        cdef Scope *s
        self._check_scope_params(freq_cap, freq_window_ms)
        if self.n_scopes == self.cap_scopes:
            grown = <Scope *>realloc(self.scopes, (2 * self.cap_scopes + 4) * sizeof(Scope))
            if grown == NULL:
                raise MemoryError()
            self.scopes = grown
            self.cap_scopes = 2 * self.cap_scopes + 4
        s = &self.scopes[self.n_scopes]
        memset(s, 0, sizeof(Scope))
        if (table_init(&s.table) < 0
                or ring_init(&s.ring24, self.bucket_ms, self.window_ms, 0) < 0
                or ring_init(&s.ring7, self.long_bucket_ms, self.long_window_ms, 1) < 0
                or ring_init(&s.slots7, self.long_bucket_ms, self.long_window_ms, 1) < 0):
            scope_free(s)
            raise MemoryError()
        s.last_now = NEVER
        self.n_scopes += 1
        idx = self.n_scopes - 1
        self.set_scope_params(idx, freq_cap, freq_window_ms)
        return idx

    def set_scope_params(self, scope, freq_cap, freq_window_ms):
        cdef Scope *s
        self._check_scope_params(freq_cap, freq_window_ms)
        s = self._scope(scope)
        s.freq_cap = freq_cap
        s.freq_window = freq_window_ms
        s.horizon = max64(self.horizon_ms, s.freq_window)

    @staticmethod
    def _number_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst):
        if tput_interval_us < 1 or tput_burst < 1 or pair_interval_ms < 1 or pair_burst < 1:
            raise ValueError("intervals and bursts must be >= 1")
        tput_tolerance = (tput_burst - 1) * tput_interval_us
        pair_tolerance = (pair_burst - 1) * pair_interval_ms
        if max(tput_interval_us, pair_interval_ms, tput_tolerance, pair_tolerance) > MAX_TOLERANCE:
            raise ValueError("interval * burst must stay below 2**52")
        return tput_interval_us, tput_tolerance, pair_interval_ms, pair_tolerance

    def add_number(self, scope, tput_interval_us=12_500, tput_burst=1,
                   pair_interval_ms=6_000, pair_burst=1):
        cdef Number *grown
        cdef Number *num
        self._scope(scope)
        params = self._number_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)
        if self.n_numbers == self.cap_numbers:
            grown = <Number *>realloc(self.numbers, (2 * self.cap_numbers + 4) * sizeof(Number))
            if grown == NULL:
                raise MemoryError()
            self.numbers = grown
            self.cap_numbers = 2 * self.cap_numbers + 4
        num = &self.numbers[self.n_numbers]
        memset(num, 0, sizeof(Number))
        if table_init(&num.table) < 0:
            raise MemoryError()
        num.scope = scope
        num.clock = NEVER
        num.tput_tat = NEVER
        num.tput_interval, num.tput_tolerance, num.pair_interval, num.pair_tolerance = params
        self.n_numbers += 1
        return self.n_numbers - 1

    def set_number_params(self, number, tput_interval_us, tput_burst, pair_interval_ms,
                          pair_burst):
        cdef Number *num = self._number(number)
        params = self._number_params(tput_interval_us, tput_burst, pair_interval_ms, pair_burst)
        num.tput_interval, num.tput_tolerance, num.pair_interval, num.pair_tolerance = params

    def set_warmup(self, number, cap):
        """Cap the unique recipients ``number`` itself counts in the window, on top
        of its scope's limit (its own count kept; UNLIMITED: none, count dropped)."""
        cdef Number *num = self._number(number)
        if not 0 <= cap <= UNLIMITED:
            raise ValueError(f"cap must be 0 .. 2**62 - 1, got {cap}")
        engine_set_warmup(self, num, cap)

    # -- decisions -----------------------------------------------------------

    def decide(self, int64_t now, Py_ssize_t scope, Py_ssize_t number, uint64_t recipient,
               uint32_t flags, int64_t limit):
        cdef Scope *s = self._scope(scope)
        cdef Number *num = self._number(number)
        cdef Decision d
        check_time("now", now)
        check_recipient("recipient", recipient)
        if decide_one(self, now, s, num, recipient, flags, limit, &d) < 0:
            raise MemoryError()
        return decided(&d)

    def decide_batch(self, batch):
        """Decide every request of ``batch`` in order; fills its output columns.

        The whole batch is validated first (ValueError / IndexError naming the
        item), so a bad item decides nothing. With ``batch.halt`` set, deciding
        stops after the first row not admitted; ``batch.decided`` says how many
        rows were decided.
        """
        decide_rows(self, batch)

    # -- feedback ------------------------------------------------------------

    def release(self, scope, recipient, slot, prev_counted, number=-1):
        """Give back the slot an admit created (``slot``: its decision's ``slot``
        stamp), if no later admit relied on it; ``number`` (the number the
        admit was from; -1: unknown) gives back its warm-up count too.

        ``prev_counted`` is the decision's ``prev_counted``: never later than
        the time the admit counted the recipient. Stamps come back from
        gateways inside tickets, so one that cannot be a stamp this engine
        gave (a key, stamp or time out of range, or a ``prev_counted`` after
        the slot) releases nothing and returns False, like an unknown one.
        """
        return release_slot(self, scope, recipient, slot, prev_counted, number)

    def open_window(self, number, uint64_t recipient, int64_t window_until, int64_t fep_until):
        """Open or extend a window; never shortens one already open longer."""
        cdef Number *num = self._number(number)
        cdef NumberEntry *ne
        check_recipient("recipient", recipient)
        if window_until != NEVER:
            check_time("window_until", window_until)
        if fep_until != NEVER:
            check_time("fep_until", fep_until)
        ne = number_entry(self, num, recipient)
        ne.window_until = max64(ne.window_until, window_until)
        ne.fep_until = max64(ne.fep_until, fep_until)

    def close_window(self, number, uint64_t recipient):
        cdef NumberEntry *ne = number_find(&self._number(number).table, recipient)
        if ne != NULL:
            ne.window_until = NEVER
            ne.fep_until = NEVER

    def hold_pair(self, number, uint64_t recipient, int64_t until):
        """Meta answered 131056: the pair owes until ``until`` and bursts no sooner."""
        cdef Number *num = self._number(number)
        cdef NumberEntry *ne
        check_recipient("recipient", recipient)
        check_time("until", until)
        ne = number_entry(self, num, recipient)
        ne.pair_tat = max64(ne.pair_tat, until)
        ne.pair_start = NEVER

    def set_opt_out(self, scope, uint64_t recipient, opted_out):
        cdef Scope *s = self._scope(scope)
        cdef ScopeEntry *se
        check_recipient("recipient", recipient)
        se = scope_find(&s.table, recipient)
        if se == NULL:
            if not opted_out:
                return
            if table_reserve(&s.table, s.last_now - s.horizon) < 0:
                raise MemoryError()
            se = scope_insert(&s.table, recipient)
        if opted_out:
            se.key |= KEY_OPT_OUT
        elif se.key & KEY_OPT_OUT:
            se.key &= ~KEY_OPT_OUT
            note_last(&s.table, slot_last(se.slot))

    def slow_throughput(self, number, int64_t now, int64_t pause_ms):
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        cdef Number *num = self._number(number)
        check_time("now", now)
        if not 0 <= pause_ms <= MAX_TIME:
            raise ValueError("pause_ms must be 0..2**50")
        if now > num.clock:
            num.clock = now
        num.tput_tat = max64(num.tput_tat, (now + pause_ms) * 1000 + num.tput_tolerance)

    def take_throughput(self, number, int64_t now):
        """An inbound message: Meta counts it toward the number's throughput."""
        cdef Number *num = self._number(number)
        check_time("now", now)
        if now > num.clock:
            num.clock = now
        num.tput_tat = max64(num.tput_tat, now * 1000) + num.tput_interval

    # -- memory --------------------------------------------------------------

    def reclaim(self, int64_t now):
        """Drop every expired entry (as of ``now``, clamped per scope); return how many.

        Advances each scope's clock to ``now`` like any call that takes time.
        """
        removed = engine_reclaim(self, now)
        engine_warm_prune(self)
        return removed

    # -- reports -------------------------------------------------------------

    def usage(self, scope, int64_t now, int64_t limit):
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``."""
        cdef Scope *s = self._scope(scope)
        cdef int64_t nxt = 0
        check_time("now", now)
        now = scope_clamp(s, now)
        if limit > 0:
            nxt = ring_next_free(&s.ring24, limit, now)
        return Usage(s.ring24.total, nxt, s.ring7.total, s.slots7.total)

    def outlook(self, scope, int64_t now, int64_t period_ms, int64_t periods):
        """As the reference engine's ``outlook`` (read only)."""
        return scope_outlook(self._scope(scope), now, period_ms, periods)

    def open_windows(self, number, int64_t now):
        return open_windows(&self._number(number).table, now)

    def lookup(self, scope, number, uint64_t recipient):
        """(last_counted, opted_out, window_until, fep_until, pair_tat) of one recipient."""
        cdef ScopeEntry *se = scope_find(&self._scope(scope).table, recipient)
        cdef NumberEntry *ne = number_find(&self._number(number).table, recipient)
        return Lookup(
            slot_last(se.slot) if se != NULL else NEVER,
            bool(se.key & KEY_OPT_OUT) if se != NULL else False,
            ne.window_until if ne != NULL else NEVER,
            ne.fep_until if ne != NULL else NEVER,
            ne.pair_tat if ne != NULL else NEVER,
        )

    def warmup_usage(self, number, int64_t now):
        """(used_24h, next_slot_free_at, 0, 0) of the number's own count (0s: none)."""
        cdef Number *num = self._number(number)
        cdef Warmup *w = num.warm
        cdef int64_t nxt = 0
        check_time("now", now)
        if w == NULL:
            return Usage(0, 0, 0, 0)
        now = scope_clamp(&self.scopes[num.scope], now)
        ring_advance(&w.ring, now)
        if w.cap > 0:
            nxt = ring_next_free(&w.ring, w.cap, now)
        return Usage(w.ring.total, nxt, 0, 0)

    def scope_now(self, scope):
        return self._scope(scope).last_now

    def entries(self):
        """Recipient entries held in all tables."""
        cdef Py_ssize_t i
        cdef uint64_t n = 0
        for i in range(self.n_scopes):
            n += self.scopes[i].table.count
        for i in range(self.n_numbers):
            n += self.numbers[i].table.count
        return n

    def sweeps(self):
        """Tables with a sweep (the reclaim at the nominal fill) under way."""
        cdef Py_ssize_t i
        cdef int64_t n = 0
        for i in range(self.n_scopes):
            n += self.scopes[i].table.sweep != 0
        for i in range(self.n_numbers):
            n += self.numbers[i].table.sweep != 0
        return n

    def batch_prefetch(self):
        """Whether decide_batch fetches table lines ahead: this engine's tables
        together hold PREFETCH_BYTES or more (compiled engine only)."""
        return bool(self.prefetching())

    def spare_bytes(self):
        """(held, touched): bytes of next-size slots this engine's tables hold
        ahead of their growth, and how many of them were touched so far
        (compiled engine only; see table_warm)."""
        return engine_spare_bytes(self)

    def growth_bytes(self):
        """Bytes of old slots held by this engine's tables that are growing
        (compiled engine only; see table_move)."""
        return engine_growth_bytes(self, False)

    def marketing_growth_bytes(self):
        """Bytes of old slots held by this engine's marketing maps that are
        growing (compiled engine only; see mm_reserve)."""
        return engine_growth_bytes(self, True)

    # -- snapshots -----------------------------------------------------------

    def snapshot(self):
        """The whole engine state as bytes (format version 1, same as the reference).

        The bytes are written with the GIL released (an engine from ``copy()``
        is serialised in a worker thread while the event loop runs on)."""
        return engine_snapshot(self)

    def copy_sizes(self):
        """Bytes of each buffer a ``copy()`` of this engine needs now, in the order
        ``CopyRoom`` takes them: each scope's slots, old slots (of a growth
        under way; 0 bytes when none), marketing records and their old slots
        (of the marketing map's growth under way), then each
        number's slots and old slots."""
        return engine_copy_sizes(self)

    @staticmethod
    def copy_room(sizes):
        """Memory for a ``copy()``, of the ``copy_sizes()`` given, allocated and
        touched now (call it in another thread, ahead of the copy)."""
        return CopyRoom(sizes)

    def copy(self, room=None):
        """A new engine holding this one's state, sharing no memory with it.

        What a snapshot is taken from: the copy is made on the event loop, at
        the journal's cut (a memcpy of each table as it lies in memory, no
        sorting, with the GIL released), and serialised by ``snapshot()`` in a
        worker thread while this engine goes on deciding. ``room`` (from
        ``copy_room``) holds the memory, allocated and touched ahead in another
        thread: a table's first touch costs the kernel a page fault and zeroing
        per page, several times the copy itself. A table that has changed size
        since gets new memory here. A growth under way is copied as it stands
        (both sets of slots) and goes on in the copy; growth spares are not
        copied. The copy decides like the original if it is ever used."""
        return engine_copy(self, room)

    @classmethod
    def restore(cls, data):
        """A new engine holding the state ``data`` (from either engine's snapshot) describes."""
        return engine_restore(cls, data)


def table_bytes_held():
    """Bytes all compiled engines' recipient tables (and spares) in this process
    hold: allocations minus frees."""
    return tg_table_bytes_held()
