"""convert.admit_response: every AdmitResult field reaches the AdmitResponse unchanged."""

from __future__ import annotations

import pytest

from tiergate.policy.answers import AdmitResult
from tiergate.server import convert
from tiergate.v1 import admission_pb2 as pb

RESULTS = [
    AdmitResult(1, 1, 0, "1f.3.2a0000000b.9c", True, 100_000, 4_321, 0, "admitted"),
    AdmitResult(1, 1, 0, "", False, 250, 17, 0, "dry run: would admit"),
    AdmitResult(2, 8, 1_767_312_000_000, "", False, 250, 250, 131048, "messaging limit"),
    AdmitResult(3, 13, 0, "", False, 0, 0, 0, "unknown sender 'x'"),
    AdmitResult(2, 11, (1 << 62) - 1, "", False, (1 << 62) - 1, 0, 130429, "é ✓"),
]


@pytest.mark.parametrize("result", RESULTS)
def test_admit_response_carries_every_field(result: AdmitResult) -> None:
    reply = convert.admit_response(result)
    expected = pb.AdmitResponse(
        decision=result.decision,  # type: ignore[arg-type]
        reason=result.reason,  # type: ignore[arg-type]
        retry_at_unix_ms=result.retry_at_unix_ms,
        ticket=result.ticket,
        counted=result.counted,
        limit=result.limit,
        used=result.used,
        meta_error_code=result.meta_error_code,
        detail=result.detail,
    )
    assert reply == expected
    assert reply.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    assert (reply.decision, reply.reason, reply.detail) == (
        result.decision,
        result.reason,
        result.detail,
    )
