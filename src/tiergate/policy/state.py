"""Domain state the policy layer keeps beside the engine.

Limit scopes (a business portfolio, or one phone number, by profile), senders
(phone numbers) and templates. Recipients live in the engine's tables. Each
object turns into a plain dict and back, for snapshots and journal records.
:class:`PolicyState` holds all of it: the one object every policy module
(admission, feedback, tiers, reports, persistence) works on.
"""

from __future__ import annotations

import operator
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from tiergate.engine import NEVER
from tiergate.engine.constants import UNLIMITED
from tiergate.engine.records import Entry

from .caps import DEFAULT_CAPS, Caps

if TYPE_CHECKING:
    from .keys import KeyMemory
    from .profile import Profile
    from .seam import CountingStore

from .events import Quality, SenderStatus, TemplateStatus

REASONS = 15  # tiergate.v1.Reason values 0..14


class LimitScope:
    """What one unique-recipient limit belongs to, and its tier state machine."""

    __slots__ = (
        "crossed_at",
        "due_at",
        "held",
        "index",
        "key",
        "last_now",
        "on_path",
        "reach",
        "seen_7d",
        "senders",
        "tier",
        "tier_since",
    )

    def __init__(self, index: int, key: str, tier: str, tier_since: int) -> None:
        self.index = index  # engine scope index
        self.key = key  # portfolio id, or sender id under phone-number scope
        self.tier = tier
        self.tier_since = tier_since
        self.crossed_at = NEVER  # when the upgrade threshold was met (NEVER: not yet)
        self.due_at = NEVER  # apply mode: when the next tier takes effect
        self.last_now = NEVER  # latest time seen: policy time never goes backwards
        self.senders: list[Sender] = []
        # derived: members whose quality or status keep an upgrade back (``tiers.derive``)
        self.held = 0
        # Meta's scaling paths (profile ``upgrade.scaling_path``): while the scope is
        # in their tier, each recipient counted within the path's window, and when.
        self.on_path = False  # derived: the scope is in the profile's path tier
        self.reach: dict[int, int] = {}
        # Counts kept elsewhere (``PolicyState.counted_elsewhere``): the 7-day counts
        # (unique, slots) the shared store last answered for the scope; None: none yet.
        self.seen_7d: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "tier": self.tier,
            "tier_since": self.tier_since,
            "crossed_at": self.crossed_at,
            "due_at": self.due_at,
            "last_now": self.last_now,
        }

    def load(self, d: dict[str, Any]) -> None:
        self.tier = str(d["tier"])
        self.tier_since = int(d["tier_since"])
        self.crossed_at = int(d["crossed_at"])
        self.due_at = int(d["due_at"])
        self.last_now = int(d["last_now"])


class Sender:
    """A business phone number."""

    __slots__ = (
        "account_event",
        "coexistence",
        "counts",
        "display",
        "engine_index",
        "flags",
        "floor_restricted",
        "id",
        "idem",
        "limits",
        "limits_until",
        "mps_override",
        "portfolio_id",
        "quality",
        "red_since",
        "registered_at",
        "replies_restricted_until",
        "restricted_retry_at",
        "restricted_until",
        "scope",
        "slow_level",
        "slow_until",
        "spam_held_until",
        "status",
        "throughput_upgraded",
        "upgrade_ok",
        "verified",
        "violations",
        "waba_id",
        "warmup_cap",
    )

    def __init__(
        self, sender_id: str, engine_index: int, scope: LimitScope, portfolio_id: str
    ) -> None:
        self.id = sender_id
        self.engine_index = engine_index  # the engine's index of this phone number
        self.scope = scope
        self.portfolio_id = portfolio_id
        self.waba_id = ""
        self.display = ""
        self.verified: bool | None = None
        self.quality = int(Quality.UNKNOWN)
        self.status = int(SenderStatus.CONNECTED)
        self.red_since = NEVER
        self.restricted_until = 0  # 0: no known expiry
        self.spam_held_until = 0  # 0: not held; else Meta's 131048 hold ends then
        # Meta's RESTRICTED_CUSTOMER_INITIATED_MESSAGING: 0 none; its end, or
        # FAR_FUTURE while it has no known end
        self.replies_restricted_until = 0
        self.mps_override = 0  # 0: from the profile
        self.throughput_upgraded = False
        self.slow_level = 0  # halvings of the rate after Meta's 130429
        self.slow_until = 0  # 0: not slowed; else one halving is undone then
        self.coexistence = False
        self.registered_at = 0  # 0: unknown (no warm-up)
        self.floor_restricted = False  # restricted by tiergate's long-Red rule, not by Meta
        self.violations = 0  # account_update ACCOUNT_VIOLATION events seen
        self.account_event = ""  # the last account event, as recorded
        self.counts = [0] * REASONS
        # derived, recomputed on every change (indexed by Category value)
        self.flags = [0] * 5
        self.limits = [0] * 5
        self.limits_until = NEVER  # when the warm-up cap next changes
        # under portfolio scope: the cap on the number's own count (UNLIMITED: none)
        self.warmup_cap = UNLIMITED
        # when a refused business-initiated send may be retried (0: not known)
        self.restricted_retry_at = 0
        # derived: quality and status allow an upgrade (counted in ``scope.held`` if not)
        self.upgrade_ok = True
        # idempotency key → its first answer, an admit, and what the key is bound to
        self.idem: dict[str, Entry] = {}

    def to_dict(self) -> dict[str, Any]:
        return sender_dict(self.image(), list(self.counts))

    def image(self) -> tuple[Any, ...]:
        """The recorded fields' values (``SENDER_FIELDS``), but ``counts``: one C call,
        cheap enough to take for every sender within a snapshot's loop step."""
        return _sender_image(self)

    def load(self, d: dict[str, Any]) -> None:
        self.portfolio_id = str(d["portfolio_id"])
        self.waba_id = str(d["waba_id"])
        self.display = str(d["display"])
        v = d["verified"]
        self.verified = None if v is None else bool(v)
        self.quality = int(d["quality"])
        self.status = int(d["status"])
        self.red_since = int(d["red_since"])
        self.restricted_until = int(d["restricted_until"])
        self.spam_held_until = int(d.get("spam_held_until", 0))
        self.replies_restricted_until = int(d.get("replies_restricted_until", 0))
        self.mps_override = int(d["mps_override"])
        self.throughput_upgraded = bool(d["throughput_upgraded"])
        self.slow_level = int(d.get("slow_level", 0))
        self.slow_until = int(d.get("slow_until", 0))
        self.coexistence = bool(d["coexistence"])
        self.registered_at = int(d["registered_at"])
        self.floor_restricted = bool(d.get("floor_restricted", False))
        self.violations = int(d.get("violations", 0))
        self.account_event = str(d.get("account_event", ""))
        counts = [int(c) for c in d.get("counts", ())]
        self.counts = (counts + [0] * REASONS)[:REASONS]


#: A sender's recorded fields (snapshots, journal records): name → attribute.
SENDER_FIELDS = (
    ("id", "id"),
    ("number", "engine_index"),
    ("scope", "scope.index"),
    ("portfolio_id", "portfolio_id"),
    ("waba_id", "waba_id"),
    ("display", "display"),
    ("verified", "verified"),
    ("quality", "quality"),
    ("status", "status"),
    ("red_since", "red_since"),
    ("restricted_until", "restricted_until"),
    ("spam_held_until", "spam_held_until"),
    ("replies_restricted_until", "replies_restricted_until"),
    ("mps_override", "mps_override"),
    ("throughput_upgraded", "throughput_upgraded"),
    ("slow_level", "slow_level"),
    ("slow_until", "slow_until"),
    ("coexistence", "coexistence"),
    ("registered_at", "registered_at"),
    ("floor_restricted", "floor_restricted"),
    ("violations", "violations"),
    ("account_event", "account_event"),
)
_SENDER_NAMES = tuple(name for name, _ in SENDER_FIELDS)
_sender_image = operator.attrgetter(*(attr for _, attr in SENDER_FIELDS))


def sender_dict(image: tuple[Any, ...], counts: list[int]) -> dict[str, Any]:
    """A sender's record from its :meth:`Sender.image` and a copy of its counts."""
    d = dict(zip(_SENDER_NAMES, image, strict=True))
    d["counts"] = counts
    return d


class Template:
    """A message template: status, how often it was paused, until when.

    ``pause_start`` and ``pause_end`` identify the last pause counted (Meta's
    time of the PAUSED event, and its end); unlike ``paused_until`` they stay
    after an unpause, so a redelivered PAUSED is recognised as that same pause.
    A pause with no known end (held until Meta lifts it) has ``paused_until``
    :data:`HELD`; ``pause_reason`` says why the template is paused (Meta's pause
    title, ``PAUSED`` without one, ``FAILED 132015`` …).
    """

    __slots__ = (
        "id",
        "name",
        "pause_count",
        "pause_end",
        "pause_reason",
        "pause_start",
        "paused_until",
        "quality",
        "status",
        "waba_id",
    )

    def __init__(self, template_id: str, name: str = "", waba_id: str = "") -> None:
        self.id = template_id
        self.name = name
        self.waba_id = waba_id
        self.status = int(TemplateStatus.APPROVED)
        self.pause_count = 0
        self.paused_until = 0  # 0: not paused
        self.pause_start = 0  # the last counted pause: when it began (0: none yet)
        self.pause_end = 0  # … and when it ends (kept after an unpause)
        self.pause_reason = ""
        self.quality = ""

    @property
    def disabled(self) -> bool:
        return self.status in (TemplateStatus.DISABLED, TemplateStatus.REJECTED)

    @property
    def held(self) -> bool:
        """Paused with no known end: until Meta's UNPAUSED or APPROVED."""
        return self.paused_until >= HELD

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "waba_id": self.waba_id,
            "status": self.status,
            "pause_count": self.pause_count,
            "paused_until": self.paused_until,
            "pause_start": self.pause_start,
            "pause_end": self.pause_end,
            "pause_reason": self.pause_reason,
            "quality": self.quality,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Template:
        t = cls(str(d["id"]), str(d["name"]), str(d["waba_id"]))
        t.status = int(d["status"])
        t.pause_count = int(d["pause_count"])
        t.paused_until = int(d["paused_until"])
        t.pause_start = int(d.get("pause_start", 0))
        t.pause_end = int(d.get("pause_end", t.paused_until))
        t.pause_reason = str(d.get("pause_reason", ""))
        t.quality = str(d["quality"])
        return t


#: A time later than any: nothing is due.
FAR_FUTURE = 1 << 62
#: The end of a pause no time is known for (a template held until Meta lifts it):
#: step 3 answers RETRY_LATER with this as ``retry_at_unix_ms``.
HELD = FAR_FUTURE


class Unreconciled(NamedTuple):
    """An admit this sidecar decided with its own engine while the shared store could
    not be reached (``--store-failure open``), not yet counted there: sent to Redis
    in ``seq`` order once it answers again (``store/shared.py``)."""

    #: The sidecar run that decided it (sequence numbers are its own).
    origin: str
    seq: int
    now: int
    #: The sender's engine index, its recipient key and the engine's flags.
    number: int
    rkey: int
    flags: int
    #: ``<sender>:<idempotency key>`` (empty: none).
    key: str


@dataclass(slots=True, eq=False)
class PolicyState:
    """Everything one admission service knows, besides the engine's tables.

    ``clear`` empties what a snapshot replaces; the settings (profile, clock,
    journal switch, ticket key) stay.
    """

    profile: Profile
    engine: CountingStore
    keys: KeyMemory
    #: The request clock: a request's ``at_unix_ms`` is its time (else the server's).
    request_clock: bool
    #: Journal records are made (a service without a journal makes none).
    journal_on: bool
    #: The two words of the ticket key (``engine.tickets``) and the key itself.
    k0: int
    k1: int
    ticket_key: bytes
    #: Records made since the last drain, oldest first.
    journal: list[bytes] = field(default_factory=list)
    #: A journal record is being re-applied: no checks, no new records.
    replaying: bool = False
    #: The latest time an accepted request was decided at (a decision for a known
    #: sender, an event that passed its checks, a state report). Under the request
    #: clock the server decides a request without ``at_unix_ms`` at this time; a
    #: refused request never moves it.
    latest_ms: int = 0
    scopes: list[LimitScope] = field(default_factory=list)
    portfolios: dict[str, LimitScope] = field(default_factory=dict)
    senders: dict[str, Sender] = field(default_factory=dict)
    #: Senders by engine index (creation order).
    by_index: list[Sender] = field(default_factory=list)
    by_display: dict[str, Sender] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)
    template_names: dict[str, Template] = field(default_factory=dict)
    #: Templates known per WABA id ("": those that name none), as
    #: ``max_templates_per_waba`` counts them (``add_template``, ``move_template``).
    waba_templates: Counter[str] = field(default_factory=Counter)
    #: The last ticket id handed out.
    ticket: int = 0
    #: Counts applied feedback events and sender re-derivations (tier, limit,
    #: quality, status, restriction, template changes): a watcher of sender states
    #: looks further only when it moved (``server.watch``).
    changes: int = 0
    #: Applied message ids → expiry, and (expiry, message id) in order.
    seen: dict[str, int] = field(default_factory=dict)
    seen_order: deque[tuple[int, str]] = field(default_factory=deque)
    #: Meta message id (wamid) → (ticket, expiry), from send results that named
    #: both; the order queue holds (expiry, message id) in link order.
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    link_order: deque[tuple[int, str]] = field(default_factory=deque)
    #: (scope, recipient key) → end of the marketing back-off Meta's 131049 asks for.
    marketing_back_off: dict[tuple[int, int], int] = field(default_factory=dict)
    #: (number's engine index, recipient key) → (X, start, end of the hold) of the
    #: pair's run of consecutive 131056 failures (``feedback.hold_pair``).
    pair_failures: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    unknown_sender_count: int = 0
    #: BSUID key → phone key, for users a webhook named by both (``aliases.py``),
    #: and the kernels' lookup table of it (``aliases.alias_table``).
    aliases: dict[int, int] = field(default_factory=dict)
    alias_table: array[int] = field(default_factory=lambda: array("Q"))
    #: The earliest time a time-driven change falls due (``tiers.maintain``).
    next_due: int = FAR_FUTURE
    #: ``next_due`` must be recomputed before it is read.
    due_dirty: bool = False
    #: What clients may create (senders, templates, keys, id lengths), and the
    #: requests refused by each cap so far, by setting name (``caps.CAP_SETTINGS``).
    caps: Caps = DEFAULT_CAPS
    capped: Counter[str] = field(default_factory=Counter)
    #: Admits decided while the shared store could not be reached, oldest first.
    unreconciled: list[Unreconciled] = field(default_factory=list)
    #: The 7-day counts the upgrade by usage reads are not the engine's (the shared
    #: store's): ``tiers.check_crossing`` dates nothing, the store records crossings.
    counted_elsewhere: bool = False

    def add_template(self, t: Template) -> None:
        """Know ``t`` by its id, counted in its WABA (its name is the caller's)."""
        self.templates[t.id] = t
        self.waba_templates[t.waba_id] += 1

    def move_template(self, t: Template, waba_id: str) -> None:
        """``t`` belongs to ``waba_id`` from now on."""
        counts = self.waba_templates
        counts[t.waba_id] -= 1
        if counts[t.waba_id] <= 0:
            del counts[t.waba_id]
        t.waba_id = waba_id
        counts[waba_id] += 1

    def clear(self) -> None:
        """Forget every scope, sender, template, key, link and count."""
        self.scopes = []
        self.portfolios = {}
        self.senders = {}
        self.by_index = []
        self.by_display = {}
        self.templates = {}
        self.template_names = {}
        self.waba_templates = Counter()
        self.ticket = 0
        self.keys.order.clear()
        self.seen = {}
        self.seen_order = deque()
        self.links = {}
        self.link_order = deque()
        self.marketing_back_off = {}
        self.pair_failures = {}
        self.unknown_sender_count = 0
        self.aliases = {}
        self.alias_table = array("Q")
        self.next_due = FAR_FUTURE
        self.due_dirty = False
        self.unreconciled = []

    def reconciled(self, origin: str, scope: int, seq: int) -> None:
        """Redis counted ``origin``'s unreconciled admits of limit scope ``scope`` up
        to sequence number ``seq``: forget them."""
        by_index = self.by_index
        self.unreconciled = [
            u
            for u in self.unreconciled
            if u.origin != origin or u.seq > seq or by_index[u.number].scope.index != scope
        ]

    def now(self, at: int, now_ms: int) -> int:
        """The time of a request or event with ``at_unix_ms`` = ``at``."""
        return at if self.request_clock and at > 0 else now_ms

    def forget_expired(self, now: int) -> None:
        """Drop the idempotency entries, applied message ids and (when many) the
        marketing back-offs and pair failure runs expired at ``now``."""
        self.keys.prune(self.senders, now)
        seen = self.seen_order
        while seen and seen[0][0] <= now:
            _, key = seen.popleft()
            self.seen.pop(key, None)
        back_off = self.marketing_back_off
        if back_off and len(back_off) > 1024:
            self.marketing_back_off = {k: v for k, v in back_off.items() if v > now}
        runs = self.pair_failures
        if runs and len(runs) > 1024:
            # a run ends once as long again as its hold has passed (see hold_pair)
            self.pair_failures = {k: v for k, v in runs.items() if 2 * v[2] - v[1] > now}
