"""Typed stub of the compiled columnar kernels (``ext/tiergate/_native/columns.pyx``).

Same functions, arguments and results as :mod:`tiergate.engine.columns`.
"""

from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any

from tiergate.engine.batch import DecisionBatch
from tiergate.engine.results import BadItem, Finished, KeyCheck, Prepared

REASONS: int
BAD_SENDER_INDEX: int
BAD_KIND: int
BAD_CATEGORY: int
NO_CATEGORY: int
BAD_TEMPLATE_INDEX: int
NO_TEMPLATE: int
LAYOUT: tuple[int, int, int, int, int, int, int, int, int]

def check_items(
    n: int,
    sender_index: array[int],
    n_senders: int,
    kinds: bytes,
    categories: bytes,
    template_index: array[int],
    n_templates: int,
) -> BadItem: ...
def encode_recipients(recipients: list[str], out: array[int]) -> int: ...
def undeliverable(rkey: int, category: int, region: array[int], lengths: bytes) -> bool: ...
def prepare(
    n: int,
    sender_index: array[int],
    kinds: bytes,
    categories: bytes,
    template_index: array[int],
    at: array[int],
    rkeys: array[int],
    now_ms: int,
    request_clock: bool,
    dry: bool,
    ticket_base: int,
    s_state: bytes | bytearray,
    s_slot: array[int],
    s_scope: array[int],
    s_number: array[int],
    s_limits: array[int],
    s_flags: array[int],
    last_now: array[int],
    t_state: bytes | bytearray,
    t_paused: array[int],
    meta_error: array[int],
    meta_missing: int,
    region: array[int],
    region_lengths: bytes,
    eco: dict[tuple[int, int], int],
    skip: bytes | bytearray,
    batch: DecisionBatch,
    rows: array[int],
    row_eco: array[int],
    decisions: bytearray,
    reasons: bytearray,
    retry_at: array[int],
    limits: array[int],
    meta: array[int],
    counts: array[int],
) -> Prepared: ...
def finish(
    batch: DecisionBatch,
    rows: array[int],
    row_eco: array[int],
    sender_index: array[int],
    s_restricted: array[int],
    s_qblock: bytes | bytearray,
    meta_error: array[int],
    decisions: bytearray,
    reasons: bytearray,
    counted: bytearray,
    retry_at: array[int],
    limits: array[int],
    used: array[int],
    meta: array[int],
    tickets: list[str],
    keys: list[str],
    kinds: bytes,
    categories: bytes,
    template_index: array[int],
    templates: list[str],
    k0: int,
    k1: int,
    journal: list[bytes] | None,
    counts: array[int],
    counted_rows: array[int],
) -> Finished: ...
def repeated_keys(
    keys: list[str],
    sender_index: array[int],
    senders: list[str],
    idems: list[dict[str, Any] | None],
    rkeys: array[int],
    kinds: bytes,
    categories: bytes,
    template_index: array[int],
    templates: list[str],
    dry: bool,
    at: array[int] | None,
    now_ms: int,
) -> KeyCheck: ...
def remember_keys(
    rows: array[int],
    keys: list[str],
    sender_index: array[int],
    senders: list[str],
    idems: list[dict[str, Any] | None],
    rkeys: array[int],
    kinds: bytes,
    categories: bytes,
    template_index: array[int],
    templates: list[str],
    row_now: array[int],
    expires_ms: int,
    order: deque[tuple[int, str, str]],
    tickets: list[str],
    counted: bytes | bytearray,
    limit: array[int],
    used: array[int],
) -> None: ...
def siphash24(key: bytes, data: bytes) -> int: ...
def encode_ticket(
    k0: int, k1: int, tid: int, number: int, rkey: int, prev: int, slot: int
) -> str: ...
def time_bounds(at: array[int]) -> tuple[int, int]: ...
def tally(
    decisions: bytes | bytearray, reasons: bytes | bytearray, counts: Sequence[int]
) -> None: ...
