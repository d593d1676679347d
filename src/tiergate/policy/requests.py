"""Admit requests: their shape, the checks every field passes, and the errors.

A request that passes is a :data:`Checked` tuple; the wire reader of the
server makes the same tuples from request bytes (``admit_wire``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from tiergate.engine.constants import KEY_LENGTH_SHIFT, MAX_RECIPIENT_DIGITS, recipient_key

from . import events as ev

__all__ = [
    "FREE_FORM",
    "MARKETING",
    "MAX_ID_LEN",
    "MAX_KEY_LEN",
    "MAX_TEMPLATE_LEN",
    "SERVICE",
    "TEMPLATE",
    "AdmitLike",
    "AdmitRequest",
    "Checked",
    "InvalidArgument",
    "KeyConflict",
    "KeyRefused",
    "KeyTooLong",
    "check_all",
    "check_one",
    "recipient_field",
    "well_formed",
]

MAX_ID_LEN = 128
MAX_TEMPLATE_LEN = 512
MAX_KEY_LEN = 256

#: Kinds and categories as the plain ints the hot paths compare.
TEMPLATE = int(ev.Kind.TEMPLATE)
FREE_FORM = int(ev.Kind.FREE_FORM)
MARKETING = int(ev.Category.MARKETING)
SERVICE = int(ev.Category.SERVICE)
_LAST_CATEGORY = int(ev.Category.SERVICE)
_CATEGORIES = tuple(int(c) for c in ev.Category)


class InvalidArgument(ValueError):
    """A request field is malformed: ``field`` names it, ``str()`` is the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class KeyRefused(InvalidArgument):
    """An idempotency key refused before anything is decided: ``item`` is the
    request's index in its batch (0 for a lone one); :meth:`at` names the key's
    field as another entry point does (``requests[i].idempotency_key``)."""

    def __init__(self, field: str, item: int, message: str) -> None:
        super().__init__(field, message)
        self.item = item

    def at(self, field: str) -> Self:
        """The same refusal, naming the key's field as another entry point does (the
        message starts with the field's name)."""
        moved = type(self).__new__(type(self))  # BaseException.__new__: no __init__
        moved.__dict__.update(self.__dict__)
        moved.field = field
        moved.args = (field + str(self).removeprefix(self.field),)
        return moved


class KeyConflict(KeyRefused):
    """An idempotency key used for another request than the one it answers: ``what``
    is what differs (recipient, kind, category or template)."""

    def __init__(self, field: str, item: int, what: str) -> None:
        super().__init__(
            field,
            item,
            f"{field}: was first used for a request with another {what}; an idempotency "
            "key answers only the request it was first used for (use a new key for a "
            "new message)",
        )
        self.what = what


class KeyTooLong(KeyRefused):
    """An idempotency key longer than the configured cap (``max_idempotency_key_length``)."""

    def __init__(self, field: str, item: int, cap: int) -> None:
        super().__init__(
            field,
            item,
            f"{field}: longer than {cap} characters (max_idempotency_key_length)",
        )
        self.cap = cap


class AdmitLike(Protocol):
    """The attributes of the proto ``AdmitRequest`` (a protobuf message fits)."""

    @property
    def sender_id(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def category(self) -> int: ...
    @property
    def template_id(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def at_unix_ms(self) -> int: ...
    @property
    def dry_run(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """A plain admit request (tests, simulations, library use)."""

    sender_id: str
    recipient: str
    kind: int = int(ev.Kind.TEMPLATE)
    category: int = int(ev.Category.MARKETING)
    template_id: str = ""
    idempotency_key: str = ""
    at_unix_ms: int = 0
    dry_run: bool = False


Checked = tuple[str, int, int, int, str, str, int, bool]
"""A request that passed validation: sender, recipient key, kind, category, template,
idempotency key, at_unix_ms, dry_run."""


def well_formed(r: AdmitLike) -> Checked | None:
    """The common case, checked inline and fast: a well-formed request's fields and
    recipient key; None when anything is off (then :func:`check_one` finds what is
    wrong and names the field)."""
    sid = r.sender_id
    rcpt = r.recipient
    kind = r.kind
    cat = r.category
    tpl = r.template_id
    key = r.idempotency_key
    at = r.at_unix_ms
    if (
        type(sid) is str
        and 0 < len(sid) <= MAX_ID_LEN
        and type(rcpt) is str
        and type(tpl) is str
        and len(tpl) <= MAX_TEMPLATE_LEN
        and (
            (kind == TEMPLATE and 0 < cat <= _LAST_CATEGORY and tpl)
            or (kind == FREE_FORM and 0 < cat <= _LAST_CATEGORY)
        )
        and type(key) is str
        and len(key) <= MAX_KEY_LEN
        and type(at) is int
        and at >= 0
    ):
        digits = rcpt[1:] if rcpt[:1] == "+" else rcpt
        nd = len(digits)
        if 0 < nd <= MAX_RECIPIENT_DIGITS and digits.isascii() and digits.isdigit():
            rkey = int(digits) | (nd << KEY_LENGTH_SHIFT)
            return (sid, rkey, kind, cat, tpl, key, at, bool(r.dry_run))
    return None


def recipient_field(recipient: str, field_name: str) -> int:
    """The recipient key of an E.164 number or a business-scoped user ID;
    InvalidArgument naming ``field_name``."""
    try:
        return recipient_key(recipient)
    except ValueError as exc:
        raise InvalidArgument(field_name, f"{field_name}: {exc}") from None


def check_one(r: AdmitLike, pre: str) -> Checked:
    """The slow path: find what is wrong and name the field (or accept an odd-typed one).
    ``pre`` prefixes the field an :class:`InvalidArgument` names."""
    sid = r.sender_id
    if not isinstance(sid, str) or not sid:
        raise InvalidArgument(pre + "sender_id", f"{pre}sender_id: is required")
    if len(sid) > MAX_ID_LEN:
        raise InvalidArgument(
            pre + "sender_id", f"{pre}sender_id: longer than {MAX_ID_LEN} characters"
        )
    rcpt = r.recipient
    if not isinstance(rcpt, str):
        raise InvalidArgument(pre + "recipient", f"{pre}recipient: must be a string")
    rkey = recipient_field(rcpt, pre + "recipient")
    kind = r.kind
    if kind not in (TEMPLATE, FREE_FORM):
        raise InvalidArgument(
            pre + "kind", f"{pre}kind: must be TEMPLATE or FREE_FORM, got {kind!r}"
        )
    cat = r.category
    if cat not in _CATEGORIES:
        raise InvalidArgument(pre + "category", f"{pre}category: unknown value {cat!r}")
    tpl = r.template_id
    if not isinstance(tpl, str) or len(tpl) > MAX_TEMPLATE_LEN:
        raise InvalidArgument(
            pre + "template_id",
            f"{pre}template_id: must be a string of at most {MAX_TEMPLATE_LEN} characters",
        )
    if kind == TEMPLATE:
        if cat == ev.Category.UNSPECIFIED:
            raise InvalidArgument(
                pre + "category", f"{pre}category: is required for TEMPLATE messages"
            )
        if not tpl:
            raise InvalidArgument(
                pre + "template_id", f"{pre}template_id: is required for TEMPLATE messages"
            )
    elif cat == ev.Category.UNSPECIFIED:
        cat = SERVICE  # a free-form message without a category is a service message
    key = r.idempotency_key
    if not isinstance(key, str) or len(key) > MAX_KEY_LEN:
        raise InvalidArgument(
            pre + "idempotency_key",
            f"{pre}idempotency_key: must be a string of at most {MAX_KEY_LEN} characters",
        )
    at = r.at_unix_ms
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise InvalidArgument(pre + "at_unix_ms", f"{pre}at_unix_ms: must be >= 0")
    return (sid, rkey, int(kind), int(cat), tpl, key, at, bool(r.dry_run))


def check_all(reqs: Sequence[AdmitLike]) -> list[Checked]:
    """Every request of a batch checked before anything is decided (fast path first);
    an error names ``requests[i].<field>``."""
    out: list[Checked] = []
    append = out.append
    for i, r in enumerate(reqs):
        append(well_formed(r) or check_one(r, f"requests[{i}]."))
    return out
