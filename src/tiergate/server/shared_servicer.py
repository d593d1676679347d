"""The RPCs over the shared store (``--store redis://…``): Admit and AdmitBatch decide
steps 4–9 in Redis (``store/shared.py``); RecordFeedback and IngestWebhook apply
their events through the shared log of policy events, for every sidecar
(``store/shared_policy.py``), and GetSenderState reads the log's entries first;
AdmitColumns, AdmitStream, PlanCampaign and WatchSenderState are refused with
FAILED_PRECONDITION (not served over the shared store yet, and never silently
from this process's own counts)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult, ApplyResult
from tiergate.policy.requests import check_one, well_formed
from tiergate.server import admit_wire, convert
from tiergate.server.servicer import AdmissionControl
from tiergate.store import StoreUnavailableError
from tiergate.store.shared import SharedAdmission
from tiergate.store.shared_policy import SharedPolicy
from tiergate.v1 import admission_pb2 as pb
from tiergate.webhooks import ingest as webhooks

__all__ = ["SharedAdmissionControl"]

Context = grpc.aio.ServicerContext[Any, Any]


class SharedAdmissionControl(AdmissionControl):
    """:class:`AdmissionControl` with its counting state in Redis."""

    shared: SharedAdmission
    policy: SharedPolicy

    def bind_shared(self, shared: SharedAdmission, policy: SharedPolicy) -> None:
        self.shared = shared
        self.policy = policy
        self.ingestor.submit = policy.apply

    async def _apply(self, event: ev.Event, now_ms: int) -> ApplyResult:
        return await self.policy.apply(event, now_ms)

    async def _ingest(self, request: pb.IngestWebhookRequest) -> webhooks.IngestResult:
        now = self._clock.now(request.at_unix_ms)
        secret = self.webhook_secret
        return await self.ingestor.ingest_sliced(request.body, request.signature, secret, now)

    async def _admit_one(self, request: Any, wire: bool) -> AdmitResult:
        fields = admit_wire.decode_fast(request) if wire else None
        if fields is None:
            req = admit_wire.parse(request) if wire else request
            fields = well_formed(req) or check_one(req, "")
        return await self.shared.admit_checked(fields, self._clock.now(fields[6]))

    async def Admit(self, request: Any, context: Context) -> Any:
        """As :meth:`AdmissionControl.Admit`: the same checks, metrics, commit and
        answers, with steps 4–9 decided in Redis."""
        if (unserved := self.in_flight.unserved(context)) is not None:
            await self._refuse(context, "Admit", unserved)
        started = time.perf_counter()
        with self.in_flight:
            try:
                if self.refusal is not None:
                    raise self.refusal
                wire = type(request) is bytes
                result = await self._admit_one(request, wire)
                self._metrics.decided_one(result, "Admit")
                await self._committed()
                return (
                    admit_wire.encode_response(result) if wire else convert.admit_response(result)
                )
            except Exception as e:
                await self._fail(context, "Admit", e)
            finally:
                self._metrics.timed("Admit", started)

    async def GetSenderState(
        self, request: pb.GetSenderStateRequest, context: Context
    ) -> pb.SenderState:
        """As :meth:`AdmissionControl.GetSenderState`, naming the shared store and
        whether it can be reached now; the shared log's entries are applied first."""
        try:
            await self.policy.catch_up()
        except StoreUnavailableError:
            self.shared.available = False
        state = await super().GetSenderState(request, context)
        state.store = str(self.shared.counting.location)
        state.store_unavailable = not self.shared.available
        return state

    async def _not_shared(self, rpc: str, context: Context) -> Any:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{rpc}: not decided over --store redis yet (unary Admit is); use the embedded store",
        )

    async def _batch_fast(self, data: bytes) -> bytes | None:
        return None  # AdmitBatch over Redis goes by the parsed requests

    async def _batch_results(self, reqs: Sequence[Any]) -> list[AdmitResult]:
        """Steps 4–9 decided in Redis: one round trip for the batch (more only where
        an idempotency key repeats)."""
        results = await self.shared.admit_many(reqs, self._clock.batch(reqs))
        self._metrics.decided(results, "AdmitBatch")
        await self._committed()
        return results

    async def AdmitColumnsWire(self, data: bytes, context: Context) -> bytes:
        return await self._not_shared("AdmitColumns", context)  # type: ignore[no-any-return]

    async def AdmitColumns(self, request: Any, context: Context) -> Any:
        return await self._not_shared("AdmitColumns", context)

    async def AdmitStream(self, request_iterator: Any, context: Context) -> Any:  # type: ignore[override]
        return await self._not_shared("AdmitStream", context)

    async def PlanCampaign(self, request: Any, context: Context) -> Any:
        return await self._not_shared("PlanCampaign", context)

    async def WatchSenderState(
        self, request: Any, context: Context
    ) -> AsyncIterator[pb.SenderState]:
        await self._not_shared("WatchSenderState", context)
        yield pb.SenderState()  # never reached: a stream handler is a generator
