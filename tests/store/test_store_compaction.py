"""Snapshots made from the journal by the compaction child (``store.compaction``).

The event loop only cuts the journal; the child restores the snapshot before,
replays the journal up to the cut and writes the snapshot there. Senders keep
changing while it works: a restart (snapshot + journal after it) must give
exactly the live state, and a child that fails leaves the next snapshot to
the state's image, losing nothing, after which the child makes them again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tiergate.policy import events as ev
from tiergate.policy.events import Quality
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService
from tiergate.store import EmbeddedStore, StoreError
from tiergate.store.snapshot import list_snapshots
from tiergate.v1 import admission_pb2 as pb

T0 = 1_767_225_600_000


def sender_id(i: int) -> str:
    return f"1{i:014d}"


def create(svc: AdmissionService, first: int, end: int, at: int) -> None:
    for i in range(first, end):
        update = ev.SenderUpdate(sender_id(i), display_phone_number=f"+1{i:010d}", tier="TIER_1K")
        assert svc.apply(update, at).applied


def admit(svc: AdmissionService, sender: int, n: int) -> None:
    at = T0 + 1_000 + n
    req = AdmitRequest(sender_id(sender), f"49{n:011d}", pb.TEMPLATE, pb.UTILITY, "t1", f"k{n}", at)
    assert svc.admit(req, at).decision == pb.DECISION_ADMIT


def reopen(data: Path, live: AdmissionService) -> tuple[AdmissionService, EmbeddedStore]:
    svc = AdmissionService(live.profile, clock="request", ticket_key=live.ticket_key)
    store = EmbeddedStore.open(data, "write", snapshot_on_close=False)
    store.recover(svc)
    return svc, store


def test_senders_changing_while_the_child_works_recover_to_the_live_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = AdmissionService(load_profile("meta-2025"), clock="request")

    async def run() -> tuple[int, int]:
        store = EmbeddedStore.open(data, "write", snapshot_on_close=False)
        store.recover(live)
        create(live, 0, 300, T0)
        for n in range(400):
            admit(live, n % 300, n)
        await store.persist(live)
        await store.snapshot(live)  # the first: from the journal's first record
        assert store.snapshots_compacted == 1
        create(live, 300, 400, T0 + 500)
        await store.persist(live)
        cut_before = store._snapshots.last_at
        task = asyncio.ensure_future(store.snapshot(live))
        for _ in range(3_000):  # the cut waits for the child's start (slow on a busy host)
            if store._snapshots.last_at != cut_before:
                break
            await asyncio.sleep(0.01)
        assert store._snapshots.last_at != cut_before
        changed_during = 0
        for n in range(400, 2_000):
            await asyncio.sleep(0)
            if task.done() and changed_during >= 50:
                break
            # while the child replays: new senders, sender updates and admits
            if n % 10 == 0:
                create(live, n, n + 1, T0 + 500)
            elif n % 10 == 1:
                quality = Quality.YELLOW if n % 20 == 1 else Quality.GREEN
                live.apply(ev.SenderUpdate(sender_id(n % 400), quality=quality), T0 + 600)
            else:
                admit(live, n % 400, n)
            await store.persist(live)
            changed_during += 1
        await task
        seq = store.last_snapshot_seq
        assert store.snapshots_compacted == 2
        for n in range(2_000, 2_100):  # after it: in the journal only
            admit(live, n % 400, n)
        await store.persist(live)
        store.close()  # no final snapshot: as after kill -9, the journal holds the rest
        return seq, changed_during

    seq, changed_during = asyncio.run(run())
    assert changed_during > 0
    assert list_snapshots(data)[-1][0] == seq
    recovered, store = reopen(data, live)
    try:
        report = store.report
        assert report is not None and report.snapshot_seq == seq
        assert report.records_replayed > 100
        assert recovered.snapshot() == live.snapshot()
    finally:
        store.close()


def test_a_failed_child_leaves_the_next_snapshot_to_the_image_then_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    live = AdmissionService(load_profile("meta-2025"), clock="request")

    async def run() -> None:
        store = EmbeddedStore.open(data, "write", snapshot_on_close=False, keep_snapshots=4)
        store.recover(live)
        create(live, 0, 50, T0)
        await store.persist(live)
        await store.snapshot(live)
        # the snapshot the child would start from is damaged
        path = list_snapshots(data)[-1][1]
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
        for n in range(100):
            admit(live, n % 50, n)
        await store.persist(live)
        with pytest.raises(StoreError, match="could not be made from the journal"):
            await store.snapshot(live)
        for n in range(100, 200):
            admit(live, n % 50, n)
        await store.persist(live)
        await store.snapshot(live)  # the state's image, on the event loop
        assert store.snapshots_compacted == 1 and store.snapshots_taken == 2
        for n in range(200, 300):
            admit(live, n % 50, n)
        await store.persist(live)
        await store.snapshot(live)  # from the journal again, after the image
        assert store.snapshots_compacted == 2 and store.snapshots_taken == 3
        store.close()

    asyncio.run(run())
    recovered, store = reopen(data, live)
    try:
        assert store.report is not None
        assert store.report.snapshot_seq == store.last_snapshot_seq > 0
        assert recovered.snapshot() == live.snapshot()
    finally:
        store.close()
