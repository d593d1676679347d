"""The ticket key: the secret tickets are signed with, kept in the data directory.

``ticket.key`` holds 32 hex digits (128 bits) and a newline. It is made once,
the first time a data directory is used, readable by its owner only (mode
0600) and written atomically (a temporary file, fsync, rename, fsync of the
directory), then only read: at every start, before recovery, so the tickets
replayed idempotency keys answer with are the ones first handed out. Losing it
only costs the tickets issued before: they no longer release anything (their
slots stay counted).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tiergate.engine.tickets import TICKET_KEY_BYTES

from .base import StoreError

__all__ = ["TICKET_KEY_FILE", "load_or_create"]

TICKET_KEY_FILE = "ticket.key"


def load_or_create(data_dir: Path) -> bytes:
    """The data directory's ticket key, made first if it has none. Raises StoreError
    when the file cannot be read or written, or does not hold a key."""
    path = Path(data_dir) / TICKET_KEY_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path)
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: cannot read the ticket key ({e})") from e
    digits = text.strip()
    if len(digits) != 2 * TICKET_KEY_BYTES:
        raise StoreError(f"{path}: a ticket key is {2 * TICKET_KEY_BYTES} hex digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise StoreError(f"{path}: a ticket key is {2 * TICKET_KEY_BYTES} hex digits") from None


def _create(path: Path) -> bytes:
    key = os.urandom(TICKET_KEY_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a start that died while writing it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise StoreError(f"{path}: cannot write the ticket key ({e})") from e
    return key
