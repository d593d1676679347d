"""Idempotency keys on the shared store: what Redis holds for them, read before a
request or batch is checked, so every sidecar answers keys as one sidecar would.

A batch (``policy.columnar``'s steps made ``remote``) first yields a ``KeyRead``:
its items whose key this sidecar holds no answer for. :func:`read_batch_keys`
reads those keys from Redis in one round trip (the library's read-only function
``keys``, one call per limit scope) and remembers each first admit Redis holds in
the sidecar's key memory (:func:`first_admit`: its answer, what it binds, a ticket
of this sidecar's); the columnar path then checks and answers every key as the
embedded store does, before anything of the batch is decided. :func:`lone_key`
does the same for a unary request answered by steps 1–3. What a key binds
travels with a decide call's rows (:func:`binding`); a key Redis refuses there is
told with the embedded store's words (:func:`key_conflict`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiergate.engine import records as rec
from tiergate.engine.tickets import encode_ticket
from tiergate.policy import aliases
from tiergate.policy.admission import BLOCKING
from tiergate.policy.answers import AdmitResult, remembered
from tiergate.policy.column_checks import Items
from tiergate.policy.keys import KeyMemory, KeyRead, differs
from tiergate.policy.requests import Checked, KeyConflict
from tiergate.policy.state import PolicyState, Sender

from .base import StoreUnavailableError
from .redis_counting import KeyHeld, ScopeSpec

if TYPE_CHECKING:
    from .shared import SharedAdmission

__all__ = [
    "binding",
    "first_admit",
    "item_binding",
    "key_conflict",
    "lone_key",
    "read_batch_keys",
]


async def read_batch_keys(shared: SharedAdmission, ask: KeyRead) -> bool:
    """Before a batch checks or decides anything: what Redis holds for the keys of
    its items this process holds no answer for (bound at another sidecar, or here
    before a restart), in one round trip, remembered here as the first admits
    they are. The columnar path then checks and answers every key as one sidecar
    would: a repeat answers its first admit (even where steps 1–3 would refuse
    it now), a key bound to another request refuses the batch whole before any
    part of it is decided. Scopes Redis cannot be asked about read nothing: their
    items are decided as ``--store-failure`` says. False when Redis could be asked
    about none."""
    st = shared.service.state
    r = ask.items
    wanted: dict[str, tuple[ScopeSpec, dict[str, tuple[Sender, int, int]]]] = {}
    for i, now in zip(ask.asked, ask.times, strict=True):
        sid = r.senders[r.sender_index[i]]
        sender = st.senders[sid]
        spec = shared.scope(sender.scope)
        names = wanted.setdefault(spec.name, (spec, {}))[1]
        names.setdefault(f"{sid}:{r.keys[i]}", (sender, i, now))
    groups = list(wanted.values())
    try:
        got = await shared.counting.read_keys([(spec, list(names)) for spec, names in groups])
    except StoreUnavailableError:
        shared.available = False
        return False
    read = False
    for (_, names), held in zip(groups, got, strict=True):
        if isinstance(held, StoreUnavailableError):
            shared.available = False
            continue
        read = True
        for (sender, i, now), h in zip(names.values(), held, strict=True):
            key = r.keys[i]
            if h is not None and KeyMemory.lookup(sender, key, now) is None:
                t = r.template_index[i]
                request = rec.bind(r.rkeys[i], r.kinds[i], r.categories[i])
                tpl = r.templates[t - 1] if t else ""
                st.keys.remember(sender, key, first_admit(st, h, sender, now, request, tpl))
    return read


def first_admit(
    st: PolicyState, h: KeyHeld, sender: Sender, now: int, request: int, template: str
) -> rec.Entry:
    """The key memory's entry for a first admit Redis holds (read at ``now``, for a
    request binding ``request`` and ``template``): its answer with a ticket of this
    sidecar's, and what it binds (a key made before keys were bound: the request)."""
    d = h.decided
    bound, tpl = request, template
    if h.binding is not None:
        known, _, tpl = h.binding.partition(":")
        bound = int(known)
    st.ticket += 1
    rkey = bound & rec.RECIPIENT_BITS
    ticket = encode_ticket(
        st.k0, st.k1, st.ticket, sender.engine_index, rkey, d.prev_counted, d.slot
    )
    limit = sender.limits[bound >> rec.CATEGORY_SHIFT]
    return (ticket, d.counted == 1, limit, d.used, now + h.left_ms, bound, tpl)


async def lone_key(
    shared: SharedAdmission, checked: Checked, now_ms: int, answer: AdmitResult
) -> AdmitResult:
    """A request answered by steps 1–3 (``answer``) under a key this sidecar holds
    no answer for: answered as the embedded store answers it when Redis holds the
    key (one read): refused (:class:`KeyConflict`) when it holds it for another
    request, else the key's first admit (remembered here), unless the sender is
    BANNED or DISABLED by now. While Redis is gone ``answer`` stands."""
    sid, raw, kind, cat, tpl, key, at = checked[:7]
    st = shared.service.state
    s = st.senders.get(sid)
    now = at if st.request_clock and at > 0 else now_ms
    if not key or s is None or KeyMemory.lookup(s, key, now) is not None:
        return answer
    try:
        (held,) = await shared.counting.read_keys([(shared.scope(s.scope), [f"{sid}:{key}"])])
    except StoreUnavailableError:
        held = []
    h = held[0] if isinstance(held, list) and held else None
    if h is None:
        return answer
    rkey = aliases.resolve(st, raw) if st.aliases else raw
    if h.binding is not None and h.binding != binding(rkey, kind, cat, tpl):
        raise key_conflict((rkey, kind, cat, tpl), h.binding, 0)
    if s.status >= BLOCKING:
        return answer
    entry = first_admit(st, h, s, now, rec.bind(rkey, kind, cat), tpl)
    st.keys.remember(s, key, entry)
    return remembered(entry)


def binding(rkey: int, kind: int, cat: int, tpl: str) -> str:
    """What a key binds of a request, as Redis keeps it (``Row.binding``)."""
    return f"{rec.bind(rkey, kind, cat)}:{tpl}"


def item_binding(items: Items, i: int) -> str:
    """:func:`binding` of a columnar batch's item ``i``."""
    t = items.template_index[i]
    tpl = items.templates[t - 1] if t else ""
    return binding(items.rkeys[i], items.kinds[i], items.categories[i], tpl)


def key_conflict(
    request: tuple[int, int, int, str], bound: str, item: int, field: str = "idempotency_key"
) -> KeyConflict:
    """The refusal of ``request`` (recipient key, kind, category, template) under a key
    Redis holds for another request (``bound``, as :func:`binding` makes it): what
    differs, as the embedded store's key memory says."""
    rkey, kind, cat, tpl = request
    known, _, first_tpl = bound.partition(":")
    entry: rec.Entry = ("", False, 0, 0, 0, int(known), first_tpl)
    return KeyConflict(field, item, differs(entry, rec.bind(rkey, kind, cat), tpl))
