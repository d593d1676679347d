"""The ceiling: what grpc.aio + uvloop carries here with handlers that do nothing.

The server is set up the way ``tiergate serve`` sets itself up (a grpc.aio
server created inside ``uvloop.run``, the generated ``tiergate.v1`` servicer)
but every handler returns constant responses: one ADMIT for Admit and each
stream message, N of them for an AdmitBatch (or AdmitColumns) of N. Requests are still parsed by
the server, so the only difference from tiergate is the decision work. The
client processes send exactly the request bytes ``load.py`` sends to tiergate.

    .venv/bin/python benchmarks/ceiling.py --quick
    .venv/bin/python benchmarks/ceiling.py --shapes unary,batch1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import _common
import _grpcload
import _traffic

_CONSTANT = {
    "decision": 1,  # DECISION_ADMIT
    "reason": 1,  # OK
    "ticket": "t-00000000000000ab",
    "counted": True,
    "limit": 100_000,
    "used": 4_321,
}


async def _serve(port: int) -> None:
    import grpc

    pb2, pb2_grpc = _common.load_stubs()
    admit = pb2.AdmitResponse(**_CONSTANT)
    batches: dict[int, Any] = {}
    columns: dict[int, Any] = {}

    class Noop(pb2_grpc.AdmissionControlServicer):  # type: ignore[misc]
        async def Admit(self, request: Any, context: Any) -> Any:
            return admit

        async def AdmitBatch(self, request: Any, context: Any) -> Any:
            n = len(request.requests)
            reply = batches.get(n)
            if reply is None:
                reply = batches[n] = pb2.AdmitBatchResponse(responses=[admit] * n)
            return reply

        async def AdmitColumns(self, request: Any, context: Any) -> Any:
            n = len(request.recipients)
            reply = columns.get(n)
            if reply is None:
                reply = columns[n] = pb2.AdmitColumnsResponse(
                    decisions=bytes([_CONSTANT["decision"]]) * n,
                    reasons=bytes([_CONSTANT["reason"]]) * n,
                    counted=b"\x01" * n,
                    retry_at_unix_ms=[0] * n,
                    limit=[_CONSTANT["limit"]] * n,
                    used=[_CONSTANT["used"]] * n,
                    meta_error_code=[0] * n,
                    tickets=[_CONSTANT["ticket"]] * n,
                )
            return reply

        async def AdmitStream(self, request_iterator: Any, context: Any) -> Any:
            # Like tiergate's handler: a reader task drains the stream while
            # answers go out, so reading and writing overlap.
            queue: asyncio.Queue[int] = asyncio.Queue()

            async def read() -> None:
                async for _ in request_iterator:
                    queue.put_nowait(1)
                queue.put_nowait(0)

            reader = asyncio.create_task(read())
            try:
                while await queue.get():
                    yield admit
                    while not queue.empty():
                        if not queue.get_nowait():
                            return
                        yield admit
            finally:
                reader.cancel()

    # The options tiergate serve uses (src/tiergate/server/app.py).
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb2_grpc.add_AdmissionControlServicer_to_server(Noop(), server)
    server.add_insecure_port(f"{_common.LOOPBACK}:{port}")
    await server.start()
    await server.wait_for_termination()


class NoopServer:
    def __init__(self, proc: subprocess.Popen[bytes], target: str) -> None:
        self.proc = proc
        self.target = target

    def cpu_seconds(self) -> float:
        return _common.process_cpu_seconds(self.proc.pid)


@contextlib.contextmanager
def noop_server() -> Iterator[NoopServer]:
    """Run the no-op server in its own process on a free loopback port."""
    port = _common.free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], preexec_fn=_common.die_with_parent()
    )
    try:
        _common.wait_for_port(port, 30, proc)
        yield NoopServer(proc, f"{_common.LOOPBACK}:{port}")
    finally:
        _common.stop_process(proc, grace=5)


def measure(
    target: str,
    shape: _grpcload.Shape,
    *,
    clients: int,
    duration: float,
    max_calls: int,
    warmup: float,
    tag: str,
    pages: int,
    rate: float = 0.0,
) -> _grpcload.RunResult:
    return _grpcload.run_load(
        target,
        shape,
        clients=clients,
        duration=duration,
        max_calls=max_calls,
        warmup=warmup,
        workload=_traffic.noop_workload,
        workload_args={"tag": tag, "pages": pages},
        rate=rate,
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short runs (make bench)")
    parser.add_argument(
        "--tiny", action="store_true", help="smallest possible runs: proves the script works"
    )
    parser.add_argument(
        "--shapes",
        default=",".join(_grpcload.SHAPES),
        help=f"comma-separated, from {','.join(_grpcload.SHAPES)}",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per shape")
    parser.add_argument("--warmup", type=float, help="unrecorded seconds before measuring")
    parser.add_argument("--max-calls", type=int, help="calls per client process per shape")
    parser.add_argument("--clients", type=int, default=_grpcload.default_clients())
    parser.add_argument("--pages", type=int, help="request pool pages (8 000 items each)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="load.py: alternating ceiling/tiergate rounds per shape (best kept)",
    )
    parser.add_argument("--results-dir", help="where <name>.json goes")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Durations and bounds for --tiny / --quick / full."""
    if args.tiny:
        base = {"duration": 0.5, "warmup": 0.2, "max_calls": 200, "pages": 1, "rounds": 1}
    elif args.quick:
        base = {"duration": 2.0, "warmup": 0.5, "max_calls": 2_000_000, "pages": 4, "rounds": 2}
    else:
        base = {"duration": 10.0, "warmup": 2.0, "max_calls": 10_000_000, "pages": 8, "rounds": 3}
    for key in base:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    base["clients"] = args.clients
    return base


def parse_shapes(spec: str) -> list[_grpcload.Shape]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in _grpcload.SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; choose from {list(_grpcload.SHAPES)}")
    return [_grpcload.SHAPES[n] for n in names]


def table_rows(results: Sequence[_grpcload.RunResult]) -> list[list[Any]]:
    return [
        [
            r.label,
            r.calls_per_s,
            r.items_per_s,
            r.latency.get("p50_ms"),
            r.latency.get("p99_ms"),
            r.latency.get("p999_ms"),
            r.errors,
        ]
        for r in results
    ]


HEADERS = ["shape", "calls/s", "items/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve))
        return 0
    _common.exit_on_sigterm()
    shapes = parse_shapes(args.shapes)
    settings = run_settings(args)
    _common.print_machine()
    results = []
    with noop_server() as server:
        for shape in shapes:
            with _grpcload.CpuSampler(server.cpu_seconds) as sampler:
                r = measure(
                    server.target,
                    shape,
                    clients=settings["clients"],
                    duration=settings["duration"],
                    max_calls=settings["max_calls"],
                    warmup=settings["warmup"],
                    tag=f"ceil-{shape.name}-",
                    pages=settings["pages"],
                )
            r.server_cpu_seconds = sampler.between(r.started, r.finished)
            results.append(r)
            print(f"  {r.label}: {r.calls_per_s:,.0f} calls/s, {r.items_per_s:,.0f} items/s")
    _common.print_table(
        f"no-op ceiling ({settings['clients']} client process(es), 127.0.0.1)",
        HEADERS,
        table_rows(results),
    )
    path = _common.write_results(
        "ceiling",
        {"settings": settings, "shapes": {r.shape: r.as_dict() for r in results}},
        _results_dir(args),
    )
    print(f"\nwrote {path}")
    return 1 if any(r.errors or r.calls == 0 for r in results) else 0


def _results_dir(args: argparse.Namespace) -> Any:
    from pathlib import Path

    return Path(args.results_dir) if args.results_dir else None


if __name__ == "__main__":
    sys.exit(main())
