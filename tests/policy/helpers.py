"""Shared helpers for the policy tests: a simulated clock and compact requests."""

from __future__ import annotations

import zlib
from pathlib import Path

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.answers import AdmitResult
from tiergate.policy.profile import Profile, load_profile
from tiergate.policy.requests import AdmitRequest
from tiergate.policy.service import AdmissionService

S = 1_000
H = 3_600_000
D = 24 * H
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a whole day
#: One ticket key for every service of a test, so that services compared with each
#: other (or restored from each other) give and take the same tickets.
TICKET_KEY = bytes(range(16))


def service(profile: str | Profile = "meta-2024") -> AdmissionService:
    prof = load_profile(profile) if isinstance(profile, str) else profile
    return AdmissionService(prof, clock="request", ticket_key=TICKET_KEY)


def custom(tmp_path: Path, base: str, body: str) -> Profile:
    path = tmp_path / "custom.toml"
    path.write_text(f'extends = "{base}"\nname = "custom"\n{body}', encoding="utf-8")
    return load_profile(path)


def add_sender(
    svc: AdmissionService,
    sid: str = "s1",
    at: int = T0 - H,
    **fields: object,
) -> None:
    fields.setdefault(
        "display_phone_number", "1555" + str(zlib.crc32(sid.encode()) % 10**7).zfill(7)
    )
    fields.setdefault("quality", ev.Quality.GREEN)
    res = svc.apply(ev.SenderUpdate(sid, at_unix_ms=at, **fields), at)  # type: ignore[arg-type]
    assert res.applied, res.detail


def rcpt(i: int) -> str:
    return f"4917{i:09d}"


def req(
    sid: str,
    to: str,
    at: int,
    *,
    free_form: bool = False,
    category: int = ev.Category.MARKETING,
    template: str = "promo",
    key: str = "",
    dry: bool = False,
) -> AdmitRequest:
    return AdmitRequest(
        sender_id=sid,
        recipient=to,
        kind=ev.Kind.FREE_FORM if free_form else ev.Kind.TEMPLATE,
        category=category,
        template_id="" if free_form else template,
        idempotency_key=key,
        at_unix_ms=at,
        dry_run=dry,
    )


def admit(svc: AdmissionService, sid: str, to: str, at: int, **kw: object) -> AdmitResult:
    return svc.admit(req(sid, to, at, **kw), at)  # type: ignore[arg-type]


def send_unique(
    svc: AdmissionService,
    sid: str,
    start: int,
    count: int,
    first: int = 0,
    spacing: int = 20,
    chunk: int = 5000,
) -> list[AdmitResult]:
    """``count`` template sends to recipients first..first+count-1, ``spacing`` ms apart."""
    out: list[AdmitResult] = []
    for lo in range(0, count, chunk):
        reqs = [
            req(sid, rcpt(first + i), start + i * spacing)
            for i in range(lo, min(count, lo + chunk))
        ]
        out.extend(svc.admit_many(reqs, start + lo * spacing))
    return out


def admitted(results: list[AdmitResult]) -> int:
    return sum(1 for r in results if r.decision == c.ADMIT)
