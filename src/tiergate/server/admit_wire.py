"""Admit (unary) on the wire: request bytes to checked fields, an answer to bytes.

With the compiled engine the server serves Admit with these instead of
protobuf message objects: the compiled reader (``tiergate._native.wire``)
takes a well-formed AdmitRequest's fields straight from its bytes, as
``AdmissionService`` checks them, and the writer produces the AdmitResponse
bytes from the answer. Both give exactly what protobuf gives
(tests/server/test_admit_wire.py compares them). Anything the reader does not
take (malformed data, text that is not ASCII, a request that fails a check)
is parsed by protobuf and goes the general way, where a bad field is named.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from tiergate.engine import native_module
from tiergate.policy.answers import AdmitResult
from tiergate.policy.requests import (
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_TEMPLATE_LEN,
    Checked,
    InvalidArgument,
)
from tiergate.server import convert
from tiergate.v1 import admission_pb2 as pb

__all__ = ["COMPILED", "decode_fast", "encode_response", "parse"]

#: The compiled wire codec (``tiergate._native.wire``), or None.
codec: Any = native_module("wire")
#: The wire reader and writer exist (compiled engine); else the server uses protobuf.
COMPILED = codec is not None


def decode_fast(data: bytes) -> Checked | None:
    """The checked fields of a well-formed AdmitRequest (an ``AdmitFields``, named);
    None: use :func:`parse`."""
    if not COMPILED:
        return None
    fields: Checked | None = codec.decode_admit(data, MAX_ID_LEN, MAX_TEMPLATE_LEN, MAX_KEY_LEN)
    return fields


def parse(data: bytes) -> pb.AdmitRequest:
    """The AdmitRequest message of ``data``; InvalidArgument when it is not one."""
    try:
        return pb.AdmitRequest.FromString(data)
    except DecodeError as e:
        raise InvalidArgument("request", f"request: not an AdmitRequest ({e})") from None


def encode_response(result: AdmitResult) -> bytes:
    """The AdmitResponse bytes for ``result``."""
    if COMPILED:
        data: bytes = codec.encode_admit(
            result.decision,
            result.reason,
            result.retry_at_unix_ms,
            result.ticket,
            result.counted,
            result.limit,
            result.used,
            result.meta_error_code,
            result.detail,
        )
        if result.shadow_decision:
            data += convert.shadow_fields(result).SerializeToString()
        return data
    return convert.admit_response(result).SerializeToString()
