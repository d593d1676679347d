"""The admission service: Meta's rules, in DESIGN §2's order, on top of the engine.

Steps 1–3 (request validity, sender status, template status) are decided here;
steps 4–9 (window, opt-out, messaging limit, protective rules, throughput,
pair rate) by the engine in one ``decide_batch`` call per batch, steered by
per-request flags and the effective limit this layer computes from the
profile. Nothing is consumed unless every rule passes.

Every state change appends an opaque record to the journal
(:meth:`AdmissionService.drain_journal`); :meth:`AdmissionService.replay`
re-applies one, and :meth:`AdmissionService.snapshot` /
:meth:`AdmissionService.restore` carry the whole state. Admits are
struct-packed (they are the volume; layouts in ``engine.records``); rare
events are JSON.

An idempotency key answers only the request it was first used for (same
sender, recipient, kind, category and template): a repeat gets the first
answer, another request under the key is refused (:class:`KeyConflict`)
before anything is decided. Tickets carry a MAC under the service's ticket
key (``engine.tickets``), so RecordFeedback acts only on tickets it issued.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol

from tiergate.engine import NEVER, DecisionBatch, Engine
from tiergate.engine import records as rec
from tiergate.engine.columns import admit_record, kernels
from tiergate.engine.constants import (
    ADMIT,
    F_DRY_RUN,
    F_FEP_FREE_FORM,
    F_FORCE,
    F_MARKETING,
    F_QUALITY_BLOCK,
    F_RESTRICTED,
    F_TEMPLATE,
    KEY_LENGTH_SHIFT,
    MARKETING_FREQUENCY,
    MAX_RECIPIENT_DIGITS,
    OK,
    QUALITY_PROTECTION,
    REJECT,
    RETRY_LATER,
    SENDER_BLOCKED,
    SENDER_RESTRICTED,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    UNKNOWN_SENDER,
    UNLIMITED,
    recipient_key,
)
from tiergate.engine.tickets import (
    TICKET_KEY_BYTES,
    decode_ticket,
    key_words,
    ticket_fields,
)

from . import events as ev
from .profile import DAY_MS, Profile
from .state import LimitScope, Sender, Template

__all__ = [
    "AdmissionService",
    "AdmitLike",
    "AdmitRequest",
    "AdmitResult",
    "ApplyResult",
    "Checked",
    "InvalidArgument",
    "KeyConflict",
    "PausedTemplateReport",
    "SenderReport",
    "UpgradeReport",
]

MAX_ID_LEN = 128
MAX_TEMPLATE_LEN = 512
MAX_KEY_LEN = 256
FAR_FUTURE = 1 << 62

#: The Meta error each decision reason avoids (indexed by reason).
META_ERROR = (
    0,  # REASON_UNSPECIFIED
    0,  # OK
    368,  # SENDER_BLOCKED: temporarily blocked for policy violations / disabled
    368,  # SENDER_RESTRICTED: account restricted from business-initiated messaging
    132015,  # TEMPLATE_PAUSED
    132016,  # TEMPLATE_DISABLED (paused too often)
    131047,  # OUTSIDE_WINDOW: re-engagement message
    131050,  # RECIPIENT_OPTED_OUT: user stopped marketing messages
    131048,  # MESSAGING_LIMIT: restrictions on how many messages this number may send
    131049,  # MARKETING_FREQUENCY: not delivered to maintain ecosystem engagement
    131048,  # QUALITY_PROTECTION: spam rate limit (quality-based)
    130429,  # THROUGHPUT: rate limit hit
    131056,  # PAIR_RATE: pair rate limit hit
    0,  # UNKNOWN_SENDER
)
META_TEMPLATE_MISSING = 132001
_BANNED = int(ev.SenderStatus.BANNED)  # BANNED and DISABLED (the highest values) block all
_TEMPLATE_OFF = int(ev.TemplateStatus.DISABLED)  # DISABLED and REJECTED

DETAIL = (
    "",
    "admitted",
    "sender is banned or disabled",
    "sender is restricted from business-initiated messages; replies are allowed",
    "template is paused",
    "template is disabled",
    "free-form message needs an open customer service window",
    "recipient opted out of marketing messages",
    "messaging limit reached: retry when the oldest unique recipient leaves the window",
    "marketing frequency cap for this recipient",
    "marketing blocked while quality is Red",
    "sender throughput limit",
    "pair rate limit for this recipient",
    "unknown sender",
)
#: Details of answers that say more than their reason's DETAIL entry (the server's
#: AdmitBatch wire writer gives the same from an answer's columns).
DRY_RUN_DETAIL = "dry run: would admit"
BACK_OFF_DETAIL = "Meta declined marketing to this recipient (131049): back-off"


def unknown_sender_detail(sender_id: str) -> str:
    return f"unknown sender {sender_id!r}"


def template_detail(reason: int, meta_error_code: int, template_id: str) -> str:
    """The detail of a TEMPLATE_PAUSED or TEMPLATE_DISABLED answer."""
    if reason == TEMPLATE_PAUSED:
        return f"template {template_id!r} is paused"
    if meta_error_code == META_TEMPLATE_MISSING:
        return f"unknown template {template_id!r}"
    return f"template {template_id!r} is disabled"


#: What an idempotency key remembers of its first answer, always an ADMIT: (ticket,
#: counted, limit, used, until, bound, template), see ``engine.records``. A tuple
#: instead of an AdmitResult, as a batch with keys remembers one per admit (see
#: policy.columnar).
Remembered = rec.Entry


def remembered(entry: Remembered) -> AdmitResult:
    """The answer a repeated idempotency key gets."""
    return AdmitResult(ADMIT, OK, 0, entry[0], entry[1], entry[2], entry[3], 0, DETAIL[OK])


def differs(entry: Remembered, bound: int, template: str) -> str:
    """What of a request differs from what ``entry``'s key is bound to (the word
    :class:`KeyConflict` uses): recipient, kind, category or template."""
    known = entry[rec.E_BOUND]
    if (known ^ bound) & rec.RECIPIENT_BITS:
        return "recipient"
    if (known ^ bound) >> rec.KIND_SHIFT & 3:
        return "kind"
    if known >> rec.CATEGORY_SHIFT != bound >> rec.CATEGORY_SHIFT:
        return "category"
    return "template"


_TAG_ADMIT = rec.TAG_ADMIT
_TAG_BATCH = rec.TAG_BATCH
_TAG_JSON = 0x4A  # 'J'
#: Admit and batch records: see ``engine.records`` (version 3 binds keys); JSON
#: records are written at version 1 (their layout since then). Replay reads every
#: version up to this one.
JOURNAL_VERSION = rec.JOURNAL_VERSION
_JSON_VERSION = 1
_ADMIT = rec.ADMIT
_ADMIT_VERSION = rec.ADMIT_VERSION
_KIND_SHIFT = rec.KIND_SHIFT
_CATEGORY_SHIFT = rec.CATEGORY_SHIFT
SNAPSHOT_MAGIC = b"TGSNAP"
#: 2: idempotency entries carry what their key is bound to (1: they do not).
SNAPSHOT_VERSION = 2
#: The compiled ticket encoder with the compiled engine (the scalar path writes a
#: ticket per admit), else the pure-Python one.
_encode_ticket = kernels.encode_ticket

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.InboundMessage,
        ev.SendResult,
        ev.OptOut,
        ev.SenderUpdate,
        ev.TemplateUpdate,
        ev.QualityUpdate,
        ev.CapabilityUpdate,
        ev.AccountUpdate,
        ev.TemplateQualityUpdate,
    )
}


#: Items of a long list JSON-encoded at a time in a snapshot (see ``_json_parts``).
_JSON_CHUNK = 1024


class _Rows:
    """A long JSON list of a snapshot, made from ``items`` a chunk at a time by ``row``
    (None: the item is left out), so that only one chunk's rows are alive at once."""

    __slots__ = ("items", "row")

    def __init__(self, items: Sequence[Any], row: Callable[[Any], Any]) -> None:
        self.items = items
        self.row = row

    def chunks(self) -> Iterator[list[Any]]:
        row, items = self.row, self.items
        for i in range(0, len(items), _JSON_CHUNK):
            rows = [r for r in map(row, items[i : i + _JSON_CHUNK]) if r is not None]
            if rows:
                yield rows


def _json_parts(fields: Sequence[tuple[str, Any]]) -> list[bytes]:
    """``json.dumps(dict(fields), separators=(",", ":")).encode()``, the same bytes in
    parts, a ``_Rows`` value being the list of its rows. A thread encoding a snapshot
    so gives the event loop's thread the GIL back between chunks rather than holding
    it for a whole list in one C call, and the rows of a chunk are freed before the
    next is made: made all at once, millions of them would start the cyclic GC's
    full collections, each holding the GIL for as long as it takes."""
    out: list[bytes] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    sep = "{"
    for name, value in fields:
        head = f"{sep}{dumps(name)}:"
        sep = ","
        if isinstance(value, _Rows):
            out.append(f"{head}[".encode())
            comma = ""
            for rows in value.chunks():
                out.append((comma + dumps(rows)[1:-1]).encode())
                comma = ","
            out.append(b"]")
        else:
            out.append((head + dumps(value)).encode())
    out.append(b"}")
    return out


class InvalidArgument(ValueError):
    """A request field is malformed: ``field`` names it, ``str()`` is the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class KeyConflict(InvalidArgument):
    """An idempotency key used for another request than the one it answers: ``item``
    is the request's index in its batch (0 for a lone one), ``what`` what differs
    (recipient, kind, category or template). Raised before anything is decided."""

    def __init__(self, field: str, item: int, what: str) -> None:
        super().__init__(
            field,
            f"{field}: was first used for a request with another {what}; an idempotency "
            "key answers only the request it was first used for (use a new key for a "
            "new message)",
        )
        self.item = item
        self.what = what

    def at(self, field: str) -> KeyConflict:
        """The same conflict, naming the key's field as another entry point does."""
        return KeyConflict(field, self.item, self.what)


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


@dataclass(slots=True)
class AdmitResult:
    decision: int
    reason: int
    retry_at_unix_ms: int
    ticket: str
    counted: bool
    limit: int
    used: int
    meta_error_code: int
    detail: str


@dataclass(slots=True)
class ApplyResult:
    applied: bool
    detail: str


@dataclass(slots=True)
class UpgradeReport:
    eligible: bool
    progress: float
    predicted_at_unix_ms: int
    next_tier: str


@dataclass(slots=True)
class PausedTemplateReport:
    template_id: str
    template_name: str
    paused_until_unix_ms: int
    disabled: bool


@dataclass(slots=True)
class SenderReport:
    """Everything GetSenderState reports (proto ``SenderState``) and a little more."""

    sender_id: str
    portfolio_id: str
    profile: str
    tier: str
    limit: int
    used_24h: int
    remaining: int
    next_slot_free_at_unix_ms: int
    unique_7d: int
    upgrade: UpgradeReport
    quality: int
    status: int
    throughput_mps: int
    open_windows: int
    paused_templates: list[PausedTemplateReport]
    decision_counts: dict[int, int]
    display_phone_number: str
    effective_limit: int
    at_unix_ms: int
    waba_id: str = ""
    verified: bool | None = None
    slots_7d: int = 0
    restricted_until_unix_ms: int = 0
    coexistence: bool = False
    registered_at_unix_ms: int = 0
    limit_scope: str = ""
    tier_since_unix_ms: int = 0
    account_violations: int = 0
    last_account_event: str = ""


Checked = tuple[str, int, int, int, str, str, int, bool]
"""A request that passed validation: sender, recipient key, kind, category, template,
idempotency key, at_unix_ms, dry_run."""


def _well_formed(r: AdmitLike) -> Checked | None:
    """The common case, checked inline and fast: a well-formed request's fields and
    recipient key; None when anything is off (then ``_validate_one`` finds what is
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
        and ((kind == 1 and 0 < cat <= 4 and tpl) or (kind == 2 and 0 < cat <= 4))
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


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _key_tail(key: str, kind: int, cat: int, tpl: str) -> bytes:
    """What follows the rows of an admit record for a row with a key (``engine.records``)."""
    tb = tpl.encode()
    return key.encode() + rec.BINDING.pack(kind, cat, len(tb)) + tb


def _category_limits(profile: Profile, base: int) -> list[int]:
    """Effective limits by category: headroom, then utility/authentication reservations."""
    if base >= UNLIMITED:
        return [UNLIMITED] * 5
    if profile.headroom_pct < 100.0:
        base = math.floor(base * profile.headroom_pct / 100.0)
    ru, ra = profile.reserve_utility_pct, profile.reserve_authentication_pct
    general = math.floor(base * (100.0 - ru - ra) / 100.0)
    utility = math.floor(base * (100.0 - ra) / 100.0)
    # index = Category: UNSPECIFIED, MARKETING, UTILITY, AUTHENTICATION, SERVICE
    return [general, general, utility, base, general]


class AdmissionService:
    """Decisions, feedback, state reports, journal and snapshots for one profile."""

    def __init__(
        self,
        profile: Profile,
        *,
        clock: Literal["server", "request"] = "server",
        journal: bool = True,
        engine: Engine | None = None,
        ticket_key: bytes | None = None,
    ) -> None:
        """``ticket_key``: the 16 bytes that sign tickets (random when None: tickets
        then verify only in this process; the server keeps one in its data dir)."""
        if clock not in ("server", "request"):
            raise ValueError(f"clock must be 'server' or 'request', got {clock!r}")
        self._set_key(os.urandom(TICKET_KEY_BYTES) if ticket_key is None else ticket_key)
        self.profile = profile
        self.clock = clock
        self._request_clock = clock == "request"
        self._journal_on = journal
        self._journal: list[bytes] = []
        self._replaying = False
        #: The latest time an accepted request was decided at (a decision for a
        #: known sender, an event that passed its checks, a state report). Under
        #: the request clock the server decides a request without ``at_unix_ms``
        #: at this time; a refused request never moves it.
        self.latest_ms = 0
        self.engine = engine if engine is not None else self._new_engine()
        self._reset_state()

    # -- set-up ----------------------------------------------------------------

    def _set_key(self, key: bytes) -> None:
        self._k0, self._k1 = key_words(bytes(key))
        self._ticket_key = bytes(key)

    @property
    def ticket_key(self) -> bytes:
        """The key tickets are signed with (for a service that takes this one's state)."""
        return self._ticket_key

    def set_ticket_key(self, key: bytes) -> None:
        """Sign tickets with ``key`` (16 bytes) from now on: only before any ticket is
        issued or restored (before recovery), as those would stop verifying."""
        if self._ticket:
            raise ValueError("the ticket key is set before any ticket is issued or restored")
        self._set_key(key)

    def _new_engine(self) -> Engine:
        p = self.profile
        return Engine(p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms)

    def _reset_state(self) -> None:
        self._scopes: list[LimitScope] = []
        self._portfolios: dict[str, LimitScope] = {}
        self._senders: dict[str, Sender] = {}
        self._by_number: list[Sender] = []
        self._by_display: dict[str, Sender] = {}
        self._templates: dict[str, Template] = {}
        self._template_names: dict[str, Template] = {}
        self._ticket = 0
        self._idem_order: deque[tuple[int, str, str]] = deque()
        self._seen: dict[str, int] = {}  # message ids → expiry
        self._seen_order: deque[tuple[int, str]] = deque()
        # Meta message id (wamid) → (ticket, expiry), from send results that named both;
        # the order queue holds (expiry, message id) in link order.
        self._links: dict[str, tuple[str, int]] = {}
        self._link_order: deque[tuple[int, str]] = deque()
        self._eco: dict[tuple[int, int], int] = {}  # (scope, recipient) → 131049 back-off end
        self._unknown_sender_count = 0
        self._next_due = FAR_FUTURE
        self._due_dirty = False
        self._batch = DecisionBatch()

    def _now(self, at: int, now_ms: int) -> int:
        return at if self._request_clock and at > 0 else now_ms

    # -- admission -------------------------------------------------------------

    def admit(self, req: AdmitLike, now_ms: int) -> AdmitResult:
        """Decide one request. Raises :class:`InvalidArgument` for a malformed one."""
        return self._admit_one(req, now_ms, "")

    def admit_many(self, reqs: Sequence[AdmitLike], now_ms: int) -> list[AdmitResult]:
        """Validate every request, then decide them in order with one engine call."""
        if len(reqs) == 1:
            return [self._admit_one(reqs[0], now_ms, "requests[0].")]
        return self._decide(reqs, now_ms)

    def _admit_one(self, r: AdmitLike, now_ms: int, pre: str) -> AdmitResult:
        """One request, decided as :meth:`_decide` and :meth:`_flush` decide a batch of
        one (same result, counts, idempotency entry, journal record and tier
        crossing), with the engine's scalar ``decide`` and no batch columns.
        ``pre`` prefixes the field an :class:`InvalidArgument` names."""
        try:
            return self.admit_checked(_well_formed(r) or self._validate_one(r, pre), now_ms)
        except KeyConflict as e:
            if pre:
                raise e.at(pre + "idempotency_key") from None
            raise

    def admit_checked(self, checked: Checked, now_ms: int) -> AdmitResult:
        """Decide one request whose fields passed the checks of ``_well_formed``
        (the server's wire reader makes them from the request bytes)."""
        sid, rkey, kind, cat, tpl, key, at, dry = checked
        sender = self._senders.get(sid)
        if sender is None:
            # Touches no sender's state: neither time-driven changes nor the clock.
            self._unknown_sender_count += 1
            return AdmitResult(
                REJECT, UNKNOWN_SENDER, 0, "", False, 0, 0, 0, unknown_sender_detail(sid)
            )
        now = at if self._request_clock and at > 0 else now_ms
        first: Remembered | None = None
        if key:
            first = sender.idem.get(key)
            if first is not None:
                if first[4] <= now:  # expired (not dropped yet)
                    first = None
                else:
                    bound = rkey | kind << _KIND_SHIFT | cat << _CATEGORY_SHIFT
                    if not rec.bound_to(first, bound, tpl):
                        raise KeyConflict("idempotency_key", 0, differs(first, bound, tpl))
        if self._due_dirty:
            self._recompute_due()
        high = now if now > now_ms else now_ms
        if high > self.latest_ms:
            self.latest_ms = high
        if now >= self._next_due:
            self._maintain(now)
        if first is not None and sender.status < _BANNED:
            res = remembered(first)
        else:
            res = self._decide_one(sender, rkey, kind, cat, tpl, key, now, dry)
        if self._idem_order and self._idem_order[0][0] <= high:
            self._prune(high)
        return res

    def _decide_one(
        self,
        sender: Sender,
        rkey: int,
        kind: int,
        cat: int,
        tpl: str,
        key: str,
        now: int,
        dry: bool,
    ) -> AdmitResult:
        """Steps 2 onwards for one validated request of a known sender whose key (if
        any) has no answer yet (see _admit_one). A key's repeat from a sender that is
        BANNED or DISABLED by now comes here too, and step 2 rejects it."""
        scope = sender.scope
        if now < scope.last_now:
            now = scope.last_now
        else:
            scope.last_now = now
        limit = sender.limits[cat]
        if sender.status >= _BANNED:  # BANNED, DISABLED
            sender.counts[SENDER_BLOCKED] += 1
            return AdmitResult(
                REJECT, SENDER_BLOCKED, 0, "", False, limit, 0, 368, DETAIL[SENDER_BLOCKED]
            )
        flags = sender.flags[cat]
        if kind == 1:
            flags |= F_TEMPLATE
            refused = self._template_refusal(sender, tpl, now, limit)
            if refused is not None:
                return refused
        eco_end = 0
        eco = self._eco
        if eco and cat == 1:
            end = eco.get((scope.index, rkey), 0)
            if end > now:
                eco_end = end
                flags |= F_QUALITY_BLOCK
        if dry:
            flags |= F_DRY_RUN
            tid = 0
        else:
            tid = self._ticket + 1
        d, rsn, retry, counted, used, prev, slot = self.engine.decide(
            now, scope.index, sender.number, rkey, flags, limit
        )
        if d != ADMIT:
            res = self._refusal(sender, d, rsn, retry, limit, used, eco_end)
            sender.counts[res.reason] += 1
            return res
        sender.counts[rsn] += 1
        if dry:
            return AdmitResult(ADMIT, OK, 0, "", counted == 1, limit, used, 0, DRY_RUN_DETAIL)
        self._ticket = tid
        ticket = _encode_ticket(self._k0, self._k1, tid, sender.number, rkey, prev, slot)
        res = AdmitResult(ADMIT, OK, 0, ticket, counted == 1, limit, used, 0, "admitted")
        if key:
            until = now + self.profile.idempotency_ms
            sender.idem[key] = (
                ticket,
                counted == 1,
                limit,
                used,
                until,
                rkey | kind << _KIND_SHIFT | cat << _CATEGORY_SHIFT,
                tpl,
            )
            self._idem_order.append((until, sender.id, key))
        if self._journal_on and not self._replaying:
            kb = key.encode()
            record = _ADMIT.pack(
                _TAG_ADMIT, _ADMIT_VERSION, now, sender.number, rkey, flags, tid, limit, len(kb)
            )
            self._journal.append(record + _key_tail(key, kind, cat, tpl) if kb else record)
        if counted:
            sc = scope
            if sc.crossed_at == NEVER and sc.tier != self.profile.ladder[-1]:
                self._check_crossing(sc, now, ((now,), (prev,)), [0])
        return res

    def _template_refusal(
        self, sender: Sender, tpl: str, now: int, limit: int
    ) -> AdmitResult | None:
        """Step 3 for a template message: the refusal, or None when the template may
        be sent (an unknown one too, unless the profile rejects unknown templates)."""
        t = self._templates.get(tpl) or self._template_names.get(tpl)
        if t is None:
            if self.profile.unknown_templates == "reject":
                sender.counts[TEMPLATE_DISABLED] += 1
                return AdmitResult(
                    REJECT,
                    TEMPLATE_DISABLED,
                    0,
                    "",
                    False,
                    limit,
                    0,
                    META_TEMPLATE_MISSING,
                    template_detail(TEMPLATE_DISABLED, META_TEMPLATE_MISSING, tpl),
                )
        elif t.status >= _TEMPLATE_OFF:  # DISABLED, REJECTED
            sender.counts[TEMPLATE_DISABLED] += 1
            return AdmitResult(
                REJECT,
                TEMPLATE_DISABLED,
                0,
                "",
                False,
                limit,
                0,
                132016,
                template_detail(TEMPLATE_DISABLED, 132016, tpl),
            )
        elif now < t.paused_until:
            sender.counts[TEMPLATE_PAUSED] += 1
            return AdmitResult(
                RETRY_LATER,
                TEMPLATE_PAUSED,
                t.paused_until,
                "",
                False,
                limit,
                0,
                132015,
                template_detail(TEMPLATE_PAUSED, 132015, tpl),
            )
        return None

    @staticmethod
    def _refusal(
        sender: Sender, d: int, r: int, retry: int, limit: int, used: int, eco_end: int
    ) -> AdmitResult:
        """The answer for a row the engine did not admit (steps 4 to 9)."""
        if eco_end and r == QUALITY_PROTECTION and not (sender.flags[1] & F_QUALITY_BLOCK):
            # Meta answered 131049 for this recipient: hold marketing until back-off ends.
            return AdmitResult(
                RETRY_LATER,
                MARKETING_FREQUENCY,
                eco_end,
                "",
                False,
                limit,
                used,
                131049,
                BACK_OFF_DETAIL,
            )
        if r == SENDER_RESTRICTED and sender.restricted_until > 0:
            return AdmitResult(
                RETRY_LATER,
                r,
                sender.restricted_until,
                "",
                False,
                limit,
                used,
                368,
                DETAIL[r],
            )
        return AdmitResult(d, r, retry, "", False, limit, used, META_ERROR[r], DETAIL[r])

    def _validate(self, reqs: Sequence[AdmitLike]) -> list[Checked]:
        """Every request checked before anything is decided (fast path first)."""
        out: list[Checked] = []
        append = out.append
        for i, r in enumerate(reqs):
            append(_well_formed(r) or self._validate_one(r, f"requests[{i}]."))
        return out

    def _validate_one(self, r: AdmitLike, pre: str) -> Checked:
        """The slow path: find what is wrong and name the field (or accept an odd-typed one)."""
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
        try:
            rkey = recipient_key(rcpt)
        except ValueError as exc:
            raise InvalidArgument(pre + "recipient", f"{pre}recipient: {exc}") from None
        kind = r.kind
        if kind not in (1, 2):
            raise InvalidArgument(
                pre + "kind", f"{pre}kind: must be TEMPLATE or FREE_FORM, got {kind!r}"
            )
        cat = r.category
        if cat not in (0, 1, 2, 3, 4):
            raise InvalidArgument(pre + "category", f"{pre}category: unknown value {cat!r}")
        tpl = r.template_id
        if not isinstance(tpl, str) or len(tpl) > MAX_TEMPLATE_LEN:
            raise InvalidArgument(
                pre + "template_id",
                f"{pre}template_id: must be a string of at most {MAX_TEMPLATE_LEN} characters",
            )
        if kind == 1:
            if cat == 0:
                raise InvalidArgument(
                    pre + "category", f"{pre}category: is required for TEMPLATE messages"
                )
            if not tpl:
                raise InvalidArgument(
                    pre + "template_id", f"{pre}template_id: is required for TEMPLATE messages"
                )
        elif cat == 0:
            cat = 4  # a free-form message without a category is a service message
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

    def _check_keys(self, items: Sequence[Checked], now_ms: int) -> None:
        """Raise :class:`KeyConflict` for the first item whose idempotency key is bound to
        another request: one its key remembers (unexpired at the item's time), or an
        earlier item of the batch with the same sender and key. Changes nothing."""
        senders = self._senders
        request_clock = self._request_clock
        first_of: dict[tuple[str, str], int] = {}
        high = now_ms  # an item's time, as _decide has it
        for i, (sid, rkey, kind, cat, tpl, key, at, _) in enumerate(items):
            sender = senders.get(sid)
            now = high
            if sender is not None:
                now = at if request_clock and at > 0 else high
                if now > high:
                    high = now
            if not key:
                continue
            bound = rkey | kind << _KIND_SHIFT | cat << _CATEGORY_SHIFT
            if sender is not None:
                first = sender.idem.get(key)
                if first is not None and first[4] > now and not rec.bound_to(first, bound, tpl):
                    field = f"requests[{i}].idempotency_key"
                    raise KeyConflict(field, i, differs(first, bound, tpl))
            j = first_of.setdefault((sid, key), i)
            if j != i:
                other = items[j]
                earlier = other[1] | other[2] << _KIND_SHIFT | other[3] << _CATEGORY_SHIFT
                if earlier != bound or other[4] != tpl:
                    entry = ("", False, 0, 0, 0, earlier, other[4])
                    field = f"requests[{i}].idempotency_key"
                    raise KeyConflict(field, i, differs(entry, bound, tpl))

    def _decide(self, reqs: Sequence[AdmitLike], now_ms: int) -> list[AdmitResult]:
        items = self._validate(reqs)
        for item in items:
            if item[5]:  # an idempotency key: check them all before deciding any
                self._check_keys(items, now_ms)
                break
        n = len(items)
        results: list[AdmitResult | None] = [None] * n
        batch = self._batch
        # Only the input columns: the engine sizes the outputs (single admits skip them).
        del batch.now[:], batch.scope[:], batch.number[:], batch.recipient[:]
        del batch.flags[:], batch.limit[:], batch.ticket[:]
        slots: list[int] = []  # request index of each batch row
        # sender, recipient key, idem key, eco end, kind, category, template
        rows: list[tuple[Sender, int, str, int, int, int, str]] = []
        in_batch: dict[tuple[str, str], int] = {}
        senders = self._senders
        templates = self._templates
        template_names = self._template_names
        eco = self._eco
        request_clock = self._request_clock
        # The time of an item without at_unix_ms: the latest of the call's time and
        # the times of the accepted items before it (as if sent one by one).
        high = now_ms
        unknown = self._unknown_sender_count
        if self._due_dirty:
            self._recompute_due()
        add_now, add_scope, add_number = batch.now.append, batch.scope.append, batch.number.append
        add_recipient, add_flags = batch.recipient.append, batch.flags.append
        add_limit, add_ticket = batch.limit.append, batch.ticket.append
        i = -1
        while i + 1 < n:
            i += 1
            sid, rkey, kind, cat, tpl, key, at, dry = items[i]
            sender = senders.get(sid)
            if sender is None:
                self._unknown_sender_count += 1
                results[i] = AdmitResult(
                    REJECT, UNKNOWN_SENDER, 0, "", False, 0, 0, 0, unknown_sender_detail(sid)
                )
                continue
            now = at if request_clock and at > 0 else high
            if now > high:
                high = now
            if now >= self._next_due:
                self._maintain(now)
            if key:
                first = sender.idem.get(key)
                # A repeat (bound to this request: checked above) gets the first answer,
                # unless the sender is BANNED or DISABLED by now (step 2 rejects it).
                if first is not None and first[4] > now and sender.status < _BANNED:
                    results[i] = remembered(first)
                    continue
                if not dry:
                    if (sid, key) in in_batch:
                        # The key's first request is still undecided: decide what is
                        # gathered, then this one sees its outcome (as one by one would).
                        self._flush(slots, rows, results)
                        del batch.now[:], batch.scope[:], batch.number[:], batch.recipient[:]
                        del batch.flags[:], batch.limit[:], batch.ticket[:]
                        slots, rows = [], []
                        in_batch.clear()
                        i -= 1
                        continue
                    in_batch[(sid, key)] = i
            scope = sender.scope
            if now < scope.last_now:
                now = scope.last_now
            else:
                scope.last_now = now
            limit = sender.limits[cat]
            if sender.status >= _BANNED:  # BANNED, DISABLED
                sender.counts[SENDER_BLOCKED] += 1
                results[i] = AdmitResult(
                    REJECT, SENDER_BLOCKED, 0, "", False, limit, 0, 368, DETAIL[SENDER_BLOCKED]
                )
                continue
            flags = sender.flags[cat]
            if kind == 1:
                flags |= F_TEMPLATE
                t = templates.get(tpl) or template_names.get(tpl)
                if t is None or t.status >= _TEMPLATE_OFF or now < t.paused_until:
                    refused = self._template_refusal(sender, tpl, now, limit)
                    if refused is not None:
                        results[i] = refused
                        continue
            eco_end = 0
            if eco and cat == 1:
                end = eco.get((scope.index, rkey), 0)
                if end > now:
                    eco_end = end
                    flags |= F_QUALITY_BLOCK
            if dry:
                flags |= F_DRY_RUN
                tid = 0
            else:
                # Ticket ids of rows that are not admitted are never handed out; only
                # admitted ones advance the counter (so a replay ends on the same one).
                tid = self._ticket + len(slots) + 1
            add_now(now)
            add_scope(scope.index)
            add_number(sender.number)
            add_recipient(rkey)
            add_flags(flags)
            add_limit(limit)
            add_ticket(tid)
            slots.append(i)
            rows.append((sender, rkey, key, eco_end, kind, cat, tpl))

        if slots:
            self._flush(slots, rows, results)
        if self._unknown_sender_count - unknown < n:  # not only unknown senders: time moves
            if high > self.latest_ms:
                self.latest_ms = high
            if self._idem_order and self._idem_order[0][0] <= high:
                self._prune(high)
        return results  # type: ignore[return-value]

    def _flush(
        self,
        slots: list[int],
        rows: list[tuple[Sender, int, str, int, int, int, str]],
        results: list[AdmitResult | None],
    ) -> None:
        """Decide the rows gathered in the batch columns; build, record and journal results."""
        batch = self._batch
        self.engine.decide_batch(batch)
        dec, rsn, retry = batch.decision, batch.reason, batch.retry_at
        counted, used, prev, b_slot = batch.counted, batch.used, batch.prev_counted, batch.slot
        b_flags, b_limit, b_now, b_ticket = batch.flags, batch.limit, batch.now, batch.ticket
        pack = rec.ROW.pack
        journal_rows: list[bytes] = []
        journal_keys: list[bytes] = []
        k0, k1 = self._k0, self._k1
        journal_append = journal_rows.append
        touched: dict[int, list[int]] = {}
        journal = self._journal_on and not self._replaying
        expires = self.profile.idempotency_ms
        refusal = self._refusal
        for j, i in enumerate(slots):
            sender, rkey, key, eco_end, kind, cat, tpl = rows[j]
            d = dec[j]
            r = rsn[j]
            if d == ADMIT:
                flags = b_flags[j]
                if flags & F_DRY_RUN:
                    res = AdmitResult(
                        ADMIT,
                        OK,
                        0,
                        "",
                        counted[j] == 1,
                        b_limit[j],
                        used[j],
                        0,
                        DRY_RUN_DETAIL,
                    )
                else:
                    now = b_now[j]
                    tid = b_ticket[j]
                    self._ticket = tid
                    ticket = _encode_ticket(k0, k1, tid, sender.number, rkey, prev[j], b_slot[j])
                    res = AdmitResult(
                        ADMIT,
                        OK,
                        0,
                        ticket,
                        counted[j] == 1,
                        b_limit[j],
                        used[j],
                        0,
                        "admitted",
                    )
                    if key:
                        until = now + expires
                        bound = rkey | kind << _KIND_SHIFT | cat << _CATEGORY_SHIFT
                        sender.idem[key] = (
                            ticket,
                            res.counted,
                            res.limit,
                            res.used,
                            until,
                            bound,
                            tpl,
                        )
                        self._idem_order.append((until, sender.id, key))
                    if journal:
                        kb = key.encode()
                        journal_append(
                            pack(now, sender.number, rkey, flags, tid, b_limit[j], len(kb))
                        )
                        if kb:
                            journal_keys.append(_key_tail(key, kind, cat, tpl))
                    if counted[j]:
                        rows_of = touched.get(sender.scope.index)
                        if rows_of is None:
                            touched[sender.scope.index] = [j]
                        else:
                            rows_of.append(j)
            else:
                res = refusal(sender, d, r, retry[j], b_limit[j], used[j], eco_end)
                r = res.reason
            sender.counts[r] += 1
            results[i] = res
        if journal_rows:
            self._journal.append(admit_record(journal_rows, journal_keys))
        top = self.profile.ladder[-1]
        for idx, js in touched.items():
            sc = self._scopes[idx]
            if sc.crossed_at == NEVER and sc.tier != top:
                self._check_crossing(sc, b_now[js[-1]], (b_now, prev), js)

    # -- tier state machine ----------------------------------------------------

    def _threshold(self, scope: LimitScope) -> int:
        limit = self.profile.tier_limit(scope.tier)
        return math.ceil(round(self.profile.upgrade_threshold * limit, 6))

    def _eligible(self, scope: LimitScope) -> bool:
        p = self.profile
        if p.next_tier(scope.tier) is None or not scope.senders:
            return False
        return all(
            s.quality in p.upgrade_qualities and s.status in p.upgrade_statuses
            for s in scope.senders
        )

    def _check_crossing(
        self,
        scope: LimitScope,
        at: int,
        columns: tuple[Sequence[int], Sequence[int]] | None = None,
        rows: list[int] | None = None,
    ) -> None:
        """Record when the upgrade threshold is met (the 7-day ring under-counts: never early).

        After a batch, ``rows`` are the batch rows that used a new slot in this
        scope: the crossing is dated to the row that reached the threshold.
        """
        if scope.crossed_at != NEVER or not self._eligible(scope):
            return
        p = self.profile
        _, _, unique, slots = self.engine.usage(scope.index, at, UNLIMITED)
        have = unique if p.upgrade_basis == "unique" else slots
        need = self._threshold(scope)
        if have < need:
            return
        if columns is not None and rows:
            b_now, b_prev = columns
            # How much each row added: a new slot always adds to the cumulative
            # count; to the 7-day unique count only when the recipient was clearly
            # outside the lookback (a borderline one counts as 0: dated later, never early).
            horizon = p.lookback_ms + p.long_bucket_ms
            steps = [
                1 if p.upgrade_basis == "cumulative" or b_prev[j] <= b_now[j] - horizon else 0
                for j in rows
            ]
            level = have - sum(steps)
            if level < need:
                for j, step in zip(rows, steps, strict=True):
                    level += step
                    if level >= need:
                        at = b_now[j]
                        break
        scope.crossed_at = at
        if p.upgrade_mode == "apply":
            scope.due_at = max(at + p.upgrade_delay_ms, scope.tier_since + p.min_in_tier_ms)
            self._next_due = min(self._next_due, scope.due_at)
        self._journal_state([scope], [])

    def _set_tier(self, scope: LimitScope, tier: str, at: int) -> None:
        scope.tier = tier
        scope.tier_since = at
        scope.crossed_at = NEVER
        scope.due_at = NEVER
        for s in scope.senders:
            self._derive(s, at)

    def _maintain(self, now: int) -> None:
        """Apply what time alone changes: due upgrades, long Red, restriction ends, warm-up.

        Each pass applies what was due, in due-time order per object; passes repeat
        while more became due (e.g. several 7-day Red steps after a long silence).
        """
        if self._replaying:
            return
        for _ in range(1024):
            self._maintain_once(now)
            if self._next_due > now:
                return

    def _maintain_once(self, now: int) -> None:
        p = self.profile
        changed_scopes: dict[int, LimitScope] = {}
        changed_senders: dict[str, Sender] = {}
        for scope in self._scopes:
            if scope.due_at != NEVER and scope.due_at <= now:
                due = scope.due_at
                nxt = p.next_tier(scope.tier)
                if nxt is not None and self._eligible(scope):
                    self._set_tier(scope, nxt, due)
                    if scope.last_now < due:
                        scope.last_now = due
                    self._check_crossing(scope, max(due, scope.last_now))
                else:
                    scope.crossed_at = NEVER
                    scope.due_at = NEVER
                changed_scopes[scope.index] = scope
        for s in self._by_number:
            if p.red_days_to_downgrade and s.red_since != NEVER:
                due = s.red_since + p.red_days_to_downgrade * DAY_MS
                if due <= now:
                    scope = s.scope
                    floor = p.tier_limit(p.downgrade_floor)
                    lower = p.lower_tier(scope.tier)
                    own = s.status in (ev.SenderStatus.CONNECTED, ev.SenderStatus.FLAGGED)
                    if lower is None or p.tier_limit(scope.tier) <= floor:
                        if own and p.floor_status != s.status:
                            s.status = p.floor_status
                            s.floor_restricted = p.floor_status == ev.SenderStatus.RESTRICTED
                    else:
                        self._set_tier(scope, lower, due)
                        if own:  # a restriction or ban from Meta stays as it is
                            s.status = int(ev.SenderStatus.CONNECTED)
                        changed_scopes[scope.index] = scope
                    s.red_since = due  # another full run of Red days costs another step
                    changed_senders[s.id] = s
            if s.status == ev.SenderStatus.RESTRICTED and 0 < s.restricted_until <= now:
                s.status = int(ev.SenderStatus.CONNECTED)
                s.restricted_until = 0
                changed_senders[s.id] = s
            if s.limits_until != NEVER and s.limits_until <= now:
                changed_senders[s.id] = s
        for s in changed_senders.values():
            self._derive(s, now)
        if changed_scopes or changed_senders:
            self._journal_state(list(changed_scopes.values()), list(changed_senders.values()))
        self._recompute_due()

    def _recompute_due(self) -> None:
        self._due_dirty = False
        p = self.profile
        due = FAR_FUTURE
        for scope in self._scopes:
            if scope.due_at != NEVER:
                due = min(due, scope.due_at)
        for s in self._by_number:
            if p.red_days_to_downgrade and s.red_since != NEVER:
                due = min(due, s.red_since + p.red_days_to_downgrade * DAY_MS)
            if s.status == ev.SenderStatus.RESTRICTED and s.restricted_until > 0:
                due = min(due, s.restricted_until)
            if s.limits_until != NEVER:
                due = min(due, s.limits_until)
        self._next_due = due

    # -- derived sender parameters ---------------------------------------------

    def _mps(self, s: Sender) -> int:
        p = self.profile
        if s.mps_override > 0:
            return s.mps_override
        override = p.throughput_override(s.id)
        if override is not None:
            return override
        if s.coexistence:
            return p.coexistence_mps
        return p.upgraded_mps if s.throughput_upgraded else p.default_mps

    def _number_params(self, s: Sender) -> tuple[int, int, int, int]:
        p = self.profile
        mps = self._mps(s)
        interval = -(-1_000_000 // mps)
        burst = max(1, math.floor(mps * p.burst_seconds))
        return interval, burst, p.pair_interval_ms, p.pair_burst

    def _derive(self, s: Sender, now: int) -> None:
        """Recompute a sender's per-category flags and effective limits."""
        p = self.profile
        base = p.tier_limit(s.scope.tier)
        s.limits_until = NEVER
        if p.warmup_enabled and s.registered_at > 0:
            age = now - s.registered_at
            for step in p.warmup:
                end = s.registered_at + step.until_day * DAY_MS
                if age < step.until_day * DAY_MS:
                    base = min(base, step.cap)
                    s.limits_until = end
                    break
        s.limits = _category_limits(p, base)
        common = 0
        if s.status == ev.SenderStatus.RESTRICTED:
            common |= F_RESTRICTED
        if p.free_entry_point_allows_free_form:
            common |= F_FEP_FREE_FORM
        marketing = common | F_MARKETING
        if p.block_marketing_on_red and s.quality == ev.Quality.RED:
            marketing |= F_QUALITY_BLOCK
        s.flags = [common, marketing, common, common, common]

    # -- feedback --------------------------------------------------------------

    def apply(self, event: ev.Event, now_ms: int) -> ApplyResult:
        """Apply one feedback event. Unknown senders/templates/tickets → applied=False.

        Raises :class:`InvalidArgument` for a malformed field (e.g. a recipient
        that is not E.164 digits).
        """
        at = getattr(event, "at_unix_ms", 0)
        now = self._now(at if isinstance(at, int) else 0, now_ms)
        # A refused event changes nothing: its fields are checked before time moves.
        self._check_event(event)
        if now > self.latest_ms:
            self.latest_ms = now
        self._prune(now)
        if self._due_dirty:
            self._recompute_due()
        if now >= self._next_due:
            self._maintain(now)
        result, record = self._apply_event(event, now)
        if result.applied and record and self._journal_on:
            payload = {
                "k": "event",
                "now": now,
                "type": type(event).__name__,
                "f": dataclasses.asdict(event),
            }
            self._journal_json(payload)
        return result

    def _check_event(self, event: ev.Event) -> None:
        """Raise :class:`InvalidArgument` for a malformed field of ``event`` (the
        checks of its fields alone), before any change — time-driven ones included."""
        if isinstance(event, ev.InboundMessage | ev.OptOut):
            self._rkey(event.recipient, "recipient")
        elif isinstance(event, ev.SendResult):
            if int(event.status) not in (1, 2, 3, 4):
                raise InvalidArgument("status", f"status: unknown value {event.status!r}")
            mid = event.message_id
            if not isinstance(mid, str) or len(mid) > MAX_KEY_LEN:
                raise InvalidArgument(
                    "message_id",
                    f"message_id: must be a string of at most {MAX_KEY_LEN} characters",
                )
            named = event.ticket or event.idempotency_key or mid
            if event.recipient or (event.status == ev.SendStatus.FAILED and not named):
                self._rkey(event.recipient, "recipient")  # what a failure without them releases
        elif isinstance(event, ev.SenderUpdate):
            self._check_sender_update(event)
        elif isinstance(event, ev.TemplateUpdate):
            self._check_template_update(event)

    def _apply_event(self, event: ev.Event, now: int) -> tuple[ApplyResult, bool]:
        if isinstance(event, ev.SendResult):
            return self._on_send_result(event, now)
        if isinstance(event, ev.InboundMessage):
            return self._on_inbound(event, now), True
        if isinstance(event, ev.OptOut):
            return self._on_opt_out(event), True
        if isinstance(event, ev.SenderUpdate):
            return self._on_sender_update(event, now), True
        if isinstance(event, ev.TemplateUpdate):
            return self._on_template_update(event, now), True
        if isinstance(event, ev.QualityUpdate):
            return self._on_quality_update(event, now), True
        if isinstance(event, ev.CapabilityUpdate):
            return self._on_capability_update(event, now), True
        if isinstance(event, ev.AccountUpdate):
            return self._on_account_update(event, now), True
        if isinstance(event, ev.TemplateQualityUpdate):
            return self._on_template_quality(event), True
        return ApplyResult(False, f"unsupported event type {type(event).__name__}"), False

    def _seen_once(self, key: str, now: int) -> bool:
        """True when ``key`` (a message id) was applied before; else remember it."""
        if key in self._seen:
            return True
        until = now + self.profile.message_id_ms
        self._seen[key] = until
        self._seen_order.append((until, key))
        return False

    @staticmethod
    def _rkey(recipient: str, field_name: str) -> int:
        try:
            return recipient_key(recipient)
        except ValueError as exc:
            raise InvalidArgument(field_name, f"{field_name}: {exc}") from None

    def _on_inbound(self, e: ev.InboundMessage, now: int) -> ApplyResult:
        rkey = self._rkey(e.recipient, "recipient")
        s = self._senders.get(e.sender_id)
        if s is None:
            return ApplyResult(False, f"unknown sender {e.sender_id!r}")
        if e.message_id and self._seen_once("in:" + e.message_id, now):
            return ApplyResult(False, f"message {e.message_id} already applied")
        p = self.profile
        # The window runs from the user's message: never later than the time it arrived.
        start = e.at_unix_ms if 0 < e.at_unix_ms < now else now
        fep = int(e.entry_point) in p.free_entry_points
        fep_until = start + p.free_entry_point_window_ms if fep else NEVER
        self.engine.open_window(s.number, rkey, start + p.service_window_ms, fep_until)
        kind = "free entry point (72 h)" if fep else "customer service"
        return ApplyResult(True, f"{kind} window open for {e.recipient}")

    def _ticket_of(self, e: ev.SendResult, now: int) -> str:
        """The ticket a send result names, directly or by sender + idempotency key (a
        key bound to another recipient than the result names: :class:`KeyConflict`)."""
        if e.ticket or not (e.sender_id and e.idempotency_key):
            return e.ticket
        s0 = self._senders.get(e.sender_id)
        first = s0.idem.get(e.idempotency_key) if s0 is not None else None
        if first is None or first[4] <= now:
            return ""
        if e.recipient:
            rkey = self._rkey(e.recipient, "recipient")
            if (first[rec.E_BOUND] ^ rkey) & rec.RECIPIENT_BITS:
                raise KeyConflict("idempotency_key", 0, "recipient")
        return first[0]

    def _ticket_numbers(self, ticket: str) -> tuple[int, int, int, int, int] | None:
        """(ticket id, number, recipient key, prev_counted, slot stamp) of a ticket this
        service issued (its MAC checked); None for any other string. Replay takes the
        tickets of its records as they are: they were checked when first applied (and
        records from before MACs hold tickets without one)."""
        if self._replaying:
            found = ticket_fields(ticket)
        else:
            found = decode_ticket(ticket, self._k0, self._k1, _encode_ticket)
        if found is None or found[1] >= len(self._by_number):
            return None
        return found

    def _link_retention(self) -> int:
        p = self.profile
        return max(p.idempotency_ms, p.window_ms)

    def _linked_ticket(self, message_id: str, now: int) -> str:
        found = self._links.get(message_id)
        return found[0] if found is not None and found[1] > now else ""

    def _link(self, message_id: str, ticket: str, now: int) -> None:
        """Remember message id → ticket; expired links, then the oldest, make room.

        Links change only here (and in restore), at the times of journaled send
        results, so a replay rebuilds exactly the same links; a lookup checks the
        expiry itself, so an expired link never applies even before it is dropped.
        """
        links, order = self._links, self._link_order
        cap = self.profile.message_links
        while order and (order[0][0] <= now or len(links) >= cap):
            until, old = order.popleft()
            found = links.get(old)
            if found is not None and found[1] == until:
                del links[old]
        until = now + self._link_retention()
        links[message_id] = (ticket, until)
        order.append((until, message_id))

    def _on_delivery_status(self, e: ev.SendResult, now: int) -> tuple[ApplyResult, bool]:
        """SENT, DELIVERED or READ: link Meta's message id to the ticket when both are named."""
        name = ev.SendStatus(e.status).name.lower()
        mid = e.message_id
        ticket = self._ticket_of(e, now) if mid else ""
        if not ticket:
            return ApplyResult(True, f"{name}: nothing to do"), False
        if not isinstance(mid, str) or len(mid) > MAX_KEY_LEN:
            raise InvalidArgument(
                "message_id", f"message_id: must be a string of at most {MAX_KEY_LEN} characters"
            )
        if self._ticket_numbers(ticket) is None:
            return ApplyResult(False, f"unknown or invalid ticket {ticket!r}"), False
        if self.profile.message_links == 0:
            return ApplyResult(True, f"{name}: nothing to do (message links are off)"), False
        found = self._links.get(mid)
        if found is not None and found[1] > now:
            if found[0] == ticket:
                return ApplyResult(True, f"{name}: message {mid} already linked"), False
            return ApplyResult(
                False, f"message {mid} is already linked to ticket {found[0]!r}"
            ), False
        self._link(mid, ticket, now)
        return ApplyResult(True, f"{name}: message {mid} linked to ticket {ticket}"), True

    def _on_send_result(self, e: ev.SendResult, now: int) -> tuple[ApplyResult, bool]:
        if int(e.status) not in (1, 2, 3, 4):
            raise InvalidArgument("status", f"status: unknown value {e.status!r}")
        if e.status != ev.SendStatus.FAILED:
            return self._on_delivery_status(e, now)
        dedupe = f"st:{e.message_id}" if e.message_id else ""
        if dedupe and dedupe in self._seen:
            return ApplyResult(False, f"message {e.message_id} already applied"), False
        decoded: tuple[int, int, int, int, int] | None = None
        sender: Sender | None = None
        ticket = self._ticket_of(e, now)
        linked = False
        if not ticket and e.message_id:
            # A webhook status names Meta's message id only: the ticket it was linked to.
            ticket = self._linked_ticket(e.message_id, now)
            linked = bool(ticket)
        if ticket:
            decoded = self._ticket_numbers(ticket)
            if decoded is None:
                return ApplyResult(False, f"unknown or invalid ticket {ticket!r}"), False
            sender = self._by_number[decoded[1]]
            if linked and e.sender_id and e.sender_id != sender.id:
                return ApplyResult(
                    False,
                    f"message {e.message_id} was sent by sender {sender.id!r}, "
                    f"not {e.sender_id!r}: nothing released",
                ), False
            rkey = decoded[2]
        else:
            sender = self._senders.get(e.sender_id)
            if sender is None:
                return ApplyResult(False, f"unknown sender {e.sender_id!r}"), False
            rkey = self._rkey(e.recipient, "recipient")
        code = e.meta_error_code
        done: list[str] = []
        scope = sender.scope.index
        if decoded is not None and code not in self.profile.keep_slot_codes:
            _, _, _, prev, slot = decoded
            if self.engine.release(scope, rkey, slot, prev):
                done.append("slot released")
        if code == 130429:
            self.engine.slow_throughput(sender.number, now, self.profile.throughput_backoff_ms)
            done.append("throughput paused")
        elif code == 131047:
            self.engine.close_window(sender.number, rkey)
            done.append("window closed")
        elif code == 131050:
            self.engine.set_opt_out(scope, rkey, True)
            done.append("recipient opted out of marketing")
        elif code == 131049 and self.profile.ecosystem_backoff_ms > 0:
            self._eco[(scope, rkey)] = now + self.profile.ecosystem_backoff_ms
            done.append("marketing to recipient held back")
        if not done:
            if not ticket and e.message_id:
                return ApplyResult(
                    False,
                    f"no ticket linked to message {e.message_id}: nothing to release "
                    "(a send result naming both ticket and message_id links them)",
                ), False
            return ApplyResult(False, "nothing to release (already released or relied on)"), False
        if dedupe:
            self._seen_once(dedupe, now)
        detail = ", ".join(done)
        if linked:
            detail += f" (ticket {ticket}, linked to message {e.message_id})"
        return ApplyResult(True, detail), True

    def _on_opt_out(self, e: ev.OptOut) -> ApplyResult:
        rkey = self._rkey(e.recipient, "recipient")
        scopes: dict[int, LimitScope] = {}
        if e.sender_id:
            s = self._senders.get(e.sender_id)
            if s is None:
                return ApplyResult(False, f"unknown sender {e.sender_id!r}")
            scopes[s.scope.index] = s.scope
        if e.portfolio_id:
            for s in self._by_number:
                if s.portfolio_id == e.portfolio_id:
                    scopes[s.scope.index] = s.scope
            if not scopes:
                return ApplyResult(False, f"unknown portfolio {e.portfolio_id!r}")
        if not scopes:
            return ApplyResult(False, "opt_out names neither a sender nor a portfolio")
        for idx in scopes:
            self.engine.set_opt_out(idx, rkey, e.opted_out)
        what = "opted out of" if e.opted_out else "opted in to"
        return ApplyResult(True, f"{e.recipient} {what} marketing in {len(scopes)} scope(s)")

    def _tier_name(self, value: str) -> str | None:
        v = value.strip()
        if self.profile.knows_tier(v):
            return v
        if v.isascii() and v.isdigit():  # "²" and "١٠٠٠" are str.isdigit() too
            return self.profile.tier_for_limit(int(v))
        return None

    def _check_sender_update(self, u: ev.SenderUpdate) -> None:
        sid = u.sender_id
        if not sid or len(sid) > MAX_ID_LEN:
            raise InvalidArgument("sender_id", f"sender_id: must be 1..{MAX_ID_LEN} characters")
        if u.tier is not None and self._tier_name(u.tier) is None:
            known = ", ".join(t for t, _ in self.profile.tier_limits)
            raise InvalidArgument("tier", f"tier: unknown tier {u.tier!r} (known: {known})")
        if u.throughput_mps is not None and u.throughput_mps < 0:
            raise InvalidArgument("throughput_mps", "throughput_mps: must be >= 0")
        if u.registered_at_unix_ms is not None and u.registered_at_unix_ms < 0:
            raise InvalidArgument("registered_at_unix_ms", "registered_at_unix_ms: must be >= 0")
        if u.quality is not None and int(u.quality) not in (1, 2, 3, 4):
            raise InvalidArgument("quality", f"quality: unknown value {u.quality!r}")
        if u.status is not None and int(u.status) not in (1, 2, 3, 4, 5):
            raise InvalidArgument("status", f"status: unknown value {u.status!r}")

    def _on_sender_update(self, u: ev.SenderUpdate, now: int) -> ApplyResult:
        """Apply a sender update whose fields passed ``_check_sender_update``."""
        p = self.profile
        sid = u.sender_id
        tier = self._tier_name(u.tier) if u.tier is not None else None
        display = _digits(u.display_phone_number) if u.display_phone_number is not None else None
        s = self._senders.get(sid)
        if display:
            other = self._by_display.get(display)
            if other is not None and other.id != sid:
                return ApplyResult(
                    False, f"display number {display} already belongs to sender {other.id!r}"
                )
        created = False
        if s is None:
            s = self._create_sender(sid, u, tier, now)
            created = True
        elif (
            u.portfolio_id is not None
            and u.portfolio_id != s.portfolio_id
            and p.limit_scope == "portfolio"
        ):
            return ApplyResult(
                False,
                f"sender {sid!r} belongs to portfolio {s.portfolio_id!r}; "
                f"moving it to {u.portfolio_id!r} is not supported (its limit is shared there)",
            )
        elif u.portfolio_id is not None:
            s.portfolio_id = u.portfolio_id
        if u.waba_id is not None:
            s.waba_id = u.waba_id
        if display is not None:
            if s.display:
                self._by_display.pop(s.display, None)
            s.display = display
            if display:
                self._by_display[display] = s
        if u.verified is not None:
            s.verified = u.verified
        if u.registered_at_unix_ms is not None:
            s.registered_at = u.registered_at_unix_ms
        if u.coexistence is not None:
            s.coexistence = u.coexistence
        if u.throughput_mps is not None:
            s.mps_override = u.throughput_mps
        if u.status is not None:
            self._set_status(s, int(u.status), u.restricted_until_unix_ms or 0)
        elif u.restricted_until_unix_ms is not None and s.status == ev.SenderStatus.RESTRICTED:
            s.restricted_until = u.restricted_until_unix_ms
        if u.quality is not None:
            self._set_quality(s, int(u.quality), now)
        if tier is not None and not created and tier != s.scope.tier:
            self._set_tier(s.scope, tier, now)
        self._refresh(s, now)
        return ApplyResult(True, f"sender {sid} {'created' if created else 'updated'}")

    def _create_sender(self, sid: str, u: ev.SenderUpdate, tier: str | None, now: int) -> Sender:
        p = self.profile
        start = tier or (p.starting_tier_unverified if u.verified is False else p.starting_tier)
        pid = u.portfolio_id or ""
        scope: LimitScope | None = None
        if p.limit_scope == "portfolio":
            pkey = pid or f"sender:{sid}"
            scope = self._portfolios.get(pkey)
            if scope is None:
                scope = self._new_scope(pkey, start, now)
                self._portfolios[pkey] = scope
            elif tier is not None and tier != scope.tier:
                self._set_tier(scope, tier, now)
        else:
            scope = self._new_scope(sid, start, now)
        s = Sender(sid, len(self._by_number), scope, pid)
        s.verified = u.verified
        number = self.engine.add_number(scope.index, *self._number_params(s))
        if number != s.number:
            raise RuntimeError("engine number index out of step with the policy layer")
        scope.senders.append(s)
        self._senders[sid] = s
        self._by_number.append(s)
        return s

    def _new_scope(self, key: str, tier: str, now: int) -> LimitScope:
        p = self.profile
        idx = self.engine.add_scope(p.frequency_cap, p.frequency_window_ms)
        if idx != len(self._scopes):
            raise RuntimeError("engine scope index out of step with the policy layer")
        scope = LimitScope(idx, key, tier, now)
        self._scopes.append(scope)
        return scope

    def _refresh(self, s: Sender, now: int) -> None:
        """After a change: derived parameters, engine buckets, due times, crossing."""
        self._derive(s, now)  # a tier change already re-derived every member (_set_tier)
        self.engine.set_number_params(s.number, *self._number_params(s))
        self._due_dirty = True
        if s.scope.crossed_at == NEVER:
            self._check_crossing(s.scope, max(now, s.scope.last_now))

    def _set_status(self, s: Sender, status: int, restricted_until: int) -> None:
        s.status = status
        s.floor_restricted = False
        s.restricted_until = restricted_until if status == ev.SenderStatus.RESTRICTED else 0

    def _set_quality(self, s: Sender, quality: int, now: int) -> None:
        p = self.profile
        s.quality = quality
        if quality == ev.Quality.RED:
            if s.red_since == NEVER:
                s.red_since = now
            if p.red_sets_flagged and s.status == ev.SenderStatus.CONNECTED:
                s.status = int(ev.SenderStatus.FLAGGED)
        else:
            s.red_since = NEVER
            if p.red_sets_flagged and s.status == ev.SenderStatus.FLAGGED:
                s.status = int(ev.SenderStatus.CONNECTED)
            if s.floor_restricted and s.status == ev.SenderStatus.RESTRICTED:
                s.status = int(ev.SenderStatus.CONNECTED)
            s.floor_restricted = False

    def _find_template(self, template_id: str, name: str = "") -> Template | None:
        t = self._templates.get(template_id) if template_id else None
        if t is None and template_id:
            t = self._template_names.get(template_id)
        if t is None and name:
            t = self._template_names.get(name) or self._templates.get(name)
        return t

    @staticmethod
    def _check_template_update(u: ev.TemplateUpdate) -> None:
        if not u.template_id:
            raise InvalidArgument("template_id", "template_id: is required")
        if int(u.status) not in (1, 2, 3, 4, 5):
            raise InvalidArgument("status", f"status: unknown value {u.status!r}")
        if u.paused_until_unix_ms < 0:
            raise InvalidArgument("paused_until_unix_ms", "paused_until_unix_ms: must be >= 0")

    def _on_template_update(self, u: ev.TemplateUpdate, now: int) -> ApplyResult:
        """Apply a template update whose fields passed ``_check_template_update``."""
        status = int(u.status)
        p = self.profile
        t = self._find_template(u.template_id, u.template_name)
        S = ev.TemplateStatus
        if t is not None and t.disabled and status == S.UNPAUSED:
            return ApplyResult(False, f"template {t.id} is disabled; UNPAUSED does not apply")
        # A pause is dated by Meta's time of the event (the service's time without one).
        start = u.at_unix_ms if u.at_unix_ms > 0 else now
        if status == S.PAUSED and t is not None and t.pause_count:
            # The pause already counted, redelivered (possibly after a restart, when
            # the webhook de-duplication memory is gone): it must not count again.
            given = u.paused_until_unix_ms
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
            self._templates[t.id] = t
        if u.template_name and u.template_name != t.name:
            t.name = u.template_name
        if t.name:
            self._template_names[t.name] = t
        if u.waba_id:
            t.waba_id = u.waba_id
        if status == S.PAUSED:
            if now < t.paused_until and not u.paused_until_unix_ms:
                return ApplyResult(True, f"template {t.id} already paused")
            t.pause_count += 1
            t.pause_start = start
            if t.pause_count >= p.disable_after_pauses:
                t.status = int(S.DISABLED)
                t.paused_until = 0
                t.pause_end = u.paused_until_unix_ms
                return ApplyResult(True, f"template {t.id} disabled after {t.pause_count} pauses")
            pause = p.pause_ms[min(t.pause_count, len(p.pause_ms)) - 1]
            t.status = int(S.PAUSED)
            t.paused_until = u.paused_until_unix_ms or min(start, now) + pause
            t.pause_end = t.paused_until
            return ApplyResult(True, f"template {t.id} paused until {t.paused_until}")
        if status in (S.UNPAUSED, S.APPROVED):
            t.status = int(S.APPROVED)
            t.paused_until = 0
            return ApplyResult(True, f"template {t.id} {'registered' if created else 'active'}")
        t.status = status
        t.paused_until = 0
        return ApplyResult(True, f"template {t.id} {S(status).name.lower()}")

    def _on_template_quality(self, u: ev.TemplateQualityUpdate) -> ApplyResult:
        t = self._find_template(u.template_id, u.template_name)
        if t is None:
            return ApplyResult(False, f"unknown template {u.template_id or u.template_name!r}")
        t.quality = u.new_quality
        return ApplyResult(True, f"template {t.id} quality {u.new_quality}")

    def _on_quality_update(self, u: ev.QualityUpdate, now: int) -> ApplyResult:
        s = self._by_display.get(_digits(u.display_phone_number))
        if s is None:
            return ApplyResult(False, f"no sender with display number {u.display_phone_number!r}")
        event = u.event.upper()
        Q, St = ev.Quality, ev.SenderStatus
        if event == "FLAGGED":
            self._set_quality(s, int(Q.RED), now)
            if s.status == St.CONNECTED:
                s.status = int(St.FLAGGED)
        elif event == "UNFLAGGED":
            self._set_quality(s, int(Q.GREEN), now)
            if s.status == St.FLAGGED:
                s.status = int(St.CONNECTED)
        elif event == "THROUGHPUT_UPGRADE":
            s.throughput_upgraded = True
        elif event in ("UPGRADE", "DOWNGRADE", "ONBOARDING", "COMPLIANCE_ISSUE"):
            pass
        else:
            return ApplyResult(False, f"quality event {u.event!r} is not used")
        tier_value = ""
        if self.profile.limit_scope == "portfolio" and u.max_daily_conversations_per_business:
            tier_value = u.max_daily_conversations_per_business
        elif u.current_limit and event != "THROUGHPUT_UPGRADE":
            tier_value = u.current_limit
        detail = f"sender {s.id}: {event.lower()}"
        if tier_value:
            tier = self._tier_name(tier_value)
            if tier is None:
                return ApplyResult(False, f"unknown tier {tier_value!r}")
            if tier != s.scope.tier:
                self._set_tier(s.scope, tier, now)
                detail += f", tier {tier}"
        self._refresh(s, now)
        return ApplyResult(True, detail)

    def _waba_senders(self, waba_id: str) -> list[Sender]:
        return [s for s in self._by_number if s.waba_id == waba_id]

    def _on_capability_update(self, u: ev.CapabilityUpdate, now: int) -> ApplyResult:
        senders = self._waba_senders(u.waba_id)
        if not senders:
            return ApplyResult(False, f"no sender in WABA {u.waba_id!r}")
        if self.profile.limit_scope != "portfolio":
            return ApplyResult(
                False, f"profile {self.profile.name} limits phone numbers, not portfolios"
            )
        value = str(u.max_daily_conversations_per_business).strip()
        if not value:
            return ApplyResult(False, "no portfolio limit in the update")
        tier = self._tier_name(value)
        if tier is None:
            return ApplyResult(False, f"unknown tier {value!r}")
        scopes = {s.scope.index: s.scope for s in senders}
        for scope in scopes.values():
            if scope.tier != tier:
                self._set_tier(scope, tier, now)
        self._refresh(senders[0], now)
        return ApplyResult(True, f"portfolio tier {tier} for WABA {u.waba_id}")

    def _on_account_update(self, u: ev.AccountUpdate, now: int) -> ApplyResult:
        senders = self._waba_senders(u.waba_id)
        if not senders:
            return ApplyResult(False, f"no sender in WABA {u.waba_id!r}")
        event = u.event.upper()
        St = ev.SenderStatus
        new: int | None = None
        until = 0
        note = event
        if event == "ACCOUNT_RESTRICTION":
            types = [t.upper() for t in u.restriction_types]
            note = f"{event} {','.join(types)}".strip()
            messaging = [t for t in types if "MESSAGING" in t]
            if types and not messaging:
                self._note_account(senders, note)
                return ApplyResult(True, "restriction recorded (does not limit messaging)")
            if u.expires_at_unix_ms and u.expires_at_unix_ms <= now:
                self._note_account(senders, note)
                return ApplyResult(True, "restriction recorded (already expired)")
            new, until = int(St.RESTRICTED), u.expires_at_unix_ms
        elif event in ("DISABLED_UPDATE", "ACCOUNT_DELETED", "BAN"):
            state = u.ban_state.upper()
            note = f"{event} {state}".strip()
            if state in ("REINSTATE", "REINSTATED"):
                new = int(St.CONNECTED)
            elif state == "SCHEDULE_FOR_DISABLE":
                self._note_account(senders, note)
                return ApplyResult(True, "disable scheduled: recorded")
            else:
                new = int(St.BANNED) if event == "BAN" else int(St.DISABLED)
        elif event == "ACCOUNT_VIOLATION":
            for s in senders:
                s.violations += 1
            self._note_account(senders, note)
            return ApplyResult(True, "violation recorded")
        else:
            return ApplyResult(False, f"account event {u.event!r} is not used")
        self._note_account(senders, note)
        for s in senders:
            self._set_status(s, new, until)
        for s in senders:
            self._refresh(s, now)
        name = St(new).name
        return ApplyResult(True, f"{len(senders)} sender(s) of WABA {u.waba_id} now {name}")

    @staticmethod
    def _note_account(senders: list[Sender], note: str) -> None:
        for s in senders:
            s.account_event = note

    # -- reports ---------------------------------------------------------------

    def sender_state(self, sender_id: str, now_ms: int, at_unix_ms: int = 0) -> SenderReport:
        """The state GetSenderState reports. Raises KeyError for an unknown sender.

        ``at_unix_ms`` (the request's field) is used instead of ``now_ms`` when
        the service runs with ``clock="request"`` and it is non-zero.
        """
        s = self._senders.get(sender_id)
        if s is None:
            raise KeyError(sender_id)
        now_ms = self._now(at_unix_ms, now_ms)
        if now_ms > self.latest_ms:
            self.latest_ms = now_ms
        if self._due_dirty:
            self._recompute_due()
        if now_ms >= self._next_due:
            self._maintain(now_ms)
        scope = s.scope
        now = max(now_ms, scope.last_now)
        p = self.profile
        limit = p.tier_limit(scope.tier)
        effective = s.limits[1]
        used, nxt, unique, slots = self.engine.usage(scope.index, now, effective)
        if scope.crossed_at == NEVER:
            self._check_crossing(scope, now)
        have = unique if p.upgrade_basis == "unique" else slots
        nxt_tier = p.next_tier(scope.tier)
        need = self._threshold(scope) if nxt_tier is not None else 0
        predicted = 0
        if scope.crossed_at != NEVER and self._eligible(scope):
            predicted = (
                scope.due_at
                if p.upgrade_mode == "apply"
                else scope.crossed_at + p.predict_within_ms
            )
        upgrade = UpgradeReport(
            eligible=nxt_tier is not None and self._eligible(scope) and have >= need,
            progress=min(1.0, have / need) if need > 0 else (1.0 if nxt_tier is None else 0.0),
            predicted_at_unix_ms=predicted,
            next_tier=nxt_tier or "",
        )
        paused = [
            PausedTemplateReport(t.id, t.name, t.paused_until if not t.disabled else 0, t.disabled)
            for t in self._templates.values()
            if (t.disabled or now < t.paused_until) and (not t.waba_id or t.waba_id == s.waba_id)
        ]
        return SenderReport(
            sender_id=s.id,
            portfolio_id=s.portfolio_id,
            profile=p.name,
            tier=scope.tier,
            limit=limit,
            used_24h=used,
            remaining=max(0, effective - used),
            next_slot_free_at_unix_ms=nxt if used >= effective else now,
            unique_7d=unique,
            upgrade=upgrade,
            quality=s.quality,
            status=s.status,
            throughput_mps=self._mps(s),
            open_windows=self.engine.open_windows(s.number, now),
            paused_templates=paused,
            decision_counts={r: c for r, c in enumerate(s.counts) if c},
            display_phone_number=s.display,
            effective_limit=effective,
            at_unix_ms=now,
            waba_id=s.waba_id,
            verified=s.verified,
            slots_7d=slots,
            restricted_until_unix_ms=s.restricted_until,
            coexistence=s.coexistence,
            registered_at_unix_ms=s.registered_at,
            limit_scope=p.limit_scope,
            tier_since_unix_ms=scope.tier_since,
            account_violations=s.violations,
            last_account_event=s.account_event,
        )

    def senders(self) -> list[str]:
        """Known sender ids, in creation order."""
        return [s.id for s in self._by_number]

    @property
    def unknown_sender_decisions(self) -> int:
        return self._unknown_sender_count

    # -- retention -------------------------------------------------------------

    def _prune(self, now: int) -> None:
        order = self._idem_order
        while order and order[0][0] <= now:
            until, sid, key = order.popleft()
            s = self._senders.get(sid)
            if s is not None:
                entry = s.idem.get(key)
                # Only the entry this expiry belongs to (the key may have been used
                # again after it expired, before this was dropped).
                if entry is not None and entry[4] == until:
                    del s.idem[key]
        seen = self._seen_order
        while seen and seen[0][0] <= now:
            _, key = seen.popleft()
            self._seen.pop(key, None)
        if self._eco and len(self._eco) > 1024:
            self._eco = {k: v for k, v in self._eco.items() if v > now}

    # -- journal ---------------------------------------------------------------

    def _journal_json(self, payload: dict[str, Any]) -> None:
        if self._journal_on and not self._replaying:
            body = json.dumps(payload, separators=(",", ":")).encode()
            self._journal.append(bytes((_TAG_JSON, _JSON_VERSION)) + body)

    def _journal_state(self, scopes: list[LimitScope], senders: list[Sender]) -> None:
        if self._journal_on and not self._replaying and (scopes or senders):
            self._journal_json(
                {
                    "k": "state",
                    "scopes": [sc.to_dict() for sc in scopes],
                    "senders": [s.to_dict() for s in senders],
                }
            )

    def drain_journal(self) -> list[bytes]:
        """Records of every state change since the last drain, oldest first."""
        out = self._journal
        self._journal = []
        return out

    def replay(self, record: bytes) -> None:
        """Re-apply one journal record exactly (recovery): no checks, no new records."""
        if len(record) < 2:
            raise ValueError("journal record too short")
        tag, version = record[0], record[1]
        if version > JOURNAL_VERSION:
            raise ValueError(f"journal record version {version} is newer than this tiergate")
        self._replaying = True
        try:
            if tag == _TAG_ADMIT:
                self._replay_admit(record)
            elif tag == _TAG_BATCH:
                self._replay_batch(record)
            elif tag == _TAG_JSON:
                payload = json.loads(record[2:])
                if payload["k"] == "event":
                    cls = _EVENT_TYPES[payload["type"]]
                    fields = payload["f"]
                    if "restriction_types" in fields:
                        fields["restriction_types"] = tuple(fields["restriction_types"])
                    self._apply_event(cls(**fields), int(payload["now"]))
                elif payload["k"] == "profile":
                    # The switch as it happened, for the profile this process runs.
                    self._rederive(int(payload["now"]))
                elif payload["k"] == "state":
                    for d in payload["scopes"]:
                        self._scopes[int(d["index"])].load(d)
                    for d in payload["senders"]:
                        s = self._senders[str(d["id"])]
                        s.load(d)
                    for d in payload["senders"]:
                        s = self._senders[str(d["id"])]
                        for member in s.scope.senders:
                            self._derive(member, s.scope.last_now)
                    for d in payload["scopes"]:
                        for member in self._scopes[int(d["index"])].senders:
                            self._derive(member, max(member.scope.last_now, 0))
                else:
                    raise ValueError(f"unknown journal record kind {payload['k']!r}")
            else:
                raise ValueError(f"unknown journal record tag {tag:#x}")
        finally:
            self._replaying = False
        if tag != _TAG_ADMIT and tag != _TAG_BATCH:
            self._due_dirty = True

    def _replay_admit(self, record: bytes) -> None:
        rows = [rec.ROW.unpack_from(record, 2)]
        self._replay_rows(record, rows, 2 + rec.ROW.size)

    def _replay_batch(self, record: bytes) -> None:
        _, _, count = rec.BATCH_HEAD.unpack_from(record)
        start = rec.BATCH_HEAD.size
        keys_at = start + count * rec.ROW.size
        if len(record) < keys_at:
            raise ValueError(f"batch journal record of {count} rows is cut short")
        rows = list(rec.ROW.iter_unpack(memoryview(record)[start:keys_at]))
        self._replay_rows(record, rows, keys_at)

    def _replay_rows(self, record: bytes, rows: list[tuple[int, ...]], keys_at: int) -> None:
        """Replay the rows of an admit or batch record whose keys start at ``keys_at``."""
        bound_keys = record[1] >= rec.BINDING_VERSION
        binding = rec.BINDING
        end = len(record)
        row = self._replay_row
        for now, number, rkey, flags, tid, limit, klen in rows:
            if not klen:
                row(now, number, rkey, flags, tid, limit, "", 0, 0, None)
                continue
            if keys_at + klen > end:
                raise ValueError("admit journal record: key bytes do not match the rows")
            key = record[keys_at : keys_at + klen].decode()
            keys_at += klen
            if not bound_keys:  # before keys were bound: the recipient only
                row(now, number, rkey, flags, tid, limit, key, 0, 0, None)
                continue
            if keys_at + binding.size > end:
                raise ValueError("admit journal record: key bytes do not match the rows")
            kind, cat, tlen = binding.unpack_from(record, keys_at)
            keys_at += binding.size
            tpl = record[keys_at : keys_at + tlen].decode()
            keys_at += tlen
            row(now, number, rkey, flags, tid, limit, key, kind, cat, tpl)
        if keys_at != end:
            raise ValueError("admit journal record: key bytes do not match the rows")

    def _replay_row(
        self,
        now: int,
        number: int,
        rkey: int,
        flags: int,
        tid: int,
        limit: int,
        key: str,
        kind: int,
        cat: int,
        tpl: str | None,
    ) -> None:
        """One admit as it happened (forced: the answer was given; only state follows)."""
        s = self._by_number[number]
        scope = s.scope
        if now > scope.last_now:
            scope.last_now = now
        _, _, _, counted, used, prev, slot = self.engine.decide(
            now, scope.index, number, rkey, flags | F_FORCE, limit
        )
        self._ticket = max(self._ticket, tid)
        s.counts[OK] += 1
        if key:
            until = now + self.profile.idempotency_ms
            s.idem[key] = (
                _encode_ticket(self._k0, self._k1, tid, number, rkey, prev, slot),
                counted == 1,
                limit,
                used,
                until,
                rec.bind(rkey, kind, cat),
                tpl,
            )
            self._idem_order.append((until, s.id, key))

    # -- snapshots -------------------------------------------------------------

    def _engine_from_blob(self, blob: bytes) -> Engine:
        engine = type(self.engine).restore(blob)
        p = self.profile
        geometry = (
            engine.bucket_ms,
            engine.window_ms,
            engine.long_bucket_ms,
            engine.long_window_ms,
        )
        if geometry != (p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms):
            raise ValueError(
                "snapshot engine windows differ from profile "
                f"{p.name!r}: {geometry} (bucket, window, long bucket, long window in ms)"
            )
        return engine

    def snapshot(self) -> bytes:
        """The whole state (policy + engine), versioned (``SNAPSHOT_VERSION``)."""
        return b"".join(self._snapshot_encoder(self.engine)())

    def snapshot_room(self) -> Callable[[], object]:
        """A function that makes room for the next :meth:`snapshot_image` (memory
        for the engine's tables, as big as they are now, allocated and touched);
        it may run in another thread while this service goes on deciding."""
        return partial(type(self.engine).copy_room, self.engine.copy_sizes())

    def snapshot_image(self, room: object = None) -> Callable[[], list[bytes]]:
        """The whole state as of now, held apart from the live one: a function that
        encodes it, returning :meth:`snapshot`'s bytes in parts, and that may run in
        another thread while this service goes on deciding.

        Taking the image copies the engine's tables (a memcpy each in the
        compiled engine, into ``room`` from :meth:`snapshot_room` if given) and
        the containers of the policy layer's own state, whose items are
        immutable (tuples, strings, numbers); the encoding, the costly part, is
        left to the function.
        """
        return self._snapshot_encoder(self.engine.copy(room))

    def _snapshot_encoder(self, engine: Engine) -> Callable[[], list[bytes]]:
        fields: list[tuple[str, Any]] = [
            ("profile", self.profile.name),
            ("ticket", self._ticket),
            ("scopes", [sc.to_dict() for sc in self._scopes]),
            ("portfolios", {k: sc.index for k, sc in self._portfolios.items()}),
            ("senders", [s.to_dict() for s in self._by_number]),
            ("templates", [t.to_dict() for t in self._templates.values()]),
        ]
        idem_order = list(self._idem_order)
        idem = {sid: s.idem.copy() for sid, s in self._senders.items()}
        seen = list(self._seen_order)
        link_order = list(self._link_order)
        links = self._links.copy()
        eco = list(self._eco.items())
        unknown = self._unknown_sender_count

        def idem_row(item: tuple[int, str, str]) -> list[Any] | None:
            until, sid, key = item
            entry = idem.get(sid, {}).get(key)
            if entry is None or entry[4] != until:
                return None
            # expiry, sender, key; ticket, counted, limit, used; bound, template
            ticket, counted, limit, used, _, bound, tpl = entry
            return [until, sid, key, ticket, counted, limit, used, bound, tpl]

        def link_row(item: tuple[int, str]) -> list[Any] | None:
            until, mid = item
            link = links.get(mid)
            return [until, mid, link[0]] if link is not None and link[1] == until else None

        def encode() -> list[bytes]:
            body = _json_parts(
                [
                    *fields,
                    ("idem", _Rows(idem_order, idem_row)),
                    ("seen", _Rows(seen, list)),
                    ("links", _Rows(link_order, link_row)),
                    ("eco", [[sc, rk, until] for (sc, rk), until in eco]),
                    ("unknown", unknown),
                ]
            )
            size = sum(map(len, body))
            head = SNAPSHOT_MAGIC + struct.pack("<HI", SNAPSHOT_VERSION, size)
            return [head, *body, engine.snapshot()]

        return encode

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""
        head = len(SNAPSHOT_MAGIC) + 6
        if len(data) < head or not data.startswith(SNAPSHOT_MAGIC):
            raise ValueError("not a tiergate snapshot")
        version, size = struct.unpack_from("<HI", data, len(SNAPSHOT_MAGIC))
        if version > SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {version} is newer than this tiergate")
        state = json.loads(data[head : head + size])
        engine = self._engine_from_blob(data[head + size :])
        self.engine = engine
        self._reset_state()
        self._ticket = int(state["ticket"])
        for d in state["scopes"]:
            sc = LimitScope(int(d["index"]), str(d["key"]), str(d["tier"]), 0)
            sc.load(d)
            if not self.profile.knows_tier(sc.tier):
                raise ValueError(
                    f"snapshot holds tier {sc.tier!r}, which profile {self.profile.name!r} "
                    "does not define"
                )
            self._scopes.append(sc)
        for key, idx in state["portfolios"].items():
            self._portfolios[key] = self._scopes[int(idx)]
        for d in state["senders"]:
            scope = self._scopes[int(d["scope"])]
            s = Sender(str(d["id"]), int(d["number"]), scope, str(d["portfolio_id"]))
            s.load(d)
            scope.senders.append(s)
            self._senders[s.id] = s
            self._by_number.append(s)
            if s.display:
                self._by_display[s.display] = s
        for d in state["templates"]:
            t = Template.from_dict(d)
            self._templates[t.id] = t
            if t.name:
                self._template_names[t.name] = t
        for entry in state["idem"]:
            self._restore_key(version, entry)
        for until, key in state["seen"]:
            self._seen[key] = int(until)
            self._seen_order.append((int(until), key))
        for until, mid, ticket in state.get("links", ()):
            self._links[str(mid)] = (str(ticket), int(until))
            self._link_order.append((int(until), str(mid)))
        while len(self._links) > self.profile.message_links:
            until, mid = self._link_order.popleft()
            del self._links[mid]
        self._eco = {(int(sc), int(rk)): int(until) for sc, rk, until in state["eco"]}
        self._unknown_sender_count = int(state["unknown"])
        for s in self._by_number:
            self._derive(s, max(s.scope.last_now, 0))
            self.engine.set_number_params(s.number, *self._number_params(s))
        for sc in self._scopes:
            self.engine.set_scope_params(
                sc.index, self.profile.frequency_cap, self.profile.frequency_window_ms
            )
        self._recompute_due()

    def _restore_key(self, version: int, entry: list[Any]) -> None:
        """One idempotency entry of a snapshot."""
        until, sid, key = int(entry[0]), str(entry[1]), str(entry[2])
        if version >= 2:
            ticket, counted, limit, used, bound, tpl = entry[3:]
        else:
            # Before keys were bound: the answer's fields; the recipient is in the ticket,
            # which is signed here (it was written before tickets had a MAC).
            ticket, counted, limit, used = entry[3][3:7]
            found = ticket_fields(str(ticket))
            if found is None:
                raise ValueError(f"snapshot: idempotency key {key!r} holds no ticket")
            tid, number, rkey, prev, slot = found
            ticket = _encode_ticket(self._k0, self._k1, tid, number, rkey, prev, slot)
            bound, tpl = rkey, None
        self._senders[sid].idem[key] = (
            str(ticket),
            bool(counted),
            int(limit),
            int(used),
            until,
            int(bound),
            None if tpl is None else str(tpl),
        )
        self._idem_order.append((until, sid, key))

    def reload_profile(self, profile: Profile, now_ms: int) -> None:
        """Switch to ``profile`` in place (SIGHUP): limits, rates and rules re-derived
        for every sender and limit scope; the recipients, windows, keys and tickets
        stay as they are. The cost is per sender and scope, never per recipient.

        Journaled as a profile switch at ``now_ms``. A replay re-derives the state
        at that point for the profile the replaying process runs with — the one
        its config names, normally the profile switched to here.

        Raises ValueError, changing nothing, when the new profile's windows or
        limit scope differ (the engine's buckets and scopes are built for them)
        or it lacks a tier in use.
        """
        old = self.profile
        for name in ("bucket_ms", "window_ms", "long_bucket_ms", "lookback_ms"):
            if getattr(profile, name) != getattr(old, name):
                raise ValueError(
                    f"profile {profile.name!r} changes the counting windows ({name} "
                    f"{getattr(old, name)} -> {getattr(profile, name)}); restart to switch"
                )
        if profile.limit_scope != old.limit_scope and self._scopes:
            raise ValueError(
                f"profile {profile.name!r} changes the limit scope (limit_scope "
                f"{old.limit_scope} -> {profile.limit_scope}); restart to switch"
            )
        for sc in self._scopes:
            if not profile.knows_tier(sc.tier):
                raise ValueError(f"profile {profile.name!r} does not define tier {sc.tier!r}")
        self.profile = profile
        self._rederive(now_ms)
        self._journal_json({"k": "profile", "name": profile.name, "now": now_ms})

    def _rederive(self, now_ms: int) -> None:
        """Everything the profile decides, for every scope and sender, from the state."""
        profile = self.profile
        for sc in self._scopes:
            self.engine.set_scope_params(
                sc.index, profile.frequency_cap, profile.frequency_window_ms
            )
            if profile.upgrade_mode == "predict":
                sc.due_at = NEVER
            elif sc.crossed_at != NEVER:
                sc.due_at = max(
                    sc.crossed_at + profile.upgrade_delay_ms, sc.tier_since + profile.min_in_tier_ms
                )
        for s in self._by_number:
            self._derive(s, max(now_ms, s.scope.last_now))
            self.engine.set_number_params(s.number, *self._number_params(s))
        self._recompute_due()

    @classmethod
    def from_snapshot(
        cls,
        profile: Profile,
        data: bytes,
        *,
        clock: Literal["server", "request"] = "server",
        ticket_key: bytes | None = None,
    ) -> AdmissionService:
        """A service with the state of snapshot ``data``; ``ticket_key`` as the
        snapshot's service had it, for its tickets to stay valid."""
        service = cls(profile, clock=clock, ticket_key=ticket_key)
        service.restore(data)
        return service
