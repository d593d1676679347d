"""Servers a benchmark starts end with it: redis-server, the no-op server and
tiergate serve must not outlive a benchmark stopped by SIGTERM or SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# A stand-in for a benchmark: starts the server, prints its pid, then waits.
NOOP = f"""
import sys, time
sys.path.insert(0, {str(BENCH)!r})
import _common, ceiling
_common.exit_on_sigterm()
with ceiling.noop_server() as server:
    print(server.proc.pid, flush=True)
    time.sleep(120)
"""

REDIS = f"""
import sys, time
sys.path.insert(0, {str(BENCH)!r})
import _common, redis
_common.exit_on_sigterm()
with _common.redis_server() as port:
    print(redis.Redis(host=_common.LOOPBACK, port=port).info("server")["process_id"], flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start(script: str) -> tuple[subprocess.Popen[str], int]:
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert bench.stdout is not None
    line = bench.stdout.readline()
    assert line.strip().isdigit(), f"the stand-in did not start its server: {line!r}"
    return bench, int(line)


def _reap(bench: subprocess.Popen[str]) -> None:
    bench.kill()
    bench.wait(timeout=30)
    assert bench.stdout is not None
    bench.stdout.close()


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


SERVERS = [
    pytest.param(NOOP, id="noop-server"),
    pytest.param(
        REDIS,
        id="redis-server",
        marks=[
            pytest.mark.redis,
            pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
        ],
    ),
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("script", SERVERS)
def test_a_server_ends_with_its_benchmark(script: str, sig: signal.Signals) -> None:
    bench, server = _start(script)
    try:
        assert _alive(server)
        bench.send_signal(sig)
        bench.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert bench.returncode == 128 + signal.SIGTERM  # exited through its finally blocks
        assert _gone_within(server, 15), f"server {server} outlived its benchmark"
    finally:
        _reap(bench)
        if _alive(server):
            os.kill(server, signal.SIGKILL)


# A stand-in for load.py killed mid-run: its client processes (multiprocessing
# children, bounded by a 60 s duration here) must end with it, not at the end
# of their duration.
CLIENTS = f"""
import multiprocessing, sys, threading, time
sys.path.insert(0, {str(BENCH)!r})
import _grpcload, _traffic

def report():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = multiprocessing.active_children()
        if kids:
            time.sleep(1)
            print(" ".join(str(k.pid) for k in multiprocessing.active_children()), flush=True)
            return
        time.sleep(0.1)

if __name__ == "__main__":
    threading.Thread(target=report, daemon=True).start()
    _grpcload.run_load(
        sys.argv[1], _grpcload.SHAPES["unary"], clients=2, duration=60.0,
        max_calls=10**9, warmup=0.0, workload=_traffic.noop_workload,
        workload_args={{"tag": "kill-", "pages": 1, "after_ms": 0}},
    )
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_load_clients_end_with_their_benchmark(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import ceiling

    script = tmp_path / "stand_in.py"  # spawn re-imports the main module: it must be a file
    script.write_text(CLIENTS, encoding="utf-8")
    # The server outlives the stand-in, so its clients would go on calling it.
    with ceiling.noop_server() as server:
        bench = subprocess.Popen(
            [sys.executable, str(script), server.target], stdout=subprocess.PIPE, text=True
        )
        try:
            _kill_and_check_clients(bench)
        finally:
            _reap(bench)


def _kill_and_check_clients(bench: subprocess.Popen[str]) -> None:
    assert bench.stdout is not None
    line = bench.stdout.readline()
    clients = [int(p) for p in line.split()]
    assert len(clients) == 2, f"the stand-in did not start its clients: {line!r}"
    assert all(_alive(pid) for pid in clients)
    bench.send_signal(signal.SIGKILL)
    bench.wait(timeout=30)
    for pid in clients:
        assert _gone_within(pid, 15), f"load client {pid} outlived its benchmark"
