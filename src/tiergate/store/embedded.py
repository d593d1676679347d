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

A snapshot cuts the journal; a child process (a new interpreter, not a fork:
the server runs gRPC's threads) makes it from the snapshot before and the
journal since, so the event loop pays only for the cut. The final snapshot
at close takes the service's state image in one step of the event loop
instead, which the snapshot thread encodes and writes (see ``snapshots``).

``EmbeddedStore`` composes parts, each in its module: ``datadir`` (the
locked data directory), ``recovery`` (start-up: segment headers, snapshot
restore, replay, corruption and truncation), ``commit`` (the group commit, and
records held while the disk is full) and ``snapshots`` (when one is due,
taking it, pruning).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

from .base import (
    Durability,
    Recoverable,
    RecoveryReport,
    StoreError,
    StoreFailedError,
    StoreUnavailableError,
)
from .commit import GroupCommit
from .datadir import lock_data_dir
from .journal import FRAME_OVERHEAD, SEGMENT_HEADER_SIZE
from .recovery import open_journal, recover_data_dir
from .snapshots import SnapshotPolicy, Snapshots

log = logging.getLogger("tiergate.store")

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


class StoreOptions(TypedDict, total=False):
    """``EmbeddedStore``'s keyword parameters (see docs/durability.md)."""

    fsync_interval_ms: int
    snapshot_every_records: int
    snapshot_every_bytes: int
    snapshot_every_seconds: float
    snapshot_min_seconds: float
    snapshot_on_close: bool
    segment_bytes: int
    keep_snapshots: int
    recover_truncate: bool


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
        policy = SnapshotPolicy(
            snapshot_every_records,
            snapshot_every_bytes,
            snapshot_every_seconds,
            snapshot_min_seconds,
            keep_snapshots,
        )
        if segment_bytes < SEGMENT_HEADER_SIZE + FRAME_OVERHEAD:
            raise ValueError(f"segment_bytes: must be >= {SEGMENT_HEADER_SIZE + FRAME_OVERHEAD}")
        self.data_dir = Path(data_dir)
        self.snapshot_on_close = snapshot_on_close
        self.segment_bytes = segment_bytes
        self.recover_truncate = recover_truncate
        self._lock_fd = lock_data_dir(self.data_dir)
        self._closed = False
        self._commit = GroupCommit(self.data_dir, self.durability, fsync_interval_ms)
        self._snapshots = Snapshots(self.data_dir, self._commit, policy)
        self.report: RecoveryReport | None = None
        self._recovery_seconds = 0.0

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        durability: Durability | str = Durability.FSYNC_INTERVAL,
        **options: Unpack[StoreOptions],
    ) -> EmbeddedStore:
        """Open (creating if needed) and lock ``data_dir``; then call ``recover``."""
        return cls(data_dir, durability, **options)

    # -- health and metrics ------------------------------------------------

    @property
    def unavailable(self) -> StoreUnavailableError | None:
        """Why nothing is acknowledged for now (the journal's file system is full),
        or None."""
        return self._commit.unavailable

    @property
    def on_failure(self) -> Callable[[StoreFailedError], None] | None:
        """Called once, when the store fails (the server stops reporting SERVING)."""
        return self._commit.on_failure

    @on_failure.setter
    def on_failure(self, callback: Callable[[StoreFailedError], None] | None) -> None:
        self._commit.on_failure = callback

    @property
    def on_unavailable(self) -> Callable[[StoreUnavailableError | None], None] | None:
        """Called with the error when the journal cannot be written for now (the
        server refuses new work and reports NOT_SERVING), with None when it can
        again (SERVING, decisions acknowledged again)."""
        return self._commit.on_unavailable

    @on_unavailable.setter
    def on_unavailable(
        self, callback: Callable[[StoreUnavailableError | None], None] | None
    ) -> None:
        self._commit.on_unavailable = callback

    @property
    def no_space_retry_seconds(self) -> float:
        """While the journal's file system is full, how often writing it is tried again."""
        return self._commit.no_space_retry_seconds

    @no_space_retry_seconds.setter
    def no_space_retry_seconds(self, seconds: float) -> None:
        self._commit.no_space_retry_seconds = seconds

    @property
    def journal_bytes(self) -> int:
        writer = self._commit.writer
        return writer.total_bytes if writer is not None else 0

    @property
    def recovery_seconds(self) -> float:
        return self._recovery_seconds

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record handed to the journal."""
        writer = self._commit.writer
        return writer.next_seq - 1 if writer is not None else 0

    @property
    def fsyncs(self) -> int:
        writer = self._commit.writer
        return writer.fsyncs if writer is not None else 0

    @property
    def commits(self) -> int:
        return self._commit.commits

    @property
    def records_committed(self) -> int:
        return self._commit.records_committed

    @property
    def no_space_episodes(self) -> int:
        return self._commit.no_space_episodes

    @property
    def records_since_snapshot(self) -> int:
        return self._commit.records_since_cut

    @property
    def bytes_since_snapshot(self) -> int:
        """Journal payload bytes committed since the last snapshot."""
        return self._commit.bytes_since_cut

    @property
    def last_snapshot_seq(self) -> int:
        return self._snapshots.last_seq

    @property
    def last_snapshot_bytes(self) -> int:
        return self._snapshots.last_bytes

    @property
    def last_snapshot_seconds(self) -> float:
        return self._snapshots.last_seconds

    @property
    def last_snapshot_stall_seconds(self) -> float:
        """How long the event loop was busy with the last snapshot."""
        return self._snapshots.last_stall_seconds

    @property
    def snapshots_taken(self) -> int:
        return self._snapshots.taken

    @property
    def snapshots_compacted(self) -> int:
        """Snapshots made from the journal by the compaction child (of those taken)."""
        return self._snapshots.compacted

    # -- recovery ----------------------------------------------------------

    def recover(self, service: Recoverable) -> RecoveryReport:
        """Restore the latest snapshot into ``service`` and replay the journal after it.

        A torn or corrupt record at the very end of the journal (what a crash
        mid-write leaves) is cut off and reported. A bad record with valid
        ones after it refuses to start (``CorruptJournalError``) unless the
        store was opened with ``recover_truncate=True``, which cuts the
        journal there and keeps the cut-off bytes in ``*.corrupt`` files.
        """
        if self._commit.writer is not None or self._closed:
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
        report = recover_data_dir(self.data_dir, service, recover_truncate=self.recover_truncate)
        writer = open_journal(self.data_dir, report.last_seq, self.segment_bytes)
        self._commit.start(writer, report.last_seq - report.snapshot_seq, report.replayed_bytes)
        self._snapshots.recovered(report.snapshot_seq)
        report.journal_bytes = self.journal_bytes
        report.seconds = time.perf_counter() - started
        self._recovery_seconds = report.seconds
        self.report = report
        for warning in report.warnings:
            log.warning("%s", warning)
        log.info("%s", report.summary())
        return report

    # -- commit ------------------------------------------------------------

    async def commit(self, records: Sequence[bytes]) -> None:
        fut = self._commit.enqueue(records)
        if fut is not None:
            await fut

    def commit_sync(self, records: Sequence[bytes]) -> None:
        self._commit.commit_sync(records)

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
        fut = self._commit.enqueue(service.drain_journal())
        self._snapshots.start_if_due(service)
        return fut

    # -- snapshots ---------------------------------------------------------

    def snapshot_due(self) -> bool:
        return self._snapshots.due()

    async def maybe_snapshot(self, service: Recoverable) -> bool:
        if self._snapshots.running or not self._snapshots.due():
            return False
        await self._snapshots.take(service)
        return True

    async def snapshot(self, service: Recoverable) -> None:
        """Snapshot ``service`` now (after any snapshot already in progress)."""
        await self._snapshots.take(service)

    def snapshot_sync(self, service: Recoverable) -> None:
        """Blocking ``snapshot``: everything in the calling thread."""
        self._snapshots.take_sync(service)

    # -- shutdown ----------------------------------------------------------

    async def aclose(
        self, service: Recoverable | None = None, *, deadline: float | None = None
    ) -> None:
        """Commit the service's last records, take a final snapshot, fsync, unlock.

        ``deadline`` (``time.monotonic()``; None: no limit) bounds the snapshots,
        never the journal: a snapshot being taken, or the final one, that has not
        finished by then is abandoned: its thread writes nothing (a temporary file
        it leaves is removed at the next start, which replays the journal since the
        last snapshot written) and is not waited for (``tiergate serve`` then ends
        with ``os._exit``). The journal's records are written and fsynced either
        way, so every change survives.
        """
        if self._closed:
            return
        task = self._snapshots.task
        if task is not None:
            await self._until(task, deadline)
        if self._commit.writer is not None and self._commit.failed is None:
            try:
                if service is not None:
                    await self.commit(service.drain_journal())
                    if (
                        self.snapshot_on_close
                        and self._commit.records_since_cut > 0
                        and not self._snapshots.abandoned
                        and _left(deadline) != 0
                    ):
                        await self._until(self._snapshots.take_final(service), deadline)
                if self._snapshots.abandoned:
                    log.warning(
                        "closing: a snapshot did not finish before the shutdown grace "
                        "ended; left unwritten (the journal holds every change: the next "
                        "start replays it from the last snapshot written)"
                    )
                await self._commit.barrier()
            except StoreUnavailableError as exc:
                log.error("closing: %s", exc)  # close() tries once more
        self.close()

    async def _until(self, work: Awaitable[None], deadline: float | None) -> None:
        """Await snapshot ``work`` until ``deadline``; past it, cancel it (its thread may
        still be writing: the snapshot is then abandoned)."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait([task], timeout=_left(deadline))
        if not done:
            self._snapshots.abandoned = True
            task.cancel()
            await asyncio.wait([task])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._commit.close()
        finally:
            self._snapshots.close()
            self._commit.close_writer()
            os.close(self._lock_fd)


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (``time.monotonic()``), at least 0; None: no limit."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
