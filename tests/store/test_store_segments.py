"""The journal writer's segments: preallocated and mapped, rotated when full, cut
to what they hold when closed; what a killed writer leaves is read back whole."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from store_double import CounterService

from tiergate.store import EmbeddedStore, StoreFailedError
from tiergate.store import journal as j

SEGMENT = 4096


def read_back(directory: Path) -> list[tuple[int, bytes]]:
    """Every record of every segment in order, checking that none is damaged."""
    out: list[tuple[int, bytes]] = []
    for first, path in j.list_segments(directory):
        data = path.read_bytes()
        scan = j.SegmentScan(path=path, size=len(data))
        out += [(seq, data[a:b]) for seq, a, b in j.iter_frames(data, path, first, scan)]
        assert scan.bad_offset is None, scan
    return out


def write(writer: j.JournalWriter, records: list[bytes]) -> None:
    data = writer.encode(records)
    writer.write(data, writer.next_seq - 1)


def test_segments_are_preallocated_rotated_when_full_and_cut_when_closed(tmp_path: Path) -> None:
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    assert writer.path is not None and writer.path.stat().st_size == SEGMENT
    records = [bytes([i % 251 + 1]) * (i % 90 + 1) for i in range(400)]
    for i in range(0, 400, 4):
        write(writer, records[i : i + 4])
    writer.close()
    segments = j.list_segments(tmp_path)
    assert len(segments) > 5
    sizes = [p.stat().st_size for _, p in segments]
    assert all(size <= SEGMENT for size in sizes)
    assert sum(sizes) == writer.total_bytes  # closed segments hold no unused room
    assert read_back(tmp_path) == list(enumerate(records, start=1))


def test_a_write_bigger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    big = b"x" * (3 * SEGMENT)
    write(writer, [big])  # the empty first segment is replaced by a bigger one
    write(writer, [b"small"])
    write(writer, [big, big])
    writer.close()
    assert [first for first, _ in j.list_segments(tmp_path)] == [1, 2, 3]
    assert read_back(tmp_path) == [(1, big), (2, b"small"), (3, big), (4, big)]


def test_rotate_on_an_empty_segment_keeps_it(tmp_path: Path) -> None:
    writer = j.JournalWriter(tmp_path, 7, SEGMENT)
    writer.rotate()
    write(writer, [b"a"])
    writer.rotate()
    writer.rotate()
    write(writer, [b"b"])
    writer.close()
    assert [first for first, _ in j.list_segments(tmp_path)] == [7, 8]
    assert read_back(tmp_path) == [(7, b"a"), (8, b"b")]


def test_small_and_large_writes_interleave_on_the_same_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes from DIRECT_WRITE_BYTES up go in with pwrite, smaller ones are
    # copied into the mapping; both land in the same page cache pages, in order.
    calls: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        calls.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(j.os, "pwrite", pwrite)
    writer = j.JournalWriter(tmp_path, 1, 1 << 20)
    edge = j.DIRECT_WRITE_BYTES - j.FRAME_OVERHEAD
    sizes = [1, edge - 1, edge, 70, 3 * edge + 5, 2, edge + 1, 500, 9000, 3]
    records = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    for rec in records:
        write(writer, [rec])
    assert calls == [n + j.FRAME_OVERHEAD for n in sizes if n >= edge]
    write(writer, [b"a" * 100] * 50)  # many small records framed as one large write
    assert calls[-1] == 50 * (100 + j.FRAME_OVERHEAD)
    writer.close()
    expected = [*records, *[b"a" * 100] * 50]
    assert read_back(tmp_path) == list(enumerate(expected, start=1))


def test_a_short_pwrite_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        return real_pwrite(fd, memoryview(data)[:1000], offset)  # at most 1000 bytes a call

    monkeypatch.setattr(j.os, "pwrite", pwrite)
    writer = j.JournalWriter(tmp_path, 1, 1 << 20)
    big = bytes(range(256)) * 40
    write(writer, [b"before"])
    write(writer, [big])
    write(writer, [b"after"])
    writer.close()
    assert read_back(tmp_path) == [(1, b"before"), (2, big), (3, b"after")]


@pytest.mark.parametrize("size", [8, 6000], ids=["copied", "pwritten"])
def test_what_a_killed_writer_wrote_is_on_disk(tmp_path: Path, size: int) -> None:
    # Small records are copied into the shared mapping, large ones written with
    # pwrite: both are in the page cache at once and survive SIGKILL.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from tiergate.store import journal as j
        writer = j.JournalWriter(Path({str(tmp_path)!r}), 1, {SEGMENT if size < 100 else 1 << 20})
        for i in range(300):
            data = writer.encode([(b"record %d " % i).ljust({size}, b"x")])
            writer.write(data, writer.next_seq - 1)
        sys.stdout.write("written\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == b"written\n", proc.stderr
    *closed, (_, last) = j.list_segments(tmp_path)
    assert last.stat().st_size == (SEGMENT if size < 100 else 1 << 20)  # never cut: zeros end it
    assert read_back(tmp_path) == [
        (i + 1, (b"record %d " % i).ljust(size, b"x")) for i in range(300)
    ]
    # A segment rotated out is cut by the segment thread; one whose cut was still
    # queued ends in the zeros of its preallocated room, which recovery cuts.
    assert closed


class GatedRetire:
    """Holds the segment thread's work on rotated-out segments until opened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        real = j.JournalWriter._retire

        def retire(writer: j.JournalWriter, mapped: Any, fd: int, size: int) -> None:
            self.started.set()
            assert self.gate.wait(30)
            if fail is not None:
                os.close(fd)
                raise fail
            real(writer, mapped, fd, size)

        monkeypatch.setattr(j.JournalWriter, "_retire", retire)


def fill_first_segment(writer: j.JournalWriter) -> Path:
    """Write until the first segment is full and the next write rotates; its path."""
    first = writer.path
    assert first is not None
    while writer.path == first:
        write(writer, [b"r" * 200])
    return first


def test_a_rotation_does_not_wait_for_the_full_segments_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cut and fsync of the full segment (~65 ms for 16 MiB written with
    # durability=write) used to run inside the write that rotated, on the
    # event loop thread; now that write only swaps mappings.
    held = GatedRetire(monkeypatch)
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    first = fill_first_segment(writer)
    assert held.started.wait(30)  # the segment thread has the full segment ...
    write(writer, [b"after"])  # ... and writes go on into the new one meanwhile
    assert first.stat().st_size == SEGMENT  # not cut yet
    held.gate.set()
    writer.sync()  # waits for the segment thread's work, then fsyncs the new segment
    assert first.stat().st_size < SEGMENT and first.read_bytes()[-1] != 0
    writer.close()
    records = read_back(tmp_path)
    assert records[-1][1] == b"after" and [seq for seq, _ in records] == list(
        range(1, len(records) + 1)
    )


def test_a_failed_fsync_of_a_rotated_segment_fails_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = GatedRetire(monkeypatch, fail=OSError(errno.EIO, "Input/output error"))
    held.gate.set()
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    fill_first_segment(writer)
    with pytest.raises(OSError, match="Input/output error"):
        writer.sync()
    assert writer.error is not None
    with pytest.raises(OSError, match="Input/output error"):
        writer.rotate()
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()


def test_the_store_fails_when_a_rotated_segment_cannot_be_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # durability=write never calls sync(): the next commit finds the error.
    held = GatedRetire(monkeypatch, fail=OSError(errno.EIO, "Input/output error"))
    held.gate.set()
    store = EmbeddedStore.open(tmp_path, "write", segment_bytes=SEGMENT)
    svc = CounterService()
    store.recover(svc)
    with pytest.raises(StoreFailedError, match="Input/output error"):
        for i in range(200):
            svc.incr("a", by=i)
            store.commit_sync(svc.drain_journal())
            writer = store._commit.writer
            assert writer is not None
            for fut in list(writer._segment_work):
                with contextlib.suppress(OSError):
                    fut.result()
    with contextlib.suppress(OSError):
        store.close()


def test_recovery_cuts_a_rotated_segment_whose_cut_was_still_queued(tmp_path: Path) -> None:
    # Killed with the segment thread's work still queued: every rotated-out
    # segment ends in zeros; recovery replays them all and cuts them.
    script = textwrap.dedent(
        f"""
        import os, sys, threading
        from pathlib import Path
        from tiergate.store import journal as j
        from tiergate.store.embedded import EmbeddedStore
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from store_double import CounterService
        never = threading.Event()
        j.JournalWriter._retire = lambda *args: never.wait()
        store = EmbeddedStore.open(Path({str(tmp_path)!r}), "write", segment_bytes={SEGMENT})
        svc = CounterService()
        store.recover(svc)
        for i in range(300):
            svc.incr("n", key="k%d" % i)
            store.commit_sync(svc.drain_journal())
        sys.stdout.write("written\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == b"written\n", proc.stderr
    segments = j.list_segments(tmp_path)
    assert len(segments) > 3
    assert all(p.stat().st_size == SEGMENT for _, p in segments)  # none was cut
    store = EmbeddedStore.open(tmp_path, "write", segment_bytes=SEGMENT)
    svc = CounterService()
    report = store.recover(svc)
    assert svc.counts == {"n": 300} and len(svc.keys) == 300
    assert not report.warnings
    assert all(p.stat().st_size < SEGMENT for _, p in segments)  # cut to their records
    store.close()


def test_without_preallocation_segments_are_extended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(j.os, "posix_fallocate", unsupported)
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    assert writer.path is not None and writer.path.stat().st_size == SEGMENT
    write(writer, [b"a" * 5000])  # a new, bigger segment, extended as well
    writer.close()
    assert read_back(tmp_path) == [(1, b"a" * 5000)]
    assert "cannot preallocate" in caplog.text


def test_a_full_disk_fails_when_a_segment_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = j.JournalWriter(tmp_path, 1, SEGMENT)
    write(writer, [b"x" * 1000])

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(j.os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space left"):
        write(writer, [b"y" * 4000])
    assert [first for first, _ in j.list_segments(tmp_path)] == [1]  # no half-made segment
    assert read_back(tmp_path) == [(1, b"x" * 1000)]
