"""Counting state shared in Redis: DESIGN §2 steps 4–9 decided by a Redis Function.

:class:`RedisCounting` is the sidecar's side of the shared store. Each call
names a limit scope (:class:`ScopeSpec`: a portfolio or a phone number) and
the phone numbers in it (:class:`NumberSpec`) by their ids, the same in every
sidecar; the function library in ``redis_functions.lua`` holds the rules (the
reference engine's, statement for statement) and runs each call atomically
on the one Cluster slot of its scope's hash tag.

Concurrent :meth:`RedisCounting.decide` calls made in one pass of the event
loop go to Redis as one round trip: a pipeline with one function call per
scope, the rows of every caller of that scope in the order they were made.
A call that Redis does not answer within ``timeout`` seconds (connection
refused, reset, a hung server) raises :class:`StoreUnavailableError`; the
next call connects again.

See docs/redis.md for the key layout, memory per recipient and failure modes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, NamedTuple, cast

from redis import exceptions as rexc

from tiergate.engine.reference.bounds import (
    MAX_TIME,
    SLOT_GEN_BITS,
    slot_stamp,
)
from tiergate.engine.results import Decided, Usage

from .base import StoreUnavailableError
from .location import StoreLocation

__all__ = [
    "MAX_REDIS_TIME",
    "SHARD_BITS",
    "KeyBound",
    "NumberSpec",
    "RedisCounting",
    "Row",
    "ScopeSpec",
    "connect",
    "library_source",
]

#: A scope's recipients (their scope entries and their numbers' entries) are spread
#: over 2**SHARD_BITS hashes, small enough for Redis's compact listpack encoding.
SHARD_BITS = 12
#: Key layout version: a change of layout takes new keys, never reads old ones wrongly.
LAYOUT = "tg2"
#: Times the Redis store takes (ms): microsecond TATs stay exact in Lua's doubles.
MAX_REDIS_TIME = 1 << 43
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
    "policy_snapshot",
)
#: Bytes of a key's first admit in Redis (``decide``'s '>i1i1i8i1i8i8i8i2'); its binding follows.
_KEY_RECORD = 37
#: Loading the library (at start, and after Redis lost it) may take longer than a call.
_LOAD_TIMEOUT = 5.0
_MIX = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1
_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """A limit scope by its id, with the windows it counts in and its frequency cap."""

    name: str
    #: (bucket_ms, window_ms, long_bucket_ms, long_window_ms), as the engine's
    geometry: tuple[int, int, int, int] = (60_000, 86_400_000, 3_600_000, 604_800_000)
    freq_cap: int = 0
    freq_window_ms: int = 0

    @property
    def tag(self) -> str:
        """The hash tag of every key of the scope: one Cluster slot."""
        name = self.name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        return f"{LAYOUT}:{{pf:{name}}}"

    @property
    def ttl_ms(self) -> int:
        """Keys of a scope idle this long (wall time) vanish: past every window."""
        bucket_ms, window_ms, long_bucket_ms, long_window_ms = self.geometry
        return max(window_ms + bucket_ms, long_window_ms + long_bucket_ms)

    def fixed_keys(self) -> list[str]:
        t = self.tag
        return [f"{t}:m", f"{t}:d", f"{t}:w", f"{t}:s", f"{t}:o"]

    def scope_shard(self, recipient: int) -> str:
        return f"{self.tag}:c{shard(recipient)}"


@dataclass(frozen=True, slots=True)
class NumberSpec:
    """A phone number (sender) by its id, with its throughput and pair-rate buckets."""

    name: str
    tput_interval_us: int = 12_500
    tput_burst: int = 1
    pair_interval_ms: int = 6_000
    pair_burst: int = 1

    def __post_init__(self) -> None:
        if min(self.tput_interval_us, self.tput_burst, self.pair_interval_ms, self.pair_burst) < 1:
            raise ValueError("intervals and bursts must be >= 1")
        if ":" in self.name:
            raise ValueError(f"a number id has no ':' ({self.name!r})")

    def args(self) -> tuple[str | int, ...]:
        return (
            self.name,
            self.tput_interval_us,
            (self.tput_burst - 1) * self.tput_interval_us,
            self.pair_interval_ms,
            (self.pair_burst - 1) * self.pair_interval_ms,
        )


class Row(NamedTuple):
    """One request's part in a decision: the engine's ``decide`` arguments by name."""

    number: NumberSpec
    recipient: int
    flags: int
    limit: int
    now: int = 0
    #: ``<sender>:<idempotency key>`` (empty: none): a repeat of an admit made under
    #: it, at any sidecar, answers that admit's decision and consumes nothing.
    key: str = ""
    #: How long the key holds its first admit (ms).
    key_ms: int = 0
    #: What the key binds (``<records.bind(recipient, kind, category)>:<template>``): a
    #: repeat of the key for another request is told what its first request bound.
    binding: str = ""


class KeyBound(NamedTuple):
    """A row answered by its key's first admit, made for another request (what
    that key binds differs from the row's ``binding``)."""

    decided: Decided
    binding: str


def shard(recipient: int) -> int:
    """The shard of a recipient key (its top bits after a multiplicative mix)."""
    return ((recipient * _MIX) & _U64) >> (64 - SHARD_BITS)


def library_source() -> tuple[str, str, str]:
    """(library name, FUNCTION LOAD text, EVAL script text) of the one Lua source; the
    name carries a digest of it, so sidecars of different builds never call each
    other's code."""
    body = files("tiergate.store").joinpath("redis_functions.lua").read_text("utf-8")
    name = "tiergate_" + hashlib.sha1(body.encode()).hexdigest()[:12]
    # (a library's load reaches neither pairs nor most globals: one line per function)
    register = "".join(
        f"redis.register_function('{name}_{op}', calls.{op})\n" for op in _OPERATIONS
    )
    library = f"#!lua name={name}\n{body}\n{register}"
    script = f"{body}\nreturn calls[ARGV[1]](KEYS, {{unpack(ARGV, 2)}})\n"
    return name, library, script


def _slot(t: int, gen: int) -> int:
    return ((t + MAX_TIME) << SLOT_GEN_BITS) | gen if gen else 0


def _check_time(name: str, value: int) -> None:
    if not 0 <= value <= MAX_REDIS_TIME:
        raise ValueError(f"{name} must be within 0 .. 2**43 ms for the Redis store, got {value}")


class _Pending:
    """The decide calls of one scope gathered in one loop pass."""

    __slots__ = ("calls", "scope")

    def __init__(self, scope: ScopeSpec) -> None:
        self.scope = scope
        self.calls: list[tuple[Sequence[Row], asyncio.Future[list[Decided | KeyBound]]]] = []


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
        self._pending: dict[str, _Pending] = {}
        self._flush_scheduled = False
        self.round_trips = 0
        self._stale_topology = False
        #: Where it connects (printed without its password).
        self.location: StoreLocation | None = None

    # -- the library -----------------------------------------------------------

    async def load(self) -> str:
        """Load the function library (FUNCTION LOAD REPLACE), or fall back to scripts
        (EVALSHA) where Functions are refused; returns ``"functions"`` or ``"scripts"``."""
        if self.functions:
            try:
                load = self.client.function_load(self.library, replace=True)
                await self._bounded(load, _LOAD_TIMEOUT)
                return "functions"
            except rexc.ResponseError:
                self.functions = False
        await self._bounded(self.client.script_load(self.script), _LOAD_TIMEOUT)
        return "scripts"

    def _call(self, target: Any, op: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        if self.functions:
            return target.fcall(f"{self.name}_{op}", len(keys), *keys, *args)
        return target.evalsha(self.script_sha, len(keys), *keys, op, *args)

    async def _bounded(self, aw: Any, timeout: float = 0.0) -> Any:
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await aw
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"store unavailable: {type(e).__name__}: {e}") from None

    async def bounded(self, aw: Any, timeout: float = 0.0) -> Any:
        """``aw`` (a client's call) within the bound: :class:`StoreUnavailableError`
        when Redis does not answer in time."""
        return await self._bounded(aw, timeout)

    async def run(self, op: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """One call of the library's function ``op`` (loaded again if Redis lost it)."""
        return await self._run(op, keys, args)

    async def _run(self, op: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """One function call, the library loaded again if Redis lost it (a restart)."""
        for attempt in (0, 1):
            try:
                return await self._bounded(self._call(self.client, op, keys, args))
            except rexc.ResponseError as e:
                if attempt or not _missing_code(e):
                    raise
                await self.load()
        raise AssertionError("unreachable")

    # -- decisions ---------------------------------------------------------------

    def decide(
        self, scope: ScopeSpec, rows: Sequence[Row]
    ) -> asyncio.Future[list[Decided | KeyBound]]:
        """Decide ``rows`` in order for ``scope``, consuming what each admits (the
        engine's ``decide`` per row). Calls made in one loop pass share a round trip.
        A row whose key holds the first admit of another request is answered
        :class:`KeyBound` (that admit, and what its key binds)."""
        for r in rows:
            if not 0 < r.recipient < 1 << 64:
                raise ValueError(f"recipient key {r.recipient} is not in 1 .. 2**64 - 1")
            if not self.server_clock:
                _check_time("now", r.now)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Decided | KeyBound]] = loop.create_future()
        p = self._pending.get(scope.name)
        if p is None:
            p = self._pending[scope.name] = _Pending(scope)
        p.calls.append((rows, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        return fut

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        self._flush_scheduled = False
        calls = [_call_args(p, self.server_clock) for p in pending.values()]
        try:
            results = await self._pipeline(calls)
        except BaseException as e:
            for p in pending.values():
                for _, fut in p.calls:
                    if not fut.done():
                        fut.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for p, res in zip(pending.values(), results, strict=True):
            if isinstance(res, Exception):
                out: Exception | list[Decided | KeyBound] = _failure(res)
            else:
                out = self._decisions(res, sum(len(rows) for rows, _ in p.calls))
            at = 0
            for rows, fut in p.calls:
                if fut.done():
                    continue
                if isinstance(out, Exception):
                    fut.set_exception(out)
                else:
                    fut.set_result(out[at : at + len(rows)])
                at += len(rows)

    async def _pipeline(self, calls: list[tuple[list[str], list[object]]]) -> list[Any]:
        self.round_trips += 1
        nodes = getattr(self.client, "nodes_manager", None)  # a Cluster client's
        if nodes is not None and self._stale_topology:
            # a node was lost: ask the Cluster who serves each slot now (a failover)
            await self._bounded(nodes.initialize(), _LOAD_TIMEOUT)
            self._stale_topology = False
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                self._call(pipe, "decide", keys, args)
            try:
                results = await self._bounded(pipe.execute(raise_on_error=False))
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

    def _decisions(self, res: list[Any], n: int) -> list[Decided | KeyBound]:
        """The ``n`` rows' answers of one decide call (see ``decide`` in the Lua)."""
        if res[0]:
            self.server_now = int(res[0])
        out: list[Decided | KeyBound] = []
        for i in range(1, 1 + 8 * n, 8):
            d, rsn, retry, counted, used, prev, t, gen = res[i : i + 8]
            out.append(Decided(d, rsn, retry, counted, used, prev, _slot(t, gen)))
        bound = res[1 + 8 * n :]
        for i in range(0, len(bound), 2):
            row = int(bound[i]) - 1
            binding = bound[i + 1]
            text = binding.decode() if isinstance(binding, bytes) else str(binding)
            out[row] = KeyBound(cast(Decided, out[row]), text)
        return out

    # -- feedback ----------------------------------------------------------------

    async def release(self, scope: ScopeSpec, recipient: int, slot: int, prev_counted: int) -> bool:
        """Give back the slot an admit created, as the engine's ``release``."""
        stamp = slot_stamp(recipient, slot, prev_counted)
        if stamp is None:
            return False
        gen, t = stamp
        keys = [*scope.fixed_keys(), scope.scope_shard(recipient)]
        args = [*scope.geometry, scope.ttl_ms, str(recipient), t, gen, prev_counted]
        return bool(await self._run("release", keys, args))

    async def _number_update(
        self, scope: ScopeSpec, number: str, recipient: int, op: str, a: int, b: int
    ) -> None:
        keys = [scope.scope_shard(recipient)]
        await self._run("number_update", keys, [op, f"{number}:{recipient}", a, b, scope.ttl_ms])

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
        await self._run("opt_out", [scope.fixed_keys()[4]], [str(recipient), int(opted_out)])

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
        _, iv, tol, _, _ = number.args()
        args = [number.name, now, pause, iv, tol, scope.ttl_ms]
        await self._run("throughput", scope.fixed_keys()[:1], args)

    async def ticket_key(self, proposed: bytes) -> bytes:
        """The key every sidecar of this Redis signs tickets with: ``proposed`` if
        none is set yet (the first sidecar's), else the one set. A ticket any of
        them issued then verifies at all of them (a release told to any)."""
        key = f"{LAYOUT}:{{tiergate}}:ticket-key"
        await self._bounded(self.client.set(key, proposed, nx=True), _LOAD_TIMEOUT)
        value = await self._bounded(self.client.get(key), _LOAD_TIMEOUT)
        if not isinstance(value, bytes) or len(value) != len(proposed):
            raise StoreUnavailableError(f"store: {key} does not hold a ticket key")
        return value

    async def key_binding(self, scope: ScopeSpec, key: str) -> str | None:
        """What idempotency ``key`` (``<sender>:<key>``, as ``Row.key``) binds while it
        holds a first admit ("" for one made before keys were bound); None: none."""
        value = await self._bounded(self.client.get(f"{scope.tag}:k:{key}"))
        return None if value is None else bytes(value)[_KEY_RECORD:].decode()

    # -- reports -----------------------------------------------------------------

    async def usage(self, scope: ScopeSpec, now: int, limit: int) -> Usage:
        """(used_24h, next_slot_free_at, unique_7d, slots_7d) for the scope at ``now``
        (Redis's clock when the store runs on the server clock)."""
        if not self.server_clock:
            _check_time("now", now)
        when = "" if self.server_clock else now
        res = await self._run("usage", scope.fixed_keys()[:4], [*scope.geometry, when, limit])
        return Usage(*(int(v) for v in res[:4]))

    async def aclose(self) -> None:
        await self.client.aclose()


def _failure(e: Exception) -> Exception:
    """A pipeline's error for one call: a lost connection (a Cluster node gone) is
    the store being unavailable, like any call's."""
    if isinstance(e, _UNAVAILABLE):
        return StoreUnavailableError(f"store unavailable: {type(e).__name__}: {e}")
    return e


def _missing_code(e: Exception) -> bool:
    text = str(e)
    return "Function not found" in text or "NOSCRIPT" in text


def _call_args(p: _Pending, server_clock: bool) -> tuple[list[str], list[object]]:
    """KEYS and ARGV of one decide call for every row gathered for a scope."""
    s = p.scope
    keys = s.fixed_keys()
    index: dict[str, int] = {}
    numbers: dict[str, tuple[int, NumberSpec]] = {}
    rows: list[object] = []

    def key_at(key: str) -> int:
        at = index.get(key)
        if at is None:
            keys.append(key)
            at = index[key] = len(keys)
        return at

    for call_rows, _ in p.calls:
        for r in call_rows:
            num = numbers.get(r.number.name)
            if num is None:
                num = numbers[r.number.name] = (len(numbers) + 1, r.number)
            rk = r.recipient
            kidx = key_at(f"{s.tag}:k:{r.key}") if r.key else 0
            rows += (num[0], str(rk), key_at(s.scope_shard(rk)), r.flags, r.limit, r.now)
            rows += (kidx, r.key_ms, r.binding)
    clock = "" if server_clock else "r"
    head: list[object] = [clock, *s.geometry, s.freq_cap, s.freq_window_ms, s.ttl_ms, len(numbers)]
    for _, spec in numbers.values():
        head += spec.args()
    return keys, head + rows


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
