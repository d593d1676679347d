"""WatchSenderState: a sender's (or a portfolio's) state, then every change of it.

A watcher names a sender or a portfolio. It gets each sender's state at once
(``changes``: STATE), then a new one whenever the tier, the limit, quality,
status, a restriction or the paused templates change, or usage crosses one of
the configured thresholds of the limit (``changes``: USAGE_<pct> upwards,
USAGE_BELOW_<pct> downwards).

Nothing waits for a watcher. Changes are looked for after each commit, and only
while someone watches (:attr:`Watches.active`; the sidecar's commit tests it):
per watched sender, the state's change counter (``PolicyState.changes``: every
applied feedback event and sender re-derivation) and the usage band (the
scope's used count from the engine) are compared with the last look, and only
when one moved, or a template pause has ended, is the sender's signature read
and, when it differs from the last one sent, its state built. Each watcher
holds at most one unsent state per sender: a newer one replaces it, its
changes merged (drop to latest), so a slow reader costs one state per sender
and a vanished one nothing once its call ends. At stop every stream ends (like
the health watches, server/health.py).

Time alone changes a state too: usage falls under a threshold as slots leave
the 24 h window, a restriction or hold ends, a warm-up step or a due upgrade
comes. On the embedded store with the server clock, every look arms one timer
per watched limit scope (``loop.call_later``; none while nobody watches) at the
earliest of: the time its usage next falls under a threshold with no traffic
(the engine's ring, read with ``usage``: when ``used`` drops under
⌈threshold·limit / 100⌉), the time-driven changes due to its watched senders
and scope (``tiers.sender_due``, the scope's due upgrade) and the end of a
template pause. A timer that fires applies what fell due (``tiers.catch_up``,
journalled and committed like a decision's), then looks again, which re-arms
it: a timer that fired early finds nothing and is armed again, so a change is
never told before its time. A commit re-arms (or keeps) each scope's timer;
the last watcher leaving cancels them all. With the request clock no time
passes between requests: a watcher hears such a change at the next request's
time. On the shared store the counts are polled instead (``shared_watch``).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from tiergate.engine import NEVER
from tiergate.policy import tiers
from tiergate.policy.reports import ScopeReading
from tiergate.policy.requests import MARKETING
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import PolicyState, Sender
from tiergate.v1 import admission_pb2 as pb

from . import convert
from .clock import server_clock_ms
from .metrics import Metrics

Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("tiergate.server")

__all__ = ["DEFAULT_THRESHOLDS", "CountsReader", "Watches", "Watching"]

#: Usage thresholds, in percent of the effective limit, a watcher is told about.
DEFAULT_THRESHOLDS = (80, 90, 100)

#: (tier, limit, quality, status, restriction, paused templates, usage band).
Signature = tuple[object, ...]
#: A signature and until when it holds unless the state changes.
Look = tuple[Signature, int]
_FOREVER = 1 << 62
_KINDS = ("TIER", "LIMIT", "QUALITY", "STATUS", "RESTRICTION", "PAUSED_TEMPLATES")


class CountsReader(Protocol):
    """Where a watch reads its scopes' counts when not from this process's engine (the
    shared store's: ``server.shared_watch.WatchedCounts``)."""

    def changed(self) -> None:
        """Something may have changed: read the counts, then :meth:`Watches.look`."""

    def reading(self, sender: Sender) -> ScopeReading | None:
        """The latest counts read of ``sender``'s scope (None: none yet)."""


@dataclass(eq=False)
class _Watcher:
    sender_id: str
    portfolio_id: str
    #: The last signature sent, per sender.
    sent: dict[str, Signature] = field(default_factory=dict)
    #: Per sender, at the last look: (state changes, usage band, signature valid until).
    quick: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: Per sender, the unsent state (the latest) and every change since the last sent.
    pending: dict[str, tuple[list[str], pb.SenderState]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Watches:
    """Every open WatchSenderState stream of one sidecar."""

    def __init__(
        self,
        service: Callable[[], AdmissionService | None],
        thresholds: Sequence[int] = DEFAULT_THRESHOLDS,
        metrics: Metrics | None = None,
        clock: Callable[[], int] = server_clock_ms,
    ) -> None:
        self._service = service
        #: The server clock (Unix ms): the decisions' (``DecisionClock``).
        self.clock = clock
        self.metrics = metrics
        self.thresholds = tuple(sorted(thresholds))
        self._watchers: set[_Watcher] = set()
        self._ending = False
        #: Whether anyone watches: the only test the commit path makes otherwise.
        self.active = False
        #: On the shared store: where the watched scopes' counts come from.
        self.reader: CountsReader | None = None
        #: What makes the changes a timer applied durable (the sidecar's commit, which
        #: looks again); None: they are looked at only.
        self.commit: Callable[[], Coroutine[Any, Any, None]] | None = None
        #: Per watched limit scope (engine index): its timer and the time it is armed at.
        self.timers: dict[int, tuple[int, asyncio.TimerHandle]] = {}
        self._committing: set[asyncio.Task[None]] = set()
        #: Per watched sender: (state changes, band, scope's due upgrade) at the last
        #: look, and when time alone next changes its state (``_wake``).
        self._woken: dict[str, tuple[int, int, int, int]] = {}

    def _band(self, used: int, limit: int) -> int:
        """How many of the thresholds ``used`` has reached of ``limit`` (a threshold t
        is reached when used·100 ≥ t·limit, that is t ≤ ⌊used·100 / limit⌋)."""
        return bisect_right(self.thresholds, used * 100 // limit) if limit > 0 else 0

    @staticmethod
    def _signature(st: PolicyState, s: Sender, now: int, limit: int, band: int) -> Look:
        """Sender ``s``'s signature at ``now``, and until when it holds unless the state
        changes (the end of the first template pause that ends)."""
        paused = tuple(
            (t.id, t.disabled, t.paused_until, t.held)
            for t in st.templates.values()
            if (t.disabled or now < t.paused_until) and (not t.waba_id or t.waba_id == s.waba_id)
        )
        ends = [p[2] for p in paused if not p[1] and not p[3]]
        restriction = (s.restricted_until, s.spam_held_until, s.replies_restricted_until)
        sig = (s.scope.tier, limit, s.quality, s.status, restriction, paused, band)
        return sig, min(ends, default=_FOREVER)

    def _changes(self, before: Signature | None, after: Signature) -> list[str]:
        if before is None:
            return ["STATE"]
        out = [k for k, a, b in zip(_KINDS, before, after, strict=False) if a != b]
        low, high = before[-1], after[-1]
        assert isinstance(low, int) and isinstance(high, int)
        if high > low:
            out += [f"USAGE_{t}" for t in self.thresholds[low:high]]
        elif high < low:
            out += [f"USAGE_BELOW_{t}" for t in self.thresholds[high:low]]
        return out

    def poke(self) -> None:
        """Look for changes of every watched sender (after a commit): at once, or on
        the shared store once the ``reader`` has read the watched scopes' counts."""
        if self.reader is not None:
            self.reader.changed()
        else:
            self.look()

    def watched(self) -> list[Sender]:
        """Every sender some watcher watches."""
        service = self._service()
        if service is None:
            return []
        st = service.state
        out: dict[str, Sender] = {}
        for w in self._watchers:
            if w.sender_id:
                sender = st.senders.get(w.sender_id)
                if sender is not None:
                    out[sender.id] = sender
            else:
                out.update((m.id, m) for m in st.by_index if m.portfolio_id == w.portfolio_id)
        return list(out.values())

    def look(self) -> None:
        """Look for changes of every watched sender. Per sender: the state's change
        counter and the usage band, read as GetSenderState reads usage (on the
        shared store, from the ``reader``'s latest counts); the signature only when
        one moved or a template pause ended since the last look; the state only
        when the signature differs from the last sent. Then each watched scope's
        timer is armed (embedded store, server clock)."""
        service = self._service()
        if service is None:
            return
        st = service.state
        version = st.changes
        wall = 0 if st.request_clock else self.clock()
        looks: dict[str, Look] = {}
        states: dict[str, pb.SenderState] = {}
        #: Per watched scope, when time alone next changes what its watchers are told.
        wakes: dict[int, int] | None = {} if wall and self.reader is None else None
        for w in self._watchers:
            if w.sender_id:
                sender = st.senders.get(w.sender_id)
                members = [sender] if sender is not None else []
            else:
                members = [m for m in st.by_index if m.portfolio_id == w.portfolio_id]
            for s in members:
                sid = s.id
                now = max(s.scope.last_now, st.latest_ms if st.request_clock else wall, 0)
                limit = s.limits[MARKETING]
                reading = self.reader.reading(s) if self.reader is not None else None
                if reading is None:
                    used = st.engine.usage(s.scope.index, now, limit)[0]
                else:
                    now = max(now, reading.now)
                    used = reading.usage(limit)[0]
                band = self._band(used, limit)
                seen = w.quick.get(sid)
                if seen is None or seen[0] != version or seen[1] != band or now >= seen[2]:
                    look = looks.get(sid)
                    if look is None:
                        look = looks[sid] = self._signature(st, s, now, limit, band)
                    sig, until = look
                    seen = w.quick[sid] = (version, band, until)
                    before = w.sent.get(sid)
                    if sig != before:
                        state = states.get(sid)
                        if state is None:
                            report = service.sender_state(sid, now, 0, reading)
                            state = states[sid] = convert.sender_state(report)
                        unsent = w.pending[sid][0] if sid in w.pending else []
                        w.pending[sid] = (unsent + self._changes(before, sig), state)
                        w.sent[sid] = sig
                        w.ready.set()
                if wakes is not None:
                    known = self._woken.get(sid)
                    due = s.scope.due_at
                    if known is None or known[:3] != (version, band, due):
                        known = self._woken[sid] = (
                            version,
                            band,
                            due,
                            self._wake(st, s, now, band),
                        )
                    at = min(known[3], seen[2], wakes.get(s.scope.index, _FOREVER))
                    if at < _FOREVER:
                        wakes[s.scope.index] = at
        self._arm(wakes or {}, wall)

    def _wake(self, st: PolicyState, s: Sender, now: int, band: int) -> int:
        """When time alone next changes ``s``'s state: its usage falls under the
        threshold it has reached (the ring's ``next_free`` of ⌈t·limit / 100⌉: exact),
        or a time-driven change of it or its scope falls due.

        Kept (``_woken``) while the state's change counter, the band and the scope's
        due upgrade stay: admits in between only move the fall later, so a kept
        time is early at worst, and a timer that fires forgets them all."""
        at = tiers.sender_due(st.profile, s)
        if s.scope.due_at != NEVER:
            at = min(at, s.scope.due_at)
        if band:
            need = -(-self.thresholds[band - 1] * s.limits[MARKETING] // 100)
            at = min(at, st.engine.usage(s.scope.index, now, need)[1])
        return at

    def _arm(self, wakes: dict[int, int], wall: int) -> None:
        """One timer per scope in ``wakes``, at its time; the others cancelled."""
        timers = self.timers
        if timers.keys() != wakes.keys():
            for scope in timers.keys() - wakes.keys():
                timers.pop(scope)[1].cancel()
        loop: asyncio.AbstractEventLoop | None = None
        for scope, at in wakes.items():
            armed = timers.get(scope)
            if armed is not None:
                if armed[0] == at:
                    continue
                armed[1].cancel()
            loop = loop or asyncio.get_running_loop()
            timers[scope] = (at, loop.call_later(max(at - wall, 0) / 1000, self._fire, scope))

    def _fire(self, scope: int) -> None:
        """A scope's timer: apply what time changed (committed like a decision's
        changes), then look again (which re-arms it)."""
        self.timers.pop(scope, None)
        self._woken.clear()
        service = self._service()
        if service is None or not self.active or self._ending:
            return
        if not self.catch_up(service.state):
            self.look()

    def catch_up(self, st: PolicyState) -> bool:
        """Apply what time changed by the server clock (``tiers.catch_up``); True when
        that made journal records: their commit is started, and looks again when done."""
        records = len(st.journal)
        tiers.catch_up(st, max(self.clock(), st.latest_ms))
        if self.commit is None or len(st.journal) == records:
            return False
        task = asyncio.get_running_loop().create_task(self.commit())
        self._committing.add(task)
        task.add_done_callback(self._committed)
        return True

    def _committed(self, task: asyncio.Task[None]) -> None:
        self._committing.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.warning("watch: what time changed was not committed: %s", e)

    def _disarm(self) -> None:
        for _, handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self._woken.clear()

    async def serve(
        self, request: pb.WatchSenderStateRequest, context: Context
    ) -> AsyncIterator[pb.SenderState]:
        """The WatchSenderState RPC: INVALID_ARGUMENT unless exactly one of sender_id
        and portfolio_id is given, NOT_FOUND for an unknown sender."""
        service = self._service()
        if bool(request.sender_id) == bool(request.portfolio_id):
            if self.metrics is not None:
                self.metrics.invalid("WatchSenderState")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "sender_id: give exactly one of sender_id or portfolio_id",
            )
        if request.sender_id and (
            service is None or request.sender_id not in service.state.senders
        ):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"sender_id: unknown sender {request.sender_id!r}"
            )
        async for state in self.watch(request.sender_id, request.portfolio_id):
            yield state

    async def watch(self, sender_id: str, portfolio_id: str) -> AsyncIterator[pb.SenderState]:
        """The states a WatchSenderState stream sends, until the sidecar stops."""
        w = _Watcher(sender_id, portfolio_id)
        self._watchers.add(w)
        self.active = True
        try:
            self.poke()
            while not self._ending:
                await w.ready.wait()
                w.ready.clear()
                pending, w.pending = w.pending, {}
                for changes, state in pending.values():
                    message = pb.SenderState()
                    message.CopyFrom(state)
                    message.changes.extend(dict.fromkeys(changes))
                    yield message
        finally:
            self._watchers.discard(w)
            self.active = bool(self._watchers)
            if not self.active:
                self._disarm()

    def end(self) -> None:
        """End every stream (the sidecar stops); a later watch ends at once."""
        self._ending = True
        self._disarm()
        for w in self._watchers:
            w.ready.set()


class Watching:
    """The servicer's WatchSenderState: its ``watches`` serve it (set by
    ``grpc_server.build_server``)."""

    watches: Watches

    async def WatchSenderState(
        self, request: pb.WatchSenderStateRequest, context: Context
    ) -> AsyncIterator[pb.SenderState]:
        # An async generator function: grpc.aio serves those as streams.
        async for state in self.watches.serve(request, context):
            yield state
