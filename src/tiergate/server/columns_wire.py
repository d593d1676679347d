"""AdmitColumns on the wire: request bytes to columns, columns to response bytes.

The server serves AdmitColumns with these instead of protobuf message objects:
the compiled reader (``tiergate._native.columns``, with the compiled engine)
fills arrays straight from the request's packed fields, and the writer
produces the response bytes from the result's columns. Both give exactly
what protobuf gives (tests/server/test_columns_wire.py compares them);
protobuf itself is the pure-Python path, and the fallback for any request the
compiled reader leaves to it (malformed data, unusual encodings).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from tiergate.engine.columns import kernels
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.service import InvalidArgument
from tiergate.server import convert
from tiergate.v1 import admission_pb2 as pb

__all__ = ["WireColumns", "decode_request", "encode_response"]

_COMPILED = hasattr(kernels, "decode_request")


@dataclass(slots=True)
class WireColumns:
    """An AdmitColumnsRequest as plain columns (``policy.columnar.ColumnsLike``)."""

    senders: list[str]
    sender_index: array[int]
    recipients: list[str]
    kinds: bytes
    categories: bytes
    templates: list[str]
    template_index: array[int]
    idempotency_keys: list[str]
    at_unix_ms: array[int]
    dry_run: bool


def decode_request(data: bytes) -> WireColumns:
    """The columns of an AdmitColumnsRequest; InvalidArgument when it is not one."""
    if _COMPILED:
        parts = kernels.decode_request(data)
        if parts is not None:
            return WireColumns(*parts)
    return protobuf_decode(data)


def protobuf_decode(data: bytes) -> WireColumns:
    try:
        m = pb.AdmitColumnsRequest.FromString(data)
    except DecodeError as e:
        raise InvalidArgument("request", f"request: not an AdmitColumnsRequest ({e})") from None
    return WireColumns(
        senders=list(m.senders),
        sender_index=array("I", m.sender_index[:]),
        recipients=list(m.recipients),
        kinds=m.kinds,
        categories=m.categories,
        templates=list(m.templates),
        template_index=array("I", m.template_index[:]),
        idempotency_keys=list(m.idempotency_keys),
        at_unix_ms=array("q", m.at_unix_ms[:]),
        dry_run=m.dry_run,
    )


def encode_response(result: ColumnsResult) -> bytes:
    """The AdmitColumnsResponse bytes for ``result``."""
    if _COMPILED:
        data: bytes = kernels.encode_response(
            result.decisions,
            result.reasons,
            result.counted,
            result.retry_at_unix_ms,
            result.limit,
            result.used,
            result.meta_error_code,
            result.tickets,
        )
        return data
    return protobuf_encode(result)


def protobuf_encode(result: ColumnsResult) -> bytes:
    return convert.admit_columns_response(result).SerializeToString()
