# -- recipient tables --------------------------------------------------------
#
# Both tables use Robin Hood open addressing: an entry sits at or after its
# home slot, and an insert that meets an entry closer to its own home than the
# new one would be takes that slot and moves the other on. Probe lengths stay
# short even four fifths full, and a search for an absent key stops as soon as
# it meets an entry closer to home than the key would be. Entries leave by a
# sweep (sweep.pxi: the entries after one move back to close the gap) or a
# rebuild (reclaim), so there are no tombstones. A table grows a few entries
# per insert (growth.pxi).

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
    # Kept apart from entry_find_mixed, not under it: entry_find_mixed stays
    # free of the stop bookkeeping.
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
    # every entry sits within them) and its number-table slot (also when that
    # table is small: many senders' small number tables together outgrow the
    # L2 cache).
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

cdef inline MarketingEntry *mm_probe(MarketingEntry *slots, uint64_t capacity,
                                     uint64_t key) noexcept nogil:
    # key's record among `capacity` slots, or NULL.
    cdef uint64_t mask = capacity - 1
    cdef uint64_t i = mix(key) & mask
    while True:
        if slots[i].key == key:
            return &slots[i]
        if slots[i].key == 0:
            return NULL
        i = (i + 1) & mask


cdef inline MarketingEntry *mm_find(MarketingMap *m, uint64_t key) noexcept nogil:
    # key's record: in the map's slots, else (while it grows) in the old slots
    # not moved yet. Moved old slots keep their records, so that probes over
    # them still reach the ones after; a record found there has been moved.
    cdef MarketingEntry *r
    if m.count == 0:
        return NULL
    r = mm_probe(m.slots, m.capacity, key)
    if r == NULL and m.old != NULL:
        r = mm_probe(m.old, m.old_capacity, key)
        if r != NULL and <uint64_t>(r - m.old) < m.moved:
            return NULL
    return r


cdef void mm_move(MarketingMap *m, uint64_t budget) noexcept nogil:
    # table_move for a marketing map: move the records of the next `budget`
    # old slots across (UINT64_MAX: all that are left); free the old slots
    # after the last.
    cdef uint64_t i, end
    if m.old == NULL:
        return
    end = m.old_capacity if budget >= m.old_capacity - m.moved else m.moved + budget
    for i in range(m.moved, end):
        if m.old[i].key != 0 and m.old[i].key != UINT64_MAX:  # not removed (mm_remove)
            mm_slot(m.slots, m.capacity, m.old[i].key)[0] = m.old[i]
    m.moved = end
    if end == m.old_capacity:
        tg_table_free(m.old, m.old_capacity * sizeof(MarketingEntry))
        m.old = NULL
        m.old_capacity = m.moved = 0


cdef inline void mm_keep(MarketingMap *m, MarketingEntry *kept, uint64_t word) noexcept nogil:
    # Copy the marketing record of the scope entry with key word `word`, if it
    # has one, into `kept` (empty slots of the map's capacity; the map is not
    # growing).
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
    # Room for one more record (at most 70 % full). A full map doubles as the
    # tables grow: the new slots are allocated, the old ones kept, and each
    # reserve (and each decision for the scope) moves the next MOVE_STEP old
    # slots across; a growth ends long before the map is full again (it takes
    # capacity / MOVE_STEP reserves, the next growth 0.7 * capacity).
    # -1: out of memory (nothing changed).
    cdef uint64_t capacity
    cdef MarketingEntry *slots
    mm_move(m, MOVE_STEP)
    if m.count + 1 <= max_fill(m.capacity):
        if m.count >= m.capacity // 2:
            mm_warm(m)
        return 0
    capacity = 2 * m.capacity if m.capacity else INITIAL_CAPACITY
    if m.spare != NULL:
        slots = m.spare
        m.spare = NULL
    else:
        slots = <MarketingEntry *>tg_table_alloc(capacity * sizeof(MarketingEntry))
    if slots == NULL:
        return -1
    mm_move(m, UINT64_MAX)  # one not finished yet (it cannot be, but is ended first)
    m.old = m.slots
    m.old_capacity = m.capacity
    m.moved = 0
    m.slots = slots
    m.capacity = capacity
    return 0


cdef void mm_warm(MarketingMap *m) noexcept nogil:
    # table_warm for a marketing map from half full: allocate its next slots
    # (when they get their own mapping, BIG_TABLE or more) and touch them in
    # step with the inserts, all by the time it grows, so that the growth does
    # not wait for the kernel to zero its new pages.
    cdef uint64_t size = 2 * m.capacity * sizeof(MarketingEntry)
    cdef uint64_t start = m.capacity // 2, span, target
    if size < BIG_TABLE:
        return
    if m.spare == NULL:
        m.spare = <MarketingEntry *>tg_table_alloc(size)
        if m.spare == NULL:
            return  # the growth will ask again
        m.spare_touched = 0
    span = max_fill(m.capacity) - start
    target = (size // span + 1) * (m.count - start + 1)
    if target > size:
        target = size
    if target > m.spare_touched:
        tg_touch(m.spare, m.spare_touched, target)
        m.spare_touched = (target + 4095) // 4096 * 4096


cdef void mm_drop_spare(MarketingMap *m) noexcept nogil:
    if m.spare != NULL:
        tg_table_free(m.spare, 2 * m.capacity * sizeof(MarketingEntry))
        m.spare = NULL


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
    # is allocated before anything changes. A growth under way is finished
    # first. -1: out of memory.
    cdef uint64_t i, count = 0
    cdef MarketingEntry *kept = NULL
    cdef bint prune = False
    cdef void *slots
    table_move(t, UINT64_MAX)
    slots = table_new_slots(t, capacity)
    if slots == NULL:
        return -1
    if Table is ScopeTable:
        mm_move(&t.marketing, UINT64_MAX)  # mm_keep reads one set of slots
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
    # touched when the table reaches crowd_count, and a doubling does not wait
    # for the kernel to zero its new pages. table_full counts warm_at, so
    # number inserts come here too.
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


cdef inline bint table_full(Table *t) noexcept nogil:
    # Whether table_reserve has work to do (it changes nothing otherwise).
    return (t.count >= max_fill(t.nominal) or t.sweep != 0 or crowded(t.count, t.capacity)
            or t.count >= t.warm_at or t.old != NULL)


cdef int table_reserve(Table *t, int64_t cut) noexcept nogil:
    # Room for one more entry. From the nominal fill, expired entries are
    # reclaimed a step per insert, and the nominal capacity doubles after the
    # last step unless the table is then below half its fill (the reference's
    # rule; table_sweep); the slots grow on their own when four fifths full,
    # a few at a time (table_grow, table_move). -1: out of memory (nothing
    # changed).
    table_move(t, MOVE_STEP)
    table_sweep(t, cut)
    if crowded(t.count, t.capacity):
        return table_grow(t, room_for(t.count + 1))
    if t.count >= t.warm_at:
        table_warm(t)
    return 0


cdef int table_init(Table *t) noexcept nogil:
    t.slots = NULL
    t.capacity = t.count = 0
    t.spare = NULL
    t.spare_capacity = t.spare_touched = 0
    t.warm_at = UINT64_MAX
    t.old = NULL
    t.old_capacity = t.moved = 0
    t.sweep = 0
    t.sweep_cut = 0
    if Table is ScopeTable:
        t.nominal = INITIAL_CAPACITY
        t.oldest_last = t.swept_oldest = INT64_MAX
    else:
        t.nominal = NUMBER_INITIAL_CAPACITY
    return table_rebuild(t, INITIAL_CAPACITY, False, 0)


cdef void table_free(Table *t) noexcept nogil:
    tg_table_free(t.slots, t.capacity * sizeof(t.slots[0]))
    t.slots = NULL
    table_drop_spare(t)
    tg_table_free(t.old, t.old_capacity * sizeof(t.slots[0]))
    t.old = NULL
    if Table is ScopeTable:
        tg_table_free(t.marketing.slots, t.marketing.capacity * sizeof(MarketingEntry))
        t.marketing.slots = NULL
        tg_table_free(t.marketing.old, t.marketing.old_capacity * sizeof(MarketingEntry))
        t.marketing.old = NULL
        mm_drop_spare(&t.marketing)


cdef inline ScopeEntry *scope_find(ScopeTable *t, uint64_t key) noexcept nogil:
    return scope_find_mixed(t, key, mix(key))


cdef inline ScopeEntry *scope_find_mixed(ScopeTable *t, uint64_t key,
                                         uint64_t mixed) noexcept nogil:
    cdef ScopeEntry *e = entry_find_mixed(t.slots, t.capacity, key, mixed)
    if e == NULL and t.old != NULL:
        e = entry_find_old(t.old, t.old_capacity, t.moved, key, mixed)
    return e


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
    cdef uint64_t mixed = mix(key)
    cdef NumberEntry *e = entry_find_mixed(t.slots, t.capacity, key, mixed)
    if e == NULL and t.old != NULL:
        e = entry_find_old(t.old, t.old_capacity, t.moved, key, mixed)
    return e


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
    e.pair_start = NEVER
    t.count += 1
    return entry_place_from(t.slots, t.capacity, &e, i, d)


cdef inline NumberEntry *number_insert_mixed(NumberTable *t, uint64_t key,
                                             uint64_t mixed) noexcept nogil:
    return number_insert_from(t, key, tg_scale(mixed, t.capacity), 0)


cdef uint64_t engine_reclaim(Engine eng, int64_t now) except? 0:
    # What Engine.reclaim does (its docstring says how).
    cdef Py_ssize_t i
    cdef Scope *s
    cdef Number *num
    cdef uint64_t removed = 0, dead
    cdef int64_t cut
    check_time("now", now)
    for i in range(eng.n_scopes):
        s = &eng.scopes[i]
        scope_clamp(s, now)
        table_move(&s.table, UINT64_MAX)  # the passes below read one set of slots
        cut = s.last_now - s.horizon
        dead = 0 if cut <= s.table.oldest_last else count_expired(&s.table, cut)
        if dead:
            if table_rebuild(&s.table, room_for(s.table.count - dead), True, cut) < 0:
                raise MemoryError()
            removed += dead
    for i in range(eng.n_numbers):
        num = &eng.numbers[i]
        if now > num.clock:
            num.clock = now
        table_move(&num.table, UINT64_MAX)
        cut = number_cut(eng, num)
        dead = count_expired(&num.table, cut)
        if dead:
            if table_rebuild(&num.table, room_for(num.table.count - dead), True, cut) < 0:
                raise MemoryError()
            removed += dead
    return removed


cdef tuple engine_spare_bytes(Engine eng):
    # What Engine.spare_bytes does (its docstring says how).
    cdef Py_ssize_t i
    cdef uint64_t held = 0, touched = 0
    for i in range(eng.n_scopes):
        if eng.scopes[i].table.spare != NULL:
            held += eng.scopes[i].table.spare_capacity * sizeof(ScopeEntry)
            touched += eng.scopes[i].table.spare_touched
    for i in range(eng.n_numbers):
        if eng.numbers[i].table.spare != NULL:
            held += eng.numbers[i].table.spare_capacity * sizeof(NumberEntry)
            touched += eng.numbers[i].table.spare_touched
    return held, touched
