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

Repeats, the same for every system. Each one first does one untimed warm-up
run of the whole workload, then ``R`` timed runs, each from empty state: a
fresh ``Engine`` or ``DictWindow`` per run, and for Redis a ``FLUSHALL SYNC``
before every run (the Lua script stays loaded; the flush happens before the
CPU readings). A full garbage collection precedes each run. The timed runs go
in rounds (Redis, dict, engine decide, engine decide_batch, then again), so
every system's runs spread over the same stretch of time on a shared machine.
A figure is the median over its timed runs (decisions/s, per CPU-second and
per CPU-second of all processes, each the median of the per-run values);
every run, with the page faults in its timed region, is kept in the JSON
under ``runs``.

How many: the in-process systems take well under a second per run, so they
get 7 timed runs in every mode (their per-CPU-second figures spread by 1.5x
from run to run on an idle shared 2-core machine, 2.5x on a busy one). Redis
takes seconds per run (the Python client sending the Lua calls dominates the
wall time: 4 s per quick run on an idle machine, 10 s on a busy one) and
varies less (up to about 10 % between runs in one process): 3 timed runs in
full mode, 2 with ``--quick`` and ``--tiny`` (the median of 2 is their mean).
That keeps ``--quick`` at about 30 s on an idle machine and about 70 s with
other benchmarks running. ``--runs`` and ``--redis-runs`` override the
counts. The tiergate-server rows are one timed window each after the load
harness's own untimed warm-up (1 s of the same traffic against the same
server): repeating them would mean restarting ``tiergate serve`` per run,
which costs more than the rest of the script.

Memory: glibc's malloc is told to keep freed memory mapped (see
``retain_freed_memory``), so an in-process system's fresh state after the
warm-up starts on pages the process already has, as redis-server's jemalloc
does after FLUSHALL. ``--malloc-default`` turns this off.

    .venv/bin/python benchmarks/peers.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import resource
import statistics
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
class Run:
    """One timed run: wall time, CPU of the measured process, CPU of the others."""

    seconds: float
    cpu_seconds: float
    extra_cpu_seconds: float = 0.0  # other processes (client for Redis)
    # page faults of the measured process inside the timed region (first touch
    # of memory new to the process); None when not known
    minor_faults: int | None = None

    def as_dict(self, decisions: int) -> dict[str, float | int | None]:
        total = self.cpu_seconds + self.extra_cpu_seconds
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "extra_cpu_seconds": self.extra_cpu_seconds,
            "decisions_per_s": decisions / self.seconds,
            "decisions_per_cpu_s": decisions / self.cpu_seconds if self.cpu_seconds else 0.0,
            "decisions_per_total_cpu_s": decisions / total if total else 0.0,
            "minor_faults": self.minor_faults,
        }


WARMUP_RUN = "one untimed run of the same workload from empty state"


@dataclass
class Figure:
    """One implementation: its timed runs; every reported figure is the median over them."""

    name: str
    decisions: int
    runs: list[Run]
    outcomes: dict[str, int]
    note: str = ""
    warmup_runs: int = 1
    warmup: str = WARMUP_RUN
    run_outcomes_agree: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def _median(self, key: str) -> float:
        return float(statistics.median(self.run_values(key)))

    @property
    def seconds(self) -> float:
        return self._median("seconds")

    @property
    def cpu_seconds(self) -> float:
        return self._median("cpu_seconds")

    @property
    def extra_cpu_seconds(self) -> float:
        return self._median("extra_cpu_seconds")

    @property
    def per_s(self) -> float:
        return self._median("decisions_per_s")

    @property
    def per_cpu_s(self) -> float:
        return self._median("decisions_per_cpu_s")

    @property
    def per_total_cpu_s(self) -> float:
        return self._median("decisions_per_total_cpu_s")

    def run_values(self, key: str = "decisions_per_cpu_s") -> list[float]:
        return [float(r.as_dict(self.decisions)[key] or 0) for r in self.runs]

    def as_dict(self) -> dict[str, Any]:
        per_cpu = self.run_values()
        return {
            "name": self.name,
            "decisions": self.decisions,
            # medians over the timed runs
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "extra_cpu_seconds": self.extra_cpu_seconds,
            "decisions_per_s": self.per_s,
            "decisions_per_cpu_s": self.per_cpu_s,
            "decisions_per_total_cpu_s": self.per_total_cpu_s,
            "outcomes": self.outcomes,
            "note": self.note,
            "statistic": f"median of {len(self.runs)} timed run(s)",
            "timed_runs": len(self.runs),
            "warmup_runs": self.warmup_runs,
            "warmup": self.warmup,
            "decisions_per_cpu_s_min": min(per_cpu),
            "decisions_per_cpu_s_max": max(per_cpu),
            "run_outcomes_agree": self.run_outcomes_agree,
            "runs": [r.as_dict(self.decisions) for r in self.runs],
            **self.extra,
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


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_minflt


def _minor_faults_of(pid: int) -> int | None:
    """Minor page faults of another process so far (Linux /proc), None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])  # field 10, minflt
    except (OSError, ValueError, IndexError):
        return None


def retain_freed_memory() -> bool:
    """Keep memory freed by this process mapped (glibc), so a fresh state reuses warm pages.

    redis-server's jemalloc keeps the pages FLUSHALL frees and reuses them for
    the next run. glibc instead decides per allocation, through its dynamic
    mmap threshold, whether a fresh engine's (or dict's) large tables come
    from pages this process already touched or from new zero pages of the
    kernel (about 2 500 page faults, +20..60 ns per decision over 200 000
    decisions), which made consecutive runs differ by up to 2x for reasons
    that belong to the allocator, not to the implementation. A fixed mmap
    threshold of 32 MB and no trimming give every in-process run after the
    warm-up the same start as Redis's. Returns whether it applied (glibc only).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


RunOnce = Callable[[], tuple[Run, dict[str, int]]]


@dataclass
class System:
    """One implementation under test: how to do one run of the workload, and its runs so far.

    ``once`` builds its own empty state (untimed), collects garbage, times the
    decisions only, and returns the run and its outcomes. The workload is
    deterministic, so every run (warm-up included) must give the same outcomes.
    """

    name: str
    decisions: int
    once: RunOnce
    runs: int
    note: str = ""
    expected: dict[str, int] | None = None
    timed: list[Run] = field(default_factory=list)
    agree: bool = True

    def warm_up(self) -> None:
        _, self.expected = self.once()

    def timed_run(self) -> None:
        run, outcomes = self.once()
        if outcomes != self.expected:
            print(f"{self.name}: outcomes differ between runs: {self.expected} / {outcomes}")
            self.agree = False
        self.timed.append(run)

    def figure(self) -> Figure:
        assert self.expected is not None and self.timed
        return Figure(
            self.name,
            self.decisions,
            self.timed,
            self.expected,
            note=self.note,
            run_outcomes_agree=self.agree,
        )


def run_rounds(systems: Sequence[System]) -> list[Figure]:
    """One warm-up run of every system, then rounds of one timed run each.

    Rounds interleave the systems, so their timed runs share the same stretch
    of time on a machine other work may be using; a system with fewer runs
    (Redis) sits out the last rounds.
    """
    for sys_ in systems:
        sys_.warm_up()
    for _ in range(max((s.runs for s in systems), default=0)):
        for sys_ in systems:
            if len(sys_.timed) < sys_.runs:
                sys_.timed_run()
    return [s.figure() for s in systems]


# -- peers ---------------------------------------------------------------------


def redis_system(w: Workload, pipeline: int, runs: int, stack: contextlib.ExitStack) -> System:
    """The Redis peer, against a redis-server that lives as long as ``stack``."""
    import redis

    port = stack.enter_context(_common.redis_server())
    r = redis.Redis(host=_common.LOOPBACK, port=port)
    stack.callback(r.close)
    sha = r.script_load(ZSET_LUA)  # scripts survive FLUSHALL
    keys = [f"rl:{{s{s}}}" for s in range(w.senders)]
    sender, rcpt, now, limit = w.sender, w.recipient, w.now, w.limit

    pid = int(r.info("server")["process_id"])

    def server_cpu() -> float:
        info = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def once() -> tuple[Run, dict[str, int]]:
        # Empty state for every run, the flush done before the CPU readings.
        r.execute_command("FLUSHALL", "SYNC")
        if r.dbsize() != 0:
            raise RuntimeError("redis-server not empty after FLUSHALL")
        codes: list[int] = []
        gc.collect()
        f0 = _minor_faults_of(pid)
        s_cpu0, c_cpu0, t0 = server_cpu(), _cpu(), time.perf_counter()
        for lo in range(0, len(w), pipeline):
            pipe = r.pipeline(transaction=False)
            for i in range(lo, min(lo + pipeline, len(w))):
                pipe.evalsha(sha, 1, keys[sender[i]], now[i], WINDOW_MS, limit, rcpt[i])
            codes.extend(c if isinstance(c, int) else c[0] for c in pipe.execute())
        seconds = time.perf_counter() - t0
        c_cpu = _cpu() - c_cpu0
        s_cpu = server_cpu() - s_cpu0
        f1 = _minor_faults_of(pid)
        faults = f1 - f0 if f0 is not None and f1 is not None else None
        return Run(seconds, s_cpu, c_cpu, faults), _outcomes(codes)

    return System(
        f"redis-zset-lua (pipeline {pipeline})",
        len(w),
        once,
        runs,
        note="cpu = redis-server only; client in extra",
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


def dict_system(w: Workload, runs: int) -> System:
    sender, rcpt, now = w.sender, w.recipient, w.now

    def once() -> tuple[Run, dict[str, int]]:
        decide = DictWindow(w.senders, w.limit).decide
        gc.collect()
        (c0, f0), t0 = _usage(), time.perf_counter()
        answers = [decide(sender[i], rcpt[i], now[i]) for i in range(len(w))]
        seconds, (c1, f1) = time.perf_counter() - t0, _usage()
        codes = [a if isinstance(a, int) else a[0] for a in answers]
        return Run(seconds, c1 - c0, minor_faults=f1 - f0), _outcomes(codes)

    return System("python-dict", len(w), once, runs)


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


def engine_single_system(w: Workload, runs: int) -> System:
    from tiergate.engine import constants

    keys = [constants.recipient_key(r) for r in w.recipient]
    flags, limit = constants.F_TEMPLATE, w.limit
    sender, now = w.sender, w.now

    def once() -> tuple[Run, dict[str, int]]:
        eng, scopes, numbers, constants = _engine_setup(w)  # a fresh, empty engine
        decide = eng.decide
        codes = []
        gc.collect()
        (c0, f0), t0 = _usage(), time.perf_counter()
        for i in range(len(w)):
            s = sender[i]
            d = decide(now[i], scopes[s], numbers[s], keys[i], flags, limit)
            codes.append(d)
        seconds, (c1, f1) = time.perf_counter() - t0, _usage()
        out = [_code(constants, d[0], d[3]) for d in codes]
        return Run(seconds, c1 - c0, minor_faults=f1 - f0), _outcomes(out)

    return System("tiergate-engine decide", len(w), once, runs)


def engine_batch_system(w: Workload, batch_size: int, runs: int) -> System:
    from tiergate.engine import DecisionBatch, constants

    keys = array("Q", (constants.recipient_key(r) for r in w.recipient))
    n = len(w)

    def once() -> tuple[Run, dict[str, int]]:
        eng, scopes, numbers, constants = _engine_setup(w)  # a fresh, empty engine
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
        gc.collect()
        (c0, f0), t0 = _usage(), time.perf_counter()
        for b in batches:
            decide_batch(b)
        seconds, (c1, f1) = time.perf_counter() - t0, _usage()
        out = [
            _code(constants, d, c)
            for b in batches
            for d, c in zip(b.decision, b.counted, strict=True)
        ]
        return Run(seconds, c1 - c0, minor_faults=f1 - f0), _outcomes(out)

    return System(f"tiergate-engine decide_batch({batch_size})", n, once, runs)


def run_server(quick: bool, tiny: bool, shape: str = "batch1000") -> Figure | None:
    """tiergate serve over gRPC (AdmitBatch or AdmitColumns), CPU of the server process.

    One timed window after the load harness's own unrecorded warm-up of the
    same traffic against the same server (not repeated: each repeat would
    restart ``tiergate serve``).
    """
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
        [Run(res["seconds"], res["server_cpu_seconds"], res["client_cpu_seconds"])],
        res["outcomes"],
        note="cpu = tiergate serve process only; client in extra (realistic traffic mix)",
        warmup_runs=0,
        warmup=f"{0.2 if tiny else 1.0:g} s of the same traffic against the same server, "
        "unrecorded, before the timed window",
    )


def main(argv: Sequence[str] | None = None) -> int:
    _common.exit_on_sigterm()
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
    parser.add_argument(
        "--runs",
        type=int,
        default=7,
        help="timed runs per in-process implementation, after one warm-up run (default 7)",
    )
    parser.add_argument(
        "--redis-runs",
        type=int,
        help="timed Redis runs after one warm-up run (default 3; 2 with --quick or --tiny)",
    )
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc thresholds alone (fresh in-process state may then "
        "start on new pages, run by run)",
    )
    parser.add_argument("--results-dir")
    args = parser.parse_args(argv)
    n = args.decisions or (2_000 if args.tiny else 200_000 if args.quick else 1_000_000)
    runs = args.runs
    redis_runs = args.redis_runs or (2 if args.quick or args.tiny else 3)
    if runs < 1 or redis_runs < 1:
        parser.error("--runs and --redis-runs must be at least 1")
    _common.print_machine()
    retained = False if args.malloc_default else retain_freed_memory()
    w = make_workload(n, args.senders, args.population, args.limit)
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        systems: list[System] = []
        if args.no_redis:
            skipped["redis-zset-lua"] = "--no-redis"
        else:
            try:
                systems.append(redis_system(w, args.pipeline, redis_runs, stack))
            except _common.RedisMissing as exc:
                print(f"skipping Redis: {exc}", file=sys.stderr)
                skipped["redis-zset-lua"] = str(exc)
        systems.append(dict_system(w, runs))
        systems.append(engine_single_system(w, runs))
        systems.append(engine_batch_system(w, 1000, runs))
        figures = run_rounds(systems)
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
        f"limit {args.limit:,}/24 h; medians of the timed runs after one warm-up run",
        ["implementation", "decisions/s", "per CPU-s", "per CPU-s (all procs)", "x Redis/core"],
        rows,
    )
    print("\nper CPU-second, every timed run (after the warm-up):")
    for f in figures:
        values = ", ".join(_common.fmt(v) for v in f.run_values())
        print(f"  {f.name}: {values}  (median of {len(f.runs)}; warm-up: {f.warmup})")
        faults = [r.minor_faults for r in f.runs]
        if any(x is not None for x in faults):
            print(
                f"    page faults in the timed region: {', '.join(_common.fmt(x) for x in faults)}"
            )
    print()
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
        b_runs, r_runs = batch.run_values(), base.run_values()
        target = {
            "what": "tiergate batch path >= 100x Redis ZSET+Lua per core",
            "ratio": batch.per_cpu_s / base.per_cpu_s,
            "met": batch.per_cpu_s / base.per_cpu_s >= 100,
            "statistic": (
                f"median of {len(batch.runs)} engine runs / median of {len(base.runs)} "
                "Redis runs, each after one warm-up run"
            ),
            # the slowest engine run against the fastest Redis run, and the reverse
            "ratio_min": min(b_runs) / max(r_runs),
            "ratio_max": max(b_runs) / min(r_runs),
            "ratio_all_processes": batch.per_cpu_s / base.per_total_cpu_s
            if base.per_total_cpu_s
            else None,
        }
        print(
            f"\ntarget: decide_batch / Redis server per core = {target['ratio']:.1f}x "
            f"(runs give {target['ratio_min']:.1f}x to {target['ratio_max']:.1f}x; "
            f"{'met' if target['met'] else 'missed'})"
        )
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
                "warmup_runs": 1,
                "timed_runs": runs,
                "redis_timed_runs": redis_runs,
                "statistic": "median over the timed runs; each run from empty state",
                "order": "rounds: one timed run of each system per round, after all warm-ups",
                "freed_memory_retained": retained,
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
    if not all(f.run_outcomes_agree for f in figures):
        print("an implementation answered differently from one run to the next", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
