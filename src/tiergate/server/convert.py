"""Translation between the ``tiergate.v1`` protobuf messages and the policy layer.

Decision, reason and every other enum share their numbers with the policy
layer, so translation is a copy. Feedback requests become the event
dataclasses of :mod:`tiergate.policy.events`; an enum value outside its range
or a missing required part raises :class:`InvalidArgument` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, TypeVar

from google.protobuf.message import Message

from tiergate.engine.constants import MAX_RECIPIENT_TEXT, recipient_key
from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.reports import PausedTemplateReport, SenderReport, UpgradeReport
from tiergate.policy.requests import InvalidArgument
from tiergate.v1 import admission_pb2 as pb

_E = TypeVar("_E", bound=enum.IntEnum)


def admit_response(result: AdmitResult) -> pb.AdmitResponse:
    # One per decision: set field by field (about 0.7 us, against 1.3 us with
    # keyword arguments and enum ValueType calls); the enums share their numbers.
    reply = pb.AdmitResponse()
    reply.decision = result.decision  # type: ignore[assignment]
    reply.reason = result.reason  # type: ignore[assignment]
    reply.retry_at_unix_ms = result.retry_at_unix_ms
    reply.ticket = result.ticket
    reply.counted = result.counted
    reply.limit = result.limit
    reply.used = result.used
    reply.meta_error_code = result.meta_error_code
    reply.detail = result.detail
    if result.shadow_decision:
        reply.MergeFrom(shadow_fields(result))
    return reply


def shadow_fields(result: AdmitResult) -> pb.AdmitResponse:
    """An AdmitResponse holding only ``result``'s shadow fields: its bytes appended to
    another AdmitResponse's add them (the fields come after every other)."""
    return pb.AdmitResponse(
        shadow_decision=pb.Decision.ValueType(result.shadow_decision),
        shadow_reason=pb.Reason.ValueType(result.shadow_reason),
        shadow_retry_at_unix_ms=result.shadow_retry_at_unix_ms,
    )


def shadow_columns(result: ColumnsResult) -> pb.AdmitColumnsResponse:
    """An AdmitColumnsResponse holding only the shadow columns of ``result`` (which
    has shadowed items): its bytes appended to another's add them."""
    decisions, reasons, retry_at = result.shadow_columns()
    reply = pb.AdmitColumnsResponse(
        shadow_decisions=bytes(decisions), shadow_reasons=bytes(reasons)
    )
    reply.shadow_retry_at_unix_ms.extend(retry_at.tolist())
    return reply


def admit_columns_response(result: ColumnsResult) -> pb.AdmitColumnsResponse:
    reply = pb.AdmitColumnsResponse(
        decisions=bytes(result.decisions),
        reasons=bytes(result.reasons),
        counted=bytes(result.counted),
    )
    # Extending from lists is the cheapest way into protobuf's packed fields.
    reply.retry_at_unix_ms.extend(result.retry_at_unix_ms.tolist())
    reply.limit.extend(result.limit.tolist())
    reply.used.extend(result.used.tolist())
    reply.meta_error_code.extend(result.meta_error_code.tolist())
    reply.tickets.extend(result.tickets)
    if result.shadows:
        reply.MergeFrom(shadow_columns(result))
    return reply


def _enum(field: str, value: int, kind: type[_E], *, required: bool = False) -> _E:
    try:
        member = kind(value)
    except ValueError:
        raise InvalidArgument(field, f"{field}: unknown value {value}") from None
    if required and member.value == 0:
        raise InvalidArgument(field, f"{field}: is required")
    return member


def _required(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, f"{field}: is required")
    return value


def _copied(source: object, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` of ``source``, for a record whose fields have the same names."""
    return {name: getattr(source, name) for name in names}


def _if_set(message: Message, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` of ``message``, ``None`` for each one it does not set."""
    return {name: getattr(message, name) if message.HasField(name) else None for name in names}


FEEDBACK_EVENTS = ("inbound_message", "send_result", "opt_out", "sender_update", "template_update")

# The last millisecond of 9999-12-31 UTC: no Meta time or request clock is later.
MAX_AT_UNIX_MS = 253_402_300_799_999

# Longest accepted value of each string field of a feedback event (sizes are
# bounded at the edge so no request can grow tiergate's state without limit).
TEXT_LIMITS = {
    "sender_id": 128,
    "portfolio_id": 128,
    "waba_id": 128,
    "ticket": 128,
    "idempotency_key": 256,
    "message_id": 256,
    "template_id": 512,
    "template_name": 512,
    "display_phone_number": 32,
    "tier": 32,
    "recipient": MAX_RECIPIENT_TEXT,
}


def _same_names(message: type[Message], record: type, *special: str) -> tuple[str, ...]:
    """The fields ``message`` and the dataclass ``record`` both have, but ``special``:
    the ones that go across as they are."""
    ours = {f.name for f in dataclasses.fields(record)}
    return tuple(
        f.name for f in message.DESCRIPTOR.fields if f.name in ours and f.name not in special
    )


_SEND_RESULT_COPIED = _same_names(pb.SendResult, ev.SendResult, "status")
_OPT_OUT_COPIED = _same_names(pb.OptOut, ev.OptOut, "recipient")
_TEMPLATE_UPDATE_COPIED = _same_names(pb.TemplateUpdate, ev.TemplateUpdate, "template_id", "status")
# A SenderUpdate's optional fields (None: unchanged).
_SENDER_UPDATE_OPTIONAL = _same_names(
    pb.SenderUpdate, ev.SenderUpdate, "sender_id", "quality", "status", "at_unix_ms"
)
_SENDER_STATE_COPIED = _same_names(
    pb.SenderState,
    SenderReport,
    "upgrade",
    "quality",
    "status",
    "paused_templates",
    "decision_counts",
)
_UPGRADE_COPIED = _same_names(pb.UpgradeState, UpgradeReport)
_PAUSED_TEMPLATE_COPIED = _same_names(pb.PausedTemplate, PausedTemplateReport)


def _check_fields(prefix: str, message: Message) -> None:
    """Sizes, non-negative times and counts, recipients (E.164 numbers or
    business-scoped user IDs); the field is named."""
    for fd, value in message.ListFields():
        field = f"{prefix}.{fd.name}"
        if isinstance(value, str):
            limit = TEXT_LIMITS.get(fd.name, 512)
            if len(value) > limit:
                raise InvalidArgument(field, f"{field}: longer than {limit} characters")
            if fd.name == "recipient" and value:
                try:
                    recipient_key(value)
                except ValueError as e:
                    raise InvalidArgument(field, f"{field}: {e}") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            if value < 0 and (fd.name.endswith("_unix_ms") or fd.name == "throughput_mps"):
                raise InvalidArgument(field, f"{field}: must be >= 0")
            if value > MAX_AT_UNIX_MS and fd.name.endswith("_unix_ms"):
                raise InvalidArgument(field, f"{field}: after {MAX_AT_UNIX_MS}")


def feedback_event(request: pb.RecordFeedbackRequest) -> ev.Event:
    """The policy event a RecordFeedback request carries."""
    which = request.WhichOneof("event")
    if which is not None:
        _check_fields(which, getattr(request, which))
    if which == "inbound_message":
        m = request.inbound_message
        entry = _enum("inbound_message.entry_point", m.entry_point, ev.EntryPoint)
        return ev.InboundMessage(
            sender_id=_required("inbound_message.sender_id", m.sender_id),
            recipient=_required("inbound_message.recipient", m.recipient),
            at_unix_ms=m.at_unix_ms,
            entry_point=entry if entry else ev.EntryPoint.ORGANIC,
            message_id=m.message_id,
        )
    if which == "send_result":
        s = request.send_result
        if not s.ticket and not (s.sender_id and s.recipient and s.idempotency_key):
            raise InvalidArgument(
                "send_result.ticket",
                "send_result.ticket: is required (or sender_id, recipient and idempotency_key)",
            )
        return ev.SendResult(
            status=_enum("send_result.status", s.status, ev.SendStatus, required=True),
            **_copied(s, _SEND_RESULT_COPIED),
        )
    if which == "opt_out":
        o = request.opt_out
        if not o.portfolio_id and not o.sender_id:
            raise InvalidArgument(
                "opt_out.portfolio_id", "opt_out.portfolio_id: one of portfolio_id or sender_id"
            )
        return ev.OptOut(
            recipient=_required("opt_out.recipient", o.recipient), **_copied(o, _OPT_OUT_COPIED)
        )
    if which == "sender_update":
        return sender_update(request.sender_update)
    if which == "template_update":
        t = request.template_update
        return ev.TemplateUpdate(
            template_id=_required("template_update.template_id", t.template_id),
            status=_enum("template_update.status", t.status, ev.TemplateStatus, required=True),
            **_copied(t, _TEMPLATE_UPDATE_COPIED),
        )
    raise InvalidArgument("event", f"event: set one of {', '.join(FEEDBACK_EVENTS)}")


def sender_update(u: pb.SenderUpdate) -> ev.SenderUpdate:
    f = "sender_update."
    return ev.SenderUpdate(
        sender_id=_required(f + "sender_id", u.sender_id),
        quality=(
            _enum(f + "quality", u.quality, ev.Quality, required=True)
            if u.HasField("quality")
            else None
        ),
        status=(
            _enum(f + "status", u.status, ev.SenderStatus, required=True)
            if u.HasField("status")
            else None
        ),
        at_unix_ms=u.at_unix_ms,
        **_if_set(u, _SENDER_UPDATE_OPTIONAL),
    )


def sender_state(report: SenderReport) -> pb.SenderState:
    return pb.SenderState(
        upgrade=pb.UpgradeState(**_copied(report.upgrade, _UPGRADE_COPIED)),
        quality=pb.Quality.ValueType(report.quality),
        status=pb.SenderStatus.ValueType(report.status),
        paused_templates=[
            pb.PausedTemplate(**_copied(t, _PAUSED_TEMPLATE_COPIED))
            for t in report.paused_templates
        ],
        decision_counts=[
            pb.ReasonCount(reason=pb.Reason.ValueType(reason), count=count)
            for reason, count in sorted(report.decision_counts.items())
            if count
        ],
        **_copied(report, _SENDER_STATE_COPIED),
    )
