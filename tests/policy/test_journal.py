"""Journal replay and snapshots reproduce the state exactly."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.requests import KeyConflict
from tiergate.policy.service import AdmissionService

from .helpers import T0, TICKET_KEY, D, H, S, add_sender, admit, rcpt, req, send_unique, service

U = "491700000001"


def workload(svc: AdmissionService) -> list[str]:
    """A mixed history: admits, keys, windows, releases, upgrades, pauses, Red days."""
    add_sender(svc, "a", waba_id="W", display_phone_number="15550001")
    add_sender(svc, "b", waba_id="W", display_phone_number="15550002", tier="TIER_250")
    tickets = [r.ticket for r in send_unique(svc, "a", T0, 520)]
    send_unique(svc, "b", T0 + H, 260, first=1_000)
    svc.apply(
        ev.InboundMessage("a", U, at_unix_ms=T0 + 2 * H, entry_point=ev.EntryPoint.CTWA_AD), 0
    )
    admit(svc, "a", U, T0 + 2 * H + S, free_form=True, key="ff-1")
    svc.apply(ev.SendResult(ev.SendStatus.FAILED, ticket=tickets[3], meta_error_code=131026), 0)
    svc.apply(ev.SendResult(ev.SendStatus.FAILED, ticket=tickets[4], meta_error_code=131049), 0)
    svc.apply(ev.TemplateUpdate("promo", ev.TemplateStatus.PAUSED, at_unix_ms=T0 + 3 * H), 0)
    svc.apply(ev.OptOut(rcpt(9), sender_id="b", at_unix_ms=T0 + 3 * H), 0)
    svc.apply(ev.SenderUpdate("b", quality=ev.Quality.RED, at_unix_ms=T0 + 3 * H), 0)
    send_unique(svc, "a", T0 + D + 7 * H, 300, first=2_000)  # after the upgrade to 10 000
    svc.apply(
        ev.AccountUpdate(
            "W", "ACCOUNT_RESTRICTION", expires_at_unix_ms=T0 + 9 * D, at_unix_ms=T0 + 8 * D
        ),
        0,
    )
    replies = ("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", "RESTRICTED_ADD_PHONE_NUMBER_ACTION")
    svc.apply(
        ev.AccountUpdate(
            "W",
            "ACCOUNT_RESTRICTION",
            restriction_types=replies,
            restriction_expiries=(T0 + 10 * D, T0 + 30 * D),
            at_unix_ms=T0 + 8 * D,
        ),
        0,
    )
    return tickets


def reports(svc: AdmissionService, at: int) -> list[dict[str, object]]:
    out = []
    for sid in svc.senders():
        d = dataclasses.asdict(svc.sender_state(sid, at))
        # Non-admit decisions are statistics, not journaled state.
        d["decision_counts"] = {k: v for k, v in d["decision_counts"].items() if k == c.OK}
        out.append(d)
    return out


def settled(svc: AdmissionService, at: int) -> bytes:
    """The engine's bytes with every clock at ``at`` (rejections move clocks, not state)."""
    svc.engine.reclaim(at)
    return svc.engine.snapshot()


def test_replay_reproduces_state_and_decisions() -> None:
    live = service("meta-2024")
    workload(live)
    records = live.drain_journal()
    assert records and all(isinstance(r, bytes) for r in records)
    copy = service("meta-2024")
    for record in records:
        copy.replay(record)
    assert copy.drain_journal() == []  # replay writes nothing new
    at = T0 + 8 * D + H
    assert reports(copy, at) == reports(live, at)
    assert copy.sender_state("a", at).replies_restricted_until_unix_ms == T0 + 10 * D
    assert settled(copy, at) == settled(live, at)
    # Both decide the same from here on.
    probes = [req("a", rcpt(i), at + i * 20) for i in range(2_000, 2_400)]
    assert live.admit_many(probes, at) == copy.admit_many(probes, at)


ROW = struct.Struct("<qiQIQqH")


def admits(record: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The admits of an admit or batch record of today's version: (row, key, binding)
    each, the binding being kind, category, template length and template."""
    assert record[1] == 3
    if record[0] == 0x41:
        count, rows_at = 1, 2
    else:
        (count,) = struct.unpack_from("<I", record, 2)
        rows_at = 6
    keys_at = rows_at + count * ROW.size
    out = []
    for k in range(count):
        row = record[rows_at + k * ROW.size : rows_at + (k + 1) * ROW.size]
        klen = ROW.unpack(row)[-1]
        key = record[keys_at : keys_at + klen]
        keys_at += klen
        binding = b""
        if klen:
            (tlen,) = struct.unpack_from("<H", record, keys_at + 2)
            binding = record[keys_at : keys_at + 4 + tlen]
            keys_at += 4 + tlen
        out.append((row, key, binding))
    assert keys_at == len(record)
    return out


def per_item(records: list[bytes]) -> list[bytes]:
    """The journal as a tiergate before batch records wrote it: one admit record per admit."""
    out: list[bytes] = []
    for record in records:
        if record[0] != 0x42:
            out.append(record)
            continue
        out += [b"A\x03" + row + key + binding for row, key, binding in admits(record)]
    return out


def before_binding(records: list[bytes]) -> list[bytes]:
    """The journal as the release before keys were bound wrote it: admit records at
    version 1, batch records at 2, keys without what they are bound to."""
    out: list[bytes] = []
    for record in records:
        if record[0] not in (0x41, 0x42):
            out.append(record)
            continue
        parts = admits(record)
        rows = b"".join(row for row, _, _ in parts)
        keys = b"".join(key for _, key, _ in parts)
        if record[0] == 0x41:
            out.append(b"A\x01" + rows + keys)
        else:
            out.append(b"B\x02" + struct.pack("<I", len(parts)) + rows + keys)
    return out


def test_batch_records_replay_like_per_item_records() -> None:
    live = service("meta-2024")
    workload(live)
    records = live.drain_journal()
    batches = [r for r in records if r[0] == 0x42]
    assert batches and all(r[1] == 3 for r in batches)
    assert len(records) < 20 < len(per_item(records))  # ~1 100 admits in a few records
    assert any(r[0] == 0x41 for r in records)  # a single admit keeps its own record
    by_batch, by_item = service("meta-2024"), service("meta-2024")
    for record in records:
        by_batch.replay(record)
    for record in per_item(records):
        by_item.replay(record)
    assert by_batch.snapshot() == by_item.snapshot()
    at = T0 + 8 * D + H
    assert reports(by_item, at) == reports(live, at)
    assert settled(by_item, at) == settled(live, at)


def test_keys_in_a_batch_record_replay() -> None:
    live = service("meta-2024")
    add_sender(live)
    live.drain_journal()
    reqs = [req("s1", rcpt(i), T0 + i, key=("" if i % 3 else f"k-é{i}")) for i in range(30)]
    first = live.admit_many(reqs, T0)
    (record,) = live.drain_journal()
    assert record[0] == 0x42
    by_batch, by_item = service("meta-2024"), service("meta-2024")
    add_sender(by_batch)
    add_sender(by_item)
    by_batch.drain_journal(), by_item.drain_journal()
    by_batch.replay(record)
    for one in per_item([record]):
        by_item.replay(one)
    assert by_batch.snapshot() == by_item.snapshot()
    # Both remember every admitted key with its answer, as the live service does.
    again = [r for r in reqs if r.idempotency_key]
    remembered = [res for r, res in zip(reqs, first, strict=True) if r.idempotency_key]
    assert all(res.ticket for res in remembered)
    assert by_batch.admit_many(again, T0 + S) == remembered
    assert by_item.admit_many(again, T0 + S) == remembered
    assert live.admit_many(again, T0 + S) == remembered


def test_damaged_batch_records_are_refused() -> None:
    live = service("meta-2024")
    add_sender(live)
    live.drain_journal()
    live.admit_many([req("s1", rcpt(i), T0 + i, key="k" if i == 1 else "") for i in range(5)], T0)
    (record,) = live.drain_journal()
    copy = service("meta-2024")
    add_sender(copy)
    for bad in (
        record[:-1],  # a template byte short
        record[:-6],  # the key, without its binding
        record + b"x",
        record[:40],
        bytes((0x42, 4)) + record[2:],  # a version this tiergate does not know
    ):
        with pytest.raises(ValueError):
            copy.replay(bad)


def test_records_from_before_keys_were_bound_bind_the_recipient_only() -> None:
    """Replayed records of the previous release know a key's recipient, not its kind,
    category or template: a repeat to that recipient gets the first answer; a request
    to another recipient under the key is refused."""
    live = service("meta-2024")
    add_sender(live)
    live.drain_journal()
    reqs = [req("s1", rcpt(i), T0 + i, key=f"k{i}") for i in range(5)]
    first = [*live.admit_many(reqs, T0), live.admit(req("s1", rcpt(9), T0 + 9, key="one"), T0)]
    records = live.drain_journal()
    assert [r[:2] for r in records] == [b"B\x03", b"A\x03"]
    old = before_binding(records)
    assert [r[:2] for r in old] == [b"B\x02", b"A\x01"]
    copy = service("meta-2024")
    add_sender(copy)
    copy.drain_journal()
    for record in old:
        copy.replay(record)
    assert copy.admit(reqs[2], T0 + S) == first[2]  # the same ticket, signed the same
    other_kind = req("s1", rcpt(9), T0 + S, key="one", category=ev.Category.UTILITY)
    assert copy.admit(other_kind, T0 + S) == first[5]
    with pytest.raises(KeyConflict, match="another recipient"):
        copy.admit(req("s1", rcpt(7), T0 + S, key="k2"), T0 + S)
    # Today's records carry the binding: the same request under another category is refused.
    with pytest.raises(KeyConflict, match="another category"):
        live.admit(other_kind, T0 + S)


def test_snapshots_from_before_keys_were_bound_restore() -> None:
    """A snapshot of the previous release (version 1) holds each key's whole answer with
    a ticket without MAC: restored, the key is bound to its recipient and its ticket
    signed, so a repeat gets the ticket today's tiergate hands out."""
    live = service("meta-2024")
    add_sender(live)
    first = live.admit(req("s1", U, T0, key="k1"), T0)
    snap = live.snapshot()
    head = len(b"TGSNAP") + 6
    version, size = struct.unpack_from("<HI", snap, 6)
    assert version == 2
    state = json.loads(snap[head : head + size])
    old_idem = []
    for until, sid, key, ticket, counted, limit, used, _, _ in state["idem"]:
        fields = [1, 1, 0, ticket.rsplit(".", 1)[0], counted, limit, used, 0, "admitted"]
        old_idem.append([until, sid, key, fields])
    state["idem"] = old_idem
    body = json.dumps(state, separators=(",", ":")).encode()
    old = b"TGSNAP" + struct.pack("<HI", 1, len(body)) + body + snap[head + size :]
    restored = AdmissionService.from_snapshot(
        live.profile, old, clock="request", ticket_key=TICKET_KEY
    )
    assert restored.admit(req("s1", U, T0 + S, key="k1"), T0 + S) == first
    with pytest.raises(KeyConflict, match="another recipient"):
        restored.admit(req("s1", rcpt(5), T0 + S, key="k1"), T0 + S)


def test_a_key_is_bound_across_snapshot_and_journal_replay() -> None:
    live = service("meta-2024")
    add_sender(live)
    live.drain_journal()
    snap_first = live.admit(req("s1", U, T0, key="snap", template="promo"), T0)
    snap = live.snapshot()
    live.drain_journal()
    tail_first = live.admit_many([req("s1", rcpt(5), T0 + S, key="tail")] * 2, T0 + S)[0]
    restored = AdmissionService.from_snapshot(
        live.profile, snap, clock="request", ticket_key=TICKET_KEY
    )
    for record in live.drain_journal():
        restored.replay(record)
    at = T0 + 2 * S
    assert restored.admit(req("s1", U, at, key="snap", template="promo"), at) == snap_first
    assert restored.admit(req("s1", rcpt(5), at, key="tail"), at) == tail_first
    for other, what in (
        (req("s1", U, at, key="snap", template="autumn"), "template"),
        (req("s1", rcpt(5), at, key="tail", free_form=True), "kind"),
    ):
        for svc in (live, restored):
            with pytest.raises(KeyConflict, match=f"another {what}"):
                svc.admit(other, at)
    assert restored.snapshot() == live.snapshot()


def test_replay_is_exact_even_if_the_profile_changed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .helpers import custom

    live = service("meta-2024")
    add_sender(live, tier="TIER_250")
    send_unique(live, "s1", T0, 250)
    records = live.drain_journal()
    # The recovering server runs with a tighter headroom: admits replay as they happened.
    tighter = service(custom(tmp_path, "meta-2024", "[protection]\nheadroom_pct = 50\n"))
    for record in records:
        tighter.replay(record)
    assert tighter.sender_state("s1", T0 + H).used_24h == 250


def test_snapshot_round_trip_then_journal_tail() -> None:
    live = service("meta-2024")
    tickets = workload(live)
    live.drain_journal()
    snap = live.snapshot()
    assert snap.startswith(b"TGSNAP")
    admit(live, "a", rcpt(7_777), T0 + 9 * D + H, key="after")
    live.apply(ev.SendResult(ev.SendStatus.FAILED, ticket=tickets[10], meta_error_code=131026), 0)
    tail = live.drain_journal()
    restored = AdmissionService.from_snapshot(
        live.profile, snap, clock="request", ticket_key=TICKET_KEY
    )
    for record in tail:
        restored.replay(record)
    at = T0 + 9 * D + 2 * H
    assert reports(restored, at) == reports(live, at)
    assert settled(restored, at) == settled(live, at)
    assert admit(restored, "a", rcpt(7_777), at, key="after") == admit(
        live, "a", rcpt(7_777), at, key="after"
    )


def test_a_snapshot_image_is_the_state_when_taken_whatever_happens_after() -> None:
    """What the store's snapshot thread encodes: the image taken at the journal's cut,
    while the live service goes on (keys, releases, expiry, new senders)."""
    live = service("meta-2024")
    tickets = workload(live)
    for i in range(1_500):  # more keys than a JSON chunk holds
        admit(live, "a", rcpt(50_000 + i), T0 + 9 * D + i * 10, key=f"k{i}")
    live.drain_journal()
    expected = live.snapshot()
    room = live.snapshot_room()()
    encode = live.snapshot_image(room)
    admit(live, "a", rcpt(7_777), T0 + 9 * D + H, key="after")
    live.apply(ev.SendResult(ev.SendStatus.FAILED, ticket=tickets[10], meta_error_code=131026), 0)
    add_sender(live, "c", display_phone_number="15550003")
    live.admit_many([req("a", rcpt(9_000 + i), T0 + 12 * D + i) for i in range(50)], 0)
    assert b"".join(encode()) == expected
    assert b"".join(live.snapshot_image()()) == live.snapshot() != expected


def test_snapshots_hold_every_field_of_a_keys_first_answer() -> None:
    live = service("meta-2024")
    add_sender(live, "a")
    admit(live, "a", rcpt(1), T0, key="k1")
    restored = AdmissionService.from_snapshot(live.profile, live.snapshot(), clock="request")
    assert admit(restored, "a", rcpt(1), T0 + S, key="k1") == admit(
        live, "a", rcpt(1), T0 + S, key="k1"
    )


def test_restore_replaces_everything_and_rejects_garbage() -> None:
    a = service("meta-2024")
    add_sender(a, "x")
    snap = a.snapshot()
    b = service("meta-2024")
    add_sender(b, "y")
    b.restore(snap)
    assert b.senders() == ["x"]
    with pytest.raises(ValueError):
        b.restore(b"not a snapshot")
    with pytest.raises(ValueError):
        b.replay(b"\x01")
    with pytest.raises(ValueError):
        b.replay(bytes((0x41, 99)) + bytes(40))


def test_snapshot_under_another_profile_geometry_is_refused() -> None:
    a = service("meta-2024")
    add_sender(a)
    snap = a.snapshot()
    assert service("legacy-2x").profile.window_ms == a.profile.window_ms
    restored = AdmissionService.from_snapshot(
        service("legacy-2x").profile, snap, ticket_key=TICKET_KEY
    )
    assert restored.senders() == ["s1"]


def test_reload_profile_in_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .helpers import custom

    svc = service("meta-2024")
    add_sender(svc, tier="TIER_1K")
    send_unique(svc, "s1", T0, 10)
    svc.reload_profile(custom(tmp_path, "meta-2024", "[protection]\nheadroom_pct = 50\n"), T0)
    assert svc.sender_state("s1", T0 + S).effective_limit == 500
    assert svc.profile.name == "custom"
    with pytest.raises(ValueError, match="limit scope"):
        svc.reload_profile(service("meta-2025").profile, T0)
    windows = custom(tmp_path, "meta-2024", "[limit]\nwindow_hours = 12\n")
    with pytest.raises(ValueError, match="windows"):
        svc.reload_profile(windows, T0)
    assert svc.profile.name == "custom"
