"""Per-item loops of the columnar admit path (AdmitColumns), pure Python.

``tiergate._native.columns`` is the compiled twin with the same functions and
results (tests/engine/test_columns.py compares them); :data:`kernels` is the
one the running engine implementation goes with. (The compiled wire codec,
``tiergate._native.wire``, has protobuf itself as its twin: see
``tiergate.server.columns_wire``.) The policy layer
(``tiergate.policy.columnar``) does every per-sender and per-template step
once per batch and hands these loops small tables indexed by the request's
sender and template indexes:

``check_items``
    request-shape checks of the per-item columns (before anything changes).
``encode_recipients``
    E.164 strings to recipient keys (``constants.recipient_key``), in bulk.
``prepare``
    steps 1–3 of DESIGN §2 per item from the tables (unknown or blocked
    sender, disabled / paused / unknown template answered right here), a
    template Meta does not deliver to the recipient's number
    (:func:`undeliverable`), the per-scope clock, and the engine's input
    columns for the rest.
``undeliverable``
    whether a template of a category goes to a number Meta delivers none of
    it to (the scalar path asks the same function).
``finish``
    the engine's answers to per-item response columns: tickets (with their
    MAC, see ``engine.tickets``), journal records (``engine.records``),
    decision counts by sender and reason.
``tally``
    decision counts by (decision, reason) for metrics.
``time_bounds``
    the earliest and latest request time of a batch.
``repeated_keys`` / ``remember_keys``
    idempotency keys: a key used for another request than the one it is
    bound to, the items a key already answers, and the admits that answer
    their keys' repeats from now on.
``encode_ticket`` / ``siphash24``
    one ticket (the scalar path's), and the MAC's hash function itself.

Sender table rows (one per distinct sender of the request): ``s_state``
``S_UNKNOWN``, ``S_KNOWN`` or ``S_BLOCKED`` (BANNED / DISABLED); ``s_slot`` the index of its
limit scope in ``last_now``; ``s_scope`` / ``s_number`` engine indexes;
``s_limits`` / ``s_flags`` five entries per sender, by category;
``s_restricted`` the end of a Meta restriction (0: none); ``s_qblock`` 1 when
the sender's marketing is blocked by quality. Template table rows (index 0 =
no template): ``t_state`` ``T_USABLE``, ``T_UNKNOWN`` (rejected) or
``T_DISABLED``; ``t_paused`` paused until (ms). ``region`` / ``region_lengths``: the profile's
undeliverable (prefix, category) pairs as a :func:`region_table` and their
distinct prefix lengths (``Profile.undeliverable_table`` /
``undeliverable_lengths``; empty: none).

``prepare`` decides an item without a time (or under the server clock) at the
latest of ``now_ms`` and the times of the known senders' items before it. Its
Prepared ``(high, unknown, rows)``: the latest time of an item from a known
sender (not clamped; ``now_ms`` at least), the number of items from unknown
senders, and the number of engine rows.
``categories`` must already read SERVICE (4) for a free-form item without one;
``at`` is empty or one time per item. ``last_now`` (per limit scope slot) moves
forward as ``AdmissionService.admit_many`` moves each scope's clock. The
batch's input columns, ``rows`` and ``row_eco`` have one entry per item; row j
is written at j: ``rows[j]`` is its item, ``row_eco[j]`` the end of a 131049
back-off applied to it (0: none). ``meta_error`` is the Meta error by reason,
``meta_missing`` the one for an unknown template. An item with ``skip[i]`` set
(``skip`` empty: none) is already answered (a repeated idempotency key): only
its time counts towards ``high``.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

from . import records as rec
from .batch import DecisionBatch
from .constants import (
    ADMIT,
    CATEGORY_MARKETING,
    F_DRY_RUN,
    F_QUALITY_BLOCK,
    F_TEMPLATE,
    KEY_LENGTH_SHIFT,
    KIND_FREE_FORM,
    KIND_TEMPLATE,
    MARKETING_FREQUENCY,
    MAX_RECIPIENT_DIGITS,
    NOT_DELIVERED_TO_REGION,
    OK,
    PREFIX_CATEGORY_SHIFT,
    QUALITY_PROTECTION,
    REJECT,
    RETRY_LATER,
    SENDER_BLOCKED,
    SENDER_RESTRICTED,
    SHADOW_SHIFT,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    UNKNOWN_SENDER,
    bsuid_key,
    is_bsuid,
)
from .results import BadItem, Finished, KeyCheck, KeyColumns, Prepared
from .tickets import encode_ticket, siphash24

__all__ = [
    "BAD_CATEGORY",
    "BAD_KIND",
    "BAD_SENDER_INDEX",
    "BAD_TEMPLATE_INDEX",
    "NO_CATEGORY",
    "NO_TEMPLATE",
    "REASONS",
    "alias_keys",
    "check_items",
    "early_answer",
    "encode_recipients",
    "encode_ticket",
    "finish",
    "kernels",
    "prepare",
    "refusal",
    "region_table",
    "remember_keys",
    "repeated_keys",
    "siphash24",
    "tally",
    "time_bounds",
    "undeliverable",
]

#: Reason slots per sender in the ``counts`` table (tiergate.v1.Reason values fit below).
REASONS = 16

# Sender table states (``s_state``) and template table states (``t_state``).
S_UNKNOWN = 0
S_KNOWN = 1
S_BLOCKED = 2  # BANNED or DISABLED
T_USABLE = 0
T_UNKNOWN = 1  # not known: rejected
T_DISABLED = 2

# check_items problem codes (the policy layer words the message).
BAD_SENDER_INDEX = 1
BAD_KIND = 2
BAD_CATEGORY = 3
NO_CATEGORY = 4  # a TEMPLATE message without a category
BAD_TEMPLATE_INDEX = 5
NO_TEMPLATE = 6  # a TEMPLATE message without a template

#: The journal layout and idempotency binding, as the compiled twin's ``LAYOUT`` holds
#: them (see ``engine.records``).
LAYOUT = (
    rec.TAG_ADMIT,
    rec.ADMIT_VERSION,
    rec.TAG_BATCH,
    rec.BATCH_VERSION,
    rec.BATCH_HEAD.size,
    rec.ROW.size,
    rec.BINDING.size,
    rec.KIND_SHIFT,
    rec.CATEGORY_SHIFT,
)


def check_items(
    n: int,
    sender_index: Sequence[int],
    n_senders: int,
    kinds: bytes,
    categories: bytes,
    template_index: Sequence[int],
    n_templates: int,
) -> BadItem:
    """``(item, problem)`` of the first malformed item, or ``(-1, 0)``.

    Per item, in this order: sender index, kind (TEMPLATE or FREE_FORM),
    category (0..4), template index (0..n_templates); a TEMPLATE message needs
    a category and a template.
    """
    for i in range(n):
        if not 0 <= sender_index[i] < n_senders:
            return BadItem(i, BAD_SENDER_INDEX)
        kind = kinds[i]
        if kind != KIND_TEMPLATE and kind != KIND_FREE_FORM:
            return BadItem(i, BAD_KIND)
        cat = categories[i]
        if cat > 4:
            return BadItem(i, BAD_CATEGORY)
        t = template_index[i]
        if not 0 <= t <= n_templates:
            return BadItem(i, BAD_TEMPLATE_INDEX)
        if kind == KIND_TEMPLATE:
            if cat == 0:
                return BadItem(i, NO_CATEGORY)
            if t == 0:
                return BadItem(i, NO_TEMPLATE)
    return BadItem(-1, 0)


def encode_recipients(recipients: Sequence[str], out: array[int]) -> int:
    """Write the key of each recipient to ``out`` (typecode 'Q', one entry per recipient).

    Returns the index of the first recipient that is neither a string of 1 to 15
    ASCII digits with an optional leading '+' nor a business-scoped user ID
    (``out`` then holds the keys before it), or -1.
    """
    for i, rcpt in enumerate(recipients):
        if type(rcpt) is not str:
            return i
        digits = rcpt[1:] if rcpt[:1] == "+" else rcpt
        nd = len(digits)
        if 0 < nd <= MAX_RECIPIENT_DIGITS and digits.isascii() and digits.isdigit():
            out[i] = int(digits) | (nd << KEY_LENGTH_SHIFT)
        elif is_bsuid(rcpt):
            out[i] = bsuid_key(rcpt)
        else:
            return i
    return -1


def alias_keys(keys: array[int], table: Sequence[int]) -> int:
    """Replace each business-scoped user ID's key in ``keys`` that ``table`` maps
    (``policy.aliases.alias_table``: (key, phone key) pairs by open addressing at
    the slot :func:`region_table` would use, empty: none) by its phone number's
    key; how many were replaced."""
    mask = len(table) // 2 - 1
    done = 0
    if mask < 0:
        return 0
    for i, key in enumerate(keys):
        if key >> KEY_LENGTH_SHIFT == 0:
            j = ((key * _MIX) & _U64) >> 32 & mask
            while table[2 * j]:
                if table[2 * j] == key:
                    keys[i] = table[2 * j + 1]
                    done += 1
                    break
                j = (j + 1) & mask
    return done


_DIGITS = (1 << KEY_LENGTH_SHIFT) - 1
_POW10 = tuple(10**k for k in range(MAX_RECIPIENT_DIGITS + 1))
_U64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # Fibonacci hashing: the slot is the product's bits 32 and up


def region_table(keys: Iterable[int]) -> array[int]:
    """The lookup table :func:`undeliverable` probes for ``keys`` (undeliverable
    pairs' ``constants.prefix_key``; none is 0): open addressing with linear
    probing, a power of two at least twice their number in size, 0 in empty slots;
    empty for no keys."""
    ordered = sorted(set(keys))
    size = 4
    while size < 2 * len(ordered):
        size *= 2
    table = array("Q", bytes(8 * size)) if ordered else array("Q")
    mask = size - 1
    for key in ordered:
        i = ((key * _MIX) & _U64) >> 32 & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = key
    return table


def undeliverable(rkey: int, category: int, region: Sequence[int], lengths: bytes) -> bool:
    """Whether Meta delivers no template of ``category`` to recipient ``rkey``: its
    leading digits of a length in ``lengths`` (the table's distinct prefix lengths,
    a few) are a prefix paired with the category in ``region`` (a
    :func:`region_table`)."""
    nd = rkey >> KEY_LENGTH_SHIFT
    digits = rkey & _DIGITS
    high = category << PREFIX_CATEGORY_SHIFT
    mask = len(region) - 1
    for length in lengths:
        if length <= nd:
            key = digits // _POW10[nd - length] | length << KEY_LENGTH_SHIFT | high
            i = ((key * _MIX) & _U64) >> 32 & mask
            while region[i]:
                if region[i] == key:
                    return True
                i = (i + 1) & mask
    return False


def early_answer(
    sender_state: int,
    template_state: int,
    paused_until: int,
    now: int,
    meta_error: Sequence[int],
    meta_missing: int,
) -> tuple[int, int, int, int]:
    """Steps 1–3's answer to an item from a known sender that goes no further:
    ``(decision, reason, retry_at, meta error)`` for a blocked sender, else for its
    template (``template_state``: disabled or unknown, else paused until
    ``paused_until`` if that is after ``now``), else for its recipient's number
    (:func:`undeliverable`)."""
    if sender_state == S_BLOCKED:
        return REJECT, SENDER_BLOCKED, 0, meta_error[SENDER_BLOCKED]
    if template_state == T_UNKNOWN:
        return REJECT, TEMPLATE_DISABLED, 0, meta_missing
    if template_state != T_USABLE:
        return REJECT, TEMPLATE_DISABLED, 0, meta_error[TEMPLATE_DISABLED]
    if now < paused_until:
        return RETRY_LATER, TEMPLATE_PAUSED, paused_until, meta_error[TEMPLATE_PAUSED]
    return REJECT, NOT_DELIVERED_TO_REGION, 0, meta_error[NOT_DELIVERED_TO_REGION]


def prepare(
    n: int,
    sender_index: Sequence[int],
    kinds: bytes,
    categories: bytes,
    template_index: Sequence[int],
    at: Sequence[int],
    rkeys: Sequence[int],
    now_ms: int,
    request_clock: bool,
    dry: bool,
    ticket_base: int,
    s_state: bytes | bytearray,
    s_slot: Sequence[int],
    s_scope: Sequence[int],
    s_number: Sequence[int],
    s_limits: Sequence[int],
    s_flags: Sequence[int],
    last_now: array[int],
    t_state: bytes | bytearray,
    t_paused: Sequence[int],
    meta_error: Sequence[int],
    meta_missing: int,
    region: array[int],
    region_lengths: bytes,
    eco: dict[tuple[int, int], int],
    skip: bytes | bytearray,
    batch: DecisionBatch,
    rows: array[int],
    row_eco: array[int],
    decisions: bytearray,
    reasons: bytearray,
    retry_at: array[int],
    limits: array[int],
    meta: array[int],
    counts: array[int],
) -> Prepared:
    """Answer what steps 1–3 decide; gather the rest as engine rows (see "prepare"
    in the module's docstring). Returns a Prepared ``(high, unknown, rows)``."""
    has_at = request_clock and len(at) > 0
    high, unknown, row = now_ms, 0, 0
    b_now, b_scope, b_number = batch.now, batch.scope, batch.number
    b_recipient, b_flags = batch.recipient, batch.flags
    b_limit, b_ticket = batch.limit, batch.ticket
    for i in range(n):
        s = sender_index[i]
        st = s_state[s]
        if st == S_UNKNOWN:  # an unknown sender's item: its time moves nothing
            unknown += 1
            decisions[i] = REJECT
            reasons[i] = UNKNOWN_SENDER
            continue
        now = at[i] if has_at and at[i] > 0 else high
        if now > high:
            high = now
        if skip and skip[i]:
            continue
        slot = s_slot[s]
        if now < last_now[slot]:
            now = last_now[slot]
        else:
            last_now[slot] = now
        cat = categories[i]
        limit = s_limits[5 * s + cat]
        flags = s_flags[5 * s + cat]
        template = kinds[i] == KIND_TEMPLATE
        t = template_index[i] if template else 0
        rkey = rkeys[i]
        early = st == S_BLOCKED or (template and (t_state[t] != T_USABLE or now < t_paused[t]))
        if template and region_lengths and not early:
            early = undeliverable(rkey, cat, region, region_lengths)
        if early:
            decisions[i], reasons[i], retry, meta[i] = early_answer(
                st, t_state[t], t_paused[t], now, meta_error, meta_missing
            )
            if decisions[i] == RETRY_LATER:
                retry_at[i] = retry
            limits[i] = limit
            counts[s * REASONS + reasons[i]] += 1
            continue
        if template:
            flags |= F_TEMPLATE
        eco_end = 0
        if eco and cat == CATEGORY_MARKETING:
            end = eco.get((s_scope[s], rkey), 0)
            if end > now:
                eco_end = end
                flags |= F_QUALITY_BLOCK
        b_now[row] = now
        b_scope[row] = s_scope[s]
        b_number[row] = s_number[s]
        b_recipient[row] = rkey
        # Ticket ids of rows that are not admitted are never handed out.
        b_flags[row] = flags | F_DRY_RUN if dry else flags
        b_ticket[row] = 0 if dry else ticket_base + row + 1
        b_limit[row] = limit
        rows[row] = i
        row_eco[row] = eco_end
        row += 1
    return Prepared(high, unknown, row)


def refusal(
    decision: int,
    reason: int,
    retry_at: int,
    back_off_until: int,
    quality_block: int,
    restricted_until: int,
) -> tuple[int, int, int]:
    """The answer to an item the engine refused (``decision``, ``reason``,
    ``retry_at``): ``(decision, reason, retry_at)``. A quality refusal of marketing
    to a recipient under a 131049 back-off (``back_off_until``, 0: none) while the
    sender's marketing is not blocked by quality is a MARKETING_FREQUENCY retry when
    the back-off ends; a restricted sender (``restricted_until``, 0: not) retries
    when the restriction ends."""
    if back_off_until and reason == QUALITY_PROTECTION and not quality_block:
        # Meta answered 131049 for this recipient: hold marketing until back-off ends.
        return RETRY_LATER, MARKETING_FREQUENCY, back_off_until
    if reason == SENDER_RESTRICTED and restricted_until > 0:
        return RETRY_LATER, reason, restricted_until
    return decision, reason, retry_at


def finish(
    batch: DecisionBatch,
    rows: Sequence[int],
    row_eco: Sequence[int],
    sender_index: Sequence[int],
    s_restricted: Sequence[int],
    s_qblock: bytes | bytearray,
    meta_error: Sequence[int],
    decisions: bytearray,
    reasons: bytearray,
    counted: bytearray,
    retry_at: array[int],
    limits: array[int],
    used: array[int],
    meta: array[int],
    tickets: list[str],
    keys: Sequence[str],
    kinds: bytes,
    categories: bytes,
    template_index: Sequence[int],
    templates: Sequence[str],
    k0: int,
    k1: int,
    journal: list[bytes] | None,
    counts: array[int],
    counted_rows: array[int],
) -> Finished:
    """Write the engine's answers for ``batch`` (one row per entry of ``rows``) to the
    per-item columns.

    An admitted row (not a dry run) gets its ticket (the string RecordFeedback
    takes, with its MAC under the ticket key ``k0``, ``k1``), a row in the journal
    record appended to ``journal`` (unless None; one record for all the batch's
    admits: an admit record for one, a batch record for more; it carries each
    item's idempotency key from ``keys``, empty or one per item, and what the key
    is bound to: the item's kind, category and template, from ``kinds``,
    ``categories`` (SERVICE for a free-form item without one), ``template_index``
    and ``templates``) and, when it used a new slot, its row written to
    ``counted_rows`` (one entry per row).
    Returns a Finished ``(last_tid, n_counted)``: the last ticket id handed out (0: none)
    and how many rows ``counted_rows`` holds.
    """
    b_dec, b_rsn, b_retry = batch.decision, batch.reason, batch.retry_at
    b_cnt, b_used, b_prev, b_slot = batch.counted, batch.used, batch.prev_counted, batch.slot
    b_now, b_number, b_rkey = batch.now, batch.number, batch.recipient
    b_flags, b_limit, b_ticket = batch.flags, batch.limit, batch.ticket
    pack = rec.ROW.pack
    binding = rec.BINDING.pack
    journal_rows: list[bytes] = []
    journal_keys: list[bytes] = []
    if keys and len(keys) < len(decisions):
        raise ValueError("finish: keys shorter than the batch")
    last_tid = 0
    n_counted = 0
    for j in range(len(rows)):
        i = rows[j]
        s = sender_index[i]
        d = b_dec[j]
        r = b_rsn[j]
        limit = b_limit[j]
        limits[i] = limit
        used[i] = b_used[j]
        # a shadowed reason comes back only with an admit (consumed, see SHADOW_SHIFT)
        if d == ADMIT or b_flags[j] >> (SHADOW_SHIFT + r) & 1:
            decisions[i] = ADMIT
            reasons[i] = OK
            c = b_cnt[j]
            counted[i] = 1 if c == 1 else 0
            flags = b_flags[j]
            if not flags & F_DRY_RUN:
                tid = b_ticket[j]
                last_tid = tid
                number = b_number[j]
                rkey = b_rkey[j]
                tickets[i] = encode_ticket(k0, k1, tid, number, rkey, b_prev[j], b_slot[j])
                if journal is not None:
                    kb = keys[i].encode() if keys else b""
                    journal_rows.append(pack(b_now[j], number, rkey, flags, tid, limit, len(kb)))
                    if kb:
                        t = template_index[i]
                        tb = templates[t - 1].encode() if t else b""
                        journal_keys.append(kb + binding(kinds[i], categories[i], len(tb)) + tb)
                if c:
                    counted_rows[n_counted] = j
                    n_counted += 1
            r = OK
        else:
            d, r, retry_at[i] = refusal(d, r, b_retry[j], row_eco[j], s_qblock[s], s_restricted[s])
            decisions[i] = d
            reasons[i] = r
            meta[i] = meta_error[r]
        counts[s * REASONS + r] += 1
    if journal is not None and journal_rows:
        journal.append(admit_record(journal_rows, journal_keys))
    return Finished(last_tid, n_counted)


def admit_record(rows: Sequence[bytes], tails: Sequence[bytes]) -> bytes:
    """The journal record of one decided batch's admits: ``rows`` (``records.ROW``
    each, in decision order) and ``tails`` (for each row with a key, in row order:
    its key's UTF-8 bytes and ``records.BINDING`` with the template's bytes).

    A single admit is an admit record; two or more share one batch record, so the
    store frames and checksums a batch once.
    """
    if len(rows) == 1:
        head = bytes((rec.TAG_ADMIT, rec.ADMIT_VERSION)) + rows[0]
        return head + b"".join(tails) if tails else head
    head = rec.BATCH_HEAD.pack(rec.TAG_BATCH, rec.BATCH_VERSION, len(rows))
    return head + b"".join(rows) + b"".join(tails)


def time_bounds(at: Sequence[int]) -> tuple[int, int]:
    """``(min(at), max(at))``; ``(0, 0)`` when ``at`` is empty."""
    if not at:
        return 0, 0
    return min(at), max(at)


def tally(decisions: bytes | bytearray, reasons: bytes | bytearray, counts: list[int]) -> None:
    """``counts[decision * REASONS + reason] += 1`` for every item."""
    for d, r in zip(decisions, reasons, strict=True):
        counts[d * REASONS + r] += 1


def repeated_keys(cols: KeyColumns, dry: bool, at: Sequence[int] | None, now_ms: int) -> KeyCheck:
    """What the batch's idempotency keys say before anything is decided:
    ``(bad, skip, hits, repeated)``.

    ``bad``: the first item (-1: none) whose key is bound to another request —
    one its key remembers (unexpired at the item's time) for another recipient,
    kind, category or template, or an earlier item of the batch with the same
    sender and key that differs so; the rest is then incomplete. ``skip``: 1 for
    each item whose key already has an answer, ``hits`` (item, remembered entry)
    for them in item order. ``repeated``: a (sender, key) pair of a known sender
    repeats inside a batch that is not a dry run (the caller then decides in
    parts).

    ``cols.idems[s]`` is the key table of the request's sender s (None: unknown
    sender); an item's time is ``at[i]`` when given and positive, else the
    latest of ``now_ms`` and the times of the known senders' items before it,
    as ``prepare`` has it.
    """
    keys, sender_index, senders, idems, rkeys, kinds, categories, template_index, templates = cols
    n = len(keys)
    skip = bytearray(n)
    hits: list[tuple[int, Any]] = []
    first_of: dict[tuple[str, str], int] = {}
    repeated = False
    high = now_ms
    for i in range(n):
        s = sender_index[i]
        idem = idems[s]
        now = high
        if idem is not None:
            now = at[i] if at and at[i] > 0 else high
            if now > high:
                high = now
        key = keys[i]
        if not key:
            continue
        bound = rec.bind(rkeys[i], kinds[i], categories[i])
        t = template_index[i]
        tpl = templates[t - 1] if t else ""
        if idem is not None:
            first = idem.get(key)
            if first is not None and first[rec.E_UNTIL] > now:
                if not rec.bound_to(first, bound, tpl):
                    return KeyCheck(i, skip, hits, False)
                skip[i] = 1
                hits.append((i, first))
        j = first_of.setdefault((senders[s], key), i)  # a sender may be listed twice
        if j != i:
            tj = template_index[j]
            if (
                rec.bind(rkeys[j], kinds[j], categories[j]) != bound
                or (templates[tj - 1] if tj else "") != tpl
            ):
                return KeyCheck(i, skip, hits, False)
            if idem is not None and not dry:
                repeated = True
    return KeyCheck(-1, skip, hits, repeated)


def remember_keys(
    cols: KeyColumns,
    rows: Sequence[int],
    row_now: Sequence[int],
    expires_ms: int,
    order: Any,
    tickets: Sequence[str],
    counted: bytes | bytearray,
    limit: Sequence[int],
    used: Sequence[int],
) -> None:
    """Each admitted item with a key (``tickets[i]`` set) answers its repeats from now on:
    ``idems[s][key]`` = its entry (``engine.records``: ticket, counted, limit, used,
    expiry ``row_now[j] + expires_ms``, and what the key is bound to) and
    ``(expiry, sender id, key)`` appended to ``order``; item i = rows[j]."""
    keys, sender_index, senders, idems, rkeys, kinds, categories, template_index, templates = cols
    for j in range(len(rows)):
        i = rows[j]
        key = keys[i]
        ticket = tickets[i]
        if key and ticket:
            s = sender_index[i]
            idem = idems[s]
            assert idem is not None
            until = row_now[j] + expires_ms
            t = template_index[i]
            idem[key] = (
                ticket,
                counted[i] == 1,
                limit[i],
                used[i],
                until,
                rec.bind(rkeys[i], kinds[i], categories[i]),
                templates[t - 1] if t else "",
            )
            order.append((until, senders[s], key))


def _select() -> ModuleType:
    """The compiled kernels when the compiled engine is in use, else this module."""
    import sys

    from . import native_module

    return native_module("columns") or sys.modules[__name__]


#: The kernels that go with the engine in use (compiled with the compiled engine).
kernels: Any = _select()
