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
