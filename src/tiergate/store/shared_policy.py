"""Policy state shared through Redis: one ordered log of feedback events.

Senders, portfolios, templates, tiers, quality, restrictions, aliases and
message links change only by feedback events (RecordFeedback, IngestWebhook,
the webhook receiver) and by time. On the shared store every event goes into
one Redis stream, ``tg3:{tiergate}:events`` (one hash slot: Cluster too), as
the JSON record the journal holds for it (``feedback.event_record``); every
sidecar applies the stream's entries in stream order, so each holds the same
policy state, and time-driven changes (the tier machine, restriction expiry)
follow from the same events at the same times.

:meth:`SharedPolicy.apply`: the sidecar that receives an event checks its
fields (a malformed one is refused before anything is appended), appends it,
then applies every entry up to and including its own before it answers, so
its answer is the one the shared order gives. A background task
(:meth:`SharedPolicy.follow`: XREAD BLOCK, bounded, trying again while Redis
is gone) applies the entries other sidecars append. An entry is applied with
``feedback.apply_at`` at the time its sender recorded, journaled locally as
any event; the counting changes it makes (windows, opt-outs, releases …) are
queued for Redis only by the sidecar that appended it (``SharedAdmission``'s
``mirroring``), which sends them before it answers.

A policy snapshot (``tg3:{tiergate}:policy``: the stream id it covers and
the sidecar's snapshot, ``AdmissionService.snapshot``'s versioned bytes) is
written every ``snapshot_every`` entries by the sidecar that appended the
entry reaching it; writing it trims the stream before that id (Redis function
``policy_snapshot``: a snapshot covering less never replaces one covering
more). A sidecar starts from the snapshot and the entries after it; one that
finds its last entry trimmed away (it was cut off from Redis a long time)
loads the snapshot again. The first sidecar (no snapshot yet) writes its own
state as the snapshot; config ``[[senders]]`` and templates then go through
the log as seeds, applied only where the sender or template is not known yet:
state in Redis wins over config.

The tier machine's upgrade by usage reads Redis's 7-day counts: each decide call
answers its scope's totals after its rows (:class:`Totals`), and a sidecar that
finds the scope's threshold met dates the crossing as ``tiers.check_crossing``
dates a batch (:meth:`SharedPolicy._decided`) and appends it to the log, before
the call that made it is answered; every sidecar records the first entry for a
scope's tier (``tiers.apply_crossing``) and none after it, so all hold one
crossing time, one due time (``apply`` profiles) and one prediction.

While Redis cannot be reached an event is refused with
:class:`StoreUnavailableError` (UNAVAILABLE, "store unavailable") under either
``--store-failure``: it is never applied to one sidecar only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from tiergate.engine import NEVER
from tiergate.engine.reference.bounds import MAX_TIME, SLOT_GEN_BITS
from tiergate.engine.results import Decided
from tiergate.policy import events as ev
from tiergate.policy.answers import ApplyResult
from tiergate.policy.feedback import (
    apply_at,
    event_record,
    event_time,
    find_template,
    refuse,
    resolve_keyed,
)
from tiergate.policy.persistence import event_from
from tiergate.policy.state import LimitScope, PolicyState
from tiergate.policy.tiers import apply_crossing, catch_up, counted_crossing

from .base import StoreUnavailableError
from .redis_counting import LAYOUT, ScopeSpec, Totals
from .redis_reads import ScopeCounts
from .shared import SharedAdmission

__all__ = ["SNAPSHOT_EVERY", "SNAPSHOT_KEY", "STREAM_KEY", "SharedPolicy", "open_policy"]

log = logging.getLogger("tiergate.store")

#: The ordered log of policy events, and the policy snapshot (one Cluster slot).
STREAM_KEY = f"{LAYOUT}:{{tiergate}}:events"
SNAPSHOT_KEY = f"{LAYOUT}:{{tiergate}}:policy"
#: A policy snapshot is written after this many entries past the last one.
SNAPSHOT_EVERY = 1000
#: Entries read from the stream at a time.
READ_COUNT = 256
#: How long the follower's XREAD waits for an entry (ms): short, for it to end
#: soon when the sidecar stops.
FOLLOW_BLOCK_MS = 100
#: Before any entry: the id of a snapshot written before the stream had one.
ORIGIN = "0-0"

StreamId = tuple[int, int]


def _sid(text: str | bytes) -> StreamId:
    ms, _, seq = (text.decode() if isinstance(text, bytes) else text).partition("-")
    return int(ms), int(seq or 0)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class SharedPolicy:
    """The shared log of policy events for one sidecar (see the module docstring)."""

    def __init__(
        self,
        shared: SharedAdmission,
        *,
        snapshot_every: int | None = None,
    ) -> None:
        self.shared = shared
        self.service = shared.service
        self.counting = shared.counting
        self.snapshot_every = SNAPSHOT_EVERY if snapshot_every is None else snapshot_every
        #: Tags this sidecar's entries, told apart from the others'.
        self.origin = os.urandom(8).hex()
        self._seq = 0
        self._results: dict[str, ApplyResult] = {}
        #: The last entry applied (ORIGIN: none), and the last snapshot's.
        self.last_id: StreamId = (0, 0)
        self.snapshot_id: StreamId = (0, 0)
        #: Entries applied (this sidecar's and the others'), snapshots loaded.
        self.applied = 0
        self.loaded = 0
        #: Entries applied since the last snapshot this sidecar wrote or loaded.
        self._since = 0
        self._lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        #: Crossings sent to the log and not applied yet: (scope, tier, tier since).
        self._crossing: set[tuple[str, str, int]] = set()
        self.counting.on_decided = self._decided

    @property
    def client(self) -> Any:
        return self.counting.client

    # -- start ---------------------------------------------------------------------

    async def start(self) -> None:
        """The shared policy state: the snapshot (this sidecar's own state when
        Redis holds none: it becomes the snapshot) and the entries after it."""
        if not await self._load():
            await self._write_snapshot(self.service.snapshot(), (0, 0))
            await self._load()
        await self.catch_up()

    async def seed(self, where: str, event: ev.Event, now_ms: int) -> None:
        """Apply a config entry through the log, only where its sender or template is
        not known yet when the entry is applied (Redis wins); ValueError naming
        ``where`` when it is refused."""
        st = self.service.state
        try:
            result = refuse(st, event) or await self._append(
                "seed", event, event_time(st, event, now_ms)
            )
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        if not result.applied:
            raise ValueError(f"{where}: {result.detail}")

    def follow(self) -> None:
        """Start applying what other sidecars append (until :meth:`aclose`)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def aclose(self) -> None:
        """Stop the follower (within about one bounded call)."""
        task, self._follower = self._follower, None
        if task is not None:
            self._closing = True
            task.cancel()
            await asyncio.wait({task}, timeout=max(1.0, 2 * self.counting.timeout))

    # -- events --------------------------------------------------------------------

    async def apply(self, event: ev.Event, now_ms: int) -> ApplyResult:
        """Apply ``event`` for every sidecar: checked here (InvalidArgument, before
        anything is appended), appended to the log, applied in log order here with
        everything before it; the answer is its outcome in that order."""
        st = self.service.state
        now = event_time(st, event, now_ms)
        try:
            refused = refuse(st, event)
        except ValueError:
            refused = ApplyResult(False, "")
        if refused is not None:
            # refused by what this sidecar knows: maybe by what it has not read yet
            # (a sender another sidecar just made), so read the log and ask again
            await self.catch_up()
            refused = refuse(st, event)
            if refused is not None:
                return refused
        if isinstance(event, ev.SendResult):
            event = resolve_keyed(st, event, now)
        return await self._append("event", event, now)

    async def _append(self, kind: str, event: ev.Event, now: int) -> ApplyResult:
        record = event_record(event, now)
        record["k"] = kind
        return await self._append_record(record)

    async def _append_record(self, record: dict[str, Any]) -> ApplyResult:
        """Append ``record``, apply the log up to it here, and answer its outcome."""
        self._seq += 1
        tag = f"{self.origin}:{self._seq}"
        body = json.dumps(record, separators=(",", ":"))
        added = await self.counting.bounded(self.client.xadd(STREAM_KEY, {"e": body, "o": tag}))
        await self.catch_up(_sid(added))
        result = self._results.pop(tag, None)
        if result is None:  # trimmed before this sidecar read it: applied by the snapshot
            result = ApplyResult(True, "applied (by the shared policy snapshot)")
        return result

    async def catch_up(self, until: StreamId | None = None) -> None:
        """Apply the log's entries after the last one applied, in order: up to
        ``until`` (at least), else all there are now."""
        async with self._lock:
            while until is None or self.last_id < until:
                entries = await self._read()
                if entries is None:  # the last entry applied was trimmed away
                    await self._reload()
                    continue
                if not entries:
                    break
                for eid, fields in entries:
                    self._apply_entry(_sid(eid), fields)

    async def _read(self) -> list[tuple[Any, dict[Any, Any]]] | None:
        """The entries after the last applied (None: that one is gone)."""
        last = self.last_id
        if last == (0, 0):
            return list(
                await self.counting.bounded(self.client.xrange(STREAM_KEY, "-", "+", READ_COUNT))
            )
        start = f"{last[0]}-{last[1]}"
        got = list(
            await self.counting.bounded(self.client.xrange(STREAM_KEY, start, "+", READ_COUNT + 1))
        )
        if not got or _sid(got[0][0]) != last:
            return None
        return got[1:]

    def _apply_entry(self, eid: StreamId, fields: dict[Any, Any]) -> None:
        """Apply one entry (no await: nothing else runs between entries)."""
        self.last_id = eid
        self.applied += 1
        self._since += 1
        tag = _text(fields.get(b"o", fields.get("o", "")))
        mine = tag.startswith(self.origin + ":")
        record = json.loads(fields.get(b"e", fields.get("e", b"{}")))
        shared = self.shared
        shared.mirroring = mine
        try:
            result = self._apply_record(record)
        except Exception:
            # A record this build cannot apply changes nothing here; every sidecar of
            # one build applies the same, so this is logged, never answered.
            log.exception("shared policy: entry %s-%s not applied", *eid)
            result = ApplyResult(False, "not applied")
        finally:
            shared.mirroring = True
        if mine:
            self._results[tag] = result
            if self.snapshot_every and self._since >= self.snapshot_every:
                self._snapshot_soon(eid)

    def _apply_record(self, record: dict[str, Any]) -> ApplyResult:
        st = self.service.state
        if record["k"] == "crossing":
            return self._apply_crossing(record)
        event = event_from(record)
        now = int(record["now"])
        if record["k"] == "seed" and _known(st, event):
            return ApplyResult(True, "known already (the shared state wins over config)")
        return apply_at(st, event, now)

    # -- the upgrade by usage ---------------------------------------------------------

    def _decided(self, spec: ScopeSpec, decided: list[Decided], totals: Totals) -> None:
        """After a decide call (``RedisCounting.on_decided``): its scope's threshold
        met by Redis's 7-day counts is a crossing, dated to the row that reached it,
        sent to the log before the call is answered (queued as feedback's changes;
        a batch's step sends it before its next part, ``SharedAdmission.crossed``).
        The counts are kept as the scope's ``seen_7d`` (``tiers.cross_gap``)."""
        st = self.service.state
        scope = _limit_scope(st, spec.name)
        if scope is None:
            return
        unique, slots = totals.unique_7d, totals.slots_7d
        scope.seen_7d = (unique, slots)
        if scope.crossed_at != NEVER:
            return
        made = ((_slot_time(d.slot), d.prev_counted) for d in decided if d.slot)
        at = counted_crossing(st, scope, unique, slots, totals.clock, made)
        record = self._crossing_record(scope, at)
        if record is not None:
            self.shared.queued.append(lambda: self._send_crossing(record))
            self.shared.crossed = True

    async def counted(self, sender_id: str, counts: ScopeCounts | None) -> None:
        """Before a report of ``sender_id``'s state from Redis's ``counts``: a threshold
        they show met is a crossing (at their time: never early), recorded first."""
        scope = _sender_scope(self.service.state, sender_id)
        if counts is None or scope is None:
            return
        scope.seen_7d = (counts.unique_7d, counts.slots_7d)
        if scope.crossed_at != NEVER:
            return
        st = self.service.state
        at = counted_crossing(st, scope, counts.unique_7d, counts.slots_7d, counts.now, ())
        record = self._crossing_record(scope, at)
        if record is not None:
            await self._send_crossing(record)

    def _crossing_record(self, scope: LimitScope, at: int | None) -> dict[str, Any] | None:
        """The log's entry of ``scope``'s crossing at ``at`` (None: no crossing, or one
        is on its way to the log already)."""
        mark = (scope.key, scope.tier, scope.tier_since)
        if at is None or mark in self._crossing:
            return None
        self._crossing.add(mark)
        return {
            "k": "crossing",
            "now": at,
            "scope": scope.key,
            "tier": scope.tier,
            "since": scope.tier_since,
        }

    async def _send_crossing(self, record: dict[str, Any]) -> None:
        """Append a crossing. While Redis cannot be reached it is not kept: a later
        call's counts show it again (dated then: later, never early), and the call
        that saw it is answered all the same."""
        try:
            await self._append_record(record)
        except StoreUnavailableError:
            self._crossing.discard((record["scope"], record["tier"], record["since"]))
            self.shared.available = False

    def _apply_crossing(self, record: dict[str, Any]) -> ApplyResult:
        """The first entry of a scope's crossing in its tier is recorded; a later one
        (another sidecar saw the same threshold met) changes nothing."""
        st = self.service.state
        key, tier, since, at = record["scope"], record["tier"], int(record["since"]), record["now"]
        self._crossing.discard((key, tier, since))
        catch_up(st, int(at))
        scope = _limit_scope(st, key)
        if scope is None or not apply_crossing(st, scope, tier, since, int(at)):
            return ApplyResult(False, "crossed already, or no longer eligible")
        return ApplyResult(True, "upgrade threshold met")

    # -- snapshots -----------------------------------------------------------------

    def _snapshot_soon(self, eid: StreamId) -> None:
        """Write the state as of entry ``eid`` (taken now, sent in the background)."""
        data = self.service.snapshot()
        self.snapshot_id = eid
        self._since = 0
        task = asyncio.get_running_loop().create_task(self._write_snapshot(data, eid))
        task.add_done_callback(_log_failure)

    async def _write_snapshot(self, data: bytes, eid: StreamId) -> bool:
        keys = [SNAPSHOT_KEY, STREAM_KEY]
        kept = await self.counting.run("policy_snapshot", keys, [eid[0], eid[1], data])
        return bool(kept)

    async def _load(self) -> bool:
        """Load the snapshot Redis holds (False: none)."""
        got = await self.counting.bounded(self.client.hmget(SNAPSHOT_KEY, "ms", "seq", "state"))
        ms, seq, data = got
        if data is None:
            return False
        self.shared.restore(bytes(data))
        self.last_id = self.snapshot_id = (int(ms), int(seq))
        self._since = 0
        self.loaded += 1
        return True

    async def _reload(self) -> None:
        log.warning(
            "shared policy: entries after %s-%s were trimmed; loading the snapshot", *self.last_id
        )
        if not await self._load():
            # Redis lost the log (restarted without persistence): this state is the start.
            await self._write_snapshot(self.service.snapshot(), (0, 0))
            await self._load()

    # -- following -----------------------------------------------------------------

    async def _follow(self) -> None:
        """Apply what other sidecars append, as they append it."""
        block = FOLLOW_BLOCK_MS
        # A cancelled call to Redis may end as a lost connection rather than as the
        # cancellation: the flag ends the loop all the same.
        while not self._closing:
            try:
                last = self.last_id
                ask = "0-0" if last == (0, 0) else f"{last[0]}-{last[1]}"
                got = await self.counting.bounded(
                    self.client.xread({STREAM_KEY: ask}, count=1, block=block)
                )
                if got:
                    await self.catch_up()
            except StoreUnavailableError:
                if not self._closing:
                    await asyncio.sleep(self.counting.timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self._closing:
                    log.exception("shared policy: reading the log failed")
                    await asyncio.sleep(1.0)


async def open_policy(
    shared: SharedAdmission,
    senders: Sequence[ev.SenderUpdate],
    templates: Sequence[ev.TemplateUpdate],
    now_ms: int,
) -> SharedPolicy:
    """A started :class:`SharedPolicy`: the shared state, then config ``senders`` and
    ``templates`` seeded through its log, then its follower running."""
    policy = SharedPolicy(shared)
    await policy.start()
    for i, sender in enumerate(senders):
        await policy.seed(f"senders[{i}]", sender, now_ms)
    for i, template in enumerate(templates):
        await policy.seed(f"templates[{i}]", template, now_ms)
    policy.follow()
    return policy


def _limit_scope(st: PolicyState, key: str) -> LimitScope | None:
    """The limit scope named ``key`` (a portfolio's, or a number's own)."""
    scope = st.portfolios.get(key)
    if scope is None and (s := st.senders.get(key)) is not None:
        scope = s.scope
    return scope if scope is not None and scope.key == key else None


def _sender_scope(st: PolicyState, sender_id: str) -> LimitScope | None:
    s = st.senders.get(sender_id)
    return None if s is None else s.scope


def _slot_time(slot: int) -> int:
    """The time a slot stamp (``Decided.slot``, non-zero) was made at."""
    return (slot >> SLOT_GEN_BITS) - MAX_TIME


def _known(st: Any, event: ev.Event) -> bool:
    if isinstance(event, ev.SenderUpdate):
        return event.sender_id in st.senders
    if isinstance(event, ev.TemplateUpdate):
        return find_template(st, event.template_id, event.template_name) is not None
    return False


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("shared policy: snapshot not written: %s", task.exception())
