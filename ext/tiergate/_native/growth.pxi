# -- growing tables ----------------------------------------------------------
#
# A table grows as Redis rehashes its dicts: the bigger slots are allocated,
# the old ones kept, and each decision for the table (decide_one) and each
# insert into it (table_reserve) first moves the entries of the next MOVE_STEP
# old slots across (table_move), so no call does work in proportion to the
# table. Until the last has moved, a key is looked for in the new slots,
# then in the old ones from `moved` on; an entry still in the old slots is the
# entry (it moves with whatever was written to it). Whatever walks every entry
# (reclaim, snapshots, copies) either finishes the move first or walks both; a
# sweep step (sweep.pxi) drops entries from both sets of slots.


cdef inline TableEntry *entry_find_old(TableEntry *old, uint64_t capacity, uint64_t moved,
                                       uint64_t key, uint64_t mixed) noexcept nogil:
    # The entry for key among the old slots of a table that grows, if it has
    # not moved yet (the table's new slots were searched first).
    cdef TableEntry *e
    if old == NULL:
        return NULL
    e = entry_find_mixed(old, capacity, key, mixed)
    if e == NULL or <uint64_t>(e - old) < moved:
        return NULL
    return e


cdef inline TableEntry *entry_at(TableEntry *slots, uint64_t capacity, TableEntry *old,
                                 uint64_t i) noexcept nogil:
    # Slot i of a table's slots then its old ones, numbered on from capacity.
    return &slots[i] if i < capacity else &old[i - capacity]


cdef void *table_new_slots(Table *t, uint64_t capacity) noexcept nogil:
    # Zeroed memory for `capacity` slots: the growth spare if it has that size
    # (zeroed ahead; the rest of it is zeroed on first write). NULL: out of memory.
    cdef void *slots
    if t.spare != NULL and capacity == t.spare_capacity:
        slots = t.spare
        t.spare = NULL
        return slots
    return tg_table_alloc(capacity * sizeof(t.slots[0]))


cdef void table_move(Table *t, uint64_t budget) noexcept nogil:
    # Move the entries of the next `budget` old slots of a table that grows
    # into its new ones (UINT64_MAX: all that are left), and free the old
    # slots once the last has moved. Nothing to do when the table is not
    # growing.
    cdef uint64_t i, end
    if t.old == NULL:
        return
    end = t.old_capacity if budget >= t.old_capacity - t.moved else t.moved + budget
    for i in range(t.moved, end):
        if t.old[i].key != 0:
            entry_place(t.slots, t.capacity, &t.old[i])
    t.moved = end
    if end == t.old_capacity:
        tg_table_free(t.old, t.old_capacity * sizeof(t.old[0]))
        t.old = NULL
        t.old_capacity = t.moved = 0


cdef int table_grow(Table *t, uint64_t capacity) noexcept nogil:
    # Start growing into `capacity` slots: the current ones become the old
    # slots, which the next inserts empty MOVE_STEP at a time (table_move).
    # -1: out of memory (nothing changed).
    cdef void *slots
    table_move(t, UINT64_MAX)  # a growth not finished yet (inserts outpace it) ends first
    slots = table_new_slots(t, capacity)
    if slots == NULL:
        return -1
    t.old = t.slots
    t.old_capacity = t.capacity
    t.moved = 0
    if Table is ScopeTable:
        t.slots = <ScopeEntry *>slots
    else:
        t.slots = <NumberEntry *>slots
    t.capacity = capacity
    table_drop_spare(t)  # sized for another capacity
    t.warm_at = warm_count(capacity, sizeof(t.slots[0]))
    return 0


cdef int64_t open_windows(NumberTable *t, int64_t now) noexcept nogil:
    # What Engine.open_windows counts, in a growing table's old slots too.
    cdef NumberEntry *e
    cdef uint64_t i
    cdef int64_t n = 0
    for i in range(t.capacity + t.old_capacity):
        if i >= t.capacity and i - t.capacity < t.moved:
            continue  # moved: counted in the new slots
        e = entry_at(t.slots, t.capacity, t.old, i)
        if e.key != 0 and (now < e.window_until or now < e.fep_until):
            n += 1
    return n


cdef uint64_t engine_growth_bytes(Engine eng, bint marketing):
    # What Engine.growth_bytes does (its docstring says how); with marketing,
    # what Engine.marketing_growth_bytes does.
    cdef Py_ssize_t i
    cdef uint64_t held = 0
    if marketing:
        for i in range(eng.n_scopes):
            held += eng.scopes[i].table.marketing.old_capacity * sizeof(MarketingEntry)
        return held
    for i in range(eng.n_scopes):
        held += eng.scopes[i].table.old_capacity * sizeof(ScopeEntry)
    for i in range(eng.n_numbers):
        held += eng.numbers[i].table.old_capacity * sizeof(NumberEntry)
    return held
