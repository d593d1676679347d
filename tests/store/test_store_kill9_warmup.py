"""A number in warm-up under portfolio scope keeps its own count across kill -9
and across a restart from a snapshot.

A real ``tiergate serve`` (request clock, a data directory) runs a user
profile that extends ``meta-2025`` with ``[warmup]`` on. A number registered
an hour ago shares a TIER_1K portfolio; it counts its 100 recipients (its
first week's cap). Whatever it was acknowledged must still bind after a
SIGKILL (the journal replayed: admits and a released slot) and after a
graceful stop (the snapshot restored, engine snapshot format 4): its 101st
recipient is refused with the same retry time, while the portfolio has room.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from test_store_kill9 import Server

from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
M = 60_000
DAY = 86_400_000
OLD = "106540352240001"
NEW = "106540352240002"
FREED = (T0 // M + 1) * M + DAY  # when the new number's first slots leave the window
PROFILE = """
extends = "meta-2025"
name = "meta-2025-warmup"
[warmup]
enabled = true
"""
CONFIG = f"""
profile = "warmup.toml"

[[senders]]
sender_id = "{OLD}"
portfolio_id = "p-warm"
tier = "TIER_1K"
throughput_mps = 1000

[[senders]]
sender_id = "{NEW}"
portfolio_id = "p-warm"
tier = "TIER_1K"
throughput_mps = 1000
registered_at_unix_ms = {T0 - 60 * M}
"""


def req(sender_id: str, user: str, at: int) -> pb.AdmitRequest:
    return pb.AdmitRequest(
        sender_id=sender_id,
        recipient=user,
        kind=pb.TEMPLATE,
        category=pb.MARKETING,
        template_id="spring_sale",
        at_unix_ms=at,
    )


def stub(server: Server) -> tuple[grpc.Channel, pb_grpc.AdmissionControlStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, pb_grpc.AdmissionControlStub(channel)


def refused_at_cap(s: pb_grpc.AdmissionControlStub, at: int) -> None:
    res = s.Admit(req(NEW, "16660000999", at), timeout=10)
    assert (res.decision, res.reason, res.retry_at_unix_ms) == (
        pb.DECISION_RETRY_LATER,
        pb.MESSAGING_LIMIT,
        FREED,
    ), res
    state = s.GetSenderState(pb.GetSenderStateRequest(sender_id=NEW, at_unix_ms=at), timeout=10)
    assert state.remaining == 0 and state.used_24h < state.effective_limit == 1000, state


def test_a_new_numbers_own_count_survives_kill9_and_a_snapshot(tmp_path: Path) -> None:
    server = Server(tmp_path, "fsync-always")
    server.config.write_text(CONFIG, encoding="utf-8")
    (tmp_path / "warmup.toml").write_text(PROFILE, encoding="utf-8")
    server.start()
    try:
        channel, s = stub(server)
        with channel:
            old = s.AdmitBatch(
                pb.AdmitBatchRequest(
                    requests=[req(OLD, f"1555{i:07d}", T0 + 2 * i) for i in range(50)]
                ),
                timeout=30,
            )
            assert all(r.decision == pb.DECISION_ADMIT for r in old.responses)
            users = [f"1666{i:07d}" for i in range(100)]
            new = s.AdmitBatch(
                pb.AdmitBatchRequest(
                    requests=[req(NEW, u, T0 + 2 * i) for i, u in enumerate(users)]
                ),
                timeout=30,
            )
            assert all(r.decision == pb.DECISION_ADMIT and r.counted for r in new.responses)
            refused_at_cap(s, T0 + 1_000)
        server.kill()  # SIGKILL: the journal holds every acknowledged admit

        server.start()
        channel, s = stub(server)
        with channel:
            refused_at_cap(s, T0 + 2_000)
            # a failed send gives back one of its own slots, which it uses again
            failed = pb.SendResult(
                ticket=new.responses[0].ticket,
                status=pb.FAILED,
                meta_error_code=131026,
                at_unix_ms=T0 + 3_000,
            )
            out = s.RecordFeedback(pb.RecordFeedbackRequest(send_result=failed), timeout=10)
            assert out.applied, out
            again = s.Admit(req(NEW, "16660000998", T0 + 4_000), timeout=10)
            assert again.decision == pb.DECISION_ADMIT and again.counted
            refused_at_cap(s, T0 + 5_000)
        server.kill()

        server.start()  # the release and the admit after it, replayed
        channel, s = stub(server)
        with channel:
            refused_at_cap(s, T0 + 6_000)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGTERM)  # a graceful stop writes a snapshot
        assert server.proc.wait(30) == 0
        server.proc = None
        assert list(server.data_dir.glob("snapshot-*")), sorted(server.data_dir.iterdir())

        server.start()
        channel, s = stub(server)
        with channel:
            refused_at_cap(s, T0 + 7_000)
            # the old number is not capped; a day on, the new one's slots free
            more = s.Admit(req(OLD, "15550000999", T0 + 8_000), timeout=10)
            assert more.decision == pb.DECISION_ADMIT and more.counted
            after = s.Admit(req(NEW, "16660000999", FREED), timeout=10)
            assert after.decision == pb.DECISION_ADMIT and after.counted
    finally:
        server.kill()
