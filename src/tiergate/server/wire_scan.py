"""Counting a message's repeated fields in its wire bytes, before protobuf parses it.

Protobuf builds every item of a repeated field when it parses a message, so
a request is measured here first: a batch or a column with more items than a
call takes is refused before any of them is built, and what a malformed
request costs stays in proportion to its size. The scan reads tags and
lengths only (no item is decoded); on malformed data it stops and the counts
so far are a lower bound of what protobuf would build before failing.
"""

from __future__ import annotations

__all__ = ["count_items"]

_VARINT, _I64, _LEN, _START, _END, _I32 = range(6)
#: The bytes that end a varint (high bit clear) are kept by ``translate(None, _MORE)``.
_MORE = bytes(range(0x80, 0x100))


def _varint(data: bytes, p: int, end: int) -> tuple[int, int]:
    """The varint at ``p`` and the offset after it; (-1, end) when it is cut short."""
    value = shift = 0
    while p < end:
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, p
        shift += 7
        if shift >= 70:
            break
    return -1, end


def count_items(data: bytes, fields: dict[int, bool]) -> dict[int, int]:
    """How many items each top-level field of ``fields`` holds in the message ``data``.

    ``fields`` maps a field number to True when its items may be packed varints
    (each varint of a length-delimited occurrence counts), else False (each
    occurrence counts). Groups and other fields are skipped.
    """
    counts = dict.fromkeys(fields, 0)
    end = len(data)
    p = 0
    depth = 0  # inside an unknown group
    while p < end:
        b = data[p]
        if b < 0x80:
            tag, p = b, p + 1
        else:
            tag, p = _varint(data, p, end)
            if tag < 0:
                break
        field, wire = tag >> 3, tag & 7
        if wire == _LEN:
            size, p = _varint(data, p, end)
            if size < 0 or p + size > end:
                break
            if depth == 0 and field in counts:
                if fields[field]:
                    counts[field] += len(data[p : p + size].translate(None, _MORE))
                else:
                    counts[field] += 1
            p += size
        elif wire == _VARINT:
            value, p = _varint(data, p, end)
            if value < 0:
                break
            if depth == 0 and fields.get(field):  # an unpacked varint item
                counts[field] += 1
        elif wire == _I64:
            p += 8
        elif wire == _I32:
            p += 4
        elif wire == _START:
            depth += 1
        elif wire == _END and depth > 0:
            depth -= 1
        else:
            break
    return counts
