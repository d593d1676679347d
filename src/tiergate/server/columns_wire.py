"""AdmitColumns on the wire: request bytes to columns, columns to response bytes.

The server serves AdmitColumns with these instead of protobuf message objects:
the compiled reader (``tiergate._native.wire``, with the compiled engine)
fills arrays straight from the request's packed fields, and the writer
produces the response bytes from the result's columns. Both give exactly
what protobuf gives (tests/server/test_columns_wire.py compares them);
protobuf itself is the pure-Python path, and the fallback for any request the
compiled reader leaves to it (malformed data, unusual encodings).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from google.protobuf.message import DecodeError

from tiergate.engine import native_module
from tiergate.policy.columnar import ColumnsResult
from tiergate.policy.requests import InvalidArgument
from tiergate.server import convert
from tiergate.server.wire_scan import count_items
from tiergate.v1 import admission_pb2 as pb

if TYPE_CHECKING:
    from tiergate._native.wire import ReadColumns

__all__ = ["WireColumns", "WireRecipients", "decode_request", "encode_response"]

#: The compiled wire codec (``tiergate._native.wire``), or None.
codec: Any = native_module("wire")
_COMPILED = codec is not None


class WireRecipients(Sequence[str]):
    """The recipients of a request, read off the wire as keys: each string is made
    only when asked for (an error message, the general admit path)."""

    __slots__ = ("_data", "_spans")

    def __init__(self, data: bytes, spans: array[int]) -> None:
        self._data = data
        self._spans = spans  # start and end offset in data, per recipient

    def __len__(self) -> int:
        return len(self._spans) // 2

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("recipient index out of range")
        return self._data[self._spans[2 * i] : self._spans[2 * i + 1]].decode("ascii")


@dataclass(slots=True)
class WireColumns:
    """An AdmitColumnsRequest as plain columns (``policy.columnar.ColumnsLike``).

    ``recipient_keys``, when set, holds every recipient's key (all of them E.164
    numbers or business-scoped user IDs) and ``recipients`` makes their strings only on demand.
    """

    senders: list[str]
    sender_index: array[int]
    recipients: Sequence[str]
    kinds: bytes
    categories: bytes
    templates: list[str]
    template_index: array[int]
    idempotency_keys: list[str]
    at_unix_ms: array[int]
    dry_run: bool
    recipient_keys: array[int] | None = None

    @classmethod
    def from_reader(cls, read: ReadColumns, recipients: Sequence[str]) -> WireColumns:
        """The columns the compiled reader read (``decode_request``, ``decode_batch``)."""
        # The reader's fields in the same order, ``recipients`` made, without
        # ``recipient_spans`` (which a WireRecipients reads).
        return cls(read.senders, read.sender_index, recipients, *read[3:11])


#: AdmitColumnsRequest.recipients (field 3): one item per occurrence.
_RECIPIENTS = {3: False}


def check_columns(data: bytes, max_items: int) -> None:
    """InvalidArgument naming ``recipients`` when the AdmitColumnsRequest ``data`` has
    more than ``max_items`` items, counted without parsing it. (The other columns
    are checked against the recipients once parsed; what protobuf builds for them
    is in proportion to their bytes, which the server's message size limit bounds.)"""
    n = count_items(data, _RECIPIENTS)[3]
    if n > max_items:
        raise InvalidArgument(
            "recipients", f"recipients: at most {max_items} items per call, got {n}"
        )


def decode_request(data: bytes, max_items: int | None = None) -> WireColumns:
    """The columns of an AdmitColumnsRequest; InvalidArgument when it is not one, or
    (with ``max_items``) when a column holds more items than that, checked before
    protobuf parses it."""
    if _COMPILED:
        read: ReadColumns | None = codec.decode_request(data)
        if read is not None:
            recipients: Sequence[str] | None = read.recipients
            if recipients is None:
                assert read.recipient_keys is not None and read.recipient_spans is not None
                recipients = WireRecipients(data, read.recipient_spans)
            return WireColumns.from_reader(read, recipients)
    if max_items is not None:
        check_columns(data, max_items)
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
        data: bytes = codec.encode_response(result.answer_columns())
        if result.shadows:
            data += convert.shadow_columns(result).SerializeToString()
        return data
    return protobuf_encode(result)


def protobuf_encode(result: ColumnsResult) -> bytes:
    return convert.admit_columns_response(result).SerializeToString()
