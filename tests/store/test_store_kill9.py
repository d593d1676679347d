"""kill -9 under sustained load: a real ``tiergate serve`` loses no acknowledged admit.

Each test runs a sidecar on a data directory, drives Admits (single, batched and
streamed, new recipients, repeated recipients and retried idempotency keys) from several
concurrent clients on loopback, and SIGKILLs it at a chosen point. After every
restart it checks, for everything acknowledged so far:

* every recipient acknowledged as counted is still counted (a dry-run Admit to
  it is not counted again) and used_24h is at least their number;
* every idempotency key still returns its first decision (same ticket).

24 kill points in all: 3 durability settings x 8 points each (after a number of
acknowledged admits from 0 to 1 500, and during a graceful shutdown's final
snapshot).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

SENDER = "106540352242922"
TEMPLATE = "spring_sale"
# --clock=request takes time from requests: a fixed day in the past, so nothing in the
# sidecar may fall back on the wall clock (idempotency keys would expire at once)
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 5  # request spacing, above the 1 000 msg/s throughput interval
CONFIG = f"""
[[senders]]
sender_id = "{SENDER}"
portfolio_id = "portfolio-kill9"
tier = "TIER_100K"
quality = "GREEN"
status = "CONNECTED"
throughput_mps = 1000

[[templates]]
template_id = "1213123456789013"
template_name = "{TEMPLATE}"
status = "APPROVED"
"""
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
# (acknowledged admits before the kill, or "term" = SIGKILL during a graceful stop)
KILL_POINTS: list[int | str] = [0, 1, 25, 120, 400, "term", 900, 1500]


def tiergate_command() -> list[str]:
    script = Path(sys.executable).with_name("tiergate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tiergate.cli"]


class Server:
    def __init__(self, tmp: Path, durability: str) -> None:
        self.tmp = tmp
        self.durability = durability
        self.config = tmp / "tiergate.toml"
        self.config.write_text(CONFIG)
        self.data_dir = tmp / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("serve-*.log"))[-2:]
        )

    def start(self, *extra: str) -> None:
        self.starts += 1
        log_path = self.tmp / f"serve-{self.starts:02d}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    *tiergate_command(),
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--config",
                    str(self.config),
                    "--data-dir",
                    str(self.data_dir),
                    "--clock",
                    "request",
                    "--durability",
                    self.durability,
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(log_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"tiergate serve did not start:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def term_then_kill(self, delay: float) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        time.sleep(delay)
        self.kill()


@dataclass
class Acked:
    """Everything the gateway saw acknowledged, across all restarts."""

    counted: set[str] = field(default_factory=set)
    first: dict[str, tuple[pb.AdmitRequest, pb.AdmitResponse]] = field(default_factory=dict)
    seq: int = 0  # requests issued so far (recipient and key numbers)
    clock: int = T0


def request(acked: Acked, recipient: str, key: str) -> pb.AdmitRequest:
    acked.clock += STEP_MS
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=recipient,
        kind=pb.TEMPLATE,
        category=pb.MARKETING,
        template_id=TEMPLATE,
        idempotency_key=key,
        at_unix_ms=acked.clock,
    )


def next_request(acked: Acked) -> pb.AdmitRequest:
    acked.seq += 1
    n = acked.seq
    if n % 10 == 3 and acked.first:  # a gateway retry: same key, same request
        key = sorted(acked.first)[n % len(acked.first)]
        return acked.first[key][0]
    if n % 10 == 7 and acked.counted:  # a second message to a counted recipient
        recipient = sorted(acked.counted)[n % len(acked.counted)]
        return request(acked, recipient, f"key-{n}")
    return request(acked, f"1555{n:07d}", f"key-{n}")


def record(acked: Acked, req: pb.AdmitRequest, resp: pb.AdmitResponse) -> None:
    if resp.decision != pb.DECISION_ADMIT:
        return
    if req.idempotency_key not in acked.first:
        acked.first[req.idempotency_key] = (req, resp)
    if resp.counted:
        acked.counted.add(req.recipient)


async def load(server: Server, acked: Acked, kill_after: int, workers: int = 6) -> int:
    """Send Admits until ``kill_after`` are acknowledged, then SIGKILL mid-flight."""
    acks = 0
    killed = asyncio.Event()
    deadline = time.monotonic() + 20

    async def worker(w: int, stub: pb_grpc.AdmissionControlStub) -> None:
        nonlocal acks
        while not killed.is_set() and time.monotonic() < deadline:
            batch, stream = w == 0, w == 1
            reqs = [next_request(acked) for _ in range(8 if batch else 5 if stream else 1)]
            resps: list[pb.AdmitResponse] = []
            try:
                if batch:
                    reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs), timeout=10)
                    resps = list(reply.responses)
                elif stream:
                    # Each answer of a stream is acknowledged when it arrives.
                    async for resp in stub.AdmitStream(iter(reqs), timeout=10):
                        resps.append(resp)
                else:
                    resps = [await stub.Admit(reqs[0], timeout=10)]
            except grpc.aio.AioRpcError:
                for req, resp in zip(reqs, resps, strict=False):
                    record(acked, req, resp)  # stream answers that arrived before the kill
                if killed.is_set():
                    return  # the rest was not acknowledged: the gateway saw an error
                raise
            # a response that arrives after the kill was issued was still acknowledged
            for req, resp in zip(reqs, resps, strict=True):
                record(acked, req, resp)
                acks += 1
            if acks >= kill_after and not killed.is_set():
                killed.set()
                server.kill()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        if kill_after == 0:
            server.kill()
            return 0
        await asyncio.gather(*(worker(w, stub) for w in range(workers)))
    assert killed.is_set(), f"load ended before {kill_after} acknowledged admits"
    return acks


async def verify(server: Server, acked: Acked) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        acked.clock += 600_000  # past what any pair owes (a burst of 45 is repaid in 270 s)
        at = acked.clock
        state = await stub.GetSenderState(
            pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=at), timeout=10
        )
        assert state.used_24h >= len(acked.counted), (
            f"used_24h {state.used_24h} < {len(acked.counted)} acknowledged counted recipients"
        )
        counted = sorted(acked.counted)
        for i in range(0, len(counted), 500):
            reqs = [
                pb.AdmitRequest(
                    sender_id=SENDER,
                    recipient=r,
                    kind=pb.TEMPLATE,
                    category=pb.MARKETING,
                    template_id=TEMPLATE,
                    at_unix_ms=at,
                    dry_run=True,
                )
                for r in counted[i : i + 500]
            ]
            reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs), timeout=30)
            lost = [
                req.recipient
                for req, resp in zip(reqs, reply.responses, strict=True)
                if resp.counted or resp.decision != pb.DECISION_ADMIT
            ]
            assert not lost, f"acknowledged recipients no longer counted: {lost[:5]}"
        firsts = list(acked.first.values())
        for i in range(0, len(firsts), 500):
            chunk = firsts[i : i + 500]
            reply = await stub.AdmitBatch(
                pb.AdmitBatchRequest(requests=[req for req, _ in chunk]), timeout=30
            )
            for (req, first), again in zip(chunk, reply.responses, strict=True):
                assert (again.decision, again.ticket, again.counted) == (
                    first.decision,
                    first.ticket,
                    first.counted,
                ), f"idempotency key {req.idempotency_key} changed its decision"


@pytest.mark.parametrize("durability", ["fsync-interval", "fsync-always", "write"])
def test_kill9_loses_no_acknowledged_admit(tmp_path: Path, durability: str) -> None:
    server = Server(tmp_path, durability)
    acked = Acked()
    try:
        server.start()
        for point in KILL_POINTS:
            if point == "term":
                # SIGKILL at 200 acks, restart, then SIGKILL again during a graceful stop
                asyncio.run(load(server, acked, kill_after=200))
                server.start()
                asyncio.run(verify(server, acked))
                server.term_then_kill(0.05)
            else:
                assert isinstance(point, int)
                asyncio.run(load(server, acked, kill_after=point))
            server.start()
            asyncio.run(verify(server, acked))
        assert len(acked.counted) > 1000
        assert len(acked.first) > len(acked.counted)
    except BaseException:
        print(server.log())
        raise
    finally:
        server.kill()
