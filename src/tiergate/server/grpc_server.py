"""The gRPC server: AdmissionControl with its wire handlers, health and reflection.

Built here, bound and started by :class:`tiergate.server.app.Sidecar`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tiergate.config import DEFAULT_MAX_QUEUED
from tiergate.server import decoding
from tiergate.server.auth import ADMIN_FEEDBACK, Access, Guard
from tiergate.server.metrics import Metrics
from tiergate.server.servicer import AdmissionControl
from tiergate.server.watch import Watches
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["AdmissionControl"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
#: Streams a connection may open beyond the in-flight limit: room for health
#: checks and for the calls answered RESOURCE_EXHAUSTED.
STREAM_HEADROOM = 64

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def build_server(
    servicer: AdmissionControl,
    health_servicer: health_pb2_grpc.HealthServicer,
    max_batch: int,
    metrics: Metrics,
    guard: Guard | None = None,
    *,
    max_message_bytes: int | None = None,
    max_queued: int = DEFAULT_MAX_QUEUED,
    watches: Watches | None = None,
) -> grpc.aio.Server:
    """A server with every service registered, not yet bound to a port.

    With an active ``guard`` (a token configured), AdmissionControl's methods
    need a token (see :mod:`tiergate.server.auth`); health and reflection never do.
    ``max_message_bytes`` bounds a request message (default: 4 MiB, or ``max_batch``
    KiB if more); ``max_queued`` bounds gRPC core's queue of each method's calls
    for the event loop (:func:`pending_limits`); ``watches`` serve
    WatchSenderState (default: ones no commit pokes, whose streams send the
    first state only); a connection opens at most
    ``servicer.in_flight.limit`` + :data:`STREAM_HEADROOM` streams at once (its
    client queues the rest), so one connection cannot hold every slot and health
    checks still get through.
    """
    if max_message_bytes is None:
        max_message_bytes = max(4 << 20, max_batch * 1024)
    server = grpc.aio.server(
        options=[
            # A second sidecar on the same port must fail, not share it.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_concurrent_streams", servicer.in_flight.limit + STREAM_HEADROOM),
            *pending_limits(max_queued),
        ]
    )
    servicer.watches = watches or Watches(lambda: servicer.service, metrics=metrics)
    _add_admission_control(server, servicer, metrics, guard if guard and guard.active else None)
    _add_health_and_reflection(server, health_servicer)
    return server


def pending_limits(max_queued: int) -> list[tuple[str, int]]:
    """gRPC core's limits on the calls it holds for a method before the event loop
    takes them: from half of ``max_queued`` waiting, a new call is turned away at
    random, more often as the queue grows, and always at ``max_queued``.
    Under overload calls wait there, before any Python runs for them (grpc.aio
    takes one call per method per turn of the loop, so the servicer's own count
    stays low while latency grows): an accepted call waits behind at most
    ``max_queued`` others, so the queue's length, not ``max_in_flight``, bounds
    what overload adds to its latency. The excess is shed there, in gRPC core's
    threads, at no cost to the event loop, ``RESOURCE_EXHAUSTED`` ("Too many
    pending requests for this server") on the promise-based server transport
    tiergate runs on (``tiergate.transport``; ``CANCELLED``, a stream reset, on
    gRPC's default one). The servicer's own RESOURCE_EXHAUSTED needs the call to
    reach Python, and there a refusal costs about what a decision does
    (``benchmarks/overload.py --load h2load``), so it cannot shed most of a load
    several times what the server sustains. Each method has its own queue:
    health checks, served through the generic handler path, queue apart from
    Admit and are never shed for its load."""
    return [
        ("grpc.server.max_pending_requests", max(1, max_queued // 2)),
        ("grpc.server.max_pending_requests_hard_limit", max(1, max_queued)),
    ]


def _feedback_access(request: pb.RecordFeedbackRequest) -> Access:
    return Access.ADMIN if request.WhichOneof("event") in ADMIN_FEEDBACK else Access.DATA


def _add_admission_control(
    server: grpc.aio.Server,
    servicer: AdmissionControl,
    metrics: Metrics,
    guard: Guard | None,
) -> None:
    pb_grpc.add_AdmissionControlServicer_to_server(servicer, server)
    # Every method reads its request's wire bytes itself (registered after the
    # generated handlers, these entries replace theirs for the methods), so bytes
    # that are not the request message are INVALID_ARGUMENT naming ``request``.
    # Admit, AdmitStream, AdmitBatch and AdmitColumns also write their responses'
    # bytes (with the compiled engine, without any protobuf message).
    # Without a token configured the servicer's methods are registered as they
    # are: nothing runs per call but the method.
    admit: Unary = servicer.Admit
    batch: Unary = servicer.AdmitBatch
    columns: Unary = servicer.AdmitColumnsWire
    stream: Streaming = servicer.AdmitStream
    watch: Streaming = servicer.WatchSenderState
    if guard is not None:
        admit = guard.unary(admit, Access.DATA)
        batch = guard.unary(batch, Access.DATA)
        columns = guard.unary(columns, Access.DATA)
        stream = guard.stream(stream, Access.DATA)
        watch = guard.stream(watch, Access.DATA)
    wire = {
        "Admit": grpc.unary_unary_rpc_method_handler(admit),
        "AdmitStream": grpc.stream_stream_rpc_method_handler(stream),
        "AdmitBatch": grpc.unary_unary_rpc_method_handler(batch),
        "AdmitColumns": grpc.unary_unary_rpc_method_handler(columns),
        "RecordFeedback": decoding.unary(
            servicer.RecordFeedback,
            pb.RecordFeedbackRequest,
            "RecordFeedback",
            metrics,
            guard=guard,
            level_of=_feedback_access,
        ),
        "IngestWebhook": decoding.unary(
            servicer.IngestWebhook,
            pb.IngestWebhookRequest,
            "IngestWebhook",
            metrics,
            guard=guard,
            level=Access.ADMIN,
        ),
        "GetSenderState": decoding.unary(
            servicer.GetSenderState,
            pb.GetSenderStateRequest,
            "GetSenderState",
            metrics,
            guard=guard,
        ),
        "PlanCampaign": decoding.unary(
            servicer.PlanCampaign, pb.PlanCampaignRequest, "PlanCampaign", metrics, guard=guard
        ),
        "WatchSenderState": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=pb.WatchSenderStateRequest.FromString,
            response_serializer=pb.SenderState.SerializeToString,
        ),
    }
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in grpc-stubs
        SERVICE_NAME, wire
    )


def _add_health_and_reflection(
    server: grpc.aio.Server, health_servicer: health_pb2_grpc.HealthServicer
) -> None:
    # Health and reflection are served through the generic handler path only:
    # grpc.aio's server loop waits on one pending call future per registered
    # method at every call it accepts, so their registered methods cost every
    # Admit CPU time (~30 us per unary call here).
    generic_only = _GenericOnly(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, generic_only)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
        generic_only,
    )


class _GenericOnly:
    """Registers a service's handlers with ``server`` as generic handlers only."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: object) -> None:
        """Not registered: the generic handler added alongside serves these methods."""
