"""PlanCampaign: requests checked, plans carried on across calls, answers.

A list too long for one message is planned in several calls: a request with
``more_follow`` gets a ``continuation`` token, and the next request that
passes it back plans its recipients after the earlier ones, on the same
simulated state. The server holds at most :data:`MAX_HELD` such plans, each
for :data:`HELD_FOR_S` seconds after its last call (the oldest goes first when
a new one needs room); a token that is unknown, expired or already used is
``INVALID_ARGUMENT`` naming ``continuation``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from tiergate.policy.column_checks import recipient_keys
from tiergate.policy.planning import CampaignPlan
from tiergate.policy.requests import MAX_ID_LEN, MAX_TEMPLATE_LEN, InvalidArgument
from tiergate.policy.seam import CountingStore
from tiergate.policy.service import AdmissionService
from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.v1 import admission_pb2 as pb

if TYPE_CHECKING:
    from tiergate.server.clock import DecisionClock
    from tiergate.server.servicer import InFlight
    from tiergate.store import StoreError

__all__ = [
    "HELD_FOR_S",
    "MAX_HELD",
    "HeldPlans",
    "PlanCampaignRpc",
    "PlanCopier",
    "plan_campaign",
]

MAX_HELD = 8
HELD_FOR_S = 60.0
_CATEGORIES = (pb.MARKETING, pb.UTILITY, pb.AUTHENTICATION, pb.SERVICE)
#: Makes the counting state a new plan runs on, from its sender, its list's recipient
#: keys and its start: (engine, scope, number, the engine's time), or None for the
#: live engine's copy (``CampaignPlan``'s ``counting``).
PlanCopier = Callable[
    [str, "array[int]", int], Awaitable[tuple[CountingStore, int, int, int] | None]
]


class HeldPlans:
    """Plans waiting for their next recipients, by token: bounded in number and time."""

    def __init__(self, capacity: int = MAX_HELD, held_for_s: float = HELD_FOR_S) -> None:
        self.capacity = capacity
        self.held_for_s = held_for_s
        self._plans: OrderedDict[str, tuple[CampaignPlan, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._plans)

    def _expire(self, now: float) -> None:
        plans = self._plans
        while plans:
            token, (_, until) = next(iter(plans.items()))
            if until > now:
                break
            del plans[token]

    def hold(self, plan: CampaignPlan) -> tuple[str, float]:
        """Keep ``plan`` for its next call: (token, seconds it is held for)."""
        now = time.monotonic()
        self._expire(now)
        while len(self._plans) >= self.capacity:
            self._plans.popitem(last=False)
        token = secrets.token_urlsafe(18)
        self._plans[token] = (plan, now + self.held_for_s)
        # its copy of the counting state is freed when it expires, calls or none (a
        # moment after: a loop's timer may fire a millisecond before its time)
        with contextlib.suppress(RuntimeError):  # no running loop: at the next call
            asyncio.get_running_loop().call_later(self.held_for_s + 0.05, self._expire_now)
        return token, self.held_for_s

    def _expire_now(self) -> None:
        self._expire(time.monotonic())

    def take(self, request: pb.PlanCampaignRequest) -> CampaignPlan:
        """The plan the request's continuation holds, no longer held (a token serves
        one call); a sender, template or category the request gives must be the
        plan's (else nothing changes)."""
        self._expire(time.monotonic())
        held = self._plans.get(request.continuation)
        if held is None:
            raise InvalidArgument("continuation", "continuation: unknown, expired or already used")
        plan = held[0]
        for name, value, given in (
            ("sender_id", plan.sender_id, request.sender_id),
            ("template_id", plan.template_id, request.template_id),
            ("category", plan.category, request.category),
        ):
            if given and given != value:
                raise InvalidArgument(name, f"{name}: differs from the continued plan's")
        del self._plans[request.continuation]
        return plan


def _check_request(request: pb.PlanCampaignRequest) -> None:
    """INVALID_ARGUMENT naming the first bad field of a request."""
    if not 0 <= request.start_at_unix_ms <= MAX_AT_UNIX_MS:
        raise InvalidArgument(
            "start_at_unix_ms", f"start_at_unix_ms: must be 0 .. {MAX_AT_UNIX_MS}"
        )
    if request.continuation:
        return
    if not request.sender_id or len(request.sender_id) > MAX_ID_LEN:
        raise InvalidArgument(
            "sender_id", f"sender_id: is required, at most {MAX_ID_LEN} characters"
        )
    if not request.template_id or len(request.template_id) > MAX_TEMPLATE_LEN:
        raise InvalidArgument(
            "template_id", f"template_id: is required, at most {MAX_TEMPLATE_LEN} characters"
        )
    if request.category not in _CATEGORIES:
        raise InvalidArgument(
            "category",
            f"category: must be MARKETING, UTILITY, AUTHENTICATION or SERVICE, "
            f"got {request.category}",
        )


async def plan_campaign(
    service: AdmissionService,
    request: pb.PlanCampaignRequest,
    now: int,
    held: HeldPlans,
    copier: PlanCopier | None = None,
) -> pb.PlanCampaignResponse:
    """Plan a request's recipients; the simulation runs in a worker thread, on the
    plan's own copy of the counting state (``copier``'s for a new plan where it is
    given: the shared store's)."""
    keys = recipient_keys(list(request.recipients))
    _check_request(request)
    if request.continuation:
        plan = held.take(request)
        if copier is not None:
            plan = await _remade(service, plan, copier, keys)
    else:
        start = max(request.start_at_unix_ms, now)
        counting = None if copier is None else await copier(request.sender_id, keys, start)
        plan = CampaignPlan(
            service.state,
            request.sender_id,
            request.template_id,
            request.category,
            start,
            counting,
        )
    times: array[int] = await asyncio.to_thread(plan.plan, keys)
    if copier is not None:
        plan.lists.append(keys)
    t = plan.totals
    out = pb.PlanCampaignResponse(
        admissible_now=t.admissible_now,
        completes_at_unix_ms=t.completes_at,
        planned=t.planned,
        start_at_unix_ms=t.start,
        limit_reached_at_unix_ms=t.limit_reached_at,
    )
    out.earliest_at_unix_ms.extend(times)
    for reason, count in sorted(t.never.items()):
        out.never_by_reason.add(reason=reason, count=count)
    for hour, (sends, used, limit) in t.hours.items():
        out.hours.add(hour_start_unix_ms=hour, sends=sends, used=used, limit=limit)
    if request.more_follow:
        token, held_for = held.hold(plan)
        out.continuation = token
        out.continuation_expires_at_unix_ms = int((time.time() + held_for) * 1000)
    return out


async def _remade(
    service: AdmissionService, old: CampaignPlan, copier: PlanCopier, keys: array[int]
) -> CampaignPlan:
    """A continued plan made again on the ``copier``'s state (the shared store's, read
    for every recipient so far and the next ones, ``keys``): the earlier lists
    planned on it again first, so the next list goes after them."""
    earlier: array[int] = array("Q")
    for done in old.lists:
        earlier.extend(done)
    counting = await copier(old.sender_id, earlier + keys, old.totals.start)
    plan = CampaignPlan(
        service.state, old.sender_id, old.template_id, old.category, old.totals.start, counting
    )
    await asyncio.to_thread(plan.plan, earlier)
    plan.lists = old.lists
    return plan


class PlanCampaignRpc:
    """The PlanCampaign RPC of ``servicer.AdmissionControl`` (a mixin of it): the
    same admission, clock and failure handling as its other RPCs."""

    service: AdmissionService
    plans: HeldPlans
    in_flight: InFlight
    refusal: StoreError | None
    _clock: DecisionClock
    #: What a new plan's counting state is made by (None: a copy of the live engine).
    plan_copier: PlanCopier | None = None

    if TYPE_CHECKING:

        async def _admit_call(
            self, context: grpc.aio.ServicerContext[Any, Any], rpc: str
        ) -> None: ...
        def _timed(self, rpc: str) -> contextlib.AbstractContextManager[None]: ...
        async def _fail(
            self, context: grpc.aio.ServicerContext[Any, Any], rpc: str, exc: Exception
        ) -> NoReturn: ...

    async def PlanCampaign(
        self, request: pb.PlanCampaignRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PlanCampaignResponse:
        await self._admit_call(context, "PlanCampaign")
        with self.in_flight, self._timed("PlanCampaign"):
            try:
                if self.refusal is not None:
                    raise self.refusal
                now = self._clock.now(request.at_unix_ms)
                return await plan_campaign(self.service, request, now, self.plans, self.plan_copier)
            except Exception as e:
                await self._fail(context, "PlanCampaign", e)
