"""A tiny deterministic stand-in for the policy layer's journal interface.

State is a dict of counters and a set of idempotency keys; every change is
journalled as one record, exactly like ``AdmissionService`` does, so the
store can be tested without the policy layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

SNAPSHOT_VERSION = 1


class CounterService:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self._journal: list[bytes] = []
        self.replayed = 0
        self.restored = 0

    # -- state changes (the "decisions") -----------------------------------
    def incr(self, name: str, by: int = 1, key: str = "") -> int:
        """Add ``by`` to a counter; an idempotency key returns its first answer."""
        if key and key in self.keys:
            return self.keys[key]
        self._apply({"op": "incr", "name": name, "by": by, "key": key})
        return self.counts[name]

    def _apply(self, op: dict[str, object]) -> None:
        self._do(op)
        self._journal.append(json.dumps(op, sort_keys=True).encode())

    def _do(self, op: dict[str, object]) -> None:
        name = str(op["name"])
        by = op["by"]
        assert isinstance(by, int)
        self.counts[name] = self.counts.get(name, 0) + by
        key = str(op["key"])
        if key:
            self.keys[key] = self.counts[name]

    # -- the store interface -----------------------------------------------
    def drain_journal(self) -> list[bytes]:
        out, self._journal = self._journal, []
        return out

    def replay(self, record: bytes) -> None:
        self._do(json.loads(record))
        self.replayed += 1

    def snapshot(self) -> bytes:
        return b"".join(self.snapshot_image()())

    def snapshot_room(self) -> Callable[[], object]:
        return lambda: None

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        counts, keys = dict(self.counts), dict(self.keys)

        def encode() -> list[bytes]:
            state = {"v": SNAPSHOT_VERSION, "counts": counts, "keys": keys}
            return [json.dumps(state, sort_keys=True).encode()]

        return encode

    def restore(self, data: bytes) -> None:
        state = json.loads(data)
        if state["v"] != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {state['v']} not supported")
        self.counts = dict(state["counts"])
        self.keys = dict(state["keys"])
        self.restored += 1

    def state(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.counts), dict(self.keys)


def forbid_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``os.fork`` fail: the process serves gRPC threads, and a child forked
    from it may crash; snapshots must never need one."""

    def fork() -> int:
        raise AssertionError("os.fork() called: snapshots are taken without a child process")

    monkeypatch.setattr(os, "fork", fork)
