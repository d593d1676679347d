"""The sidecar's metrics read at scrape time: senders, caps, webhooks, the store.

``Sidecar.start`` registers them on its ``Metrics``; prometheus-client reads
each value only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from tiergate.policy.caps import CAP_SETTINGS
from tiergate.policy.service import AdmissionService
from tiergate.server.metrics import Metrics
from tiergate.store import Store
from tiergate.store.shared import SharedAdmission
from tiergate.store.shared_policy import SharedPolicy
from tiergate.webhooks.ingest import WebhookIngestor

__all__ = ["register_metrics", "register_shared_metrics"]


def register_metrics(
    m: Metrics,
    live: Callable[[], AdmissionService],
    ingestor: WebhookIngestor,
    store: Store | None,
) -> None:
    """The sidecar's gauges and counters read at scrape time: senders, webhooks, store."""
    m.collect("tiergate_senders", "gauge", "Senders known.", lambda: float(len(live().senders())))
    m.collect(
        "tiergate_idempotency_keys",
        "gauge",
        "Idempotency keys remembered (expired ones until they are dropped).",
        lambda: float(len(live().state.keys.order)),
    )
    m.collect(
        "tiergate_templates",
        "gauge",
        "Templates known.",
        lambda: float(len(live().state.templates)),
    )

    def capped(setting: str) -> Callable[[], float]:
        return lambda: float(live().state.capped[setting])

    for setting in CAP_SETTINGS.values():
        m.collect(
            f"tiergate_capped_{setting}_total",
            "counter",
            f"Requests and webhook events refused by {setting}; nothing was changed.",
            capped(setting),
        )

    def webhook_stat(key: str) -> Callable[[], float]:
        return lambda: float(ingestor.stats.as_dict()[key])

    for key in ingestor.stats.as_dict():
        m.collect(
            f"tiergate_webhook_{key}_total",
            "counter",
            f"Webhook {key.replace('_', ' ')} (IngestWebhook and the HTTP receiver).",
            webhook_stat(key),
        )
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
            "tiergate_journal_no_space",
            "gauge",
            "1 while the journal's file system is full: RPCs are refused (UNAVAILABLE).",
            lambda: float(store.unavailable is not None),
        )
        m.collect(
            "tiergate_journal_no_space_total",
            "counter",
            "Times the journal's file system was found full.",
            lambda: float(store.no_space_episodes),
        )
        m.collect(
            "tiergate_recovery_seconds",
            "gauge",
            "Time the last start-up recovery took.",
            lambda: store.recovery_seconds,
        )


def register_shared_metrics(
    m: Metrics, shared: SharedAdmission, policy: SharedPolicy | None = None
) -> None:
    """The shared store's health and traffic (``--store redis://…``), and its log of
    policy events."""
    if policy is not None:
        register_policy_metrics(m, policy)
    m.collect(
        "tiergate_store_shared_available",
        "gauge",
        "1 while the shared Redis store answers, 0 while it cannot be reached.",
        lambda: 1.0 if shared.available else 0.0,
    )
    m.collect(
        "tiergate_store_unavailable_answers_total",
        "counter",
        "Admits answered while the shared store could not be reached (--store-failure).",
        lambda: float(shared.unavailable_answers),
    )
    m.collect(
        "tiergate_store_round_trips_total",
        "counter",
        "Round trips to Redis that decided admits (one per event-loop pass).",
        lambda: float(shared.counting.round_trips),
    )
    m.collect(
        "tiergate_store_unreconciled",
        "gauge",
        "Admits decided while the shared store could not be reached (--store-failure "
        "open), kept to be counted there when it answers again.",
        lambda: float(len(shared.service.state.unreconciled)),
    )
    m.collect(
        "tiergate_store_reconciled_total",
        "counter",
        "Admits decided while the shared store could not be reached, counted there since.",
        lambda: float(shared.reconciled),
    )
    m.collect(
        "tiergate_store_unreconciled_dropped_total",
        "counter",
        "Admits decided while the shared store could not be reached that were not kept "
        "for it (past the cap of admits kept): counted by this sidecar only.",
        lambda: float(shared.reconcile_dropped),
    )


def register_policy_metrics(m: Metrics, policy: SharedPolicy) -> None:
    """The shared log of policy events (``store/shared_policy.py``)."""
    m.collect(
        "tiergate_store_policy_entries_total",
        "counter",
        "Entries of the shared log of policy events applied (this sidecar's and others').",
        lambda: float(policy.applied),
    )
    m.collect(
        "tiergate_store_policy_snapshots_loaded_total",
        "counter",
        "Policy snapshots loaded from Redis (at start; again after the log was trimmed).",
        lambda: float(policy.loaded),
    )
