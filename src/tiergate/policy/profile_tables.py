"""Reading a profile's TOML tables: typed values, checked, errors naming file and key.

``Reader`` gives typed access to the merged TOML; each ``read_*`` function reads
one table into ``Profile`` fields (``TABLE_READERS``, in the order of the
files, so the first bad key is the one reported). ``policy.profile`` builds the
``Profile`` from them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Final

from tiergate.engine import constants
from tiergate.engine.columns import region_table

from .events import Category, EntryPoint, Quality, SenderStatus

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MAX_MESSAGE_LINKS = 100_000_000


class ProfileError(ValueError):
    """A profile that cannot be used: ``file``, ``key`` and ``reason`` say why."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class WarmupStep:
    """Until ``until_day`` days after registration, at most ``cap`` unique recipients."""

    until_day: int
    cap: int


class Reader:
    """Typed access to the merged TOML with errors naming file and key."""

    def __init__(self, data: dict[str, Any], file: str) -> None:
        self.data = data
        self.file = file
        self.used: set[str] = set()

    def fail(self, key: str, reason: str) -> ProfileError:
        return ProfileError(self.file, key, reason)

    def raw(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise self.fail(key, "is missing")
            node = node[part]
        self.used.add(key)
        return node

    def table(self, key: str) -> dict[str, Any]:
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def string(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, lo: int = 0, hi: int | None = None) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self.fail(key, f"must be {bound}, got {value}")
        return value

    def number(self, key: str, lo: float = 0.0, hi: float | None = None) -> float:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self.fail(key, f"must be {bound}, got {value}")
        return float(value)

    def strings(self, key: str) -> list[str]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be an array of strings")
        return list(value)

    def hours(self, key: str, lo: float = 0.0) -> int:
        return round(self.number(key, lo) * HOUR_MS)

    def enum_names(
        self, key: str, kind: type[Quality | SenderStatus | EntryPoint]
    ) -> frozenset[int]:
        out: set[int] = set()
        for name in self.strings(key):
            try:
                member = kind[name]
            except KeyError:
                valid = ", ".join(m.name for m in kind if m.value)
                raise self.fail(key, f"unknown value {name!r} (valid: {valid})") from None
            if member.value == 0:
                raise self.fail(key, f"{name} is not allowed here")
            out.add(member.value)
        return frozenset(out)

    def check_unknown(self, node: dict[str, Any], prefix: str = "") -> None:
        """Reject keys the loader never read: a typo must not pass silently."""
        for key, value in node.items():
            full = f"{prefix}{key}"
            if full in self.used:
                continue
            if isinstance(value, dict):
                self.check_unknown(value, full + ".")
            else:
                raise self.fail(full, "unknown key")


_META_SENDER_STATUS = ("CONNECTED", "FLAGGED", "RESTRICTED", "BANNED", "DISABLED")

#: Profile fields read from one TOML table, by ``Profile`` field name.
Fields = dict[str, Any]


def _read_names(r: Reader) -> Fields:
    name = r.string("name")
    if not name:
        raise r.fail("name", "must not be empty")
    return {"name": name, "description": r.string("description")}


def _read_tier_limits(r: Reader) -> list[tuple[str, int]]:
    limits: list[tuple[str, int]] = []
    for tier, value in r.table("tiers.limits").items():
        key = f"tiers.limits.{tier}"
        r.used.add(key)
        if not tier.startswith("TIER_"):
            raise r.fail(key, "tier names are Meta's (TIER_250, TIER_1K, …)")
        if value == "unlimited":
            limits.append((tier, constants.UNLIMITED))
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            limits.append((tier, value))
        else:
            raise r.fail(key, f'must be a non-negative integer or "unlimited", got {value!r}')
    return limits


def _read_tiers(r: Reader) -> Fields:
    limits = _read_tier_limits(r)
    by_name = dict(limits)
    ladder = r.strings("tiers.ladder")
    if not ladder:
        raise r.fail("tiers.ladder", "must name at least one tier")
    for tier in ladder:
        if tier not in by_name:
            raise r.fail("tiers.ladder", f"{tier} has no entry in [tiers.limits]")
    if any(by_name[a] >= by_name[b] for a, b in itertools.pairwise(ladder)):
        raise r.fail("tiers.ladder", "limits must increase along the ladder")
    starting = r.string("tiers.starting")
    starting_unverified = r.string("tiers.starting_unverified")
    for key, tier in (
        ("tiers.starting", starting),
        ("tiers.starting_unverified", starting_unverified),
    ):
        if tier not in by_name:
            raise r.fail(key, f"{tier} has no entry in [tiers.limits]")
    return {
        "tier_limits": tuple(limits),
        "ladder": tuple(ladder),
        "starting_tier": starting,
        "starting_tier_unverified": starting_unverified,
    }


def _read_limit(r: Reader) -> Fields:
    return {
        "limit_scope": r.string("limit.scope", ("portfolio", "phone_number")),
        "window_ms": r.hours("limit.window_hours", 1 / 60),
    }


# The one counting rule the engine implements: a profile must state it, unchanged.
_COUNTING: Final = {
    "counting.templates_outside_window": True,
    "counting.templates_in_window": False,
    "counting.free_form": False,
    "counting.recount_extends_presence": True,
}


def _read_counting(r: Reader) -> Fields:
    for key, supported in _COUNTING.items():
        if r.boolean(key) is not supported:
            raise r.fail(key, f"only {str(supported).lower()} is supported (Meta's counting rule)")
    return {}


def _read_windows(r: Reader) -> Fields:
    return {
        "service_window_ms": r.hours("windows.service_hours", 1 / 60),
        "free_entry_point_window_ms": r.hours("windows.free_entry_point_hours", 0),
        "free_entry_points": r.enum_names("windows.free_entry_points", EntryPoint),
        "free_entry_point_allows_free_form": r.boolean("windows.free_entry_point_allows_free_form"),
    }


def _read_upgrade(r: Reader) -> Fields:
    mode = r.string("upgrade.mode", ("apply", "predict"))
    basis = r.string("upgrade.basis", ("unique", "cumulative"))
    threshold = r.number("upgrade.threshold", 0.0)
    if threshold <= 0:
        raise r.fail("upgrade.threshold", "must be > 0")
    return {
        "upgrade_mode": mode,
        "upgrade_basis": basis,
        "upgrade_threshold": threshold,
        "lookback_ms": r.integer("upgrade.lookback_days", 1, 60) * DAY_MS,
        "upgrade_delay_ms": r.hours("upgrade.delay_hours"),
        "predict_within_ms": r.hours("upgrade.predict_within_hours"),
        "min_in_tier_ms": r.hours("upgrade.min_hours_in_tier"),
        "upgrade_qualities": r.enum_names("upgrade.allowed_qualities", Quality),
        "upgrade_statuses": r.enum_names("upgrade.allowed_statuses", SenderStatus),
        **_read_scaling_path(r, mode),
    }


def _read_scaling_path(r: Reader, mode: str) -> Fields:
    """Meta's scaling paths out of ``from_tier`` (predict mode only): business
    verification, or ``unique_users`` delivered outside service windows within
    ``days`` with no template rated ``low_template_qualities``; then Meta's review."""
    tier = r.string("upgrade.scaling_path.from_tier")
    if tier and tier not in r.table("tiers.limits"):
        raise r.fail("upgrade.scaling_path.from_tier", f"{tier} has no entry in [tiers.limits]")
    ladder = r.raw("tiers.ladder")
    # The paths end in Meta's review: only a predict-mode profile follows them.
    on = mode == "predict" and isinstance(ladder, list) and tier in ladder[:-1]
    return {
        "path_tier": tier if on else "",
        "path_users": r.integer("upgrade.scaling_path.unique_users", 1),
        "path_window_ms": r.integer("upgrade.scaling_path.days", 1, 366) * DAY_MS,
        "path_low_qualities": frozenset(r.strings("upgrade.scaling_path.low_template_qualities")),
    }


def _read_quality(r: Reader) -> Fields:
    red_flagged = r.boolean("quality.red_sets_flagged")
    red_days = r.integer("quality.red_days_to_downgrade", 0, 365)
    floor = r.string("quality.downgrade_floor")
    if floor not in r.table("tiers.limits"):
        raise r.fail("quality.downgrade_floor", f"{floor} has no entry in [tiers.limits]")
    floor_status = r.string("quality.floor_status", _META_SENDER_STATUS)
    return {
        "red_sets_flagged": red_flagged,
        "red_days_to_downgrade": red_days,
        "downgrade_floor": floor,
        "floor_status": SenderStatus[floor_status].value,
    }


def _read_templates(r: Reader) -> Fields:
    pause_raw = r.raw("templates.pause_hours")
    if not isinstance(pause_raw, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in pause_raw
    ):
        raise r.fail("templates.pause_hours", "must be an array of positive hours")
    pause_ms = tuple(round(float(v) * HOUR_MS) for v in pause_raw)
    disable_after = r.integer("templates.disable_after_pauses", 0)
    if disable_after > len(pause_ms) + 1:
        raise r.fail(
            "templates.disable_after_pauses",
            f"needs a pause duration for each of the first {disable_after - 1} pauses",
        )
    return {
        "pause_ms": pause_ms,
        "disable_after_pauses": disable_after,
        "untitled_pause": r.string("templates.untitled_pause", ("until_lifted", "pause_hours")),
        "template_hold_codes": frozenset(_codes(r, "templates.hold_codes")),
        "unknown_templates": r.string("templates.unknown", ("allow", "reject")),
    }


def _codes(r: Reader, key: str) -> list[int]:
    raw = r.raw(key)
    if not isinstance(raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw
    ):
        raise r.fail(key, "must be an array of Meta error codes")
    return raw


def _read_throughput(r: Reader) -> Fields:
    fields: Fields = {
        "default_mps": r.integer("throughput.default_mps", 1),
        "upgraded_mps": r.integer("throughput.upgraded_mps", 1),
        "coexistence_mps": r.integer("throughput.coexistence_mps", 1),
        "burst_seconds": r.number("throughput.burst_seconds", 0.0),
        "throughput_backoff_ms": round(r.number("throughput.backoff_seconds") * 1000),
        "throughput_slow_steps": r.integer("throughput.slow_steps", 0, 10),
        "throughput_counts_inbound": r.boolean("throughput.count_inbound"),
        "throughput_slow_recover_ms": round(
            r.number("throughput.slow_recover_seconds", 0.001, 86_400.0) * 1000
        ),
    }
    overrides: list[tuple[str, int]] = []
    for sid, mps in r.table("throughput.overrides").items():
        key = f"throughput.overrides.{sid}"
        r.used.add(key)
        if isinstance(mps, bool) or not isinstance(mps, int) or mps < 1:
            raise r.fail(key, f"must be a positive integer (messages/s), got {mps!r}")
        overrides.append((sid, mps))
    fields["throughput_overrides"] = tuple(overrides)
    return fields


def _read_pair_rate(r: Reader) -> Fields:
    pair_ms = round(r.number("pair_rate.interval_seconds") * 1000)
    if pair_ms < 1:
        raise r.fail("pair_rate.interval_seconds", "must be at least 1 ms")
    return {
        "pair_interval_ms": pair_ms,
        "pair_burst": r.integer("pair_rate.burst", 1),
        "pair_retry_base_s": r.integer("pair_rate.retry_base_seconds", 1, 10),
        "pair_retry_max_exponent": r.integer("pair_rate.retry_max_exponent", 0, 8),
    }


def _read_warmup(r: Reader) -> Fields:
    enabled = r.boolean("warmup.enabled")
    steps: list[WarmupStep] = []
    raw_steps = r.raw("warmup.schedule")
    if not isinstance(raw_steps, list):
        raise r.fail("warmup.schedule", "must be an array of { until_day, cap } tables")
    last_day = 0
    for i, step in enumerate(raw_steps):
        key = f"warmup.schedule[{i}]"
        if not isinstance(step, dict) or set(step) != {"until_day", "cap"}:
            raise r.fail(key, "must be a table with exactly until_day and cap")
        day, cap = step["until_day"], step["cap"]
        if isinstance(day, bool) or not isinstance(day, int) or day <= last_day:
            raise r.fail(key + ".until_day", "must be an integer above the previous step's")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise r.fail(key + ".cap", "must be a non-negative integer")
        steps.append(WarmupStep(day, cap))
        last_day = day
    return {"warmup_enabled": enabled, "warmup": tuple(steps)}


def _read_protection(r: Reader) -> Fields:
    headroom = r.number("protection.headroom_pct", 0.0, 100.0)
    res_util = r.number("protection.reserve_utility_pct", 0.0, 100.0)
    res_auth = r.number("protection.reserve_authentication_pct", 0.0, 100.0)
    if res_util + res_auth >= 100.0:
        raise r.fail("protection.reserve_utility_pct", "reservations must leave part of the limit")
    return {
        "headroom_pct": headroom,
        "reserve_utility_pct": res_util,
        "reserve_authentication_pct": res_auth,
        "frequency_cap": r.integer("protection.frequency_cap", 0, constants.MARKETING_HISTORY),
        "frequency_window_ms": r.hours("protection.frequency_window_hours"),
        "ecosystem_backoff_ms": r.hours("protection.ecosystem_backoff_hours"),
        "block_marketing_on_red": r.boolean("protection.block_marketing_on_red"),
    }


def _read_feedback(r: Reader) -> Fields:
    keep_raw = r.raw("feedback.keep_slot_codes")
    if not isinstance(keep_raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in keep_raw
    ):
        raise r.fail("feedback.keep_slot_codes", "must be an array of Meta error codes")
    return {
        "keep_slot_codes": frozenset(keep_raw),
        "spam_hold_ms": round(r.number("feedback.spam_hold_minutes") * 60_000),
    }


def _read_retention(r: Reader) -> Fields:
    fields: Fields = {
        "idempotency_ms": r.hours("retention.idempotency_hours"),
        "message_id_ms": r.hours("retention.message_id_hours"),
    }
    fields["message_links"] = r.integer("retention.message_links", 0, MAX_MESSAGE_LINKS)
    return fields


def _read_delivery(r: Reader) -> Fields:
    """``delivery.undeliverable``: tables of a template ``category`` and the E.164
    ``prefixes`` Meta delivers none of it to. Without a ``delivery`` table: none."""
    if "delivery" not in r.data:
        return {}
    raw = r.raw("delivery.undeliverable")
    if not isinstance(raw, list):
        raise r.fail("delivery.undeliverable", "must be an array of { category, prefixes }")
    pairs: list[tuple[str, int]] = []
    for i, entry in enumerate(raw):
        key = f"delivery.undeliverable[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"category", "prefixes"}:
            raise r.fail(key, "must be a table with exactly category and prefixes")
        name, prefixes = entry["category"], entry["prefixes"]
        if name not in _TEMPLATE_CATEGORIES:
            valid = ", ".join(_TEMPLATE_CATEGORIES)
            raise r.fail(key + ".category", f"must be one of {valid}, got {name!r}")
        if not isinstance(prefixes, list) or not all(
            isinstance(p, str)
            and 0 < len(p) <= constants.MAX_RECIPIENT_DIGITS
            and p.isdigit()
            and p.isascii()
            for p in prefixes
        ):
            raise r.fail(key + ".prefixes", "must be an array of 1 to 15 digit strings")
        pairs += ((p, int(Category[name])) for p in prefixes)
    keys = frozenset(constants.prefix_key(p, c) for p, c in pairs)
    return {
        "undeliverable": tuple(pairs),
        "undeliverable_keys": keys,
        "undeliverable_table": region_table(keys),
        "undeliverable_lengths": bytes(sorted({len(p) for p, _ in pairs})),
    }


_TEMPLATE_CATEGORIES: Final = ("MARKETING", "UTILITY", "AUTHENTICATION")


#: The reason names ``shadow.reasons`` accepts (``constants.SHADOWABLE``), by value.
SHADOW_NAMES: Final = {
    name: getattr(constants, name)
    for name in (
        "OUTSIDE_WINDOW",
        "RECIPIENT_OPTED_OUT",
        "SENDER_RESTRICTED",
        "MESSAGING_LIMIT",
        "MARKETING_FREQUENCY",
        "QUALITY_PROTECTION",
        "THROUGHPUT",
        "PAIR_RATE",
    )
}


def _read_shadow(r: Reader) -> Fields:
    """``shadow.reasons``: the reasons tiergate reports (``shadow_*`` answer fields)
    but does not enforce. Without a ``shadow`` table: none."""
    if "shadow" not in r.data:
        return {}
    names = r.strings("shadow.reasons")
    for i, name in enumerate(names):
        if name not in SHADOW_NAMES:
            valid = ", ".join(SHADOW_NAMES)
            raise r.fail(f"shadow.reasons[{i}]", f"must be one of {valid}, got {name!r}")
    return {"shadow_reasons": frozenset(SHADOW_NAMES[n] for n in names)}


def _read_engine(r: Reader) -> Fields:
    bucket_ms = round(r.number("engine.bucket_seconds") * 1000)
    long_bucket_ms = round(r.number("engine.long_bucket_seconds") * 1000)
    if bucket_ms < 1 or long_bucket_ms < 1:
        raise r.fail("engine.bucket_seconds", "bucket widths must be at least 1 ms")
    return {"bucket_ms": bucket_ms, "long_bucket_ms": long_bucket_ms}


# In the order of the TOML files: the first bad key is the one reported.
TABLE_READERS: Final = (
    _read_names,
    _read_tiers,
    _read_limit,
    _read_counting,
    _read_windows,
    _read_upgrade,
    _read_quality,
    _read_templates,
    _read_throughput,
    _read_pair_rate,
    _read_warmup,
    _read_protection,
    _read_feedback,
    _read_retention,
    _read_engine,
    _read_delivery,
    _read_shadow,
)
