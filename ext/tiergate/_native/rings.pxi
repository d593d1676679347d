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
    # The buckets are allocated by the first count (ring_ready): a scope that
    # never counts a recipient (most senders of a large fleet, most of the
    # time) costs no day of minute buckets.
    r.counts = NULL
    ring_forget(r)
    return 0


cdef inline int ring_ready(Ring *r) noexcept nogil:
    # The buckets, allocated (all zero) if the ring has none yet; -1: out of memory.
    if r.counts == NULL:
        r.counts = <int64_t *>calloc(r.n, sizeof(int64_t))
        if r.counts == NULL:
            return -1
    return 0


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
    # without a division.
    cdef int64_t new_lo, b, i
    if now < r.next_at:
        return
    if r.next_at != INT64_MIN and now - r.next_at < r.width:
        new_lo = r.lo + 1  # the common step: one bucket on, no division
    else:
        new_lo = floordiv(now - r.window, r.width) + r.strict
    if new_lo <= r.lo:
        return
    if new_lo - r.lo >= r.n or r.counts == NULL:
        if r.counts != NULL:
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
    # A counting admit made the buckets ready first (make_room); a release adds
    # back only into buckets that held its count.
    cdef int64_t i = ring_slot(r, t, True)
    if i >= 0 and r.counts != NULL:
        r.counts[i] += 1
        r.total += 1


cdef inline void ring_remove(Ring *r, int64_t t) noexcept nogil:
    cdef int64_t i = ring_slot(r, t, False)
    if i >= 0 and r.counts != NULL:
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
    if r.counts == NULL:  # no buckets: every one is empty
        return (r.lo + r.n) * r.width + r.window
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


cdef void ring_outlook(Ring *r, int64_t now, int64_t period, int64_t periods,
                       int64_t *recent, int64_t *leaving) noexcept nogil:
    # Read only (as the reference's Ring.outlook): counts in buckets that reach
    # into the period before now to recent; counts that leave the window in
    # each of the periods after now to leaving[0 .. periods - 1] (zeroed first).
    cdef int64_t b, c, i, end, k
    recent[0] = 0
    for k in range(periods):
        leaving[k] = 0
    if r.lo == NEVER or r.counts == NULL:
        return
    for b in range(r.lo, r.lo + r.n):
        i = ring_index(r, b)
        c = r.counts[i]
        if c == 0:
            continue
        end = (b + 1) * r.width
        if end > now - period:
            recent[0] += c
        k = floordiv(end + r.window - now - 1, period)
        if 0 <= k < periods:
            leaving[k] += c


cdef object scope_outlook(Scope *s, int64_t now, int64_t period_ms, int64_t periods):
    # Engine.outlook: (recipients counted in the period_ms before now, slots freeing
    # in each of the periods periods after it) for the scope's 24 h ring.
    cdef int64_t recent = 0
    cdef int64_t leaving[MAX_OUTLOOK]
    cdef int64_t k
    check_time("now", now)
    if not 1 <= period_ms <= MAX_WINDOW or not 0 <= periods <= MAX_OUTLOOK:
        raise ValueError(f"period_ms must be 1..2**40 and periods 0..{MAX_OUTLOOK}")
    ring_outlook(&s.ring24, max64(now, s.last_now), period_ms, periods, &recent, leaving)
    return recent, [leaving[k] for k in range(periods)]
