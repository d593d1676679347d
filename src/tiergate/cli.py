"""``tiergate``: serve, state SENDER, watch SENDER, plan SENDER FILE, health, check-config,
simulate SCENARIO."""

from __future__ import annotations

# Before anything loads gRPC: it reads GRPC_EXPERIMENTS once, as it loads.
import tiergate.transport  # noqa: F401

# isort: split
import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tiergate import __version__, logs
from tiergate import config as cfg
from tiergate.client import TiergateClient
from tiergate.v1 import admission_pb2 as pb

DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_CONFIG = 2  # bad config, or a setting the sidecar cannot start with (port, data dir)
_T = TypeVar("_T")


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
        "--max-queued",
        "N",
        "calls of one method gRPC core holds until the event loop takes them; more "
        f"answer RESOURCE_EXHAUSTED (default {cfg.DEFAULT_MAX_QUEUED})",
    ),
    (
        "--loop-cpu",
        "N",
        "run the event loop alone on CPU N, the process's other threads on its other "
        "CPUs (default -1: not pinned)",
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
    ("--log-format", "FORMAT", "text | json (one JSON object a line; default text)"),
    (
        "--store",
        "URL",
        "embedded (default) | redis://[user:password@]HOST:PORT[/DB] | rediss://… | "
        "redis+cluster://HOST:PORT[,HOST:PORT…]",
    ),
    ("--store-failure", "MODE", "closed (default: RETRY_LATER) | open, while the store is gone"),
)
#: Caps on what clients can create: beyond a count RESOURCE_EXHAUSTED, beyond a
#: length INVALID_ARGUMENT; nothing is changed either way.
_CAPS = (
    ("--max-senders", "N", f"senders known at once (default {cfg.DEFAULT_CAPS.senders})"),
    ("--max-templates", "N", f"templates known at once (default {cfg.DEFAULT_CAPS.templates})"),
    (
        "--max-templates-per-waba",
        "N",
        f"templates of one WABA (default {cfg.DEFAULT_CAPS.templates_per_waba})",
    ),
    (
        "--max-idempotency-keys",
        "N",
        f"idempotency keys remembered at once (default {cfg.DEFAULT_CAPS.idempotency_keys})",
    ),
    (
        "--max-id-length",
        "N",
        "characters of a sender, portfolio, WABA id or display number "
        f"(default and most {cfg.DEFAULT_CAPS.id_length})",
    ),
    (
        "--max-template-id-length",
        "N",
        f"characters of a template id or name (default and most "
        f"{cfg.DEFAULT_CAPS.template_id_length})",
    ),
    (
        "--max-idempotency-key-length",
        "N",
        f"characters of an idempotency key (default and most {cfg.DEFAULT_CAPS.key_length})",
    ),
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
    p.add_argument(
        "--shadow",
        action="store_true",
        default=None,
        help="decide as usual but answer ADMIT, the would-be answer in shadow_* fields",
    )
    c = p.add_argument_group("caps", "what clients can make tiergate hold")
    for flag, metavar, text in _CAPS:
        c.add_argument(flag, metavar=metavar, help=text)
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
    logs.configure(config.log_level, config.log_format)
    from tiergate.server import StartupError, run

    try:
        code = run(config, reload_config=lambda: _load_config(args))
    except StartupError as e:
        print(f"tiergate: cannot start: {e}", file=sys.stderr)
        return EXIT_CONFIG
    # Stopped: every change is in the fsynced journal. Exit now, without tearing
    # down the interpreter (freeing a large state object by object took seconds)
    # or waiting for a snapshot the grace period left unfinished.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def _until(ms: int, endless: bool = False) -> str:
    """An end time; "no known end" from 2^62 on (or at 0 when ``endless``)."""
    if ms >= 1 << 62 or (endless and ms <= 0):
        return "no known end"
    return _time(ms)


def _paused(t: pb.PausedTemplate) -> str:
    """One paused template: its name, why (Meta's pause title, the failure …) and
    until when."""
    if t.disabled:
        held = "disabled"
    elif t.until_lifted:
        held = "until lifted"
    else:
        held = f"until {_time(t.paused_until_unix_ms)}"
    why = f"{t.reason}, " if t.reason and t.reason.lower() != held else ""
    return f"{t.template_name or t.template_id} ({why}{held})"


def format_state(state: pb.SenderState) -> str:
    up = state.upgrade
    upgrade = f"{'eligible' if up.eligible else 'not eligible'}, progress {up.progress:.1%}"
    if up.next_tier:
        upgrade += f", next {up.next_tier}"
    if up.path:
        upgrade += f" by {up.path}"
    if up.predicted_at_unix_ms > 0:
        upgrade += f", predicted {_time(up.predicted_at_unix_ms)}"
    paused = "; ".join(_paused(t) for t in state.paused_templates) or "-"
    restricted = state.status == pb.RESTRICTED
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
        ("counted, last h", f"{state.counted_last_hour:,}"),
        ("limit reached at", _time(state.limit_reached_at_unix_ms)),
        ("freeing, next 24h", " ".join(str(n) for n in state.slots_freeing_per_hour) or "-"),
        ("upgrade", upgrade),
        ("quality", pb.Quality.Name(state.quality)),
        ("status", pb.SenderStatus.Name(state.status)),
        (
            "restricted until",
            _until(state.restricted_until_unix_ms, True) if restricted else "-",
        ),
        ("replies held", _until(state.replies_restricted_until_unix_ms)),
        ("spam hold", _time(state.spam_held_until_unix_ms)),
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


#: TiergateClient's connection options and the flags that give them
#: (``_add_connection_flags``).
_CLIENT_OPTIONS = (
    ("timeout", "timeout"),
    ("tls", "tls"),
    ("ca_file", "tls_ca"),
    ("cert_file", "tls_cert"),
    ("key_file", "tls_key"),
)


def _ask(args: argparse.Namespace, ask: Callable[[TiergateClient], Awaitable[_T]]) -> _T | int:
    """``ask``'s answer from the sidecar ``state``, ``watch`` or ``health`` names; an exit code
    (printed why) when the token file is bad or the call fails."""

    async def call() -> _T:
        token = cfg.read_secret("token_file", Path(args.token_file)) if args.token_file else None
        options = {name: getattr(args, flag) for name, flag in _CLIENT_OPTIONS}
        async with TiergateClient(args.target, token=token, **options) as client:
            return await ask(client)

    try:
        return asyncio.run(call())
    except cfg.ConfigError as e:
        print(f"tiergate: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except grpc.aio.AioRpcError as e:
        print(f"tiergate: {args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _state(args: argparse.Namespace) -> int:
    state = _ask(args, lambda c: c.sender_state(args.sender, at_unix_ms=args.at_unix_ms))
    if isinstance(state, int):
        return state
    if args.json:
        print(json.dumps(message_to_dict(state), indent=2))
    else:
        print(format_state(state))
    return 0


def _watch(args: argparse.Namespace) -> int:
    async def follow(client: TiergateClient) -> int:
        sender, portfolio = ("", args.sender) if args.portfolio else (args.sender, "")
        async for state in client.watch_sender_state(sender, portfolio_id=portfolio):
            if args.json:
                print(json.dumps(message_to_dict(state)), flush=True)
            else:
                print(f"-- {', '.join(state.changes)}\n{format_state(state)}", flush=True)
        return 0

    return _ask(args, follow)


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the sidecar answers SERVING to a gRPC health check, else 1
    (what a container's HEALTHCHECK or a process supervisor runs)."""
    status = _ask(args, lambda c: c.health(args.service))
    if isinstance(status, int):
        return status
    print(status)
    return 0 if status == "SERVING" else 1


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    """How ``state``, ``watch`` and ``health`` reach a sidecar."""
    p.add_argument(
        "--target",
        default=os.environ.get("TIERGATE_TARGET", DEFAULT_TARGET),
        help=f"sidecar address (TIERGATE_TARGET, default {DEFAULT_TARGET})",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument(
        "--token-file", metavar="FILE", help="token sent as 'authorization: Bearer <token>'"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots)")
    p.add_argument("--tls-ca", metavar="FILE", help="TLS with this CA bundle for the server")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="client key (mutual TLS)")


def _plan(args: argparse.Namespace) -> int:
    from tiergate import campaign

    args.recipient_list = campaign.read_recipients(args.recipients)
    got = _ask(
        args,
        lambda c: c.plan_campaign(
            args.sender,
            args.recipient_list,
            template_id=args.template,
            category=pb.Category.Value(args.category),
            start_at_unix_ms=args.start_at_unix_ms,
            at_unix_ms=args.at_unix_ms,
        ),
    )
    return got if isinstance(got, int) else campaign.report(args, *got)


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
    _add_connection_flags(state)
    state.add_argument("--json", action="store_true", help="print JSON instead of a table")
    state.add_argument(
        "--at-unix-ms", type=int, default=0, help="time of the query (servers with --clock=request)"
    )
    state.set_defaults(func=_state)

    watch = sub.add_parser(
        "watch", help="print a sender's state, then each change as it comes (WatchSenderState)"
    )
    watch.add_argument("sender", metavar="SENDER", help="sender id (phone number id)")
    watch.add_argument("--portfolio", action="store_true", help="SENDER is a portfolio id")
    _add_connection_flags(watch)
    watch.add_argument("--json", action="store_true", help="print one JSON object a line")
    watch.set_defaults(func=_watch)

    health = sub.add_parser(
        "health",
        help="gRPC health check of a running sidecar (exit 0 when SERVING)",
        description="Ask a sidecar's grpc.health.v1 service; prints the status and exits 0 "
        "when it is SERVING, 1 otherwise (unreachable, NOT_SERVING, shutting down).",
    )
    _add_connection_flags(health)
    health.add_argument(
        "--service",
        default="",
        help="service name to ask about (default '': the whole server)",
    )
    health.set_defaults(func=_health)

    from tiergate.campaign import add_arguments

    plan = sub.add_parser("plan", help="plan a campaign: when each recipient goes (PlanCampaign)")
    add_arguments(plan)
    _add_connection_flags(plan)
    plan.add_argument(
        "--at-unix-ms", type=int, default=0, help="time of the query (servers with --clock=request)"
    )
    plan.set_defaults(func=_plan)

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
