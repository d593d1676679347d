"""Typed readers for webhook JSON: each checks one value's type and names its path.

Every reader raises :class:`WebhookError` with the path of the value it could
not read, so a malformed body is refused with a message that says where.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, NoReturn

from tiergate.engine.constants import MAX_RECIPIENT_DIGITS, is_bsuid

# Payload timestamps are seconds; anything at or past this is not (year 5138).
_MAX_SECONDS: Final = 100_000_000_000


class WebhookError(ValueError):
    """A webhook body tiergate cannot read; ``field`` is the path of the problem.

    ``str()`` is ``"<path>: <what is wrong>"``. Nothing from such a body is applied.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


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


def required(obj: dict[str, object], key: str, path: str) -> object:
    if key not in obj or obj[key] is None:
        raise WebhookError(f"{path}.{key}" if path else key, "is missing")
    return obj[key]


def as_object(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        _fail(path, "an object", value)
    return value


def as_list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        _fail(path, "a list", value)
    return value


def as_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, "a string", value)
    return value


def nonempty(value: object, path: str) -> str:
    text = as_str(value, path)
    if not text:
        raise WebhookError(path, "must not be empty")
    return text


def optional_str(obj: dict[str, object], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is str:
        return value
    _fail(f"{path}.{key}", "a string", value)


# Keyed readers for the hot paths (statuses, messages): the path of a field is
# only built when it is needed for an error.


def required_str(obj: dict[str, object], key: str, path: str) -> str:
    """A required, non-empty string field."""
    value = obj.get(key)
    if type(value) is str and value:
        return value
    return nonempty(required(obj, key, path), f"{path}.{key}")


def required_ident(obj: dict[str, object], key: str, path: str) -> str:
    """A required identifier field (see :func:`ident`)."""
    return ident(required(obj, key, path), f"{path}.{key}")


def required_unix_seconds(obj: dict[str, object], key: str, path: str) -> int:
    """A required Unix-seconds field → Unix milliseconds."""
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= 11 and value.isdigit() and value.isascii():
        return int(value) * 1000
    return unix_seconds(required(obj, key, path), f"{path}.{key}")


def as_int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(path, "an integer", value)
    return value


def ident(value: object, path: str) -> str:
    """An id Meta sends as a string or, for some fields, as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise WebhookError(path, "must not be negative")
        return str(value)
    return nonempty(value, path)


def unix_seconds(value: object, path: str) -> int:
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


def unix_instant(value: object, path: str) -> int:
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
        return unix_seconds(int(moment.timestamp()), path)
    return unix_seconds(value, path)


def is_phone(wa_id: str) -> bool:
    """Whether ``recipient_key`` accepts ``wa_id`` (E.164 digits, optional '+')."""
    digits = wa_id[1:] if wa_id[:1] == "+" else wa_id
    return 0 < len(digits) <= MAX_RECIPIENT_DIGITS and digits.isascii() and digits.isdigit()


def is_recipient(value: str) -> bool:
    """Whether ``recipient_key`` accepts ``value``: a phone number (wa_id) or a
    business-scoped user ID."""
    return is_phone(value) or is_bsuid(value)


def reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def check_depth(doc: object, max_depth: int) -> None:
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
