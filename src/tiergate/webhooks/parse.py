"""Meta webhook bodies → tiergate feedback events.

:func:`parse` reads one whole POST body (object ``whatsapp_business_account``,
any number of entries, each with any number of changes) and returns every
policy event it carries plus every part it leaves alone, each with a reason.
A body is refused (:class:`WebhookError` naming the path, nothing applied)
only when it is not a webhook at all: not UTF-8 JSON, nested deeper than
``max_depth``, over ``max_bytes``, not an object naming its ``object``, or
without an ``entry`` list. Inside it, every part stands alone: an entry, a
change, a message, a status or a preference of unknown or incomplete shape
(a missing field, a wrong type) is left out with the reader's reason,
naming the path, and everything else in the body applies — Meta has
published bodies with a mislabeled field, and one odd part must not cost
the good ones. Parts tiergate has no use for (other webhook fields, echoes,
message types that open no window, statuses it does not track) are reported
as ignored too.

The reading of each webhook field, and what it becomes, is in
:mod:`tiergate.webhooks.fields`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .fields import FIELDS as FIELDS
from .fields import HANDLERS, Change, Collector
from .fields import IgnoredPart as IgnoredPart
from .fields import ParsedEvent as ParsedEvent
from .reading import WebhookError as WebhookError
from .reading import (
    as_list,
    as_object,
    as_str,
    check_depth,
    ident,
    reject_constant,
    required,
    unix_seconds,
)

OBJECT: Final = "whatsapp_business_account"
DEFAULT_MAX_BYTES: Final = 1 << 20  # 1 MiB; Meta's bodies are a few KiB
DEFAULT_MAX_DEPTH: Final = 64  # Meta's deepest documented path is about 12 levels


@dataclass(frozen=True, slots=True)
class ParsedWebhook:
    events: tuple[ParsedEvent, ...] = ()
    ignored: tuple[IgnoredPart, ...] = ()


def parse(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    pause_ms: Mapping[str, int] | None = None,
) -> ParsedWebhook:
    """Read a webhook body; raise :class:`WebhookError` only if it is not a webhook.

    ``pause_ms`` maps a template pause title (``FIRST_PAUSE``, ``SECOND_PAUSE``)
    to its duration so a PAUSED event carries its unpause time; without it (or
    for titles it does not name) ``paused_until_unix_ms`` is 0. A PAUSED event
    carries its title as ``pause_reason`` either way, and the policy layer
    decides a pause without a known end (``templates.untitled_pause``).
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
        doc: object = json.loads(text, parse_constant=reject_constant)
    except RecursionError:
        raise WebhookError("body", "is nested too deeply") from None
    except ValueError as exc:
        raise WebhookError("body", f"is not JSON: {exc}") from None
    check_depth(doc, max_depth)

    root = as_object(doc, "body")
    obj = as_str(required(root, "object", ""), "object")
    if obj != OBJECT:
        reason = f"object {obj!r} is not {OBJECT!r}: nothing in it concerns tiergate"
        return ParsedWebhook((), (IgnoredPart("object", "object", reason),))
    out = Collector(pause_ms or {})
    for i, raw_entry in enumerate(as_list(required(root, "entry", ""), "entry")):
        _entry(out, raw_entry, f"entry[{i}]")
    return ParsedWebhook(tuple(out.events), tuple(out.ignored))


# --- envelope -----------------------------------------------------------------


def _entry(out: Collector, raw: object, path: str) -> None:
    mark = out.mark()
    try:
        entry = as_object(raw, path)
        waba_id = ident(required(entry, "id", path), f"{path}.id")
        raw_time = entry.get("time")
        at_ms = 0 if raw_time is None else unix_seconds(raw_time, f"{path}.time")
        changes = as_list(required(entry, "changes", path), f"{path}.changes")
    except WebhookError as exc:
        out.unreadable("entry", path, mark, exc)
        return
    for j, raw_change in enumerate(changes):
        _change(out, raw_change, f"{path}.changes[{j}]", waba_id, at_ms, raw_time)


def _change(
    out: Collector, raw: object, cpath: str, waba_id: str, at_ms: int, raw_time: object
) -> None:
    mark = out.mark()
    fld = "change"
    try:
        change = as_object(raw, cpath)
        fld = as_str(required(change, "field", cpath), f"{cpath}.field")
        handler = HANDLERS.get(fld)
        if handler is None:
            reason = _OTHER_FIELDS.get(fld, f"webhook field {fld!r} carries nothing tiergate uses")
            out.ignore(fld, cpath, reason)
            return
        vpath = f"{cpath}.value"
        value = as_object(required(change, "value", cpath), vpath)
        handler(out, value, Change(fld, vpath, waba_id, at_ms, raw_time, value))
    except WebhookError as exc:
        out.unreadable(fld, cpath, mark, exc)


_OTHER_FIELDS: Final[Mapping[str, str]] = {
    "smb_message_echoes": "echo of a message the business sent from the WhatsApp Business "
    "app: it opens no window and tiergate did not admit it",
}
