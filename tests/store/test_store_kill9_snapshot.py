"""kill -9 while a forked child is writing a snapshot.

A process commits decisions through ``persist`` with a snapshot due every few
records; its snapshots are slow (the test double sleeps while serialising, in
the child), so the SIGKILL lands while a snapshot child is still running. The
data dir must be free at once (the orphaned child does not hold the lock),
recovery must keep every acknowledged decision, and it must stay so after the
orphan finishes (its snapshot, if it lands, is consistent with the journal).
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
    import asyncio, sys, time
    from store_double import CounterService
    from tiergate.store import EmbeddedStore

    class SlowSnapshot(CounterService):
        def snapshot(self):
            time.sleep(0.4)  # runs in the forked child
            return super().snapshot()

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
            print(f"ack k{i} {store.snapshots_taken}", flush=True)  # acknowledged
            await asyncio.sleep(0.002)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.parametrize("acks_before_kill", [45, 90, 170])
def test_kill9_during_a_forked_snapshot(tmp_path: Path, acks_before_kill: int) -> None:
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
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acked) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(acked) == acks_before_kill, "the worker stopped early"

    def recover() -> CounterService:
        store = EmbeddedStore.open(data, "write")  # no DataDirError: the lock is free
        svc = CounterService()
        store.recover(svc)
        store.close()
        return svc

    svc = recover()
    assert set(acked) <= set(svc.keys), "an acknowledged decision was lost"
    time.sleep(0.8)  # the orphaned snapshot child finishes (or fails) meanwhile
    again = recover()
    assert again.state() == svc.state()
