"""The pure-Python reference engine: the specification the compiled engine mirrors.

Readable first: dicts for recipient tables, lists for bucket rings. The
compiled engine (``ext/tiergate/_native/engine.pyx``) must give identical
answers for identical calls; differential tests drive both.

Semantics (DESIGN.md §5):

* Time is an argument (Unix ms). Per limit scope it is clamped to the latest
  seen, so it never goes backwards.
* A recipient is counted at ``now`` when its last counted time ``t`` satisfies
  ``t > now - window``. The 24 h ring is conservative for the limit: bucket
  ``b`` (covering ``[b*g, (b+1)*g)``) counts while ``now < (b+1)*g + window``,
  so the ring total never under-states, and a slot is never reported free
  before it truly is. The 7 d rings under-state instead: a bucket counts only
  while it lies wholly inside the window, so upgrade eligibility is never
  reported early.
* Nothing is consumed unless every check passes.
* Memory: every recipient table has a nominal capacity (a power of two, at
  least :data:`INITIAL_CAPACITY`; number tables start at
  :data:`NUMBER_INITIAL_CAPACITY`) filled to 70 %. When an insert finds the
  table full, a sweep of the entries expired at that moment begins, one step
  per insert (:class:`~.tables.Sweep`: a sixteenth of the capacity's steps,
  each over a part of the keys' hashes; one for a number table below 65 536),
  and the capacity doubles after the last step unless the table is then below
  half its fill. A scope entry is expired when it is not
  opted out and its every time is older than the scope's clock minus the
  reclaim horizon (longest window plus one bucket, or the marketing frequency
  window if longer). A number entry (window, entry point window and pair-rate
  TAT) is expired once every time in it is at or before its scope's clock:
  from then on it changes no decision. The compiled engine follows the same
  rule, so both reclaim at the same moments and keep giving identical
  answers; its hash tables size their slots on their own. Recipient keys are
  1 .. 2**54 - 1.
* Snapshots (:meth:`Engine.snapshot`) are little-endian fixed-width records,
  byte-identical between the two engines; either restores the other's. The
  format is described in :mod:`tiergate.engine.reference.snapshot`.

Neither engine is safe for concurrent use from several threads; the service
serialises calls (the compiled engine never releases the GIL).

The parts: :mod:`.engine` (the :class:`Engine` API: configuration, decisions,
feedback, memory, reports), :mod:`.ring` (bucket rings), :mod:`.tables`
(limit scopes, phone numbers and their recipient entries), :mod:`.warmup` (a
number's own count and cap while it is in warm-up: ``Engine.set_warmup``),
:mod:`.snapshot` (the snapshot format's writer and reader) and :mod:`.bounds`
(the ranges the engine accepts and the values it reserves).
"""

from __future__ import annotations

from .bounds import (
    MAX_KEY,
    MAX_RING_BUCKETS,
    MAX_TIME,
    MAX_TOLERANCE,
    MAX_WINDOW,
    NEVER,
    SLOT_FRESH,
    SLOT_GEN_BITS,
    SLOT_GEN_MAX,
)
from .engine import Decision, Engine
from .ring import Ring
from .snapshot import SNAPSHOT_MAGIC, SNAPSHOT_VERSION
from .tables import (
    INITIAL_CAPACITY,
    MAX_CAPACITY,
    NUMBER_INITIAL_CAPACITY,
    Number,
    NumberEntry,
    Scope,
    ScopeEntry,
    max_fill,
)

__all__ = [
    "INITIAL_CAPACITY",
    "MAX_CAPACITY",
    "MAX_KEY",
    "MAX_RING_BUCKETS",
    "MAX_TIME",
    "MAX_TOLERANCE",
    "MAX_WINDOW",
    "NEVER",
    "NUMBER_INITIAL_CAPACITY",
    "SLOT_FRESH",
    "SLOT_GEN_BITS",
    "SLOT_GEN_MAX",
    "SNAPSHOT_MAGIC",
    "SNAPSHOT_VERSION",
    "Decision",
    "Engine",
    "Number",
    "NumberEntry",
    "Ring",
    "Scope",
    "ScopeEntry",
    "max_fill",
]
