"""The journal writer's segments: preallocated and mapped, rotated when full, cut
to what they hold when closed; what a killed writer leaves is read back whole."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def test_what_a_killed_writer_copied_is_on_disk(tmp_path: Path) -> None:
    # The records are copied into the shared mapping, never written with a
    # system call: they survive SIGKILL in the page cache all the same.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from tiergate.store import journal as j
        writer = j.JournalWriter(Path({str(tmp_path)!r}), 1, {SEGMENT})
        for i in range(300):
            data = writer.encode([b"record %d" % i])
            writer.write(data, writer.next_seq - 1)
        sys.stdout.write("written\\n")
        sys.stdout.flush()
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == b"written\n", proc.stderr
    *closed, (_, last) = j.list_segments(tmp_path)
    assert last.stat().st_size == SEGMENT  # never cut: it ends in zeros
    assert read_back(tmp_path) == [(i + 1, b"record %d" % i) for i in range(300)]
    # Segments rotated out were cut at the end of their last record.
    assert closed and all(p.read_bytes()[-1] != 0 for _, p in closed)


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
