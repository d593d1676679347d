"""Profile reloads under load, then kill -9 or SIGTERM: no acknowledged admit is lost.

A real ``tiergate serve`` on a data directory takes a steady admit load from
several concurrent clients while its config is switched back and forth
between ``meta-2025`` and a user profile that differs from it in one number,
with bursts of SIGHUPs (several reloads overlapping). It is then killed with
SIGKILL (or stopped with SIGTERM) right after a burst and restarted from its
data directory: every recipient acknowledged as counted must still be counted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from test_store_kill9 import Server

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 2  # per sender, above its 1 000 msg/s throughput interval
SENDERS = [f"10654035224{i:04d}" for i in range(4)]
TEMPLATE = "spring_sale"
CAUTIOUS = """
extends = "meta-2025"
name = "cautious"
[protection]
headroom_pct = 97
"""


def config_text(profile: str) -> str:
    senders = "".join(
        f"""
[[senders]]
sender_id = "{sid}"
portfolio_id = "portfolio-{sid}"
tier = "TIER_UNLIMITED"
quality = "GREEN"
status = "CONNECTED"
throughput_mps = 1000
"""
        for sid in SENDERS
    )
    return f'profile = "{profile}"\n{senders}'


@dataclass
class Acked:
    counted: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in SENDERS})
    clock: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SENDERS, T0))
    seq: int = 0

    def request(
        self, sender: str, *, dry_run: bool = False, recipient: str = ""
    ) -> pb.AdmitRequest:
        self.clock[sender] += STEP_MS
        if not recipient:
            self.seq += 1
            recipient = f"1{self.seq:011d}"
        return pb.AdmitRequest(
            sender_id=sender,
            recipient=recipient,
            kind=pb.TEMPLATE,
            category=pb.UTILITY,
            template_id=TEMPLATE,
            at_unix_ms=self.clock[sender],
            dry_run=dry_run,
        )

    def total(self) -> int:
        return sum(map(len, self.counted.values()))


class Reloading:
    """Switches the config's profile and sends SIGHUP in bursts."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cautious = server.tmp / "cautious.toml"
        self.cautious.write_text(CAUTIOUS)
        self.flip = False
        self.signals = 0
        self.write()

    def write(self) -> None:
        profile = str(self.cautious) if self.flip else "meta-2025"
        self.server.config.write_text(config_text(profile))

    def burst(self, n: int) -> None:
        assert self.server.proc is not None
        for _ in range(n):
            self.flip = not self.flip
            self.write()
            os.kill(self.server.proc.pid, signal.SIGHUP)
            self.signals += 1
            time.sleep(0.003)


async def load_and_reload(
    server: Server, acked: Acked, reloads: Reloading, bursts: int, end: str, delay: float
) -> None:
    """Admit load from one client per sender; ``bursts`` bursts of SIGHUPs meanwhile;
    ``delay`` s after the last, with the load still on, SIGKILL (``end`` "kill") or
    SIGTERM ("term", then the process must exit 0)."""
    stop = asyncio.Event()

    async def client(sender: str, stub: pb_grpc.AdmissionControlStub, batch: bool) -> None:
        while not stop.is_set():
            reqs = [acked.request(sender) for _ in range(40 if batch else 1)]
            try:
                if batch:
                    reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs), timeout=20)
                    resps = list(reply.responses)
                else:
                    resps = [await stub.Admit(reqs[0], timeout=20)]
            except grpc.aio.AioRpcError:
                if stop.is_set():
                    return  # not acknowledged: the gateway saw an error
                raise
            for req, resp in zip(reqs, resps, strict=True):
                if resp.decision == pb.DECISION_ADMIT and resp.counted:
                    acked.counted[sender].add(req.recipient)

    async def reloader() -> None:
        for _ in range(bursts):
            await asyncio.sleep(0.15)
            # an odd number of flips: the config a burst leaves differs from the one
            # before it, so a reload the sidecar reads only after the burst (a busy
            # host) still changes the profile
            await asyncio.to_thread(reloads.burst, 5)
        await asyncio.sleep(delay)
        stop.set()
        if end == "kill":
            server.kill()
        else:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 60)
            assert code == 0, server.log()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        clients = [client(s, stub, batch=i % 2 == 0) for i, s in enumerate(SENDERS)]
        await asyncio.gather(reloader(), *clients)


async def verify(server: Server, acked: Acked) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        for sender, counted in acked.counted.items():
            acked.clock[sender] += 10_000
            state = await stub.GetSenderState(
                pb.GetSenderStateRequest(sender_id=sender, at_unix_ms=acked.clock[sender]),
                timeout=20,
            )
            assert state.used_24h >= len(counted), (
                f"{sender}: used_24h {state.used_24h} < {len(counted)} acknowledged recipients"
            )
            recipients = sorted(counted)
            lost: list[str] = []
            for i in range(0, len(recipients), 1000):
                reqs = [
                    acked.request(sender, dry_run=True, recipient=r)
                    for r in recipients[i : i + 1000]
                ]
                reply = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs), timeout=30)
                lost += [
                    req.recipient
                    for req, resp in zip(reqs, reply.responses, strict=True)
                    if resp.counted
                ]
            assert not lost, f"{sender}: {len(lost)} acknowledged recipients lost: {lost[:3]}"


@pytest.mark.parametrize("end", ["kill", "term"])
def test_overlapping_reloads_under_load_lose_no_acknowledged_admit(
    tmp_path: Path, end: str
) -> None:
    server = Server(tmp_path, "fsync-interval")
    reloads = Reloading(server)
    acked = Acked()
    try:
        for cycle, delay in enumerate((0.0, 0.03, 0.1, 0.0)):
            server.start()
            if cycle:
                asyncio.run(verify(server, acked))
            asyncio.run(load_and_reload(server, acked, reloads, 8, end, delay))
            assert "SIGHUP: reloaded (profile meta-2025 -> cautious" in server.log()
        server.start()
        asyncio.run(verify(server, acked))
        assert acked.total() > 5_000
    except BaseException:
        print(server.log())
        raise
    finally:
        server.kill()
