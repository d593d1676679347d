"""Admission over the shared store: steps 1–3 here, steps 4–9 in Redis.

:class:`SharedAdmission` decides a unary request the way
``AdmissionService.admit_checked`` does, with steps 4–9 (window, opt-out,
messaging limit, protective rules, throughput, pair rate) decided and
consumed by the Redis function instead of this process's engine:
``policy.admission.admit_prepare`` → :meth:`RedisCounting.decide` (requests
made in one loop pass share one round trip) → ``admission.admit_finish``.

While Redis cannot be reached, ``failure="closed"`` answers RETRY_LATER with
the detail ``store unavailable`` and a retry time one second on;
``failure="open"`` decides with this process's engine (counted locally, not
reconciled into Redis afterwards: see docs/redis.md).
"""

from __future__ import annotations

from typing import Literal

from tiergate.engine.constants import REASON_UNSPECIFIED, RETRY_LATER
from tiergate.policy.admission import Pending, admit_finish, admit_prepare
from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import Checked
from tiergate.policy.seam import Decision
from tiergate.policy.service import AdmissionService
from tiergate.policy.state import LimitScope
from tiergate.policy.tiers import number_params

from .base import StoreUnavailableError
from .redis_counting import NumberSpec, RedisCounting, Row, ScopeSpec

__all__ = ["RETRY_AFTER_MS", "UNAVAILABLE_DETAIL", "SharedAdmission"]

#: What a refusal for an unreachable store says, and how soon to retry.
UNAVAILABLE_DETAIL = "store unavailable: retry shortly"
RETRY_AFTER_MS = 1_000


class SharedAdmission:
    """Unary admission with its counting state in Redis (see the module docstring)."""

    def __init__(
        self,
        service: AdmissionService,
        counting: RedisCounting,
        failure: Literal["closed", "open"] = "closed",
    ) -> None:
        self.service = service
        self.counting = counting
        self.failure = failure
        self.unavailable_answers = 0
        self._scopes: dict[str, ScopeSpec] = {}

    def scope(self, scope: LimitScope) -> ScopeSpec:
        spec = self._scopes.get(scope.key)
        p = self.service.profile
        if spec is None or spec.freq_cap != p.frequency_cap:
            spec = self._scopes[scope.key] = ScopeSpec(
                scope.key,
                p.bucket_ms,
                p.window_ms,
                p.long_bucket_ms,
                p.lookback_ms,
                p.frequency_cap,
                p.frequency_window_ms,
            )
        return spec

    async def admit_checked(self, checked: Checked, now_ms: int) -> AdmitResult:
        """Decide one request whose fields passed ``requests.well_formed``'s checks."""
        st = self.service.state
        p = admit_prepare(st, checked, now_ms)
        if not isinstance(p, Pending):
            return p
        s = p.sender
        number = NumberSpec(s.id, *number_params(st, s))
        decided: Decision
        try:
            fut = self.counting.decide(
                self.scope(s.scope), [Row(number, p.rkey, p.flags, p.limit, p.now)]
            )
            decided = (await fut)[0]
        except StoreUnavailableError:
            self.unavailable_answers += 1
            if self.failure == "closed":
                retry = max(now_ms, p.now) + RETRY_AFTER_MS
                return AdmitResult(
                    RETRY_LATER,
                    REASON_UNSPECIFIED,
                    retry,
                    "",
                    False,
                    p.limit,
                    0,
                    0,
                    UNAVAILABLE_DETAIL,
                )
            decided = st.engine.decide(
                p.now, s.scope.index, s.engine_index, p.rkey, p.flags, p.limit
            )
        return admit_finish(st, p, decided)
