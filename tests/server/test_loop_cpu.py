"""``--loop-cpu N``: a real ``tiergate serve`` runs its event loop's thread alone on
CPU N and every other thread of the process (gRPC core's, worker threads started
later) on its other CPUs; a CPU it may not use is a startup error naming
``loop_cpu``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_sighup import LISTENING, Serving, tiergate_command

from tiergate import cli
from tiergate import config as cfg

pytestmark = pytest.mark.engine_independent

ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs a process allowed two CPUs")


def _cpus(text: str) -> set[int]:
    """The CPUs of a ``Cpus_allowed_list`` ("0-2,5")."""
    out: set[int] = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _threads(pid: int) -> dict[int, set[int]]:
    """Each live thread of ``pid`` and the CPUs it may run on."""
    out: dict[int, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # (the thread ended)
        line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
        out[int(task.name)] = _cpus(line.split(":", 1)[1])
    return out


def _settled(
    pid: int, loop: set[int], others: set[int], timeout: float = 10.0
) -> dict[int, set[int]]:
    """The threads once the main thread is on ``loop`` and every other on ``others``
    (the sweep's interval apart), failing with what they are on after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        threads = _threads(pid)
        main_ok = threads.get(pid) == loop
        rest = {tid: cpus for tid, cpus in threads.items() if tid != pid}
        if main_ok and rest and all(c == others for c in rest.values()):
            return threads
        if time.monotonic() > deadline:
            pytest.fail(f"threads of {pid} not where asked: {threads}")
        time.sleep(0.1)


@needs_two
def test_the_event_loop_runs_alone_on_its_cpu(tmp_path: Path) -> None:
    loop_cpu, others = ALLOWED[0], set(ALLOWED[1:])
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*tiergate_command(), "serve", "--listen", "127.0.0.1:0", "--loop-cpu", str(loop_cpu)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    s = Serving(proc, log)
    try:
        port = s.wait_for(LISTENING).group(1)
        # gRPC core's threads start after the loop's thread is pinned (on its CPU,
        # as threads it starts are) and are moved off it
        before = _settled(proc.pid, {loop_cpu}, others)
        assert len(before) >= 3
        assert f"event loop on CPU {loop_cpu}" in s.log()
        # calls are served as ever
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            got = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert got.status == health_pb2.HealthCheckResponse.SERVING
        # SIGHUP reads the config in a worker thread the loop's thread starts: it
        # begins on the loop's CPU and is moved off it
        s.sighup("SIGHUP")
        _settled(proc.pid, {loop_cpu}, others)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, s.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_cpu_the_process_may_not_use_is_a_startup_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    cpu = max(ALLOWED, default=0) + 1
    assert cli.main(["serve", "--listen", "127.0.0.1:0", "--loop-cpu", str(cpu)]) == 2
    err = capsys.readouterr().err
    assert f"loop_cpu: CPU {cpu} is not one this process may run on" in err


def test_loop_cpu_comes_from_flag_env_or_file(tmp_path: Path) -> None:
    assert cfg.load({}, env={}).loop_cpu == -1
    path = tmp_path / "t.toml"
    path.write_text("loop_cpu = 1\n")
    assert cfg.load({"config": str(path)}, env={}).loop_cpu == 1
    c = cfg.load({"config": str(path)}, env={"TIERGATE_LOOP_CPU": "0"})
    assert c.loop_cpu == 0 and c.origins["loop_cpu"] == "env"
    with pytest.raises(cfg.ConfigError, match=re.escape("loop_cpu: must be -1..4095")):
        cfg.load({"loop_cpu": "-2"}, env={})
