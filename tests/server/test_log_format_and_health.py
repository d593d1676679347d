"""``--log-format json`` and ``tiergate health``, against a real ``tiergate serve``.

Every line the sidecar writes to stderr is then one JSON object with time,
level, logger, message and the structured fields of the record; ``tiergate
health`` asks the gRPC health service and exits 0 only for SERVING (it is the
image's HEALTHCHECK).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from test_sighup import tiergate_command

from tiergate import cli, logs
from tiergate import config as cfg

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def wait_for_listening(process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists():
            for record in json_lines(log) if log.read_text().endswith("\n") else []:
                if record["message"].startswith("tiergate listening on"):
                    return record
        assert process.poll() is None, f"tiergate serve exited:\n{log.read_text()}"
        time.sleep(0.05)
    pytest.fail(f"tiergate serve did not log that it listens:\n{log.read_text()}")


def test_serve_logs_json_lines_and_answers_tiergate_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "serve.log"
    command = [
        *tiergate_command(),
        "serve",
        "--config",
        str(REPO / "examples" / "tiergate.toml"),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "none",
    ]
    with open(log, "wb") as err:
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=os.environ | {"TIERGATE_LOG_FORMAT": "json"},
        )
    try:
        listening = wait_for_listening(process, log)
        assert listening["level"] == "INFO" and listening["logger"] == "tiergate.server"
        datetime.fromisoformat(listening["time"])  # ISO 8601, with its UTC offset
        assert listening["listen"].startswith("127.0.0.1:")
        assert listening["profile"] == "meta-2025"
        assert listening["engine"] in ("compiled", "python")
        target = listening["listen"]

        assert cli.main(["health", "--target", target]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        assert cli.main(["health", "--target", target, "--service", "tiergate.v1.Nope"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    records = json_lines(log)
    warnings = [r for r in records if r["level"] == "WARNING"]
    assert any("memory only" in r["message"] for r in warnings)  # --data-dir none
    applied = next(r for r in records if r["message"].startswith("applied from the config"))
    assert "106540352242922" in applied["applied"]
    assert records[-1]["message"] == "tiergate stopped"


def test_tiergate_health_fails_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health", "--target", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def logger_to(out: io.StringIO, log_format: str) -> logging.Logger:
    """A logger of its own writing ``log_format`` to ``out`` (the root logger,
    pytest's capture, is left alone)."""
    log = logging.getLogger(f"tiergate.test.{log_format}")
    log.handlers[:] = [logs.handler(log_format, out)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_a_json_record_carries_its_fields_and_its_traceback_on_one_line() -> None:
    out = io.StringIO()
    log = logger_to(out, "json")
    log.info("sender %s held", "1555", extra={"sender": "1555", "reason": "TIER_LIMIT"})
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("Admit failed", extra={"rpc": "Admit", "path": Path("/x")})
    log.debug("not at this level")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    held, failed = (json.loads(line) for line in lines)
    assert list(held)[:4] == ["time", "level", "logger", "message"]
    assert held["message"] == "sender 1555 held" and held["logger"] == "tiergate.test.json"
    assert (held["sender"], held["reason"]) == ("1555", "TIER_LIMIT")
    assert "args" not in held and "msg" not in held  # LogRecord's own attributes stay out
    assert failed["level"] == "ERROR" and failed["rpc"] == "Admit" and failed["path"] == "/x"
    assert "ValueError: bad" in failed["exception"]


def test_text_stays_the_default_format() -> None:
    out = io.StringIO()
    logger_to(out, "text").info("hello", extra={"sender": "1555"})
    assert out.getvalue().rstrip().endswith(" INFO tiergate.test.text: hello")
    with pytest.raises(ValueError, match="log format"):
        logs.handler("xml")


def test_log_format_is_a_setting_like_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cfg.load({}, env={}).log_format == "text"
    assert cfg.load({}, env={"TIERGATE_LOG_FORMAT": "JSON"}).log_format == "json"
    toml = tmp_path / "t.toml"
    toml.write_text('log_format = "json"\n')
    loaded = cfg.load({"config": str(toml)}, env={})
    assert (loaded.log_format, loaded.origins["log_format"]) == ("json", "file")
    with pytest.raises(cfg.ConfigError, match="log_format: must be one of text, json"):
        cfg.load({"log_format": "xml"}, env={})
    assert cli.main(["check-config", "--data-dir", "none", "--log-format", "json"]) == 0
    assert "log_format                 json" in capsys.readouterr().out
