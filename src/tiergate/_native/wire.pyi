"""Typed stub of the compiled wire codec (``ext/tiergate/_native/wire.pyx``).

Its twin is protobuf itself: ``tiergate.server.admit_wire``, ``batch_wire`` and
``columns_wire`` use it with the compiled engine.
"""

from array import array
from collections.abc import Callable
from typing import NamedTuple

from tiergate.engine.results import AnswerColumns

class ReadColumns(NamedTuple):
    """A read AdmitColumnsRequest (or AdmitBatchRequest, as columns)."""

    senders: list[str]
    sender_index: array[int]
    recipients: list[str] | None
    kinds: bytes
    categories: bytes
    templates: list[str]
    template_index: array[int]
    idempotency_keys: list[str]
    at_unix_ms: array[int]
    dry_run: bool
    recipient_keys: array[int] | None
    recipient_spans: array[int] | None

class AdmitFields(NamedTuple):
    """A well-formed AdmitRequest's fields (a ``tiergate.policy.service.Checked``)."""

    sender_id: str
    recipient_key: int
    kind: int
    category: int
    template_id: str
    idempotency_key: str
    at_unix_ms: int
    dry_run: bool

def decode_request(data: bytes) -> ReadColumns | None: ...
def encode_response(answers: AnswerColumns) -> bytes: ...
def decode_admit(
    data: bytes, max_id: int, max_template: int, max_key: int
) -> AdmitFields | None: ...
def count_requests(data: bytes) -> int: ...
def decode_batch(
    data: bytes, max_id: int, max_template: int, max_key: int, max_at: int
) -> ReadColumns | None: ...
def encode_admit(
    decision: int,
    reason: int,
    retry_at: int,
    ticket: str,
    counted: bool,
    limit: int,
    used: int,
    meta: int,
    detail: str,
) -> bytes: ...
def encode_batch_response(
    answers: AnswerColumns, details: tuple[str | None, ...], special: Callable[[int], str]
) -> bytes: ...
