"""AdmitColumns: a batch of admits as columns, with the answers AdmitBatch gives.

A request names its distinct senders and templates once and refers to them by
index per item; answers come back as per-item columns (bytes and arrays), so
no Python object is built per item. The work per distinct sender (status,
limits and flags by category, scope) and per distinct template (status,
pause) is done once per batch; the per-item loops run in
``tiergate.engine.columns.kernels`` (compiled with the compiled engine), and
the engine decides every row in one ``decide_batch`` call.

Answers, errors, journal records, tickets, decision counts, scope clocks and
upgrade crossings are exactly those of :meth:`AdmissionService.admit_many` for
the same requests in the same order: every idempotency key is checked against
what it is bound to before anything is decided (:class:`KeyConflict` names
``idempotency_keys[i]``). A batch that needs the general path — an idempotency
key repeated inside the batch, or a time at which time-driven changes
(upgrades, restriction ends, ...) fall due — is decided by ``admit_many``
itself and its results turned into columns.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tiergate.engine import NEVER, DecisionBatch
from tiergate.engine import records as rec
from tiergate.engine.columns import (
    BAD_CATEGORY,
    BAD_KIND,
    BAD_SENDER_INDEX,
    BAD_TEMPLATE_INDEX,
    NO_CATEGORY,
    REASONS,
    kernels,
)
from tiergate.engine.constants import (
    ADMIT,
    F_QUALITY_BLOCK,
    MARKETING_FREQUENCY,
    OK,
    QUALITY_PROTECTION,
    recipient_key,
)

from .admission import BLOCKING, decide, template_state
from .answers import META_ERROR, META_TEMPLATE_MISSING, AdmitResult
from .keys import differs
from .requests import (
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_TEMPLATE_LEN,
    AdmitRequest,
    InvalidArgument,
    KeyConflict,
)
from .state import REASONS as SENDER_REASONS
from .state import LimitScope, PolicyState, Sender
from .tiers import check_crossing, recompute_due

if TYPE_CHECKING:
    from .service import AdmissionService

Remembered = rec.Entry

#: The Meta error each decision reason avoids, one entry per reason slot.
_ZEROS5 = (0, 0, 0, 0, 0)
_QUALITY_PROTECTION = bytes([QUALITY_PROTECTION])
_META_ERROR = array("i", [*META_ERROR, *[0] * (REASONS - len(META_ERROR))])

__all__ = ["AdmitColumns", "ColumnsLike", "ColumnsResult", "admit_columns"]


class ColumnsLike(Protocol):
    """The attributes of the proto ``AdmitColumnsRequest`` (a protobuf message fits)."""

    @property
    def senders(self) -> Sequence[str]: ...
    @property
    def sender_index(self) -> Sequence[int]: ...
    @property
    def recipients(self) -> Sequence[str]: ...
    @property
    def kinds(self) -> bytes: ...
    @property
    def categories(self) -> bytes: ...
    @property
    def templates(self) -> Sequence[str]: ...
    @property
    def template_index(self) -> Sequence[int]: ...
    @property
    def idempotency_keys(self) -> Sequence[str]: ...
    @property
    def at_unix_ms(self) -> Sequence[int]: ...
    @property
    def dry_run(self) -> bool: ...


@dataclass(slots=True)
class AdmitColumns:
    """A plain columnar request (tests, simulations, library use)."""

    senders: Sequence[str]
    sender_index: Sequence[int]
    recipients: Sequence[str]
    kinds: bytes
    categories: bytes
    templates: Sequence[str] = ()
    template_index: Sequence[int] = ()
    idempotency_keys: Sequence[str] = ()
    at_unix_ms: Sequence[int] = ()
    dry_run: bool = False

    @classmethod
    def from_requests(cls, reqs: Sequence[AdmitRequest], dry_run: bool = False) -> AdmitColumns:
        """The columns of ``reqs`` (each request's own ``dry_run`` is not kept)."""
        senders: dict[str, int] = {}
        templates: dict[str, int] = {}
        sidx = [senders.setdefault(r.sender_id, len(senders)) for r in reqs]
        tidx = [
            templates.setdefault(r.template_id, len(templates) + 1) if r.template_id else 0
            for r in reqs
        ]
        keys = [r.idempotency_key for r in reqs]
        at = [r.at_unix_ms for r in reqs]
        return cls(
            senders=list(senders),
            sender_index=sidx,
            recipients=[r.recipient for r in reqs],
            kinds=bytes(r.kind for r in reqs),
            categories=bytes(r.category for r in reqs),
            templates=list(templates),
            template_index=tidx,
            idempotency_keys=keys if any(keys) else [],
            at_unix_ms=at if any(at) else [],
            dry_run=dry_run,
        )


@dataclass(slots=True)
class ColumnsResult:
    """Per-item answers in request order (the fields of ``AdmitResult`` but ``detail``)."""

    decisions: bytearray
    reasons: bytearray
    counted: bytearray
    retry_at_unix_ms: array[int]
    limit: array[int]
    used: array[int]
    meta_error_code: array[int]
    tickets: list[str] = field(default_factory=list)
    #: Items held by a 131049 back-off: MARKETING_FREQUENCY because Meta declined
    #: marketing to the recipient, not because of the frequency cap.
    back_offs: set[int] = field(default_factory=set)
    #: Every item's detail, when ``admit_many`` decided the batch (else None).
    details: list[str] | None = None

    def __len__(self) -> int:
        return len(self.decisions)

    def answer_columns(
        self,
    ) -> tuple[
        bytearray, bytearray, bytearray, array[int], array[int], array[int], array[int], list[str]
    ]:
        """(decisions, reasons, counted, retry_at, limit, used, meta_error_code, tickets),
        in the order the response writers take them."""
        return (
            self.decisions,
            self.reasons,
            self.counted,
            self.retry_at_unix_ms,
            self.limit,
            self.used,
            self.meta_error_code,
            self.tickets,
        )

    @classmethod
    def empty(cls, n: int) -> ColumnsResult:
        return cls(
            bytearray(n),
            bytearray(n),
            bytearray(n),
            array("q", bytes(8 * n)),
            array("q", bytes(8 * n)),
            array("q", bytes(8 * n)),
            array("i", bytes(4 * n)),
            [""] * n,
        )

    def item(self, i: int) -> tuple[int, int, int, str, bool, int, int, int]:
        """Item ``i`` as (decision, reason, retry_at, ticket, counted, limit, used, meta code)."""
        return (
            self.decisions[i],
            self.reasons[i],
            self.retry_at_unix_ms[i],
            self.tickets[i],
            self.counted[i] == 1,
            self.limit[i],
            self.used[i],
            self.meta_error_code[i],
        )


def _column(typecode: str, name: str, values: Any) -> array[int]:
    if isinstance(values, array) and values.typecode == typecode:
        return values
    try:
        # A protobuf repeated field copies to a list fastest by slicing.
        return array(typecode, values[:])
    except (OverflowError, TypeError):
        raise InvalidArgument(name, f"{name}: must be integers in range") from None


def _byte_column(name: str, values: Any) -> bytes:
    if isinstance(values, bytes):
        return values
    try:
        return bytes(values)
    except (TypeError, ValueError):
        raise InvalidArgument(name, f"{name}: must be one byte per item") from None


def _check_strings(name: str, values: Sequence[Any], limit: int, required: bool) -> None:
    for k, v in enumerate(values):
        if type(v) is not str or len(v) > limit or (required and not v):
            field = f"{name}[{k}]"
            if not isinstance(v, str):
                raise InvalidArgument(field, f"{field}: must be a string")
            if not v:
                raise InvalidArgument(field, f"{field}: is required")
            raise InvalidArgument(field, f"{field}: longer than {limit} characters")


@dataclass(slots=True)
class _Request:
    n: int
    senders: list[str]
    sender_index: array[int]
    recipients: Sequence[str]
    rkeys: array[int]
    kinds: bytes
    categories: bytes  # SERVICE (4) where a free-form item has none
    raw_categories: bytes
    templates: list[str]
    template_index: array[int]
    keys: list[str]
    at: array[int]
    dry: bool
    latest: int  # the latest item time (0: none)


def _validate(req: ColumnsLike) -> _Request:
    """Every column checked before anything is decided; the error names column and item."""
    # The wire reader hands over recipients already turned into keys (all valid).
    known_keys: array[int] | None = getattr(req, "recipient_keys", None)
    recipients: Sequence[str] = req.recipients if known_keys is not None else list(req.recipients)
    n = len(recipients)
    senders = list(req.senders)
    templates = list(req.templates)
    sidx = _column("I", "sender_index", req.sender_index)
    kinds = _byte_column("kinds", req.kinds)
    cats = _byte_column("categories", req.categories)
    tidx_in = req.template_index
    tidx = _column("I", "template_index", tidx_in) if len(tidx_in) else array("I", bytes(4 * n))
    keys = list(req.idempotency_keys)
    at = _column("q", "at_unix_ms", req.at_unix_ms)
    for name, size in (
        ("sender_index", len(sidx)),
        ("kinds", len(kinds)),
        ("categories", len(cats)),
        ("template_index", len(tidx)),
    ):
        if size != n:
            raise InvalidArgument(name, f"{name}: has {size} items, recipients has {n}")
    for name, size in (("idempotency_keys", len(keys)), ("at_unix_ms", len(at))):
        if size not in (0, n):
            raise InvalidArgument(
                name, f"{name}: has {size} items; it must be empty or have one per item ({n})"
            )
    _check_strings("senders", senders, MAX_ID_LEN, True)
    _check_strings("templates", templates, MAX_TEMPLATE_LEN, True)
    bad, problem = kernels.check_items(n, sidx, len(senders), kinds, cats, tidx, len(templates))
    if bad >= 0:
        raise _item_error(bad, problem, sidx, kinds, cats, tidx, len(senders), len(templates))
    if known_keys is not None:
        assert len(known_keys) == n
        rkeys, bad = known_keys, -1
    else:
        rkeys = array("Q", bytes(8 * n))
        assert isinstance(recipients, list)
        bad = kernels.encode_recipients(recipients, rkeys)
    if bad >= 0:
        field = f"recipients[{bad}]"
        if type(recipients[bad]) is not str:
            raise InvalidArgument(field, f"{field}: must be a string")
        try:
            recipient_key(recipients[bad])
        except ValueError as exc:
            raise InvalidArgument(field, f"{field}: {exc}") from None
        raise InvalidArgument(field, f"{field}: not an E.164 number")
    if keys:
        _check_strings("idempotency_keys", keys, MAX_KEY_LEN, False)
    lo, hi = kernels.time_bounds(at)
    if lo < 0:
        bad = next(i for i, t in enumerate(at) if t < 0)
        raise InvalidArgument(f"at_unix_ms[{bad}]", f"at_unix_ms[{bad}]: must be >= 0")
    return _Request(
        n=n,
        senders=senders,
        sender_index=sidx,
        recipients=recipients,
        rkeys=rkeys,
        kinds=kinds,
        categories=cats.replace(b"\x00", b"\x04") if b"\x00" in cats else cats,
        raw_categories=cats,
        templates=templates,
        template_index=tidx,
        keys=keys,
        at=at,
        dry=bool(req.dry_run),
        latest=hi,
    )


def _item_error(
    i: int,
    problem: int,
    sidx: array[int],
    kinds: bytes,
    cats: bytes,
    tidx: array[int],
    n_senders: int,
    n_templates: int,
) -> InvalidArgument:
    if problem == BAD_SENDER_INDEX:
        field = f"sender_index[{i}]"
        msg = f"{sidx[i]} is out of range (senders has {n_senders})"
    elif problem == BAD_KIND:
        field = f"kinds[{i}]"
        msg = f"must be TEMPLATE or FREE_FORM, got {kinds[i]}"
    elif problem == BAD_CATEGORY:
        field = f"categories[{i}]"
        msg = f"unknown value {cats[i]}"
    elif problem == NO_CATEGORY:
        field = f"categories[{i}]"
        msg = "is required for TEMPLATE messages"
    elif problem == BAD_TEMPLATE_INDEX:
        field = f"template_index[{i}]"
        msg = f"{tidx[i]} is out of range (templates has {n_templates}; 0 is none)"
    else:
        field = f"template_index[{i}]"
        msg = "a template is required for TEMPLATE messages"
    return InvalidArgument(field, f"{field}: {msg}")


def admit_columns(service: AdmissionService, req: ColumnsLike, now_ms: int) -> ColumnsResult:
    """Validate every column, then decide the items in order (as ``admit_many`` would).

    Raises :class:`InvalidArgument` naming the column and item, e.g.
    ``recipients[17]``; nothing is decided then.
    """
    r = _validate(req)
    if r.n == 0:
        return ColumnsResult.empty(0)
    st = service.state
    objs = [st.senders.get(sid) for sid in r.senders]
    skip: bytes | bytearray = b""
    hits: list[tuple[int, Remembered]] = []
    repeated = False
    if r.keys and any(r.keys):
        skip, hits, repeated = _repeated_keys(st, r, objs, now_ms)
    if st.due_dirty:
        recompute_due(st)
    request_clock = st.request_clock
    high = max(now_ms, r.latest) if request_clock else now_ms
    if repeated or high >= st.next_due:
        return _general(st, r, now_ms)
    return _fast(st, r, now_ms, objs, skip, hits)


def _repeated_keys(
    st: PolicyState, r: _Request, objs: list[Sender | None], now_ms: int
) -> tuple[bytearray, list[tuple[int, Remembered]], bool]:
    """Every key checked before anything is decided (:class:`KeyConflict` for one bound
    to another request); then the items whose key already has an answer, as
    ``admit_many`` finds them: (skip, hits, repeated), ``repeated`` when a key
    repeats inside the batch (``admit_many`` then decides in parts, so the general
    path takes the batch).

    ``admit_many`` looks each key up in item order, at the item's time, before
    anything new is remembered, so the same walk here finds the same answers. A
    sender BANNED or DISABLED by now gets no remembered answer: its items are
    decided (step 2 rejects them).
    """
    idems = [s.idem if s is not None else None for s in objs]
    at = r.at if st.request_clock else None
    bad, skip, hits, repeated = kernels.repeated_keys(
        r.keys,
        r.sender_index,
        r.senders,
        idems,
        r.rkeys,
        r.kinds,
        r.categories,
        r.template_index,
        r.templates,
        r.dry,
        at,
        now_ms,
    )
    if bad >= 0:
        raise _conflict(r, idems, at, now_ms, bad)
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


def _conflict(
    r: _Request,
    idems: list[dict[str, Remembered] | None],
    at: Sequence[int] | None,
    now_ms: int,
    i: int,
) -> KeyConflict:
    """The error for item ``i``, whose key the kernels found bound to another request."""
    key = r.keys[i]
    t = r.template_index[i]
    tpl = r.templates[t - 1] if t else ""
    bound = rec.bind(r.rkeys[i], r.kinds[i], r.categories[i])
    idem = idems[r.sender_index[i]]
    first = idem.get(key) if idem is not None else None
    now = high = now_ms  # item i's time, as the kernels have it
    for k in range(i + 1):
        if idems[r.sender_index[k]] is not None:
            now = at[k] if at and at[k] > 0 else high
            high = max(high, now)
    field = f"idempotency_keys[{i}]"
    if first is not None and first[rec.E_UNTIL] > now and not rec.bound_to(first, bound, tpl):
        return KeyConflict(field, i, differs(first, bound, tpl))
    sid = r.senders[r.sender_index[i]]
    for j in range(i):
        if r.keys[j] == key and r.senders[r.sender_index[j]] == sid:
            tj = r.template_index[j]
            earlier = rec.bind(r.rkeys[j], r.kinds[j], r.categories[j])
            other = ("", False, 0, 0, 0, earlier, r.templates[tj - 1] if tj else "")
            return KeyConflict(field, i, differs(other, bound, tpl))
    raise AssertionError(f"item {i}: no conflict to name")


def _general(st: PolicyState, r: _Request, now_ms: int) -> ColumnsResult:
    """Through ``admit_many``: keys repeated in the batch, time-driven changes falling due."""
    senders, templates, recipients = r.senders, r.templates, r.recipients
    sidx, tidx, kinds, cats = r.sender_index, r.template_index, r.kinds, r.raw_categories
    keys, at, dry = r.keys, r.at, r.dry
    reqs = [
        AdmitRequest(
            sender_id=senders[sidx[i]],
            recipient=recipients[i],
            kind=kinds[i],
            category=cats[i],
            template_id=templates[tidx[i] - 1] if tidx[i] else "",
            idempotency_key=keys[i] if keys else "",
            at_unix_ms=at[i] if at else 0,
            dry_run=dry,
        )
        for i in range(r.n)
    ]
    try:
        return _from_results(decide(st, reqs, now_ms))
    except KeyConflict as e:  # found above already; named as the columns name it
        raise e.at(f"idempotency_keys[{e.item}]") from None


def _from_results(results: Sequence[AdmitResult]) -> ColumnsResult:
    out = ColumnsResult.empty(len(results))
    for i, res in enumerate(results):
        out.decisions[i] = res.decision
        out.reasons[i] = res.reason
        out.counted[i] = 1 if res.counted else 0
        out.retry_at_unix_ms[i] = res.retry_at_unix_ms
        out.limit[i] = res.limit
        out.used[i] = res.used
        out.meta_error_code[i] = res.meta_error_code
        out.tickets[i] = res.ticket
    out.details = [res.detail for res in results]
    return out


def _fast(
    st: PolicyState,
    r: _Request,
    now_ms: int,
    objs: list[Sender | None],
    skip: bytes | bytearray,
    hits: list[tuple[int, Remembered]],
) -> ColumnsResult:
    n = r.n
    z4, z8 = bytes(4 * n), bytes(8 * n)
    k = len(r.senders)
    # Per distinct sender, once: status, scope, limits and flags by category.
    state: list[int] = []
    slot_of: list[int] = []
    scope_of: list[int] = []
    number_of: list[int] = []
    limits: list[int] = []
    flags: list[int] = []
    restricted: list[int] = []
    qblock: list[int] = []
    slots: dict[int, int] = {}
    scopes: list[LimitScope] = []
    for sender in objs:
        if sender is None:
            state.append(0)
            slot_of.append(0)
            scope_of.append(0)
            number_of.append(0)
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
        state.append(2 if sender.status >= BLOCKING else 1)
        slot_of.append(slot)
        scope_of.append(scope.index)
        number_of.append(sender.engine_index)
        limits += sender.limits
        flags += sender.flags
        restricted.append(sender.restricted_until)
        qblock.append(1 if sender.flags[1] & F_QUALITY_BLOCK else 0)
    s_state = bytearray(state)
    s_slot = array("i", slot_of)
    s_scope = array("i", scope_of)
    s_number = array("i", number_of)
    s_limits = array("q", limits)
    s_flags = array("I", flags)
    s_restricted = array("q", restricted)
    s_qblock = bytearray(qblock)
    last_now = array("q", [sc.last_now for sc in scopes])
    # Per distinct template, once: unknown (and rejected), disabled, paused until.
    m = len(r.templates)
    t_state = bytearray(m + 1)
    t_paused = array("q", bytes(8 * (m + 1)))
    for t, tpl in enumerate(r.templates, 1):
        t_state[t], t_paused[t] = template_state(st, tpl)

    out = ColumnsResult.empty(n)
    counts = array("q", bytes(8 * REASONS * k))
    batch = DecisionBatch()
    # Input columns sized for every item; cut to the rows the engine decides.
    batch.now, batch.scope, batch.number = array("q", z8), array("i", z4), array("i", z4)
    batch.recipient, batch.flags = array("Q", z8), array("I", z4)
    batch.limit, batch.ticket = array("q", z8), array("Q", z8)
    rows = array("i", z4)
    row_eco = array("q", z8)
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
        s_number,
        s_limits,
        s_flags,
        last_now,
        t_state,
        t_paused,
        _META_ERROR,
        META_TEMPLATE_MISSING,
        st.marketing_back_off,
        skip,
        batch,
        rows,
        row_eco,
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
            for col in (batch.limit, batch.ticket, rows, row_eco):
                del col[nrows:]
        st.engine.decide_batch(batch)
        journal = st.journal if st.journal_on and not st.replaying else None
        counted_rows = array("i", bytes(4 * nrows))
        last_tid, n_counted = kernels.finish(
            batch,
            rows,
            row_eco,
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
        if r.keys:
            _remember_keys(st, r, objs, batch, rows, out)
        if last_tid:
            st.ticket = last_tid
        if n_counted:
            del counted_rows[n_counted:]
            _check_crossings(st, scopes, batch, counted_rows)
    for i, first in hits:  # the first answers: admits
        out.decisions[i] = ADMIT
        out.reasons[i] = OK
        out.retry_at_unix_ms[i] = 0
        out.tickets[i] = first[0]
        out.counted[i] = 1 if first[1] else 0
        out.limit[i] = first[2]
        out.used[i] = first[3]
        out.meta_error_code[i] = 0
    for s, sender in enumerate(objs):
        if sender is None:
            continue
        base = s * REASONS
        sc = sender.counts
        for reason in range(SENDER_REASONS):
            c = counts[base + reason]
            if c:
                sc[reason] += c
    if unknown < n:  # not only unknown senders: time moves
        if high > st.latest_ms:
            st.latest_ms = high
        if st.keys.order and st.keys.order[0][0] <= high:
            st.forget_expired(high)
    return out


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


def _remember_keys(
    st: PolicyState,
    r: _Request,
    objs: list[Sender | None],
    batch: DecisionBatch,
    rows: array[int],
    out: ColumnsResult,
) -> None:
    """Admitted items with a key answer their repeats from now on (as ``admit_many``)."""
    kernels.remember_keys(
        rows,
        r.keys,
        r.sender_index,
        r.senders,
        [s.idem if s is not None else None for s in objs],
        r.rkeys,
        r.kinds,
        r.categories,
        r.template_index,
        r.templates,
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
    """Date upgrade-threshold crossings, as ``admit_many`` does after its batch."""
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
