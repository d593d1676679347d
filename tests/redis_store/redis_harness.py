"""Throwaway redis-server processes on free 127.0.0.1 ports (conftest.py's fixtures:
one standalone server for the module, a three-master Cluster made with
``redis-cli --cluster create``, servers a test may stop and start again), and
:func:`serving`: a sidecar serving on an ephemeral port, with a client stub.

Without a redis-server binary the tests skip on a developer's machine and fail
under CI (``CI=true``): ``make system-deps`` installs Debian's package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tiergate import config as cfg
from tiergate.server import Sidecar
from tiergate.v1 import admission_pb2_grpc as pb_grpc

LOOPBACK = "127.0.0.1"


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", 1) else None)
    if path is None:
        text = f"{name} not found: run `make system-deps` (Debian's redis-server package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(text)
        pytest.skip(text)
    return path


def _free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, port))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A free port whose Cluster bus port (10 000 above it) is free too."""
    for _ in range(200):
        port = _free(0)
        if port <= 55535:
            try:
                _free(port + 10000)
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 55536 with its cluster bus port free")


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited ({proc.returncode})")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"redis-server on port {port} not listening after {timeout} s")


class RedisProcess:
    """A redis-server on a fixed free port and its own directory: start, stop (SIGKILL
    or SIGTERM) and start again on the same port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.binary = _binary("redis-server")
        self.port = free_port()
        self.dir = workdir / str(self.port)
        self.dir.mkdir(parents=True)
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}"

    def start(self) -> RedisProcess:
        args = [self.binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "no", "--loglevel", "warning", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self.port, self.proc)
        return self

    def stop(self, kill: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> str:
        cli = _binary("redis-cli")
        out = subprocess.run(
            [cli, "-h", LOOPBACK, "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return out.stdout.decode()


@contextlib.asynccontextmanager
async def serving(config: cfg.ServeConfig) -> AsyncIterator[pb_grpc.AdmissionControlStub]:
    """A sidecar started with ``config`` and a stub of its AdmissionControl."""
    sidecar = Sidecar(config)
    await sidecar.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}")
    try:
        yield pb_grpc.AdmissionControlStub(channel)
    finally:
        await channel.close(None)
        await sidecar.stop(0.5)
