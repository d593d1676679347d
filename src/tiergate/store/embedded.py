"""The embedded store: journal + snapshots in a local data directory.

Life cycle (the server does exactly this)::

    store = EmbeddedStore.open(data_dir, "fsync-interval", fsync_interval_ms=50)
    report = store.recover(service)          # snapshot -> restore, journal -> replay
    ...
    result = service.admit(req, now_ms)      # changes state, queues journal records
    await store.persist(service)             # written; acknowledge only after this
    ...
    await store.aclose(service)              # last records, final snapshot, fsync, unlock

``persist`` is ``commit(service.drain_journal())`` plus a background snapshot
when one is due. With ``write`` and ``fsync-interval`` a commit copies its
records into the journal's mapped segment before it returns (no system call,
nothing to await: ``persist_nowait`` returns None). With ``fsync-always``
every commit issued in the same event-loop iteration shares one write and
one fsync in a worker thread, during which the next group gathers.

A snapshot cuts the journal and takes the service's state image in one step
of the event loop; the snapshot thread encodes and writes it meanwhile. No
process is forked (the server runs gRPC's threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from .base import (
    CorruptJournalError,
    CorruptSnapshotError,
    DataDirError,
    Durability,
    Recoverable,
    RecoveryReport,
    SnapshotEncoder,
    StoreError,
    StoreFailedError,
    StoreUnavailableError,
)
from .journal import (
    FRAME_OVERHEAD,
    MIN_SEGMENT_BYTES,
    SEGMENT_HEADER_SIZE,
    BadSegmentHeader,
    IntervalFlusher,
    JournalWriter,
    SegmentScan,
    decode_segment_header,
    iter_frames,
    list_segments,
    no_space,
    read_segment,
)
from .snapshot import (
    TMP_SUFFIX,
    BadSnapshot,
    list_snapshots,
    read_snapshot,
    write_snapshot,
)

log = logging.getLogger("tiergate.store")

LOCK_NAME = "LOCK"
DEFAULT_FSYNC_INTERVAL_MS = 50
DEFAULT_SNAPSHOT_EVERY_RECORDS = 200_000
#: Journal payload bytes that make a snapshot due, like the record count: a record
#: may hold a whole batch of admits (about 42 bytes each), so bytes bound the
#: replay work after a crash where the record count no longer does.
DEFAULT_SNAPSHOT_EVERY_BYTES = 8 << 20
DEFAULT_SNAPSHOT_EVERY_SECONDS = 300.0
DEFAULT_SNAPSHOT_MIN_SECONDS = 10.0
DEFAULT_SEGMENT_BYTES = 16 << 20
DEFAULT_KEEP_SNAPSHOTS = 2
#: While the journal's file system is full, how often writing it is tried again.
NO_SPACE_RETRY_SECONDS = 1.0
#: Records of decisions made but not yet written (the journal's file system full)
#: kept at most; past it the store fails (nothing more acknowledged until a restart).
HELD_BYTES_LIMIT = 64 << 20
CORRUPT_SUFFIX = ".corrupt"


def _prepare_data_dir(data_dir: Path) -> int:
    """Create (if needed) and lock the data dir; return the lock file descriptor."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir} exists and is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"data dir {data_dir} does not exist and cannot be created: {exc.strerror or exc}"
        ) from exc
    lock_path = data_dir / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DataDirError(
            f"data dir {data_dir} is not writable ({lock_path}: {exc.strerror or exc})"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise DataDirError(
            f"data dir {data_dir} is in use by another tiergate process{holder}"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        probe = data_dir / (".write-probe" + TMP_SUFFIX)
        with open(probe, "wb") as f:
            f.write(b"tiergate")
        probe.unlink()
    except OSError as exc:
        os.close(fd)
        raise DataDirError(f"data dir {data_dir} is not writable: {exc.strerror or exc}") from exc
    return fd


class EmbeddedStore:
    """Journal + snapshots in ``data_dir``; see the module docstring for the life cycle."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        durability: Durability | str = Durability.FSYNC_INTERVAL,
        *,
        fsync_interval_ms: int = DEFAULT_FSYNC_INTERVAL_MS,
        snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
        snapshot_every_bytes: int = DEFAULT_SNAPSHOT_EVERY_BYTES,
        snapshot_every_seconds: float = DEFAULT_SNAPSHOT_EVERY_SECONDS,
        snapshot_min_seconds: float = DEFAULT_SNAPSHOT_MIN_SECONDS,
        snapshot_on_close: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        recover_truncate: bool = False,
    ) -> None:
        self.durability = Durability.parse(durability)
        if fsync_interval_ms < 1:
            raise ValueError("fsync_interval_ms: must be >= 1")
        if snapshot_every_records < 1:
            raise ValueError("snapshot_every_records: must be >= 1")
        if snapshot_every_bytes < 1:
            raise ValueError("snapshot_every_bytes: must be >= 1")
        if snapshot_every_seconds <= 0:
            raise ValueError("snapshot_every_seconds: must be > 0")
        if snapshot_min_seconds < 0:
            raise ValueError("snapshot_min_seconds: must be >= 0")
        if keep_snapshots < 2:
            raise ValueError(
                "keep_snapshots: must be >= 2 (the snapshot before the newest, and the "
                "journal since it, are what recovery falls back on when the newest is damaged)"
            )
        if segment_bytes < SEGMENT_HEADER_SIZE + FRAME_OVERHEAD:
            raise ValueError(f"segment_bytes: must be >= {SEGMENT_HEADER_SIZE + FRAME_OVERHEAD}")
        self.data_dir = Path(data_dir)
        self.fsync_interval_ms = fsync_interval_ms
        self.snapshot_every_records = snapshot_every_records
        self.snapshot_every_bytes = snapshot_every_bytes
        self.snapshot_every_seconds = snapshot_every_seconds
        self.snapshot_min_seconds = snapshot_min_seconds
        self.snapshot_on_close = snapshot_on_close
        self.segment_bytes = segment_bytes
        self.keep_snapshots = keep_snapshots
        self.recover_truncate = recover_truncate
        self._lock_fd = _prepare_data_dir(self.data_dir)

        self._writer: JournalWriter | None = None
        self._flusher: IntervalFlusher | None = None
        self._io: ThreadPoolExecutor | None = None
        self._snap_io: ThreadPoolExecutor | None = None
        self._closed = False
        self._failed: StoreFailedError | None = None

        # Records waiting for a write: the fsync-always group (and, for a moment,
        # commit_sync and the snapshot cut in every mode). Event-loop thread only.
        self._pending: list[bytes] = []  # records not yet framed or written
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._snapshotting = False
        self._snapshot_lock: asyncio.Lock | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        # Called once, when the store fails (the server stops reporting SERVING).
        self.on_failure: Callable[[StoreFailedError], None] | None = None
        # While the journal's file system is full: framed records (and their last
        # seq) of decisions made but not written, oldest first; they are written
        # before anything else once there is space. Event-loop thread only.
        self._held: list[tuple[bytes, int]] = []
        self._held_bytes = 0
        self._unavailable: StoreUnavailableError | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self.no_space_retry_seconds = NO_SPACE_RETRY_SECONDS
        # Called with the error when the journal cannot be written for now (the
        # server refuses new work and reports NOT_SERVING), with None when it can
        # again (SERVING, decisions acknowledged again).
        self.on_unavailable: Callable[[StoreUnavailableError | None], None] | None = None
        self.no_space_episodes = 0

        # metrics
        self.report: RecoveryReport | None = None
        self._recovery_seconds = 0.0
        self.records_since_snapshot = 0
        self.bytes_since_snapshot = 0  # journal payload bytes
        self.last_snapshot_seq = 0
        self.last_snapshot_bytes = 0
        self.last_snapshot_seconds = 0.0
        self.last_snapshot_stall_seconds = 0.0  # how long the event loop was busy with it
        self.snapshots_taken = 0
        self.commits = 0
        self.records_committed = 0
        self._last_snapshot_at = time.monotonic()

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        durability: Durability | str = Durability.FSYNC_INTERVAL,
        *,
        fsync_interval_ms: int = DEFAULT_FSYNC_INTERVAL_MS,
        snapshot_every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
        snapshot_every_bytes: int = DEFAULT_SNAPSHOT_EVERY_BYTES,
        snapshot_every_seconds: float = DEFAULT_SNAPSHOT_EVERY_SECONDS,
        snapshot_min_seconds: float = DEFAULT_SNAPSHOT_MIN_SECONDS,
        snapshot_on_close: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        recover_truncate: bool = False,
    ) -> EmbeddedStore:
        """Open (creating if needed) and lock ``data_dir``; then call ``recover``."""
        return cls(
            data_dir,
            durability,
            fsync_interval_ms=fsync_interval_ms,
            snapshot_every_records=snapshot_every_records,
            snapshot_every_bytes=snapshot_every_bytes,
            snapshot_every_seconds=snapshot_every_seconds,
            snapshot_min_seconds=snapshot_min_seconds,
            snapshot_on_close=snapshot_on_close,
            segment_bytes=segment_bytes,
            keep_snapshots=keep_snapshots,
            recover_truncate=recover_truncate,
        )

    # -- metrics -----------------------------------------------------------

    @property
    def journal_bytes(self) -> int:
        return self._writer.total_bytes if self._writer is not None else 0

    @property
    def recovery_seconds(self) -> float:
        return self._recovery_seconds

    @property
    def unavailable(self) -> StoreUnavailableError | None:
        """Why nothing is acknowledged for now (the journal's file system is full),
        or None."""
        return self._unavailable

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record handed to the journal."""
        return self._writer.next_seq - 1 if self._writer is not None else 0

    @property
    def fsyncs(self) -> int:
        return self._writer.fsyncs if self._writer is not None else 0

    # -- recovery ----------------------------------------------------------

    def recover(self, service: Recoverable) -> RecoveryReport:
        """Restore the latest snapshot into ``service`` and replay the journal after it.

        A torn or corrupt record at the very end of the journal (what a crash
        mid-write leaves) is cut off and reported. A bad record with valid
        ones after it refuses to start (``CorruptJournalError``) unless the
        store was opened with ``recover_truncate=True``, which cuts the
        journal there and keeps the cut-off bytes in ``*.corrupt`` files.
        """
        if self._writer is not None or self._closed:
            raise StoreError("recover() runs once, on a freshly opened store")
        try:
            try:
                return self._recover(service)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise StoreError(f"data dir {self.data_dir}: {exc.strerror or exc}{where}") from exc
        except BaseException:
            self.close()  # release the data dir; the caller reports the error and exits
            raise

    def _recover(self, service: Recoverable) -> RecoveryReport:
        started = time.perf_counter()
        report = RecoveryReport(data_dir=str(self.data_dir))
        for entry in os.scandir(self.data_dir):
            if entry.name.endswith(TMP_SUFFIX):  # an interrupted snapshot write
                os.unlink(entry.path)

        segments = self._check_segment_headers(report)
        damaged: list[Path] = []
        base_seq, need_until = self._restore_snapshot(service, segments, report, damaged)
        replay_started = time.perf_counter()
        last_seq = self._replay(service, segments, base_seq, report)
        report.replay_seconds = time.perf_counter() - replay_started
        if last_seq < need_until:
            raise CorruptSnapshotError(
                f"{self.data_dir}: the newest snapshot (seq {need_until}) is damaged and the "
                f"journal ends at seq {last_seq}; the state it held cannot be rebuilt. "
                "Restore the data dir from a backup."
            )
        # Records that replay or restore queued describe state already on disk.
        service.drain_journal()
        for path in damaged:
            # Kept for inspection, but no longer a snapshot: pruning counts the
            # snapshots recovery can fall back on, and this one it cannot.
            kept = path.with_name(path.name + CORRUPT_SUFFIX)
            path.rename(kept)
            report.warnings.append(f"{path}: damaged snapshot kept as {kept.name}")

        remaining = list_segments(self.data_dir)
        if remaining and remaining[-1][0] == last_seq + 1:
            # a header-only segment from an earlier start; the new one takes its name
            path = remaining[-1][1]
            if path.stat().st_size <= SEGMENT_HEADER_SIZE:
                path.unlink()
        older = sum(p.stat().st_size for _, p in list_segments(self.data_dir))
        try:
            self._writer = JournalWriter(self.data_dir, last_seq + 1, self.segment_bytes)
        except OSError as exc:
            if not no_space(exc):
                raise
            least = min(self.segment_bytes, MIN_SEGMENT_BYTES)
            raise StoreError(
                f"data dir {self.data_dir}: no space left on device for the journal (its "
                f"first segment needs {least} bytes free); free some space and start again"
            ) from exc
        self._writer.older_bytes = older
        if self.durability is Durability.FSYNC_INTERVAL:
            self._flusher = IntervalFlusher(self._writer, self.fsync_interval_ms / 1000)

        self.last_snapshot_seq = base_seq
        self.records_since_snapshot = last_seq - base_seq
        self.bytes_since_snapshot = report.replayed_bytes
        self._last_snapshot_at = time.monotonic()
        report.last_seq = last_seq
        report.journal_bytes = self.journal_bytes
        report.seconds = time.perf_counter() - started
        self._recovery_seconds = report.seconds
        self.report = report
        for warning in report.warnings:
            log.warning("%s", warning)
        log.info("%s", report.summary())
        return report

    def _check_segment_headers(self, report: RecoveryReport) -> list[tuple[int, Path]]:
        """Validate every segment header; drop a torn last one, refuse (or cut) others."""
        segments = list_segments(self.data_dir)
        good: list[tuple[int, Path]] = []
        for i, (name_seq, path) in enumerate(segments):
            with open(path, "rb") as f:
                head = f.read(SEGMENT_HEADER_SIZE)
            try:
                first = decode_segment_header(head, path)
                if first != name_seq:
                    raise BadSegmentHeader(f"header says first seq {first}, name says {name_seq}")
            except BadSegmentHeader as exc:
                size = path.stat().st_size
                if i == len(segments) - 1 and size <= SEGMENT_HEADER_SIZE:
                    report.warnings.append(
                        f"{path}: torn segment header ({exc}); removed the empty segment"
                    )
                    report.truncated_bytes += size
                    path.unlink()
                    continue
                self._corruption(
                    report, path, 0, f"bad segment header ({exc})", segments[i:], valid_after=None
                )
                break
            good.append((first, path))
        return good

    def _restore_snapshot(
        self,
        service: Recoverable,
        segments: list[tuple[int, Path]],
        report: RecoveryReport,
        damaged_paths: list[Path],
    ) -> tuple[int, int]:
        """Restore the newest usable snapshot; return (its seq, seq the journal must reach).
        Damaged snapshots passed over are added to ``damaged_paths``."""
        first_journal_seq = segments[0][0] if segments else None
        need_until = 0
        damaged: list[str] = []
        for seq, path in reversed(list_snapshots(self.data_dir)):
            started = time.perf_counter()
            try:
                got_seq, payload = read_snapshot(path)
                if got_seq != seq:
                    raise BadSnapshot(f"header says seq {got_seq}, name says {seq}")
            except BadSnapshot as exc:
                damaged.append(f"{path.name} ({exc})")
                damaged_paths.append(path)
                report.warnings.append(f"{path}: damaged snapshot ({exc}); trying an older one")
                need_until = max(need_until, seq)
                continue
            covered = first_journal_seq is None or first_journal_seq <= seq + 1
            if need_until > seq and (first_journal_seq is None or first_journal_seq > seq + 1):
                covered = False
            if not covered:
                if need_until > seq:
                    raise CorruptSnapshotError(
                        f"{self.data_dir}: snapshot(s) {', '.join(damaged)} damaged, and the "
                        f"journal (from seq {first_journal_seq}) no longer covers the older "
                        f"snapshot {path.name}; refusing to start. Restore the data dir from "
                        "a backup."
                    )
                raise CorruptSnapshotError(
                    f"{path}: the journal starts at seq {first_journal_seq}, after this "
                    f"snapshot's seq {seq} + 1: journal segments are missing; refusing to start"
                )
            report.snapshot_read_seconds += time.perf_counter() - started
            started = time.perf_counter()
            try:
                service.restore(payload)
            except Exception as exc:
                raise StoreError(f"{path}: the policy layer could not restore it: {exc}") from exc
            report.restore_seconds = time.perf_counter() - started
            report.snapshot_path = str(path)
            report.snapshot_seq = seq
            report.snapshot_bytes = len(payload)
            return seq, need_until
        if damaged and first_journal_seq not in (None, 1):
            raise CorruptSnapshotError(
                f"{self.data_dir}: snapshot(s) {', '.join(damaged)} damaged and the journal "
                f"starts at seq {first_journal_seq}, not 1; refusing to start. Restore the data "
                "dir from a backup."
            )
        if first_journal_seq not in (None, 1):
            raise CorruptSnapshotError(
                f"{self.data_dir}: no snapshot and the journal starts at seq "
                f"{first_journal_seq}, not 1: files are missing; refusing to start"
            )
        return 0, need_until

    def _replay(
        self,
        service: Recoverable,
        segments: list[tuple[int, Path]],
        base_seq: int,
        report: RecoveryReport,
    ) -> int:
        last_seq = base_seq
        expected = base_seq + 1  # next record to replay
        for i, (first, path) in enumerate(segments):
            if i + 1 < len(segments) and segments[i + 1][0] <= expected:
                continue  # wholly covered by the snapshot
            if first > expected:
                self._corruption(
                    report,
                    path,
                    0,
                    f"journal gap: records {expected}..{first - 1} are missing",
                    segments[i:],
                    valid_after=SEGMENT_HEADER_SIZE,
                )
                break
            data = read_segment(path)
            report.segments_read += 1
            scan = SegmentScan(path=path, size=len(data))
            for seq, start, stop in iter_frames(data, path, first, scan):
                if seq < expected:
                    continue
                try:
                    service.replay(data[start:stop])
                except Exception as exc:
                    raise StoreError(
                        f"{path}: the policy layer could not replay record seq {seq} at offset "
                        f"{start - 16}: {exc}"
                    ) from exc
                report.records_replayed += 1
                report.replayed_bytes += stop - start
                expected = seq + 1
                last_seq = seq
            if scan.zero_tail is not None:
                # The writer's preallocated room, unused when the process ended
                # without closing the segment (the current one, or one rotated
                # out whose cut was still queued): not damage, nothing to report.
                self._truncate(path, scan.zero_tail)
            if scan.bad_offset is not None:
                is_tail = scan.valid_after is None and i == len(segments) - 1
                if is_tail:
                    cut = len(data) - scan.bad_offset
                    report.warnings.append(
                        f"{path}: torn or corrupt record at the journal tail, offset "
                        f"{scan.bad_offset} ({scan.bad_reason}); truncated {cut} bytes"
                    )
                    report.truncated_bytes += cut
                    self._truncate(path, scan.bad_offset)
                else:
                    self._corruption(
                        report,
                        path,
                        scan.bad_offset,
                        f"corrupt record ({scan.bad_reason})",
                        segments[i:],
                        valid_after=scan.valid_after,
                    )
                break
        return last_seq

    def _corruption(
        self,
        report: RecoveryReport,
        path: Path,
        offset: int,
        what: str,
        rest: list[tuple[int, Path]],
        valid_after: int | None,
    ) -> None:
        """Corruption with valid data after it: refuse, or cut and keep the cut-off bytes."""
        later = [p.name for _, p in rest[1:]]
        where = f"{path}: {what} at offset {offset}"
        if valid_after is not None:
            follows = f"valid records follow at offset {valid_after}"
        elif later:
            follows = f"later segments follow ({', '.join(later)})"
        else:
            follows = f"{path.stat().st_size - offset} bytes follow it"
        if not self.recover_truncate:
            raise CorruptJournalError(
                f"{where}; {follows}, so this is not a torn tail. Refusing to start: back up "
                f"{self.data_dir}, then start with --recover-truncate to drop the journal from "
                "this point on (the dropped bytes are kept in *.corrupt files).",
                path,
                offset,
            )
        dropped = 0
        head = path.read_bytes()
        keep_from = offset if offset > 0 else 0
        saved = path.with_name(f"{path.name}.at-{offset}{CORRUPT_SUFFIX}")
        saved.write_bytes(head[keep_from:])
        dropped += len(head) - keep_from
        if offset > 0:
            self._truncate(path, offset)
        else:
            path.unlink()
        for _, other in rest[1:]:
            dropped += other.stat().st_size
            other.rename(other.with_name(other.name + CORRUPT_SUFFIX))
        report.truncated_bytes += dropped
        report.warnings.append(
            f"{where}; {follows}. --recover-truncate: dropped {dropped} bytes of journal "
            f"from there on (kept in *{CORRUPT_SUFFIX} files)"
        )

    @staticmethod
    def _truncate(path: Path, offset: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- commit ------------------------------------------------------------

    def _require_writer(self) -> JournalWriter:
        if self._failed is not None:
            raise self._failed
        if self._writer is None:
            if self._closed:
                raise StoreError("the store is closed")
            raise StoreError("recover() must be called before committing")
        if self._flusher is not None and self._flusher.error is not None:
            self._fail(self._flusher.error)
            raise self._failed  # type: ignore[misc]
        if self._writer.error is not None:  # finishing a rotated segment failed
            self._fail(self._writer.error)
            raise self._failed  # type: ignore[misc]
        return self._writer

    def _fail(self, exc: BaseException) -> StoreFailedError:
        if self._failed is None:
            self._unavailable = None  # failed for good, not waiting for space
            self._failed = StoreFailedError(
                f"journal write to {self.data_dir} failed ({exc}); no further decision is "
                "acknowledged until tiergate restarts"
            )
            log.error("%s", self._failed)
            if self.on_failure is not None:
                self.on_failure(self._failed)
        return self._failed

    def _enqueue(self, records: Sequence[bytes]) -> asyncio.Future[None] | None:
        """Write ``records`` now (``write`` and ``fsync-interval``: a copy into the
        mapped segment) or queue them for the next group write and fsync
        (``fsync-always``); the future to await before acknowledging, or None
        when everything is already written. While the journal cannot be written
        (``StoreUnavailableError``) records are kept to be written later, and
        nothing is acknowledged, a decision that changed nothing included."""
        writer = self._require_writer()
        if records:
            self.records_since_snapshot += len(records)
            self.bytes_since_snapshot += sum(map(len, records))
            self.records_committed += len(records)
            if self.durability is not Durability.FSYNC_ALWAYS:
                data = writer.encode(records)
                if self._held:  # after what could not be written yet, never before it
                    raise self._hold(data, writer.next_seq - 1, None)
                try:
                    writer.write(data, writer.next_seq - 1)
                except OSError as exc:
                    if no_space(exc):
                        raise self._hold(data, writer.next_seq - 1, exc) from exc
                    raise self._fail(exc) from exc
                self.commits += 1
                return None
            self._pending.extend(records)  # framed (and numbered) at the write, in order
            if self._unavailable is not None:
                raise self._unavailable
        elif self._unavailable is not None:
            raise self._unavailable
        elif not self._pending and self._inflight is None:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        if self._inflight is None and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush, loop)
        return fut

    async def commit(self, records: Sequence[bytes]) -> None:
        fut = self._enqueue(records)
        if fut is not None:
            await fut

    def _take_pending(self, writer: JournalWriter) -> tuple[bytes, int]:
        """Frame what is pending with the next sequence numbers; (bytes, last seq)."""
        data = writer.encode(self._pending)
        self._pending.clear()
        return data, writer.next_seq - 1

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_handle = None
        if self._inflight is not None:
            return  # _flushed reschedules
        waiters, self._waiters = self._waiters, []
        if self._unavailable is not None:
            _settle(waiters, self._unavailable)  # what is pending waits for the space
            return
        if not self._pending:
            _settle(waiters, None)
            return
        writer = self._writer
        if writer is None or self._failed is not None:
            self._pending.clear()
            _settle(waiters, self._failed or StoreError("the store is closed"))
            return
        data, last = self._take_pending(writer)
        if self.durability is Durability.FSYNC_ALWAYS:
            if self._io is None:
                self._io = ThreadPoolExecutor(1, thread_name_prefix="tiergate-journal")
            self._inflight = loop.run_in_executor(self._io, _write_and_sync, writer, data, last)
            self._inflight.add_done_callback(partial(self._flushed, loop, waiters, data, last))
            self.commits += 1
            return
        try:
            writer.write(data, last)
        except OSError as exc:
            _settle(waiters, self._hold(data, last, exc) if no_space(exc) else self._fail(exc))
            return
        self.commits += 1
        _settle(waiters, None)

    def _flushed(
        self,
        loop: asyncio.AbstractEventLoop,
        waiters: list[asyncio.Future[None]],
        data: bytes,
        last: int,
        done: asyncio.Future[None],
    ) -> None:
        self._inflight = None
        exc = done.exception()
        if isinstance(exc, _NoSpace):
            self.commits -= 1
            _settle(waiters, self._hold(data, last, exc.error))
        else:
            _settle(waiters, self._fail(exc) if exc is not None else None)
        if (self._waiters or self._pending) and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush, loop)

    # -- a full file system ------------------------------------------------

    def _hold(self, data: bytes, last: int, exc: OSError | None) -> StoreError:
        """Keep framed records that could not be written (the file system is full)
        to write them, in order, once it can; the error their callers get."""
        self._held.append((data, last))
        self._held_bytes += len(data)
        if self._held_bytes > HELD_BYTES_LIMIT:
            return self._fail(
                OSError(
                    errno.ENOSPC,
                    f"no space left on device for {self._held_bytes} bytes of records kept "
                    "while it was full",
                )
            )
        if self._unavailable is None:
            quota = exc is not None and exc.errno == errno.EDQUOT
            full = "disk quota exceeded" if quota else "no space left on device"
            self._unavailable = StoreUnavailableError(
                f"data dir {self.data_dir}: {full} for the journal; refusing new decisions "
                "until it can be written again"
            )
            self.no_space_episodes += 1
            log.error(
                "%s (trying again every %g s)", self._unavailable, self.no_space_retry_seconds
            )
            self._schedule_retry()
            if self.on_unavailable is not None:
                self.on_unavailable(self._unavailable)
        return self._unavailable

    def _schedule_retry(self) -> None:
        if self._retry_handle is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop: the next commit_sync tries again first
        self._retry_handle = loop.call_later(self.no_space_retry_seconds, self._retry_held)

    def _retry_held(self) -> None:
        self._retry_handle = None
        writer = self._writer
        if writer is None or self._failed is not None or not self._held:
            return
        try:
            self._write_held(writer)
        except OSError as exc:
            if no_space(exc):
                self._schedule_retry()
            else:
                self._fail(exc)

    def _write_held(self, writer: JournalWriter) -> None:
        """Write what was kept while the file system was full, in order; then the
        store is available again. Raises the write's OSError if it still fails."""
        while self._held:
            data, last = self._held[0]
            writer.write(data, last)
            del self._held[0]
            self._held_bytes -= len(data)
            self.commits += 1
        if self._unavailable is None:
            return
        self._unavailable = None
        log.warning("data dir %s: the journal can be written again; deciding again", self.data_dir)
        if self.on_unavailable is not None:
            self.on_unavailable(None)
        if self._pending and self._flush_handle is None:
            with contextlib.suppress(RuntimeError):  # no loop: commit_sync writes them
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_soon(self._flush, loop)

    async def _barrier(self) -> None:
        """Wait until everything committed so far is written (no in-flight fsync either)."""
        while self._pending or self._inflight is not None:
            await self.commit(())

    def _flush_now(self) -> None:
        """Write what is pending from this thread (no event loop, or a sync section)."""
        writer = self._require_writer()
        if self._inflight is not None:
            raise StoreError("a synchronous commit raced an asynchronous one")
        if self._held:
            try:
                self._write_held(writer)
            except OSError as exc:
                if not no_space(exc):
                    raise self._fail(exc) from exc
        if not self._pending:
            if self._unavailable is not None:
                raise self._unavailable
            return
        data, last = self._take_pending(writer)
        waiters, self._waiters = self._waiters, []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._held:
            unavailable = self._hold(data, last, None)
            _settle(waiters, unavailable)
            raise unavailable
        try:
            writer.write(data, last)
        except OSError as exc:
            error = self._hold(data, last, exc) if no_space(exc) else self._fail(exc)
            _settle(waiters, error)
            raise error from exc
        try:
            if self.durability is Durability.FSYNC_ALWAYS:
                writer.sync()
        except OSError as exc:
            failed = self._fail(exc)
            _settle(waiters, failed)
            raise failed from exc
        self.commits += 1
        _settle(waiters, None)

    def commit_sync(self, records: Sequence[bytes]) -> None:
        self._require_writer()
        if records:
            self._pending.extend(records)
            self.records_since_snapshot += len(records)
            self.bytes_since_snapshot += sum(map(len, records))
            self.records_committed += len(records)
        self._flush_now()

    # -- snapshots ---------------------------------------------------------

    def snapshot_due(self) -> bool:
        n = self.records_since_snapshot
        if n == 0:
            return False
        age = time.monotonic() - self._last_snapshot_at
        if (
            n >= self.snapshot_every_records
            or self.bytes_since_snapshot >= self.snapshot_every_bytes
        ):
            # Under heavy load, not more often than every snapshot_min_seconds: a
            # snapshot costs CPU in proportion to the whole state.
            return age >= self.snapshot_min_seconds
        return age >= self.snapshot_every_seconds

    async def persist(self, service: Recoverable) -> None:
        fut = self.persist_nowait(service)
        if fut is not None:
            await fut

    def persist_nowait(self, service: Recoverable) -> asyncio.Future[None] | None:
        """``persist`` as a plain call: queue the service's records for the next group
        write (and start a snapshot if one is due, which writes after them); return
        the future to await before acknowledging, or None when everything is
        already written. Raises as ``persist`` does; a failed write fails the future.
        """
        fut = self._enqueue(service.drain_journal())
        if self._snapshot_task is None and not self._snapshotting and self.snapshot_due():
            self._snapshot_task = asyncio.get_running_loop().create_task(
                self._background_snapshot(service), name="tiergate-snapshot"
            )
        return fut

    async def _background_snapshot(self, service: Recoverable) -> None:
        try:
            await self.snapshot(service)
        except Exception as exc:
            if isinstance(exc, StoreUnavailableError) or no_space(exc):
                # The file system is full: the journal keeps every change meanwhile.
                log.warning("snapshot in %s put off: %s", self.data_dir, exc)
            else:
                log.exception("snapshot failed; the journal keeps every change, will retry later")
            self._last_snapshot_at = time.monotonic()
        finally:
            self._snapshot_task = None

    async def maybe_snapshot(self, service: Recoverable) -> bool:
        if self._snapshotting or not self.snapshot_due():
            return False
        await self.snapshot(service)
        return True

    def _cut_journal(self, service: Recoverable) -> int:
        """Commit everything the service holds and start a new segment; return the
        sequence number the snapshot will cover. No awaits inside: the service's
        state at return is exactly the journal up to that number."""
        writer = self._require_writer()
        records = service.drain_journal()
        if records:
            self._pending.extend(records)
            self.records_committed += len(records)
        self._flush_now()
        writer.rotate()
        self.records_since_snapshot = 0
        self.bytes_since_snapshot = 0
        self._last_snapshot_at = time.monotonic()
        return writer.next_seq - 1

    async def snapshot(self, service: Recoverable) -> None:
        """Snapshot ``service`` now (after any snapshot already in progress)."""
        if self._snapshot_lock is None:
            self._snapshot_lock = asyncio.Lock()
        async with self._snapshot_lock:
            await self._snapshot(service)

    async def _snapshot(self, service: Recoverable) -> None:
        """Cut the journal and take the service's state image in one step of the
        event loop, then encode and write it in the snapshot thread while the
        loop goes on deciding; the loop pays only for the cut and the image.
        No process is forked: this one runs gRPC's threads."""
        self._snapshotting = True
        try:
            loop = asyncio.get_running_loop()
            if self._snap_io is None:
                self._snap_io = ThreadPoolExecutor(1, thread_name_prefix="tiergate-snapshot")
            # The memory the image takes is allocated and touched in the snapshot
            # thread first: a page's first touch (the kernel zeroing it) costs
            # several times its copy, and would otherwise be paid on the loop.
            room = await loop.run_in_executor(self._snap_io, service.snapshot_room())
            while True:
                await self._barrier()
                if self._inflight is None:
                    break
            with _cyclic_gc_paused():
                started = time.perf_counter()
                seq = self._cut_journal(service)
                encode = service.snapshot_image(room)  # no await between: the state at seq
                self.last_snapshot_stall_seconds = time.perf_counter() - started
                del room  # what the image did not take (a table that grew meanwhile)
                size, freed = await loop.run_in_executor(
                    self._snap_io, self._write_and_prune, seq, encode
                )
                del encode  # the image, freed before collections resume
            self._after_snapshot(seq, size, started, freed)
        finally:
            self._snapshotting = False

    def snapshot_sync(self, service: Recoverable) -> None:
        """Blocking ``snapshot``: everything in the calling thread."""
        with _cyclic_gc_paused():
            started = time.perf_counter()
            seq = self._cut_journal(service)
            encode = service.snapshot_image()
            self.last_snapshot_stall_seconds = time.perf_counter() - started
            size, freed = self._write_and_prune(seq, encode)
            del encode  # the image, freed before collections resume
        self._after_snapshot(seq, size, started, freed)

    def _write_and_prune(self, seq: int, encode: SnapshotEncoder) -> tuple[int, int]:
        """Encode and write the snapshot, then drop old snapshots and covered segments;
        (payload bytes, bytes freed)."""
        payload = encode()
        write_snapshot(self.data_dir, seq, payload)
        return sum(map(len, payload)), self._prune()

    def _prune(self) -> int:
        """Drop snapshots beyond ``keep_snapshots`` and the segments the oldest kept
        one covers; return the bytes freed.

        The journal is always kept from the snapshot before the newest on: with
        a single snapshot (the first one in a data dir) nothing of the journal
        is dropped, so a damaged newest snapshot is never the only copy of the
        state. A recovery that fell back past a damaged snapshot renamed it to
        ``*.corrupt``, so it is not counted here.
        """
        if self._writer is not None:
            # A rotated segment is cut to what it holds in the background; its
            # size counts once that is done (else a preallocated 16 MB would be
            # taken off journal_bytes for a segment that held a few KB).
            self._writer.wait_segment_work()
        snapshots = list_snapshots(self.data_dir)
        keep = snapshots[-self.keep_snapshots :]
        for _, old in snapshots[: -self.keep_snapshots]:
            old.unlink(missing_ok=True)
        if len(keep) < 2:
            return 0  # one snapshot: the journal before it is its only backup
        oldest_kept = keep[0][0]
        freed = 0
        segments = list_segments(self.data_dir)
        for (_first, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 <= oldest_kept:  # every record in it is in the snapshot
                freed += path.stat().st_size
                path.unlink()
        return freed

    def _after_snapshot(self, seq: int, size: int, started: float, freed: int) -> None:
        if self._writer is not None:
            self._writer.older_bytes = max(0, self._writer.older_bytes - freed)
        self.last_snapshot_seq = seq
        self.last_snapshot_bytes = size
        self.last_snapshot_seconds = time.perf_counter() - started
        self.snapshots_taken += 1
        log.info(
            "snapshot at seq %d: %d bytes in %.3f s (event loop busy %.3f s); journal now %d bytes",
            seq,
            size,
            self.last_snapshot_seconds,
            self.last_snapshot_stall_seconds,
            self.journal_bytes,
        )

    # -- shutdown ----------------------------------------------------------

    async def aclose(self, service: Recoverable | None = None) -> None:
        if self._closed:
            return
        task = self._snapshot_task
        if task is not None:
            await asyncio.wait([task])
        if self._writer is not None and self._failed is None:
            try:
                if service is not None:
                    await self.commit(service.drain_journal())
                    if self.snapshot_on_close and self.records_since_snapshot > 0:
                        await self._final_snapshot(service)
                await self._barrier()
            except StoreUnavailableError as exc:
                log.error("closing: %s", exc)  # close() tries once more
        self.close()

    async def _final_snapshot(self, service: Recoverable) -> None:
        if self._snapshot_lock is None:
            self._snapshot_lock = asyncio.Lock()
        async with self._snapshot_lock:
            try:
                await self._snapshot(service)
            except StoreUnavailableError:
                raise
            except Exception:
                # The journal holds every change: the next start replays it.
                log.exception("closing: the final snapshot failed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._inflight is not None:
                # An fsync-always write is still running in the worker thread: let it
                # finish; what queued behind it was never acknowledged (the event loop
                # that would have answered is not running), so it is not written after
                # a write whose outcome is unknown here.
                if self._io is not None:
                    self._io.shutdown(wait=True)
            elif self._writer is not None and self._failed is None:
                try:
                    self._flush_now()
                except StoreUnavailableError:
                    # Never acknowledged (nothing is while the journal cannot be
                    # written): the restart's state is the journal's.
                    log.error(
                        "closing: %d bytes of records of decisions never acknowledged "
                        "could not be written (no space) and are dropped",
                        self._held_bytes,
                    )
        finally:
            if self._retry_handle is not None:
                self._retry_handle.cancel()
                self._retry_handle = None
            if self._flusher is not None:
                self._flusher.stop()
            for pool in (self._io, self._snap_io):
                if pool is not None:
                    pool.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            os.close(self._lock_fd)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic GC collections while a snapshot is taken and encoded (memory is
    still freed as references go). A collection, in whichever thread allocates,
    holds the GIL while it traverses its generations: the image's copies of the
    policy layer's containers and the rows the encoder makes put millions of
    objects there, and with 1 M idempotency keys collections during a snapshot
    held the event loop for 0.3 to 0.7 s each."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


class _NoSpace(Exception):
    """A group write found the file system full (not its fsync: that fails the store)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _write_and_sync(writer: JournalWriter, data: bytes, last: int) -> None:
    try:
        writer.write(data, last)
    except OSError as exc:
        if no_space(exc):
            raise _NoSpace(exc) from exc
        raise
    writer.sync()


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for fut in waiters:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
