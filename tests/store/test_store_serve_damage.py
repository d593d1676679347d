"""``tiergate serve`` on a damaged or unusable data dir: the documented behaviour.

A torn journal tail is cut and reported and the sidecar starts with every
acknowledged admit; a flipped byte inside the journal makes it refuse to start
with a message naming the file and offset; an unusable data dir is a clear
start-up error; a damaged snapshot falls back on the one before it, or on the
journal from the start when it is the first. Never a silent loss.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from test_store_kill9 import Acked, Server, load, tiergate_command, verify

from tiergate.store import journal as j
from tiergate.store import snapshot as snap

pytestmark = pytest.mark.slow


def journal_with_admits(tmp_path: Path) -> tuple[Server, Acked]:
    server = Server(tmp_path, "fsync-interval")
    acked = Acked()
    server.start()
    asyncio.run(load(server, acked, kill_after=60))  # SIGKILLed after 60 acknowledged
    return server, acked


def segments(server: Server) -> list[Path]:
    return [p for _, p in j.list_segments(server.data_dir)]


def frame_offsets(path: Path) -> list[int]:
    raw = path.read_bytes()
    offsets, off = [], j.SEGMENT_HEADER_SIZE
    while off + j.FRAME_OVERHEAD <= len(raw):
        if not any(raw[off : off + j.FRAME_OVERHEAD]):
            break  # the preallocated rest of a segment the server did not close
        (length,) = struct.unpack_from("<I", raw, off + 4)
        offsets.append(off)
        off += j.FRAME_OVERHEAD + length
    return offsets


def start_fails(server: Server, *extra: str) -> str:
    proc = subprocess.run(
        [
            *tiergate_command(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(server.config),
            "--data-dir",
            str(server.data_dir),
            "--clock",
            "request",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, "tiergate serve started on a data dir it must refuse"
    return proc.stdout + proc.stderr


def test_torn_tail_is_cut_reported_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    server, acked = journal_with_admits(tmp_path)
    try:
        last = segments(server)[-1]
        end = frame_offsets(last)[-1]
        end += j.FRAME_OVERHEAD + struct.unpack_from("<I", last.read_bytes(), end + 4)[0]
        with open(last, "r+b") as f:  # a copy the crash tore: half a frame after the last
            f.seek(end)
            f.write(struct.pack("<IIQ", 0xDEADBEEF, 400, 10**6) + b"partial")
        server.start()
        asyncio.run(verify(server, acked))
        assert "torn or corrupt record at the journal tail" in server.log()
        assert str(last) in server.log()
    finally:
        server.kill()


def test_flipped_byte_inside_the_journal_refuses_to_start(tmp_path: Path) -> None:
    server, _ = journal_with_admits(tmp_path)
    seg = max(segments(server), key=lambda p: p.stat().st_size)
    offsets = frame_offsets(seg)
    assert len(offsets) > 10
    bad = offsets[len(offsets) // 2]
    raw = bytearray(seg.read_bytes())
    raw[bad + j.FRAME_OVERHEAD + 1] ^= 0x04
    seg.write_bytes(bytes(raw))
    out = start_fails(server)
    assert str(seg) in out and f"offset {bad}" in out and "--recover-truncate" in out
    assert seg.read_bytes() == bytes(raw)  # refused without touching anything


def test_recover_truncate_flag_starts_from_the_records_before_the_damage(tmp_path: Path) -> None:
    server, _ = journal_with_admits(tmp_path)
    seg = max(segments(server), key=lambda p: p.stat().st_size)
    offsets = frame_offsets(seg)
    bad = offsets[len(offsets) // 2]
    raw = bytearray(seg.read_bytes())
    raw[bad + j.FRAME_OVERHEAD + 1] ^= 0x04
    seg.write_bytes(bytes(raw))
    start_fails(server)
    server.start("--recover-truncate")
    try:
        assert server.proc is not None and server.proc.poll() is None
        assert seg.stat().st_size == bad  # cut exactly at the damaged record
        cut = list(server.data_dir.glob("*.corrupt"))
        assert cut, "the cut bytes must be kept for inspection"
        assert bytes(raw[bad:]) in b"".join(p.read_bytes() for p in cut)
    finally:
        server.kill()


def test_unusable_data_dir_is_a_clear_start_up_error(tmp_path: Path) -> None:
    server = Server(tmp_path, "fsync-interval")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server.data_dir = blocker / "data"
    out = start_fails(server)
    assert "data_dir" in out and "cannot be created" in out and str(blocker) in out
    assert "Traceback" not in out


def test_second_sidecar_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    server = Server(tmp_path, "fsync-interval")
    server.start()
    try:
        assert server.proc is not None
        out = start_fails(server)
        assert f"in use by another tiergate process (pid {server.proc.pid})" in out
    finally:
        server.kill()


def stop_gracefully(server: Server) -> None:
    """SIGTERM, as an operator stops it: drain, final snapshot, exit 0."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) == 0, server.log()
    server.proc = None


def flip_snapshot_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[snap.SNAPSHOT_HEADER_SIZE + (len(raw) - snap.SNAPSHOT_HEADER_SIZE) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_damaged_first_snapshot_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    """After the first graceful stop the data dir holds one snapshot; the journal before
    it stays, so one flipped byte in it loses nothing (also no --recover-truncate)."""
    server, acked = journal_with_admits(tmp_path)
    server.start()
    stop_gracefully(server)
    ((_, only),) = snap.list_snapshots(server.data_dir)
    flip_snapshot_byte(only)
    server.start()
    try:
        asyncio.run(verify(server, acked))
        assert "damaged snapshot" in server.log()
    finally:
        server.kill()


def test_a_damaged_newest_snapshot_falls_back_to_the_older_plus_journal(tmp_path: Path) -> None:
    server, acked = journal_with_admits(tmp_path)
    server.start()
    stop_gracefully(server)
    server.start()
    asyncio.run(load(server, acked, kill_after=40))
    server.start()
    stop_gracefully(server)
    (older, _), (_, newest) = snap.list_snapshots(server.data_dir)
    flip_snapshot_byte(newest)
    server.start()
    try:
        asyncio.run(verify(server, acked))
        assert "damaged snapshot" in server.log() and f"snapshot seq {older}" in server.log()
    finally:
        server.kill()
