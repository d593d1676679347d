"""A fuzz session: a real in-process sidecar, a model of what it must hold, the oracles.

Every step of a fuzz program goes through the sidecar as wire bytes (a generic
``channel.unary_unary`` / ``stream_stream`` with identity serializers), so a
malformed message reaches the server exactly as sent. After each step:

- the status is OK or a documented error: INVALID_ARGUMENT or FAILED_PRECONDITION
  whose message names a field of the request, NOT_FOUND naming ``sender_id``,
  UNAUTHENTICATED naming the ``signature``, RESOURCE_EXHAUSTED; never INTERNAL,
  UNKNOWN or a missed deadline (a hang);
- a request that got an error changed nothing: the known senders' states and a
  dry-run probe of each limit scope are what they were before (decision counts
  moved only by the probes themselves), the webhook counters moved only by the
  refused body;
- every answer is ADMIT, RETRY_LATER or REJECT with a reason that fits it, a
  ticket only on an ADMIT, and a remembered answer only for the same request
  under the same idempotency key;
- the distinct recipients counted in a scope (a lower bound the model keeps from
  the answers) never exceed the limit an ADMIT reports, and the sidecar's own
  count is never below it (no lost or wrongly released slot);
- a send result naming a ticket tiergate never issued changes nothing;
- raw Admit and AdmitColumns bytes that protobuf reads get, as a dry run, the
  answer their protobuf encoding gets (whichever reader took them);
- the sidecar stays SERVING and counts no internal error.

Streams go through the synchronous client: grpc.aio's client reports INTERNAL
for a stream the server ended with an error while messages were still on
their way (see ``Session.stream``).

Time: with the request clock, the model keeps a lower bound of the sidecar's
latest time (from requests it accepted) and an upper bound (from every time it
was sent); with the server clock, the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from hypothesis import event
from hypothesis.control import currently_in_test_context

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
sys.path.insert(0, str(Path(__file__).parents[1] / "webhooks"))

import known_defects as known
from fuzz_strategies import (
    BANNED,
    DAY,
    DISPLAY,
    KNOWN_SENDERS,
    MAX_BATCH,
    OTHER,
    PAUSED_UNTIL,
    PORTFOLIOS,
    PROBE_RECIPIENT,
    RECIPIENTS,
    SENDER,
    SIBLING,
    TEMPLATE_DISABLED,
    TEMPLATE_OK,
    TEMPLATE_PAUSED,
    WABAS,
    WEBHOOK_SECRET,
    Webhook,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import T0, Harness, make_config, sender, serving

from tiergate import config as cfg
from tiergate.engine.constants import is_bsuid
from tiergate.policy.events import SenderStatus, TemplateStatus, TemplateUpdate
from tiergate.server import SERVICE_NAME
from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.v1 import admission_pb2 as pb
from tiergate.webhooks.signature import sign

PROFILE = Path(__file__).with_name("fuzz-limits.toml")
DEADLINE_S = 20.0  # per call: far above any answer's time; reaching it means a hang

ADMIT, RETRY_LATER, REJECT = pb.DECISION_ADMIT, pb.DECISION_RETRY_LATER, pb.DECISION_REJECT
RETRY_REASONS = {
    pb.SENDER_RESTRICTED,
    pb.TEMPLATE_PAUSED,
    pb.MESSAGING_LIMIT,
    pb.MARKETING_FREQUENCY,
    pb.QUALITY_PROTECTION,
    pb.THROUGHPUT,
    pb.PAIR_RATE,
}
REJECT_REASONS = {
    pb.SENDER_BLOCKED,
    pb.SENDER_RESTRICTED,
    pb.TEMPLATE_DISABLED,
    pb.OUTSIDE_WINDOW,
    pb.RECIPIENT_OPTED_OUT,
    pb.MARKETING_FREQUENCY,
    pb.QUALITY_PROTECTION,
    pb.UNKNOWN_SENDER,
    pb.NOT_DELIVERED_TO_REGION,
}
#: The Meta error each reason avoids (TEMPLATE_DISABLED: 132001 for a template Meta
#: does not know).
META_ERRORS: dict[int, set[int]] = {
    pb.OK: {0},
    pb.SENDER_BLOCKED: {368},
    pb.SENDER_RESTRICTED: {368},
    pb.TEMPLATE_PAUSED: {132015},
    pb.TEMPLATE_DISABLED: {132016, 132001},
    pb.OUTSIDE_WINDOW: {131047},
    pb.RECIPIENT_OPTED_OUT: {131050},
    pb.MESSAGING_LIMIT: {131048},
    pb.MARKETING_FREQUENCY: {131049},
    pb.QUALITY_PROTECTION: {131048},
    pb.THROUGHPUT: {130429},
    pb.PAIR_RATE: {131056},
    pb.UNKNOWN_SENDER: {0},
    pb.NOT_DELIVERED_TO_REGION: {131049},
}

REQUEST_TYPES: dict[str, type[Message]] = {
    "Admit": pb.AdmitRequest,
    "AdmitBatch": pb.AdmitBatchRequest,
    "AdmitStream": pb.AdmitRequest,
    "AdmitColumns": pb.AdmitColumnsRequest,
    "RecordFeedback": pb.RecordFeedbackRequest,
    "IngestWebhook": pb.IngestWebhookRequest,
    "GetSenderState": pb.GetSenderStateRequest,
    "PlanCampaign": pb.PlanCampaignRequest,
}
RESPONSE_TYPES: dict[str, type[Message]] = {
    "Admit": pb.AdmitResponse,
    "AdmitBatch": pb.AdmitBatchResponse,
    "AdmitStream": pb.AdmitResponse,
    "AdmitColumns": pb.AdmitColumnsResponse,
    "RecordFeedback": pb.RecordFeedbackResponse,
    "IngestWebhook": pb.IngestWebhookResponse,
    "GetSenderState": pb.SenderState,
    "PlanCampaign": pb.PlanCampaignResponse,
}


def _field_names(message: Any, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    names: set[str] = set()
    if message.full_name in seen:
        return names
    seen.add(message.full_name)
    for f in message.fields:
        names.add(f.name)
        if f.message_type is not None:
            names |= _field_names(f.message_type, seen)
    return names


#: What an error may name: a field of any request message (at any depth), or the
#: request, its oneof or body as a whole.
FIELD_NAMES = set().union(*(_field_names(t.DESCRIPTOR) for t in REQUEST_TYPES.values())) | {
    "request",
    "requests",
    "event",
    "body",
    "signature",
}
_NAMED = re.compile(
    r"^(?:stream message \d+: )?"
    r"([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*): \S"
)
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class OracleError(AssertionError):
    pass


def fail(message: str) -> None:
    raise OracleError(message)


def named_field(details: str) -> str | None:
    """The field path an error message starts with (``requests[3].recipient``), or None."""
    m = _NAMED.match(details)
    if m is None:
        return None
    path = m.group(1)
    parts = [re.sub(r"\[\d+\]$", "", p) for p in path.split(".")]
    return path if all(p in FIELD_NAMES for p in parts) else None


def leaf(path: str) -> str:
    return re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])


# --- what a valid AdmitRequest is (DESIGN §2 step 1, the sizes tiergate documents) -----------


def admit_problems(r: pb.AdmitRequest, request_clock: bool) -> set[str]:
    """The fields of ``r`` that make it invalid (empty: valid)."""
    bad: set[str] = set()
    if not r.sender_id or len(r.sender_id) > 128:
        bad.add("sender_id")
    digits = r.recipient[1:] if r.recipient.startswith("+") else r.recipient
    e164 = 1 <= len(digits) <= 15 and digits.isascii() and digits.isdigit()
    if not (e164 or is_bsuid(r.recipient)):  # (a business-scoped user ID is a recipient)
        bad.add("recipient")
    if r.kind not in (pb.TEMPLATE, pb.FREE_FORM):
        bad.add("kind")
    if r.category not in range(5) or (r.kind == pb.TEMPLATE and r.category == 0):
        bad.add("category")
    if len(r.template_id) > 512 or (r.kind == pb.TEMPLATE and not r.template_id):
        bad.add("template_id")
    if len(r.idempotency_key) > 256:
        bad.add("idempotency_key")
    if r.at_unix_ms < 0 or (request_clock and r.at_unix_ms > MAX_AT_UNIX_MS):
        bad.add("at_unix_ms")
    return bad


def content(r: pb.AdmitRequest) -> tuple[str, str, int, int, str]:
    """What an idempotency key is bound to."""
    return (r.sender_id, r.recipient, r.kind, r.category, r.template_id)


def rkey(recipient: str) -> str:
    return recipient[1:] if recipient.startswith("+") else recipient


def at_fields(message: Message) -> Iterable[tuple[Message, str, int | None]]:
    """Every ``at_unix_ms`` of a request: (message, field name, index or None)."""
    for fd, value in message.ListFields():
        if fd.message_type is not None:
            items = value if fd.is_repeated else [value]
            for item in items:
                yield from at_fields(item)
        elif fd.name == "at_unix_ms":
            if fd.is_repeated:
                for i in range(len(value)):
                    yield message, fd.name, i
            else:
                yield message, fd.name, None


def times_in(message: Message) -> list[int]:
    out = []
    for m, name, i in at_fields(message):
        out.append(getattr(m, name)[i] if i is not None else getattr(m, name))
    return out


def _json_numbers(doc: object) -> Iterable[int]:
    if isinstance(doc, bool):
        return
    if isinstance(doc, int):
        yield doc
    elif (isinstance(doc, float) and abs(doc) < 1e19) or (
        isinstance(doc, str) and doc.strip().lstrip("-").isdecimal() and len(doc) < 20
    ):
        yield int(doc)
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _json_numbers(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _json_numbers(v)


def webhook_times(body: bytes) -> list[int]:
    """Every number in a webhook body that could be a time (as seconds or ms)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    out = []
    for n in _json_numbers(doc):
        out += [n, n * 1000]
    return [t for t in out if 0 < t <= MAX_AT_UNIX_MS]


def decodable_ticket(ticket: str) -> bool:
    """Whether ``ticket`` has a ticket's shape (dot-separated hex fields)."""
    parts = ticket.split(".")
    if len(parts) not in (4, 5):
        return False
    try:
        for p in parts:
            int(p, 16)
    except ValueError:
        return False
    return True


# --- the model ---------------------------------------------------------------------------


@dataclass
class Issued:
    ticket: str
    request: pb.AdmitRequest
    scope: str
    recipient: str
    at_lower: int
    counted: bool


@dataclass
class Snapshot:
    states: dict[str, tuple[Any, ...]]
    counts: dict[str, dict[int, int]]
    probes: dict[str, pb.AdmitResponse]
    webhooks: dict[str, int]


@dataclass
class Model:
    request_clock: bool
    lower: int = 0  # the sidecar's latest request time is at least this
    upper: int = 0  # and at most this (request clock)
    known: set[str] = field(default_factory=lambda: set(KNOWN_SENDERS))
    scope_of: dict[str, str] = field(default_factory=lambda: dict(PORTFOLIOS))
    banned: set[str] = field(default_factory=lambda: {BANNED})
    blocked_templates: set[str] = field(
        default_factory=lambda: {TEMPLATE_PAUSED, TEMPLATE_DISABLED}
    )
    tickets: dict[str, Issued] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # tickets in issue order
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (sender, key) → ticket
    counted: dict[str, dict[str, Issued]] = field(default_factory=dict)  # scope → ticket → admit
    senders_certain: bool = True  # no webhook applied (it might have made senders)

    def now_upper(self) -> int:
        return self.upper if self.request_clock else wall_ms()

    def now_lower(self) -> int:
        return self.lower if self.request_clock else wall_ms()

    def seen_time(self, t: int, accepted: bool) -> None:
        """A time a request carried (``accepted``: the sidecar took the request)."""
        if self.request_clock and 0 < t <= MAX_AT_UNIX_MS:
            self.upper = max(self.upper, t)
            if accepted:
                self.lower = max(self.lower, t)

    def in_scope(self, scope: str) -> dict[str, Issued]:
        """The counted admits of ``scope`` surely still inside the 24 h window."""
        admits = self.counted.setdefault(scope, {})
        horizon = self.now_upper() - DAY
        for t in [t for t, a in admits.items() if a.at_lower <= horizon]:
            del admits[t]
        return admits

    def distinct(self, scope: str) -> int:
        return len({a.recipient for a in self.in_scope(scope).values()})

    def key_alive(self, issued: Issued) -> bool:
        return self.now_upper() + 1 < issued.at_lower + DAY

    def forget_counts(self) -> None:
        self.counted.clear()


def note(what: str) -> None:
    """A hypothesis event (shown by --hypothesis-show-statistics), inside a test only."""
    if currently_in_test_context():
        event(what)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def state_view(s: pb.SenderState, request_clock: bool) -> tuple[Any, ...]:
    """What an errored request must not change in a sender's state (with the server
    clock, without the fields that move with the wall clock)."""
    view: tuple[Any, ...] = (
        s.sender_id,
        s.portfolio_id,
        s.profile,
        s.tier,
        s.limit,
        s.used_24h,
        s.remaining,
        s.quality,
        s.status,
        s.throughput_mps,
        s.open_windows,
        tuple(
            (t.template_id, t.template_name, t.paused_until_unix_ms, t.disabled)
            for t in s.paused_templates
        ),
        s.display_phone_number,
        s.effective_limit,
    )
    if request_clock:
        view += (
            s.next_slot_free_at_unix_ms,
            s.unique_7d,
            s.upgrade.SerializeToString(deterministic=True),
            s.at_unix_ms,
        )
    return view


def probe_view(p: pb.AdmitResponse, request_clock: bool) -> tuple[Any, ...]:
    if request_clock:
        return (
            p.decision,
            p.reason,
            p.retry_at_unix_ms,
            p.counted,
            p.limit,
            p.used,
            p.meta_error_code,
            p.detail,
        )
    return (p.limit, p.used)


# --- the session -------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    replies: list[bytes]


def fuzz_config(clock: str, **overrides: Any) -> cfg.ServeConfig:
    senders = tuple(
        sender(
            sid,
            portfolio_id=PORTFOLIOS[sid],
            waba_id=WABAS[sid],
            display_phone_number="+" + DISPLAY[sid],
            tier="TIER_2K" if sid == OTHER else "TIER_250",
            status=SenderStatus.BANNED if sid == BANNED else SenderStatus.CONNECTED,
            # SIBLING sends 2 a second: its bursts meet the throughput rule.
            throughput_mps=2 if sid == SIBLING else None,
        )
        for sid in KNOWN_SENDERS
    )
    templates = (
        TemplateUpdate(template_id=TEMPLATE_OK, status=TemplateStatus.APPROVED),
        TemplateUpdate(
            template_id=TEMPLATE_PAUSED,
            status=TemplateStatus.PAUSED,
            paused_until_unix_ms=PAUSED_UNTIL,
        ),
        TemplateUpdate(template_id=TEMPLATE_DISABLED, status=TemplateStatus.DISABLED),
    )
    return make_config(
        clock=clock,
        profile=str(PROFILE),
        senders=senders,
        templates=templates,
        max_batch=MAX_BATCH,
        webhook_secret=WEBHOOK_SECRET,
        **overrides,
    )


class Session:
    def __init__(self, h: Harness, clock: str) -> None:
        self.h = h
        self.request_clock = clock == "request"
        self.model = Model(self.request_clock)
        self.snapshot: Snapshot | None = None
        self.fresh = 0
        self._health = health_pb2_grpc.HealthStub(h.channel)
        self._sync: grpc.Channel | None = None

    # --- transport ----------------------------------------------------------------

    async def unary(self, rpc: str, data: bytes) -> Outcome:
        call = self.h.channel.unary_unary(f"/{SERVICE_NAME}/{rpc}")
        try:
            reply = await call(data, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as e:
            return Outcome(e.code(), e.details() or "", [])
        return Outcome(grpc.StatusCode.OK, "", [reply])

    async def stream(self, rpc: str, messages: Sequence[bytes]) -> Outcome:
        """A bidirectional call through the synchronous client, in a thread: when the
        server ends a stream with an error while messages are still on their way,
        grpc.aio's client reports INTERNAL ("Internal error from Core") instead of the
        status the server sent (the synchronous client reports the server's)."""
        if self._sync is None:
            self._sync = grpc.insecure_channel(self.h.target)
        call = self._sync.stream_stream(f"/{SERVICE_NAME}/{rpc}")

        def run() -> Outcome:
            replies: list[bytes] = []
            try:
                for reply in call(iter(messages), timeout=DEADLINE_S):
                    replies.append(reply)
            except grpc.RpcError as e:
                return Outcome(e.code(), e.details() or "", replies)  # type: ignore[attr-defined]
            return Outcome(grpc.StatusCode.OK, "", replies)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def check_serving(self) -> None:
        for name in ("", SERVICE_NAME):
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=name), timeout=DEADLINE_S
            )
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                fail(f"health of {name!r} is {reply.status} after a fuzzed request")

    # --- start --------------------------------------------------------------------

    async def start(self) -> None:
        """Put the request clock at T0 (a read at T0 is a valid request)."""
        if self.request_clock:
            await self.ok(
                "GetSenderState", pb.GetSenderStateRequest(sender_id=SENDER, at_unix_ms=T0)
            )
            self.model.seen_time(T0, True)

    # --- state snapshots --------------------------------------------------------------

    async def take_snapshot(self) -> Snapshot:
        if self.snapshot is not None:
            return self.snapshot
        states: dict[str, tuple[Any, ...]] = {}
        counts: dict[str, dict[int, int]] = {}
        for sid in sorted(self.model.known & set(KNOWN_SENDERS)):
            out = await self.unary(
                "GetSenderState", pb.GetSenderStateRequest(sender_id=sid).SerializeToString()
            )
            if out.code != grpc.StatusCode.OK:
                fail(f"GetSenderState({sid}) of a known sender: {out.code} {out.details}")
            s = pb.SenderState.FromString(out.replies[0])
            states[sid] = state_view(s, self.request_clock)
            counts[sid] = {c.reason: c.count for c in s.decision_counts}
            if s.used_24h < self.model.distinct(self.model.scope_of[sid]):
                fail(
                    f"{sid}: used_24h {s.used_24h} is below the "
                    f"{self.model.distinct(self.model.scope_of[sid])} distinct recipients "
                    "admitted (and not released) in its window"
                )
        probes: dict[str, pb.AdmitResponse] = {}
        for sid in (SENDER, OTHER):
            probe = pb.AdmitRequest(
                sender_id=sid,
                recipient=PROBE_RECIPIENT,
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id=TEMPLATE_OK,
                # With the request clock, 1 is decided at the scope's own latest time
                # and moves no clock.
                at_unix_ms=1 if self.request_clock else 0,
                dry_run=True,
            )
            out = await self.unary("Admit", probe.SerializeToString())
            if out.code != grpc.StatusCode.OK:
                fail(f"probe admit of {sid}: {out.code} {out.details}")
            probes[sid] = pb.AdmitResponse.FromString(out.replies[0])
        ingestor = self.h.sidecar.ingestor
        assert ingestor is not None
        webhooks = ingestor.stats.as_dict()
        self.snapshot = Snapshot(states, counts, probes, webhooks)
        return self.snapshot

    async def check_unchanged(self, before: Snapshot, what: str, webhook_error: str = "") -> None:
        """After a request that must have changed nothing (``webhook_error``: the counter
        a refused webhook body moves)."""
        self.snapshot = None
        after = await self.take_snapshot()
        for sid, view in before.states.items():
            if after.states.get(sid) != view:
                fail(
                    f"{what} changed the state of {sid}:\n  before {view}\n  after  "
                    f"{after.states.get(sid)}"
                )
            expected = dict(before.counts[sid])
            probe = before.probes.get(sid)
            if probe is not None:
                expected[probe.reason] = expected.get(probe.reason, 0) + 1
            if after.counts[sid] != expected:
                fail(
                    f"{what} changed the decision counts of {sid}: {before.counts[sid]} "
                    f"(+ the probe's {probe.reason if probe else None}) -> {after.counts[sid]}"
                )
        for sid, probe in before.probes.items():
            a, b = (
                probe_view(probe, self.request_clock),
                probe_view(after.probes[sid], self.request_clock),
            )
            if a != b:
                fail(f"{what} changed what a dry-run probe of {sid} gets: {a} -> {b}")
        expected_hooks = dict(before.webhooks)
        if webhook_error:
            expected_hooks["bodies"] += 1
            expected_hooks[webhook_error] += 1
        if after.webhooks != expected_hooks:
            fail(
                f"{what}: webhook counters {before.webhooks} -> {after.webhooks} "
                f"(expected {expected_hooks})"
            )
        await self.check_serving()

    # --- placeholders and the known defects' triggers ----------------------------------

    def resolve(
        self,
        message: Message,
        keys: dict[tuple[str, str], Any] | None = None,
        *,
        fill: bool = True,
    ) -> Message:
        """A copy of ``message`` with its placeholders filled in (``fill``) and, while a
        known defect is unfixed, its trigger taken out. ``keys``: the idempotency keys
        the messages before it in the same call use (a stream's)."""
        m = type(message)()
        m.CopyFrom(message)
        if fill:
            self._fill(m)
        if self.request_clock and known.REFUSED_REQUESTS_MOVE_THE_REQUEST_CLOCK:
            for owner, name, i in at_fields(m):
                value = getattr(owner, name)[i] if i is not None else getattr(owner, name)
                if self.model.lower < value <= MAX_AT_UNIX_MS:
                    if i is None:
                        setattr(owner, name, self.model.lower)
                    else:
                        getattr(owner, name)[i] = self.model.lower
        if known.KEYS_ARE_NOT_BOUND_TO_THEIR_REQUEST:
            self._unbind_keys(m, {} if keys is None else keys)
        if known.FORGED_TICKETS_RELEASE_SLOTS:
            self._unforge(m)
        return m

    def _fill(self, m: Message) -> None:
        for fd, value in m.ListFields():
            if fd.message_type is not None:
                for item in value if fd.is_repeated else [value]:
                    self._fill(item)
            elif (
                fd.type == fd.TYPE_STRING
                and not fd.is_repeated
                and value.startswith(("@ticket:", "@forged:"))
                and self.model.order
            ):
                n = int(value.split(":", 1)[1])
                ticket = self.model.order[n % len(self.model.order)]
                if value.startswith("@forged:"):
                    first, _, rest = ticket.partition(".")
                    ticket = f"{int(first, 16) + 1:x}.{rest}"
                setattr(m, fd.name, ticket)

    def _admit_items(self, m: Message) -> list[pb.AdmitRequest]:
        if isinstance(m, pb.AdmitRequest):
            return [m]
        if isinstance(m, pb.AdmitBatchRequest):
            return list(m.requests)
        return []

    def _bound_elsewhere(self, r: pb.AdmitRequest, batch: dict[tuple[str, str], Any]) -> bool:
        k = (r.sender_id, r.idempotency_key)
        if not r.idempotency_key:
            return False
        first = self.model.keys.get(k)
        if first is not None and content(self.model.tickets[first].request) != content(r):
            return True
        return k in batch and batch[k] != content(r)

    def _fresh_key(self) -> str:
        self.fresh += 1
        return f"fresh-{self.fresh}"

    def _unbind_keys(self, m: Message, batch: dict[tuple[str, str], Any]) -> None:
        for r in self._admit_items(m):
            if self._bound_elsewhere(r, batch):
                r.idempotency_key = self._fresh_key()
            batch.setdefault((r.sender_id, r.idempotency_key), content(r))
        if isinstance(m, pb.AdmitColumnsRequest) and len(m.idempotency_keys):
            for i, r in enumerate(column_items(m)):
                if r is not None and self._bound_elsewhere(r, batch):
                    m.idempotency_keys[i] = self._fresh_key()
                    r.idempotency_key = m.idempotency_keys[i]
                if r is not None:
                    batch.setdefault((r.sender_id, r.idempotency_key), content(r))

    def _unforge(self, m: Message) -> None:
        if isinstance(m, pb.RecordFeedbackRequest) and m.WhichOneof("event") == "send_result":
            t = m.send_result.ticket
            if t and t not in self.model.tickets and decodable_ticket(t):
                m.send_result.ticket = "x" + t

    def triggers_known_defect(self, rpc: str, data: Sequence[bytes]) -> bool:
        """Whether the raw bytes of a call (one message, or a stream's) would hit a known
        defect (then they are not sent)."""
        keys: dict[tuple[str, str], Any] = {}
        for one in data:
            try:
                m = REQUEST_TYPES[rpc].FromString(one)
            except DecodeError:
                continue
            if self.resolve(m, keys, fill=False) != m:
                return True
        return False

    # --- one request ------------------------------------------------------------------

    async def ok(self, rpc: str, message: Message) -> Message:
        """A request the model knows is valid: it must succeed."""
        out = await self.unary(rpc, message.SerializeToString())
        if out.code != grpc.StatusCode.OK:
            fail(f"valid {rpc} {message} answered {out.code}: {out.details}")
        return RESPONSE_TYPES[rpc].FromString(out.replies[0])

    def check_status(self, rpc: str, out: Outcome) -> None:
        if out.code not in ALLOWED:
            fail(f"{rpc} answered {out.code.name}: {out.details!r}")
        if "Traceback" in out.details:
            fail(f"{rpc} answered with a traceback: {out.details!r}")
        refused = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        if out.code in refused and named_field(out.details) is None:
            fail(f"{rpc} {out.code.name} names no field of the request: {out.details!r}")
        if out.code == grpc.StatusCode.NOT_FOUND and not out.details.startswith("sender_id"):
            fail(f"{rpc} NOT_FOUND does not name sender_id: {out.details!r}")
        if out.code == grpc.StatusCode.UNAUTHENTICATED and not out.details.startswith("signature"):
            fail(f"{rpc} UNAUTHENTICATED does not name the signature: {out.details!r}")

    async def send(self, rpc: str, payload: Any, *, raw: bool = False) -> None:
        """One fuzzed request: a message (``raw`` False) or bytes as they are."""
        if rpc == "HttpWebhook":
            await self.http_webhook(payload)
            return
        if rpc == "HttpRequest":
            await self.http_request(*payload)
            return
        if rpc == "IngestWebhook" and isinstance(payload, Webhook):
            payload = pb.IngestWebhookRequest(
                body=payload.body,
                signature=self.signature(payload),
                at_unix_ms=payload.at_unix_ms,
            )
        parsed: Any
        if raw:
            if rpc == "AdmitStream":
                if self.triggers_known_defect(rpc, payload):
                    note("raw bytes not sent: a known defect's trigger")
                    return
                data = list(payload)
                parsed = [_parse(pb.AdmitRequest, d) for d in data]
            else:
                if self.triggers_known_defect(rpc, [payload]):
                    note("raw bytes not sent: a known defect's trigger")
                    return
                data = payload
                parsed = _parse(REQUEST_TYPES[rpc], payload)
        elif rpc == "AdmitStream":
            keys: dict[tuple[str, str], Any] = {}
            parsed = [self.resolve(m, keys) for m in payload]
            data = [m.SerializeToString() for m in parsed]
        else:
            parsed = self.resolve(payload)
            data = parsed.SerializeToString()
        if raw and rpc in ("Admit", "AdmitColumns") and parsed is not None:
            await self.differential(rpc, data, parsed)
        before = await self.take_snapshot()
        started_ms = wall_ms()
        lower = self.model.now_lower()
        out = await (self.stream(rpc, data) if rpc == "AdmitStream" else self.unary(rpc, data))
        self.check_status(rpc, out)
        note(f"{rpc} {'bytes' if raw else 'message'}: {out.code.name}")
        accepted = out.code == grpc.StatusCode.OK and rpc != "PlanCampaign"  # a plan moves no time
        for t in _times(parsed):
            self.model.seen_time(t, accepted=accepted)
        if rpc == "IngestWebhook" and parsed is not None:
            for t in webhook_times(parsed.body):
                self.model.seen_time(t, accepted=False)
        what = f"{rpc} {'bytes ' + repr(data)[:300] if raw else parsed} ({out.code.name})"
        answered = getattr(self, "_after_" + rpc)
        if out.code == grpc.StatusCode.OK:
            self.snapshot = None
            await answered(parsed, out, lower, started_ms)
            if self._changes_nothing(parsed):
                await self.check_unchanged(before, what)
        elif rpc == "AdmitStream" and out.replies:
            self.snapshot = None
            await answered(parsed, out, lower, started_ms)
        else:
            await self._after_error(rpc, parsed, out)
            error = ""
            if rpc == "IngestWebhook":
                error = (
                    "bad_signature"
                    if out.code == grpc.StatusCode.UNAUTHENTICATED
                    else "malformed"
                    if out.code == grpc.StatusCode.INVALID_ARGUMENT
                    and out.details.startswith("body")
                    else ""
                )
            await self.check_unchanged(before, what, error)

    def _changes_nothing(self, request: Any) -> bool:
        """Whether an accepted request must change nothing: a send result naming a
        ticket tiergate never issued (no slot released, no window closed, no sender
        slowed down by a made-up ticket)."""
        if isinstance(request, pb.PlanCampaignRequest):
            return True  # a plan consumes nothing
        if not isinstance(request, pb.RecordFeedbackRequest):
            return False
        if request.WhichOneof("event") != "send_result":
            return False
        ticket = request.send_result.ticket
        return bool(ticket) and ticket not in self.model.tickets

    async def differential(self, rpc: str, data: bytes, parsed: Message) -> None:
        """Raw bytes that protobuf reads, made a dry run (a dry_run field appended: the
        last value wins), and the same request as protobuf writes it: the same status,
        message and answer, whichever reader took the bytes. With the request clock
        only (a dry run's answer there does not move with the wall clock)."""
        if not self.request_clock:
            return
        dry = type(parsed)()
        dry.CopyFrom(parsed)
        dry.dry_run = True  # type: ignore[attr-defined]
        field = b"\x40\x01" if rpc == "Admit" else b"\x50\x01"  # dry_run = true
        read = await self.unary(rpc, data + field)
        written = await self.unary(rpc, dry.SerializeToString())
        self.snapshot = None
        if (read.code, read.details) != (written.code, written.details) or [
            RESPONSE_TYPES[rpc].FromString(r) for r in read.replies
        ] != [RESPONSE_TYPES[rpc].FromString(r) for r in written.replies]:
            fail(
                f"{rpc}: bytes {data + field!r} answered {read}, "
                f"the same request as protobuf writes it {written}"
            )

    def signature(self, w: Webhook) -> str:
        return sign(w.body, WEBHOOK_SECRET) if w.signature == "@sign" else w.signature

    # --- errors: were they the right ones? ------------------------------------------------

    async def _after_error(self, rpc: str, parsed: Any, out: Outcome) -> None:
        path = named_field(out.details) or ""
        if rpc == "Admit" and isinstance(parsed, pb.AdmitRequest):
            problems = admit_problems(parsed, self.request_clock)
            refused = out.code == grpc.StatusCode.INVALID_ARGUMENT
            if refused and not problems and not self._key_conflict(parsed):
                fail(f"a valid Admit was refused: {parsed} -> {out.details!r}")
            if problems and leaf(path) not in problems | {"request"}:
                fail(f"Admit {parsed} names {path!r}, not one of its bad fields {problems}")
        if rpc == "AdmitBatch" and isinstance(parsed, pb.AdmitBatchRequest):
            n = len(parsed.requests)
            bad = [admit_problems(r, self.request_clock) for r in parsed.requests]
            refused = out.code == grpc.StatusCode.INVALID_ARGUMENT
            conflict = self._any_key_conflict(list(parsed.requests))
            if n <= MAX_BATCH and not any(bad) and refused and not conflict:
                fail(f"a valid AdmitBatch was refused: {out.details!r}")
            m = re.match(r"^requests\[(\d+)\]\.", path)
            named = {"idempotency_key"} if conflict else set()
            if m and (int(m.group(1)) >= n or leaf(path) not in bad[int(m.group(1))] | named):
                fail(f"AdmitBatch names {path!r}; the bad fields are {bad}")
        if (
            isinstance(parsed, pb.GetSenderStateRequest)
            and out.code == grpc.StatusCode.NOT_FOUND
            and parsed.sender_id in self.model.known
        ):
            fail(f"GetSenderState of known sender {parsed.sender_id!r}: NOT_FOUND")
        if rpc == "AdmitStream" and isinstance(parsed, list):
            self._check_stream_prefix(parsed, out)

    def _key_conflict(self, r: pb.AdmitRequest) -> bool:
        first = self.model.keys.get((r.sender_id, r.idempotency_key))
        return first is not None and content(self.model.tickets[first].request) != content(r)

    def _any_key_conflict(self, requests: Sequence[pb.AdmitRequest | None]) -> bool:
        """Whether a request of one call re-uses a key bound to another request: one
        remembered from an earlier call, or one used earlier in the same call."""
        used: dict[tuple[str, str], tuple[str, str, int, int, str]] = {}
        for r in requests:
            if r is None or not r.idempotency_key:
                continue
            if self._key_conflict(r):
                return True
            first = used.setdefault((r.sender_id, r.idempotency_key), content(r))
            if first != content(r):
                return True
        return False

    def _first_bad(self, requests: list[pb.AdmitRequest | None]) -> int:
        for i, r in enumerate(requests):
            if r is None or admit_problems(r, self.request_clock):
                return i
        return len(requests)

    def _check_stream_prefix(self, requests: list[pb.AdmitRequest | None], out: Outcome) -> None:
        first_bad = self._first_bad(requests)
        if out.code == grpc.StatusCode.OK and first_bad < len(requests):
            fail(
                f"AdmitStream answered OK although message {first_bad} is bad: "
                f"{requests[first_bad]}"
            )
        if out.code == grpc.StatusCode.INVALID_ARGUMENT:
            if len(out.replies) != first_bad and not self._any_key_conflict(requests):
                fail(
                    f"AdmitStream answered {len(out.replies)} messages before its error "
                    f"{out.details!r}; message {first_bad} is the first bad one"
                )
            m = re.match(r"^stream message (\d+): ", out.details)
            if m is None or int(m.group(1)) != len(out.replies):
                fail(
                    f"AdmitStream error does not name stream message {len(out.replies)}: "
                    f"{out.details!r}"
                )

    # --- answers ------------------------------------------------------------------------

    async def _after_Admit(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"Admit accepted bytes protobuf cannot parse: {out}")
        problems = admit_problems(req, self.request_clock)
        if problems:
            fail(f"Admit accepted a request with bad {problems}: {req}")
        self.check_admit(req, pb.AdmitResponse.FromString(out.replies[0]), lower)

    async def _after_AdmitBatch(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"AdmitBatch accepted bytes protobuf cannot parse: {out}")
        reply = pb.AdmitBatchResponse.FromString(out.replies[0])
        if len(req.requests) > MAX_BATCH:
            fail(f"AdmitBatch accepted {len(req.requests)} requests (at most {MAX_BATCH})")
        if len(reply.responses) != len(req.requests):
            fail(f"AdmitBatch answered {len(reply.responses)} of {len(req.requests)} requests")
        for r, a in zip(req.requests, reply.responses, strict=True):
            if admit_problems(r, self.request_clock):
                fail(f"AdmitBatch accepted a bad request: {r}")
            self.check_admit(r, a, lower)

    async def _after_AdmitStream(
        self, reqs: list[Any], out: Outcome, lower: int, started: int
    ) -> None:
        if out.code == grpc.StatusCode.OK and len(out.replies) != len(reqs):
            fail(f"AdmitStream answered {len(out.replies)} of {len(reqs)} messages")
        self._check_stream_prefix(reqs, out)
        for r, data in zip(reqs, out.replies, strict=False):
            if r is None:
                fail("AdmitStream answered a message protobuf cannot parse")
            self.check_admit(r, pb.AdmitResponse.FromString(data), lower)

    async def _after_AdmitColumns(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"AdmitColumns accepted bytes protobuf cannot parse: {out}")
        reply = pb.AdmitColumnsResponse.FromString(out.replies[0])
        items = column_items(req)
        n = len(req.recipients)
        lengths = {
            "decisions": len(reply.decisions),
            "reasons": len(reply.reasons),
            "counted": len(reply.counted),
            "retry_at_unix_ms": len(reply.retry_at_unix_ms),
            "limit": len(reply.limit),
            "used": len(reply.used),
            "meta_error_code": len(reply.meta_error_code),
            "tickets": len(reply.tickets),
        }
        if set(lengths.values()) != ({n} if n else {0}):
            fail(f"AdmitColumns answered columns of lengths {lengths} for {n} items")
        if n > MAX_BATCH:
            fail(f"AdmitColumns accepted {n} items (at most {MAX_BATCH})")
        for i, r in enumerate(items):
            if r is None or admit_problems(r, self.request_clock):
                fail(f"AdmitColumns accepted item {i} that is not a valid request: {r}")
            a = pb.AdmitResponse(
                decision=reply.decisions[i],  # type: ignore[arg-type]
                reason=reply.reasons[i],  # type: ignore[arg-type]
                retry_at_unix_ms=reply.retry_at_unix_ms[i],
                ticket=reply.tickets[i],
                counted=bool(reply.counted[i]),
                limit=reply.limit[i],
                used=reply.used[i],
                meta_error_code=reply.meta_error_code[i],
            )
            self.check_admit(r, a, lower)

    async def _after_RecordFeedback(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"RecordFeedback accepted bytes protobuf cannot parse: {out}")
        reply = pb.RecordFeedbackResponse.FromString(out.replies[0])
        which = req.WhichOneof("event")
        if which is None:
            fail("RecordFeedback without an event was accepted")
        event = getattr(req, which)
        if which == "sender_update" and reply.applied:
            sid = event.sender_id
            if sid not in self.model.known:
                self.model.known.add(sid)
                pid = event.portfolio_id if event.HasField("portfolio_id") else ""
                self.model.scope_of[sid] = pid or f"sender:{sid}"
            self.model.banned.discard(sid)
        if which == "template_update" and reply.applied:
            self.model.blocked_templates.clear()
        if which == "send_result":
            await self._after_send_result(event, reply)

    async def _after_send_result(self, e: pb.SendResult, reply: pb.RecordFeedbackResponse) -> None:
        issued = self.model.tickets.get(e.ticket) if e.ticket else None
        if e.ticket and issued is None:
            # A ticket tiergate never issued: nothing may change (no slot released, no
            # window closed, no sender slowed down by a made-up ticket).
            if "released" in reply.detail:
                fail(f"a ticket never issued released a slot: {e} -> {reply.detail!r}")
            return
        if not (reply.applied and "slot released" in reply.detail):
            return
        ticket = e.ticket
        if not ticket and e.idempotency_key:
            ticket = self.model.keys.get((e.sender_id, e.idempotency_key), "")
        if not ticket:
            m = re.search(r"\(ticket (\S+), linked", reply.detail)
            ticket = m.group(1) if m else ""
        found = self.model.tickets.get(ticket)
        if found is None:
            self.model.forget_counts()
            return
        self.model.counted.get(found.scope, {}).pop(ticket, None)

    async def _after_IngestWebhook(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"IngestWebhook accepted bytes protobuf cannot parse: {out}")
        reply = pb.IngestWebhookResponse.FromString(out.replies[0])
        self.check_webhook_counts(
            reply.applied, reply.ignored, [(e.field, e.reason) for e in reply.ignored_events]
        )
        if reply.applied:
            self.webhook_applied(req.body)

    def check_webhook_counts(
        self, applied: int, ignored: int, events: list[tuple[str, str]]
    ) -> None:
        if applied < 0 or ignored != len(events):
            fail(f"webhook answer counts: applied {applied}, ignored {ignored}, {events}")
        if not all(reason for _, reason in events):
            fail(f"an ignored webhook part without a reason: {events}")

    def webhook_applied(self, body: bytes) -> None:
        # What a webhook changed is not followed part by part: forget what it may have
        # changed (statuses may release slots; status, tier and template changes).
        self.model.senders_certain = False
        self.model.banned.clear()
        self.model.blocked_templates.clear()
        if b"statuses" in body or b"status" in body:
            self.model.forget_counts()

    async def _after_PlanCampaign(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"PlanCampaign accepted bytes protobuf cannot parse: {out}")
        res = pb.PlanCampaignResponse.FromString(out.replies[0])
        times = list(res.earliest_at_unix_ms)
        if len(times) != len(req.recipients):
            fail(f"PlanCampaign answered {len(times)} times for {len(req.recipients)} recipients")
        going = [t for t in times if t]
        if going != sorted(going) or (going and going[0] < res.start_at_unix_ms):
            fail(f"PlanCampaign {req}: times out of order or before the start: {res}")
        if res.completes_at_unix_ms != max(going, default=res.completes_at_unix_ms):
            fail(f"PlanCampaign {req}: completes_at is not the last time: {res}")

    async def _after_GetSenderState(self, req: Any, out: Outcome, lower: int, started: int) -> None:
        if req is None:
            fail(f"GetSenderState accepted bytes protobuf cannot parse: {out}")
        s = pb.SenderState.FromString(out.replies[0])
        if s.sender_id != req.sender_id:
            fail(f"GetSenderState({req.sender_id!r}) answered for {s.sender_id!r}")
        if self.model.senders_certain and req.sender_id not in self.model.known:
            fail(f"GetSenderState found sender {req.sender_id!r} that was never created")
        if not (0.0 <= s.upgrade.progress <= 1.0) or s.used_24h < 0 or s.remaining < 0:
            fail(f"GetSenderState out of range: {s}")
        if s.remaining != max(0, s.effective_limit - s.used_24h):
            fail(f"remaining {s.remaining} != effective {s.effective_limit} - used {s.used_24h}")
        scope = self.model.scope_of.get(req.sender_id)
        if scope is not None and s.used_24h < self.model.distinct(scope):
            fail(
                f"{req.sender_id}: used_24h {s.used_24h} below the "
                f"{self.model.distinct(scope)} recipients admitted in its window"
            )

    # --- one admit answer ---------------------------------------------------------------

    def check_admit(self, r: pb.AdmitRequest, a: pb.AdmitResponse, lower: int) -> None:
        model = self.model
        d, why = a.decision, a.reason
        said = f"{r} -> {a}"
        if d not in (ADMIT, RETRY_LATER, REJECT):
            fail(f"decision {d} is none of ADMIT, RETRY_LATER, REJECT: {said}")
        if (d == ADMIT) != (why == pb.OK):
            fail(f"decision and reason disagree: {said}")
        if d == RETRY_LATER and (why not in RETRY_REASONS or a.retry_at_unix_ms <= 0):
            fail(f"RETRY_LATER without a retry reason and time: {said}")
        if d == RETRY_LATER and self.request_clock and a.retry_at_unix_ms < lower:
            fail(f"RETRY_LATER at {a.retry_at_unix_ms}, before the request's time {lower}: {said}")
        if d == REJECT and (why not in REJECT_REASONS or a.retry_at_unix_ms != 0):
            fail(f"REJECT with a retry reason or time: {said}")
        if a.meta_error_code not in META_ERRORS.get(why, set()):
            fail(f"meta_error_code {a.meta_error_code} does not fit reason {why}: {said}")
        if d != ADMIT and (a.ticket or a.counted):
            fail(f"a refusal with a ticket or a counted slot: {said}")
        if why == pb.UNKNOWN_SENDER and r.sender_id in model.known:
            fail(f"known sender {r.sender_id!r} answered UNKNOWN_SENDER: {said}")
        if model.senders_certain and r.sender_id not in model.known and why != pb.UNKNOWN_SENDER:
            fail(f"sender {r.sender_id!r} was never created, yet: {said}")
        replay = a.ticket in model.tickets
        first = model.keys.get((r.sender_id, r.idempotency_key)) if r.idempotency_key else None
        if replay:
            issued = model.tickets[a.ticket]
            if not r.idempotency_key or first != a.ticket:
                fail(
                    f"an answer of another request (ticket {a.ticket} was issued for "
                    f"{issued.request}): {said}"
                )
            if content(issued.request) != content(r) and rkey(issued.request.recipient) != rkey(
                r.recipient
            ):
                fail(
                    f"key {r.idempotency_key!r} was first used for {issued.request}; "
                    f"another request got its answer: {said}"
                )
            return
        if first is not None and r.sender_id in model.known:
            issued = model.tickets[first]
            if content(issued.request) == content(r) and model.key_alive(issued):
                fail(
                    f"a retry under key {r.idempotency_key!r} within its 24 h did not get the "
                    f"first answer (ticket {first}): {said}"
                )
        note(f"answer: {pb.Decision.Name(d)} {pb.Reason.Name(why)}")
        if d != ADMIT:
            return
        if r.dry_run:
            if a.ticket:
                fail(f"a dry run got a new ticket: {said}")
            return
        if not a.ticket:
            fail(f"an ADMIT without a ticket: {said}")
        if r.sender_id in model.banned:
            fail(f"banned sender {r.sender_id} admitted: {said}")
        # A pause ends at its time: an accepted request stamped at PAUSED_UNTIL (the
        # largest time a request may carry) moves the request clock to its end.
        paused_over = r.template_id == TEMPLATE_PAUSED and model.now_upper() >= PAUSED_UNTIL
        if r.kind == pb.TEMPLATE and r.template_id in model.blocked_templates and not paused_over:
            fail(f"paused or disabled template {r.template_id} admitted: {said}")
        scope = model.scope_of.get(r.sender_id, f"sender:{r.sender_id}")
        issued = Issued(
            a.ticket,
            r,
            scope,
            rkey(r.recipient),
            r.at_unix_ms if self.request_clock and r.at_unix_ms > 0 else lower,
            a.counted,
        )
        model.tickets[a.ticket] = issued
        model.order.append(a.ticket)
        if r.idempotency_key:
            model.keys[(r.sender_id, r.idempotency_key)] = a.ticket
        if a.counted:
            model.in_scope(scope)[a.ticket] = issued
        n = model.distinct(scope)
        if a.counted and n > a.limit:
            fail(
                f"{n} distinct recipients admitted in scope {scope} within 24 h, "
                f"limit {a.limit}: {said}"
            )
        if a.used < n:
            fail(
                f"used {a.used} is below the {n} distinct recipients admitted in scope "
                f"{scope}: {said}"
            )
        if a.counted and a.used > a.limit:
            fail(f"a counted admit with used {a.used} over limit {a.limit}: {said}")

    async def http_request(self, raw: bytes, body: bytes) -> None:
        """Raw bytes of an HTTP request to the webhook receiver (``body``: what it
        carries when its head reads well). The receiver answers a documented status,
        or closes a connection that ended early; never 5xx but 501 and 505."""
        before = await self.take_snapshot()
        answer = await http_raw(self.h.sidecar.webhook_port, raw)
        for t in webhook_times(body):
            self.model.seen_time(t, accepted=False)
        what = f"HTTP request {raw[:400]!r}: {answer!r}"
        note(f"HTTP request: {answer[0] if answer else 'no answer'}")
        if answer is None:
            await self.check_unchanged(before, what)  # cut short: nothing was read
            return
        status, payload = answer
        if status == 200:
            self.snapshot = None
            self.webhook_applied(body)
        elif status == 403 and payload.startswith(b"signature rejected"):
            await self.check_unchanged(before, what, "bad_signature")
        elif status == 400 and payload.startswith(b"malformed webhook"):
            await self.check_unchanged(before, what, "malformed")
        elif status in HTTP_REFUSALS:
            await self.check_unchanged(before, what)
        else:
            fail(what)

    # --- webhooks over HTTP --------------------------------------------------------------

    async def http_webhook(self, w: Webhook) -> None:
        port = self.h.sidecar.webhook_port
        before = await self.take_snapshot()
        signature = self.signature(w)
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: tiergate\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(w.body)}\r\nConnection: close\r\n"
        ).encode()
        if signature:
            head += b"X-Hub-Signature-256: " + signature.encode("utf-8", "replace") + b"\r\n"
        status, payload = await http_exchange(port, head + b"\r\n" + w.body)
        for t in webhook_times(w.body):
            self.model.seen_time(t, accepted=False)
        what = f"HTTP webhook {w.body[:300]!r} (signature {signature!r}): {status} {payload!r}"
        if status == 200:
            self.snapshot = None
            answer = json.loads(payload)
            self.check_webhook_counts(
                answer["applied"],
                answer["ignored"],
                [(e["field"], e["reason"]) for e in answer["ignored_events"]],
            )
            if answer["applied"]:
                self.webhook_applied(w.body)
        elif status == 403 and payload.startswith(b"signature rejected"):
            await self.check_unchanged(before, what, "bad_signature")
        elif status == 400 and payload.startswith(b"malformed webhook"):
            await self.check_unchanged(before, what, "malformed")
        elif status in (400, 431):
            # Refused by the HTTP reader (a header with a control character, say):
            # no body reached the webhook ingestion.
            await self.check_unchanged(before, what)
        else:
            fail(what)


HTTP_REFUSALS = {400, 403, 404, 405, 408, 411, 413, 431, 501, 505}


async def http_raw(port: int, raw: bytes) -> tuple[int, bytes] | None:
    """``raw`` sent to 127.0.0.1:port, then end of input; the final response's status
    and body, or None when the connection closed without one."""

    async def exchange() -> tuple[int, bytes] | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            writer.write_eof()
            await writer.drain()
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                if status != 100:
                    break
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            return status, await reader.readexactly(length)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), DEADLINE_S)


async def http_exchange(port: int, raw: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port; its status and body."""

    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            return status, await reader.readexactly(length)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), DEADLINE_S)


def _parse(kind: type[Message], data: bytes) -> Any:
    try:
        return kind.FromString(data)
    except DecodeError:
        return None


def _times(parsed: Any) -> list[int]:
    if parsed is None:
        return []
    if isinstance(parsed, list):
        return [t for m in parsed if m is not None for t in times_in(m)]
    return times_in(parsed)


def column_items(m: pb.AdmitColumnsRequest) -> list[pb.AdmitRequest | None]:
    """Item i of a columns request as an AdmitRequest (None where a column has no entry
    or an index is out of range: the item cannot be read)."""
    items: list[pb.AdmitRequest | None] = []
    n = len(m.recipients)
    for i in range(n):
        try:
            s = m.senders[m.sender_index[i]]
            ti = m.template_index[i] if len(m.template_index) else 0
            tpl = m.templates[ti - 1] if ti else ""
            kind, cat = m.kinds[i], m.categories[i]
        except IndexError:
            items.append(None)
            continue
        items.append(
            pb.AdmitRequest(
                sender_id=s,
                recipient=m.recipients[i],
                kind=kind,  # type: ignore[arg-type]
                category=cat,  # type: ignore[arg-type]
                template_id=tpl,
                idempotency_key=m.idempotency_keys[i] if len(m.idempotency_keys) == n else "",
                at_unix_ms=m.at_unix_ms[i] if len(m.at_unix_ms) == n else 0,
                dry_run=m.dry_run,
            )
        )
    return items


# --- valid traffic -----------------------------------------------------------------------


async def valid_step(session: Session, step: tuple[Any, ...]) -> None:
    """A request the model knows to be valid, so that there is state to damage."""
    kind = step[0]
    model = session.model
    base = max(T0, model.lower)

    def at(dt: int) -> int:  # the step's time, never past the largest a request may carry
        return min(base + dt, MAX_AT_UNIX_MS)

    if kind == "burst":
        _, sid, n, category, start = step
        for i in range(n):
            r = pb.AdmitRequest(
                sender_id=sid,
                recipient=RECIPIENTS[(start + i) % len(RECIPIENTS)],
                kind=pb.TEMPLATE,
                category=category,
                template_id=TEMPLATE_OK,
                at_unix_ms=base,
            )
            lower = model.now_lower()
            reply = await session.ok("Admit", r)
            model.seen_time(base, True)
            session.snapshot = None
            session.check_admit(r, reply, lower)  # type: ignore[arg-type]
    elif kind == "admit":
        _, req, dt = step
        r = pb.AdmitRequest()
        r.CopyFrom(req)
        r.at_unix_ms = at(dt) if dt >= 0 else 0
        if r.idempotency_key and session._bound_elsewhere(r, {}):
            r.idempotency_key = session._fresh_key()
        lower = model.now_lower()
        reply = await session.ok("Admit", r)
        model.seen_time(r.at_unix_ms, True)
        session.snapshot = None
        session.check_admit(r, reply, lower)  # type: ignore[arg-type]
    elif kind == "inbound":
        _, sid, recipient, dt = step
        ev = pb.InboundMessage(sender_id=sid, recipient=recipient, at_unix_ms=at(dt))
        await session.ok("RecordFeedback", pb.RecordFeedbackRequest(inbound_message=ev))
        model.seen_time(at(dt), True)
        session.snapshot = None
    elif kind == "fail":
        _, n, code = step
        if not model.order:
            return
        ticket = model.order[n % len(model.order)]
        e = pb.SendResult(ticket=ticket, status=pb.FAILED, meta_error_code=code, at_unix_ms=base)
        reply = await session.ok("RecordFeedback", pb.RecordFeedbackRequest(send_result=e))
        session.snapshot = None
        await session._after_send_result(e, reply)  # type: ignore[arg-type]
    elif kind == "state":
        _, sid = step
        req = pb.GetSenderStateRequest(sender_id=sid)
        out = await session.unary("GetSenderState", req.SerializeToString())
        session.check_status("GetSenderState", out)
        if out.code == grpc.StatusCode.OK:
            await session._after_GetSenderState(req, out, 0, 0)
    else:
        raise ValueError(kind)


async def run_program(steps: Sequence[tuple[Any, ...]], clock: str, **overrides: Any) -> Session:
    """Run ``steps`` against a fresh sidecar; the session, for checks after it."""
    async with serving(fuzz_config(clock, **overrides)) as h:
        session = Session(h, clock)
        try:
            await session.start()
            await play(session, steps)
        finally:
            session.close()
        return session


async def play(session: Session, steps: Sequence[tuple[Any, ...]]) -> None:
    for step in steps:
        if step[0] == "fuzz":
            _, rpc, payload, raw = step
            await session.send(rpc, payload, raw=raw)
        else:
            await valid_step(session, step)
    session.snapshot = None
    await session.take_snapshot()
    await session.check_serving()
    internal = session.h.sidecar.metrics.internal_errors
    if any(internal.values()):
        fail(f"internal errors counted: {dict(internal)}")


async def restart_view(
    session: Session, at: dict[str, int] | None = None
) -> dict[str, tuple[Any, ...]]:
    """What a restart must keep: every sender the model knows (its state read at
    ``at[sender]``, with the request clock) and a dry-run probe of each scope."""
    view: dict[str, tuple[Any, ...]] = {}
    for sid in sorted(session.model.known):
        when = at.get(sid, 0) if at is not None else 0
        request = pb.GetSenderStateRequest(sender_id=sid, at_unix_ms=when)
        out = await session.unary("GetSenderState", request.SerializeToString())
        if out.code != grpc.StatusCode.OK:
            fail(f"sender {sid!r}: {out.code.name} {out.details}")
        s = pb.SenderState.FromString(out.replies[0])
        view[sid] = state_view(s, session.request_clock)
    session.snapshot = None
    for sid, probe in (await session.take_snapshot()).probes.items():
        view["probe " + sid] = probe_view(probe, session.request_clock)
    return view


async def run_with_restart(steps: Sequence[tuple[Any, ...]], clock: str, data_dir: Path) -> None:
    """``steps`` on a sidecar with a data directory; then the sidecar is stopped and
    started again on it, and must hold the same state."""
    config = fuzz_config(clock, data_dir=data_dir, durability="write")
    async with serving(config) as h:
        session = Session(h, clock)
        try:
            await session.start()
            await play(session, steps)
            before = await restart_view(session)
        finally:
            session.close()
    at = {sid: v[-1] for sid, v in before.items() if not sid.startswith("probe ")}
    async with serving(config) as h:
        again = Session(h, clock)
        again.model = session.model
        try:
            after = await restart_view(again, at if again.request_clock else None)
        finally:
            again.close()
    for key, value in before.items():
        if after.get(key) != value:
            fail(f"after a restart, {key}:\n  before {value}\n  after  {after.get(key)}")
