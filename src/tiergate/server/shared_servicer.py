"""The RPCs over the shared store (``--store redis://…``): Admit, AdmitBatch,
AdmitColumns and AdmitStream decide steps 4–9 in Redis (``store/shared.py``; the
batches through the columnar path, as on the embedded store); RecordFeedback and
IngestWebhook apply their events through the shared log of policy events, for
every sidecar (``store/shared_policy.py``); GetSenderState reads the log's
entries first and reports the counts in Redis, PlanCampaign plans on a local
engine made from Redis (``SharedAdmission.plan_copy``) and WatchSenderState reads
usage from Redis (``shared_watch.py``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult, ApplyResult
from tiergate.policy.columnar import ColumnsLike, ColumnsResult
from tiergate.policy.reports import SenderReport
from tiergate.policy.requests import Checked, check_one, well_formed
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
        self.plan_copier = shared.plan_copy
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
        return await self._decide_checked(fields)

    async def _decide_checked(self, fields: Checked) -> AdmitResult:
        return await self.shared.admit_checked(fields, self._clock.now(fields[6]))

    async def _decide_requests(self, requests: Sequence[Any], rpc: str) -> list[AdmitResult]:
        """Steps 4–9 decided in Redis: one round trip per step of the columnar path
        (one for the batch, more only where it is decided in parts)."""
        results = await self.shared.admit_many(requests, self._clock.batch(requests))
        return self._decided(requests, results, rpc)

    async def _decide_columns(self, request: ColumnsLike, rpc: str) -> ColumnsResult:
        result = await self.shared.admit_columns(request, self._columns_time(request))
        return self._columns_decided(request, result, rpc)

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

    async def _sender_report(self, sender_id: str, at_unix_ms: int) -> SenderReport:
        """As the embedded store's, with the scope's counts (used, 7-day counts, the
        forecast) read from Redis; this process's own while Redis cannot be reached
        (``store_unavailable`` says so). An upgrade threshold they show met is
        recorded for every sidecar first."""
        now = self._clock.now(at_unix_ms)
        counts = await self.shared.counts(sender_id, now, at_unix_ms)
        await self.policy.counted(sender_id, counts)
        return self.service.sender_state(sender_id, now, at_unix_ms, counts)

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
