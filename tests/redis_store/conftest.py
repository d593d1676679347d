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

from tiergate.store import redis_counting

from .redis_harness import LOOPBACK, RedisProcess


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls to Redis bounded by 10 s, for tests that check answers, not time (a busy
    shared machine)."""
    monkeypatch.setattr(redis_counting, "DEFAULT_TIMEOUT", 10.0)


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


def _cluster(replicas: int, *extra: str) -> Iterator[tuple[str, list[RedisProcess]]]:
    """Three masters (and ``replicas`` replicas each) joined by ``redis-cli --cluster
    create``: a ``redis+cluster://`` URL naming every node as a seed, and the nodes."""
    d = Path(tempfile.mkdtemp(prefix="tiergate-cluster-"))
    nodes = [RedisProcess(d, "--cluster-enabled", "yes", *extra) for _ in range(3 * (1 + replicas))]
    try:
        for n in nodes:
            n.start()
        addrs = [f"{LOOPBACK}:{n.port}" for n in nodes]
        nodes[0].cli(
            "--cluster", "create", *addrs, "--cluster-replicas", str(replicas), "--cluster-yes"
        )
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in nodes):
            if time.monotonic() > deadline:
                raise TimeoutError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(addrs), nodes
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[str]:
    """Three masters, no replicas: a ``redis+cluster://`` URL."""
    for url, _ in _cluster(0):
        yield url


@pytest.fixture
def failover_cluster() -> Iterator[tuple[str, list[RedisProcess]]]:
    """Three masters with a replica each, a node timeout of one second (a master
    killed is replaced by its replica within seconds): the URL and the nodes."""
    # a replica however long out of touch may take over: a busy machine may need
    # several elections
    yield from _cluster(
        1, "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"
    )
