"""The time each RPC decides at: the wall clock, or with ``--clock request`` the
requests' own times (see docs/rules.md, "What the request clock trusts")."""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence

from tiergate.engine.columns import kernels
from tiergate.policy.requests import InvalidArgument
from tiergate.policy.service import AdmissionService
from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.v1 import admission_pb2 as pb

__all__ = ["DecisionClock", "server_clock_ms"]


def server_clock_ms() -> int:
    """The wall clock in Unix ms (the server clock)."""
    return time.time_ns() // 1_000_000


class DecisionClock:
    """Reads the clock once per request, batch or stream chunk."""

    def __init__(
        self, service: AdmissionService, server_clock: Callable[[], int], request_clock: bool
    ) -> None:
        self.service = service
        self.server_clock = server_clock
        self.request_clock = request_clock

    def now(self, at_unix_ms: int = 0) -> int:
        """The time one request is decided at, read once.

        Server clock: the wall clock. Request clock: ``at_unix_ms``, or without
        one the latest time of the requests the service accepted so far (0
        before any; the policy layer then keeps each scope's own latest time),
        so a replay never jumps to the wall clock. Only the service moves that
        time, once it has accepted a request: a refused one leaves it as it was.
        """
        if not self.request_clock:
            return self.server_clock()
        latest = self.service.latest_ms
        if at_unix_ms > latest:
            if at_unix_ms > MAX_AT_UNIX_MS:
                raise InvalidArgument("at_unix_ms", f"at_unix_ms: after {MAX_AT_UNIX_MS}")
            return at_unix_ms
        return latest

    def batch(self, requests: Sequence[pb.AdmitRequest]) -> int:
        """The time of a batch's items without ``at_unix_ms``, as :meth:`now` (the
        service moves it along the batch with the times of the items it accepts)."""
        if not self.request_clock:
            return self.server_clock()
        latest = max((r.at_unix_ms for r in requests), default=0)
        if latest > MAX_AT_UNIX_MS:
            i = next(i for i, r in enumerate(requests) if r.at_unix_ms > MAX_AT_UNIX_MS)
            field = f"requests[{i}].at_unix_ms"
            raise InvalidArgument(field, f"{field}: after {MAX_AT_UNIX_MS}")
        return self.service.latest_ms

    def columns(self, at_unix_ms: array[int]) -> int:
        if not self.request_clock:
            return self.server_clock()
        _, latest = kernels.time_bounds(at_unix_ms)
        if latest > MAX_AT_UNIX_MS:
            i = next(i for i, t in enumerate(at_unix_ms) if t > MAX_AT_UNIX_MS)
            field = f"at_unix_ms[{i}]"
            raise InvalidArgument(field, f"{field}: after {MAX_AT_UNIX_MS}")
        return self.service.latest_ms
