"""A full disk under a serving sidecar, injected (no privileges needed): ENOSPC from
the journal writer's preallocation when a segment starts.

While the journal cannot be written the sidecar refuses every RPC as
UNAVAILABLE, naming the data dir and "no space", before deciding anything, and
health is NOT_SERVING; the decisions already made when the write failed are
kept and written once there is space. Then it serves again by itself: health
SERVING, decisions acknowledged, nothing acknowledged lost and nothing counted
twice, also across a restart. Start-up with little space starts on a smaller
segment; with none, ``tiergate serve`` exits 2 with one line.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import SENDER, T0, Harness, make_config, run_async, sender, serving
from server_harness import template_request as request

from tiergate import cli
from tiergate.client import columns_request
from tiergate.server import SERVICE_NAME, Sidecar, StartupError
from tiergate.store import journal as j
from tiergate.v1 import admission_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Disk:
    """``posix_fallocate`` as the journal writer sees it: fails with ENOSPC while full."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.refused = 0
        real = os.posix_fallocate

        def fallocate(fd: int, offset: int, length: int) -> None:
            if self.full:
                self.refused += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, offset, length)

        monkeypatch.setattr(j.os, "posix_fallocate", fallocate)


def admit(n: int, key: str = "") -> pb.AdmitRequest:
    return request(f"1555{n:07d}", T0 + 100 * n, category=pb.MARKETING, key=key or f"k{n}")


async def health(h: Harness) -> int:
    stub = health_pb2_grpc.HealthStub(h.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return int(reply.status)


async def refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    return str(info.value.details())


async def stream(h: Harness, reqs: list[pb.AdmitRequest]) -> list[pb.AdmitResponse]:
    return [r async for r in h.stub.AdmitStream(iter(reqs))]


@run_async
async def test_a_full_disk_refuses_every_rpc_then_serves_again_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    data = tmp_path / "data"
    config = make_config(data_dir=data, senders=(sender(tier="TIER_1K", throughput_mps=1000),))
    async with serving(config) as h:
        store = h.sidecar.store
        assert store is not None and store._commit.writer is not None
        store.no_space_retry_seconds = 0.05
        first = await h.stub.Admit(admit(1))
        assert first.decision == pb.DECISION_ADMIT and first.counted

        # The segment is full and there is no room for the next: the Admit that
        # needed it was decided, its record is kept, and it is not acknowledged.
        store._commit.writer.capacity = store._commit.writer.segment_size
        disk.full = True
        detail = await refused(h.stub.Admit(admit(2)))
        assert "no space left on device" in detail and str(data) in detail
        assert await health(h) == NOT_SERVING

        # Everything is refused before it decides: state does not move meanwhile.
        used = store.records_committed
        await refused(h.stub.Admit(admit(1)))  # a retry of an acknowledged admit too
        await refused(h.stub.Admit(admit(3)))
        await refused(h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[admit(4), admit(5)])))
        await refused(stream(h, [admit(6)]))
        await refused(h.stub.AdmitColumns(columns_request([admit(7)])))
        await refused(h.client.sender_state(SENDER, at_unix_ms=T0 + 1_000))
        await refused(
            h.stub.RecordFeedback(
                pb.RecordFeedbackRequest(
                    inbound_message=pb.InboundMessage(
                        sender_id=SENDER, recipient="15550000099", at_unix_ms=T0 + 1_000
                    )
                )
            )
        )
        await refused(h.stub.IngestWebhook(pb.IngestWebhookRequest(body=b"{}")))
        assert store.records_committed == used
        await asyncio.sleep(0.2)  # retried meanwhile: still full
        assert disk.refused > 2 and await health(h) == NOT_SERVING

        disk.full = False  # space again: no restart needed
        for _ in range(300):
            if await health(h) == SERVING:
                break
            await asyncio.sleep(0.02)
        assert await health(h) == SERVING
        again = await h.stub.Admit(admit(2))  # the refused one, retried with its key
        assert again.decision == pb.DECISION_ADMIT and again.counted  # counted once, kept
        fresh = await h.stub.Admit(admit(8))
        assert fresh.decision == pb.DECISION_ADMIT and fresh.counted
        state = await h.client.sender_state(SENDER, at_unix_ms=T0 + 10_000)
        assert state.used_24h == 3

    async with serving(config) as h:  # restarted: what it acknowledged, exactly
        state = await h.client.sender_state(SENDER, at_unix_ms=T0 + 10_000)
        assert state.used_24h == 3
        retried = await h.stub.Admit(admit(2))
        assert (retried.ticket, retried.counted) == (again.ticket, again.counted)


@run_async
async def test_start_up_with_little_space_starts_on_a_smaller_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.posix_fallocate

    def short(fd: int, offset: int, length: int) -> None:
        if length > 1 << 20:  # less than the 16 MiB segment is free
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    monkeypatch.setattr(j.os, "posix_fallocate", short)
    async with serving(make_config(data_dir=tmp_path / "data")) as h:
        store = h.sidecar.store
        assert store is not None and store._commit.writer is not None
        assert store._commit.writer.capacity == 1 << 20
        assert (await h.stub.Admit(admit(1))).decision == pb.DECISION_ADMIT


@run_async
async def test_no_space_for_the_journal_at_start_up_is_a_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Disk(monkeypatch).full = True
    with pytest.raises(StartupError, match=r"data_dir: .*no space left on device"):
        await Sidecar(make_config(data_dir=tmp_path / "data")).start()


def test_tiergate_serve_exits_2_with_one_line_when_there_is_no_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Disk(monkeypatch).full = True
    data = tmp_path / "data"
    code = cli.main(["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CONFIG == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("tiergate: cannot start: data_dir: ") and str(data) in last
    assert "no space left on device" in last and "Traceback" not in err
