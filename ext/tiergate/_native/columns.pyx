# cython: autotestdict=False
# Per-item loops of the columnar admit path (AdmitColumns), compiled.
#
# The Cython twin of src/tiergate/engine/columns.py: same functions, same
# arguments, identical results (tests/engine/test_columns.py drives both).
# The policy layer does every per-sender and per-template step once per batch
# and passes small tables indexed by the request's sender and template
# indexes; these loops then touch no Python object per item except the
# recipient strings read (none when they come from the wire reader as keys),
# the tickets and the journal record made for admits,
# and a dict lookup for marketing while a 131049 back-off is held.
# Tickets carry a SipHash-2-4 MAC computed here in C (src/tiergate/engine/tickets.py
# is the pure-Python reference); the journal layouts are those of
# src/tiergate/engine/records.py.

from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport Py_SIZE
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA,
    PyUnicode_1BYTE_KIND,
    PyUnicode_AsUTF8AndSize,
    PyUnicode_DecodeASCII,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
)
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from tiergate._native.constants cimport *

REASONS = REASON_SLOTS
BAD_SENDER_INDEX = 1
BAD_KIND = 2
BAD_CATEGORY = 3
NO_CATEGORY = 4
BAD_TEMPLATE_INDEX = 5
NO_TEMPLATE = 6

#: The journal layout and idempotency binding as compiled in (tests compare them with
#: tiergate.engine.records): tag and version of admit and batch records, batch head,
#: row and binding sizes, kind and category shifts.
LAYOUT = (TAG_ADMIT, ADMIT_VERSION, TAG_BATCH, BATCH_VERSION, BATCH_HEAD_SIZE, ROW_SIZE,
          BINDING_SIZE, KIND_SHIFT, CATEGORY_SHIFT)

cdef const char *HEX = b"0123456789abcdef"
cdef uint64_t RECIPIENT_BITS = (<uint64_t>1 << KIND_SHIFT) - 1


# -- SipHash-2-4 and tickets --------------------------------------------------
#
# SipHash-2-4 (Aumasson & Bernstein), the keyed MAC of tickets; the twin is
# tiergate.engine.tickets.

cdef struct Sip:
    uint64_t v0
    uint64_t v1
    uint64_t v2
    uint64_t v3


cdef inline uint64_t rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void sip_round(Sip *s) noexcept nogil:
    s.v0 += s.v1
    s.v1 = rotl(s.v1, 13)
    s.v1 ^= s.v0
    s.v0 = rotl(s.v0, 32)
    s.v2 += s.v3
    s.v3 = rotl(s.v3, 16)
    s.v3 ^= s.v2
    s.v0 += s.v3
    s.v3 = rotl(s.v3, 21)
    s.v3 ^= s.v0
    s.v2 += s.v1
    s.v1 = rotl(s.v1, 17)
    s.v1 ^= s.v2
    s.v2 = rotl(s.v2, 32)


cdef inline void sip_init(Sip *s, uint64_t k0, uint64_t k1) noexcept nogil:
    s.v0 = k0 ^ 0x736f6d6570736575ULL
    s.v1 = k1 ^ 0x646f72616e646f6dULL
    s.v2 = k0 ^ 0x6c7967656e657261ULL
    s.v3 = k1 ^ 0x7465646279746573ULL


cdef inline void sip_word(Sip *s, uint64_t m) noexcept nogil:
    s.v3 ^= m
    sip_round(s)
    sip_round(s)
    s.v0 ^= m


cdef inline uint64_t sip_final(Sip *s) noexcept nogil:
    s.v2 ^= 0xff
    sip_round(s)
    sip_round(s)
    sip_round(s)
    sip_round(s)
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3


cdef inline uint64_t load_le(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t v = 0
    cdef Py_ssize_t k
    for k in range(n):
        v |= (<uint64_t>p[k]) << (8 * k)
    return v


cdef uint64_t sip_bytes(uint64_t k0, uint64_t k1, const unsigned char *p,
                        Py_ssize_t n) noexcept nogil:
    cdef Sip s
    cdef Py_ssize_t k, full = n - n % 8
    sip_init(&s, k0, k1)
    for k in range(0, full, 8):
        sip_word(&s, load_le(p + k, 8))
    sip_word(&s, load_le(p + full, n - full) | ((<uint64_t>n & 0xff) << 56))
    return sip_final(&s)


def siphash24(const unsigned char[::1] key not None, const unsigned char[::1] data not None):
    """SipHash-2-4 of ``data`` under the 16-byte ``key`` (the 64-bit result as an int)."""
    if key.shape[0] != 16:
        raise ValueError(f"a ticket key is 16 bytes, got {key.shape[0]}")
    cdef const unsigned char *p = &data[0] if data.shape[0] else NULL
    return sip_bytes(load_le(&key[0], 8), load_le(&key[8], 8), p, data.shape[0])


cdef inline Py_ssize_t put_hex16(char *buf, Py_ssize_t pos, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(15, -1, -1):
        buf[pos + k] = HEX[v & 15]
        v >>= 4
    return pos + 16


cdef Py_ssize_t put_ticket(char *buf, uint64_t k0, uint64_t k1, uint64_t tid, uint64_t number,
                           uint64_t rkey, uint64_t prev, uint64_t slot) noexcept nogil:
    """Write a ticket (at most 96 bytes) to buf; its length. ``prev`` is the previous
    counted time minus NEVER, as the ticket holds it."""
    cdef Sip s
    cdef Py_ssize_t pos
    sip_init(&s, k0, k1)
    sip_word(&s, tid)
    sip_word(&s, number)
    sip_word(&s, rkey)
    sip_word(&s, prev)
    sip_word(&s, slot)
    sip_word(&s, <uint64_t>40 << 56)  # the padding word: the message length, 40 bytes
    pos = put_hex(buf, 0, tid)
    buf[pos] = 46  # '.'
    pos = put_hex(buf, pos + 1, number)
    buf[pos] = 46
    pos = put_hex(buf, pos + 1, rkey)
    buf[pos] = 46
    pos = put_hex(buf, pos + 1, prev)
    buf[pos] = 46
    pos = put_hex(buf, pos + 1, slot)
    buf[pos] = 46
    return put_hex16(buf, pos + 1, sip_final(&s))


def encode_ticket(uint64_t k0, uint64_t k1, uint64_t tid, int number, uint64_t rkey,
                  int64_t prev, int64_t slot):
    """The ticket of an admit, as ``tiergate.engine.tickets.encode_ticket`` writes it."""
    cdef char buf[128]
    cdef Py_ssize_t n
    if number < 0 or slot < 0:
        raise ValueError("encode_ticket: number and slot are not negative")
    n = put_ticket(buf, k0, k1, tid, <uint64_t>number, rkey,
                   <uint64_t>prev - <uint64_t>NEVER, <uint64_t>slot)
    return PyUnicode_DecodeASCII(buf, n, NULL)


def check_items(Py_ssize_t n, const unsigned int[::1] sender_index, Py_ssize_t n_senders,
                const unsigned char[::1] kinds, const unsigned char[::1] categories,
                const unsigned int[::1] template_index, Py_ssize_t n_templates):
    """``(item, problem)`` of the first malformed item, or ``(-1, 0)``."""
    cdef Py_ssize_t i
    cdef unsigned char kind, cat
    cdef unsigned int t
    for i in range(n):
        if sender_index[i] >= <unsigned int>n_senders:
            return i, BAD_SENDER_INDEX
        kind = kinds[i]
        if kind != 1 and kind != 2:
            return i, BAD_KIND
        cat = categories[i]
        if cat > 4:
            return i, BAD_CATEGORY
        t = template_index[i]
        if t > <unsigned int>n_templates:
            return i, BAD_TEMPLATE_INDEX
        if kind == 1:
            if cat == 0:
                return i, NO_CATEGORY
            if t == 0:
                return i, NO_TEMPLATE
    return -1, 0


cdef inline bint recipient_key(const unsigned char *p, uint64_t length,
                               uint64_t *out) noexcept nogil:
    """The key of a recipient's text (a string's one-byte data, or its UTF-8
    bytes off the wire): E.164 digits (1 to 15, an optional leading '+');
    0 when it is none."""
    cdef uint64_t start = 1 if length > 0 and p[0] == 43 else 0  # '+'
    cdef uint64_t k, value = 0
    cdef unsigned char ch
    if length <= start or length - start > MAX_RECIPIENT_DIGITS:
        return 0
    for k in range(start, length):
        ch = p[k]
        if ch < 48 or ch > 57:
            return 0
        value = value * 10 + (ch - 48)
    out[0] = value | ((length - start) << KEY_LENGTH_SHIFT)
    return 1


def encode_recipients(list recipients, unsigned long long[::1] out):
    """Write each recipient's key to ``out``; the index of the first bad one, or -1."""
    cdef Py_ssize_t i
    cdef object rcpt
    cdef uint64_t value
    for i in range(len(recipients)):
        rcpt = recipients[i]
        if type(rcpt) is not str or PyUnicode_KIND(rcpt) != PyUnicode_1BYTE_KIND:
            return i
        if not recipient_key(PyUnicode_1BYTE_DATA(rcpt),
                             <uint64_t>PyUnicode_GET_LENGTH(rcpt), &value):
            return i
        out[i] = value
    return -1


def prepare(Py_ssize_t n,
            const unsigned int[::1] sender_index,
            const unsigned char[::1] kinds,
            const unsigned char[::1] categories,
            const unsigned int[::1] template_index,
            const long long[::1] at,
            const unsigned long long[::1] rkeys,
            int64_t now_ms,
            bint request_clock,
            bint dry,
            uint64_t ticket_base,
            const unsigned char[::1] s_state,
            const int[::1] s_slot,
            const int[::1] s_scope,
            const int[::1] s_number,
            const long long[::1] s_limits,
            const unsigned int[::1] s_flags,
            long long[::1] last_now,
            const unsigned char[::1] t_state,
            const long long[::1] t_paused,
            const int[::1] meta_error,
            int meta_missing,
            dict eco,
            const unsigned char[::1] skip,
            batch,
            int[::1] rows,
            long long[::1] row_eco,
            unsigned char[::1] decisions,
            unsigned char[::1] reasons,
            long long[::1] retry_at,
            long long[::1] limits,
            int[::1] meta,
            long long[::1] counts):
    """Answer what steps 1–3 decide; gather the rest as engine rows.

    Returns ``(high, unknown, rows)`` as ``tiergate.engine.columns.prepare``.
    """
    cdef long long[::1] b_now = batch.now
    cdef int[::1] b_scope = batch.scope
    cdef int[::1] b_number = batch.number
    cdef unsigned long long[::1] b_recipient = batch.recipient
    cdef unsigned int[::1] b_flags = batch.flags
    cdef long long[::1] b_limit = batch.limit
    cdef unsigned long long[::1] b_ticket = batch.ticket
    cdef bint has_at = request_clock and at.shape[0] > 0
    cdef bint has_eco = eco is not None and len(eco) > 0
    cdef bint has_skip = skip.shape[0] > 0
    cdef int64_t high = now_ms, now, limit, eco_end, end, t_at
    cdef Py_ssize_t unknown = 0, row = 0, i, s, slot
    cdef unsigned char st, cat, ts
    cdef unsigned int flags, t
    cdef uint64_t rkey
    if (n > rows.shape[0] or n > b_now.shape[0] or n > decisions.shape[0]
            or (has_skip and n > skip.shape[0])):
        raise ValueError("prepare: columns shorter than the batch")
    for i in range(n):
        s = sender_index[i]
        st = s_state[s]
        if st == 0:  # an unknown sender's item: its time moves nothing
            unknown += 1
            decisions[i] = REJECT
            reasons[i] = UNKNOWN_SENDER
            continue
        now = high
        if has_at:
            t_at = at[i]
            if t_at > 0:
                now = t_at
        if now > high:
            high = now
        if has_skip and skip[i]:
            continue
        slot = s_slot[s]
        if now < last_now[slot]:
            now = last_now[slot]
        else:
            last_now[slot] = now
        cat = categories[i]
        limit = s_limits[5 * s + cat]
        if st == 2:
            decisions[i] = REJECT
            reasons[i] = SENDER_BLOCKED
            limits[i] = limit
            meta[i] = meta_error[SENDER_BLOCKED]
            counts[s * REASON_SLOTS + SENDER_BLOCKED] += 1
            continue
        flags = s_flags[5 * s + cat]
        if kinds[i] == 1:
            flags |= F_TEMPLATE
            t = template_index[i]
            ts = t_state[t]
            if ts != 0 or now < t_paused[t]:
                limits[i] = limit
                if ts != 0:
                    decisions[i] = REJECT
                    reasons[i] = TEMPLATE_DISABLED
                    meta[i] = meta_missing if ts == 1 else meta_error[TEMPLATE_DISABLED]
                    counts[s * REASON_SLOTS + TEMPLATE_DISABLED] += 1
                else:
                    decisions[i] = RETRY_LATER
                    reasons[i] = TEMPLATE_PAUSED
                    retry_at[i] = t_paused[t]
                    meta[i] = meta_error[TEMPLATE_PAUSED]
                    counts[s * REASON_SLOTS + TEMPLATE_PAUSED] += 1
                continue
        rkey = rkeys[i]
        eco_end = 0
        if has_eco and cat == 1:
            end = eco.get((s_scope[s], rkey), 0)
            if end > now:
                eco_end = end
                flags |= F_QUALITY_BLOCK
        b_now[row] = now
        b_scope[row] = s_scope[s]
        b_number[row] = s_number[s]
        b_recipient[row] = rkey
        if dry:
            b_flags[row] = flags | F_DRY_RUN
            b_ticket[row] = 0
        else:
            # Ticket ids of rows that are not admitted are never handed out.
            b_flags[row] = flags
            b_ticket[row] = ticket_base + <uint64_t>row + 1
        b_limit[row] = limit
        rows[row] = <int>i
        row_eco[row] = eco_end
        row += 1
    return high, unknown, row


cdef inline Py_ssize_t put_hex(char *buf, Py_ssize_t pos, uint64_t v) noexcept nogil:
    cdef char tmp[16]
    cdef Py_ssize_t k = 0
    if v == 0:
        buf[pos] = 48
        return pos + 1
    while v:
        tmp[k] = HEX[v & 15]
        v >>= 4
        k += 1
    while k:
        k -= 1
        buf[pos] = tmp[k]
        pos += 1
    return pos


cdef inline void put_le(char *buf, Py_ssize_t pos, uint64_t v, int width) noexcept nogil:
    cdef int k
    for k in range(width):
        buf[pos + k] = <char>(v & 0xFF)
        v >>= 8


def finish(batch,
           const int[::1] rows,
           const long long[::1] row_eco,
           const unsigned int[::1] sender_index,
           const long long[::1] s_restricted,
           const unsigned char[::1] s_qblock,
           const int[::1] meta_error,
           unsigned char[::1] decisions,
           unsigned char[::1] reasons,
           unsigned char[::1] counted,
           long long[::1] retry_at,
           long long[::1] limits,
           long long[::1] used,
           int[::1] meta,
           list tickets,
           list keys,
           const unsigned char[::1] kinds,
           const unsigned char[::1] categories,
           const unsigned int[::1] template_index,
           list templates,
           uint64_t k0,
           uint64_t k1,
           list journal,
           long long[::1] counts,
           int[::1] counted_rows):
    """Write the engine's answers for ``batch`` to the per-item columns.

    Returns ``(last_tid, n_counted)`` as ``tiergate.engine.columns.finish``.
    """
    cdef const signed char[::1] b_dec = batch.decision
    cdef const signed char[::1] b_rsn = batch.reason
    cdef const long long[::1] b_retry = batch.retry_at
    cdef const signed char[::1] b_cnt = batch.counted
    cdef const long long[::1] b_used = batch.used
    cdef const long long[::1] b_prev = batch.prev_counted
    cdef const long long[::1] b_slot = batch.slot
    cdef const long long[::1] b_now = batch.now
    cdef const int[::1] b_number = batch.number
    cdef const unsigned long long[::1] b_rkey = batch.recipient
    cdef const unsigned int[::1] b_flags = batch.flags
    cdef const long long[::1] b_limit = batch.limit
    cdef const unsigned long long[::1] b_ticket = batch.ticket
    cdef Py_ssize_t nrows = rows.shape[0], j, i, s, pos, n_counted = 0, n_items
    cdef int d, r, c
    cdef uint64_t tid, last_tid = 0, rkey
    cdef int64_t limit
    cdef unsigned int flags, t
    cdef int number
    cdef char buf[128]
    cdef bint journal_on = journal is not None
    cdef bint has_keys = keys is not None and len(keys) > 0
    cdef bytes record
    cdef bytearray table = None
    cdef carray.array keyed = None
    cdef long long *keyed_at = NULL
    cdef Py_ssize_t klen, tlen, n_admits = 0, n_keyed = 0, tail_bytes = 0, size, k
    cdef const char *text
    cdef char *rec = NULL
    cdef char *out
    n_items = decisions.shape[0]
    if (b_dec.shape[0] < nrows or b_now.shape[0] < nrows or row_eco.shape[0] < nrows
            or counted_rows.shape[0] < nrows
            or (has_keys and (len(keys) < n_items or kinds.shape[0] < n_items
                              or categories.shape[0] < n_items
                              or template_index.shape[0] < n_items))):
        raise ValueError("finish: columns shorter than the batch")
    if journal_on and nrows:
        # The rows of the batch's journal record, written after its header.
        table = bytearray(BATCH_HEAD_SIZE + nrows * ROW_SIZE)
        rec = table
        if has_keys:
            keyed = carray.clone(I64, nrows, False)  # the item of each keyed row
            keyed_at = keyed.data.as_longlongs
    for j in range(nrows):
        i = rows[j]
        s = sender_index[i]
        d = b_dec[j]
        r = b_rsn[j]
        limit = b_limit[j]
        limits[i] = limit
        used[i] = b_used[j]
        if d == ADMIT:
            decisions[i] = ADMIT
            reasons[i] = OK
            c = b_cnt[j]
            counted[i] = 1 if c == 1 else 0
            flags = b_flags[j]
            if not flags & F_DRY_RUN:
                tid = b_ticket[j]
                last_tid = tid
                number = b_number[j]
                rkey = b_rkey[j]
                pos = put_ticket(buf, k0, k1, tid, <uint64_t>number, rkey,
                                 <uint64_t>b_prev[j] - <uint64_t>NEVER, <uint64_t>b_slot[j])
                tickets[i] = PyUnicode_DecodeASCII(buf, pos, NULL)
                if journal_on:
                    pos = BATCH_HEAD_SIZE + n_admits * ROW_SIZE
                    put_le(rec, pos, <uint64_t>b_now[j], 8)
                    put_le(rec, pos + 8, <uint64_t><int64_t>number, 4)
                    put_le(rec, pos + 12, rkey, 8)
                    put_le(rec, pos + 20, flags, 4)
                    put_le(rec, pos + 24, tid, 8)
                    put_le(rec, pos + 32, <uint64_t>limit, 8)
                    klen = 0
                    if has_keys:
                        utf8(keys[i], &klen, "keys", i)
                        if klen:
                            # The key, then what it is bound to (after the rows).
                            tlen = 0
                            t = template_index[i]
                            if t:
                                utf8(templates[t - 1], &tlen, "templates", t - 1)
                            keyed_at[n_keyed] = i
                            n_keyed += 1
                            tail_bytes += klen + BINDING_SIZE + tlen
                    put_le(rec, pos + 40, <uint64_t>klen, 2)
                    n_admits += 1
                if c:
                    counted_rows[n_counted] = <int>j
                    n_counted += 1
            r = OK
        elif row_eco[j] and r == QUALITY_PROTECTION and not s_qblock[s]:
            # Meta answered 131049 for this recipient: hold marketing until back-off ends.
            r = MARKETING_FREQUENCY
            decisions[i] = RETRY_LATER
            reasons[i] = r
            retry_at[i] = row_eco[j]
            meta[i] = meta_error[MARKETING_FREQUENCY]
        elif r == SENDER_RESTRICTED and s_restricted[s] > 0:
            decisions[i] = RETRY_LATER
            reasons[i] = r
            retry_at[i] = s_restricted[s]
            meta[i] = meta_error[SENDER_RESTRICTED]
        else:
            decisions[i] = <unsigned char>d
            reasons[i] = <unsigned char>r
            retry_at[i] = b_retry[j]
            meta[i] = meta_error[r]
        counts[s * REASON_SLOTS + r] += 1
    if n_admits:
        # One admit: the admit record (tag, version, row, key); more: one batch record
        # (tag, version, row count, rows, keys), as tiergate.engine.columns.finish.
        if n_admits == 1:
            size = 2 + ROW_SIZE
            record = PyBytes_FromStringAndSize(NULL, size + tail_bytes)
            out = PyBytes_AS_STRING(record)
            out[0] = TAG_ADMIT
            out[1] = ADMIT_VERSION
            memcpy(out + 2, rec + BATCH_HEAD_SIZE, ROW_SIZE)
        else:
            size = BATCH_HEAD_SIZE + n_admits * ROW_SIZE
            record = PyBytes_FromStringAndSize(NULL, size + tail_bytes)
            out = PyBytes_AS_STRING(record)
            rec[0] = TAG_BATCH
            rec[1] = BATCH_VERSION
            put_le(rec, 2, <uint64_t>n_admits, 4)
            memcpy(out, rec, size)
        for k in range(n_keyed):
            i = <Py_ssize_t>keyed_at[k]
            text = utf8(keys[i], &klen, "keys", i)
            memcpy(out + size, text, klen)
            size += klen
            out[size] = <char>kinds[i]
            out[size + 1] = <char>categories[i]
            tlen = 0
            t = template_index[i]
            if t:
                text = utf8(templates[t - 1], &tlen, "templates", t - 1)
            put_le(out, size + 2, <uint64_t>tlen, 2)
            size += BINDING_SIZE
            if tlen:
                memcpy(out + size, text, tlen)
                size += tlen
        journal.append(record)
    return last_tid, n_counted


def time_bounds(const long long[::1] at):
    """``(min(at), max(at))``; ``(0, 0)`` when ``at`` is empty."""
    cdef Py_ssize_t i, n = at.shape[0]
    cdef long long lo, hi
    if n == 0:
        return 0, 0
    lo = hi = at[0]
    for i in range(1, n):
        if at[i] < lo:
            lo = at[i]
        elif at[i] > hi:
            hi = at[i]
    return lo, hi


def tally(const unsigned char[::1] decisions, const unsigned char[::1] reasons, list counts):
    """``counts[decision * REASONS + reason] += 1`` for every item."""
    cdef Py_ssize_t n = decisions.shape[0], i, k
    cdef long long acc[256]
    cdef int idx
    if reasons.shape[0] != n:
        raise ValueError("tally: decisions and reasons differ in length")
    for k in range(256):
        acc[k] = 0
    for i in range(n):
        idx = decisions[i] * REASON_SLOTS + reasons[i]
        if idx < 256:
            acc[idx] += 1
        else:
            raise IndexError(f"tally: decision {decisions[i]} reason {reasons[i]}")
    for k in range(256):
        if acc[k]:
            counts[k] += acc[k]


cdef inline object template_of(list templates, unsigned int t):
    return templates[t - 1] if t else ""


cdef inline uint64_t bound_of(uint64_t rkey, unsigned char kind,
                              unsigned char cat) noexcept nogil:
    return rkey | (<uint64_t>kind << KIND_SHIFT) | (<uint64_t>cat << CATEGORY_SHIFT)


cdef inline tuple entry_of(object entry):
    if type(entry) is not tuple or len(<tuple>entry) != 7:
        raise TypeError("an idempotency entry is a tuple of 7")
    return <tuple>entry


cdef bint answers(tuple e, uint64_t bound, object template) except -1:
    """Whether an idempotency entry answers the request (bound, template): see
    tiergate.engine.records.bound_to."""
    cdef object tpl = e[6]
    if tpl is None:
        return <uint64_t>e[5] == (bound & RECIPIENT_BITS)
    return <uint64_t>e[5] == bound and (tpl is template or tpl == template)


def repeated_keys(list keys, const unsigned int[::1] sender_index, list senders, list idems,
                  const unsigned long long[::1] rkeys, const unsigned char[::1] kinds,
                  const unsigned char[::1] categories, const unsigned int[::1] template_index,
                  list templates, bint dry, at, int64_t now_ms):
    """``(bad, skip, hits, repeated)`` as ``tiergate.engine.columns.repeated_keys``."""
    cdef Py_ssize_t n = len(keys), i, k, j, s
    cdef const long long[::1] times
    cdef bint has_at = at is not None and len(at) > 0, repeated = False
    cdef set seen = set()
    cdef dict inside = None
    cdef object key, idem, found, pair, earlier
    cdef tuple first
    cdef int64_t now, high = now_ms
    cdef uint64_t bound
    cdef bytearray skip
    cdef unsigned char *sp
    cdef list hits = []
    if (rkeys.shape[0] < n or kinds.shape[0] < n or categories.shape[0] < n
            or template_index.shape[0] < n or sender_index.shape[0] < n):
        raise ValueError("repeated_keys: columns shorter than the keys")
    if has_at:
        times = at
    skip = bytearray(n)
    sp = skip
    for i in range(n):
        s = sender_index[i]
        idem = idems[s]
        now = high
        if idem is not None:
            now = times[i] if has_at and times[i] > 0 else high
            if now > high:
                high = now
        key = keys[i]
        if not key:
            continue
        bound = bound_of(rkeys[i], kinds[i], categories[i])
        if idem is not None:
            found = (<dict>idem).get(key)
            first = entry_of(found) if found is not None else None
            if first is not None and <int64_t>first[4] > now:
                if not answers(first, bound, template_of(templates, template_index[i])):
                    return i, skip, hits, False
                sp[i] = 1
                hits.append((i, first))
        # Keys alone first: a repeated key (rare) brings in the exact check by
        # (sender id, key), a sender being listed twice in a request.
        if inside is None:
            if key not in seen:
                seen.add(key)
                continue
            inside = {}
            for k in range(i):
                if keys[k]:
                    inside.setdefault((senders[sender_index[k]], keys[k]), k)
        pair = (senders[s], key)
        earlier = inside.setdefault(pair, i)
        if earlier is not None and <Py_ssize_t>earlier != i:
            j = <Py_ssize_t>earlier
            if (bound_of(rkeys[j], kinds[j], categories[j]) != bound
                    or template_of(templates, template_index[j])
                    != template_of(templates, template_index[i])):
                return i, skip, hits, False
            if idem is not None and not dry:
                repeated = True
    return -1, skip, hits, repeated


def remember_keys(const int[::1] rows, list keys, const unsigned int[::1] sender_index,
                  list senders, list idems, const unsigned long long[::1] rkeys,
                  const unsigned char[::1] kinds, const unsigned char[::1] categories,
                  const unsigned int[::1] template_index, list templates,
                  const long long[::1] row_now, int64_t expires_ms, object order,
                  list tickets, const unsigned char[::1] counted,
                  const long long[::1] limit, const long long[::1] used):
    """Each admitted item with a key (``tickets[i]`` set) answers its repeats from now
    on, as ``tiergate.engine.columns.remember_keys``."""
    cdef Py_ssize_t j, i, s
    cdef object key, ticket, idem, until
    cdef object append = order.append
    for j in range(rows.shape[0]):
        i = rows[j]
        key = keys[i]
        ticket = tickets[i]
        if key and ticket:
            s = sender_index[i]
            idem = idems[s]
            if type(idem) is not dict:
                raise TypeError(f"remember_keys: item {i} has no key table")
            until = row_now[j] + expires_ms
            (<dict>idem)[key] = (ticket, counted[i] == 1, limit[i], used[i], until,
                                 bound_of(rkeys[i], kinds[i], categories[i]),
                                 template_of(templates, template_index[i]))
            append((until, senders[s], key))


# -- AdmitColumns wire codec --------------------------------------------------
#
# The protobuf encoding of AdmitColumnsRequest / AdmitColumnsResponse
# (proto/tiergate/v1/admission.proto), read and written straight from and to
# the columns. The twin is protobuf itself (src/tiergate/server/columns_wire.py).

cdef carray.array U32 = carray.array("I")
cdef carray.array I64 = carray.array("q")
cdef carray.array U64 = carray.array("Q")


cdef inline int read_varint(const unsigned char **pp, const unsigned char *end,
                            uint64_t *out) noexcept nogil:
    """0 on success, -1 on a truncated or over-long varint."""
    cdef const unsigned char *p = pp[0]
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef unsigned char b
    while p < end and shift < 64:
        b = p[0]
        p += 1
        v |= <uint64_t>(b & 0x7F) << shift
        if b < 0x80:
            pp[0] = p
            out[0] = v
            return 0
        shift += 7
    return -1


cdef int read_scalars(const unsigned char *p, const unsigned char *end, carray.array col,
                      bint wide) except -2:
    """Append the varints of a packed run to ``col`` ('I' or, when ``wide``, 'q')."""
    cdef Py_ssize_t count = 0, k, old = Py_SIZE(col)
    cdef const unsigned char *r = p
    cdef uint64_t v
    while r < end:
        if r[0] < 0x80:
            count += 1
        r += 1
    if count == 0:
        return 0 if p == end else -1
    carray.resize_smart(col, old + count)
    for k in range(count):
        if read_varint(&p, end, &v) < 0:
            return -1
        if wide:
            col.data.as_longlongs[old + k] = <long long>v
        else:
            col.data.as_uints[old + k] = <unsigned int>v
    return 0 if p == end else -1


cdef inline int read_field(const unsigned char **pp, const unsigned char *end,
                           uint64_t *field, uint64_t *value) noexcept nogil:
    """Read one field's key, then its varint (wire type 0) or its length (2: the
    bytes follow, within end); skip the payload of wire types 1 and 5. The wire
    type, or -1 for malformed data, field 0 and groups."""
    cdef uint64_t key
    cdef int wire
    if read_varint(pp, end, &key) < 0:
        return -1
    field[0] = key >> 3
    wire = <int>(key & 7)
    if field[0] == 0:
        return -1
    if wire == 0 or wire == 2:
        if read_varint(pp, end, value) < 0:
            return -1
        if wire == 2 and value[0] > <uint64_t>(end - pp[0]):
            return -1
        return wire
    if wire == 1 or wire == 5:
        if end - pp[0] < (8 if wire == 1 else 4):
            return -1
        pp[0] += 8 if wire == 1 else 4
        return wire
    return -1


cdef int append_key(carray.array col, uint64_t v) except -1:
    cdef Py_ssize_t old = Py_SIZE(col)
    carray.resize_smart(col, old + 1)
    col.data.as_ulonglongs[old] = v
    return 0


cdef int append_scalar(carray.array col, uint64_t v, bint wide) except -1:
    cdef Py_ssize_t old = Py_SIZE(col)
    carray.resize_smart(col, old + 1)
    if wide:
        col.data.as_longlongs[old] = <long long>v
    else:
        col.data.as_uints[old] = <unsigned int>v
    return 0


def decode_request(const unsigned char[::1] data not None):
    """The columns of an AdmitColumnsRequest: (senders, sender_index, recipients, kinds,
    categories, templates, template_index, idempotency_keys, at_unix_ms, dry_run,
    recipient_keys, recipient_spans); None for anything this reader leaves to
    protobuf (malformed data, groups, invalid UTF-8, known fields with another
    wire type).

    When every recipient is an E.164 number, no string is made for them:
    ``recipients`` is None, ``recipient_keys`` holds their keys (as
    encode_recipients makes them) and ``recipient_spans`` each one's start and
    end offset in ``data``. Otherwise ``recipients`` is the list of strings and
    the other two are None."""
    cdef const unsigned char *base = &data[0] if data.shape[0] else NULL
    cdef const unsigned char *p = base
    cdef const unsigned char *end = p + data.shape[0]
    cdef const unsigned char *q
    cdef uint64_t length, v, rkey
    cdef uint64_t field
    cdef int wire
    cdef Py_ssize_t k, n_rcpt
    cdef list senders = [], recipients = None, templates = [], keys = []
    cdef carray.array sender_index = carray.clone(U32, 0, False)
    cdef carray.array template_index = carray.clone(U32, 0, False)
    cdef carray.array at = carray.clone(I64, 0, False)
    cdef carray.array rkeys = carray.clone(U64, 0, False)
    cdef carray.array spans = carray.clone(I64, 0, False)
    cdef bint all_keys = True
    cdef bytes kinds = b"", categories = b""
    cdef bint dry = False
    cdef list target
    while p < end:
        wire = read_field(&p, end, &field, &v)
        if wire < 0:
            return None
        if wire == 2:
            length = v
            q = p + length
            target = None
            if field == 3:
                append_scalar(spans, <uint64_t>(p - base), True)
                append_scalar(spans, <uint64_t>(q - base), True)
                if all_keys:
                    if recipient_key(p, length, &rkey):
                        append_key(rkeys, rkey)
                    else:
                        all_keys = False
            elif field == 1:
                target = senders
            elif field == 6:
                target = templates
            elif field == 8:
                target = keys
            if target is not None:
                try:
                    target.append(
                        PyUnicode_DecodeUTF8(<const char *>p, <Py_ssize_t>length, NULL))
                except UnicodeDecodeError:
                    return None
            elif field == 4:
                kinds = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
            elif field == 5:
                categories = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
            elif field == 2:
                if read_scalars(p, q, sender_index, False) < 0:
                    return None
            elif field == 7:
                if read_scalars(p, q, template_index, False) < 0:
                    return None
            elif field == 9:
                if read_scalars(p, q, at, True) < 0:
                    return None
            elif field == 10:
                return None
            p = q
        elif wire == 0:
            if field == 2:
                append_scalar(sender_index, v, False)
            elif field == 7:
                append_scalar(template_index, v, False)
            elif field == 9:
                append_scalar(at, v, True)
            elif field == 10:
                dry = v != 0
            elif field <= 8:
                return None
        elif field <= 10:  # fixed32 / fixed64 (skipped): no known field has them
            return None
    if all_keys:
        return (senders, sender_index, None, kinds, categories, templates, template_index,
                keys, at, dry, rkeys, spans)
    recipients = []
    n_rcpt = Py_SIZE(spans) // 2
    for k in range(n_rcpt):
        p = base + spans.data.as_longlongs[2 * k]
        length = <uint64_t>(spans.data.as_longlongs[2 * k + 1] - spans.data.as_longlongs[2 * k])
        try:
            recipients.append(PyUnicode_DecodeUTF8(<const char *>p, <Py_ssize_t>length, NULL))
        except UnicodeDecodeError:
            return None
    return (senders, sender_index, recipients, kinds, categories, templates, template_index,
            keys, at, dry, None, None)


cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline Py_ssize_t put_varint(char *buf, Py_ssize_t pos, uint64_t v) noexcept nogil:
    while v >= 0x80:
        buf[pos] = <char>((v & 0x7F) | 0x80)
        v >>= 7
        pos += 1
    buf[pos] = <char>v
    return pos + 1


cdef inline Py_ssize_t packed_size(const long long[::1] col) noexcept nogil:
    cdef Py_ssize_t i, size = 0
    for i in range(col.shape[0]):
        size += varint_size(<uint64_t>col[i])
    return size


cdef inline Py_ssize_t field_size(Py_ssize_t length) noexcept nogil:
    return 1 + varint_size(<uint64_t>length) + length if length else 0


cdef inline Py_ssize_t put_text(char *buf, Py_ssize_t pos, char tag, const char *text,
                                Py_ssize_t n) noexcept nogil:
    if n:
        buf[pos] = tag
        pos = put_varint(buf, pos + 1, <uint64_t>n)
        memcpy(buf + pos, text, n)
        pos += n
    return pos


cdef inline Py_ssize_t put_bytes(char *buf, Py_ssize_t pos, char tag,
                                 const unsigned char[::1] col) noexcept nogil:
    if col.shape[0] == 0:
        return pos
    return put_text(buf, pos, tag, <const char *>&col[0], col.shape[0])


cdef inline Py_ssize_t put_packed(char *buf, Py_ssize_t pos, char tag, Py_ssize_t length,
                                  const long long[::1] col) noexcept nogil:
    cdef Py_ssize_t i
    if length:
        buf[pos] = tag
        pos = put_varint(buf, pos + 1, <uint64_t>length)
        for i in range(col.shape[0]):
            pos = put_varint(buf, pos, <uint64_t>col[i])
    return pos


def encode_response(const unsigned char[::1] decisions, const unsigned char[::1] reasons,
                    const unsigned char[::1] counted, const long long[::1] retry_at,
                    const long long[::1] limit, const long long[::1] used,
                    const int[::1] meta, list tickets):
    """The AdmitColumnsResponse bytes protobuf writes for these columns."""
    cdef Py_ssize_t n_tickets = len(tickets), i, pos = 0, size = 0, length
    cdef Py_ssize_t s_retry = packed_size(retry_at), s_limit = packed_size(limit)
    cdef Py_ssize_t s_used = packed_size(used), s_meta = 0
    cdef const char *text
    cdef object t
    cdef bytes out
    cdef char *buf
    for i in range(meta.shape[0]):
        # a negative int32 is written sign-extended to 64 bits, as protobuf does
        s_meta += varint_size(<uint64_t><int64_t>meta[i])
    size = (field_size(decisions.shape[0]) + field_size(reasons.shape[0])
            + field_size(counted.shape[0]) + field_size(s_retry) + field_size(s_limit)
            + field_size(s_used) + field_size(s_meta))
    for i in range(n_tickets):
        t = tickets[i]
        if type(t) is not str:
            raise TypeError(f"tickets[{i}] is not a string")
        PyUnicode_AsUTF8AndSize(t, &length)
        size += 1 + varint_size(<uint64_t>length) + length
    out = PyBytes_FromStringAndSize(NULL, size)
    buf = PyBytes_AS_STRING(out)
    pos = put_bytes(buf, pos, 0x0A, decisions)
    pos = put_bytes(buf, pos, 0x12, reasons)
    pos = put_bytes(buf, pos, 0x1A, counted)
    pos = put_packed(buf, pos, 0x22, s_retry, retry_at)
    pos = put_packed(buf, pos, 0x2A, s_limit, limit)
    pos = put_packed(buf, pos, 0x32, s_used, used)
    if s_meta:
        buf[pos] = 0x3A
        pos = put_varint(buf, pos + 1, <uint64_t>s_meta)
        for i in range(meta.shape[0]):
            pos = put_varint(buf, pos, <uint64_t><int64_t>meta[i])
    for i in range(n_tickets):
        text = PyUnicode_AsUTF8AndSize(tickets[i], &length)
        buf[pos] = 0x42
        pos = put_varint(buf, pos + 1, <uint64_t>length)
        memcpy(buf + pos, text, length)
        pos += length
    if pos != size:
        raise RuntimeError(f"encode_response: wrote {pos} of {size} bytes")
    return out


# -- Admit (unary) on the wire -----------------------------------------------
# AdmitRequest read straight into the fields AdmissionService checks
# (policy.service._well_formed), and AdmitResponse written from an answer,
# with no protobuf message object either way. The twin is protobuf itself
# (src/tiergate/server/admit_wire.py).

cdef inline bint ascii_text(const unsigned char *p, uint64_t n) noexcept nogil:
    cdef uint64_t k
    for k in range(n):
        if p[k] >= 0x80:
            return False
    return True


cdef struct AdmitFields:
    const unsigned char *text[4]  # sender_id, recipient, template_id, idempotency_key
    uint64_t size[4]
    uint64_t rkey
    uint64_t kind
    uint64_t cat
    int64_t at
    bint dry


cdef bint read_admit(const unsigned char *p, const unsigned char *end, Py_ssize_t max_id,
                     Py_ssize_t max_template, Py_ssize_t max_key,
                     AdmitFields *f) noexcept nogil:
    """Whether p .. end is an AdmitRequest ``_well_formed`` passes, with only ASCII
    text and fields of their own wire types; its fields go to f."""
    cdef uint64_t v, field, at = 0
    cdef int wire, k
    for k in range(4):
        f.text[k] = NULL
        f.size[k] = 0
    f.kind = f.cat = f.rkey = 0
    f.dry = False
    while p < end:
        wire = read_field(&p, end, &field, &v)
        if wire < 0:
            return False
        if wire == 2:
            if field == 1 or field == 2 or field == 5 or field == 6:
                k = 0 if field == 1 else 1 if field == 2 else 2 if field == 5 else 3
                f.text[k] = p  # the last occurrence wins, as in protobuf
                f.size[k] = v
            elif field <= 8:
                return False
            p += v
        elif wire == 0:
            if field == 3:
                f.kind = v
            elif field == 4:
                f.cat = v
            elif field == 7:
                at = v
            elif field == 8:
                f.dry = v != 0
            elif field <= 8:
                return False
        elif field <= 8:  # fixed32 / fixed64 (skipped): no known field has them
            return False
    f.at = <int64_t>at
    if (f.size[0] == 0 or f.size[0] > <uint64_t>max_id or f.size[2] > <uint64_t>max_template
            or f.size[3] > <uint64_t>max_key or f.at < 0):
        return False
    if not (f.cat >= 1 and f.cat <= 4 and (f.kind == 2 or (f.kind == 1 and f.size[2] > 0))):
        return False
    if not recipient_key(f.text[1], f.size[1], &f.rkey):
        return False
    return (ascii_text(f.text[0], f.size[0]) and ascii_text(f.text[2], f.size[2])
            and ascii_text(f.text[3], f.size[3]))


cdef inline str ascii_str(const unsigned char *p, uint64_t n):
    return PyUnicode_DecodeASCII(<const char *>p, <Py_ssize_t>n, NULL) if n else ""


def decode_admit(const unsigned char[::1] data not None, Py_ssize_t max_id,
                 Py_ssize_t max_template, Py_ssize_t max_key):
    """An AdmitRequest's fields as ``_well_formed`` gives them: (sender_id, recipient
    key, kind, category, template_id, idempotency_key, at_unix_ms, dry_run).

    None for anything else: malformed data, a field with another wire type,
    text that is not ASCII, or a request ``_well_formed`` would not pass (the
    caller then parses it with protobuf and the policy layer names the field).
    """
    cdef const unsigned char *p = &data[0] if data.shape[0] else NULL
    cdef AdmitFields f
    if not read_admit(p, p + data.shape[0], max_id, max_template, max_key, &f):
        return None
    return (
        ascii_str(f.text[0], f.size[0]),
        f.rkey,
        <int>f.kind,
        <int>f.cat,
        ascii_str(f.text[2], f.size[2]),
        ascii_str(f.text[3], f.size[3]),
        f.at,
        f.dry,
    )


cdef inline bint same_text(const unsigned char *a, uint64_t na, const unsigned char *b,
                           uint64_t nb) noexcept nogil:
    return na == nb and (na == 0 or memcmp(a, b, na) == 0)


cdef enum:
    NAME_SLOTS = 128  # a power of two
    NAMES_CACHED = 64  # at most half full


cdef struct NameSlot:
    const unsigned char *p
    uint64_t n
    Py_ssize_t index  # -1: empty


cdef struct Names:
    # The distinct names (sender or template ids) of one request read so far, by
    # their bytes: no string is made and no dict asked for a name seen before.
    NameSlot slots[NAME_SLOTS]
    Py_ssize_t cached
    Py_ssize_t first  # the index of the first name (templates count from 1)


cdef void names_init(Names *t, Py_ssize_t first) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(NAME_SLOTS):
        t.slots[k].index = -1
    t.cached = 0
    t.first = first


cdef Py_ssize_t name_index(Names *t, const unsigned char *p, uint64_t n, list names,
                           dict index) except -1:
    """The index of text p .. p + n in names (t.first for the first name), added when new."""
    cdef uint64_t h = 14695981039346656037ULL, k  # FNV-1a
    cdef str name
    cdef object known
    cdef Py_ssize_t at
    for k in range(n):
        h = (h ^ p[k]) * 1099511628211ULL
    k = h & (NAME_SLOTS - 1)
    while t.slots[k].index >= 0:
        if same_text(t.slots[k].p, t.slots[k].n, p, n):
            return t.slots[k].index
        k = (k + 1) & (NAME_SLOTS - 1)
    name = ascii_str(p, n)
    known = index.get(name)
    if known is not None:
        at = <Py_ssize_t>known
    else:
        names.append(name)
        at = len(names) - 1 + t.first
        index[name] = at
    if t.cached < NAMES_CACHED:  # past that, names go by the dict
        t.slots[k].p = p
        t.slots[k].n = n
        t.slots[k].index = at
        t.cached += 1
    return at


cdef Py_ssize_t count_in(const unsigned char *p, const unsigned char *end) noexcept nogil:
    """How many requests (field 1, length-delimited) an AdmitBatchRequest holds; -1 for
    data this reader leaves to protobuf."""
    cdef uint64_t v = 0, field = 0
    cdef Py_ssize_t n = 0
    cdef int wire
    while p < end:
        wire = read_field(&p, end, &field, &v)
        if wire < 0 or (field == 1 and wire != 2):
            return -1
        if wire == 2:
            n += field == 1
            p += v
    return n


def count_requests(const unsigned char[::1] data not None):
    """How many requests the AdmitBatchRequest ``data`` holds, read without decoding
    them; -1 for data this reader leaves to protobuf."""
    cdef const unsigned char *p = &data[0] if data.shape[0] else NULL
    return count_in(p, p + data.shape[0])


def decode_batch(const unsigned char[::1] data not None, Py_ssize_t max_id,
                 Py_ssize_t max_template, Py_ssize_t max_key, int64_t max_at):
    """An AdmitBatchRequest as the columns decode_request reads off an AdmitColumnsRequest
    with E.164 recipients: (senders, sender_index, None, kinds, categories, templates,
    template_index, idempotency_keys, at_unix_ms, dry_run, recipient_keys,
    recipient_spans); idempotency_keys is empty when no request has one.

    None when any request is one decode_admit does not read or has an at_unix_ms
    after max_at, when the requests' dry_run differ (a batch of columns has one),
    for malformed data and for an empty batch: the caller then takes the
    protobuf message's way, which names a bad field."""
    cdef const unsigned char *base = &data[0] if data.shape[0] else NULL
    cdef const unsigned char *p = base
    cdef const unsigned char *end = p + data.shape[0]
    cdef const unsigned char *q
    cdef const unsigned char *prev_sender = NULL
    cdef const unsigned char *prev_template = NULL
    cdef uint64_t prev_sender_size = 0, prev_template_size = 0, v = 0, field = 0
    cdef Py_ssize_t n = 0, i, s_at = -1, t_at = 0
    cdef int wire
    cdef bint any_key = False, dry = False
    cdef AdmitFields f
    cdef list senders = [], templates = [], keys
    cdef dict sender_ids = {}, template_ids = {}
    cdef Names sender_names, template_names
    cdef carray.array sender_index, template_index, at, rkeys, spans
    cdef bytes kinds, categories
    cdef char *kp
    cdef char *cp
    n = count_in(p, end)  # first: every column is allocated once
    if n <= 0:
        return None
    sender_index = carray.clone(U32, n, False)
    template_index = carray.clone(U32, n, False)
    at = carray.clone(I64, n, False)
    rkeys = carray.clone(U64, n, False)
    spans = carray.clone(I64, 2 * n, False)
    kinds = PyBytes_FromStringAndSize(NULL, n)
    categories = PyBytes_FromStringAndSize(NULL, n)
    kp = PyBytes_AS_STRING(kinds)
    cp = PyBytes_AS_STRING(categories)
    keys = [""] * n
    names_init(&sender_names, 0)
    names_init(&template_names, 1)
    p = base
    i = 0
    while p < end:
        wire = read_field(&p, end, &field, &v)  # read once above: well-formed
        if wire < 0:
            return None
        if wire != 2:
            continue
        if field != 1:
            p += v
            continue
        q = p + v
        if not read_admit(p, q, max_id, max_template, max_key, &f) or f.at > max_at:
            return None
        if i == 0:
            dry = f.dry
        elif f.dry != dry:
            return None
        if s_at < 0 or not same_text(f.text[0], f.size[0], prev_sender, prev_sender_size):
            s_at = name_index(&sender_names, f.text[0], f.size[0], senders, sender_ids)
            prev_sender, prev_sender_size = f.text[0], f.size[0]
        sender_index.data.as_uints[i] = <unsigned int>s_at
        if f.size[2] == 0:
            template_index.data.as_uints[i] = 0
        else:
            if not same_text(f.text[2], f.size[2], prev_template, prev_template_size):
                t_at = name_index(&template_names, f.text[2], f.size[2], templates,
                                  template_ids)
                prev_template, prev_template_size = f.text[2], f.size[2]
            template_index.data.as_uints[i] = <unsigned int>t_at
        if f.size[3]:
            keys[i] = ascii_str(f.text[3], f.size[3])
            any_key = True
        kp[i] = <char>f.kind
        cp[i] = <char>f.cat
        at.data.as_longlongs[i] = f.at
        rkeys.data.as_ulonglongs[i] = f.rkey
        spans.data.as_longlongs[2 * i] = f.text[1] - base
        spans.data.as_longlongs[2 * i + 1] = f.text[1] + f.size[1] - base
        i += 1
        p = q
    return (senders, sender_index, None, kinds, categories, templates, template_index,
            keys if any_key else [], at, dry, rkeys, spans)


cdef inline Py_ssize_t put_scalar(char *buf, Py_ssize_t pos, char tag,
                                  uint64_t v) noexcept nogil:
    if v:
        buf[pos] = tag
        pos = put_varint(buf, pos + 1, v)
    return pos


cdef struct Answer:
    # One AdmitResponse's fields as written (int32 and enum values sign-extended to
    # 64 bits, as protobuf writes them).
    uint64_t decision
    uint64_t reason
    uint64_t retry_at
    const char *ticket
    Py_ssize_t n_ticket
    uint64_t counted
    uint64_t limit
    uint64_t used
    uint64_t meta
    const char *detail
    Py_ssize_t n_detail


cdef inline Py_ssize_t scalar_size(uint64_t v) noexcept nogil:
    return 1 + varint_size(v) if v else 0


cdef inline Py_ssize_t answer_size(Answer *a) noexcept nogil:
    return (scalar_size(a.decision) + scalar_size(a.reason) + scalar_size(a.retry_at)
            + field_size(a.n_ticket) + scalar_size(a.counted) + scalar_size(a.limit)
            + scalar_size(a.used) + scalar_size(a.meta) + field_size(a.n_detail))


cdef inline Py_ssize_t put_answer(char *buf, Py_ssize_t pos, Answer *a) noexcept nogil:
    pos = put_scalar(buf, pos, 0x08, a.decision)
    pos = put_scalar(buf, pos, 0x10, a.reason)
    pos = put_scalar(buf, pos, 0x18, a.retry_at)
    pos = put_text(buf, pos, 0x22, a.ticket, a.n_ticket)
    pos = put_scalar(buf, pos, 0x28, a.counted)
    pos = put_scalar(buf, pos, 0x30, a.limit)
    pos = put_scalar(buf, pos, 0x38, a.used)
    pos = put_scalar(buf, pos, 0x40, a.meta)
    return put_text(buf, pos, 0x4A, a.detail, a.n_detail)


cdef const char *utf8(object text, Py_ssize_t *n, str what, Py_ssize_t i) except NULL:
    if type(text) is not str:
        raise TypeError(f"{what}[{i}] is not a string")
    return PyUnicode_AsUTF8AndSize(text, n)


def encode_admit(int decision, int reason, long long retry_at, str ticket, bint counted,
                 long long limit, long long used, int meta, str detail):
    """The AdmitResponse bytes protobuf writes for these fields."""
    cdef Answer a
    cdef bytes out
    a.decision = <uint64_t><int64_t>decision
    a.reason = <uint64_t><int64_t>reason
    a.retry_at = <uint64_t>retry_at
    a.ticket = utf8(ticket, &a.n_ticket, "ticket", 0)
    a.counted = 1 if counted else 0
    a.limit = <uint64_t>limit
    a.used = <uint64_t>used
    a.meta = <uint64_t><int64_t>meta
    a.detail = utf8(detail, &a.n_detail, "detail", 0)
    out = PyBytes_FromStringAndSize(NULL, answer_size(&a))
    put_answer(PyBytes_AS_STRING(out), 0, &a)
    return out


def encode_batch_response(const unsigned char[::1] decisions, const unsigned char[::1] reasons,
                          const unsigned char[::1] counted, const long long[::1] retry_at,
                          const long long[::1] limit, const long long[::1] used,
                          const int[::1] meta, list tickets, tuple details, object special):
    """The AdmitBatchResponse bytes protobuf writes for these answers, one AdmitResponse
    per item. Item i's detail is details[reasons[i]]; special(i) gives it instead where
    that entry is None, and for an ADMIT without a ticket (a dry run)."""
    cdef Py_ssize_t n = decisions.shape[0], i, pos = 0, size = 0, body, n_details = len(details)
    cdef int pass_
    cdef Answer a
    cdef object d
    cdef list chosen
    cdef carray.array sizes
    cdef bytes out
    cdef char *buf
    if (reasons.shape[0] != n or counted.shape[0] != n or retry_at.shape[0] != n
            or limit.shape[0] != n or used.shape[0] != n or meta.shape[0] != n
            or len(tickets) != n):
        raise ValueError(f"encode_batch_response: the columns do not all have {n} items")
    chosen = [None] * n
    sizes = carray.clone(I64, n, False)
    for pass_ in range(2):
        for i in range(n):
            a.decision = decisions[i]
            a.reason = reasons[i]
            a.retry_at = <uint64_t>retry_at[i]
            a.ticket = utf8(tickets[i], &a.n_ticket, "tickets", i)
            a.counted = counted[i]
            a.limit = <uint64_t>limit[i]
            a.used = <uint64_t>used[i]
            a.meta = <uint64_t><int64_t>meta[i]
            if pass_ == 0:
                d = details[a.reason] if a.reason < <uint64_t>n_details else None
                if d is None or (a.decision == ADMIT and a.n_ticket == 0):
                    d = special(i)
                chosen[i] = d
            a.detail = utf8(chosen[i], &a.n_detail, "details", i)
            if pass_ == 0:
                body = answer_size(&a)
                sizes.data.as_longlongs[i] = body
                size += 1 + varint_size(<uint64_t>body) + body
            else:
                buf[pos] = 0x0A
                pos = put_varint(buf, pos + 1, <uint64_t>sizes.data.as_longlongs[i])
                pos = put_answer(buf, pos, &a)
        if pass_ == 0:
            out = PyBytes_FromStringAndSize(NULL, size)
            buf = PyBytes_AS_STRING(out)
    if pos != size:
        raise RuntimeError(f"encode_batch_response: wrote {pos} of {size} bytes")
    return out
