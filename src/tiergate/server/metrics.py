"""Counters the sidecar keeps, exposed in the Prometheus text format by prometheus-client.

One counter per decision outcome (decision × reason), plus what operators
watch for trouble: invalid requests and internal errors per RPC, feedback
applied or ignored, and how many engine crossings the admits took (requests
per crossing shows how well batches and streams are filling).

The counting stays tiergate's own: a decision bumps a slot of a plain list of
integers (an AdmitColumns answer is tallied by the compiled kernel), where
prometheus-client's ``Counter.labels(...).inc()`` takes a dictionary lookup and a
lock per call. prometheus-client owns the exposition: each sidecar's
:class:`Metrics` has its own ``CollectorRegistry`` holding a custom collector
that turns the counters into metric families when ``/metrics`` is scraped, and
``generate_latest`` writes the text (names, label escaping, the format's rules).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from ssl import SSLContext

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

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

    def family(self, name: str, help_text: str, label: str) -> HistogramMetricFamily:
        """The series as a metric family (bucket bounds written as ``%g``: ``le="1"``)."""
        family = HistogramMetricFamily(name, help_text, labels=(label,))
        for value, (counts, total) in sorted(self.series.items()):
            running, buckets = 0, []
            for bound, n in zip(self.bounds, counts, strict=False):
                running += n
                buckets.append((f"{bound:g}", float(running)))
            buckets.append(("+Inf", float(running + counts[-1])))
            family.add_metric((value,), buckets, total[0])
        return family


REASON_SLOTS = REASONS  # tiergate.v1.Reason values fit below this (16)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CHUNK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class Metrics:
    """The sidecar's counters: plain integers bumped on the hot path, turned into
    prometheus-client metric families only when ``/metrics`` is scraped. Each
    sidecar has its own :attr:`registry` (several run in one test process)."""

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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self))
        # The process's CPU, memory and open files (process_*), read from /proc at scrape.
        ProcessCollector(registry=self.registry)

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
        """The Prometheus text exposition of :attr:`registry` (what ``/metrics`` serves)."""
        return generate_latest(self.registry).decode()

    def families(self) -> Iterator[Metric]:
        """The counters as prometheus-client metric families, built at scrape time."""
        decisions = CounterMetricFamily(
            "tiergate_decisions_total",
            "Admit decisions by decision and reason.",
            labels=("decision", "reason"),
        )
        for (decision, reason), n in sorted(self.decisions.items()):
            decisions.add_metric((_decision_name(decision), _reason_name(reason)), n)
        yield decisions
        shadow = CounterMetricFamily(
            "tiergate_shadow_decisions_total",
            "Shadow mode: what tiergate would have answered where it answered ADMIT,"
            " by decision and reason.",
            labels=("decision", "reason"),
        )
        for (decision, reason), n in sorted(self.shadow_decisions.items()):
            shadow.add_metric((_decision_name(decision), _reason_name(reason)), n)
        yield shadow
        yield CounterMetricFamily(
            "tiergate_engine_crossings_total",
            "Calls into the engine for admits (one per request, batch or stream chunk).",
            value=self.engine_crossings,
        )
        yield _by_label(
            "tiergate_invalid_requests_total",
            "Requests answered INVALID_ARGUMENT.",
            ("rpc",),
            {(rpc,): n for rpc, n in self.invalid_requests.items()},
        )
        yield _by_label(
            "tiergate_internal_errors_total",
            "Requests answered INTERNAL.",
            ("rpc",),
            {(rpc,): n for rpc, n in self.internal_errors.items()},
        )
        yield _by_label(
            "tiergate_unserved_calls_total",
            "Calls turned away before being served: over the in-flight limit, or past"
            " their deadline.",
            ("rpc", "code"),
            {(rpc, code): n for (rpc, code), n in self.unserved_calls.items()},
        )
        yield _by_label(
            "tiergate_feedback_events_total",
            "Feedback events by type and outcome.",
            ("event", "outcome"),
            {
                (event, "applied" if applied else "ignored"): n
                for (event, applied), n in self.feedback_events.items()
            },
        )
        yield self.rpc_seconds.family(
            "tiergate_rpc_duration_seconds", "Time to answer a unary RPC, commit included.", "rpc"
        )
        yield self.chunk_sizes.family(
            "tiergate_admit_chunk_size", "Requests decided per engine crossing.", "rpc"
        )
        for name, (kind, help_text, read) in sorted(self.collected.items()):
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=read())


def _by_label(
    name: str, help_text: str, labels: Sequence[str], counts: Mapping[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for values, n in sorted(counts.items()):
        family.add_metric(values, n)
    return family


class _Families:
    """The prometheus-client Collector of one sidecar's :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()


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
                ctype = CONTENT_TYPE_PLAIN_0_0_4
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
