"""A step of the random walks that drive both engines through their tables' growths and sweeps."""

from __future__ import annotations

from typing import Any

from tiergate.engine import constants as c

#: (number, recipient, slot, prev_counted) of the admits a walk may release
Sent = list[tuple[int, int, int, int]]


def walk_step(
    engines: list[Any], op: str, idx: int, key: int, flags: int, now: int, sent: Sent, limit: int
) -> None:
    """Apply ``op`` (release, opt, snap, reclaim: one in ten indices, else a
    decision) to both engines of scope 0 and number 0; every answer must agree."""
    if op == "release" and sent:
        args = sent.pop(idx % len(sent))
        assert engines[0].release(*args) == engines[1].release(*args)
    elif op == "opt":
        for e in engines:
            e.set_opt_out(0, key, bool(idx % 2))
    elif op == "snap":
        assert engines[0].snapshot() == engines[1].snapshot()
    elif op == "reclaim" and idx % 10 == 0:
        assert engines[0].reclaim(now) == engines[1].reclaim(now)
    else:
        d = [e.decide(now, 0, 0, key, flags, limit) for e in engines]
        assert d[0] == d[1], (key, now)
        if d[0][0] == c.ADMIT and d[0][3]:
            sent.append((0, key, d[0][6], d[0][5]))
