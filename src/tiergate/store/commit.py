"""The group commit: records into the journal, in order, before they are acknowledged.

With ``write`` and ``fsync-interval`` a commit frames its records and copies
them into the journal's mapped segment before it returns (no system call,
nothing to await). With ``fsync-always`` every commit issued in the same
event-loop iteration joins one group: one write and one fsync in a worker
thread, during which the next group gathers.

While the journal's file system is full, framed records of decisions made but
not written are held, oldest first, and written before anything else once
there is space (tried again every ``no_space_retry_seconds``); meanwhile the
store is *unavailable* (nothing is acknowledged). Past ``HELD_BYTES_LIMIT``
held, or on any other write or fsync error, the store *fails*: nothing more is
acknowledged until a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from .base import Durability, StoreError, StoreFailedError, StoreUnavailableError
from .journal import IntervalFlusher, JournalWriter, no_space

log = logging.getLogger("tiergate.store")

#: While the journal's file system is full, how often writing it is tried again.
NO_SPACE_RETRY_SECONDS = 1.0
#: Records of decisions made but not yet written (the journal's file system full)
#: kept at most; past it the store fails (nothing more acknowledged until a restart).
HELD_BYTES_LIMIT = 64 << 20


class GroupCommit:
    """Writes committed records to the journal (``writer``, set by ``start``) in
    commit order; event-loop thread only, but for ``commit_sync``."""

    def __init__(self, data_dir: Path, durability: Durability, fsync_interval_ms: int) -> None:
        self.data_dir = data_dir
        self.durability = durability
        self.fsync_interval_ms = fsync_interval_ms
        self.writer: JournalWriter | None = None
        self.flusher: IntervalFlusher | None = None
        self._io: ThreadPoolExecutor | None = None
        self.closed = False
        self.failed: StoreFailedError | None = None

        # Records waiting for a write: the fsync-always group (and, for a moment,
        # commit_sync and the snapshot cut in every mode).
        self._pending: list[bytes] = []  # records not yet framed or written
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_handle: asyncio.Handle | None = None
        self.inflight: asyncio.Future[None] | None = None
        # Called once, when the store fails (the server stops reporting SERVING).
        self.on_failure: Callable[[StoreFailedError], None] | None = None
        # While the journal's file system is full: framed records (and their last
        # seq) of decisions made but not written, oldest first; they are written
        # before anything else once there is space.
        self._held: list[tuple[bytes, int]] = []
        self._held_bytes = 0
        self.unavailable: StoreUnavailableError | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self.no_space_retry_seconds = NO_SPACE_RETRY_SECONDS
        # Called with the error when the journal cannot be written for now (the
        # server refuses new work and reports NOT_SERVING), with None when it can
        # again (SERVING, decisions acknowledged again).
        self.on_unavailable: Callable[[StoreUnavailableError | None], None] | None = None
        self.no_space_episodes = 0

        self.commits = 0
        self.records_committed = 0
        # Since the journal was last cut for a snapshot (what makes one due).
        self.records_since_cut = 0
        self.bytes_since_cut = 0  # journal payload bytes

    def start(self, writer: JournalWriter, records_since_cut: int, bytes_since_cut: int) -> None:
        """Commit into ``writer`` from now on (recovery made it, and replayed that
        many records and payload bytes after the last snapshot)."""
        self.writer = writer
        self.records_since_cut = records_since_cut
        self.bytes_since_cut = bytes_since_cut
        if self.durability is Durability.FSYNC_INTERVAL:
            self.flusher = IntervalFlusher(writer, self.fsync_interval_ms / 1000)

    def require_writer(self) -> JournalWriter:
        """The writer, if the store can commit; else raise why it cannot."""
        if self.failed is not None:
            raise self.failed
        if self.writer is None:
            if self.closed:
                raise StoreError("the store is closed")
            raise StoreError("recover() must be called before committing")
        if self.flusher is not None and self.flusher.error is not None:
            raise self.fail(self.flusher.error)
        if self.writer.error is not None:  # finishing a rotated segment failed
            raise self.fail(self.writer.error)
        return self.writer

    def fail(self, exc: BaseException) -> StoreFailedError:
        if self.failed is None:
            self.unavailable = None  # failed for good, not waiting for space
            self.failed = StoreFailedError(
                f"journal write to {self.data_dir} failed ({exc}); no further decision is "
                "acknowledged until tiergate restarts"
            )
            log.error("%s", self.failed)
            if self.on_failure is not None:
                self.on_failure(self.failed)
        return self.failed

    # -- the group ---------------------------------------------------------

    def enqueue(self, records: Sequence[bytes]) -> asyncio.Future[None] | None:
        """Write ``records`` now (``write`` and ``fsync-interval``: a copy into the
        mapped segment) or queue them for the next group write and fsync
        (``fsync-always``); the future to await before acknowledging, or None
        when everything is already written. While the journal cannot be written
        (``StoreUnavailableError``) records are kept to be written later, and
        nothing is acknowledged, a decision that changed nothing included."""
        writer = self.require_writer()
        if records:
            self.records_since_cut += len(records)
            self.bytes_since_cut += sum(map(len, records))
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
                    raise self.fail(exc) from exc
                self.commits += 1
                return None
            self._pending.extend(records)  # framed (and numbered) at the write, in order
            if self.unavailable is not None:
                raise self.unavailable
        elif self.unavailable is not None:
            raise self.unavailable
        elif not self._pending and self.inflight is None:
            return None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        if self.inflight is None and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush, loop)
        return fut

    async def commit(self, records: Sequence[bytes]) -> None:
        fut = self.enqueue(records)
        if fut is not None:
            await fut

    def _take_pending(self, writer: JournalWriter) -> tuple[bytes, int]:
        """Frame what is pending with the next sequence numbers; (bytes, last seq)."""
        data = writer.encode(self._pending)
        self._pending.clear()
        return data, writer.next_seq - 1

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_handle = None
        if self.inflight is not None:
            return  # _flushed reschedules
        waiters, self._waiters = self._waiters, []
        if self.unavailable is not None:
            _settle(waiters, self.unavailable)  # what is pending waits for the space
            return
        if not self._pending:
            _settle(waiters, None)
            return
        writer = self.writer
        if writer is None or self.failed is not None:
            self._pending.clear()
            _settle(waiters, self.failed or StoreError("the store is closed"))
            return
        data, last = self._take_pending(writer)
        if self.durability is Durability.FSYNC_ALWAYS:
            if self._io is None:
                self._io = ThreadPoolExecutor(1, thread_name_prefix="tiergate-journal")
            self.inflight = loop.run_in_executor(self._io, _write_and_sync, writer, data, last)
            self.inflight.add_done_callback(partial(self._flushed, loop, waiters, data, last))
            self.commits += 1
            return
        try:
            writer.write(data, last)
        except OSError as exc:
            _settle(waiters, self._hold(data, last, exc) if no_space(exc) else self.fail(exc))
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
        self.inflight = None
        exc = done.exception()
        if isinstance(exc, _NoSpace):
            self.commits -= 1
            _settle(waiters, self._hold(data, last, exc.error))
        else:
            _settle(waiters, self.fail(exc) if exc is not None else None)
        if (self._waiters or self._pending) and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush, loop)

    async def barrier(self) -> None:
        """Wait until everything committed so far is written (no in-flight fsync either)."""
        while self._pending or self.inflight is not None:
            await self.commit(())

    # -- from the calling thread -------------------------------------------

    def flush_now(self) -> None:
        """Write what is pending from this thread (no event loop, or a sync section)."""
        writer = self.require_writer()
        if self.inflight is not None:
            raise StoreError("a synchronous commit raced an asynchronous one")
        if self._held:
            try:
                self._write_held(writer)
            except OSError as exc:
                if not no_space(exc):
                    raise self.fail(exc) from exc
        if not self._pending:
            if self.unavailable is not None:
                raise self.unavailable
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
            error = self._hold(data, last, exc) if no_space(exc) else self.fail(exc)
            _settle(waiters, error)
            raise error from exc
        try:
            if self.durability is Durability.FSYNC_ALWAYS:
                writer.sync()
        except OSError as exc:
            failed = self.fail(exc)
            _settle(waiters, failed)
            raise failed from exc
        self.commits += 1
        _settle(waiters, None)

    def commit_sync(self, records: Sequence[bytes]) -> None:
        self.require_writer()
        if records:
            self._pending.extend(records)
            self.records_since_cut += len(records)
            self.bytes_since_cut += sum(map(len, records))
            self.records_committed += len(records)
        self.flush_now()

    def cut(self, records: Sequence[bytes]) -> int:
        """Write ``records`` and everything pending, then start a new segment; return
        the sequence number of the last record written (what a snapshot covers)."""
        writer = self.require_writer()
        if records:
            self._pending.extend(records)
            self.records_committed += len(records)
        self.flush_now()
        writer.rotate()
        self.records_since_cut = 0
        self.bytes_since_cut = 0
        return writer.next_seq - 1

    # -- a full file system ------------------------------------------------

    def _hold(self, data: bytes, last: int, exc: OSError | None) -> StoreError:
        """Keep framed records that could not be written (the file system is full)
        to write them, in order, once it can; the error their callers get."""
        self._held.append((data, last))
        self._held_bytes += len(data)
        if self._held_bytes > HELD_BYTES_LIMIT:
            return self.fail(
                OSError(
                    errno.ENOSPC,
                    f"no space left on device for {self._held_bytes} bytes of records kept "
                    "while it was full",
                )
            )
        if self.unavailable is None:
            quota = exc is not None and exc.errno == errno.EDQUOT
            full = "disk quota exceeded" if quota else "no space left on device"
            self.unavailable = StoreUnavailableError(
                f"data dir {self.data_dir}: {full} for the journal; refusing new decisions "
                "until it can be written again"
            )
            self.no_space_episodes += 1
            log.error("%s (trying again every %g s)", self.unavailable, self.no_space_retry_seconds)
            self._schedule_retry()
            if self.on_unavailable is not None:
                self.on_unavailable(self.unavailable)
        return self.unavailable

    def _schedule_retry(self) -> None:
        if self._retry_handle is not None or self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop: the next commit_sync tries again first
        self._retry_handle = loop.call_later(self.no_space_retry_seconds, self._retry_held)

    def _retry_held(self) -> None:
        self._retry_handle = None
        writer = self.writer
        if writer is None or self.failed is not None or not self._held:
            return
        try:
            self._write_held(writer)
        except OSError as exc:
            if no_space(exc):
                self._schedule_retry()
            else:
                self.fail(exc)

    def _write_held(self, writer: JournalWriter) -> None:
        """Write what was kept while the file system was full, in order; then the
        store is available again. Raises the write's OSError if it still fails."""
        while self._held:
            data, last = self._held[0]
            writer.write(data, last)
            del self._held[0]
            self._held_bytes -= len(data)
            self.commits += 1
        if self.unavailable is None:
            return
        self.unavailable = None
        log.warning("data dir %s: the journal can be written again; deciding again", self.data_dir)
        if self.on_unavailable is not None:
            self.on_unavailable(None)
        if self._pending and self._flush_handle is None:
            with contextlib.suppress(RuntimeError):  # no loop: commit_sync writes them
                loop = asyncio.get_running_loop()
                self._flush_handle = loop.call_soon(self._flush, loop)

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Write what is pending (unless a write is still in flight or the store
        failed), then stop the background fsync and the worker thread; the
        writer stays open until ``close_writer``."""
        self.closed = True
        try:
            if self.inflight is not None:
                # An fsync-always write is still running in the worker thread: let it
                # finish; what queued behind it was never acknowledged (the event loop
                # that would have answered is not running), so it is not written after
                # a write whose outcome is unknown here.
                if self._io is not None:
                    self._io.shutdown(wait=True)
            elif self.writer is not None and self.failed is None:
                try:
                    self.flush_now()
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
            if self.flusher is not None:
                self.flusher.stop()
            if self._io is not None:
                self._io.shutdown(wait=True)

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
