"""A limit scope that never counts keeps no ring buckets: none allocated, none in
its snapshot (format 5 on); format 4 snapshots, which wrote every bucket, still read."""

from __future__ import annotations

import struct

from conftest import Twin

from engine.old_formats import as_format_5
from tiergate.engine import constants as c
from tiergate.engine.reference import Engine as PyEngine
from tiergate.engine.reference.snapshot import (
    _HEADER,
    _NUMBER,
    _NUMBER_ENTRY,
    _RING,
    _SCOPE,
    _SCOPE_ENTRY,
    _TABLE,
    _TABLE_5,
)

BUCKETS = (62, 32, 32)  # the rings of Engine(1_000, 60_000, 10_000, 300_000)


def _as_format_4(data: bytes) -> bytes:
    """``data`` (format 6) as format 4 wrote it: tables without a sweep and every
    ring with its buckets (the numbers, whose warm-up parts hold no ring here,
    are written as before)."""
    data = as_format_5(data)
    (_, _, _, _, _, _, _, n_scopes, _) = _HEADER.unpack_from(data, 0)
    out = bytearray(data[: _HEADER.size])
    struct.pack_into("<I", out, 8, 4)
    at = _HEADER.size
    for _ in range(n_scopes):
        out += data[at : at + _SCOPE.size]
        at += _SCOPE.size
        for _ in range(3):
            n, _lo, total = _RING.unpack_from(data, at)
            out += data[at : at + _RING.size]
            at += _RING.size
            if total:
                out += data[at : at + 8 * n]
                at += 8 * n
            else:
                out += bytes(8 * n)
        _, count = _TABLE_5.unpack_from(data, at)
        size = _TABLE_5.size + count * _SCOPE_ENTRY.size
        out += data[at : at + size]
        at += size
    out += data[at:]  # the numbers are written as before
    return bytes(out)


def test_a_scope_without_counts_writes_no_buckets(twin: Twin) -> None:
    e = twin.Engine(1_000, 60_000, 10_000, 300_000)
    for _ in range(3):
        e.add_number(e.add_scope())
    assert e.decide(5_000, 1, 1, 42, c.F_TEMPLATE, 10)[0] == c.ADMIT
    data = e.snapshot()
    # three scopes, three numbers; only scope 1 has counts (in all three rings)
    idle = _SCOPE.size + 3 * _RING.size + _TABLE.size
    busy = idle + 8 * sum(BUCKETS) + _SCOPE_ENTRY.size
    # each number: its table, then its warm-up cap (-1: none)
    numbers = 3 * (_NUMBER.size + _TABLE.size + 8) + _NUMBER_ENTRY.size
    assert len(data) == _HEADER.size + 2 * idle + busy + numbers
    assert struct.unpack_from("<I", data, 8)[0] == 6


def test_format_4_snapshots_still_read_and_both_engines_agree(twin: Twin) -> None:

    e = twin.Engine(1_000, 60_000, 10_000, 300_000)
    for _ in range(3):
        e.add_number(e.add_scope())
    e.decide(5_000, 1, 1, 42, c.F_TEMPLATE, 10)
    d = e.decide(7_000, 2, 2, 44, c.F_TEMPLATE, 10)
    assert e.release(2, 44, d.slot, d.prev_counted)  # counted, then given back: total 0
    data = e.snapshot()
    old = _as_format_4(data)
    # scopes 0 and 2 write their buckets; six tables lose their sweep
    assert len(old) == len(data) + 8 * 2 * sum(BUCKETS) - 6 * 16
    for cls in (PyEngine, twin.Engine):
        restored = cls.restore(old)
        assert restored.snapshot() == data
        for scope in range(3):
            assert restored.usage(scope, 8_000, 10) == e.usage(scope, 8_000, 10)
        # an idle scope restored from format 4 counts from its first admit on
        assert restored.decide(9_000, 0, 0, 45, c.F_TEMPLATE, 1)[0] == c.ADMIT
        assert restored.decide(9_001, 0, 0, 46, c.F_TEMPLATE, 1)[1] == c.MESSAGING_LIMIT
