"""The data directory: created if needed, locked for one tiergate process, writable.

``LOCK`` is held with ``flock`` for as long as the store is open and holds the
pid of the process that holds it, which a second process names when it is
refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .base import DataDirError
from .snapshot import TMP_SUFFIX

LOCK_NAME = "LOCK"


def lock_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` if needed, lock it and check that it is writable; return
    the lock file's descriptor (closing it releases the lock)."""
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
