"""Snapshots of the service's state, taken while it goes on deciding.

A snapshot is due after ``every_records`` records or ``every_bytes`` journal
payload bytes (but not more often than every ``min_seconds``: it costs CPU in
proportion to the whole state), or ``every_seconds`` after the last one if
anything was committed since.

Taking one cuts the journal (everything committed is written, a new segment
starts). A service that gives a recipe of itself (``snapshot_recipe``) is
then snapshotted from the journal in a child process (``compaction``): the
event loop pays only for the cut, whatever the state's size. Otherwise, and
for the final snapshot at close (which also holds what the journal does not:
refusal counts), the service's state image is taken in the same step of the
event loop and the snapshot thread encodes and writes it. Either way the
snapshot thread then drops snapshots beyond ``keep`` and the journal segments
the oldest kept one covers. No process is forked (the server runs gRPC's
threads): the child is a new interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .base import Recoverable, SnapshotEncoder, StoreError, StoreUnavailableError
from .commit import GroupCommit
from .compaction import CompactionJob, Compactor
from .journal import list_segments, no_space
from .snapshot import list_snapshots, write_snapshot

log = logging.getLogger("tiergate.store")


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When a snapshot is due, and how many are kept (see the module docstring).
    A bad value raises ``ValueError`` naming ``EmbeddedStore``'s parameter."""

    every_records: int
    every_bytes: int
    every_seconds: float
    min_seconds: float
    keep: int

    def __post_init__(self) -> None:
        if self.every_records < 1:
            raise ValueError("snapshot_every_records: must be >= 1")
        if self.every_bytes < 1:
            raise ValueError("snapshot_every_bytes: must be >= 1")
        if self.every_seconds <= 0:
            raise ValueError("snapshot_every_seconds: must be > 0")
        if self.min_seconds < 0:
            raise ValueError("snapshot_min_seconds: must be >= 0")
        if self.keep < 2:
            raise ValueError(
                "keep_snapshots: must be >= 2 (the snapshot before the newest, and the "
                "journal since it, are what recovery falls back on when the newest is damaged)"
            )


class Snapshots:
    """When snapshots are due, taking them, and pruning what they make redundant."""

    def __init__(self, data_dir: Path, commit: GroupCommit, policy: SnapshotPolicy) -> None:
        self.data_dir = data_dir
        self._commit = commit
        self.policy = policy
        self._io: ThreadPoolExecutor | None = None
        self._lock: asyncio.Lock | None = None
        self.task: asyncio.Task[None] | None = None  # the background snapshot
        self.running = False
        self.last_at = time.monotonic()

        self.last_seq = 0
        self.last_bytes = 0
        self.last_seconds = 0.0
        self.last_stall_seconds = 0.0  # how long the event loop was busy with it
        self.taken = 0
        # Set when the store closes without waiting for a snapshot being taken: its
        # thread then writes and prunes nothing (its child process is killed).
        self.abandoned = False
        self.compacted = 0  # snapshots made from the journal in a child process
        # A snapshot from the journal failed: the next one takes the state's image.
        self.compaction_failed = False
        self._compactor = Compactor()

    def recovered(self, seq: int) -> None:
        """The state recovery restored came from the snapshot at ``seq`` (0: none)."""
        self.last_seq = seq
        self.last_at = time.monotonic()

    def due(self) -> bool:
        n = self._commit.records_since_cut
        if n == 0:
            return False
        age = time.monotonic() - self.last_at
        policy = self.policy
        if n >= policy.every_records or self._commit.bytes_since_cut >= policy.every_bytes:
            # Under heavy load, not more often than every min_seconds: a
            # snapshot costs CPU in proportion to the whole state.
            return age >= policy.min_seconds
        return age >= policy.every_seconds

    def start_if_due(self, service: Recoverable) -> None:
        """Start a background snapshot if one is due and none is being taken."""
        if self.task is None and not self.running and self.due():
            self.task = asyncio.get_running_loop().create_task(
                self._background(service), name="tiergate-snapshot"
            )

    async def _background(self, service: Recoverable) -> None:
        try:
            await self.take(service)
        except Exception as exc:
            if isinstance(exc, StoreUnavailableError) or no_space(exc):
                # The file system is full: the journal keeps every change meanwhile.
                log.warning("snapshot in %s put off: %s", self.data_dir, exc)
            else:
                log.exception("snapshot failed; the journal keeps every change, will retry later")
            self.last_at = time.monotonic()
        finally:
            self.task = None

    async def take(self, service: Recoverable) -> None:
        """Snapshot ``service`` now (after any snapshot already in progress)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._take(service)

    async def take_final(self, service: Recoverable) -> None:
        """``take`` at close: a failure is logged (the journal holds every change),
        but a full file system is raised."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                await self._take(service, final=True)
            except StoreUnavailableError:
                raise
            except Exception:
                # The journal holds every change: the next start replays it.
                log.exception("closing: the final snapshot failed")

    def _cut_journal(self, service: Recoverable) -> int:
        """Commit everything the service holds and start a new segment; return the
        sequence number the snapshot will cover. No awaits inside: the service's
        state at return is exactly the journal up to that number."""
        seq = self._commit.cut(service.drain_journal())
        self.last_at = time.monotonic()
        return seq

    async def _take(self, service: Recoverable, *, final: bool = False) -> None:
        """From the journal in a child process when the service gives a recipe (and
        this is not the final snapshot, nor did that fail before); else the image."""
        self.running = True
        try:
            if self._io is None:
                self._io = ThreadPoolExecutor(1, thread_name_prefix="tiergate-snapshot")
            recipe = getattr(service, "snapshot_recipe", None)
            make = None if final or self.compaction_failed or recipe is None else recipe()
            if make is not None:
                await self._compact(service, make)
            else:
                await self._image(service)
        finally:
            self.running = False

    async def _compact(self, service: Recoverable, make: Callable[[], Recoverable]) -> None:
        """Cut the journal (the loop's only work), then have a child process write
        the snapshot at the cut from the last snapshot and the journal since."""
        loop = asyncio.get_running_loop()
        assert self._io is not None
        # started ahead of the cut: the interpreter's start overlaps the barrier
        await loop.run_in_executor(self._io, self._compactor.start)
        await self._barrier()
        started = time.perf_counter()
        base = self.last_seq
        seq = self._cut_journal(service)
        self.last_stall_seconds = time.perf_counter() - started
        job = CompactionJob(self.data_dir, base, seq, make)
        try:
            size, freed = await loop.run_in_executor(self._io, self._compact_and_prune, job)
        except asyncio.CancelledError:
            self._compactor.kill()  # abandoned: it writes nothing more
            raise
        self.compacted += 1
        self._after(seq, size, started, freed)

    def _compact_and_prune(self, job: CompactionJob) -> tuple[int, int]:
        try:
            size = self._compactor.run(job)
        except StoreError:
            if not self.abandoned:
                self.compaction_failed = True
            raise
        return size, 0 if self.abandoned else self._prune()

    async def _barrier(self) -> None:
        """Until no commit is in flight (everything committed is in the journal)."""
        while True:
            await self._commit.barrier()
            if self._commit.inflight is None:
                return

    async def _image(self, service: Recoverable) -> None:
        """Cut the journal and take the service's state image in one step of the
        event loop, then encode and write it in the snapshot thread while the
        loop goes on deciding; the loop pays for the cut and the image."""
        loop = asyncio.get_running_loop()
        assert self._io is not None
        # The memory the image takes is allocated and touched in the snapshot
        # thread first: a page's first touch (the kernel zeroing it) costs
        # several times its copy, and would otherwise be paid on the loop.
        room = await loop.run_in_executor(self._io, service.snapshot_room())
        await self._barrier()
        with _cyclic_gc_paused():
            started = time.perf_counter()
            seq = self._cut_journal(service)
            encode = service.snapshot_image(room)  # no await between: the state at seq
            self.last_stall_seconds = time.perf_counter() - started
            del room  # what the image did not take (a table that grew meanwhile)
            size, freed = await loop.run_in_executor(self._io, self._write_and_prune, seq, encode)
            del encode  # the image, freed before collections resume
        # written: the next snapshot can start from it (if the journal's failed)
        self.compaction_failed = False
        self._after(seq, size, started, freed)

    def take_sync(self, service: Recoverable) -> None:
        """Blocking ``take``: everything in the calling thread."""
        with _cyclic_gc_paused():
            started = time.perf_counter()
            seq = self._cut_journal(service)
            encode = service.snapshot_image()
            self.last_stall_seconds = time.perf_counter() - started
            size, freed = self._write_and_prune(seq, encode)
            del encode  # the image, freed before collections resume
        self._after(seq, size, started, freed)

    def _write_and_prune(self, seq: int, encode: SnapshotEncoder) -> tuple[int, int]:
        """Encode and write the snapshot, then drop old snapshots and covered segments;
        (payload bytes, bytes freed)."""
        payload = encode()
        if self.abandoned:  # the store closed without waiting for it: nothing written
            return 0, 0
        write_snapshot(self.data_dir, seq, payload)
        return sum(map(len, payload)), 0 if self.abandoned else self._prune()

    def _prune(self) -> int:
        """Drop snapshots beyond ``policy.keep`` and the segments the oldest kept one
        covers; return the bytes freed.

        The journal is always kept from the snapshot before the newest on: with
        a single snapshot (the first one in a data dir) nothing of the journal
        is dropped, so a damaged newest snapshot is never the only copy of the
        state. A recovery that fell back past a damaged snapshot renamed it to
        ``*.corrupt``, so it is not counted here.
        """
        writer = self._commit.writer
        if writer is not None:
            # A rotated segment is cut to what it holds in the background; its
            # size counts once that is done (else a preallocated 16 MB would be
            # taken off journal_bytes for a segment that held a few KB).
            writer.wait_segment_work()
        snapshots = list_snapshots(self.data_dir)
        keep = snapshots[-self.policy.keep :]
        for _, old in snapshots[: -self.policy.keep]:
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

    def _after(self, seq: int, size: int, started: float, freed: int) -> None:
        writer = self._commit.writer
        if writer is not None:
            writer.older_bytes = max(0, writer.older_bytes - freed)
        self.last_seq = seq
        self.last_bytes = size
        self.last_seconds = time.perf_counter() - started
        self.taken += 1
        log.info(
            "snapshot at seq %d: %d bytes in %.3f s (event loop busy %.3f s); journal now %d bytes",
            seq,
            size,
            self.last_seconds,
            self.last_stall_seconds,
            writer.total_bytes if writer is not None else 0,
        )

    def close(self) -> None:
        """Stop the snapshot thread, waiting for it unless the snapshot was abandoned
        (see ``EmbeddedStore.aclose``)."""
        if self.abandoned:
            self._compactor.kill()
        if self._io is not None:
            self._io.shutdown(wait=not self.abandoned)
        self._compactor.close()


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
