"""The tier machine: limits, upgrades, downgrades, time-driven changes, prediction.

A limit scope's tier sets its senders' effective limits (:func:`derive`,
with headroom, reservations and warm-up); a scope that meets the upgrade
threshold is dated (:func:`check_crossing`) and, in apply mode, moves up when
due; long Red moves it down; restrictions end. :func:`catch_up` applies what
time alone changed before a request is decided at a later time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tiergate.engine import NEVER
from tiergate.engine.constants import (
    F_FEP_FREE_FORM,
    F_FEP_PRICING,
    F_MARKETING,
    F_QUALITY_BLOCK,
    F_REPLY_RESTRICTED,
    F_RESTRICTED,
    UNLIMITED,
)

from . import events as ev
from .journal import journal_json, journal_state
from .profile import DAY_MS, Profile
from .state import FAR_FUTURE, LimitScope, PolicyState, Sender

__all__ = [
    "apply_crossing",
    "catch_up",
    "category_limits",
    "check_crossing",
    "counted_crossing",
    "derive",
    "effective_mps",
    "eligible",
    "maintain",
    "mps",
    "number_params",
    "recompute_due",
    "rederive",
    "refresh",
    "set_quality",
    "set_status",
    "set_tier",
    "switch_profile",
    "threshold",
    "tier_name",
    "warmup_cap",
    "with_headroom",
]


def category_limits(profile: Profile, base: int) -> list[int]:
    """Effective limits by category: headroom, then utility/authentication reservations."""
    if base >= UNLIMITED:
        return [UNLIMITED] * 5
    base = with_headroom(profile, base)
    ru, ra = profile.reserve_utility_pct, profile.reserve_authentication_pct
    general = math.floor(base * (100.0 - ru - ra) / 100.0)
    utility = math.floor(base * (100.0 - ra) / 100.0)
    # index = Category: UNSPECIFIED, MARKETING, UTILITY, AUTHENTICATION, SERVICE
    return [general, general, utility, base, general]


def with_headroom(profile: Profile, base: int) -> int:
    """``base`` less the profile's headroom."""
    if profile.headroom_pct < 100.0:
        return math.floor(base * profile.headroom_pct / 100.0)
    return base


def catch_up(st: PolicyState, now: int) -> None:
    """Apply the time-driven changes due at ``now`` (if any); nothing while a journal
    is replayed (its records hold what time changed)."""
    if st.replaying:
        return
    if st.due_dirty:
        recompute_due(st)
    if now >= st.next_due:
        maintain(st, now)


#: Which of Meta's scaling paths out of the profile's ``path_tier`` applies.
PATH_VERIFICATION = "BUSINESS_VERIFICATION"
PATH_VOLUME = "MESSAGING_VOLUME"
#: Above the path tier (or without paths): the profile's threshold rule.
PATH_AUTOMATIC = "AUTOMATIC_SCALING"


def note_reach(st: PolicyState, scope: LimitScope, rkey: int, at: int) -> None:
    """A recipient counted at ``at`` in a scope on Meta's scaling paths."""
    reach = scope.reach
    reach[rkey] = at
    if len(reach) > 4 * st.profile.path_users:
        prune_reach(st, scope, at)


def prune_reach(st: PolicyState, scope: LimitScope, now: int) -> None:
    """Forget the recipients counted before the scaling path's window."""
    oldest = now - st.profile.path_window_ms
    scope.reach = {rkey: at for rkey, at in scope.reach.items() if at > oldest}


def scaling_path(
    st: PolicyState, scope: LimitScope, now: int, users: int | None = None
) -> tuple[str, float, bool]:
    """The scaling path out of the profile's path tier that applies to ``scope``:
    (path, progress 0..1, whether it is complete and Meta's review may pass it).

    A verified business (any of its numbers' ``verified``) has completed the
    verification path; else the unique recipients counted within the path's
    window are the progress of the volume path (``users``: as read from the shared
    store; None: the scope's own reach). Either way Meta then reviews
    quality: the numbers' quality and status must allow an upgrade, and no
    template of the scope's WABAs may be rated one of the profile's low qualities.
    """
    p = st.profile
    wabas = {s.waba_id for s in scope.senders}
    templates_ok = not any(
        t.quality.upper() in p.path_low_qualities
        for t in st.templates.values()
        if not t.waba_id or t.waba_id in wabas
    )
    review_ok = templates_ok and eligible(st, scope)
    if any(s.verified for s in scope.senders):
        return PATH_VERIFICATION, 1.0, review_ok
    if users is None:
        oldest = now - p.path_window_ms
        users = sum(1 for at in scope.reach.values() if at > oldest)
    return PATH_VOLUME, min(1.0, users / p.path_users), review_ok and users >= p.path_users


def threshold(st: PolicyState, scope: LimitScope) -> int:
    limit = st.profile.tier_limit(scope.tier)
    return math.ceil(round(st.profile.upgrade_threshold * limit, 6))


def eligible(st: PolicyState, scope: LimitScope) -> bool:
    p = st.profile
    if p.next_tier(scope.tier) is None or not scope.senders:
        return False
    # every member's quality and status allow it: none held back (kept by ``derive``)
    return scope.held == 0


def cross_gap(st: PolicyState, scope: LimitScope) -> int:
    """How many new counts (an item adds one at most) the scope needs to meet its
    upgrade threshold: by its 7-day counts at its clock (read at time 0, which moves
    nothing; later they only fall but for new counts), at least 1; ``FAR_FUTURE``
    when crossed already or not eligible. Counts kept elsewhere (the shared store's):
    those it last answered for the scope (``seen_7d``), 1 before it answered any."""
    if scope.crossed_at != NEVER or not eligible(st, scope):
        return FAR_FUTURE
    if not st.counted_elsewhere:
        _, _, unique, slots = st.engine.usage(scope.index, 0, UNLIMITED)
    elif scope.seen_7d is not None:
        unique, slots = scope.seen_7d
    else:
        return 1
    have = unique if st.profile.upgrade_basis == "unique" else slots
    return max(1, threshold(st, scope) - have)


def may_cross(st: PolicyState, scopes: Iterable[LimitScope], more: int) -> bool:
    """Whether ``more`` new counts could meet the upgrade threshold of one of ``scopes``
    (:func:`cross_gap`)."""
    return any(cross_gap(st, sc) <= more for sc in scopes)


def check_crossing(
    st: PolicyState,
    scope: LimitScope,
    at: int,
    columns: tuple[Sequence[int], Sequence[int]] | None = None,
    rows: list[int] | None = None,
) -> None:
    """Record when the upgrade threshold is met (the 7-day ring under-counts: never early).

    After a batch, ``rows`` are the batch rows that used a new slot in this
    scope: the crossing is dated to the row that reached the threshold. Nothing
    when the counts are not this process's engine's (``st.counted_elsewhere``: the
    shared store dates crossings from its own, :func:`counted_crossing`).
    """
    if scope.crossed_at != NEVER or st.counted_elsewhere or not eligible(st, scope):
        return
    p = st.profile
    _, _, unique, slots = st.engine.usage(scope.index, at, UNLIMITED)
    have = unique if p.upgrade_basis == "unique" else slots
    need = threshold(st, scope)
    if have < need:
        return
    if columns is not None and rows:
        b_now, b_prev = columns
        at = _dated(p, have, need, at, [(b_now[j], b_prev[j]) for j in rows])
    record_crossing(st, scope, at)


def _dated(p: Profile, have: int, need: int, at: int, new: Iterable[tuple[int, int]]) -> int:
    """When a count of ``have`` (``need`` or more) reached ``need``: ``new`` are the
    new slots that brought it there, each (time, the recipient's previous counted
    time), in order; ``at`` if it was there before them. Dated to the latest time up
    to the slot that reached it: never early."""
    # How much each slot added: a new slot always adds to the cumulative count; to
    # the 7-day unique count only when the recipient was clearly outside the
    # lookback (a borderline one counts as 0: dated later, never early).
    horizon = p.lookback_ms + p.long_bucket_ms
    made = list(new)
    steps = [1 if p.upgrade_basis == "cumulative" or prev <= t - horizon else 0 for t, prev in made]
    level, latest = have - sum(steps), NEVER
    if level < need:
        for (t, _), step in zip(made, steps, strict=True):
            latest = max(latest, t)
            level += step
            if level >= need:
                return latest
    return at


def record_crossing(st: PolicyState, scope: LimitScope, at: int) -> None:
    """``scope`` met its upgrade threshold at ``at``: dated, due in apply mode, journaled."""
    p = st.profile
    scope.crossed_at = at
    if p.upgrade_mode == "apply":
        scope.due_at = max(at + p.upgrade_delay_ms, scope.tier_since + p.min_in_tier_ms)
        st.next_due = min(st.next_due, scope.due_at)
    journal_state(st, [scope], [])


def counted_crossing(
    st: PolicyState,
    scope: LimitScope,
    unique: int,
    slots: int,
    clock: int,
    made: Iterable[tuple[int, int]],
) -> int | None:
    """When ``scope`` met its upgrade threshold by counts kept elsewhere (the shared
    store's), None if it has not (or is crossed already, or not eligible).

    ``unique`` and ``slots`` are the 7-day counts at ``clock``, after the rows
    that made ``made``: each new slot's (time, the recipient's previous counted
    time), in order. As :func:`check_crossing` dates a batch: to the row that
    reached the threshold (the latest time up to it: never early), else ``clock``;
    never before the tier began.
    """
    if scope.crossed_at != NEVER or not eligible(st, scope):
        return None
    p = st.profile
    have = unique if p.upgrade_basis == "unique" else slots
    need = threshold(st, scope)
    if have < need:
        return None
    return max(_dated(p, have, need, clock, made), scope.tier_since)


def apply_crossing(st: PolicyState, scope: LimitScope, tier: str, since: int, at: int) -> bool:
    """A crossing another process dated (:func:`counted_crossing`) for ``scope`` in
    ``tier`` since ``since``: recorded when the scope is still in that tier, not
    crossed yet and eligible; else nothing (a second report of one crossing, a tier
    changed since). Whether it was recorded."""
    if (scope.tier, scope.tier_since) != (tier, since) or scope.crossed_at != NEVER:
        return False
    if not eligible(st, scope):
        return False
    record_crossing(st, scope, at)
    return True


def set_tier(st: PolicyState, scope: LimitScope, tier: str, at: int) -> None:
    scope.tier = tier
    scope.tier_since = at
    scope.crossed_at = NEVER
    scope.due_at = NEVER
    for s in scope.senders:
        derive(st, s, at)


def maintain(st: PolicyState, now: int) -> None:
    """Apply what time alone changes: due upgrades, long Red, restriction ends, warm-up.

    Each pass applies what was due, in due-time order per object; passes repeat
    while more became due (e.g. several 7-day Red steps after a long silence).
    """
    if st.replaying:
        return
    for _ in range(1024):
        maintain_once(st, now)
        if st.next_due > now:
            return


def maintain_once(st: PolicyState, now: int) -> None:
    p = st.profile
    changed_scopes: dict[int, LimitScope] = {}
    changed_senders: dict[str, Sender] = {}
    for scope in st.scopes:
        if scope.due_at != NEVER and scope.due_at <= now:
            due = scope.due_at
            nxt = p.next_tier(scope.tier)
            if nxt is not None and eligible(st, scope):
                set_tier(st, scope, nxt, due)
                if scope.last_now < due:
                    scope.last_now = due
                check_crossing(st, scope, max(due, scope.last_now))
            else:
                scope.crossed_at = NEVER
                scope.due_at = NEVER
            changed_scopes[scope.index] = scope
    for s in st.by_index:
        if p.red_days_to_downgrade and s.red_since != NEVER:
            due = s.red_since + p.red_days_to_downgrade * DAY_MS
            if due <= now:
                scope = s.scope
                floor = p.tier_limit(p.downgrade_floor)
                lower = p.lower_tier(scope.tier)
                own = s.status in (ev.SenderStatus.CONNECTED, ev.SenderStatus.FLAGGED)
                if lower is None or p.tier_limit(scope.tier) <= floor:
                    if own and p.floor_status != s.status:
                        s.status = p.floor_status
                        s.floor_restricted = p.floor_status == ev.SenderStatus.RESTRICTED
                else:
                    set_tier(st, scope, lower, due)
                    if own:  # a restriction or ban from Meta stays as it is
                        s.status = int(ev.SenderStatus.CONNECTED)
                    changed_scopes[scope.index] = scope
                s.red_since = due  # another full run of Red days costs another step
                changed_senders[s.id] = s
        if s.status == ev.SenderStatus.RESTRICTED and 0 < s.restricted_until <= now:
            s.status = int(ev.SenderStatus.CONNECTED)
            s.restricted_until = 0
            changed_senders[s.id] = s
        if 0 < s.spam_held_until <= now:
            s.spam_held_until = 0
            changed_senders[s.id] = s
        if 0 < s.slow_until <= now:
            s.slow_level -= 1
            s.slow_until = s.slow_until + p.throughput_slow_recover_ms if s.slow_level else 0
            changed_senders[s.id] = s
        if 0 < s.replies_restricted_until <= now:
            s.replies_restricted_until = 0
            changed_senders[s.id] = s
        if s.limits_until != NEVER and s.limits_until <= now:
            changed_senders[s.id] = s
    for s in changed_senders.values():
        derive(st, s, now)
        st.engine.set_number_params(s.engine_index, *number_params(st, s))
    if changed_scopes or changed_senders:
        journal_state(st, list(changed_scopes.values()), list(changed_senders.values()))
    recompute_due(st)


def recompute_due(st: PolicyState) -> None:
    """``next_due`` from every scope and sender (after a pass of ``maintain``, a
    restore or a replay); a single change lowers it with :func:`note_due` instead."""
    st.due_dirty = False
    p = st.profile
    due = FAR_FUTURE
    for scope in st.scopes:
        if scope.due_at != NEVER:
            due = min(due, scope.due_at)
    for s in st.by_index:
        due = min(due, sender_due(p, s))
    st.next_due = due


def sender_due(p: Profile, s: Sender) -> int:
    """The earliest time a time-driven change of ``s`` falls due (FAR_FUTURE: none)."""
    due = FAR_FUTURE
    if p.red_days_to_downgrade and s.red_since != NEVER:
        due = min(due, s.red_since + p.red_days_to_downgrade * DAY_MS)
    if s.status == ev.SenderStatus.RESTRICTED and s.restricted_until > 0:
        due = min(due, s.restricted_until)
    if s.spam_held_until:
        due = min(due, s.spam_held_until)
    if s.slow_until:
        due = min(due, s.slow_until)
    if s.replies_restricted_until:
        due = min(due, s.replies_restricted_until)
    if s.limits_until != NEVER:
        due = min(due, s.limits_until)
    return due


def note_due(st: PolicyState, s: Sender) -> None:
    """After a change of ``s``: ``next_due`` no later than its (and its scope's) due
    time, in O(1). A due time that moved later leaves ``next_due`` early: ``maintain``
    then finds nothing due and recomputes it; never late, never a scan per change."""
    due = sender_due(st.profile, s)
    scope_due = s.scope.due_at
    if scope_due != NEVER and scope_due < due:
        due = scope_due
    if due < st.next_due:
        st.next_due = due


def mps(st: PolicyState, s: Sender) -> int:
    p = st.profile
    if s.mps_override > 0:
        return s.mps_override
    if s.throughput_upgraded and not s.coexistence:
        return p.upgraded_mps  # Meta's THROUGHPUT_UPGRADE is newer than any configured rate
    override = p.throughput_override(s.id)
    if override is not None:
        return override
    if s.coexistence:
        return p.coexistence_mps
    return p.upgraded_mps if s.throughput_upgraded else p.default_mps


def effective_mps(st: PolicyState, s: Sender) -> int:
    """The rate tiergate admits at: the number's, halved once per step it is slowed."""
    return max(1, mps(st, s) >> s.slow_level)


def number_params(st: PolicyState, s: Sender) -> tuple[int, int, int, int]:
    p = st.profile
    rate = effective_mps(st, s)
    interval = -(-1_000_000 // rate)
    burst = max(1, math.floor(rate * p.burst_seconds))
    return interval, burst, p.pair_interval_ms, p.pair_burst


def warmup_cap(st: PolicyState, s: Sender, now: int) -> int:
    """The sender's warm-up cap at ``now`` (UNLIMITED: none); sets when it next
    changes (``limits_until``)."""
    p = st.profile
    s.limits_until = NEVER
    if p.warmup_enabled and s.registered_at > 0:
        age = now - s.registered_at
        for step in p.warmup:
            if age < step.until_day * DAY_MS:
                s.limits_until = s.registered_at + step.until_day * DAY_MS
                return step.cap
    return UNLIMITED


def derive(st: PolicyState, s: Sender, now: int) -> None:
    """Recompute a sender's per-category flags and effective limits.

    A number in warm-up is capped below its tier. When it is its own limit
    scope the cap lowers the scope's limit; under portfolio scope the cap
    (less headroom) bounds the number's own unique recipients in the rolling
    window, counted by the engine (``set_warmup``), while the portfolio's
    limit still bounds the portfolio's count.
    """
    st.changes += 1
    p = st.profile
    base = p.tier_limit(s.scope.tier)
    cap = warmup_cap(st, s, now)
    own = UNLIMITED
    if cap < UNLIMITED:
        if p.limit_scope == "portfolio":
            own = with_headroom(p, cap)
        else:
            base = min(base, cap)
    s.limits = category_limits(p, base)
    s.warmup_cap = own
    st.engine.set_warmup(s.engine_index, own)
    common = restrictions(s)
    # A free-entry-point window is a customer service window (seed 000's reading)
    # or a pricing window only, whose templates count once the 24 h window closed.
    common |= F_FEP_FREE_FORM if p.free_entry_point_allows_free_form else F_FEP_PRICING
    common |= p.shadow_flags
    marketing = common | F_MARKETING
    if p.block_marketing_on_red and s.quality == ev.Quality.RED:
        marketing |= F_QUALITY_BLOCK
    s.flags = [common, marketing, common, common, common]
    scope = s.scope
    ok = s.quality in p.upgrade_qualities and s.status in p.upgrade_statuses
    if ok != s.upgrade_ok:
        s.upgrade_ok = ok
        scope.held += -1 if ok else 1
    scope.on_path = scope.tier == p.path_tier
    if not scope.on_path and scope.reach:
        scope.reach.clear()


def restrictions(s: Sender) -> int:
    """The restriction flags of a sender's requests; sets when a refused one may be retried.

    Business-initiated (counting) sends are refused under Meta's restriction of
    them or the hold after its 131048; replies under its restriction of
    customer-initiated messaging. A refusal is retried at the latest end of
    those in force, when every one has an end (0: none known, REJECT).
    """
    flags = 0
    restricted = s.status == ev.SenderStatus.RESTRICTED
    replies = s.replies_restricted_until
    if restricted or s.spam_held_until:
        flags |= F_RESTRICTED
    if replies:
        flags |= F_REPLY_RESTRICTED
    unknown = (restricted and not s.restricted_until) or replies >= FAR_FUTURE
    if not flags or unknown:
        s.restricted_retry_at = 0
    else:
        s.restricted_retry_at = max(
            s.restricted_until if restricted else 0, s.spam_held_until, replies
        )
    return flags


def refresh(st: PolicyState, s: Sender, now: int) -> None:
    """After a change: derived parameters, engine buckets, due times, crossing."""
    derive(st, s, now)  # a tier change already re-derived every member (_set_tier)
    st.engine.set_number_params(s.engine_index, *number_params(st, s))
    if s.scope.crossed_at == NEVER:
        check_crossing(st, s.scope, max(now, s.scope.last_now))
    note_due(st, s)


def set_status(s: Sender, status: int, restricted_until: int) -> None:
    s.status = status
    s.floor_restricted = False
    s.restricted_until = restricted_until if status == ev.SenderStatus.RESTRICTED else 0
    if status == ev.SenderStatus.CONNECTED:  # Meta reinstated the number: replies too
        s.replies_restricted_until = 0


def set_quality(st: PolicyState, s: Sender, quality: int, now: int) -> None:
    p = st.profile
    s.quality = quality
    if quality == ev.Quality.RED:
        if s.red_since == NEVER:
            s.red_since = now
        if p.red_sets_flagged and s.status == ev.SenderStatus.CONNECTED:
            s.status = int(ev.SenderStatus.FLAGGED)
    else:
        s.red_since = NEVER
        if p.red_sets_flagged and s.status == ev.SenderStatus.FLAGGED:
            s.status = int(ev.SenderStatus.CONNECTED)
        if s.floor_restricted and s.status == ev.SenderStatus.RESTRICTED:
            s.status = int(ev.SenderStatus.CONNECTED)
        s.floor_restricted = False


def tier_name(st: PolicyState, value: str) -> str | None:
    v = value.strip()
    if st.profile.knows_tier(v):
        return v
    if v.isascii() and v.isdigit():  # "²" and "١٠٠٠" are str.isdigit() too
        return st.profile.tier_for_limit(int(v))
    return None


def rederive(st: PolicyState, now_ms: int) -> None:
    """Everything the profile decides, for every scope and sender, from the state."""
    profile = st.profile
    for sc in st.scopes:
        st.engine.set_scope_params(sc.index, profile.frequency_cap, profile.frequency_window_ms)
        if profile.upgrade_mode == "predict":
            sc.due_at = NEVER
        elif sc.crossed_at != NEVER:
            sc.due_at = max(
                sc.crossed_at + profile.upgrade_delay_ms, sc.tier_since + profile.min_in_tier_ms
            )
    for s in st.by_index:
        derive(st, s, max(now_ms, s.scope.last_now))
        st.engine.set_number_params(s.engine_index, *number_params(st, s))
    recompute_due(st)


def switch_profile(st: PolicyState, profile: Profile, now_ms: int) -> None:
    """Switch to ``profile`` in place: limits, rates and rules re-derived for every
    sender and limit scope; journaled as a profile switch at ``now_ms``. Raises
    ValueError, changing nothing, when the new profile's windows or limit scope
    differ (the engine's buckets and scopes are built for them) or it lacks a
    tier in use."""
    old = st.profile
    for name in ("bucket_ms", "window_ms", "long_bucket_ms", "lookback_ms"):
        if getattr(profile, name) != getattr(old, name):
            raise ValueError(
                f"profile {profile.name!r} changes the counting windows ({name} "
                f"{getattr(old, name)} -> {getattr(profile, name)}); restart to switch"
            )
    if profile.limit_scope != old.limit_scope and st.scopes:
        raise ValueError(
            f"profile {profile.name!r} changes the limit scope (limit_scope "
            f"{old.limit_scope} -> {profile.limit_scope}); restart to switch"
        )
    for sc in st.scopes:
        if not profile.knows_tier(sc.tier):
            raise ValueError(f"profile {profile.name!r} does not define tier {sc.tier!r}")
    st.profile = profile
    rederive(st, now_ms)
    journal_json(st, {"k": "profile", "name": profile.name, "now": now_ms})
