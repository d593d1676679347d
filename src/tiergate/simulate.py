"""``tiergate simulate SCENARIO.toml``: replay a scenario offline on a virtual clock.

A scenario names a profile, the senders, and what happens each day: template
sends (new unique recipients and repeats), inbound user messages, and feedback
events (Meta's upgrades, quality changes, template pauses, failed sends). The
admission service decides every send exactly as the sidecar would; deferred
sends are retried at their ``retry_at`` (up to ``max_retries`` times). The
output is a day-by-day table per sender: sent / admitted / deferred /
rejected / limit / used / tier (``--json`` for machines, ``--plot out.png``
for usage against the limit over time, with matplotlib installed).

Scenario format (all times relative to ``start``, day 1 = the first day)::

    profile = "meta-2024"            # shipped name or path
    days = 6
    start = 2026-01-05T00:00:00Z     # optional
    seed = 0                         # repeats draw recipients with this seed
    max_retries = 3

    [[senders]]
    id = "s1"
    tier = "TIER_1K"                 # any SenderUpdate field, Meta names for enums
    quality = "GREEN"

    [[sends]]
    sender = "s1"
    day = 1
    unique = 500                     # recipients never messaged before
    repeat = 0                       # recipients this sender messaged before
    hour = 9                         # first send at 09:00
    spacing_ms = 100
    category = "MARKETING"
    template = "promo"

    [[inbound]]
    sender = "s1"
    day = 1
    hour = 8
    count = 50                       # from recipients messaged before (else new ones)
    entry_point = "CTWA_AD"

    [[events]]
    day = 3
    hour = 12
    type = "quality_update"          # or sender_update, template_update, capability_update,
    display_phone_number = "15550001" # account_update, opt_out, failed_sends
    event = "UPGRADE"
    current_limit = "TIER_2K"
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tiergate.engine import constants as c
from tiergate.policy import events as ev
from tiergate.policy.profile import DAY_MS, HOUR_MS, ProfileError, load_profile
from tiergate.policy.requests import AdmitRequest, InvalidArgument
from tiergate.policy.service import AdmissionService

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
BATCH = 4096


class ScenarioError(ValueError):
    """A scenario that cannot run: the message names the key."""


@dataclass(slots=True)
class DayRow:
    day: int
    sender: str
    sent: int = 0
    admitted: int = 0
    deferred: int = 0
    rejected: int = 0
    limit: int = 0
    used: int = 0
    tier: str = ""
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Pending:
    """A send waiting for its time: a first attempt or a retry."""

    sender: str
    recipient: str
    category: int
    template: str
    attempt: int
    spacing: int  # ms between this sender's sends: deferred ones are re-paced by it


def _enum(kind: type[Any], value: Any, key: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return kind(value)
    try:
        return kind[str(value).upper()]
    except KeyError:
        names = ", ".join(m.name for m in kind if m.value)
        raise ScenarioError(f"{key}: unknown value {value!r} (valid: {names})") from None


def _int(d: dict[str, Any], key: str, where: str, default: int | None = None, lo: int = 0) -> int:
    value = d.get(key, default)
    if value is None:
        raise ScenarioError(f"{where}.{key}: is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ScenarioError(f"{where}.{key}: must be an integer >= {lo}, got {value!r}")
    return value


def _sender_update(d: dict[str, Any], where: str, at: int) -> ev.SenderUpdate:
    fields = dict(d)
    sid = fields.pop("id", None) or fields.pop("sender_id", None)
    if not isinstance(sid, str) or not sid:
        raise ScenarioError(f"{where}.id: is required")
    kwargs: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("day", "hour", "type"):
            continue
        if key == "quality":
            kwargs[key] = _enum(ev.Quality, value, f"{where}.quality")
        elif key == "status":
            kwargs[key] = _enum(ev.SenderStatus, value, f"{where}.status")
        elif key == "registered_day":
            kwargs["registered_at_unix_ms"] = at + (int(value) - 1) * DAY_MS
        elif key in ev.SenderUpdate.__dataclass_fields__:
            kwargs[key] = value
        else:
            raise ScenarioError(f"{where}.{key}: unknown sender field")
    return ev.SenderUpdate(sid, **kwargs)


class Simulation:
    """Runs one scenario; ``rows`` and ``samples`` hold the results."""

    def __init__(self, scenario: dict[str, Any], base_dir: Path) -> None:
        self.scenario = scenario
        profile_ref = scenario.get("profile", "meta-2025")
        if not isinstance(profile_ref, str):
            raise ScenarioError("profile: must be a profile name or path")
        if profile_ref.endswith(".toml") and not Path(profile_ref).is_absolute():
            profile_ref = str(base_dir / profile_ref)
        self.profile = load_profile(profile_ref)
        self.service = AdmissionService(self.profile, clock="request", journal=False)
        start = scenario.get("start", DEFAULT_START)
        if isinstance(start, str):
            start = datetime.fromisoformat(start)
        if not isinstance(start, datetime):
            raise ScenarioError("start: must be a date-time")
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.t0 = int(start.timestamp() * 1000)
        self.days = _int(scenario, "days", "scenario", lo=1)
        self.max_retries = _int(scenario, "max_retries", "scenario", default=3)
        self.rng = random.Random(_int(scenario, "seed", "scenario", default=0))
        self.rows: dict[tuple[int, str], DayRow] = {}
        self.samples: dict[str, list[tuple[float, int, int]]] = {}
        self.messaged: dict[str, list[str]] = {}
        self.fresh: dict[str, int] = {}
        self.queue: list[tuple[int, int, str, Any]] = []
        self.seq = 0
        self.tickets: dict[str, list[str]] = {}

    # -- building the timeline ----------------------------------------------------

    def _at(self, d: dict[str, Any], where: str, default_hour: int = 9) -> int:
        day = _int(d, "day", where, lo=1)
        hour = d.get("hour", default_hour)
        if isinstance(hour, bool) or not isinstance(hour, int | float) or not 0 <= hour < 24:
            raise ScenarioError(f"{where}.hour: must be 0..24")
        return self.t0 + (day - 1) * DAY_MS + round(float(hour) * HOUR_MS)

    def _push(self, at: int, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, payload))

    def _new_recipient(self, sid: str) -> str:
        n = self.fresh.get(sid, 0)
        self.fresh[sid] = n + 1
        idx = list(self.messaged).index(sid)
        return f"{(idx + 1) * 10**10 + n}"

    def build(self) -> None:
        senders = self.scenario.get("senders", [])
        if not isinstance(senders, list) or not senders:
            raise ScenarioError("senders: at least one [[senders]] table is required")
        for i, d in enumerate(senders):
            update = _sender_update(d, f"senders[{i}]", self.t0)
            res = self.service.apply(update, self.t0 - HOUR_MS)
            if not res.applied:
                raise ScenarioError(f"senders[{i}]: {res.detail}")
            self.messaged[update.sender_id] = []
            self.samples[update.sender_id] = []
        for i, d in enumerate(self.scenario.get("sends", [])):
            where = f"sends[{i}]"
            sid = self._sender(d, where)
            at = self._at(d, where)
            unique = _int(d, "unique", where, default=0)
            repeat = _int(d, "repeat", where, default=0)
            spacing = _int(d, "spacing_ms", where, default=100, lo=1)
            category = _enum(ev.Category, d.get("category", "MARKETING"), f"{where}.category")
            template = str(d.get("template", "promo"))
            self._push(at, "plan", (sid, unique, repeat, spacing, int(category), template))
        for i, d in enumerate(self.scenario.get("inbound", [])):
            where = f"inbound[{i}]"
            sid = self._sender(d, where)
            entry = _enum(ev.EntryPoint, d.get("entry_point", "ORGANIC"), f"{where}.entry_point")
            self._push(
                self._at(d, where, 8), "inbound", (sid, _int(d, "count", where, lo=1), entry)
            )
        for i, d in enumerate(self.scenario.get("events", [])):
            where = f"events[{i}]"
            self._push(self._at(d, where, 12), "event", (where, d))
        for day in range(1, self.days + 1):
            for hour in range(24):
                self._push(self.t0 + (day - 1) * DAY_MS + hour * HOUR_MS, "sample", None)
            self._push(self.t0 + day * DAY_MS - 1, "close", day)

    def _sender(self, d: dict[str, Any], where: str) -> str:
        sid = d.get("sender")
        if sid not in self.messaged:
            raise ScenarioError(f"{where}.sender: unknown sender {sid!r}")
        return str(sid)

    def _event(self, where: str, d: dict[str, Any], at: int) -> None:
        kind = d.get("type")
        fields = {k: v for k, v in d.items() if k not in ("type", "day", "hour")}
        event: ev.Event
        if kind == "sender_update":
            event = _sender_update(fields, where, self.t0)
        elif kind == "quality_update":
            event = ev.QualityUpdate(**fields)
        elif kind == "capability_update":
            event = ev.CapabilityUpdate(**fields)
        elif kind == "account_update":
            if "restriction_types" in fields:
                fields["restriction_types"] = tuple(fields["restriction_types"])
            event = ev.AccountUpdate(**fields)
        elif kind == "template_update":
            fields["status"] = _enum(ev.TemplateStatus, fields.get("status"), f"{where}.status")
            event = ev.TemplateUpdate(**fields)
        elif kind == "opt_out":
            event = ev.OptOut(**fields)
        elif kind == "failed_sends":
            self._fail(where, fields, at)
            return
        else:
            raise ScenarioError(f"{where}.type: unknown event type {kind!r}")
        self.service.apply(event, at)

    def _fail(self, where: str, d: dict[str, Any], at: int) -> None:
        """Meta reports the last ``count`` admitted sends of a sender as FAILED."""
        sid = self._sender(d, where)
        count = _int(d, "count", where, lo=1)
        code = _int(d, "code", where, default=131026)
        for ticket in self.tickets.get(sid, [])[-count:]:
            self.service.apply(
                ev.SendResult(ev.SendStatus.FAILED, ticket=ticket, meta_error_code=code), at
            )

    # -- running ------------------------------------------------------------------

    def row(self, at: int, sid: str) -> DayRow:
        day = (at - self.t0) // DAY_MS + 1
        key = (day, sid)
        r = self.rows.get(key)
        if r is None:
            r = self.rows[key] = DayRow(day, sid)
        return r

    def run(self) -> None:
        self.build()
        self.tickets = {s: [] for s in self.messaged}
        end = self.t0 + self.days * DAY_MS
        while self.queue:
            at, _, kind, payload = heapq.heappop(self.queue)
            if at >= end:
                break
            if kind == "send":
                batch = [(at, payload)]
                while self.queue and self.queue[0][2] == "send" and len(batch) < BATCH:
                    nxt = heapq.heappop(self.queue)
                    if nxt[0] >= end:
                        break
                    batch.append((nxt[0], nxt[3]))
                self._send(batch)
            elif kind == "plan":
                sid, unique, repeat, spacing, category, template = payload
                pool = self.messaged[sid]
                recipients = [self._new_recipient(sid) for _ in range(unique)]
                if repeat and pool:
                    recipients += [self.rng.choice(pool) for _ in range(repeat)]
                elif repeat:
                    recipients += [self._new_recipient(sid) for _ in range(repeat)]
                self.rng.shuffle(recipients)
                for n, to in enumerate(recipients):
                    self._push(
                        at + n * spacing, "send", Pending(sid, to, category, template, 0, spacing)
                    )
                self.row(at, sid).sent += len(recipients)
            elif kind == "inbound":
                sid, count, entry = payload
                pool = self.messaged[sid]
                for n in range(count):
                    to = pool[n % len(pool)] if pool else self._new_recipient(sid)
                    self.service.apply(
                        ev.InboundMessage(sid, to, at_unix_ms=at + n, entry_point=entry), at + n
                    )
            elif kind == "event":
                where, d = payload
                try:
                    self._event(where, d, at)
                except (TypeError, InvalidArgument) as exc:
                    raise ScenarioError(f"{where}: {exc}") from None
            elif kind == "sample":
                for sid in self.messaged:
                    st = self.service.sender_state(sid, at)
                    hours = (at - self.t0) / HOUR_MS
                    self.samples[sid].append((hours, st.used_24h, st.effective_limit))
            elif kind == "close":
                for sid in self.messaged:
                    st = self.service.sender_state(sid, at)
                    r = self.row(at, sid)
                    r.limit, r.used, r.tier = st.effective_limit, st.used_24h, st.tier

    def _send(self, batch: list[tuple[int, Pending]]) -> None:
        reqs = [
            AdmitRequest(
                p.sender, p.recipient, int(ev.Kind.TEMPLATE), p.category, p.template, "", at
            )
            for at, p in batch
        ]
        results = self.service.admit_many(reqs, batch[0][0])
        paced: dict[str, int] = {}
        for (at, p), res in zip(batch, results, strict=True):
            row = self.row(at, p.sender)
            name = _REASON_NAMES.get(res.reason, str(res.reason))
            row.reasons[name] = row.reasons.get(name, 0) + 1
            if res.decision == c.ADMIT:
                row.admitted += 1
                if res.counted:
                    self.messaged[p.sender].append(p.recipient)
                self.tickets[p.sender].append(res.ticket)
            elif res.decision == c.RETRY_LATER:
                row.deferred += 1
                # A throughput wait is pacing, not a failure: it does not use up a retry.
                if res.reason != c.THROUGHPUT:
                    p.attempt += 1
                if p.attempt <= self.max_retries:
                    # Like a gateway's queue: deferred sends come back paced, not all at once.
                    k = paced.get(p.sender, 0)
                    paced[p.sender] = k + 1
                    self._push(max(res.retry_at_unix_ms, at + 1) + k * p.spacing, "send", p)
            else:
                row.rejected += 1


_REASON_NAMES: dict[int, str] = {
    getattr(c, name): name
    for name in (
        "OK",
        "SENDER_BLOCKED",
        "SENDER_RESTRICTED",
        "TEMPLATE_PAUSED",
        "TEMPLATE_DISABLED",
        "OUTSIDE_WINDOW",
        "RECIPIENT_OPTED_OUT",
        "MESSAGING_LIMIT",
        "MARKETING_FREQUENCY",
        "QUALITY_PROTECTION",
        "THROUGHPUT",
        "PAIR_RATE",
        "UNKNOWN_SENDER",
        "NOT_DELIVERED_TO_REGION",
    )
}


def _fmt_limit(n: int) -> str:
    return "unlimited" if n >= c.UNLIMITED else f"{n:,}"


def render_table(rows: list[DayRow]) -> str:
    head = ("day", "sender", "sent", "admitted", "deferred", "rejected", "limit", "used", "tier")
    body = [
        (
            str(r.day),
            r.sender,
            f"{r.sent:,}",
            f"{r.admitted:,}",
            f"{r.deferred:,}",
            f"{r.rejected:,}",
            _fmt_limit(r.limit),
            f"{r.used:,}",
            r.tier,
        )
        for r in rows
    ]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]
    numeric = range(2, 8)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            v.rjust(w) if i in numeric else v.ljust(w)
            for i, (v, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def plot(sim: Simulation, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ScenarioError("--plot needs matplotlib: pip install 'tiergate[plot]'") from exc
    fig, ax = plt.subplots(figsize=(10, 5))
    for sid, samples in sim.samples.items():
        hours = [h for h, _, _ in samples]
        ax.step(hours, [u for _, u, _ in samples], where="post", label=f"{sid} used (24 h)")
        limits = [float(lim) if lim < c.UNLIMITED else float("nan") for _, _, lim in samples]
        ax.step(hours, limits, where="post", linestyle="--", label=f"{sid} limit")
    ax.set_xlabel("hours since start")
    ax.set_ylabel("unique recipients")
    ax.set_yscale("symlog")
    ax.set_title(f"tiergate simulation ({sim.profile.name})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_scenario(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None


def main(argv: list[str] | None = None, out: Callable[[str], None] | None = None) -> int:
    """Entry point of ``tiergate simulate``; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="tiergate simulate", description="Replay a scenario offline on a virtual clock."
    )
    parser.add_argument("scenario", type=Path, help="scenario TOML file")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="write usage vs limit")
    args = parser.parse_args(argv)
    write = out or (lambda text: print(text))
    try:
        sim = Simulation(load_scenario(args.scenario), args.scenario.parent)
        sim.run()
        rows = sorted(sim.rows.values(), key=lambda r: (r.day, r.sender))
        if args.json:
            payload = {
                "profile": sim.profile.name,
                "rows": [
                    {
                        "day": r.day,
                        "sender": r.sender,
                        "sent": r.sent,
                        "admitted": r.admitted,
                        "deferred": r.deferred,
                        "rejected": r.rejected,
                        "limit": None if r.limit >= c.UNLIMITED else r.limit,
                        "used": r.used,
                        "tier": r.tier,
                        "reasons": r.reasons,
                    }
                    for r in rows
                ],
            }
            write(json.dumps(payload, indent=2))
        else:
            write(f"profile {sim.profile.name}: {sim.profile.description}")
            write(render_table(rows))
        if args.plot is not None:
            plot(sim, args.plot)
    except (ScenarioError, ProfileError) as exc:
        print(f"tiergate simulate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
