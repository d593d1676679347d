"""The answers to a batch decided as columns (``columnar``): one column per field."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from tiergate.engine import records as rec
from tiergate.engine.constants import (
    ADMIT,
    MARKETING_FREQUENCY,
    OK,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    UNKNOWN_SENDER,
)
from tiergate.engine.results import AnswerColumns

from .answers import (
    BACK_OFF_DETAIL,
    DETAIL,
    DRY_RUN_DETAIL,
    UNAVAILABLE_DETAIL,
    AdmitResult,
    template_detail,
    unknown_sender_detail,
)

__all__ = ["ColumnsResult"]

Remembered = rec.Entry

_NO_SHADOW = (0, 0, 0)
#: Zero-filled columns of each type, made by repetition (``_Q * n``).
_Q, _I32 = array("q", [0]), array("i", [0])


@dataclass(slots=True)
class ColumnsResult:
    """Per-item answers in request order (the fields of ``AdmitResult`` but ``detail``)."""

    decisions: bytearray
    reasons: bytearray
    counted: bytearray
    retry_at_unix_ms: array[int]
    limit: array[int]
    used: array[int]
    meta_error_code: array[int]
    tickets: list[str] = field(default_factory=list)
    #: Items held by a 131049 back-off: MARKETING_FREQUENCY because Meta declined
    #: marketing to the recipient, not because of the frequency cap.
    back_offs: set[int] = field(default_factory=set)
    #: Shadow mode: admitted items a shadowed rule refused, with what tiergate would
    #: have answered (decision, reason, retry_at).
    shadows: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    #: Items answered RETRY_LATER because the shared store could not be reached.
    unavailable: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.decisions)

    def answer_columns(self) -> AnswerColumns:
        """The answers, in the columns the compiled response writers take."""
        return AnswerColumns(
            self.decisions,
            self.reasons,
            self.counted,
            self.retry_at_unix_ms,
            self.limit,
            self.used,
            self.meta_error_code,
            self.tickets,
        )

    @classmethod
    def empty(cls, n: int) -> ColumnsResult:
        return cls(
            bytearray(n),
            bytearray(n),
            bytearray(n),
            _Q * n,
            _Q * n,
            _Q * n,
            _I32 * n,
            [""] * n,
        )

    def put(self, start: int, part: ColumnsResult) -> None:
        """The answers of a part of the batch, from item ``start`` on."""
        end = start + len(part)
        self.decisions[start:end] = part.decisions
        self.reasons[start:end] = part.reasons
        self.counted[start:end] = part.counted
        self.retry_at_unix_ms[start:end] = part.retry_at_unix_ms
        self.limit[start:end] = part.limit
        self.used[start:end] = part.used
        self.meta_error_code[start:end] = part.meta_error_code
        self.tickets[start:end] = part.tickets
        self.back_offs.update(start + i for i in part.back_offs)
        if part.shadows:
            self.shadows.update((start + i, w) for i, w in part.shadows.items())
        self.unavailable.update(start + i for i in part.unavailable)

    def shadow_columns(self) -> tuple[bytearray, bytearray, array[int]]:
        """(shadow decisions, reasons, retry_at) per item: 0 where the answer stands."""
        n = len(self.decisions)
        decisions, reasons, retry_at = bytearray(n), bytearray(n), _Q * n
        for i, (d, r, t) in self.shadows.items():
            decisions[i], reasons[i], retry_at[i] = d, r, t
        return decisions, reasons, retry_at

    def admitted(self, i: int, first: Remembered) -> None:
        """Item ``i`` answered by its key's first answer (an admit)."""
        self.decisions[i] = ADMIT
        self.reasons[i] = OK
        self.retry_at_unix_ms[i] = 0
        self.tickets[i] = first[0]
        self.counted[i] = 1 if first[1] else 0
        self.limit[i] = first[2]
        self.used[i] = first[3]
        self.meta_error_code[i] = 0

    def detail(self, i: int, sender_id: str, template_id: str) -> str:
        """Item ``i``'s detail, for a request from ``sender_id`` with ``template_id``."""
        reason = self.reasons[i]
        if reason == UNKNOWN_SENDER:
            return unknown_sender_detail(sender_id)
        if reason in (TEMPLATE_PAUSED, TEMPLATE_DISABLED):
            return template_detail(reason, self.meta_error_code[i], template_id)
        if reason == MARKETING_FREQUENCY and i in self.back_offs:
            return BACK_OFF_DETAIL
        if i in self.unavailable:
            return UNAVAILABLE_DETAIL
        if self.decisions[i] == ADMIT and not self.tickets[i]:
            return DRY_RUN_DETAIL
        return DETAIL[reason]

    def result(self, i: int, sender_id: str, template_id: str) -> AdmitResult:
        """Item ``i`` as an :class:`AdmitResult`."""
        return AdmitResult(
            self.decisions[i],
            self.reasons[i],
            self.retry_at_unix_ms[i],
            self.tickets[i],
            self.counted[i] == 1,
            self.limit[i],
            self.used[i],
            self.meta_error_code[i],
            self.detail(i, sender_id, template_id),
            *self.shadows.get(i, _NO_SHADOW),
        )

    def item(self, i: int) -> tuple[int, int, int, str, bool, int, int, int]:
        """Item ``i`` as (decision, reason, retry_at, ticket, counted, limit, used, meta
        code): its :meth:`result` but the detail."""
        r = self.result(i, "", "")
        return (
            r.decision,
            r.reason,
            r.retry_at_unix_ms,
            r.ticket,
            r.counted,
            r.limit,
            r.used,
            r.meta_error_code,
        )
