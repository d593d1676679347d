# A phone number's own count while it is in warm-up under a shared limit scope
# (the reference: engine/reference/warmup.py). Only a number in warm-up holds
# a Warmup: its cap, a ring of buckets like its scope's 24 h ring, and the
# last time it counted each recipient. An entry whose bucket has left the
# ring changes no decision; rebuilds drop such entries and snapshots skip them.

cdef enum:
    WARM_INITIAL_CAPACITY = 16
    WARM_ENTRY_SIZE = 16  # snapshot: key, last counted


cdef Warmup *warmup_new(int64_t width, int64_t window, int64_t cap) noexcept nogil:
    # A new, empty Warmup; NULL: out of memory.
    cdef Warmup *w = <Warmup *>calloc(1, sizeof(Warmup))
    if w == NULL:
        return NULL
    w.cap = cap
    w.capacity = WARM_INITIAL_CAPACITY
    w.slots = <WarmEntry *>calloc(w.capacity, sizeof(WarmEntry))
    if ring_init(&w.ring, width, window, 0) < 0 or ring_ready(&w.ring) < 0 or w.slots == NULL:
        warmup_free(w)
        return NULL
    return w


cdef void warmup_free(Warmup *w) noexcept nogil:
    if w != NULL:
        free(w.ring.counts)
        free(w.slots)
        free(w)


cdef inline bint warmup_live(Warmup *w, int64_t t) noexcept nogil:
    # Whether a recipient last counted at t can still change a decision.
    return floordiv(t, w.ring.width) >= w.ring.lo


cdef inline WarmEntry *warmup_find(Warmup *w, uint64_t key) noexcept nogil:
    cdef uint64_t mask = w.capacity - 1, i = mix(key) & mask
    while w.slots[i].key != 0:
        if w.slots[i].key == key:
            return &w.slots[i]
        i = (i + 1) & mask
    return NULL


cdef inline int64_t warmup_last(Warmup *w, uint64_t key) noexcept nogil:
    cdef WarmEntry *e = warmup_find(w, key)
    return e.last if e != NULL else NEVER


cdef WarmEntry *warmup_put(WarmEntry *slots, uint64_t capacity, uint64_t key) noexcept nogil:
    # key's slot (claimed if it was empty); the table has room.
    cdef uint64_t mask = capacity - 1, i = mix(key) & mask
    while slots[i].key != 0 and slots[i].key != key:
        i = (i + 1) & mask
    slots[i].key = key
    return &slots[i]


cdef int warmup_rebuild(Warmup *w, uint64_t room) noexcept nogil:
    # Rebuild with the live entries only, sized for them and `room` more.
    # -1: out of memory (w unchanged).
    cdef uint64_t i, live = 0, capacity = WARM_INITIAL_CAPACITY
    cdef WarmEntry *slots
    for i in range(w.capacity):
        if w.slots[i].key != 0 and warmup_live(w, w.slots[i].last):
            live += 1
    while 2 * (live + room) > max_fill(capacity):
        capacity *= 2
    slots = <WarmEntry *>calloc(capacity, sizeof(WarmEntry))
    if slots == NULL:
        return -1
    for i in range(w.capacity):
        if w.slots[i].key != 0 and warmup_live(w, w.slots[i].last):
            warmup_put(slots, capacity, w.slots[i].key).last = w.slots[i].last
    free(w.slots)
    w.slots = slots
    w.capacity = capacity
    w.count = live
    return 0


cdef inline int warmup_reserve(Warmup *w, uint64_t key) noexcept nogil:
    # Room for key's entry (before anything is consumed); -1: out of memory.
    if w.count + 1 > max_fill(w.capacity) and warmup_find(w, key) == NULL:
        return warmup_rebuild(w, 1)
    return 0


cdef inline void warmup_count(Warmup *w, uint64_t key, int64_t last, int64_t now) noexcept nogil:
    # A counting admit from the number (room reserved): key's time moves to now.
    cdef WarmEntry *e = warmup_find(w, key)
    ring_remove(&w.ring, last)
    ring_add(&w.ring, now)
    if e == NULL:
        e = warmup_put(w.slots, w.capacity, key)
        w.count += 1
    e.last = now


cdef inline void warmup_release(Warmup *w, uint64_t key, int64_t t, int64_t prev) noexcept nogil:
    # The admit that counted key at t failed: its time goes back to prev.
    cdef WarmEntry *e = warmup_find(w, key)
    if e != NULL and e.last == t:
        ring_remove(&w.ring, t)
        ring_add(&w.ring, prev)
        e.last = prev


cdef uint64_t warmup_live_count(Warmup *w) noexcept nogil:
    cdef uint64_t i, n = 0
    for i in range(w.capacity):
        if w.slots[i].key != 0 and warmup_live(w, w.slots[i].last):
            n += 1
    return n


cdef int engine_set_warmup(Engine eng, Number *num, int64_t cap) except -1:
    # What Engine.set_warmup does (its docstring says how).
    if cap == UNLIMITED:
        warmup_free(num.warm)
        num.warm = NULL
    elif num.warm == NULL:
        num.warm = warmup_new(eng.bucket_ms, eng.window_ms, cap)
        if num.warm == NULL:
            raise MemoryError()
    else:
        num.warm.cap = cap
    return 0


cdef int engine_warm_prune(Engine eng) except -1:
    # Reclaim's part: every number in warm-up drops its dead entries.
    cdef Py_ssize_t i
    cdef Number *num
    for i in range(eng.n_numbers):
        num = &eng.numbers[i]
        if num.warm != NULL:
            ring_advance(&num.warm.ring, eng.scopes[num.scope].last_now)
            if warmup_rebuild(num.warm, 0) < 0:
                raise MemoryError()
    return 0


cdef int warmup_copy(Number *dst, Number *src) noexcept nogil:
    # dst (a bitwise copy of src): a Warmup of its own. -1: out of memory
    # (dst.warm then holds what was made, for its owner to free).
    cdef Warmup *w
    dst.warm = NULL
    if src.warm == NULL:
        return 0
    w = <Warmup *>malloc(sizeof(Warmup))
    if w == NULL:
        return -1
    w[0] = src.warm[0]
    w.ring.counts = NULL
    w.slots = <WarmEntry *>malloc(w.capacity * sizeof(WarmEntry))
    dst.warm = w
    if w.slots == NULL or ring_copy(&w.ring, &src.warm.ring) < 0:
        return -1
    memcpy(w.slots, src.warm.slots, w.capacity * sizeof(WarmEntry))
    return 0


# -- snapshot part: after each number's table ---------------------------------

cdef Py_ssize_t warmup_snapshot_size(Warmup *w) noexcept nogil:
    if w == NULL:
        return 8
    return (8 + RING_SIZE + (8 * w.ring.n if w.ring.total else 0) + 8
            + WARM_ENTRY_SIZE * <Py_ssize_t>warmup_live_count(w))


cdef unsigned char *put_warmup(Warmup *w, unsigned char *p) noexcept nogil:
    # The number's warm-up part; NULL: out of memory.
    cdef KeySlot *keys
    cdef uint64_t i, n = 0, live
    if w == NULL:
        put_u64(p, <uint64_t>-1)
        return p + 8
    put_u64(p, w.cap)
    p = put_ring(&w.ring, p + 8)
    live = warmup_live_count(w)
    keys = <KeySlot *>malloc(max64(<int64_t>live, 1) * sizeof(KeySlot))
    if keys == NULL:
        return NULL
    for i in range(w.capacity):
        if w.slots[i].key != 0 and warmup_live(w, w.slots[i].last):
            keys[n].key = w.slots[i].key
            keys[n].slot = i
            n += 1
    keys = sort_keys(keys, n)
    if keys == NULL:
        return NULL
    put_u64(p, n)
    p += 8
    for i in range(n):
        put_u64(p, keys[i].key)
        put_u64(p + 8, w.slots[keys[i].slot].last)
        p += WARM_ENTRY_SIZE
    free(keys)
    return p


cdef int restore_warmup(Engine eng, Number *num, Cursor *c, uint32_t version) except -1:
    # Reads the number's warm-up part (formats 4 on).
    cdef int64_t cap = <int64_t>get_u64(take(c, 8)), t
    cdef const unsigned char *p
    cdef uint64_t count, i, key, prev = 0
    cdef Warmup *w
    if cap == -1:
        return 0
    if not 0 <= cap < UNLIMITED:
        raise ValueError("engine snapshot is corrupt: warm-up cap out of range")
    engine_set_warmup(eng, num, cap)
    w = num.warm
    take_ring(&w.ring, c, version)
    count = get_u64(take(c, 8))
    p = take(c, <Py_ssize_t>(count * WARM_ENTRY_SIZE)) if count < (<uint64_t>1 << 40) else NULL
    if p == NULL:
        raise ValueError("engine snapshot is truncated")
    if warmup_rebuild(w, count) < 0:
        raise MemoryError()
    for i in range(count):
        key = get_u64(p)
        check_key(key, prev)
        prev = key
        t = <int64_t>get_u64(p + 8)
        if key > KEY_MASK or not -MAX_TIME <= t <= MAX_TIME or not warmup_live(w, t):
            raise ValueError("engine snapshot is corrupt: warm-up entry")
        warmup_put(w.slots, w.capacity, key).last = t
        w.count += 1
        p += WARM_ENTRY_SIZE
    return 0
