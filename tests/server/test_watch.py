"""WatchSenderState through the gRPC contract: the state first, then each kind of change
and each usage threshold; slow and vanished watchers hold nothing up."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from server_harness import PORTFOLIO, SENDER, T0, Harness, run_async, serving, template_request

from tiergate.v1 import admission_pb2 as pb

LIMIT = 250
HOUR = 3_600_000


async def update(h: Harness, **fields: Any) -> None:
    await h.stub.RecordFeedback(
        pb.RecordFeedbackRequest(
            sender_update=pb.SenderUpdate(sender_id=SENDER, at_unix_ms=T0, **fields)
        )
    )


async def pause(h: Harness, until: int, **names: str) -> None:
    """Meta paused template t9 until ``until``."""
    update = pb.TemplateUpdate(
        template_id="t9", status=pb.TEMPLATE_STATUS_PAUSED, paused_until_unix_ms=until, **names
    )
    update.at_unix_ms = T0
    await h.stub.RecordFeedback(pb.RecordFeedbackRequest(template_update=update))


async def send_at(h: Harness, recipient: str, at: int) -> None:
    await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=[template_request(recipient, at)]))


async def admit(h: Harness, first: int, last: int) -> None:
    reqs = [template_request(f"1555{i:07d}", T0 + 20 * i) for i in range(first, last)]
    reply = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
    assert all(r.decision == pb.DECISION_ADMIT for r in reply.responses)


async def next_state(stream: Any) -> pb.SenderState:
    state: pb.SenderState = await asyncio.wait_for(stream.read(), 5)
    return state


@run_async
async def test_the_state_then_each_kind_of_change() -> None:
    async with serving() as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        first = await next_state(stream)
        assert list(first.changes) == ["STATE"]
        assert (first.sender_id, first.limit, first.used_24h) == (SENDER, LIMIT, 0)

        await update(h, quality=pb.RED)
        s = await next_state(stream)
        assert list(s.changes) == ["QUALITY"] and s.quality == pb.RED

        await update(h, tier="TIER_1K")
        s = await next_state(stream)
        assert list(s.changes) == ["TIER", "LIMIT"] and s.limit == 1000

        await update(h, status=pb.FLAGGED)
        s = await next_state(stream)
        assert list(s.changes) == ["STATUS"] and s.status == pb.FLAGGED

        await update(h, status=pb.RESTRICTED, restricted_until_unix_ms=T0 + 3_600_000)
        s = await next_state(stream)
        assert "RESTRICTION" in s.changes and s.restricted_until_unix_ms == T0 + 3_600_000

        await pause(h, T0 + HOUR, template_name="promo")
        s = await next_state(stream)
        assert list(s.changes) == ["PAUSED_TEMPLATES"]
        assert [t.template_id for t in s.paused_templates] == ["t9"]
        stream.cancel()


@run_async
async def test_usage_crossing_each_threshold() -> None:
    async with serving() as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(portfolio_id=PORTFOLIO))
        assert list((await next_state(stream)).changes) == ["STATE"]
        await admit(h, 0, 199)  # 79.6 %: no threshold
        await admit(h, 199, 200)  # 80 %
        s = await next_state(stream)
        assert (list(s.changes), s.used_24h) == (["USAGE_80"], 200)
        await admit(h, 200, 230)  # past 90 %
        s = await next_state(stream)
        assert (list(s.changes), s.used_24h) == (["USAGE_90"], 230)
        await admit(h, 230, 250)  # 100 %
        s = await next_state(stream)
        assert (list(s.changes), s.used_24h) == (["USAGE_100"], 250)
        stream.cancel()


@run_async
async def test_usage_falling_back_and_a_pause_ending_with_time() -> None:
    async with serving() as h:
        await pause(h, T0 + HOUR)
        await admit(h, 0, LIMIT)
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        first = await next_state(stream)
        assert (list(first.changes), first.used_24h) == (["STATE"], LIMIT)
        assert [t.template_id for t in first.paused_templates] == ["t9"]
        # Two hours on, the pause has ended: no event says so, time does.
        await send_at(h, "15559999999", T0 + 2 * HOUR)
        s = await next_state(stream)
        assert list(s.changes) == ["PAUSED_TEMPLATES"] and not s.paused_templates
        # A day on, the slots have left the window: usage falls under every threshold.
        await send_at(h, "15558888888", T0 + 26 * HOUR)
        s = await next_state(stream)
        assert s.used_24h == 1
        assert list(s.changes) == ["USAGE_BELOW_80", "USAGE_BELOW_90", "USAGE_BELOW_100"]
        stream.cancel()


@run_async
async def test_a_slow_watcher_holds_nothing_up_and_gets_the_latest() -> None:
    async with serving() as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        assert list((await next_state(stream)).changes) == ["STATE"]
        # The watcher reads nothing while many changes happen: they are not held up.
        for q in (pb.RED, pb.YELLOW, pb.GREEN, pb.RED) * 25:
            await asyncio.wait_for(update(h, quality=q), 2)
        await asyncio.wait_for(admit(h, 0, LIMIT), 5)
        # It is then told each state it has room for, ending with the latest; what it
        # missed while not reading is merged into the next one it gets.
        seen: list[pb.SenderState] = []
        while not seen or seen[-1].used_24h < LIMIT:
            seen.append(await next_state(stream))
        assert len(seen) <= 101  # one per change at most: 100 updates, one batch
        assert seen[-1].quality == pb.RED
        changes = {c for s in seen for c in s.changes}
        assert {"QUALITY", "USAGE_80", "USAGE_90", "USAGE_100"} <= changes
        stream.cancel()


@run_async
async def test_a_vanished_watcher_is_forgotten() -> None:
    async with serving() as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        await next_state(stream)
        assert h.sidecar.watches.active
        stream.cancel()
        for _ in range(50):
            if not h.sidecar.watches.active:
                break
            await asyncio.sleep(0.02)
        assert not h.sidecar.watches.active
        await asyncio.wait_for(admit(h, 0, 10), 2)


@run_async
async def test_watch_streams_end_when_the_sidecar_stops() -> None:
    async with serving() as h:
        stream = h.stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        await next_state(stream)
        await asyncio.wait_for(h.sidecar.stop(5.0), 3)
        # It ends with status OK (an error status would raise), not reset by the stop.
        while await stream.read() is not grpc.aio.EOF:
            pass
        assert await stream.code() == grpc.StatusCode.OK


@run_async
async def test_bad_watch_requests() -> None:
    async with serving() as h:
        for req, code in (
            (pb.WatchSenderStateRequest(), grpc.StatusCode.INVALID_ARGUMENT),
            (
                pb.WatchSenderStateRequest(sender_id=SENDER, portfolio_id=PORTFOLIO),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (pb.WatchSenderStateRequest(sender_id="nobody"), grpc.StatusCode.NOT_FOUND),
        ):
            stream = h.stub.WatchSenderState(req)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stream.read()
            assert err.value.code() == code


def test_tiergate_watch_prints_each_state_as_it_comes(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tiergate import cli

    @run_async
    async def body() -> None:
        async with serving() as h:
            watching = asyncio.ensure_future(
                asyncio.to_thread(cli.main, ["watch", SENDER, "--target", h.target, "--json"])
            )
            for _ in range(200):  # until the CLI's stream is open
                if h.sidecar.watches.active:
                    break
                await asyncio.sleep(0.02)
            await update(h, quality=pb.YELLOW)
            out = ""
            for _ in range(200):
                out += capsys.readouterr().out
                if out.count("\n") >= 2:
                    break
                await asyncio.sleep(0.02)
            await h.sidecar.stop(5.0)
            assert await asyncio.wait_for(watching, 5) == 0
            lines = [json.loads(line) for line in out.splitlines()]
            assert [(m["changes"], m["quality"]) for m in lines] == [
                (["STATE"], "GREEN"),
                (["QUALITY"], "YELLOW"),
            ]

    capsys.readouterr()
    body()
