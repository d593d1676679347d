# The C-level contract of the compiled decision engine (tiergate._native.engine).
#
# The shared numbers are those of constants.pxd; the structs are the engine's
# memory layout; other Cython modules may cimport them.

from libc.stdint cimport int64_t, uint32_t, uint64_t

from tiergate._native.constants cimport *

cdef enum:
    # Recipient tables' nominal capacity starts here and doubles; at most 70 % full
    INITIAL_CAPACITY = 16
    # Number tables start nominally larger: their entries expire within
    # seconds to days, and a small table would reclaim every few inserts
    NUMBER_INITIAL_CAPACITY = 4096
    # A sweep (the reclaim at the nominal fill) takes one step per insert, one
    # per this many nominal slots (sweep.pxi)
    SWEEP_SHIFT = 4
    # ... from this nominal capacity on for a number table; below it, in one
    # step (its entries live seconds: it sweeps every few thousand inserts, a
    # pass over at most 100 000 slots, well under a millisecond)
    SWEEP_NUMBER_FROM = 65536
    SNAPSHOT_VERSION = 6

# Counts of last-counted times by bucket over a rolling window; bucket b
# lives at counts[b mod n]; buckets below lo are gone.
cdef struct Ring:
    int64_t width
    int64_t window
    int64_t n
    int64_t strict      # 1: a bucket counts only while wholly inside the window
    int64_t lo          # oldest live absolute bucket index
    int64_t total
    int64_t *counts
    # Derived, never persisted; they spare the divisions of the common case.
    int64_t next_at     # lo cannot move before this time
    int64_t cur_b       # a recently used bucket: its index, start time and slot
    int64_t cur_start
    int64_t cur_i
    int64_t first       # every bucket from lo up to (not incl.) this one is empty
    int64_t lo_i        # where bucket lo lives in counts (lo mod n)

# Per limit scope and recipient (16 bytes: four to a cache line). key 0 marks
# an empty slot; the key word also carries the two flags below (recipient
# keys stay under 2**62). The slot word holds the last counted time and the
# identity of the slot its latest counting admit created (see rings.pxi,
# "slot words"): whether that admit created it and no later one relied on it
# (SLOT_FRESH), and a generation that tells apart slots created at one
# millisecond (one created, released and created again).
cdef struct ScopeEntry:
    uint64_t key        # recipient | KEY_OPT_OUT | KEY_MARKETING
    uint64_t slot       # last counted time (biased) | SLOT_FRESH | generation

# Marketing send times of the recipients that got marketing (KEY_MARKETING
# set on their scope entry), kept apart so that the others cost no room for
# them. Open addressing, linear probing, capacity a power of two.
cdef struct MarketingEntry:
    uint64_t key
    int64_t times[MARKETING_HISTORY]

# A full map grows as the tables do (growth.pxi): while it grows, `old` holds
# the slots it grows out of (NULL otherwise), those from `moved` on not yet
# moved across; `count` holds the records of both. From half full, a map
# whose next slots get their own mapping has them allocated and touched a
# few pages per insert (`spare`, twice its capacity; NULL when none).
cdef struct MarketingMap:
    MarketingEntry *slots
    uint64_t capacity
    uint64_t count
    MarketingEntry *old
    uint64_t old_capacity
    uint64_t moved
    MarketingEntry *spare
    uint64_t spare_touched  # bytes of it touched so far

# Per phone number and recipient. key 0 marks an empty slot.
cdef struct NumberEntry:
    uint64_t key
    int64_t window_until
    int64_t fep_until
    int64_t pair_tat
    int64_t pair_start  # when the pair's current burst began (at or before pair_tat)

# Robin Hood open addressing over `capacity` slots (any size: the home slot is
# mix(key) scaled to the capacity), kept between half and four fifths full
# (`count` holds the entries of `slots` and `old` together).
# `nominal` is the reference engine's capacity rule (a power of two, 70 %):
# it decides when expired entries are reclaimed, so both engines reclaim at
# the same moments, and it is what snapshots record. `sweep`: the next step
# of the reclaim under way since the nominal fill (0: none; sweep.pxi), and
# `sweep_cut` the cut it drops entries by, also recorded by snapshots.
cdef struct ScopeTable:
    ScopeEntry *slots
    uint64_t capacity
    uint64_t count
    uint64_t nominal
    MarketingMap marketing
    # At or before the last counted time of every entry not opted out (INT64_MAX
    # when there is none): while the reclaim cut is at or before it, no entry
    # is expired and a reclaim pass would find nothing. Never persisted.
    int64_t oldest_last
    # oldest_last as a sweep finds it: the least over the entries it kept and
    # those counted since it began (what oldest_last becomes when it ends).
    int64_t swept_oldest
    # The slots of the table it grows into next, allocated and touched a few
    # pages per insert from three quarters full (see table_warm), so that the
    # growth does not wait for the kernel to zero them; NULL when none.
    void *spare
    uint64_t spare_capacity
    uint64_t spare_touched  # bytes of it touched so far
    uint64_t warm_at        # count from which table_warm works (UINT64_MAX: never)
    # While the table grows, the slots it grows out of (NULL otherwise): their
    # entries move into `slots` a few at a time (see table_move), those from
    # `moved` on are still there, and lookups search both.
    ScopeEntry *old
    uint64_t old_capacity
    uint64_t moved
    uint64_t sweep
    int64_t sweep_cut

cdef struct NumberTable:
    NumberEntry *slots
    uint64_t capacity
    uint64_t count
    uint64_t nominal
    # The slots of the table it grows into next, allocated and touched a few
    # pages per insert from three quarters full (see table_warm), so that the
    # growth does not wait for the kernel to zero them; NULL when none.
    void *spare
    uint64_t spare_capacity
    uint64_t spare_touched  # bytes of it touched so far
    uint64_t warm_at        # count from which table_warm works (UINT64_MAX: never)
    NumberEntry *old        # as in ScopeTable
    uint64_t old_capacity
    uint64_t moved
    uint64_t sweep          # as in ScopeTable
    int64_t sweep_cut

# A number's own count while it is in warm-up under a shared limit scope
# (warmup.pxi; the reference: engine/reference/warmup.py): its cap, a ring like
# the scope's 24 h ring, and the last time it counted each recipient (linear
# probing, capacity a power of two, key 0 empty; dead entries dropped when it
# is rebuilt). Only a number in warm-up holds one.
cdef struct WarmEntry:
    uint64_t key
    int64_t last

cdef struct Warmup:
    Ring ring
    int64_t cap
    WarmEntry *slots
    uint64_t capacity
    uint64_t count

cdef struct Scope:
    ScopeTable table
    Ring ring24
    Ring ring7
    Ring slots7
    int64_t freq_cap
    int64_t freq_window
    int64_t horizon     # entries older than last_now - horizon are reclaimable
    int64_t last_now

cdef struct Number:
    NumberTable table
    int64_t scope
    int64_t clock       # latest time seen for this number
    int64_t tput_tat    # microseconds
    int64_t tput_interval
    int64_t tput_tolerance
    int64_t pair_interval
    int64_t pair_tolerance
    Warmup *warm        # NULL: not in warm-up (no count of its own)

cdef struct Decision:
    int64_t retry_at
    int64_t used
    int64_t prev_counted
    int64_t slot        # the slot this admit created (its stamp), else 0
    int decision
    int reason
    int counted


cdef class Engine:
    cdef readonly int64_t bucket_ms
    cdef readonly int64_t window_ms
    cdef readonly int64_t long_bucket_ms
    cdef readonly int64_t long_window_ms
    cdef readonly int64_t horizon_ms
    cdef Scope *scopes
    cdef Py_ssize_t n_scopes
    cdef Py_ssize_t cap_scopes
    cdef Number *numbers
    cdef Py_ssize_t n_numbers
    cdef Py_ssize_t cap_numbers
    cdef uint64_t tables_seen   # tg_table_generation() when prefetch was set
    cdef bint prefetch          # decide_batch prefetches: tables outgrow the caches

    cdef Scope *_scope(self, Py_ssize_t scope) except NULL
    cdef Number *_number(self, Py_ssize_t number) except NULL
    cdef bint prefetching(self) noexcept nogil
