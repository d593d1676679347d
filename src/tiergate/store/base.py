"""The store interface: durable state as opaque bytes from the policy layer.

The policy layer (``AdmissionService``) owns what the state *means*. A store
only keeps the bytes it is handed, in order:

* ``service.drain_journal()`` gives the records of every state change since
  the last drain; the store makes them durable (``commit``) before a decision
  is acknowledged.
* ``service.snapshot_image(room)`` takes the whole state as of that moment
  and gives a function that encodes it (in another thread, while the service
  goes on deciding); the store keeps the bytes so that old records can be
  dropped. ``service.snapshot_room()`` gives a function, run in another thread
  ahead of it, that readies the memory the image will take.
* At start-up the store hands them back: ``service.restore(snapshot)``, then
  ``service.replay(record)`` for every record after it.

Those calls are ``Recoverable``. What the server needs from a store is
``Store``; the embedded journal + snapshots (``EmbeddedStore``) is one, and a
shared backend (Redis) can be another without touching the policy layer or
the engine:

* life cycle: ``recover`` once before serving; ``persist`` / ``persist_nowait``
  after every call that changed state (and before its answer leaves), or
  ``commit`` / ``commit_sync`` for records at hand; ``snapshot`` and
  ``maybe_snapshot`` (``snapshot_sync`` without an event loop); ``aclose``
  (or ``close``) at the end.
* health: ``unavailable`` (nothing acknowledged for now, the store retries by
  itself) and the callbacks ``on_unavailable`` and ``on_failure`` (nothing
  acknowledged until a restart), which the server turns into UNAVAILABLE,
  INTERNAL and NOT_SERVING.
* figures for metrics: ``journal_bytes``, ``commits``, ``no_space_episodes``,
  ``recovery_seconds``.

Opening is each store's own, since what it takes differs (``EmbeddedStore.open``
takes a data directory and a ``Durability``); the server opens one and then
speaks only ``Store``.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class Durability(enum.StrEnum):
    """When an acknowledged decision is safe (see docs/durability.md).

    ``FSYNC_ALWAYS``: written and fsynced before the acknowledgement; survives
    process crash and power loss. ``FSYNC_INTERVAL`` (default): written before
    the acknowledgement, fsynced at most ``fsync_interval_ms`` later; survives
    a process crash, a power loss may lose up to the interval. ``WRITE``:
    written, never fsynced by tiergate; survives a process crash, a power loss
    may lose what the OS had not yet written back.
    """

    FSYNC_ALWAYS = "fsync-always"
    FSYNC_INTERVAL = "fsync-interval"
    WRITE = "write"

    @classmethod
    def parse(cls, value: str | Durability) -> Durability:
        """Parse a setting, with an error that lists the accepted values."""
        if isinstance(value, Durability):
            return value
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(d.value for d in cls)
            raise ValueError(f"durability: unknown value {value!r} (expected {choices})") from None


class StoreError(Exception):
    """The store cannot safely continue or start; the message says why and where."""


class DataDirError(StoreError):
    """The data directory is missing and cannot be created, not a directory,
    not writable, or in use by another tiergate process."""


class FormatVersionError(StoreError):
    """A journal or snapshot file was written by a newer tiergate."""


class CorruptJournalError(StoreError):
    """Corruption before the journal's tail (valid records follow a bad one)."""

    def __init__(self, message: str, path: Path, offset: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class CorruptSnapshotError(StoreError):
    """No usable snapshot, and the journal does not cover an older one."""


class StoreFailedError(StoreError):
    """A write or fsync failed; nothing more is acknowledged (restart to recover)."""


class StoreUnavailableError(StoreError):
    """The journal cannot be written for now (its file system is full): nothing is
    acknowledged until it can. The store retries by itself and resumes; records of
    decisions made but not written meanwhile are kept and written first."""


#: Encodes a state image taken earlier (``Recoverable.snapshot_image``): the snapshot
#: payload in parts, to be written one after the other. Runs in the snapshot thread;
#: touches nothing the live service changes.
SnapshotEncoder = Callable[[], Sequence[bytes]]


@runtime_checkable
class Recoverable(Protocol):
    """What a store needs from the policy layer (``AdmissionService`` has it)."""

    def drain_journal(self) -> list[bytes]: ...

    def replay(self, record: bytes) -> None: ...

    def snapshot_room(self) -> Callable[[], object]: ...

    def snapshot_image(self, room: object = None) -> SnapshotEncoder: ...

    def restore(self, data: bytes) -> None: ...


@dataclass(slots=True)
class RecoveryReport:
    """What recovery found and did; logged at start-up and kept for metrics."""

    data_dir: str
    snapshot_path: str | None = None
    snapshot_seq: int = 0
    snapshot_bytes: int = 0
    records_replayed: int = 0
    replayed_bytes: int = 0  # payload bytes of the records replayed
    last_seq: int = 0
    segments_read: int = 0
    journal_bytes: int = 0
    truncated_bytes: int = 0
    seconds: float = 0.0
    snapshot_read_seconds: float = 0.0  # reading and checking the snapshot file
    restore_seconds: float = 0.0  # the policy layer's restore()
    replay_seconds: float = 0.0  # reading the journal and the policy layer's replay()
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        base = (
            f"snapshot seq {self.snapshot_seq}" if self.snapshot_path is not None else "no snapshot"
        )
        text = (
            f"recovered {self.data_dir} in {self.seconds:.3f} s: {base} "
            f"({self.snapshot_bytes} bytes), {self.records_replayed} journal records replayed "
            f"from {self.segments_read} segment(s), last seq {self.last_seq}, "
            f"journal {self.journal_bytes} bytes"
        )
        text += (
            f" (snapshot read {self.snapshot_read_seconds:.3f} s, restore "
            f"{self.restore_seconds:.3f} s, replay {self.replay_seconds:.3f} s)"
        )
        if self.truncated_bytes:
            text += f", {self.truncated_bytes} bytes truncated"
        return text


class Store(Protocol):
    """A durable home for the policy layer's journal records and snapshots (see the
    module docstring)."""

    #: Called once, when the store fails (the server stops reporting SERVING).
    on_failure: Callable[[StoreFailedError], None] | None
    #: Called with the error when nothing can be acknowledged for now, with None
    #: when it can again.
    on_unavailable: Callable[[StoreUnavailableError | None], None] | None

    @property
    def unavailable(self) -> StoreUnavailableError | None:
        """Why nothing is acknowledged for now (the journal's file system is full),
        or None."""
        ...

    @property
    def journal_bytes(self) -> int:
        """Bytes of journal currently kept (for metrics)."""
        ...

    @property
    def commits(self) -> int:
        """Journal writes so far (for metrics)."""
        ...

    @property
    def no_space_episodes(self) -> int:
        """Times the store found no room to write (for metrics)."""
        ...

    @property
    def recovery_seconds(self) -> float:
        """How long the last ``recover`` took (for metrics)."""
        ...

    def recover(self, service: Recoverable) -> RecoveryReport:
        """Load the latest durable state into ``service``; call once, before serving."""
        ...

    async def commit(self, records: Sequence[bytes]) -> None:
        """Make ``records`` (and everything committed before them) durable, then return.

        A store may group concurrent callers into one write (group commit). An
        empty ``records`` still waits for earlier commits, so a decision that
        read their effects is never acknowledged ahead of them.
        """
        ...

    def commit_sync(self, records: Sequence[bytes]) -> None:
        """Blocking ``commit`` for tools and tests (no event loop)."""
        ...

    async def persist(self, service: Recoverable) -> None:
        """``commit(service.drain_journal())``, then start a snapshot if one is due."""
        ...

    def persist_nowait(self, service: Recoverable) -> Awaitable[None] | None:
        """``persist`` without a coroutine: what to await before acknowledging (None:
        everything is already durable). Raises, or fails the awaitable, as ``persist``."""
        ...

    async def maybe_snapshot(self, service: Recoverable) -> bool:
        """Snapshot now if the record count or age threshold is reached."""
        ...

    async def snapshot(self, service: Recoverable) -> None:
        """Snapshot now and drop journal segments it covers."""
        ...

    def snapshot_sync(self, service: Recoverable) -> None:
        """Blocking ``snapshot`` for tools and tests."""
        ...

    async def aclose(
        self, service: Recoverable | None = None, *, deadline: float | None = None
    ) -> None:
        """Finish pending work, commit the service's last records, fsync and close;
        work that only speeds up the next start (a snapshot) ends by ``deadline``
        (``time.monotonic()``), committing and fsyncing do not."""
        ...

    def close(self) -> None:
        """Blocking close: write what is pending, fsync, release the data dir."""
        ...
