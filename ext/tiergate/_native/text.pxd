# Text helpers both compiled modules inline: a recipient's key from its text
# (an E.164 number's or a business-scoped user ID's), and the UTF-8 bytes of a
# Python string.

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t

from tiergate._native.constants cimport KEY_LENGTH_SHIFT, MAX_RECIPIENT_DIGITS
from tiergate._native.sip cimport sip_bytes

cdef enum:
    MAX_BSUID_ID = 128


cdef inline bint is_alnum(unsigned char ch) noexcept nogil:
    return 48 <= ch <= 57 or 65 <= ch <= 90 or 97 <= ch <= 122


cdef inline bint bsuid_key(const unsigned char *p, uint64_t length,
                           uint64_t *out) noexcept nogil:
    """As constants.is_bsuid and constants.bsuid_key: two capital letters, '.',
    an optional 'ENT.', then 1 to 128 letters and digits; 0 when it is none."""
    cdef uint64_t k, start = 3
    if length < 4 or p[2] != 46 or not (65 <= p[0] <= 90 and 65 <= p[1] <= 90):
        return 0
    if length >= 7 and p[3] == 69 and p[4] == 78 and p[5] == 84 and p[6] == 46:  # 'ENT.'
        start = 7
    if length <= start or length - start > MAX_BSUID_ID:
        return 0
    for k in range(start, length):
        if not is_alnum(p[k]):
            return 0
    # The key words: constants.BSUID_HASH_KEY (b"tiergate.bsuid.1"), little-endian.
    out[0] = sip_bytes(7310575192057932148ULL, 3543880360891998766ULL, p, <Py_ssize_t>length) & (
        (<uint64_t>1 << KEY_LENGTH_SHIFT) - 1)
    if out[0] == 0:
        out[0] = 1
    return 1


cdef inline bint recipient_key(const unsigned char *p, uint64_t length,
                               uint64_t *out) noexcept nogil:
    """The key of a recipient's text (a string's one-byte data, or its UTF-8
    bytes off the wire): E.164 digits (1 to 15, an optional leading '+') or a
    business-scoped user ID (bsuid_key); 0 when it is neither."""
    cdef uint64_t start = 1 if length > 0 and p[0] == 43 else 0  # '+'
    cdef uint64_t k, value = 0
    cdef unsigned char ch
    if length > 2 and p[2] == 46:  # '.'
        return bsuid_key(p, length, out)
    if length <= start or length - start > MAX_RECIPIENT_DIGITS:
        return 0
    for k in range(start, length):
        ch = p[k]
        if ch < 48 or ch > 57:
            return 0
        value = value * 10 + (ch - 48)
    out[0] = value | ((length - start) << KEY_LENGTH_SHIFT)
    return 1


cdef inline const char *utf8(object text, Py_ssize_t *n, str what, Py_ssize_t i) except NULL:
    """The UTF-8 bytes of ``text`` (their count to n); TypeError naming ``what[i]``
    when it is not a string."""
    if type(text) is not str:
        raise TypeError(f"{what}[{i}] is not a string")
    return PyUnicode_AsUTF8AndSize(text, n)
