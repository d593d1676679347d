"""What journal segments and snapshots share: sealed headers, numbered names, whole writes.

A sealed header is fixed little-endian fields, the magic and the format version
first, then a CRC-32 of those fields (u32), so a torn or damaged header is
told apart from one written by a newer tiergate.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import FormatVersionError

_CRC = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """One file format's header: ``layout`` (magic and version first, then
    ``fields``), ``magic``, the ``version`` this tiergate writes and reads up to,
    ``kind`` and ``format`` as messages name them, and ``bad``, the exception
    a damaged header raises."""

    layout: struct.Struct
    magic: bytes
    version: int
    kind: str  # "journal segment": what the file is not, when its magic is wrong
    format: str  # "journal": whose format version is newer
    bad: type[Exception]

    @property
    def size(self) -> int:
        return self.layout.size + _CRC.size

    def encode(self, *fields: int) -> bytes:
        head = self.layout.pack(self.magic, self.version, *fields)
        return head + _CRC.pack(zlib.crc32(head))

    def decode(self, data: bytes, path: Path) -> tuple[Any, ...]:
        """The fields after the magic, the version first, of a header of at least
        ``size`` bytes; ``bad`` if it is damaged, ``FormatVersionError`` if newer."""
        magic, *fields = self.layout.unpack_from(data, 0)
        if magic != self.magic:
            raise self.bad(f"not a tiergate {self.kind} (bad magic)")
        (crc,) = _CRC.unpack_from(data, self.layout.size)
        if crc != zlib.crc32(data[: self.layout.size]):
            raise self.bad("header checksum mismatch")
        version = fields[0]
        if version > self.version:
            raise FormatVersionError(
                f"{path}: {self.format} format version {version} is newer than this tiergate "
                f"reads (up to {self.version}); run a tiergate at least as new as the one that "
                "wrote this data dir"
            )
        return tuple(fields)


def list_numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """The files in ``directory`` whose names match ``pattern``, by the number its
    first group holds."""
    found: list[tuple[int, Path]] = []
    for entry in os.scandir(directory):
        m = pattern.match(entry.name)
        if m:
            found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    n = os.pwrite(fd, data, offset)
    if n < len(data):  # short writes are rare (a signal): finish from where it stopped
        view = memoryview(data)
        while n < len(data):
            n += os.pwrite(fd, view[n:], offset + n)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
