"""The event loop on a CPU of its own (``--loop-cpu N``).

Every accepted call is served by the event loop, one thread; gRPC core's own
threads read and write the connections, and under overload they turn calls
away (RESOURCE_EXHAUSTED) at tens of thousands a second. On a small machine
those threads then take the loop's CPU from it, and the calls it accepted wait
for a CPU, not for other calls (README, "Exposure"). With ``--loop-cpu N`` the
loop's thread runs on CPU ``N`` alone among the process's threads, and every
other thread (gRPC core's, the journal's, worker threads) on the process's
other CPUs. Threads start at any time (gRPC core's pool grows and shrinks), so
the process's threads are looked over every :data:`INTERVAL` seconds and each
one found on the wrong CPUs is moved; one started by the loop's thread runs on
the loop's CPU until then.

Linux only (``sched_setaffinity`` by thread id); the process must be allowed
at least two CPUs, ``N`` among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from pathlib import Path

__all__ = ["INTERVAL", "LoopPinning", "pin_loop"]

log = logging.getLogger("tiergate.server")

#: Seconds between looks over the process's threads.
INTERVAL = 0.5
_TASKS = Path("/proc/self/task")


class LoopPinning:
    """The calling thread (the event loop's) kept on ``cpu``, the process's other
    threads on the other CPUs it may use."""

    def __init__(self, cpu: int, allowed: set[int]) -> None:
        self.cpu = cpu
        self.others = frozenset(allowed - {cpu})
        self.loop_thread = threading.get_native_id()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        os.sched_setaffinity(self.loop_thread, {self.cpu})
        self.sweep()
        self._task = asyncio.get_running_loop().create_task(self._every())

    def sweep(self) -> None:
        """Move every other thread found on other CPUs than the loop's others."""
        for entry in os.listdir(_TASKS):
            tid = int(entry)
            if tid == self.loop_thread:
                continue
            # (a thread may end between the listing and these calls)
            with contextlib.suppress(OSError):
                if os.sched_getaffinity(tid) != self.others:
                    os.sched_setaffinity(tid, self.others)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                self.sweep()
            except OSError:  # (never the loop's end for it)
                log.exception("loop_cpu: the threads were not looked over")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def pin_loop(cpu: int) -> LoopPinning | None:
    """Pin the running event loop's thread to ``cpu`` and the process's other threads
    to its other CPUs (None when ``cpu`` is -1: nothing pinned). Raises ValueError
    naming the problem when that cannot be done here."""
    if cpu < 0:
        return None
    if not hasattr(os, "sched_setaffinity") or not _TASKS.is_dir():
        raise ValueError("pinning threads to CPUs needs Linux (sched_setaffinity, /proc)")
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise ValueError(
            f"CPU {cpu} is not one this process may run on ({', '.join(map(str, sorted(allowed)))})"
        )
    if len(allowed) < 2:
        raise ValueError("the loop needs a CPU of its own: this process may run on one only")
    pinning = LoopPinning(cpu, allowed)
    pinning.start()
    log.info(
        "event loop on CPU %d, the other threads on %s",
        cpu,
        ", ".join(map(str, sorted(pinning.others))),
        extra={"loop_cpu": cpu, "other_cpus": sorted(pinning.others)},
    )
    return pinning
