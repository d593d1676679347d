"""The append-only journal: segment files of checksummed, sequenced records.

Segment file ``journal-<first seq, 20 digits>.tgj``::

    header  magic b"\\x89TGJRNL\\n" | version u32 | flags u32 | first_seq u64 | crc32 u32
    frame   crc32 u32 | length u32 | seq u64 | payload (length bytes)
    frame   ...

All integers are little-endian. A frame's CRC-32 covers its length, sequence
number and payload, so a torn write, a flipped byte or a stale length is
caught. Sequence numbers run on across segments without gaps; a snapshot
names the last sequence number it covers.

The current segment is preallocated (``posix_fallocate``, so a full disk
fails when a segment is started, never in the middle of a write) and mapped
shared into memory: appending a commit's records is one copy into the page
cache, no system call, and survives the process being killed as a ``write``
does. Whether and when it is fsynced is the store's durability setting. A
segment is cut to the bytes it holds when it is closed or rotated; after a
crash the last one ends in zeros, which recovery reads as its clean end.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .base import StoreError
from .files import SealedHeader, fsync_dir, list_numbered, pwrite_all, write_all

log = logging.getLogger("tiergate.store")

JOURNAL_MAGIC = b"\x89TGJRNL\n"
JOURNAL_VERSION = 1
SEGMENT_SUFFIX = ".tgj"
_SEGMENT_RE = re.compile(r"^journal-(\d{20})\.tgj$")


class BadSegmentHeader(Exception):
    """A segment header that is short or fails its checksum (reason in str())."""


_SEGMENT_HEADER = SealedHeader(
    struct.Struct("<8sIIQ"),  # magic, version, flags, first_seq
    JOURNAL_MAGIC,
    JOURNAL_VERSION,
    kind="journal segment",
    format="journal",
    bad=BadSegmentHeader,
)
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size  # 28

_FRAME = struct.Struct("<IIQ")  # crc, length, seq
FRAME_OVERHEAD = _FRAME.size  # 16
_LEN_SEQ = struct.Struct("<IQ")
_SEQ = struct.Struct("<Q")

#: Largest record accepted; a longer length field is corruption, not a record.
MAX_RECORD_BYTES = 64 << 20
#: How far past the expected sequence number a frame found after a bad one may be.
_SEQ_SLACK = 1 << 32

#: Writes this large go to the segment with ``pwrite`` instead of a copy into
#: its mapping. Every page written through the mapping costs the loop thread a
#: page fault, and every fsync write-protects the dirty mapped pages again with
#: one TLB-flush interrupt of that thread per page (then another fault): a batch
#: of 1 000 admits (about 50 KB) paid that a dozen times. Pages written with
#: ``pwrite`` are in the page cache only, never mapped. Small writes (one
#: unary Admit's record, ~70 bytes) stay a plain copy, no system call.
DIRECT_WRITE_BYTES = 4096


def segment_name(first_seq: int) -> str:
    return f"journal-{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segments in ``directory`` by first sequence number."""
    return list_numbered(directory, _SEGMENT_RE)


def encode_segment_header(first_seq: int) -> bytes:
    return _SEGMENT_HEADER.encode(0, first_seq)


def decode_segment_header(data: bytes, path: Path) -> int:
    """Validate a segment header and return its first sequence number.

    Raises ``FormatVersionError`` for a newer format (never truncated away)
    and ``BadSegmentHeader`` for a short or damaged header.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise BadSegmentHeader(f"header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    version, _flags, first_seq = _SEGMENT_HEADER.decode(data, path)
    if version < 1:
        raise BadSegmentHeader(f"invalid format version {version}")
    return int(first_seq)


def encode_frames(records: Sequence[bytes], first_seq: int) -> bytes:
    """Frame ``records`` with sequence numbers ``first_seq, first_seq + 1, ...``."""
    crc32 = zlib.crc32
    pack_ls = _LEN_SEQ.pack
    pack_frame = _FRAME.pack
    if len(records) == 1:  # the common case: one decision per call
        rec = records[0]
        n = len(rec)
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"journal record of {n} bytes exceeds {MAX_RECORD_BYTES}")
        return pack_frame(crc32(rec, crc32(pack_ls(n, first_seq))), n, first_seq) + rec
    parts: list[bytes] = []
    append = parts.append
    seq = first_seq
    for rec in records:
        n = len(rec)
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"journal record of {n} bytes exceeds {MAX_RECORD_BYTES}")
        append(pack_frame(crc32(rec, crc32(pack_ls(n, seq))), n, seq))
        append(rec)
        seq += 1
    return b"".join(parts)


def _frame_at(data: bytes, off: int) -> tuple[int, int] | None:
    """(seq, length) of a complete frame with a valid checksum at ``off``, else None."""
    end = len(data)
    if off + FRAME_OVERHEAD > end:
        return None
    crc, length, seq = _FRAME.unpack_from(data, off)
    if length > MAX_RECORD_BYTES or off + FRAME_OVERHEAD + length > end:
        return None
    body = memoryview(data)[off + 4 : off + FRAME_OVERHEAD + length]
    if zlib.crc32(body) != crc:
        return None
    return int(seq), int(length)


def find_valid_frame(data: bytes, start: int, min_seq: int) -> int | None:
    """Offset of the first valid frame at or after ``start`` whose sequence number is
    plausible (``min_seq`` .. ``min_seq + 2**32``), or None.

    Used only after a bad frame, to tell a torn tail (nothing valid follows)
    from corruption inside the journal (valid records follow).
    """
    unpack_seq = _SEQ.unpack_from
    hi = min_seq + _SEQ_SLACK
    # A frame holds nonzero bytes (its sequence number), so none starts in a
    # zero tail: a segment preallocated to megabytes is not searched byte by byte.
    last = min(len(data) - FRAME_OVERHEAD, len(data.rstrip(b"\0")) - 1)
    off = start
    while off <= last:
        (seq,) = unpack_seq(data, off + 8)
        if min_seq <= seq < hi and _frame_at(data, off) is not None:
            return off
        off += 1
    return None


@dataclass(slots=True)
class SegmentScan:
    """Where and why reading a segment stopped early (``bad_offset is None``: it did not)."""

    path: Path
    size: int
    end_offset: int = 0  # end of the last good frame
    last_seq: int = 0  # seq of the last good frame (first_seq - 1 if none)
    bad_offset: int | None = None
    bad_reason: str = ""
    valid_after: int | None = None  # offset of a valid frame after the bad one
    zero_tail: int | None = None  # offset where only zeros follow (a preallocated end)


def zero_from(data: bytes, off: int) -> bool:
    """Whether every byte of ``data`` from ``off`` on is zero."""
    return data.count(0, off) == len(data) - off


def iter_frames(
    data: bytes, path: Path, first_seq: int, scan: SegmentScan
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(seq, payload_start, payload_end)`` for each good frame of a segment.

    Stops at the first bad frame and records it in ``scan`` (including whether a
    valid frame follows it inside this segment).
    """
    off = SEGMENT_HEADER_SIZE
    end = len(data)
    expected = first_seq
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    scan.end_offset = off
    scan.last_seq = first_seq - 1
    while off < end:
        reason = ""
        # A frame header of zeros (a real one has a sequence number) starts
        # either the preallocated rest of the segment or damage.
        zero_header = data.count(0, off, off + FRAME_OVERHEAD) == min(FRAME_OVERHEAD, end - off)
        if zero_header and zero_from(data, off):
            scan.zero_tail = off  # the unused, preallocated rest of the segment
            return
        if off + FRAME_OVERHEAD > end:
            reason = f"torn frame header ({end - off} of {FRAME_OVERHEAD} bytes)"
        else:
            crc, length, seq = unpack(data, off)
            stop = off + FRAME_OVERHEAD + length
            if length > MAX_RECORD_BYTES:
                reason = f"implausible record length {length}"
            elif stop > end:
                reason = f"torn record ({end - off - FRAME_OVERHEAD} of {length} payload bytes)"
            elif crc32(view[off + 4 : stop]) != crc:
                reason = "checksum mismatch"
            elif seq != expected:
                reason = f"sequence number {seq}, expected {expected}"
        if reason:
            scan.bad_offset = off
            scan.bad_reason = reason
            scan.valid_after = find_valid_frame(data, off + 1, expected)
            return
        yield seq, off + FRAME_OVERHEAD, stop
        expected += 1
        off = stop
        scan.end_offset = off
        scan.last_seq = seq


_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}

#: The smallest segment started when the disk is short of space: a segment is
#: made as large as ``segment_bytes`` if the space is there, else halved until
#: it fits, down to this (or to what one write needs, if that is more).
MIN_SEGMENT_BYTES = 64 << 10


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system is full (or the quota used up)."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for the file: a full disk fails here, with an
    error the store reports, rather than as SIGBUS on a write through the mapping.
    Where the system or file system cannot (no ``posix_fallocate`` on macOS), the
    file is only extended; a full disk then ends the process at a copy, before
    that decision is acknowledged."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:
                raise
            log.warning("journal: cannot preallocate segments here (%s); extending them", exc)
    os.ftruncate(fd, size)


class JournalWriter:
    """Appends framed records to the current segment, rotating when it is full.

    The segment is preallocated to ``segment_bytes`` (more if one write needs
    more) and mapped; a write is a copy into the mapping, or one ``pwrite`` from
    ``DIRECT_WRITE_BYTES`` up. ``write``, ``rotate``
    and ``close`` are called by one thread at a time (the store serialises
    them); ``sync`` may run concurrently from the fsync thread, so it and the
    calls that swap the segment share a lock.

    A rotation only swaps mappings: the full segment is cut, fsynced and
    closed, and the new one's file and directory entry fsynced, by a
    background thread, in rotation order. A rotation is a write that lands
    on the event loop thread, and that fsync took ~9 ms with fsync-interval
    and ~65 ms with write (16 MiB of dirty pages) on the project's machine:
    a stall of every call in flight. Records are acknowledged once copied
    into the mapping (write, fsync-interval) or after ``sync``, which waits
    for that background work first (fsync-always); an error in it fails the
    writer (``error``) as a failed fsync would.
    """

    def __init__(self, directory: Path, next_seq: int, segment_bytes: int) -> None:
        if segment_bytes < SEGMENT_HEADER_SIZE + FRAME_OVERHEAD:
            raise ValueError("segment_bytes is too small")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.next_seq = next_seq  # seq the next encoded record gets
        self.written_seq = next_seq - 1  # last seq handed to write()
        self._lock = threading.Lock()
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._dirty = False
        self.path: Path | None = None
        self.segment_size = 0  # bytes written to the current segment (its used part)
        self.capacity = 0  # bytes preallocated and mapped for the current segment
        self.older_bytes = 0  # bytes of the other segments still on disk
        self.writes = 0
        self.fsyncs = 0
        self.error: OSError | None = None  # from the background segment work
        self._segments: ThreadPoolExecutor | None = None
        self._segment_work: list[Future[None]] = []
        self._open_segment(next_seq, 0)
        self._sync_new_segment(self._fd)

    @property
    def total_bytes(self) -> int:
        return self.older_bytes + self.segment_size

    def encode(self, records: Sequence[bytes]) -> bytes:
        """Frame ``records`` with the next sequence numbers (assigned now, in call order)."""
        data = encode_frames(records, self.next_seq)
        self.next_seq += len(records)
        return data

    def _sizes(self, need: int) -> Iterator[int]:
        """Segment sizes to try for a segment that must hold ``need`` bytes of frames:
        ``segment_bytes`` (or more, for a bigger write), then halves down to
        ``MIN_SEGMENT_BYTES`` (or ``need``), for a disk short of space."""
        size = max(self.segment_bytes, SEGMENT_HEADER_SIZE + need)
        least = max(min(self.segment_bytes, MIN_SEGMENT_BYTES), SEGMENT_HEADER_SIZE + need)
        yield size
        while size > least:
            size = max(least, size // 2)
            yield size

    def _open_segment(self, first_seq: int, need: int) -> None:
        """Start the segment ``first_seq`` with its disk space reserved before it is
        mapped (a write through a mapping the file system cannot back is a SIGBUS,
        not an error). Smaller when the space is short; ENOSPC when even the
        least (``_sizes``) does not fit, and then nothing is left behind."""
        path = self.directory / segment_name(first_seq)
        sizes = self._sizes(need)
        wanted = size = next(sizes)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, encode_segment_header(first_seq))
                _preallocate(fd, size)
                mapped = mmap.mmap(fd, size)
                break
            except BaseException as exc:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()
                smaller = next(sizes, None) if no_space(exc) else None
                if smaller is None:
                    raise
                size = smaller
        if size < wanted:
            log.warning(
                "journal: %s is short of space: started %s with room for %d bytes, not %d",
                self.directory,
                path.name,
                size,
                wanted,
            )
        self._fd = fd
        self._map = mapped
        self.path = path
        self.segment_size = SEGMENT_HEADER_SIZE
        self.capacity = size

    def _grow_empty(self, need: int) -> None:
        """Give the current, empty segment room for ``need`` bytes of frames, in place
        (its name is the first sequence number the write gets). If the space is not
        there, the segment stays as it was."""
        assert self._map is not None and self.segment_size == SEGMENT_HEADER_SIZE
        short: OSError | None = None
        for size in self._sizes(need):
            try:
                _preallocate(self._fd, size)
            except OSError as exc:
                if not no_space(exc):
                    raise
                short = exc
                continue
            mapped = mmap.mmap(self._fd, size)
            self._map.close()
            self._map = mapped
            self.capacity = size
            return
        assert short is not None
        raise short

    def write(self, data: bytes, last_seq: int) -> None:
        """Append already-framed records ending at ``last_seq`` (one copy or one pwrite)."""
        n = len(data)
        if not n:
            return
        if self.segment_size + n > self.capacity:
            self.rotate(n)
        at = self.segment_size
        if n >= DIRECT_WRITE_BYTES:
            pwrite_all(self._fd, data, at)
        else:
            mapped = self._map
            assert mapped is not None
            mapped[at : at + n] = data
        self.segment_size = at + n
        self.written_seq = last_seq
        self.writes += 1
        self._dirty = True

    def sync(self) -> None:
        """fsync the current segment if anything was written since the last fsync,
        after the background work of earlier rotations (their segments cut and
        fsynced, the new segment's directory entry fsynced).

        ``os.fsync`` writes back the pages written through the mapping (and,
        unlike ``mmap.flush``, lets other threads run meanwhile).
        """
        self.wait_segment_work()
        with self._lock:
            if self._dirty and self._fd >= 0:
                self._dirty = False
                os.fsync(self._fd)
                self.fsyncs += 1

    def _sync_new_segment(self, fd: int) -> None:
        """Make a new segment's header and directory entry durable."""
        os.fsync(fd)
        fsync_dir(self.directory)

    def _retire(self, mapped: mmap.mmap, fd: int, size: int) -> None:
        """Cut a segment to the bytes written, fsync and close it."""
        try:
            mapped.close()
            os.ftruncate(fd, size)
            os.fsync(fd)
            self.fsyncs += 1
        finally:
            os.close(fd)

    def _rotation_work(self, mapped: mmap.mmap, fd: int, size: int, new_fd: int) -> None:
        # Runs in the segment thread, in rotation order: ``new_fd`` stays open
        # until the next rotation's work (after this) or close() (which waits).
        try:
            self._retire(mapped, fd, size)
            self._sync_new_segment(new_fd)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            log.error("journal: finishing a rotated segment failed: %s", exc)
            raise

    def wait_segment_work(self) -> None:
        """Wait for the background work queued so far; raise its first error."""
        with self._lock:
            pending, self._segment_work = self._segment_work, []
        for fut in pending:
            with contextlib.suppress(OSError):
                fut.result()
        if self.error is not None:
            raise self.error

    def _finish_segment(self) -> None:
        """Unmap the current segment, cut it to the bytes written, fsync and close it."""
        mapped, self._map = self._map, None
        fd, self._fd = self._fd, -1
        self._dirty = False
        if mapped is not None:
            self._retire(mapped, fd, self.segment_size)
        elif fd >= 0:
            os.close(fd)

    def rotate(self, need: int = 0) -> None:
        """Start a new segment at the next sequence number, with room for at least
        ``need`` bytes of frames; the full one is finished in the background."""
        with self._lock:
            empty = self.segment_size <= SEGMENT_HEADER_SIZE
            if empty and need <= self.capacity - self.segment_size:
                return  # nothing in it yet: keep appending here
            if self.error is not None:
                raise self.error
            if not empty:
                mapped, fd, size = self._map, self._fd, self.segment_size
                assert mapped is not None
                # The new segment first: if it cannot be made (a full disk),
                # the current one stays as it is.
                self._open_segment(self.written_seq + 1, need)
                self.older_bytes += size
                self._dirty = False
                if self._segments is None:
                    self._segments = ThreadPoolExecutor(1, thread_name_prefix="tiergate-segments")
                # Finished work is dropped here (its error, if any, stays in
                # ``error``), so the list stays short when nothing calls sync().
                self._segment_work = [f for f in self._segment_work if not f.done()]
                self._segment_work.append(
                    self._segments.submit(self._rotation_work, mapped, fd, size, self._fd)
                )
                return
        # Empty but too small for one write: it grows to fit, once no background
        # work holds its file descriptor.
        self.wait_segment_work()
        with self._lock:
            self._grow_empty(need)

    def close(self) -> None:
        try:
            if self._segments is not None:
                self._segments.shutdown(wait=True)
                self._segments = None
        finally:
            with self._lock:
                if self._fd >= 0:
                    self._finish_segment()
        self.wait_segment_work()


class IntervalFlusher:
    """Background thread: fsync the journal at most every ``interval_s`` seconds."""

    def __init__(self, writer: JournalWriter, interval_s: float) -> None:
        self._writer = writer
        self._interval = interval_s
        self._stop = threading.Event()
        self.error: OSError | None = None
        self._thread = threading.Thread(
            target=self._run, name="tiergate-journal-fsync", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._writer.sync()
            except OSError as exc:  # reported to the next commit; nothing more is acknowledged
                self.error = exc
                log.error("journal fsync failed: %s", exc)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def read_segment(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read journal segment: {exc}") from exc
