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


cdef NumberEntry *number_entry(Engine eng, Number *num, uint64_t recipient) except NULL:
    # The recipient's entry in the number's table, made (NEVER times) if absent.
    cdef NumberEntry *ne = number_find(&num.table, recipient)
    if ne == NULL:
        if table_reserve(&num.table, number_cut(eng, num)) < 0:
            raise MemoryError()
        ne = number_insert(&num.table, recipient)
    return ne


# -- the decision core -------------------------------------------------------
#
# DESIGN §2's steps 4 to 9 for one request (steps 1 to 3 are the policy
# layer's), then every mutation of an admit: checks first, nothing changed
# until all have passed. Each step is an inline function of decide_one, which
# the C compiler folds back into one.

cdef struct Probe:
    # What a decision looks up once and its steps share.
    ScopeEntry *se        # the recipient's scope entry, or NULL
    NumberEntry *ne       # its number entry, or NULL
    uint64_t mixed        # mix(recipient)
    uint64_t nstop[2]     # where entry_search stopped looking for ne
    int64_t last          # the last counted time (NEVER: none)
    int64_t now_us        # now in microseconds (throughput buckets)
    int64_t tput_tat      # the number's throughput bucket as of now
    int64_t pair_tat      # the recipient's pair-rate bucket as of now
    int64_t pair_start    # when the pair's burst began (now: it has paid back)
    int64_t warm_last     # when the number itself last counted the recipient (warm-up)
    bint template
    bint marketing
    bint in_window        # a customer service window is open
    bint in_fep           # a free-entry-point window is open
    bint counting         # business-initiated: counts against the messaging limit
    bint needs_slot       # ... and takes a new slot (not counted within the window)
    bint warm_needs       # ... and a slot of the number's own warm-up cap


cdef inline void look_up(Engine eng, int64_t now, Scope *s, Number *num, uint64_t recipient,
                         uint32_t flags, Probe *p) noexcept nogil:
    p.mixed = mix(recipient)
    p.se = scope_find_mixed(&s.table, recipient, p.mixed)
    p.nstop[0] = 0
    p.nstop[1] = DIST_MAX  # set by entry_search when it finds no entry
    p.ne = entry_search(num.table.slots, num.table.capacity, recipient, p.mixed, p.nstop)
    if p.ne == NULL and num.table.old != NULL:
        # growing (table_full holds: nstop goes unused)
        p.ne = entry_find_old(num.table.old, num.table.old_capacity, num.table.moved,
                              recipient, p.mixed)
    p.template = (flags & F_TEMPLATE) != 0
    p.marketing = (flags & F_MARKETING) != 0
    p.last = slot_last(p.se.slot) if p.se != NULL else NEVER
    p.in_window = p.ne != NULL and now < p.ne.window_until
    p.in_fep = p.ne != NULL and now < p.ne.fep_until
    # a free-entry-point window spares templates unless it is a pricing window only
    p.counting = p.template and not p.in_window and not (p.in_fep and not (flags & F_FEP_PRICING))
    p.needs_slot = p.counting and not (p.last > now - eng.window_ms)
    p.warm_last = NEVER
    if num.warm != NULL:
        ring_advance(&num.warm.ring, now)
        p.warm_last = warmup_last(num.warm, recipient)
    p.warm_needs = num.warm != NULL and p.counting and p.warm_last <= now - eng.window_ms
    p.now_us = now * 1000
    p.tput_tat = max64(num.tput_tat, p.now_us)
    p.pair_tat = max64(p.ne.pair_tat if p.ne != NULL else NEVER, now)
    # a burst starts only once the pair has paid back the last one (its TAT)
    p.pair_start = p.ne.pair_start if p.ne != NULL and p.pair_tat > now else now


cdef inline int64_t frequency_retry(Scope *s, ScopeEntry *se, int64_t now) noexcept nogil:
    # When the marketing frequency cap allows the next marketing send to se's
    # recipient, if it refuses one now; else NEVER.
    cdef int64_t *hist = history(&s.table, se) if se != NULL else NULL
    cdef int64_t recent[MARKETING_HISTORY]
    cdef int64_t cut, t
    cdef int k, j, n_recent = 0
    if s.freq_cap <= 0 or hist == NULL:
        return NEVER
    cut = now - s.freq_window
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
        return recent[n_recent - s.freq_cap] + s.freq_window
    return NEVER


cdef inline bint refused(int64_t now, Scope *s, Number *num, uint32_t flags, int64_t limit,
                         uint32_t skip, Probe *p, Decision *d) noexcept nogil:
    # Steps 4 to 9: whether a rule whose reason is not in the bit set skip (the
    # shadowed reasons) refuses the request (d then holds the refusal).
    cdef Ring *ring = &s.ring24
    cdef int64_t retry
    cdef bint full, warm_full
    # 4. free-form needs an open customer service window
    if not p.template and not (p.in_window or (p.in_fep and (flags & F_FEP_FREE_FORM))):
        if not (skip >> OUTSIDE_WINDOW) & 1:
            reject(d, REJECT, OUTSIDE_WINDOW, 0)
            return True
    # 5. opted-out recipients get no marketing
    if p.marketing and p.se != NULL and p.se.key & KEY_OPT_OUT:
        if not (skip >> RECIPIENT_OPTED_OUT) & 1:
            reject(d, REJECT, RECIPIENT_OPTED_OUT, 0)
            return True
    # 6. messaging limit (business-initiated messages only)
    if p.counting:
        if flags & F_RESTRICTED and not (skip >> SENDER_RESTRICTED) & 1:
            reject(d, REJECT, SENDER_RESTRICTED, 0)
            return True
        full = p.needs_slot and ring.total >= limit
        warm_full = p.warm_needs and num.warm.ring.total >= num.warm.cap
        if (full or warm_full) and not (skip >> MESSAGING_LIMIT) & 1:
            # retried once every count that binds has a free slot
            if (full and limit <= 0) or (warm_full and num.warm.cap <= 0):
                reject(d, REJECT, MESSAGING_LIMIT, 0)
            else:
                retry = ring_next_free(ring, limit, now) if full else now
                if warm_full:
                    retry = max64(retry, ring_next_free(&num.warm.ring, num.warm.cap, now))
                reject(d, RETRY_LATER, MESSAGING_LIMIT, retry)
            return True
    elif flags & F_REPLY_RESTRICTED:  # a reply (in a window) while Meta restricts them
        if not (skip >> SENDER_RESTRICTED) & 1:
            reject(d, REJECT, SENDER_RESTRICTED, 0)
            return True
    # 7. protective rules
    if p.marketing:
        if not (skip >> MARKETING_FREQUENCY) & 1:
            retry = frequency_retry(s, p.se, now)
            if retry != NEVER:
                reject(d, RETRY_LATER, MARKETING_FREQUENCY, retry)
                return True
        if flags & F_QUALITY_BLOCK and not (skip >> QUALITY_PROTECTION) & 1:
            reject(d, REJECT, QUALITY_PROTECTION, 0)
            return True
    # 8. sender throughput (GCRA, microseconds); retry rounds up to ms
    if p.tput_tat - num.tput_tolerance > p.now_us and not (skip >> THROUGHPUT) & 1:
        reject(d, RETRY_LATER, THROUGHPUT, -floordiv(num.tput_tolerance - p.tput_tat, 1000))
        return True
    # 9. pair rate: a burst of up to `burst` sends within one interval of its
    # start, then nothing until it is paid back at one per interval (the
    # reference: Number.pair_refuses)
    if p.pair_tat > now and (now - p.pair_start >= num.pair_interval
                             or p.pair_tat - p.pair_start > num.pair_tolerance):
        if not (skip >> PAIR_RATE) & 1:
            reject(d, RETRY_LATER, PAIR_RATE, p.pair_tat)
            return True
    return False


cdef inline int make_room(Engine eng, int64_t now, Scope *s, Number *num, uint64_t recipient,
                          Probe *p) noexcept nogil:
    # The entries an admit writes, created where missing (tables may rehash;
    # nothing is consumed yet). -1: out of memory.
    if p.counting and (ring_ready(&s.ring24) < 0 or ring_ready(&s.ring7) < 0
                       or ring_ready(&s.slots7) < 0):
        return -1
    if p.se == NULL and (p.counting or p.marketing):
        if table_reserve(&s.table, s.last_now - s.horizon) < 0:
            return -1
    if p.marketing and (p.se == NULL or not (p.se.key & KEY_MARKETING)):
        if mm_reserve(&s.table.marketing) < 0:
            return -1
    if p.ne == NULL:
        # Placed from where the search stopped, when nothing has moved since:
        # no second walk from the home slot and no call.
        if p.nstop[1] < DIST_MAX and not table_full(&num.table):
            p.ne = number_insert_from(&num.table, recipient, p.nstop[0], p.nstop[1])
        else:
            if table_reserve(&num.table, number_cut(eng, num)) < 0:
                return -1
            p.ne = number_insert_mixed(&num.table, recipient, p.mixed)
    if p.se == NULL and (p.counting or p.marketing):
        p.se = scope_insert_mixed(&s.table, recipient, p.mixed)
        # counted now, or (marketing only) not counted at all
        note_last(&s.table, now if p.counting else NEVER)
    return 0


cdef inline void count_slot(int64_t now, Scope *s, Probe *p, Decision *d) noexcept nogil:
    # A counting admit: the recipient's last counted time moves to now, in the
    # rings and in its slot word (a new slot, or the earlier one relied on).
    cdef ScopeEntry *se = p.se
    cdef uint64_t gen
    ring_remove(&s.ring24, p.last)
    ring_add(&s.ring24, now)
    ring_remove(&s.ring7, p.last)
    ring_add(&s.ring7, now)
    if p.needs_slot:
        ring_add(&s.slots7, now)
        gen = (se.slot & SLOT_GEN_MASK) + 1
        if gen > SLOT_GEN_MASK:
            gen = 1
        se.slot = slot_with_last(SLOT_FRESH | gen, now)
        d.slot = <int64_t>slot_stamp(now, gen)
    else:
        # this admit relies on the earlier slot, which no release may take back now
        se.slot = slot_with_last(se.slot & SLOT_GEN_MASK, now)


cdef inline void count_marketing(int64_t now, Scope *s, uint64_t recipient,
                                 ScopeEntry *se) noexcept nogil:
    # A marketing admit: now replaces the oldest of the recipient's marketing times.
    cdef int64_t *hist
    cdef int64_t oldest
    cdef int k, oldest_at = 0
    if not (se.key & KEY_MARKETING):
        mm_insert(&s.table.marketing, recipient)
        se.key |= KEY_MARKETING
    hist = history(&s.table, se)
    oldest = hist[0]
    for k in range(1, MARKETING_HISTORY):
        if hist[k] < oldest:
            oldest = hist[k]
            oldest_at = k
    hist[oldest_at] = now


cdef int decide_one(Engine eng, int64_t now, Scope *s, Number *num, uint64_t recipient,
                    uint32_t flags, int64_t limit, Decision *d) noexcept nogil:
    # The decision for one request, written to d; -1: out of memory (nothing
    # consumed).
    cdef Probe p
    cdef Decision would
    cdef uint32_t shadow
    now = scope_clamp(s, now)
    if now > num.clock:
        num.clock = now
    # A growth under way moves on with every decision, before anything is
    # looked up (no entry pointer is held yet): lookups search two sets of
    # slots only briefly, however few of the decisions insert.
    if s.table.old != NULL:
        table_move(&s.table, MOVE_STEP)
    if s.table.marketing.old != NULL:
        mm_move(&s.table.marketing, MOVE_STEP)
    if num.table.old != NULL:
        table_move(&num.table, MOVE_STEP)
    look_up(eng, now, s, num, recipient, flags, &p)
    d.retry_at = 0
    d.counted = 0
    d.used = s.ring24.total
    d.prev_counted = p.last
    d.slot = 0
    if not (flags & F_FORCE) and refused(now, s, num, flags, limit, 0, &p, d):
        shadow = flags >> SHADOW_SHIFT
        if not (shadow >> d.reason) & 1:
            return 0
        # A shadowed rule refused: the others still apply; if none refuses,
        # consume as an admit and answer what would have been answered.
        would.decision, would.reason, would.retry_at = d.decision, d.reason, d.retry_at
        if refused(now, s, num, flags, limit, shadow, &p, d):
            return 0
        d.decision, d.reason, d.retry_at = would.decision, would.reason, would.retry_at
    else:
        d.decision = ADMIT
        d.reason = OK
    d.counted = 1 if p.needs_slot else 0
    if flags & F_DRY_RUN:
        d.used = s.ring24.total + d.counted
        return 0
    if make_room(eng, now, s, num, recipient, &p) < 0:
        return -1
    if p.counting and num.warm != NULL and warmup_reserve(num.warm, recipient) < 0:
        return -1
    if p.counting:
        count_slot(now, s, &p, d)
        if num.warm != NULL:
            warmup_count(num.warm, recipient, p.warm_last, now)
    if p.marketing:
        count_marketing(now, s, recipient, p.se)
    num.tput_tat = p.tput_tat + num.tput_interval
    p.ne.pair_tat = p.pair_tat + num.pair_interval
    p.ne.pair_start = p.pair_start
    d.used = s.ring24.total
    return 0


cdef object decided(Decision *d):
    # Engine.decide's answer: d as a Decided record.
    cdef object record = tg_alloc_record(DECIDED, 7)
    record_set(record, 0, d.decision)
    record_set(record, 1, d.reason)
    record_set(record, 2, d.retry_at)
    record_set(record, 3, d.counted)
    record_set(record, 4, d.used)
    record_set(record, 5, d.prev_counted)
    record_set(record, 6, d.slot)
    return record


cdef bint release_slot(Engine eng, scope, recipient, slot, prev_counted, number) except -1:
    # What Engine.release does (its docstring says how).
    cdef Scope *s = eng._scope(scope)
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
        note_last(&s.table, prev)
    if 0 <= number < eng.n_numbers and eng.numbers[<Py_ssize_t>number].warm != NULL:
        warmup_release(eng.numbers[<Py_ssize_t>number].warm, <uint64_t>recipient, t, prev)
    return True


cdef int check_batch(Engine eng, const long long[::1] now, const int[::1] scope,
                     const int[::1] number, const unsigned long long[::1] recipient,
                     const unsigned int[::1] flags, const long long[::1] limit) except -1:
    # decide_batch's checks of the whole batch, before it decides anything:
    # ValueError / IndexError naming the first bad item.
    cdef Py_ssize_t n = now.shape[0], i, bad = -1
    for name, size in (("scope", scope.shape[0]), ("number", number.shape[0]),
                       ("recipient", recipient.shape[0]), ("flags", flags.shape[0]),
                       ("limit", limit.shape[0])):
        if size != n:
            raise ValueError(f"batch column {name} has {size} items, not {n}")
    for i in range(n):
        if not 0 <= scope[i] < eng.n_scopes or not 0 <= number[i] < eng.n_numbers:
            bad = i
            break
        if recipient[i] == 0 or recipient[i] > KEY_MASK or not -MAX_TIME <= now[i] <= MAX_TIME:
            bad = i
            break
    if bad >= 0:
        i = bad
        if not 0 <= scope[i] < eng.n_scopes:
            raise IndexError(f"batch item {i}: scope {scope[i]} out of range")
        if not 0 <= number[i] < eng.n_numbers:
            raise IndexError(f"batch item {i}: number {number[i]} out of range")
        if recipient[i] == 0 or recipient[i] > KEY_MASK:
            raise ValueError(f"batch item {i}: recipient key {recipient[i]} is not in "
                             "1 .. 2**54 - 1")
        raise ValueError(f"batch item {i}: now must be within ±2**50 ms")
    return 0


cdef int decide_rows(Engine eng, batch) except -1:
    # Engine.decide_batch: every row in order, each seeing the effects of those
    # before it; with batch.halt, none after the first not admitted.
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
    cdef Py_ssize_t n = now.shape[0], i, j
    cdef Decision d
    cdef int rc = 0
    cdef bint ahead
    cdef bint halt = batch.halt
    cdef Py_ssize_t decided = n
    check_batch(eng, now, scope, number, recipient, flags, limit)
    batch.prepare_outputs()
    decision = batch.decision
    reason = batch.reason
    counted = batch.counted
    retry_at = batch.retry_at
    used = batch.used
    prev_counted = batch.prev_counted
    slot = batch.slot
    ahead = eng.prefetching()
    for i in range(-BATCH_AHEAD, n):
        # Fetch what the item BATCH_AHEAD places on will read. An address
        # made stale by a rebuild in between only wastes a fetch.
        j = i + BATCH_AHEAD
        if ahead and j < n:
            prefetch_item(&eng.scopes[scope[j]].table, &eng.numbers[number[j]].table,
                          recipient[j])
        if i < 0:
            continue
        rc = decide_one(eng, now[i], &eng.scopes[scope[i]], &eng.numbers[number[i]],
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
        if halt and d.decision != ADMIT:
            decided = i + 1
            break
    if rc < 0:
        raise MemoryError(f"batch item {i}: out of memory growing a recipient table")
    batch.decided = decided
    return 0
