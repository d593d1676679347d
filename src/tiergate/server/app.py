"""The sidecar process: policy service + store + gRPC server + health + reflection.

Start-up: load the profile, recover state from the data directory, apply the
senders and templates the config declares (only those not known yet), then
serve. SIGHUP reloads the config, one reload at a time: new senders are
applied, a changed profile is switched in place on the live state (journaled,
nothing copied), a rotated webhook secret or verify token takes effect
at once, and the token files are read again. Shutdown (SIGTERM/SIGINT):
health NOT_SERVING, stop accepting, let in-flight calls finish within the
grace period, flush and close the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
import uvloop
from grpc_health.v1 import health_pb2

from tiergate.config import (
    ConfigError,
    Endpoint,
    ServeConfig,
    caps,
    check_exposure,
    message_limit,
)
from tiergate.engine import IMPLEMENTATION
from tiergate.engine.constants import SHADOWABLE
from tiergate.policy import events as ev
from tiergate.policy.caps import CAP_SETTINGS, CapReached
from tiergate.policy.profile import Profile, load_profile
from tiergate.policy.requests import InvalidArgument
from tiergate.policy.service import AdmissionService
from tiergate.server import affinity, tls
from tiergate.server.auth import Guard
from tiergate.server.clock import server_clock_ms
from tiergate.server.gauges import register_metrics, register_shared_metrics
from tiergate.server.grpc_server import HEALTH_SERVICES, build_server
from tiergate.server.health import Health
from tiergate.server.metrics import Metrics, MetricsEndpoint
from tiergate.server.servicer import AdmissionControl
from tiergate.server.shared_servicer import SharedAdmissionControl
from tiergate.server.shared_watch import WatchedCounts
from tiergate.server.watch import Watches
from tiergate.store import (
    EmbeddedStore,
    RecoveryReport,
    Store,
    StoreError,
    StoreFailedError,
    StoreUnavailableError,
)
from tiergate.store.redis_counting import RedisCounting, connect
from tiergate.store.shared import SharedAdmission
from tiergate.store.shared_policy import SharedPolicy, open_policy
from tiergate.store.ticket_key import load_or_create as load_ticket_key
from tiergate.webhooks.http import WebhookReceiver
from tiergate.webhooks.ingest import IngestResult, WebhookIngestor

log = logging.getLogger("tiergate.server")


class StartupError(Exception):
    """The sidecar cannot start; the message says which setting or resource."""


class Sidecar:
    """One running tiergate: build with a config, ``await start()``, ``await stop()``."""

    def __init__(self, config: ServeConfig, clock: Callable[[], int] = server_clock_ms) -> None:
        self.config = config
        #: The server clock (Unix ms) the RPCs and the watches' timers read.
        self.clock = clock
        self.metrics = Metrics()
        self.service: AdmissionService | None = None
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._health = Health()
        self.watches = Watches(lambda: self.service, config.watch_thresholds, self.metrics, clock)
        self.watches.commit = self._commit
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._webhooks: WebhookReceiver | None = None
        self.webhook_port = 0
        self._stopping: asyncio.Future[None] | None = None
        self._servicer: AdmissionControl | None = None
        self.store: Store | None = None
        #: Steps 4–9 in Redis when ``--store`` names one (store/shared.py), and the
        #: shared log of policy events (store/shared_policy.py).
        self.shared: SharedAdmission | None = None
        self.policy: SharedPolicy | None = None
        self.recovery: RecoveryReport | None = None
        self.store_failed = False
        self._failure_report: asyncio.Task[None] | None = None
        # One webhook ingestor for the sidecar's life: the IngestWebhook RPC and the
        # HTTP receiver share its de-duplication memory and counters.
        self.ingestor: WebhookIngestor | None = None
        self._reloading = asyncio.Lock()
        self._health_updates: set[asyncio.Task[None]] = set()
        # The gRPC tokens; replaced on reload when the sidecar started with one.
        self.guard = Guard(config.token, config.admin_token)
        self._http_tls: ssl.SSLContext | None = None

    # --- start -----------------------------------------------------------------

    def build_service(self) -> AdmissionService:
        return AdmissionService(
            serve_profile(self.config), clock=self.config.clock, caps=caps(self.config)
        )

    async def start(self) -> None:
        """Recover the state, serve gRPC (health and reflection included), then the
        webhook receiver and the metrics endpoint when they are configured."""
        config = self.config
        try:
            check_exposure(config)
            credentials = tls.grpc_credentials(config)
            self._http_tls = tls.http_context(config)
        except ConfigError as e:
            raise StartupError(str(e)) from e
        counting = await open_counting(config) if config.store.shared else None
        service = await self._open_state(counting)
        if counting is not None:
            self.shared = SharedAdmission(service, counting, config.store_failure)
            self._shared_watch = WatchedCounts(self.shared, self.watches)
            self.policy = await start_policy(self.shared, config)
            await self._commit()
        ingestor = self.ingestor = WebhookIngestor(service)
        servicer = await self._serve_grpc(service, credentials)
        if config.webhook_listen is not None:
            await self._start_webhook_receiver(service, servicer, config.webhook_listen)
        if config.metrics_listen is not None:
            await self._start_metrics_endpoint(config.metrics_listen)
        register_metrics(self.metrics, self._live_service, ingestor, self.store)
        if self.shared is not None:
            register_shared_metrics(self.metrics, self.shared, self.policy)
        listen = Endpoint(config.listen.host, self.port)
        log.info(
            "tiergate listening on %s (profile %s, clock %s, engine %s)",
            *(listen, config.profile, config.clock, IMPLEMENTATION),
            extra={"listen": str(listen), "profile": config.profile, "engine": IMPLEMENTATION},
        )
        exposure = exposure_summary(config)
        log.info("exposure: %s", exposure, extra={"exposure": exposure})

    async def _open_state(self, counting: RedisCounting | None = None) -> AdmissionService:
        """The service with the data directory's state recovered and the config's
        senders (and, on a fresh start, templates) applied, all of it durable. On the
        shared store (``counting``) tickets are signed with the key every sidecar of
        that Redis shares."""
        config = self.config
        service = self.build_service()
        self.service = service
        if counting is not None:
            service.set_ticket_key(await counting.ticket_key(service.ticket_key))
        fresh = True
        if config.data_dir is not None:
            try:
                self.store = EmbeddedStore.open(
                    config.data_dir, config.durability, recover_truncate=config.recover_truncate
                )
                if counting is None:
                    service.set_ticket_key(load_ticket_key(config.data_dir))
                self.recovery = self.store.recover(service)
                self.store.on_failure = self._on_store_failure
                self.store.on_unavailable = self._on_store_unavailable
            except StoreError as e:
                raise StartupError(f"data_dir: {e}") from e
            fresh = self.recovery.snapshot_path is None and self.recovery.records_replayed == 0
        else:
            log.warning("data_dir is none: state is kept in memory only and lost at exit")
        applied = []  # on the shared store: seeded through its log (store/shared_policy.py)
        if counting is None:
            templates = config.templates if fresh else ()
            applied = seed(service, config.senders, templates, seed_clock_ms(config))
        if applied:
            log.info("applied from the config: %s", ", ".join(applied), extra={"applied": applied})
        try:
            await self._commit()
        except StoreError as e:
            raise StartupError(f"data_dir: {e}") from e
        return service

    async def _serve_grpc(
        self, service: AdmissionService, credentials: grpc.ServerCredentials | None
    ) -> AdmissionControl:
        """Bind and start the gRPC server; health says SERVING once it accepts calls."""
        config = self.config
        kind = AdmissionControl if self.shared is None else SharedAdmissionControl
        servicer = kind(
            service,
            commit=self._commit_start if self.shared is None else self._commit_shared,
            metrics=self.metrics,
            max_batch=config.max_batch,
            max_in_flight=config.max_in_flight,
            webhook_secret=config.webhook_secret,
            request_clock=config.clock == "request",
            clock=self.clock,
            ingestor=self.ingestor,
        )
        self._servicer = servicer
        if isinstance(servicer, SharedAdmissionControl):
            assert self.shared is not None and self.policy is not None
            servicer.bind_shared(self.shared, self.policy)
        if self.store is not None:
            servicer.refusal = self.store.unavailable
        server = build_server(
            servicer,
            self._health,
            config.max_batch,
            self.metrics,
            self.guard,
            max_message_bytes=message_limit(config),
            max_queued=config.max_queued,
            watches=self.watches,
        )
        try:
            if credentials is None:
                self.port = server.add_insecure_port(str(config.listen))
            else:
                self.port = server.add_secure_port(str(config.listen), credentials)
        except RuntimeError as e:
            raise StartupError(f"listen: cannot bind {config.listen}: {e}") from e
        if self.port == 0:
            raise StartupError(f"listen: cannot bind {config.listen}")
        await server.start()
        self._server = server
        for name in HEALTH_SERVICES:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return servicer

    async def _start_webhook_receiver(
        self, service: AdmissionService, servicer: AdmissionControl, listen: Endpoint
    ) -> None:
        config = self.config
        self._webhooks = WebhookReceiver(
            service,
            config.webhook_secret,
            config.webhook_verify_token,
            servicer.now,
            ingestor=self.ingestor,
            after_ingest=self._after_webhook,
            max_connections=config.webhook_max_connections,
        )
        try:
            await self._webhooks.start(listen.host, listen.port, ssl=self._http_tls)
        except OSError as e:
            raise StartupError(f"webhook_listen: cannot bind {listen}: {e}") from e
        self.webhook_port = self._webhooks.port

    async def _start_metrics_endpoint(self, listen: Endpoint) -> None:
        self._metrics_endpoint = MetricsEndpoint(self.metrics)
        try:
            self.metrics_port = await self._metrics_endpoint.start(
                listen.host, listen.port, ssl=self._http_tls
            )
        except OSError as e:
            raise StartupError(f"metrics_listen: cannot bind {listen}: {e}") from e

    def _live_service(self) -> AdmissionService:
        assert self.service is not None
        return self.service

    def _commit_start(self) -> Awaitable[None] | None:
        """Start making the service's state changes durable; what a response must
        await before it leaves (None: nothing to wait for). The RPCs' commit: a
        plain call and the store's group-write future, no coroutine per call."""
        service = self.service
        assert service is not None
        if self.watches.active:
            self.watches.poke()
        store = self.store
        if store is None:
            service.drain_journal()
            return None
        try:
            return store.persist_nowait(service)
        except StoreFailedError:
            return self._commit()  # reports the failure, then raises it

    def _commit_shared(self) -> Awaitable[None] | None:
        """The commit on the shared store: feedback's changes sent to Redis, then the
        journal's commit (``SharedAdmission.flush``)."""
        assert self.shared is not None
        return self.shared.flush(self._commit_start())

    async def _commit(self) -> None:
        """Make the service's state changes durable before a response leaves."""
        assert self.service is not None
        queued = self.shared.flush(None) if self.shared is not None else None
        if queued is not None:
            await queued
        if self.watches.active:
            self.watches.poke()
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

    def _on_store_unavailable(self, exc: StoreUnavailableError | None) -> None:
        """The journal cannot be written for now (its file system is full), or, with
        None, can again: meanwhile every RPC is refused as UNAVAILABLE before it
        decides anything, and health reports NOT_SERVING; then SERVING again."""
        if self._servicer is not None:
            self._servicer.refusal = exc
        if exc is None:
            log.warning("store: the journal can be written again; serving")
        else:
            log.error("store: answering UNAVAILABLE until the journal can be written")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        status = health_pb2.HealthCheckResponse.NOT_SERVING
        if exc is None:
            status = health_pb2.HealthCheckResponse.SERVING
        task = loop.create_task(self._set_health(status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        # After a shutdown began (or the store failed), health stays NOT_SERVING:
        # the servicer ignores set() from then on.
        for name in HEALTH_SERVICES:
            await self._health.set(name, status)

    def _on_store_failure(self, exc: StoreFailedError) -> None:
        """The store failed a write (maybe awaited by RPCs through _commit_start)."""
        if self._servicer is not None:
            self._servicer.refusal = exc  # INTERNAL from now on, before deciding
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # closing without a loop: nothing is served any more
        self._failure_report = loop.create_task(self._store_failed())

    # --- reload (SIGHUP) ----------------------------------------------------------

    async def reload(self, config: ServeConfig) -> list[str]:
        """Apply a re-read config to the running sidecar; returns what changed.

        Reloads run one at a time. A changed profile is switched in place on
        the live state (``AdmissionService.reload_profile``: per sender and
        scope, journaled; no copy of the state, no snapshot), unless it changes
        the limit scope or the engine's time buckets, which need a restart
        (``StartupError``, nothing changed). New ``[[senders]]`` are applied
        (known ones keep their live state). A new ``webhook_secret`` or
        ``webhook_verify_token`` applies to the next webhook, through the RPC
        and the HTTP receiver alike; re-read tokens replace the running ones
        (see :func:`reload_tokens`). Settings of the process itself (listen,
        data_dir, …) need a restart; they are reported in the log.
        """
        async with self._reloading:
            service = self.service
            if service is None:
                raise RuntimeError("the sidecar is not started")
            if self._stopping is not None:
                raise StartupError("the sidecar is shutting down")
            changes: list[str] = []
            # Reading and checking a profile file takes milliseconds: not on the loop.
            profile = await asyncio.to_thread(serve_profile, config)
            now_ms = self._servicer.now() if self._servicer is not None else seed_clock_ms(config)
            try:
                if profile != service.profile:
                    before = service.profile.name
                    try:
                        service.reload_profile(profile, now_ms)
                    except ValueError as e:
                        raise StartupError(f"profile: {e}") from e
                    changes.append(f"profile {before} -> {profile.name}")
                new_caps = caps(config)
                if new_caps != service.caps:
                    service.set_caps(new_caps)
                    changes.append("caps changed")
                applied = seed(service, config.senders, (), now_ms)
                changes += [f"sender {sid} added" for sid in applied]
            finally:
                # Whatever was applied is journaled before the next reload starts.
                await self._commit()
            changes += reload_webhook_settings(self, config)
            changes += reload_tokens(self.guard, self.config, config)
            tokens = config if self.guard.active and (config.token or config.admin_token) else None
            self.config = dataclasses.replace(
                self.config,
                profile=config.profile,
                senders=config.senders,
                webhook_secret=config.webhook_secret,
                webhook_verify_token=config.webhook_verify_token,
                token=(tokens or self.config).token,
                admin_token=(tokens or self.config).admin_token,
                **{name: getattr(config, name) for name in CAP_SETTINGS.values()},
            )
            for name in _RESTART_SETTINGS:
                if getattr(config, name) != getattr(self.config, name):
                    log.warning("reload: %s changed; it takes effect at the next restart", name)
            return changes

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
        # The store's snapshot work ends within the grace period too, leaving the
        # rest of it (half, at most 2 s) for the journal's last write and the exit.
        deadline = time.monotonic() + grace - min(2.0, grace / 2)
        log.info("shutting down: health NOT_SERVING, draining for up to %.1f s", grace)
        await self._health.end_watches()
        self.watches.end()
        await self._health.enter_graceful_shutdown()
        if self._webhooks is not None:
            await self._webhooks.stop()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        if self._server is not None:
            # Every call ends before the gRPC server stops, which on gRPC core's
            # promise-based transport (tiergate.transport) resets those still open
            # whatever the grace: see InFlight.drain; the watches, told to end, finish.
            ends = time.monotonic() + grace
            if self._servicer is not None:
                await self._servicer.in_flight.drain(ends)
            while (self.watches.active or self._health.watching) and time.monotonic() < ends:
                await asyncio.sleep(0.01)
            await self._server.stop(max(0.0, ends - time.monotonic()))
        async with self._reloading:  # a reload in progress commits first; none starts after
            queued = self.shared.flush(None) if self.shared is not None else None
            if queued is not None:
                try:
                    await queued
                except StoreError as e:
                    log.warning("feedback not sent to the shared store at shutdown: %s", e)
            if self.store is not None:
                await self.store.aclose(self.service, deadline=deadline)
                self.store = None
            elif self.service is not None:
                self.service.drain_journal()
            if self.policy is not None:
                await self.policy.aclose()
            if self.shared is not None:  # after the last commit (it may send to Redis)
                await self._shared_watch.aclose()
                await self.shared.aclose()
        log.info("tiergate stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


#: Settings of the process itself: a reload reports a change, a restart applies it.
_RESTART_SETTINGS = (
    "listen",
    "store",
    "store_failure",
    "data_dir",
    "clock",
    "durability",
    "max_batch",
    "max_in_flight",
    "max_queued",
    "loop_cpu",
    "max_message_bytes",
    "webhook_listen",
    "metrics_listen",
    "shutdown_grace",
    "log_level",
    "log_format",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "insecure",
    "webhook_max_connections",
)


def serve_profile(config: ServeConfig) -> Profile:
    """The profile ``config`` names, every shadowable rule shadowed under ``--shadow``."""
    try:
        profile = load_profile(config.profile)
    except Exception as e:
        raise StartupError(f"profile: {e}") from e
    if config.shadow:
        return dataclasses.replace(profile, shadow_reasons=frozenset(SHADOWABLE))
    return profile


def reload_webhook_settings(sidecar: Sidecar, config: ServeConfig) -> list[str]:
    """A reload's new webhook secret and verify token, applied where they are used."""
    changes = []
    servicer, receiver = sidecar._servicer, sidecar._webhooks
    if config.webhook_secret != sidecar.config.webhook_secret:
        if servicer is not None:
            servicer.webhook_secret = config.webhook_secret
        if receiver is not None:
            receiver.secret = config.webhook_secret
        if config.webhook_secret:
            changes.append("webhook_secret replaced")
        else:
            changes.append("webhook_secret removed")
            log.warning("reload: no webhook_secret: webhook signatures are not checked")
    if config.webhook_verify_token != sidecar.config.webhook_verify_token:
        if receiver is not None:
            receiver.verify_token = config.webhook_verify_token
        changes.append("webhook_verify_token replaced")
    return changes


async def open_counting(config: ServeConfig) -> RedisCounting:
    """Connect to the Redis ``--store`` names and load its function library."""
    try:
        counting = await connect(config.store, server_clock=config.clock == "server")
    except StoreError as e:
        raise StartupError(f"store: {config.store}: {e}") from e
    log.info("store %s: steps 4-9 of Admit and AdmitBatch decided in Redis", config.store)
    return counting


async def start_policy(shared: SharedAdmission, config: ServeConfig) -> SharedPolicy:
    """The shared policy state, then the config's senders and templates through its log."""
    try:
        return await open_policy(shared, config.senders, config.templates, seed_clock_ms(config))
    except StoreError as e:
        raise StartupError(f"store: {config.store}: {e}") from e
    except ValueError as e:  # a config entry refused (named), InvalidArgument, CapReached
        raise StartupError(str(e)) from e


def exposure_summary(config: ServeConfig) -> str:
    """How the listeners are protected, for the start-up log (no secret in it)."""
    transport = "plaintext"
    if config.tls_cert is not None:
        transport = "mutual TLS" if config.tls_client_ca is not None else "TLS"
    planes = []
    if config.token:
        planes.append("data token")
    if config.admin_token:
        planes.append("admin token")
    summary = f"{transport}, {' and '.join(planes) or 'no token'}"
    if config.insecure:
        summary += " (insecure: non-loopback addresses allowed unguarded)"
    return summary


def reload_tokens(guard: Guard, old: ServeConfig, new: ServeConfig) -> list[str]:
    """Apply re-read token files to ``guard``; returns what changed. A sidecar
    started without tokens serves its methods unwrapped, so adding the first
    token needs a restart, and so does removing the last (the old ones stay)."""
    if (new.token, new.admin_token) == (old.token, old.admin_token):
        return []
    if not guard.active:
        log.warning("reload: tokens take effect at the next restart (none at start)")
        return []
    if not (new.token or new.admin_token):
        log.warning("reload: removing every token needs a restart; the current ones stay")
        return []
    guard.set_tokens(new.token, new.admin_token)
    changes = []
    if new.token != old.token:
        changes.append("token replaced" if new.token else "token removed")
    if new.admin_token != old.admin_token:
        changes.append("admin token replaced" if new.admin_token else "admin token removed")
    return changes


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
        if sender.sender_id not in known:
            _seed_one(service, sender, f"senders[{i}]", now_ms)
            applied.append(sender.sender_id)
    for i, template in enumerate(templates):
        _seed_one(service, template, f"templates[{i}]", now_ms)
        applied.append(template.template_id)
    return applied


def _seed_one(
    service: AdmissionService,
    update: ev.SenderUpdate | ev.TemplateUpdate,
    where: str,
    now_ms: int,
) -> None:
    """Apply one config entry; :class:`StartupError` names ``where`` if it is refused."""
    try:
        result = service.apply(update, now_ms)
    except (InvalidArgument, CapReached) as e:
        raise StartupError(f"{where}: {e}") from e
    if not result.applied:
        raise StartupError(f"{where}: {result.detail}")


async def serve(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 after a graceful shutdown. SIGHUP calls
    ``reload_config`` and applies the result (a bad config is logged and ignored)."""
    sidecar = Sidecar(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()
    reading = asyncio.Lock()

    async def on_hup() -> None:
        if reload_config is None:
            log.info("SIGHUP: nothing to reload")
            return
        if stop.is_set():
            log.info("SIGHUP: ignored while shutting down")
            return
        async with reading:  # in signal order: the last SIGHUP's file is the one applied last
            try:
                # Reading the config file takes milliseconds: not on the event loop.
                changes = await sidecar.reload(await asyncio.to_thread(reload_config))
            except (ConfigError, StartupError) as e:
                log.error("SIGHUP: config not reloaded: %s", e)
                return
            except Exception:
                log.exception("SIGHUP: config not reloaded")
                return
        log.info(
            "SIGHUP: reloaded (%s)", "; ".join(changes) or "no changes", extra={"changes": changes}
        )

    def hup() -> None:
        task = loop.create_task(on_hup())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        try:
            pinning = affinity.pin_loop(config.loop_cpu)
        except ValueError as e:
            raise StartupError(f"loop_cpu: {e}") from e
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
        if pinning is not None:
            pinning.stop()
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run(config: ServeConfig, reload_config: Callable[[], ServeConfig] | None = None) -> int:
    """``tiergate serve``: the server is created inside uvloop's running loop."""
    return uvloop.run(serve(config, reload_config))
