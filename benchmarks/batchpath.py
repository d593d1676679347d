"""The server's AdmitBatch path in one process: CPU per item, with and without keys.

What the AdmitBatch handler does with a batch, without gRPC around it, two ways:

- ``message``: protobuf parses the request into one message per item,
  ``AdmissionService.admit_many`` decides them, one AdmitResponse message per
  answer is built and the reply serialised (the way of the pure-Python
  engine, and of any batch the wire reader leaves alone);
- ``wire`` (compiled engine only): ``batch_wire.decode_fast`` reads the bytes
  into columns, ``policy.columnar.admit_columns`` decides them,
  ``batch_wire.encode_response`` writes the reply bytes; split into its three
  parts.

Each way runs on the same request bytes, batches of 1 000 items from 20
senders (UTILITY templates to fresh recipients, each sender under its
throughput), with no idempotency keys and with a unique key per item, as a
gateway that retries sends would set. Every run starts from a fresh service
with no journal; runs alternate between the variants, and each figure is the
median of its runs. The reply bytes of the two ways are compared for every
batch. Prints a table and writes ``benchmarks/results/batchpath.json``.

    .venv/bin/python benchmarks/batchpath.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _common

from tiergate.policy import events as ev
from tiergate.policy.columnar import admit_columns
from tiergate.policy.profile import load_profile
from tiergate.policy.service import AdmissionService
from tiergate.server import batch_wire, convert
from tiergate.v1 import admission_pb2 as pb

T0 = 1_780_000_000_000
SENDERS = [f"1065403600{i:05d}" for i in range(20)]
TEMPLATE = "order_update"


#: One ticket key for both ways, so that their replies (tickets included) compare.
TICKET_KEY = bytes(range(16))


def new_service() -> AdmissionService:
    svc = AdmissionService(load_profile("meta-2025"), clock="request", ticket_key=TICKET_KEY)
    for i, sid in enumerate(SENDERS):
        update = ev.SenderUpdate(
            sender_id=sid,
            portfolio_id=f"portfolio-{i}",
            tier="TIER_UNLIMITED",
            quality=ev.Quality.GREEN,
            status=ev.SenderStatus.CONNECTED,
            at_unix_ms=T0,
        )
        assert svc.apply(update, T0).applied
    return svc


def batches(count: int, size: int, keys: bool) -> list[bytes]:
    out = []
    for b in range(count):
        reqs = []
        for i in range(size):
            k = b * size + i
            reqs.append(
                pb.AdmitRequest(
                    sender_id=SENDERS[i % len(SENDERS)],
                    recipient=f"1555{k:08d}",
                    kind=pb.TEMPLATE,
                    category=pb.UTILITY,
                    template_id=TEMPLATE,
                    idempotency_key=f"send-{k:09d}" if keys else "",
                    at_unix_ms=T0 + 1 + k,  # 20 senders: 50 a second each
                )
            )
        out.append(pb.AdmitBatchRequest(requests=reqs).SerializeToString())
    return out


def run_message(data: list[bytes]) -> tuple[dict[str, float], list[bytes]]:
    svc = new_service()
    replies = []
    t0 = time.perf_counter()
    for raw in data:
        req = pb.AdmitBatchRequest.FromString(raw)
        latest = max(r.at_unix_ms for r in req.requests)
        results = svc.admit_many(req.requests, latest)
        reply = pb.AdmitBatchResponse(responses=[convert.admit_response(r) for r in results])
        replies.append(reply.SerializeToString())
    return {"total": time.perf_counter() - t0}, replies


def run_wire(data: list[bytes]) -> tuple[dict[str, float], list[bytes]]:
    svc = new_service()
    replies = []
    parts = {"decode": 0.0, "decide": 0.0, "encode": 0.0}
    for raw in data:
        t0 = time.perf_counter()
        cols = batch_wire.decode_fast(raw)
        assert cols is not None
        t1 = time.perf_counter()
        result = admit_columns(svc, cols, max(cols.at_unix_ms))
        t2 = time.perf_counter()
        replies.append(batch_wire.encode_response(cols, result))
        t3 = time.perf_counter()
        parts["decode"] += t1 - t0
        parts["decide"] += t2 - t1
        parts["encode"] += t3 - t2
    parts["total"] = sum(parts.values())
    return parts, replies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 runs of 20 batches")
    ap.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    ap.add_argument("--results-dir", type=Path, default=None, help="where batchpath.json goes")
    args = ap.parse_args(argv)
    _common.print_machine()
    runs, count, size = (1, 2, 100) if args.tiny else (5, 20, 1000) if args.quick else (9, 50, 1000)
    ways: dict[str, Callable[[list[bytes]], tuple[dict[str, float], list[bytes]]]] = {
        "message": run_message
    }
    if batch_wire.COMPILED:
        ways["wire"] = run_wire
    data = {keys: batches(count, size, keys) for keys in (False, True)}
    items = count * size
    samples: dict[tuple[str, bool], list[dict[str, float]]] = {}
    agree = True
    for _ in range(runs + 1):  # the first round warms up and is not kept
        for keys, reqs in data.items():
            replies: dict[str, list[bytes]] = {}
            for name, way in ways.items():
                seconds, replies[name] = way(reqs)
                samples.setdefault((name, keys), []).append(seconds)
            agree = agree and all(r == replies["message"] for r in replies.values())
    figures: dict[str, Any] = {}
    rows = []
    for (name, keys), got in samples.items():
        kept = got[1:]
        ns = {part: statistics.median(s[part] for s in kept) / items * 1e9 for part in kept[0]}
        label = f"{name}, {'a key per item' if keys else 'no keys'}"
        figures[label] = {"way": name, "keys": keys, "ns_per_item": ns, "runs": kept}
        rows.append(
            [
                label,
                ns["total"],
                ns.get("decode", ""),
                ns.get("decide", ""),
                ns.get("encode", ""),
            ]
        )
    ratios: dict[str, float] = {}

    def total(name: str, keys: bool) -> float:
        return float(
            figures[f"{name}, {'a key per item' if keys else 'no keys'}"]["ns_per_item"]["total"]
        )

    for name in ways:
        ratios[f"{name}: keys / no keys"] = total(name, True) / total(name, False)
    if "wire" in ways:
        for keys in (False, True):
            label = "a key per item" if keys else "no keys"
            ratios[f"message / wire, {label}"] = total("message", keys) / total("wire", keys)
    _common.print_table(
        f"AdmitBatch({size}) in one process, ns per item "
        f"(median of {runs} runs of {items:,} items)",
        ["variant", "total", "decode", "decide", "encode"],
        rows,
    )
    _common.print_table("ratios (same run)", ["what", "ratio"], list(ratios.items()))
    print(f"replies of the two ways agree: {agree}")
    path = _common.write_results(
        "batchpath",
        {
            "benchmark": "batchpath",
            "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
            "batch_size": size,
            "items_per_run": items,
            "timed_runs": runs,
            "figures": figures,
            "ratios": ratios,
            "replies_agree": agree,
        },
        args.results_dir,
    )
    print(f"wrote {path}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
