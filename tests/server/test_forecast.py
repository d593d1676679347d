"""GetSenderState's forecast through the gRPC contract: the last hour's rate, when the
limit is reached at it, and the slots freeing in each of the next 24 hours."""

from __future__ import annotations

from server_harness import SENDER, T0, Harness, run_async, serving, template_request

from tiergate.v1 import admission_pb2 as pb

HOUR = 3_600_000
MINUTE = 60_000


async def state_at(h: Harness, at: int) -> pb.SenderState:
    return await h.stub.GetSenderState(pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=at))


@run_async
async def test_forecast_from_the_last_hour_and_the_slots_leaving() -> None:
    async with serving() as h:
        reqs = [template_request(f"1555{i:07d}", T0 + 20 * i) for i in range(100)]
        await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
        now = T0 + 2_000
        s = await state_at(h, now)
        assert (s.used_24h, s.effective_limit, s.counted_last_hour) == (100, 250, 100)
        # 150 more at 100 an hour, nothing leaving the window before then: 1.5 h
        assert s.limit_reached_at_unix_ms == now + 3 * HOUR // 2
        # each slot leaves with its minute bucket, 24 h after that bucket ends:
        # later than 24 h from now
        leaves = (T0 // MINUTE + 1) * MINUTE + 24 * HOUR
        assert leaves > now + 24 * HOUR
        assert list(s.slots_freeing_per_hour) == [0] * 24

        later = T0 + 23 * HOUR + 30 * MINUTE
        s = await state_at(h, later)
        assert s.counted_last_hour == 0 and s.limit_reached_at_unix_ms == 0
        hour = (leaves - later - 1) // HOUR
        assert list(s.slots_freeing_per_hour) == [100 if k == hour else 0 for k in range(24)]


@run_async
async def test_no_forecast_once_the_limit_is_reached() -> None:
    async with serving() as h:
        reqs = [template_request(f"1555{i:07d}", T0 + 20 * i) for i in range(250)]
        await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=reqs))
        s = await state_at(h, T0 + 10_000)
        assert (s.used_24h, s.counted_last_hour, s.limit_reached_at_unix_ms) == (250, 250, 0)
