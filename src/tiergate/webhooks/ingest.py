"""Apply Meta webhooks to the admission service: verify, parse, de-duplicate, apply.

Order matters: the signature is checked first (when an app secret is
configured), then the whole body is parsed before any event applies, so a
forged body, or one that is not a webhook at all, changes nothing; a part of
unknown shape inside a webhook is left out with its reason and the rest
applies (see :mod:`tiergate.webhooks.parse`). Each event goes to
``service.apply``; an event the service declines (unknown sender, unmatched
send …) is reported as ignored with the service's own explanation.

Meta delivers at least once and redelivers what it thinks failed, so the same
message, status or change can arrive many times. Every parsed event has a
de-duplication key (see :mod:`tiergate.webhooks.parse`); keys of applied
events are remembered for Meta's retry horizon (7 days) in bounded memories
that forget their oldest keys first when full: one for message and status
keys (many, and the policy layer also de-duplicates by message id, so a key
forgotten here or lost in a restart still does not count a message twice) and
one for account, template, quality, capability and preference changes (few,
so a flood of statuses never pushes them out).

A running sidecar owns one :class:`WebhookIngestor` for its whole life and
hands it to the gRPC ``IngestWebhook`` RPC and the HTTP receiver, which share
its memory and counters (:attr:`WebhookIngestor.stats`, for the metrics
endpoint). For library use, ``ingest`` keeps one per service object.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from tiergate.policy.events import Event
from tiergate.policy.feedback import PAUSE_TITLES

from .parse import DEFAULT_MAX_BYTES, ParsedEvent, ParsedWebhook, WebhookError, parse
from .signature import SignatureError, verify

__all__ = [
    "IngestResult",
    "SignatureError",
    "WebhookError",
    "WebhookIngestor",
    "WebhookStats",
    "bind",
    "ingest",
    "ingestor_for",
]

DAY_MS: Final = 86_400_000
DEFAULT_DEDUPE_TTL_MS: Final = 7 * DAY_MS  # Meta retries a webhook for up to 7 days
DEFAULT_DEDUPE_MAX_KEYS: Final = 200_000  # message and status keys
DEFAULT_DEDUPE_MAX_CHANGES: Final = 20_000  # keys of every other change
_MESSAGE_KEYS: Final = ("message:", "status:")
DEFAULT_SLICE_EVENTS: Final = 256  # events applied between yields to the event loop
THREAD_PARSE_BYTES: Final = 64 * 1024  # larger bodies are parsed off the event loop


class ApplyOutcome(Protocol):
    @property
    def applied(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class Applier(Protocol):
    """What ingestion needs of ``AdmissionService``."""

    def apply(self, event: Event, now_ms: int) -> ApplyOutcome: ...


#: An applier that awaits (the shared store's log of events).
Submit = Callable[[Event, int], Awaitable[ApplyOutcome]]


@dataclass(slots=True)
class IngestResult:
    """Outcome of one webhook body (maps onto ``IngestWebhookResponse``)."""

    applied: int = 0
    ignored: int = 0
    ignored_events: list[tuple[str, str]] = field(default_factory=list)  # (field, reason)


@dataclass(slots=True)
class WebhookStats:
    """Counters since start; the server exports them as metrics."""

    bodies: int = 0  # bodies received (all outcomes)
    bad_signature: int = 0  # rejected: missing, malformed or wrong signature
    malformed: int = 0  # rejected: not a webhook tiergate can read
    applied: int = 0  # events the service applied
    ignored: int = 0  # parts ignored (including declined and duplicate events)
    duplicates: int = 0  # events skipped as already applied

    def as_dict(self) -> dict[str, int]:
        return {
            "bodies": self.bodies,
            "bad_signature": self.bad_signature,
            "malformed": self.malformed,
            "applied": self.applied,
            "ignored": self.ignored,
            "duplicates": self.duplicates,
        }


class _SeenKeys:
    """Keys of applied events, forgotten after ``ttl_ms`` or oldest-first when full."""

    __slots__ = ("_keys", "_latest", "max_keys", "ttl_ms")

    def __init__(self, ttl_ms: int, max_keys: int) -> None:
        if ttl_ms <= 0 or max_keys <= 0:
            raise ValueError("de-duplication ttl_ms and max_keys must be positive")
        self.ttl_ms = ttl_ms
        self.max_keys = max_keys
        self._keys: OrderedDict[bytes, int] = OrderedDict()
        # Insertion order is time order because times only move forward here,
        # even when a request clock goes backwards.
        self._latest = 0

    def __len__(self) -> int:
        return len(self._keys)

    def _advance(self, now_ms: int) -> int:
        self._latest = max(self._latest, now_ms)
        horizon = self._latest - self.ttl_ms
        keys = self._keys
        while keys:
            oldest = next(iter(keys.values()))
            if oldest > horizon:
                break
            keys.popitem(last=False)
        return self._latest

    def contains(self, key: str, now_ms: int) -> bool:
        """Whether ``key`` was added within ``ttl_ms`` before ``now_ms`` (or the latest
        time added). Only ``add`` moves the memory's time: an event that is then
        refused or not applied forgets nothing."""
        at = self._keys.get(_digest(key))
        return at is not None and at > max(self._latest, now_ms) - self.ttl_ms

    def add(self, key: str, now_ms: int) -> None:
        at = self._advance(now_ms)
        digest = _digest(key)
        self._keys[digest] = at
        self._keys.move_to_end(digest)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


class WebhookIngestor:
    """Webhook ingestion for one service: de-duplication memory and counters."""

    def __init__(
        self,
        service: Applier,
        *,
        max_body_bytes: int = DEFAULT_MAX_BYTES,
        dedupe_ttl_ms: int = DEFAULT_DEDUPE_TTL_MS,
        dedupe_max_keys: int = DEFAULT_DEDUPE_MAX_KEYS,
        dedupe_max_changes: int = DEFAULT_DEDUPE_MAX_CHANGES,
    ) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.stats = WebhookStats()
        self._seen_messages = _SeenKeys(dedupe_ttl_ms, dedupe_max_keys)
        self._seen_changes = _SeenKeys(dedupe_ttl_ms, dedupe_max_changes)
        #: Applies each event instead of ``service.apply`` in :meth:`ingest_sliced`
        #: (the shared store's log: ``store/shared_policy.py``); None: the service.
        self.submit: Submit | None = None

    @property
    def remembered(self) -> int:
        """How many applied-event keys the de-duplication memory holds."""
        return len(self._seen_messages) + len(self._seen_changes)

    def _memory(self, key: str) -> _SeenKeys:
        return self._seen_messages if key.startswith(_MESSAGE_KEYS) else self._seen_changes

    def ingest(
        self, body: bytes, signature: str | bytes | None, secret: str | bytes, now_ms: int
    ) -> IngestResult:
        """Verify (when ``secret`` is set), parse, then apply every event of ``body``.

        Raises :class:`SignatureError` (nothing applied) or :class:`WebhookError`
        (malformed body, nothing applied); both are counted in :attr:`stats`.
        """
        parsed, result = self._read(body, signature, secret)
        self._apply(parsed.events, now_ms, result)
        return self._finish(result)

    async def ingest_sliced(
        self,
        body: bytes,
        signature: str | bytes | None,
        secret: str | bytes,
        now_ms: int,
        *,
        slice_events: int = DEFAULT_SLICE_EVENTS,
    ) -> IngestResult:
        """:meth:`ingest` without holding up the event loop: a body is verified and
        parsed in a worker thread (large bodies only), then its events are applied
        on the loop, which serves other calls after every ``slice_events`` of them.
        The result is the same: each event is applied (and checked against the
        de-duplication memory) in order, as by ``ingest``.
        """
        if slice_events <= 0:
            raise ValueError("slice_events must be positive")
        pause_ms = self._pause_titles()
        if len(body) < THREAD_PARSE_BYTES:
            outcome = _verify_and_parse(body, signature, secret, self.max_body_bytes, pause_ms)
        else:
            outcome = await asyncio.to_thread(
                _verify_and_parse, body, signature, secret, self.max_body_bytes, pause_ms
            )
        parsed, result = self._counted(outcome)
        events = parsed.events
        if self.submit is not None:
            await self._submit(self.submit, events, now_ms, result)
            return self._finish(result)
        for start in range(0, len(events), slice_events):
            if start:
                await asyncio.sleep(0)
            self._apply(events[start : start + slice_events], now_ms, result)
        return self._finish(result)

    def _read(
        self, body: bytes, signature: str | bytes | None, secret: str | bytes
    ) -> tuple[ParsedWebhook, IngestResult]:
        """Verify and parse ``body``; the result so far holds its ignored parts."""
        return self._counted(
            _verify_and_parse(body, signature, secret, self.max_body_bytes, self._pause_titles())
        )

    def _counted(
        self, outcome: ParsedWebhook | SignatureError | WebhookError
    ) -> tuple[ParsedWebhook, IngestResult]:
        stats = self.stats
        stats.bodies += 1
        if isinstance(outcome, SignatureError):
            stats.bad_signature += 1
            raise outcome
        if isinstance(outcome, WebhookError):
            stats.malformed += 1
            raise outcome
        result = IngestResult()
        for part in outcome.ignored:
            result.ignored_events.append((part.field, f"{part.path}: {part.reason}"))
        return outcome, result

    def _apply(self, items: Sequence[ParsedEvent], now_ms: int, result: IngestResult) -> None:
        for item in items:
            if self._duplicate(item, now_ms, result):
                continue
            try:
                outcome = self.service.apply(item.event, now_ms)
            except (ValueError, KeyError) as exc:
                self._refused(item, exc, result)
                continue
            self._outcome(item, outcome, now_ms, result)

    async def _submit(
        self, submit: Submit, items: Sequence[ParsedEvent], now_ms: int, result: IngestResult
    ) -> None:
        """:meth:`_apply` with each event applied by ``submit`` (awaited, in order)."""
        for item in items:
            if self._duplicate(item, now_ms, result):
                continue
            try:
                outcome = await submit(item.event, now_ms)
            except (ValueError, KeyError) as exc:
                self._refused(item, exc, result)
                continue
            self._outcome(item, outcome, now_ms, result)

    def _duplicate(self, item: ParsedEvent, now_ms: int, result: IngestResult) -> bool:
        """Whether ``item`` was applied before (counted and reported as ignored)."""
        if not self._memory(item.key).contains(item.key, now_ms):
            return False
        self.stats.duplicates += 1
        result.ignored_events.append((item.field, f"{item.path}: already applied (redelivery)"))
        return True

    @staticmethod
    def _refused(item: ParsedEvent, exc: Exception, result: IngestResult) -> None:
        # The service refuses the event's contents (InvalidArgument is a
        # ValueError); the rest of the body still applies.
        result.ignored_events.append((item.field, f"{item.path}: {_message(exc)}"))

    def _outcome(
        self, item: ParsedEvent, outcome: ApplyOutcome, now_ms: int, result: IngestResult
    ) -> None:
        if outcome.applied:
            result.applied += 1
            self._memory(item.key).add(item.key, now_ms)
        else:
            detail = outcome.detail or "not applied"
            result.ignored_events.append((item.field, f"{item.path}: {detail}"))

    def _finish(self, result: IngestResult) -> IngestResult:
        result.ignored = len(result.ignored_events)
        self.stats.applied += result.applied
        self.stats.ignored += result.ignored
        return result

    def _pause_titles(self) -> Mapping[str, int]:
        """Meta's pause titles → the profile's pause durations (first, second)."""
        profile = getattr(self.service, "profile", None)
        durations = getattr(profile, "pause_ms", ())
        if not isinstance(durations, tuple):
            return {}
        return {
            title: ms
            for title, ms in zip(PAUSE_TITLES, durations, strict=False)
            if isinstance(ms, int) and ms > 0
        }


def _verify_and_parse(
    body: bytes,
    signature: str | bytes | None,
    secret: str | bytes,
    max_bytes: int,
    pause_ms: Mapping[str, int],
) -> ParsedWebhook | SignatureError | WebhookError:
    """The parsed body, or why it is refused (returned: the caller counts it)."""
    if secret:
        try:
            verify(body, signature, secret)
        except SignatureError as exc:
            return exc
    try:
        return parse(body, max_bytes=max_bytes, pause_ms=pause_ms)
    except WebhookError as exc:
        return exc


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


_INGESTORS: weakref.WeakKeyDictionary[object, WebhookIngestor] = weakref.WeakKeyDictionary()


def ingestor_for(service: Applier) -> WebhookIngestor:
    """The shared ingestor of ``service`` (created on first use, kept while the
    service lives). A service that cannot be weakly referenced raises TypeError:
    keep a :class:`WebhookIngestor` of it instead."""
    found = _INGESTORS.get(service)
    if found is None:
        # Through a weak proxy: an ingestor holding its service would keep the
        # map's key alive, and the pair would never be dropped.
        found = WebhookIngestor(weakref.proxy(service))
        _INGESTORS[service] = found
    return found


def ingest(
    service: Applier,
    body: bytes,
    signature: str | bytes | None,
    secret: str | bytes,
    now_ms: int,
) -> IngestResult:
    """Verify, parse and apply one webhook body to ``service`` (see the module doc).

    Raises :class:`SignatureError` or :class:`WebhookError`; nothing from such a
    body is applied. The gRPC edge maps them to UNAUTHENTICATED and
    INVALID_ARGUMENT.
    """
    return ingestor_for(service).ingest(body, signature, secret, now_ms)


def bind(secret: str | bytes) -> Callable[[Applier, bytes, str | bytes | None, int], IngestResult]:
    """``ingest`` with the app secret fixed: ``f(service, body, signature, now_ms)``."""

    def ingest_signed(
        service: Applier, body: bytes, signature: str | bytes | None, now_ms: int
    ) -> IngestResult:
        return ingest(service, body, signature, secret, now_ms)

    return ingest_signed
