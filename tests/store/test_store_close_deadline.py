"""A close with a deadline: a snapshot that cannot finish in time is left unfinished,
the journal is committed and fsynced anyway, and the next start loses nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

from store_double import CounterService

from tiergate.store import EmbeddedStore
from tiergate.store.snapshot import TMP_SUFFIX


class SlowSnapshots(CounterService):
    """A service whose snapshot encoding waits for ``release`` (a large state)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.encoding = threading.Event()

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        encode = super().snapshot_image(room)

        def slow() -> list[bytes]:
            self.encoding.set()
            self.release.wait(30)
            return encode()

        return slow


def _open(path: Path) -> EmbeddedStore:
    return EmbeddedStore.open(path, durability="write")


async def _acknowledged(store: EmbeddedStore, svc: CounterService, n: int, start: int) -> None:
    for i in range(start, start + n):
        svc.incr(f"r{i % 5}", key=f"k{i}")
        await store.persist(svc)


def test_final_snapshot_past_the_deadline_is_left_and_nothing_is_lost(tmp_path: Path) -> None:
    svc = SlowSnapshots()

    async def main() -> float:
        store = _open(tmp_path)
        store.recover(svc)
        await _acknowledged(store, svc, 50, 0)
        svc.incr("late", key="late")  # changed, not yet persisted: the close commits it
        started = time.monotonic()
        await store.aclose(svc, deadline=started + 0.5)
        return time.monotonic() - started

    took = asyncio.run(main())
    assert svc.encoding.is_set()  # the final snapshot was started …
    assert took < 3.0  # … and not waited for (it would take 30 s)
    svc.release.set()
    reopened = CounterService()
    store = _open(tmp_path)
    report = store.recover(reopened)
    assert reopened.state() == svc.state()
    assert report.records_replayed == 51  # every change, from the journal
    assert not list(tmp_path.glob("*" + TMP_SUFFIX))
    store.close()


def test_a_background_snapshot_running_at_close_is_bounded_too(tmp_path: Path) -> None:
    svc = SlowSnapshots()

    async def main() -> float:
        store = _open(tmp_path)
        store.recover(svc)
        await _acknowledged(store, svc, 20, 0)
        snap = asyncio.ensure_future(store.snapshot(svc))
        while not svc.encoding.is_set():
            await asyncio.sleep(0.01)
        await _acknowledged(store, svc, 20, 20)  # decided while it is encoded
        started = time.monotonic()
        await store.aclose(svc, deadline=started + 0.3)
        took = time.monotonic() - started
        snap.cancel()
        return took

    took = asyncio.run(main())
    assert took < 3.0
    svc.release.set()
    reopened = CounterService()
    store = _open(tmp_path)
    store.recover(reopened)
    assert reopened.state() == svc.state()
    store.close()


def test_without_a_deadline_the_close_waits_for_its_final_snapshot(tmp_path: Path) -> None:
    svc = SlowSnapshots()
    threading.Timer(0.3, svc.release.set).start()

    async def main() -> None:
        store = _open(tmp_path)
        store.recover(svc)
        await _acknowledged(store, svc, 10, 0)
        await store.aclose(svc)

    asyncio.run(main())
    store = _open(tmp_path)
    report = store.recover(CounterService())
    assert report.snapshot_seq == 10 and report.records_replayed == 0
    store.close()
