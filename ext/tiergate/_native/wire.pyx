# cython: autotestdict=False
# The wire codec: AdmitRequest, AdmitBatchRequest and AdmitColumnsRequest read
# straight from their protobuf bytes, and their responses written straight from
# the answers, with no protobuf message object either way. The twin is
# protobuf itself (src/tiergate/server/admit_wire.py, batch_wire.py and
# columns_wire.py use this module with the compiled engine; the tests there
# compare the two). Field numbers are named in wire_fields.pxd, generated from
# proto/tiergate/v1/admission.proto; the encoding's primitives (varints, field
# keys, packed and length-delimited fields) are protobuf.pxi.

from cpython cimport array as carray
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport Py_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from collections import namedtuple

from tiergate._native.constants cimport *
from tiergate._native.records cimport record_set, tg_alloc_record
from tiergate._native.text cimport recipient_key, utf8
from tiergate._native.wire_fields cimport *

cdef carray.array U32 = carray.array("I")
cdef carray.array I64 = carray.array("q")
cdef carray.array U64 = carray.array("Q")

include "protobuf.pxi"

#: A read AdmitColumnsRequest (or AdmitBatchRequest, as the columns it asks to decide):
#: the request's columns, named as tiergate.v1.AdmitColumnsRequest's fields. With
#: well-formed recipients only (E.164 numbers or business-scoped user IDs),
#: ``recipients`` is None, ``recipient_keys`` holds their keys
#: and ``recipient_spans`` each one's start and end offset in the request's bytes;
#: otherwise ``recipients`` is the list of strings and the other two are None.
ReadColumns = namedtuple(
    "ReadColumns",
    ["senders", "sender_index", "recipients", "kinds", "categories", "templates",
     "template_index", "idempotency_keys", "at_unix_ms", "dry_run", "recipient_keys",
     "recipient_spans"],
    module=__name__,
)

#: A well-formed AdmitRequest's fields, as AdmissionService checks them (a
#: ``tiergate.policy.service.Checked``): the recipient as its key.
AdmitFields = namedtuple(
    "AdmitFields",
    ["sender_id", "recipient_key", "kind", "category", "template_id", "idempotency_key",
     "at_unix_ms", "dry_run"],
    module=__name__,
)
cdef type ADMIT_FIELDS = AdmitFields  # what decode_admit makes, whatever the name is bound to


# -- AdmitColumns ------------------------------------------------------------
#
# AdmitColumnsRequest read into columns, AdmitColumnsResponse written from them.


def decode_request(const unsigned char[::1] data not None):
    """The columns of an AdmitColumnsRequest, a ReadColumns; None for anything this
    reader leaves to protobuf (malformed data, groups, invalid UTF-8, known fields
    with another wire type).

    When every recipient is well formed (E.164 number or BSUID), no string is made:
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
        if wire == WIRE_LEN:
            length = v
            q = p + length
            target = None
            if field == ADMIT_COLUMNS_REQUEST_RECIPIENTS:
                append_scalar(spans, <uint64_t>(p - base), True)
                append_scalar(spans, <uint64_t>(q - base), True)
                if all_keys:
                    if recipient_key(p, length, &rkey):
                        append_key(rkeys, rkey)
                    else:
                        all_keys = False
            elif field == ADMIT_COLUMNS_REQUEST_SENDERS:
                target = senders
            elif field == ADMIT_COLUMNS_REQUEST_TEMPLATES:
                target = templates
            elif field == ADMIT_COLUMNS_REQUEST_IDEMPOTENCY_KEYS:
                target = keys
            if target is not None:
                try:
                    target.append(
                        PyUnicode_DecodeUTF8(<const char *>p, <Py_ssize_t>length, NULL))
                except UnicodeDecodeError:
                    return None
            elif field == ADMIT_COLUMNS_REQUEST_KINDS:
                kinds = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
            elif field == ADMIT_COLUMNS_REQUEST_CATEGORIES:
                categories = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
            elif field == ADMIT_COLUMNS_REQUEST_SENDER_INDEX:
                if read_scalars(p, q, sender_index, False) < 0:
                    return None
            elif field == ADMIT_COLUMNS_REQUEST_TEMPLATE_INDEX:
                if read_scalars(p, q, template_index, False) < 0:
                    return None
            elif field == ADMIT_COLUMNS_REQUEST_AT_UNIX_MS:
                if read_scalars(p, q, at, True) < 0:
                    return None
            elif field == ADMIT_COLUMNS_REQUEST_DRY_RUN:
                return None
            p = q
        elif wire == WIRE_VARINT:
            if field == ADMIT_COLUMNS_REQUEST_SENDER_INDEX:
                append_scalar(sender_index, v, False)
            elif field == ADMIT_COLUMNS_REQUEST_TEMPLATE_INDEX:
                append_scalar(template_index, v, False)
            elif field == ADMIT_COLUMNS_REQUEST_AT_UNIX_MS:
                append_scalar(at, v, True)
            elif field == ADMIT_COLUMNS_REQUEST_DRY_RUN:
                dry = v != 0
            elif field <= ADMIT_COLUMNS_REQUEST_LAST_FIELD:
                return None
        elif field <= ADMIT_COLUMNS_REQUEST_LAST_FIELD:
            # fixed32 / fixed64: no known field has them
            return None
    if all_keys:
        return ReadColumns(senders, sender_index, None, kinds, categories, templates,
                           template_index, keys, at, dry, rkeys, spans)
    recipients = []
    n_rcpt = Py_SIZE(spans) // 2
    for k in range(n_rcpt):
        p = base + spans.data.as_longlongs[2 * k]
        length = <uint64_t>(spans.data.as_longlongs[2 * k + 1] - spans.data.as_longlongs[2 * k])
        try:
            recipients.append(PyUnicode_DecodeUTF8(<const char *>p, <Py_ssize_t>length, NULL))
        except UnicodeDecodeError:
            return None
    return ReadColumns(senders, sender_index, recipients, kinds, categories, templates,
                       template_index, keys, at, dry, None, None)


def encode_response(answers):
    """The AdmitColumnsResponse bytes protobuf writes for these columns (an
    AnswerColumns record)."""
    cdef const unsigned char[::1] decisions = answers[0], reasons = answers[1]
    cdef const unsigned char[::1] counted = answers[2]
    cdef const long long[::1] retry_at = answers[3], limit = answers[4], used = answers[5]
    cdef const int[::1] meta = answers[6]
    cdef list tickets = answers[7]
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
    pos = put_bytes(buf, pos, key(ADMIT_COLUMNS_RESPONSE_DECISIONS, WIRE_LEN), decisions)
    pos = put_bytes(buf, pos, key(ADMIT_COLUMNS_RESPONSE_REASONS, WIRE_LEN), reasons)
    pos = put_bytes(buf, pos, key(ADMIT_COLUMNS_RESPONSE_COUNTED, WIRE_LEN), counted)
    pos = put_packed(buf, pos, key(ADMIT_COLUMNS_RESPONSE_RETRY_AT_UNIX_MS, WIRE_LEN), s_retry,
                     retry_at)
    pos = put_packed(buf, pos, key(ADMIT_COLUMNS_RESPONSE_LIMIT, WIRE_LEN), s_limit, limit)
    pos = put_packed(buf, pos, key(ADMIT_COLUMNS_RESPONSE_USED, WIRE_LEN), s_used, used)
    if s_meta:
        buf[pos] = key(ADMIT_COLUMNS_RESPONSE_META_ERROR_CODE, WIRE_LEN)
        pos = put_varint(buf, pos + 1, <uint64_t>s_meta)
        for i in range(meta.shape[0]):
            pos = put_varint(buf, pos, <uint64_t><int64_t>meta[i])
    for i in range(n_tickets):
        text = PyUnicode_AsUTF8AndSize(tickets[i], &length)
        buf[pos] = key(ADMIT_COLUMNS_RESPONSE_TICKETS, WIRE_LEN)
        pos = put_varint(buf, pos + 1, <uint64_t>length)
        memcpy(buf + pos, text, length)
        pos += length
    if pos != size:
        raise RuntimeError(f"encode_response: wrote {pos} of {size} bytes")
    return out


# -- Admit (unary) -----------------------------------------------------------
#
# AdmitRequest read straight into the fields AdmissionService checks
# (its _well_formed), and AdmitResponse written from an answer.


cdef inline bint ascii_text(const unsigned char *p, uint64_t n) noexcept nogil:
    cdef uint64_t k
    for k in range(n):
        if p[k] >= 0x80:
            return False
    return True


cdef inline str ascii_str(const unsigned char *p, uint64_t n):
    return PyUnicode_DecodeASCII(<const char *>p, <Py_ssize_t>n, NULL) if n else ""


cdef enum:
    # Request' texts, by their place in text[] and size[]
    T_SENDER = 0
    T_RECIPIENT = 1
    T_TEMPLATE = 2
    T_KEY = 3
    N_TEXTS = 4


cdef struct Request:
    # An AdmitRequest's fields as read (texts point into the request's bytes)
    const unsigned char *text[N_TEXTS]
    uint64_t size[N_TEXTS]
    uint64_t rkey
    uint64_t kind
    uint64_t cat
    int64_t at
    bint dry


cdef inline int text_of(uint64_t field) noexcept nogil:
    """The Request text an AdmitRequest field fills, or -1."""
    if field == ADMIT_REQUEST_SENDER_ID:
        return T_SENDER
    if field == ADMIT_REQUEST_RECIPIENT:
        return T_RECIPIENT
    if field == ADMIT_REQUEST_TEMPLATE_ID:
        return T_TEMPLATE
    if field == ADMIT_REQUEST_IDEMPOTENCY_KEY:
        return T_KEY
    return -1


cdef bint read_admit(const unsigned char *p, const unsigned char *end, Py_ssize_t max_id,
                     Py_ssize_t max_template, Py_ssize_t max_key,
                     Request *f) noexcept nogil:
    """Whether p .. end is an AdmitRequest ``_well_formed`` passes, with only ASCII
    text and fields of their own wire types; its fields go to f."""
    cdef uint64_t v, field, at = 0
    cdef int wire, k
    for k in range(N_TEXTS):
        f.text[k] = NULL
        f.size[k] = 0
    f.kind = f.cat = f.rkey = 0
    f.dry = False
    while p < end:
        wire = read_field(&p, end, &field, &v)
        if wire < 0:
            return False
        if wire == WIRE_LEN:
            k = text_of(field)
            if k >= 0:
                f.text[k] = p  # the last occurrence wins, as in protobuf
                f.size[k] = v
            elif field <= ADMIT_REQUEST_LAST_FIELD:
                return False
            p += v
        elif wire == WIRE_VARINT:
            if field == ADMIT_REQUEST_KIND:
                f.kind = v
            elif field == ADMIT_REQUEST_CATEGORY:
                f.cat = v
            elif field == ADMIT_REQUEST_AT_UNIX_MS:
                at = v
            elif field == ADMIT_REQUEST_DRY_RUN:
                f.dry = v != 0
            elif field <= ADMIT_REQUEST_LAST_FIELD:
                return False
        elif field <= ADMIT_REQUEST_LAST_FIELD:
            # fixed32 / fixed64: no known field has them
            return False
    f.at = <int64_t>at
    if (f.size[T_SENDER] == 0 or f.size[T_SENDER] > <uint64_t>max_id
            or f.size[T_TEMPLATE] > <uint64_t>max_template
            or f.size[T_KEY] > <uint64_t>max_key or f.at < 0):
        return False
    if not (f.cat >= CATEGORY_MARKETING and f.cat <= CATEGORY_SERVICE
            and (f.kind == KIND_FREE_FORM or (f.kind == KIND_TEMPLATE and f.size[T_TEMPLATE] > 0))):
        return False
    if not recipient_key(f.text[T_RECIPIENT], f.size[T_RECIPIENT], &f.rkey):
        return False
    return (ascii_text(f.text[T_SENDER], f.size[T_SENDER])
            and ascii_text(f.text[T_TEMPLATE], f.size[T_TEMPLATE])
            and ascii_text(f.text[T_KEY], f.size[T_KEY]))


def decode_admit(const unsigned char[::1] data not None, Py_ssize_t max_id,
                 Py_ssize_t max_template, Py_ssize_t max_key):
    """An AdmitRequest's fields as ``_well_formed`` gives them, an AdmitFields.

    None for anything else: malformed data, a field with another wire type,
    text that is not ASCII, or a request ``_well_formed`` would not pass (the
    caller then parses it with protobuf and the policy layer names the field).
    """
    cdef const unsigned char *p = &data[0] if data.shape[0] else NULL
    cdef Request f
    cdef object record
    if not read_admit(p, p + data.shape[0], max_id, max_template, max_key, &f):
        return None
    record = tg_alloc_record(ADMIT_FIELDS, 8)
    record_set(record, 0, ascii_str(f.text[T_SENDER], f.size[T_SENDER]))
    record_set(record, 1, f.rkey)
    record_set(record, 2, <int>f.kind)
    record_set(record, 3, <int>f.cat)
    record_set(record, 4, ascii_str(f.text[T_TEMPLATE], f.size[T_TEMPLATE]))
    record_set(record, 5, ascii_str(f.text[T_KEY], f.size[T_KEY]))
    record_set(record, 6, f.at)
    record_set(record, 7, f.dry)
    return record


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


cdef inline Py_ssize_t answer_size(Answer *a) noexcept nogil:
    return (scalar_size(a.decision) + scalar_size(a.reason) + scalar_size(a.retry_at)
            + field_size(a.n_ticket) + scalar_size(a.counted) + scalar_size(a.limit)
            + scalar_size(a.used) + scalar_size(a.meta) + field_size(a.n_detail))


cdef inline Py_ssize_t put_answer(char *buf, Py_ssize_t pos, Answer *a) noexcept nogil:
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_DECISION, WIRE_VARINT), a.decision)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_REASON, WIRE_VARINT), a.reason)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_RETRY_AT_UNIX_MS, WIRE_VARINT), a.retry_at)
    pos = put_text(buf, pos, key(ADMIT_RESPONSE_TICKET, WIRE_LEN), a.ticket, a.n_ticket)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_COUNTED, WIRE_VARINT), a.counted)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_LIMIT, WIRE_VARINT), a.limit)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_USED, WIRE_VARINT), a.used)
    pos = put_scalar(buf, pos, key(ADMIT_RESPONSE_META_ERROR_CODE, WIRE_VARINT), a.meta)
    return put_text(buf, pos, key(ADMIT_RESPONSE_DETAIL, WIRE_LEN), a.detail, a.n_detail)


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


# -- AdmitBatch --------------------------------------------------------------
#
# AdmitBatchRequest read into the columns AdmitColumns decides, and
# AdmitBatchResponse written from the answer's columns, one AdmitResponse per
# item.


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
        if wire < 0 or (field == ADMIT_BATCH_REQUEST_REQUESTS and wire != WIRE_LEN):
            return -1
        if wire == WIRE_LEN:
            n += field == ADMIT_BATCH_REQUEST_REQUESTS
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
    with E.164 recipients, a ReadColumns (``recipients`` None); idempotency_keys is
    empty when no request has one.

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
    cdef const unsigned char *text
    cdef uint64_t prev_sender_size = 0, prev_template_size = 0, v = 0, field = 0, size
    cdef Py_ssize_t n = 0, i, s_at = -1, t_at = 0
    cdef int wire
    cdef bint any_key = False, dry = False
    cdef Request f
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
        if wire != WIRE_LEN:
            continue
        if field != ADMIT_BATCH_REQUEST_REQUESTS:
            p += v
            continue
        q = p + v
        if not read_admit(p, q, max_id, max_template, max_key, &f) or f.at > max_at:
            return None
        if i == 0:
            dry = f.dry
        elif f.dry != dry:
            return None
        text, size = f.text[T_SENDER], f.size[T_SENDER]
        if s_at < 0 or not same_text(text, size, prev_sender, prev_sender_size):
            s_at = name_index(&sender_names, text, size, senders, sender_ids)
            prev_sender, prev_sender_size = text, size
        sender_index.data.as_uints[i] = <unsigned int>s_at
        if f.size[T_TEMPLATE] == 0:
            template_index.data.as_uints[i] = 0
        else:
            text, size = f.text[T_TEMPLATE], f.size[T_TEMPLATE]
            if not same_text(text, size, prev_template, prev_template_size):
                t_at = name_index(&template_names, text, size, templates, template_ids)
                prev_template, prev_template_size = text, size
            template_index.data.as_uints[i] = <unsigned int>t_at
        if f.size[T_KEY]:
            keys[i] = ascii_str(f.text[T_KEY], f.size[T_KEY])
            any_key = True
        kp[i] = <char>f.kind
        cp[i] = <char>f.cat
        at.data.as_longlongs[i] = f.at
        rkeys.data.as_ulonglongs[i] = f.rkey
        spans.data.as_longlongs[2 * i] = f.text[T_RECIPIENT] - base
        spans.data.as_longlongs[2 * i + 1] = f.text[T_RECIPIENT] + f.size[T_RECIPIENT] - base
        i += 1
        p = q
    return ReadColumns(senders, sender_index, None, kinds, categories, templates,
                       template_index, keys if any_key else [], at, dry, rkeys, spans)


def encode_batch_response(answers, tuple details, object special):
    """The AdmitBatchResponse bytes protobuf writes for these answers (an
    AnswerColumns record), one AdmitResponse per item. Item i's detail is
    details[reasons[i]]; special(i) gives it instead where that entry is None, and
    for an ADMIT without a ticket (a dry run)."""
    cdef const unsigned char[::1] decisions = answers[0], reasons = answers[1]
    cdef const unsigned char[::1] counted = answers[2]
    cdef const long long[::1] retry_at = answers[3], limit = answers[4], used = answers[5]
    cdef const int[::1] meta = answers[6]
    cdef list tickets = answers[7]
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
                buf[pos] = key(ADMIT_BATCH_RESPONSE_RESPONSES, WIRE_LEN)
                pos = put_varint(buf, pos + 1, <uint64_t>sizes.data.as_longlongs[i])
                pos = put_answer(buf, pos, &a)
        if pass_ == 0:
            out = PyBytes_FromStringAndSize(NULL, size)
            buf = PyBytes_AS_STRING(out)
    if pos != size:
        raise RuntimeError(f"encode_batch_response: wrote {pos} of {size} bytes")
    return out
