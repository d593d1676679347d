"""Profiles: Meta's rules as data (TOML), loaded into a frozen, typed ``Profile``.

A profile is selected by name (a TOML file shipped in ``tiergate/profiles``)
or by path. A file may ``extends = "<name or path>"`` and override any key;
tables merge key by key, every other value (arrays included) replaces the
base's. Every key is checked at load time: a bad profile raises
:class:`ProfileError` naming the file, the key and the reason.
"""

from __future__ import annotations

import tomllib
from array import array
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from tiergate.engine.constants import shadow_flags

from .profile_tables import (
    DAY_MS,
    HOUR_MS,
    TABLE_READERS,
    Fields,
    ProfileError,
    Reader,
    WarmupStep,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_PROFILE",
    "HOUR_MS",
    "Profile",
    "ProfileError",
    "WarmupStep",
    "load_profile",
    "shipped_profiles",
]

DEFAULT_PROFILE = "meta-2025"


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
    # (prefix, category) pairs Meta does not deliver (``delivery.undeliverable``), their
    # keys (``constants.prefix_key``), the kernels' lookup table of those keys
    # (``engine.columns.region_table``) and their distinct prefix lengths
    undeliverable: tuple[tuple[str, int], ...] = ()
    undeliverable_keys: frozenset[int] = frozenset()
    undeliverable_table: array[int] = field(default_factory=lambda: array("Q"), compare=False)
    undeliverable_lengths: bytes = b""
    # reasons reported in the answers' shadow fields but not enforced (``shadow.reasons``,
    # or every one of ``constants.SHADOWABLE`` under ``serve --shadow``)
    shadow_reasons: frozenset[int] = frozenset()

    @property
    def shadow_flags(self) -> int:
        """The request flag bits that shadow :attr:`shadow_reasons` (``constants.SHADOW_SHIFT``)."""
        return shadow_flags(self.shadow_reasons)

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


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """Load a shipped profile by name or a user file by path (``extends`` resolved)."""
    data, file = _read(name_or_path, ())
    return _build(Reader(_with_later_keys(data), file))


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


def _build(r: Reader) -> Profile:
    """Every table's reader in turn, then the check for keys none of them read."""
    fields: Fields = {"source": r.file}
    for read in TABLE_READERS:
        fields.update(read(r))
    r.check_unknown(r.data)
    return Profile(**fields)
