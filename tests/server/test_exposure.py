"""Refusing to serve a non-loopback address unguarded, and secrets kept out of sight:
read from files or the environment, never printed by ``check-config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import make_config, run_async

from tiergate import cli
from tiergate import config as cfg
from tiergate.server import Sidecar, StartupError

PYTHON_CLI = (sys.executable, "-c", "import sys; from tiergate.cli import main; sys.exit(main())")
EXPOSED = ["0.0.0.0:0", "[::]:0", "192.0.2.10:0", "tiergate.example:0"]


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in cfg.SETTING_NAMES:
        monkeypatch.delenv(cfg.env_name(name), raising=False)


@pytest.mark.parametrize("listen", EXPOSED)
def test_serve_refuses_a_non_loopback_address_without_tls_or_token(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--data-dir", "none", "--listen", listen]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tiergate: bad config: listen: ") and "not a loopback address" in err


def test_the_refusal_is_the_process_exit_status() -> None:
    done = subprocess.run(
        [*PYTHON_CLI, "serve", "--data-dir", "none", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "listen" in done.stderr and "insecure" in done.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.3.2.1:0", "[::1]:0", "localhost:0"])
def test_loopback_addresses_need_nothing(listen: str) -> None:
    assert cfg.load({"listen": listen, "data_dir": "none"}, env={}).listen.port == 0


def test_tls_a_token_or_insecure_allow_a_non_loopback_address(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"  # read when serving
    for extra in (
        {"insecure": True},
        {"token_file": str(token)},
        {"admin_token_file": str(token)},
        {"tls_cert": str(cert), "tls_key": str(key)},
    ):
        assert cfg.load({"listen": "0.0.0.0:0", **extra}, env={}).listen.host == "0.0.0.0"
    assert cfg.load({"listen": "0.0.0.0:0"}, env={"TIERGATE_INSECURE": "1"}).insecure


def test_a_non_loopback_webhook_listener_needs_signatures_or_client_certificates(
    tmp_path: Path,
) -> None:
    with pytest.raises(cfg.ConfigError, match="not a loopback address") as info:
        cfg.load({"webhook_listen": "0.0.0.0:0"}, env={})
    assert info.value.key == "webhook_listen"
    assert cfg.load({"webhook_listen": "0.0.0.0:0", "webhook_secret": "s"}, env={}).webhook_listen
    assert cfg.load({"webhook_listen": "0.0.0.0:0", "insecure": True}, env={}).insecure
    # A token guards the gRPC port, not the webhook receiver.
    token = tmp_path / "token"
    token.write_text("t0ken")
    with pytest.raises(cfg.ConfigError):
        cfg.load({"webhook_listen": "0.0.0.0:0", "token_file": str(token)}, env={})


@run_async
async def test_a_sidecar_built_from_a_config_refuses_too() -> None:
    s = Sidecar(make_config(listen=cfg.Endpoint("0.0.0.0", 0)))
    with pytest.raises(StartupError, match=r"^listen: "):
        await s.start()
    await s.stop(0)


def test_webhook_secrets_from_files(tmp_path: Path) -> None:
    secret, verify = tmp_path / "secret", tmp_path / "verify"
    secret.write_text("app-secret\n")
    verify.write_text("verify-me")
    flags = {"webhook_secret_file": str(secret), "webhook_verify_token_file": str(verify)}
    loaded = cfg.load(flags, env={})
    assert (loaded.webhook_secret, loaded.webhook_verify_token) == ("app-secret", "verify-me")
    assert "app-secret" not in repr(loaded) and "verify-me" not in repr(loaded)
    env = {"TIERGATE_WEBHOOK_SECRET_FILE": str(secret)}
    assert cfg.load({}, env=env).webhook_secret == "app-secret"
    with pytest.raises(cfg.ConfigError, match="not both") as info:
        cfg.load({"webhook_secret": "inline", "webhook_secret_file": str(secret)}, env={})
    assert info.value.key == "webhook_secret_file"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(cfg.ConfigError, match="is empty") as info:
        cfg.load({"webhook_verify_token_file": str(empty)}, env={})
    assert info.value.key == "webhook_verify_token_file"


def test_check_config_never_prints_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-app\n")
    token = tmp_path / "token"
    token.write_text("d4ta-token\n")
    monkeypatch.setenv("TIERGATE_WEBHOOK_VERIFY_TOKEN", "v3rify-token")
    args = ["check-config", "--data-dir", "none", "--webhook-secret-file", str(secret)]
    assert cli.main([*args, "--token-file", str(token)]) == 0
    out = capsys.readouterr().out
    for value in ("s3cret-app", "v3rify-token", "d4ta-token"):
        assert value not in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert " set " in lines["webhook_secret"] and " set " in lines["webhook_verify_token"]
    assert str(token) in lines["token_file"]
    monkeypatch.delenv("TIERGATE_WEBHOOK_VERIFY_TOKEN")
    assert cli.main(["check-config", "--data-dir", "none"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line}
    assert "not set" in lines["webhook_secret"] and "not set" in lines["webhook_verify_token"]


def test_the_start_up_log_says_how_the_listeners_are_protected() -> None:
    from tiergate.server.app import exposure_summary

    assert exposure_summary(make_config()) == "plaintext, no token"
    guarded = make_config(
        tls_cert=Path("c"), tls_key=Path("k"), tls_client_ca=Path("ca"), token="x", admin_token="y"
    )
    assert exposure_summary(guarded) == "mutual TLS, data token and admin token"
    assert "insecure" in exposure_summary(make_config(insecure=True))
