"""Commit paths by durability mode: records copied into the mapped segment at once
(``write``, ``fsync-interval``); grouped per loop pass behind one fsync
(``fsync-always``); ordering, failures and background snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_double import CounterService, forbid_fork

from tiergate.store import (
    DataDirError,
    EmbeddedStore,
    StoreFailedError,
    StoreUnavailableError,
)
from tiergate.store import commit as group_commit
from tiergate.store import journal as j


def recovered(path: Path) -> CounterService:
    store = EmbeddedStore.open(path, "write")
    svc = CounterService()
    store.recover(svc)
    store.close()
    return svc


async def decide(store: EmbeddedStore, svc: CounterService, i: int) -> int:
    """What a server RPC does: change state, then acknowledge after persist."""
    answer = svc.incr(f"r{i % 13}", key=f"k{i}")
    await store.persist(svc)
    return answer


@pytest.mark.parametrize("durability", ["write", "fsync-interval", "fsync-always"])
def test_concurrent_decisions_are_all_written(tmp_path: Path, durability: str) -> None:
    async def main() -> CounterService:
        store = EmbeddedStore.open(tmp_path, durability, fsync_interval_ms=5)
        svc = CounterService()
        store.recover(svc)
        answers = await asyncio.gather(*(decide(store, svc, i) for i in range(300)))
        assert len(answers) == 300
        assert store.records_committed == 300
        if durability == "fsync-always":
            assert store.commits <= 3  # one fsync for the whole wave (two with one in flight)
            assert store.fsyncs >= store.commits
        else:
            assert store.commits == 300  # one copy each, no wait
        if durability == "fsync-interval":
            for _ in range(500):  # the background flusher runs within ~5 ms (slower on a busy box)
                if store.fsyncs:
                    break
                await asyncio.sleep(0.01)
            assert store.fsyncs >= 1
        store.close()
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


def test_fsync_always_groups_while_an_fsync_is_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "fsync-always")
        svc = CounterService()
        store.recover(svc)
        for wave in range(5):
            await asyncio.gather(*(decide(store, svc, wave * 50 + i) for i in range(50)))
        assert store.records_committed == 250
        assert store.commits <= 10
        store.close()

    asyncio.run(main())


def test_empty_commit_waits_for_earlier_records(tmp_path: Path) -> None:
    """A decision that changed nothing (a repeat idempotency key) but read state that
    an earlier, still unwritten decision created must not be acknowledged first."""
    order: list[str] = []

    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "fsync-always")
        svc = CounterService()
        store.recover(svc)

        async def first() -> None:
            svc.incr("a", key="same")
            await store.persist(svc)
            order.append("first")

        async def repeat() -> None:
            svc.incr("a", key="same")  # answered from the key, journals nothing
            await store.persist(svc)
            order.append("repeat")

        t1 = asyncio.create_task(first())
        await asyncio.sleep(0)  # first's write is now pending
        t2 = asyncio.create_task(repeat())
        await asyncio.gather(t1, t2)
        store.close()

    asyncio.run(main())
    assert order == ["first", "repeat"]


@pytest.mark.parametrize("durability", ["write", "fsync-interval"])
def test_persist_nowait_writes_before_it_returns(tmp_path: Path, durability: str) -> None:
    """The RPCs' form of persist: without fsync per call, the records are in the
    mapped segment when the call returns, so there is nothing to await."""

    async def main() -> CounterService:
        store = EmbeddedStore.open(tmp_path, durability)
        svc = CounterService()
        store.recover(svc)
        assert store.persist_nowait(svc) is None  # nothing to write
        writer = store._commit.writer
        assert writer is not None
        written = writer.written_seq
        for i in range(20):
            svc.incr(f"r{i % 3}", key=f"k{i}")
            assert store.persist_nowait(svc) is None
            assert writer.written_seq == written + i + 1
        svc.incr("r0", key="k0")  # answered from its key: journals nothing
        assert store.persist_nowait(svc) is None
        assert store.commits == 20 and store.records_committed == 20
        store.close()
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


def test_persist_nowait_acknowledges_only_after_the_group_fsync(tmp_path: Path) -> None:
    """fsync-always: the records of one loop pass share one write and fsync, and
    nothing is acknowledged before it."""

    async def main() -> CounterService:
        store = EmbeddedStore.open(tmp_path, "fsync-always")
        svc = CounterService()
        store.recover(svc)
        assert store.persist_nowait(svc) is None  # nothing to write, nothing pending
        writer = store._commit.writer
        assert writer is not None
        written = writer.written_seq
        futures = []
        for i in range(20):
            svc.incr(f"r{i % 3}", key=f"k{i}")
            futures.append(store.persist_nowait(svc))
        svc.incr("r0", key="k0")  # answered from its key: journals nothing
        futures.append(store.persist_nowait(svc))  # still waits for the earlier ones
        assert all(f is not None and not f.done() for f in futures)
        assert writer.written_seq == written  # queued, not written yet
        await asyncio.gather(*(f for f in futures if f is not None))
        assert writer.written_seq == written + 20
        assert store.commits == 1 and store.records_committed == 20
        assert store.fsyncs >= 1
        assert store.persist_nowait(svc) is None
        store.close()
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


def fail_next_segment(
    store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch, err: int = errno.ENOSPC
) -> None:
    """The current segment is full and the next one cannot be made: no room is left
    for it (ENOSPC), or the disk fails (EIO)."""
    writer = store._commit.writer
    assert writer is not None
    writer.capacity = writer.segment_size

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(j.os, "posix_fallocate", full)


def test_a_failed_group_write_fails_every_waiter_and_reports_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[StoreFailedError] = []

    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "fsync-always")
        svc = CounterService()
        store.recover(svc)
        store.on_failure = failures.append
        svc.incr("a")
        await store.persist(svc)
        fail_next_segment(store, monkeypatch, errno.EIO)
        futures = []
        for i in range(3):
            svc.incr("a", key=f"k{i}")
            futures.append(store.persist_nowait(svc))
        results = await asyncio.gather(*(f for f in futures if f), return_exceptions=True)
        monkeypatch.undo()
        assert len(results) == 3 and all(isinstance(r, StoreFailedError) for r in results)
        svc.incr("b")
        with pytest.raises(StoreFailedError):
            store.persist_nowait(svc)  # refused at once from now on
        store.close()

    asyncio.run(main())
    assert len(failures) == 1 and "Input/output error" in str(failures[0])
    assert recovered(tmp_path).state() == ({"a": 1}, {})


def test_persist_starts_a_background_snapshot_when_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_fork(monkeypatch)

    async def main() -> CounterService:
        store = EmbeddedStore.open(
            tmp_path,
            "write",
            snapshot_every_records=100,
            snapshot_min_seconds=0,
            snapshot_on_close=False,
        )
        svc = CounterService()
        store.recover(svc)
        for wave in range(3):
            for i in range(100):
                await decide(store, svc, wave * 100 + i)
            for _ in range(200):  # let the background snapshot finish
                if store.snapshots_taken > wave:
                    break
                await asyncio.sleep(0.01)
        assert store.snapshots_taken == 3
        assert store.last_snapshot_seq == 300
        await store.aclose(svc)
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


def test_time_based_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "write", snapshot_every_seconds=0.01)
        svc = CounterService()
        store.recover(svc)
        assert not await store.maybe_snapshot(svc)  # nothing to cover yet
        await decide(store, svc, 1)
        await asyncio.sleep(0.02)
        assert await store.maybe_snapshot(svc)
        assert store.last_snapshot_seq == 1 and store.records_since_snapshot == 0
        store.close()

    asyncio.run(main())


def test_snapshot_under_concurrent_load_keeps_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_fork(monkeypatch)

    async def main() -> CounterService:
        store = EmbeddedStore.open(tmp_path, "fsync-always", snapshot_on_close=False)
        svc = CounterService()
        store.recover(svc)

        async def load(base: int) -> None:
            for i in range(40):
                await decide(store, svc, base + i)

        await asyncio.gather(load(0), load(1000), store.snapshot(svc), load(2000))
        await store.snapshot(svc)
        await asyncio.gather(load(3000), load(4000))
        store.close()
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


@pytest.mark.parametrize("durability", ["write", "fsync-interval"])
def test_write_failure_is_never_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    failures: list[StoreFailedError] = []

    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, durability)
        svc = CounterService()
        store.recover(svc)
        store.on_failure = failures.append
        await decide(store, svc, 0)
        fail_next_segment(store, monkeypatch, errno.EIO)
        results = await asyncio.gather(
            *(decide(store, svc, i) for i in range(1, 4)), return_exceptions=True
        )
        assert all(isinstance(r, StoreFailedError) for r in results)
        monkeypatch.undo()
        with pytest.raises(StoreFailedError, match="Input/output error"):
            await decide(store, svc, 9)
        store.close()

    asyncio.run(main())
    assert len(failures) == 1
    assert recovered(tmp_path).state() == ({"r0": 1}, {"k0": 1})


@pytest.mark.parametrize("durability", ["write", "fsync-interval", "fsync-always"])
def test_a_full_disk_refuses_decisions_then_resumes_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    """No space for the next segment: nothing is acknowledged (a decision that changed
    nothing neither), the records of the decisions made are kept, and once there is
    space again they are written, once and in order, and decisions are acknowledged
    again, without a restart."""
    changes: list[StoreUnavailableError | None] = []

    async def main() -> CounterService:
        store = EmbeddedStore.open(tmp_path, durability)
        store.no_space_retry_seconds = 0.01
        svc = CounterService()
        store.recover(svc)
        store.on_unavailable = changes.append
        await decide(store, svc, 0)
        fail_next_segment(store, monkeypatch)
        results = await asyncio.gather(
            *(decide(store, svc, i) for i in range(1, 4)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results), results
        assert "no space left on device" in str(results[0]) and str(tmp_path) in str(results[0])
        with pytest.raises(StoreUnavailableError):
            await decide(store, svc, 0)  # k0 again: changes nothing, still not acknowledged
        await asyncio.sleep(0.05)  # retried meanwhile, still no space
        assert store.unavailable is not None and len(changes) == 1
        monkeypatch.undo()  # space again
        for _ in range(500):
            if store.unavailable is None:
                break
            await asyncio.sleep(0.01)
        assert changes == [results[0], None]
        assert await decide(store, svc, 4) == svc.counts["r4"]
        store.close()
        return svc

    svc = asyncio.run(main())
    counts = {f"r{i}": 1 for i in range(5)}
    assert svc.state() == (counts, {f"k{i}": 1 for i in range(5)})
    assert recovered(tmp_path).state() == svc.state()


def test_closing_while_the_disk_is_full_drops_only_what_was_never_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "fsync-interval")
        svc = CounterService()
        store.recover(svc)
        await decide(store, svc, 0)
        fail_next_segment(store, monkeypatch)
        with pytest.raises(StoreUnavailableError):
            await decide(store, svc, 1)
        await store.aclose(svc)  # no traceback: logged; the final snapshot is put off

    asyncio.run(main())
    monkeypatch.undo()
    assert recovered(tmp_path).state() == ({"r0": 1}, {"k0": 1})


def test_records_kept_while_the_disk_is_full_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past HELD_BYTES_LIMIT of records kept, the store fails: memory is not given
    without end to decisions that cannot be acknowledged."""
    monkeypatch.setattr(group_commit, "HELD_BYTES_LIMIT", 2_000)

    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "write")
        svc = CounterService()
        store.recover(svc)
        fail_next_segment(store, monkeypatch)
        with pytest.raises(StoreUnavailableError):
            await decide(store, svc, 0)
        with pytest.raises(StoreFailedError, match="kept while it was full"):
            for i in range(1, 100):
                with contextlib.suppress(StoreUnavailableError):
                    await decide(store, svc, i)
        store.close()

    asyncio.run(main())


class FailingSnapshot(CounterService):
    """Fails to take its state image (``where="image"``) or to encode it ("encode")."""

    where = "image"

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        if self.where == "image":
            raise RuntimeError("cannot take the image")

        def encode() -> list[bytes]:
            raise RuntimeError("cannot encode")

        return encode


@pytest.mark.parametrize("where", ["image", "encode"])
def test_failed_snapshot_keeps_the_journal_and_serving(tmp_path: Path, where: str) -> None:
    async def main() -> FailingSnapshot:
        store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
        svc = FailingSnapshot()
        svc.where = where
        store.recover(svc)
        for i in range(20):
            await decide(store, svc, i)
        with pytest.raises(RuntimeError, match=f"cannot {'take' if where == 'image' else where}"):
            await store.snapshot(svc)
        assert not list(tmp_path.glob("snapshot-*"))
        for i in range(20, 30):  # still serving, still journalling
            await decide(store, svc, i)
        store.close()
        return svc

    svc = asyncio.run(main())
    assert recovered(tmp_path).state() == svc.state()


class GcWatch(CounterService):
    """Notes whether the cyclic GC was on when its image was taken and encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.gc_on: list[bool] = []

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        self.gc_on.append(gc.isenabled())
        encode = super().snapshot_image(room)

        def watched() -> list[bytes]:
            self.gc_on.append(gc.isenabled())
            return encode()

        return watched


def test_the_cyclic_gc_is_paused_while_a_snapshot_is_taken_and_encoded(tmp_path: Path) -> None:
    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
        svc = GcWatch()
        store.recover(svc)
        await decide(store, svc, 1)
        await store.snapshot(svc)
        assert svc.gc_on == [False, False] and gc.isenabled()
        gc.disable()  # paused by someone else: left as it was
        try:
            await decide(store, svc, 2)
            await store.snapshot(svc)
            assert not gc.isenabled()
        finally:
            gc.enable()
        store.close()

    asyncio.run(main())


class SlowEncode(CounterService):
    """Encodes its image slowly, in whichever thread runs the encoder."""

    encoded_in: list[str]

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        encode = super().snapshot_image(room)

        def slow() -> list[bytes]:
            self.encoded_in.append(threading.current_thread().name)
            time.sleep(0.2)
            return encode()

        return slow


def test_snapshot_is_encoded_in_a_thread_while_decisions_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No child process: the image is taken at the cut, on the event loop, and
    encoded and written by the snapshot thread; decisions made meanwhile are in
    the journal after the snapshot's sequence number, not in the snapshot."""
    forbid_fork(monkeypatch)

    async def main() -> SlowEncode:
        store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
        svc = SlowEncode()
        svc.encoded_in = []
        store.recover(svc)
        for i in range(10):
            await decide(store, svc, i)
        snap = asyncio.ensure_future(store.snapshot(svc))
        await asyncio.sleep(0.05)  # the encoder is sleeping in its thread now
        assert store._snapshots.running and not snap.done()
        for i in range(10, 15):
            await decide(store, svc, i)
        await snap
        assert svc.encoded_in == ["tiergate-snapshot_0"]
        assert store.last_snapshot_seq == 10 and store.snapshots_taken == 1
        with pytest.raises(DataDirError, match="in use"):
            EmbeddedStore.open(tmp_path, "write")
        store.close()
        return svc

    svc = asyncio.run(main())
    again = EmbeddedStore.open(tmp_path, "write")
    got = CounterService()
    report = again.recover(got)
    again.close()
    assert report.snapshot_seq == 10 and report.records_replayed == 5
    assert got.state() == svc.state()


def test_explicit_snapshot_waits_for_one_in_progress(tmp_path: Path) -> None:
    """A snapshot asked for while a background one runs is taken after it, not skipped
    (the server snapshots a new service right after a profile reload)."""

    async def main() -> None:
        store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
        svc = CounterService()
        store.recover(svc)
        await decide(store, svc, 1)
        first = asyncio.ensure_future(store.snapshot(svc))
        await asyncio.sleep(0)
        await decide(store, svc, 2)
        await store.snapshot(svc)
        await first
        assert store.snapshots_taken == 2
        assert store.last_snapshot_seq == 2
        store.close()

    asyncio.run(main())


def test_record_trigger_waits_for_the_minimum_interval(tmp_path: Path) -> None:
    """Under heavy load a snapshot is due by record count, but not more often than
    snapshot_min_seconds (each one costs CPU in proportion to the whole state)."""

    async def main() -> None:
        store = EmbeddedStore.open(
            tmp_path, "write", snapshot_every_records=10, snapshot_min_seconds=60
        )
        svc = CounterService()
        store.recover(svc)
        for i in range(25):
            await decide(store, svc, i)
        assert not store.snapshot_due() and store.snapshots_taken == 0
        store._snapshots.last_at -= 61  # a minute later
        assert store.snapshot_due()
        await decide(store, svc, 99)
        for _ in range(300):
            if store.snapshots_taken:
                break
            await asyncio.sleep(0.01)
        assert store.snapshots_taken == 1
        store.close()

    asyncio.run(main())


def test_journal_bytes_make_a_snapshot_due(tmp_path: Path) -> None:
    """A few large records (whole batches of admits) make a snapshot due by their bytes,
    and recovery counts the bytes it replayed towards the next one."""

    async def main() -> None:
        store = EmbeddedStore.open(
            tmp_path,
            "write",
            snapshot_every_records=10**6,
            snapshot_every_bytes=1_000,
            snapshot_min_seconds=0,
            snapshot_on_close=False,
        )
        svc = CounterService()
        store.recover(svc)
        svc.incr("r" * 400)
        await store.persist(svc)
        assert not store.snapshot_due() and store.bytes_since_snapshot > 400
        svc.incr("r" * 400)
        svc.incr("r" * 400)
        store.commit_sync(svc.drain_journal())
        assert store.records_since_snapshot == 3 and store.snapshot_due()
        store.close()

    asyncio.run(main())
    again = EmbeddedStore.open(tmp_path, "write", snapshot_every_bytes=1_000)
    svc = CounterService()
    report = again.recover(svc)
    assert report.records_replayed == 3 and report.replayed_bytes > 1_200
    assert again.bytes_since_snapshot == report.replayed_bytes
    again.snapshot_sync(svc)
    assert again.bytes_since_snapshot == 0 and not again.snapshot_due()
    again.close()
    with pytest.raises(ValueError, match="snapshot_every_bytes"):
        EmbeddedStore(tmp_path / "x", snapshot_every_bytes=0)
