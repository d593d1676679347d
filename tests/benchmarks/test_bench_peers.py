"""peers.py's repeat logic: warm-up first, timed runs in rounds, medians over runs.

No timing is asserted: these check which runs count and how they are summed up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine_independent

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402

OUT = {"limit_reached": 1, "already_counted": 2, "new_slot": 3}


def _fake(name: str, runs: int, log: list[str], cpu: list[float]) -> peers.System:
    calls = iter(range(100))

    def once() -> tuple[peers.Run, dict[str, int]]:
        k = next(calls)
        log.append(f"{name}{k}")
        return peers.Run(seconds=1.0, cpu_seconds=cpu[k]), dict(OUT)

    return peers.System(name, 100, once, runs)


def test_every_system_warms_up_then_runs_in_rounds() -> None:
    log: list[str] = []
    redis = _fake("r", 2, log, [9.0, 1.0, 2.0])
    engine = _fake("e", 3, log, [9.0, 4.0, 1.0, 2.0])
    figures = peers.run_rounds([redis, engine])
    # call 0 of each is the warm-up, before any timed run; Redis sits out round 3
    assert log == ["r0", "e0", "r1", "e1", "r2", "e2", "e3"]
    r, e = figures
    assert [run.cpu_seconds for run in r.runs] == [1.0, 2.0]
    assert [run.cpu_seconds for run in e.runs] == [4.0, 1.0, 2.0]
    assert e.per_cpu_s == 50.0  # median of 25, 100, 50: the warm-up's 9 s is not counted
    assert r.per_cpu_s == 75.0  # median of two runs = their mean (100 and 50)
    assert r.run_outcomes_agree and e.run_outcomes_agree


def test_figure_json_keeps_the_old_keys_and_every_run() -> None:
    runs = [peers.Run(2.0, 4.0, 1.0, 10), peers.Run(1.0, 2.0, 2.0, 0), peers.Run(4.0, 8.0, 0.0)]
    d = peers.Figure("x", 800, runs, dict(OUT)).as_dict()
    for key in (
        "name",
        "decisions",
        "seconds",
        "cpu_seconds",
        "extra_cpu_seconds",
        "decisions_per_s",
        "decisions_per_cpu_s",
        "decisions_per_total_cpu_s",
        "outcomes",
        "note",
    ):
        assert key in d
    assert d["seconds"] == 2.0 and d["cpu_seconds"] == 4.0 and d["extra_cpu_seconds"] == 1.0
    assert d["decisions_per_s"] == 400.0
    assert d["decisions_per_cpu_s"] == 200.0
    assert d["decisions_per_total_cpu_s"] == 160.0  # median of 800/5, 800/4, 800/8
    assert (d["decisions_per_cpu_s_min"], d["decisions_per_cpu_s_max"]) == (100.0, 400.0)
    assert d["timed_runs"] == 3 and d["warmup_runs"] == 1
    assert [r["minor_faults"] for r in d["runs"]] == [10, 0, None]
    assert [r["decisions_per_cpu_s"] for r in d["runs"]] == [200.0, 400.0, 100.0]


def test_runs_that_answer_differently_are_flagged() -> None:
    answers = iter([dict(OUT), dict(OUT), {**OUT, "new_slot": 4}])

    def once() -> tuple[peers.Run, dict[str, int]]:
        return peers.Run(1.0, 1.0), next(answers)

    (fig,) = peers.run_rounds([peers.System("x", 1, once, 2)])
    assert not fig.run_outcomes_agree
    assert fig.outcomes == OUT  # the warm-up's
