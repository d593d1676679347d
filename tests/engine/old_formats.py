"""Snapshots as older formats wrote them, for the tests that read old formats."""

from __future__ import annotations

import struct

from tiergate.engine.reference.snapshot import (
    _HEADER,
    _NUMBER,
    _NUMBER_ENTRY,
    _RING,
    _SCOPE,
    _SCOPE_ENTRY,
    _TABLE,
    _WARM_ENTRY,
)


def as_format_5(data: bytes) -> bytes:
    """``data`` (format 6, no sweep under way) as format 5 wrote it: each table's
    header without the sweep."""
    (_, _, _, _, _, _, _, n_scopes, n_numbers) = _HEADER.unpack_from(data, 0)
    out = bytearray(data[: _HEADER.size])
    struct.pack_into("<I", out, 8, 5)
    at = _HEADER.size

    def table(entry: struct.Struct) -> None:
        nonlocal at
        capacity, count, sweep, cut = _TABLE.unpack_from(data, at)
        assert sweep == cut == 0
        out.extend(struct.pack("<QQ", capacity, count))
        at += _TABLE.size
        out.extend(data[at : at + count * entry.size])
        at += count * entry.size

    def ring() -> None:
        nonlocal at
        n, _lo, total = _RING.unpack_from(data, at)
        size = _RING.size + (8 * n if total else 0)
        out.extend(data[at : at + size])
        at += size

    for _ in range(n_scopes):
        out.extend(data[at : at + _SCOPE.size])
        at += _SCOPE.size
        for _ in range(3):
            ring()
        table(_SCOPE_ENTRY)
    for _ in range(n_numbers):
        out.extend(data[at : at + _NUMBER.size])
        at += _NUMBER.size
        table(_NUMBER_ENTRY)
        (cap,) = struct.unpack_from("<q", data, at)
        out.extend(data[at : at + 8])
        at += 8
        if cap != -1:
            ring()
            (count,) = struct.unpack_from("<Q", data, at)
            size = 8 + count * _WARM_ENTRY.size
            out.extend(data[at : at + size])
            at += size
    assert at == len(data)
    return bytes(out)
