"""Configuration of ``tiergate serve``: flags > ``TIERGATE_*`` env vars > TOML file > defaults.

Every setting has one name used everywhere: the flag ``--webhook-listen``, the
env var ``TIERGATE_WEBHOOK_LISTEN`` and the top-level TOML key
``webhook_listen``. The TOML file can also declare ``[[senders]]`` and
``[[templates]]``; the server applies them at start to senders and templates it
does not know yet, so a fresh sidecar has something to admit for.

Bad configuration raises :class:`ConfigError`, whose message names the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from tiergate.logs import LOG_FORMATS
from tiergate.policy.caps import CAP_SETTINGS, Caps
from tiergate.policy.events import (
    Quality,
    SenderStatus,
    SenderUpdate,
    TemplateStatus,
    TemplateUpdate,
)
from tiergate.store.location import EMBEDDED, StoreLocation, parse_failure, parse_store

ENV_PREFIX = "TIERGATE_"
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_PROFILE = "meta-2025"
DEFAULT_MAX_BATCH = 1000
MAX_BATCH_CEILING = 100_000
#: Calls served at once (open streams counted); more answer RESOURCE_EXHAUSTED.
DEFAULT_MAX_IN_FLIGHT = 1024
#: The most calls of one method gRPC core holds for the event loop before it takes
#: them; more are turned away RESOURCE_EXHAUSTED (``grpc_server.pending_limits``).
DEFAULT_MAX_QUEUED = 256
#: The CPU the event loop runs on alone (``server/affinity.py``); -1: not pinned.
DEFAULT_LOOP_CPU = -1
#: The largest request message gRPC takes; 0: 4 MiB, or max_batch KiB if more
#: (a full AdmitBatch fits: an AdmitRequest is at most ~1 KiB).
DEFAULT_MAX_MESSAGE_BYTES = 0
DURABILITY_MODES = ("fsync-always", "fsync-interval", "write")
DEFAULT_DURABILITY = "fsync-interval"
DEFAULT_SHUTDOWN_GRACE_S = 10.0
DEFAULT_WEBHOOK_MAX_CONNECTIONS = 256
#: Caps on what clients can create (``policy.caps.Caps``: its defaults).
DEFAULT_CAPS = Caps()
MAX_SECRET_FILE_BYTES = 4096

Clock = Literal["server", "request"]
_E = TypeVar("_E", Quality, SenderStatus, TemplateStatus)


class ConfigError(ValueError):
    """A setting is invalid; ``key`` names it (``max_batch``, ``senders[1].tier`` …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServeConfig:
    listen: Endpoint = Endpoint("127.0.0.1", 50051)
    profile: str = DEFAULT_PROFILE
    data_dir: Path | None = None
    config: Path | None = None
    clock: Clock = "server"
    webhook_secret: str = field(default="", repr=False)
    webhook_listen: Endpoint | None = None
    webhook_verify_token: str = field(default="", repr=False)
    max_batch: int = DEFAULT_MAX_BATCH
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_queued: int = DEFAULT_MAX_QUEUED
    loop_cpu: int = DEFAULT_LOOP_CPU
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    durability: str = DEFAULT_DURABILITY
    # Start even if the journal is corrupt before its tail: cut there (the cut
    # bytes are kept in *.corrupt files). Off by default: refusing is safer.
    recover_truncate: bool = False
    # Shadow mode: every shadowable reason answered ADMIT, the would-be answer in
    # the shadow_* fields (a profile's [shadow] table shadows some reasons only).
    shadow: bool = False
    # WatchSenderState: usage thresholds (percent of the limit) a watcher is told of.
    watch_thresholds: tuple[int, ...] = (80, 90, 100)
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_S
    metrics_listen: Endpoint | None = None
    log_level: str = "info"
    log_format: str = "text"  # or "json": one JSON object a line (tiergate.logs)
    # TLS for the gRPC port and the HTTP listeners; mutual TLS with a client CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens: the data plane's, and the control plane's (admin).
    token_file: Path | None = None
    admin_token_file: Path | None = None
    webhook_secret_file: Path | None = None
    webhook_verify_token_file: Path | None = None
    # Listen on a non-loopback address with neither TLS nor a token.
    insecure: bool = False
    webhook_max_connections: int = DEFAULT_WEBHOOK_MAX_CONNECTIONS
    # Caps on what clients can create (see policy/caps.py).
    max_senders: int = DEFAULT_CAPS.senders
    max_templates: int = DEFAULT_CAPS.templates
    max_templates_per_waba: int = DEFAULT_CAPS.templates_per_waba
    max_idempotency_keys: int = DEFAULT_CAPS.idempotency_keys
    max_id_length: int = DEFAULT_CAPS.id_length
    max_template_id_length: int = DEFAULT_CAPS.template_id_length
    max_idempotency_key_length: int = DEFAULT_CAPS.key_length
    # The tokens read from token_file and admin_token_file.
    token: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    senders: tuple[SenderUpdate, ...] = ()
    templates: tuple[TemplateUpdate, ...] = ()
    # Where the counting state lives (store/location.py) and the answer while it is gone.
    store: StoreLocation = EMBEDDED
    store_failure: Literal["closed", "open"] = "closed"
    # Where each setting came from: "flag", "env", "file" or "default".
    origins: Mapping[str, str] = field(default_factory=dict)


def parse_endpoint(key: str, value: str) -> Endpoint:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6); port 0 picks a free port."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(key, f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port must be 0..65535, got {port}")
    return Endpoint(host, port)


def _str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {type(value).__name__}")
    return value


def _parsed(key: str, value: object, kind: type[int] | type[float], what: str) -> int | float:
    """``value`` (TOML, or text from a flag or the environment) as ``kind``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected {what}, got a boolean")
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise ConfigError(key, f"expected {what}, got {value!r}") from None
    raise ConfigError(key, f"expected {what}, got {type(value).__name__}")


def _int(key: str, value: object) -> int:
    return int(_parsed(key, value, int, "an integer"))


def _float(key: str, value: object) -> float:
    return float(_parsed(key, value, float, "a number"))


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # from TIERGATE_* environment variables
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _listen(key: str, value: object) -> Endpoint:
    return parse_endpoint(key, _str(key, value))


def _optional_listen(key: str, value: object) -> Endpoint | None:
    text = _str(key, value)
    return parse_endpoint(key, text) if text.strip() else None


def _profile(key: str, value: object) -> str:
    text = _str(key, value).strip()
    if not text:
        raise ConfigError(key, "must name a profile or a profile file")
    return text


def _path(key: str, value: object) -> Path | None:
    """A directory; ``none`` (or empty) keeps state in memory only."""
    text = _str(key, value).strip()
    if text.lower() in ("", "none"):
        return None
    return Path(text).expanduser()


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Where state lives when no data dir is configured: the user's state directory."""
    base = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "tiergate"


def _clock(key: str, value: object) -> Clock:
    text = _str(key, value).strip()
    if text not in ("server", "request"):
        raise ConfigError(key, f"must be 'server' or 'request', got {text!r}")
    return cast(Clock, text)


def _int_in(lo: int, hi: int) -> Callable[[str, object], int]:
    """A reader of an integer setting that must lie in ``lo..hi``."""

    def read(key: str, value: object) -> int:
        n = _int(key, value)
        if not lo <= n <= hi:
            raise ConfigError(key, f"must be {lo}..{hi}, got {n}")
        return n

    return read


def _one_of(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    """A reader of a setting that names one of ``choices`` (any case)."""

    def read(key: str, value: object) -> str:
        text = _str(key, value).strip().lower()
        if text not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {text!r}")
        return text

    return read


_max_batch = _int_in(1, MAX_BATCH_CEILING)
_max_in_flight = _int_in(1, 1_000_000)
_max_queued = _int_in(1, 1_000_000)
_loop_cpu = _int_in(-1, 4095)


#: gRPC's limit: a message length is a 32-bit signed integer.
MAX_MESSAGE_CEILING = (1 << 31) - 1


def _max_message_bytes(key: str, value: object) -> int:
    n = _int(key, value)
    if n != 0 and not 1024 <= n <= MAX_MESSAGE_CEILING:
        raise ConfigError(key, f"must be 0 (automatic) or 1024..{MAX_MESSAGE_CEILING}, got {n}")
    return n


def message_limit(config: ServeConfig) -> int:
    """The largest request message the gRPC server takes, in bytes."""
    if config.max_message_bytes:
        return config.max_message_bytes
    return max(4 << 20, config.max_batch * 1024)


def _grace(key: str, value: object) -> float:
    seconds = _float(key, value)
    if not 0 <= seconds <= 3600:
        raise ConfigError(key, f"must be 0..3600 seconds, got {seconds}")
    return seconds


LOG_LEVELS = ("debug", "info", "warning", "error")


def _file(key: str, value: object) -> Path | None:
    """A file path; empty means not set."""
    text = _str(key, value).strip()
    return Path(text).expanduser() if text else None


_max_connections = _int_in(1, 65535)
_max_count = _int_in(1, 1 << 40)


def caps(config: ServeConfig) -> Caps:
    """The caps the config sets (``policy.caps.Caps``)."""
    return Caps(**{field: getattr(config, name) for field, name in CAP_SETTINGS.items()})


def _thresholds(key: str, value: object) -> tuple[int, ...]:
    """Percentages of the limit: a TOML array, or "80,90,100" from a flag or the env."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(key, "must be a non-empty list of percentages, e.g. 80,90,100")
    out = sorted({_int(key, v) for v in items})
    if out[0] < 1 or out[-1] > 1000:
        raise ConfigError(key, f"percentages must be 1..1000, got {out}")
    return tuple(out)


def _checked(parse: Callable[[str, str], Any]) -> Callable[[str, object], Any]:
    """A reader of a text setting whose parser raises ValueError naming the setting."""

    def read(key: str, value: object) -> Any:
        try:
            return parse(_str(key, value), key)
        except ValueError as e:
            raise ConfigError(key, str(e).removeprefix(f"{key}: ")) from None

    return read


_SETTINGS: dict[str, Callable[[str, object], Any]] = {
    "listen": _listen,
    "profile": _profile,
    "data_dir": _path,
    "clock": _clock,
    "webhook_secret": _str,
    "webhook_listen": _optional_listen,
    "webhook_verify_token": _str,
    "max_batch": _max_batch,
    "max_in_flight": _max_in_flight,
    "max_queued": _max_queued,
    "loop_cpu": _loop_cpu,
    "max_message_bytes": _max_message_bytes,
    "durability": _one_of(DURABILITY_MODES),
    "recover_truncate": _bool,
    "shadow": _bool,
    "watch_thresholds": _thresholds,
    "shutdown_grace": _grace,
    "metrics_listen": _optional_listen,
    "log_level": _one_of(LOG_LEVELS),
    "log_format": _one_of(LOG_FORMATS),
    "tls_cert": _file,
    "tls_key": _file,
    "tls_client_ca": _file,
    "token_file": _file,
    "admin_token_file": _file,
    "webhook_secret_file": _file,
    "webhook_verify_token_file": _file,
    "insecure": _bool,
    "webhook_max_connections": _max_connections,
    "max_senders": _max_count,
    "max_templates": _max_count,
    "max_templates_per_waba": _max_count,
    "max_idempotency_keys": _max_count,
    "max_id_length": _int_in(1, DEFAULT_CAPS.id_length),
    "max_template_id_length": _int_in(1, DEFAULT_CAPS.template_id_length),
    "max_idempotency_key_length": _int_in(1, DEFAULT_CAPS.key_length),
    "store": _checked(parse_store),
    "store_failure": _checked(parse_failure),
}
#: Settings whose values are secrets: shown as "set" or "not set", never printed.
SECRET_SETTINGS = ("webhook_secret", "webhook_verify_token")
SETTING_NAMES = ("config", *_SETTINGS)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- [[senders]] and [[templates]] -------------------------------------------

_SENDER_KEYS: dict[str, Callable[[str, object], Any]] = {
    "sender_id": _str,
    "portfolio_id": _str,
    "waba_id": _str,
    "display_phone_number": _str,
    "verified": _bool,
    "tier": _str,
    "quality": lambda k, v: _enum(k, v, Quality),
    "status": lambda k, v: _enum(k, v, SenderStatus),
    "throughput_mps": _int,
    "coexistence": _bool,
    "registered_at_unix_ms": _int,
    "restricted_until_unix_ms": _int,
}

_TEMPLATE_KEYS: dict[str, Callable[[str, object], Any]] = {
    "template_id": _str,
    "template_name": _str,
    "status": lambda k, v: _enum(k, v, TemplateStatus),
    "paused_until_unix_ms": _int,
    "waba_id": _str,
}


def _enum(key: str, value: object, enum: type[_E]) -> _E:
    name = _str(key, value).strip().upper()
    prefix = "TEMPLATE_STATUS_"
    if name.startswith(prefix):
        name = name[len(prefix) :]
    names = [m.name for m in enum if m.value != 0]
    if name not in names:
        raise ConfigError(key, f"must be one of {', '.join(names)}, got {value!r}")
    return enum[name]


def _table_list(key: str, value: object) -> list[Mapping[str, object]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(key, f"expected an array of tables ([[{key}]])")
    return cast(list[Mapping[str, object]], value)


def _fields(
    key: str, table: Mapping[str, object], spec: Mapping[str, Callable[[str, object], Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in table.items():
        parse = spec.get(name)
        if parse is None:
            raise ConfigError(f"{key}.{name}", f"unknown key (known: {', '.join(spec)})")
        out[name] = parse(f"{key}.{name}", raw)
    return out


def parse_senders(value: object) -> tuple[SenderUpdate, ...]:
    seen: set[str] = set()
    senders = []
    for i, table in enumerate(_table_list("senders", value)):
        key = f"senders[{i}]"
        fields = _fields(key, table, _SENDER_KEYS)
        sender_id = fields.get("sender_id", "").strip()
        if not sender_id:
            raise ConfigError(f"{key}.sender_id", "is required")
        if sender_id in seen:
            raise ConfigError(f"{key}.sender_id", f"duplicate sender {sender_id!r}")
        seen.add(sender_id)
        fields["sender_id"] = sender_id
        senders.append(SenderUpdate(**fields))
    return tuple(senders)


def parse_templates(value: object) -> tuple[TemplateUpdate, ...]:
    templates = []
    for i, table in enumerate(_table_list("templates", value)):
        key = f"templates[{i}]"
        fields = _fields(key, table, _TEMPLATE_KEYS)
        if not fields.get("template_id", "").strip():
            raise ConfigError(f"{key}.template_id", "is required")
        fields.setdefault("status", TemplateStatus.APPROVED)
        templates.append(TemplateUpdate(**fields))
    return tuple(templates)


# --- loading -----------------------------------------------------------------


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            "config",
            f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
        ) from None


def load(
    flags: Mapping[str, object | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServeConfig:
    """Build the configuration. ``flags`` maps setting names to flag values
    (``None`` = not given); ``env`` defaults to ``os.environ``."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    unknown = set(flags) - set(SETTING_NAMES)
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown setting")

    config_text = flags.get("config")
    origin_config = "flag"
    if config_text is None and env.get(env_name("config")):
        config_text, origin_config = env[env_name("config")], "env"
    config_path = Path(_str("config", config_text)).expanduser() if config_text else None
    file_values: dict[str, Any] = read_file(config_path) if config_path else {}

    values: dict[str, Any] = {}
    origins: dict[str, str] = {"config": origin_config if config_path else "default"}
    for name, parse in _SETTINGS.items():
        if name in flags:
            raw, origin = flags[name], "flag"
        elif env_name(name) in env:
            raw, origin = env[env_name(name)], "env"
        elif name in file_values:
            raw, origin = file_values[name], "file"
        else:
            origins[name] = "default"
            if name == "data_dir":  # durable by default: memory-only must be asked for
                values[name] = default_data_dir(env)
            continue
        values[name] = parse(name, raw)
        origins[name] = origin

    for name in file_values:
        if name not in _SETTINGS and name not in ("senders", "templates"):
            known = ", ".join([*_SETTINGS, "senders", "templates"])
            raise ConfigError(name, f"unknown key in {config_path} (known: {known})")

    _read_secrets(values)
    config = ServeConfig(
        config=config_path,
        senders=parse_senders(file_values.get("senders", [])),
        templates=parse_templates(file_values.get("templates", [])),
        origins=origins,
        **values,
    )
    check_exposure(config)
    return config


# --- secrets and exposure ----------------------------------------------------


def read_secret(key: str, path: Path) -> str:
    """A secret kept in a file (its surrounding whitespace and final newline dropped)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(key, f"{path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def _read_token(key: str, path: Path) -> str:
    token = read_secret(key, path)
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError(key, f"{path}: a token is printable ASCII without spaces")
    return token


def _read_secrets(values: dict[str, Any]) -> None:
    """Check the TLS settings and read the secrets kept in files into ``values``."""
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        missing = "tls_key" if values.get("tls_key") is None else "tls_cert"
        raise ConfigError(missing, "tls_cert and tls_key are given together")
    if values.get("tls_client_ca") is not None and values.get("tls_cert") is None:
        raise ConfigError("tls_client_ca", "needs tls_cert and tls_key")
    for file_key, key in (("token_file", "token"), ("admin_token_file", "admin_token")):
        path = values.get(file_key)
        if path is not None:
            values[key] = _read_token(file_key, path)
    for key in SECRET_SETTINGS:
        path = values.get(f"{key}_file")
        if path is None:
            continue
        if values.get(key):
            raise ConfigError(f"{key}_file", f"give {key} or {key}_file, not both")
        values[key] = read_secret(f"{key}_file", path)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(config: ServeConfig) -> None:
    """Refuse a non-loopback gRPC address without TLS or a token, and a non-loopback
    webhook address that checks neither signatures nor client certificates,
    unless ``insecure`` is set."""
    if config.insecure:
        return
    listen = config.listen
    if not is_loopback(listen.host) and not (config.tls_cert or config.token or config.admin_token):
        raise ConfigError(
            "listen",
            f"{listen} is not a loopback address: set tls_cert and tls_key, or "
            "token_file, or insecure to serve it without either",
        )
    webhook = config.webhook_listen
    if (
        webhook is not None
        and not is_loopback(webhook.host)
        and not (config.webhook_secret or config.tls_client_ca)
    ):
        raise ConfigError(
            "webhook_listen",
            f"{webhook} is not a loopback address: set webhook_secret (signatures "
            "checked) or tls_client_ca, or insecure to serve it without either",
        )
