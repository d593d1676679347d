"""Replay equivalence with the real policy layer: state after recovery equals state before.

A deterministic mix of decisions and feedback runs against an ``AdmissionService``
whose journal is committed to an ``EmbeddedStore`` after every call, as the server
does. The process then "crashes" (no close, no final snapshot) and a new service
recovers from the data directory; every sender's report, a sample of recipient
decisions (dry runs) and every idempotency key must match the original.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from pathlib import Path

import pytest
from store_double import forbid_fork

from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.profile import load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService
from tiergate.store import EmbeddedStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PORTFOLIO_SENDERS = ("106540352242922", "106540352242923")
SOLO_SENDER = "106540352242924"
SENDERS = (*PORTFOLIO_SENDERS, SOLO_SENDER)
TEMPLATES = ("spring_sale", "order_update")
MARKETING, UTILITY = 1, 2
OK = 1  # decision reason of an admit
TEMPLATE, FREE_FORM = 1, 2


#: The data dir's ticket key, as the server reads it before recovery.
TICKET_KEY = bytes(range(16))


def new_service() -> AdmissionService:
    return AdmissionService(load_profile("meta-2025"), clock="request", ticket_key=TICKET_KEY)


def recipient(n: int) -> str:
    return f"1555{n:07d}"


class Workload:
    """A reproducible mix of everything that journals state."""

    def __init__(self, svc: AdmissionService, store: EmbeddedStore, seed: int) -> None:
        self.svc = svc
        self.store = store
        self.rng = random.Random(seed)
        self.now = T0
        self.firsts: dict[tuple[str, str], tuple[AdmitRequest, AdmitResult]] = {}
        self.recipients: set[str] = set()

    def commit(self) -> None:
        self.store.commit_sync(self.svc.drain_journal())

    def setup(self) -> None:
        for i, sid in enumerate(SENDERS):
            portfolio = "portfolio-a" if sid in PORTFOLIO_SENDERS else "portfolio-b"
            self.svc.apply(
                ev.SenderUpdate(
                    sender_id=sid,
                    portfolio_id=portfolio,
                    display_phone_number=f"+1555010000{i}",
                    tier="TIER_250" if sid == SOLO_SENDER else "TIER_2K",
                    quality=ev.Quality.GREEN,
                    status=ev.SenderStatus.CONNECTED,
                    throughput_mps=80,
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        for j, name in enumerate(TEMPLATES):
            self.svc.apply(
                ev.TemplateUpdate(
                    template_id=f"12131234567890{j}",
                    template_name=name,
                    status=ev.TemplateStatus.APPROVED,
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        self.commit()

    def admit_request(self, n: int) -> AdmitRequest:
        rng = self.rng
        self.now += rng.choice((1, 7, 20, 250, 4000))
        kind = FREE_FORM if rng.random() < 0.1 else TEMPLATE
        return AdmitRequest(
            sender_id=rng.choice(SENDERS),
            recipient=recipient(rng.randrange(400)),
            kind=kind,
            category=rng.choice((MARKETING, UTILITY)) if kind == TEMPLATE else 0,
            template_id=rng.choice(TEMPLATES) if kind == TEMPLATE else "",
            idempotency_key=f"key-{n}" if rng.random() < 0.8 else "",
            at_unix_ms=self.now,
        )

    def remember(self, req: AdmitRequest, res: AdmitResult) -> None:
        self.recipients.add(req.recipient)
        if req.idempotency_key and res.ticket:
            self.firsts.setdefault((req.sender_id, req.idempotency_key), (req, res))

    def step(self, n: int) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55:
            req = self.admit_request(n)
            self.remember(req, self.svc.admit(req, self.now))
        elif roll < 0.70:
            reqs = [self.admit_request(n * 100 + k) for k in range(rng.randrange(2, 12))]
            for req, res in zip(reqs, self.svc.admit_many(reqs, self.now), strict=True):
                self.remember(req, res)
        elif roll < 0.78 and self.firsts:  # a gateway retry of an earlier request
            req, _ = self.firsts[rng.choice(sorted(self.firsts))]
            self.svc.admit(req, self.now)
        elif roll < 0.86:
            self.svc.apply(
                ev.InboundMessage(
                    sender_id=rng.choice(SENDERS),
                    recipient=recipient(rng.randrange(400)),
                    at_unix_ms=self.now,
                    entry_point=rng.choice((ev.EntryPoint.ORGANIC, ev.EntryPoint.CTWA_AD)),
                ),
                self.now,
            )
        elif roll < 0.91 and self.firsts:
            _, first = self.firsts[rng.choice(sorted(self.firsts))]
            self.svc.apply(
                ev.SendResult(
                    status=ev.SendStatus.FAILED,
                    ticket=first.ticket,
                    meta_error_code=131026,
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        elif roll < 0.94:
            self.svc.apply(
                ev.OptOut(
                    recipient=recipient(rng.randrange(400)),
                    sender_id=rng.choice(SENDERS),
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        elif roll < 0.97:
            self.svc.apply(
                ev.SenderUpdate(
                    sender_id=rng.choice(SENDERS),
                    quality=rng.choice((ev.Quality.GREEN, ev.Quality.YELLOW, ev.Quality.RED)),
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        else:
            self.svc.apply(
                ev.TemplateUpdate(
                    template_id=f"12131234567890{rng.randrange(len(TEMPLATES))}",
                    status=rng.choice((ev.TemplateStatus.PAUSED, ev.TemplateStatus.UNPAUSED)),
                    at_unix_ms=self.now,
                ),
                self.now,
            )
        self.commit()


def observe(svc: AdmissionService, work: Workload) -> dict[str, object]:
    """Everything a gateway can see, at one instant, without changing state."""
    at = work.now + 1
    reports = {sid: svc.sender_state(sid, at, at) for sid in SENDERS}
    probes = []
    for r in sorted(work.recipients)[::3]:
        for sid in SENDERS:
            for cat in (MARKETING, UTILITY):
                req = AdmitRequest(
                    sender_id=sid,
                    recipient=r,
                    kind=TEMPLATE,
                    category=cat,
                    template_id=TEMPLATES[0],
                    at_unix_ms=at,
                    dry_run=True,
                )
                probes.append(svc.admit(req, at))
    firsts = {key: svc.admit(req, at) for key, (req, _) in sorted(work.firsts.items())}
    return {"reports": reports, "probes": probes, "firsts": firsts}


def report_diff(after: object, before: object) -> dict[str, object]:
    """Fields of each sender's report that differ: {sender.field: (after, before)}."""
    assert isinstance(after, dict) and isinstance(before, dict)
    diff: dict[str, object] = {}
    for sid in sorted(before):
        a, b = dataclasses.asdict(after[sid]), dataclasses.asdict(before[sid])
        diff.update({f"{sid}.{k}": (a[k], b[k]) for k in b if a.get(k) != b[k]})
    return diff


def crash_and_recover(data: Path, store: EmbeddedStore) -> tuple[AdmissionService, object]:
    os.close(store._lock_fd)  # the process dies: no close(), no final snapshot
    store2 = EmbeddedStore.open(data, "write")
    svc2 = new_service()
    report = store2.recover(svc2)
    store2.close()
    return svc2, report


@pytest.mark.parametrize("snapshot_at", [None, 150, 299])
def test_recovered_state_equals_state_before_the_crash(
    tmp_path: Path, snapshot_at: int | None
) -> None:
    store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
    svc = new_service()
    store.recover(svc)
    work = Workload(svc, store, seed=7)
    work.setup()
    for n in range(300):
        work.step(n)
        if n == snapshot_at:
            store.snapshot_sync(svc)
    assert len(work.firsts) > 50
    svc2, report = crash_and_recover(tmp_path, store)
    if snapshot_at is not None:
        assert report.snapshot_path is not None  # type: ignore[attr-defined]
    # observe the recovered service first: observing changes nothing, but compare like for like
    after = observe(svc2, work)
    before = observe(svc, work)
    diff = report_diff(after["reports"], before["reports"])
    # Decision counts by reason are statistics: admits are journalled with their state
    # change and come back exactly; other decisions change no state and are not
    # journalled, so a crash loses those counted since the last snapshot.
    for sid in SENDERS:
        counts = diff.pop(f"{sid}.decision_counts", None)
        if counts is not None:
            got, want = counts  # type: ignore[misc]
            assert got.get(OK) == want.get(OK)
            assert all(got.get(reason, 0) <= n for reason, n in want.items())
    assert diff == {}
    assert after["probes"] == before["probes"]
    assert after["firsts"] == before["firsts"]
    for key, (_, first) in work.firsts.items():
        again = after["firsts"][key]  # type: ignore[index]
        assert (again.decision, again.ticket) == (first.decision, first.ticket)
    # Tickets handed out before the crash still name their slots after it: the
    # same FAILED releases the same slots in the recovered service.
    at = work.now + 2
    released = 0
    for _, (_, first) in sorted(work.firsts.items()):
        failed = ev.SendResult(
            status=ev.SendStatus.FAILED, ticket=first.ticket, meta_error_code=131026, at_unix_ms=at
        )
        got, want = svc2.apply(failed, at), svc.apply(failed, at)
        assert (got.applied, got.detail) == (want.applied, want.detail)
        released += "slot released" in want.detail
    assert released > 0
    for sid in SENDERS:
        assert svc2.sender_state(sid, at, at).used_24h == svc.sender_state(sid, at, at).used_24h


def test_recovery_twice_in_a_row_is_stable(tmp_path: Path) -> None:
    store = EmbeddedStore.open(tmp_path, "write", snapshot_on_close=False)
    svc = new_service()
    store.recover(svc)
    work = Workload(svc, store, seed=11)
    work.setup()
    for n in range(120):
        work.step(n)
    svc2, _ = crash_and_recover(tmp_path, store)
    store3 = EmbeddedStore.open(tmp_path, "write")
    svc3 = new_service()
    store3.recover(svc3)
    store3.snapshot_sync(svc3)  # a snapshot of recovered state
    store3.close()
    store4 = EmbeddedStore.open(tmp_path, "write")
    svc4 = new_service()
    report = store4.recover(svc4)
    store4.close()
    assert report.records_replayed == 0
    assert observe(svc4, work) == observe(svc2, work)


def test_background_snapshots_under_load_then_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's path: persist after every call, periodic snapshots in the background
    (made from the journal by the compaction child, a new interpreter: no fork) while
    decisions go on, then a crash."""
    forbid_fork(monkeypatch)

    async def main() -> tuple[AdmissionService, Workload, EmbeddedStore]:
        store = EmbeddedStore.open(
            tmp_path,
            "fsync-interval",
            snapshot_every_records=60,
            snapshot_min_seconds=0,
            snapshot_on_close=False,
        )
        svc = new_service()
        store.recover(svc)
        work = Workload(svc, store, seed=23)
        work.commit = lambda: None  # type: ignore[method-assign]
        work.setup()
        await store.persist(svc)

        async def gateway(lane: int) -> None:
            for n in range(lane, 400, 4):
                work.step(n)
                await store.persist(svc)

        await asyncio.gather(*(gateway(lane) for lane in range(4)))
        for _ in range(300):  # let the last background snapshot finish
            if not store._snapshots.running:
                break
            await asyncio.sleep(0.01)
        return svc, work, store

    svc, work, store = asyncio.run(main())
    assert store.snapshots_taken >= 1
    svc2, report = crash_and_recover(tmp_path, store)
    assert report.snapshot_path is not None  # type: ignore[attr-defined]
    after, before = observe(svc2, work), observe(svc, work)
    diff = report_diff(after["reports"], before["reports"])
    diff = {k: v for k, v in diff.items() if not k.endswith(".decision_counts")}
    assert diff == {}
    assert after["probes"] == before["probes"]
    assert after["firsts"] == before["firsts"]
