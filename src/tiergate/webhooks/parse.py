"""Meta webhook bodies → tiergate feedback events.

:func:`parse` reads one whole POST body (object ``whatsapp_business_account``,
any number of entries, each with any number of changes) and returns every
policy event it carries plus every part it leaves alone, each with a reason.
It is all-or-nothing: a body with a wrong shape or type anywhere tiergate
reads raises :class:`WebhookError` naming the path, and the caller applies
nothing from it. Parts tiergate has no use for (other webhook fields, echoes,
message types that open no window, statuses it does not track) are not
errors; they are reported as ignored.

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
from datetime import datetime
from typing import Final, NoReturn

from tiergate.engine.constants import MAX_RECIPIENT_DIGITS
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

OBJECT: Final = "whatsapp_business_account"
DEFAULT_MAX_BYTES: Final = 1 << 20  # 1 MiB; Meta's bodies are a few KiB
DEFAULT_MAX_DEPTH: Final = 64  # Meta's deepest documented path is about 12 levels
# Payload timestamps are seconds; anything at or past this is not (year 5138).
_MAX_SECONDS: Final = 100_000_000_000

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


class WebhookError(ValueError):
    """A webhook body tiergate cannot read; ``field`` is the path of the problem.

    ``str()`` is ``"<path>: <what is wrong>"``. Nothing from such a body is applied.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


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


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    events: tuple[ParsedEvent, ...] = ()
    ignored: tuple[IgnoredPart, ...] = ()


@dataclass(slots=True)
class _Out:
    pause_ms: Mapping[str, int]
    events: list[ParsedEvent] = field(default_factory=list)
    ignored: list[IgnoredPart] = field(default_factory=list)

    def event(self, fld: str, path: str, key: str, event: Event) -> None:
        self.events.append(ParsedEvent(fld, path, key, event))

    def ignore(self, fld: str, path: str, reason: str) -> None:
        self.ignored.append(IgnoredPart(fld, path, reason))


@dataclass(frozen=True, slots=True)
class _Change:
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


def parse(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    pause_ms: Mapping[str, int] | None = None,
) -> ParsedWebhook:
    """Read a whole webhook body; raise :class:`WebhookError` if any part is malformed.

    ``pause_ms`` maps a template pause title (``FIRST_PAUSE``, ``SECOND_PAUSE``)
    to its duration so a PAUSED event carries its unpause time; without it (or
    for titles it does not name) ``paused_until_unix_ms`` is 0 and the policy
    layer uses its profile's pause duration.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise WebhookError("body", f"must be bytes, got {type(body).__name__}")
    size = len(body)
    if size > max_bytes:
        raise WebhookError("body", f"is {size} bytes, more than the {max_bytes} allowed")
    if size == 0:
        raise WebhookError("body", "is empty")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookError("body", f"is not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        doc: object = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise WebhookError("body", "is nested too deeply") from None
    except ValueError as exc:
        raise WebhookError("body", f"is not JSON: {exc}") from None
    _check_depth(doc, max_depth)

    root = _obj(doc, "body")
    obj = _str(_req(root, "object", ""), "object")
    if obj != OBJECT:
        reason = f"object {obj!r} is not {OBJECT!r}: nothing in it concerns tiergate"
        return ParsedWebhook((), (IgnoredPart("object", "object", reason),))
    out = _Out(pause_ms or {})
    for i, raw_entry in enumerate(_list(_req(root, "entry", ""), "entry")):
        _entry(out, raw_entry, f"entry[{i}]")
    return ParsedWebhook(tuple(out.events), tuple(out.ignored))


# --- envelope -----------------------------------------------------------------


def _entry(out: _Out, raw: object, path: str) -> None:
    entry = _obj(raw, path)
    waba_id = _ident(_req(entry, "id", path), f"{path}.id")
    raw_time = entry.get("time")
    at_ms = 0 if raw_time is None else _seconds(raw_time, f"{path}.time")
    for j, raw_change in enumerate(_list(_req(entry, "changes", path), f"{path}.changes")):
        cpath = f"{path}.changes[{j}]"
        change = _obj(raw_change, cpath)
        fld = _str(_req(change, "field", cpath), f"{cpath}.field")
        handler = _HANDLERS.get(fld)
        if handler is None:
            reason = _OTHER_FIELDS.get(fld, f"webhook field {fld!r} carries nothing tiergate uses")
            out.ignore(fld, cpath, reason)
            continue
        vpath = f"{cpath}.value"
        value = _obj(_req(change, "value", cpath), vpath)
        handler(out, value, _Change(fld, vpath, waba_id, at_ms, raw_time, value))


_OTHER_FIELDS: Final[Mapping[str, str]] = {
    "smb_message_echoes": "echo of a message the business sent from the WhatsApp Business "
    "app: it opens no window and tiergate did not admit it",
}


# --- messages -----------------------------------------------------------------


def _messages(out: _Out, value: dict[str, object], ch: _Change) -> None:
    messages = value.get("messages")
    statuses = value.get("statuses")
    errors = value.get("errors")
    sender = ""
    if messages is not None or statuses is not None:
        meta = _obj(_req(value, "metadata", ch.path), f"{ch.path}.metadata")
        sender = _ident(
            _req(meta, "phone_number_id", f"{ch.path}.metadata"),
            f"{ch.path}.metadata.phone_number_id",
        )
    if errors is not None:
        for k, raw in enumerate(_list(errors, f"{ch.path}.errors")):
            epath = f"{ch.path}.errors[{k}]"
            code, title = _error(raw, epath)
            out.ignore(ch.field, epath, f"Meta reported error {code} ({title}) for the number")
    if messages is None and statuses is None and errors is None:
        out.ignore(ch.field, ch.path, "no messages, statuses or errors in the change")
    if messages is not None:
        for k, raw in enumerate(_list(messages, f"{ch.path}.messages")):
            _message(out, raw, f"{ch.path}.messages[{k}]", sender, ch)
    if statuses is not None:
        for k, raw in enumerate(_list(statuses, f"{ch.path}.statuses")):
            _status(out, raw, f"{ch.path}.statuses[{k}]", sender, ch)


def _message(out: _Out, raw: object, path: str, sender: str, ch: _Change) -> None:
    msg = _obj(raw, path)
    message_id = _req_str(msg, "id", path)
    mtype = _req_str(msg, "type", path)
    at_ms = _req_seconds(msg, "timestamp", path)
    user = _opt_str(msg, "from", path)
    entry_point = EntryPoint.ORGANIC
    referral = msg.get("referral")
    if referral is not None:
        rpath = f"{path}.referral"
        ref = _obj(referral, rpath)
        source_type = _opt_str(ref, "source_type", rpath).strip().lower()
        if _opt_str(ref, "ctwa_clid", rpath) or source_type == "ad":
            entry_point = EntryPoint.CTWA_AD
        elif source_type == "post":
            entry_point = EntryPoint.PAGE_CTA
    errors = msg.get("errors")
    if errors is not None:
        for k, raw_error in enumerate(_list(errors, f"{path}.errors")):
            _error(raw_error, f"{path}.errors[{k}]")

    if mtype not in WINDOW_TYPES:
        reason = _NO_WINDOW_REASONS.get(
            mtype, f"message type {mtype!r} opens no customer service window"
        )
        out.ignore(ch.field, path, reason)
        return
    if not user:
        out.ignore(ch.field, path, "message has no 'from' phone number (wa_id) for a window")
        return
    if not _is_phone(user):
        out.ignore(ch.field, path, f"'from' {user!r} is not a phone number (wa_id)")
        return
    event = InboundMessage(
        sender_id=sender,
        recipient=user,
        at_unix_ms=at_ms,
        entry_point=entry_point,
        message_id=message_id,
    )
    out.event(ch.field, path, f"message:{sender}:{message_id}", event)


def _status(out: _Out, raw: object, path: str, sender: str, ch: _Change) -> None:
    st = _obj(raw, path)
    message_id = _req_str(st, "id", path)
    status = _req_str(st, "status", path)
    at_ms = _req_seconds(st, "timestamp", path)
    recipient = _opt_str(st, "recipient_id", path)
    code = 0
    errors = st.get("errors")
    if errors is not None:
        for k, raw_error in enumerate(_list(errors, f"{path}.errors")):
            error_code, _ = _error(raw_error, f"{path}.errors[{k}]")
            if k == 0:
                code = error_code
    send_status = _SEND_STATUSES.get(status)
    if send_status is None:
        out.ignore(ch.field, path, f"message status {status!r} is not one tiergate tracks")
        return
    if not recipient:
        out.ignore(ch.field, path, "status has no recipient_id to match a send with")
        return
    if not _is_phone(recipient):
        out.ignore(ch.field, path, f"recipient_id {recipient!r} is not a phone number (wa_id)")
        return
    event = SendResult(
        status=send_status,
        sender_id=sender,
        recipient=recipient,
        meta_error_code=code if send_status is SendStatus.FAILED else 0,
        at_unix_ms=at_ms,
        message_id=message_id,
    )
    out.event(ch.field, path, f"status:{sender}:{message_id}:{status}", event)


def _error(raw: object, path: str) -> tuple[int, str]:
    err = _obj(raw, path)
    code = _int(_req(err, "code", path), f"{path}.code")
    title = _opt_str(err, "title", path) or _opt_str(err, "message", path)
    return code, title


# --- account, capability, quality ---------------------------------------------


def _quality(out: _Out, value: dict[str, object], ch: _Change) -> None:
    display = _ident(
        _req(value, "display_phone_number", ch.path), f"{ch.path}.display_phone_number"
    )
    event = _nonempty(_req(value, "event", ch.path), f"{ch.path}.event")
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


def _capability(out: _Out, value: dict[str, object], ch: _Change) -> None:
    limit = _limit(value, "max_daily_conversations_per_business", ch.path)
    if not limit:
        # Deprecated (February 2026) per-phone name of the same portfolio limit.
        limit = _limit(value, "max_daily_conversation_per_phone", ch.path)
    phones_raw = value.get("max_phone_numbers_per_business")
    phones = (
        0 if phones_raw is None else _int(phones_raw, f"{ch.path}.max_phone_numbers_per_business")
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


def _account(out: _Out, value: dict[str, object], ch: _Change) -> None:
    event = _nonempty(_req(value, "event", ch.path), f"{ch.path}.event")
    types: list[str] = []
    messaging_expiry = 0
    any_expiry = 0
    info = value.get("restriction_info")
    if info is not None:
        for k, raw in enumerate(_list(info, f"{ch.path}.restriction_info")):
            rpath = f"{ch.path}.restriction_info[{k}]"
            item = _obj(raw, rpath)
            rtype = _nonempty(_req(item, "restriction_type", rpath), f"{rpath}.restriction_type")
            raw_exp = item.get("expiration")
            expiry = 0 if raw_exp is None else _instant(raw_exp, f"{rpath}.expiration")
            types.append(rtype)
            any_expiry = max(any_expiry, expiry)
            if "MESSAGING" in rtype:
                messaging_expiry = max(messaging_expiry, expiry)
    ban_state = ""
    ban = value.get("ban_info")
    if ban is not None:
        bpath = f"{ch.path}.ban_info"
        ban_state = _opt_str(_obj(ban, bpath), "waba_ban_state", bpath)
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
        ban_state=ban_state,
        at_unix_ms=ch.at_ms,
    )
    out.event(ch.field, ch.path, ch.key, update)


# --- templates ----------------------------------------------------------------


def _template_status(out: _Out, value: dict[str, object], ch: _Change) -> None:
    event = _nonempty(_req(value, "event", ch.path), f"{ch.path}.event")
    template_id = _ident(
        _req(value, "message_template_id", ch.path), f"{ch.path}.message_template_id"
    )
    name = _opt_str(value, "message_template_name", ch.path)
    reason = _opt_str(value, "reason", ch.path)
    title = ""
    other = value.get("other_info")
    if other is not None:
        opath = f"{ch.path}.other_info"
        title = _opt_str(_obj(other, opath), "title", opath)
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
    )
    out.event(ch.field, ch.path, ch.key, update)


def _template_quality(out: _Out, value: dict[str, object], ch: _Change) -> None:
    template_id = _ident(
        _req(value, "message_template_id", ch.path), f"{ch.path}.message_template_id"
    )
    new = _nonempty(_req(value, "new_quality_score", ch.path), f"{ch.path}.new_quality_score")
    update = TemplateQualityUpdate(
        template_id=template_id,
        new_quality=new,
        previous_quality=_opt_str(value, "previous_quality_score", ch.path),
        template_name=_opt_str(value, "message_template_name", ch.path),
        at_unix_ms=ch.at_ms,
        waba_id=ch.waba_id,
    )
    out.event(ch.field, ch.path, ch.key, update)


# --- user preferences -----------------------------------------------------------


def _preferences(out: _Out, value: dict[str, object], ch: _Change) -> None:
    meta = _obj(_req(value, "metadata", ch.path), f"{ch.path}.metadata")
    sender = _ident(
        _req(meta, "phone_number_id", f"{ch.path}.metadata"),
        f"{ch.path}.metadata.phone_number_id",
    )
    prefs = _list(_req(value, "user_preferences", ch.path), f"{ch.path}.user_preferences")
    for k, raw in enumerate(prefs):
        path = f"{ch.path}.user_preferences[{k}]"
        pref = _obj(raw, path)
        user = _nonempty(_req(pref, "wa_id", path), f"{path}.wa_id")
        category = _str(_req(pref, "category", path), f"{path}.category")
        choice = _str(_req(pref, "value", path), f"{path}.value")
        raw_ts = pref.get("timestamp")
        at_ms = ch.at_ms if raw_ts is None else _seconds(raw_ts, f"{path}.timestamp")
        if category != "marketing_messages":
            out.ignore(ch.field, path, f"preference category {category!r} is not marketing")
            continue
        if choice not in ("stop", "resume"):
            out.ignore(
                ch.field,
                path,
                f"marketing preference {choice!r} is neither stop nor resume: "
                "opt-out state unchanged",
            )
            continue
        if not _is_phone(user):
            out.ignore(ch.field, path, f"wa_id {user!r} is not a phone number")
            continue
        event = OptOut(
            recipient=user, sender_id=sender, at_unix_ms=at_ms, opted_out=choice == "stop"
        )
        out.event(ch.field, path, f"preference:{sender}:{user}:{choice}:{at_ms}", event)


_Handler = Callable[[_Out, dict[str, object], _Change], None]
_HANDLERS: Final[Mapping[str, _Handler]] = {
    "messages": _messages,
    "phone_number_quality_update": _quality,
    "business_capability_update": _capability,
    "account_update": _account,
    "message_template_status_update": _template_status,
    "message_template_quality_update": _template_quality,
    "user_preferences": _preferences,
}

FIELDS: Final = frozenset(_HANDLERS)
"""Webhook fields tiergate turns into events; subscribe the app to these."""


# --- typed readers ----------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _fail(path: str, expected: str, value: object) -> NoReturn:
    raise WebhookError(path, f"must be {expected}, got {_kind(value)}")


def _req(obj: dict[str, object], key: str, path: str) -> object:
    if key not in obj or obj[key] is None:
        raise WebhookError(f"{path}.{key}" if path else key, "is missing")
    return obj[key]


def _obj(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        _fail(path, "an object", value)
    return value


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        _fail(path, "a list", value)
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, "a string", value)
    return value


def _nonempty(value: object, path: str) -> str:
    text = _str(value, path)
    if not text:
        raise WebhookError(path, "must not be empty")
    return text


def _opt_str(obj: dict[str, object], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is str:
        return value
    _fail(f"{path}.{key}", "a string", value)


# Keyed readers for the hot paths (statuses, messages): the path of a field is
# only built when it is needed for an error.


def _req_str(obj: dict[str, object], key: str, path: str) -> str:
    """A required, non-empty string field."""
    value = obj.get(key)
    if type(value) is str and value:
        return value
    return _nonempty(_req(obj, key, path), f"{path}.{key}")


def _req_seconds(obj: dict[str, object], key: str, path: str) -> int:
    """A required Unix-seconds field → Unix milliseconds."""
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= 11 and value.isdigit() and value.isascii():
        return int(value) * 1000
    return _seconds(_req(obj, key, path), f"{path}.{key}")


def _int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, "an integer", value)
    return value


def _ident(value: object, path: str) -> str:
    """An id Meta sends as a string or, for some fields, as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise WebhookError(path, "must not be negative")
        return str(value)
    return _nonempty(value, path)


def _seconds(value: object, path: str) -> int:
    """Unix seconds (a number or a string of digits) → Unix milliseconds."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 12:
            raise WebhookError(path, f"must be Unix seconds, got {value[:40]!r}")
        seconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        _fail(path, "Unix seconds (a number or a string of digits)", value)
    if not 0 <= seconds < _MAX_SECONDS:
        raise WebhookError(path, f"Unix seconds out of range: {seconds}")
    return seconds * 1000


def _instant(value: object, path: str) -> int:
    """Unix seconds, or an ISO 8601 time with a UTC offset → Unix milliseconds."""
    if isinstance(value, str) and not value.isdigit():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise WebhookError(
                path, f"must be Unix seconds or an ISO 8601 time, got {value[:40]!r}"
            ) from None
        if moment.tzinfo is None:
            raise WebhookError(path, "an ISO 8601 time needs a UTC offset")
        return _seconds(int(moment.timestamp()), path)
    return _seconds(value, path)


def _limit(obj: dict[str, object], key: str, path: str) -> str:
    """A messaging limit: Meta's tier name, or a number turned into one."""
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return _LIMIT_NAMES.get(value, str(value))
    text = _str(value, f"{path}.{key}")
    if text.lstrip("-").isdigit() and text.isascii() and len(text) < 20:
        return _LIMIT_NAMES.get(int(text), text)
    return text


def _is_phone(wa_id: str) -> bool:
    """Whether ``recipient_key`` accepts ``wa_id`` (E.164 digits, optional '+')."""
    digits = wa_id[1:] if wa_id[:1] == "+" else wa_id
    return 0 < len(digits) <= MAX_RECIPIENT_DIGITS and digits.isascii() and digits.isdigit()


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _check_depth(doc: object, max_depth: int) -> None:
    """Raise unless ``doc`` nests at most ``max_depth`` containers deep (level by level)."""
    level: list[object] = [doc]
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise WebhookError("body", f"is nested more than {max_depth} levels deep")
        below: list[object] = []
        for node in level:
            if isinstance(node, dict):
                below.extend(c for c in node.values() if isinstance(c, (dict, list)))
            elif isinstance(node, list):
                below.extend(c for c in node if isinstance(c, (dict, list)))
        level = below
