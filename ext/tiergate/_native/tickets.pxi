# -- SipHash-2-4 and tickets --------------------------------------------------
#
# SipHash-2-4 (Aumasson & Bernstein, sip.pxd), the keyed MAC of tickets; the
# twin is tiergate.engine.tickets.

cdef const char *HEX = b"0123456789abcdef"


def siphash24(const unsigned char[::1] key not None, const unsigned char[::1] data not None):
    """SipHash-2-4 of ``data`` under the 16-byte ``key`` (the 64-bit result as an int)."""
    if key.shape[0] != 16:
        raise ValueError(f"a ticket key is 16 bytes, got {key.shape[0]}")
    cdef const unsigned char *p = &data[0] if data.shape[0] else NULL
    return sip_bytes(load_le(&key[0], 8), load_le(&key[8], 8), p, data.shape[0])


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
