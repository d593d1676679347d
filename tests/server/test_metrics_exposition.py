"""The /metrics text comes from prometheus-client, fed by tiergate's own counters.

The names, labels and values are what the counters hold (read back with
prometheus-client's own parser); each sidecar has its own registry, so two in
one process do not see each other's counts.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tiergate.policy.answers import AdmitResult
from tiergate.server.metrics import Metrics
from tiergate.v1 import admission_pb2 as pb


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render())
        for s in family.samples
    }


def result(decision: int, reason: int) -> AdmitResult:
    return AdmitResult(decision, reason, 0, "", False, 0, 0, 0, "")


def test_every_counter_is_exposed_under_its_name_and_labels() -> None:
    m = Metrics()
    m.decided(
        [result(pb.DECISION_ADMIT, pb.OK)] * 3 + [result(pb.DECISION_RETRY_LATER, 5)], "AdmitBatch"
    )
    m.decided_one(result(pb.DECISION_REJECT, pb.UNKNOWN_SENDER), "Admit")
    m.decided_columns(bytes([pb.DECISION_ADMIT] * 2), bytes([pb.OK] * 2), "AdmitColumns")
    m.invalid("Admit")
    m.internal("GetSenderState")
    m.shed("Admit", "RESOURCE_EXHAUSTED")
    m.feedback("SendResult", True)
    m.feedback("OptOut", False)
    m.timed("Admit", 0.0)
    m.collect("tiergate_senders", "gauge", "Senders known.", lambda: 7.0)
    m.collect("tiergate_webhook_bodies_total", "counter", "Bodies.", lambda: 2.0)
    got = samples(m)

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    hold = pb.Reason.Name(5)
    assert value("tiergate_decisions_total", decision="ADMIT", reason="OK") == 5
    assert value("tiergate_decisions_total", decision="RETRY_LATER", reason=hold) == 1
    assert value("tiergate_decisions_total", decision="REJECT", reason="UNKNOWN_SENDER") == 1
    assert value("tiergate_engine_crossings_total") == 3
    assert value("tiergate_invalid_requests_total", rpc="Admit") == 1
    assert value("tiergate_internal_errors_total", rpc="GetSenderState") == 1
    assert value("tiergate_unserved_calls_total", rpc="Admit", code="RESOURCE_EXHAUSTED") == 1
    assert value("tiergate_feedback_events_total", event="SendResult", outcome="applied") == 1
    assert value("tiergate_feedback_events_total", event="OptOut", outcome="ignored") == 1
    assert value("tiergate_admit_chunk_size_bucket", rpc="AdmitBatch", le="2") == 0
    assert value("tiergate_admit_chunk_size_bucket", rpc="AdmitBatch", le="4") == 1
    assert value("tiergate_admit_chunk_size_count", rpc="AdmitColumns") == 1
    assert value("tiergate_admit_chunk_size_sum", rpc="AdmitBatch") == 4
    assert value("tiergate_rpc_duration_seconds_count", rpc="Admit") == 1
    assert value("tiergate_rpc_duration_seconds_bucket", rpc="Admit", le="+Inf") == 1
    assert value("tiergate_senders") == 7
    assert value("tiergate_webhook_bodies_total") == 2
    assert got[("process_resident_memory_bytes", frozenset())] > 0


def test_each_sidecar_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.decided_one(result(pb.DECISION_ADMIT, pb.OK), "Admit")
    first.collect("tiergate_senders", "gauge", "Senders known.", lambda: 1.0)
    second.collect("tiergate_senders", "gauge", "Senders known.", lambda: 2.0)
    assert first.registry is not second.registry
    admitted = ("tiergate_decisions_total", frozenset({("decision", "ADMIT"), ("reason", "OK")}))
    assert samples(first)[admitted] == 1
    assert admitted not in samples(second)
    assert samples(second)[("tiergate_senders", frozenset())] == 2
