"""The decide round trips to Redis: gathered, one in flight, over their own
connection.

Unary Admits reach the sidecar one at a time (grpc.aio takes one call per
method per turn of the loop), and what a round trip costs is mostly its own,
not its rows': in the sidecar (a task, the bound, the write and the read,
packing and parsing) and in Redis (a function call reads and writes its
scope's meta, rings and expiries once, whatever its rows): docs/redis.md,
"Speed". So:

* :class:`Rounds` keeps one decide round trip in flight at a time: the calls
  made while Redis works on one wait and go together in the next, one function
  call per scope with the rows of all its callers, in the order they were made;
  a lone call goes at the next pass of the loop (no wait is added: pacing
  round trips to make them carry more calls measured worse with few calls in
  flight, docs/redis.md "Speed");
* calls made while a round trip found the store unavailable get its error,
  unsent: one bounded wait for all of them, as for a batch's later steps.

:class:`Link` is the connection those round trips use on a standalone Redis
(no pool checkout, no pipeline object per round trip, no timeout of redis-py's
per read): the calls packed by hiredis in one write, their replies read in
order by the connection's parser, an error reply standing in for its call's
answer as a pipeline's ``raise_on_error=False`` gives it. The caller bounds
the round trip (``RedisCounting.bounded``); one cut short by the bound, a
reset or a refused connection closes the connection, and the next connects
again (redis-py's handshake: AUTH, SELECT, TLS). A Cluster client keeps its
pipelines (each call to its slot's node). The stream and parser are redis-py's
own attributes (``redis.asyncio.Connection`` in the locked version); with a
redis-py whose connection has them no more, the same round trips go through
its public calls (``send_packed_command``, ``read_response``: their timeouts
and checks per reply cost more).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from redis import exceptions as rexc

from tiergate.engine.results import Decided

from .base import StoreUnavailableError
from .redis_layout import Row, ScopeSpec

_pack: Callable[[Any], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _pack = None

__all__ = ["Command", "Link", "Pending", "Rounds", "link_of"]

#: One Redis command: its name and arguments (str, bytes or int).
Command = tuple[Any, ...]


class Pending:
    """The decide calls of one scope gathered for a round trip."""

    __slots__ = ("calls", "scope")

    def __init__(self, scope: ScopeSpec) -> None:
        self.scope = scope
        self.calls: list[tuple[Sequence[Row], asyncio.Future[list[Decided]]]] = []

    def rows(self) -> Iterator[Row]:
        """The rows of every call, in the order they were made."""
        for call_rows, _ in self.calls:
            yield from call_rows

    def fail(self, e: BaseException) -> None:
        for _, fut in self.calls:
            if not fut.done():
                fut.set_exception(e)


#: Sends one round trip of the calls gathered (by scope name), answering their
#: futures; raises StoreUnavailableError (after failing them) when Redis is gone.
Send = Callable[[dict[str, Pending]], Awaitable[None]]


class Rounds:
    """Decide calls gathered by scope, one round trip in flight (module docstring)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: dict[str, Pending] = {}
        self._scheduled = False
        self._in_flight = False
        self._task: asyncio.Future[None] | None = None

    def add(
        self, scope: ScopeSpec, rows: Sequence[Row], fut: asyncio.Future[list[Decided]]
    ) -> None:
        """``rows`` for the next round trip, answered through ``fut``."""
        p = self._pending.get(scope.name)
        if p is None:
            p = self._pending[scope.name] = Pending(scope)
        p.calls.append((rows, fut))
        if not self._scheduled and not self._in_flight:
            self._schedule()

    def _schedule(self) -> None:
        """The next round trip, after the calls of this loop pass (a task's first step
        runs at the next pass)."""
        self._scheduled = True
        self._task = asyncio.ensure_future(self._flush())

    def _take(self) -> dict[str, Pending]:
        pending, self._pending = self._pending, {}
        return pending

    async def _flush(self) -> None:
        self._scheduled = False
        self._in_flight = True
        taken = self._take()
        try:
            await self._send(taken)
        except StoreUnavailableError as e:  # (the calls made meanwhile: not sent)
            for p in self._take().values():
                p.fail(e)
        except Exception as e:  # (never a caller left waiting)
            for p in taken.values():
                p.fail(e)
        finally:
            self._in_flight = False
            if self._pending and not self._scheduled:
                self._schedule()


class Link:
    """One connection of ``pool``'s kind (its address, credentials, TLS and connect
    timeout), with no read or write timeout of its own: the caller bounds each
    round trip. Used by one round trip at a time."""

    def __init__(self, pool: Any) -> None:
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = None  # (the round trip's bound is the caller's)
        self._conn = pool.connection_class(**kwargs)
        self._busy = False
        #: Whether round trips use the connection's own stream and reply parser
        #: (redis-py's ``_reader``, ``_writer`` and ``_parser``, with hiredis);
        #: else, with a redis-py that has them no more, its public calls.
        self.direct = _pack is not None and all(
            hasattr(self._conn, a) for a in ("_reader", "_writer", "_parser")
        )

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands``, sent in one write, in order (an error reply
        as its :class:`redis.exceptions.ResponseError`)."""
        if self._busy:  # (replies read by two callers would cross)
            raise RuntimeError("a round trip is in flight on this link already")
        self._busy = True
        conn = self._conn
        try:
            if not self.direct:
                return await _public(conn, commands)
            if conn.is_connected and _closed(conn):
                await conn.disconnect(nowait=True)  # (closed by Redis while idle)
            if not conn.is_connected:
                await conn.connect()  # (redis-py's handshake: AUTH, SELECT, TLS)
            # the connection's stream and reply parser themselves: no read or write
            # timeout (the caller's bound), no health check, per reply
            assert _pack is not None
            writer = conn._writer
            writer.write(b"".join([_pack(c) for c in commands]))
            await writer.drain()
            parser = conn._parser
            out: list[Any] = []
            for _ in commands:
                out.append(await parser.read_response())
            return out
        except BaseException:
            # (cut short, reset or refused: the replies still due would be read by
            # the next round trip; it connects again instead)
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._busy = False

    async def aclose(self) -> None:
        await self._conn.disconnect()


async def _public(conn: Any, commands: Sequence[Command]) -> list[Any]:
    """A round trip through the connection's public calls (as redis-py's pool and
    pipeline make it): a connection closed while idle, or holding a reply no call
    waits for, is connected again first."""
    try:
        if conn.is_connected and await conn.can_read():
            await conn.disconnect(nowait=True)
    except (rexc.ConnectionError, OSError):
        await conn.disconnect(nowait=True)
    await conn.connect()  # (nothing when connected)
    await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
    out: list[Any] = []
    for _ in commands:
        try:
            out.append(await conn.read_response())
        except rexc.ResponseError as e:  # (the call's answer, as the direct path has it)
            out.append(e)
    return out


def _closed(conn: Any) -> bool:
    """Whether Redis (or a proxy) closed ``conn`` since its last round trip: its end
    of stream read, or its transport closing (what redis-py's pool checks before it
    hands a connection out)."""
    return bool(conn._reader.at_eof() or conn._writer.transport.is_closing())


def link_of(client: Any) -> Link | None:
    """The decide link of a standalone Redis ``client``; None for a Cluster's (its
    pipelines send each call to its slot's node)."""
    if getattr(client, "nodes_manager", None) is None and hasattr(client, "connection_pool"):
        return Link(client.connection_pool)
    return None
