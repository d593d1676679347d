"""kill -9 while a snapshot is being encoded and written, with no child process.

A process commits decisions through ``persist`` with a snapshot due every few
records, and ``os.fork`` made to fail: the state image is taken on the event
loop at the journal's cut and encoded and written by the snapshot thread. Its
encoding is slow (the test double sleeps between the payload's parts, in that
thread), so the SIGKILL lands while a snapshot is being written and decisions
go on being acknowledged. Recovery must keep every acknowledged decision,
remove the half-written file, and give the same state every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from store_double import CounterService

from tiergate.store import EmbeddedStore

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys, threading, time
    from store_double import CounterService
    from tiergate.store import EmbeddedStore

    def no_fork():
        raise AssertionError("os.fork() called")

    os.fork = no_fork

    def say(line):  # one write a line: two threads print
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    class SlowParts(list):
        # Iterating the payload's parts (to checksum, then to write them) takes a
        # while after the first part: the snapshot file is half written meanwhile.
        def __iter__(self):
            for i, part in enumerate(list.__iter__(self)):
                if i:
                    time.sleep(0.05)
                yield part

    class SlowSnapshot(CounterService):
        def snapshot_image(self, room=None):
            encode = super().snapshot_image(room)

            def slow():
                say(f"encoding in {threading.current_thread().name}")
                data = b"".join(encode())
                step = len(data) // 8 + 1
                return SlowParts(data[i : i + step] for i in range(0, len(data), step))

            return slow

    async def main(data):
        store = EmbeddedStore.open(
            data, "fsync-interval", snapshot_every_records=40, snapshot_min_seconds=0
        )
        svc = SlowSnapshot()
        store.recover(svc)
        i = 0
        while True:
            i += 1
            svc.incr(f"r{i % 17}", key=f"k{i}")
            await store.persist(svc)
            say(f"ack k{i} {store.snapshots_taken}")  # acknowledged
            await asyncio.sleep(0.002)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.parametrize(("snapshots_before", "acks_during"), [(0, 3), (1, 40), (2, 120)])
def test_kill9_during_a_snapshot_write(
    tmp_path: Path, snapshots_before: int, acks_during: int
) -> None:
    data = tmp_path / "data"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data)], stdout=subprocess.PIPE, env=env, text=True
    )
    acked: list[str] = []
    encodings = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        during = -1  # acks seen since the snapshot being written began
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("encoding"):
                assert line.split()[-1].startswith("tiergate-snapshot")
                encodings += 1
                if encodings == snapshots_before + 1:
                    during = 0
                continue
            acked.append(line.split()[1])
            if during >= 0:
                during += 1
                if during == acks_during:
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert encodings == snapshots_before + 1, "the worker stopped early"
    assert proc.returncode == -signal.SIGKILL

    def recover() -> CounterService:
        store = EmbeddedStore.open(data, "write")
        svc = CounterService()
        store.recover(svc)
        store.close()
        return svc

    svc = recover()
    assert set(acked) <= set(svc.keys), "an acknowledged decision was lost"
    assert not list(data.glob("*.tmp"))
    assert recover().state() == svc.state()
