"""Snapshots made from the journal in a child process, off the event loop.

A snapshot at journal record ``seq`` is the state the snapshot before it
(``base``, 0: none) and the journal records after it up to ``seq`` recover:
the child process restores that snapshot into a fresh service, replays those
records, encodes the result and writes ``snapshot-<seq>.tgs``. The serving
process only cuts the journal (everything committed is written and a new
segment starts at ``seq + 1``), so the event loop pays nothing in proportion
to the state, and the child's work takes neither the server's GIL nor its
memory. The snapshot is consistent with the journal by construction: it is
what a restart at ``seq`` would recover.

The child is started with ``subprocess`` (a new interpreter, not a fork of a
process running gRPC's threads) running ``child``, and kept for the next
snapshots (``Compactor``); its jobs arrive pickled on stdin (the ticket key
never appears on a command line).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import subprocess
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import Recoverable, StoreError
from .journal import SegmentScan, iter_frames, list_segments, read_segment
from .snapshot import read_snapshot, snapshot_name, write_snapshot

__all__ = ["CompactionJob", "Compactor", "compact"]


@dataclass(frozen=True, slots=True)
class CompactionJob:
    """What a child process needs to write the snapshot at ``seq``."""

    data_dir: Path
    base_seq: int  # the snapshot it starts from (0: the journal from its first record)
    seq: int
    make: Callable[[], Recoverable]  # a fresh service like the serving one (pickled)


def compact(job: CompactionJob) -> int:
    """Write the snapshot at ``job.seq`` from the snapshot at ``job.base_seq`` and the
    journal after it; return the payload's bytes. Raises ``StoreError`` when the
    files do not hold exactly those records."""
    service = job.make()
    if job.base_seq:
        path = job.data_dir / snapshot_name(job.base_seq)
        got, payload = read_snapshot(path)
        if got != job.base_seq:
            raise StoreError(f"{path}: header says seq {got}")
        service.restore(payload)
        del payload
    expected = job.base_seq + 1
    segments = list_segments(job.data_dir)
    for i, (first, path) in enumerate(segments):
        if expected > job.seq or first > expected:
            break
        if i + 1 < len(segments) and segments[i + 1][0] <= expected:
            continue  # wholly before the records wanted
        data = read_segment(path)
        scan = SegmentScan(path=path, size=len(data))
        for seq, start, stop in iter_frames(data, path, first, scan):
            if seq < expected:
                continue
            if seq != expected or seq > job.seq:
                break
            service.replay(data[start:stop])
            expected += 1
    if expected != job.seq + 1:
        raise StoreError(
            f"{job.data_dir}: the journal after snapshot seq {job.base_seq} reaches seq "
            f"{expected - 1}, not {job.seq}"
        )
    parts = service.snapshot_image()()
    write_snapshot(job.data_dir, job.seq, parts)
    return sum(map(len, parts))


class Compactor:
    """The child process that writes snapshots from the journal, one job at a time,
    started with the first job and kept for the next ones (an interpreter's start
    costs more than a small state's snapshot). Jobs go to its stdin pickled,
    behind their length; it answers a line each: ``ok <payload bytes>`` (then
    `` exit`` when it ends, holding more than ``KEEP_RSS_BYTES``) or ``error
    <why>``. It exits at the end of its stdin, and dies with this process.
    Used from the snapshot thread only (``kill`` from any)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def _started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _end(proc)  # ended (killed, or it failed): its pipes closed
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            # a store dropped without close() (its process dying) ends the child too
            weakref.finalize(self, _end, proc)
        return proc

    def start(self) -> None:
        """Start the child now, if it is not running (ahead of a job)."""
        self._started()

    def run(self, job: CompactionJob) -> int:
        """Have the child write ``job``'s snapshot: its payload's bytes. Raises
        ``StoreError`` saying why when it could not."""
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        data = pickle.dumps(job)
        try:
            proc.stdin.write(_LENGTH.pack(len(data)) + data)
            proc.stdin.flush()
            reply = proc.stdout.readline().decode(errors="replace").strip()
        except OSError as exc:
            reply = f"error {exc}"
        if reply.startswith("ok "):
            size, _, ending = reply[3:].partition(" ")
            if ending == "exit":  # it ends rather than keep what it held: start anew
                self._proc = None
                _end(proc)
            return int(size)
        if not reply:
            proc.kill()
            reply = f"error the child process ended (exit {proc.wait()})"
        raise StoreError(
            f"the snapshot at seq {job.seq} could not be made from the journal: {reply[6:]}"
        )

    def kill(self) -> None:
        """End the child at once (a job it was doing writes nothing more)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self) -> None:
        """Let the child end (its stdin ends), killing it if it does not soon."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)


def _end(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_LENGTH = struct.Struct("<Q")
#: Added to the child's nice value: on a busy machine the server's threads get the
#: CPU before it (its snapshot then takes longer, the journal meanwhile holds all).
NICENESS = 10
#: A child holding more memory than this after a job (what the allocator kept of
#: a large state's) ends, and the next job starts a new one.
KEEP_RSS_BYTES = 256 << 20
_CHILD = "import sys; from tiergate.store.compaction import child; sys.exit(child())"


def _die_with(parent: int) -> None:
    """This process gets SIGKILL when ``parent`` ends (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # ended before that took effect
        os._exit(1)


def child() -> int:
    """The child process's loop (``Compactor``): jobs from stdin until it ends.
    It runs at a lower priority (``NICENESS``), ends with the server, not on a
    terminal's Ctrl-C or a SIGTERM sent to the server's process group; its
    replies have stdout to themselves."""
    _die_with(int(sys.argv[1]))
    os.nice(NICENESS)  # the server's threads first: its decisions wait on no snapshot
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return 0
        job = pickle.loads(stdin.read(_LENGTH.unpack(head)[0]))
        try:
            if not isinstance(job, CompactionJob):
                raise TypeError("expected a CompactionJob")
            reply = f"ok {compact(job)}"
        except Exception as exc:
            reply = " ".join(f"error {type(exc).__name__}: {exc}".split())
        ending = _rss_bytes() > KEEP_RSS_BYTES
        replies.write(reply + (" exit\n" if ending and reply.startswith("ok") else "\n"))
        replies.flush()
        if ending:
            return 0


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
