"""The Redis store's key layout and the packed rows of its calls.

A limit scope (:class:`ScopeSpec`: a portfolio, or a phone number under
phone-number scope) names every key of its own with the hash tag
``{pf:<scope>}`` (one Cluster slot), under the layout's version
(:data:`LAYOUT`); its phone numbers are :class:`NumberSpec`; a request's part
in a decision is a :class:`Row`. :func:`call_args` makes the KEYS and ARGV of
one ``decide`` (or ``reconcile``) call: the rows packed in one string
(``ROW`` per row, the recipient's digits and what its idempotency key binds
after it; ``ROW`` in ``redis_functions.lua``). docs/redis.md describes the
layout.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from tiergate.engine.constants import UNLIMITED

__all__ = [
    "BINDING",
    "LAYOUT",
    "MAX_REDIS_TIME",
    "MIX",
    "ROW",
    "SEQ",
    "SHARD_BITS",
    "U64",
    "NumberSpec",
    "Row",
    "ScopeSpec",
    "call_args",
    "key_at",
    "shard",
]

#: A scope's recipients (their scope entries and their numbers' entries) are spread
#: over 2**SHARD_BITS hashes, small enough for Redis's compact listpack encoding.
SHARD_BITS = 12
#: Key layout version: a change of layout takes new keys, never reads old ones wrongly.
LAYOUT = "tg3"
#: Times the Redis store takes (ms): microsecond TATs stay exact in Lua's doubles.
MAX_REDIS_TIME = 1 << 43

#: A row of a decide call (``ROW`` in the Lua; the recipient's digits follow it).
ROW = struct.Struct(">HIqqIIqB")
#: A reconciled row's sequence number (``SEQ`` in the Lua).
SEQ = struct.Struct(">q")
#: What a row's key binds follows its recipient: its length, then its text.
BINDING = struct.Struct(">H")
MIX = 0x9E3779B97F4A7C15
U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """A limit scope by its id, with the windows it counts in and its frequency cap;
    on Meta's volume scaling path, the path's window and the most recipients its
    reach keeps."""

    name: str
    #: (bucket_ms, window_ms, long_bucket_ms, long_window_ms), as the engine's
    geometry: tuple[int, int, int, int] = (60_000, 86_400_000, 3_600_000, 604_800_000)
    freq_cap: int = 0
    freq_window_ms: int = 0
    #: The volume path's window (0: the scope is off the path: no reach kept).
    path_window_ms: int = 0
    #: The most recipients the reach keeps (4 × the path's unique users).
    path_cap: int = 0

    #: (made once: every call names the scope's keys)
    _tag: str = field(init=False, repr=False, compare=False, default="")
    _fixed: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        name = self.name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        t = f"{LAYOUT}:{{pf:{name}}}"
        object.__setattr__(self, "_tag", t)
        fixed = (f"{t}:m", f"{t}:d", f"{t}:w", f"{t}:s", f"{t}:o", f"{t}:p", f"{t}:q")
        object.__setattr__(self, "_fixed", fixed)

    @property
    def tag(self) -> str:
        """The hash tag of every key of the scope: one Cluster slot."""
        return self._tag

    @property
    def ttl_ms(self) -> int:
        """Keys of a scope idle this long (wall time) vanish: past every window."""
        bucket_ms, window_ms, long_bucket_ms, long_window_ms = self.geometry
        return max(window_ms + bucket_ms, long_window_ms + long_bucket_ms)

    def fixed_keys(self) -> list[str]:
        """meta, the 24 h ring, the 7-day rings, opt-outs, pair entries and their
        due times (KEYS[1..7] of a decide call)."""
        return list(self._fixed)

    def scope_shard(self, recipient: int) -> str:
        return f"{self._tag}:c{shard(recipient)}"

    @property
    def reach_key(self) -> str:
        """The recipients counted while on the volume path, by their last slot time."""
        return f"{self.tag}:v"


@dataclass(frozen=True, slots=True)
class NumberSpec:
    """A phone number (sender) by its id, with its throughput and pair-rate buckets."""

    name: str
    tput_interval_us: int = 12_500
    tput_burst: int = 1
    pair_interval_ms: int = 6_000
    pair_burst: int = 1
    #: Its warm-up cap on its own unique recipients (UNLIMITED: not in warm-up).
    warm_cap: int = UNLIMITED

    def __post_init__(self) -> None:
        if min(self.tput_interval_us, self.tput_burst, self.pair_interval_ms, self.pair_burst) < 1:
            raise ValueError("intervals and bursts must be >= 1")
        if not 0 <= self.warm_cap <= UNLIMITED:
            raise ValueError(f"warm_cap must be 0 .. 2**62 - 1, got {self.warm_cap}")
        if ":" in self.name:
            raise ValueError(f"a number id has no ':' ({self.name!r})")

    @property
    def params(self) -> tuple[int, int, int, int]:
        """Its rates as ``tiers.number_params`` gives them."""
        return (self.tput_interval_us, self.tput_burst, self.pair_interval_ms, self.pair_burst)

    def args(self) -> tuple[str | int, ...]:
        return (
            self.name,
            self.tput_interval_us,
            (self.tput_burst - 1) * self.tput_interval_us,
            self.pair_interval_ms,
            (self.pair_burst - 1) * self.pair_interval_ms,
            self.warm_cap,
        )

    def warm_key(self, scope: ScopeSpec) -> str | None:
        """The key of its own count in warm-up (None: not in warm-up)."""
        return f"{scope.tag}:u:{self.name}" if self.warm_cap < UNLIMITED else None


class Row(NamedTuple):
    """One request's part in a decision: the engine's ``decide`` arguments by name."""

    number: NumberSpec
    recipient: int
    flags: int
    limit: int
    now: int = 0
    #: ``<sender>:<idempotency key>`` (empty: none): a repeat of an admit made under
    #: it, at any sidecar, answers that admit's decision and consumes nothing.
    key: str = ""
    #: How long the key holds its first admit (ms).
    key_ms: int = 0
    #: What the key binds (``<records.bind(recipient, kind, category)>:<template>``): a
    #: repeat of the key for another request is told what its first request bound.
    binding: str = ""


def shard(recipient: int) -> int:
    """The shard of a recipient key (its top bits after a multiplicative mix)."""
    return ((recipient * MIX) & U64) >> (64 - SHARD_BITS)


def key_at(keys: list[str], index: dict[str, int], key: str) -> int:
    """The (1-based) index of ``key`` in ``keys``, appended when it is not there yet."""
    at = index.get(key)
    if at is None:
        keys.append(key)
        at = index[key] = len(keys)
    return at


def number_args(
    spec: NumberSpec, scope: ScopeSpec, keys: list[str], index: dict[str, int]
) -> tuple[str | int, ...]:
    """A number's arguments to a call: its own, then its warm-up ring's key index (0:
    not in warm-up)."""
    warm = spec.warm_key(scope)
    return (*spec.args(), key_at(keys, index, warm) if warm is not None else 0)


def call_args(
    s: ScopeSpec, rows: Iterable[Row], server_clock: bool, keys: list[str]
) -> tuple[list[str], list[object]]:
    """KEYS and ARGV of one decide call (or reconcile call, whose ``keys`` name its
    mark after the fixed ones) for ``rows`` of scope ``s``, in order."""
    index: dict[str, int] = {}
    numbers: dict[str, tuple[int, NumberSpec]] = {}
    packed: list[bytes] = []
    for r in rows:
        num = numbers.get(r.number.name)
        if num is None:
            num = numbers[r.number.name] = (len(numbers) + 1, r.number)
        rk = r.recipient
        kidx = key_at(keys, index, f"{s.tag}:k:{r.key}") if r.key else 0
        text = str(rk).encode()
        at = key_at(keys, index, s.scope_shard(rk))
        packed.append(ROW.pack(num[0], r.flags, r.limit, r.now, at, kidx, r.key_ms, len(text)))
        packed.append(text)
        binding = r.binding.encode()
        packed.append(BINDING.pack(len(binding)))
        packed.append(binding)
    clock = "" if server_clock else "r"
    reach = key_at(keys, index, s.reach_key) if s.path_window_ms else 0
    head: list[object] = [clock, *s.geometry, s.freq_cap, s.freq_window_ms, s.ttl_ms]
    head += [reach, s.path_window_ms, s.path_cap, len(numbers)]
    for _, spec in numbers.values():
        head += number_args(spec, s, keys, index)
    head.append(b"".join(packed))
    return keys, head
