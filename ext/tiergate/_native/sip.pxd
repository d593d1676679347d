# SipHash-2-4 (Aumasson & Bernstein), inlined where it is used: ticket MACs
# (tickets.pxi) and business-scoped user IDs' keys (text.pxd). The twin is
# tiergate.engine.tickets.

from libc.stdint cimport uint64_t


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


cdef inline uint64_t sip_bytes(uint64_t k0, uint64_t k1, const unsigned char *p,
                               Py_ssize_t n) noexcept nogil:
    cdef Sip s
    cdef Py_ssize_t k, full = n - n % 8
    sip_init(&s, k0, k1)
    for k in range(0, full, 8):
        sip_word(&s, load_le(p + k, 8))
    sip_word(&s, load_le(p + full, n - full) | ((<uint64_t>n & 0xff) << 56))
    return sip_final(&s)
