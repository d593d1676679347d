"""Snapshot files: the whole policy state as of one journal sequence number.

``snapshot-<seq, 20 digits>.tgs``::

    magic b"\\x89TGSNAP\\n" | version u32 | flags u32 | seq u64 | length u64 |
    payload crc32 u32 | header crc32 u32 | payload (length bytes)

``seq`` is the last journal record the snapshot includes; recovery replays
the records after it. A snapshot is written to a temporary file, fsynced,
renamed into place and the directory fsynced, so a crash leaves either the
old set of snapshots or the new one, never a half-written file under a
snapshot name.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from .files import SealedHeader, fsync_dir, list_numbered, write_all

SNAPSHOT_MAGIC = b"\x89TGSNAP\n"
SNAPSHOT_VERSION = 1
SNAPSHOT_SUFFIX = ".tgs"
TMP_SUFFIX = ".tmp"
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})\.tgs$")


class BadSnapshot(Exception):
    """A snapshot that is truncated or fails a checksum (reason in str())."""


_HEADER = SealedHeader(
    struct.Struct("<8sIIQQI"),  # magic, version, flags, seq, length, payload crc32
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
    kind="snapshot",
    format="snapshot",
    bad=BadSnapshot,
)
SNAPSHOT_HEADER_SIZE = _HEADER.size  # 40


def snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """Snapshots in ``directory``, oldest first."""
    return list_numbered(directory, _SNAPSHOT_RE)


def encode_snapshot_header(seq: int, payload: bytes | Sequence[bytes]) -> bytes:
    parts = [payload] if isinstance(payload, bytes) else payload
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return _HEADER.encode(0, seq, sum(map(len, parts)), crc)


def write_snapshot(directory: Path, seq: int, payload: bytes | Sequence[bytes]) -> Path:
    """Write ``payload`` (the bytes, or their parts in order) as the snapshot for
    ``seq`` atomically; return its path."""
    parts = [payload] if isinstance(payload, bytes) else payload
    final = directory / snapshot_name(seq)
    tmp = directory / (snapshot_name(seq) + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, encode_snapshot_header(seq, parts))
        for part in parts:
            write_all(fd, part)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, final)
    fsync_dir(directory)
    return final


def read_snapshot(path: Path) -> tuple[int, bytes]:
    """Return ``(seq, payload)``; ``BadSnapshot`` if damaged, ``FormatVersionError`` if newer."""
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(SNAPSHOT_HEADER_SIZE)
            if len(head) < SNAPSHOT_HEADER_SIZE:
                raise BadSnapshot(f"truncated header ({len(head)} of {SNAPSHOT_HEADER_SIZE} bytes)")
            _version, _flags, seq, length, payload_crc = _HEADER.decode(head, path)
            have = os.fstat(f.fileno()).st_size - SNAPSHOT_HEADER_SIZE
            if have != length:
                raise BadSnapshot(
                    f"payload is {have} bytes, header says {length} (truncated or padded)"
                )
            payload = f.read(length)  # one allocation, no copy: restore gets it as is
    except OSError as exc:
        raise BadSnapshot(f"cannot read: {exc}") from exc
    if len(payload) != length:
        raise BadSnapshot(f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != payload_crc:
        raise BadSnapshot("payload checksum mismatch")
    return int(seq), payload
