"""Caps on the state clients can make tiergate hold: senders, templates, live
idempotency keys, and the length of the ids that become keys of that state.

A request beyond a count changes nothing and raises :class:`CapReached`
(the server answers RESOURCE_EXHAUSTED); an id beyond its length is an
:class:`~.requests.InvalidArgument` naming the field. Each check is O(1): a
count compared with a ``len()``, a length with its cap. The operator sets them
(``tiergate serve --max-senders …``, ``config.py``); the defaults are generous
but finite.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .requests import MAX_ID_LEN, MAX_KEY_LEN, MAX_TEMPLATE_LEN, InvalidArgument

__all__ = ["CAP_SETTINGS", "DEFAULT_CAPS", "CapReached", "Caps", "check_length"]

#: The serve setting of each cap (``Caps`` field → setting), as refusals are counted.
CAP_SETTINGS = {
    "senders": "max_senders",
    "templates": "max_templates",
    "templates_per_waba": "max_templates_per_waba",
    "idempotency_keys": "max_idempotency_keys",
    "id_length": "max_id_length",
    "template_id_length": "max_template_id_length",
    "key_length": "max_idempotency_key_length",
}


@dataclass(frozen=True, slots=True)
class Caps:
    """What clients may create. Lengths are at most the wire limits (``requests``)."""

    #: Senders (phone numbers) known at once.
    senders: int = 100_000
    #: Message templates known at once (every WABA's together).
    templates: int = 100_000
    #: Templates of one WABA (templates that name none count together as one),
    #: so that no WABA can take the whole of ``templates`` from the others.
    #: Meta allows 6 000 per verified WABA; the default leaves room above it.
    templates_per_waba: int = 10_000
    #: Idempotency keys remembered at once (each lives for the profile's
    #: ``idempotency_ms``); a new key beyond it is refused, a repeat still answers.
    idempotency_keys: int = 2_000_000
    #: sender_id, portfolio_id, waba_id and display_phone_number of a sender update,
    #: and the waba_id of a template update.
    id_length: int = MAX_ID_LEN
    #: template_id and template_name of a template update.
    template_id_length: int = MAX_TEMPLATE_LEN
    #: An admit's idempotency_key.
    key_length: int = MAX_KEY_LEN

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("senders", 1, 1 << 40),
            ("templates", 1, 1 << 40),
            ("templates_per_waba", 1, 1 << 40),
            ("idempotency_keys", 1, 1 << 40),
            ("id_length", 1, MAX_ID_LEN),
            ("template_id_length", 1, MAX_TEMPLATE_LEN),
            ("key_length", 1, MAX_KEY_LEN),
        ):
            value = getattr(self, name)
            if type(value) is not int or not lo <= value <= hi:
                raise ValueError(f"{name}: must be {lo}..{hi}, got {value!r}")


DEFAULT_CAPS = Caps()


class CapReached(ValueError):
    """A request would create more than a cap allows; nothing was changed.

    ``field`` names the request field that would create it, ``setting`` the
    serve setting that caps it (``max_senders`` …), ``cap`` its value.
    """

    def __init__(self, field: str, setting: str, cap: int, what: str) -> None:
        super().__init__(f"{field}: {what}: at most {cap} ({setting}); nothing was changed")
        self.field = field
        self.setting = setting
        self.cap = cap


def check_length(capped: Counter[str], field: str, value: str, cap: int, setting: str) -> None:
    """InvalidArgument naming ``field`` when ``value`` is longer than ``cap`` (counted
    in ``capped`` under ``setting``)."""
    if len(value) > cap:
        capped[setting] += 1
        raise InvalidArgument(
            field, f"{field}: longer than {cap} characters ({setting}), got {len(value)}"
        )
