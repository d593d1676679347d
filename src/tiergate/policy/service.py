"""The admission service: the policy layer's one entry point, for one profile.

:class:`AdmissionService` is a facade over one :class:`~.state.PolicyState`;
each concern lives in its own module: ``admission`` (DESIGN §2's steps, one
request), ``columnar`` (a batch as columns), ``feedback`` and ``senders``
(each event's effect), ``tiers`` (limits, upgrades, downgrades, time-driven
changes), ``reports`` (GetSenderState), ``journal`` and ``persistence``
(journal records, replay, snapshots).

Every state change appends an opaque record to the journal
(:meth:`AdmissionService.drain_journal`); :meth:`AdmissionService.replay`
re-applies one, and :meth:`AdmissionService.snapshot` /
:meth:`AdmissionService.restore` carry the whole state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

from tiergate.engine import Engine, PyEngine
from tiergate.engine.tickets import TICKET_KEY_BYTES, key_words

from . import events as ev
from . import persistence, tiers
from .admission import admit_checked
from .answers import AdmitResult, ApplyResult
from .caps import DEFAULT_CAPS, Caps
from .columnar import admit_requests
from .feedback import apply
from .keys import KeyMemory
from .profile import Profile
from .reports import ScopeReading, SenderReport, sender_state
from .requests import AdmitLike, Checked, KeyRefused, check_one, well_formed
from .seam import CountingStore
from .state import PolicyState

__all__ = ["AdmissionService", "ServiceRecipe"]


@dataclass(frozen=True, slots=True)
class ServiceRecipe:
    """Makes a fresh service like one running (profile, clock, ticket key, caps,
    engine implementation), without a journal: picklable, so that another
    process can build a snapshot from the journal (``store.compaction``)."""

    profile: Profile
    clock: Literal["server", "request"]
    ticket_key: bytes
    caps: Caps
    engine: type[PyEngine]

    def __call__(self) -> AdmissionService:
        p = self.profile
        engine = self.engine(p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms)
        return AdmissionService(
            p,
            clock=self.clock,
            journal=False,
            engine=engine,
            ticket_key=self.ticket_key,
            caps=self.caps,
        )


class AdmissionService:
    """Decisions, feedback, state reports, journal and snapshots for one profile."""

    #: Decide one request whose fields passed the checks of ``requests.well_formed``
    #: (the server's wire reader makes them from the request bytes).
    admit_checked: Callable[[Checked, int], AdmitResult]

    def __init__(
        self,
        profile: Profile,
        *,
        clock: Literal["server", "request"] = "server",
        journal: bool = True,
        engine: CountingStore | None = None,
        ticket_key: bytes | None = None,
        caps: Caps = DEFAULT_CAPS,
    ) -> None:
        """``ticket_key``: the 16 bytes that sign tickets (random when None: tickets
        then verify only in this process; the server keeps one in its data dir).
        ``caps``: what clients may create (``caps.Caps``)."""
        if clock not in ("server", "request"):
            raise ValueError(f"clock must be 'server' or 'request', got {clock!r}")
        key = os.urandom(TICKET_KEY_BYTES) if ticket_key is None else bytes(ticket_key)
        k0, k1 = key_words(key)
        if engine is None:
            p = profile
            engine = Engine(p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms)
        self.clock = clock
        self.state = PolicyState(
            profile=profile,
            engine=engine,
            keys=KeyMemory(),
            request_clock=clock == "request",
            journal_on=journal,
            k0=k0,
            k1=k1,
            ticket_key=key,
            caps=caps,
        )
        # Bound once: the wire path calls it per request without a facade hop.
        self.admit_checked = partial(admit_checked, self.state)

    # -- settings --------------------------------------------------------------

    @property
    def profile(self) -> Profile:
        return self.state.profile

    @property
    def engine(self) -> CountingStore:
        return self.state.engine

    @property
    def latest_ms(self) -> int:
        """The latest time an accepted request was decided at (see ``PolicyState``)."""
        return self.state.latest_ms

    @property
    def ticket_key(self) -> bytes:
        """The key tickets are signed with (for a service that takes this one's state)."""
        return self.state.ticket_key

    def set_ticket_key(self, key: bytes) -> None:
        """Sign tickets with ``key`` (16 bytes) from now on: only before any ticket is
        issued or restored (before recovery), as those would stop verifying."""
        st = self.state
        if st.ticket:
            raise ValueError("the ticket key is set before any ticket is issued or restored")
        st.ticket_key = bytes(key)
        st.k0, st.k1 = key_words(st.ticket_key)

    @property
    def caps(self) -> Caps:
        return self.state.caps

    def set_caps(self, caps: Caps) -> None:
        """New caps (SIGHUP): they bound what is created from now on; nothing already
        held is dropped."""
        self.state.caps = caps

    # -- admission -------------------------------------------------------------

    def admit(self, req: AdmitLike, now_ms: int) -> AdmitResult:
        """Decide one request. Raises :class:`InvalidArgument` for a malformed one."""
        return self.admit_checked(well_formed(req) or check_one(req, ""), now_ms)

    def admit_many(self, reqs: Sequence[AdmitLike], now_ms: int) -> list[AdmitResult]:
        """Validate every request, then decide them in order."""
        if len(reqs) == 1:
            r = reqs[0]
            try:
                return [self.admit_checked(well_formed(r) or check_one(r, "requests[0]."), now_ms)]
            except KeyRefused as e:
                raise e.at("requests[0].idempotency_key") from None
        return admit_requests(self.state, reqs, now_ms)

    # -- feedback and reports --------------------------------------------------

    def apply(self, event: ev.Event, now_ms: int) -> ApplyResult:
        """Apply one feedback event. Unknown senders/templates/tickets → applied=False.

        Raises :class:`InvalidArgument` for a malformed field (e.g. a recipient
        that is neither E.164 digits nor a business-scoped user ID).
        """
        return apply(self.state, event, now_ms)

    def sender_state(
        self, sender_id: str, now_ms: int, at_unix_ms: int = 0, counts: ScopeReading | None = None
    ) -> SenderReport:
        """The state GetSenderState reports. Raises KeyError for an unknown sender.

        ``at_unix_ms`` (the request's field) is used instead of ``now_ms`` when
        the service runs with ``clock="request"`` and it is non-zero; ``counts``:
        the scope's counts read from the shared store (``reports.sender_state``).
        """
        return sender_state(self.state, sender_id, now_ms, at_unix_ms, counts)

    def senders(self) -> list[str]:
        """Known sender ids, in creation order."""
        return [s.id for s in self.state.by_index]

    @property
    def unknown_sender_decisions(self) -> int:
        return self.state.unknown_sender_count

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
        tiers.switch_profile(self.state, profile, now_ms)

    # -- journal and snapshots -------------------------------------------------

    def drain_journal(self) -> list[bytes]:
        """Records of every state change since the last drain, oldest first."""
        st = self.state
        out = st.journal
        st.journal = []
        return out

    def replay(self, record: bytes) -> None:
        """Re-apply one journal record exactly (recovery): no checks, no new records."""
        persistence.replay(self.state, record)

    def snapshot(self) -> bytes:
        """The whole state (policy + engine), versioned (``SNAPSHOT_VERSION``)."""
        return b"".join(persistence.snapshot_encoder(self.state, self.state.engine)())

    def snapshot_room(self) -> Callable[[], object]:
        """A function that makes room for the next :meth:`snapshot_image` (memory
        for the engine's tables, as big as they are now, allocated and touched);
        it may run in another thread while this service goes on deciding."""
        engine = self.state.engine
        return partial(type(engine).copy_room, engine.copy_sizes())

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
        return persistence.snapshot_encoder(self.state, self.state.engine.copy(room))

    def snapshot_recipe(self) -> ServiceRecipe | None:
        """What makes this service anew in another process, to replay the journal
        there (None: its engine is not one a recipe can make)."""
        st = self.state
        engine = type(st.engine)
        if engine is not Engine and engine is not PyEngine:
            return None
        return ServiceRecipe(st.profile, self.clock, st.ticket_key, st.caps, engine)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""
        persistence.restore(self.state, data)

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
