"""Persistence: replaying journal records, and the snapshot's image, encoding and restore.

Replay re-applies one record exactly (recovery): admits through the engine
(forced: the answer was given; only state follows), events through
``feedback.apply_event``, state records by loading them. A snapshot carries
the whole state, versioned (``SNAPSHOT_VERSION``); snapshots and journals of
earlier versions restore.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tiergate.engine import records as rec
from tiergate.engine.constants import F_FORCE, OK
from tiergate.engine.tickets import encode_in_use, ticket_fields

from . import aliases
from . import events as ev
from .feedback import apply_event
from .journal import JOURNAL_VERSION, TAG_ADMIT, TAG_BATCH, TAG_JSON
from .seam import CountingStore
from .state import LimitScope, PolicyState, Sender, Template, Unreconciled, sender_dict
from .tiers import derive, note_reach, number_params, recompute_due, rederive

__all__ = [
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "event_from",
    "replay",
    "restore",
    "snapshot_encoder",
]

SNAPSHOT_MAGIC = b"TGSNAP"
#: 2: idempotency entries carry what their key is bound to (1: they do not).
SNAPSHOT_VERSION = 2

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.InboundMessage,
        ev.SendResult,
        ev.OptOut,
        ev.SenderUpdate,
        ev.TemplateUpdate,
        ev.QualityUpdate,
        ev.CapabilityUpdate,
        ev.AccountUpdate,
        ev.TemplateQualityUpdate,
    )
}


#: Items of a long list JSON-encoded at a time in a snapshot (see ``_json_parts``).
_JSON_CHUNK = 1024


class _Rows:
    """A long JSON list of a snapshot, made from ``items`` a chunk at a time by ``row``
    (None: the item is left out), so that only one chunk's rows are alive at once."""

    __slots__ = ("items", "row")

    def __init__(self, items: Sequence[Any], row: Callable[[Any], Any]) -> None:
        self.items = items
        self.row = row

    def chunks(self) -> Iterator[list[Any]]:
        row, items = self.row, self.items
        for i in range(0, len(items), _JSON_CHUNK):
            rows = [r for r in map(row, items[i : i + _JSON_CHUNK]) if r is not None]
            if rows:
                yield rows


def _json_parts(fields: Sequence[tuple[str, Any]]) -> list[bytes]:
    """``json.dumps(dict(fields), separators=(",", ":")).encode()``, the same bytes in
    parts, a ``_Rows`` value being the list of its rows. A thread encoding a snapshot
    so gives the event loop's thread the GIL back between chunks rather than holding
    it for a whole list in one C call, and the rows of a chunk are freed before the
    next is made: made all at once, millions of them would start the cyclic GC's
    full collections, each holding the GIL for as long as it takes."""
    out: list[bytes] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    sep = "{"
    for name, value in fields:
        head = f"{sep}{dumps(name)}:"
        sep = ","
        if isinstance(value, _Rows):
            out.append(f"{head}[".encode())
            comma = ""
            for rows in value.chunks():
                out.append((comma + dumps(rows)[1:-1]).encode())
                comma = ","
            out.append(b"]")
        else:
            out.append((head + dumps(value)).encode())
    out.append(b"}")
    return out


def replay(st: PolicyState, record: bytes) -> None:
    """Re-apply one journal record exactly (recovery): no checks, no new records."""
    if len(record) < 2:
        raise ValueError("journal record too short")
    tag, version = record[0], record[1]
    if version > JOURNAL_VERSION:
        raise ValueError(f"journal record version {version} is newer than this tiergate")
    st.replaying = True
    try:
        if tag == TAG_ADMIT:
            replay_admit(st, record)
        elif tag == TAG_BATCH:
            replay_batch(st, record)
        elif tag == TAG_JSON:
            _replay_json(st, json.loads(record[2:]))
        else:
            raise ValueError(f"unknown journal record tag {tag:#x}")
    finally:
        st.replaying = False
    if tag != TAG_ADMIT and tag != TAG_BATCH:
        st.due_dirty = True


def event_from(payload: dict[str, Any]) -> ev.Event:
    """The event of a JSON event record (``feedback.event_record``)."""
    cls = _EVENT_TYPES[payload["type"]]
    fields = dict(payload["f"])
    for name in ("restriction_types", "restriction_expiries"):
        if name in fields:
            fields[name] = tuple(fields[name])
    event: ev.Event = cls(**fields)
    return event


def _replay_json(st: PolicyState, payload: dict[str, Any]) -> None:
    """A JSON record: an event, a profile switch or time-driven state changes."""
    if payload["k"] == "event":
        apply_event(st, event_from(payload), int(payload["now"]))
    elif payload["k"] == "profile":
        # The switch as it happened, for the profile this process runs.
        rederive(st, int(payload["now"]))
    elif payload["k"] == "state":
        for d in payload["scopes"]:
            st.scopes[int(d["index"])].load(d)
        for d in payload["senders"]:
            s = st.senders[str(d["id"])]
            s.load(d)
            st.engine.set_number_params(s.engine_index, *number_params(st, s))
        for d in payload["senders"]:
            s = st.senders[str(d["id"])]
            for member in s.scope.senders:
                derive(st, member, s.scope.last_now)
        for d in payload["scopes"]:
            for member in st.scopes[int(d["index"])].senders:
                derive(st, member, max(member.scope.last_now, 0))
    elif payload["k"] == "unreconciled":
        st.unreconciled.append(unreconciled_row(payload["row"]))
    elif payload["k"] == "reconciled":
        st.reconciled(str(payload["o"]), int(payload["scope"]), int(payload["seq"]))
    else:
        raise ValueError(f"unknown journal record kind {payload['k']!r}")


def unreconciled_row(row: Sequence[Any]) -> Unreconciled:
    """An admit awaiting the shared store, from its journal or snapshot row."""
    origin, seq, now, number, rkey, flags, key = row
    return Unreconciled(
        str(origin), int(seq), int(now), int(number), int(rkey), int(flags), str(key)
    )


def replay_admit(st: PolicyState, record: bytes) -> None:
    rows = [rec.ROW.unpack_from(record, 2)]
    replay_rows(st, record, rows, 2 + rec.ROW.size)


def replay_batch(st: PolicyState, record: bytes) -> None:
    _, _, count = rec.BATCH_HEAD.unpack_from(record)
    start = rec.BATCH_HEAD.size
    keys_at = start + count * rec.ROW.size
    if len(record) < keys_at:
        raise ValueError(f"batch journal record of {count} rows is cut short")
    rows = list(rec.ROW.iter_unpack(memoryview(record)[start:keys_at]))
    replay_rows(st, record, rows, keys_at)


def replay_rows(st: PolicyState, record: bytes, rows: list[tuple[int, ...]], keys_at: int) -> None:
    """Replay the rows of an admit or batch record whose keys start at ``keys_at``."""
    bound_keys = record[1] >= rec.BINDING_VERSION
    binding = rec.BINDING
    end = len(record)
    for row in rows:
        klen = row[6]
        if not klen:
            replay_row(st, row, "", 0, 0, None)
            continue
        if keys_at + klen > end:
            raise ValueError("admit journal record: key bytes do not match the rows")
        key = record[keys_at : keys_at + klen].decode()
        keys_at += klen
        if not bound_keys:  # before keys were bound: the recipient only
            replay_row(st, row, key, 0, 0, None)
            continue
        if keys_at + binding.size > end:
            raise ValueError("admit journal record: key bytes do not match the rows")
        kind, cat, tlen = binding.unpack_from(record, keys_at)
        keys_at += binding.size
        tpl = record[keys_at : keys_at + tlen].decode()
        keys_at += tlen
        replay_row(st, row, key, kind, cat, tpl)
    if keys_at != end:
        raise ValueError("admit journal record: key bytes do not match the rows")


def replay_row(
    st: PolicyState, row: tuple[int, ...], key: str, kind: int, cat: int, tpl: str | None
) -> None:
    """One admit as it happened (forced: the answer was given; only state follows):
    ``row`` as ``records.ROW`` holds it, then its key and what the key is bound to."""
    now, number, rkey, flags, tid, limit, _ = row
    s = st.by_index[number]
    scope = s.scope
    if now > scope.last_now:
        scope.last_now = now
    _, _, _, counted, used, prev, slot = st.engine.decide(
        now, scope.index, number, rkey, flags | F_FORCE, limit
    )
    st.ticket = max(st.ticket, tid)
    s.counts[OK] += 1
    if counted and scope.on_path:
        note_reach(st, scope, rkey, now)
    if key:
        ticket = encode_in_use(st.k0, st.k1, tid, number, rkey, prev, slot)
        entry = (ticket, counted == 1, limit, used, now + st.profile.idempotency_ms)
        st.keys.remember(s, key, (*entry, rec.bind(rkey, kind, cat), tpl))


def engine_from_blob(st: PolicyState, blob: bytes) -> CountingStore:
    engine = type(st.engine).restore(blob)
    p = st.profile
    geometry = (
        engine.bucket_ms,
        engine.window_ms,
        engine.long_bucket_ms,
        engine.long_window_ms,
    )
    if geometry != (p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms):
        raise ValueError(
            "snapshot engine windows differ from profile "
            f"{p.name!r}: {geometry} (bucket, window, long bucket, long window in ms)"
        )
    return engine


def _sender_row(item: tuple[tuple[Any, ...], list[int]]) -> dict[str, Any]:
    return sender_dict(*item)


def snapshot_encoder(st: PolicyState, engine: CountingStore) -> Callable[[], list[bytes]]:
    fields: list[tuple[str, Any]] = [
        ("profile", st.profile.name),
        ("ticket", st.ticket),
        ("scopes", [sc.to_dict() for sc in st.scopes]),
        ("portfolios", {k: sc.index for k, sc in st.portfolios.items()}),
        ("senders", _Rows([(s.image(), s.counts[:]) for s in st.by_index], _sender_row)),
        ("templates", [t.to_dict() for t in st.templates.values()]),
        ("reach", [[sc.index, list(sc.reach.items())] for sc in st.scopes if sc.reach]),
        ("unreconciled", [list(u) for u in st.unreconciled]),
    ]
    idem_order = list(st.keys.order)
    idem = {sid: s.idem.copy() for sid, s in st.senders.items()}
    seen = list(st.seen_order)
    link_order = list(st.link_order)
    links = st.links.copy()
    eco = list(st.marketing_back_off.items())
    pair = list(st.pair_failures.items())
    unknown = st.unknown_sender_count
    alias_pairs = sorted(st.aliases.items())

    def idem_row(item: tuple[int, str, str]) -> list[Any] | None:
        until, sid, key = item
        entry = idem.get(sid, {}).get(key)
        if entry is None or entry[4] != until:
            return None
        # expiry, sender, key; ticket, counted, limit, used; bound, template
        ticket, counted, limit, used, _, bound, tpl = entry
        return [until, sid, key, ticket, counted, limit, used, bound, tpl]

    def link_row(item: tuple[int, str]) -> list[Any] | None:
        until, mid = item
        link = links.get(mid)
        return [until, mid, link[0]] if link is not None and link[1] == until else None

    def encode() -> list[bytes]:
        body = _json_parts(
            [
                *fields,
                ("idem", _Rows(idem_order, idem_row)),
                ("seen", _Rows(seen, list)),
                ("links", _Rows(link_order, link_row)),
                ("eco", [[sc, rk, until] for (sc, rk), until in eco]),
                ("pair", [[num, rk, *run] for (num, rk), run in pair]),
                ("unknown", unknown),
                ("aliases", [list(pair) for pair in alias_pairs]),
            ]
        )
        size = sum(map(len, body))
        head = SNAPSHOT_MAGIC + struct.pack("<HI", SNAPSHOT_VERSION, size)
        return [head, *body, engine.snapshot()]

    return encode


def restore(st: PolicyState, data: bytes) -> None:
    """Replace the whole state with a snapshot's."""
    head = len(SNAPSHOT_MAGIC) + 6
    if len(data) < head or not data.startswith(SNAPSHOT_MAGIC):
        raise ValueError("not a tiergate snapshot")
    version, size = struct.unpack_from("<HI", data, len(SNAPSHOT_MAGIC))
    if version > SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {version} is newer than this tiergate")
    state = json.loads(data[head : head + size])
    engine = engine_from_blob(st, data[head + size :])
    st.engine = engine
    st.clear()
    st.ticket = int(state["ticket"])
    _restore_objects(st, state)
    for entry in state["idem"]:
        restore_key(st, version, entry)
    for until, key in state["seen"]:
        st.seen[key] = int(until)
        st.seen_order.append((int(until), key))
    for until, mid, ticket in state.get("links", ()):
        st.links[str(mid)] = (str(ticket), int(until))
        st.link_order.append((int(until), str(mid)))
    while len(st.links) > st.profile.message_links:
        until, mid = st.link_order.popleft()
        del st.links[mid]
    st.marketing_back_off = {(int(sc), int(rk)): int(until) for sc, rk, until in state["eco"]}
    st.pair_failures = {
        (int(num), int(rk)): (int(x), int(start), int(until))
        for num, rk, x, start, until in state.get("pair", ())
    }
    st.unknown_sender_count = int(state["unknown"])
    aliases.restore(st, state.get("aliases", ()))
    st.unreconciled = [unreconciled_row(row) for row in state.get("unreconciled", ())]
    for s in st.by_index:
        derive(st, s, max(s.scope.last_now, 0))
        st.engine.set_number_params(s.engine_index, *number_params(st, s))
    for sc in st.scopes:
        st.engine.set_scope_params(
            sc.index, st.profile.frequency_cap, st.profile.frequency_window_ms
        )
    recompute_due(st)


def _restore_objects(st: PolicyState, state: dict[str, Any]) -> None:
    """A snapshot's limit scopes, portfolios, senders and templates."""
    for d in state["scopes"]:
        sc = LimitScope(int(d["index"]), str(d["key"]), str(d["tier"]), 0)
        sc.load(d)
        if not st.profile.knows_tier(sc.tier):
            raise ValueError(
                f"snapshot holds tier {sc.tier!r}, which profile {st.profile.name!r} "
                "does not define"
            )
        st.scopes.append(sc)
    for key, idx in state["portfolios"].items():
        st.portfolios[key] = st.scopes[int(idx)]
    for d in state["senders"]:
        scope = st.scopes[int(d["scope"])]
        s = Sender(str(d["id"]), int(d["number"]), scope, str(d["portfolio_id"]))
        s.load(d)
        scope.senders.append(s)
        st.senders[s.id] = s
        st.by_index.append(s)
        if s.display:
            st.by_display[s.display] = s
    for d in state["templates"]:
        t = Template.from_dict(d)
        st.add_template(t)
        if t.name:
            st.template_names[t.name] = t
    for idx, reach in state.get("reach", ()):
        st.scopes[int(idx)].reach = {int(rkey): int(t) for rkey, t in reach}


def restore_key(st: PolicyState, version: int, entry: list[Any]) -> None:
    """One idempotency entry of a snapshot."""
    until, sid, key = int(entry[0]), str(entry[1]), str(entry[2])
    if version >= 2:
        ticket, counted, limit, used, bound, tpl = entry[3:]
    else:
        # Before keys were bound: the answer's fields; the recipient is in the ticket,
        # which is signed here (it was written before tickets had a MAC).
        ticket, counted, limit, used = entry[3][3:7]
        found = ticket_fields(str(ticket))
        if found is None:
            raise ValueError(f"snapshot: idempotency key {key!r} holds no ticket")
        tid, number, rkey, prev, slot = found
        ticket = encode_in_use(st.k0, st.k1, tid, number, rkey, prev, slot)
        bound, tpl = rkey, None
    answer = (str(ticket), bool(counted), int(limit), int(used), until)
    st.keys.remember(st.senders[sid], key, (*answer, int(bound), None if tpl is None else str(tpl)))
