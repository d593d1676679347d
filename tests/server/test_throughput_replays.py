"""Meta's THROUGHPUT_UPGRADE under the default profile, through gRPC on a request
clock: it raises the number to 1 000 msg/s even when a rate was configured (the
newest information wins; the config's senders apply at their first start only),
and a later sender update with a rate wins over it in turn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rules_harness import DOCS_SENDER, body, docs_config, feedback, ingest, state
from server_harness import Harness, run_async, serving

from tiergate.v1 import admission_pb2 as pb

UPGRADE = "phone_number_quality_update__throughput_upgrade-0__meta-docs"  # Meta's example


async def upgrade(h: Harness) -> None:
    out = await ingest(h, body(UPGRADE))
    assert out.applied == 1, out


@run_async
async def test_throughput_upgrade_wins_over_a_configured_rate() -> None:
    async with serving(docs_config(throughput_mps=80)) as h:
        assert (await state(h, DOCS_SENDER)).throughput_mps == 80
        await upgrade(h)
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000
        # newer still: a sender update that sets a rate
        res = await feedback(
            h, sender_update=pb.SenderUpdate(sender_id=DOCS_SENDER, throughput_mps=50)
        )
        assert res.applied, res
        assert (await state(h, DOCS_SENDER)).throughput_mps == 50


@run_async
async def test_the_configured_rate_does_not_come_back_at_restart(tmp_path: Path) -> None:
    config = dataclasses.replace(docs_config(throughput_mps=80), data_dir=tmp_path)
    async with serving(config) as h:
        await upgrade(h)
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000
    async with serving(config) as h:
        assert (await state(h, DOCS_SENDER)).throughput_mps == 1000
