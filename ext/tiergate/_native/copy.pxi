cdef int ring_copy(Ring *dst, Ring *src) noexcept nogil:
    # dst: a bitwise copy of src; give it counts of its own (none while src has
    # none). -1: out of memory.
    if src.counts == NULL:
        dst.counts = NULL
        return 0
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
    # dst: a bitwise copy of src; give it slots (the old slots of a growth
    # under way too, and marketing records, with the old slots of the map's
    # growth) of its own, from room's buffers at (at + 1 for the old slots,
    # at + 2 for the marketing records, at + 3 for their old slots) where their
    # sizes fit, no growth spare; their contents are copied by jobs, after.
    # -1: out of memory (what dst holds is freed with it).
    cdef void *slots
    cdef size_t size = src.capacity * sizeof(src.slots[0])
    dst.slots = NULL
    dst.old = NULL
    dst.spare = NULL
    dst.spare_capacity = dst.spare_touched = 0
    dst.warm_at = UINT64_MAX
    if Table is ScopeTable:
        dst.marketing.slots = NULL
        dst.marketing.old = NULL
        dst.marketing.spare = NULL  # not copied, as the tables' spares
    slots = room.take(at, size)
    if slots == NULL:
        return -1
    copy_job(jobs, slots, src.slots, size)
    if Table is ScopeTable:
        dst.slots = <ScopeEntry *>slots
    else:
        dst.slots = <NumberEntry *>slots
    if src.old != NULL:
        # a growth under way is copied as it stands and goes on in the copy
        size = src.old_capacity * sizeof(src.old[0])
        slots = room.take(at + 1, size)
        if slots == NULL:
            return -1
        copy_job(jobs, slots, src.old, size)
        if Table is ScopeTable:
            dst.old = <ScopeEntry *>slots
        else:
            dst.old = <NumberEntry *>slots
    if Table is ScopeTable:
        if src.marketing.slots != NULL:
            size = src.marketing.capacity * sizeof(MarketingEntry)
            dst.marketing.slots = <MarketingEntry *>room.take(at + 2, size)
            if dst.marketing.slots == NULL:
                return -1
            copy_job(jobs, dst.marketing.slots, src.marketing.slots, size)
        if src.marketing.old != NULL:
            size = src.marketing.old_capacity * sizeof(MarketingEntry)
            dst.marketing.old = <MarketingEntry *>room.take(at + 3, size)
            if dst.marketing.old == NULL:
                return -1
            copy_job(jobs, dst.marketing.old, src.marketing.old, size)
    return 0


cdef int scope_copy(Scope *dst, Scope *src, CopyRoom room, Py_ssize_t at,
                    CopyJobs *jobs) noexcept nogil:
    # A copy of src in dst (uninitialised); -1: out of memory (dst is then
    # left for scope_free, which frees what it holds).
    dst[0] = src[0]
    dst.ring24.counts = dst.ring7.counts = dst.slots7.counts = NULL
    dst.table.slots = NULL
    dst.table.old = NULL
    dst.table.spare = NULL
    dst.table.marketing.slots = NULL
    dst.table.marketing.old = NULL
    dst.table.marketing.spare = NULL
    if (table_copy(&dst.table, &src.table, room, at, jobs) < 0
            or ring_copy(&dst.ring24, &src.ring24) < 0
            or ring_copy(&dst.ring7, &src.ring7) < 0
            or ring_copy(&dst.slots7, &src.slots7) < 0):
        return -1
    return 0


@cython.auto_pickle(False)
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


cdef tuple engine_copy_sizes(Engine eng):
    # What Engine.copy_sizes does (its docstring says how).
    cdef Py_ssize_t i
    sizes = []
    for i in range(eng.n_scopes):
        sizes.append(eng.scopes[i].table.capacity * sizeof(ScopeEntry))
        sizes.append(eng.scopes[i].table.old_capacity * sizeof(ScopeEntry))
        sizes.append(eng.scopes[i].table.marketing.capacity * sizeof(MarketingEntry))
        sizes.append(eng.scopes[i].table.marketing.old_capacity * sizeof(MarketingEntry))
    for i in range(eng.n_numbers):
        sizes.append(eng.numbers[i].table.capacity * sizeof(NumberEntry))
        sizes.append(eng.numbers[i].table.old_capacity * sizeof(NumberEntry))
    return tuple(sizes)


cdef Engine engine_copy(Engine src, room):
    # What Engine.copy does (its docstring says how).
    cdef Engine eng = type(src).__new__(type(src))
    cdef CopyRoom held = room if room is not None else CopyRoom(())
    cdef Py_ssize_t i, n_scopes = src.n_scopes, n_numbers = src.n_numbers
    cdef int failed = 0
    cdef CopyJobs jobs
    eng.bucket_ms = src.bucket_ms
    eng.window_ms = src.window_ms
    eng.long_bucket_ms = src.long_bucket_ms
    eng.long_window_ms = src.long_window_ms
    eng.horizon_ms = src.horizon_ms
    eng.scopes = <Scope *>calloc(max64(n_scopes, 1), sizeof(Scope))
    eng.numbers = <Number *>calloc(max64(n_numbers, 1), sizeof(Number))
    if eng.scopes == NULL or eng.numbers == NULL:
        raise MemoryError()
    eng.cap_scopes = max64(n_scopes, 1)
    eng.cap_numbers = max64(n_numbers, 1)
    jobs.count = 0
    jobs.jobs = <tg_copy_job *>malloc(
        max64(4 * n_scopes + 2 * n_numbers, 1) * sizeof(tg_copy_job))
    if jobs.jobs == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n_scopes):
            # counted first: if the copy fails half way, dealloc frees what it holds
            eng.n_scopes = i + 1
            if scope_copy(&eng.scopes[i], &src.scopes[i], held, 4 * i, &jobs) < 0:
                failed = 1
                break
        if not failed:
            for i in range(n_numbers):
                eng.n_numbers = i + 1
                eng.numbers[i] = src.numbers[i]
                eng.numbers[i].warm = NULL
                if (table_copy(&eng.numbers[i].table, &src.numbers[i].table, held,
                               4 * n_scopes + 2 * i, &jobs) < 0
                        or warmup_copy(&eng.numbers[i], &src.numbers[i]) < 0):
                    failed = 1
                    break
        if not failed:
            tg_copy_all(jobs.jobs, jobs.count)
    free(jobs.jobs)
    if failed:
        raise MemoryError()
    return eng
