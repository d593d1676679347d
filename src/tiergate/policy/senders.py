"""Sender, quality and account events: who sends, in which limit scope, in what state.

A sender update creates a sender (and its limit scope) or changes it; Meta's
quality, capability and account updates move a sender's quality, status and
tier. Each change re-derives the sender's limits and rates (``tiers.refresh``).
"""

from __future__ import annotations

from . import events as ev
from .answers import ApplyResult
from .caps import CapReached, check_length
from .requests import InvalidArgument
from .state import FAR_FUTURE, LimitScope, PolicyState, Sender
from .tiers import number_params, refresh, set_quality, set_status, set_tier, tier_name

__all__ = [
    "check_sender_update",
    "on_account_update",
    "on_capability_update",
    "on_quality_update",
    "on_sender_update",
]


_QUALITIES = ev.specified(ev.Quality)
_STATUSES = ev.specified(ev.SenderStatus)


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def check_sender_update(st: PolicyState, u: ev.SenderUpdate) -> None:
    sid = u.sender_id
    caps = st.caps
    if not sid:
        raise InvalidArgument("sender_id", "sender_id: is required")
    check_length(st.capped, "sender_id", sid, caps.id_length, "max_id_length")
    for name in ("portfolio_id", "waba_id", "display_phone_number"):
        value = getattr(u, name)
        if value is not None:
            check_length(st.capped, name, value, caps.id_length, "max_id_length")
    if u.tier is not None and tier_name(st, u.tier) is None:
        known = ", ".join(t for t, _ in st.profile.tier_limits)
        raise InvalidArgument("tier", f"tier: unknown tier {u.tier!r} (known: {known})")
    if u.throughput_mps is not None and u.throughput_mps < 0:
        raise InvalidArgument("throughput_mps", "throughput_mps: must be >= 0")
    if u.registered_at_unix_ms is not None and u.registered_at_unix_ms < 0:
        raise InvalidArgument("registered_at_unix_ms", "registered_at_unix_ms: must be >= 0")
    if u.quality is not None and int(u.quality) not in _QUALITIES:
        raise InvalidArgument("quality", f"quality: unknown value {u.quality!r}")
    if u.status is not None and int(u.status) not in _STATUSES:
        raise InvalidArgument("status", f"status: unknown value {u.status!r}")
    count = len(st.senders)
    if count >= caps.senders and sid not in st.senders:
        st.capped["max_senders"] += 1
        raise CapReached("sender_id", "max_senders", caps.senders, f"{count} senders are known")


def on_sender_update(st: PolicyState, u: ev.SenderUpdate, now: int) -> ApplyResult:
    """Apply a sender update whose fields passed ``_check_sender_update``."""
    p = st.profile
    sid = u.sender_id
    tier = tier_name(st, u.tier) if u.tier is not None else None
    display = _digits(u.display_phone_number) if u.display_phone_number is not None else None
    s = st.senders.get(sid)
    if display:
        other = st.by_display.get(display)
        if other is not None and other.id != sid:
            return ApplyResult(
                False, f"display number {display} already belongs to sender {other.id!r}"
            )
    created = False
    if s is None:
        s = create_sender(st, sid, u, tier, now)
        created = True
    elif (
        u.portfolio_id is not None
        and u.portfolio_id != s.portfolio_id
        and p.limit_scope == "portfolio"
    ):
        return ApplyResult(
            False,
            f"sender {sid!r} belongs to portfolio {s.portfolio_id!r}; "
            f"moving it to {u.portfolio_id!r} is not supported (its limit is shared there)",
        )
    elif u.portfolio_id is not None:
        s.portfolio_id = u.portfolio_id
    _set_fields(st, s, u, display)
    if u.quality is not None:
        set_quality(st, s, int(u.quality), now)
    if tier is not None and not created and tier != s.scope.tier:
        set_tier(st, s.scope, tier, now)
    refresh(st, s, now)
    return ApplyResult(True, f"sender {sid} {'created' if created else 'updated'}")


def _set_fields(st: PolicyState, s: Sender, u: ev.SenderUpdate, display: str | None) -> None:
    """The fields of a sender update that are only recorded (or set its status)."""
    if u.waba_id is not None:
        s.waba_id = u.waba_id
    if display is not None:
        if s.display:
            st.by_display.pop(s.display, None)
        s.display = display
        if display:
            st.by_display[display] = s
    if u.verified is not None:
        s.verified = u.verified
    if u.registered_at_unix_ms is not None:
        s.registered_at = u.registered_at_unix_ms
    if u.coexistence is not None:
        s.coexistence = u.coexistence
    if u.throughput_mps is not None:
        s.mps_override = u.throughput_mps
    if u.status is not None:
        set_status(s, int(u.status), u.restricted_until_unix_ms or 0)
    elif u.restricted_until_unix_ms is not None and s.status == ev.SenderStatus.RESTRICTED:
        s.restricted_until = u.restricted_until_unix_ms


def create_sender(
    st: PolicyState, sid: str, u: ev.SenderUpdate, tier: str | None, now: int
) -> Sender:
    p = st.profile
    start = tier or (p.starting_tier_unverified if u.verified is False else p.starting_tier)
    pid = u.portfolio_id or ""
    scope: LimitScope | None = None
    if p.limit_scope == "portfolio":
        pkey = pid or f"sender:{sid}"
        scope = st.portfolios.get(pkey)
        if scope is None:
            scope = new_scope(st, pkey, start, now)
            st.portfolios[pkey] = scope
        elif tier is not None and tier != scope.tier:
            set_tier(st, scope, tier, now)
    else:
        scope = new_scope(st, sid, start, now)
    s = Sender(sid, len(st.by_index), scope, pid)
    s.verified = u.verified
    number = st.engine.add_number(scope.index, *number_params(st, s))
    if number != s.engine_index:
        raise RuntimeError("engine number index out of step with the policy layer")
    scope.senders.append(s)
    st.senders[sid] = s
    st.by_index.append(s)
    return s


def new_scope(st: PolicyState, key: str, tier: str, now: int) -> LimitScope:
    p = st.profile
    idx = st.engine.add_scope(p.frequency_cap, p.frequency_window_ms)
    if idx != len(st.scopes):
        raise RuntimeError("engine scope index out of step with the policy layer")
    scope = LimitScope(idx, key, tier, now)
    st.scopes.append(scope)
    return scope


def on_quality_update(st: PolicyState, u: ev.QualityUpdate, now: int) -> ApplyResult:
    s = st.by_display.get(_digits(u.display_phone_number))
    if s is None:
        return ApplyResult(False, f"no sender with display number {u.display_phone_number!r}")
    event = u.event.upper()
    Q, St = ev.Quality, ev.SenderStatus
    if event == "FLAGGED":
        set_quality(st, s, int(Q.RED), now)
        if s.status == St.CONNECTED:
            s.status = int(St.FLAGGED)
    elif event == "UNFLAGGED":
        set_quality(st, s, int(Q.GREEN), now)
        if s.status == St.FLAGGED:
            s.status = int(St.CONNECTED)
    elif event == "THROUGHPUT_UPGRADE":
        # the newest word on the number's rate: a rate set before it gives way
        s.throughput_upgraded = True
        s.mps_override = 0
    elif event in ("UPGRADE", "DOWNGRADE", "ONBOARDING", "COMPLIANCE_ISSUE"):
        pass
    else:
        return ApplyResult(False, f"quality event {u.event!r} is not used")
    tier_value = ""
    if st.profile.limit_scope == "portfolio" and u.max_daily_conversations_per_business:
        tier_value = u.max_daily_conversations_per_business
    elif u.current_limit and event != "THROUGHPUT_UPGRADE":
        tier_value = u.current_limit
    detail = f"sender {s.id}: {event.lower()}"
    if tier_value:
        tier = tier_name(st, tier_value)
        if tier is None:
            return ApplyResult(False, f"unknown tier {tier_value!r}")
        if tier != s.scope.tier:
            set_tier(st, s.scope, tier, now)
            detail += f", tier {tier}"
    refresh(st, s, now)
    return ApplyResult(True, detail)


def waba_senders(st: PolicyState, waba_id: str) -> list[Sender]:
    return [s for s in st.by_index if s.waba_id == waba_id]


def on_capability_update(st: PolicyState, u: ev.CapabilityUpdate, now: int) -> ApplyResult:
    senders = waba_senders(st, u.waba_id)
    if not senders:
        return ApplyResult(False, f"no sender in WABA {u.waba_id!r}")
    if st.profile.limit_scope != "portfolio":
        return ApplyResult(False, f"profile {st.profile.name} limits phone numbers, not portfolios")
    value = str(u.max_daily_conversations_per_business).strip()
    if not value:
        return ApplyResult(False, "no portfolio limit in the update")
    tier = tier_name(st, value)
    if tier is None:
        return ApplyResult(False, f"unknown tier {value!r}")
    scopes = {s.scope.index: s.scope for s in senders}
    for scope in scopes.values():
        if scope.tier != tier:
            set_tier(st, scope, tier, now)
    refresh(st, senders[0], now)
    return ApplyResult(True, f"portfolio tier {tier} for WABA {u.waba_id}")


def on_account_update(st: PolicyState, u: ev.AccountUpdate, now: int) -> ApplyResult:
    senders = waba_senders(st, u.waba_id)
    if not senders:
        return ApplyResult(False, f"no sender in WABA {u.waba_id!r}")
    event = u.event.upper()
    St = ev.SenderStatus
    new: int | None = None
    until = 0
    note = event
    if event == "ACCOUNT_RESTRICTION":
        return on_restriction(st, senders, u, now)
    if event in ("DISABLED_UPDATE", "ACCOUNT_DELETED", "BAN"):
        state = u.ban_state.upper()
        note = f"{event} {state}".strip()
        if state in ("REINSTATE", "REINSTATED"):
            new = int(St.CONNECTED)
        elif state == "SCHEDULE_FOR_DISABLE":
            note_account(senders, note)
            return ApplyResult(True, "disable scheduled: recorded")
        else:
            new = int(St.BANNED) if event == "BAN" else int(St.DISABLED)
    elif event == "ACCOUNT_VIOLATION":
        for s in senders:
            s.violations += 1
        note_account(senders, note)
        return ApplyResult(True, "violation recorded")
    else:
        return ApplyResult(False, f"account event {u.event!r} is not used")
    note_account(senders, note)
    for s in senders:
        set_status(s, new, until)
    for s in senders:
        refresh(st, s, now)
    name = St(new).name
    return ApplyResult(True, f"{len(senders)} sender(s) of WABA {u.waba_id} now {name}")


#: Meta's restriction of replies (sends inside a customer service window); any
#: other messaging restriction type restricts business-initiated sends.
REPLIES_RESTRICTED = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"


def on_restriction(
    st: PolicyState, senders: list[Sender], u: ev.AccountUpdate, now: int
) -> ApplyResult:
    """ACCOUNT_RESTRICTION: each messaging restriction type until its own expiry."""
    types = [t.upper() for t in u.restriction_types]
    note = f"{u.event.upper()} {','.join(types)}".strip()
    note_account(senders, note)
    expiries = u.restriction_expiries or (u.expires_at_unix_ms,) * len(types)
    messaging = [(t, e) for t, e in zip(types, expiries, strict=False) if "MESSAGING" in t]
    if not types:  # no type named: business-initiated sends, as before types existed
        messaging = [("", u.expires_at_unix_ms)]
    if not messaging:
        return ApplyResult(True, "restriction recorded (does not limit messaging)")
    live = [(t, e) for t, e in messaging if not 0 < e <= now]
    if not live:
        return ApplyResult(True, "restriction recorded (already expired)")
    business = [e for t, e in live if t != REPLIES_RESTRICTED]
    replies = [e or FAR_FUTURE for t, e in live if t == REPLIES_RESTRICTED]
    for s in senders:
        if business:
            set_status(s, int(ev.SenderStatus.RESTRICTED), 0 if 0 in business else max(business))
        if replies:
            s.replies_restricted_until = max(replies)
    for s in senders:
        refresh(st, s, now)
    what = "now RESTRICTED" if business else "restricted from replies"
    if business and replies:
        what += ", replies too"
    return ApplyResult(True, f"{len(senders)} sender(s) of WABA {u.waba_id} {what}")


def note_account(senders: list[Sender], note: str) -> None:
    for s in senders:
        s.account_event = note
