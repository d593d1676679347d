"""tiergate next to what users build today for the same decision, in one run.

The decision: may this sender message this recipient, given at most ``limit``
unique recipients per rolling 24 h? (A recipient already counted in the window
costs nothing and moves its time forward; a new one needs a free slot.)

Implementations, all fed the same pre-generated sequence of decisions:

* ``redis-zset-lua``: a sorted set per sender (member = recipient, score =
  last send), one Lua script per decision (ZREMRANGEBYSCORE + ZSCORE/ZCARD +
  ZADD) called with EVALSHA, pipelined, against a local redis-server with no
  persistence — the usual shared-state sliding window;
* ``python-dict``: an in-process plain-Python sliding window (an OrderedDict of
  recipient -> last send per sender, expired from the oldest end);
* ``tiergate-engine decide``: ``tiergate.engine.Engine.decide``, one call per decision;
* ``tiergate-engine decide_batch``: one ``decide_batch`` call per 1 000 decisions;
* ``tiergate-server AdmitBatch(1000)`` and ``AdmitColumns(1000)``: the real
  sidecar over gRPC (from ``load.py``'s machinery), when ``tiergate serve`` is
  available.

Per core = decisions per CPU-second. For Redis two figures: counting only the
redis-server's CPU (the most favourable reading for Redis: the Python client's
cost is ignored) and counting client + server. Ratios use the favourable one.

    .venv/bin/python benchmarks/peers.py --quick
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common

WINDOW_MS = 86_400_000

ZSET_LUA = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local member = ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZSCORE', key, member) then
  redis.call('ZADD', key, now, member)
  return 1
end
if redis.call('ZCARD', key) >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window}
end
redis.call('ZADD', key, now, member)
return 2
"""
# Return codes shared by every implementation: 0 limit reached, 1 already
# counted (admitted, no new slot), 2 admitted with a new slot. Like tiergate's
# RETRY_LATER, "limit reached" also computes when the oldest slot frees.


@dataclass
class Workload:
    senders: int
    limit: int
    sender: array  # int per decision
    recipient: list[str]  # E.164 digits per decision
    now: array  # ms per decision (non-decreasing)

    def __len__(self) -> int:
        return len(self.recipient)


def make_workload(n: int, senders: int, population: int, limit: int, seed: int = 7) -> Workload:
    """``n`` decisions over 48 h of simulated time: repeats, fresh recipients, full limits.

    Each sender draws recipients from its own population; with ``population``
    above ``limit`` some senders reach their limit inside a window, so all
    three outcomes occur.
    """
    rng = random.Random(seed)
    step = max(1, (2 * WINDOW_MS) // n)
    t0 = 1_790_000_000_000
    sender = array("i")
    rcpt: list[str] = []
    now = array("q")
    for i in range(n):
        s = rng.randrange(senders)
        sender.append(s)
        # a skewed draw: most traffic goes to a smaller active set (repeats)
        r = int(population * rng.random() ** 2)
        rcpt.append(f"55{s:03d}{r:08d}")
        now.append(t0 + i * step)
    return Workload(senders, limit, sender, rcpt, now)


@dataclass
class Figure:
    name: str
    decisions: int
    seconds: float
    cpu_seconds: float
    outcomes: dict[str, int]
    note: str = ""
    extra_cpu_seconds: float = 0.0  # other processes (client for Redis)

    @property
    def per_s(self) -> float:
        return self.decisions / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.decisions / self.cpu_seconds if self.cpu_seconds else 0.0

    @property
    def per_total_cpu_s(self) -> float:
        total = self.cpu_seconds + self.extra_cpu_seconds
        return self.decisions / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decisions": self.decisions,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "extra_cpu_seconds": self.extra_cpu_seconds,
            "decisions_per_s": self.per_s,
            "decisions_per_cpu_s": self.per_cpu_s,
            "decisions_per_total_cpu_s": self.per_total_cpu_s,
            "outcomes": self.outcomes,
            "note": self.note,
        }


def _outcomes(codes: Sequence[int]) -> dict[str, int]:
    names = ("limit_reached", "already_counted", "new_slot")
    counts = [0, 0, 0]
    for c in codes:
        counts[c] += 1
    return dict(zip(names, counts, strict=True))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- peers ---------------------------------------------------------------------


def run_redis(w: Workload, pipeline: int) -> Figure:
    import redis

    with _common.redis_server() as port:
        r = redis.Redis(host=_common.LOOPBACK, port=port)
        sha = r.script_load(ZSET_LUA)
        keys = [f"rl:{{s{s}}}" for s in range(w.senders)]
        codes: list[int] = []

        def server_cpu() -> float:
            info = r.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        s_cpu0, c_cpu0, t0 = server_cpu(), _cpu(), time.perf_counter()
        sender, rcpt, now, limit = w.sender, w.recipient, w.now, w.limit
        for lo in range(0, len(w), pipeline):
            pipe = r.pipeline(transaction=False)
            for i in range(lo, min(lo + pipeline, len(w))):
                pipe.evalsha(sha, 1, keys[sender[i]], now[i], WINDOW_MS, limit, rcpt[i])
            codes.extend(c if isinstance(c, int) else c[0] for c in pipe.execute())
        seconds = time.perf_counter() - t0
        c_cpu = _cpu() - c_cpu0
        s_cpu = server_cpu() - s_cpu0
        r.close()
    return Figure(
        f"redis-zset-lua (pipeline {pipeline})",
        len(w),
        seconds,
        s_cpu,
        _outcomes(codes),
        note="cpu = redis-server only; client in extra",
        extra_cpu_seconds=c_cpu,
    )


class DictWindow:
    """The in-process Python sliding window users write: recipient -> last send."""

    def __init__(self, senders: int, limit: int) -> None:
        self.limit = limit
        self.tables: list[OrderedDict[str, int]] = [OrderedDict() for _ in range(senders)]

    def decide(self, sender: int, recipient: str, now: int) -> int | tuple[int, int]:
        table = self.tables[sender]
        horizon = now - WINDOW_MS
        while table:
            oldest, t = next(iter(table.items()))
            if t > horizon:
                break
            del table[oldest]
        if recipient in table:
            table[recipient] = now
            table.move_to_end(recipient)
            return 1
        if len(table) >= self.limit:
            return (0, next(iter(table.values())) + WINDOW_MS)  # when the oldest slot frees
        table[recipient] = now
        return 2


def run_dict(w: Workload) -> Figure:
    impl = DictWindow(w.senders, w.limit)
    decide = impl.decide
    sender, rcpt, now = w.sender, w.recipient, w.now
    c0, t0 = _cpu(), time.perf_counter()
    answers = [decide(sender[i], rcpt[i], now[i]) for i in range(len(w))]
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    codes = [a if isinstance(a, int) else a[0] for a in answers]
    return Figure("python-dict", len(w), seconds, cpu, _outcomes(codes))


def _engine_setup(w: Workload) -> tuple[Any, list[int], list[int], Any]:
    from tiergate.engine import Engine, constants

    eng = Engine()
    scopes, numbers = [], []
    for _ in range(w.senders):
        sc = eng.add_scope()
        scopes.append(sc)
        # Only the unique-recipient rule is compared: throughput and pair-rate
        # buckets are set wide open.
        numbers.append(
            eng.add_number(
                sc, tput_interval_us=1, tput_burst=1 << 30, pair_interval_ms=1, pair_burst=1 << 20
            )
        )
    return eng, scopes, numbers, constants


def _code(constants: Any, decision: int, counted: int) -> int:
    if decision != constants.ADMIT:
        return 0
    return 2 if counted else 1


def run_engine_single(w: Workload) -> Figure:
    eng, scopes, numbers, constants = _engine_setup(w)
    keys = [constants.recipient_key(r) for r in w.recipient]
    flags, limit = constants.F_TEMPLATE, w.limit
    decide = eng.decide
    sender, now = w.sender, w.now
    codes = []
    c0, t0 = _cpu(), time.perf_counter()
    for i in range(len(w)):
        s = sender[i]
        d = decide(now[i], scopes[s], numbers[s], keys[i], flags, limit, i + 1)
        codes.append(d)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    out = [_code(constants, d[0], d[3]) for d in codes]
    return Figure("tiergate-engine decide", len(w), seconds, cpu, _outcomes(out))


def run_engine_batch(w: Workload, batch_size: int) -> Figure:
    from tiergate.engine import DecisionBatch

    eng, scopes, numbers, constants = _engine_setup(w)
    keys = array("Q", (constants.recipient_key(r) for r in w.recipient))
    n = len(w)
    # Columns are filled outside the timed region, as the server's request
    # decoding is measured separately (load.py); this times the decision path.
    batches = []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        b = DecisionBatch()
        b.now = w.now[lo:hi]
        b.scope = array("i", (scopes[s] for s in w.sender[lo:hi]))
        b.number = array("i", (numbers[s] for s in w.sender[lo:hi]))
        b.recipient = keys[lo:hi]
        b.flags = array("I", [constants.F_TEMPLATE]) * (hi - lo)
        b.limit = array("q", [w.limit]) * (hi - lo)
        b.ticket = array("Q", range(lo + 1, hi + 1))
        batches.append(b)
    decide_batch = eng.decide_batch
    c0, t0 = _cpu(), time.perf_counter()
    for b in batches:
        decide_batch(b)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    out = [
        _code(constants, d, c) for b in batches for d, c in zip(b.decision, b.counted, strict=True)
    ]
    return Figure(f"tiergate-engine decide_batch({batch_size})", n, seconds, cpu, _outcomes(out))


def run_server(quick: bool, tiny: bool, shape: str = "batch1000") -> Figure | None:
    """tiergate serve over gRPC (AdmitBatch or AdmitColumns), CPU of the server process."""
    try:
        import load
    except ImportError:
        return None
    res = load.server_batch_figure(quick=quick, tiny=tiny, shape_name=shape)
    if res is None:
        return None
    return Figure(
        f"tiergate-server {load._grpcload.SHAPES[shape].label}",
        res["items"],
        res["seconds"],
        res["server_cpu_seconds"],
        res["outcomes"],
        note="cpu = tiergate serve process only; client in extra (realistic traffic mix)",
        extra_cpu_seconds=res["client_cpu_seconds"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    parser.add_argument("-n", "--decisions", type=int, help="decisions per implementation")
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--limit", type=int, default=1_000)
    parser.add_argument("--population", type=int, default=4_000)
    parser.add_argument("--pipeline", type=int, default=1_000)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis peer")
    parser.add_argument("--no-server", action="store_true", help="skip tiergate serve")
    parser.add_argument("--results-dir")
    args = parser.parse_args(argv)
    n = args.decisions or (2_000 if args.tiny else 200_000 if args.quick else 1_000_000)
    _common.print_machine()
    w = make_workload(n, args.senders, args.population, args.limit)
    figures: list[Figure] = []
    skipped: dict[str, str] = {}
    if args.no_redis:
        skipped["redis-zset-lua"] = "--no-redis"
    else:
        try:
            figures.append(run_redis(w, args.pipeline))
        except _common.RedisMissing as exc:
            print(f"skipping Redis: {exc}", file=sys.stderr)
            skipped["redis-zset-lua"] = str(exc)
    figures.append(run_dict(w))
    figures.append(run_engine_single(w))
    figures.append(run_engine_batch(w, 1000))
    if args.no_server:
        skipped["tiergate-server"] = "--no-server"
    else:
        for shape in ("batch1000", "columns1000"):
            fig = run_server(args.quick, args.tiny, shape)
            if fig is None:
                skipped["tiergate-server"] = "tiergate serve not available"
                break
            figures.append(fig)

    base = next((f for f in figures if f.name.startswith("redis")), None)
    rows = []
    for f in figures:
        ratio = f.per_cpu_s / base.per_cpu_s if base and base.per_cpu_s else None
        rows.append([f.name, f.per_s, f.per_cpu_s, f.per_total_cpu_s, ratio])
    _common.print_table(
        f"unique-recipient decision, {n:,} decisions, {args.senders} senders, "
        f"limit {args.limit:,}/24 h",
        ["implementation", "decisions/s", "per CPU-s", "per CPU-s (all procs)", "x Redis/core"],
        rows,
    )
    for f in figures:
        print(f"  {f.name}: {f.outcomes}")
    ratios: dict[str, float] = {}
    if base and base.per_cpu_s:
        for f in figures:
            if f is not base:
                ratios[f.name] = f.per_cpu_s / base.per_cpu_s
    batch = next((f for f in figures if "decide_batch" in f.name), None)
    target = None
    if batch and base and base.per_cpu_s:
        target = {
            "what": "tiergate batch path >= 100x Redis ZSET+Lua per core",
            "ratio": batch.per_cpu_s / base.per_cpu_s,
            "met": batch.per_cpu_s / base.per_cpu_s >= 100,
        }
    path = _common.write_results(
        "peers",
        {
            "settings": {
                "decisions": n,
                "senders": args.senders,
                "limit": args.limit,
                "population": args.population,
                "redis_pipeline": args.pipeline,
                "window_ms": WINDOW_MS,
            },
            "figures": [f.as_dict() for f in figures],
            "ratios_vs_redis_per_core": ratios,
            "target": target,
            "skipped": skipped,
        },
        Path(args.results_dir) if args.results_dir else None,
    )
    print(f"\nwrote {path}")
    # Redis and the dict implement the exact sliding window: they must agree.
    # tiergate's 24 h ring rounds to minute buckets on the safe side, so near a
    # full limit it refuses slightly earlier; its counts differ a little.
    exact = [f for f in figures if f.name.startswith(("redis", "python-dict"))]
    if len(exact) == 2 and exact[0].outcomes != exact[1].outcomes:
        print(f"exact windows disagree: {exact[0].outcomes} / {exact[1].outcomes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
