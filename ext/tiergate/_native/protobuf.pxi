# Protobuf's encoding, the parts the wire codec uses: varints, field keys,
# length-delimited and packed fields (https://protobuf.dev/programming-guides/encoding/).

cdef enum:
    # wire types
    WIRE_VARINT = 0
    WIRE_I64 = 1
    WIRE_LEN = 2
    WIRE_I32 = 5


cdef inline char key(int field, int wire) noexcept nogil:
    """A field's key as written: its number and wire type (one byte: fields 1 to 15)."""
    return <char>((field << 3) | wire)


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


cdef int append_scalar(carray.array col, uint64_t v, bint wide) except -1:
    cdef Py_ssize_t old = Py_SIZE(col)
    carray.resize_smart(col, old + 1)
    if wide:
        col.data.as_longlongs[old] = <long long>v
    else:
        col.data.as_uints[old] = <unsigned int>v
    return 0


cdef int append_key(carray.array col, uint64_t v) except -1:
    cdef Py_ssize_t old = Py_SIZE(col)
    carray.resize_smart(col, old + 1)
    col.data.as_ulonglongs[old] = v
    return 0


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


cdef inline Py_ssize_t field_size(Py_ssize_t length) noexcept nogil:
    return 1 + varint_size(<uint64_t>length) + length if length else 0


cdef inline Py_ssize_t scalar_size(uint64_t v) noexcept nogil:
    return 1 + varint_size(v) if v else 0


cdef inline Py_ssize_t packed_size(const long long[::1] col) noexcept nogil:
    cdef Py_ssize_t i, size = 0
    for i in range(col.shape[0]):
        size += varint_size(<uint64_t>col[i])
    return size


cdef inline Py_ssize_t put_scalar(char *buf, Py_ssize_t pos, char tag,
                                  uint64_t v) noexcept nogil:
    if v:
        buf[pos] = tag
        pos = put_varint(buf, pos + 1, v)
    return pos


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
