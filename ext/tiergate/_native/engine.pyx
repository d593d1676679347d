# cython: autotestdict=False
# The compiled decision engine: the Cython twin of src/tiergate/engine/reference.py.
#
# Same class, same methods, identical answers for identical calls (the
# differential tests drive both). Recipient tables are open-addressing hash
# tables (linear probing, splitmix64 slot index, exact uint64 keys, key 0 =
# empty) that grow and reclaim exactly when the reference's nominal
# capacities do. Time is always an argument; the decision core touches no
# Python object and allocates only when a table grows.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT64_MIN, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

cdef int64_t NEVER = -(1 << 62)
cdef int64_t MAX_TIME = 1 << 50
cdef int64_t MAX_WINDOW = 1 << 40
cdef int64_t MAX_RING_BUCKETS = 1 << 20
cdef int64_t MAX_TOLERANCE = 1 << 52
cdef uint64_t MAX_POOL_RECORDS = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1
cdef bytes SNAPSHOT_MAGIC = b"TGENGINE"

cdef extern from *:
    """
    #include <stdlib.h>
    #include <sys/mman.h>
    /* Big recipient tables get their own zeroed mapping, with transparent huge
       pages requested: random probes into a 1 GB table then miss the TLB far
       less often. Small ones come from calloc. The size decides, so the free
       matches the allocation. */
    #define TG_BIG_TABLE ((size_t)2 << 20)
    static void *tg_table_alloc(size_t bytes) {
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) {
            void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
    #if defined(MADV_HUGEPAGE)
            madvise(p, bytes, MADV_HUGEPAGE);
    #endif
            return p;
        }
    #endif
        return calloc(1, bytes);
    }
    static void tg_table_free(void *p, size_t bytes) {
        if (p == NULL) return;
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) { munmap(p, bytes); return; }
    #endif
        free(p);
    }
    /* A load the compiler must issue (its value only goes to tg_keep). */
    static inline uint64_t tg_load(const void *p) {
        return *(const volatile uint64_t *)p;
    }
    static volatile uint64_t tg_sink;
    static inline void tg_keep(uint64_t v) { tg_sink = v; }
    """
    void __builtin_prefetch(const void *addr) noexcept nogil
    uint64_t tg_load(const void *p) noexcept nogil
    void tg_keep(uint64_t v) noexcept nogil
    void *tg_table_alloc(size_t nbytes) noexcept nogil
    void tg_table_free(void *p, size_t nbytes) noexcept nogil

# Batch items (or snapshot entries) whose table slots are prefetched ahead of
# the one being worked on, so that several cache misses overlap.
# decide_batch instead loads the slots of TOUCH_CHUNK items in a row before
# deciding them: plain loads, independent of each other, which the core keeps
# in flight together. Measured on 2-core AMD EPYC (KVM) with 1 M and 10 M
# tracked recipients, software prefetches 8 to 64 items ahead did not shorten
# the batch at all, while this pass took 25-40 % off it; chunks of 8 to 1000
# items were within noise of each other (64 kept). What remains at 10 M is
# the two random cache lines read and written per decision: a C loop doing
# only those memory accesses, in the same chunks, takes ~100-200 ns an item
# on that machine against ~50 ns with small tables.
cdef enum:
    PREFETCH_AHEAD = 8
    TOUCH_CHUNK = 64
    RADIX_BITS = 11
    RADIX_BUCKETS = 1 << RADIX_BITS

# Record sizes of the snapshot format (see reference.py: struct formats).
cdef enum:
    HEADER_SIZE = 56
    SCOPE_SIZE = 24
    RING_SIZE = 24
    NUMBER_SIZE = 52
    TABLE_SIZE = 16
    SCOPE_ENTRY_SIZE = 57
    NUMBER_ENTRY_SIZE = 32


# -- arithmetic --------------------------------------------------------------

cdef inline int64_t floordiv(int64_t a, int64_t b) noexcept nogil:
    # Python's a // b for b > 0 (C division truncates toward zero).
    cdef int64_t q = a / b
    if a % b != 0 and a < 0:
        q -= 1
    return q


cdef inline int64_t floormod(int64_t a, int64_t b) noexcept nogil:
    # Python's a % b for b > 0.
    cdef int64_t r = a % b
    if r < 0:
        r += b
    return r


cdef inline int64_t max64(int64_t a, int64_t b) noexcept nogil:
    return a if a > b else b


cdef inline uint64_t max_fill(uint64_t capacity) noexcept nogil:
    return capacity * 7 // 10


cdef inline uint64_t mix(uint64_t key) noexcept nogil:
    # splitmix64 finalizer: spreads sequential phone numbers over the slots.
    key += <uint64_t>0x9E3779B97F4A7C15
    key = (key ^ (key >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    key = (key ^ (key >> 27)) * <uint64_t>0x94D049BB133111EB
    return key ^ (key >> 31)


cdef inline uint64_t touch_slots(ScopeTable *st, NumberTable *nt,
                                 uint64_t recipient) noexcept nogil:
    # Load the first two slots each table probes for recipient (into the
    # cache): the second is on the next cache line for every other home slot,
    # and a key displaced by one, or an insert past one neighbour, needs it
    # (10 M recipients: ~240 -> ~210 ns per decision against the first only).
    cdef uint64_t h = mix(recipient)
    return (tg_load(&st.slots[h & (st.capacity - 1)])
            ^ tg_load(&st.slots[(h + 1) & (st.capacity - 1)])
            ^ tg_load(&nt.slots[h & (nt.capacity - 1)])
            ^ tg_load(&nt.slots[(h + 1) & (nt.capacity - 1)]))


# -- rings -------------------------------------------------------------------

cdef int ring_init(Ring *r, int64_t width, int64_t window, int64_t strict) noexcept nogil:
    r.width = width
    r.window = window
    r.strict = strict
    r.n = window // width + 2
    r.lo = NEVER
    r.total = 0
    r.counts = <int64_t *>calloc(r.n, sizeof(int64_t))
    ring_forget(r)
    return -1 if r.counts == NULL else 0


cdef inline void ring_forget(Ring *r) noexcept nogil:
    # Reset the derived fields (after lo was set from outside).
    r.next_at = INT64_MIN
    r.cur_b = 0
    r.cur_start = 0
    r.cur_i = 0
    r.first = INT64_MIN


cdef inline void ring_advance(Ring *r, int64_t now) noexcept nogil:
    cdef int64_t new_lo, b, i
    if now < r.next_at:
        return
    new_lo = floordiv(now - r.window, r.width) + r.strict
    if new_lo <= r.lo:
        return
    if new_lo - r.lo >= r.n:
        memset(r.counts, 0, r.n * sizeof(int64_t))
        r.total = 0
    else:
        b = r.lo
        while b < new_lo:
            i = floormod(b, r.n)
            r.total -= r.counts[i]
            r.counts[i] = 0
            b += 1
    r.lo = new_lo
    r.next_at = (new_lo - r.strict + 1) * r.width + r.window


cdef inline void ring_add(Ring *r, int64_t t) noexcept nogil:
    cdef int64_t b, i
    if r.cur_start <= t and t - r.cur_start < r.width:
        b = r.cur_b
        i = r.cur_i
    else:
        b = floordiv(t, r.width)
        if b < r.lo:
            return
        i = floormod(b, r.n)
        r.cur_b = b
        r.cur_start = b * r.width
        r.cur_i = i
    if b >= r.lo:
        r.counts[i] += 1
        r.total += 1
        if b < r.first:
            r.first = b


cdef inline void ring_remove(Ring *r, int64_t t) noexcept nogil:
    cdef int64_t b, i
    if r.cur_start <= t and t - r.cur_start < r.width:
        b = r.cur_b
        i = r.cur_i
    else:
        b = floordiv(t, r.width)
        if b < r.lo:
            return
        i = floormod(b, r.n)
    if b >= r.lo:
        r.counts[i] -= 1
        r.total -= 1


cdef inline int64_t ring_next_free(Ring *r, int64_t limit, int64_t now) noexcept nogil:
    # Earliest time the total drops below limit (now if it already is).
    # The scan starts at the oldest bucket that may hold a count (a scope at its
    # limit would otherwise walk a day of empty minutes on every call).
    cdef int64_t need, acc = 0, b, c
    cdef bint seen = False
    if r.total < limit:
        return now
    need = r.total - limit + 1
    b = r.lo if r.first < r.lo else r.first
    while b < r.lo + r.n:
        c = r.counts[floormod(b, r.n)]
        if c != 0 and not seen:
            seen = True
            r.first = b  # everything from lo up to here is empty
        acc += c
        if acc >= need:
            return (b + 1) * r.width + r.window
        b += 1
    # Unreachable while total equals the sum of the buckets.
    return (r.lo + r.n) * r.width + r.window


# -- scope tables ------------------------------------------------------------

cdef inline int64_t *history(ScopeTable *t, ScopeEntry *e) noexcept nogil:
    # The entry's marketing send times, or NULL when it never got marketing.
    if e.marketing == 0:
        return NULL
    return &t.marketing.times[(e.marketing - 1) * MARKETING_HISTORY]


cdef int pool_reserve(MarketingPool *p) noexcept nogil:
    # Room for one more record. -1: out of memory.
    cdef uint64_t capacity
    cdef int64_t *times
    if p.free_head != 0 or p.used < p.capacity:
        return 0
    capacity = 2 * <uint64_t>p.capacity + 16
    if capacity > MAX_POOL_RECORDS:
        capacity = MAX_POOL_RECORDS
    if capacity <= p.used:
        return -1
    times = <int64_t *>realloc(p.times, capacity * MARKETING_HISTORY * sizeof(int64_t))
    if times == NULL:
        return -1
    p.times = times
    p.capacity = <uint32_t>capacity
    return 0


cdef uint32_t pool_take(MarketingPool *p) noexcept nogil:
    # A record with every time NEVER (room reserved by pool_reserve).
    cdef uint32_t r
    cdef int k
    if p.free_head != 0:
        r = p.free_head
        p.free_head = <uint32_t>p.times[(r - 1) * MARKETING_HISTORY]
    else:
        p.used += 1
        r = p.used
    for k in range(MARKETING_HISTORY):
        p.times[(r - 1) * MARKETING_HISTORY + k] = NEVER
    return r


cdef inline void pool_give(MarketingPool *p, uint32_t r) noexcept nogil:
    p.times[(r - 1) * MARKETING_HISTORY] = p.free_head
    p.free_head = r


cdef inline bint scope_expired(ScopeTable *t, ScopeEntry *e, int64_t cut) noexcept nogil:
    cdef int64_t *hist
    cdef int k
    if e.opt_out or e.last_counted >= cut:
        return False
    hist = history(t, e)
    if hist != NULL:
        for k in range(MARKETING_HISTORY):
            if hist[k] >= cut:
                return False
    return True


ctypedef fused TableEntry:
    ScopeEntry
    NumberEntry


cdef inline TableEntry *entry_find(TableEntry *slots, uint64_t capacity,
                                   uint64_t key) noexcept nogil:
    # Linear probing over exact keys; key 0 marks an empty slot.
    cdef uint64_t mask = capacity - 1
    cdef uint64_t i = mix(key) & mask
    if key == 0:
        return NULL
    while True:
        if slots[i].key == key:
            return &slots[i]
        if slots[i].key == 0:
            return NULL
        i = (i + 1) & mask


cdef inline TableEntry *entry_slot(TableEntry *slots, uint64_t capacity,
                                   uint64_t key) noexcept nogil:
    # The empty slot key lands in (key known absent, room known free).
    cdef uint64_t mask = capacity - 1
    cdef uint64_t i = mix(key) & mask
    while slots[i].key != 0:
        i = (i + 1) & mask
    return &slots[i]


cdef inline ScopeEntry *scope_find(ScopeTable *t, uint64_t key) noexcept nogil:
    return entry_find(t.slots, t.capacity, key)


cdef int scope_rebuild(ScopeTable *t, uint64_t capacity, int64_t cut) noexcept nogil:
    # Rehash into capacity slots, dropping expired entries. -1: out of memory.
    cdef ScopeEntry *slots = <ScopeEntry *>tg_table_alloc(capacity * sizeof(ScopeEntry))
    cdef ScopeEntry *e
    cdef uint64_t i, count = 0
    if slots == NULL:
        return -1
    for i in range(t.capacity):
        e = &t.slots[i]
        if e.key == 0:
            continue
        if scope_expired(t, e, cut):
            if e.marketing != 0:
                pool_give(&t.marketing, e.marketing)
        else:
            entry_slot(slots, capacity, e.key)[0] = e[0]
            count += 1
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = slots
    t.capacity = capacity
    t.count = count
    return 0


cdef uint64_t scope_count_expired(ScopeTable *t, int64_t cut) noexcept nogil:
    cdef uint64_t i, n = 0
    for i in range(t.capacity):
        if t.slots[i].key != 0 and scope_expired(t, &t.slots[i], cut):
            n += 1
    return n


cdef int scope_reserve(Scope *s) noexcept nogil:
    # Room for one more entry: reclaim first, double unless that freed half.
    cdef ScopeTable *t = &s.table
    cdef int64_t cut
    cdef uint64_t live
    if t.count < max_fill(t.capacity):
        return 0
    cut = s.last_now - s.horizon
    live = t.count - scope_count_expired(t, cut)
    if live >= max_fill(t.capacity) // 2:
        return scope_rebuild(t, t.capacity * 2, cut)
    return scope_rebuild(t, t.capacity, cut)


cdef ScopeEntry *scope_insert(ScopeTable *t, uint64_t key) noexcept nogil:
    cdef ScopeEntry *e = entry_slot(t.slots, t.capacity, key)
    e.key = key
    e.last_counted = NEVER
    e.last_ticket = 0
    e.marketing = 0
    e.opt_out = 0
    t.count += 1
    return e


# -- number tables -----------------------------------------------------------

cdef inline bint number_expired(NumberEntry *e, int64_t cut) noexcept nogil:
    return e.window_until < cut and e.fep_until < cut and e.pair_tat < cut


cdef inline NumberEntry *number_find(NumberTable *t, uint64_t key) noexcept nogil:
    return entry_find(t.slots, t.capacity, key)


cdef int number_rebuild(NumberTable *t, uint64_t capacity, int64_t cut) noexcept nogil:
    cdef NumberEntry *slots = <NumberEntry *>tg_table_alloc(capacity * sizeof(NumberEntry))
    cdef NumberEntry *e
    cdef uint64_t i, count = 0
    if slots == NULL:
        return -1
    for i in range(t.capacity):
        e = &t.slots[i]
        if e.key != 0 and not number_expired(e, cut):
            entry_slot(slots, capacity, e.key)[0] = e[0]
            count += 1
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = slots
    t.capacity = capacity
    t.count = count
    return 0


cdef uint64_t number_count_expired(NumberTable *t, int64_t cut) noexcept nogil:
    cdef uint64_t i, n = 0
    for i in range(t.capacity):
        if t.slots[i].key != 0 and number_expired(&t.slots[i], cut):
            n += 1
    return n


cdef int number_reserve(Number *num) noexcept nogil:
    cdef NumberTable *t = &num.table
    cdef int64_t cut
    cdef uint64_t live
    if t.count < max_fill(t.capacity):
        return 0
    cut = num.clock - num.horizon
    live = t.count - number_count_expired(t, cut)
    if live >= max_fill(t.capacity) // 2:
        return number_rebuild(t, t.capacity * 2, cut)
    return number_rebuild(t, t.capacity, cut)


cdef NumberEntry *number_insert(NumberTable *t, uint64_t key) noexcept nogil:
    cdef NumberEntry *e = entry_slot(t.slots, t.capacity, key)
    e.key = key
    e.window_until = NEVER
    e.fep_until = NEVER
    e.pair_tat = NEVER
    t.count += 1
    return e


# -- scopes ------------------------------------------------------------------

cdef inline int64_t scope_clamp(Scope *s, int64_t now) noexcept nogil:
    if now < s.last_now:
        return s.last_now
    s.last_now = now
    ring_advance(&s.ring24, now)
    ring_advance(&s.ring7, now)
    ring_advance(&s.slots7, now)
    return now


cdef void scope_free(Scope *s) noexcept nogil:
    tg_table_free(s.table.slots, s.table.capacity * sizeof(ScopeEntry))
    free(s.table.marketing.times)
    free(s.ring24.counts)
    free(s.ring7.counts)
    free(s.slots7.counts)


cdef inline void reject(Decision *d, int decision, int reason, int64_t retry_at) noexcept nogil:
    d.decision = decision
    d.reason = reason
    d.retry_at = retry_at


# -- snapshot helpers --------------------------------------------------------

cdef inline void put_u64(unsigned char *p, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        p[k] = <unsigned char>(v >> (8 * k))


cdef inline uint64_t get_u64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(8):
        v |= (<uint64_t>p[k]) << (8 * k)
    return v


cdef struct KeySlot:
    uint64_t key
    uint64_t slot


cdef KeySlot *sort_keys(KeySlot *a, uint64_t n) noexcept nogil:
    # LSD radix sort by key, RADIX_BITS a pass (few enough buckets that the
    # scatter stays in cache); passes where every key has the same digit are
    # skipped. Returns the sorted buffer (a or a new one; the other is freed).
    # NULL: out of memory.
    cdef KeySlot *tmp = <KeySlot *>malloc(max64(<int64_t>n, 1) * sizeof(KeySlot))
    cdef KeySlot *swap
    cdef uint64_t *counts = <uint64_t *>malloc(RADIX_BUCKETS * sizeof(uint64_t))
    cdef uint64_t i, d, acc, c, first
    cdef int shift
    if tmp == NULL or counts == NULL:
        free(tmp)
        free(counts)
        free(a)
        return NULL
    shift = 0
    while shift < 64:
        memset(counts, 0, RADIX_BUCKETS * sizeof(uint64_t))
        for i in range(n):
            counts[(a[i].key >> shift) & (RADIX_BUCKETS - 1)] += 1
        first = (a[0].key >> shift) & (RADIX_BUCKETS - 1) if n else 0
        if counts[first] != n:
            acc = 0
            for d in range(RADIX_BUCKETS):
                c = counts[d]
                counts[d] = acc
                acc += c
            for i in range(n):
                d = (a[i].key >> shift) & (RADIX_BUCKETS - 1)
                tmp[counts[d]] = a[i]
                counts[d] += 1
            swap = a
            a = tmp
            tmp = swap
        shift += RADIX_BITS
    free(tmp)
    free(counts)
    return a


cdef struct Cursor:
    const unsigned char *p
    Py_ssize_t pos
    Py_ssize_t size


cdef const unsigned char *take(Cursor *c, Py_ssize_t n) except NULL:
    cdef const unsigned char *p
    if n < 0 or c.size - c.pos < n:
        raise ValueError("engine snapshot is truncated")
    p = c.p + c.pos
    c.pos += n
    return p


cdef int64_t take_time(Cursor *c) except? -1:
    cdef int64_t t = <int64_t>get_u64(take(c, 8))
    if t != NEVER and not -MAX_TIME <= t <= MAX_TIME:
        raise ValueError("engine snapshot is corrupt: time out of range")
    return t


cdef int check_recipient(object name, uint64_t key) except -1:
    if key == 0:
        raise ValueError(f"{name} must be a non-zero 64-bit recipient key, got 0")
    return 0


cdef int check_time(object name, int64_t t) except -1:
    if not -MAX_TIME <= t <= MAX_TIME:
        raise ValueError(f"{name} must be within ±2**50 ms, got {t}")
    return 0


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
            tg_table_free(self.numbers[i].table.slots,
                          self.numbers[i].table.capacity * sizeof(NumberEntry))
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
        s.table.slots = <ScopeEntry *>tg_table_alloc(INITIAL_CAPACITY * sizeof(ScopeEntry))
        s.table.capacity = INITIAL_CAPACITY
        if (s.table.slots == NULL
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
        num.table.slots = <NumberEntry *>tg_table_alloc(INITIAL_CAPACITY * sizeof(NumberEntry))
        if num.table.slots == NULL:
            raise MemoryError()
        num.table.capacity = INITIAL_CAPACITY
        num.scope = scope
        num.horizon = self.horizon_ms
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

    # -- decisions -----------------------------------------------------------

    cdef int decide_one(self, int64_t now, Scope *s, Number *num, uint64_t recipient,
                        uint32_t flags, int64_t limit, uint64_t ticket,
                        Decision *d) noexcept nogil:
        # The decision core: checks first, then every mutation. -1: out of memory
        # (nothing consumed).
        cdef ScopeEntry *se
        cdef NumberEntry *ne
        cdef Ring *ring = &s.ring24
        cdef int64_t last, now_us, tput_tat, pair_tat, cut, oldest
        cdef int64_t recent[MARKETING_HISTORY]
        cdef int64_t *hist
        cdef int64_t t
        cdef int k, j, n_recent, oldest_at
        cdef bint template, marketing, in_window, in_fep, counting, already, needs_slot

        now = scope_clamp(s, now)
        if now > num.clock:
            num.clock = now
        se = scope_find(&s.table, recipient)
        ne = number_find(&num.table, recipient)
        template = (flags & F_TEMPLATE) != 0
        marketing = (flags & F_MARKETING) != 0
        last = se.last_counted if se != NULL else NEVER
        in_window = ne != NULL and now < ne.window_until
        in_fep = ne != NULL and now < ne.fep_until
        counting = template and not in_window and not in_fep
        already = counting and last > now - self.window_ms
        needs_slot = counting and not already
        now_us = now * 1000
        tput_tat = max64(num.tput_tat, now_us)
        pair_tat = max64(ne.pair_tat if ne != NULL else NEVER, now)

        d.retry_at = 0
        d.counted = 0
        d.used = ring.total
        d.prev_counted = last

        if not (flags & F_FORCE):
            # 4. free-form needs an open customer service window
            if not template and not (in_window or (in_fep and (flags & F_FEP_FREE_FORM))):
                reject(d, REJECT, OUTSIDE_WINDOW, 0)
                return 0
            # 5. opted-out recipients get no marketing
            if marketing and se != NULL and se.opt_out:
                reject(d, REJECT, RECIPIENT_OPTED_OUT, 0)
                return 0
            # 6. messaging limit (business-initiated messages only)
            if counting:
                if flags & F_RESTRICTED:
                    reject(d, REJECT, SENDER_RESTRICTED, 0)
                    return 0
                if needs_slot and ring.total >= limit:
                    if limit <= 0:
                        reject(d, REJECT, MESSAGING_LIMIT, 0)
                    else:
                        reject(d, RETRY_LATER, MESSAGING_LIMIT,
                               ring_next_free(ring, limit, now))
                    return 0
            # 7. protective rules
            if marketing:
                hist = history(&s.table, se) if se != NULL else NULL
                if s.freq_cap > 0 and hist != NULL:
                    cut = now - s.freq_window
                    n_recent = 0
                    for k in range(MARKETING_HISTORY):
                        t = hist[k]
                        if t > cut:
                            # insertion sort: recent stays ascending
                            j = n_recent
                            while j > 0 and recent[j - 1] > t:
                                recent[j] = recent[j - 1]
                                j -= 1
                            recent[j] = t
                            n_recent += 1
                    if n_recent >= s.freq_cap:
                        reject(d, RETRY_LATER, MARKETING_FREQUENCY,
                               recent[n_recent - s.freq_cap] + s.freq_window)
                        return 0
                if flags & F_QUALITY_BLOCK:
                    reject(d, REJECT, QUALITY_PROTECTION, 0)
                    return 0
            # 8. sender throughput (GCRA, microseconds); retry rounds up to ms
            if tput_tat - num.tput_tolerance > now_us:
                reject(d, RETRY_LATER, THROUGHPUT,
                       -floordiv(num.tput_tolerance - tput_tat, 1000))
                return 0
            # 9. pair rate (GCRA, milliseconds)
            if pair_tat - num.pair_tolerance > now:
                reject(d, RETRY_LATER, PAIR_RATE, pair_tat - num.pair_tolerance)
                return 0

        d.decision = ADMIT
        d.reason = OK
        d.counted = 1 if needs_slot else 0
        if flags & F_DRY_RUN:
            d.used = ring.total + d.counted
            return 0

        # every check passed: make room (may rehash; nothing consumed yet) ...
        if se == NULL and (counting or marketing):
            if scope_reserve(s) < 0:
                return -1
        if marketing and (se == NULL or se.marketing == 0):
            if pool_reserve(&s.table.marketing) < 0:
                return -1
        if ne == NULL:
            if number_reserve(num) < 0:
                return -1
            ne = number_insert(&num.table, recipient)
        if se == NULL and (counting or marketing):
            se = scope_insert(&s.table, recipient)
        # ... then consume
        if counting:
            ring_remove(ring, last)
            ring_add(ring, now)
            ring_remove(&s.ring7, last)
            ring_add(&s.ring7, now)
            se.last_counted = now
            if needs_slot:
                ring_add(&s.slots7, now)
                se.last_ticket = ticket
            else:
                se.last_ticket = 0  # this admit relies on the earlier slot
        if marketing:
            if se.marketing == 0:
                se.marketing = pool_take(&s.table.marketing)
            hist = history(&s.table, se)
            oldest_at = 0
            oldest = hist[0]
            for k in range(1, MARKETING_HISTORY):
                if hist[k] < oldest:
                    oldest = hist[k]
                    oldest_at = k
            hist[oldest_at] = now
        num.tput_tat = tput_tat + num.tput_interval
        ne.pair_tat = pair_tat + num.pair_interval
        d.used = ring.total
        return 0

    cdef inline void prefetch(self, Py_ssize_t scope, Py_ssize_t number,
                              uint64_t recipient) noexcept nogil:
        # Start loading the table slots a later batch item will probe, so the
        # cache misses of several items overlap.
        cdef ScopeTable *st = &self.scopes[scope].table
        cdef NumberTable *nt = &self.numbers[number].table
        cdef uint64_t h = mix(recipient)
        __builtin_prefetch(&st.slots[h & (st.capacity - 1)])
        __builtin_prefetch(&nt.slots[h & (nt.capacity - 1)])

    def decide(self, int64_t now, Py_ssize_t scope, Py_ssize_t number, uint64_t recipient,
               uint32_t flags, int64_t limit, uint64_t ticket):
        cdef Scope *s = self._scope(scope)
        cdef Number *num = self._number(number)
        cdef Decision d
        check_time("now", now)
        check_recipient("recipient", recipient)
        if self.decide_one(now, s, num, recipient, flags, limit, ticket, &d) < 0:
            raise MemoryError()
        return (d.decision, d.reason, d.retry_at, d.counted, d.used, d.prev_counted)

    def decide_batch(self, batch):
        """Decide every request of ``batch`` in order; fills its output columns.

        The whole batch is validated first (ValueError / IndexError naming the
        item), so a bad item decides nothing.
        """
        cdef const long long[::1] now = batch.now
        cdef const int[::1] scope = batch.scope
        cdef const int[::1] number = batch.number
        cdef const unsigned long long[::1] recipient = batch.recipient
        cdef const unsigned int[::1] flags = batch.flags
        cdef const long long[::1] limit = batch.limit
        cdef const unsigned long long[::1] ticket = batch.ticket
        cdef signed char[::1] decision
        cdef signed char[::1] reason
        cdef signed char[::1] counted
        cdef long long[::1] retry_at
        cdef long long[::1] used
        cdef long long[::1] prev_counted
        cdef Py_ssize_t n = now.shape[0], i, j, end, bad = -1
        cdef uint64_t touched
        cdef Decision d
        cdef int rc = 0
        for name, size in (("scope", scope.shape[0]), ("number", number.shape[0]),
                           ("recipient", recipient.shape[0]), ("flags", flags.shape[0]),
                           ("limit", limit.shape[0]), ("ticket", ticket.shape[0])):
            if size != n:
                raise ValueError(f"batch column {name} has {size} items, not {n}")
        for i in range(n):
            if not 0 <= scope[i] < self.n_scopes or not 0 <= number[i] < self.n_numbers:
                bad = i
                break
            if recipient[i] == 0 or not -MAX_TIME <= now[i] <= MAX_TIME:
                bad = i
                break
        if bad >= 0:
            i = bad
            if not 0 <= scope[i] < self.n_scopes:
                raise IndexError(f"batch item {i}: scope {scope[i]} out of range")
            if not 0 <= number[i] < self.n_numbers:
                raise IndexError(f"batch item {i}: number {number[i]} out of range")
            if recipient[i] == 0:
                raise ValueError(f"batch item {i}: recipient key 0 is not a recipient")
            raise ValueError(f"batch item {i}: now must be within ±2**50 ms")
        batch.prepare_outputs()
        decision = batch.decision
        reason = batch.reason
        counted = batch.counted
        retry_at = batch.retry_at
        used = batch.used
        prev_counted = batch.prev_counted
        i = 0
        while i < n and rc == 0:
            # the slots of the next TOUCH_CHUNK items, loaded together (see TOUCH_CHUNK)
            end = i + TOUCH_CHUNK if i + TOUCH_CHUNK < n else n
            touched = 0
            for j in range(i, end):
                touched ^= touch_slots(&self.scopes[scope[j]].table,
                                       &self.numbers[number[j]].table, recipient[j])
            tg_keep(touched)
            while i < end:
                rc = self.decide_one(now[i], &self.scopes[scope[i]], &self.numbers[number[i]],
                                     recipient[i], flags[i], limit[i], ticket[i], &d)
                if rc < 0:
                    break
                decision[i] = <signed char>d.decision
                reason[i] = <signed char>d.reason
                counted[i] = <signed char>d.counted
                retry_at[i] = d.retry_at
                used[i] = d.used
                prev_counted[i] = d.prev_counted
                i += 1
        if rc < 0:
            raise MemoryError(f"batch item {i}: out of memory growing a recipient table")

    # -- feedback ------------------------------------------------------------

    def release(self, scope, recipient, ticket, prev_counted):
        """Give back the slot ``ticket`` created, if no later admit relied on it.

        ``prev_counted`` is the decision's ``prev_counted``: never later than
        the time the ticket's admit counted the recipient. Tickets come back
        from gateways, so one that cannot be a ticket this engine issued (a
        key, id or time out of range, or a ``prev_counted`` after the slot)
        releases nothing and returns False, like an unknown ticket.
        """
        cdef Scope *s = self._scope(scope)
        cdef ScopeEntry *se
        cdef int64_t t, prev
        if not (0 < recipient <= U64_MAX and 0 < ticket <= U64_MAX):
            return False
        if prev_counted != NEVER and not -MAX_TIME <= prev_counted <= MAX_TIME:
            return False
        prev = prev_counted
        se = scope_find(&s.table, <uint64_t>recipient)
        if se == NULL or se.last_ticket != <uint64_t>ticket:
            return False
        t = se.last_counted
        if prev > t:
            return False
        ring_remove(&s.ring24, t)
        ring_add(&s.ring24, prev)
        ring_remove(&s.ring7, t)
        ring_add(&s.ring7, prev)
        ring_remove(&s.slots7, t)
        se.last_counted = prev
        se.last_ticket = 0
        return True

    def open_window(self, number, uint64_t recipient, int64_t window_until, int64_t fep_until):
        """Open or extend a window; never shortens one already open longer."""
        cdef Number *num = self._number(number)
        cdef NumberEntry *ne
        check_recipient("recipient", recipient)
        if window_until != NEVER:
            check_time("window_until", window_until)
        if fep_until != NEVER:
            check_time("fep_until", fep_until)
        ne = number_find(&num.table, recipient)
        if ne == NULL:
            if number_reserve(num) < 0:
                raise MemoryError()
            ne = number_insert(&num.table, recipient)
        ne.window_until = max64(ne.window_until, window_until)
        ne.fep_until = max64(ne.fep_until, fep_until)

    def close_window(self, number, uint64_t recipient):
        cdef NumberEntry *ne = number_find(&self._number(number).table, recipient)
        if ne != NULL:
            ne.window_until = NEVER
            ne.fep_until = NEVER

    def set_opt_out(self, scope, uint64_t recipient, opted_out):
        cdef Scope *s = self._scope(scope)
        cdef ScopeEntry *se
        check_recipient("recipient", recipient)
        se = scope_find(&s.table, recipient)
        if se == NULL:
            if not opted_out:
                return
            if scope_reserve(s) < 0:
                raise MemoryError()
            se = scope_insert(&s.table, recipient)
        se.opt_out = 1 if opted_out else 0

    def slow_throughput(self, number, int64_t now, int64_t pause_ms):
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        cdef Number *num = self._number(number)
        check_time("now", now)
        if not 0 <= pause_ms <= MAX_TIME:
            raise ValueError("pause_ms must be 0..2**50")
        if now > num.clock:
            num.clock = now
        num.tput_tat = max64(num.tput_tat, (now + pause_ms) * 1000 + num.tput_tolerance)

    # -- memory --------------------------------------------------------------

    def reclaim(self, int64_t now):
        """Drop every expired entry (as of ``now``, clamped per scope); return how many.

        Advances each scope's clock to ``now`` like any call that takes time.
        """
        cdef Py_ssize_t i
        cdef Scope *s
        cdef Number *num
        cdef uint64_t removed = 0, dead
        cdef int64_t cut
        check_time("now", now)
        for i in range(self.n_scopes):
            s = &self.scopes[i]
            scope_clamp(s, now)
            cut = s.last_now - s.horizon
            dead = scope_count_expired(&s.table, cut)
            if dead:
                if scope_rebuild(&s.table, s.table.capacity, cut) < 0:
                    raise MemoryError()
                removed += dead
        for i in range(self.n_numbers):
            num = &self.numbers[i]
            if now > num.clock:
                num.clock = now
            cut = num.clock - num.horizon
            dead = number_count_expired(&num.table, cut)
            if dead:
                if number_rebuild(&num.table, num.table.capacity, cut) < 0:
                    raise MemoryError()
                removed += dead
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
        return (s.ring24.total, nxt, s.ring7.total, s.slots7.total)

    def open_windows(self, number, int64_t now):
        cdef NumberTable *t = &self._number(number).table
        cdef uint64_t i
        cdef int64_t n = 0
        for i in range(t.capacity):
            if t.slots[i].key != 0 and (now < t.slots[i].window_until
                                        or now < t.slots[i].fep_until):
                n += 1
        return n

    def lookup(self, scope, number, uint64_t recipient):
        """(last_counted, opted_out, window_until, fep_until, pair_tat) of one recipient."""
        cdef ScopeEntry *se = scope_find(&self._scope(scope).table, recipient)
        cdef NumberEntry *ne = number_find(&self._number(number).table, recipient)
        return (
            se.last_counted if se != NULL else NEVER,
            bool(se.opt_out) if se != NULL else False,
            ne.window_until if ne != NULL else NEVER,
            ne.fep_until if ne != NULL else NEVER,
            ne.pair_tat if ne != NULL else NEVER,
        )

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

    # -- snapshots -----------------------------------------------------------

    def snapshot(self):
        """The whole engine state as bytes (format version 1, same as the reference)."""
        cdef Py_ssize_t size = HEADER_SIZE, i
        cdef Scope *s
        cdef Number *num
        cdef Ring *rings[3]
        cdef int r
        cdef int64_t b
        cdef unsigned char *p
        for i in range(self.n_scopes):
            s = &self.scopes[i]
            size += SCOPE_SIZE + 3 * RING_SIZE + TABLE_SIZE
            size += 8 * (s.ring24.n + s.ring7.n + s.slots7.n)
            size += SCOPE_ENTRY_SIZE * <Py_ssize_t>s.table.count
        for i in range(self.n_numbers):
            size += NUMBER_SIZE + TABLE_SIZE
            size += NUMBER_ENTRY_SIZE * <Py_ssize_t>self.numbers[i].table.count
        out = PyBytes_FromStringAndSize(NULL, size)
        p = <unsigned char *>PyBytes_AS_STRING(out)
        memcpy(p, <const char *>SNAPSHOT_MAGIC, 8)
        put_u64(p + 8, SNAPSHOT_VERSION)  # version (u32) + reserved (u32, zero)
        put_u64(p + 16, self.bucket_ms)
        put_u64(p + 24, self.window_ms)
        put_u64(p + 32, self.long_bucket_ms)
        put_u64(p + 40, self.long_window_ms)
        put_u64(p + 48, <uint64_t>self.n_scopes | (<uint64_t>self.n_numbers << 32))
        p += HEADER_SIZE
        for i in range(self.n_scopes):
            s = &self.scopes[i]
            put_u64(p, s.freq_cap)
            put_u64(p + 8, s.freq_window)
            put_u64(p + 16, s.last_now)
            p += SCOPE_SIZE
            rings[0] = &s.ring24
            rings[1] = &s.ring7
            rings[2] = &s.slots7
            for r in range(3):
                put_u64(p, rings[r].n)
                put_u64(p + 8, rings[r].lo)
                put_u64(p + 16, rings[r].total)
                p += RING_SIZE
                for b in range(rings[r].n):
                    put_u64(p, rings[r].counts[b])
                    p += 8
            p = put_scope_table(&s.table, p)
        for i in range(self.n_numbers):
            num = &self.numbers[i]
            put_u64(p, <uint64_t>num.scope)  # low 4 bytes: u32 scope
            p += 4
            put_u64(p, num.clock)
            put_u64(p + 8, num.tput_tat)
            put_u64(p + 16, num.tput_interval)
            put_u64(p + 24, num.tput_tolerance)
            put_u64(p + 32, num.pair_interval)
            put_u64(p + 40, num.pair_tolerance)
            p += NUMBER_SIZE - 4
            p = put_number_table(&num.table, p)
        return out

    @classmethod
    def restore(cls, data):
        """A new engine holding the state ``data`` (from either engine's snapshot) describes."""
        cdef const unsigned char[::1] buf = data
        cdef Cursor c
        cdef const unsigned char *p
        cdef Engine eng
        cdef Scope *s
        cdef Number *num
        cdef Ring *rings[3]
        cdef int r
        cdef int64_t b, total, v, n_scopes, n_numbers
        cdef uint32_t version
        c.p = &buf[0] if buf.shape[0] > 0 else NULL
        c.pos = 0
        c.size = buf.shape[0]
        p = take(&c, HEADER_SIZE)
        if p[0:8] != SNAPSHOT_MAGIC:
            raise ValueError("not a tiergate engine snapshot (bad magic)")
        version = <uint32_t>get_u64(p + 8)
        if version > SNAPSHOT_VERSION:
            raise ValueError(
                f"engine snapshot format version {version} is newer than this tiergate "
                f"supports ({SNAPSHOT_VERSION}); upgrade tiergate to load it"
            )
        if version < 1:
            raise ValueError(f"engine snapshot format version {version} is not valid")
        eng = cls(<int64_t>get_u64(p + 16), <int64_t>get_u64(p + 24),
                  <int64_t>get_u64(p + 32), <int64_t>get_u64(p + 40))
        n_scopes = get_u64(p + 48) & 0xFFFFFFFF
        n_numbers = get_u64(p + 48) >> 32
        for _ in range(n_scopes):
            p = take(&c, SCOPE_SIZE)
            s = &eng.scopes[eng.add_scope(<int64_t>get_u64(p), <int64_t>get_u64(p + 8))]
            c.pos -= 8
            s.last_now = take_time(&c)
            rings[0] = &s.ring24
            rings[1] = &s.ring7
            rings[2] = &s.slots7
            for r in range(3):
                p = take(&c, RING_SIZE)
                if <int64_t>get_u64(p) != rings[r].n:
                    raise ValueError("engine snapshot is corrupt: ring size does not match")
                rings[r].lo = <int64_t>get_u64(p + 8)
                ring_forget(rings[r])
                rings[r].total = <int64_t>get_u64(p + 16)
                p = take(&c, 8 * rings[r].n)
                total = 0
                for b in range(rings[r].n):
                    v = <int64_t>get_u64(p + 8 * b)
                    if v < 0:
                        raise ValueError("engine snapshot is corrupt: ring total does not match")
                    rings[r].counts[b] = v
                    total += v
                if total != rings[r].total:
                    raise ValueError("engine snapshot is corrupt: ring total does not match")
            restore_scope_table(&s.table, &c)
        for _ in range(n_numbers):
            p = take(&c, NUMBER_SIZE)
            scope = get_u64(p) & 0xFFFFFFFF
            if scope >= n_scopes:
                raise ValueError("engine snapshot is corrupt: number refers to a missing scope")
            t_int = <int64_t>get_u64(p + 20)
            t_tol = <int64_t>get_u64(p + 28)
            p_int = <int64_t>get_u64(p + 36)
            p_tol = <int64_t>get_u64(p + 44)
            if t_int < 1 or p_int < 1 or t_tol % t_int or p_tol % p_int:
                raise ValueError("engine snapshot is corrupt: bucket tolerance")
            num = &eng.numbers[eng.add_number(scope, t_int, t_tol // t_int + 1,
                                              p_int, p_tol // p_int + 1)]
            c.pos -= NUMBER_SIZE - 4
            num.clock = take_time(&c)
            num.tput_tat = <int64_t>get_u64(take(&c, 8))
            c.pos += 32
            restore_number_table(&num.table, &c)
        if c.pos != c.size:
            raise ValueError("engine snapshot is corrupt: trailing bytes")
        return eng


cdef int take_table(Cursor *c, uint64_t *capacity, uint64_t *count) except -1:
    cdef const unsigned char *p = take(c, TABLE_SIZE)
    capacity[0] = get_u64(p)
    count[0] = get_u64(p + 8)
    if (capacity[0] < INITIAL_CAPACITY or capacity[0] & (capacity[0] - 1)
            or capacity[0] > (<uint64_t>1 << 40) or count[0] > max_fill(capacity[0])):
        raise ValueError("engine snapshot is corrupt: table capacity")
    return 0


cdef int restore_scope_table(ScopeTable *t, Cursor *c) except -1:
    cdef uint64_t capacity, count, key, i, prev = 0
    cdef const unsigned char *p
    cdef ScopeEntry *e
    cdef ScopeEntry *slots
    cdef int64_t *hist
    cdef int k, j
    take_table(c, &capacity, &count)
    p = take(c, <Py_ssize_t>(count * SCOPE_ENTRY_SIZE))
    slots = <ScopeEntry *>tg_table_alloc(capacity * sizeof(ScopeEntry))
    if slots == NULL:
        raise MemoryError()
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = slots
    t.capacity = capacity
    t.count = 0
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            __builtin_prefetch(
                &t.slots[mix(get_u64(p + PREFETCH_AHEAD * SCOPE_ENTRY_SIZE)) & (capacity - 1)])
        key = get_u64(p)
        if key <= prev:
            raise ValueError("engine snapshot is corrupt: keys not strictly ascending")
        prev = key
        e = scope_insert(t, key)
        e.last_counted = <int64_t>get_u64(p + 8)
        e.last_ticket = get_u64(p + 16)
        for k in range(MARKETING_HISTORY):
            if <int64_t>get_u64(p + 24 + 8 * k) != NEVER:
                if pool_reserve(&t.marketing) < 0:
                    raise MemoryError()
                e.marketing = pool_take(&t.marketing)
                hist = history(t, e)
                for j in range(MARKETING_HISTORY):
                    hist[j] = <int64_t>get_u64(p + 24 + 8 * j)
                break
        e.opt_out = p[24 + 8 * MARKETING_HISTORY] != 0
        p += SCOPE_ENTRY_SIZE
    return 0


cdef int restore_number_table(NumberTable *t, Cursor *c) except -1:
    cdef uint64_t capacity, count, key, i, prev = 0
    cdef const unsigned char *p
    cdef NumberEntry *e
    cdef NumberEntry *slots
    take_table(c, &capacity, &count)
    p = take(c, <Py_ssize_t>(count * NUMBER_ENTRY_SIZE))
    slots = <NumberEntry *>tg_table_alloc(capacity * sizeof(NumberEntry))
    if slots == NULL:
        raise MemoryError()
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = slots
    t.capacity = capacity
    t.count = 0
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            __builtin_prefetch(
                &t.slots[mix(get_u64(p + PREFETCH_AHEAD * NUMBER_ENTRY_SIZE)) & (capacity - 1)])
        key = get_u64(p)
        if key <= prev:
            raise ValueError("engine snapshot is corrupt: keys not strictly ascending")
        prev = key
        e = number_insert(t, key)
        e.window_until = <int64_t>get_u64(p + 8)
        e.fep_until = <int64_t>get_u64(p + 16)
        e.pair_tat = <int64_t>get_u64(p + 24)
        p += NUMBER_ENTRY_SIZE
    return 0


cdef unsigned char *put_scope_table(ScopeTable *t, unsigned char *p) except NULL:
    cdef KeySlot *keys = <KeySlot *>malloc(max64(<int64_t>t.count, 1) * sizeof(KeySlot))
    cdef uint64_t i, n = 0
    cdef ScopeEntry *e
    cdef int64_t *hist
    cdef int k
    if keys == NULL:
        raise MemoryError()
    for i in range(t.capacity):
        if t.slots[i].key != 0:
            keys[n].key = t.slots[i].key
            keys[n].slot = i
            n += 1
    keys = sort_keys(keys, n)
    if keys == NULL:
        raise MemoryError()
    put_u64(p, t.capacity)
    put_u64(p + 8, n)
    p += TABLE_SIZE
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            __builtin_prefetch(&t.slots[keys[i + PREFETCH_AHEAD].slot])
        e = &t.slots[keys[i].slot]
        put_u64(p, e.key)
        put_u64(p + 8, e.last_counted)
        put_u64(p + 16, e.last_ticket)
        hist = history(t, e)
        for k in range(MARKETING_HISTORY):
            put_u64(p + 24 + 8 * k, hist[k] if hist != NULL else NEVER)
        p[24 + 8 * MARKETING_HISTORY] = e.opt_out
        p += SCOPE_ENTRY_SIZE
    free(keys)
    return p

cdef unsigned char *put_number_table(NumberTable *t, unsigned char *p) except NULL:
    cdef KeySlot *keys = <KeySlot *>malloc(max64(<int64_t>t.count, 1) * sizeof(KeySlot))
    cdef uint64_t i, n = 0
    cdef NumberEntry *e
    if keys == NULL:
        raise MemoryError()
    for i in range(t.capacity):
        if t.slots[i].key != 0:
            keys[n].key = t.slots[i].key
            keys[n].slot = i
            n += 1
    keys = sort_keys(keys, n)
    if keys == NULL:
        raise MemoryError()
    put_u64(p, t.capacity)
    put_u64(p + 8, n)
    p += TABLE_SIZE
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            __builtin_prefetch(&t.slots[keys[i + PREFETCH_AHEAD].slot])
        e = &t.slots[keys[i].slot]
        put_u64(p, e.key)
        put_u64(p + 8, e.window_until)
        put_u64(p + 16, e.fep_until)
        put_u64(p + 24, e.pair_tat)
        p += NUMBER_ENTRY_SIZE
    free(keys)
    return p
