"""Counting state shared in Redis: DESIGN §2 steps 4–9 decided by a Redis Function.

:class:`RedisCounting` is the sidecar's side of the shared store. Each call
names a limit scope (:class:`ScopeSpec`: a portfolio or a phone number) and
the phone numbers in it (:class:`NumberSpec`) by their ids, the same in every
sidecar; the function library in ``redis_functions.lua`` holds the rules (the
reference engine's, statement for statement) and runs each call atomically
on the one Cluster slot of its scope's hash tag.

:meth:`RedisCounting.decide` ``(scope, rows) -> Future[list[Decided]]`` is
the entry point of every decision path (Admit, and a batch's items after
their steps 1–3): rows in, the engine's :class:`Decided` per row out, in
order, each row seeing the ones before it. Concurrent calls go to Redis
together (``redis_rounds.py``): one round trip in flight, the calls made
meanwhile (or in the same pass of the event loop) in the next, one function
call per scope with the rows of every caller of that scope in the order they
were made. A call's rows travel as one packed string (``ROW`` per row, the
recipient's digits and what its idempotency key binds after it; ``ROW`` in the
Lua) and come back as eight integers per row (then the scope's clock and 7-day
totals, :class:`Totals`, told to ``on_decided``), so a batch of any size is one
argument and one reply. A key kept for another request refuses its call
(:class:`KeyBound`) before anything in it is decided.
A call that Redis does not answer within ``timeout`` seconds (connection
refused, reset, a hung server) raises :class:`StoreUnavailableError`; the
next call connects again.

See docs/redis.md for the key layout, memory per recipient and failure modes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from array import array
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any, NamedTuple

from redis import exceptions as rexc

from tiergate.engine.batch import DecisionBatch
from tiergate.engine.reference.bounds import (
    MAX_TIME,
    SLOT_GEN_BITS,
    slot_stamp,
)
from tiergate.engine.results import Decided, Usage

from .base import StoreUnavailableError
from .location import StoreLocation
from .redis_layout import (
    LAYOUT,
    MAX_REDIS_TIME,
    SEQ,
    SHARD_BITS,
    NumberSpec,
    Row,
    ScopeSpec,
    call_args,
    shard,
)
from .redis_rounds import Command, Link, Pending, Rounds, link_of

__all__ = [
    "LAYOUT",
    "MAX_REDIS_TIME",
    "SHARD_BITS",
    "KeyBound",
    "KeyHeld",
    "NumberSpec",
    "RedisCounting",
    "Row",
    "ScopeSpec",
    "Totals",
    "connect",
    "library_source",
    "shard",
]

log = logging.getLogger("tiergate.store")

#: How long a call may wait for Redis (s) before the store counts as unavailable.
DEFAULT_TIMEOUT = 0.5
#: The functions the library registers (``calls`` in redis_functions.lua).
_OPERATIONS = (
    "decide",
    "release",
    "usage",
    "number_update",
    "opt_out",
    "throughput",
    "counts",
    "entries",
    "reconcile",
    "policy_snapshot",
    "keys",
)
#: The functions that only read: registered ``no-writes`` and called with ``FCALL_RO``
#: (``EVALSHA_RO`` as scripts), so Redis refuses any write they would make.
_READ_ONLY = frozenset({"counts", "entries", "keys"})
#: Bytes of a key's first admit in Redis (``ANSWER`` in the Lua); its binding follows.
_KEY_RECORD = 37
#: That first admit's answer (``ANSWER`` in the Lua): decision, reason, retry_at,
#: counted, used, prev_counted, slot time, slot generation.
_ANSWER = struct.Struct(">bbqbqqqh")
#: Loading the library (at start, and after Redis lost it) may take longer than a call.
_LOAD_TIMEOUT = 5.0
_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    OSError,
    TimeoutError,
)


class Totals(NamedTuple):
    """A scope's 7-day counts in Redis after a decide call's rows, as of its clock
    (the time the last row was decided at): what the tier machine's upgrade by usage
    reads."""

    clock: int
    unique_7d: int
    slots_7d: int


#: Told of every decide call's answers: its scope, its rows' answers in order, and
#: the scope's 7-day counts after them (``RedisCounting.on_decided``).
DecidedHook = Callable[[ScopeSpec, list[Decided], Totals], None]


class KeyBound(Exception):
    """Rows of one call whose idempotency key holds the first admit of another
    request: ``rows`` gives each one's index among the call's rows and what its key
    binds (as ``Row.binding``). A key held before the call refuses it whole (nothing
    decided); one a row before it in the same round trip bound answers that row
    with the first admit (nothing consumed), the call's other rows decided."""

    def __init__(self, rows: list[tuple[int, str]]) -> None:
        super().__init__(f"idempotency keys bound to other requests: rows {[r for r, _ in rows]}")
        self.rows = rows


def _register(name: str, op: str) -> str:
    """The library's line registering ``op`` (``no-writes`` where it only reads)."""
    if op in _READ_ONLY:
        return (
            f"redis.register_function{{function_name='{name}_{op}', callback=calls.{op},"
            " flags={'no-writes'}}\n"
        )
    return f"redis.register_function('{name}_{op}', calls.{op})\n"


def library_source(body: str | None = None) -> tuple[str, str, str]:
    """(library name, FUNCTION LOAD text, EVAL script text) of the one Lua source
    (``body``: another text of it); the name carries a digest of it and of which
    functions only read, so sidecars of different builds never call each other's
    code."""
    if body is None:
        body = files("tiergate.store").joinpath("redis_functions.lua").read_text("utf-8")
    digest = hashlib.sha1((body + " ".join(sorted(_READ_ONLY))).encode()).hexdigest()
    name = "tiergate_" + digest[:12]
    # (a library's load reaches neither pairs nor most globals: one line per function)
    register = "".join(_register(name, op) for op in _OPERATIONS)
    library = f"#!lua name={name}\n{body}\n{register}"
    script = f"{body}\nreturn calls[ARGV[1]](KEYS, {{unpack(ARGV, 2)}})\n"
    return name, library, script


def _slot(t: int, gen: int) -> int:
    return ((t + MAX_TIME) << SLOT_GEN_BITS) | gen if gen else 0


def _check_time(name: str, value: int) -> None:
    if not 0 <= value <= MAX_REDIS_TIME:
        raise ValueError(f"{name} must be within 0 .. 2**43 ms for the Redis store, got {value}")


class RedisCounting:
    """The counting calls of the policy layer's seam, against Redis (see the module
    docstring). Make one with :func:`connect`."""

    def __init__(
        self,
        client: Any,
        *,
        server_clock: bool = False,
        timeout: float = 0.5,
        functions: bool = True,
    ) -> None:
        self.client = client
        self.server_clock = server_clock
        self.timeout = timeout
        self.name, self.library, self.script = library_source()
        self.script_sha = hashlib.sha1(self.script.encode()).hexdigest()
        self.functions = functions
        #: The time the latest server-clock decision was made at (Redis TIME, ms).
        self.server_now = 0
        #: The decide calls gathered, one round trip in flight (``redis_rounds``).
        self.rounds = Rounds(self._send)
        #: The decide round trips' own connection (a standalone Redis's).
        self.link = link_of(client)
        self.round_trips = 0
        self._stale_topology = False
        #: Where it connects (printed without its password).
        self.location: StoreLocation | None = None
        #: Told of each decide call's answers and the scope's 7-day counts after
        #: them, before its callers are (the shared store's upgrade by usage).
        self.on_decided: DecidedHook | None = None

    # -- the library -----------------------------------------------------------

    async def load(self) -> str:
        """Load the function library (FUNCTION LOAD REPLACE), or fall back to scripts
        (EVALSHA) where Functions are refused; returns ``"functions"`` or ``"scripts"``."""
        if self.functions:
            try:
                load = self.client.function_load(self.library, replace=True)
                await self.bounded(load, _LOAD_TIMEOUT)
                return "functions"
            except rexc.ResponseError:
                self.functions = False
        await self.bounded(self.client.script_load(self.script), _LOAD_TIMEOUT)
        return "scripts"

    def _command(self, op: str, keys: Sequence[str], args: Sequence[object]) -> Command:
        """The command calling the library's function ``op`` (``FCALL``, or ``EVALSHA``
        of the script; their ``_RO`` forms for the functions that only read)."""
        ro = op in _READ_ONLY
        if self.functions:
            return ("FCALL_RO" if ro else "FCALL", f"{self.name}_{op}", len(keys), *keys, *args)
        return ("EVALSHA_RO" if ro else "EVALSHA", self.script_sha, len(keys), *keys, op, *args)

    async def bounded(self, aw: Any, timeout: float = 0.0) -> Any:
        """``aw`` (a client's call) within the bound: :class:`StoreUnavailableError`
        when Redis does not answer in time."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await aw
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"store unavailable: {type(e).__name__}: {e}") from None

    async def run(
        self, op: str, keys: Sequence[str], args: Sequence[object], timeout: float = 0.0
    ) -> Any:
        """One call of the library's function ``op`` (bounded by ``timeout`` seconds, the
        store's bound when 0), the library loaded again if Redis lost it (a restart)."""
        for attempt in (0, 1):
            try:
                call = self.client.execute_command(*self._command(op, keys, args))
                return await self.bounded(call, timeout)
            except rexc.ResponseError as e:
                if attempt or not _missing_code(e):
                    raise
                await self.load()
        raise AssertionError("unreachable")

    # -- decisions ---------------------------------------------------------------

    def decide(self, scope: ScopeSpec, rows: Sequence[Row]) -> asyncio.Future[list[Decided]]:
        """Decide ``rows`` in order for ``scope``, consuming what each admits (the
        engine's ``decide`` per row). Calls made together share a round trip
        (``Rounds``). Rows whose key holds another request's first admit raise
        :class:`KeyBound`."""
        for r in rows:
            if not 0 < r.recipient < 1 << 64:
                raise ValueError(f"recipient key {r.recipient} is not in 1 .. 2**64 - 1")
            if not self.server_clock:
                _check_time("now", r.now)
        fut: asyncio.Future[list[Decided]] = asyncio.get_running_loop().create_future()
        self.rounds.add(scope, rows, fut)
        return fut

    async def decide_batch(
        self,
        batch: DecisionBatch,
        number_of: Callable[[int], tuple[ScopeSpec, NumberSpec]],
        keys: Sequence[str] = (),
        key_ms: int = 0,
        bindings: Sequence[str] = (),
    ) -> list[int]:
        """Decide ``batch``'s rows as the engine's ``decide_batch`` does, filling its
        output columns: the rows of each limit scope in order, one :meth:`decide`
        call per scope, all in one round trip. ``number_of`` gives the scope and
        number of an engine number index (``batch.number``); ``keys`` (empty: none)
        each row's ``<sender>:<idempotency key>`` or ``""``, ``bindings`` what each
        key binds (see :class:`Row`). Rows whose key binds another request raise
        :class:`KeyBound` naming them as ``batch``'s rows.

        Returns the rows left undecided (outputs zero) because their scope's call
        found the store unavailable (:class:`StoreUnavailableError`: all of them when
        Redis is gone; on a Cluster, those of the scopes a lost node served); the
        other scopes' rows are decided and consumed in Redis either way."""
        n = len(batch.now)
        specs: dict[int, tuple[ScopeSpec, NumberSpec]] = {}
        groups: dict[str, tuple[ScopeSpec, list[int], list[Row]]] = {}
        b_now, b_rkey, b_flags, b_limit = batch.now, batch.recipient, batch.flags, batch.limit
        for j, number in enumerate(batch.number):
            spec = specs.get(number)
            if spec is None:
                spec = specs[number] = number_of(number)
            scope, num = spec
            group = groups.get(scope.name)
            if group is None:
                group = groups[scope.name] = (scope, [], [])
            group[1].append(j)
            key, bound = (keys[j], bindings[j]) if keys else ("", "")
            group[2].append(
                Row(num, b_rkey[j], b_flags[j], b_limit[j], b_now[j], key, key_ms, bound)
            )
        answers = asyncio.gather(
            *(self.decide(scope, rows) for scope, _, rows in groups.values()),
            return_exceptions=True,
        )
        batch.decision, batch.reason = array("b", bytes(n)), array("b", bytes(n))
        batch.counted = array("b", bytes(n))
        zeros = array("q", bytes(8 * n))
        batch.retry_at, batch.used, batch.prev_counted, batch.slot = (
            zeros,
            zeros[:],
            zeros[:],
            zeros[:],
        )
        undecided: list[int] = []
        for (_, js, _), got in zip(groups.values(), await answers, strict=True):
            if isinstance(got, StoreUnavailableError):
                undecided += js
                continue
            if isinstance(got, KeyBound):  # the rows named as the batch's
                raise KeyBound([(js[k], binding) for k, binding in got.rows])
            if isinstance(got, BaseException):
                raise got
            for j, d in zip(js, got, strict=True):
                batch.decision[j], batch.reason[j], batch.retry_at[j] = d[0], d[1], d[2]
                batch.counted[j], batch.used[j], batch.prev_counted[j] = d[3], d[4], d[5]
                batch.slot[j] = d[6]
        batch.decided = n
        return undecided

    async def _send(self, pending: dict[str, Pending]) -> None:
        """One round trip of ``pending``'s calls (``Rounds``), answered through their
        futures (StoreUnavailableError raised again once they have it)."""
        calls = [
            call_args(p.scope, p.rows(), self.server_clock, p.scope.fixed_keys())
            for p in pending.values()
        ]
        try:
            results = await self._pipeline(calls, link=self.link)
        except BaseException as e:
            for p in pending.values():
                p.fail(e)
            if isinstance(e, StoreUnavailableError) or not isinstance(e, Exception):
                raise
            return
        for p, res in zip(pending.values(), results, strict=True):
            if isinstance(res, Exception):
                p.fail(_failure(res))
                continue
            made = p.calls
            out, bound, totals = self._decisions(res, sum(len(rows) for rows, _ in made))
            if out is not None and self.on_decided is not None:
                try:
                    self.on_decided(p.scope, out, totals)
                except Exception:  # (never the decisions' answers lost for it)
                    log.exception("store: the upgrade by usage not checked")
            at = 0
            for rows, fut in made:
                mine = [(k - at, b) for k, b in bound if at <= k < at + len(rows)]
                if fut.done():
                    pass
                elif mine:
                    fut.set_exception(KeyBound(mine))
                elif out is None:  # refused for another caller's key: decided again
                    self.rounds.add(p.scope, rows, fut)
                else:
                    fut.set_result(out[at : at + len(rows)])
                at += len(rows)

    async def _pipeline(
        self,
        calls: list[tuple[list[str], list[object]]],
        op: str = "decide",
        link: Link | None = None,
    ) -> list[Any]:
        """One round trip: a call of the library's function ``op`` for each of
        ``calls`` (keys, args), the answers (or each call's error) in order; over
        ``link`` when given (the decide round trips' own connection), else the
        client's pipeline."""
        self.round_trips += 1
        nodes = getattr(self.client, "nodes_manager", None)  # a Cluster client's
        if nodes is not None and self._stale_topology:
            # a node was lost: ask the Cluster who serves each slot now (a failover)
            await self.bounded(nodes.initialize(), _LOAD_TIMEOUT)
            self._stale_topology = False
        for attempt in (0, 1):
            if link is not None:
                sent = link.execute([self._command(op, keys, args) for keys, args in calls])
            else:
                pipe = self.client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.execute_command(*self._command(op, keys, args))
                sent = pipe.execute(raise_on_error=False)
            try:
                results = await self.bounded(sent)
            except StoreUnavailableError:
                self._stale_topology = True
                raise
            if any(isinstance(r, _UNAVAILABLE) for r in results):
                self._stale_topology = True
            missing = [r for r in results if isinstance(r, rexc.ResponseError) and _missing_code(r)]
            if not missing or attempt:
                return list(results)
            # nothing ran: the library (or the script) is gone, as after a restart
            await self.load()
        raise AssertionError("unreachable")

    def _decisions(
        self, res: list[Any], n: int
    ) -> tuple[list[Decided] | None, list[tuple[int, str]], Totals]:
        """The answers of one decide call of ``n`` rows (None: refused whole, nothing
        decided), its rows whose key binds another request (index, binding), and the
        scope's 7-day counts after it: see ``decide`` in the Lua."""
        if res[0] == b"bound" or res[0] == "bound":
            return None, _bound(res[1:]), Totals(0, 0, 0)
        if res[0]:
            self.server_now = int(res[0])
        out = []
        end = 1 + 8 * n
        for i in range(1, end, 8):
            d, rsn, retry, counted, used, prev, t, gen = res[i : i + 8]
            out.append(Decided(d, rsn, retry, counted, used, prev, _slot(t, gen)))
        totals = Totals(int(res[end]), int(res[end + 1]), int(res[end + 2]))
        return out, _bound(res[end + 3 :]) if len(res) > end + 3 else [], totals

    # -- reconciliation ----------------------------------------------------------

    async def reconcile(
        self, scope: ScopeSpec, origin: str, rows: Sequence[tuple[Row, int]]
    ) -> int:
        """Count ``rows`` (each with its sequence number, increasing) in ``scope`` as
        admits, unconditionally and in order: the admits a sidecar decided on its own
        while Redis could not be reached. Idempotent: Redis keeps, per ``origin`` (the
        sidecar's) and scope, the highest sequence number counted, and skips rows at
        or below it. Returns how many rows were counted now."""
        for r, _ in rows:
            if not 0 < r.recipient < 1 << 64:
                raise ValueError(f"recipient key {r.recipient} is not in 1 .. 2**64 - 1")
            _check_time("now", r.now)
        mark = f"{scope.tag}:r:{origin}"
        keys, args = call_args(scope, (r for r, _ in rows), False, [*scope.fixed_keys(), mark])
        args.append(b"".join(SEQ.pack(seq) for _, seq in rows))
        return int(await self.run("reconcile", keys, args))

    # -- feedback ----------------------------------------------------------------

    async def release(
        self,
        scope: ScopeSpec,
        recipient: int,
        slot: int,
        prev_counted: int,
        number: NumberSpec | None = None,
    ) -> bool:
        """Give back the slot an admit created, as the engine's ``release``; ``number``
        (the admit's, when known) gives back its own count in warm-up too."""
        stamp = slot_stamp(recipient, slot, prev_counted)
        if stamp is None:
            return False
        gen, t = stamp
        keys = [*scope.fixed_keys()[:5], scope.scope_shard(recipient), scope.reach_key]
        args: list[object] = [*scope.geometry, scope.ttl_ms, str(recipient), t, gen, prev_counted]
        warm = number.warm_key(scope) if number is not None else None
        if number is not None and warm is not None:
            keys.append(warm)
            args.append(number.name)
        return bool(await self.run("release", keys, args))

    async def _number_update(
        self, scope: ScopeSpec, number: str, recipient: int, op: str, a: int, b: int
    ) -> None:
        fixed = scope.fixed_keys()
        # a window lives in the recipient's shard hash, a pair hold in the pair entries
        keys = fixed[5:7] if op == "hold" else [scope.scope_shard(recipient), fixed[0]]
        await self.run("number_update", keys, [op, f"{number}:{recipient}", a, b, scope.ttl_ms])

    async def open_window(
        self, scope: ScopeSpec, number: str, recipient: int, window_until: int, fep_until: int
    ) -> None:
        """Open or extend a window; never shortens one already open longer."""
        await self._number_update(scope, number, recipient, "open", window_until, fep_until)

    async def close_window(self, scope: ScopeSpec, number: str, recipient: int) -> None:
        await self._number_update(scope, number, recipient, "close", 0, 0)

    async def hold_pair(self, scope: ScopeSpec, number: str, recipient: int, until: int) -> None:
        """Meta answered 131056: the pair owes until ``until`` and bursts no sooner."""
        _check_time("until", until)
        await self._number_update(scope, number, recipient, "hold", until, 0)

    async def set_opt_out(self, scope: ScopeSpec, recipient: int, opted_out: bool) -> None:
        await self.run("opt_out", [scope.fixed_keys()[4]], [str(recipient), int(opted_out)])

    async def slow_throughput(
        self, scope: ScopeSpec, number: NumberSpec, now: int, pause_ms: int
    ) -> None:
        """Meta answered 130429: admit nothing from this number for ``pause_ms``."""
        _check_time("now", now)
        if not 0 <= pause_ms <= MAX_REDIS_TIME:
            raise ValueError("pause_ms must be 0..2**43")
        await self._throughput(scope, number, now, pause_ms)

    async def take_throughput(self, scope: ScopeSpec, number: NumberSpec, now: int) -> None:
        """An inbound message: Meta counts it toward the number's throughput."""
        _check_time("now", now)
        await self._throughput(scope, number, now, -1)

    async def _throughput(self, scope: ScopeSpec, number: NumberSpec, now: int, pause: int) -> None:
        _, iv, tol, *_ = number.args()
        args = [number.name, now, pause, iv, tol, scope.ttl_ms]
        await self.run("throughput", scope.fixed_keys()[:1], args)

    async def ticket_key(self, proposed: bytes) -> bytes:
        """The key every sidecar of this Redis signs tickets with: ``proposed`` if
        none is set yet (the first sidecar's), else the one set. A ticket any of
        them issued then verifies at all of them (a release told to any)."""
        key = f"{LAYOUT}:{{tiergate}}:ticket-key"
        await self.bounded(self.client.set(key, proposed, nx=True), _LOAD_TIMEOUT)
        value = await self.bounded(self.client.get(key), _LOAD_TIMEOUT)
        if not isinstance(value, bytes) or len(value) != len(proposed):
            raise StoreUnavailableError(f"store: {key} does not hold a ticket key")
        return value

    async def read_keys(
        self, keys: Sequence[tuple[ScopeSpec, Sequence[str]]]
    ) -> list[list[KeyHeld | None] | StoreUnavailableError]:
        """What idempotency keys hold, read only, in one round trip (the function
        ``keys``, one call per scope): for each (scope, its keys as ``Row.key``) the
        keys' :class:`KeyHeld` (None: the key holds nothing), or the store's error for
        that scope (a Cluster node lost: its scopes only)."""
        calls: list[tuple[list[str], list[object]]] = [
            ([f"{scope.tag}:k:{k}" for k in names], []) for scope, names in keys
        ]
        results = await self._pipeline(calls, "keys")
        out: list[list[KeyHeld | None] | StoreUnavailableError] = []
        for res in results:
            failure = _failure(res) if isinstance(res, Exception) else None
            if failure is not None and not isinstance(failure, StoreUnavailableError):
                raise failure
            out.append(failure or [_held(res[k], int(res[k + 1])) for k in range(0, len(res), 2)])
        return out

    # -- reports -----------------------------------------------------------------

    async def usage(self, scope: ScopeSpec, now: int, limit: int) -> Usage:
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``
        (Redis's clock when the store runs on the server clock)."""
        args = [*scope.geometry, self.read_time(now), limit]
        res = await self.run("usage", scope.fixed_keys()[:4], args)
        return Usage(*(int(v) for v in res[:4]))

    def read_time(self, now: int) -> int | str:
        """A read's time argument: ``now``, or '' (Redis's TIME) on the server clock."""
        if self.server_clock:
            return ""
        _check_time("now", now)
        return now

    async def aclose(self) -> None:
        if self.link is not None:
            await self.link.aclose()
        await self.client.aclose()


def _failure(e: Exception) -> Exception:
    """A pipeline's error for one call: a lost connection (a Cluster node gone) is
    the store being unavailable, like any call's."""
    if isinstance(e, _UNAVAILABLE):
        return StoreUnavailableError(f"store unavailable: {type(e).__name__}: {e}")
    return e


class KeyHeld(NamedTuple):
    """What an idempotency key holds in Redis: its first admit's answer (decision,
    reason, retry_at, counted, used, prev_counted, slot as the engine gives it), what
    it binds (as ``Row.binding``; None for a key made before keys were bound) and how
    long it has left (ms)."""

    decided: Decided
    binding: str | None
    left_ms: int


def _held(value: Any, left_ms: int) -> KeyHeld | None:
    """A key's value as the function ``keys`` answers it (None: nothing held)."""
    if not value:
        return None
    raw = bytes(value)
    d, rsn, retry, counted, used, prev, t, gen = _ANSWER.unpack_from(raw)
    tail = raw[_KEY_RECORD:]
    return KeyHeld(
        Decided(d, rsn, retry, counted, used, prev, _slot(t, gen)),
        tail.decode() if tail else None,
        left_ms,
    )


def _bound(pairs: list[Any]) -> list[tuple[int, str]]:
    """(row index, binding) of the Lua's (row number, binding) pairs."""
    return [
        (int(pairs[k]) - 1, v.decode() if isinstance(v := pairs[k + 1], bytes) else str(v))
        for k in range(0, len(pairs), 2)
    ]


def _missing_code(e: Exception) -> bool:
    """Whether Redis lost the library (or the script: redis-py's NoScriptError says
    no NOSCRIPT)."""
    text = str(e)
    return isinstance(e, rexc.NoScriptError) or "Function not found" in text or "NOSCRIPT" in text


async def connect(
    location: StoreLocation, *, server_clock: bool = False, timeout: float | None = None
) -> RedisCounting:
    """A :class:`RedisCounting` for ``location`` (a ``redis``, ``rediss`` or
    ``redis+cluster`` store) with its library loaded; calls bounded by ``timeout``
    seconds (:data:`DEFAULT_TIMEOUT` when None)."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    from redis.asyncio import Redis, RedisCluster
    from redis.asyncio.cluster import ClusterNode
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    common: dict[str, Any] = {
        "username": location.username or None,
        "password": location.password or None,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    client: Any
    if location.kind == "redis+cluster":
        seeds = [ClusterNode(h, p) for h, p in location.nodes]
        client = RedisCluster(startup_nodes=seeds, retry=Retry(NoBackoff(), 1), **common)
    else:
        host, port = location.nodes[0]
        client = Redis(
            host=host,
            port=port,
            db=location.db,
            ssl=location.tls,
            retry=Retry(NoBackoff(), 0),
            **common,
        )
    store = RedisCounting(client, server_clock=server_clock, timeout=timeout)
    store.location = location
    try:
        await store.load()
    except BaseException:
        await client.aclose()
        raise
    return store
