"""Feedback: each event's effect on the state (``AdmissionService.apply``).

Send results release slots and act on Meta's error codes, link Meta's message
ids to tickets; inbound messages open windows; opt-outs, template updates and
template quality change what later admits see. Sender, quality and account
events live in ``senders``. Every field is checked before anything changes;
an applied event is journaled as JSON (``journal``) and replays through
:func:`apply_event`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from tiergate.engine import NEVER
from tiergate.engine import records as rec
from tiergate.engine.tickets import decode_ticket, encode_in_use, ticket_fields

from . import aliases
from . import events as ev
from .answers import ApplyResult
from .caps import CapReached, check_length
from .journal import journal_json
from .meta_errors import MetaError
from .requests import MAX_KEY_LEN, InvalidArgument, KeyConflict, recipient_field
from .senders import (
    check_sender_update,
    on_account_update,
    on_capability_update,
    on_quality_update,
    on_sender_update,
)
from .state import HELD, LimitScope, PolicyState, Sender, Template
from .tiers import catch_up, effective_mps, refresh

__all__ = [
    "apply",
    "apply_at",
    "apply_event",
    "check_event",
    "event_record",
    "event_time",
    "refuse",
    "resolve_keyed",
]

#: The send statuses a send result may carry.
_SEND_STATUSES = ev.specified(ev.SendStatus)
_TEMPLATE_STATUSES = ev.specified(ev.TemplateStatus)


def apply(st: PolicyState, event: ev.Event, now_ms: int) -> ApplyResult:
    """Apply one feedback event. Unknown senders/templates/tickets → applied=False.

    Raises :class:`InvalidArgument` for a malformed field (e.g. a recipient
    that is neither E.164 digits nor a business-scoped user ID).
    """
    now = event_time(st, event, now_ms)
    refused = refuse(st, event)
    return refused if refused is not None else apply_at(st, event, now)


def event_time(st: PolicyState, event: ev.Event, now_ms: int) -> int:
    """The time ``event`` is applied at: its ``at_unix_ms`` under the request clock."""
    at = getattr(event, "at_unix_ms", 0)
    return st.now(at if isinstance(at, int) else 0, now_ms)


def refuse(st: PolicyState, event: ev.Event) -> ApplyResult | None:
    """Raise :class:`InvalidArgument` for a malformed field; the answer to an event
    that changes nothing (a ticket tiergate did not issue); None for one to apply.

    A refused event changes nothing: its fields are checked before time moves,
    and a ticket tiergate did not issue moves no time either (made-up tickets
    stamped ahead would otherwise run every sender's clock forward)."""
    check_event(st, event)
    if (
        isinstance(event, ev.SendResult)
        and event.ticket
        and ticket_numbers(st, event.ticket) is None
    ):
        return ApplyResult(False, f"unknown or invalid ticket {event.ticket!r}")
    return None


def apply_at(st: PolicyState, event: ev.Event, now: int) -> ApplyResult:
    """Apply an event :func:`refuse` let through at time ``now`` (journaled)."""
    if now > st.latest_ms:
        st.latest_ms = now
    st.forget_expired(now)
    catch_up(st, now)
    learned = _learn_alias(st, event)  # journaled even when the event itself changes nothing
    st.changes += 1
    result, record = apply_event(st, event, now)
    if ((result.applied and record) or learned) and st.journal_on:
        journal_json(st, event_record(event, now))
    return result


def event_record(event: ev.Event, now: int) -> dict[str, Any]:
    """The JSON record of ``event`` applied at ``now`` (``persistence`` replays it)."""
    return {"k": "event", "now": now, "type": type(event).__name__, "f": dataclasses.asdict(event)}


def resolve_keyed(st: PolicyState, e: ev.SendResult, now: int) -> ev.SendResult:
    """``e`` naming the ticket (and the template a hold needs) its sender and
    idempotency key stand for in this service's key memory: the same event then
    applies alike where that memory differs (other sidecars of a shared store).
    Raises :class:`KeyConflict` as :func:`ticket_of` does."""
    ticket = e.ticket or ticket_of(st, e, now)
    template = e.template_id
    if not template and e.meta_error_code in st.profile.template_hold_codes and e.sender_id:
        s = st.senders.get(e.sender_id)
        template = _bound_template(s, e.idempotency_key) if s is not None else ""
    if (ticket, template) == (e.ticket, e.template_id):
        return e
    return dataclasses.replace(e, ticket=ticket, template_id=template)


def check_event(st: PolicyState, event: ev.Event) -> None:
    """Raise :class:`InvalidArgument` for a malformed field of ``event`` (the
    checks of its fields alone), before any change — time-driven ones included."""
    if isinstance(event, ev.InboundMessage | ev.OptOut):
        recipient_field(event.recipient, "recipient")
    elif isinstance(event, ev.SendResult):
        if int(event.status) not in _SEND_STATUSES:
            raise InvalidArgument("status", f"status: unknown value {event.status!r}")
        mid = event.message_id
        if not isinstance(mid, str) or len(mid) > MAX_KEY_LEN:
            raise InvalidArgument(
                "message_id",
                f"message_id: must be a string of at most {MAX_KEY_LEN} characters",
            )
        named = event.ticket or event.idempotency_key or mid
        if event.recipient or (event.status == ev.SendStatus.FAILED and not named):
            recipient_field(event.recipient, "recipient")  # what a failure without them releases
    elif isinstance(event, ev.SenderUpdate):
        check_sender_update(st, event)
    elif isinstance(event, ev.TemplateUpdate):
        check_template_update(st, event)


def _learn_alias(st: PolicyState, event: ev.Event) -> bool:
    """Learn the alias an event names (a phone number and its user's BSUID);
    whether the map changed."""
    if isinstance(event, ev.SendResult | ev.InboundMessage) and event.user_id:
        return aliases.learn(st, event.recipient, event.user_id)
    return False


def apply_event(st: PolicyState, event: ev.Event, now: int) -> tuple[ApplyResult, bool]:
    _learn_alias(st, event)
    if isinstance(event, ev.SendResult):
        return on_send_result(st, event, now)
    if isinstance(event, ev.InboundMessage):
        return on_inbound(st, event, now), True
    if isinstance(event, ev.OptOut):
        return on_opt_out(st, event), True
    if isinstance(event, ev.SenderUpdate):
        return on_sender_update(st, event, now), True
    if isinstance(event, ev.TemplateUpdate):
        return on_template_update(st, event, now), True
    if isinstance(event, ev.QualityUpdate):
        return on_quality_update(st, event, now), True
    if isinstance(event, ev.CapabilityUpdate):
        return on_capability_update(st, event, now), True
    if isinstance(event, ev.AccountUpdate):
        return on_account_update(st, event, now), True
    if isinstance(event, ev.TemplateQualityUpdate):
        return on_template_quality(st, event), True
    return ApplyResult(False, f"unsupported event type {type(event).__name__}"), False


def seen_once(st: PolicyState, key: str, now: int) -> bool:
    """True when ``key`` (a message id) was applied before; else remember it."""
    if key in st.seen:
        return True
    until = now + st.profile.message_id_ms
    st.seen[key] = until
    st.seen_order.append((until, key))
    return False


#: How far behind the sender's latest decision time an inbound message still takes
#: a send's worth of throughput (Meta's webhooks arrive within seconds).
INBOUND_HORIZON_MS = 60_000


def on_inbound(st: PolicyState, e: ev.InboundMessage, now: int) -> ApplyResult:
    rkey = aliases.recipient_of(st, e.recipient, "recipient")
    s = st.senders.get(e.sender_id)
    if s is None:
        return ApplyResult(False, f"unknown sender {e.sender_id!r}")
    if e.message_id and seen_once(st, "in:" + e.message_id, now):
        return ApplyResult(False, f"message {e.message_id} already applied")
    p = st.profile
    # The window runs from the user's message: never later than the time it arrived.
    start = e.at_unix_ms if 0 < e.at_unix_ms < now else now
    fep = int(e.entry_point) in p.free_entry_points
    fep_until = start + p.free_entry_point_window_ms if fep else NEVER
    st.engine.open_window(s.engine_index, rkey, start + p.service_window_ms, fep_until)
    # Meta counts it toward the number's throughput, in the second it arrived: one
    # far behind the sender's latest decision (a replay out of time order, a late
    # redelivery) no longer competes with the sends being decided.
    if p.throughput_counts_inbound and now > s.scope.last_now - INBOUND_HORIZON_MS:
        st.engine.take_throughput(s.engine_index, now)
    kind = "free entry point (72 h)" if fep else "customer service"
    return ApplyResult(True, f"{kind} window open for {e.recipient}")


def ticket_of(st: PolicyState, e: ev.SendResult, now: int) -> str:
    """The ticket a send result names, directly or by sender + idempotency key (a
    key bound to another recipient than the result names: :class:`KeyConflict`)."""
    if e.ticket or not (e.sender_id and e.idempotency_key):
        return e.ticket
    s0 = st.senders.get(e.sender_id)
    first = s0.idem.get(e.idempotency_key) if s0 is not None else None
    if first is None or first[4] <= now:
        return ""
    if e.recipient:
        raw = recipient_field(e.recipient, "recipient")
        rkey = aliases.resolve(st, raw)
        if (first[rec.E_BOUND] ^ rkey) & (first[rec.E_BOUND] ^ raw) & rec.RECIPIENT_BITS:
            raise KeyConflict("idempotency_key", 0, "recipient")
    return first[0]


def ticket_numbers(st: PolicyState, ticket: str) -> tuple[int, int, int, int, int] | None:
    """(ticket id, number, recipient key, prev_counted, slot stamp) of a ticket this
    service issued (its MAC checked); None for any other string. Replay takes the
    tickets of its records as they are: they were checked when first applied (and
    records from before MACs hold tickets without one)."""
    if st.replaying:
        found = ticket_fields(ticket)
    else:
        found = decode_ticket(ticket, st.k0, st.k1, encode_in_use)
    if found is None or found[1] >= len(st.by_index):
        return None
    return found


def link_retention(st: PolicyState) -> int:
    p = st.profile
    return max(p.idempotency_ms, p.window_ms)


def linked_ticket(st: PolicyState, message_id: str, now: int) -> str:
    found = st.links.get(message_id)
    return found[0] if found is not None and found[1] > now else ""


def link(st: PolicyState, message_id: str, ticket: str, now: int) -> None:
    """Remember message id → ticket; expired links, then the oldest, make room.

    Links change only here (and in restore), at the times of journaled send
    results, so a replay rebuilds exactly the same links; a lookup checks the
    expiry itself, so an expired link never applies even before it is dropped.
    """
    links, order = st.links, st.link_order
    cap = st.profile.message_links
    while order and (order[0][0] <= now or len(links) >= cap):
        until, old = order.popleft()
        found = links.get(old)
        if found is not None and found[1] == until:
            del links[old]
    until = now + link_retention(st)
    links[message_id] = (ticket, until)
    order.append((until, message_id))


def on_delivery_status(st: PolicyState, e: ev.SendResult, now: int) -> tuple[ApplyResult, bool]:
    """SENT, DELIVERED or READ: link Meta's message id to the ticket when both are named."""
    name = ev.SendStatus(e.status).name.lower()
    mid = e.message_id
    ticket = ticket_of(st, e, now) if mid else ""
    if not ticket:
        return ApplyResult(True, f"{name}: nothing to do"), False
    if not isinstance(mid, str) or len(mid) > MAX_KEY_LEN:
        raise InvalidArgument(
            "message_id", f"message_id: must be a string of at most {MAX_KEY_LEN} characters"
        )
    if ticket_numbers(st, ticket) is None:
        return ApplyResult(False, f"unknown or invalid ticket {ticket!r}"), False
    if st.profile.message_links == 0:
        return ApplyResult(True, f"{name}: nothing to do (message links are off)"), False
    found = st.links.get(mid)
    if found is not None and found[1] > now:
        if found[0] == ticket:
            return ApplyResult(True, f"{name}: message {mid} already linked"), False
        return ApplyResult(False, f"message {mid} is already linked to ticket {found[0]!r}"), False
    link(st, mid, ticket, now)
    return ApplyResult(True, f"{name}: message {mid} linked to ticket {ticket}"), True


def on_send_result(st: PolicyState, e: ev.SendResult, now: int) -> tuple[ApplyResult, bool]:
    if int(e.status) not in _SEND_STATUSES:
        raise InvalidArgument("status", f"status: unknown value {e.status!r}")
    if e.status != ev.SendStatus.FAILED:
        return on_delivery_status(st, e, now)
    dedupe = f"st:{e.message_id}" if e.message_id else ""
    if dedupe and dedupe in st.seen:
        return ApplyResult(False, f"message {e.message_id} already applied"), False
    decoded: tuple[int, int, int, int, int] | None = None
    sender: Sender | None = None
    ticket = ticket_of(st, e, now)
    linked = False
    if not ticket and e.message_id:
        # A webhook status names Meta's message id only: the ticket it was linked to.
        ticket = linked_ticket(st, e.message_id, now)
        linked = bool(ticket)
    if ticket:
        decoded = ticket_numbers(st, ticket)
        if decoded is None:
            return ApplyResult(False, f"unknown or invalid ticket {ticket!r}"), False
        sender = st.by_index[decoded[1]]
        if linked and e.sender_id and e.sender_id != sender.id:
            return ApplyResult(
                False,
                f"message {e.message_id} was sent by sender {sender.id!r}, "
                f"not {e.sender_id!r}: nothing released",
            ), False
        rkey = decoded[2]
    else:
        sender = st.senders.get(e.sender_id)
        if sender is None:
            return ApplyResult(False, f"unknown sender {e.sender_id!r}"), False
        rkey = aliases.recipient_of(st, e.recipient, "recipient")
    done = _act_on_failure(st, sender, rkey, decoded, e.meta_error_code, now)
    if e.meta_error_code in st.profile.template_hold_codes:
        template = e.template_id or _bound_template(sender, e.idempotency_key)
        held = hold_template(st, sender, template, e.meta_error_code, now) if template else ""
        if held:
            done.append(held)
    if not done:
        if not ticket and e.message_id:
            return ApplyResult(
                False,
                f"no ticket linked to message {e.message_id}: nothing to release "
                "(a send result naming both ticket and message_id links them)",
            ), False
        return ApplyResult(False, "nothing to release (already released or relied on)"), False
    if dedupe:
        seen_once(st, dedupe, now)
    detail = ", ".join(done)
    if linked:
        detail += f" (ticket {ticket}, linked to message {e.message_id})"
    return ApplyResult(True, detail), True


def _bound_template(sender: Sender, key: str) -> str:
    """The template the idempotency ``key`` of ``sender`` is bound to ("" if none)."""
    first = sender.idem.get(key) if key else None
    return (first[rec.E_TEMPLATE] or "") if first is not None else ""


def _act_on_failure(
    st: PolicyState,
    sender: Sender,
    rkey: int,
    decoded: tuple[int, int, int, int, int] | None,
    code: int,
    now: int,
) -> list[str]:
    """What a failed send changes (its slot back, unless Meta's error keeps it; what
    the error asks for): a phrase per change made."""
    done: list[str] = []
    scope = sender.scope.index
    if decoded is not None and code not in st.profile.keep_slot_codes:
        _, _, _, prev, slot = decoded
        if st.engine.release(scope, rkey, slot, prev, sender.engine_index):
            done.append("slot released")
            reach = sender.scope.reach
            if rkey in reach:  # its latest counted time is the one before, as in the engine
                if prev == NEVER:
                    del reach[rkey]
                else:
                    reach[rkey] = prev
    if code == MetaError.THROUGHPUT:
        done.append(slow_down(st, sender, now))
    elif code == MetaError.PAIR_RATE and st.profile.pair_retry_max_exponent > 0:
        done.append(hold_pair(st, sender, rkey, now))
    elif code == MetaError.OUTSIDE_WINDOW:
        st.engine.close_window(sender.engine_index, rkey)
        done.append("window closed")
    elif code == MetaError.OPTED_OUT:
        st.engine.set_opt_out(scope, rkey, True)
        done.append("recipient opted out of marketing")
    elif code == MetaError.SPAM_RATE_LIMIT and st.profile.spam_hold_ms > 0:
        until = now + st.profile.spam_hold_ms
        if until > sender.spam_held_until:
            sender.spam_held_until = until
            refresh(st, sender, now)
        done.append(f"business-initiated sends held until {sender.spam_held_until}")
    elif code == MetaError.ECOSYSTEM_ENGAGEMENT and st.profile.ecosystem_backoff_ms > 0:
        st.marketing_back_off[(scope, rkey)] = now + st.profile.ecosystem_backoff_ms
        done.append("marketing to recipient held back")
    return done


def slow_down(st: PolicyState, sender: Sender, now: int) -> str:
    """A FAILED 130429 (throughput): the number's burst credit is spent, nothing is
    admitted from it for the profile's backoff, and its rate is halved (at most
    ``throughput_slow_steps`` times); each halving is undone after
    ``throughput_slow_recover_ms`` without another 130429 (``tiers.maintain``)."""
    p = st.profile
    if p.throughput_slow_steps > 0:
        sender.slow_level = min(sender.slow_level + 1, p.throughput_slow_steps)
        sender.slow_until = now + p.throughput_slow_recover_ms
        refresh(st, sender, now)
    st.engine.slow_throughput(sender.engine_index, now, p.throughput_backoff_ms)
    if p.throughput_slow_steps == 0:
        return "throughput paused"
    return f"throughput slowed to {effective_mps(st, sender)} msg/s"


def hold_pair(st: PolicyState, sender: Sender, rkey: int, now: int) -> str:
    """A FAILED 131056 (pair rate): nothing more to that recipient from the number
    for base**X seconds (Meta's retry advice, 4^X), X the pair's consecutive
    131056 failures, at most the profile's bound. A failure is consecutive while
    the previous hold has not been over for as long as it lasted; else X is 1."""
    p = st.profile
    key = (sender.engine_index, rkey)
    run = st.pair_failures.get(key)
    x = min(run[0] + 1, p.pair_retry_max_exponent) if run and now < 2 * run[2] - run[1] else 1
    until = now + p.pair_retry_base_s**x * 1000
    st.pair_failures[key] = (x, now, until)
    st.engine.hold_pair(sender.engine_index, rkey, until)
    return f"pair held until {until} ({p.pair_retry_base_s}^{x} s)"


def on_opt_out(st: PolicyState, e: ev.OptOut) -> ApplyResult:
    rkey = aliases.recipient_of(st, e.recipient, "recipient")
    scopes: dict[int, LimitScope] = {}
    if e.sender_id:
        s = st.senders.get(e.sender_id)
        if s is None:
            return ApplyResult(False, f"unknown sender {e.sender_id!r}")
        scopes[s.scope.index] = s.scope
    if e.portfolio_id:
        for s in st.by_index:
            if s.portfolio_id == e.portfolio_id:
                scopes[s.scope.index] = s.scope
        if not scopes:
            return ApplyResult(False, f"unknown portfolio {e.portfolio_id!r}")
    if not scopes:
        return ApplyResult(False, "opt_out names neither a sender nor a portfolio")
    for idx in scopes:
        st.engine.set_opt_out(idx, rkey, e.opted_out)
    what = "opted out of" if e.opted_out else "opted in to"
    return ApplyResult(True, f"{e.recipient} {what} marketing in {len(scopes)} scope(s)")


def find_template(st: PolicyState, template_id: str, name: str = "") -> Template | None:
    t = st.templates.get(template_id) if template_id else None
    if t is None and template_id:
        t = st.template_names.get(template_id)
    if t is None and name:
        t = st.template_names.get(name) or st.templates.get(name)
    return t


def check_template_update(st: PolicyState, u: ev.TemplateUpdate) -> None:
    """Its fields, and room for it when it registers a template (:class:`CapReached`)."""
    if not u.template_id:
        raise InvalidArgument("template_id", "template_id: is required")
    caps = st.caps
    capped = st.capped
    for name in ("template_id", "template_name"):
        value = getattr(u, name)
        check_length(capped, name, value, caps.template_id_length, "max_template_id_length")
    check_length(capped, "waba_id", u.waba_id, caps.id_length, "max_id_length")
    t = find_template(st, u.template_id, u.template_name)
    if t is None:
        template_room(st, u.waba_id)
    elif u.waba_id and u.waba_id != t.waba_id:
        template_room(st, u.waba_id, moved=True)
    if int(u.status) not in _TEMPLATE_STATUSES:
        raise InvalidArgument("status", f"status: unknown value {u.status!r}")
    if u.paused_until_unix_ms < 0:
        raise InvalidArgument("paused_until_unix_ms", "paused_until_unix_ms: must be >= 0")


def template_room(st: PolicyState, waba_id: str, moved: bool = False) -> None:
    """:class:`CapReached` (counted) unless one more template fits in all
    (``max_templates``; not asked when one ``moved`` from another WABA) and in
    WABA ``waba_id`` (``max_templates_per_waba``)."""
    caps = st.caps
    known = len(st.templates)
    if not moved and known >= caps.templates:
        st.capped["max_templates"] += 1
        raise CapReached(
            "template_id", "max_templates", caps.templates, f"{known} templates are known"
        )
    in_waba = st.waba_templates[waba_id]
    if in_waba >= caps.templates_per_waba:
        st.capped["max_templates_per_waba"] += 1
        raise CapReached(
            "waba_id" if moved else "template_id",
            "max_templates_per_waba",
            caps.templates_per_waba,
            f"{in_waba} templates of WABA {waba_id!r} are known",
        )


def on_template_update(st: PolicyState, u: ev.TemplateUpdate, now: int) -> ApplyResult:
    """Apply a template update whose fields passed ``_check_template_update``."""
    status = int(u.status)
    t = find_template(st, u.template_id, u.template_name)
    S = ev.TemplateStatus
    if t is not None and t.disabled and status == S.UNPAUSED:
        return ApplyResult(False, f"template {t.id} is disabled; UNPAUSED does not apply")
    # A pause is dated by Meta's time of the event (the service's time without one).
    start = u.at_unix_ms if u.at_unix_ms > 0 else now
    if status == S.PAUSED and t is not None and t.pause_count:
        # The pause already counted, redelivered (possibly after a restart, when
        # the webhook de-duplication memory is gone): it must not count again.
        given = _pause_end(st, u, start)
        paused_now = t.status == S.PAUSED and now < t.paused_until
        if (given and given == t.pause_end) or (
            start == t.pause_start and (paused_now or not given)
        ):
            return ApplyResult(
                False,
                f"template {t.id}: pause {t.pause_count} (from {t.pause_start} until "
                f"{t.pause_end}) already applied",
            )
    created = t is None
    if t is None:
        t = Template(u.template_id, u.template_name, u.waba_id)
        st.add_template(t)
    if u.template_name and u.template_name != t.name:
        t.name = u.template_name
    if t.name:
        st.template_names[t.name] = t
    if u.waba_id and u.waba_id != t.waba_id:
        st.move_template(t, u.waba_id)
    if status == S.PAUSED:
        return _pause(st, t, u, start, now)
    if status in (S.UNPAUSED, S.APPROVED):
        t.status = int(S.APPROVED)
        t.paused_until = 0
        t.pause_reason = ""
        return ApplyResult(True, f"template {t.id} {'registered' if created else 'active'}")
    t.status = status
    t.paused_until = 0
    t.pause_reason = S(status).name
    return ApplyResult(True, f"template {t.id} {S(status).name.lower()}")


#: Meta's pause titles (``other_info.title``), in the order of ``pause_hours``.
PAUSE_TITLES: Final = ("FIRST_PAUSE", "SECOND_PAUSE")


def _pause(st: PolicyState, t: Template, u: ev.TemplateUpdate, start: int, now: int) -> ApplyResult:
    """A PAUSED update: its end is the one given, else its title's duration, else
    the profile's rule for a pause without a title (held until lifted, or the next
    ``pause_hours``)."""
    p = st.profile
    title = u.pause_reason.strip().upper()
    given = _pause_end(st, u, start)
    if now < t.paused_until and not given:
        return ApplyResult(True, f"template {t.id} already paused")
    t.pause_count += 1
    t.pause_start = start
    t.pause_reason = title or "PAUSED"
    if p.disable_after_pauses and t.pause_count >= p.disable_after_pauses:
        t.status = int(ev.TemplateStatus.DISABLED)
        t.paused_until = 0
        t.pause_end = given
        return ApplyResult(True, f"template {t.id} disabled after {t.pause_count} pauses")
    t.status = int(ev.TemplateStatus.PAUSED)
    if given:
        t.paused_until = given
    elif p.untitled_pause == "until_lifted":
        t.paused_until = HELD
    else:
        t.paused_until = min(start, now) + p.pause_ms[min(t.pause_count, len(p.pause_ms)) - 1]
    t.pause_end = t.paused_until
    if t.held:
        return ApplyResult(True, f"template {t.id} paused until Meta lifts it (no end known)")
    return ApplyResult(True, f"template {t.id} paused until {t.paused_until}")


def _pause_end(st: PolicyState, u: ev.TemplateUpdate, start: int) -> int:
    """A PAUSED update's end: the one given, else its title's ``pause_hours``
    duration from ``start``; 0 when neither is known."""
    title = u.pause_reason.strip().upper()
    if u.paused_until_unix_ms or title not in PAUSE_TITLES:
        return u.paused_until_unix_ms
    durations = st.profile.pause_ms
    return start + durations[min(PAUSE_TITLES.index(title), len(durations) - 1)]


def hold_template(st: PolicyState, sender: Sender, template: str, code: int, now: int) -> str:
    """A send with ``template`` failed with Meta's ``code`` (paused, disabled): the
    template is held until Meta's UNPAUSED or APPROVED. A phrase, or "" when the
    template is disabled or paused already (a pause with a known end explains
    the failure and ends as Meta said), or unknown with no room for it under the
    template caps (the refusal is counted)."""
    t = find_template(st, template)
    if t is None:
        try:
            template_room(st, sender.waba_id)
        except CapReached:
            return ""  # counted; the send result applies without the hold
        t = Template(template, "", sender.waba_id)
        st.add_template(t)
    if t.disabled or now < t.paused_until:
        return ""
    t.status = int(ev.TemplateStatus.PAUSED)
    t.paused_until = HELD
    t.pause_reason = f"FAILED {code}"
    return f"template {t.id} held until Meta lifts it"


def on_template_quality(st: PolicyState, u: ev.TemplateQualityUpdate) -> ApplyResult:
    t = find_template(st, u.template_id, u.template_name)
    if t is None:
        return ApplyResult(False, f"unknown template {u.template_id or u.template_name!r}")
    t.quality = u.new_quality
    return ApplyResult(True, f"template {t.id} quality {u.new_quality}")
