"""The store seam: what the policy layer asks of the state that counts.

Recipient tables, windows, opt-outs, rings, buckets and throughput live behind
:class:`CountingStore`; the policy layer calls nothing else of it. The
embedded engine (``tiergate.engine.Engine``, compiled or reference)
implements it (mypy checks the reference engine against it where the service
makes one; tests/policy/test_seam.py checks both at run time); a store shared
by many sidecars implements the same calls.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tiergate.engine.batch import DecisionBatch

__all__ = ["CountingStore", "Decision"]

#: decide's answer: (decision, reason, retry_at, counted, used, prev_counted, slot).
Decision = tuple[int, int, int, int, int, int, int]


@runtime_checkable
class CountingStore(Protocol):
    """The counting state one admission service decides against."""

    # The windows it counts in (ms), checked against the profile's on restore.
    @property
    def bucket_ms(self) -> int: ...
    @property
    def window_ms(self) -> int: ...
    @property
    def long_bucket_ms(self) -> int: ...
    @property
    def long_window_ms(self) -> int: ...

    # Limit scopes and phone numbers, indexed in the order they were added.
    def add_scope(self, freq_cap: int = 0, freq_window_ms: int = 0) -> int: ...
    def set_scope_params(self, scope: int, freq_cap: int, freq_window_ms: int) -> None: ...
    def add_number(
        self,
        scope: int,
        tput_interval_us: int = 12_500,
        tput_burst: int = 1,
        pair_interval_ms: int = 6_000,
        pair_burst: int = 1,
    ) -> int: ...
    def set_number_params(
        self,
        number: int,
        tput_interval_us: int,
        tput_burst: int,
        pair_interval_ms: int,
        pair_burst: int,
    ) -> None: ...
    # A number's own cap in warm-up under a shared scope (UNLIMITED: none).
    def set_warmup(self, number: int, cap: int) -> None: ...

    # Steps 4 to 9 of DESIGN §2: one request, or a batch's rows in one call.
    def decide(
        self, now: int, scope: int, number: int, recipient: int, flags: int, limit: int
    ) -> Decision: ...
    def decide_batch(self, batch: DecisionBatch) -> None: ...

    # What feedback changes.
    def release(
        self, scope: int, recipient: int, slot: int, prev_counted: int, number: int = -1
    ) -> bool: ...
    def open_window(
        self, number: int, recipient: int, window_until: int, fep_until: int
    ) -> None: ...
    def close_window(self, number: int, recipient: int) -> None: ...
    def set_opt_out(self, scope: int, recipient: int, opted_out: bool) -> None: ...
    def slow_throughput(self, number: int, now: int, pause_ms: int) -> None: ...
    def take_throughput(self, number: int, now: int) -> None: ...
    def hold_pair(self, number: int, recipient: int, until: int) -> None: ...

    # What reports and the tier machine read.
    def usage(self, scope: int, now: int, limit: int) -> tuple[int, int, int, int]: ...
    def open_windows(self, number: int, now: int) -> int: ...
    # Read only: recipients counted in the last period, slots freeing per period ahead.
    def outlook(
        self, scope: int, now: int, period_ms: int, periods: int
    ) -> tuple[int, list[int]]: ...
    def warmup_usage(self, number: int, now: int) -> tuple[int, int, int, int]: ...

    # Snapshots: the bytes, an image taken apart from the live state, and back.
    def snapshot(self) -> bytes: ...
    def copy_sizes(self) -> tuple[int, ...]: ...
    @staticmethod
    def copy_room(sizes: tuple[int, ...]) -> object: ...
    def copy(self, room: object = None) -> CountingStore: ...
    @classmethod
    def restore(cls, data: bytes) -> CountingStore: ...
