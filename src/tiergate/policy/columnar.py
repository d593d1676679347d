"""A batch of admits decided as columns: AdmitColumns, AdmitBatch and ``admit_many``.

A request names its distinct senders and templates once and refers to them by
index per item; answers come back as per-item columns (bytes and arrays), so
no Python object is built per item. The work per distinct sender (status,
limits and flags by category, scope) and per distinct template (status,
pause) is done once per batch; the per-item loops run in
``tiergate.engine.columns.kernels`` (compiled with the compiled engine), and
the engine decides every row in one ``decide_batch`` call.

The decision is written once, as generators of :class:`Step`: each yields the
rows the counting state decides (a ``DecisionBatch``'s inputs) and resumes
once its outputs are filled. :func:`run` fills them with the engine's one
synchronous ``decide_batch`` call (the embedded store); :func:`run_async`
awaits a decider (the shared store, ``store/shared.py``: Redis). Steps made
for a store that others share (``remote``) first yield a :class:`KeyRead`: the
batch's keys this process holds no answer for, which the driver looks up in
the store and remembers before anything is checked or decided.

Every batch of more than one request is decided here; a lone request takes
the scalar path (``admission.admit_checked``) to the same answers, counts,
keys, journal record and crossings. Every idempotency key is checked against
what it is bound to before anything is decided. A batch in which a key
repeats, time-driven changes (upgrades, restriction ends, ...) fall due at an
item's time, or dry runs differ is decided in parts, as one by one would.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Awaitable, Callable, Generator, Sequence
from operator import add
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from tiergate.engine import NEVER, DecisionBatch
from tiergate.engine import records as rec
from tiergate.engine.columns import REASONS, kernels, refusal
from tiergate.engine.constants import (
    ADMIT,
    F_QUALITY_BLOCK,
    MARKETING_FREQUENCY,
    QUALITY_PROTECTION,
)

from .admission import BLOCKING, check_key_room, template_state
from .answers import META_ERROR, META_TEMPLATE_MISSING, AdmitResult
from .column_checks import AdmitColumns, ColumnsLike, Items, check_columns
from .column_results import ColumnsResult
from .keys import KeyMemory, KeyRead, conflict, unheld_keys
from .requests import MARKETING, AdmitLike, KeyRefused, KeyTooLong, check_all
from .state import FAR_FUTURE, LimitScope, PolicyState, Sender
from .state import REASONS as SENDER_REASONS
from .tiers import check_crossing, cross_gap, maintain, may_cross, prune_reach, recompute_due

if TYPE_CHECKING:
    from .service import AdmissionService

__all__ = [
    "AdmitColumns",
    "ColumnsLike",
    "ColumnsResult",
    "KeyRead",
    "Step",
    "admit_columns",
    "admit_columns_steps",
    "admit_requests",
    "admit_requests_steps",
    "decisions",
    "run",
    "run_async",
]

Remembered = rec.Entry

_ZEROS5 = (0, 0, 0, 0, 0)
_QUALITY_PROTECTION = bytes([QUALITY_PROTECTION])
#: A row the engine did not answer ADMIT (the scan runs in C, not per row in Python).
_NOT_ADMITTED = re.compile(b"[^" + re.escape(bytes([ADMIT])) + b"]")
#: The kernels' sender table states (``engine.columns``): step 2 per distinct sender.
_S_UNKNOWN, _S_KNOWN, _S_BLOCKED = 0, 1, 2
#: Zero-filled columns of each type, made by repetition (``_Q * n``).
_Q, _UQ, _I32, _UI32 = array("q", [0]), array("Q", [0]), array("i", [0]), array("I", [0])
#: The Meta error each decision reason avoids, one entry per reason slot.
_META_ERROR = array("i", [*META_ERROR, *[0] * (REASONS - len(META_ERROR))])

T = TypeVar("T")


class Step(NamedTuple):
    """Rows for the counting state to decide: ``batch``'s inputs filled, its outputs
    (decision, reason, retry_at, counted, used, prev_counted, slot) to fill in row
    order; ``rows`` gives each row's item of ``items``, whose answers go to ``out``."""

    batch: DecisionBatch
    rows: array[int]
    items: Items
    out: ColumnsResult


#: A decision written once (see the module docstring): yields its steps, returns ``T``.
Steps = Generator[Step | KeyRead, None, T]


def run(steps: Steps[T], decide_batch: Callable[[DecisionBatch], object]) -> T:
    """``steps`` decided by ``decide_batch`` (the engine's, one call per step)."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, Step):
                decide_batch(step.batch)
            step = next(steps)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_async(
    steps: Steps[T],
    decide_rows: Callable[[Step], Awaitable[object]],
    read_keys: Callable[[KeyRead], Awaitable[object]] | None = None,
) -> T:
    """``steps`` decided by awaiting ``decide_rows`` for each (the shared store's), and
    their keys read by awaiting ``read_keys`` (each :class:`KeyRead`). A key
    ``decide_rows`` refuses (:class:`KeyRefused` naming the step's item) goes into
    the steps, which name it as the request's item."""
    try:
        step = next(steps)
        while True:
            if isinstance(step, KeyRead):
                if read_keys is not None:
                    await read_keys(step)
                step = next(steps)
                continue
            try:
                await decide_rows(step)
            except KeyRefused as e:
                step = steps.throw(e)
                continue
            step = next(steps)
    except StopIteration as done:
        result: T = done.value
        return result


def admit_columns(service: AdmissionService, req: ColumnsLike, now_ms: int) -> ColumnsResult:
    """Validate every column, then decide the items in order.

    Raises :class:`InvalidArgument` naming the column and item, e.g.
    ``recipients[17]``; nothing is decided then.
    """
    st = service.state
    return run(admit_columns_steps(st, req, now_ms), st.engine.decide_batch)


def admit_columns_steps(
    st: PolicyState, req: ColumnsLike, now_ms: int, *, remote: bool = False
) -> Steps[ColumnsResult]:
    """:func:`admit_columns`, its rows decided by whoever drives it (:func:`run`);
    ``remote``: its keys read first (:class:`KeyRead`)."""
    r = check_columns(req)
    if r.n == 0:
        return ColumnsResult.empty(0)
    return (yield from decisions(st, r, now_ms, remote))


def admit_requests(st: PolicyState, reqs: Sequence[AdmitLike], now_ms: int) -> list[AdmitResult]:
    """Validate every request (an error names ``requests[i].<field>``), then decide
    them in order through the columns (``AdmissionService.admit_many``)."""
    return run(admit_requests_steps(st, reqs, now_ms), st.engine.decide_batch)


def admit_requests_steps(
    st: PolicyState, reqs: Sequence[AdmitLike], now_ms: int, *, remote: bool = False
) -> Steps[list[AdmitResult]]:
    """:func:`admit_requests`, its rows decided by whoever drives it (:func:`run`);
    ``remote``: its keys read first (:class:`KeyRead`)."""
    r = Items.from_checked(check_all(reqs))
    if r.n == 0:
        return []
    try:
        out = yield from decisions(st, r, now_ms, remote)
    except KeyRefused as e:
        raise e.at(f"requests[{e.item}].idempotency_key") from None
    senders, sidx, templates, tidx = r.senders, r.sender_index, r.templates, r.template_index
    return [
        out.result(i, senders[sidx[i]], templates[tidx[i] - 1] if tidx[i] else "")
        for i in range(r.n)
    ]


def decisions(st: PolicyState, r: Items, now_ms: int, remote: bool = False) -> Steps[ColumnsResult]:
    """Decide checked items in order: every idempotency key checked against what it
    is bound to before anything is decided (:class:`KeyConflict` names
    ``idempotency_keys[i]``; ``remote``: after the keys this process holds no
    answer for are read from the shared store, :class:`KeyRead`), then the items
    in one step — or in parts (:func:`_decide_in_parts`) when a key repeats inside
    the batch, time-driven changes fall due at an item's time, a raise an item's
    upgrade crossing makes may (:func:`_rise_delay`), or the items' dry runs differ."""
    if st.alias_table:
        raw = array("Q", r.rkeys)
        if kernels.alias_keys(r.rkeys, st.alias_table):
            r.raw_rkeys = raw
    objs = [st.senders.get(sid) for sid in r.senders]
    skip: bytes | bytearray = b""
    hits: list[tuple[int, Remembered]] = []
    repeated = False
    if r.keys and any(r.keys):
        if remote:
            asked, times = unheld_keys(st, r, objs, now_ms)
            if asked:
                yield KeyRead(r, asked, times)
        _check_keys(st, r, objs, now_ms)
        skip, hits, repeated = _repeated_keys(st, r, objs, now_ms)
    if st.due_dirty:
        recompute_due(st)
    high = max(now_ms, r.latest) if st.request_clock else now_ms
    rise = _rise_delay(st, r)
    if (
        repeated
        or high >= st.next_due
        or r.dry_runs is not None
        or (
            rise is not None
            and high - _earliest(r, now_ms) >= rise
            and may_cross(st, (s.scope for s in objs if s is not None), r.n)
        )
    ):
        return (yield from _decide_in_parts(st, r, now_ms, objs))
    out, high, unknown = yield from _decide_rows(st, r, now_ms, objs, skip, hits)
    _time_moves(st, r.n - unknown, high)
    return out


def _check_keys(st: PolicyState, r: Items, objs: list[Sender | None], now_ms: int) -> None:
    """The keys' caps, before anything is decided: each key's length
    (:class:`KeyTooLong` naming ``idempotency_keys[i]``), and room for the new ones
    among the live keys (:class:`CapReached`); a batch of dry runs makes none."""
    keys = r.keys
    cap = st.caps.key_length
    if max(map(len, keys)) > cap:
        i = next(i for i, key in enumerate(keys) if len(key) > cap)
        st.capped["max_idempotency_key_length"] += 1
        raise KeyTooLong(f"idempotency_keys[{i}]", i, cap)
    if r.dry and r.dry_runs is None:
        return
    if len(st.keys.order) + len(keys) > st.caps.idempotency_keys:
        # near the cap: count the keys that would be new, each repeat inside the
        # batch again (never fewer than there are)
        now = max(now_ms, r.latest) if st.request_clock else now_ms
        sidx = r.sender_index
        new = 0
        for i, key in enumerate(keys):
            sender = objs[sidx[i]]
            if key and sender is not None:
                first = sender.idem.get(key)
                new += first is None or first[rec.E_UNTIL] <= now
        check_key_room(st, new, now)


def _time_moves(st: PolicyState, known: int, high: int) -> None:
    """After a batch with ``known`` items of known senders, the latest at ``high``."""
    if known:
        if high > st.latest_ms:
            st.latest_ms = high
        order = st.keys.order
        if order and order[0][0] <= high:
            st.forget_expired(high)


def _decide_in_parts(
    st: PolicyState, r: Items, now_ms: int, objs: list[Sender | None]
) -> Steps[ColumnsResult]:
    """Decide the items as one by one would, each part in one step: a part
    ends before an item whose key's first request is in the part (that item then
    sees its outcome), before an item at whose time time-driven changes fall due
    (they are applied first), and where the dry run changes."""
    out = ColumnsResult.empty(r.n)
    high = now_ms
    known = 0
    start = 0
    while start < r.n:
        end = _part_end(st, r, objs, start, high)
        part = r.part(start, end)
        skip: bytes | bytearray = b""
        hits: list[tuple[int, Remembered]] = []
        if part.keys and any(part.keys):
            skip, hits, _ = _repeated_keys(st, part, objs, high)
        try:
            got, high, unknown = yield from _decide_rows(st, part, high, objs, skip, hits)
        except KeyRefused as e:  # (refused by the shared store) named in the batch
            moved = e.at(f"idempotency_keys[{start + e.item}]")
            moved.item = start + e.item
            raise moved from None
        out.put(start, got)
        known += part.n - unknown
        start = end
    _time_moves(st, known, high)
    return out


def _rise_delay(st: PolicyState, r: Items) -> int | None:
    """Under the request clock and a profile that applies upgrades, the least time
    from an item that meets an upgrade threshold to the raise (the profile's delay:
    0 raises it for the items after it at the same time); else None: a raise never
    falls due inside the batch. (The shared store records a crossing its reply to a
    part shows before the next part.)"""
    p = st.profile
    if st.request_clock and len(r.at) and p.upgrade_mode == "apply":
        return p.upgrade_delay_ms
    return None


def _earliest(r: Items, now_ms: int) -> int:
    """No later than the earliest time an item of ``r`` (with times) is decided at:
    an item without one takes a latest time, no earlier than ``now_ms``."""
    lo = min(r.at)
    if lo > 0:
        return lo
    return min([now_ms, *(a for a in r.at if a > 0)])


def _part_end(st: PolicyState, r: Items, objs: list[Sender | None], start: int, high: int) -> int:
    """Where the part from item ``start`` ends (see :func:`_decide_in_parts`), for a
    batch whose items before ``start`` brought the latest time to ``high``;
    applies the time-driven changes due at item ``start``'s time.

    Under the request clock a profile that applies upgrades may raise a tier whose
    threshold an item of the part meets: due the profile's delay after that item's
    time (the items after it see it), never before the scope's time in tier, so the
    part also ends before an item at or after ``rise``, the earliest such time, and
    that item sees the raise."""
    at = r.at if st.request_clock and len(r.at) else None
    keys, sidx = r.keys, r.sender_index
    dry = r.dry_at(start)
    gathered: set[tuple[str, str]] = set()
    delay, top, in_tier = _rise_delay(st, r), st.profile.ladder[-1], st.profile.min_in_tier_ms
    rise = FAR_FUTURE
    #: Per scope: the new counts it needs for its threshold, less the part's items.
    gap: dict[int, int] = {}
    for i in range(start, r.n):
        if r.dry_at(i) != dry:
            return i
        sender = objs[sidx[i]]
        if sender is None:
            continue
        now = at[i] if at is not None and at[i] > 0 else high
        if now > high:
            high = now
        if delay is not None:
            if now >= rise:
                return i
            sc = sender.scope
            if sc.crossed_at == NEVER and sc.tier != top:
                left = gap.get(sc.index)
                left = gap[sc.index] = (cross_gap(st, sc) if left is None else left) - 1
                if left <= 0 and now + delay < rise:  # this item may meet the threshold
                    rise = min(rise, max(now + delay, sc.tier_since + in_tier))
        if now >= st.next_due:
            if i > start:
                return i
            maintain(st, now)
            gap.clear()
        key = keys[i] if keys else ""
        if not key or (KeyMemory.lookup(sender, key, now) is not None and sender.status < BLOCKING):
            continue  # no key, or a repeat its key answers
        if not dry:
            if (sender.id, key) in gathered:
                return i
            gathered.add((sender.id, key))
    return r.n


def _repeated_keys(
    st: PolicyState, r: Items, objs: list[Sender | None], now_ms: int
) -> tuple[bytearray, list[tuple[int, Remembered]], bool]:
    """Every key checked before anything is decided (:class:`KeyConflict` for one bound
    to another request); then the items whose key already has an answer:
    (skip, hits, repeated), ``repeated`` when a key repeats inside the batch (it
    is then decided in parts).

    Each key is looked up in item order, at the item's time, before anything new
    is remembered. A sender BANNED or DISABLED by now gets no remembered answer:
    its items are decided (step 2 rejects them).
    """
    idems = [s.idem if s is not None else None for s in objs]
    at = r.at if st.request_clock else None
    check, raw = r.rkeys, r.raw_rkeys
    while True:
        bad, skip, hits, repeated = kernels.repeated_keys(
            r.key_columns(idems, check), r.dry, at, now_ms
        )
        if bad < 0 or raw is None or raw[bad] == check[bad]:
            break
        # A key first used before its recipient's alias was learned is bound to
        # the recipient as written (aliases.bound_either): check that one.
        if check is r.rkeys:
            check = array("Q", r.rkeys)
        check[bad] = raw[bad]
    if bad >= 0:
        raise conflict(r, idems, at, now_ms, bad)
    if hits and any(s is not None and s.status >= BLOCKING for s in objs):
        kept = []
        for hit in hits:
            sender = objs[r.sender_index[hit[0]]]
            if sender is not None and sender.status >= BLOCKING:
                skip[hit[0]] = 0
            else:
                kept.append(hit)
        hits = kept
    return skip, hits, repeated


def _sender_tables(objs: list[Sender | None]) -> tuple[Any, ...]:
    """Per distinct sender, once: status, scope, limits and flags by category (the
    kernels' sender table, see ``engine.columns``); then the scopes' slots."""
    state: list[int] = []
    slot_of: list[int] = []
    scope_of: list[int] = []
    index_of: list[int] = []
    limits: list[int] = []
    flags: list[int] = []
    restricted: list[int] = []
    qblock: list[int] = []
    slots: dict[int, int] = {}
    scopes: list[LimitScope] = []
    for sender in objs:
        if sender is None:
            state.append(_S_UNKNOWN)
            slot_of.append(0)
            scope_of.append(0)
            index_of.append(0)
            limits += _ZEROS5
            flags += _ZEROS5
            restricted.append(0)
            qblock.append(0)
            continue
        scope = sender.scope
        slot = slots.get(scope.index)
        if slot is None:
            slot = slots[scope.index] = len(scopes)
            scopes.append(scope)
        state.append(_S_BLOCKED if sender.status >= BLOCKING else _S_KNOWN)
        slot_of.append(slot)
        scope_of.append(scope.index)
        index_of.append(sender.engine_index)
        limits += sender.limits
        flags += sender.flags
        restricted.append(sender.restricted_retry_at)
        qblock.append(1 if sender.flags[MARKETING] & F_QUALITY_BLOCK else 0)
    return (
        bytearray(state),
        array("i", slot_of),
        array("i", scope_of),
        array("i", index_of),
        array("q", limits),
        array("I", flags),
        array("q", restricted),
        bytearray(qblock),
        scopes,
    )


def _decide_rows(
    st: PolicyState,
    r: Items,
    now_ms: int,
    objs: list[Sender | None],
    skip: bytes | bytearray,
    hits: list[tuple[int, Remembered]],
) -> Steps[tuple[ColumnsResult, int, int]]:
    """Decide items none of whose keys repeats (``skip``/``hits``: those a key already
    answers) with no time-driven change due: (answers, the latest item time,
    items of unknown senders)."""
    n = r.n
    s_state, s_slot, s_scope, s_index, s_limits, s_flags, s_restricted, s_qblock, scopes = (
        _sender_tables(objs)
    )
    last_now = array("q", [sc.last_now for sc in scopes])
    # Per distinct template, once: step 3's reading of it.
    m = len(r.templates)
    t_state = bytearray(m + 1)
    t_paused = _Q * (m + 1)
    for t, tpl in enumerate(r.templates, 1):
        t_state[t], t_paused[t] = template_state(st, tpl)

    out = ColumnsResult.empty(n)
    counts = _Q * (REASONS * len(objs))
    batch = DecisionBatch()
    # Input columns sized for every item; cut to the rows the engine decides.
    batch.now, batch.scope, batch.number = _Q * n, _I32 * n, _I32 * n
    batch.recipient, batch.flags = _UQ * n, _UI32 * n
    batch.limit, batch.ticket = _Q * n, _UQ * n
    rows = _I32 * n
    row_back_off = _Q * n
    high, unknown, nrows = kernels.prepare(
        n,
        r.sender_index,
        r.kinds,
        r.categories,
        r.template_index,
        r.at,
        r.rkeys,
        now_ms,
        st.request_clock,
        r.dry,
        st.ticket,
        s_state,
        s_slot,
        s_scope,
        s_index,
        s_limits,
        s_flags,
        last_now,
        t_state,
        t_paused,
        _META_ERROR,
        META_TEMPLATE_MISSING,
        st.profile.undeliverable_table,
        st.profile.undeliverable_lengths,
        st.marketing_back_off,
        skip,
        batch,
        rows,
        row_back_off,
        out.decisions,
        out.reasons,
        out.retry_at_unix_ms,
        out.limit,
        out.meta_error_code,
        counts,
    )
    for slot, scope in enumerate(scopes):
        scope.last_now = last_now[slot]
    st.unknown_sender_count += unknown
    if nrows:
        if nrows < n:
            for col in (batch.now, batch.scope, batch.number, batch.recipient, batch.flags):
                del col[nrows:]
            for col in (batch.limit, batch.ticket, rows, row_back_off):
                del col[nrows:]
        yield Step(batch, rows, r, out)
        _finish(st, r, objs, scopes, batch, rows, row_back_off, s_restricted, s_qblock, out, counts)
    for i, first in hits:  # the first answers: admits
        out.admitted(i, first)
    for s, sender in enumerate(objs):
        if sender is not None:
            base = s * REASONS
            row = counts[base : base + SENDER_REASONS]
            if any(row):
                sender.counts[:] = map(add, sender.counts, row)
    return out, high, unknown


def _finish(
    st: PolicyState,
    r: Items,
    objs: list[Sender | None],
    scopes: list[LimitScope],
    batch: DecisionBatch,
    rows: array[int],
    row_back_off: array[int],
    s_restricted: array[int],
    s_qblock: bytearray,
    out: ColumnsResult,
    counts: array[int],
) -> None:
    """The engine's answers to ``out``: tickets, journal record, keys, crossings."""
    journal = st.journal if st.journal_on and not st.replaying else None
    counted_rows = _I32 * len(rows)
    last_tid, n_counted = kernels.finish(
        batch,
        rows,
        row_back_off,
        r.sender_index,
        s_restricted,
        s_qblock,
        _META_ERROR,
        out.decisions,
        out.reasons,
        out.counted,
        out.retry_at_unix_ms,
        out.limit,
        out.used,
        out.meta_error_code,
        out.tickets,
        r.keys,
        r.kinds,
        r.categories,
        r.template_index,
        r.templates,
        st.k0,
        st.k1,
        journal,
        counts,
        counted_rows,
    )
    if st.marketing_back_off:
        _find_back_offs(batch, rows, out)
    if st.profile.shadow_reasons:
        _find_shadows(batch, rows, row_back_off, r.sender_index, s_restricted, s_qblock, out)
    if r.keys:
        _remember_keys(st, r, objs, batch, rows, out)
    if last_tid:
        st.ticket = last_tid
    if n_counted:
        del counted_rows[n_counted:]
        _check_crossings(st, scopes, batch, counted_rows)


def _find_back_offs(batch: DecisionBatch, rows: array[int], out: ColumnsResult) -> None:
    """Rows the engine refused for QUALITY_PROTECTION that ``finish`` answered with
    MARKETING_FREQUENCY: Meta's 131049 back-off held them (as ``_refusal`` does)."""
    engine_reasons = batch.reason.tobytes()
    j = engine_reasons.find(_QUALITY_PROTECTION)
    while j >= 0:
        i = rows[j]
        if out.reasons[i] == MARKETING_FREQUENCY:
            out.back_offs.add(i)
        j = engine_reasons.find(_QUALITY_PROTECTION, j + 1)


def _find_shadows(
    batch: DecisionBatch,
    rows: array[int],
    row_back_off: array[int],
    sender_index: Sequence[int],
    s_restricted: array[int],
    s_qblock: bytearray,
    out: ColumnsResult,
) -> None:
    """Rows the engine admitted because the rule that refused them is shadowed: their
    would-be answer (read as ``finish`` reads a refusal) to ``out.shadows``."""
    b_rsn, b_retry = batch.reason, batch.retry_at
    for m in _NOT_ADMITTED.finditer(batch.decision.tobytes()):  # refused or shadowed rows
        j = m.start()
        i = rows[j]
        if out.decisions[i] == ADMIT:
            s = sender_index[i]
            out.shadows[i] = refusal(
                batch.decision[j],
                b_rsn[j],
                b_retry[j],
                row_back_off[j],
                s_qblock[s],
                s_restricted[s],
            )


def _remember_keys(
    st: PolicyState,
    r: Items,
    objs: list[Sender | None],
    batch: DecisionBatch,
    rows: array[int],
    out: ColumnsResult,
) -> None:
    """Admitted items with a key answer their repeats from now on (as a lone admit's do)."""
    kernels.remember_keys(
        r.key_columns([s.idem if s is not None else None for s in objs]),
        rows,
        batch.now,
        st.profile.idempotency_ms,
        st.keys.order,
        out.tickets,
        out.counted,
        out.limit,
        out.used,
    )


def _check_crossings(
    st: PolicyState, scopes: list[LimitScope], batch: DecisionBatch, counted_rows: array[int]
) -> None:
    """Date upgrade-threshold crossings: to the row that reached the threshold; note
    the recipients counted in scopes on Meta's scaling paths."""
    if any(sc.on_path for sc in scopes):
        on_path = {sc.index: sc.reach for sc in scopes if sc.on_path}
        b_scope, b_now, b_rkey = batch.scope, batch.now, batch.recipient
        for j in counted_rows:
            reach = on_path.get(b_scope[j])
            if reach is not None:
                reach[b_rkey[j]] = b_now[j]
        for sc in scopes:
            if sc.on_path and len(sc.reach) > 4 * st.profile.path_users:
                prune_reach(st, sc, max(sc.last_now, 0))
    top = st.profile.ladder[-1]
    open_ = {sc.index: sc for sc in scopes if sc.crossed_at == NEVER and sc.tier != top}
    if not open_:
        return
    b_scope, b_now = batch.scope, batch.now
    touched: dict[int, list[int]] = {}
    for j in counted_rows:
        idx = b_scope[j]
        if idx in open_:
            touched.setdefault(idx, []).append(j)
    for idx, js in touched.items():
        sc = open_[idx]
        if sc.crossed_at == NEVER and sc.tier != top:
            check_crossing(st, sc, b_now[js[-1]], (b_now, batch.prev_counted), js)
