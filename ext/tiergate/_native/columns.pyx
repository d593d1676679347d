# cython: autotestdict=False
# Per-item loops of the columnar admit path (AdmitColumns), compiled: the
# policy kernels (the protobuf codec is wire.pyx).
#
# The Cython twin of src/tiergate/engine/columns.py: same functions, same
# arguments, identical results (tests/engine/test_columns.py drives both).
# The policy layer does every per-sender and per-template step once per batch
# and passes small tables indexed by the request's sender and template
# indexes; these loops then touch no Python object per item except the
# recipient strings read (none when they come from the wire reader as keys),
# the tickets and the journal record made for admits,
# and a dict lookup for marketing while a 131049 back-off is held.
# Tickets carry a SipHash-2-4 MAC computed here in C (tickets.pxi;
# src/tiergate/engine/tickets.py is the pure-Python reference); the journal
# layouts are those of src/tiergate/engine/records.py.

from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA,
    PyUnicode_1BYTE_KIND,
    PyUnicode_DecodeASCII,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
)
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from tiergate._native.constants cimport *
from tiergate._native.sip cimport Sip, load_le, sip_bytes, sip_final, sip_init, sip_word
from tiergate._native.text cimport recipient_key, utf8

from tiergate.engine.results import BadItem, Finished, KeyCheck, Prepared

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

cdef uint64_t RECIPIENT_BITS = (<uint64_t>1 << KIND_SHIFT) - 1

cdef enum:
    # Sender table states (s_state) and template table states (t_state), as
    # tiergate.engine.columns names them.
    S_UNKNOWN = 0
    S_KNOWN = 1
    S_BLOCKED = 2
    T_USABLE = 0
    T_UNKNOWN = 1
    T_DISABLED = 2
cdef carray.array I64 = carray.array("q")


include "tickets.pxi"


def check_items(Py_ssize_t n, const unsigned int[::1] sender_index, Py_ssize_t n_senders,
                const unsigned char[::1] kinds, const unsigned char[::1] categories,
                const unsigned int[::1] template_index, Py_ssize_t n_templates):
    """The first malformed item and its problem (a BadItem), or ``(-1, 0)``."""
    cdef Py_ssize_t i
    cdef unsigned char kind, cat
    cdef unsigned int t
    for i in range(n):
        if sender_index[i] >= <unsigned int>n_senders:
            return BadItem(i, BAD_SENDER_INDEX)
        kind = kinds[i]
        if kind != KIND_TEMPLATE and kind != KIND_FREE_FORM:
            return BadItem(i, BAD_KIND)
        cat = categories[i]
        if cat > CATEGORY_SERVICE:
            return BadItem(i, BAD_CATEGORY)
        t = template_index[i]
        if t > <unsigned int>n_templates:
            return BadItem(i, BAD_TEMPLATE_INDEX)
        if kind == KIND_TEMPLATE:
            if cat == 0:
                return BadItem(i, NO_CATEGORY)
            if t == 0:
                return BadItem(i, NO_TEMPLATE)
    return BadItem(-1, 0)


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


def alias_keys(unsigned long long[::1] keys, const unsigned long long[::1] table):
    """As tiergate.engine.columns.alias_keys."""
    cdef Py_ssize_t i, n = keys.shape[0], done = 0
    cdef uint64_t key, mask, j
    if table.shape[0] < 2:
        return 0
    mask = <uint64_t>(table.shape[0] // 2) - 1
    for i in range(n):
        key = keys[i]
        if key >> KEY_LENGTH_SHIFT == 0:
            j = ((key * REGION_MIX) >> 32) & mask
            while table[2 * j]:
                if table[2 * j] == key:
                    keys[i] = table[2 * j + 1]
                    done += 1
                    break
                j = (j + 1) & mask
    return done


cdef struct Early:
    # What early_answer gives: an item's answer from steps 1-3.
    int decision
    int reason
    int64_t retry_at
    int meta


cdef uint64_t DIGIT_BITS = (<uint64_t>1 << KEY_LENGTH_SHIFT) - 1
cdef uint64_t REGION_MIX = 0x9E3779B97F4A7C15
cdef uint64_t POW10[MAX_RECIPIENT_DIGITS + 1]
POW10[0] = 1
for _k in range(1, MAX_RECIPIENT_DIGITS + 1):
    POW10[_k] = POW10[_k - 1] * 10


cdef inline bint region_blocked(uint64_t rkey, uint64_t category,
                                const unsigned long long[::1] region,
                                const unsigned char[::1] lengths) noexcept nogil:
    """As tiergate.engine.columns.undeliverable."""
    cdef uint64_t nd = rkey >> KEY_LENGTH_SHIFT, digits = rkey & DIGIT_BITS, length, key, slot
    cdef uint64_t high = category << PREFIX_CATEGORY_SHIFT
    cdef uint64_t mask = <uint64_t>region.shape[0] - 1, i
    cdef Py_ssize_t k
    for k in range(lengths.shape[0]):
        length = lengths[k]
        if length <= nd:
            key = digits // POW10[nd - length] | length << KEY_LENGTH_SHIFT | high
            i = ((key * REGION_MIX) >> 32) & mask
            slot = region[i]
            while slot:
                if slot == key:
                    return True
                i = (i + 1) & mask
                slot = region[i]
    return False


def undeliverable(uint64_t rkey, uint64_t category, const unsigned long long[::1] region,
                  const unsigned char[::1] lengths):
    """As tiergate.engine.columns.undeliverable."""
    return region.shape[0] > 0 and region_blocked(rkey, category, region, lengths)


cdef inline Early early_answer(unsigned char sender_state, unsigned char template_state,
                               int64_t paused_until, int64_t now, const int *meta_error,
                               int meta_missing) noexcept nogil:
    """As tiergate.engine.columns.early_answer."""
    cdef Early e
    e.retry_at = 0
    if sender_state == S_BLOCKED:
        e.decision, e.reason, e.meta = REJECT, SENDER_BLOCKED, meta_error[SENDER_BLOCKED]
    elif template_state == T_UNKNOWN:
        e.decision, e.reason, e.meta = REJECT, TEMPLATE_DISABLED, meta_missing
    elif template_state != T_USABLE:
        e.decision, e.reason, e.meta = REJECT, TEMPLATE_DISABLED, meta_error[TEMPLATE_DISABLED]
    elif now < paused_until:
        e.decision, e.reason, e.meta = RETRY_LATER, TEMPLATE_PAUSED, meta_error[TEMPLATE_PAUSED]
        e.retry_at = paused_until
    else:
        e.decision, e.reason = REJECT, NOT_DELIVERED_TO_REGION
        e.meta = meta_error[NOT_DELIVERED_TO_REGION]
    return e


def prepare(Py_ssize_t n, const unsigned int[::1] sender_index, const unsigned char[::1] kinds,
            const unsigned char[::1] categories, const unsigned int[::1] template_index,
            const long long[::1] at, const unsigned long long[::1] rkeys, int64_t now_ms,
            bint request_clock, bint dry, uint64_t ticket_base,
            # the sender table
            const unsigned char[::1] s_state, const int[::1] s_slot, const int[::1] s_scope,
            const int[::1] s_number, const long long[::1] s_limits,
            const unsigned int[::1] s_flags, long long[::1] last_now,
            # the template table
            const unsigned char[::1] t_state, const long long[::1] t_paused,
            const int[::1] meta_error, int meta_missing,
            const unsigned long long[::1] region, const unsigned char[::1] region_lengths,
            dict eco,
            const unsigned char[::1] skip,
            # the engine rows and the answers
            batch, int[::1] rows, long long[::1] row_eco, unsigned char[::1] decisions,
            unsigned char[::1] reasons, long long[::1] retry_at, long long[::1] limits,
            int[::1] meta, long long[::1] counts):
    """Answer what steps 1–3 decide; gather the rest as engine rows.

    Returns a Prepared ``(high, unknown, rows)`` as ``tiergate.engine.columns.prepare``.
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
    cdef bint has_skip = skip.shape[0] > 0, template
    cdef bint has_region = region_lengths.shape[0] > 0 and region.shape[0] > 0
    cdef int64_t high = now_ms, now, limit, eco_end, end
    cdef Py_ssize_t unknown = 0, row = 0, i, s, slot
    cdef unsigned char st, cat
    cdef unsigned int flags, t
    cdef uint64_t rkey
    cdef Early e
    if (n > rows.shape[0] or n > b_now.shape[0] or n > decisions.shape[0]
            or (has_skip and n > skip.shape[0])):
        raise ValueError("prepare: columns shorter than the batch")
    for i in range(n):
        s = sender_index[i]
        st = s_state[s]
        if st == S_UNKNOWN:  # an unknown sender's item: its time moves nothing
            unknown += 1
            decisions[i] = REJECT
            reasons[i] = UNKNOWN_SENDER
            continue
        now = at[i] if has_at and at[i] > 0 else high
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
        flags = s_flags[5 * s + cat]
        template = kinds[i] == KIND_TEMPLATE
        t = template_index[i] if template else 0
        rkey = rkeys[i]
        if st == S_BLOCKED or (template and (
                t_state[t] != T_USABLE or now < t_paused[t]
                or (has_region and region_blocked(rkey, cat, region, region_lengths)))):
            e = early_answer(st, t_state[t], t_paused[t], now, &meta_error[0], meta_missing)
            decisions[i] = <unsigned char>e.decision
            reasons[i] = <unsigned char>e.reason
            if e.decision == RETRY_LATER:
                retry_at[i] = e.retry_at
            limits[i] = limit
            meta[i] = e.meta
            counts[s * REASON_SLOTS + e.reason] += 1
            continue
        if template:
            flags |= F_TEMPLATE
        eco_end = 0
        if has_eco and cat == CATEGORY_MARKETING:
            end = eco.get((s_scope[s], rkey), 0)
            if end > now:
                eco_end = end
                flags |= F_QUALITY_BLOCK
        b_now[row] = now
        b_scope[row] = s_scope[s]
        b_number[row] = s_number[s]
        b_recipient[row] = rkey
        # Ticket ids of rows that are not admitted are never handed out.
        b_flags[row] = flags | F_DRY_RUN if dry else flags
        b_ticket[row] = 0 if dry else ticket_base + <uint64_t>row + 1
        b_limit[row] = limit
        rows[row] = <int>i
        row_eco[row] = eco_end
        row += 1
    return Prepared(high, unknown, row)


cdef inline void put_le(char *buf, Py_ssize_t pos, uint64_t v, int width) noexcept nogil:
    cdef int k
    for k in range(width):
        buf[pos + k] = <char>(v & 0xFF)
        v >>= 8


cdef struct Refusal:
    # What refusal gives: the answer to an item the engine refused.
    int decision
    int reason
    int64_t retry_at


cdef inline Refusal refusal(int decision, int reason, int64_t retry_at, int64_t back_off_until,
                            bint quality_block, int64_t restricted_until) noexcept nogil:
    """As tiergate.engine.columns.refusal."""
    cdef Refusal f
    f.decision, f.reason, f.retry_at = decision, reason, retry_at
    if back_off_until and reason == QUALITY_PROTECTION and not quality_block:
        # Meta answered 131049 for this recipient: hold marketing until back-off ends.
        f.decision, f.reason, f.retry_at = RETRY_LATER, MARKETING_FREQUENCY, back_off_until
    elif reason == SENDER_RESTRICTED and restricted_until > 0:
        f.decision, f.retry_at = RETRY_LATER, restricted_until
    return f


cdef inline void put_row(char *rec, Py_ssize_t pos, int64_t now, int number, uint64_t rkey,
                         unsigned int flags, uint64_t tid, int64_t limit,
                         Py_ssize_t klen) noexcept nogil:
    # One journal row (records.ROW) at rec + pos.
    put_le(rec, pos, <uint64_t>now, 8)
    put_le(rec, pos + 8, <uint64_t><int64_t>number, 4)
    put_le(rec, pos + 12, rkey, 8)
    put_le(rec, pos + 20, flags, 4)
    put_le(rec, pos + 24, tid, 8)
    put_le(rec, pos + 32, <uint64_t>limit, 8)
    put_le(rec, pos + 40, <uint64_t>klen, 2)


cdef inline Py_ssize_t keyed_tail(object key, Py_ssize_t i, unsigned int t, list templates,
                                  Py_ssize_t *klen) except -1:
    """What an admit's idempotency key adds after a journal record's rows: the key,
    then what it is bound to (BINDING and the template); the key's length to klen
    (0: no key, nothing added)."""
    cdef Py_ssize_t tlen = 0
    utf8(key, klen, "keys", i)
    if klen[0] == 0:
        return 0
    if t:
        utf8(templates[t - 1], &tlen, "templates", t - 1)
    return klen[0] + BINDING_SIZE + tlen


cdef bytes journal_record(char *rec, Py_ssize_t n_admits, Py_ssize_t tail_bytes, list keys,
                          const long long *keyed_at, Py_ssize_t n_keyed,
                          const unsigned char[::1] kinds, const unsigned char[::1] categories,
                          const unsigned int[::1] template_index, list templates):
    """The journal record of finish's admits, whose rows rec holds after BATCH_HEAD_SIZE
    bytes: for one admit the admit record (tag, version, row, key), for more one
    batch record (tag, version, row count, rows, keys), as
    tiergate.engine.columns.admit_record; then each keyed row's key and binding."""
    cdef bytes record
    cdef char *out
    cdef const char *text
    cdef Py_ssize_t size, k, i, klen, tlen
    cdef unsigned int t
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
    return record


def finish(batch, const int[::1] rows, const long long[::1] row_eco,
           const unsigned int[::1] sender_index, const long long[::1] s_restricted,
           const unsigned char[::1] s_qblock, const int[::1] meta_error,
           # the answers
           unsigned char[::1] decisions, unsigned char[::1] reasons,
           unsigned char[::1] counted, long long[::1] retry_at, long long[::1] limits,
           long long[::1] used, int[::1] meta, list tickets,
           # what idempotency keys are bound to, and the journal
           list keys, const unsigned char[::1] kinds, const unsigned char[::1] categories,
           const unsigned int[::1] template_index, list templates, uint64_t k0, uint64_t k1,
           list journal, long long[::1] counts, int[::1] counted_rows):
    """Write the engine's answers for ``batch`` to the per-item columns.

    Returns a Finished ``(last_tid, n_counted)`` as ``tiergate.engine.columns.finish``.
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
    cdef int c
    cdef uint64_t tid, last_tid = 0
    cdef unsigned int flags
    cdef char buf[128]
    cdef bint journal_on = journal is not None
    cdef bint has_keys = keys is not None and len(keys) > 0
    cdef bytearray table = None
    cdef carray.array keyed = None
    cdef long long *keyed_at = NULL
    cdef Py_ssize_t klen, tail, n_admits = 0, n_keyed = 0, tail_bytes = 0
    cdef char *rec = NULL
    cdef Refusal f
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
        limits[i] = b_limit[j]
        used[i] = b_used[j]
        # a shadowed reason comes back only with an admit (consumed, see SHADOW_SHIFT)
        if b_dec[j] != ADMIT and not (b_flags[j] >> (SHADOW_SHIFT + b_rsn[j])) & 1:
            f = refusal(b_dec[j], b_rsn[j], b_retry[j], row_eco[j], s_qblock[s], s_restricted[s])
            decisions[i] = <unsigned char>f.decision
            reasons[i] = <unsigned char>f.reason
            retry_at[i] = f.retry_at
            meta[i] = meta_error[f.reason]
            counts[s * REASON_SLOTS + f.reason] += 1
            continue
        decisions[i] = ADMIT
        reasons[i] = OK
        counts[s * REASON_SLOTS + OK] += 1
        c = b_cnt[j]
        counted[i] = 1 if c == 1 else 0
        flags = b_flags[j]
        if flags & F_DRY_RUN:
            continue
        tid = last_tid = b_ticket[j]
        pos = put_ticket(buf, k0, k1, tid, <uint64_t>b_number[j], b_rkey[j],
                         <uint64_t>b_prev[j] - <uint64_t>NEVER, <uint64_t>b_slot[j])
        tickets[i] = PyUnicode_DecodeASCII(buf, pos, NULL)
        if journal_on:
            klen = 0
            if has_keys:
                tail = keyed_tail(keys[i], i, template_index[i], templates, &klen)
                if klen:
                    keyed_at[n_keyed] = i
                    n_keyed += 1
                    tail_bytes += tail
            put_row(rec, BATCH_HEAD_SIZE + n_admits * ROW_SIZE, b_now[j], b_number[j],
                    b_rkey[j], flags, tid, b_limit[j], klen)
            n_admits += 1
        if c:
            counted_rows[n_counted] = <int>j
            n_counted += 1
    if n_admits:
        journal.append(journal_record(rec, n_admits, tail_bytes, keys, keyed_at, n_keyed,
                                      kinds, categories, template_index, templates))
    return Finished(last_tid, n_counted)


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


def repeated_keys(cols, bint dry, at, int64_t now_ms):
    """A KeyCheck ``(bad, skip, hits, repeated)`` as ``tiergate.engine.columns.repeated_keys``;
    ``cols`` a ``tiergate.engine.results.KeyColumns``."""
    cdef list keys, senders, idems, templates
    cdef const unsigned int[::1] sender_index, template_index
    cdef const unsigned long long[::1] rkeys
    cdef const unsigned char[::1] kinds, categories
    cdef Py_ssize_t n, i, k, j, s
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
    keys, sender_index, senders, idems, rkeys, kinds, categories, template_index, templates = cols
    n = len(keys)
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
                    return KeyCheck(i, skip, hits, False)
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
                return KeyCheck(i, skip, hits, False)
            if idem is not None and not dry:
                repeated = True
    return KeyCheck(-1, skip, hits, repeated)


def remember_keys(cols, const int[::1] rows, const long long[::1] row_now,
                  int64_t expires_ms, object order, list tickets,
                  const unsigned char[::1] counted, const long long[::1] limit,
                  const long long[::1] used):
    """Each admitted item with a key (``tickets[i]`` set) answers its repeats from now
    on, as ``tiergate.engine.columns.remember_keys``; ``cols`` a
    ``tiergate.engine.results.KeyColumns``."""
    cdef list keys, senders, idems, templates
    cdef const unsigned int[::1] sender_index, template_index
    cdef const unsigned long long[::1] rkeys
    cdef const unsigned char[::1] kinds, categories
    cdef Py_ssize_t j, i, s
    cdef object key, ticket, idem, until
    cdef object append = order.append
    keys, sender_index, senders, idems, rkeys, kinds, categories, template_index, templates = cols
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
