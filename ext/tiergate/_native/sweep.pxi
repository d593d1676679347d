# -- the reclaim at a table's nominal fill, a step per insert -----------------
#
# When an insert finds a table at its nominal fill (70 % of `nominal`), a sweep
# begins: that insert and the next ones each take one step, sweep_steps of
# them (one per 16 nominal slots). Step b drops the entries whose mix(key)
# lies in the b-th of sweep_steps equal parts of [0, 2**64) and that are
# expired as of the cut at that moment, where they lie: a Robin Hood table
# keeps its entries in the order of their home slots, mix(key) scaled to the
# capacity, so a part is a run of about 24 slots (the ones at its two ends
# shared with the parts beside it), whatever the table's size or growth. The
# reference engine sweeps its dicts in the same order, step for step
# (reference/tables.py: Sweep), so both drop the same entries at the same
# moments. After the last step the nominal capacity doubles unless the table
# is below half its fill. Nothing is allocated and no call walks the table.


cdef inline uint64_t sweep_steps(uint64_t nominal) noexcept nogil:
    return nominal >> SWEEP_SHIFT if nominal >> SWEEP_SHIFT else 1


cdef inline uint64_t sweep_first(uint64_t b, uint64_t steps) noexcept nogil:
    # The least mix(key) of part b (b < steps; steps a power of two):
    # b * 2**64 / steps (UINT64_MAX / steps + 1 wraps to 0 for one step).
    return b * (UINT64_MAX // steps + 1)


cdef inline uint64_t sweep_last(uint64_t b, uint64_t steps) noexcept nogil:
    # The greatest mix(key) of part b.
    return UINT64_MAX if b + 1 == steps else sweep_first(b + 1, steps) - 1


cdef inline void note_last(ScopeTable *t, int64_t last) noexcept nogil:
    # An entry not opted out now has `last` as its last counted time (at
    # most): oldest_last, and the sweep's, stay at or before it.
    t.oldest_last = min(t.oldest_last, last)
    t.swept_oldest = min(t.swept_oldest, last)


cdef void entry_remove(TableEntry *slots, uint64_t capacity, uint64_t i) noexcept nogil:
    # Empty slot i and close the gap: each entry after it that is not at its
    # home slot moves back one, up to an empty slot or an entry at home.
    cdef uint64_t nx = i + 1 if i + 1 < capacity else 0
    cdef uint64_t d
    while slots[nx].key != 0:
        d = distance(slots[nx].key, nx, capacity)
        if d == 0:
            break
        slots[i] = slots[nx]
        slots[i].key = with_distance(slots[nx].key, d - 1)
        i = nx
        nx = i + 1 if i + 1 < capacity else 0
    memset(&slots[i], 0, sizeof(slots[0]))


cdef void mm_remove(MarketingMap *m, uint64_t key) noexcept nogil:
    # Drop key's record (it has one). In the map's slots the records after it
    # that could not sit in its slot move back (linear probing deletion); in
    # the old slots of a growth it stays, its key UINT64_MAX (above every
    # recipient key: probes pass it, mm_move leaves it behind).
    cdef uint64_t mask = m.capacity - 1
    cdef uint64_t i, j, h
    cdef MarketingEntry *r = mm_probe(m.slots, m.capacity, key)
    m.count -= 1
    if r == NULL:
        mm_probe(m.old, m.old_capacity, key).key = UINT64_MAX
        return
    i = j = <uint64_t>(r - m.slots)
    while True:
        j = (j + 1) & mask
        if m.slots[j].key == 0:
            break
        h = mix(m.slots[j].key) & mask
        # a record whose home lies cyclically in (i, j] stays where it is
        if (h > i and h <= j) if i <= j else (h > i or h <= j):
            continue
        m.slots[i] = m.slots[j]
        i = j
    memset(&m.slots[i], 0, sizeof(MarketingEntry))


cdef uint64_t old_through(Table *t, uint64_t last) noexcept nogil:
    # How many more old slots a growing table must move so that every entry
    # whose mix(key) is at most `last` has left them (UINT64_MAX: all).
    cdef uint64_t h, m, w, d
    if last == UINT64_MAX:
        return UINT64_MAX
    h = tg_scale(last, t.old_capacity)
    m = t.moved if t.moved > h else h + 1
    while m < t.old_capacity:
        w = t.old[m].key
        if w == 0:
            break
        d = distance(w, m, t.old_capacity)
        if d > m or m - d > h:
            break
        m += 1
    return m - t.moved if m > t.moved else 0


cdef uint64_t sweep_part(Table *t, uint64_t b, uint64_t steps, int64_t cut) noexcept nogil:
    # Step b of a sweep (see above): returns how many entries it dropped.
    cdef uint64_t cap, lo, span, i, j = 0, w, d, dead = 0
    cdef ScopeEntry *se
    if t.old != NULL:
        # its part of the old slots first (moved in the order of their homes)
        table_move(t, old_through(t, sweep_last(b, steps)))
    if Table is ScopeTable:
        if cut <= t.oldest_last:
            # nothing expired (a scope table's first week): the part's entries
            # were counted at oldest_last or later
            t.swept_oldest = min(t.swept_oldest, t.oldest_last)
            return 0
    cap = t.capacity
    lo = tg_scale(sweep_first(b, steps), cap)
    span = tg_scale(sweep_last(b, steps), cap) - lo
    i = lo
    while True:
        w = t.slots[i].key
        if w == 0:
            if j >= span:
                break  # every entry with its home in the part lies before
        else:
            d = distance(w, i, cap)
            if d <= j:  # else from a home before the part's first
                if j - d > span:
                    break
                # the runs at the part's two ends are shared with the parts beside it
                if ((j - d > 0 and j - d < span)
                        or tg_scale(mix(w & KEY_MASK), steps) == b):
                    if entry_expired(t, i, cut):
                        if Table is ScopeTable:
                            if w & KEY_MARKETING:
                                mm_remove(&t.marketing, w & KEY_MASK)
                        entry_remove(t.slots, cap, i)
                        dead += 1
                        continue  # slot i holds the next entry now
                    if Table is ScopeTable:
                        se = &t.slots[i]
                        if not (w & KEY_OPT_OUT):
                            t.swept_oldest = min(t.swept_oldest, slot_last(se.slot))
        j += 1
        i += 1
        if i == cap:
            i = 0
    t.count -= dead
    return dead


cdef void table_sweep(Table *t, int64_t cut) noexcept nogil:
    # The step of a sweep that an insert takes (table_reserve), beginning one
    # at the nominal fill; after the last, the nominal capacity doubles unless
    # the table is below half its fill (the reference's rule).
    cdef uint64_t steps = sweep_steps(t.nominal)
    if t.sweep == 0:
        if t.count < max_fill(t.nominal):
            return
        if Table is ScopeTable:
            t.swept_oldest = INT64_MAX
    sweep_part(t, t.sweep, steps, cut)
    t.sweep += 1
    if t.sweep < steps:
        return
    t.sweep = 0
    if Table is ScopeTable:
        t.oldest_last = t.swept_oldest
    if t.count >= max_fill(t.nominal) // 2:
        t.nominal = 2 * t.nominal
