"""The journal records the policy layer writes for its rare changes (JSON).

Admits are struct-packed (they are the volume; layouts in ``engine.records``,
written by :func:`admit_record` here for one admit and by the columnar
kernels for a batch); rare events and state changes are JSON. ``persistence``
reads every record back (replay).
"""

from __future__ import annotations

import json
from typing import Any

from tiergate.engine import records as rec

from .state import LimitScope, PolicyState, Sender

__all__ = [
    "JOURNAL_VERSION",
    "JSON_VERSION",
    "TAG_ADMIT",
    "TAG_BATCH",
    "TAG_JSON",
    "admit_record",
    "journal_json",
    "journal_state",
]

TAG_ADMIT = rec.TAG_ADMIT
TAG_BATCH = rec.TAG_BATCH
TAG_JSON = 0x4A  # 'J'
#: Admit and batch records: see ``engine.records`` (version 3 binds keys); JSON
#: records are written at version 1 (their layout since then). Replay reads every
#: version up to this one.
JOURNAL_VERSION = rec.JOURNAL_VERSION
JSON_VERSION = 1
_ADMIT_VERSION = rec.ADMIT_VERSION
_pack_admit = rec.ADMIT.pack


def admit_record(
    now: int,
    index: int,
    rkey: int,
    flags: int,
    tid: int,
    limit: int,
    key: str,
    kind: int,
    cat: int,
    tpl: str,
) -> bytes:
    """The journal record of one admit (the columnar kernels write a batch's): the
    row, then for a row with a key the key and what it is bound to (``engine.records``)."""
    if not key:
        return _pack_admit(TAG_ADMIT, _ADMIT_VERSION, now, index, rkey, flags, tid, limit, 0)
    kb = key.encode()
    head = _pack_admit(TAG_ADMIT, _ADMIT_VERSION, now, index, rkey, flags, tid, limit, len(kb))
    tb = tpl.encode()
    return head + kb + rec.BINDING.pack(kind, cat, len(tb)) + tb


def journal_json(st: PolicyState, payload: dict[str, Any]) -> None:
    if st.journal_on and not st.replaying:
        body = json.dumps(payload, separators=(",", ":")).encode()
        st.journal.append(bytes((TAG_JSON, JSON_VERSION)) + body)


def journal_state(st: PolicyState, scopes: list[LimitScope], senders: list[Sender]) -> None:
    if st.journal_on and not st.replaying and (scopes or senders):
        journal_json(
            st,
            {
                "k": "state",
                "scopes": [sc.to_dict() for sc in scopes],
                "senders": [s.to_dict() for s in senders],
            },
        )
