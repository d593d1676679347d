"""One user, one recipient: a business-scoped user ID (BSUID) that a webhook
names together with the user's phone number is that phone number for counting.

The map (BSUID key → phone key) is learned from webhooks that carry both
(``events.InboundMessage.user_id``, ``events.SendResult.user_id``), journaled
with their events and snapshotted. It is consulted wherever a recipient's key
is made from its text: the scalar Admit, the batch kernels (``alias_keys`` over
the batch's keys, with :func:`alias_table`), and feedback. An idempotency key
first used with a BSUID before its alias was learned still answers its
repeats (:func:`bound_either`).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from tiergate.engine import records as rec
from tiergate.engine.constants import KEY_LENGTH_SHIFT, is_bsuid, recipient_key

from .requests import recipient_field
from .state import PolicyState

_U64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # the slot: as engine.columns.region_table


def alias_table(pairs: Iterable[tuple[int, int]]) -> array[int]:
    """The table ``engine.columns.alias_keys`` probes: (BSUID key, phone key)
    pairs by open addressing with linear probing, a power of two at least twice
    their number in slots; empty for none."""
    ordered = sorted(pairs)
    if not ordered:
        return array("Q")
    size = 4
    while size < 2 * len(ordered):
        size *= 2
    table = array("Q", bytes(16 * size))
    for key, phone in ordered:
        _put(table, key, phone)
    return table


def _put(table: array[int], key: int, phone: int) -> None:
    """Set ``key``'s entry in a table with room for it."""
    mask = len(table) // 2 - 1
    i = ((key * _MIX) & _U64) >> 32 & mask
    while table[2 * i] and table[2 * i] != key:
        i = (i + 1) & mask
    table[2 * i] = key
    table[2 * i + 1] = phone


def learn(st: PolicyState, phone: str, user_id: str) -> bool:
    """Remember that ``user_id`` (a BSUID) is the user of ``phone``; whether the
    map changed. Anything else than a phone number and a BSUID is left alone."""
    if not user_id or not is_bsuid(user_id):
        return False
    try:
        pkey = recipient_key(phone)
    except ValueError:
        return False
    if pkey >> KEY_LENGTH_SHIFT == 0:  # not a phone number
        return False
    ukey = recipient_key(user_id)
    if st.aliases.get(ukey) == pkey:
        return False
    st.aliases[ukey] = pkey
    if 2 * len(st.aliases) > len(st.alias_table) // 2:  # at most half full: grow
        st.alias_table = alias_table(st.aliases.items())
    else:
        _put(st.alias_table, ukey, pkey)
    return True


def restore(st: PolicyState, pairs: Iterable[tuple[int, int]]) -> None:
    """A snapshot's map (none in snapshots from before it was kept)."""
    st.aliases = {int(k): int(v) for k, v in pairs}
    st.alias_table = alias_table(st.aliases.items())


def resolve(st: PolicyState, rkey: int) -> int:
    """The key counting uses for recipient key ``rkey``."""
    if st.aliases and rkey >> KEY_LENGTH_SHIFT == 0:
        return st.aliases.get(rkey, rkey)
    return rkey


def recipient_of(st: PolicyState, recipient: str, field_name: str) -> int:
    """``requests.recipient_field`` with the alias applied."""
    return resolve(st, recipient_field(recipient, field_name))


def bound_either(entry: rec.Entry, raw: int, resolved: int, kind: int, cat: int, tpl: str) -> bool:
    """Whether a key's entry answers a request to ``raw`` (its key as written),
    or to ``resolved`` (its alias): entries bind the key counting used."""
    if rec.bound_to(entry, rec.bind(resolved, kind, cat), tpl):
        return True
    return raw != resolved and rec.bound_to(entry, rec.bind(raw, kind, cat), tpl)
