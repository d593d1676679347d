"""One reader per Meta webhook field: each change's value → events and ignored parts.

What each change becomes:

- ``messages`` / ``messages[]``: an :class:`InboundMessage` from
  ``metadata.phone_number_id`` (the sender) and ``from`` (the recipient). A
  ``referral`` with a ``ctwa_clid`` (a click-to-WhatsApp ad click) is a
  ``CTWA_AD`` entry point, ``source_type`` ``ad`` is too; ``post`` (a Page
  post or its call-to-action) is ``PAGE_CTA``; anything else is ``ORGANIC``.
  Only what a user writes opens a window (:data:`WINDOW_TYPES`); ``system``,
  ``unsupported`` and ``request_welcome`` messages do not, because a window
  tiergate believes open and Meta does not would admit a free-form message
  Meta refuses (131047).
- ``messages`` / ``statuses[]``: a :class:`SendResult` carrying Meta's message
  id, the sender and the recipient (a status names Meta's message id, never a
  tiergate ticket, so the policy layer matches it), the first
  ``errors[].code`` of a failure.
- ``phone_number_quality_update`` → :class:`QualityUpdate`;
  ``business_capability_update`` → :class:`CapabilityUpdate`;
  ``account_update`` → :class:`AccountUpdate`;
  ``message_template_status_update`` → :class:`TemplateUpdate`;
  ``message_template_quality_update`` → :class:`TemplateQualityUpdate`;
  ``user_preferences`` (marketing ``stop`` / ``resume``) → :class:`OptOut`;
  other values (``signup``) leave the opt-out state as it is.

Payload timestamps are Unix seconds (strings in ``messages``, numbers
elsewhere) and become Unix milliseconds. Every event carries a
de-duplication key (Meta redelivers webhooks): the message id for inbound
messages, message id + status for statuses, and a digest of the change for
everything else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from tiergate.policy.events import (
    AccountUpdate,
    CapabilityUpdate,
    EntryPoint,
    Event,
    InboundMessage,
    OptOut,
    QualityUpdate,
    SendResult,
    SendStatus,
    TemplateQualityUpdate,
    TemplateStatus,
    TemplateUpdate,
)

from .reading import (
    WebhookError,
    as_int,
    as_list,
    as_object,
    as_str,
    ident,
    is_phone,
    is_recipient,
    optional_str,
    required,
    required_ident,
    required_str,
    required_unix_seconds,
    unix_instant,
    unix_seconds,
)

# Message types a WhatsApp user sends: each opens or extends the window.
WINDOW_TYPES: Final = frozenset(
    {
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "order",
        "reaction",
    }
)
_NO_WINDOW_REASONS: Final[Mapping[str, str]] = {
    "system": "system message (e.g. the user changed number) comes from WhatsApp, "
    "not the user: it opens no window",
    "unsupported": "message type Meta could not deliver (unsupported): "
    "tiergate opens no window for it",
    "unknown": "message type Meta could not deliver (unknown): tiergate opens no window for it",
    "request_welcome": "the user opened the chat without writing: tiergate opens no window for it",
}

_SEND_STATUSES: Final[Mapping[str, SendStatus]] = {
    "sent": SendStatus.SENT,
    "delivered": SendStatus.DELIVERED,
    "read": SendStatus.READ,
    "failed": SendStatus.FAILED,
}

_TEMPLATE_EVENTS: Final[Mapping[str, TemplateStatus]] = {
    "APPROVED": TemplateStatus.APPROVED,
    "REJECTED": TemplateStatus.REJECTED,
    "PAUSED": TemplateStatus.PAUSED,
    "UNPAUSED": TemplateStatus.UNPAUSED,
    "REINSTATED": TemplateStatus.UNPAUSED,
    "DISABLED": TemplateStatus.DISABLED,
}

# account_update events that change what a sender may send; the rest
# (partner, pricing, verification, location …) are reported as ignored.
ACCOUNT_EVENTS: Final = frozenset(
    {"ACCOUNT_RESTRICTION", "DISABLED_UPDATE", "ACCOUNT_VIOLATION", "ACCOUNT_DELETED"}
)

# Numeric messaging limits (business_capability_update) in Meta's tier names.
_LIMIT_NAMES: Final[Mapping[int, str]] = {
    50: "TIER_50",
    250: "TIER_250",
    1000: "TIER_1K",
    2000: "TIER_2K",
    10000: "TIER_10K",
    100000: "TIER_100K",
    -1: "TIER_UNLIMITED",
}
# Limit words other than tier names: Meta's change log names the limit
# "UNLIMITED"; TIER_NOT_SET says no limit is set yet.
_LIMIT_WORDS: Final[Mapping[str, str]] = {"UNLIMITED": "TIER_UNLIMITED", "TIER_NOT_SET": ""}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One policy event from a webhook, with where it came from."""

    field: str  # the webhook change field, e.g. "messages"
    path: str  # e.g. "entry[0].changes[1].value.statuses[0]"
    key: str  # de-duplication key: equal keys describe the same fact
    event: Event


@dataclass(frozen=True, slots=True)
class IgnoredPart:
    """A part of a webhook tiergate does not apply, and why."""

    field: str
    path: str
    reason: str


@dataclass(slots=True)
class Collector:
    """What one body yields, in order: its events and the parts left alone."""

    pause_ms: Mapping[str, int]
    events: list[ParsedEvent] = field(default_factory=list)
    ignored: list[IgnoredPart] = field(default_factory=list)

    def event(self, fld: str, path: str, key: str, event: Event) -> None:
        self.events.append(ParsedEvent(fld, path, key, event))

    def ignore(self, fld: str, path: str, reason: str) -> None:
        self.ignored.append(IgnoredPart(fld, path, reason))

    def mark(self) -> tuple[int, int]:
        """Where a part's output starts, so an unreadable part can be taken back."""
        return len(self.events), len(self.ignored)

    def unreadable(self, fld: str, path: str, mark: tuple[int, int], exc: WebhookError) -> None:
        """Drop what the part at ``path`` yielded since ``mark``; report it ignored."""
        del self.events[mark[0] :]
        del self.ignored[mark[1] :]
        self.ignore(fld, path, f"unknown or incomplete shape, not applied: {exc}")


@dataclass(frozen=True, slots=True)
class Change:
    """One change of an entry, with the entry's id and time it inherits."""

    field: str
    path: str  # path of the change's value
    waba_id: str  # entry.id
    at_ms: int  # entry.time in ms, 0 when absent
    raw_time: object  # entry.time as sent
    value: dict[str, object]

    @property
    def key(self) -> str:
        """De-duplication key: a digest of the whole change (field, entry id and time, value)."""
        text = json.dumps(
            [self.field, self.waba_id, self.raw_time, self.value],
            sort_keys=True,
            separators=(",", ":"),
        )
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return f"{self.field}:{self.waba_id}:{digest}"


# --- messages -----------------------------------------------------------------


def _messages(out: Collector, value: dict[str, object], ch: Change) -> None:
    messages = value.get("messages")
    statuses = value.get("statuses")
    errors = value.get("errors")
    sender = ""
    if messages is not None or statuses is not None:
        sender = _phone_number_id(value, ch.path)
    if messages is None and statuses is None and errors is None:
        out.ignore(ch.field, ch.path, "no messages, statuses or errors in the change")
    if errors is not None:
        for epath, raw in _items(out, ch, errors, "errors"):
            mark = out.mark()
            try:
                code, title = _error(raw, epath)
            except WebhookError as exc:
                out.unreadable(ch.field, epath, mark, exc)
                continue
            out.ignore(ch.field, epath, f"Meta reported error {code} ({title}) for the number")
    if messages is not None:
        for mpath, raw in _items(out, ch, messages, "messages"):
            mark = out.mark()
            try:
                _message(out, raw, mpath, sender, ch)
            except WebhookError as exc:
                out.unreadable(ch.field, mpath, mark, exc)
    if statuses is not None:
        for spath, raw in _items(out, ch, statuses, "statuses"):
            mark = out.mark()
            try:
                _status(out, raw, spath, sender, ch)
            except WebhookError as exc:
                out.unreadable(ch.field, spath, mark, exc)


def _items(out: Collector, ch: Change, raw: object, key: str) -> list[tuple[str, object]]:
    """The items of a list field of ``ch``'s value with their paths; a value that
    is not a list is reported unreadable and yields none."""
    path = f"{ch.path}.{key}"
    if not isinstance(raw, list):
        out.unreadable(ch.field, path, out.mark(), WebhookError(path, "must be a list"))
        return []
    return [(f"{path}[{k}]", item) for k, item in enumerate(raw)]


def _phone_or_user_id(obj: dict[str, object], phone_key: str, user_key: str, path: str) -> str:
    """The user's phone number (wa_id), or for a user who shares none their
    business-scoped user ID."""
    phone = optional_str(obj, phone_key, path)
    if is_phone(phone):
        return phone
    return optional_str(obj, user_key, path) or phone


def _message(out: Collector, raw: object, path: str, sender: str, ch: Change) -> None:
    msg = as_object(raw, path)
    message_id = required_str(msg, "id", path)
    mtype = required_str(msg, "type", path)
    at_ms = required_unix_seconds(msg, "timestamp", path)
    user = _phone_or_user_id(msg, "from", "from_user_id", path)
    entry_point = EntryPoint.ORGANIC
    referral = msg.get("referral")
    if referral is not None:
        rpath = f"{path}.referral"
        ref = as_object(referral, rpath)
        source_type = optional_str(ref, "source_type", rpath).strip().lower()
        if optional_str(ref, "ctwa_clid", rpath) or source_type == "ad":
            entry_point = EntryPoint.CTWA_AD
        elif source_type == "post":
            entry_point = EntryPoint.PAGE_CTA
    _first_error_code(msg, path)

    if mtype not in WINDOW_TYPES:
        reason = _NO_WINDOW_REASONS.get(
            mtype, f"message type {mtype!r} opens no customer service window"
        )
        out.ignore(ch.field, path, reason)
        return
    why = _no_phone(
        user, "'from'", "message has no 'from' phone number (wa_id) or from_user_id for a window"
    )
    if why:
        out.ignore(ch.field, path, why)
        return
    event = InboundMessage(
        sender_id=sender,
        recipient=user,
        at_unix_ms=at_ms,
        entry_point=entry_point,
        message_id=message_id,
        user_id=_user_id(ch, user, optional_str(msg, "from_user_id", path)),
    )
    out.event(ch.field, path, f"message:{sender}:{message_id}", event)


def _user_id(ch: Change, phone: str, given: str) -> str:
    """The business-scoped user ID a change names beside the phone number
    ``phone`` (the item's own ``*_user_id``, else the ``contacts`` entry with that
    ``wa_id``); "" when there is none or ``phone`` is not a phone number."""
    if not is_phone(phone):
        return ""
    if given:
        return given
    contacts = ch.value.get("contacts")
    for contact in contacts if isinstance(contacts, list) else ():
        if isinstance(contact, dict) and contact.get("wa_id") == phone:
            user_id = contact.get("user_id")
            return user_id if isinstance(user_id, str) else ""
    return ""


def _no_phone(value: str, name: str, missing: str) -> str:
    """Why ``value`` (the field ``name``) names no recipient (a phone number, wa_id,
    or a business-scoped user ID); "" when it does."""
    if not value:
        return missing
    if not is_recipient(value):
        return f"{name} {value!r} is not a phone number (wa_id) nor a business-scoped user ID"
    return ""


def _status(out: Collector, raw: object, path: str, sender: str, ch: Change) -> None:
    st = as_object(raw, path)
    message_id = required_str(st, "id", path)
    status = required_str(st, "status", path)
    at_ms = required_unix_seconds(st, "timestamp", path)
    recipient = _phone_or_user_id(st, "recipient_id", "recipient_user_id", path)
    code = _first_error_code(st, path)
    send_status = _SEND_STATUSES.get(status)
    if send_status is None:
        out.ignore(ch.field, path, f"message status {status!r} is not one tiergate tracks")
        return
    why = _no_phone(
        recipient,
        "recipient_id",
        "status has no recipient_id or recipient_user_id to match a send with",
    )
    if why:
        out.ignore(ch.field, path, why)
        return
    event = SendResult(
        status=send_status,
        sender_id=sender,
        recipient=recipient,
        meta_error_code=code if send_status is SendStatus.FAILED else 0,
        at_unix_ms=at_ms,
        message_id=message_id,
        user_id=_user_id(ch, recipient, optional_str(st, "recipient_user_id", path)),
    )
    out.event(ch.field, path, f"status:{sender}:{message_id}:{status}", event)


def _phone_number_id(value: dict[str, object], path: str) -> str:
    """The business phone number (the sender) a change's ``metadata`` names."""
    meta = as_object(required(value, "metadata", path), f"{path}.metadata")
    return ident(
        required(meta, "phone_number_id", f"{path}.metadata"), f"{path}.metadata.phone_number_id"
    )


def _first_error_code(obj: dict[str, object], path: str) -> int:
    """Reads every item of ``obj``'s ``errors`` (a malformed one refuses the body);
    the first one's code, 0 when there is none."""
    code = 0
    errors = obj.get("errors")
    if errors is not None:
        for k, raw_error in enumerate(as_list(errors, f"{path}.errors")):
            error_code, _ = _error(raw_error, f"{path}.errors[{k}]")
            if k == 0:
                code = error_code
    return code


def _error(raw: object, path: str) -> tuple[int, str]:
    err = as_object(raw, path)
    code = as_int(required(err, "code", path), f"{path}.code")
    title = optional_str(err, "title", path) or optional_str(err, "message", path)
    return code, title


# --- account, capability, quality ---------------------------------------------


def _quality(out: Collector, value: dict[str, object], ch: Change) -> None:
    display = required_ident(value, "display_phone_number", ch.path)
    event = required_str(value, "event", ch.path)
    update = QualityUpdate(
        display_phone_number=display,
        event=event,
        current_limit=_limit(value, "current_limit", ch.path),
        old_limit=_limit(value, "old_limit", ch.path),
        max_daily_conversations_per_business=_limit(
            value, "max_daily_conversations_per_business", ch.path
        ),
        at_unix_ms=ch.at_ms,
    )
    out.event(ch.field, ch.path, ch.key, update)


def _capability(out: Collector, value: dict[str, object], ch: Change) -> None:
    limit = _limit(value, "max_daily_conversations_per_business", ch.path)
    if not limit:
        # Deprecated (February 2026) per-phone name of the same portfolio limit.
        limit = _limit(value, "max_daily_conversation_per_phone", ch.path)
    phones_raw = value.get("max_phone_numbers_per_business")
    phones = (
        0 if phones_raw is None else as_int(phones_raw, f"{ch.path}.max_phone_numbers_per_business")
    )
    if not limit:
        out.ignore(ch.field, ch.path, "business_capability_update carries no messaging limit")
        return
    update = CapabilityUpdate(
        waba_id=ch.waba_id,
        max_daily_conversations_per_business=limit,
        max_phone_numbers_per_business=phones,
        at_unix_ms=ch.at_ms,
    )
    out.event(ch.field, ch.path, ch.key, update)


def _account(out: Collector, value: dict[str, object], ch: Change) -> None:
    event = required_str(value, "event", ch.path)
    types: list[str] = []
    expiries: list[int] = []
    messaging_expiry = 0
    any_expiry = 0
    info = value.get("restriction_info")
    if info is not None:
        for k, raw in enumerate(as_list(info, f"{ch.path}.restriction_info")):
            rpath = f"{ch.path}.restriction_info[{k}]"
            item = as_object(raw, rpath)
            rtype = required_str(item, "restriction_type", rpath)
            raw_exp = item.get("expiration")
            expiry = 0 if raw_exp is None else unix_instant(raw_exp, f"{rpath}.expiration")
            types.append(rtype)
            expiries.append(expiry)
            any_expiry = max(any_expiry, expiry)
            if "MESSAGING" in rtype:
                messaging_expiry = max(messaging_expiry, expiry)
    ban_state = ""
    ban = value.get("ban_info")
    if ban is not None:
        bpath = f"{ch.path}.ban_info"
        ban_state = optional_str(as_object(ban, bpath), "waba_ban_state", bpath)
    if event not in ACCOUNT_EVENTS:
        out.ignore(ch.field, ch.path, f"account_update event {event!r} does not affect sending")
        return
    update = AccountUpdate(
        waba_id=ch.waba_id,
        event=event,
        restriction_types=tuple(types),
        # A messaging restriction's own expiry wins over, e.g., a longer
        # restriction on adding phone numbers.
        expires_at_unix_ms=messaging_expiry or any_expiry,
        restriction_expiries=tuple(expiries),
        ban_state=ban_state,
        at_unix_ms=ch.at_ms,
    )
    out.event(ch.field, ch.path, ch.key, update)


# --- templates ----------------------------------------------------------------


def _template_status(out: Collector, value: dict[str, object], ch: Change) -> None:
    event = required_str(value, "event", ch.path)
    template_id = required_ident(value, "message_template_id", ch.path)
    name = optional_str(value, "message_template_name", ch.path)
    reason = optional_str(value, "reason", ch.path)
    title = ""
    other = value.get("other_info")
    if other is not None:
        opath = f"{ch.path}.other_info"
        title = optional_str(as_object(other, opath), "title", opath)
    status = _TEMPLATE_EVENTS.get(event)
    if status is None:
        out.ignore(ch.field, ch.path, f"template event {event!r} does not change what may be sent")
        return
    paused_until = 0
    if status is TemplateStatus.PAUSED and ch.at_ms:
        duration = out.pause_ms.get(title) or out.pause_ms.get(reason) or 0
        paused_until = ch.at_ms + duration if duration else 0
    update = TemplateUpdate(
        template_id=template_id,
        status=status,
        template_name=name,
        paused_until_unix_ms=paused_until,
        at_unix_ms=ch.at_ms,
        waba_id=ch.waba_id,
        pause_reason=title if status is TemplateStatus.PAUSED else "",
    )
    out.event(ch.field, ch.path, ch.key, update)


def _template_quality(out: Collector, value: dict[str, object], ch: Change) -> None:
    template_id = required_ident(value, "message_template_id", ch.path)
    new = required_str(value, "new_quality_score", ch.path)
    update = TemplateQualityUpdate(
        template_id=template_id,
        new_quality=new,
        previous_quality=optional_str(value, "previous_quality_score", ch.path),
        template_name=optional_str(value, "message_template_name", ch.path),
        at_unix_ms=ch.at_ms,
        waba_id=ch.waba_id,
    )
    out.event(ch.field, ch.path, ch.key, update)


# --- user preferences -----------------------------------------------------------


def _preferences(out: Collector, value: dict[str, object], ch: Change) -> None:
    sender = _phone_number_id(value, ch.path)
    required(value, "user_preferences", ch.path)
    for path, raw in _items(out, ch, value["user_preferences"], "user_preferences"):
        mark = out.mark()
        try:
            _preference(out, raw, path, sender, ch)
        except WebhookError as exc:
            out.unreadable(ch.field, path, mark, exc)


def _preference(out: Collector, raw: object, path: str, sender: str, ch: Change) -> None:
    pref = as_object(raw, path)
    user = required_str(pref, "wa_id", path)
    category = as_str(required(pref, "category", path), f"{path}.category")
    choice = as_str(required(pref, "value", path), f"{path}.value")
    raw_ts = pref.get("timestamp")
    at_ms = ch.at_ms if raw_ts is None else unix_seconds(raw_ts, f"{path}.timestamp")
    if category != "marketing_messages":
        out.ignore(ch.field, path, f"preference category {category!r} is not marketing")
        return
    if choice not in ("stop", "resume"):
        out.ignore(
            ch.field,
            path,
            f"marketing preference {choice!r} is neither stop nor resume: opt-out state unchanged",
        )
        return
    if not is_phone(user):
        out.ignore(ch.field, path, f"wa_id {user!r} is not a phone number")
        return
    event = OptOut(recipient=user, sender_id=sender, at_unix_ms=at_ms, opted_out=choice == "stop")
    out.event(ch.field, path, f"preference:{sender}:{user}:{choice}:{at_ms}", event)


Handler = Callable[[Collector, dict[str, object], Change], None]
HANDLERS: Final[Mapping[str, Handler]] = {
    "messages": _messages,
    "phone_number_quality_update": _quality,
    "business_capability_update": _capability,
    "account_update": _account,
    "message_template_status_update": _template_status,
    "message_template_quality_update": _template_quality,
    "user_preferences": _preferences,
}

FIELDS: Final = frozenset(HANDLERS)
"""Webhook fields tiergate turns into events; subscribe the app to these."""


def _limit(obj: dict[str, object], key: str, path: str) -> str:
    """A messaging limit in Meta's tier name ("" when the change names none).

    Every form Meta documents: a tier name (``TIER_2K``), the bare
    ``UNLIMITED``, an integer or a string of digits (``2000``; ``-1`` is
    unlimited). ``TIER_NOT_SET`` (a number that has not sent yet) names no
    limit. Other text is passed on as sent; the policy layer declines a tier
    its profile does not know, with a reason.
    """
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return _LIMIT_NAMES.get(value, str(value))
    text = as_str(value, f"{path}.{key}").strip()
    if text.lstrip("-").isdigit() and text.isascii() and len(text) < 20:
        return _LIMIT_NAMES.get(int(text), text)
    name = text.upper()
    return _LIMIT_WORDS.get(name, name if name.startswith("TIER_") else text)
