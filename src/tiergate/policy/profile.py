"""Profiles: Meta's rules as data (TOML), loaded into a frozen, typed ``Profile``.

A profile is selected by name (a TOML file shipped in ``tiergate/profiles``)
or by path. A file may ``extends = "<name or path>"`` and override any key;
tables merge key by key, every other value (arrays included) replaces the
base's. Every key is checked at load time: a bad profile raises
:class:`ProfileError` naming the file, the key and the reason.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from tiergate.engine import constants

from .events import EntryPoint, Quality, SenderStatus

__all__ = [
    "DEFAULT_PROFILE",
    "Profile",
    "ProfileError",
    "WarmupStep",
    "load_profile",
    "shipped_profiles",
]

DEFAULT_PROFILE = "meta-2025"
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


@dataclass(frozen=True, slots=True)
class Profile:
    """Every number and switch of the rules; the code holds only mechanisms."""

    name: str
    description: str
    source: str
    # tiers
    tier_limits: tuple[tuple[str, int], ...]  # Meta tier name → limit (UNLIMITED for none)
    ladder: tuple[str, ...]
    starting_tier: str
    starting_tier_unverified: str
    # limit
    limit_scope: Literal["portfolio", "phone_number"]
    window_ms: int
    # windows
    service_window_ms: int
    free_entry_point_window_ms: int
    free_entry_points: frozenset[int]
    free_entry_point_allows_free_form: bool
    # upgrades
    upgrade_mode: Literal["apply", "predict"]
    upgrade_basis: Literal["unique", "cumulative"]
    upgrade_threshold: float
    lookback_ms: int
    upgrade_delay_ms: int
    predict_within_ms: int
    min_in_tier_ms: int
    upgrade_qualities: frozenset[int]
    upgrade_statuses: frozenset[int]
    # Meta's scaling paths out of path_tier ("" : none), see _read_scaling_path
    path_tier: str
    path_users: int
    path_window_ms: int
    path_low_qualities: frozenset[str]
    # quality
    red_sets_flagged: bool
    red_days_to_downgrade: int
    downgrade_floor: str
    floor_status: int
    # templates
    pause_ms: tuple[int, ...]
    disable_after_pauses: int  # 0: only Meta's DISABLED disables
    untitled_pause: Literal["until_lifted", "pause_hours"]
    template_hold_codes: frozenset[int]
    unknown_templates: Literal["allow", "reject"]
    # throughput and pair rate
    default_mps: int
    upgraded_mps: int
    coexistence_mps: int
    burst_seconds: float
    throughput_backoff_ms: int
    throughput_slow_steps: int  # each 130429 halves the rate, at most this many times
    throughput_slow_recover_ms: int  # one halving undone after this long without a 130429
    throughput_counts_inbound: bool  # an inbound message takes a send's worth of throughput
    throughput_overrides: tuple[tuple[str, int], ...]
    pair_interval_ms: int
    pair_burst: int
    pair_retry_base_s: int  # a FAILED 131056 holds the pair pair_retry_base_s ** X seconds
    pair_retry_max_exponent: int  # X's bound (0: a 131056 holds nothing)
    # protective rules
    warmup_enabled: bool
    warmup: tuple[WarmupStep, ...]
    headroom_pct: float
    reserve_utility_pct: float
    reserve_authentication_pct: float
    frequency_cap: int
    frequency_window_ms: int
    ecosystem_backoff_ms: int
    block_marketing_on_red: bool
    # feedback and retention
    keep_slot_codes: frozenset[int]
    spam_hold_ms: int  # after a FAILED 131048: business-initiated sends held this long
    idempotency_ms: int
    message_id_ms: int
    # engine geometry
    bucket_ms: int
    long_bucket_ms: int
    # at most this many Meta message ids linked to tickets (``retention.message_links``)
    message_links: int

    def tier_limit(self, tier: str) -> int:
        """The limit of a Meta tier name; KeyError if the profile does not know it."""
        for name, limit in self.tier_limits:
            if name == tier:
                return limit
        raise KeyError(tier)

    def knows_tier(self, tier: str) -> bool:
        return any(name == tier for name, _ in self.tier_limits)

    def next_tier(self, tier: str) -> str | None:
        """The ladder step above ``tier`` (by limit when ``tier`` is off the ladder)."""
        if tier in self.ladder:
            i = self.ladder.index(tier)
            return self.ladder[i + 1] if i + 1 < len(self.ladder) else None
        limit = self.tier_limit(tier)
        for name in self.ladder:
            if self.tier_limit(name) > limit:
                return name
        return None

    def lower_tier(self, tier: str) -> str | None:
        """The ladder step below ``tier`` (None at the bottom)."""
        limit = self.tier_limit(tier)
        below = [name for name in self.ladder if self.tier_limit(name) < limit]
        return below[-1] if below else None

    def tier_for_limit(self, limit: int) -> str | None:
        """The highest known tier whose limit does not exceed ``limit`` (conservative)."""
        best: tuple[int, str] | None = None
        for name, value in self.tier_limits:
            if value <= limit and (best is None or value > best[0]):
                best = (value, name)
        return best[1] if best is not None else None

    def throughput_override(self, sender_id: str) -> int | None:
        for sid, mps in self.throughput_overrides:
            if sid == sender_id:
                return mps
        return None


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in the package."""
    root = resources.files("tiergate") / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read(name_or_path: str | Path, chain: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    text: str
    label: str
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.suffix == ".toml" or "/" in str(name_or_path):
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(label, "", f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ProfileError(
                label,
                "",
                f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
            ) from None
    else:
        name = str(name_or_path)
        label = f"{name}.toml"
        res = resources.files("tiergate") / "profiles" / label
        if not res.is_file():
            known = ", ".join(shipped_profiles())
            raise ProfileError(label, "", f"no shipped profile named {name!r} (known: {known})")
        text = res.read_text(encoding="utf-8")
        label = f"tiergate/profiles/{label}"
    if label in chain:
        raise ProfileError(label, "extends", "circular extends: " + " → ".join((*chain, label)))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(label, "", f"not valid TOML: {exc}") from None
    base = data.pop("extends", None)
    if base is None:
        return data, label
    if not isinstance(base, str) or not base:
        raise ProfileError(label, "extends", "must be a profile name or path")
    if not Path(base).is_absolute() and ("/" in base or base.endswith(".toml")):
        base = str((path.parent if label == str(path) else Path.cwd()) / base)
    parent, _ = _read(base, (*chain, label))
    return _merge(parent, data), label


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _Reader:
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


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """Load a shipped profile by name or a user file by path (``extends`` resolved)."""
    data, file = _read(name_or_path, ())
    return _build(_Reader(_with_later_keys(data), file))


#: Keys profiles gained after users had written whole profiles of their own: a
#: file that neither sets one nor extends a profile that does takes the value of
#: the default profile (``meta-2025``), so such files keep loading unchanged.
_LATER_KEYS: Final = (
    ("retention", "message_links"),
    ("templates", "untitled_pause"),
    ("templates", "hold_codes"),
    ("feedback", "spam_hold_minutes"),
    ("upgrade", "scaling_path"),
    ("throughput", "slow_steps"),
    ("throughput", "slow_recover_seconds"),
    ("throughput", "count_inbound"),
    ("pair_rate", "retry_base_seconds"),
    ("pair_rate", "retry_max_exponent"),
)


def _with_later_keys(data: dict[str, Any]) -> dict[str, Any]:
    missing = [
        (table, key)
        for table, key in _LATER_KEYS
        if not (isinstance(data.get(table), dict) and key in data[table])
    ]
    if not missing:
        return data
    default, _ = _read(DEFAULT_PROFILE, ())
    return _merge({table: {key: default[table][key]} for table, key in missing}, data)


#: Profile fields read from one TOML table, by ``Profile`` field name.
_Fields = dict[str, Any]


def _build(r: _Reader) -> Profile:
    """Every table's reader in turn, then the check for keys none of them read."""
    fields: _Fields = {"source": r.file}
    for read in _TABLE_READERS:
        fields.update(read(r))
    r.check_unknown(r.data)
    return Profile(**fields)


def _read_names(r: _Reader) -> _Fields:
    name = r.string("name")
    if not name:
        raise r.fail("name", "must not be empty")
    return {"name": name, "description": r.string("description")}


def _read_tier_limits(r: _Reader) -> list[tuple[str, int]]:
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


def _read_tiers(r: _Reader) -> _Fields:
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


def _read_limit(r: _Reader) -> _Fields:
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


def _read_counting(r: _Reader) -> _Fields:
    for key, supported in _COUNTING.items():
        if r.boolean(key) is not supported:
            raise r.fail(key, f"only {str(supported).lower()} is supported (Meta's counting rule)")
    return {}


def _read_windows(r: _Reader) -> _Fields:
    return {
        "service_window_ms": r.hours("windows.service_hours", 1 / 60),
        "free_entry_point_window_ms": r.hours("windows.free_entry_point_hours", 0),
        "free_entry_points": r.enum_names("windows.free_entry_points", EntryPoint),
        "free_entry_point_allows_free_form": r.boolean("windows.free_entry_point_allows_free_form"),
    }


def _read_upgrade(r: _Reader) -> _Fields:
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


def _read_scaling_path(r: _Reader, mode: str) -> _Fields:
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


def _read_quality(r: _Reader) -> _Fields:
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


def _read_templates(r: _Reader) -> _Fields:
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


def _codes(r: _Reader, key: str) -> list[int]:
    raw = r.raw(key)
    if not isinstance(raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw
    ):
        raise r.fail(key, "must be an array of Meta error codes")
    return raw


def _read_throughput(r: _Reader) -> _Fields:
    fields: _Fields = {
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


def _read_pair_rate(r: _Reader) -> _Fields:
    pair_ms = round(r.number("pair_rate.interval_seconds") * 1000)
    if pair_ms < 1:
        raise r.fail("pair_rate.interval_seconds", "must be at least 1 ms")
    return {
        "pair_interval_ms": pair_ms,
        "pair_burst": r.integer("pair_rate.burst", 1),
        "pair_retry_base_s": r.integer("pair_rate.retry_base_seconds", 1, 10),
        "pair_retry_max_exponent": r.integer("pair_rate.retry_max_exponent", 0, 8),
    }


def _read_warmup(r: _Reader) -> _Fields:
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


def _read_protection(r: _Reader) -> _Fields:
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


def _read_feedback(r: _Reader) -> _Fields:
    keep_raw = r.raw("feedback.keep_slot_codes")
    if not isinstance(keep_raw, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in keep_raw
    ):
        raise r.fail("feedback.keep_slot_codes", "must be an array of Meta error codes")
    return {
        "keep_slot_codes": frozenset(keep_raw),
        "spam_hold_ms": round(r.number("feedback.spam_hold_minutes") * 60_000),
    }


def _read_retention(r: _Reader) -> _Fields:
    fields: _Fields = {
        "idempotency_ms": r.hours("retention.idempotency_hours"),
        "message_id_ms": r.hours("retention.message_id_hours"),
    }
    fields["message_links"] = r.integer("retention.message_links", 0, MAX_MESSAGE_LINKS)
    return fields


def _read_engine(r: _Reader) -> _Fields:
    bucket_ms = round(r.number("engine.bucket_seconds") * 1000)
    long_bucket_ms = round(r.number("engine.long_bucket_seconds") * 1000)
    if bucket_ms < 1 or long_bucket_ms < 1:
        raise r.fail("engine.bucket_seconds", "bucket widths must be at least 1 ms")
    return {"bucket_ms": bucket_ms, "long_bucket_ms": long_bucket_ms}


# In the order of the TOML files: the first bad key is the one reported.
_TABLE_READERS: Final = (
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
)
