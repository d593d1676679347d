"""Tickets: what an ADMIT hands out for RecordFeedback, made unforgeable by a keyed MAC.

A ticket names what its admit consumed, as six lowercase hex fields joined by
'.': ticket id, number (the sender's engine index), recipient key, previous
counted time (minus ``NEVER``, so never negative), slot stamp, and a MAC of
those five: SipHash-2-4 (Aumasson & Bernstein, "SipHash: a fast short-input
PRF") with the service's 128-bit ticket key over the five numbers as
little-endian unsigned 64-bit words, written as 16 hex digits. The five
numbers drop leading zeros; only the exact text :func:`encode_ticket` writes is
accepted back, so a ticket has one spelling.

This is the pure-Python reference; ``tiergate._native.columns`` has the
compiled ``siphash24`` and ``encode_ticket`` (and ``finish`` writes tickets in
C the same way). tests/engine/test_tickets.py checks both against the paper's
test vectors and against each other.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable

from .reference import NEVER

__all__ = [
    "TICKET_KEY_BYTES",
    "decode_ticket",
    "encode_ticket",
    "key_words",
    "siphash24",
    "ticket_fields",
    "ticket_mac",
]

#: An encoder of tickets: (k0, k1, tid, number, rkey, prev, slot) -> ticket.
Encoder = Callable[[int, int, int, int, int, int, int], str]

#: A ticket key is 128 bits.
TICKET_KEY_BYTES = 16
_MASK = (1 << 64) - 1
_U64 = 1 << 64
_KEY = struct.Struct("<QQ")


def key_words(key: bytes) -> tuple[int, int]:
    """The key's two 64-bit halves (k0, k1), little-endian, as SipHash takes them."""
    if len(key) != TICKET_KEY_BYTES:
        raise ValueError(f"a ticket key is {TICKET_KEY_BYTES} bytes, got {len(key)}")
    k0, k1 = _KEY.unpack(key)
    return k0, k1


def _sip(k0: int, k1: int, words: list[int]) -> int:
    """SipHash-2-4 of the message whose 64-bit words (the last one with the length
    byte, as the algorithm pads) are ``words``."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    m = _MASK
    for w in (*words, None):
        if w is None:  # finalisation: four rounds after v2 ^= 0xff
            v2 ^= 0xFF
            rounds = 4
        else:
            v3 ^= w
            rounds = 2
        for _ in range(rounds):
            v0 = (v0 + v1) & m
            v1 = ((v1 << 13) | (v1 >> 51)) & m
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & m
            v2 = (v2 + v3) & m
            v3 = ((v3 << 16) | (v3 >> 48)) & m
            v3 ^= v2
            v0 = (v0 + v3) & m
            v3 = ((v3 << 21) | (v3 >> 43)) & m
            v3 ^= v0
            v2 = (v2 + v1) & m
            v1 = ((v1 << 17) | (v1 >> 47)) & m
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & m
        if w is not None:
            v0 ^= w
    return v0 ^ v1 ^ v2 ^ v3


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of ``data`` under the 16-byte ``key`` (the 64-bit result as an int)."""
    k0, k1 = key_words(key)
    n = len(data)
    full = n - n % 8
    words = [int.from_bytes(data[k : k + 8], "little") for k in range(0, full, 8)]
    words.append(int.from_bytes(data[full:], "little") | ((n & 0xFF) << 56))
    return _sip(k0, k1, words)


def ticket_mac(k0: int, k1: int, tid: int, number: int, rkey: int, prev: int, slot: int) -> int:
    """The MAC of a ticket's five numbers (``prev`` as the engine gives it: NEVER or a time)."""
    # Five whole words, then the padding word: the message length (40) in its top byte.
    return _sip(k0, k1, [tid, number, rkey, (prev - NEVER) & _MASK, slot & _MASK, 40 << 56])


def encode_ticket(k0: int, k1: int, tid: int, number: int, rkey: int, prev: int, slot: int) -> str:
    """The ticket of an admit (see the module docstring)."""
    mac = ticket_mac(k0, k1, tid, number, rkey, prev, slot)
    return f"{tid:x}.{number:x}.{rkey:x}.{prev - NEVER:x}.{slot:x}.{mac:016x}"


def decode_ticket(
    ticket: str, k0: int, k1: int, encode: Encoder | None = None
) -> tuple[int, int, int, int, int] | None:
    """(ticket id, number, recipient key, prev_counted, slot stamp) of a genuine ticket;
    None for anything else (a ticket of another key, altered, or not a ticket).

    ``encode`` is the encoder to check with (the compiled one when in use; this
    module's :func:`encode_ticket` when None).
    """
    fields = ticket_fields(ticket)
    if fields is None or len(ticket.split(".")) != 6:
        return None
    tid, number, rkey, prev, slot = fields
    expected = (encode or encode_ticket)(k0, k1, tid, number, rkey, prev, slot)
    if not hmac.compare_digest(expected, ticket):
        return None
    return fields


def ticket_fields(ticket: str) -> tuple[int, int, int, int, int] | None:
    """The five numbers of a ticket, its MAC unchecked (for records already checked
    when they were written: journal replay, snapshots). Tickets of tiergate before
    MACs have five parts, before slot stamps four (stamp 0, which releases nothing)."""
    if not isinstance(ticket, str) or not ticket.isascii():
        return None
    parts = ticket.split(".")
    if len(parts) == 6:
        parts.pop()
    elif len(parts) == 4:
        parts.append("0")
    if len(parts) != 5:
        return None
    try:
        tid, number, rkey, prev, slot = (int(p, 16) for p in parts)
    except ValueError:
        return None
    if not (0 < tid < _U64 and 0 <= number < 1 << 31 and 0 < rkey < _U64):
        return None
    if not (0 <= prev < 1 << 63 and 0 <= slot < 1 << 63):
        return None
    return tid, number, rkey, prev + NEVER, slot


def _encoder_in_use() -> Encoder:
    from tiergate.engine import native_module  # the package is initialised by now

    compiled = native_module("columns")
    return encode_ticket if compiled is None else compiled.encode_ticket


#: :func:`encode_ticket` of the engine in use: its compiled twin (``tickets.pxi``,
#: built into the columnar kernels' module) with the compiled engine.
encode_in_use: Encoder = _encoder_in_use()
