"""Warm-up under portfolio scope, through gRPC on a request clock.

A user profile extends ``meta-2025`` (portfolio scope) and turns ``[warmup]``
on. A portfolio at TIER_1K holds an old, busy number (900 recipients counted)
and a number registered today, whose cap in its first week is 100 unique
recipients a day. The cap bounds the new number's *own* recipients (Meta: new
numbers share the portfolio's limit; tiergate's warm-up caps what each new
number itself sends), the portfolio's limit still bounds the portfolio's
count, both must hold, and a refusal is retried when the count that binds
frees a slot.
"""

from __future__ import annotations

from pathlib import Path

from rules_harness import admit, feedback, refused_alike, request, state
from server_harness import T0, Harness, make_config, run_async, sender, serving

from tiergate import config as cfg
from tiergate.v1 import admission_pb2 as pb

OLD = "106540352240001"  # registered long ago: no warm-up
NEW = "106540352240002"  # registered an hour before T0
M = 60_000
DAY = 86_400_000
A = T0 + M  # the new number starts sending a minute after the busy one
PROFILE = """
extends = "meta-2025"
name = "meta-2025-warmup"
[warmup]
enabled = true
"""


def config(tmp_path: Path) -> cfg.ServeConfig:
    path = tmp_path / "warmup.toml"
    path.write_text(PROFILE, encoding="utf-8")
    fields = {"portfolio_id": "p-warm", "tier": "TIER_1K", "throughput_mps": 1000}
    return make_config(
        profile=str(path),
        senders=(
            sender(OLD, display_phone_number="15550100001", **fields),
            sender(
                NEW, display_phone_number="15550100002", registered_at_unix_ms=T0 - 60 * M, **fields
            ),
        ),
    )


def old_user(i: int) -> str:
    return f"1555{i:07d}"


def new_user(i: int) -> str:
    return f"1666{i:07d}"


async def send_all(h: Harness, sender_id: str, users: list[str], at: int) -> list[pb.AdmitResponse]:
    """One AdmitBatch, a request every 2 ms from ``at`` (within the number's rate)."""
    requests = [
        request(u, at + 2 * i, sender_id=sender_id, template="promo") for i, u in enumerate(users)
    ]
    out: pb.AdmitBatchResponse = await h.stub.AdmitBatch(pb.AdmitBatchRequest(requests=requests))
    return list(out.responses)


async def busy_portfolio(h: Harness) -> None:
    """The old number counts 900 recipients from T0 (all in T0's minute)."""
    res = await send_all(h, OLD, [old_user(i) for i in range(900)], T0)
    assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in res)
    assert (await state(h, OLD, T0 + 2_000)).used_24h == 900


async def limited(h: Harness, sender_id: str, user: str, at: int, retry: int) -> None:
    res = await refused_alike(h, user, at, sender_id=sender_id, template="promo")
    assert (res.decision, res.reason, res.retry_at_unix_ms) == (
        pb.DECISION_RETRY_LATER,
        pb.MESSAGING_LIMIT,
        retry,
    ), res


def freed(at: int) -> int:
    """When a recipient counted at ``at`` leaves the rolling window (minute buckets)."""
    return (at // M + 1) * M + DAY


@run_async
async def test_a_new_number_sends_up_to_its_own_cap_while_the_portfolio_has_room(
    tmp_path: Path,
) -> None:
    async with serving(config(tmp_path)) as h:
        await busy_portfolio(h)
        # 60 users the old number counted, then 40 new ones: 100 of its own
        res = await send_all(h, NEW, [old_user(i) for i in range(60)], A)
        assert all(r.decision == pb.DECISION_ADMIT and not r.counted for r in res)
        res = await send_all(h, NEW, [new_user(i) for i in range(40)], A + 1_000)
        assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in res)
        st = await state(h, NEW, A + 2_000)
        assert (st.used_24h, st.effective_limit, st.remaining) == (940, 1000, 0)
        # its 101st recipient waits for its own first to leave the window, though
        # the portfolio has room; so does a user only the old number counted
        await limited(h, NEW, new_user(40), A + 2_000, freed(A))
        await limited(h, NEW, old_user(100), A + 2_000, freed(A))
        # a user it counted itself costs nothing; the old number is not capped
        again = await admit(h, new_user(0), A + 2_100, sender_id=NEW, template="promo")
        assert again.decision == pb.DECISION_ADMIT and not again.counted
        more = await admit(h, old_user(900), A + 2_200, sender_id=OLD, template="promo")
        assert more.decision == pb.DECISION_ADMIT and more.counted
        # a failed send gives back the new number's own slot too
        failed = pb.SendResult(
            ticket=res[39].ticket, status=pb.FAILED, meta_error_code=131026, at_unix_ms=A + 3_000
        )
        out = await feedback(h, send_result=failed)
        assert out.applied and "slot released" in out.detail, out
        back = await admit(h, new_user(41), A + 3_100, sender_id=NEW, template="promo")
        assert back.decision == pb.DECISION_ADMIT and back.counted
        await limited(h, NEW, new_user(42), A + 3_200, freed(A))
        # a day on, its slots free
        await limited(h, NEW, new_user(42), freed(A) - 1, freed(A))
        after = await admit(h, new_user(42), freed(A), sender_id=NEW, template="promo")
        assert after.decision == pb.DECISION_ADMIT and after.counted


@run_async
async def test_the_portfolio_limit_refuses_the_new_number_below_its_cap(tmp_path: Path) -> None:
    async with serving(config(tmp_path)) as h:
        await busy_portfolio(h)
        res = await send_all(h, NEW, [new_user(i) for i in range(50)], A)
        assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in res)
        res = await send_all(h, OLD, [old_user(900 + i) for i in range(50)], A + 1_000)
        assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in res)
        st = await state(h, NEW, A + 2_000)
        assert (st.used_24h, st.remaining) == (1000, 0)
        # 50 of its 100: the portfolio's count binds, retried when its first slot frees
        await limited(h, NEW, new_user(50), A + 2_000, freed(T0))
        await limited(h, OLD, new_user(50), A + 2_000, freed(T0))
        # a user the portfolio counted takes no slot of it, only one of the cap
        shared = await admit(h, old_user(5), A + 2_100, sender_id=NEW, template="promo")
        assert shared.decision == pb.DECISION_ADMIT and not shared.counted
        # when the busy number's recipients leave the window, the new number sends on
        after = await admit(h, new_user(50), freed(T0), sender_id=NEW, template="promo")
        assert after.decision == pb.DECISION_ADMIT and after.counted
