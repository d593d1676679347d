"""Sender reports: what GetSenderState tells of a sender, its scope and its templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tiergate.engine import NEVER
from tiergate.engine.constants import UNLIMITED

from .profile import HOUR_MS
from .requests import MARKETING
from .state import LimitScope, PolicyState
from .tiers import (
    PATH_AUTOMATIC,
    catch_up,
    check_crossing,
    effective_mps,
    eligible,
    scaling_path,
    threshold,
)

__all__ = ["PausedTemplateReport", "ScopeReading", "SenderReport", "UpgradeReport", "sender_state"]


@dataclass(slots=True)
class UpgradeReport:
    eligible: bool
    progress: float
    predicted_at_unix_ms: int
    next_tier: str
    #: How the next tier is reached: Meta's BUSINESS_VERIFICATION or
    #: MESSAGING_VOLUME scaling path (then Meta's review; no time is predicted),
    #: or AUTOMATIC_SCALING (the profile's threshold rule); "" at the top tier.
    path: str = ""


@dataclass(slots=True)
class PausedTemplateReport:
    template_id: str
    template_name: str
    paused_until_unix_ms: int  # 0 when disabled or held until lifted
    disabled: bool
    #: Why: Meta's pause title (FIRST_PAUSE, SECOND_PAUSE), PAUSED (no title),
    #: FAILED 132015 / FAILED 132016 (a send failed so), DISABLED or REJECTED.
    reason: str = ""
    until_lifted: bool = False  # held until Meta's UNPAUSED or APPROVED


@dataclass(slots=True)
class SenderReport:
    """Everything GetSenderState reports (proto ``SenderState``) and a little more."""

    sender_id: str
    portfolio_id: str
    profile: str
    tier: str
    limit: int
    used_24h: int
    remaining: int
    next_slot_free_at_unix_ms: int
    unique_7d: int
    upgrade: UpgradeReport
    quality: int
    status: int
    throughput_mps: int
    open_windows: int
    paused_templates: list[PausedTemplateReport]
    decision_counts: dict[int, int]
    display_phone_number: str
    effective_limit: int
    at_unix_ms: int
    waba_id: str = ""
    verified: bool | None = None
    slots_7d: int = 0
    restricted_until_unix_ms: int = 0
    coexistence: bool = False
    registered_at_unix_ms: int = 0
    limit_scope: str = ""
    tier_since_unix_ms: int = 0
    account_violations: int = 0
    last_account_event: str = ""
    #: Business-initiated sends held until then after Meta's 131048 (0: not held).
    spam_held_until_unix_ms: int = 0
    #: Replies refused until then under Meta's RESTRICTED_CUSTOMER_INITIATED_MESSAGING
    #: (2^62 while it has no known end; 0: not restricted).
    replies_restricted_until_unix_ms: int = 0
    #: The forecast: recipients counted in the last hour, when the limit is reached
    #: at that rate (0: not within 24 h, or reached already), and the slots
    #: freeing in each of the next 24 hours.
    counted_last_hour: int = 0
    limit_reached_at_unix_ms: int = 0
    slots_freeing_per_hour: list[int] = field(default_factory=list)
    #: Under portfolio scope, a number in warm-up: its own cap (0: none) and the
    #: unique recipients it counted itself in the rolling 24 h.
    warmup_cap: int = 0
    warmup_used_24h: int = 0


#: The forecast looks this many hours ahead.
FORECAST_HOURS = 24


def limit_reached_at(used: int, limit: int, rate: int, freeing: list[int], now: int) -> int:
    """When ``used`` reaches ``limit``, ``rate`` recipients counted per hour and
    ``freeing[h]`` slots leaving the window in hour ``h`` from ``now`` (taken as
    leaving at its end: never later than the true time); 0 when not within
    ``len(freeing)`` hours, or ``used`` is there already."""
    if used >= limit or rate <= 0:
        return 0
    level = used
    for h, freed in enumerate(freeing):
        if level + rate >= limit:
            return now + h * HOUR_MS + -(-(limit - level) * HOUR_MS // rate)
        level += rate - freed
    return 0


def upgrade_report(
    st: PolicyState,
    scope: LimitScope,
    now: int,
    unique: int,
    slots: int,
    path_users: int | None = None,
) -> UpgradeReport:
    """The scope's way to its next tier: Meta's scaling path (its volume path's
    progress ``path_users`` when read elsewhere, else the scope's own reach), or the
    profile's threshold rule over ``unique`` recipients (or ``slots``) in 7 days."""
    p = st.profile
    have = unique if p.upgrade_basis == "unique" else slots
    nxt_tier = p.next_tier(scope.tier)
    need = threshold(st, scope) if nxt_tier is not None else 0
    predicted = 0
    if scope.crossed_at != NEVER and eligible(st, scope):
        predicted = (
            scope.due_at if p.upgrade_mode == "apply" else scope.crossed_at + p.predict_within_ms
        )
    if scope.on_path and nxt_tier is not None:
        path, progress, ready = scaling_path(st, scope, now, path_users)
        return UpgradeReport(ready, progress, 0, nxt_tier, path)
    return UpgradeReport(
        eligible=nxt_tier is not None and eligible(st, scope) and have >= need,
        progress=min(1.0, have / need) if need > 0 else (1.0 if nxt_tier is None else 0.0),
        predicted_at_unix_ms=predicted,
        next_tier=nxt_tier or "",
        path=PATH_AUTOMATIC if nxt_tier is not None else "",
    )


class ScopeReading(Protocol):
    """A scope's counts read elsewhere than this process's engine (the shared
    store's, ``store.redis_reads.ScopeCounts``), as of its own time ``now``."""

    @property
    def now(self) -> int: ...
    def usage(self, limit: int) -> tuple[int, int, int, int]: ...
    def outlook(self, period_ms: int, periods: int) -> tuple[int, list[int]]: ...
    @property
    def path_users(self) -> int | None:
        """The recipients counted toward Meta's volume path (None: not read)."""


def sender_state(
    st: PolicyState,
    sender_id: str,
    now_ms: int,
    at_unix_ms: int = 0,
    counts: ScopeReading | None = None,
) -> SenderReport:
    """The state GetSenderState reports. Raises KeyError for an unknown sender.

    ``at_unix_ms`` (the request's field) is used instead of ``now_ms`` when
    the service runs with ``clock="request"`` and it is non-zero. ``counts``:
    the scope's counts (used, 7-day counts, forecast) from there instead of
    the engine's, at their time when it is later.
    """
    s = st.senders.get(sender_id)
    if s is None:
        raise KeyError(sender_id)
    now_ms = st.now(at_unix_ms, now_ms)
    if now_ms > st.latest_ms:
        st.latest_ms = now_ms
    catch_up(st, now_ms)
    scope = s.scope
    now = max(now_ms, scope.last_now)
    p = st.profile
    limit = p.tier_limit(scope.tier)
    effective = s.limits[MARKETING]
    if counts is None:
        used, nxt, unique, slots = st.engine.usage(scope.index, now, effective)
        recent, freeing = st.engine.outlook(scope.index, now, HOUR_MS, FORECAST_HOURS)
    else:
        now = max(now, counts.now)
        used, nxt, unique, slots = counts.usage(effective)
        recent, freeing = counts.outlook(HOUR_MS, FORECAST_HOURS)
    remaining = max(0, effective - used)
    nxt = nxt if used >= effective else now
    path_users = counts.path_users if counts is not None else None
    own_used = 0
    if s.warmup_cap < UNLIMITED:  # the number's own count binds too
        own_used, own_nxt, _, _ = st.engine.warmup_usage(s.engine_index, now)
        remaining = min(remaining, max(0, s.warmup_cap - own_used))
        if own_used >= s.warmup_cap:
            nxt = max(nxt, own_nxt)
    if scope.crossed_at == NEVER:
        check_crossing(st, scope, now)
    upgrade = upgrade_report(st, scope, now, unique, slots, path_users)
    paused = [
        PausedTemplateReport(
            t.id,
            t.name,
            0 if t.disabled or t.held else t.paused_until,
            t.disabled,
            t.pause_reason,
            t.held and not t.disabled,
        )
        for t in st.templates.values()
        if (t.disabled or now < t.paused_until) and (not t.waba_id or t.waba_id == s.waba_id)
    ]
    return SenderReport(
        sender_id=s.id,
        portfolio_id=s.portfolio_id,
        profile=p.name,
        tier=scope.tier,
        limit=limit,
        used_24h=used,
        remaining=remaining,
        next_slot_free_at_unix_ms=nxt,
        unique_7d=unique,
        upgrade=upgrade,
        quality=s.quality,
        status=s.status,
        throughput_mps=effective_mps(st, s),
        open_windows=st.engine.open_windows(s.engine_index, now),
        paused_templates=paused,
        decision_counts={r: c for r, c in enumerate(s.counts) if c},
        display_phone_number=s.display,
        effective_limit=effective,
        at_unix_ms=now,
        waba_id=s.waba_id,
        verified=s.verified,
        slots_7d=slots,
        restricted_until_unix_ms=s.restricted_until,
        coexistence=s.coexistence,
        registered_at_unix_ms=s.registered_at,
        limit_scope=p.limit_scope,
        tier_since_unix_ms=scope.tier_since,
        account_violations=s.violations,
        last_account_event=s.account_event,
        spam_held_until_unix_ms=s.spam_held_until if s.spam_held_until > now else 0,
        replies_restricted_until_unix_ms=(
            s.replies_restricted_until if s.replies_restricted_until > now else 0
        ),
        counted_last_hour=recent,
        limit_reached_at_unix_ms=limit_reached_at(used, effective, recent, freeing, now),
        slots_freeing_per_hour=freeing,
        warmup_cap=s.warmup_cap if s.warmup_cap < UNLIMITED else 0,
        warmup_used_24h=own_used,
    )
