"""``tiergate``: serve, state SENDER, check-config, simulate SCENARIO."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from tiergate import __version__
from tiergate import config as cfg
from tiergate.v1 import admission_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_CONFIG = 2  # bad config, or a setting the sidecar cannot start with (port, data dir)


# --- serve / check-config ------------------------------------------------------


#: ``tiergate serve``'s flags that take a value: (flag, metavar, help).
_SETTINGS = (
    ("--config", "FILE", "TOML config file (TIERGATE_CONFIG)"),
    ("--listen", "HOST:PORT", f"gRPC address (default {cfg.DEFAULT_LISTEN})"),
    ("--profile", "NAME|FILE", f"rules profile (default {cfg.DEFAULT_PROFILE})"),
    ("--data-dir", "DIR", "durable state (journal + snapshots)"),
    (
        "--webhook-secret",
        "SECRET",
        "Meta app secret for signatures (visible to local users: prefer "
        "--webhook-secret-file or TIERGATE_WEBHOOK_SECRET)",
    ),
    ("--webhook-listen", "HOST:PORT", "HTTP receiver for Meta webhooks"),
    ("--webhook-verify-token", "TOKEN", "token for Meta's subscription check"),
    ("--max-batch", "N", f"most requests per AdmitBatch call (default {cfg.DEFAULT_MAX_BATCH})"),
    (
        "--max-in-flight",
        "N",
        "calls served at once, open streams counted; more answer RESOURCE_EXHAUSTED "
        f"(default {cfg.DEFAULT_MAX_IN_FLIGHT})",
    ),
    (
        "--max-message-bytes",
        "N",
        "largest request message taken (default 0: 4 MiB, or max-batch KiB if more)",
    ),
    (
        "--durability",
        "MODE",
        f"{' | '.join(cfg.DURABILITY_MODES)} (default {cfg.DEFAULT_DURABILITY})",
    ),
    (
        "--shutdown-grace",
        "SECONDS",
        f"time in-flight calls get at shutdown (default {cfg.DEFAULT_SHUTDOWN_GRACE_S:g})",
    ),
    ("--metrics-listen", "HOST:PORT", "Prometheus /metrics endpoint"),
    ("--log-level", "LEVEL", "debug | info | warning | error"),
    (
        "--store",
        "URL",
        "embedded (default) | redis://[user:password@]HOST:PORT[/DB] | rediss://… | "
        "redis+cluster://HOST:PORT[,HOST:PORT…]",
    ),
    ("--store-failure", "MODE", "closed (default: RETRY_LATER) | open, while the store is gone"),
)
#: The exposure flags that take a value (TLS, tokens, secrets, connection limits).
_EXPOSURE = (
    ("--tls-cert", "FILE", "PEM certificate (chain) for gRPC and HTTP"),
    ("--tls-key", "FILE", "PEM private key of --tls-cert"),
    ("--tls-client-ca", "FILE", "PEM CA bundle: require client certificates (mTLS)"),
    (
        "--token-file",
        "FILE",
        "data-plane token (Admit*, GetSenderState) as 'authorization: Bearer <token>'",
    ),
    (
        "--admin-token-file",
        "FILE",
        "control-plane token (sender and template updates, IngestWebhook); "
        "it also works on the data plane",
    ),
    ("--webhook-secret-file", "FILE", "file holding the Meta app secret"),
    ("--webhook-verify-token-file", "FILE", "file holding the verify token"),
    (
        "--webhook-max-connections",
        "N",
        "open connections the webhook receiver keeps (default "
        f"{cfg.DEFAULT_WEBHOOK_MAX_CONNECTIONS}); idle ones are closed first beyond it",
    ),
)


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    for flag, metavar, text in _SETTINGS:
        p.add_argument(flag, metavar=metavar, help=text)
    p.add_argument(
        "--clock",
        choices=("server", "request"),
        help="'request' takes time from at_unix_ms (replays, tests); default 'server'",
    )
    p.add_argument(
        "--recover-truncate",
        action="store_true",
        default=None,
        help="start even if the journal is corrupt before its tail, cutting it there",
    )
    g = p.add_argument_group("exposure", "TLS, tokens, secrets and connection limits")
    for flag, metavar, text in _EXPOSURE:
        g.add_argument(flag, metavar=metavar, help=text)
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback address without TLS or a token",
    )


def _load_config(args: argparse.Namespace) -> cfg.ServeConfig:
    flags = {name: getattr(args, name, None) for name in cfg.SETTING_NAMES}
    return cfg.load(flags)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args)
    except cfg.ConfigError as e:
        print(f"tiergate: bad config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tiergate.server import StartupError, run

    try:
        return run(config, reload_config=lambda: _load_config(args))
    except StartupError as e:
        print(f"tiergate: cannot start: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    from tiergate.server import tls
    from tiergate.server.app import Sidecar, StartupError, seed, seed_clock_ms

    try:
        config = _load_config(args)
        tls.http_context(config)  # the certificate and key load together
        sidecar = Sidecar(config)
        service = sidecar.build_service()
        applied = seed(service, config.senders, config.templates, seed_clock_ms(config))
        if config.data_dir is not None:
            _check_data_dir(config.data_dir)
    except (cfg.ConfigError, StartupError) as e:
        print(f"tiergate: bad config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    source = f"{config.config}" if config.config else "no config file"
    print(f"config ok ({source})")
    for name in cfg.SETTING_NAMES:
        if name == "config":
            continue
        value = getattr(config, name)
        shown = ("set" if value else "not set") if name in cfg.SECRET_SETTINGS else value
        print(f"  {name:<26} {shown!s:<30} [{config.origins.get(name, 'default')}]")
    print(f"  {'senders':<26} {len(config.senders)}, templates {len(config.templates)}")
    if applied:
        print(f"  applied on a fresh start: {', '.join(applied)}")
    return 0


def _check_data_dir(path: Path) -> None:
    """Usable without opening it (a running sidecar holds its lock)."""
    if path.exists() and not path.is_dir():
        raise cfg.ConfigError("data_dir", f"{path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise cfg.ConfigError("data_dir", f"{existing} is not a writable directory")


# --- state ---------------------------------------------------------------------


def message_to_dict(message: Message) -> dict[str, Any]:
    """Every field (set or not), enums by name, int64 as numbers."""
    out: dict[str, Any] = {}
    for f in message.DESCRIPTOR.fields:
        value = getattr(message, f.name)
        repeated = f.is_repeated
        if f.enum_type is not None:
            names = {v.number: v.name for v in f.enum_type.values}
            value = [names.get(v, v) for v in value] if repeated else names.get(value, value)
        elif f.message_type is not None:
            value = [message_to_dict(v) for v in value] if repeated else message_to_dict(value)
        elif repeated:
            value = list(value)
        out[f.name] = value
    return out


def _time(ms: int) -> str:
    if ms <= 0:
        return "-"
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} UTC ({ms})"


def _limit(n: int) -> str:
    return "unlimited" if n >= 1 << 61 else f"{n:,}"


def format_state(state: pb.SenderState) -> str:
    up = state.upgrade
    upgrade = f"{'eligible' if up.eligible else 'not eligible'}, progress {up.progress:.1%}"
    if up.next_tier:
        upgrade += f", next {up.next_tier}"
    if up.predicted_at_unix_ms > 0:
        upgrade += f", predicted {_time(up.predicted_at_unix_ms)}"
    paused = (
        ", ".join(
            f"{t.template_name or t.template_id}"
            + (" (disabled)" if t.disabled else f" (until {_time(t.paused_until_unix_ms)})")
            for t in state.paused_templates
        )
        or "-"
    )
    decisions = (
        ", ".join(
            f"{pb.Reason.Name(c.reason)} {c.count:,}"
            for c in sorted(state.decision_counts, key=lambda c: -c.count)
        )
        or "-"
    )
    rows = [
        ("sender", state.sender_id),
        ("display number", state.display_phone_number or "-"),
        ("portfolio", state.portfolio_id or "-"),
        ("profile", state.profile),
        ("tier", state.tier or "-"),
        ("limit", f"{_limit(state.limit)} (effective {_limit(state.effective_limit)})"),
        ("used (24 h)", f"{state.used_24h:,}"),
        ("remaining", _limit(state.remaining)),
        (
            "next slot free",
            "now"
            if state.remaining > 0 or state.next_slot_free_at_unix_ms <= state.at_unix_ms
            else _time(state.next_slot_free_at_unix_ms),
        ),
        ("unique (7 d)", f"{state.unique_7d:,}"),
        ("upgrade", upgrade),
        ("quality", pb.Quality.Name(state.quality)),
        ("status", pb.SenderStatus.Name(state.status)),
        ("throughput", f"{state.throughput_mps} msg/s"),
        ("open windows", f"{state.open_windows:,}"),
        ("paused templates", paused),
        ("decisions", decisions),
        (
            "store",
            (state.store or "embedded") + (" (unavailable)" if state.store_unavailable else ""),
        ),
        ("as of", _time(state.at_unix_ms)),
    ]
    return "\n".join(f"{k:<17} {v}" for k, v in rows)


def _state(args: argparse.Namespace) -> int:
    from tiergate.client import TiergateClient

    try:
        token = cfg.read_secret("token_file", Path(args.token_file)) if args.token_file else None
    except cfg.ConfigError as e:
        print(f"tiergate: {e}", file=sys.stderr)
        return EXIT_CONFIG

    async def fetch() -> pb.SenderState:
        async with TiergateClient(
            args.target,
            timeout=args.timeout,
            token=token,
            tls=args.tls,
            ca_file=args.tls_ca,
            cert_file=args.tls_cert,
            key_file=args.tls_key,
        ) as client:
            return await client.sender_state(args.sender, at_unix_ms=args.at_unix_ms)

    try:
        state = asyncio.run(fetch())
    except grpc.aio.AioRpcError as e:
        print(f"tiergate: {args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(message_to_dict(state), indent=2))
    else:
        print(format_state(state))
    return 0


# --- simulate --------------------------------------------------------------------


def _simulate(argv: Sequence[str]) -> int:
    # Imported on use: the simulator pulls in scenario machinery serve never needs.
    from tiergate import simulate

    return simulate.main(list(argv))


# --- main ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiergate",
        description="Admission control for WhatsApp Business senders (gRPC sidecar).",
    )
    parser.add_argument("--version", action="version", version=f"tiergate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the sidecar",
        description="Run the sidecar. Every flag also reads TIERGATE_<NAME> and the "
        "config file's <name> key; precedence: flags > env > file > defaults.",
    )
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)

    state = sub.add_parser("state", help="show one sender's state (GetSenderState)")
    state.add_argument("sender", metavar="SENDER", help="sender id (phone number id)")
    state.add_argument(
        "--target",
        default=os.environ.get("TIERGATE_TARGET", DEFAULT_TARGET),
        help=f"sidecar address (TIERGATE_TARGET, default {DEFAULT_TARGET})",
    )
    state.add_argument("--json", action="store_true", help="print JSON instead of a table")
    state.add_argument(
        "--at-unix-ms", type=int, default=0, help="time of the query (servers with --clock=request)"
    )
    state.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    state.add_argument(
        "--token-file", metavar="FILE", help="token sent as 'authorization: Bearer <token>'"
    )
    state.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots)")
    state.add_argument("--tls-ca", metavar="FILE", help="TLS with this CA bundle for the server")
    state.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    state.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")
    state.set_defaults(func=_state)

    check = sub.add_parser(
        "check-config", help="validate the config and profile, then exit (non-zero if bad)"
    )
    _add_setting_flags(check)
    check.set_defaults(func=_check_config)

    sub.add_parser(
        "simulate",
        help="run a traffic scenario against the policy layer (see tiergate simulate --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "simulate":
            return _simulate(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except BrokenPipeError:
        # Output piped into e.g. `head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
