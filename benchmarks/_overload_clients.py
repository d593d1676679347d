"""The Python clients of ``benchmarks/overload.py``, each run in its own process
(spawned, so no gRPC state is shared with the parent): closed and open loops
of Admit calls, the probe and health watcher, and streams that hold in-flight
slots."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import _common
import grpc

SENDER = "100000000000777"
ADMIT = "/tiergate.v1.AdmissionControl/Admit"
HEALTH = "/grpc.health.v1.Health/Check"
POOL = 20_000  # distinct recipients per process


def admit_requests(salt: int) -> list[bytes]:
    """Serialized AdmitRequests (a utility template each, distinct recipients)."""
    from tiergate.v1 import admission_pb2 as pb

    return [
        pb.AdmitRequest(
            sender_id=SENDER,
            recipient=f"1{salt:03d}{i:07d}",
            kind=pb.TEMPLATE,
            category=pb.UTILITY,
            template_id="overload_t1",
        ).SerializeToString()
        for i in range(POOL)
    ]


async def one_at_a_time(
    target: str, method: str, body: Sequence[bytes], seconds: float, limit: int, pause: float
) -> tuple[list[float], Counter[str]]:
    """Calls one after another for ``seconds`` (at most ``limit``): latencies (ms) of
    the answered ones and a count of every outcome."""
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end and i < limit:
            started = time.perf_counter()
            try:
                await call(body[i % len(body)], timeout=5.0)
                latencies.append((time.perf_counter() - started) * 1000)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1
            i += 1
            if pause:
                await asyncio.sleep(pause)
    return latencies, codes


async def _closed_loop(target: str, callers: int, seconds: float, salt: int) -> dict[str, Any]:
    body = admit_requests(salt)
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(ADMIT)
        end = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def caller() -> None:
            while time.perf_counter() < end:
                try:
                    await call(body[next(counter) % POOL], timeout=5.0)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    return {"codes": dict(codes), "seconds": elapsed}


async def _open_loop(
    target: str, rate: float, seconds: float, channels: int, deadline: float, salt: int
) -> dict[str, Any]:
    """Calls started at ``rate`` per second whatever the answers, over ``channels``
    connections, each with ``deadline``; at most ``rate * seconds`` calls."""
    body = admit_requests(salt)
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [c.unary_unary(ADMIT) for c in chans]
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            await calls[i % channels](body[i % POOL], timeout=deadline)
            latencies.append((time.perf_counter() - started) * 1000)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as e:
            codes[e.code().name] += 1

    total = int(rate * seconds)
    started = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.005)
    offered = time.perf_counter() - started
    if tasks:
        await asyncio.wait(tasks, timeout=deadline + 5)
    for c in chans:
        await c.close(None)
    return {"codes": dict(codes), "latencies": latencies, "sent": sent, "seconds": offered}


async def _watch(target: str, seconds: float) -> dict[str, Any]:
    """The probe's Admits and the health checks while the load runs."""
    await asyncio.sleep(0.5)  # the load processes start first
    health_body = [b""]  # HealthCheckRequest{service: ""}
    probe = one_at_a_time(target, ADMIT, admit_requests(900), seconds, 5000, 0.01)
    health = one_at_a_time(target, HEALTH, health_body, seconds, 5000, 0.02)
    (p_lat, p_codes), (h_lat, h_codes) = await asyncio.gather(probe, health)
    return {"probe": (p_lat, p_codes), "health": (h_lat, h_codes)}


async def _hold(target: str, streams: int, seconds: float) -> dict[str, Any]:
    """``streams`` AdmitStreams held open without a message for ``seconds``: each
    holds one of the server's in-flight slots. A stream that ends (gRPC core
    drops some of a burst of new streams) is opened again."""
    idle = asyncio.Event()

    async def nothing() -> Any:
        await idle.wait()
        yield b""  # pragma: no cover

    reopened = 0
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(ADMIT.replace("/Admit", "/AdmitStream"))
        calls = []
        for _ in range(streams):
            calls.append(method(nothing()))
            await asyncio.sleep(0.002)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await asyncio.sleep(0.05)
            for i, call in enumerate(calls):
                if call.done():
                    calls[i] = method(nothing())
                    reopened += 1
        for call in calls:
            call.cancel()
    return {"streams": streams, "reopened": reopened}


_CLIENTS = {"closed": _closed_loop, "open": _open_loop, "watch": _watch, "hold": _hold}


def _process_main(kind: str, args: tuple[Any, ...], out: Any) -> None:
    _common.end_with_parent(os.getppid())
    import uvloop

    out.send(uvloop.run(_CLIENTS[kind](*args)))  # type: ignore[operator]
    out.close()


def in_processes(jobs: Sequence[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Each (kind, args) client in its own process, all at once; their results."""
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for kind, a in jobs:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_process_main, args=(kind, a, send), daemon=True)
        p.start()
        pipes.append(recv)
        procs.append(p)
    results = [r.recv() for r in pipes]
    for p in procs:
        p.join(10)
    return results


# --- the run -------------------------------------------------------------------
