"""A columnar batch of admit requests, and the checks every column passes.

:class:`AdmitColumns` (or a protobuf ``AdmitColumnsRequest``) is what a caller
sends; :func:`check_columns` checks every column before anything is decided
(an error names column and item, e.g. ``recipients[17]``) and gives the
:class:`Items` that ``columnar`` decides. ``Items.from_checked`` makes the
same from requests checked one by one (AdmitBatch, ``admit_many``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tiergate.engine.columns import (
    BAD_CATEGORY,
    BAD_KIND,
    BAD_SENDER_INDEX,
    BAD_TEMPLATE_INDEX,
    NO_CATEGORY,
    kernels,
)
from tiergate.engine.constants import recipient_key
from tiergate.engine.results import KeyColumns

from .requests import (
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_TEMPLATE_LEN,
    AdmitRequest,
    Checked,
    InvalidArgument,
)

__all__ = ["AdmitColumns", "ColumnsLike", "Items", "check_columns", "recipient_keys"]


class ColumnsLike(Protocol):
    """The attributes of the proto ``AdmitColumnsRequest`` (a protobuf message fits)."""

    @property
    def senders(self) -> Sequence[str]: ...
    @property
    def sender_index(self) -> Sequence[int]: ...
    @property
    def recipients(self) -> Sequence[str]: ...
    @property
    def kinds(self) -> bytes: ...
    @property
    def categories(self) -> bytes: ...
    @property
    def templates(self) -> Sequence[str]: ...
    @property
    def template_index(self) -> Sequence[int]: ...
    @property
    def idempotency_keys(self) -> Sequence[str]: ...
    @property
    def at_unix_ms(self) -> Sequence[int]: ...
    @property
    def dry_run(self) -> bool: ...


@dataclass(slots=True)
class AdmitColumns:
    """A plain columnar request (tests, simulations, library use)."""

    senders: Sequence[str]
    sender_index: Sequence[int]
    recipients: Sequence[str]
    kinds: bytes
    categories: bytes
    templates: Sequence[str] = ()
    template_index: Sequence[int] = ()
    idempotency_keys: Sequence[str] = ()
    at_unix_ms: Sequence[int] = ()
    dry_run: bool = False

    @classmethod
    def from_requests(cls, reqs: Sequence[AdmitRequest], dry_run: bool = False) -> AdmitColumns:
        """The columns of ``reqs`` (each request's own ``dry_run`` is not kept)."""
        senders: dict[str, int] = {}
        templates: dict[str, int] = {}
        sidx = [senders.setdefault(r.sender_id, len(senders)) for r in reqs]
        tidx = [
            templates.setdefault(r.template_id, len(templates) + 1) if r.template_id else 0
            for r in reqs
        ]
        keys = [r.idempotency_key for r in reqs]
        at = [r.at_unix_ms for r in reqs]
        return cls(
            senders=list(senders),
            sender_index=sidx,
            recipients=[r.recipient for r in reqs],
            kinds=bytes(r.kind for r in reqs),
            categories=bytes(r.category for r in reqs),
            templates=list(templates),
            template_index=tidx,
            idempotency_keys=keys if any(keys) else [],
            at_unix_ms=at if any(at) else [],
            dry_run=dry_run,
        )


def _column(typecode: str, name: str, values: Any) -> array[int]:
    if isinstance(values, array) and values.typecode == typecode:
        return values
    try:
        # A protobuf repeated field copies to a list fastest by slicing.
        return array(typecode, values[:])
    except (OverflowError, TypeError):
        raise InvalidArgument(name, f"{name}: must be integers in range") from None


def _byte_column(name: str, values: Any) -> bytes:
    if isinstance(values, bytes):
        return values
    try:
        return bytes(values)
    except (TypeError, ValueError):
        raise InvalidArgument(name, f"{name}: must be one byte per item") from None


def _check_strings(name: str, values: Sequence[Any], limit: int, required: bool) -> None:
    for k, v in enumerate(values):
        if type(v) is not str or len(v) > limit or (required and not v):
            field = f"{name}[{k}]"
            if not isinstance(v, str):
                raise InvalidArgument(field, f"{field}: must be a string")
            if not v:
                raise InvalidArgument(field, f"{field}: is required")
            raise InvalidArgument(field, f"{field}: longer than {limit} characters")


@dataclass(slots=True)
class Items:
    """A batch of admit requests that passed every check, as columns."""

    n: int
    senders: list[str]
    sender_index: array[int]
    rkeys: array[int]
    kinds: bytes
    categories: bytes  # SERVICE (4) where a free-form item has none
    templates: list[str]
    template_index: array[int]
    keys: list[str]
    at: array[int]
    dry: bool
    latest: int  # the latest item time (0: none)
    #: Each item's own dry run flag, when the items do not share one (else None).
    dry_runs: bytes | None = None
    #: The recipients' keys as written, when an alias replaced some in ``rkeys``
    #: (``aliases.py``; else None).
    raw_rkeys: array[int] | None = None

    @classmethod
    def from_checked(cls, items: Sequence[Checked]) -> Items:
        """The columns of requests checked one by one (``requests.check_all``)."""
        if not items:
            return cls(
                0, [], array("I"), array("Q"), b"", b"", [], array("I"), [], array("q"), False, 0
            )
        sids, rkeys, kinds, cats, tpls, keys, ats, drys = zip(*items, strict=True)
        senders = {sid: i for i, sid in enumerate(dict.fromkeys(sids))}
        templates = {t: i for i, t in enumerate(dict.fromkeys(filter(None, tpls)), 1)}
        dry_runs = bytes(drys)
        return cls(
            n=len(items),
            senders=list(senders),
            sender_index=array("I", map(senders.__getitem__, sids)),
            rkeys=array("Q", rkeys),
            kinds=bytes(kinds),
            categories=bytes(cats),
            templates=list(templates),
            template_index=array("I", [templates.get(t, 0) for t in tpls]),
            keys=list(keys) if any(keys) else [],
            at=array("q", ats) if any(ats) else array("q"),
            dry=drys[0],
            latest=max(ats),
            dry_runs=dry_runs if 0 < dry_runs.count(1) < len(items) else None,
        )

    def part(self, start: int, end: int) -> Items:
        """Items ``start`` to ``end`` (their senders and templates listed as here)."""
        at = self.at[start:end]
        return Items(
            n=end - start,
            senders=self.senders,
            sender_index=self.sender_index[start:end],
            rkeys=self.rkeys[start:end],
            kinds=self.kinds[start:end],
            categories=self.categories[start:end],
            templates=self.templates,
            template_index=self.template_index[start:end],
            keys=self.keys[start:end],
            at=at,
            dry=self.dry_runs[start] == 1 if self.dry_runs is not None else self.dry,
            latest=max(at, default=0),
            raw_rkeys=self.raw_rkeys[start:end] if self.raw_rkeys is not None else None,
        )

    def key_columns(
        self, idems: Sequence[dict[str, Any] | None], rkeys: array[int] | None = None
    ) -> KeyColumns:
        """The columns the idempotency-key kernels read, with the senders' key tables
        ``idems`` (None: unknown sender) and ``rkeys`` instead of this batch's own."""
        return KeyColumns(
            self.keys,
            self.sender_index,
            self.senders,
            idems,
            self.rkeys if rkeys is None else rkeys,
            self.kinds,
            self.categories,
            self.template_index,
            self.templates,
        )

    def dry_at(self, i: int) -> bool:
        return self.dry_runs[i] == 1 if self.dry_runs is not None else self.dry


def recipient_keys(recipients: list[str]) -> array[int]:
    """The key of each recipient (E.164 digits or a business-scoped user ID); a bad
    one is :class:`InvalidArgument` naming ``recipients[i]``."""
    rkeys = array("Q", bytes(8 * len(recipients)))
    bad = kernels.encode_recipients(recipients, rkeys)
    if bad >= 0:
        field = f"recipients[{bad}]"
        if type(recipients[bad]) is not str:
            raise InvalidArgument(field, f"{field}: must be a string")
        try:
            recipient_key(recipients[bad])
        except ValueError as exc:
            raise InvalidArgument(field, f"{field}: {exc}") from None
        raise InvalidArgument(field, f"{field}: not an E.164 number or a business-scoped user ID")
    return rkeys


def check_columns(req: ColumnsLike) -> Items:
    """Every column checked before anything is decided; the error names column and item."""
    # The wire reader hands over recipients already turned into keys (all valid).
    known_keys: array[int] | None = getattr(req, "recipient_keys", None)
    recipients: Sequence[str] = req.recipients if known_keys is not None else list(req.recipients)
    n = len(recipients)
    senders = list(req.senders)
    templates = list(req.templates)
    sidx = _column("I", "sender_index", req.sender_index)
    kinds = _byte_column("kinds", req.kinds)
    cats = _byte_column("categories", req.categories)
    tidx_in = req.template_index
    tidx = _column("I", "template_index", tidx_in) if len(tidx_in) else array("I", bytes(4 * n))
    keys = list(req.idempotency_keys)
    at = _column("q", "at_unix_ms", req.at_unix_ms)
    for name, size in (
        ("sender_index", len(sidx)),
        ("kinds", len(kinds)),
        ("categories", len(cats)),
        ("template_index", len(tidx)),
    ):
        if size != n:
            raise InvalidArgument(name, f"{name}: has {size} items, recipients has {n}")
    for name, size in (("idempotency_keys", len(keys)), ("at_unix_ms", len(at))):
        if size not in (0, n):
            raise InvalidArgument(
                name, f"{name}: has {size} items; it must be empty or have one per item ({n})"
            )
    _check_strings("senders", senders, MAX_ID_LEN, True)
    _check_strings("templates", templates, MAX_TEMPLATE_LEN, True)
    bad, problem = kernels.check_items(n, sidx, len(senders), kinds, cats, tidx, len(templates))
    if bad >= 0:
        raise _item_error(bad, problem, sidx, kinds, cats, tidx, len(senders), len(templates))
    if known_keys is not None:
        assert len(known_keys) == n
        rkeys = known_keys
    else:
        assert isinstance(recipients, list)
        rkeys = recipient_keys(recipients)
    if keys:
        _check_strings("idempotency_keys", keys, MAX_KEY_LEN, False)
    lo, hi = kernels.time_bounds(at)
    if lo < 0:
        bad = next(i for i, t in enumerate(at) if t < 0)
        raise InvalidArgument(f"at_unix_ms[{bad}]", f"at_unix_ms[{bad}]: must be >= 0")
    return Items(
        n=n,
        senders=senders,
        sender_index=sidx,
        rkeys=rkeys,
        kinds=kinds,
        categories=cats.replace(b"\x00", b"\x04") if b"\x00" in cats else cats,
        templates=templates,
        template_index=tidx,
        keys=keys,
        at=at,
        dry=bool(req.dry_run),
        latest=hi,
    )


def _item_error(
    i: int,
    problem: int,
    sidx: array[int],
    kinds: bytes,
    cats: bytes,
    tidx: array[int],
    n_senders: int,
    n_templates: int,
) -> InvalidArgument:
    if problem == BAD_SENDER_INDEX:
        field = f"sender_index[{i}]"
        msg = f"{sidx[i]} is out of range (senders has {n_senders})"
    elif problem == BAD_KIND:
        field = f"kinds[{i}]"
        msg = f"must be TEMPLATE or FREE_FORM, got {kinds[i]}"
    elif problem == BAD_CATEGORY:
        field = f"categories[{i}]"
        msg = f"unknown value {cats[i]}"
    elif problem == NO_CATEGORY:
        field = f"categories[{i}]"
        msg = "is required for TEMPLATE messages"
    elif problem == BAD_TEMPLATE_INDEX:
        field = f"template_index[{i}]"
        msg = f"{tidx[i]} is out of range (templates has {n_templates}; 0 is none)"
    else:
        field = f"template_index[{i}]"
        msg = "a template is required for TEMPLATE messages"
    return InvalidArgument(field, f"{field}: {msg}")
