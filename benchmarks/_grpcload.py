"""gRPC load generation shared by ``ceiling.py`` and ``load.py``.

Load comes from separate client processes (``spawn``), each running asyncio on
uvloop with many calls in flight over one channel to 127.0.0.1. Every run is
bounded twice: a wall-clock duration and a maximum number of calls per process.

Requests are pre-serialized so the clients spend their CPU on the RPCs, not on
building messages: each pool item is an ``AdmitRequest`` body whose last field
is ``at_unix_ms``, written as a varint whose two low bytes (the item's offset
inside a 16 384 ms page) are stored with the item and whose high bytes (the
page's start time) are appended per call. So a batch of 1 000 items with
distinct, advancing simulated times is one ``bytes.join``. Under
``tiergate serve --clock=request`` this simulated clock drives every window,
bucket and rate, so throughput and pair-rate limits see realistic spacing.

Latencies are recorded in HdrHistograms (microseconds) per process and merged
in the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _common

SERVICE = "/tiergate.v1.AdmissionControl/"
PAGE_BITS = 14
PAGE_MS = 1 << PAGE_BITS  # one page of simulated time: 16.384 s
_AT_TAG = b"\x38"  # field 7 (at_unix_ms), wire type varint
_BATCH_TAG = b"\x0a"  # AdmitBatchRequest.requests, field 1, length-delimited
_COLUMNS_AT_TAG = b"\x4a"  # AdmitColumnsRequest.at_unix_ms, field 9, packed (length-delimited)
HIGH_LEN = 4  # varint bytes of (t >> 14) for Unix ms between 2^35 and 2^42

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Shape:
    """One way of asking: an RPC, items per call, and concurrent streams."""

    name: str
    rpc: str  # "unary" | "batch" | "stream" | "columns"
    batch: int = 1
    streams: int = 0
    in_flight: int = 64  # per client process: calls (unary, batch) or messages per stream

    @property
    def label(self) -> str:
        return {
            "unary": "Admit (unary)",
            "batch": f"AdmitBatch({self.batch})",
            "stream": f"AdmitStream x{self.streams}",
            "columns": f"AdmitColumns({self.batch})",
        }[self.rpc]


SHAPES: dict[str, Shape] = {
    "unary": Shape("unary", "unary", in_flight=64),
    "batch100": Shape("batch100", "batch", batch=100, in_flight=8),
    "batch1000": Shape("batch1000", "batch", batch=1000, in_flight=4),
    "stream1": Shape("stream1", "stream", streams=1, in_flight=64),
    "stream8": Shape("stream8", "stream", streams=8, in_flight=32),
    "columns1000": Shape("columns1000", "columns", batch=1000, in_flight=4),
}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def page_start(t_ms: int) -> int:
    return t_ms & ~(PAGE_MS - 1)


def high_bytes(page_t0: int) -> bytes:
    high = varint(page_t0 >> PAGE_BITS)
    if len(high) != HIGH_LEN:
        raise ValueError(f"simulated time {page_t0} out of the supported range")
    return high


def encode_item(fields: bytes, offset_ms: int) -> bytes:
    """An AdmitRequest body (without at_unix_ms) + the two low varint bytes of its time."""
    if not 0 <= offset_ms < PAGE_MS:
        raise ValueError("offset must lie inside one page")
    return fields + _AT_TAG + bytes((0x80 | (offset_ms & 0x7F), 0x80 | (offset_ms >> 7)))


@dataclass
class Pool:
    """Pre-serialized requests: pages of items, each page spanning PAGE_MS of simulated time.

    ``unary[p][i]`` is an AdmitRequest body missing its high time bytes;
    ``framed[p][i]`` is the same item framed as one ``requests`` entry of an
    AdmitBatchRequest. Page sizes are multiples of 1 000.
    """

    unary: list[list[bytes]]
    framed: list[list[bytes]] = field(default_factory=list)
    # AdmitColumns: per page, per chunk of ``columns_batch`` items, the request
    # body without ``at_unix_ms`` and each item's two low time bytes.
    columns: list[list[tuple[bytes, list[bytes]]]] = field(default_factory=list)
    columns_batch: int = 0

    def __post_init__(self) -> None:
        if not self.framed:
            self.framed = [
                [_BATCH_TAG + varint(len(it) + HIGH_LEN) + it for it in page] for page in self.unary
            ]


class Cursor:
    """Walks a pool page by page; the simulated clock advances one page per page."""

    def __init__(self, pool: Pool, t0_ms: int) -> None:
        self.pool = pool
        self.page = 0
        self.pos = 0
        self.t0 = page_start(t0_ms)
        self.high = high_bytes(self.t0)

    def _turn(self) -> None:
        self.pos = 0
        self.page = (self.page + 1) % len(self.pool.unary)
        self.t0 += PAGE_MS
        self.high = high_bytes(self.t0)

    def unary(self) -> bytes:
        items = self.pool.unary[self.page]
        if self.pos >= len(items):
            self._turn()
            items = self.pool.unary[self.page]
        item = items[self.pos]
        self.pos += 1
        return item + self.high

    def columns(self, n: int) -> tuple[bytes, int]:
        """An AdmitColumnsRequest of ``n`` items: the packed at_unix_ms column is the
        items' low time bytes joined by the page's high bytes (one varint each)."""
        if n != self.pool.columns_batch:
            raise ValueError(f"the pool holds AdmitColumns chunks of {self.pool.columns_batch}")
        chunks = self.pool.columns[self.page]
        if self.pos >= len(chunks) * n:
            self._turn()
            chunks = self.pool.columns[self.page]
        body, lows = chunks[self.pos // n]
        self.pos += n
        high = self.high
        packed = high.join(lows) + high
        return body + _COLUMNS_AT_TAG + varint(len(packed)) + packed, len(lows)

    def batch(self, n: int) -> tuple[bytes, int]:
        items = self.pool.framed[self.page]
        if self.pos >= len(items):
            self._turn()
            items = self.pool.framed[self.page]
        chunk = items[self.pos : self.pos + n]
        self.pos += len(chunk)
        high = self.high
        return high.join(chunk) + high, len(chunk)


# -- client process ----------------------------------------------------------


@dataclass
class ClientPlan:
    """What one client process does; picklable, built in the parent."""

    index: int
    target: str
    shape: Shape
    duration: float
    max_calls: int
    warmup: float
    rate: float  # calls (or stream messages) per second for this process; 0 = as fast as possible
    workload: Callable[..., Any]  # picklable: workload(pb2, stub, plan) -> awaitable Pool
    workload_args: dict[str, Any]
    sample_every: int = 64  # parse one response in this many to tally decisions
    parent_pid: int = 0  # the benchmark process: the client ends with it


@dataclass
class ClientResult:
    index: int
    calls: int
    items: int
    errors: int
    started: float
    finished: float
    histogram: bytes
    decisions: dict[str, int]
    error_sample: str = ""
    cpu_seconds: float = 0.0
    sim_end_ms: int = 0  # simulated time the cursor reached


class _Recorder:
    def __init__(self, pb2: Any, shape: Shape, sample_every: int) -> None:
        self.hist = _common.new_histogram()
        self.calls = 0
        self.items = 0
        self.errors = 0
        self.error_sample = ""
        self.tally: Counter[str] = Counter()
        self.pb2 = pb2
        self.shape = shape
        self.sample_every = sample_every
        self.recording = False

    def ok(self, latency_s: float, items: int, reply: bytes) -> None:
        if not self.recording:
            return
        self.calls += 1
        self.items += items
        self.hist.record_value(max(1, int(latency_s * 1e6)))
        if self.calls % self.sample_every == 0:
            self._sample(reply)

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.error_sample:
            self.error_sample = repr(exc)[:300]

    def _sample(self, reply: bytes) -> None:
        pb2 = self.pb2
        if self.shape.rpc == "batch":
            responses = list(pb2.AdmitBatchResponse.FromString(reply).responses)
        elif self.shape.rpc == "columns":
            cols = pb2.AdmitColumnsResponse.FromString(reply)
            for d, r in zip(cols.decisions, cols.reasons, strict=True):
                self.tally[f"{pb2.Decision.Name(d)}/{pb2.Reason.Name(r)}"] += 1
            return
        else:
            responses = [pb2.AdmitResponse.FromString(reply)]
        for r in responses:
            key = f"{pb2.Decision.Name(r.decision)}/{pb2.Reason.Name(r.reason)}"
            self.tally[key] += 1


async def _run_client(plan: ClientPlan, ready: Any, go: Any, start_at: Any) -> ClientResult:
    import grpc

    pb2, pb2_grpc = _common.load_stubs()
    shape = plan.shape
    async with grpc.aio.insecure_channel(plan.target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = pb2_grpc.AdmissionControlStub(channel)
        pool, t0 = await plan.workload(pb2, stub, plan)
        cursor = Cursor(pool, t0)
        rec = _Recorder(pb2, shape, plan.sample_every)
        unary = channel.unary_unary(SERVICE + "Admit")
        batch = channel.unary_unary(SERVICE + "AdmitBatch")
        stream = channel.stream_stream(SERVICE + "AdmitStream")
        columns = channel.unary_unary(SERVICE + "AdmitColumns")

        # Everyone starts together, after every process finished its set-up;
        # the first `warmup` seconds are not recorded.
        ready.release()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 300.0):
            raise TimeoutError("no start signal from the parent")
        warm_until = start_at.value
        stop = asyncio.Event()

        async def call_once(sched: float | None) -> None:
            if shape.rpc == "unary":
                payload, n = cursor.unary(), 1
                t = time.perf_counter() if sched is None else sched
                reply = await unary(payload, timeout=30)
            elif shape.rpc == "columns":
                payload, n = cursor.columns(shape.batch)
                t = time.perf_counter() if sched is None else sched
                reply = await columns(payload, timeout=60)
            else:
                payload, n = cursor.batch(shape.batch)
                t = time.perf_counter() if sched is None else sched
                reply = await batch(payload, timeout=60)
            rec.ok(time.perf_counter() - t, n, reply)

        def exhausted() -> bool:
            return stop.is_set() or rec.calls >= plan.max_calls

        async def closed_loop() -> None:
            while not exhausted():
                try:
                    await call_once(None)
                except grpc.aio.AioRpcError as exc:
                    rec.fail(exc)
                    if rec.errors > 100:
                        stop.set()

        async def open_loop() -> None:
            # Fixed rate: latency counts from the scheduled send time, so a slow
            # reply cannot hide the requests that should have gone out meanwhile.
            interval = 1.0 / plan.rate
            sem = asyncio.Semaphore(max(256, shape.in_flight * 16))
            tasks: set[asyncio.Task[None]] = set()
            next_t = time.perf_counter()

            async def scheduled(sched: float) -> None:
                try:
                    await call_once(sched)
                except grpc.aio.AioRpcError as exc:
                    rec.fail(exc)
                finally:
                    sem.release()

            while not exhausted():
                now = time.perf_counter()
                if now < next_t:
                    await asyncio.sleep(next_t - now)
                await sem.acquire()
                task = asyncio.ensure_future(scheduled(next_t))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_t += interval
            if tasks:
                await asyncio.wait(tasks, timeout=30)

        async def one_stream() -> None:
            call = stream()
            window = asyncio.Semaphore(shape.in_flight)
            sent: deque[float] = deque()
            interval = shape.streams / plan.rate if plan.rate else 0.0

            async def writer() -> None:
                next_t = time.perf_counter()
                while not exhausted():
                    if interval:
                        now = time.perf_counter()
                        if now < next_t:
                            await asyncio.sleep(next_t - now)
                    await window.acquire()
                    sent.append(next_t if interval else time.perf_counter())
                    next_t += interval
                    await call.write(cursor.unary())
                await call.done_writing()

            async def reader() -> None:
                while True:
                    reply = await call.read()
                    if reply is grpc.aio.EOF:
                        return
                    rec.ok(time.perf_counter() - sent.popleft(), 1, reply)
                    window.release()

            try:
                await asyncio.gather(writer(), reader())
            except grpc.aio.AioRpcError as exc:
                rec.fail(exc)
                stop.set()

        started = [0.0, 0.0]

        async def timer() -> None:
            await asyncio.sleep(max(0.0, warm_until - time.monotonic()))
            rec.recording = True
            started[0] = time.monotonic()
            started[1] = time.process_time()
            await asyncio.sleep(plan.duration)
            stop.set()

        timer_task = asyncio.ensure_future(timer())
        if shape.rpc == "stream":
            workers = [one_stream() for _ in range(shape.streams)]
        elif plan.rate:
            workers = [open_loop()]
        else:
            workers = [closed_loop() for _ in range(shape.in_flight)]
        await asyncio.gather(*workers)
        finished = time.monotonic()
        timer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer_task
        return ClientResult(
            index=plan.index,
            calls=rec.calls,
            items=rec.items,
            errors=rec.errors,
            started=started[0] or finished,
            finished=finished,
            histogram=rec.hist.encode(),
            decisions=dict(rec.tally),
            error_sample=rec.error_sample,
            cpu_seconds=time.process_time() - started[1] if started[0] else 0.0,
            sim_end_ms=cursor.t0 + PAGE_MS,
        )


def _client_main(plan: ClientPlan, out: Any, ready: Any, go: Any, start_at: Any) -> None:
    import uvloop

    if plan.parent_pid:
        # Bounded by duration and calls anyway; this also ends it when the
        # benchmark is killed mid-run, instead of at the end of its duration.
        _common.end_with_parent(plan.parent_pid)
    try:
        result = uvloop.run(_run_client(plan, ready, go, start_at))
    except BaseException as exc:
        out.put(("error", plan.index, repr(exc)[:1000]))
        raise
    out.put(("ok", plan.index, result))


# -- parent ------------------------------------------------------------------


@dataclass
class RunResult:
    shape: str
    label: str
    clients: int
    calls: int
    items: int
    errors: int
    seconds: float
    calls_per_s: float
    items_per_s: float
    latency: dict[str, float | int]
    decisions: dict[str, int]
    rate_target: float = 0.0
    error_sample: str = ""
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: float | None = None  # filled by the caller when it knows the server
    sim_end_ms: int = 0  # latest simulated time any client reached
    load_average: float = 0.0  # 1-minute load average of the machine at the end of the run
    started: float = 0.0  # time.monotonic() when recording began (earliest client)
    finished: float = 0.0  # time.monotonic() when the last client stopped

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_load(
    target: str,
    shape: Shape,
    *,
    clients: int,
    duration: float,
    max_calls: int,
    warmup: float,
    workload: Callable[..., Any],
    workload_args: dict[str, Any] | None = None,
    rate: float = 0.0,
    setup_timeout: float = 180.0,
) -> RunResult:
    """Run ``clients`` processes against ``target`` with ``shape``; merge their results.

    ``rate`` is the total calls (or stream messages) per second across all
    processes; 0 runs closed-loop as fast as the server answers. ``max_calls``
    bounds each process.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = []
    for i in range(clients):
        plan = ClientPlan(
            index=i,
            target=target,
            shape=shape,
            duration=duration,
            max_calls=max_calls,
            warmup=warmup,
            rate=rate / clients if rate else 0.0,
            workload=workload,
            workload_args=dict(workload_args or {}),
            parent_pid=os.getpid(),
        )
        p = ctx.Process(
            target=_client_main, args=(plan, out, ready, go, start_at), name=f"load-{i}"
        )
        p.start()
        procs.append(p)
    results: list[ClientResult] = []
    failures: list[str] = []
    try:
        deadline = time.monotonic() + setup_timeout
        for _ in range(clients):
            while not ready.acquire(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError("client set-up took too long")
                if not out.empty():
                    msg = out.get()
                    raise RuntimeError(f"client {msg[1]} failed during set-up: {msg[2]}")
        start_at.value = time.monotonic() + 0.1 + warmup
        go.set()
        deadline = time.monotonic() + warmup + duration + 90.0
        while len(results) + len(failures) < clients:
            msg = out.get(timeout=max(1.0, deadline - time.monotonic()))
            if msg[0] == "ok":
                results.append(msg[2])
            else:
                failures.append(f"client {msg[1]}: {msg[2]}")
    finally:
        go.set()
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    if failures:
        raise RuntimeError("; ".join(failures))
    return merge(shape, results, rate)


def merge(shape: Shape, results: Sequence[ClientResult], rate: float = 0.0) -> RunResult:
    hist = _common.new_histogram()
    tally: Counter[str] = Counter()
    calls = items = errors = 0
    error_sample = ""
    client_cpu = 0.0
    for r in results:
        client_cpu += r.cpu_seconds
        hist.decode_and_add(r.histogram)
        tally.update(r.decisions)
        calls += r.calls
        items += r.items
        errors += r.errors
        error_sample = error_sample or r.error_sample
    start = min((r.started for r in results), default=0.0)
    end = max((r.finished for r in results), default=0.0)
    seconds = max(end - start, 1e-9)
    return RunResult(
        shape=shape.name,
        label=shape.label,
        clients=len(results),
        calls=calls,
        items=items,
        errors=errors,
        seconds=seconds,
        calls_per_s=calls / seconds,
        items_per_s=items / seconds,
        latency=_common.histogram_summary(hist),
        decisions=dict(tally.most_common()),
        rate_target=rate,
        error_sample=error_sample,
        client_cpu_seconds=client_cpu,
        sim_end_ms=max((r.sim_end_ms for r in results), default=0),
        load_average=os.getloadavg()[0],
        started=start,
        finished=end,
    )


class CpuSampler:
    """Samples a process's CPU time every ``interval`` s in a thread, to cut out a window.

    Set-up (feedback RPCs) and warm-up happen in the same server process before
    the measured window; this keeps them out of the CPU-per-decision figures.
    """

    def __init__(self, read: Callable[[], float], interval: float = 0.05) -> None:
        import threading

        self._read = read
        self._interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), self._read()))
            except OSError:
                return
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.samples.append((time.monotonic(), self._read()))

    def at(self, t: float) -> float:
        """CPU seconds at monotonic time ``t``, interpolated between samples."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return s[-1][1]

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)


def default_clients() -> int:
    """Client processes: one per core beyond the server's, at least one."""
    return max(1, (os.cpu_count() or 2) - 1)
