"""``tiergate serve`` on a real, small file system that fills up (a tmpfs).

The data dir lives on a tmpfs of a few MiB, filled with a filler file to leave
just the room wanted. The sidecar starts on less space than a full segment
(a smaller one), refuses every call as UNAVAILABLE with health NOT_SERVING
once the journal cannot be written, serves again by itself once the filler is
gone, and a restart finds everything it acknowledged. With no room for a
journal at all, it exits 2 with one line.

Mounting a tmpfs needs root (CI runs as root); where it cannot be mounted the
test says so and is skipped, and tests/server/test_store_faults.py covers the
same behaviour by injecting ENOSPC, without privileges.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_store_kill9 import SENDER, Acked, Server, record, request, tiergate_command, verify

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_store_faults.py injects the same faults")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip()}); "
            "test_store_faults.py injects the same faults"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def leave_free(fs: Path, name: str, room: int) -> Path:
    """Fill ``fs`` with the file ``name`` (growing it) until about ``room`` bytes are free."""
    filler = fs / name
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        take = free_bytes(fs) - room
        if take > 0:
            os.posix_fallocate(fd, os.fstat(fd).st_size, take)
    finally:
        os.close(fd)
    return filler


def server_on(tmp_path: Path, fs: Path) -> Server:
    server = Server(tmp_path, "fsync-interval")
    server.data_dir = fs / "data"
    return server


async def health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int((await stub.Check(health_pb2.HealthCheckRequest())).status)


def test_a_full_file_system_is_refused_then_served_again_losing_nothing(
    tmp_path: Path, small_fs: Path
) -> None:
    leave_free(small_fs, "filler-1", 400 << 10)  # room for a 256 KiB segment and one more
    server = server_on(tmp_path, small_fs)
    acked = Acked()
    server.start()
    try:
        assert "short of space" in server.log()
        leave_free(small_fs, "filler-2", 16 << 10)  # not even the least segment fits

        async def drive() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.AdmissionControlStub(channel)
                refused: list[pb.AdmitRequest] = []
                for b in range(400):  # ~2 KB of journal a batch: fills the segment
                    reqs = [request(acked, f"1556{40 * b + i:07d}", f"{b}-{i}") for i in range(40)]
                    try:
                        reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
                    except grpc.aio.AioRpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                        assert "no space left on device" in str(e.details())
                        assert str(server.data_dir) in str(e.details())
                        refused = reqs
                        break
                    for req, resp in zip(reqs, reply.responses, strict=True):
                        record(acked, req, resp)
                assert refused, "the file system never filled"
                assert await health(channel) == NOT_SERVING
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Admit(request(acked, "15569999999", "k-refused"))
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE

                (small_fs / "filler-2").unlink()  # space again
                deadline = time.monotonic() + 20
                while await health(channel) != SERVING:
                    assert time.monotonic() < deadline, "did not serve again by itself"
                    await asyncio.sleep(0.05)
                reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=refused))
                for req, resp in zip(refused, reply.responses, strict=True):
                    assert resp.decision == pb.DECISION_ADMIT
                    record(acked, req, resp)
                more = [request(acked, f"1557{i:07d}", f"m-{i}") for i in range(50)]
                reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=more))
                for req, resp in zip(more, reply.responses, strict=True):
                    record(acked, req, resp)

        asyncio.run(drive())
        assert len(acked.counted) > 1_000
        server.kill()
        server.start()
        asyncio.run(verify(server, acked))
        assert "Traceback" not in server.log()
    except BaseException:
        print(server.log())
        raise
    finally:
        server.kill()


def serve_once(server: Server) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *tiergate_command(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            str(server.config),
            "--data-dir",
            str(server.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("room", [8 << 10, 0])
def test_no_room_for_a_journal_exits_2_with_one_line(
    tmp_path: Path, small_fs: Path, room: int
) -> None:
    server = server_on(tmp_path, small_fs)
    server.start()  # a data dir with a journal and the config's sender in it
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # its segment cut to what it holds
    assert server.proc.wait(60) == 0
    leave_free(small_fs, "filler", room)
    proc = serve_once(server)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tiergate: cannot start: data_dir: ")
    assert str(server.data_dir) in last and "no space left on device" in last.lower()
    assert "Traceback" not in proc.stderr
    (small_fs / "filler").unlink()
    server.start()  # and starts once there is room, with the sender it had
    try:
        asyncio.run(verify(server, Acked()))
        assert SENDER in server.config.read_text()
    finally:
        server.kill()
