"""Admission: DESIGN §2's steps in order for one request (Admit, a lone stream item).

A batch is decided in ``columnar``, through the same statements of steps 2
and 3 (:data:`BLOCKING`, :func:`template_state`) and the answers of
``answers``; the per-item loops there are the kernels'.

Steps 1–3 (request validity, sender status, template status) are decided
here, and so is a template Meta does not deliver to the recipient's number
(the profile's undeliverable (prefix, category) pairs, the same statement the
batch kernels ask: ``engine.columns.undeliverable``); steps 4–9 (window,
opt-out, messaging limit, protective rules, throughput, pair rate) by the
engine, steered by per-request flags and the effective limit the tier machine
derives from the profile. Nothing is consumed unless every
rule passes. An idempotency key answers only the request it was first used for
(same sender, recipient, kind, category and template): a repeat gets the first
answer, another request under the key is refused (:class:`KeyConflict`) before
anything is decided. Tickets carry a MAC under the service's ticket key
(``engine.tickets``), so feedback acts only on tickets this service issued.
"""

from __future__ import annotations

from typing import NamedTuple

from tiergate.engine import NEVER
from tiergate.engine import records as rec
from tiergate.engine.columns import kernels
from tiergate.engine.constants import (
    ADMIT,
    F_DRY_RUN,
    F_QUALITY_BLOCK,
    F_TEMPLATE,
    NOT_DELIVERED_TO_REGION,
    OK,
    SENDER_BLOCKED,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    shadowed,
)
from tiergate.engine.tickets import encode_in_use

from . import aliases
from . import events as ev
from .answers import (
    DETAIL,
    DRY_RUN_DETAIL,
    META_ERROR,
    META_TEMPLATE_MISSING,
    AdmitResult,
    blocked,
    not_delivered,
    refusal,
    remembered,
    template_refused,
    unknown_sender,
)
from .caps import CapReached
from .journal import admit_record
from .keys import differs
from .requests import MARKETING, TEMPLATE, Checked, KeyConflict, KeyTooLong
from .seam import Decision
from .state import PolicyState, Sender
from .tiers import check_crossing, maintain, note_reach, recompute_due

__all__ = [
    "BLOCKING",
    "T_DISABLED",
    "T_UNKNOWN",
    "T_USABLE",
    "Pending",
    "admit_checked",
    "admit_finish",
    "admit_prepare",
    "template_refusal",
    "template_state",
]

#: Step 2: a sender whose status is this or above (BANNED, DISABLED) sends nothing.
BLOCKING = int(ev.SenderStatus.BANNED)
#: Step 3: a template whose status is this or above (DISABLED, REJECTED) is not sent.
_TEMPLATE_OFF = int(ev.TemplateStatus.DISABLED)
#: What step 3 finds of a template (the columnar kernels' template table holds the
#: same): usable (perhaps paused), unknown to a profile that rejects unknown ones,
#: disabled or rejected.
T_USABLE = 0
T_UNKNOWN = 1
T_DISABLED = 2
_ADMITTED = DETAIL[OK]
encode_ticket = encode_in_use


def template_state(st: PolicyState, tpl: str) -> tuple[int, int]:
    """Step 3's reading of template ``tpl`` (an id or a name): (T_USABLE, T_UNKNOWN
    or T_DISABLED; paused until, 0 when not paused)."""
    t = st.templates.get(tpl) or st.template_names.get(tpl)
    if t is None:
        return (T_UNKNOWN if st.profile.unknown_templates == "reject" else T_USABLE), 0
    if t.status >= _TEMPLATE_OFF:
        return T_DISABLED, 0
    return T_USABLE, t.paused_until


def template_refusal(state: int, paused_until: int, limit: int, tpl: str) -> AdmitResult:
    """Step 3's answer for a template that may not be sent now: ``state`` (from
    :func:`template_state`) is not T_USABLE, or the template is paused."""
    if state == T_UNKNOWN:
        return template_refused(TEMPLATE_DISABLED, 0, limit, META_TEMPLATE_MISSING, tpl)
    if state == T_DISABLED:
        return template_refused(TEMPLATE_DISABLED, 0, limit, META_ERROR[TEMPLATE_DISABLED], tpl)
    code = META_ERROR[TEMPLATE_PAUSED]
    return template_refused(TEMPLATE_PAUSED, paused_until, limit, code, tpl)


def check_key_room(st: PolicyState, new: int, now: int) -> None:
    """:class:`CapReached` when ``new`` more idempotency keys would pass the cap on
    live ones at ``now`` (``keys.order`` holds an item per entry, expired ones until
    they are dropped: at the cap, those expired by ``now`` are dropped first)."""
    order = st.keys.order
    cap = st.caps.idempotency_keys
    if len(order) + new > cap and order and order[0][0] <= now:
        st.forget_expired(now)
    live = len(order)
    if live + new > cap:
        st.capped["max_idempotency_keys"] += 1
        raise CapReached(
            "idempotency_key",
            "max_idempotency_keys",
            cap,
            f"{live} idempotency keys are live (retry once older ones expire, or send "
            "without a key)",
        )


class Pending(NamedTuple):
    """A request that passed steps 1–3, with what steps 4–9 take: the engine's
    ``decide`` arguments (``now``, ``flags``, ``limit``; the scope and number are the
    sender's) and what the answer needs afterwards."""

    sender: Sender
    rkey: int
    kind: int
    cat: int
    tpl: str
    key: str
    now: int
    dry: bool
    flags: int
    limit: int
    back_off_end: int


def admit_checked(st: PolicyState, checked: Checked, now_ms: int) -> AdmitResult:
    """Decide one request whose fields passed the checks of ``requests.well_formed``
    (the server's wire reader makes them from the request bytes)."""
    res = admit_prepare(st, checked, now_ms)
    if type(res) is Pending:
        s = res.sender
        decided = st.engine.decide(
            res.now, s.scope.index, s.engine_index, res.rkey, res.flags, res.limit
        )
        return admit_finish(st, res, decided)
    return res  # type: ignore[return-value]


def admit_prepare(st: PolicyState, checked: Checked, now_ms: int) -> AdmitResult | Pending:
    """Steps 1–3 of one request: its answer, or what steps 4–9 need (``Pending``), for
    a store that decides them apart (:func:`admit_finish` then answers)."""
    sid, raw, kind, cat, tpl, key, at, dry = checked
    if key and len(key) > st.caps.key_length:
        st.capped["max_idempotency_key_length"] += 1
        raise KeyTooLong("idempotency_key", 0, st.caps.key_length)
    rkey = aliases.resolve(st, raw) if st.aliases else raw
    sender = st.senders.get(sid)
    if sender is None:
        # Touches no sender's state: neither time-driven changes nor the clock.
        st.unknown_sender_count += 1
        return unknown_sender(sid)
    now = at if st.request_clock and at > 0 else now_ms
    first: rec.Entry | None = None
    if key:
        first = sender.idem.get(key)
        if first is not None:
            if first[rec.E_UNTIL] <= now:  # expired (not dropped yet)
                first = None
            else:
                bound = rkey | kind << rec.KIND_SHIFT | cat << rec.CATEGORY_SHIFT
                if not rec.bound_to(first, bound, tpl) and (
                    raw == rkey or not aliases.bound_either(first, raw, rkey, kind, cat, tpl)
                ):
                    raise KeyConflict("idempotency_key", 0, differs(first, bound, tpl))
        if first is None and not dry:
            check_key_room(st, 1, now)
    if st.due_dirty:
        recompute_due(st)
    high = now if now > now_ms else now_ms
    if high > st.latest_ms:
        st.latest_ms = high
    if now >= st.next_due:
        maintain(st, now)
    res: AdmitResult | Pending
    if first is not None and sender.status < BLOCKING:
        res = remembered(first)
    else:
        res = _prepare_one(st, sender, rkey, kind, cat, tpl, key, now, dry)
    order = st.keys.order
    # keys expired by ``high`` (an answer remembered now lasts beyond it)
    if order and order[0][0] <= high:
        st.forget_expired(high)
    return res


def _prepare_one(
    st: PolicyState,
    sender: Sender,
    rkey: int,
    kind: int,
    cat: int,
    tpl: str,
    key: str,
    now: int,
    dry: bool,
) -> AdmitResult | Pending:
    """Steps 2 and 3 for one validated request of a known sender whose key (if
    any) has no answer yet. A key's repeat from a sender that is BANNED or
    DISABLED by now comes here too, and step 2 rejects it."""
    scope = sender.scope
    if now < scope.last_now:
        now = scope.last_now
    else:
        scope.last_now = now
    limit = sender.limits[cat]
    if sender.status >= BLOCKING:
        sender.counts[SENDER_BLOCKED] += 1
        return blocked(limit)
    flags = sender.flags[cat]
    if kind == TEMPLATE:
        flags |= F_TEMPLATE
        state, paused_until = template_state(st, tpl)
        if state or now < paused_until:
            res = template_refusal(state, paused_until, limit, tpl)
            sender.counts[res.reason] += 1
            return res
        p = st.profile
        if p.undeliverable_lengths and kernels.undeliverable(
            rkey, cat, p.undeliverable_table, p.undeliverable_lengths
        ):
            sender.counts[NOT_DELIVERED_TO_REGION] += 1
            return not_delivered(limit)
    back_off_end = 0
    back_off = st.marketing_back_off
    if back_off and cat == MARKETING:
        end = back_off.get((scope.index, rkey), 0)
        if end > now:
            back_off_end = end
            flags |= F_QUALITY_BLOCK
    if dry:
        flags |= F_DRY_RUN
    return Pending(sender, rkey, kind, cat, tpl, key, now, dry, flags, limit, back_off_end)


def admit_finish(st: PolicyState, p: Pending, decided: Decision) -> AdmitResult:
    """One request's answer from steps 4–9's ``decided`` (the engine's ``decide``
    answer for ``p``): the ticket, the key's memory, the journal record, a tier
    crossing."""
    sender, rkey, kind, cat, tpl, key, now, dry, flags, limit, back_off_end = p
    d, rsn, retry, counted, used, prev, slot = decided
    would: AdmitResult | None = None
    if d != ADMIT:
        res = refusal(sender, d, rsn, retry, limit, used, back_off_end)
        if not shadowed(flags, rsn):
            sender.counts[res.reason] += 1
            return res
        would = res  # a shadowed rule refused: the engine admitted it (SHADOW_SHIFT)
    sender.counts[OK] += 1
    if dry:
        res = AdmitResult(ADMIT, OK, 0, "", counted == 1, limit, used, 0, DRY_RUN_DETAIL)
    else:
        tid = st.ticket = st.ticket + 1
        index = sender.engine_index
        ticket = encode_ticket(st.k0, st.k1, tid, index, rkey, prev, slot)
        res = AdmitResult(ADMIT, OK, 0, ticket, counted == 1, limit, used, 0, _ADMITTED)
    if would is not None:
        res.shadow_decision = would.decision
        res.shadow_reason = would.reason
        res.shadow_retry_at_unix_ms = would.retry_at_unix_ms
    if dry:
        return res
    if key:
        until = now + st.profile.idempotency_ms
        bound = rkey | kind << rec.KIND_SHIFT | cat << rec.CATEGORY_SHIFT
        st.keys.remember(sender, key, (ticket, counted == 1, limit, used, until, bound, tpl))
    if st.journal_on and not st.replaying:
        st.journal.append(admit_record(now, index, rkey, flags, tid, limit, key, kind, cat, tpl))
    if counted:
        scope = sender.scope
        if scope.on_path:
            note_reach(st, scope, rkey, now)
        if scope.crossed_at == NEVER and scope.tier != st.profile.ladder[-1]:
            check_crossing(st, scope, now, ((now,), (prev,)), [0])
    return res
