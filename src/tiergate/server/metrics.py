"""Counters the sidecar keeps, rendered in the Prometheus text format.

One counter per decision outcome (decision × reason), plus what operators
watch for trouble: invalid requests and internal errors per RPC, feedback
applied or ignored, and how many engine crossings the admits took (requests
per crossing shows how well batches and streams are filling).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from ssl import SSLContext

from tiergate.engine.columns import REASONS, kernels
from tiergate.policy.answers import AdmitResult
from tiergate.v1 import admission_pb2 as pb

log = logging.getLogger("tiergate.metrics")


def _decision_name(value: int) -> str:
    try:
        return pb.Decision.Name(pb.Decision.ValueType(value)).removeprefix("DECISION_")
    except ValueError:
        return str(value)


def _reason_name(value: int) -> str:
    try:
        return pb.Reason.Name(pb.Reason.ValueType(value))
    except ValueError:
        return str(value)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics), one per label value."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = sorted(buckets)
        self.series: dict[str, tuple[list[int], list[float]]] = {}  # label → (counts, [sum])

    def observe(self, label: str, value: float) -> None:
        series = self.series.get(label)
        if series is None:
            series = self.series[label] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1][0] += value

    def render(self, name: str, label: str) -> list[str]:
        lines = []
        for value, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, n in zip(self.bounds, counts, strict=False):
                running += n
                lines.append(f'{name}_bucket{{{label}="{value}",le="{bound:g}"}} {running}')
            running += counts[-1]
            lines.append(f'{name}_bucket{{{label}="{value}",le="+Inf"}} {running}')
            lines.append(f'{name}_sum{{{label}="{value}"}} {total[0]:g}')
            lines.append(f'{name}_count{{{label}="{value}"}} {running}')
        return lines


REASON_SLOTS = REASONS  # tiergate.v1.Reason values fit below this (16)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CHUNK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class Metrics:
    def __init__(self) -> None:
        self.rpc_seconds = Histogram(LATENCY_BUCKETS_S)
        self.chunk_sizes = Histogram(CHUNK_BUCKETS)
        # Indexed by decision * REASON_SLOTS + reason: a list is the cheapest
        # per-decision update (this runs for every admit).
        self._decisions = [0] * (4 * REASON_SLOTS)
        # Shadow mode: the answers ADMITs stood in for, indexed the same way.
        self._shadow = [0] * (4 * REASON_SLOTS)
        self.invalid_requests: Counter[str] = Counter()
        self.internal_errors: Counter[str] = Counter()
        self.unserved_calls: Counter[tuple[str, str]] = Counter()
        self.feedback_events: Counter[tuple[str, bool]] = Counter()
        self.engine_crossings = 0
        # name → (type, help, read): values owned by other parts (store, webhooks).
        self.collected: dict[str, tuple[str, str, Callable[[], float]]] = {}

    def collect(self, name: str, kind: str, help_text: str, read: Callable[[], float]) -> None:
        self.collected[name] = (kind, help_text, read)

    def decided(self, results: Sequence[AdmitResult], rpc: str) -> None:
        self.engine_crossings += 1
        self.chunk_sizes.observe(rpc, len(results))
        counts = self._decisions
        for r in results:
            counts[r.decision * REASON_SLOTS + r.reason] += 1
            if r.shadow_decision:
                self._shadow[r.shadow_decision * REASON_SLOTS + r.shadow_reason] += 1

    def decided_one(self, result: AdmitResult, rpc: str) -> None:
        """As :meth:`decided`, for one result (the unary Admit)."""
        self.engine_crossings += 1
        self.chunk_sizes.observe(rpc, 1)
        self._decisions[result.decision * REASON_SLOTS + result.reason] += 1
        if result.shadow_decision:
            self._shadow[result.shadow_decision * REASON_SLOTS + result.shadow_reason] += 1

    def decided_columns(
        self,
        decisions: bytes | bytearray,
        reasons: bytes | bytearray,
        rpc: str,
        shadows: Iterable[tuple[int, int, int]] = (),
    ) -> None:
        """As :meth:`decided`, for an AdmitColumns answer (one byte per item each;
        ``shadows``: the shadowed items' would-be answers)."""
        self.engine_crossings += 1
        self.chunk_sizes.observe(rpc, len(decisions))
        kernels.tally(decisions, reasons, self._decisions)
        for decision, reason, _ in shadows:
            self._shadow[decision * REASON_SLOTS + reason] += 1

    @property
    def shadow_decisions(self) -> dict[tuple[int, int], int]:
        """Shadow mode: the answers ADMITs stood in for, by (decision, reason)."""
        return {divmod(i, REASON_SLOTS): n for i, n in enumerate(self._shadow) if n}

    @property
    def decisions(self) -> dict[tuple[int, int], int]:
        """Decision counts by (decision, reason), only the non-zero ones."""
        return {divmod(i, REASON_SLOTS): n for i, n in enumerate(self._decisions) if n}

    def timed(self, rpc: str, started: float) -> None:
        self.rpc_seconds.observe(rpc, time.perf_counter() - started)

    def invalid(self, rpc: str) -> None:
        self.invalid_requests[rpc] += 1

    def internal(self, rpc: str) -> None:
        self.internal_errors[rpc] += 1

    def shed(self, rpc: str, code: str) -> None:
        """A call turned away before it was served (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED)."""
        self.unserved_calls[(rpc, code)] += 1

    def feedback(self, event: str, applied: bool) -> None:
        self.feedback_events[(event, applied)] += 1

    def render(self) -> str:
        lines = [
            "# HELP tiergate_decisions_total Admit decisions by decision and reason.",
            "# TYPE tiergate_decisions_total counter",
        ]
        for (decision, reason), n in sorted(self.decisions.items()):
            lines.append(
                f'tiergate_decisions_total{{decision="{_decision_name(decision)}",'
                f'reason="{_reason_name(reason)}"}} {n}'
            )
        lines += [
            "# HELP tiergate_shadow_decisions_total Shadow mode: what tiergate would have"
            " answered where it answered ADMIT, by decision and reason.",
            "# TYPE tiergate_shadow_decisions_total counter",
        ]
        for (decision, reason), n in sorted(self.shadow_decisions.items()):
            lines.append(
                f'tiergate_shadow_decisions_total{{decision="{_decision_name(decision)}",'
                f'reason="{_reason_name(reason)}"}} {n}'
            )
        lines += [
            "# HELP tiergate_engine_crossings_total Calls into the engine for admits"
            " (one per request, batch or stream chunk).",
            "# TYPE tiergate_engine_crossings_total counter",
            f"tiergate_engine_crossings_total {self.engine_crossings}",
            "# HELP tiergate_invalid_requests_total Requests answered INVALID_ARGUMENT.",
            "# TYPE tiergate_invalid_requests_total counter",
        ]
        for rpc, n in sorted(self.invalid_requests.items()):
            lines.append(f'tiergate_invalid_requests_total{{rpc="{rpc}"}} {n}')
        lines += [
            "# HELP tiergate_internal_errors_total Requests answered INTERNAL.",
            "# TYPE tiergate_internal_errors_total counter",
        ]
        for rpc, n in sorted(self.internal_errors.items()):
            lines.append(f'tiergate_internal_errors_total{{rpc="{rpc}"}} {n}')
        lines += [
            "# HELP tiergate_unserved_calls_total Calls turned away before being served:"
            " over the in-flight limit, or past their deadline.",
            "# TYPE tiergate_unserved_calls_total counter",
        ]
        for (rpc, code), n in sorted(self.unserved_calls.items()):
            lines.append(f'tiergate_unserved_calls_total{{rpc="{rpc}",code="{code}"}} {n}')
        lines += [
            "# HELP tiergate_feedback_events_total Feedback events by type and outcome.",
            "# TYPE tiergate_feedback_events_total counter",
        ]
        for (event, applied), n in sorted(self.feedback_events.items()):
            outcome = "applied" if applied else "ignored"
            lines.append(
                f'tiergate_feedback_events_total{{event="{event}",outcome="{outcome}"}} {n}'
            )
        lines += [
            "# HELP tiergate_rpc_duration_seconds Time to answer a unary RPC, commit included.",
            "# TYPE tiergate_rpc_duration_seconds histogram",
            *self.rpc_seconds.render("tiergate_rpc_duration_seconds", "rpc"),
            "# HELP tiergate_admit_chunk_size Requests decided per engine crossing.",
            "# TYPE tiergate_admit_chunk_size histogram",
            *self.chunk_sizes.render("tiergate_admit_chunk_size", "rpc"),
        ]
        for name, (kind, help_text, read) in sorted(self.collected.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """A minimal HTTP endpoint answering ``GET /metrics`` on a loopback or private port."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, ssl: SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=ssl)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                status, body = "200 OK", self._metrics.render().encode()
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            log.debug("metrics request dropped: %s", e)
        finally:
            writer.close()
