"""AdmitBatch on the wire: request bytes to columns, columns to response bytes.

With the compiled engine the server serves AdmitBatch without a protobuf
message object per item: the compiled reader (``tiergate._native.wire``)
reads every AdmitRequest of the batch, as ``AdmissionService`` checks them,
into the columns AdmitColumns decides (``policy.columnar``), and the writer
produces the AdmitBatchResponse bytes, one AdmitResponse per item, from the
answer's columns. Answers, journal records, counts and errors are those of the
message path (tests/server/test_batch_wire.py compares the two).

A batch the reader does not take goes the message way: malformed data, text
that is not ASCII, a request that fails a check (the policy layer then names
the field, e.g. ``requests[3].recipient``), requests whose ``dry_run``
differ, an empty batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from tiergate.engine import native_module
from tiergate.engine.constants import (
    MARKETING_FREQUENCY,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    UNKNOWN_SENDER,
)
from tiergate.policy.answers import (
    DETAIL,
)
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.requests import MAX_ID_LEN, MAX_KEY_LEN, MAX_TEMPLATE_LEN, InvalidArgument
from tiergate.server import convert
from tiergate.server.columns_wire import WireColumns, WireRecipients
from tiergate.server.convert import MAX_AT_UNIX_MS
from tiergate.server.wire_scan import count_items
from tiergate.v1 import admission_pb2 as pb

if TYPE_CHECKING:
    from tiergate._native.wire import ReadColumns

__all__ = [
    "COMPILED",
    "count_requests",
    "decode_fast",
    "encode_response",
    "parse",
    "requests_before_parse",
]

#: The compiled wire codec (``tiergate._native.wire``), or None.
codec: Any = native_module("wire")
#: The wire reader and writer exist (compiled engine); else AdmitBatch uses protobuf.
COMPILED = codec is not None

#: Each reason's detail; None where the answer's own fields choose it (``special``
#: in :func:`encode_response`).
_DETAILS: tuple[str | None, ...] = tuple(
    None if r in (TEMPLATE_PAUSED, TEMPLATE_DISABLED, MARKETING_FREQUENCY, UNKNOWN_SENDER) else d
    for r, d in enumerate(DETAIL)
)


def count_requests(data: bytes) -> int:
    """How many requests ``data`` holds, counted without decoding them (so an oversized
    batch is refused before protobuf builds its messages); -1 when unknown."""
    if not COMPILED:
        return -1
    n: int = codec.count_requests(data)
    return n


#: AdmitBatchRequest.requests: one item per occurrence.
_REQUESTS = {1: False}


def requests_before_parse(data: bytes) -> int:
    """How many requests ``data`` holds, counted before protobuf parses it: exactly
    for a well-formed batch, else at least as many as protobuf would build."""
    n = count_requests(data)
    if n >= 0:
        return n
    return count_items(data, _REQUESTS)[1]


def decode_fast(data: bytes) -> WireColumns | None:
    """The columns of a batch of well-formed requests sharing one ``dry_run``;
    None: use :func:`parse` and the message path."""
    if not COMPILED:
        return None
    read: ReadColumns | None = codec.decode_batch(
        data, MAX_ID_LEN, MAX_TEMPLATE_LEN, MAX_KEY_LEN, MAX_AT_UNIX_MS
    )
    if read is None:
        return None
    assert read.recipient_spans is not None
    return WireColumns.from_reader(read, WireRecipients(data, read.recipient_spans))


def parse(data: bytes) -> pb.AdmitBatchRequest:
    """The AdmitBatchRequest message of ``data``; InvalidArgument when it is not one."""
    try:
        return pb.AdmitBatchRequest.FromString(data)
    except DecodeError as e:
        raise InvalidArgument("request", f"request: not an AdmitBatchRequest ({e})") from None


def encode_response(cols: WireColumns, result: ColumnsResult) -> bytes:
    """The AdmitBatchResponse bytes for the answers ``result`` gives to ``cols``."""
    senders, sender_index = cols.senders, cols.sender_index
    templates, template_index = cols.templates, cols.template_index
    if result.shadows or result.unavailable:
        # shadow mode: the writer has no shadow fields, protobuf has; the shared store
        # unavailable: the details say so (rare, not worth a writer of their own)
        reply = pb.AdmitBatchResponse()
        for i in range(len(result)):
            t = template_index[i]
            answer = result.result(i, senders[sender_index[i]], templates[t - 1] if t else "")
            reply.responses.append(convert.admit_response(answer))
        return reply.SerializeToString()

    def special(i: int) -> str:
        # The details that name the request's sender or template, that tell a
        # marketing back-off from the frequency cap, or a dry run from an admit.
        t = template_index[i]
        return result.detail(i, senders[sender_index[i]], templates[t - 1] if t else "")

    data: bytes = codec.encode_batch_response(result.answer_columns(), _DETAILS, special)
    return data
