"""Typed stub of the compiled wire codec (``ext/tiergate/_native/wire.pyx``).

Its twin is protobuf itself: ``tiergate.server.admit_wire``, ``batch_wire`` and
``columns_wire`` use it with the compiled engine.
"""

from array import array
from collections.abc import Callable

def decode_request(
    data: bytes,
) -> (
    tuple[
        list[str],
        array[int],
        list[str] | None,
        bytes,
        bytes,
        list[str],
        array[int],
        list[str],
        array[int],
        bool,
        array[int] | None,
        array[int] | None,
    ]
    | None
): ...
def encode_response(
    decisions: bytes | bytearray,
    reasons: bytes | bytearray,
    counted: bytes | bytearray,
    retry_at: array[int],
    limit: array[int],
    used: array[int],
    meta: array[int],
    tickets: list[str],
) -> bytes: ...
def decode_admit(
    data: bytes, max_id: int, max_template: int, max_key: int
) -> tuple[str, int, int, int, str, str, int, bool] | None: ...
def count_requests(data: bytes) -> int: ...
def decode_batch(
    data: bytes, max_id: int, max_template: int, max_key: int, max_at: int
) -> (
    tuple[
        list[str],
        array[int],
        None,
        bytes,
        bytes,
        list[str],
        array[int],
        list[str],
        array[int],
        bool,
        array[int],
        array[int],
    ]
    | None
): ...
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
    decisions: bytes | bytearray,
    reasons: bytes | bytearray,
    counted: bytes | bytearray,
    retry_at: array[int],
    limit: array[int],
    used: array[int],
    meta: array[int],
    tickets: list[str],
    details: tuple[str | None, ...],
    special: Callable[[int], str],
) -> bytes: ...
