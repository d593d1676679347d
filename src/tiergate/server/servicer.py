"""The ``tiergate.v1.AdmissionControl`` service: RPCs over the policy layer.

Every RPC reads the clock once, makes one call into the policy layer (one
engine crossing per request, batch or stream chunk), then commits the state
changes it made before the response leaves. Bad input is ``INVALID_ARGUMENT``
naming the field and consumes nothing; while the journal cannot be written
(its file system full) every RPC is ``UNAVAILABLE``, deciding nothing; any
other failure is ``INTERNAL`` and never an admit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult, ApplyResult
from tiergate.policy.caps import CapReached
from tiergate.policy.columnar import ColumnsLike, ColumnsResult, admit_columns
from tiergate.policy.reports import SenderReport
from tiergate.policy.requests import Checked, InvalidArgument, KeyRefused
from tiergate.policy.service import AdmissionService
from tiergate.server import admit_wire, batch_wire, columns_wire, convert, plans
from tiergate.server.clock import DecisionClock, server_clock_ms
from tiergate.server.metrics import Metrics
from tiergate.server.watch import Watching
from tiergate.store import StoreError, StoreUnavailableError
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc
from tiergate.webhooks import ingest as webhooks

log = logging.getLogger("tiergate.server")

Context = grpc.aio.ServicerContext[Any, Any]
# Starts making the state changes of a call durable; returns what to await before
# answering (None: nothing to wait for). A plain call, no coroutine per RPC.
Commit = Callable[[], Awaitable[None] | None]

_INDEXED_FIELD = re.compile(r"^requests\[(\d+)\]\.?(.*)$")
_END = object()
_CLOSED = object()  # AdmitStream's queue: the sidecar is stopping


class ShuttingDown(Exception):
    """The sidecar is stopping: the call is answered UNAVAILABLE."""


class InFlight:
    """Counts the admission calls being served (open streams included), at most
    ``limit`` at once; at shutdown (:meth:`drain`) turns new calls away, waits for
    the calls in flight and ends the open streams."""

    def __init__(self, limit: int = 1024) -> None:
        self.count = 0
        self.limit = limit
        self.closing = False
        #: Per open AdmitStream: ends it (UNAVAILABLE) after what it decided.
        self.streams: set[Callable[[], None]] = set()

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1

    def unserved(self, context: Context) -> tuple[grpc.StatusCode, str] | None:
        """Why a call that is starting is not served: the sidecar is stopping, the
        limit is reached, or its deadline has passed while it waited (nothing is
        decided for it)."""
        if self.closing:
            return grpc.StatusCode.UNAVAILABLE, "shutting down, retry on another instance"
        if self.count >= self.limit:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"overloaded: {self.limit} calls in flight, retry later"
            )
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call was served"
        return None

    def close(self) -> None:
        """From now on every call starting is answered UNAVAILABLE. The shutdown
        holds one count itself, so that Admit (which checks only while other calls
        are in flight) checks too."""
        if not self.closing:
            self.closing = True
            self.count += 1

    async def drain(self, ends: float) -> None:
        """At shutdown, before the gRPC server stops (``time.monotonic()`` ``ends``
        the grace period): new calls are answered UNAVAILABLE, the calls in flight
        finish, and the AdmitStreams still open near the end end UNAVAILABLE after
        the answers to what they decided."""
        self.close()
        if not await self._drained(ends - min(1.0, max(0.0, ends - time.monotonic()) / 4)):
            for end in list(self.streams):
                end()
            await self._drained(ends)

    async def _drained(self, deadline: float) -> bool:
        while self.count > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.count <= 1


class Deciding:
    """The decision steps of the admission RPCs: checked requests, one checked
    request, columns; the shared store (``shared_servicer``) awaits Redis in them."""

    service: AdmissionService
    refusal: StoreError | None
    _clock: DecisionClock
    _metrics: Metrics
    _max_batch: int

    def _decide(
        self, requests: Sequence[pb.AdmitRequest], now_ms: int, rpc: str
    ) -> list[AdmitResult]:
        return self._decided(requests, self.service.admit_many(requests, now_ms), rpc)

    def _decided(
        self, requests: Sequence[Any], results: list[AdmitResult], rpc: str
    ) -> list[AdmitResult]:
        """``results``, the answers to ``requests``, counted in the metrics."""
        if len(results) != len(requests):
            raise RuntimeError(f"admit_many answered {len(results)} of {len(requests)} requests")
        self._metrics.decided(results, rpc)
        return results

    async def _decide_requests(self, requests: Sequence[Any], rpc: str) -> list[AdmitResult]:
        """Checked requests decided in order at the clock's time for them."""
        return self._decide(requests, self._clock.batch(requests), rpc)

    async def _decide_checked(self, fields: Checked) -> AdmitResult:
        """One request whose fields passed ``requests.well_formed``'s checks."""
        return self.service.admit_checked(fields, self._clock.now(fields[6]))

    async def _decide_columns(self, request: ColumnsLike, rpc: str) -> ColumnsResult:
        return self._admit_columns(request, rpc)

    def _check_batch_size(self, n: int) -> None:
        if n > self._max_batch:
            raise InvalidArgument(
                "requests", f"requests: at most {self._max_batch} per call, got {n}"
            )

    def _admit_columns(self, request: ColumnsLike, rpc: str = "AdmitColumns") -> ColumnsResult:
        result = admit_columns(self.service, request, self._columns_time(request))
        return self._columns_decided(request, result, rpc)

    def _columns_time(self, request: ColumnsLike) -> int:
        """The time a columnar request is decided at, once it may be decided."""
        if self.refusal is not None:
            raise self.refusal
        n = len(request.recipients)
        if n > self._max_batch:
            raise InvalidArgument(
                "recipients", f"recipients: at most {self._max_batch} items per call, got {n}"
            )
        at = request.at_unix_ms
        if not isinstance(at, array):
            at = array("q", at[:])
        return self._clock.columns(at)

    def _columns_decided(
        self, request: ColumnsLike, result: ColumnsResult, rpc: str
    ) -> ColumnsResult:
        """``result``, the answers to ``request``, counted in the metrics."""
        n = len(request.recipients)
        if len(result) != n:
            raise RuntimeError(f"admit_columns answered {len(result)} of {n} items")
        self._metrics.decided_columns(
            result.decisions, result.reasons, rpc, result.shadows.values()
        )
        return result


class AdmissionControl(Deciding, Watching, plans.PlanCampaignRpc, pb_grpc.AdmissionControlServicer):
    def __init__(
        self,
        service: AdmissionService,
        *,
        commit: Commit,
        metrics: Metrics,
        max_batch: int = 1000,
        max_in_flight: int = 1024,
        webhook_secret: str = "",
        request_clock: bool = False,
        clock: Callable[[], int] = server_clock_ms,
        ingestor: webhooks.WebhookIngestor | None = None,
    ) -> None:
        self.service = service
        self._commit = commit
        self._metrics = metrics
        self._max_batch = max_batch
        #: The Meta app secret IngestWebhook checks (empty: none); a reload may rotate it.
        self.webhook_secret = webhook_secret
        self.ingestor = ingestor if ingestor is not None else webhooks.WebhookIngestor(service)
        self._clock = DecisionClock(service, clock, request_clock)
        self.in_flight = InFlight(max_in_flight)
        # Set while nothing can be acknowledged, answered before deciding:
        # UNAVAILABLE while the journal's disk is full, INTERNAL once the store failed.
        self.refusal: StoreError | None = None
        self.plans = plans.HeldPlans()  # campaign plans a continuation carries on

    # --- helpers ---------------------------------------------------------------

    async def _committed(self) -> None:
        """Await the commit of what this call changed (for the less busy RPCs)."""
        pending = self._commit()
        if pending is not None:
            await pending

    def now(self) -> int:
        """The time a request without ``at_unix_ms`` is decided at (webhook receiver)."""
        return self._clock.now(0)

    async def _fail(self, context: Context, rpc: str, exc: Exception) -> NoReturn:
        if isinstance(exc, InvalidArgument):
            self._metrics.invalid(rpc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, CapReached):  # counted by the policy layer (``capped``)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        if isinstance(exc, StoreUnavailableError | ShuttingDown):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{rpc}: {exc}")
        self._metrics.internal(rpc)
        log.exception("%s failed", rpc, extra={"rpc": rpc})
        await context.abort(
            grpc.StatusCode.INTERNAL, f"{rpc}: internal error ({type(exc).__name__})"
        )

    async def _admit_call(self, context: Context, rpc: str) -> None:
        """Answer a call that :meth:`InFlight.unserved` turns away; return for the others."""
        unserved = self.in_flight.unserved(context)
        if unserved is not None:
            await self._refuse(context, rpc, unserved)

    async def _refuse(
        self, context: Context, rpc: str, unserved: tuple[grpc.StatusCode, str]
    ) -> NoReturn:
        code, message = unserved
        self._metrics.shed(rpc, code.name)
        await context.abort(code, f"{rpc}: {message}")
        raise AssertionError("abort returned")  # pragma: no cover

    @contextlib.contextmanager
    def _timed(self, rpc: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._metrics.timed(rpc, started)

    # --- RPCs ------------------------------------------------------------------

    async def Admit(self, request: Any, context: Context) -> Any:
        """An AdmitRequest in, an AdmitResponse out, as protobuf messages or (the
        compiled codec, ``server.admit_wire``) their bytes: the same either way."""
        # The busiest RPC: what ``with self.in_flight, self._timed(...)`` does, written
        # out (a generator-based context manager costs more than the rest of the wrapper).
        in_flight = self.in_flight
        # Alone, a call is served at once: the limit and the deadline are checked
        # only while other calls are in flight (an integer test otherwise).
        if in_flight.count and (unserved := in_flight.unserved(context)) is not None:
            await self._refuse(context, "Admit", unserved)
        in_flight.__enter__()
        started = time.perf_counter()
        try:
            if self.refusal is not None:
                raise self.refusal
            wire = type(request) is bytes
            if wire:
                fields = admit_wire.decode_fast(request)
                if fields is not None:
                    result = self.service.admit_checked(fields, self._clock.now(fields[6]))
                else:
                    request = admit_wire.parse(request)
                    result = self.service.admit(request, self._clock.now(request.at_unix_ms))
            else:
                result = self.service.admit(request, self._clock.now(request.at_unix_ms))
            self._metrics.decided_one(result, "Admit")
            pending = self._commit()
            if pending is not None:
                await pending
            if wire:
                return admit_wire.encode_response(result)
            return convert.admit_response(result)
        except Exception as e:
            await self._fail(context, "Admit", e)
        finally:
            self._metrics.timed("Admit", started)
            in_flight.__exit__()

    async def AdmitBatch(self, request: Any, context: Context) -> Any:
        """A protobuf AdmitBatchRequest in, an AdmitBatchResponse out; or, with the
        compiled engine, the request's wire bytes in and the response's bytes out (see
        ``server.batch_wire``): the same answers, errors and commit either way."""
        await self._admit_call(context, "AdmitBatch")
        with self.in_flight, self._timed("AdmitBatch"):
            try:
                if self.refusal is not None:
                    raise self.refusal
                wire = type(request) is bytes
                if wire:
                    self._check_batch_size(batch_wire.requests_before_parse(request))
                    fast = await self._batch_fast(request)
                    if fast is not None:
                        return fast
                    request = batch_wire.parse(request)
                reqs = request.requests
                self._check_batch_size(len(reqs))
                results = await self._batch_results(reqs) if reqs else []
                reply = pb.AdmitBatchResponse(
                    responses=[convert.admit_response(r) for r in results]
                )
                return reply.SerializeToString() if wire else reply
            except Exception as e:
                await self._fail(context, "AdmitBatch", e)

    async def _batch_fast(self, data: bytes) -> bytes | None:
        """AdmitBatch's answer bytes from the compiled reader's columns; None: parse it."""
        cols = batch_wire.decode_fast(data)
        if cols is None:
            return None
        try:
            result = await self._decide_columns(cols, "AdmitBatch")
        except KeyRefused as e:  # named as the message path names it
            raise e.at(f"requests[{e.item}].idempotency_key") from None
        await self._committed()
        return batch_wire.encode_response(cols, result)

    async def _batch_results(self, reqs: Sequence[Any]) -> list[AdmitResult]:
        """A parsed AdmitBatch's answers, decided and committed."""
        results = await self._decide_requests(reqs, "AdmitBatch")
        await self._committed()
        return results

    async def AdmitColumns(
        self, request: pb.AdmitColumnsRequest, context: Context
    ) -> pb.AdmitColumnsResponse:
        await self._admit_call(context, "AdmitColumns")
        with self.in_flight, self._timed("AdmitColumns"):
            try:
                result = await self._decide_columns(request, "AdmitColumns")
                await self._committed()
                return convert.admit_columns_response(result)
            except Exception as e:
                await self._fail(context, "AdmitColumns", e)

    async def AdmitColumnsWire(self, data: bytes, context: Context) -> bytes:
        """AdmitColumns served from and to wire bytes (see ``server.columns_wire``):
        the same answers, errors and commit as :meth:`AdmitColumns`."""
        await self._admit_call(context, "AdmitColumns")
        with self.in_flight, self._timed("AdmitColumns"):
            try:
                request = columns_wire.decode_request(data, self._max_batch)
                result = await self._decide_columns(request, "AdmitColumns")
                await self._committed()
                return columns_wire.encode_response(result)
            except Exception as e:
                await self._fail(context, "AdmitColumns", e)

    async def AdmitStream(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Served with protobuf messages, or (with the compiled engine) from and to
        wire bytes, as the handler is registered (see ``server.admit_wire``): the
        same answers, errors and commits either way."""
        await self._admit_call(context, "AdmitStream")
        with self.in_flight:
            incoming = _Incoming(request_iterator, self._max_batch)
            self.in_flight.streams.add(incoming.end)
            offset = 0  # stream position of the chunk's first request
            try:
                while (chunk := await incoming.chunk()) is not None:
                    if self.refusal is not None:
                        raise self.refusal
                    fields: Checked | None = None
                    unreadable = -1
                    if type(chunk[0]) is bytes:
                        fields, requests, unreadable = _wire_chunk(chunk)
                        encode: Callable[[AdmitResult], Any] = admit_wire.encode_response
                    else:
                        requests, encode = chunk, convert.admit_response
                    try:
                        if fields is not None:
                            result = await self._decide_checked(fields)
                            self._metrics.decided_one(result, "AdmitStream")
                            results = [result]
                        elif requests:
                            results = await self._decide_requests(requests, "AdmitStream")
                        else:
                            results = []
                    except InvalidArgument as e:
                        # Answer the valid requests before the bad one, then end the
                        # stream naming the bad one by its position in the stream.
                        results, bad, field, e = await _decide_before(self, requests, e)
                        if results:
                            await self._committed()
                            for r in results:
                                yield encode(r)
                        raise InvalidArgument(
                            field, f"stream message {offset + bad}: {_strip_index(str(e))}"
                        ) from None
                    pending = self._commit()
                    if pending is not None:
                        await pending
                    offset += len(chunk)
                    for r in results:
                        yield encode(r)
                    if unreadable >= 0:
                        # The messages before it are answered (above); end the stream here.
                        at = offset - len(chunk) + unreadable
                        raise InvalidArgument(
                            "request", f"stream message {at}: request: not an AdmitRequest"
                        )
            except Exception as e:
                await self._fail(context, "AdmitStream", e)
            finally:
                self.in_flight.streams.discard(incoming.end)
                incoming.reader.cancel()

    async def RecordFeedback(
        self, request: pb.RecordFeedbackRequest, context: Context
    ) -> pb.RecordFeedbackResponse:
        await self._admit_call(context, "RecordFeedback")
        with self.in_flight, self._timed("RecordFeedback"):
            try:
                if self.refusal is not None:
                    raise self.refusal
                event = convert.feedback_event(request)
                result = await self._apply(event, self._clock.now(event.at_unix_ms))
                await self._committed()
                self._metrics.feedback(type(event).__name__, result.applied)
                return pb.RecordFeedbackResponse(applied=result.applied, detail=result.detail)
            except Exception as e:
                await self._fail(context, "RecordFeedback", e)

    async def IngestWebhook(
        self, request: pb.IngestWebhookRequest, context: Context
    ) -> pb.IngestWebhookResponse:
        await self._admit_call(context, "IngestWebhook")
        with self.in_flight, self._timed("IngestWebhook"):
            try:
                if self.refusal is not None:
                    raise self.refusal
                try:
                    outcome = await self._ingest(request)
                except webhooks.SignatureError as e:
                    self._metrics.invalid("IngestWebhook")
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"signature: {e}")
                except webhooks.WebhookError as e:
                    raise InvalidArgument("body", f"body: {e}") from None
                await self._committed()
                return pb.IngestWebhookResponse(
                    applied=outcome.applied,
                    ignored=outcome.ignored,
                    ignored_events=[
                        pb.IgnoredEvent(field=f, reason=r) for f, r in outcome.ignored_events
                    ],
                )
            except Exception as e:
                await self._fail(context, "IngestWebhook", e)

    async def _sender_report(self, sender_id: str, at_unix_ms: int) -> SenderReport:
        """The report GetSenderState sends (KeyError: an unknown sender)."""
        return self.service.sender_state(sender_id, self._clock.now(at_unix_ms), at_unix_ms)

    async def _apply(self, event: ev.Event, now_ms: int) -> ApplyResult:
        """Apply one feedback event (the shared store applies it for every sidecar)."""
        return self.service.apply(event, now_ms)

    async def _ingest(self, request: pb.IngestWebhookRequest) -> webhooks.IngestResult:
        """Verify, parse and apply one webhook body (IngestWebhook)."""
        now = self._clock.now(request.at_unix_ms)
        return self.ingestor.ingest(request.body, request.signature, self.webhook_secret, now)

    async def GetSenderState(
        self, request: pb.GetSenderStateRequest, context: Context
    ) -> pb.SenderState:
        await self._admit_call(context, "GetSenderState")
        with self.in_flight, self._timed("GetSenderState"):
            try:
                if self.refusal is not None:
                    raise self.refusal
                if not request.sender_id:
                    raise InvalidArgument("sender_id", "sender_id: is required")
                try:
                    report = await self._sender_report(request.sender_id, request.at_unix_ms)
                except KeyError:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND,
                        f"sender_id: unknown sender {request.sender_id!r}",
                    )
                state = convert.sender_state(report)
                # Reading state may advance time-driven state (tier upgrades).
                await self._committed()
                return state
            except Exception as e:
                await self._fail(context, "GetSenderState", e)


class _Incoming:
    """An AdmitStream's requests in chunks. A reader task buffers what the client
    sends while a chunk is being decided; the bounded queue stops reading when
    full, so gRPC flow control pushes back on the client."""

    def __init__(self, requests: AsyncIterator[Any], max_batch: int) -> None:
        self._requests = requests
        self._max_batch = max_batch
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_batch)
        self._done = False
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        queue = self._queue
        try:
            async for req in self._requests:
                # put() only waits when the queue is full; skip its coroutine otherwise.
                if queue.full():
                    await queue.put(req)
                else:
                    queue.put_nowait(req)
        except Exception as e:
            await queue.put(e)
        else:
            await queue.put(_END)

    def end(self) -> None:
        """At shutdown: read no more; what is queued is not decided."""
        self.reader.cancel()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    async def chunk(self) -> list[Any] | None:
        """The requests that have arrived (at least one, at most ``max_batch``);
        None once the client has sent everything. Raises what the reader met, or
        :class:`ShuttingDown` after :meth:`end`."""
        if self._done:
            return None
        queue = self._queue
        chunk: list[Any] = []
        item = await queue.get()
        while True:
            if item is _END:
                self._done = True
                return chunk or None
            if item is _CLOSED:
                raise ShuttingDown("shutting down; the messages not answered were not decided")
            if isinstance(item, Exception):
                raise item
            chunk.append(item)
            if len(chunk) >= self._max_batch:
                return chunk
            if queue.empty():
                # One loop turn lets the reader hand over messages that
                # have already arrived; stop when nothing more came.
                await asyncio.sleep(0)
                if queue.empty():
                    return chunk
            item = queue.get_nowait()


async def _decide_before(
    servicer: AdmissionControl, requests: Sequence[pb.AdmitRequest], error: InvalidArgument
) -> tuple[list[AdmitResult], int, str, InvalidArgument]:
    """A stream chunk refused with ``error``: decide the requests before the first
    bad one, which may lie before the one ``error`` names (fields are checked before
    keys). Returns their answers, the first bad one's index, field and error."""
    bad, field = _bad_index(error, len(requests))
    while bad > 0:
        try:
            head = requests[:bad]
            results = await servicer._decide_requests(head, "AdmitStream")
            return results, bad, field, error
        except InvalidArgument as e:
            error = e
            bad, field = _bad_index(e, bad)
    return [], 0, field, error


def _bad_index(exc: InvalidArgument, n: int) -> tuple[int, str]:
    m = _INDEXED_FIELD.match(exc.field)
    if m is None or int(m.group(1)) >= n:
        return 0, exc.field
    return int(m.group(1)), m.group(2) or exc.field


def _strip_index(message: str) -> str:
    return re.sub(r"^requests\[\d+\]\.", "", message)


def _wire_chunk(chunk: list[bytes]) -> tuple[Checked | None, list[pb.AdmitRequest], int]:
    """A stream chunk of wire bytes: the checked fields of a lone well-formed request,
    else the messages, up to the first that is not an AdmitRequest (its index, or -1)."""
    if len(chunk) == 1:
        fields = admit_wire.decode_fast(chunk[0])
        if fields is not None:
            return fields, [], -1
    requests: list[pb.AdmitRequest] = []
    for i, data in enumerate(chunk):
        try:
            requests.append(pb.AdmitRequest.FromString(data))
        except DecodeError:
            return None, requests, i
    return None, requests, -1
