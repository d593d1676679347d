"""Admit journal records and idempotency entries: the layouts every writer and reader shares.

Admits are journaled by ``policy.service.AdmissionService`` (one admit, or a
decided batch) and by the columnar kernels' ``finish`` (``engine.columns`` and
its compiled twin, whose C constants (``ext/tiergate/_native/constants.pxd``) must
equal these: tests/policy/test_columnar.py compares them); ``AdmissionService
.replay`` reads them back.

Records (all integers little-endian):

* admit (``TAG_ADMIT``, 'A'): tag, version, then one row.
* batch (``TAG_BATCH``, 'B', two or more admits of one decided batch): tag,
  version, row count (u32), then the rows in decision order.
* row (``ROW``): time, number, recipient key, flags, ticket id, limit,
  idempotency key length in UTF-8 bytes (0: no key).
* after the rows, for each row with a key, in row order: the key's UTF-8
  bytes, then (version 3 on) what the key is bound to (``BINDING``): kind,
  category, template length, and the template's UTF-8 bytes.

Versions: admit records were 1 and batch records 2 before keys were bound to
their request (no binding after the key); both are 3 since. Replay reads every
version up to ``JOURNAL_VERSION``.

An idempotency entry (``Sender.idem[key]``, a tuple, always an admit's) holds
``(ticket, counted, limit, used, until, bound, template)``: the first four
answer a repeat; ``until`` is when the key expires (the time of its admit plus
the profile's retention; the same int object as in the service's expiry
queue); ``bound`` and ``template`` are what the key answers for, besides its
sender: :func:`bind` of recipient key, kind and category, and the template id
as the request gave it. An entry restored from a record or snapshot written
before keys were bound knows only its recipient: ``bound`` is the recipient key
alone (kind and category 0) and ``template`` None.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ADMIT",
    "ADMIT_VERSION",
    "BATCH_HEAD",
    "BATCH_VERSION",
    "BINDING",
    "BINDING_VERSION",
    "CATEGORY_SHIFT",
    "E_BOUND",
    "E_TEMPLATE",
    "E_UNTIL",
    "JOURNAL_VERSION",
    "KIND_SHIFT",
    "RECIPIENT_BITS",
    "ROW",
    "TAG_ADMIT",
    "TAG_BATCH",
    "Entry",
    "bind",
    "bound_to",
]

TAG_ADMIT = 0x41  # 'A'
TAG_BATCH = 0x42  # 'B'
ROW = struct.Struct("<qiQIQqH")
#: An admit record up to its key: tag, version and the row.
ADMIT = struct.Struct("<BB" + ROW.format[1:])
BATCH_HEAD = struct.Struct("<BBI")
BINDING = struct.Struct("<BBH")
#: The versions written now; a record of an older version has no ``BINDING``.
ADMIT_VERSION = 3
BATCH_VERSION = 3
JOURNAL_VERSION = 3
#: The first version whose keyed rows carry ``BINDING``.
BINDING_VERSION = 3

#: ``bound`` = recipient key | kind << KIND_SHIFT | category << CATEGORY_SHIFT
#: (a recipient key is below 2**54; kind is 1..2, category 1..4; 0: unknown).
KIND_SHIFT = 56
CATEGORY_SHIFT = 59
RECIPIENT_BITS = (1 << KIND_SHIFT) - 1

#: An idempotency entry: (ticket, counted, limit, used, until, bound, template).
Entry = tuple[str, bool, int, int, int, int, str | None]
#: Positions in an idempotency entry (the first four: ticket, counted, limit, used).
E_UNTIL: Final = 4
E_BOUND: Final = 5
E_TEMPLATE: Final = 6


def bind(rkey: int, kind: int, category: int) -> int:
    """What a key binds of a request besides its template: recipient, kind and category."""
    return rkey | kind << KIND_SHIFT | category << CATEGORY_SHIFT


def bound_to(entry: Entry, bound: int, template: str) -> bool:
    """Whether the request (``bound``, ``template``) is the one the entry's key answers.

    An entry from before keys were bound (template None) knows its recipient
    only: it answers any request to that recipient.
    """
    known = entry[E_BOUND]
    tpl = entry[E_TEMPLATE]
    if tpl is None:
        return known == bound & RECIPIENT_BITS
    return known == bound and tpl == template
