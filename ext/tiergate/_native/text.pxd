# Text helpers both compiled modules inline: a recipient's key from its text,
# and the UTF-8 bytes of a Python string.

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t

from tiergate._native.constants cimport KEY_LENGTH_SHIFT, MAX_RECIPIENT_DIGITS


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


cdef inline const char *utf8(object text, Py_ssize_t *n, str what, Py_ssize_t i) except NULL:
    """The UTF-8 bytes of ``text`` (their count to n); TypeError naming ``what[i]``
    when it is not a string."""
    if type(text) is not str:
        raise TypeError(f"{what}[{i}] is not a string")
    return PyUnicode_AsUTF8AndSize(text, n)
