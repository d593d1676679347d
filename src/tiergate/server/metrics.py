"""Counters the sidecar keeps, rendered in the Prometheus text format.

One counter per decision outcome (decision × reason), plus what operators
watch for trouble: invalid requests and internal errors per RPC, feedback
applied or ignored, and how many engine crossings the admits took (requests
per crossing shows how well batches and streams are filling).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable

from tiergate.policy.service import AdmitResult
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


class Metrics:
    def __init__(self) -> None:
        self.decisions: Counter[tuple[int, int]] = Counter()
        self.invalid_requests: Counter[str] = Counter()
        self.internal_errors: Counter[str] = Counter()
        self.feedback_events: Counter[tuple[str, bool]] = Counter()
        self.engine_crossings = 0
        # name → (type, help, read): values owned by other parts (store, webhooks).
        self.collected: dict[str, tuple[str, str, Callable[[], float]]] = {}

    def collect(self, name: str, kind: str, help_text: str, read: Callable[[], float]) -> None:
        self.collected[name] = (kind, help_text, read)

    def decided(self, results: Iterable[AdmitResult]) -> None:
        self.engine_crossings += 1
        decisions = self.decisions
        for r in results:
            decisions[(r.decision, r.reason)] += 1

    def invalid(self, rpc: str) -> None:
        self.invalid_requests[rpc] += 1

    def internal(self, rpc: str) -> None:
        self.internal_errors[rpc] += 1

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
            "# HELP tiergate_feedback_events_total Feedback events by type and outcome.",
            "# TYPE tiergate_feedback_events_total counter",
        ]
        for (event, applied), n in sorted(self.feedback_events.items()):
            outcome = "applied" if applied else "ignored"
            lines.append(
                f'tiergate_feedback_events_total{{event="{event}",outcome="{outcome}"}} {n}'
            )
        for name, (kind, help_text, read) in sorted(self.collected.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"


class MetricsEndpoint:
    """A minimal HTTP endpoint answering ``GET /metrics`` on a loopback or private port."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
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
