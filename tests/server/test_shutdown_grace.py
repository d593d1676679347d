"""SIGTERM to a real ``tiergate serve`` holding a large state: it exits within its
``shutdown_grace`` (plus a margin for the journal's fsync and the exit), with code
0, and the next start answers every acknowledged admit as before."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from test_sighup import serve

from tiergate.engine import IMPLEMENTATION
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

SENDER = "106540352242922"
T0 = 1_767_225_600_000
GRACE = 0.5
MARGIN = 1.5  # the journal's last write and fsync, and the process's exit
SENDERS = 3_000
# Enough that the final snapshot takes several times the grace (a close that waited
# for it took 5.8 s here); the pure-Python engine decides the admits more slowly.
KEYS = 400_000 if IMPLEMENTATION == "compiled" else 100_000


def _config(path: Path) -> None:
    settings = f'shutdown_grace = {GRACE}\ndurability = "write"\nwebhook_listen = "127.0.0.1:0"\n'
    first = f'sender_id = "{SENDER}"\ntier = "TIER_UNLIMITED"\nthroughput_mps = 1000'
    lines = [settings, f"[[senders]]\n{first}\n"]
    lines += [f'[[senders]]\nsender_id = "2{i:014d}"\n' for i in range(SENDERS)]
    path.write_text("\n".join(lines), encoding="utf-8")


def _key(i: int) -> str:
    return f"{i:08d}".rjust(256, "k")


def _request(i: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=SENDER,
        recipient=f"49{i:011d}",
        kind=pb.TEMPLATE,
        category=pb.UTILITY,
        template_id="t1",
        idempotency_key=_key(i),
        at_unix_ms=T0 + i,
    )


async def _fill(port: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        tickets = []
        for start in range(0, KEYS, 1000):
            reqs = [_request(i) for i in range(start, start + 1000)]
            out = await stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs), timeout=60)
            tickets += [r.ticket for r in out.responses]
        return tickets


async def _repeat(port: int, picks: list[int]) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AdmissionControlStub(channel)
        return [(await stub.Admit(_request(i), timeout=30)).ticket for i in picks]


def test_sigterm_with_a_large_state_exits_within_the_grace(tmp_path: Path) -> None:
    _config(tmp_path / "tiergate.toml")
    with serve(tmp_path) as s:
        tickets = asyncio.run(_fill(s.port))
        assert all(tickets)
        started = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        code = s.process.wait(GRACE + 60)
        took = time.monotonic() - started
        log = s.log()
    assert code == 0, log
    assert took < GRACE + MARGIN, f"stopped after {took:.1f} s:\n{log}"
    assert "tiergate stopped" in log
    with serve(tmp_path) as s:  # every acknowledged admit answers as before
        picks = [0, KEYS // 2, KEYS - 1]
        assert asyncio.run(_repeat(s.port, picks)) == [tickets[i] for i in picks]
