# cython: autotestdict=False
# The compiled decision engine: the Cython twin of src/tiergate/engine/reference.py.
#
# Same class, same methods, identical answers for identical calls (the
# differential tests drive both). Recipient tables are Robin Hood hash tables
# (exact keys, splitmix64 scaled to any table size, key 0 = empty) that
# reclaim exactly when the reference's nominal capacities say so and size
# their slots on their own, half to four fifths full. Time is always an
# argument; the decision core touches no Python object and allocates only when
# a table grows.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

cdef int64_t MAX_TIME = 1 << 50
cdef int64_t MAX_WINDOW = 1 << 40
cdef int64_t MAX_RING_BUCKETS = 1 << 20
cdef int64_t MAX_TOLERANCE = 1 << 52
U64_MAX = (1 << 64) - 1
cdef bytes SNAPSHOT_MAGIC = b"TGENGINE"

cdef extern from *:
    """
    #include <pthread.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    /* Big recipient tables get their own zeroed mapping, with transparent huge
       pages requested: random probes into a 1 GB table then miss the TLB far
       less often. Small ones come from calloc. The size decides, so the free
       matches the allocation. */
    #define TG_BIG_TABLE ((size_t)2 << 20)
    /* Counts table allocations and frees in this process, so that an engine
       recounts its tables' bytes only after one (see Engine.prefetching). */
    static uint64_t tg_table_changes = 1;
    /* Bytes the tables of every engine in this process hold (tests check
       that growth, reclaim and freeing give all of it back). */
    static uint64_t tg_table_bytes = 0;
    static void *tg_table_alloc(size_t bytes) {
        void *p;
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) {
            p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return NULL;
    #if defined(MADV_HUGEPAGE)
            madvise(p, bytes, MADV_HUGEPAGE);
    #endif
            __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
            return p;
        }
    #endif
        p = calloc(1, bytes);
        if (p != NULL) {
            __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
        }
        return p;
    }
    static void tg_table_free(void *p, size_t bytes) {
        if (p == NULL) return;
        __atomic_fetch_add(&tg_table_changes, 1, __ATOMIC_RELAXED);
        __atomic_fetch_sub(&tg_table_bytes, bytes, __ATOMIC_RELAXED);
    #if defined(MAP_ANONYMOUS)
        if (bytes >= TG_BIG_TABLE) { munmap(p, bytes); return; }
    #endif
        free(p);
    }
    /* Write a zero into every page of [p + from, p + to): the first write to
       a page of a new mapping is when the kernel zeroes it. */
    static inline void tg_touch(void *p, size_t from, size_t to) {
        volatile char *c = (volatile char *)p;
        for (size_t i = from; i < to; i += 4096) c[i] = 0;
    }
    static inline uint64_t tg_table_bytes_held(void) {
        return __atomic_load_n(&tg_table_bytes, __ATOMIC_RELAXED);
    }
    static inline uint64_t tg_table_generation(void) {
        return __atomic_load_n(&tg_table_changes, __ATOMIC_RELAXED);
    }
    /* The start of the cache line holding p. */
    static inline const char *tg_line(const void *p) {
        return (const char *)((uintptr_t)p & ~(uintptr_t)63);
    }
    /* Start fetching the cache line holding p. An asm statement on x86: GCC 12
       at -O2 deleted the __builtin_prefetch calls of decide_batch once they
       sat in a helper behind a condition (the 10 M batch then took 2.5x as
       long), and a volatile asm is never deleted. Prefetches do not fault. */
    static inline void tg_prefetch(const void *p) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
    #else
        __builtin_prefetch(p);
    #endif
    }
    /* The same for a line wanted once, soon: decide_batch's scope-table lines,
       read and written within a few microseconds and then not for minutes.
       The non-temporal hint keeps them from pushing the number tables and
       rings every decision reads out of the L2 cache. On a 2-core Xeon (KVM),
       alternating runs of benchmarks/engine.py's side-by-side at 10 M: 124.2
       -> 109.1 ns a decision (medians of 4); the 20-sender peers workload
       83.1 and 83.5 ns, the same. */
    static inline void tg_prefetch_once(const void *p) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __asm__ volatile("prefetchnta %0" : : "m"(*(const char *)p));
    #else
        __builtin_prefetch(p, 0, 0);
    #endif
    }
    /* An entry's key word: the recipient key (below 2**54, the range
       constants.recipient_key packs E.164 numbers into) in the low bits,
       then the entry's distance from its home slot (saturating at DIST_MAX),
       then, in scope entries, two flags. */
    #define TG_KEY_OPT_OUT ((uint64_t)1 << 63)
    #define TG_KEY_MARKETING ((uint64_t)1 << 62)
    #define TG_DIST_SHIFT 54
    #define TG_DIST_MAX ((uint64_t)0xFF)
    #define TG_DIST_BITS (TG_DIST_MAX << TG_DIST_SHIFT)
    #define TG_KEY_MASK (((uint64_t)1 << TG_DIST_SHIFT) - 1)
    /* h scaled from [0, 2**64) to [0, n): a home slot for any table size. */
    static inline uint64_t tg_scale(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    /* One memcpy of Engine.copy(). */
    typedef struct { char *dst; const char *src; size_t n; } tg_copy_job;
    static void *tg_copy_run(void *arg) {
        tg_copy_job *j;
        for (j = (tg_copy_job *)arg; j->dst != NULL; j++) memcpy(j->dst, j->src, j->n);
        return NULL;
    }
    /* Below this many bytes in all, Engine.copy() copies in one thread. */
    #define TG_COPY_SPLIT_BYTES ((size_t)8 << 20)
    /* Do every copy of jobs[0..count) (dst never NULL), the bytes split in two
       halves, one of them copied by a second thread while this one copies the
       other: the event loop waits for the copy, and one core alone does not
       reach the memory's bandwidth (3 M recipients' tables, 335 MB, on the
       project's 2-core machine under load: 0.057 s in one thread, 0.048 s in
       two, best of 12 each). */
    static void tg_copy_all(const tg_copy_job *jobs, size_t count) {
        size_t total = 0, half, acc = 0, cut, i, m = 0, t = 0;
        tg_copy_job *mine, *theirs;
        pthread_t helper;
        for (i = 0; i < count; i++) total += jobs[i].n;
        mine = total >= TG_COPY_SPLIT_BYTES ? calloc(count + 2, sizeof *mine) : NULL;
        theirs = mine != NULL ? calloc(count + 2, sizeof *theirs) : NULL;
        if (theirs == NULL) {
            free(mine);
            for (i = 0; i < count; i++) memcpy(jobs[i].dst, jobs[i].src, jobs[i].n);
            return;
        }
        half = total / 2;
        for (i = 0; i < count; i++) {
            if (acc >= half) {
                theirs[t++] = jobs[i];
            } else if (acc + jobs[i].n <= half) {
                mine[m++] = jobs[i];
            } else {
                cut = half - acc;
                mine[m].dst = jobs[i].dst;
                mine[m].src = jobs[i].src;
                mine[m++].n = cut;
                theirs[t].dst = jobs[i].dst + cut;
                theirs[t].src = jobs[i].src + cut;
                theirs[t++].n = jobs[i].n - cut;
            }
            acc += jobs[i].n;
        }
        /* calloc'd: the entry after the last has dst NULL, the end mark */
        if (pthread_create(&helper, NULL, tg_copy_run, theirs) != 0) {
            tg_copy_run(theirs);
            tg_copy_run(mine);
        } else {
            tg_copy_run(mine);
            pthread_join(helper, NULL);
        }
        free(mine);
        free(theirs);
    }
    """
    ctypedef struct tg_copy_job:
        char *dst
        const char *src
        size_t n
    void tg_copy_all(const tg_copy_job *jobs, size_t count) noexcept nogil
    void tg_prefetch(const void *p) noexcept nogil
    void tg_prefetch_once(const void *p) noexcept nogil
    const char *tg_line(const void *p) noexcept nogil
    uint64_t tg_scale(uint64_t h, uint64_t n) noexcept nogil
    const uint64_t KEY_OPT_OUT "TG_KEY_OPT_OUT"
    const uint64_t KEY_MARKETING "TG_KEY_MARKETING"
    const int DIST_SHIFT "TG_DIST_SHIFT"
    const uint64_t DIST_MAX "TG_DIST_MAX"
    const uint64_t DIST_BITS "TG_DIST_BITS"
    const uint64_t KEY_MASK "TG_KEY_MASK"
    void *tg_table_alloc(size_t nbytes) noexcept nogil
    void tg_table_free(void *p, size_t nbytes) noexcept nogil
    uint64_t tg_table_generation() noexcept nogil
    void tg_touch(void *p, size_t start, size_t end) noexcept nogil
    uint64_t tg_table_bytes_held() noexcept nogil
    const size_t BIG_TABLE "TG_BIG_TABLE"

# Snapshot entries whose table slots are prefetched ahead of the one being
# worked on, so that several cache misses overlap.
# decide_batch prefetches the table lines of the item BATCH_AHEAD places on
# while it decides the current one, so the memory fetches run under the
# decisions instead of before them. Measured on 2-core AMD EPYC (KVM) at 10 M
# tracked recipients against 1 000, all variants in one process, turns of
# 100 batches (benchmarks/engine.py does the same): loading 64 items' lines
# in a tight loop before deciding them gave 2.12-2.44x the 1 000-recipient
# figure (median 2.25x); prefetching the three lines from the home slot's
# 5, 8 or 16 items ahead gave medians of 2.07x, 2.04x and 2.01x. Since the
# scope lines are fetched non-temporal (tg_prefetch_once), 8 ahead is better:
# on a 2-core Xeon (KVM), timing the home slot's load with rdtscp at 10 M
# showed 4.9 % of the lines fetched 16 items ahead gone again by the time
# they were read (DRAM latency), 1.0 % at 8 and 0.3 % at 4; side by side
# against 16, 8 ahead took 1 to 8 % less at 10 M in all seven pairings, and
# the 20-sender peers workload 91-92 against 93-94 ns.
cdef enum:
    PREFETCH_AHEAD = 8
    BATCH_AHEAD = 8
    # Small tables (fewer slots than this, ~0.8 MB of scope entries) are
    # rebuilt a third full rather than half: fewer rebuilds and shorter probes
    # where the room costs little (the peers workload, 20 senders of a few
    # thousand recipients: ~79 -> ~76 ns a decision)
    SMALL_SLOTS = 1 << 15
    # decide_batch prefetches once all of an engine's tables together hold
    # this much (a core's L2 cache here), however small each one is: 20
    # senders' tables of ~0.3 MB each (the peers workload, ~13 MB in all)
    # went from ~84 to ~66 ns a decision when they were prefetched too.
    PREFETCH_BYTES = 1 << 20
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


cdef inline uint64_t home(uint64_t key, uint64_t capacity) noexcept nogil:
    return tg_scale(mix(key), capacity)


# -- slot words --------------------------------------------------------------
# A scope entry's slot word: bits 12..63 its last counted time t as
# t + 2**50 + 1 (0: NEVER; times are within +-2**50), bit 11 SLOT_FRESH (the
# latest counting admit created the slot and no later admit relied on it),
# bits 0..10 the generation of the latest slot created (1..2047, then 1 again;
# 0 before the first). An admit that creates a slot answers its stamp,
# ((t + 2**50) << 11) | generation, never 0; a release names that stamp, and
# releases only while the entry is fresh with that very time and generation.
# Two slots of one recipient share a time only when one was released and the
# next created within the same millisecond, and then their generations differ
# (2 047 such re-creations in one millisecond would be needed to repeat one).

cdef enum:
    SLOT_GEN_BITS = 11
    SLOT_TIME_SHIFT = SLOT_GEN_BITS + 1
    SLOT_FRESH = 1 << SLOT_GEN_BITS
    SLOT_GEN_MASK = (1 << SLOT_GEN_BITS) - 1
    SLOT_LOW_MASK = (1 << SLOT_TIME_SHIFT) - 1


cdef inline int64_t slot_last(uint64_t word) noexcept nogil:
    cdef uint64_t b = word >> SLOT_TIME_SHIFT
    return NEVER if b == 0 else <int64_t>b - MAX_TIME - 1


cdef inline uint64_t slot_with_last(uint64_t word, int64_t t) noexcept nogil:
    cdef uint64_t b = 0 if t == NEVER else <uint64_t>(t + MAX_TIME + 1)
    return (b << SLOT_TIME_SHIFT) | (word & SLOT_LOW_MASK)


cdef inline uint64_t slot_stamp(int64_t t, uint64_t gen) noexcept nogil:
    return (<uint64_t>(t + MAX_TIME) << SLOT_GEN_BITS) | gen


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
    r.lo_i = floormod(r.lo, r.n)


cdef inline int64_t ring_index(Ring *r, int64_t b) noexcept nogil:
    # Where bucket b (lo <= b) lives in counts: counted on from lo's place,
    # no division. Every bucket a call names is below lo + n once the ring
    # has advanced to the call's time; the division stays for any other.
    cdef int64_t i
    if b - r.lo >= r.n:
        return floormod(b, r.n)
    i = r.lo_i + (b - r.lo)
    return i - r.n if i >= r.n else i


cdef inline void ring_advance(Ring *r, int64_t now) noexcept nogil:
    # Drop the buckets that left the window by now. A busy scope moves on one
    # bucket at a time, found from next_at and stepped through from lo's place
    # without a division (the 20-sender peers workload, whose scopes cross a
    # minute every few decisions, side by side: 72.0 -> 69.6 ns a decision).
    cdef int64_t new_lo, b, i
    if now < r.next_at:
        return
    if r.next_at != INT64_MIN and now - r.next_at < r.width:
        new_lo = r.lo + 1  # the common step: one bucket on, no division
    else:
        new_lo = floordiv(now - r.window, r.width) + r.strict
    if new_lo <= r.lo:
        return
    if new_lo - r.lo >= r.n:
        memset(r.counts, 0, r.n * sizeof(int64_t))
        r.total = 0
        r.lo_i = floormod(new_lo, r.n)
    else:
        b = r.lo
        i = r.lo_i
        while b < new_lo:
            r.total -= r.counts[i]
            r.counts[i] = 0
            b += 1
            i += 1
            if i == r.n:
                i = 0
        r.lo_i = i
    r.lo = new_lo
    r.next_at = (new_lo - r.strict + 1) * r.width + r.window


cdef inline int64_t ring_slot(Ring *r, int64_t t, bint remember) noexcept nogil:
    # Where the bucket of time t lives in counts, or -1 when it is gone (below
    # lo). The bucket last remembered spares the divisions of the common case;
    # remember (adds) also keeps `first` at or below the bucket.
    cdef int64_t b, i
    if r.cur_start <= t and t - r.cur_start < r.width:
        b = r.cur_b
        i = r.cur_i
    else:
        b = floordiv(t, r.width)
        if b < r.lo:
            return -1
        i = ring_index(r, b)
        if remember:
            r.cur_b = b
            r.cur_start = b * r.width
            r.cur_i = i
    if b < r.lo:
        return -1
    if remember and b < r.first:
        r.first = b  # a count below the first non-empty bucket
    return i


cdef inline void ring_add(Ring *r, int64_t t) noexcept nogil:
    cdef int64_t i = ring_slot(r, t, True)
    if i >= 0:
        r.counts[i] += 1
        r.total += 1


cdef inline void ring_remove(Ring *r, int64_t t) noexcept nogil:
    cdef int64_t i = ring_slot(r, t, False)
    if i >= 0:
        r.counts[i] -= 1
        r.total -= 1


cdef inline int64_t ring_next_free(Ring *r, int64_t limit, int64_t now) noexcept nogil:
    # Earliest time the total drops below limit (now if it already is).
    # The scan starts at the oldest bucket that may hold a count (a scope at its
    # limit would otherwise walk a day of empty minutes on every call).
    cdef int64_t need, acc = 0, b, c, i
    cdef bint seen = False
    if r.total < limit:
        return now
    need = r.total - limit + 1
    b = r.lo if r.first < r.lo else r.first
    i = ring_index(r, b)  # then stepped along with b
    while b < r.lo + r.n:
        c = r.counts[i]
        if c != 0 and not seen:
            seen = True
            r.first = b  # everything from lo up to here is empty
        acc += c
        if acc >= need:
            return (b + 1) * r.width + r.window
        b += 1
        i += 1
        if i == r.n:
            i = 0
    # Unreachable while total equals the sum of the buckets.
    return (r.lo + r.n) * r.width + r.window


# -- recipient tables --------------------------------------------------------
#
# Both tables use Robin Hood open addressing: an entry sits at or after its
# home slot, and an insert that meets an entry closer to its own home than the
# new one would be takes that slot and moves the other on. Probe lengths stay
# short even four fifths full, and a search for an absent key stops as soon as
# it meets an entry closer to home than the key would be. Entries leave only
# through a rebuild (reclaim), so there are no tombstones.

ctypedef fused TableEntry:
    ScopeEntry
    NumberEntry

ctypedef fused Table:
    ScopeTable
    NumberTable


cdef inline uint64_t distance(uint64_t word, uint64_t i, uint64_t capacity) noexcept nogil:
    # How far the entry in slot i (key word `word`) is from its home slot;
    # probing wraps around.
    cdef uint64_t d = (word >> DIST_SHIFT) & DIST_MAX
    cdef uint64_t h
    if d < DIST_MAX:
        return d
    h = home(word & KEY_MASK, capacity)
    return i - h if i >= h else i + capacity - h


cdef inline uint64_t with_distance(uint64_t word, uint64_t d) noexcept nogil:
    return (word & ~DIST_BITS) | ((d if d < DIST_MAX else DIST_MAX) << DIST_SHIFT)


cdef inline TableEntry *entry_find(TableEntry *slots, uint64_t capacity,
                                   uint64_t key) noexcept nogil:
    return entry_find_mixed(slots, capacity, key, mix(key))


cdef inline TableEntry *entry_find_mixed(TableEntry *slots, uint64_t capacity,
                                         uint64_t key, uint64_t mixed) noexcept nogil:
    # entry_find, given mix(key)
    cdef uint64_t i, d = 0, w, sd
    if key == 0 or key > KEY_MASK:
        return NULL
    i = tg_scale(mixed, capacity)
    while True:
        w = slots[i].key
        if (w & KEY_MASK) == key:
            return &slots[i]
        if w == 0:
            return NULL
        # an entry nearer its home than key would be here: key is absent
        sd = (w >> DIST_SHIFT) & DIST_MAX
        if sd < d and sd < DIST_MAX:
            return NULL
        d += 1
        i += 1
        if i == capacity:
            i = 0


cdef inline TableEntry *entry_search(TableEntry *slots, uint64_t capacity, uint64_t key,
                                     uint64_t mixed, uint64_t *stop) noexcept nogil:
    # entry_find_mixed for a valid key that, when the key is absent, also
    # stores in stop[0], stop[1] the slot where entry_place would begin its
    # work and that slot's distance from the key's home; stop[1] is DIST_MAX
    # when an entry with a saturated distance was passed (place from home).
    # Kept apart from entry_find_mixed, not under it: entry_find_mixed as a
    # call of this one with an unread stop measured 1.97-2.05x at 10 M / 1 000
    # against 1.83-1.88x, side by side.
    cdef uint64_t i = tg_scale(mixed, capacity), d = 0, w, sd, sat = 0
    while True:
        w = slots[i].key
        if (w & KEY_MASK) == key:
            return &slots[i]
        if w == 0:
            break
        sd = (w >> DIST_SHIFT) & DIST_MAX
        if sd < d and sd < DIST_MAX:
            break
        sat |= sd == DIST_MAX
        d += 1
        i += 1
        if i == capacity:
            i = 0
    stop[0] = i
    stop[1] = DIST_MAX if sat else d
    return NULL


cdef inline TableEntry *entry_place(TableEntry *slots, uint64_t capacity,
                                    TableEntry *e) noexcept nogil:
    # Insert a copy of *e (its key known absent, a slot known free); returns
    # where it landed.
    return entry_place_mixed(slots, capacity, e, mix(e.key & KEY_MASK))


cdef inline TableEntry *entry_place_mixed(TableEntry *slots, uint64_t capacity,
                                          TableEntry *e, uint64_t mixed) noexcept nogil:
    # entry_place, given mix(key)
    return entry_place_from(slots, capacity, e, tg_scale(mixed, capacity), 0)


cdef inline TableEntry *entry_place_from(TableEntry *slots, uint64_t capacity,
                                         TableEntry *e, uint64_t i, uint64_t d) noexcept nogil:
    # entry_place from slot i, d slots on from the key's home: where a search
    # for the key stopped (see entry_search), or its home with d = 0.
    cdef TableEntry cur = e[0]
    cdef TableEntry tmp
    cdef TableEntry *landed = NULL
    cdef uint64_t di
    while True:
        if slots[i].key == 0:
            cur.key = with_distance(cur.key, d)
            slots[i] = cur
            return landed if landed != NULL else &slots[i]
        di = distance(slots[i].key, i, capacity)
        if di < d:
            cur.key = with_distance(cur.key, d)
            tmp = slots[i]
            slots[i] = cur
            cur = tmp
            if landed == NULL:
                landed = &slots[i]
            d = di
        d += 1
        i += 1
        if i == capacity:
            i = 0


cdef inline void prefetch_item(ScopeTable *st, NumberTable *nt, uint64_t key) noexcept nogil:
    # Start fetching what deciding for key will read, for an engine whose
    # tables outgrow the CPU caches: the three scope-table lines from its home
    # slot's (twelve 16-byte entries at least: at four fifths full nearly
    # every entry sits within them; two lines were slower at 10 M) and its
    # number-table slot (also when that table is small: many senders' small
    # number tables together outgrow the L2 cache, and skipping them made
    # the 20-sender peers workload 94.1 ns a decision against 88.1).
    cdef uint64_t h = mix(key)
    cdef const char *line
    line = tg_line(&st.slots[tg_scale(h, st.capacity)])
    tg_prefetch_once(line)
    tg_prefetch_once(line + 64)
    tg_prefetch_once(line + 128)
    tg_prefetch(&nt.slots[tg_scale(h, nt.capacity)])


cdef inline uint64_t room_for(uint64_t n) noexcept nogil:
    # Slots a table holding n entries gets when it is (re)built: half full,
    # a third for small tables.
    if 3 * n < SMALL_SLOTS:
        return 3 * n if 3 * n > INITIAL_CAPACITY else INITIAL_CAPACITY
    return 2 * n


cdef inline uint64_t crowd_count(uint64_t capacity) noexcept nogil:
    # The count from which one more entry would fill the table past four
    # fifths: the next insert grows it.
    return capacity * 4 // 5


cdef inline bint crowded(uint64_t count, uint64_t capacity) noexcept nogil:
    return count >= crowd_count(capacity)


# Marketing send times by recipient (linear probing, capacity a power of two).

cdef inline MarketingEntry *mm_find(MarketingMap *m, uint64_t key) noexcept nogil:
    cdef uint64_t mask, i
    if m.count == 0:
        return NULL
    mask = m.capacity - 1
    i = mix(key) & mask
    while True:
        if m.slots[i].key == key:
            return &m.slots[i]
        if m.slots[i].key == 0:
            return NULL
        i = (i + 1) & mask


cdef inline void mm_keep(MarketingMap *m, MarketingEntry *kept, uint64_t word) noexcept nogil:
    # Copy the marketing record of the scope entry with key word `word`, if it
    # has one, into `kept` (empty slots of the map's capacity).
    cdef MarketingEntry *r
    if word & KEY_MARKETING:
        r = mm_find(m, word & KEY_MASK)
        mm_slot(kept, m.capacity, r.key)[0] = r[0]


cdef void mm_replace(MarketingMap *m, MarketingEntry *slots) noexcept nogil:
    # Put `slots` (the map's capacity) in place of the map's own; recount.
    cdef uint64_t i
    tg_table_free(m.slots, m.capacity * sizeof(MarketingEntry))
    m.slots = slots
    m.count = 0
    for i in range(m.capacity):
        if slots[i].key != 0:
            m.count += 1


cdef inline MarketingEntry *mm_slot(MarketingEntry *slots, uint64_t capacity,
                                    uint64_t key) noexcept nogil:
    # The empty slot key lands in (key known absent, room known free).
    cdef uint64_t mask = capacity - 1
    cdef uint64_t i = mix(key) & mask
    while slots[i].key != 0:
        i = (i + 1) & mask
    return &slots[i]


cdef int mm_reserve(MarketingMap *m) noexcept nogil:
    # Room for one more record (at most 70 % full). -1: out of memory.
    cdef uint64_t capacity, i
    cdef MarketingEntry *slots
    if m.count + 1 <= max_fill(m.capacity):
        return 0
    capacity = 2 * m.capacity if m.capacity else INITIAL_CAPACITY
    slots = <MarketingEntry *>tg_table_alloc(capacity * sizeof(MarketingEntry))
    if slots == NULL:
        return -1
    for i in range(m.capacity):
        if m.slots[i].key != 0:
            mm_slot(slots, capacity, m.slots[i].key)[0] = m.slots[i]
    tg_table_free(m.slots, m.capacity * sizeof(MarketingEntry))
    m.slots = slots
    m.capacity = capacity
    return 0


cdef MarketingEntry *mm_insert(MarketingMap *m, uint64_t key) noexcept nogil:
    # A record with every time NEVER (room reserved by mm_reserve).
    cdef MarketingEntry *r = mm_slot(m.slots, m.capacity, key)
    cdef int k
    r.key = key
    for k in range(MARKETING_HISTORY):
        r.times[k] = NEVER
    m.count += 1
    return r


cdef inline int64_t *history(ScopeTable *t, ScopeEntry *e) noexcept nogil:
    # The entry's marketing send times, or NULL when it never got marketing.
    if not (e.key & KEY_MARKETING):
        return NULL
    return mm_find(&t.marketing, e.key & KEY_MASK).times


cdef inline bint scope_expired(ScopeTable *t, ScopeEntry *e, int64_t cut) noexcept nogil:
    cdef int64_t *hist
    cdef int k
    if (e.key & KEY_OPT_OUT) or slot_last(e.slot) >= cut:
        return False
    hist = history(t, e)
    if hist != NULL:
        for k in range(MARKETING_HISTORY):
            if hist[k] >= cut:
                return False
    return True


cdef inline bint number_expired(NumberEntry *e, int64_t cut) noexcept nogil:
    return e.window_until < cut and e.fep_until < cut and e.pair_tat < cut


cdef inline bint entry_expired(Table *t, uint64_t i, int64_t cut) noexcept nogil:
    if Table is ScopeTable:
        return scope_expired(t, &t.slots[i], cut)
    else:
        return number_expired(&t.slots[i], cut)


cdef uint64_t count_expired(Table *t, int64_t cut) noexcept nogil:
    cdef uint64_t i, n = 0
    for i in range(t.capacity):
        if t.slots[i].key != 0 and entry_expired(t, i, cut):
            n += 1
    return n


cdef int table_rebuild(Table *t, uint64_t capacity, bint drop, int64_t cut) noexcept nogil:
    # Re-place every entry into `capacity` slots; with drop, leave the expired
    # ones out (and, for a scope table, their marketing records). Everything
    # is allocated before anything changes. -1: out of memory.
    cdef uint64_t i, count = 0
    cdef MarketingEntry *kept = NULL
    cdef bint prune = False
    cdef void *slots
    if t.spare != NULL and capacity == t.spare_capacity:
        slots = t.spare  # zeroed ahead; the rest of it is zeroed on first write
        t.spare = NULL
    else:
        slots = tg_table_alloc(capacity * sizeof(t.slots[0]))
    if slots == NULL:
        return -1
    if Table is ScopeTable:
        prune = drop and t.marketing.count > 0
        if prune:
            kept = <MarketingEntry *>tg_table_alloc(
                t.marketing.capacity * sizeof(MarketingEntry))
            if kept == NULL:
                tg_table_free(slots, capacity * sizeof(t.slots[0]))
                return -1
    for i in range(t.capacity):
        if t.slots[i].key == 0 or (drop and entry_expired(t, i, cut)):
            continue
        if Table is ScopeTable:
            entry_place(<ScopeEntry *>slots, capacity, &t.slots[i])
        else:
            entry_place(<NumberEntry *>slots, capacity, &t.slots[i])
        count += 1
        if Table is ScopeTable:
            if prune:
                mm_keep(&t.marketing, kept, t.slots[i].key)
    if Table is ScopeTable:
        if prune:
            mm_replace(&t.marketing, kept)
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    if Table is ScopeTable:
        t.slots = <ScopeEntry *>slots
    else:
        t.slots = <NumberEntry *>slots
    t.capacity = capacity
    t.count = count
    table_drop_spare(t)  # sized for another capacity
    t.warm_at = warm_count(capacity, sizeof(t.slots[0]))
    return 0


cdef inline uint64_t warm_count(uint64_t capacity, size_t entry_size) noexcept nogil:
    # From three quarters full, a table whose next slots get their own mapping
    # (BIG_TABLE or more) has them allocated and touched ahead (table_warm).
    if room_for(crowd_count(capacity) + 1) * entry_size < BIG_TABLE:
        return UINT64_MAX
    return capacity * 3 // 4


cdef void table_drop_spare(Table *t) noexcept nogil:
    if t.spare != NULL:
        tg_table_free(t.spare, t.spare_capacity * sizeof(t.slots[0]))
        t.spare = NULL


cdef void table_warm(Table *t) noexcept nogil:
    # Past warm_at (table_reserve calls it before each insert): allocate the
    # next slots, then touch them in step with the inserts, so that all are
    # touched when the table reaches crowd_count. A doubling used to wait for
    # the kernel to zero its new pages: perf put 21.8 % of the samples of
    # growing one scope to 7 M in clear_page_erms, 5.2 % in the rebuild's
    # own loop. table_full counts warm_at, so number inserts come here too.
    cdef uint64_t crowd = crowd_count(t.capacity)
    cdef uint64_t size, done, span, target
    if t.spare == NULL:
        size = room_for(crowd + 1)
        t.spare = tg_table_alloc(size * sizeof(t.slots[0]))
        if t.spare == NULL:
            t.warm_at = UINT64_MAX  # the rebuild will ask again
            return
        t.spare_capacity = size
        t.spare_touched = 0
    size = t.spare_capacity * sizeof(t.slots[0])
    span = crowd - t.warm_at + 1
    done = t.count - t.warm_at + 1 if t.count < crowd else span
    target = (size // span + 1) * done
    if target > size:
        target = size
    if target > t.spare_touched:
        tg_touch(t.spare, t.spare_touched, target)
        t.spare_touched = (target + 4095) // 4096 * 4096


cdef int64_t table_compact(Table *t, int64_t cut) noexcept nogil:
    # Drop the expired entries where they lie and close the gaps they leave,
    # in one pass over the same slots: no new table, nothing to zero. Robin
    # Hood runs are sorted by home slot, so moving each live entry back to
    # its home slot, or just past the live entry before it, gives a table
    # every lookup agrees with (the one a rebuild would give, up to the order
    # of entries sharing a home slot). Positions v are counted from an empty
    # slot, where no run crosses, and wrap at the capacity.
    # Returns how many entries were dropped; -1: out of memory (nothing changed).
    cdef uint64_t cap = t.capacity, start = 0, v, r, w, h, nv, dst, word, dead = 0
    cdef bint marketing = False
    cdef MarketingEntry *kept = NULL
    cdef uint64_t i
    cdef int64_t oldest = INT64_MAX
    if Table is ScopeTable:
        if cut <= t.oldest_last:
            # Nothing can be expired yet (a scope table grows through its
            # nominal fills in its first week without a single one): skip the
            # pass. The 20-sender peers workload, side by side: 87.3 -> 85.7 ns.
            return 0
        if t.marketing.count > 0:
            # allocated first: dropping a recipient drops its marketing record
            kept = <MarketingEntry *>tg_table_alloc(t.marketing.capacity * sizeof(MarketingEntry))
            if kept == NULL:
                return -1
    while t.slots[start].key != 0:  # tables are never full
        start += 1
    w = start + 1
    for v in range(start + 1, start + cap + 1):
        r = v if v < cap else v - cap
        word = t.slots[r].key
        if Table is NumberTable:
            # Number tables are swept every few thousand inserts (pair-rate
            # entries expire seconds after their send), mostly empty or
            # expired slots in random order: one branch, taken for the live
            # entries only, instead of a mispredicted one per slot. An empty
            # slot is cleared like an expired one and leaves w alone: no
            # entry after it has its home at or before it (Robin Hood). At
            # 10 M tracked recipients, side by side: 120.6 and 121.2 -> 107.9
            # and 102.8 ns a decision (1 000: 53-55, the same).
            if not ((word != 0) & ((t.slots[r].window_until >= cut)
                                   | (t.slots[r].fep_until >= cut)
                                   | (t.slots[r].pair_tat >= cut))):
                dead += word != 0
                memset(&t.slots[r], 0, sizeof(t.slots[0]))
                continue
        elif word == 0:
            w = v + 1
            continue
        elif entry_expired(t, r, cut):
            if Table is ScopeTable:
                if word & KEY_MARKETING:
                    marketing = True
            memset(&t.slots[r], 0, sizeof(t.slots[0]))
            dead += 1
            continue
        if Table is ScopeTable:
            if not (word & KEY_OPT_OUT):
                oldest = min(oldest, slot_last(t.slots[r].slot))
        h = v - distance(word, r, cap)
        nv = h if h > w else w
        if nv != v:
            dst = nv if nv < cap else nv - cap
            t.slots[dst] = t.slots[r]
            t.slots[dst].key = with_distance(word, nv - h)
            memset(&t.slots[r], 0, sizeof(t.slots[0]))
        w = nv + 1
    t.count -= dead
    if Table is ScopeTable:
        t.oldest_last = oldest
        if kept != NULL and not marketing:
            tg_table_free(kept, t.marketing.capacity * sizeof(MarketingEntry))
        elif kept != NULL:
            for i in range(cap):
                mm_keep(&t.marketing, kept, t.slots[i].key)
            mm_replace(&t.marketing, kept)
    return <int64_t>dead


cdef inline bint table_full(Table *t) noexcept nogil:
    # Whether table_reserve has work to do (it changes nothing otherwise).
    return (t.count >= max_fill(t.nominal) or crowded(t.count, t.capacity)
            or t.count >= t.warm_at)


cdef int table_reserve(Table *t, int64_t cut) noexcept nogil:
    # Room for one more entry. At the nominal fill, expired entries are
    # reclaimed and the nominal capacity doubles unless that freed half (the
    # reference's rule); the slots grow on their own when four fifths full.
    # -1: out of memory (nothing changed).
    cdef uint64_t full
    if t.count >= max_fill(t.nominal):
        full = max_fill(t.nominal)
        # the same slots: the table is likely to fill up again
        if table_compact(t, cut) < 0:
            return -1
        if t.count >= full // 2:
            t.nominal = 2 * t.nominal
    if crowded(t.count, t.capacity):
        return table_rebuild(t, room_for(t.count + 1), False, cut)
    if t.count >= t.warm_at:
        table_warm(t)
    return 0


cdef int table_init(Table *t) noexcept nogil:
    t.slots = NULL
    t.capacity = t.count = 0
    t.spare = NULL
    t.spare_capacity = t.spare_touched = 0
    t.warm_at = UINT64_MAX
    if Table is ScopeTable:
        t.nominal = INITIAL_CAPACITY
        t.oldest_last = INT64_MAX
    else:
        t.nominal = NUMBER_INITIAL_CAPACITY
    return table_rebuild(t, INITIAL_CAPACITY, False, 0)


cdef void table_free(Table *t) noexcept nogil:
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = NULL
    table_drop_spare(t)
    if Table is ScopeTable:
        tg_table_free(t.marketing.slots, t.marketing.capacity * sizeof(MarketingEntry))
        t.marketing.slots = NULL


cdef inline ScopeEntry *scope_find(ScopeTable *t, uint64_t key) noexcept nogil:
    return entry_find(t.slots, t.capacity, key)


cdef ScopeEntry *scope_insert(ScopeTable *t, uint64_t key) noexcept nogil:
    # A new entry for key (known absent; room reserved by table_reserve).
    return scope_insert_mixed(t, key, mix(key))


cdef inline ScopeEntry *scope_insert_mixed(ScopeTable *t, uint64_t key,
                                           uint64_t mixed) noexcept nogil:
    cdef ScopeEntry e
    e.key = key
    e.slot = 0
    t.count += 1
    return entry_place_mixed(t.slots, t.capacity, &e, mixed)


cdef inline NumberEntry *number_find(NumberTable *t, uint64_t key) noexcept nogil:
    return entry_find(t.slots, t.capacity, key)


cdef NumberEntry *number_insert(NumberTable *t, uint64_t key) noexcept nogil:
    return number_insert_mixed(t, key, mix(key))


cdef inline NumberEntry *number_insert_from(NumberTable *t, uint64_t key,
                                            uint64_t i, uint64_t d) noexcept nogil:
    # number_insert from slot i, d slots on from key's home: where a search
    # for key stopped (entry_search) in the table as it still is, or its home
    cdef NumberEntry e
    e.key = key
    e.window_until = NEVER
    e.fep_until = NEVER
    e.pair_tat = NEVER
    t.count += 1
    return entry_place_from(t.slots, t.capacity, &e, i, d)


cdef inline NumberEntry *number_insert_mixed(NumberTable *t, uint64_t key,
                                             uint64_t mixed) noexcept nogil:
    return number_insert_from(t, key, tg_scale(mixed, t.capacity), 0)


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
    table_free(&s.table)
    free(s.ring24.counts)
    free(s.ring7.counts)
    free(s.slots7.counts)


cdef inline void reject(Decision *d, int decision, int reason, int64_t retry_at) noexcept nogil:
    d.decision = decision
    d.reason = reason
    d.retry_at = retry_at


cdef inline int64_t number_cut(Engine eng, Number *num) noexcept nogil:
    # A number's entries are expired once every time in them is at or before
    # its scope's clock: decisions for the number (clamped to that clock) see
    # such an entry exactly as no entry at all.
    return eng.scopes[num.scope].last_now + 1


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
            for d in range(<uint64_t>RADIX_BUCKETS):
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
    if key == 0 or key > KEY_MASK:
        raise ValueError(f"{name} must be a recipient key in 1 .. 2**54 - 1, got {key}")
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
            table_free(&self.numbers[i].table)
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

    # -- decisions -----------------------------------------------------------

    cdef int decide_one(self, int64_t now, Scope *s, Number *num, uint64_t recipient,
                        uint32_t flags, int64_t limit, Decision *d) noexcept nogil:
        # The decision core: checks first, then every mutation. -1: out of memory
        # (nothing consumed).
        cdef ScopeEntry *se
        cdef NumberEntry *ne
        cdef Ring *ring = &s.ring24
        cdef int64_t last, now_us, tput_tat, pair_tat, cut, oldest
        cdef int64_t recent[MARKETING_HISTORY]
        cdef int64_t *hist
        cdef int64_t t
        cdef uint64_t mixed, gen
        cdef uint64_t nstop[2]
        cdef int k, j, n_recent, oldest_at
        cdef bint template, marketing, in_window, in_fep, counting, already, needs_slot

        now = scope_clamp(s, now)
        if now > num.clock:
            num.clock = now
        mixed = mix(recipient)
        se = entry_find_mixed(s.table.slots, s.table.capacity, recipient, mixed)
        nstop[0] = 0
        nstop[1] = DIST_MAX  # set by entry_search when it finds no entry
        ne = entry_search(num.table.slots, num.table.capacity, recipient, mixed, nstop)
        template = (flags & F_TEMPLATE) != 0
        marketing = (flags & F_MARKETING) != 0
        last = slot_last(se.slot) if se != NULL else NEVER
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
        d.slot = 0

        if not (flags & F_FORCE):
            # 4. free-form needs an open customer service window
            if not template and not (in_window or (in_fep and (flags & F_FEP_FREE_FORM))):
                reject(d, REJECT, OUTSIDE_WINDOW, 0)
                return 0
            # 5. opted-out recipients get no marketing
            if marketing and se != NULL and se.key & KEY_OPT_OUT:
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
            if table_reserve(&s.table, s.last_now - s.horizon) < 0:
                return -1
        if marketing and (se == NULL or not (se.key & KEY_MARKETING)):
            if mm_reserve(&s.table.marketing) < 0:
                return -1
        if ne == NULL:
            # Placed from where the search above stopped, when nothing has
            # moved since: no second walk from the home slot and no call. At
            # 10 M tracked recipients, where nearly every decision inserts a
            # number entry, side by side: 110.7 / 109.8 -> 92.5 / 101.4 ns.
            if nstop[1] < DIST_MAX and not table_full(&num.table):
                ne = number_insert_from(&num.table, recipient, nstop[0], nstop[1])
            else:
                if table_reserve(&num.table, number_cut(self, num)) < 0:
                    return -1
                ne = number_insert_mixed(&num.table, recipient, mixed)
        if se == NULL and (counting or marketing):
            se = scope_insert_mixed(&s.table, recipient, mixed)
            # counted now, or (marketing only) not counted at all
            s.table.oldest_last = min(s.table.oldest_last, now if counting else NEVER)
        # ... then consume
        if counting:
            ring_remove(ring, last)
            ring_add(ring, now)
            ring_remove(&s.ring7, last)
            ring_add(&s.ring7, now)
            if needs_slot:
                ring_add(&s.slots7, now)
                gen = (se.slot & SLOT_GEN_MASK) + 1
                if gen > SLOT_GEN_MASK:
                    gen = 1
                se.slot = slot_with_last(SLOT_FRESH | gen, now)
                d.slot = <int64_t>slot_stamp(now, gen)
            else:
                # this admit relies on the earlier slot, which no release may take back now
                se.slot = slot_with_last(se.slot & SLOT_GEN_MASK, now)
        if marketing:
            if not (se.key & KEY_MARKETING):
                mm_insert(&s.table.marketing, recipient)
                se.key |= KEY_MARKETING
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

    def decide(self, int64_t now, Py_ssize_t scope, Py_ssize_t number, uint64_t recipient,
               uint32_t flags, int64_t limit):
        cdef Scope *s = self._scope(scope)
        cdef Number *num = self._number(number)
        cdef Decision d
        check_time("now", now)
        check_recipient("recipient", recipient)
        if self.decide_one(now, s, num, recipient, flags, limit, &d) < 0:
            raise MemoryError()
        return (d.decision, d.reason, d.retry_at, d.counted, d.used, d.prev_counted, d.slot)

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
        cdef signed char[::1] decision
        cdef signed char[::1] reason
        cdef signed char[::1] counted
        cdef long long[::1] retry_at
        cdef long long[::1] used
        cdef long long[::1] prev_counted
        cdef long long[::1] slot
        cdef Py_ssize_t n = now.shape[0], i, j, bad = -1
        cdef Decision d
        cdef int rc = 0
        cdef bint ahead
        for name, size in (("scope", scope.shape[0]), ("number", number.shape[0]),
                           ("recipient", recipient.shape[0]), ("flags", flags.shape[0]),
                           ("limit", limit.shape[0])):
            if size != n:
                raise ValueError(f"batch column {name} has {size} items, not {n}")
        for i in range(n):
            if not 0 <= scope[i] < self.n_scopes or not 0 <= number[i] < self.n_numbers:
                bad = i
                break
            if recipient[i] == 0 or recipient[i] > KEY_MASK or not -MAX_TIME <= now[i] <= MAX_TIME:
                bad = i
                break
        if bad >= 0:
            i = bad
            if not 0 <= scope[i] < self.n_scopes:
                raise IndexError(f"batch item {i}: scope {scope[i]} out of range")
            if not 0 <= number[i] < self.n_numbers:
                raise IndexError(f"batch item {i}: number {number[i]} out of range")
            if recipient[i] == 0 or recipient[i] > KEY_MASK:
                raise ValueError(f"batch item {i}: recipient key {recipient[i]} is not in "
                                 "1 .. 2**54 - 1")
            raise ValueError(f"batch item {i}: now must be within ±2**50 ms")
        batch.prepare_outputs()
        decision = batch.decision
        reason = batch.reason
        counted = batch.counted
        retry_at = batch.retry_at
        used = batch.used
        prev_counted = batch.prev_counted
        slot = batch.slot
        ahead = self.prefetching()
        for i in range(-BATCH_AHEAD, n):
            # Fetch what the item BATCH_AHEAD places on will read. An address
            # made stale by a rebuild in between only wastes a fetch.
            j = i + BATCH_AHEAD
            if ahead and j < n:
                prefetch_item(&self.scopes[scope[j]].table, &self.numbers[number[j]].table,
                              recipient[j])
            if i < 0:
                continue
            rc = self.decide_one(now[i], &self.scopes[scope[i]], &self.numbers[number[i]],
                                 recipient[i], flags[i], limit[i], &d)
            if rc < 0:
                break
            decision[i] = <signed char>d.decision
            reason[i] = <signed char>d.reason
            counted[i] = <signed char>d.counted
            retry_at[i] = d.retry_at
            used[i] = d.used
            prev_counted[i] = d.prev_counted
            slot[i] = d.slot
        if rc < 0:
            raise MemoryError(f"batch item {i}: out of memory growing a recipient table")

    # -- feedback ------------------------------------------------------------

    def release(self, scope, recipient, slot, prev_counted):
        """Give back the slot an admit created (``slot``: its decision's ``slot``
        stamp), if no later admit relied on it.

        ``prev_counted`` is the decision's ``prev_counted``: never later than
        the time the admit counted the recipient. Stamps come back from
        gateways inside tickets, so one that cannot be a stamp this engine
        gave (a key, stamp or time out of range, or a ``prev_counted`` after
        the slot) releases nothing and returns False, like an unknown one.
        """
        cdef Scope *s = self._scope(scope)
        cdef ScopeEntry *se
        cdef int64_t t, prev
        cdef uint64_t gen
        if not (0 < recipient <= U64_MAX and 0 < slot <= U64_MAX):
            return False
        if prev_counted != NEVER and not -MAX_TIME <= prev_counted <= MAX_TIME:
            return False
        gen = slot & SLOT_GEN_MASK
        t = (slot >> SLOT_GEN_BITS) - MAX_TIME
        if gen == 0 or t > MAX_TIME:
            return False
        prev = prev_counted
        se = scope_find(&s.table, <uint64_t>recipient)
        if (se == NULL or not (se.slot & SLOT_FRESH) or (se.slot & SLOT_GEN_MASK) != gen
                or slot_last(se.slot) != t):
            return False
        if prev > t:
            return False
        ring_remove(&s.ring24, t)
        ring_add(&s.ring24, prev)
        ring_remove(&s.ring7, t)
        ring_add(&s.ring7, prev)
        ring_remove(&s.slots7, t)
        se.slot = slot_with_last(se.slot & SLOT_GEN_MASK, prev)
        if not (se.key & KEY_OPT_OUT):
            s.table.oldest_last = min(s.table.oldest_last, prev)
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
            if table_reserve(&num.table, number_cut(self, num)) < 0:
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
            if table_reserve(&s.table, s.last_now - s.horizon) < 0:
                raise MemoryError()
            se = scope_insert(&s.table, recipient)
        if opted_out:
            se.key |= KEY_OPT_OUT
        elif se.key & KEY_OPT_OUT:
            se.key &= ~KEY_OPT_OUT
            s.table.oldest_last = min(s.table.oldest_last, slot_last(se.slot))

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
            dead = 0 if cut <= s.table.oldest_last else count_expired(&s.table, cut)
            if dead:
                if table_rebuild(&s.table, room_for(s.table.count - dead), True, cut) < 0:
                    raise MemoryError()
                removed += dead
        for i in range(self.n_numbers):
            num = &self.numbers[i]
            if now > num.clock:
                num.clock = now
            cut = number_cut(self, num)
            dead = count_expired(&num.table, cut)
            if dead:
                if table_rebuild(&num.table, room_for(num.table.count - dead), True, cut) < 0:
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
            slot_last(se.slot) if se != NULL else NEVER,
            bool(se.key & KEY_OPT_OUT) if se != NULL else False,
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

    def batch_prefetch(self):
        """Whether decide_batch fetches table lines ahead: this engine's tables
        together hold PREFETCH_BYTES or more (compiled engine only)."""
        return bool(self.prefetching())

    def spare_bytes(self):
        """(held, touched): bytes of next-size slots this engine's tables hold
        ahead of their growth, and how many of them were touched so far
        (compiled engine only; see table_warm)."""
        cdef Py_ssize_t i
        cdef uint64_t held = 0, touched = 0
        for i in range(self.n_scopes):
            if self.scopes[i].table.spare != NULL:
                held += self.scopes[i].table.spare_capacity * sizeof(ScopeEntry)
                touched += self.scopes[i].table.spare_touched
        for i in range(self.n_numbers):
            if self.numbers[i].table.spare != NULL:
                held += self.numbers[i].table.spare_capacity * sizeof(NumberEntry)
                touched += self.numbers[i].table.spare_touched
        return held, touched

    # -- snapshots -----------------------------------------------------------

    def snapshot(self):
        """The whole engine state as bytes (format version 1, same as the reference).

        The bytes are written with the GIL released (an engine from ``copy()``
        is serialised in a worker thread while the event loop runs on)."""
        cdef Py_ssize_t size = HEADER_SIZE, i
        cdef Scope *s
        cdef unsigned char *p
        cdef unsigned char *end
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
        with nogil:
            end = put_state(self.scopes, self.n_scopes, self.numbers, self.n_numbers,
                            p + HEADER_SIZE)
        if end == NULL:
            raise MemoryError()
        return out

    def copy_sizes(self):
        """Bytes of each buffer a ``copy()`` of this engine needs now, in the order
        ``CopyRoom`` takes them: each scope's slots and marketing records, then
        each number's slots."""
        cdef Py_ssize_t i
        sizes = []
        for i in range(self.n_scopes):
            sizes.append(self.scopes[i].table.capacity * sizeof(ScopeEntry))
            sizes.append(self.scopes[i].table.marketing.capacity * sizeof(MarketingEntry))
        for i in range(self.n_numbers):
            sizes.append(self.numbers[i].table.capacity * sizeof(NumberEntry))
        return tuple(sizes)

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
        since gets new memory here. Growth spares are not copied; the copy
        decides like the original if it is ever used."""
        cdef Engine eng = type(self).__new__(type(self))
        cdef CopyRoom held = room if room is not None else CopyRoom(())
        cdef Py_ssize_t i, n_scopes = self.n_scopes, n_numbers = self.n_numbers
        cdef int failed = 0
        cdef CopyJobs jobs
        eng.bucket_ms = self.bucket_ms
        eng.window_ms = self.window_ms
        eng.long_bucket_ms = self.long_bucket_ms
        eng.long_window_ms = self.long_window_ms
        eng.horizon_ms = self.horizon_ms
        eng.scopes = <Scope *>calloc(max64(n_scopes, 1), sizeof(Scope))
        eng.numbers = <Number *>calloc(max64(n_numbers, 1), sizeof(Number))
        if eng.scopes == NULL or eng.numbers == NULL:
            raise MemoryError()
        eng.cap_scopes = max64(n_scopes, 1)
        eng.cap_numbers = max64(n_numbers, 1)
        jobs.count = 0
        jobs.jobs = <tg_copy_job *>malloc(max64(2 * n_scopes + n_numbers, 1) * sizeof(tg_copy_job))
        if jobs.jobs == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n_scopes):
                # counted first: if the copy fails half way, dealloc frees what it holds
                eng.n_scopes = i + 1
                if scope_copy(&eng.scopes[i], &self.scopes[i], held, 2 * i, &jobs) < 0:
                    failed = 1
                    break
            if not failed:
                for i in range(n_numbers):
                    eng.n_numbers = i + 1
                    eng.numbers[i] = self.numbers[i]
                    if table_copy(&eng.numbers[i].table, &self.numbers[i].table, held,
                                  2 * n_scopes + i, &jobs) < 0:
                        failed = 1
                        break
            if not failed:
                tg_copy_all(jobs.jobs, jobs.count)
        free(jobs.jobs)
        if failed:
            raise MemoryError()
        return eng

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
            restore_scope_table(&s.table, &c, version)
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


cdef int restore_table(Table *t, Cursor *c, Py_ssize_t entry_size,
                       const unsigned char **entries, uint64_t *count) except -1:
    # Reads the table header, makes room for its entries and returns them
    # (entries[0], count[0] of them); the caller inserts them.
    cdef uint64_t nominal
    take_table(c, &nominal, count)
    entries[0] = take(c, <Py_ssize_t>(count[0] * entry_size))
    if table_rebuild(t, room_for(count[0]), False, 0) < 0:
        raise MemoryError()
    t.nominal = nominal
    return 0


cdef int check_key(uint64_t key, uint64_t prev) except -1:
    if key <= prev:
        raise ValueError("engine snapshot is corrupt: keys not strictly ascending")
    if key > KEY_MASK:
        raise ValueError("engine snapshot is corrupt: recipient key out of range")
    return 0


cdef int restore_scope_table(ScopeTable *t, Cursor *c, uint32_t version) except -1:
    # Format 1 kept the ticket id that created each slot; such tickets name no
    # slot stamp, so their slots restore as not releasable.
    cdef uint64_t count, i, key, prev = 0, low
    cdef int64_t last
    cdef const unsigned char *p
    cdef ScopeEntry *e
    cdef MarketingEntry *r
    cdef int k, j
    restore_table(t, c, SCOPE_ENTRY_SIZE, &p, &count)
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            tg_prefetch(
                &t.slots[home(get_u64(p + PREFETCH_AHEAD * SCOPE_ENTRY_SIZE), t.capacity)])
        key = get_u64(p)
        check_key(key, prev)
        prev = key
        last = <int64_t>get_u64(p + 8)
        low = get_u64(p + 16) if version >= 2 else 0
        if last != NEVER and not -MAX_TIME <= last <= MAX_TIME:
            raise ValueError("engine snapshot is corrupt: time out of range")
        if low > SLOT_LOW_MASK:
            raise ValueError("engine snapshot is corrupt: slot state out of range")
        e = scope_insert(t, key)
        e.slot = slot_with_last(low, last)
        for k in range(MARKETING_HISTORY):
            if <int64_t>get_u64(p + 24 + 8 * k) != NEVER:
                if mm_reserve(&t.marketing) < 0:
                    raise MemoryError()
                r = mm_insert(&t.marketing, key)
                for j in range(MARKETING_HISTORY):
                    r.times[j] = <int64_t>get_u64(p + 24 + 8 * j)
                e.key |= KEY_MARKETING
                break
        if p[24 + 8 * MARKETING_HISTORY] != 0:
            e.key |= KEY_OPT_OUT
        p += SCOPE_ENTRY_SIZE
    t.oldest_last = NEVER  # not known: the first reclaim pass finds it
    return 0


cdef int restore_number_table(NumberTable *t, Cursor *c) except -1:
    cdef uint64_t count, i, key, prev = 0
    cdef const unsigned char *p
    cdef NumberEntry *e
    restore_table(t, c, NUMBER_ENTRY_SIZE, &p, &count)
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            tg_prefetch(
                &t.slots[home(get_u64(p + PREFETCH_AHEAD * NUMBER_ENTRY_SIZE), t.capacity)])
        key = get_u64(p)
        check_key(key, prev)
        prev = key
        e = number_insert(t, key)
        e.window_until = <int64_t>get_u64(p + 8)
        e.fep_until = <int64_t>get_u64(p + 16)
        e.pair_tat = <int64_t>get_u64(p + 24)
        p += NUMBER_ENTRY_SIZE
    return 0


cdef KeySlot *sorted_keys(Table *t) noexcept nogil:
    # The table's keys (flags cleared) and slots, ascending by key; NULL: out of memory.
    cdef KeySlot *keys = <KeySlot *>malloc(max64(<int64_t>t.count, 1) * sizeof(KeySlot))
    cdef uint64_t i, n = 0
    if keys == NULL:
        return NULL
    for i in range(t.capacity):
        if t.slots[i].key != 0:
            keys[n].key = t.slots[i].key & KEY_MASK
            keys[n].slot = i
            n += 1
    return sort_keys(keys, n)


cdef unsigned char *put_state(Scope *scopes, Py_ssize_t n_scopes, Number *numbers,
                              Py_ssize_t n_numbers, unsigned char *p) noexcept nogil:
    # Everything of a snapshot after its header; the end of what was written,
    # NULL: out of memory.
    cdef Py_ssize_t i
    cdef Scope *s
    cdef Number *num
    cdef Ring *rings[3]
    cdef int r
    cdef int64_t b
    for i in range(n_scopes):
        s = &scopes[i]
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
        if p == NULL:
            return NULL
    for i in range(n_numbers):
        num = &numbers[i]
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
        if p == NULL:
            return NULL
    return p


cdef unsigned char *put_scope_table(ScopeTable *t, unsigned char *p) noexcept nogil:
    cdef KeySlot *keys = sorted_keys(t)
    cdef uint64_t i
    cdef ScopeEntry *e
    cdef int64_t *hist
    cdef int k
    if keys == NULL:
        return NULL
    put_u64(p, t.nominal)
    put_u64(p + 8, t.count)
    p += TABLE_SIZE
    for i in range(t.count):
        if i + PREFETCH_AHEAD < t.count:
            tg_prefetch(&t.slots[keys[i + PREFETCH_AHEAD].slot])
        e = &t.slots[keys[i].slot]
        put_u64(p, keys[i].key)
        put_u64(p + 8, slot_last(e.slot))
        put_u64(p + 16, e.slot & SLOT_LOW_MASK)
        hist = history(t, e)
        for k in range(MARKETING_HISTORY):
            put_u64(p + 24 + 8 * k, hist[k] if hist != NULL else NEVER)
        p[24 + 8 * MARKETING_HISTORY] = 1 if e.key & KEY_OPT_OUT else 0
        p += SCOPE_ENTRY_SIZE
    free(keys)
    return p


cdef unsigned char *put_number_table(NumberTable *t, unsigned char *p) noexcept nogil:
    cdef KeySlot *keys = sorted_keys(t)
    cdef uint64_t i
    cdef NumberEntry *e
    if keys == NULL:
        return NULL
    put_u64(p, t.nominal)
    put_u64(p + 8, t.count)
    p += TABLE_SIZE
    for i in range(t.count):
        if i + PREFETCH_AHEAD < t.count:
            tg_prefetch(&t.slots[keys[i + PREFETCH_AHEAD].slot])
        e = &t.slots[keys[i].slot]
        put_u64(p, keys[i].key)
        put_u64(p + 8, e.window_until)
        put_u64(p + 16, e.fep_until)
        put_u64(p + 24, e.pair_tat)
        p += NUMBER_ENTRY_SIZE
    free(keys)
    return p


cdef int ring_copy(Ring *dst, Ring *src) noexcept nogil:
    # dst: a bitwise copy of src; give it counts of its own. -1: out of memory.
    dst.counts = <int64_t *>malloc(max64(src.n, 1) * sizeof(int64_t))
    if dst.counts == NULL:
        return -1
    memcpy(dst.counts, src.counts, src.n * sizeof(int64_t))
    return 0


cdef struct CopyJobs:
    tg_copy_job *jobs
    size_t count


cdef inline void copy_job(CopyJobs *jobs, void *dst, const void *src, size_t n) noexcept nogil:
    jobs.jobs[jobs.count].dst = <char *>dst
    jobs.jobs[jobs.count].src = <const char *>src
    jobs.jobs[jobs.count].n = n
    jobs.count += 1


cdef int table_copy(Table *dst, Table *src, CopyRoom room, Py_ssize_t at,
                    CopyJobs *jobs) noexcept nogil:
    # dst: a bitwise copy of src; give it slots (and marketing records) of its
    # own, from room's buffers at (and at + 1) where their sizes fit, no growth
    # spare; their contents are copied by jobs, after. -1: out of memory (what
    # dst holds is freed with it).
    cdef void *slots
    cdef size_t size = src.capacity * sizeof(src.slots[0])
    dst.slots = NULL
    dst.spare = NULL
    dst.spare_capacity = dst.spare_touched = 0
    dst.warm_at = UINT64_MAX
    if Table is ScopeTable:
        dst.marketing.slots = NULL
    slots = room.take(at, size)
    if slots == NULL:
        return -1
    copy_job(jobs, slots, src.slots, size)
    if Table is ScopeTable:
        dst.slots = <ScopeEntry *>slots
    else:
        dst.slots = <NumberEntry *>slots
    if Table is ScopeTable:
        if src.marketing.slots != NULL:
            size = src.marketing.capacity * sizeof(MarketingEntry)
            dst.marketing.slots = <MarketingEntry *>room.take(at + 1, size)
            if dst.marketing.slots == NULL:
                return -1
            copy_job(jobs, dst.marketing.slots, src.marketing.slots, size)
    return 0


cdef int scope_copy(Scope *dst, Scope *src, CopyRoom room, Py_ssize_t at,
                    CopyJobs *jobs) noexcept nogil:
    # A copy of src in dst (uninitialised); -1: out of memory (dst is then
    # left for scope_free, which frees what it holds).
    dst[0] = src[0]
    dst.ring24.counts = dst.ring7.counts = dst.slots7.counts = NULL
    dst.table.slots = NULL
    dst.table.spare = NULL
    dst.table.marketing.slots = NULL
    if (table_copy(&dst.table, &src.table, room, at, jobs) < 0
            or ring_copy(&dst.ring24, &src.ring24) < 0
            or ring_copy(&dst.ring7, &src.ring7) < 0
            or ring_copy(&dst.slots7, &src.slots7) < 0):
        return -1
    return 0


cdef class CopyRoom:
    """Memory for one ``Engine.copy()``: a buffer per table, allocated as the
    tables' own are (``tg_table_alloc``) and touched page by page when made, with
    the GIL released, so that the copy itself is only a memcpy."""

    cdef void **bufs
    cdef size_t *sizes
    cdef Py_ssize_t n

    def __cinit__(self, sizes):
        cdef Py_ssize_t i
        cdef int failed = 0
        self.n = len(sizes)
        self.bufs = <void **>calloc(max64(self.n, 1), sizeof(void *))
        self.sizes = <size_t *>calloc(max64(self.n, 1), sizeof(size_t))
        if self.bufs == NULL or self.sizes == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.sizes[i] = sizes[i]
        with nogil:
            for i in range(self.n):
                if self.sizes[i] == 0:
                    continue
                self.bufs[i] = tg_table_alloc(self.sizes[i])
                if self.bufs[i] == NULL:
                    failed = 1
                    break
                tg_touch(self.bufs[i], 0, self.sizes[i])
        if failed:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.bufs != NULL:
            for i in range(self.n):
                tg_table_free(self.bufs[i], self.sizes[i])
        free(self.bufs)
        free(self.sizes)

    cdef void *take(self, Py_ssize_t i, size_t size) noexcept nogil:
        # The buffer for slot i if it has this size (the room's from then on);
        # else new memory. NULL: out of memory.
        cdef void *p
        if i < self.n and self.bufs[i] != NULL and self.sizes[i] == size:
            p = self.bufs[i]
            self.bufs[i] = NULL
            return p
        return tg_table_alloc(size)


def table_bytes_held():
    """Bytes all compiled engines' recipient tables (and spares) in this process
    hold: allocations minus frees."""
    return tg_table_bytes_held()
