"""What this machine's memory charges for a decision's table reads, without the engine.

At 10 M tracked recipients the engine's scope table is about 320 MB, far past
the CPU caches: every decision reads a random part of it, so the 10 M / 1 000
ratio of ``engine.py`` is bounded below by what the machine charges for one
random table access. This script measures that charge on its own, with a small
C program (compiled here with the system C compiler) doing a decision's memory
work and nothing else:

- ``decide_batch``'s pattern: prefetch the table lines of the item 8 places
  on (``PREFETCH_AHEAD``, non-temporal, as the engine fetches its scope
  lines), then read the current item's line, write its entry back, and do a
  fixed amount of arithmetic that depends on what was read (as the decision does);
- over a table region of each size, from one that fits in the caches to 1 GB;
- reading 1 line or 3 adjacent lines per item (a Robin Hood probe of 16-byte
  entries from anywhere in a line spills into the next lines, so the engine
  prefetches 3);
- with 3 lines, also alone and next to the batch's column streams: a
  ``decide_batch`` item reads 6 request columns and writes 7 answer columns,
  13 sequential streams competing with the table lines for the core's
  outstanding misses (the probe reads and writes 13 eight-byte streams).

The ratio of each row to the cached row is the smallest size ratio any engine
with that access pattern could show here.

A single ``decide`` call has nothing to overlap its table read with (the key
arrives with the call), so a second table gives the price of one dependent
random load over each region: a pointer chase through lines spread over it,
with huge pages asked for as the engine does. At 10 M a single call pays about
one of those on top of its figure at 1 000. Prints a table and writes
``benchmarks/results/memory.json``.

    .venv/bin/python benchmarks/memory.py --quick     # ~20 s
    .venv/bin/python benchmarks/memory.py             # adds 1 GB, 3 rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

PROBE_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

/* chase REGION_BYTES ITERS: ns per load, each load's address the previous load's
   value, over a random cycle through up to 1 Mi lines spread over the region */
static int chase(size_t region, size_t iters) {
    size_t lines = region / 64, n = lines < ((size_t)1 << 20) ? lines : (size_t)1 << 20;
    size_t stride = lines / n, i, j, tmp, off;
    size_t *idx = malloc(n * sizeof(size_t));
    char *p = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double t;
    if (p == MAP_FAILED || idx == NULL || n < 2) return 3;
#ifdef MADV_HUGEPAGE
    madvise(p, region, MADV_HUGEPAGE);
#endif
    for (i = 0; i < n; i++) idx[i] = i * stride + next_rand() % stride;  /* distinct lines */
    for (i = n - 1; i > 0; i--) {  /* one random order of them */
        j = next_rand() % (i + 1);
        tmp = idx[i]; idx[i] = idx[j]; idx[j] = tmp;
    }
    for (i = 0; i < n; i++) *(size_t *)(p + idx[i] * 64) = idx[(i + 1) % n] * 64;
    off = idx[0] * 64;  /* on the cycle (line 0 need not be) */
    for (i = 0; i < n; i++) off = *(volatile size_t *)(p + off);  /* warm the TLB, caches */
    t = now_s();
    for (i = 0; i < iters; i++) off = *(volatile size_t *)(p + off);
    t = now_s() - t;
    printf("%.3f %llu\n", t / iters * 1e9, (unsigned long long)off & 1);
    return 0;
}

/* probe REGION_BYTES LINES WRITE WORK AHEAD ITERS STREAMS: ns per item */
int main(int argc, char **argv) {
    if (argc == 3) return chase(strtoull(argv[1], NULL, 10), strtoull(argv[2], NULL, 10));
    if (argc != 8) return 2;
    size_t region = strtoull(argv[1], NULL, 10);
    int lines = atoi(argv[2]), write = atoi(argv[3]), work = atoi(argv[4]);
    size_t ahead = strtoull(argv[5], NULL, 10), iters = strtoull(argv[6], NULL, 10);
    int streams = atoi(argv[7]), z;
    size_t n = (size_t)1 << 20, i, j, slen = (size_t)1 << 21;  /* 16 MB a stream */
    uint64_t **col = malloc(sizeof(uint64_t *) * (size_t)(streams + 1));
    int l, k;
    char *p = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t *pos = malloc(n * sizeof(size_t));
    uint64_t acc = 1, s = 0;
    double t;
    if (p == MAP_FAILED || pos == NULL || col == NULL || region < 1024) return 3;
    for (z = 0; z < streams; z++) {
        col[z] = malloc(slen * sizeof(uint64_t));
        if (col[z] == NULL) return 3;
        for (i = 0; i < slen; i++) col[z][i] = i;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, region, MADV_HUGEPAGE);  /* as the engine asks for its big tables */
#endif
    for (i = 0; i < region; i += 4096) p[i] = 1;
    for (i = 0; i < n; i++) pos[i] = (next_rand() % (region / 64 - 4)) * 64;
    for (i = 0; i < n; i++) s += *(volatile size_t *)(p + pos[i]);  /* warm the TLB, caches */
    t = now_s();
    for (i = 0; i < iters; i++) {
        size_t *q;
        j = pos[(i + ahead) & (n - 1)];
        for (l = 0; l < lines; l++) __builtin_prefetch(p + j + 64 * l, 0, 0);
        q = (size_t *)(p + pos[i & (n - 1)]);
        s += *q;
        if (write) *q = s;
        for (z = 0; z < streams; z++) {  /* request columns read, answer columns written */
            if (z & 1) col[z][i & (slen - 1)] = s;
            else s += col[z][i & (slen - 1)];
        }
        for (k = 0; k < work; k++) {  /* the decision's arithmetic, on what was read */
            acc = acc * 6364136223846793005ull + (s | 1);
            __asm__ volatile("" : "+r"(acc));
        }
    }
    t = now_s() - t;
    printf("%.3f %llu\n", t / iters * 1e9, (unsigned long long)(s + acc) & 1);
    return 0;
}
"""

MB = 1 << 20


def build_probe(workdir: Path) -> Path | None:
    """Compile the probe; None when this machine has no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = workdir / "probe.c"
    src.write_text(PROBE_C, encoding="ascii")
    exe = workdir / "probe"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True, capture_output=True)
    return exe


#: decide_batch's column streams: 6 request columns read, 7 answer columns written
STREAMS = 13
# decide_batch's BATCH_AHEAD (ext/tiergate/_native/engine.pyx)
PREFETCH_AHEAD = 8


def run_probe(
    exe: Path, region: int, lines: int, write: bool, work: int, iters: int, streams: int = 0
) -> float:
    out = subprocess.run(
        [
            str(exe),
            str(region),
            str(lines),
            str(int(write)),
            str(work),
            str(PREFETCH_AHEAD),
            str(iters),
            str(streams),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return float(out.stdout.split()[0])


def run_chase(exe: Path, region: int, iters: int) -> float:
    out = subprocess.run(
        [str(exe), str(region), str(iters)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return float(out.stdout.split()[0])


def measure_chase(exe: Path, regions: list[int], rounds: int, iters: int) -> list[dict[str, Any]]:
    """ns per dependent random load for every region, in rounds; medians."""
    seen: dict[int, list[float]] = {r: [] for r in regions}
    for _ in range(rounds):
        for region in regions:
            seen[region].append(run_chase(exe, region, iters))
    return [
        {
            "region_bytes": region,
            "ns_per_load": statistics.median(seen[region]),
            "ns_runs": seen[region],
        }
        for region in regions
    ]


def measure(
    exe: Path, regions: list[int], rounds: int, iters: int, work: int
) -> list[dict[str, Any]]:
    """ns per item for every region, line count and stream count, in rounds (each
    round runs every configuration once, so all of them meet the same moments of a
    shared machine); medians, and each row's ratio to the cached region's row of
    the same line and stream counts."""
    configs = [(r, lines, st) for r in regions for lines, st in ((1, 0), (3, 0), (3, STREAMS))]
    seen: dict[tuple[int, int, int], list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for region, lines, st in configs:
            seen[region, lines, st].append(run_probe(exe, region, lines, True, work, iters, st))
    rows = []
    for region, lines, st in configs:
        ns = statistics.median(seen[region, lines, st])
        base = statistics.median(seen[regions[0], lines, st])
        rows.append(
            {
                "region_bytes": region,
                "lines": lines,
                "streams": st,
                "ns_per_item": ns,
                "ns_runs": seen[region, lines, st],
                "added_ns": ns - base,
                "ratio_to_cached": ns / base,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    _common.exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="up to 512 MB, 2 rounds")
    ap.add_argument("--tiny", action="store_true", help="smallest run: proves it works")
    ap.add_argument("--work", type=int, default=30, help="arithmetic steps per item")
    ap.add_argument("--results-dir", type=Path, default=None, help="where memory.json goes")
    args = ap.parse_args(argv)

    _common.print_machine()
    if args.tiny:
        regions, rounds, iters = [256 * 1024, 8 * MB], 1, 100_000
    elif args.quick:
        regions, rounds, iters = [256 * 1024, 32 * MB, 128 * MB, 320 * MB, 512 * MB], 2, 2_000_000
    else:
        regions = [256 * 1024, 32 * MB, 128 * MB, 256 * MB, 320 * MB, 512 * MB, 1024 * MB]
        rounds, iters = 3, 4_000_000
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiergate-memory-") as tmp:
        exe = build_probe(Path(tmp))
        if exe is None:
            print("no C compiler (cc or gcc) on PATH: nothing measured")
            rows: list[dict[str, Any]] = []
            chased: list[dict[str, Any]] = []
        else:
            rows = measure(exe, regions, rounds, iters, args.work)
            chased = measure_chase(exe, regions, rounds, iters // 4)
    _common.print_table(
        f"one decision's table access, alone (C, prefetch {PREFETCH_AHEAD} items ahead, one write, "
        f"{args.work} dependent arithmetic steps; ns per item, median of {rounds} "
        "round(s); ratio = the size's figure / the cached region's, same line and stream "
        "counts; streams = sequential 8-byte column streams beside, as decide_batch's)",
        [
            "table region MB",
            "lines per item",
            "column streams",
            "ns per item",
            "added ns",
            "ratio to cached",
        ],
        [
            [
                r["region_bytes"] / MB,
                r["lines"],
                r["streams"],
                r["ns_per_item"],
                r["added_ns"],
                r["ratio_to_cached"],
            ]
            for r in rows
        ],
    )
    _common.print_table(
        "one single call's table access: a dependent random load (pointer chase over the "
        f"region, huge pages asked for; ns per load, median of {rounds} round(s)). A single "
        "decide cannot prefetch: at 10 M its scope-table line costs one such load, whole, "
        "next to engine.py's single-call figure at 1 000",
        ["table region MB", "ns per load"],
        [[r["region_bytes"] / MB, r["ns_per_load"]] for r in chased],
    )
    path = _common.write_results(
        "memory",
        {
            "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
            "seconds": time.monotonic() - started,
            "work_steps": args.work,
            "prefetch_ahead": PREFETCH_AHEAD,
            "iterations": iters,
            "rounds": rounds,
            "rows": rows,
            "chase": chased,
        },
        args.results_dir,
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
