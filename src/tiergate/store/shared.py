"""Admission over the shared store: steps 1–3 here, steps 4–9 in Redis.

:class:`SharedAdmission` decides a request the way
``AdmissionService.admit_checked`` does, with steps 4–9 (window, opt-out,
messaging limit, protective rules, throughput, pair rate) decided and
consumed by the Redis function instead of this process's engine:
``policy.admission.admit_prepare`` → :meth:`RedisCounting.decide` (requests
made together share one round trip: ``redis_rounds.py``) → ``admission.admit_finish``. A
batch (AdmitBatch, AdmitColumns, a stream's chunk) takes the columnar path
(``policy.columnar``) as on the embedded store, each of its steps' rows sent
to Redis by :meth:`RedisCounting.decide_batch` instead of the engine's
``decide_batch``, after the batch's idempotency keys this process holds no
answer for are read from Redis (``shared_keys.py``), so every key is checked
before any part of the batch is decided.

Feedback (a FAILED send's release, windows opened by inbound messages and
closed by 131047, opt-outs, 130429, 131056) is applied by the policy layer as
ever, to this process's engine, and through :class:`MirroredCounting` also
queued for Redis; :meth:`SharedAdmission.flush` sends the queue before the
call that caused it is answered (the servicer's commit). A release is
reported as not applied locally (the slot was made in Redis): Redis gives the
slot back if it is still the recipient's latest.

While Redis cannot be reached, ``failure="closed"`` answers RETRY_LATER with
the detail ``store unavailable`` and a retry time one second on;
``failure="open"`` decides with this process's engine and keeps each admit so
decided (``PolicyState.unreconciled``, in the journal when there is one, up to
``reconcile_cap`` of them). Once Redis answers again they are sent before the
next decisions, one call per limit scope, to the function ``reconcile``, which
counts them as admits whatever the limit says and counts none twice (see
docs/redis.md, "When Redis is gone").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, cast

from tiergate.engine import DecisionBatch
from tiergate.engine.columns import kernels
from tiergate.engine.constants import ADMIT, F_DRY_RUN, REASON_UNSPECIFIED, RETRY_LATER
from tiergate.policy.admission import BLOCKING, Pending, admit_finish, admit_prepare
from tiergate.policy.answers import UNAVAILABLE_DETAIL, AdmitResult
from tiergate.policy.columnar import (
    ColumnsLike,
    ColumnsResult,
    KeyRead,
    Step,
    Steps,
    admit_columns_steps,
    admit_requests_steps,
    run_async,
)
from tiergate.policy.journal import journal_json
from tiergate.policy.requests import AdmitLike, Checked, KeyConflict
from tiergate.policy.seam import CountingStore, Decision
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import LimitScope, Sender, Unreconciled
from tiergate.policy.tiers import number_params

from .base import StoreUnavailableError
from .redis_counting import KeyBound, NumberSpec, RedisCounting, Row, ScopeSpec
from .redis_reads import (
    ScopeCounts,
    plan_engine,
    plan_reads,
    scope_counts,
)
from .shared_keys import binding, item_binding, key_conflict, lone_key, read_batch_keys

__all__ = [
    "RECONCILE_CAP",
    "RECONCILE_CHUNK",
    "RETRY_AFTER_MS",
    "UNAVAILABLE_DETAIL",
    "MirroredCounting",
    "SharedAdmission",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A change for Redis, queued by feedback: a call of RedisCounting's, not yet awaited.
Change = Callable[[], Awaitable[object]]

#: How soon a refusal for an unreachable store says to retry.
RETRY_AFTER_MS = 1_000
#: Admits decided while Redis is gone that are kept for it (past it: counted locally
#: only, and in ``reconcile_dropped``).
RECONCILE_CAP = 100_000
#: Rows of one ``reconcile`` call (a Lua call blocks Redis while it runs).
RECONCILE_CHUNK = 1_000
#: How often (s) a sidecar that keeps admits for Redis tries it again unasked.
RECONCILE_RETRY_S = 1.0


class SharedAdmission:
    """Unary admission with its counting state in Redis (see the module docstring)."""

    def __init__(
        self,
        service: AdmissionService,
        counting: RedisCounting,
        failure: Literal["closed", "open"] = "closed",
        reconcile_cap: int = RECONCILE_CAP,
    ) -> None:
        self.service = service
        self.counting = counting
        self.failure = failure
        #: This run's name for the admits it keeps for Redis, and their last number.
        self.origin = secrets.token_hex(8)
        self.seq = 0
        self.reconcile_cap = reconcile_cap
        #: Admits kept for Redis past the cap (counted locally only), and counted there.
        self.reconcile_dropped = 0
        self.reconciled = 0
        self._reconciling: asyncio.Future[None] | None = None
        self._retrying: asyncio.Task[None] | None = None
        #: Admits answered while Redis could not be reached, and whether it can now.
        self.unavailable_answers = 0
        self.available = True
        self._scopes: dict[str, ScopeSpec] = {}
        self._numbers: dict[str, NumberSpec] = {}
        #: Feedback's changes for Redis, in the order they were made.
        self.queued: list[Change] = []
        self._sending = asyncio.Lock()
        #: Feedback's changes are queued for Redis (not while an event another
        #: sidecar appended to the shared log is applied: it sent them).
        self.mirroring = True
        #: A crossing is queued (``shared_policy``): a batch's step sends the queue
        #: before its next part is decided, which then sees the crossing's raise.
        self.crossed = False
        st = service.state
        st.engine = cast(CountingStore, MirroredCounting(st.engine, self))
        # the 7-day counts are Redis's: crossings come from there (``shared_policy``)
        st.counted_elsewhere = True

    def restore(self, data: bytes) -> None:
        """Replace the service's whole state with snapshot ``data``: its engine this
        process's own again, its feedback mirrored to Redis as before."""
        st = self.service.state
        mirror = st.engine
        st.engine = cast(MirroredCounting, mirror).local
        try:
            self.service.restore(data)
        finally:
            st.engine = cast(CountingStore, MirroredCounting(st.engine, self))

    def flush(self, local: Awaitable[None] | None) -> Awaitable[None] | None:
        """What a call must await before its answer leaves: the queued changes sent to
        Redis in order, then ``local`` (the journal's commit). A change Redis did not
        take stays queued, first, for the next call. One call sends at a time (the
        others wait for it: each change is sent once, in order)."""
        if not self.queued:
            return local
        return self._flush(local)

    async def _flush(self, local: Awaitable[None] | None) -> None:
        async with self._sending:
            while self.queued:
                try:
                    await self.queued[0]()
                except StoreUnavailableError:
                    self.available = False
                    raise
                del self.queued[0]
        self.available = True
        if local is not None:
            await local

    async def _send_crossed(self) -> None:
        """The queue (with the crossing a step's reply showed) sent now, so the batch's
        next part is decided under the raise it makes (``policy.columnar``'s parts).
        A change Redis does not take stays queued for the call's commit."""
        self.crossed = False
        with contextlib.suppress(StoreUnavailableError):
            await self._flush(None)

    def number(self, index: int) -> tuple[ScopeSpec, NumberSpec]:
        """The scope and number of the engine's number ``index``."""
        s = self.service.state.by_index[index]
        assert s.engine_index == index
        return self.scope(s.scope), self.number_spec(s)

    def number_spec(self, s: Sender) -> NumberSpec:
        """A sender as Redis knows its number: rates, and its warm-up cap (made again
        only when they changed)."""
        params = number_params(self.service.state, s)
        spec = self._numbers.get(s.id)
        if spec is None or spec.warm_cap != s.warmup_cap or spec.params != params:
            spec = self._numbers[s.id] = NumberSpec(s.id, *params, s.warmup_cap)
        return spec

    def scope_of(self, index: int) -> ScopeSpec:
        for s in self.service.state.by_index:
            if s.scope.index == index:
                return self.scope(s.scope)
        raise IndexError(f"scope {index} out of range")

    def scope(self, scope: LimitScope) -> ScopeSpec:
        """The scope as Redis knows it: its windows, its frequency cap, and while it is
        on Meta's volume scaling path (``on_path``, as the engine notes reach) the
        path's window and the most recipients its reach keeps."""
        spec = self._scopes.get(scope.key)
        p = self.service.profile
        path = (p.path_window_ms, 4 * p.path_users) if scope.on_path else (0, 0)
        if spec is None or (spec.freq_cap, spec.path_window_ms, spec.path_cap) != (
            p.frequency_cap,
            *path,
        ):
            geometry = (p.bucket_ms, p.window_ms, p.long_bucket_ms, p.lookback_ms)
            spec = ScopeSpec(scope.key, geometry, p.frequency_cap, p.frequency_window_ms, *path)
            self._scopes[scope.key] = spec
        return spec

    async def counts(self, sender_id: str, now_ms: int, at_unix_ms: int) -> ScopeCounts | None:
        """The counts in Redis of the scope of ``sender_id`` (KeyError: unknown), at
        the time its report is made; None while Redis cannot be reached."""
        st = self.service.state
        s = st.senders[sender_id]
        now = max(st.now(at_unix_ms, now_ms), s.scope.last_now)
        since = s.scope.tier_since if s.scope.on_path else None
        try:
            counts = await scope_counts(self.counting, self.scope(s.scope), now, None, since)
        except StoreUnavailableError:
            self.available = False
            return None
        self.available = True
        return counts

    async def plan_copy(
        self, sender_id: str, keys: array[int], start: int
    ) -> tuple[CountingStore, int, int, int] | None:
        """The counting state a new plan of ``keys`` by ``sender_id`` runs on: a local
        engine made from Redis (``redis_reads.plan_engine``; nothing consumed there),
        as (engine, scope, number, its time); None where the plan needs none (an
        unknown or blocked sender: no recipient goes)."""
        st = self.service.state
        s = st.senders.get(sender_id)
        if s is None or s.status >= BLOCKING:
            return None
        if st.alias_table:
            keys = array("Q", keys)
            kernels.alias_keys(keys, array("Q", st.alias_table))
        unique = list(dict.fromkeys(keys))
        spec, number = self.number(s.engine_index)
        now = max(start, s.scope.last_now)
        counts, entries = await plan_reads(self.counting, spec, now, number, unique)
        engine_type = type(cast(MirroredCounting, st.engine).local)
        copy = await asyncio.to_thread(
            plan_engine, engine_type, spec.geometry, spec, number, counts, entries
        )
        return copy.engine, copy.scope, copy.number, copy.now

    async def admit_many(self, reqs: Sequence[AdmitLike], now_ms: int) -> list[AdmitResult]:
        """Validate every request (an error names ``requests[i].<field>``), then decide
        them in order through the columns (``policy.columnar``), each step's rows in
        Redis in one round trip (:meth:`_decide_step`)."""
        return await self._steps(
            admit_requests_steps(self.service.state, reqs, now_ms, remote=True)
        )

    async def admit_columns(self, req: ColumnsLike, now_ms: int) -> ColumnsResult:
        """AdmitColumns: every column validated, then the items decided in order as
        :meth:`admit_many` decides them."""
        return await self._steps(admit_columns_steps(self.service.state, req, now_ms, remote=True))

    async def _steps(self, steps: Steps[T]) -> T:
        """A batch's ``steps`` driven in Redis: the keys this process holds no answer
        for read first (``shared_keys.read_batch_keys``), then each step's rows
        (:meth:`_decide_step`). A read that finds Redis gone leaves it unasked for the
        rest of the call (one bounded wait per call, as for a lone request)."""
        gone: list[KeyRead] = []

        async def read(ask: KeyRead) -> None:
            if not await read_batch_keys(self, ask):
                gone.append(ask)

        def decide(step: Step) -> Awaitable[None]:
            return self._decide_step(step, bool(gone))

        return await run_async(steps, decide, read)

    async def _decide_step(self, step: Step, gone: bool = False) -> None:
        """Steps 4–9 of a columnar step's rows in Redis: one function call per limit
        scope, all in one round trip. The rows whose scope Redis could not be asked
        about (all of them when ``gone``: the call found it gone already) get what
        ``--store-failure`` says (as :meth:`_unavailable` gives one request):
        RETRY_LATER "store unavailable", or this process's engine's answer."""
        batch, rows, items, out = step
        st = self.service.state
        keys: list[str] = []
        bindings: list[str] = []
        if items.keys:
            names, sidx, ikeys = items.senders, items.sender_index, items.keys
            keys = [f"{names[sidx[i]]}:{ikeys[i]}" if ikeys[i] else "" for i in rows]
            bindings = [item_binding(items, i) if ikeys[i] else "" for i in rows]
        try:
            if gone:
                raise StoreUnavailableError("store unavailable: not asked again")
            if st.unreconciled:  # (the admits kept while Redis was gone go first)
                await self.reconcile()
            undecided = await self.counting.decide_batch(
                batch, self.number, keys, st.profile.idempotency_ms, bindings
            )
        except KeyBound as e:  # refused as the embedded store refuses it
            j, bound = e.rows[0]
            i = rows[j]
            t = items.template_index[i]
            request = (items.rkeys[i], items.kinds[i], items.categories[i])
            tpl = items.templates[t - 1] if t else ""
            raise key_conflict((*request, tpl), bound, i, f"idempotency_keys[{i}]") from None
        except StoreUnavailableError:  # (Redis not asked: nothing decided there)
            batch.prepare_outputs()
            batch.decided = len(batch)
            undecided = list(range(len(batch)))
        if self.crossed:
            await self._send_crossed()
        self.available = not undecided
        if not undecided:
            return
        self.unavailable_answers += len(undecided)
        if self.failure == "open":
            _decide_locally(st.engine, batch, undecided)
            for j in undecided:
                if batch.decision[j] == ADMIT and not batch.flags[j] & F_DRY_RUN:
                    number = batch.number[j]
                    key = keys[j] if keys else ""
                    self._keep(batch.now[j], number, batch.recipient[j], batch.flags[j], key)
            return
        for j in undecided:
            batch.decision[j], batch.reason[j] = RETRY_LATER, REASON_UNSPECIFIED
            batch.retry_at[j] = batch.now[j] + RETRY_AFTER_MS
        out.unavailable.update(rows[j] for j in undecided)

    async def _decide_part(self, part: list[Pending]) -> list[AdmitResult | Decision]:
        """Steps 4–9 of ``part`` in Redis, in one round trip (the calls of one pass),
        after the admits kept while Redis was gone."""
        st = self.service.state
        if st.unreconciled:
            try:
                await self.reconcile()
            except StoreUnavailableError:
                return [self._unavailable(p) for p in part]
        idem_ms = st.profile.idempotency_ms
        futs = [
            self.counting.decide(
                self.scope(p.sender.scope),
                [
                    Row(
                        self.number_spec(p.sender),
                        p.rkey,
                        p.flags,
                        p.limit,
                        p.now,
                        f"{p.sender.id}:{p.key}" if p.key else "",
                        idem_ms,
                        binding(p.rkey, p.kind, p.cat, p.tpl) if p.key else "",
                    )
                ],
            )
            for p in part
        ]
        out: list[AdmitResult | Decision] = []
        conflict: KeyConflict | None = None
        for j, (p, fut) in enumerate(zip(part, futs, strict=True)):
            try:
                out.append((await fut)[0])
                self.available = True
            except StoreUnavailableError:
                out.append(self._unavailable(p))
            except KeyBound as e:
                conflict = conflict or key_conflict(p[1:5], e.rows[0][1], j)
        if conflict is not None:
            raise conflict
        return out

    def _unavailable(self, p: Pending) -> AdmitResult | Decision:
        """What a request gets while Redis cannot be reached (``--store-failure``)."""
        self.available = False
        self.unavailable_answers += 1
        if self.failure == "closed":
            retry = p.now + RETRY_AFTER_MS
            return AdmitResult(
                RETRY_LATER, REASON_UNSPECIFIED, retry, "", False, p.limit, 0, 0, UNAVAILABLE_DETAIL
            )
        s = p.sender
        st = self.service.state
        d = st.engine.decide(p.now, s.scope.index, s.engine_index, p.rkey, p.flags, p.limit)
        if d[0] == ADMIT and not p.dry:
            key = f"{s.id}:{p.key}" if p.key else ""
            self._keep(p.now, s.engine_index, p.rkey, p.flags, key)
        return d

    def _keep(self, now: int, number: int, rkey: int, flags: int, key: str) -> None:
        """Keep an admit decided here while Redis is gone (``key``: its
        ``<sender>:<idempotency key>`` or ""), for :meth:`reconcile`."""
        st = self.service.state
        if len(st.unreconciled) >= self.reconcile_cap:
            self.reconcile_dropped += 1
            if self.reconcile_dropped == 1:
                log.warning(
                    "store unavailable: %d admits kept for Redis; later ones are counted "
                    "by this sidecar only",
                    self.reconcile_cap,
                )
            return
        self.seq += 1
        u = Unreconciled(self.origin, self.seq, now, number, rkey, flags, key)
        st.unreconciled.append(u)
        journal_json(st, {"k": "unreconciled", "row": list(u)})
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        """Try Redis every :data:`RECONCILE_RETRY_S` while admits are kept for it, so
        they are counted there soon after it returns even if no call comes."""
        while self.service.state.unreconciled:
            await asyncio.sleep(RECONCILE_RETRY_S)
            try:
                await self.reconcile()
            except StoreUnavailableError:
                continue

    async def aclose(self) -> None:
        """Stop trying Redis on its own, and close the connection to it."""
        for task in (self._retrying, self._reconciling):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailableError):
                    await task
        await self.counting.aclose()

    def reconcile(self) -> Awaitable[None]:
        """Count in Redis the admits decided here while it could not be reached, in
        order, one call per limit scope (and per sidecar run that kept them) of at
        most :data:`RECONCILE_CHUNK` rows; callers meanwhile share the calls in
        flight. Raises :class:`StoreUnavailableError` while Redis cannot be reached
        (what was not counted stays kept)."""
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.ensure_future(self._reconcile())
        return asyncio.shield(self._reconciling)

    async def _reconcile(self) -> None:
        st = self.service.state
        while st.unreconciled:
            groups: dict[tuple[str, int], list[Unreconciled]] = {}
            for u in st.unreconciled:
                rows = groups.setdefault((u.origin, st.by_index[u.number].scope.index), [])
                if len(rows) < RECONCILE_CHUNK:
                    rows.append(u)
            sends = (self._reconcile_rows(o, sc, rows) for (o, sc), rows in groups.items())
            try:
                await asyncio.gather(*sends)
            except StoreUnavailableError:
                self.available = False
                raise
        self.available = True

    async def _reconcile_rows(self, origin: str, scope: int, rows: list[Unreconciled]) -> None:
        st = self.service.state
        idem_ms = st.profile.idempotency_ms
        out: list[tuple[Row, int]] = []
        for u in rows:
            spec = self.number_spec(st.by_index[u.number])
            out.append((Row(spec, u.rkey, u.flags, 0, u.now, u.key, idem_ms), u.seq))
        try:
            self.reconciled += await self.counting.reconcile(
                self.scope(st.by_index[rows[0].number].scope), origin, out
            )
        except StoreUnavailableError:
            raise
        except Exception as e:  # Redis refused them (never will take them): not kept
            self.reconcile_dropped += len(rows)
            log.error("store: %d admits kept for Redis were refused there: %s", len(rows), e)
        seq = rows[-1].seq
        st.reconciled(origin, scope, seq)
        journal_json(st, {"k": "reconciled", "o": origin, "scope": scope, "seq": seq})

    async def admit_checked(self, checked: Checked, now_ms: int) -> AdmitResult:
        """Decide one request whose fields passed ``requests.well_formed``'s checks."""
        st = self.service.state
        p = admit_prepare(st, checked, now_ms)
        if not isinstance(p, Pending):
            return await lone_key(self, checked, now_ms, p)
        (d,) = await self._decide_part([p])
        return d if isinstance(d, AdmitResult) else admit_finish(st, p, d)


def _decide_locally(engine: CountingStore, batch: DecisionBatch, rows: list[int]) -> None:
    """``batch``'s ``rows`` decided by this process's engine (``--store-failure open``)."""
    if len(rows) == len(batch):
        engine.decide_batch(batch)
        return
    part = DecisionBatch()
    for j in rows:
        part.add(
            batch.now[j],
            batch.scope[j],
            batch.number[j],
            batch.recipient[j],
            batch.flags[j],
            batch.limit[j],
            batch.ticket[j],
        )
    engine.decide_batch(part)
    for k, j in enumerate(rows):
        batch.decision[j], batch.reason[j], batch.retry_at[j] = (
            part.decision[k],
            part.reason[k],
            part.retry_at[k],
        )
        batch.counted[j], batch.used[j] = part.counted[k], part.used[k]
        batch.prev_counted[j], batch.slot[j] = part.prev_counted[k], part.slot[k]


class MirroredCounting:
    """This process's engine, every feedback change also queued for Redis (see the
    module docstring); everything else is the engine's own."""

    def __init__(self, local: Any, shared: SharedAdmission) -> None:
        self.local = local
        self.shared = shared

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    @staticmethod
    def copy_room(sizes: tuple[int, ...]) -> object:
        return None  # the engine's copy makes its own room

    def _queue(self, change: Change) -> None:
        if self.shared.mirroring:
            self.shared.queued.append(change)

    def release(
        self, scope: int, recipient: int, slot: int, prev_counted: int, number: int = -1
    ) -> bool:
        spec, redis = self.shared.scope_of(scope), self.shared.counting
        known = 0 <= number < len(self.shared.service.state.by_index)
        num = self.shared.number(number)[1] if known else None
        self._queue(lambda: redis.release(spec, recipient, slot, prev_counted, num))
        return bool(self.local.release(scope, recipient, slot, prev_counted, number))

    def open_window(self, number: int, recipient: int, window_until: int, fep_until: int) -> None:
        self.local.open_window(number, recipient, window_until, fep_until)
        (spec, num), redis = self.shared.number(number), self.shared.counting
        self._queue(lambda: redis.open_window(spec, num.name, recipient, window_until, fep_until))

    def close_window(self, number: int, recipient: int) -> None:
        self.local.close_window(number, recipient)
        (spec, num), redis = self.shared.number(number), self.shared.counting
        self._queue(lambda: redis.close_window(spec, num.name, recipient))

    def set_opt_out(self, scope: int, recipient: int, opted_out: bool) -> None:
        self.local.set_opt_out(scope, recipient, opted_out)
        spec, redis = self.shared.scope_of(scope), self.shared.counting
        self._queue(lambda: redis.set_opt_out(spec, recipient, opted_out))

    def slow_throughput(self, number: int, now: int, pause_ms: int) -> None:
        self.local.slow_throughput(number, now, pause_ms)
        (spec, num), redis = self.shared.number(number), self.shared.counting
        self._queue(lambda: redis.slow_throughput(spec, num, now, pause_ms))

    def take_throughput(self, number: int, now: int) -> None:
        self.local.take_throughput(number, now)
        (spec, num), redis = self.shared.number(number), self.shared.counting
        self._queue(lambda: redis.take_throughput(spec, num, now))

    def hold_pair(self, number: int, recipient: int, until: int) -> None:
        self.local.hold_pair(number, recipient, until)
        (spec, num), redis = self.shared.number(number), self.shared.counting
        self._queue(lambda: redis.hold_pair(spec, num.name, recipient, until))
