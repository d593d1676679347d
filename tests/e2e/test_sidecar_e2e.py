"""End to end: ``tiergate serve`` as a subprocess, a day of traffic, ``tiergate state``.

The sidecar runs with ``--clock=request`` on a free loopback port and a data
directory; a gateway-like client replays one day of sends and inbound
messages through ``tiergate.client``; ``tiergate state`` must show what the
rules say; SIGTERM ends it with exit code 0 and a restart recovers the state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tiergate.client import TiergateClient
from tiergate.v1 import admission_pb2 as pb
from tiergate.v1 import admission_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

T0 = 1_760_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SENDER = "106540352242922"
LISTENING = re.compile(r"tiergate listening on 127\.0\.0\.1:(\d+)")

CONFIG = f"""
profile = "meta-2025"
log_level = "info"

[[senders]]
sender_id = "{SENDER}"
portfolio_id = "portfolio-e2e"
display_phone_number = "+15550100001"
verified = true
tier = "TIER_250"
quality = "GREEN"
status = "CONNECTED"
"""


def tiergate_command() -> list[str]:
    script = Path(sys.executable).with_name("tiergate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tiergate.cli"]


@dataclass
class Sidecar:
    process: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def sidecar(
    tmp_path: Path, extra_config: str = "", env_settings: dict[str, str] | None = None
) -> Iterator[Sidecar]:
    config = tmp_path / "tiergate.toml"
    config.write_text(CONFIG + extra_config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_") or k in _ENGINE}
    env.update(env_settings or {})
    process = subprocess.Popen(
        [
            *tiergate_command(),
            "serve",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--clock=request",
            "--data-dir",
            str(tmp_path / "data"),
            "--shutdown-grace",
            "5",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    log: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            m = LISTENING.search(line)
            if m and not found.is_set():
                port.append(int(m.group(1)))
                found.set()
        found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "sidecar did not start"
        assert port, "sidecar exited before listening:\n" + "".join(log)
        yield Sidecar(process, port[0], log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(10)
        process.stderr.close()


_ENGINE = ("TIERGATE_NO_EXTENSIONS", "TIERGATE_REQUIRE_EXTENSIONS")


def stop(s: Sidecar) -> int:
    s.process.send_signal(signal.SIGTERM)
    return s.process.wait(30)


@dataclass
class Day:
    """What the day's traffic should leave behind, computed from the rules."""

    decisions: dict[int, int] = field(default_factory=dict)
    counted: int = 0


def recipient(i: int) -> str:
    return f"4915{i:08d}"


def user(j: int) -> str:
    return f"5511{j:08d}"


async def replay_day(target: str) -> Day:
    """300 marketing recipients (3 min apart), 100 of them again later, 40 users who
    write in and get a free-form reply and an in-window template. Limit 250."""
    day = Day()

    def note(r: pb.AdmitResponse) -> None:
        day.decisions[r.reason] = day.decisions.get(r.reason, 0) + 1
        day.counted += int(r.counted)

    async with TiergateClient(target) as tg:
        await tg.wait_ready()
        for i in range(300):
            note(
                await tg.admit(
                    SENDER,
                    recipient(i),
                    category=pb.MARKETING,
                    template_id="weekly_offer",
                    idempotency_key=f"offer-{i}",
                    at_unix_ms=T0 + i * 3 * MINUTE,
                )
            )
        for j in range(40):
            at = T0 + HOUR + j * 10 * MINUTE
            await tg.record_feedback(
                pb.InboundMessage(sender_id=SENDER, recipient=user(j), at_unix_ms=at)
            )
            reply = pb.AdmitRequest(
                sender_id=SENDER,
                recipient=user(j),
                kind=pb.FREE_FORM,
                category=pb.SERVICE,
                at_unix_ms=at + MINUTE,
            )
            followup = pb.AdmitRequest(
                sender_id=SENDER,
                recipient=user(j),
                kind=pb.TEMPLATE,
                category=pb.UTILITY,
                template_id="order_update",
                at_unix_ms=at + 2 * MINUTE,
            )
            for r in await tg.admit_batch([reply, followup]):
                note(r)
        second = [
            pb.AdmitRequest(
                sender_id=SENDER,
                recipient=recipient(i),
                kind=pb.TEMPLATE,
                category=pb.MARKETING,
                template_id="weekly_offer",
                idempotency_key=f"reminder-{i}",
                at_unix_ms=T0 + 16 * HOUR + i * MINUTE,
            )
            for i in range(100)
        ]
        for r in await tg.admit_batch(second):
            note(r)
    return day


def state_json(s: Sidecar, at: int, sender_id: str = SENDER) -> dict[str, object]:
    out = subprocess.run(
        [
            *tiergate_command(),
            "state",
            sender_id,
            "--target",
            s.target,
            "--json",
            "--at-unix-ms",
            str(at),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def test_a_day_of_traffic_then_state_then_sigterm(tmp_path: Path) -> None:
    end = T0 + 20 * HOUR
    with sidecar(tmp_path) as s:
        day = uvloop.run(replay_day(s.target))
        # The first 250 unique recipients fit the limit; 50 more wait for a slot;
        # repeats, free-form replies and in-window templates count nothing.
        assert day.counted == 250
        assert day.decisions == {pb.OK: 250 + 100 + 80, pb.MESSAGING_LIMIT: 50}

        state = state_json(s, end)
        assert state["sender_id"] == SENDER
        assert state["tier"] == "TIER_250"
        assert (state["limit"], state["used_24h"], state["remaining"]) == (250, 250, 0)
        assert state["open_windows"] == 40
        counts = {c["reason"]: c["count"] for c in state["decision_counts"]}  # type: ignore[union-attr]
        assert counts == {"OK": 430, "MESSAGING_LIMIT": 50}
        # Recipients 0..99 were sent to again at 16 h, so the oldest presence is
        # recipient 100's (at 5 h); its minute bucket ends, then 24 h pass.
        oldest = T0 + 100 * 3 * MINUTE
        assert state["next_slot_free_at_unix_ms"] == (oldest // MINUTE + 1) * MINUTE + DAY

        table = subprocess.run(
            [*tiergate_command(), "state", SENDER, "--target", s.target, "--at-unix-ms", str(end)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert re.search(r"used \(24 h\)\s+250", table)
        assert re.search(r"remaining\s+0", table)
        assert "MESSAGING_LIMIT 50" in table

        # Two days later nothing is left in the rolling window.
        assert state_json(s, end + 2 * DAY)["used_24h"] == 0

        assert stop(s) == 0
        assert any("tiergate stopped" in line for line in s.log)

    with sidecar(tmp_path) as s:
        # The journal brought back what was acknowledged, including the later query's time.
        state = state_json(s, end + 2 * DAY)
        assert state["used_24h"] == 0
        counts = {c["reason"]: c["count"] for c in state["decision_counts"]}  # type: ignore[union-attr]
        assert counts == {"OK": 430, "MESSAGING_LIMIT": 50}
        assert stop(s) == 0


def test_overload_is_shed_resource_exhausted_and_a_watch_ends_cleanly_at_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tiergate serve`` as it starts with nothing in GRPC_EXPERIMENTS: a burst of
    Admits far beyond its queue is answered, or shed RESOURCE_EXHAUSTED (by the
    servicer or by gRPC core), never CANCELLED; health answers meanwhile; a
    watch stream open at SIGTERM ends with status OK."""
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    with sidecar(
        tmp_path, env_settings={"TIERGATE_MAX_IN_FLIGHT": "2", "TIERGATE_MAX_QUEUED": "2"}
    ) as s:
        channel = grpc.insecure_channel(s.target)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.AdmissionControlStub(channel)
        watch = stub.WatchSenderState(pb.WatchSenderStateRequest(sender_id=SENDER))
        assert next(watch).sender_id == SENDER
        send = pb.AdmitRequest(
            sender_id=SENDER, kind=pb.TEMPLATE, category=pb.UTILITY, template_id="order_update"
        )
        burst = []
        for i in range(600):
            send.recipient, send.at_unix_ms = recipient(i), T0 + i
            burst.append(stub.Admit.future(send, timeout=60))
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        outcomes: Counter[str] = Counter()
        for f in burst:
            e = f.exception()
            outcomes["OK" if e is None else e.code().name] += 1
            if e is not None and "Too many pending requests" in (e.details() or ""):
                outcomes["shed by gRPC core"] += 1
        assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED", "shed by gRPC core"}, outcomes
        assert outcomes["OK"] >= 1 and outcomes["shed by gRPC core"] >= 1, outcomes

        assert stop(s) == 0
        assert list(watch) == []  # the stream ends with status OK (an error raises)
        assert watch.code() == grpc.StatusCode.OK
        channel.close()


def test_state_of_an_unknown_sender_fails_cleanly(tmp_path: Path) -> None:
    with sidecar(tmp_path) as s:
        out = subprocess.run(
            [*tiergate_command(), "state", "nobody", "--target", s.target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1
        assert "NOT_FOUND" in out.stderr
        assert stop(s) == 0


def test_sighup_applies_senders_added_to_the_config(tmp_path: Path) -> None:
    added = "106540352242999"
    with sidecar(tmp_path) as s:
        config = tmp_path / "tiergate.toml"
        config.write_text(
            config.read_text()
            + f'\n[[senders]]\nsender_id = "{added}"\nportfolio_id = "portfolio-e2e"\n'
        )
        s.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not any(f"sender {added} added" in line for line in s.log):
            assert time.monotonic() < deadline, "".join(s.log)
            time.sleep(0.05)
        added_state = state_json(s, T0, added)
        assert (added_state["sender_id"], added_state["portfolio_id"]) == (added, "portfolio-e2e")
        assert stop(s) == 0


WEBHOOK_LISTENING = re.compile(r"webhook receiver listening on 127\.0\.0\.1:(\d+)(/\S*)")


def test_webhook_receiver_from_env_settings(tmp_path: Path) -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "meta-webhooks"
    body = (fixture / "messages__message-text__pywa.json").read_bytes()
    extra = '\n[[senders]]\nsender_id = "1122334455667"\nportfolio_id = "portfolio-e2e"\n'
    settings = {
        "TIERGATE_WEBHOOK_LISTEN": "127.0.0.1:0",
        "TIERGATE_WEBHOOK_SECRET": "app-secret",
    }
    with sidecar(tmp_path, extra, settings) as s:
        deadline = time.monotonic() + 20
        while not (m := next(filter(None, map(WEBHOOK_LISTENING.search, s.log)), None)):
            assert time.monotonic() < deadline, "".join(s.log)
            time.sleep(0.05)
        url = f"http://127.0.0.1:{m.group(1)}{m.group(2)}"
        signature = "sha256=" + hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            url, data=body, headers={"X-Hub-Signature-256": signature}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
            assert json.loads(reply.read())["applied"] == 1
        forged = urllib.request.Request(
            url, data=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(forged, timeout=30)
        assert info.value.code == 403
        info.value.close()
        # The user's message opened a window: a free-form reply is admitted.
        state = state_json(s, 1697043223000 + 60_000, "1122334455667")
        assert state["sender_id"] == "1122334455667"
        assert state["open_windows"] == 1
        assert stop(s) == 0


def test_bad_config_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('max_batch = "lots"\n')
    for verb in ("serve", "check-config"):
        out = subprocess.run(
            [*tiergate_command(), verb, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2
        assert "max_batch" in out.stderr
