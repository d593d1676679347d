"""Campaign plans (PlanCampaign): when each recipient of a list would be admitted.

A plan sends a list, in order, on a copy of the counting state: each
recipient goes at the earliest time the engine admits it once every
recipient before it went at its planned time, never before the one before
it (a gateway sends the list in order). Nothing of the live state changes.

The copy is decided in chunks, one ``decide_batch`` each, with
``DecisionBatch.halt``: the engine stops at the first recipient it does not
admit, so no recipient after it is admitted ahead of it. Each recipient is
tried at a guessed time: the time of the one before it, or later when the
throughput bucket (modelled from what the engine answered so far, never
late) would refuse it then. A refused guess is corrected with the answer's
retry time, which is the exact earliest time of the rule that refused; the
next chunk starts there. Recipients that can never go (opted out, Meta does
not deliver there, a blocked sender or disabled template ...) are found
first, in one dry-run batch, and left out.

A restriction of the sender with a known end (Meta's, or the hold after a
131048) moves the plan's start to that end, as a paused template moves it to
the pause's end.

What time alone changes is applied on the plan's own copy of the sender's limit
scope and its numbers (:class:`Ahead`), by the tier machine's own statements
(``tiers.maintain``, ``tiers.check_crossing``) at the times a live decision
would apply them: a chunk never runs past the next due time, and the copy
catches up at it before the first recipient that cannot go before it. So a tier the profile
raises (``upgrade_mode = "apply"``: a crossing already recorded, or one the
plan's own sends make, dated as an admit dates it, due after the profile's
delay and never before its time in tier), the next warm-up step, a slowed
number's recovery and a long Red run's step down all take effect in the plan
when they would live; a recipient refused before such a change is tried again
at its due time if that comes before the refusal's retry time. A profile that
predicts upgrades (``upgrade_mode = "predict"``) raises a tier only on Meta's
event, so a plan there never anticipates one. On the shared store the plan's
copy answers Redis's 7-day counts (``store.redis_reads.LongCounts``), so its own
sends date a crossing as Redis's counts would. Changes that come from Meta's
events (a webhook, a sender update) are not anticipated.
"""

from __future__ import annotations

import copy
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from itertools import compress

from tiergate.engine import NEVER, DecisionBatch
from tiergate.engine.columns import kernels
from tiergate.engine.constants import (
    ADMIT,
    F_DRY_RUN,
    F_RESTRICTED,
    F_TEMPLATE,
    MESSAGING_LIMIT,
    NOT_DELIVERED_TO_REGION,
    REJECT,
    SENDER_BLOCKED,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    THROUGHPUT,
    UNKNOWN_SENDER,
)

from .admission import BLOCKING, template_state
from .requests import MARKETING
from .seam import CountingStore
from .state import HELD, PolicyState, Sender
from .tiers import catch_up, check_crossing, number_params, recompute_due

__all__ = ["HOUR_MS", "Ahead", "CampaignPlan", "PlanTotals"]

HOUR_MS = 3_600_000
#: Recipients tried per engine call: from the first, doubled while none is
#: refused, twice the admitted run after a refusal.
_MIN_CHUNK = 16
_MAX_CHUNK = 16_384
_REJECT = bytes([REJECT])
_FLIP = bytes([1, 0]) + bytes(254)  # never goes (1) → 0, may go (0) → 1


@dataclass(slots=True)
class PlanTotals:
    """The whole plan so far (every call of a plan carried on)."""

    start: int
    planned: int = 0
    #: Recipients that go before the first one held by anything but pacing.
    admissible_now: int = 0
    #: The latest planned time (0: none goes).
    completes_at: int = 0
    #: The first time a recipient waited for a slot under the messaging limit.
    limit_reached_at: int = 0
    #: Recipients that can never go, by reason.
    never: dict[int, int] = field(default_factory=dict)
    #: Hour start → [sends, unique recipients counted at its last send, limit].
    hours: dict[int, list[int]] = field(default_factory=dict)


class Ahead:
    """A plan's copy of its sender's limit scope and that scope's numbers, on the
    plan's engine: what time alone changes is applied to it by the tier machine's
    statements (``tiers.catch_up``, ``tiers.check_crossing``), as the live state
    would have it applied before a decision at the same time. Nothing of the live
    state changes: the scope, the numbers and what they hold that those statements
    change are copies (their journal is off).

    ``remap``: the engine is not a copy of the live one (the shared store's, made for
    the list): the plan's number is ``number`` there, the scope's other numbers one
    number added for them.
    """

    def __init__(
        self,
        st: PolicyState,
        sender: Sender,
        engine: CountingStore,
        scope: int,
        number: int,
        remap: bool,
    ) -> None:
        live = sender.scope
        sc = copy.copy(live)
        sc.index = scope
        sc.reach = dict(live.reach)
        members: list[Sender] = []
        other = -1
        for s in live.senders:
            c = copy.copy(s)
            c.scope, c.flags, c.limits = sc, list(s.flags), list(s.limits)
            if s is sender:
                c.engine_index = number
                self.sender = c
            elif remap:
                if other < 0:
                    other = engine.add_number(scope)
                c.engine_index = other
            members.append(c)
        sc.senders = members
        self.scope = sc
        self.state = PolicyState(
            profile=st.profile,
            engine=engine,
            keys=st.keys,
            request_clock=False,
            journal_on=False,
            k0=0,
            k1=0,
            ticket_key=b"",
            scopes=[sc],
            by_index=members,
        )
        recompute_due(self.state)
        p = st.profile
        #: the plan's own sends may date a crossing whose tier the profile applies
        #: (the copy's 7-day counts: on the shared store, Redis's with the plan's
        #: sends)
        self.crossings = p.upgrade_mode == "apply"
        self.top = p.ladder[-1]

    def catch_up(self, now: int) -> None:
        """Apply what falls due by ``now`` (``tiers.catch_up``)."""
        catch_up(self.state, now)

    def decided(self, batch: DecisionBatch, ok: int) -> None:
        """After a chunk whose first ``ok`` rows were admitted: the scope's clock, and
        the upgrade threshold's crossing dated by the rows that used a new slot."""
        sc = self.scope
        b_now = batch.now
        last = b_now[batch.decided - 1]
        if last > sc.last_now:
            sc.last_now = last
        if ok and self.crossings and sc.crossed_at == NEVER and sc.tier != self.top:
            rows = list(compress(range(ok), batch.counted[:ok]))
            if rows:
                at = b_now[rows[-1]]
                check_crossing(self.state, sc, at, (b_now, batch.prev_counted), rows)


class CampaignPlan:
    """One campaign's plan: the simulated state it carries from one list to the next.

    Made on the thread that owns the service (it reads the live state once and
    copies the engine); :meth:`plan` then touches only the copy and may run in
    another thread.
    """

    def __init__(
        self,
        st: PolicyState,
        sender_id: str,
        template_id: str,
        category: int,
        start: int,
        counting: tuple[CountingStore, int, int, int] | None = None,
    ) -> None:
        """``counting``: (engine, scope, number, its time) to plan on instead of a copy
        of the live engine (the shared store's copy of the scope, made for the list:
        ``store.redis_reads.plan_engine``); the plan starts no earlier than its time."""
        self.sender_id = sender_id
        self.template_id = template_id
        self.category = category
        self.never_reason = 0
        self.held = False
        self.tat_lo = 0  # a lower bound of the throughput bucket's TAT (µs)
        self.back_off: dict[int, int] = {}
        self.alias_table: array[int] | None = None
        self.undeliverable: tuple[object, object] | None = None
        sender = st.senders.get(sender_id)
        if sender is None:
            self.never_reason = UNKNOWN_SENDER
        elif sender.status >= BLOCKING:
            self.never_reason = SENDER_BLOCKED
        else:
            state, paused_until = template_state(st, template_id)
            if state:
                self.never_reason = TEMPLATE_DISABLED
            elif paused_until >= HELD:
                self.never_reason = TEMPLATE_PAUSED
            start = max(start, sender.scope.last_now, paused_until, counting[3] if counting else 0)
            # a restriction (or the hold after a 131048) with a known end: from then
            restricted = sender.flags[category] & F_RESTRICTED and sender.restricted_retry_at
            if restricted:
                start = max(start, sender.restricted_retry_at)
        #: The lists planned so far, kept where each call makes the plan again on
        #: state read anew (the shared store's: ``server.plans``).
        self.lists: list[array[int]] = []
        self.totals = PlanTotals(start)
        self.clock = start  # the time of the latest planned send
        if self.never_reason:
            return
        assert sender is not None
        scope = sender.scope
        if counting is None:
            self.engine = st.engine.copy()
            self.scope, self.number = scope.index, sender.engine_index
        else:
            self.engine, self.scope, self.number, _ = counting
        self.ahead = Ahead(
            st, sender, self.engine, self.scope, self.number, remap=counting is not None
        )
        # what fell due by the start, applied (every restriction in force has ended)
        self._catch_up(start)
        if category == MARKETING and st.marketing_back_off:
            self.back_off = {
                rk: end for (sc, rk), end in st.marketing_back_off.items() if sc == scope.index
            }
        if st.alias_table:
            self.alias_table = array("Q", st.alias_table)
        p = st.profile
        if any(cat == category for _, cat in p.undeliverable):
            self.undeliverable = (p.undeliverable_table, p.undeliverable_lengths)

    def _catch_up(self, now: int) -> None:
        """The copy caught up to ``now``: the sender's flags, limit and rates from it."""
        ahead = self.ahead
        ahead.catch_up(now)
        s = ahead.sender
        self.flags = s.flags[self.category] | F_TEMPLATE
        self.limit = s.limits[self.category]
        interval, burst, _, _ = number_params(ahead.state, s)
        self.interval, self.tolerance = interval, (burst - 1) * interval

    def plan(self, rkeys: array[int]) -> array[int]:
        """The earliest time of each recipient (keys, in send order) after the lists
        planned before; 0 for one that can never go."""
        n = len(rkeys)
        out = array("q", bytes(8 * n))
        totals = self.totals
        totals.planned += n
        if self.never_reason:
            if n:
                _add(totals.never, self.never_reason, n)
            return out
        keys = array("Q", rkeys)
        if self.alias_table is not None:
            kernels.alias_keys(keys, self.alias_table)
        self._simulate(keys, self._able(keys), out)
        return out

    def _batch(self, keys: array[int], times: array[int], flags: int) -> DecisionBatch:
        k = len(keys)
        b = DecisionBatch()
        b.now, b.recipient = times, keys
        b.scope, b.number = array("i", [self.scope]) * k, array("i", [self.number]) * k
        b.flags, b.limit = array("I", [flags]) * k, array("q", [self.limit]) * k
        b.ticket = array("Q", bytes(8 * k))
        return b

    def _able(self, keys: array[int]) -> array[int]:
        """The indices of the recipients that may go some time (one dry run at the
        plan's time); the others are counted by reason."""
        n = len(keys)
        never = self.totals.never
        b = self._batch(keys, array("q", [self.clock]) * n, self.flags | F_DRY_RUN)
        self.engine.decide_batch(b)
        out = bytearray(n)  # 1: never goes
        decisions = b.decision.tobytes()
        i = decisions.find(_REJECT)
        while i >= 0:
            out[i] = 1
            _add(never, b.reason[i], 1)
            i = decisions.find(_REJECT, i + 1)
        region = self.undeliverable
        if region is not None:
            undeliverable, cat, table, lengths = kernels.undeliverable, self.category, *region
            for i in [i for i in range(n) if undeliverable(keys[i], cat, table, lengths)]:
                if not out[i]:
                    out[i] = 1
                    _add(never, NOT_DELIVERED_TO_REGION, 1)
        if not any(out):
            return array("i", range(n))
        return array("i", compress(range(n), out.translate(_FLIP)))

    def _simulate(self, keys: array[int], able: array[int], out: array[int]) -> None:
        """Plan the recipients ``able`` (indices into ``keys``), in order, into ``out``.

        A chunk ends before the first recipient guessed at or after the copy's next
        due time (the guess is never late: it cannot go earlier as things stand); the
        copy then catches up at the due time, and the recipient is guessed again, no
        earlier than it, on the state from then on.
        """
        totals, never, back_off, ahead = self.totals, self.totals.never, self.back_off, self.ahead
        pos, m, chunk = 0, len(able), _MIN_CHUNK
        while pos < m:
            interval, tolerance, due = self.interval, self.tolerance, ahead.state.next_due
            rows = able[pos : pos + chunk]
            k = len(rows)
            if rows[k - 1] - rows[0] == k - 1:  # consecutive recipients
                sent = keys[rows[0] : rows[0] + k]
            else:
                sent = array("Q", [keys[i] for i in rows])
            times = array("q", bytes(8 * k))
            los = array("q", times)  # the bucket's TAT bound after each row goes
            t, lo = self.clock, self.tat_lo
            waits = k  # the first row held back by a 131049 back-off
            for j in range(k):
                # the throughput bucket admits once TAT - tolerance <= now (µs)
                g = -((tolerance - lo) // 1000)
                if g < t:
                    g = t
                held_back = False
                if back_off:
                    end = back_off.get(sent[j], 0)
                    if end > g:
                        g, held_back = end, True
                if g >= due:  # a change falls due first
                    k = j
                    break
                if held_back:
                    waits = min(waits, j)
                times[j] = t = g
                los[j] = lo = (lo if lo > g * 1000 else g * 1000) + interval
            if not k:  # not before ``due`` as things stand: from then on as they will be
                self._catch_up(due)
                if self.clock < due:
                    self.clock = due
                continue
            if k < len(rows):
                rows, sent, times, los = rows[:k], sent[:k], times[:k], los[:k]
            b = self._batch(sent, times, self.flags)
            b.halt = True
            self.engine.decide_batch(b)
            d = b.decided
            ok = d if b.decision[d - 1] == ADMIT else d - 1
            self._admitted(rows, times, b.used, ok, out, waits)
            ahead.decided(b, ok)
            if ok:
                self.tat_lo = los[ok - 1]
            if ok == d:
                pos += d
                chunk = min(_MAX_CHUNK, 2 * chunk)
                continue
            chunk = min(_MAX_CHUNK, max(_MIN_CHUNK, 2 * ok))
            j = d - 1
            reason, retry, tried = b.reason[j], b.retry_at[j], times[j]
            if self.clock < tried:
                self.clock = tried
            if b.decision[j] == REJECT or retry >= HELD:
                _add(never, reason, 1)
                pos += d
                continue
            pos += j  # the refused recipient is tried again, no earlier than retry
            if reason == THROUGHPUT:
                self.tat_lo = max(self.tat_lo, (retry - 1) * 1000 + 1 + tolerance)
            else:
                self.held = True
            if reason == MESSAGING_LIMIT and not totals.limit_reached_at:
                totals.limit_reached_at = tried
            # always forward, but to a change falling due before the retry time (at
            # once when a crossing of this chunk made it due already)
            nxt = max(retry, tried + 1)
            due = ahead.state.next_due
            if due < nxt:
                nxt = max(due, tried)
            if self.clock < nxt:
                self.clock = nxt

    def _admitted(
        self,
        rows: array[int],
        times: array[int],
        used: array[int],
        ok: int,
        out: array[int],
        waits: int,
    ) -> None:
        """The first ``ok`` recipients of a chunk go at their times (from row
        ``waits`` on, after one held back)."""
        if not ok:
            return
        first = rows[0]
        if rows[ok - 1] - first == ok - 1:  # consecutive recipients
            out[first : first + ok] = times[:ok]
        else:
            for j in range(ok):
                out[rows[j]] = times[j]
        totals, hours = self.totals, self.totals.hours
        start = 0
        while start < ok:
            t = times[start]
            h = t - t % HOUR_MS
            end = bisect_left(times, h + HOUR_MS, start, ok)
            entry = hours.setdefault(h, [0, 0, 0])
            entry[0] += end - start
            entry[1], entry[2] = used[end - 1], self.limit
            start = end
        self.clock = totals.completes_at = times[ok - 1]
        if not self.held:
            totals.admissible_now += min(ok, waits)
            self.held = ok > waits


def _add(counts: dict[int, int], reason: int, n: int) -> None:
    counts[reason] = counts.get(reason, 0) + n
