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


cdef int take_table(Cursor *c, uint32_t version, bint number, uint64_t *capacity,
                    uint64_t *count, uint64_t *sweep, int64_t *cut) except -1:
    # A table header; formats 1 to 5 had no sweep (read as none).
    cdef const unsigned char *p = take(c, TABLE_SIZE if version >= 6 else TABLE_SIZE_5)
    capacity[0] = get_u64(p)
    count[0] = get_u64(p + 8)
    sweep[0] = get_u64(p + 16) if version >= 6 else 0
    cut[0] = <int64_t>get_u64(p + 24) if version >= 6 else 0
    if (capacity[0] < INITIAL_CAPACITY or capacity[0] & (capacity[0] - 1)
            or capacity[0] > (<uint64_t>1 << 40)
            or sweep[0] >= sweep_steps(capacity[0], number) or (sweep[0] == 0 and cut[0] != 0)
            # a sweep under way has taken up to one insert per step past the fill
            or count[0] > max_fill(capacity[0]) + (sweep_steps(capacity[0], number)
                                                   if sweep[0] else 0)):
        raise ValueError("engine snapshot is corrupt: table capacity")
    return 0


cdef int restore_table(Table *t, Cursor *c, uint32_t version, Py_ssize_t entry_size,
                       const unsigned char **entries, uint64_t *count) except -1:
    # Reads the table header, makes room for its entries and returns them
    # (entries[0], count[0] of them); the caller inserts them.
    cdef uint64_t nominal, sweep
    cdef int64_t cut
    take_table(c, version, Table is NumberTable, &nominal, count, &sweep, &cut)
    entries[0] = take(c, <Py_ssize_t>(count[0] * entry_size))
    if table_rebuild(t, room_for(count[0]), False, 0) < 0:
        raise MemoryError()
    t.nominal = nominal
    t.sweep = sweep
    t.sweep_cut = cut
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
    restore_table(t, c, version, SCOPE_ENTRY_SIZE, &p, &count)
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
    mm_move(&t.marketing, UINT64_MAX)  # a restored map is whole
    # not known: the first sweep to end finds it
    t.oldest_last = t.swept_oldest = NEVER
    return 0


cdef int restore_number_table(NumberTable *t, Cursor *c, uint32_t version) except -1:
    # Formats 1 and 2 had no burst start: it restores as NEVER (a pair that
    # owes is held until it has paid back).
    cdef uint64_t count, i, key, prev = 0
    cdef const unsigned char *p
    cdef NumberEntry *e
    cdef Py_ssize_t size = NUMBER_ENTRY_SIZE if version >= 3 else NUMBER_ENTRY_SIZE_2
    cdef int64_t start
    restore_table(t, c, version, size, &p, &count)
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            tg_prefetch(&t.slots[home(get_u64(p + PREFETCH_AHEAD * size), t.capacity)])
        key = get_u64(p)
        check_key(key, prev)
        prev = key
        e = number_insert(t, key)
        e.window_until = <int64_t>get_u64(p + 8)
        e.fep_until = <int64_t>get_u64(p + 16)
        e.pair_tat = <int64_t>get_u64(p + 24)
        if version >= 3:
            start = <int64_t>get_u64(p + 32)
            if start != NEVER and not -MAX_TIME <= start <= MAX_TIME:
                raise ValueError("engine snapshot is corrupt: time out of range")
            e.pair_start = start
        p += size
    return 0


cdef KeySlot *sorted_keys(Table *t) noexcept nogil:
    # The table's keys (flags cleared) and slots (as entry_at numbers them: a
    # growing table's old slots after its new ones), ascending by key; NULL:
    # out of memory.
    cdef KeySlot *keys = <KeySlot *>malloc(max64(<int64_t>t.count, 1) * sizeof(KeySlot))
    cdef uint64_t i, n = 0, word
    if keys == NULL:
        return NULL
    for i in range(t.capacity + t.old_capacity):
        if i >= t.capacity and i - t.capacity < t.moved:
            continue  # moved: in the new slots
        word = entry_at(t.slots, t.capacity, t.old, i).key
        if word != 0:
            keys[n].key = word & KEY_MASK
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
    for i in range(n_scopes):
        s = &scopes[i]
        put_u64(p, s.freq_cap)
        put_u64(p + 8, s.freq_window)
        put_u64(p + 16, s.last_now)
        p += SCOPE_SIZE
        p = put_ring(&s.ring24, p)
        p = put_ring(&s.ring7, p)
        p = put_ring(&s.slots7, p)
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
        p = put_warmup(num.warm, p)
        if p == NULL:
            return NULL
    return p


cdef unsigned char *put_ring(Ring *r, unsigned char *p) noexcept nogil:
    # A ring: n, lo, total, then its n counts unless total is 0 (format 5 on:
    # a ring without a count is written without its buckets); the end of what
    # was written.
    cdef int64_t b
    put_u64(p, r.n)
    put_u64(p + 8, r.lo)
    put_u64(p + 16, r.total)
    p += RING_SIZE
    if r.total == 0:
        return p
    for b in range(r.n):
        put_u64(p, r.counts[b])
        p += 8
    return p


cdef int take_ring(Ring *r, Cursor *c, uint32_t version) except -1:
    # Reads a ring written by put_ring into r (of the size the engine makes);
    # its buckets are allocated only if one holds a count.
    cdef const unsigned char *p = take(c, RING_SIZE)
    cdef int64_t b, v, total = 0
    if <int64_t>get_u64(p) != r.n:
        raise ValueError("engine snapshot is corrupt: ring size does not match")
    r.lo = <int64_t>get_u64(p + 8)
    ring_forget(r)
    r.total = <int64_t>get_u64(p + 16)
    if version >= 5 and r.total == 0:
        return 0  # written without its buckets: every one empty
    p = take(c, 8 * r.n)
    for b in range(r.n):
        v = <int64_t>get_u64(p + 8 * b)
        if v < 0:
            raise ValueError("engine snapshot is corrupt: ring total does not match")
        if v == 0:
            continue
        if ring_ready(r) < 0:
            raise MemoryError()
        r.counts[b] = v
        total += v
    if total != r.total:
        raise ValueError("engine snapshot is corrupt: ring total does not match")
    return 0


cdef inline unsigned char *put_table(Table *t, unsigned char *p) noexcept nogil:
    put_u64(p, t.nominal)
    put_u64(p + 8, t.count)
    put_u64(p + 16, t.sweep)
    put_u64(p + 24, <uint64_t>t.sweep_cut)
    return p + TABLE_SIZE


cdef unsigned char *put_scope_table(ScopeTable *t, unsigned char *p) noexcept nogil:
    cdef KeySlot *keys = sorted_keys(t)
    cdef uint64_t i
    cdef ScopeEntry *e
    cdef int64_t *hist
    cdef int k
    if keys == NULL:
        return NULL
    p = put_table(t, p)
    for i in range(t.count):
        if i + PREFETCH_AHEAD < t.count:
            tg_prefetch(entry_at(t.slots, t.capacity, t.old, keys[i + PREFETCH_AHEAD].slot))
        e = entry_at(t.slots, t.capacity, t.old, keys[i].slot)
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
    p = put_table(t, p)
    for i in range(t.count):
        if i + PREFETCH_AHEAD < t.count:
            tg_prefetch(entry_at(t.slots, t.capacity, t.old, keys[i + PREFETCH_AHEAD].slot))
        e = entry_at(t.slots, t.capacity, t.old, keys[i].slot)
        put_u64(p, keys[i].key)
        put_u64(p + 8, e.window_until)
        put_u64(p + 16, e.fep_until)
        put_u64(p + 24, e.pair_tat)
        put_u64(p + 32, e.pair_start)
        p += NUMBER_ENTRY_SIZE
    free(keys)
    return p


cdef bytes engine_snapshot(Engine eng):
    # What Engine.snapshot does (its docstring says how).
    cdef Py_ssize_t size = HEADER_SIZE, i
    cdef Scope *s
    cdef unsigned char *p
    cdef unsigned char *end
    for i in range(eng.n_scopes):
        s = &eng.scopes[i]
        size += SCOPE_SIZE + 3 * RING_SIZE + TABLE_SIZE
        # a ring without a count is written without its buckets (format 5 on)
        size += 8 * ((s.ring24.n if s.ring24.total else 0) + (s.ring7.n if s.ring7.total else 0)
                     + (s.slots7.n if s.slots7.total else 0))
        size += SCOPE_ENTRY_SIZE * <Py_ssize_t>s.table.count
    for i in range(eng.n_numbers):
        size += NUMBER_SIZE + TABLE_SIZE
        size += NUMBER_ENTRY_SIZE * <Py_ssize_t>eng.numbers[i].table.count
        size += warmup_snapshot_size(eng.numbers[i].warm)
    out = PyBytes_FromStringAndSize(NULL, size)
    p = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(p, <const char *>SNAPSHOT_MAGIC, 8)
    put_u64(p + 8, SNAPSHOT_VERSION)  # version (u32) + reserved (u32, zero)
    put_u64(p + 16, eng.bucket_ms)
    put_u64(p + 24, eng.window_ms)
    put_u64(p + 32, eng.long_bucket_ms)
    put_u64(p + 40, eng.long_window_ms)
    put_u64(p + 48, <uint64_t>eng.n_scopes | (<uint64_t>eng.n_numbers << 32))
    with nogil:
        end = put_state(eng.scopes, eng.n_scopes, eng.numbers, eng.n_numbers,
                        p + HEADER_SIZE)
    if end == NULL:
        raise MemoryError()
    return out


cdef Engine engine_restore(type cls, data):
    # What Engine.restore does (its docstring says how).
    cdef const unsigned char[::1] buf = data
    cdef Cursor c
    cdef const unsigned char *p
    cdef Engine eng
    cdef Scope *s
    cdef Number *num
    cdef int64_t n_scopes, n_numbers
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
        take_ring(&s.ring24, &c, version)
        take_ring(&s.ring7, &c, version)
        take_ring(&s.slots7, &c, version)
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
        restore_number_table(&num.table, &c, version)
        if version >= 4:
            restore_warmup(eng, num, &c, version)
    if c.pos != c.size:
        raise ValueError("engine snapshot is corrupt: trailing bytes")
    return eng
