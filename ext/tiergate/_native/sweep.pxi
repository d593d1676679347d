# -- the reclaim at a table's nominal fill, a step per insert -----------------
#
# When an insert finds a table at its nominal fill (70 % of `nominal`), a sweep
# begins: that insert and the next ones each take one step, sweep_steps of
# them (one per 16 nominal slots; one in all for a number table below
# SWEEP_NUMBER_FROM). Step b drops the entries whose mix(key)
# lies in the b-th of sweep_steps equal parts of [0, 2**64) and that are
# expired as of the cut when the sweep began (as one pass at that moment
# would: the parts swept first keep no more than the others), where they lie: a Robin Hood table
# keeps its entries in the order of their home slots, mix(key) scaled to the
# capacity, so a part is a run of about 24 slots (the ones at its two ends
# shared with the parts beside it), whatever the table's size; while the
# table grows, the part is swept in its old slots not moved yet as well. The
# reference engine sweeps its dicts in the same order, step for step
# (reference/tables.py: Sweep), so both drop the same entries at the same
# moments. After the last step the nominal capacity doubles unless the table
# is below half its fill. Nothing is allocated and no call walks the table.


cdef inline uint64_t sweep_steps(uint64_t nominal, bint number) noexcept nogil:
    if nominal >> SWEEP_SHIFT == 0 or (number and nominal < SWEEP_NUMBER_FROM):
        return 1
    return nominal >> SWEEP_SHIFT


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


cdef void entry_remove(TableEntry *slots, uint64_t capacity, uint64_t moved,
                       uint64_t i) noexcept nogil:
    # Empty slot i and close the gap: each entry after it that is not at its
    # home slot moves back one, up to an empty slot or an entry at home. In the
    # old slots of a growth, the slots before `moved` have moved (0 for a
    # table's own slots): nothing moves back out of them.
    cdef uint64_t nx = i + 1 if i + 1 < capacity else 0
    cdef uint64_t d
    while slots[nx].key != 0 and nx >= moved:
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


cdef uint64_t sweep_slots(TableEntry *slots, uint64_t cap, uint64_t moved, ScopeTable *st,
                          uint64_t b, uint64_t steps, int64_t cut) noexcept nogil:
    # Step b of a sweep (see above) over one set of slots: a table's own, or
    # the old slots of its growth, those before `moved` passed over (they have
    # moved). Scope entries come with their table `st` (marketing records; the
    # kept ones' last counted times go into its swept_oldest; NULL for number
    # entries). Returns how many entries it dropped.
    cdef uint64_t lo = tg_scale(sweep_first(b, steps), cap)
    cdef uint64_t span = tg_scale(sweep_last(b, steps), cap) - lo
    cdef uint64_t i = lo, j = 0, w, d, dead = 0
    cdef bint expired
    while True:
        w = slots[i].key
        if w == 0:
            if j >= span:
                break  # every entry with its home in the part lies before
        else:
            d = distance(w, i, cap)
            if d <= j:  # else from a home before the part's first
                if j - d > span:
                    break
                # the runs at the part's two ends are shared with the parts beside it
                if i >= moved and ((j - d > 0 and j - d < span)
                                   or tg_scale(mix(w & KEY_MASK), steps) == b):
                    if TableEntry is ScopeEntry:
                        expired = scope_expired(st, &slots[i], cut)
                    else:
                        expired = number_expired(&slots[i], cut)
                    if expired:
                        if TableEntry is ScopeEntry:
                            if w & KEY_MARKETING:
                                mm_remove(&st.marketing, w & KEY_MASK)
                        entry_remove(slots, cap, moved, i)
                        dead += 1
                        continue  # slot i holds the next entry now
                    if TableEntry is ScopeEntry:
                        if not (w & KEY_OPT_OUT):
                            st.swept_oldest = min(st.swept_oldest, slot_last(slots[i].slot))
        j += 1
        i += 1
        if i == cap:
            i = 0
    return dead


cdef void sweep_part(Table *t, uint64_t b, uint64_t steps, int64_t cut) noexcept nogil:
    # Step b of a sweep of t: its slots, and the old ones of a growth under way.
    cdef uint64_t dead
    if Table is ScopeTable:
        if cut <= t.oldest_last:
            # nothing expired (a scope table's first week): the part's entries
            # were counted at oldest_last or later
            t.swept_oldest = min(t.swept_oldest, t.oldest_last)
            return
        dead = sweep_slots(t.slots, t.capacity, 0, t, b, steps, cut)
        if t.old != NULL:
            dead += sweep_slots(t.old, t.old_capacity, t.moved, t, b, steps, cut)
    else:
        dead = sweep_slots(t.slots, t.capacity, 0, NULL, b, steps, cut)
        if t.old != NULL:
            dead += sweep_slots(t.old, t.old_capacity, t.moved, NULL, b, steps, cut)
    t.count -= dead


cdef void table_sweep(Table *t, int64_t cut) noexcept nogil:
    # The step of a sweep that an insert takes (table_reserve), beginning one
    # at the nominal fill; after the last, the nominal capacity doubles unless
    # the table is below half its fill (the reference's rule).
    cdef uint64_t steps = sweep_steps(t.nominal, Table is NumberTable)
    if t.sweep == 0:
        if t.count < max_fill(t.nominal):
            return
        t.sweep_cut = cut
        if Table is ScopeTable:
            t.swept_oldest = INT64_MAX
    sweep_part(t, t.sweep, steps, t.sweep_cut)
    t.sweep += 1
    if t.sweep < steps:
        return
    t.sweep = 0
    t.sweep_cut = 0
    if Table is ScopeTable:
        t.oldest_last = t.swept_oldest
    if t.count >= max_fill(t.nominal) // 2:
        t.nominal = 2 * t.nominal
