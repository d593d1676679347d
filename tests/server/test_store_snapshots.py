"""Snapshots of a serving sidecar: many, under load, and never from a forked process.

The sidecar runs gRPC threads; a process forked from it may crash (and did).
These tests make ``os.fork`` fail and drive concurrent Admits, AdmitBatches
and AdmitStreams while snapshots fall due every few records: every snapshot
must be taken (from the journal by the compaction child, a new interpreter,
the only child process the sidecar has) and a restart must find every
acknowledged admit.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from server_harness import SENDER, T0, make_config, run_async, sender, serving, template_request

from tiergate.store import EmbeddedStore
from tiergate.v1 import admission_pb2 as pb


def admit(n: int) -> pb.AdmitRequest:
    return template_request(
        f"1555{n:07d}", T0 + 10 * n, category=pb.MARKETING, template_id="spring_sale", key=f"k{n}"
    )


def note(counted: set[str], reqs: list[pb.AdmitRequest], answers: list[pb.AdmitResponse]) -> None:
    assert len(answers) == len(reqs)
    for req, answer in zip(reqs, answers, strict=True):
        if answer.decision == pb.DECISION_ADMIT and answer.counted:
            counted.add(req.recipient)


def small_snapshot_intervals(monkeypatch: pytest.MonkeyPatch, stores: list[EmbeddedStore]) -> None:
    """Sidecars open their store with a snapshot due every 25 records."""
    real_open = EmbeddedStore.open

    def open_store(*args: Any, **kwargs: Any) -> EmbeddedStore:
        kwargs.update(snapshot_every_records=25, snapshot_min_seconds=0)
        store = real_open(*args, **kwargs)
        stores.append(store)
        return store

    monkeypatch.setattr(EmbeddedStore, "open", staticmethod(open_store))


def children() -> list[str]:
    """Child processes of this one (every thread's), but the snapshot compaction
    child (``store.compaction.Compactor``), a new interpreter and not a fork."""
    found: list[str] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children", encoding="ascii") as f:
            found += f.read().split()
    return [pid for pid in found if not compaction_child(pid)]


def compaction_child(pid: str) -> bool:
    """The compaction child, or a child that has exited (gone, or a zombie whose
    command line is empty until it is waited for: no fork running; ``os.fork``
    itself is refused). Between its start and its exec the compaction child
    still shows this process's command line: a child that does is looked at
    again a moment later."""
    for attempt in range(3):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except FileNotFoundError:
            return True
        if not cmdline or b"tiergate.store.compaction import child" in cmdline:
            return True
        time.sleep(0.05 * (attempt + 1))
    return False


def test_a_serving_sidecar_takes_many_snapshots_without_a_forked_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fork() -> int:
        raise AssertionError("os.fork() called while serving")

    monkeypatch.setattr(os, "fork", fork)
    stores: list[EmbeddedStore] = []
    small_snapshot_intervals(monkeypatch, stores)
    config = make_config(
        data_dir=tmp_path / "data",
        senders=(sender(tier="TIER_100K", throughput_mps=1000),),
        shutdown_grace=5.0,
    )
    counted: set[str] = set()
    seen_children: list[str] = []
    # children this process already has (multiprocessing's resource tracker, once
    # another test used a Queue) are not the sidecar's
    before = set(children())

    @run_async
    async def first_run() -> None:
        async with serving(config) as h:
            stop = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    seen_children.extend(c for c in children() if c not in before)
                    await asyncio.sleep(0.005)

            async def unary(lane: int) -> None:
                for n in range(lane, 600, 4):
                    note(counted, [admit(n)], [await h.stub.Admit(admit(n))])

            async def batches() -> None:
                for b in range(20):
                    reqs = [admit(1_000 + 10 * b + i) for i in range(10)]
                    reply = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
                    note(counted, reqs, list(reply.responses))

            async def stream() -> None:
                reqs = [admit(2_000 + i) for i in range(150)]
                note(counted, reqs, [r async for r in h.stub.AdmitStream(iter(reqs))])

            watcher = asyncio.ensure_future(watch())
            await asyncio.gather(*(unary(lane) for lane in range(4)), batches(), stream())
            # On a busy machine snapshots take longer (the compaction child runs
            # at a lower priority) and fewer fall due: admit on, pausing now and
            # then (a bounded number, about a minute at most), until ten have been
            # taken while serving.
            for n in range(3_000, 6_000):
                if stores[0].snapshots_taken >= 10:
                    break
                note(counted, [admit(n)], [await h.stub.Admit(admit(n))])
                if n % 10 == 0:
                    await asyncio.sleep(0.02)
            for _ in range(500):  # the last snapshot the load made due
                if not stores[0]._snapshots.running:
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await watcher
            assert stores[0].snapshots_taken >= 10
            assert stores[0].snapshots_compacted == stores[0].snapshots_taken

    first_run()
    assert not seen_children
    assert len(counted) > 800

    @run_async
    async def second_run() -> None:
        async with serving(config) as h:
            state = await h.client.sender_state(SENDER, at_unix_ms=T0 + 10_000)
            assert state.used_24h == len(counted)
            for recipient in sorted(counted):  # each still counted: a dry run counts nothing
                probe = template_request(
                    recipient, T0 + 100_000, category=pb.MARKETING, template_id="spring_sale"
                )
                probe.dry_run = True
                answer = await h.stub.Admit(probe)
                assert answer.decision == pb.DECISION_ADMIT and not answer.counted, recipient

    second_run()
    assert stores[1].report.snapshot_path is not None
