"""Durable state: the store interface and the embedded journal + snapshot store."""

from .base import (
    CorruptJournalError,
    CorruptSnapshotError,
    DataDirError,
    Durability,
    FormatVersionError,
    Recoverable,
    RecoveryReport,
    SnapshotEncoder,
    Store,
    StoreError,
    StoreFailedError,
    StoreUnavailableError,
)
from .embedded import EmbeddedStore

__all__ = [
    "CorruptJournalError",
    "CorruptSnapshotError",
    "DataDirError",
    "Durability",
    "EmbeddedStore",
    "FormatVersionError",
    "Recoverable",
    "RecoveryReport",
    "SnapshotEncoder",
    "Store",
    "StoreError",
    "StoreFailedError",
    "StoreUnavailableError",
]
