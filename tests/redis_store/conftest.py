"""The fixtures of the Redis tests: throwaway redis-server instances
(``redis_harness.RedisProcess``). Without a redis-server binary they skip on a
developer's machine and fail under CI (``CI=true``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_harness import LOOPBACK, RedisProcess


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tiergate-redis-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    """A standalone redis-server for the module (tests flush it first)."""
    d = Path(tempfile.mkdtemp(prefix="tiergate-redis-"))
    server = RedisProcess(d).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    redis_server.cli("FLUSHALL", "SYNC")
    return redis_server.url


@pytest.fixture
def spare_redis(workdir: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, which it may stop and start again."""
    server = RedisProcess(workdir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """Three masters (no replicas) joined by ``redis-cli --cluster create``; yields a
    ``redis+cluster://`` URL naming all three as seeds."""
    d = Path(tempfile.mkdtemp(prefix="tiergate-cluster-"))
    nodes = [RedisProcess(d, "--cluster-enabled", "yes") for _ in range(3)]
    try:
        for n in nodes:
            n.start()
        addrs = [f"{LOOPBACK}:{n.port}" for n in nodes]
        nodes[0].cli("--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 20
        while "cluster_state:ok" not in nodes[0].cli("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise TimeoutError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(addrs)
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(d, ignore_errors=True)
