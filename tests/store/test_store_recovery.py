"""EmbeddedStore: commit, snapshot, recovery and every documented failure mode."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from store_double import CounterService

from tiergate.store import (
    CorruptJournalError,
    CorruptSnapshotError,
    DataDirError,
    EmbeddedStore,
    FormatVersionError,
    RecoveryReport,
    StoreError,
    StoreFailedError,
    StoreUnavailableError,
)
from tiergate.store import journal as j
from tiergate.store import snapshot as s


def open_store(path: Path, **options: object) -> EmbeddedStore:
    options.setdefault("durability", "write")
    return EmbeddedStore.open(path, **options)  # type: ignore[arg-type]


def fresh(path: Path, **options: object) -> tuple[EmbeddedStore, CounterService]:
    store = open_store(path, **options)
    svc = CounterService()
    store.recover(svc)
    return store, svc


def run_ops(store: EmbeddedStore, svc: CounterService, n: int, start: int = 0) -> None:
    """n decisions, each committed before it would be acknowledged."""
    for i in range(start, start + n):
        svc.incr(f"r{i % 7}", 1 + i % 3, key=f"k{i}")
        store.commit_sync(svc.drain_journal())


def reopen(path: Path, **options: object) -> tuple[EmbeddedStore, CounterService, RecoveryReport]:
    store = open_store(path, **options)
    svc = CounterService()
    report = store.recover(svc)
    return store, svc, report


def segments(path: Path) -> list[Path]:
    return [p for _, p in j.list_segments(path)]


def test_empty_dir_starts_clean_and_reports(tmp_path: Path) -> None:
    store, _svc = fresh(tmp_path / "data")
    assert store.report is not None
    assert store.report.records_replayed == 0 and store.report.snapshot_path is None
    assert store.recovery_seconds >= 0
    assert store.journal_bytes == j.SEGMENT_HEADER_SIZE
    store.close()


def test_crash_without_close_loses_nothing_committed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store, svc = fresh(data)
    run_ops(store, svc, 50)
    before = svc.state()
    os.close(store._lock_fd)  # simulate a crash: no close(), no final snapshot
    store2, svc2, report = reopen(data)
    assert svc2.state() == before
    assert report.records_replayed == 50
    assert store2.last_seq == 50
    # keeps going with the next sequence numbers after restart
    run_ops(store2, svc2, 5, start=50)
    store2.close()
    store3, svc3, _ = reopen(data)
    assert svc3.state() == svc2.state()
    store3.close()


def test_snapshot_then_journal_replay_equivalence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store, svc = fresh(data)
    run_ops(store, svc, 30)
    store.snapshot_sync(svc)
    run_ops(store, svc, 20, start=30)
    before = svc.state()
    store.close()
    store2, svc2, report = reopen(data)
    assert svc2.state() == before
    assert svc2.restored == 1 and svc2.replayed == 20
    assert report.snapshot_seq == 30
    store2.close()


def test_journal_bytes_after_a_snapshot_wait_for_slow_segment_cuts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rotated segment is cut to what it holds in a background thread. On a
    # slow disk the snapshot's prune may come first: it must count the bytes
    # the pruned segment held, not its preallocated size on disk.
    retire = j.JournalWriter._retire

    def slow_retire(self: j.JournalWriter, *args: object) -> None:
        time.sleep(0.2)
        retire(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(j.JournalWriter, "_retire", slow_retire)
    data = tmp_path / "data"
    store, svc = fresh(data, keep_snapshots=2, snapshot_on_close=False)
    for round_ in range(4):
        run_ops(store, svc, 10, start=round_ * 10)
        store.snapshot_sync(svc)
    writer = store._commit.writer
    assert writer is not None
    writer.sync()
    *older, _current = segments(data)
    assert len(older) == 1  # the segment after the oldest kept snapshot
    assert store.journal_bytes == sum(p.stat().st_size for p in older) + writer.segment_size
    store.close()


def test_snapshot_prunes_covered_segments_and_old_snapshots(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store, svc = fresh(data, keep_snapshots=2, snapshot_on_close=False)
    sizes = []
    for round_ in range(4):
        run_ops(store, svc, 10, start=round_ * 10)
        store.snapshot_sync(svc)
        sizes.append(store.journal_bytes)
    snaps = [seq for seq, _ in s.list_snapshots(data)]
    assert snaps == [30, 40]
    # segments wholly at or below seq 30 are gone; the one after 30 and the current remain
    firsts = [seq for seq, _ in j.list_segments(data)]
    assert firsts == [31, 41]
    # journal_bytes counts what segments hold; the current one is preallocated
    # on disk and cut to what it holds when closed.
    *older, current = segments(data)
    writer = store._commit.writer
    assert writer is not None
    held = writer.segment_size
    assert store.journal_bytes == sum(p.stat().st_size for p in older) + held
    assert current.stat().st_size == store.segment_bytes > held
    store.close()
    assert current.stat().st_size == held
    store2, svc2, report = reopen(data)
    assert svc2.state() == svc.state()
    assert report.snapshot_seq == 40 and report.records_replayed == 0
    store2.close()


def test_close_takes_a_final_snapshot(tmp_path: Path) -> None:
    async def main() -> CounterService:
        store, svc = fresh(tmp_path)
        for i in range(10):
            svc.incr("a", key=f"k{i}")
            await store.persist(svc)
        svc.incr("b")  # changed but not yet persisted: aclose commits it
        await store.aclose(svc)
        return svc

    svc = asyncio.run(main())
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.snapshot_seq == 11 and report.records_replayed == 0
    store2.close()


def test_segments_rotate_by_size_and_recover_across_them(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, segment_bytes=400)
    run_ops(store, svc, 60)
    assert len(segments(tmp_path)) > 3
    store.close()
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.records_replayed == 60
    store2.close()


def test_restarts_without_writes_do_not_pile_up_segments(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 3)
    store.close()
    for _ in range(3):
        st, _svc, _ = reopen(tmp_path)
        st.close()
    assert len(segments(tmp_path)) == 2
    st, svc2, _ = reopen(tmp_path)
    assert svc2.state() == svc.state()
    st.close()


# -- damage ---------------------------------------------------------------


def last_segment(path: Path) -> Path:
    return segments(path)[-1]


def test_torn_tail_is_cut_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 10)
    store.close()
    seg = segments(tmp_path)[0]
    size = seg.stat().st_size
    os.truncate(seg, size - 5)  # the last record's write was torn by the crash
    with caplog.at_level(logging.WARNING, logger="tiergate.store"):
        store2, svc2, report = reopen(tmp_path)
    assert report.records_replayed == 9
    assert report.truncated_bytes > 0
    assert any("torn or corrupt record at the journal tail" in w for w in report.warnings)
    assert "truncated" in caplog.text and str(seg) in caplog.text
    assert svc2.counts == {k: v for k, v in _replay_first(tmp_path, 9).items()}
    # the cut is durable: a second restart sees a clean journal
    store2.close()
    store3, svc3, report3 = reopen(tmp_path)
    assert report3.warnings == [] and svc3.state() == svc2.state()
    store3.close()


def _replay_first(tmp_path: Path, n: int) -> dict[str, int]:
    ref = CounterService()
    for i in range(n):
        ref.incr(f"r{i % 7}", 1 + i % 3, key=f"k{i}")
    return ref.counts


def test_zeros_after_the_last_record_are_the_journals_clean_end(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 10)
    store.close()
    seg = segments(tmp_path)[0]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(3000))  # preallocated room the process never filled (killed)
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.truncated_bytes == 0 and not report.warnings  # not damage
    assert seg.stat().st_size == size  # but cut back to the records
    store2.close()


def test_garbage_after_the_last_record_is_a_tail(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 10)
    store.close()
    with open(segments(tmp_path)[0], "ab") as f:
        f.write(b"\x07" * 40 + bytes(3000))  # a frame the crash tore, then zeros
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.truncated_bytes == 3040
    store2.close()


def test_flipped_byte_in_the_last_record_is_a_tail(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 10)
    store.close()
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    raw[-2] ^= 0x10
    seg.write_bytes(bytes(raw))
    store2, _svc2, report = reopen(tmp_path)
    assert report.records_replayed == 9
    store2.close()


def flip_middle(tmp_path: Path, record_index: int) -> tuple[Path, int]:
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    off = j.SEGMENT_HEADER_SIZE
    for _ in range(record_index):
        (length,) = struct.unpack_from("<I", raw, off + 4)
        off += j.FRAME_OVERHEAD + length
    raw[off + j.FRAME_OVERHEAD + 3] ^= 0x01
    seg.write_bytes(bytes(raw))
    return seg, off


def test_flipped_byte_inside_the_journal_refuses_to_start(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 20)
    store.close()
    seg, off = flip_middle(tmp_path, 5)
    before = seg.read_bytes()
    with pytest.raises(CorruptJournalError) as info:
        reopen(tmp_path)
    msg = str(info.value)
    assert str(seg) in msg and f"offset {off}" in msg and "--recover-truncate" in msg
    assert info.value.path == seg and info.value.offset == off
    assert seg.read_bytes() == before  # nothing was touched
    # the refused store released its lock: the data dir can be opened again
    with pytest.raises(CorruptJournalError):
        reopen(tmp_path)


def test_recover_truncate_cuts_at_the_corruption_and_keeps_the_rest(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, segment_bytes=600)
    run_ops(store, svc, 40)
    store.close()
    n_segments = len(segments(tmp_path))
    assert n_segments > 2
    _seg, _off = flip_middle(tmp_path, 2)
    store2, svc2, report = reopen(tmp_path, recover_truncate=True)
    assert report.records_replayed == 2
    assert svc2.counts == _replay_first(tmp_path, 2)
    kept = sorted(p.name for p in tmp_path.glob("*.corrupt"))
    assert len(kept) == n_segments  # the cut part of the first segment + every later one
    assert any("--recover-truncate: dropped" in w for w in report.warnings)
    run_ops(store2, svc2, 3, start=100)
    store2.close()
    store3, svc3, report3 = reopen(tmp_path)
    assert svc3.state() == svc2.state() and report3.warnings == []
    store3.close()


def test_missing_segment_is_a_gap_not_a_tail(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, segment_bytes=600)
    run_ops(store, svc, 40)
    store.close()
    segs = segments(tmp_path)
    segs[1].unlink()
    with pytest.raises(CorruptJournalError, match="journal gap: records"):
        reopen(tmp_path)


def test_newer_journal_version_refuses(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 3)
    store.close()
    seg = segments(tmp_path)[0]
    raw = bytearray(seg.read_bytes())
    head = struct.pack("<8sIIQ", j.JOURNAL_MAGIC, 99, 0, 1)
    raw[: j.SEGMENT_HEADER_SIZE] = head + struct.pack("<I", zlib.crc32(head))
    seg.write_bytes(bytes(raw))
    for truncate in (False, True):
        with pytest.raises(FormatVersionError, match="journal format version 99 is newer"):
            reopen(tmp_path, recover_truncate=truncate)
    assert seg.read_bytes() == bytes(raw)


def test_truncated_latest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, keep_snapshots=2, snapshot_on_close=False)
    run_ops(store, svc, 10)
    store.snapshot_sync(svc)
    run_ops(store, svc, 10, start=10)
    store.snapshot_sync(svc)
    run_ops(store, svc, 5, start=20)
    store.close()
    latest = s.list_snapshots(tmp_path)[-1][1]
    os.truncate(latest, latest.stat().st_size - 7)
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.snapshot_seq == 10 and report.records_replayed == 15
    assert any("damaged snapshot" in w for w in report.warnings)
    store2.close()


def test_truncated_snapshot_without_journal_cover_refuses(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, snapshot_on_close=False)
    for round_ in range(3):
        run_ops(store, svc, 10, start=10 * round_)
        store.snapshot_sync(svc)
    store.close()
    (older, _), (_, latest) = s.list_snapshots(tmp_path)
    assert j.list_segments(tmp_path)[0][0] == older + 1
    (tmp_path / s.snapshot_name(older)).unlink()  # lost: the journal before it is gone too
    os.truncate(latest, 30)
    with pytest.raises(CorruptSnapshotError, match="damaged and the journal"):
        reopen(tmp_path)


def flip_payload_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[s.SNAPSHOT_HEADER_SIZE + (len(raw) - s.SNAPSHOT_HEADER_SIZE) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_damaged_first_snapshot_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    """The first snapshot of a data dir (a graceful stop's) keeps the journal before it:
    with one flipped byte in it, every change comes back from the journal."""

    async def first_run() -> CounterService:
        store, svc = fresh(tmp_path)
        for i in range(25):
            svc.incr(f"r{i % 4}", key=f"k{i}")
            await store.persist(svc)
        await store.aclose(svc)  # graceful stop: the data dir's only snapshot
        return svc

    svc = asyncio.run(first_run())
    ((seq, snap),) = s.list_snapshots(tmp_path)
    assert seq == 25
    assert j.list_segments(tmp_path)[0][0] == 1
    flip_payload_byte(snap)
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert report.snapshot_path is None and report.records_replayed == 25
    assert any("damaged snapshot" in w for w in report.warnings)
    assert not snap.exists() and snap.with_name(snap.name + ".corrupt").exists()
    store2.close()


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before_again_and_again(
    tmp_path: Path,
) -> None:
    store, svc = fresh(tmp_path, snapshot_on_close=False)
    run_ops(store, svc, 10)
    store.snapshot_sync(svc)
    run_ops(store, svc, 10, start=10)
    store.snapshot_sync(svc)
    run_ops(store, svc, 5, start=20)
    store.close()
    flip_payload_byte(s.list_snapshots(tmp_path)[-1][1])
    store, svc2, report = reopen(tmp_path, snapshot_on_close=False)
    assert svc2.state() == svc.state()
    assert report.snapshot_seq == 10 and report.records_replayed == 15
    # The damaged one no longer counts as a snapshot: the next one keeps seq 10's
    # snapshot and the journal after it, so damage to it falls back once more.
    run_ops(store, svc2, 5, start=25)
    store.snapshot_sync(svc2)
    store.close()
    assert [seq for seq, _ in s.list_snapshots(tmp_path)] == [10, 30]
    flip_payload_byte(s.list_snapshots(tmp_path)[-1][1])
    store, svc3, report = reopen(tmp_path)
    assert svc3.state() == svc2.state()
    assert report.snapshot_seq == 10 and report.records_replayed == 20
    store.close()


def test_one_snapshot_drops_no_journal_two_drop_what_the_older_covers(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path, snapshot_on_close=False)
    run_ops(store, svc, 10)
    store.snapshot_sync(svc)
    assert [first for first, _ in j.list_segments(tmp_path)] == [1, 11]
    run_ops(store, svc, 10, start=10)
    store.snapshot_sync(svc)
    assert [first for first, _ in j.list_segments(tmp_path)] == [11, 21]
    store.close()


def test_damaged_only_snapshot_with_full_journal_rebuilds_from_the_start(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 10)
    # a snapshot was written but the journal from seq 1 is still complete
    s.write_snapshot(tmp_path, 10, b"{broken")
    raw = (tmp_path / s.snapshot_name(10)).read_bytes()
    (tmp_path / s.snapshot_name(10)).write_bytes(raw[:-1])
    store.close()
    store2, svc2, report = reopen(tmp_path)
    assert svc2.state() == svc.state() and report.snapshot_path is None
    store2.close()


def test_newer_snapshot_version_refuses(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 3)
    store.snapshot_sync(svc)
    store.close()
    path = s.list_snapshots(tmp_path)[-1][1]
    raw = path.read_bytes()
    payload = raw[s.SNAPSHOT_HEADER_SIZE :]
    head = struct.pack("<8sIIQQI", s.SNAPSHOT_MAGIC, 7, 0, 3, len(payload), zlib.crc32(payload))
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + payload)
    with pytest.raises(FormatVersionError, match="snapshot format version 7"):
        reopen(tmp_path)


def test_interrupted_snapshot_write_is_ignored(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 4)
    store.close()
    (tmp_path / (s.snapshot_name(4) + s.TMP_SUFFIX)).write_bytes(b"half a snapshot")
    store2, svc2, _ = reopen(tmp_path)
    assert svc2.state() == svc.state()
    assert not list(tmp_path.glob("*.tmp"))
    store2.close()


def test_restore_failure_names_the_snapshot(tmp_path: Path) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 2)
    store.snapshot_sync(svc)
    store.close()
    path = s.list_snapshots(tmp_path)[-1][1]
    s.write_snapshot(tmp_path, 2, b'{"v": 9, "counts": {}, "keys": {}}')
    with pytest.raises(StoreError, match=r"could not restore it: snapshot version 9"):
        reopen(tmp_path)
    assert path.exists()


# -- the data directory ---------------------------------------------------


def test_data_dir_under_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(DataDirError, match="cannot be created"):
        open_store(blocker / "data")


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="is not a directory"):
        open_store(f)


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    # /proc/self is a directory nobody (root included) can create files in
    with pytest.raises(DataDirError, match="not writable"):
        open_store(Path("/proc/self"))


def test_second_store_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    store, _ = fresh(tmp_path)
    with pytest.raises(
        DataDirError, match=rf"in use by another tiergate process \(pid {os.getpid()}\)"
    ):
        open_store(tmp_path)
    store.close()
    open_store(tmp_path).close()


def test_missing_data_dir_is_created(tmp_path: Path) -> None:
    store, _ = fresh(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "LOCK").exists()
    store.close()


def test_commit_before_recover_and_after_close_are_errors(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StoreError, match="recover"):
        store.commit_sync([b"x"])
    store.recover(CounterService())
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.commit_sync([b"x"])


def test_write_failure_fails_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 2)

    writer = store._commit.writer
    assert writer is not None
    writer.capacity = writer.segment_size  # the segment is full: the next write starts one

    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(j.os, "posix_fallocate", broken)
    svc.incr("z")
    with pytest.raises(StoreFailedError, match="Input/output error"):
        store.commit_sync(svc.drain_journal())
    monkeypatch.undo()
    with pytest.raises(StoreFailedError):  # nothing more is acknowledged
        store.commit_sync([])
    store.close()


def test_a_full_disk_is_unavailable_until_there_is_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, svc = fresh(tmp_path)
    run_ops(store, svc, 2)
    writer = store._commit.writer
    assert writer is not None
    writer.capacity = writer.segment_size

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(j.os, "posix_fallocate", full)
    svc.incr("z")
    with pytest.raises(StoreUnavailableError, match="no space left on device"):
        store.commit_sync(svc.drain_journal())
    svc.incr("y")
    with pytest.raises(StoreUnavailableError):  # kept behind the first, still no space
        store.commit_sync(svc.drain_journal())
    monkeypatch.undo()
    store.commit_sync([])  # written now, in order
    assert store.unavailable is None
    store.close()
    store2, svc2, _ = reopen(tmp_path)
    assert svc2.state() == svc.state()
    store2.close()


def test_a_segment_is_smaller_when_the_disk_is_short_of_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fallocate = os.posix_fallocate

    def short(fd: int, offset: int, length: int) -> None:
        if length > 300_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        fallocate(fd, offset, length)

    monkeypatch.setattr(j.os, "posix_fallocate", short)
    store, svc = fresh(tmp_path)  # segment_bytes 16 MiB: halved to 256 KiB
    writer = store._commit.writer
    assert writer is not None and writer.capacity == 256 << 10
    assert "short of space" in caplog.text
    run_ops(store, svc, 5_000)  # rotates through small segments
    assert len(segments(tmp_path)) > 1
    store.close()
    store2, svc2, _ = reopen(tmp_path)
    assert svc2.state() == svc.state()
    store2.close()


def test_no_space_for_the_least_segment_is_a_clear_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(j.os, "posix_fallocate", full)
    with pytest.raises(StoreError, match=r"no space left on device for the journal") as info:
        fresh(tmp_path)
    assert str(tmp_path) in str(info.value) and "65536 bytes" in str(info.value)
    assert not segments(tmp_path)
    monkeypatch.undo()
    fresh(tmp_path)[0].close()  # the lock was released


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability: unknown value 'sometimes'"):
        open_store(tmp_path, durability="sometimes")
    with pytest.raises(ValueError, match="fsync_interval_ms"):
        open_store(tmp_path, fsync_interval_ms=0)
    with pytest.raises(ValueError, match="keep_snapshots: must be >= 2"):
        open_store(tmp_path, keep_snapshots=1)
