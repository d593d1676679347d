"""The load generator's pre-serialized requests are valid tiergate.v1 messages.

The clients never build protobuf messages in the timed loop: they join
pre-encoded bytes and the high bytes of a page's start time. These tests parse
what they send with the generated classes.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _grpcload  # noqa: E402
import _traffic  # noqa: E402
import run_all  # noqa: E402

from tiergate.v1 import admission_pb2 as pb  # noqa: E402

T0 = 1_795_000_000_000


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 5_000, _grpcload.PAGE_MS - 1])
def test_split_varint_time_round_trips(offset: int) -> None:
    fields = pb.AdmitRequest(sender_id="s", recipient="5511999990000").SerializeToString()
    t0 = _grpcload.page_start(T0)
    body = _grpcload.encode_item(fields, offset) + _grpcload.high_bytes(t0)
    msg = pb.AdmitRequest.FromString(body)
    assert msg.at_unix_ms == t0 + offset
    assert msg.sender_id == "s" and msg.recipient == "5511999990000"


def test_offset_outside_a_page_is_refused() -> None:
    with pytest.raises(ValueError, match="inside one page"):
        _grpcload.encode_item(b"", _grpcload.PAGE_MS)


def test_cursor_batches_and_unary_follow_the_pool_and_the_clock() -> None:
    pool, setup = _traffic.build_pool(pb, "t-", client=0, pages=2)
    assert len(pool.unary) == 2 and all(len(p) == _traffic.PAGE_ITEMS for p in pool.unary)
    cursor = _grpcload.Cursor(pool, T0)
    start = _grpcload.page_start(T0)
    payload, n = cursor.batch(1000)
    batch = pb.AdmitBatchRequest.FromString(payload)
    assert n == len(batch.requests) == 1000
    times = [r.at_unix_ms for r in batch.requests]
    assert times == sorted(times) and times[0] == start
    # every sender stays under 80 messages/s of simulated time
    by_sender: dict[str, list[int]] = {}
    for r in batch.requests:
        by_sender.setdefault(r.sender_id, []).append(r.at_unix_ms)
    for ts in by_sender.values():
        assert all(b - a >= 1000 / 80 for a, b in itertools.pairwise(ts))
    # the mix: replies are free-form to opened windows, the rest templates
    kinds = {pb.MessageKind.Name(r.kind) for r in batch.requests}
    assert kinds == {"TEMPLATE", "FREE_FORM"}
    replies = [r for r in batch.requests if r.kind == pb.FREE_FORM]
    assert all(r.recipient in setup["windows"][r.sender_id] for r in replies)
    assert sum(r.sender_id == setup["limited"] for r in batch.requests) == 100  # 10 %
    # walking past the end of a page moves the clock one page on
    for _ in range(_traffic.PAGE_ITEMS // 1000 - 1):
        cursor.batch(1000)
    msg = pb.AdmitRequest.FromString(cursor.unary())
    assert msg.at_unix_ms == start + _grpcload.PAGE_MS


def test_chart_is_written_from_a_summary(tmp_path: Path) -> None:
    def shape(label: str, noop: float, tg: float) -> dict[str, object]:
        return {
            "label": label,
            "noop_items_per_s": noop,
            "tiergate_items_per_s": tg,
            "ceiling_half_load": {"p99_ms": 2.0},
            "tiergate_half_load": {"p99_ms": 2.5},
        }

    summary = {
        "machine": {"cores": 2, "cpu_model": "test", "engine": "python"},
        "headline": {"grpc": {"unary": shape("Admit", 3000, 2500), "b": shape("B", 1e6, 4e5)}},
    }
    out = run_all.chart(summary, tmp_path / "chart.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_all.chart({"headline": {}}, tmp_path / "none.png") is None


def test_markdown_report_names_every_shape_and_verdict() -> None:
    import _report

    summary = {
        "mode": "quick",
        "machine": {"cores": 2},
        "headline": {
            "grpc": {
                "unary": {
                    "label": "Admit (unary)",
                    "noop_calls_per_s": 3000.0,
                    "noop_items_per_s": 3000.0,
                    "tiergate_calls_per_s": 2700.0,
                    "tiergate_items_per_s": 2700.0,
                    "items_ratio": 0.9,
                    "tiergate_server_cpu_s": 2.0,
                    "tiergate_seconds": 2.0,
                    "ceiling_half_load": {"calls_per_s": 1350.0, "p50_ms": 1.0, "p99_ms": 4.0},
                    "tiergate_half_load": {"calls_per_s": 1350.0, "p50_ms": 1.2, "p99_ms": 5.0},
                    "p99_half_load_ratio": 1.25,
                    "targets": {
                        "throughput": {"target": ">= 85%", "ratio": 0.9, "met": True},
                        "p99_half_load": {"target": "<= 1.3x", "ratio": 1.25, "met": True},
                    },
                }
            },
            "peers": {
                "redis": {
                    "decisions_per_s": 1.0,
                    "decisions_per_cpu_s": 2.0,
                    "decisions_per_total_cpu_s": 1.0,
                }
            },
            "peers_target": {"what": "batch >= 100x Redis", "ratio": 12.5, "met": False},
        },
    }
    text = _report.markdown(summary)
    assert "| Admit (unary) | 3,000 | 3,000 | 2,700 | 2,700 | 90% | 1.00 |" in text
    assert text.count("| met |") == 2
    assert "batch >= 100x Redis: 12.5x, missed." in text


def test_columns_request_carries_the_same_items_and_times_as_the_batch() -> None:
    pool, _ = _traffic.build_pool(pb, "t-", client=0, pages=1)
    batch = pb.AdmitBatchRequest.FromString(_grpcload.Cursor(pool, T0).batch(1000)[0])
    payload, n = _grpcload.Cursor(pool, T0).columns(1000)
    cols = pb.AdmitColumnsRequest.FromString(payload)
    assert n == len(cols.recipients) == len(cols.at_unix_ms) == 1000
    for i, r in enumerate(batch.requests):
        assert cols.senders[cols.sender_index[i]] == r.sender_id
        assert cols.recipients[i] == r.recipient
        assert cols.kinds[i] == r.kind and cols.categories[i] == r.category
        tpl = cols.template_index[i]
        assert (cols.templates[tpl - 1] if tpl else "") == r.template_id
        assert cols.at_unix_ms[i] == r.at_unix_ms
