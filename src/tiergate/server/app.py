"""The sidecar process: policy service + store + gRPC server + health + reflection.

Start-up: load the profile, recover state from the data directory, apply the
senders and templates the config declares (only those not known yet), then
serve. SIGHUP reloads the config: new senders are applied and a changed
profile takes effect on the live state. Shutdown (SIGTERM/SIGINT): health
NOT_SERVING, stop accepting, let in-flight calls finish within the grace
period, flush and close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tiergate.config import ConfigError, Endpoint, ServeConfig
from tiergate.engine import IMPLEMENTATION
from tiergate.policy import events as ev
from tiergate.policy.profile import Profile, load_profile
from tiergate.policy.service import AdmissionService, InvalidArgument
from tiergate.server import decoding
from tiergate.server.metrics import Metrics, MetricsEndpoint
from tiergate.server.servicer import AdmissionControl, server_clock_ms
from tiergate.store import EmbeddedStore, RecoveryReport, StoreError, StoreFailedError
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc
from tiergate.webhooks.http import WebhookReceiver
from tiergate.webhooks.ingest import IngestResult, ingestor_for

log = logging.getLogger("tiergate.server")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["AdmissionControl"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)


class StartupError(Exception):
    """The sidecar cannot start; the message says which setting or resource."""


class Sidecar:
    """One running tiergate: build with a config, ``await start()``, ``await stop()``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.service: AdmissionService | None = None
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        # The asyncio servicer is public API; the grpc stubs only know the sync one.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._webhooks: WebhookReceiver | None = None
        self.webhook_port = 0
        self._stopping: asyncio.Future[None] | None = None
        self._servicer: AdmissionControl | None = None
        self.store: EmbeddedStore | None = None
        self.recovery: RecoveryReport | None = None
        self.store_failed = False
        self._failure_report: asyncio.Task[None] | None = None

    # --- start -----------------------------------------------------------------

    def build_service(self) -> AdmissionService:
        return AdmissionService(self._profile(self.config), clock=self.config.clock)

    @staticmethod
    def _profile(config: ServeConfig) -> Profile:
        try:
            return load_profile(config.profile)
        except Exception as e:
            raise StartupError(f"profile: {e}") from e

    async def start(self) -> None:
        config = self.config
        service = self.build_service()
        self.service = service
        fresh = True
        if config.data_dir is not None:
            try:
                self.store = EmbeddedStore.open(
                    config.data_dir, config.durability, recover_truncate=config.recover_truncate
                )
                self.recovery = self.store.recover(service)
                self.store.on_failure = self._on_store_failure
            except StoreError as e:
                raise StartupError(f"data_dir: {e}") from e
            fresh = self.recovery.snapshot_path is None and self.recovery.records_replayed == 0
        else:
            log.warning("data_dir is none: state is kept in memory only and lost at exit")
        applied = seed(
            service,
            config.senders,
            config.templates if fresh else (),
            seed_clock_ms(config),
        )
        if applied:
            log.info("applied from the config: %s", ", ".join(applied))
        await self._commit()

        server = grpc.aio.server(
            options=[
                # A second sidecar on the same port must fail, not share it.
                ("grpc.so_reuseport", 0),
                # A full AdmitBatch must fit (an AdmitRequest is at most ~1 KiB).
                ("grpc.max_receive_message_length", max(4 << 20, config.max_batch * 1024)),
            ]
        )
        servicer = AdmissionControl(
            service,
            commit=self._commit_start,
            metrics=self.metrics,
            max_batch=config.max_batch,
            webhook_secret=config.webhook_secret,
            request_clock=config.clock == "request",
        )
        self._servicer = servicer
        pb_grpc.add_AdmissionControlServicer_to_server(servicer, server)
        # Every method reads its request's wire bytes itself (registered after the
        # generated handlers, these entries replace theirs for the methods), so bytes
        # that are not the request message are INVALID_ARGUMENT naming ``request``.
        # Admit, AdmitStream, AdmitBatch and AdmitColumns also write their responses'
        # bytes (with the compiled engine, without any protobuf message).
        wire = {
            "Admit": grpc.unary_unary_rpc_method_handler(servicer.Admit),
            "AdmitStream": grpc.stream_stream_rpc_method_handler(servicer.AdmitStream),
            "AdmitBatch": grpc.unary_unary_rpc_method_handler(servicer.AdmitBatch),
            "AdmitColumns": grpc.unary_unary_rpc_method_handler(servicer.AdmitColumnsWire),
        }
        for rpc, request_type in (
            ("RecordFeedback", pb.RecordFeedbackRequest),
            ("IngestWebhook", pb.IngestWebhookRequest),
            ("GetSenderState", pb.GetSenderStateRequest),
        ):
            wire[rpc] = decoding.unary(getattr(servicer, rpc), request_type, rpc, self.metrics)
        server.add_registered_method_handlers(  # type: ignore[attr-defined]  # not in grpc-stubs
            SERVICE_NAME, wire
        )
        # Health and reflection are served through the generic handler path only:
        # grpc.aio's server loop waits on one pending call future per registered
        # method at every call it accepts, so their registered methods cost every
        # Admit CPU time (~30 us per unary call here).
        generic_only = _GenericOnly(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, generic_only)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            generic_only,
        )
        try:
            self.port = server.add_insecure_port(str(config.listen))
        except RuntimeError as e:
            raise StartupError(f"listen: cannot bind {config.listen}: {e}") from e
        if self.port == 0:
            raise StartupError(f"listen: cannot bind {config.listen}")
        await server.start()
        self._server = server
        for name in HEALTH_SERVICES:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

        if config.webhook_listen is not None:
            self._webhooks = WebhookReceiver(
                service,
                config.webhook_secret,
                config.webhook_verify_token,
                servicer.now,
                after_ingest=self._after_webhook,
            )
            try:
                await self._webhooks.start(config.webhook_listen.host, config.webhook_listen.port)
            except OSError as e:
                raise StartupError(
                    f"webhook_listen: cannot bind {config.webhook_listen}: {e}"
                ) from e
            self.webhook_port = self._webhooks.port

        if config.metrics_listen is not None:
            self._metrics_endpoint = MetricsEndpoint(self.metrics)
            try:
                self.metrics_port = await self._metrics_endpoint.start(
                    config.metrics_listen.host, config.metrics_listen.port
                )
            except OSError as e:
                raise StartupError(
                    f"metrics_listen: cannot bind {config.metrics_listen}: {e}"
                ) from e
        self._register_metrics()
        log.info(
            "tiergate listening on %s (profile %s, clock %s, engine %s)",
            Endpoint(config.listen.host, self.port),
            config.profile,
            config.clock,
            IMPLEMENTATION,
        )

    def _commit_start(self) -> Awaitable[None] | None:
        """Start making the service's state changes durable; what a response must
        await before it leaves (None: nothing to wait for). The RPCs' commit: a
        plain call and the store's group-write future, no coroutine per call."""
        service = self.service
        assert service is not None
        store = self.store
        if store is None:
            service.drain_journal()
            return None
        try:
            return store.persist_nowait(service)
        except StoreFailedError:
            return self._commit()  # reports the failure, then raises it

    async def _commit(self) -> None:
        """Make the service's state changes durable before a response leaves."""
        assert self.service is not None
        if self.store is None:
            self.service.drain_journal()
            return
        try:
            await self.store.persist(self.service)
        except StoreFailedError:
            await self._store_failed()
            raise

    async def _store_failed(self) -> None:
        # Nothing more can be acknowledged: every call answers INTERNAL from
        # now on; NOT_SERVING tells load balancers to send traffic elsewhere.
        if not self.store_failed:
            self.store_failed = True
            log.critical("store failed: answering INTERNAL until restarted")
            await self._health.enter_graceful_shutdown()

    def _on_store_failure(self, exc: StoreFailedError) -> None:
        """The store failed a write (maybe awaited by RPCs through _commit_start)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # closing without a loop: nothing is served any more
        self._failure_report = loop.create_task(self._store_failed())

    def _register_metrics(self) -> None:
        m = self.metrics

        def live() -> AdmissionService:
            assert self.service is not None
            return self.service

        m.collect(
            "tiergate_senders", "gauge", "Senders known.", lambda: float(len(live().senders()))
        )

        def webhook_stat(key: str) -> Callable[[], float]:
            return lambda: float(ingestor_for(live()).stats.as_dict()[key])

        for key in ingestor_for(live()).stats.as_dict():
            m.collect(
                f"tiergate_webhook_{key}_total",
                "counter",
                f"Webhook {key.replace('_', ' ')} (IngestWebhook and the HTTP receiver).",
                webhook_stat(key),
            )
        store = self.store
        if store is not None:
            m.collect(
                "tiergate_journal_bytes",
                "gauge",
                "Bytes of journal records on disk (the current segment's unused "
                "preallocated room not included).",
                lambda: float(store.journal_bytes),
            )
            m.collect(
                "tiergate_store_commits_total",
                "counter",
                "Journal writes: one per committing call; with fsync-always, one per group.",
                lambda: float(store.commits),
            )
            m.collect(
                "tiergate_recovery_seconds",
                "gauge",
                "Time the last start-up recovery took.",
                lambda: store.recovery_seconds,
            )

    # --- reload (SIGHUP) ----------------------------------------------------------

    async def reload(self, config: ServeConfig) -> list[str]:
        """Apply a re-read config to the running sidecar; returns what changed.

        New ``[[senders]]`` are applied (known ones keep their live state). A
        changed profile replaces the rules on the live state (the state moves
        over through a snapshot), unless it changes the limit scope or the
        engine's time buckets, which need a restart. Settings of the process
        itself (listen, data_dir, …) also need a restart; they are reported.
        """
        old = self.service
        if old is None:
            raise RuntimeError("the sidecar is not started")
        changes: list[str] = []
        profile = self._profile(config)
        if profile != old.profile:
            _check_profile_swap(old.profile, profile)
            records = old.drain_journal()
            swapped = AdmissionService.from_snapshot(profile, old.snapshot(), clock=old.clock)
            self._swap(swapped)
            if self.store is not None:
                await self.store.commit(records)
                await self.store.snapshot(swapped)
            changes.append(f"profile {old.profile.name} -> {profile.name}")
        service = self.service
        assert service is not None
        now_ms = self._servicer.now() if self._servicer is not None else seed_clock_ms(config)
        applied = seed(service, config.senders, (), now_ms)
        changes += [f"sender {sid} added" for sid in applied]
        await self._commit()
        for name in ("listen", "data_dir", "clock", "durability", "webhook_listen"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("reload: %s changed; it takes effect at the next restart", name)
        return changes

    def _swap(self, service: AdmissionService) -> None:
        self.service = service
        if self._servicer is not None:
            self._servicer.service = service
        if self._webhooks is not None:
            self._webhooks.service = service
            self._webhooks.ingestor = ingestor_for(service)

    async def _after_webhook(self, result: IngestResult) -> None:
        await self._commit()

    # --- stop ------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown; safe to call more than once (later calls wait)."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self.config.shutdown_grace if grace is None else grace
        log.info("shutting down: health NOT_SERVING, draining for up to %.1f s", grace)
        await self._health.enter_graceful_shutdown()
        if self._webhooks is not None:
            await self._webhooks.stop()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        if self._server is not None:
            # Stop accepting now; end as soon as the admission calls in flight
            # are done (health watches never end by themselves), at the latest
            # when the grace period is over.
            stopping = asyncio.ensure_future(self._server.stop(grace))
            if self._servicer is not None:
                await asyncio.sleep(0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._servicer.in_flight.idle(), grace)
            await self._server.stop(0)
            await stopping
        if self.store is not None:
            await self.store.aclose(self.service)
            self.store = None
        elif self.service is not None:
            self.service.drain_journal()
        log.info("tiergate stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


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


def _check_profile_swap(old: Profile, new: Profile) -> None:
    """A profile can replace another on live state only if the state's shape is the same."""
    for name in ("limit_scope", "bucket_ms", "long_bucket_ms", "window_ms", "lookback_ms"):
        if getattr(old, name) != getattr(new, name):
            raise StartupError(
                f"profile: {new.name} changes {name} ({getattr(old, name)} -> "
                f"{getattr(new, name)}); restart tiergate to use it"
            )


def seed_clock_ms(config: ServeConfig) -> int:
    """When config senders are applied: now, or under the request clock 0 (the
    policy layer then uses each scope's latest time, never the wall clock)."""
    return 0 if config.clock == "request" else server_clock_ms()


def seed(
    service: AdmissionService,
    senders: Sequence[ev.SenderUpdate],
    templates: Sequence[ev.TemplateUpdate],
    now_ms: int,
) -> list[str]:
    """Apply the config's senders that the service does not know yet, and ``templates``.

    Returns the ids applied. A sender the store recovered keeps its state
    (Meta's webhooks may have changed its tier or quality since); the caller
    passes templates only on a fresh start for the same reason.
    """
    applied = []
    known = set(service.senders())
    for i, sender in enumerate(senders):
        if sender.sender_id in known:
            continue
        try:
            result = service.apply(sender, now_ms)
        except InvalidArgument as e:
            raise StartupError(f"senders[{i}]: {e}") from e
        if not result.applied:
            raise StartupError(f"senders[{i}]: {result.detail}")
        applied.append(sender.sender_id)
    for i, template in enumerate(templates):
        try:
            result = service.apply(template, now_ms)
        except InvalidArgument as e:
            raise StartupError(f"templates[{i}]: {e}") from e
        if not result.applied:
            raise StartupError(f"templates[{i}]: {result.detail}")
        applied.append(template.template_id)
    return applied


async def serve(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 after a graceful shutdown. SIGHUP calls
    ``reload_config`` and applies the result (a bad config is logged and ignored)."""
    sidecar = Sidecar(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def on_hup() -> None:
        if reload_config is None:
            log.info("SIGHUP: nothing to reload")
            return
        try:
            changes = await sidecar.reload(reload_config())
        except (ConfigError, StartupError) as e:
            log.error("SIGHUP: config not reloaded: %s", e)
            return
        log.info("SIGHUP: reloaded (%s)", "; ".join(changes) or "no changes")

    def hup() -> None:
        task = loop.create_task(on_hup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        try:
            await sidecar.start()
        except BaseException:
            await sidecar.stop(0)
            raise
        waiter = asyncio.ensure_future(sidecar.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        await sidecar.stop()
        waiter.cancel()
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> int:
    """``tiergate serve``: the server is created inside uvloop's running loop."""
    return uvloop.run(serve(config, reload_config))
