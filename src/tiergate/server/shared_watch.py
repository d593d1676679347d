"""WatchSenderState on the shared store: usage thresholds from the counts in Redis.

Changes of tier, limit, quality, status, restriction and paused templates come
from this sidecar's policy state, as on the embedded store. Usage is the
scope's in Redis, so admits made by another sidecar count: while anyone
watches, :class:`WatchedCounts` reads every watched scope's counts
(``redis_reads.scope_counts``, one read-only function call each)

- at subscribe, before the first state is sent;
- after each commit of this sidecar (an admit, feedback): the commits of one
  loop pass share one read, made once the pass is over;
- every :data:`POLL_S` seconds, so another sidecar's admits are seen within it
  even when this one decides nothing;

then, on the server clock, applies what time alone changed by now (a
restriction's end, a warm-up step, a due upgrade: ``Watches.catch_up``, as the
next decision would) and looks for changes (``Watches.look``): what time
changes is told within a poll, with no traffic. A read Redis does not answer
keeps the counts read before (the next read tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tiergate.policy.state import Sender
from tiergate.store.redis_reads import ScopeCounts
from tiergate.store.shared import SharedAdmission

from .watch import Watches

__all__ = ["POLL_S", "WatchedCounts"]

log = logging.getLogger("tiergate.server")

#: How often the watched scopes' counts are read from Redis while anyone watches (s).
POLL_S = 1.0


class WatchedCounts:
    """The watched scopes' counts read from Redis (see the module docstring)."""

    def __init__(
        self, shared: SharedAdmission, watches: Watches, poll_s: float | None = None
    ) -> None:
        self.shared = shared
        self.watches = watches
        self.poll_s = POLL_S if poll_s is None else poll_s
        #: Scope key → its latest counts read.
        self.counts: dict[str, ScopeCounts] = {}
        self._due = False
        self._poll: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        #: Reads made (each: every watched scope once).
        self.reads = 0
        watches.reader = self

    def reading(self, sender: Sender) -> ScopeCounts | None:
        return self.counts.get(sender.scope.key)

    def changed(self) -> None:
        """Read the counts once the current loop pass is over (one read for every
        commit of the pass), and poll while anyone watches."""
        loop = asyncio.get_running_loop()
        if not self._due:
            self._due = True
            loop.call_soon(self._start_read)
        if self._poll is None or self._poll.done():
            self._poll = loop.create_task(self._polling())

    def _start_read(self) -> None:
        self._reading = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        self._due = False
        if not self.watches.active:
            self.counts.clear()
            return
        self.reads += 1
        at = self.shared.service.state.latest_ms
        scopes = {s.scope.key: s.id for s in self.watches.watched()}
        for key, sender_id in scopes.items():
            try:
                counts = await self.shared.counts(sender_id, at, at)
            except Exception as e:  # the next read tries again
                log.warning("watch: counts of %s not read from the shared store: %s", key, e)
                continue
            if counts is not None:
                self.counts[key] = counts
        st = self.shared.service.state
        if st.request_clock or not self.watches.catch_up(st):
            self.watches.look()

    async def _polling(self) -> None:
        while self.watches.active:
            await asyncio.sleep(self.poll_s)
            if self.watches.active and not self._due:
                await self._read()
        self.counts.clear()

    async def aclose(self) -> None:
        """Stop polling and reading (the sidecar stops)."""
        for task in (self._poll, self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
