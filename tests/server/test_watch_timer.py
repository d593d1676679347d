"""WatchSenderState told what time alone changes, with no traffic, through the gRPC
contract: usage falling under each threshold as slots leave the 24 h window, a
restriction ending; one timer per watched scope, gone with the last watcher; with
the request clock, the next request's time tells it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from server_harness import (
    PORTFOLIO,
    SENDER,
    T0,
    Harness,
    run_async,
    sender,
    serving,
    template_request,
)

from tiergate.v1 import admission_pb2 as pb

DAY = 86_400_000
MINUTE = 60_000  # the engine's bucket
HOUR = 3_600_000
#: How late a state told at its time may be read on a busy machine (the timer is
#: armed at the exact time: it is the loop that may be held up).
LATE = 2000
#: A sender whose throughput lets a whole limit go in one batch at one time.
FAST = (sender(throughput_mps=1000),)


class Clock:
    """The wall clock moved by ``offset`` ms: the server clock the sidecar reads."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset

    def set(self, at: int) -> None:
        self.offset += at - self()

    def minute_start(self) -> None:
        """On to a second into the next minute bucket (what follows shares it)."""
        self.set((self() // MINUTE + 1) * MINUTE + 1000)


async def next_state(stream: Any, timeout: float = 5) -> pb.SenderState:
    state: pb.SenderState = await asyncio.wait_for(stream.read(), timeout)
    return state


async def admit(h: Harness, first: int, count: int) -> int:
    """Admit ``count`` recipients in one batch (one bucket); the time it decided at."""
    reqs = [template_request(f"1555{i:07d}", 0) for i in range(first, first + count)]
    reply = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
    assert all(r.decision == pb.DECISION_ADMIT for r in reply.responses)
    state = await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER))
    return state.at_unix_ms


async def restrict(h: Harness, at: int, until: int) -> None:
    update = pb.SenderUpdate(
        sender_id=SENDER, at_unix_ms=at, status=pb.RESTRICTED, restricted_until_unix_ms=until
    )
    await h.stub.RecordFeedback(pb.RecordFeedbackRequest(sender_update=update))


async def forgotten(h: Harness) -> None:
    for _ in range(100):
        if not h.sidecar.watches.active:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the watcher is still held")


@run_async
async def test_usage_falls_under_each_threshold_with_no_traffic() -> None:
    clock = Clock()
    async with serving(clock="server", senders=FAST, server_clock=clock) as h:
        clock.minute_start()
        first = await admit(h, 0, 25)  # 10 % in one minute bucket
        clock.minute_start()
        await admit(h, 25, 225)  # 90 % in the next: 100 % in all
        free_100 = (first // MINUTE + 1) * MINUTE + DAY  # the first bucket leaves
        free_90 = free_100 + MINUTE  # and the next
        clock.set(free_100 - 1500)
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        s = await next_state(stream)
        assert (list(s.changes), s.used_24h) == (["STATE"], 250)
        assert h.sidecar.service is not None
        scope = h.sidecar.service.state.senders[SENDER].scope.index
        assert h.sidecar.watches.timers[scope][0] == free_100
        # Nothing is sent; 1.5 s on the first bucket leaves the window.
        s = await next_state(stream)
        told = clock()
        assert (list(s.changes), s.used_24h) == (["USAGE_BELOW_100"], 225)
        assert free_100 <= s.at_unix_ms <= told  # never early
        assert s.at_unix_ms - free_100 < LATE
        # The timer is armed again, at the next crossing's exact time.
        assert h.sidecar.watches.timers[scope][0] == free_90
        stream.cancel()
        await forgotten(h)


@run_async
async def test_one_timer_per_scope_gone_with_the_last_watcher() -> None:
    clock = Clock()
    async with serving(clock="server", senders=FAST, server_clock=clock) as h:
        clock.minute_start()
        at = await admit(h, 0, 250)
        free = (at // MINUTE + 1) * MINUTE + DAY
        clock.set(free - MINUTE)
        watches = h.sidecar.watches
        one = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        two = h.stub.WatchSenderState(pb.WatchSenderStateRequest(portfolio_id=PORTFOLIO))
        await next_state(one)
        await next_state(two)
        assert [due for due, _ in watches.timers.values()] == [free]  # one, for both
        handle = next(iter(watches.timers.values()))[1]
        one.cancel()
        await asyncio.sleep(0.1)
        assert watches.active and list(watches.timers.values()) == [(free, handle)]
        two.cancel()
        await forgotten(h)
        assert watches.timers == {} and handle.cancelled()
        assert not watches._committing  # no task left behind


@run_async
async def test_a_restriction_is_told_at_its_end_with_no_traffic() -> None:
    clock = Clock()
    async with serving(clock="server", senders=FAST, server_clock=clock) as h:
        until = clock() + 1000
        await restrict(h, clock(), until)
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        s = await next_state(stream)
        assert (s.status, s.restricted_until_unix_ms) == (pb.RESTRICTED, until)
        s = await next_state(stream)
        told = clock()
        assert {"STATUS", "RESTRICTION"} <= set(s.changes)
        assert (s.status, s.restricted_until_unix_ms) == (pb.CONNECTED, 0)
        assert until <= s.at_unix_ms <= told and s.at_unix_ms - until < LATE
        assert h.sidecar.service is not None and h.sidecar.service.state.journal == []  # committed
        assert h.sidecar.watches.timers == {}  # nothing more falls due
        stream.cancel()
        await forgotten(h)


@run_async
async def test_with_the_request_clock_the_next_request_tells() -> None:
    async with serving() as h:  # clock="request": no time passes between requests
        await restrict(h, T0, T0 + HOUR)
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        assert (await next_state(stream)).status == pb.RESTRICTED
        assert h.sidecar.watches.timers == {}
        with_no_request = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.3)
        assert not with_no_request.done()
        # A request two hours on: the restriction ended an hour before it.
        await h.stub.AdmitBatch(
            pb.AdmitBatchRequest(requests=[template_request("15557777777", T0 + 2 * HOUR)])
        )
        s: pb.SenderState = await asyncio.wait_for(with_no_request, 5)
        assert {"STATUS", "RESTRICTION"} <= set(s.changes)
        assert (s.status, s.at_unix_ms) == (pb.CONNECTED, T0 + 2 * HOUR)
        stream.cancel()


@run_async
async def test_a_warm_up_step_is_told_at_its_time_with_no_traffic(tmp_path: Path) -> None:
    """A number in its first warm-up week (its own limit scope: the cap is its limit)
    steps from a cap of 100 to 500 at seven days: a watcher is told then."""
    profile = tmp_path / "warmup.toml"
    profile.write_text('extends = "meta-2024"\nname = "warm"\n[warmup]\nenabled = true\n')
    clock = Clock()
    step = clock() + 1500
    number = sender(tier="TIER_1K", throughput_mps=1000, registered_at_unix_ms=step - 7 * DAY)
    async with serving(
        clock="server", profile=str(profile), senders=(number,), server_clock=clock
    ) as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        s = await next_state(stream)
        assert (s.limit, s.effective_limit) == (1000, 100)
        s = await next_state(stream)
        told = clock()
        assert (list(s.changes), s.effective_limit) == (["LIMIT"], 500)
        assert step <= s.at_unix_ms <= told and s.at_unix_ms - step < LATE
        stream.cancel()
        await forgotten(h)


@run_async
async def test_a_template_pause_is_told_at_its_end_with_no_traffic() -> None:
    clock = Clock()
    async with serving(clock="server", server_clock=clock) as h:
        until = clock() + 1000
        update = pb.TemplateUpdate(
            template_id="t9", status=pb.TEMPLATE_STATUS_PAUSED, paused_until_unix_ms=until
        )
        update.at_unix_ms = clock()
        await h.stub.RecordFeedback(pb.RecordFeedbackRequest(template_update=update))
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        s = await next_state(stream)
        assert [t.template_id for t in s.paused_templates] == ["t9"]
        s = await next_state(stream)
        told = clock()
        assert list(s.changes) == ["PAUSED_TEMPLATES"] and not s.paused_templates
        assert until <= s.at_unix_ms <= told and s.at_unix_ms - until < LATE
        stream.cancel()
        await forgotten(h)
