"""The ranges of times, windows, keys and bursts the engine accepts, and the
values it reserves ("never", slot stamps)."""

from __future__ import annotations

from ..constants import MAX_RECIPIENT_KEY

#: "Never happened": older than any real time, and safe to add a window to.
NEVER = -(1 << 62)

#: Times (ms) the engine accepts: far beyond any real clock, small enough that
#: microsecond and window arithmetic never overflows 64 bits.
MAX_TIME = 1 << 50
#: Longest bucket width or window (ms), and most buckets in one ring.
MAX_WINDOW = 1 << 40
MAX_RING_BUCKETS = 1 << 20
#: Largest GCRA burst tolerance ((burst - 1) * interval).
MAX_TOLERANCE = 1 << 52

#: Slot stamps and states: an admit that creates a slot answers the stamp
#: ``((now + MAX_TIME) << SLOT_GEN_BITS) | gen``; a release must name it.
SLOT_GEN_BITS = 11
SLOT_GEN_MAX = (1 << SLOT_GEN_BITS) - 1
SLOT_FRESH = 1 << SLOT_GEN_BITS

#: Largest recipient key: the range constants.recipient_key packs E.164 numbers
#: into (the compiled engine keeps its probe distance and flags above it).
MAX_KEY = MAX_RECIPIENT_KEY

_U64 = (1 << 64) - 1


def slot_stamp(recipient: int, slot: int, prev_counted: int) -> tuple[int, int] | None:
    """(generation, time) of a slot stamp a release names, if it can be one the
    engine gave for a recipient last counted before at ``prev_counted`` (None: it
    cannot, and the release changes nothing)."""
    if not (0 < recipient <= _U64 and 0 < slot <= _U64):
        return None
    if prev_counted != NEVER and not -MAX_TIME <= prev_counted <= MAX_TIME:
        return None
    gen, t = slot & SLOT_GEN_MAX, (slot >> SLOT_GEN_BITS) - MAX_TIME
    if gen == 0 or t > MAX_TIME or prev_counted > t:
        return None
    return gen, t
