"""``--store`` and ``--store-failure``: parsed, checked with the setting named, and a
password never printed (check-config, repr, str)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate import cli
from tiergate import config as cfg
from tiergate.store.location import EMBEDDED, StoreLocation, parse_store


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("embedded", EMBEDDED),
        (" Embedded ", EMBEDDED),
        ("redis://127.0.0.1:6380", StoreLocation("redis", (("127.0.0.1", 6380),))),
        ("redis://cache.internal", StoreLocation("redis", (("cache.internal", 6379),))),
        ("redis://[::1]:7000/3", StoreLocation("redis", (("::1", 7000),), 3)),
        (
            "rediss://app:s%3Acret@r.example:6390/1",
            StoreLocation("rediss", (("r.example", 6390),), 1, "app", "s:cret"),
        ),
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
            StoreLocation("redis+cluster", (("10.0.0.1", 7000), ("10.0.0.2", 7001))),
        ),
        (
            "redis+cluster://:pw@a:1",
            StoreLocation("redis+cluster", (("a", 1),), 0, "", "pw"),
        ),
    ],
)
def test_store_urls_parse(text: str, want: StoreLocation) -> None:
    got = parse_store(text)
    assert got == want
    assert got.password == want.password  # not part of ==? it is: stated anyway


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mysql://h:1", "scheme"),
        ("redis://", "needs a host"),
        ("redis://h:0", "port"),
        ("redis://h:99999", "port"),
        ("redis://h:1/zero", "database"),
        ("redis://h:1?db=2", "query"),
        ("redis+cluster://", "at least one"),
        ("redis+cluster://a:1/2", "no database"),
        ("redis+cluster://a:x", "port"),
    ],
)
def test_bad_store_urls_name_the_setting(text: str, words: str) -> None:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load({"store": text}, env={})
    assert e.value.key == "store"
    assert words in str(e.value)


def test_store_failure_is_closed_or_open() -> None:
    assert cfg.load({}, env={}).store_failure == "closed"
    assert cfg.load({}, env={"TIERGATE_STORE_FAILURE": "open"}).store_failure == "open"
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load({"store_failure": "maybe"}, env={})
    assert e.value.key == "store_failure"


def test_store_from_env_and_file(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('store = "redis://h:1"\n')
    c = cfg.load({"config": str(toml)}, env={})
    assert c.store == StoreLocation("redis", (("h", 1),)) and c.origins["store"] == "file"
    c = cfg.load({"config": str(toml)}, env={"TIERGATE_STORE": "embedded"})
    assert c.store == EMBEDDED and c.origins["store"] == "env"


def test_a_password_is_never_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = parse_store("redis://app:hunter2@h:1/2")
    assert "hunter2" not in str(loc) and "hunter2" not in repr(loc)
    assert str(loc) == "redis://app:***@h:1/2"
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    url = "rediss://app:hunter2@h:1"
    assert cli.main(["check-config", "--store", url, "--data-dir", "none"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "rediss://app:***@h:1" in out
    assert cli.main(["check-config", "--store", "redis://app:hunter2@h:0"]) == 2
    assert "hunter2" not in capsys.readouterr().err


def test_tiergate_state_names_the_store() -> None:
    from tiergate.v1 import admission_pb2 as pb

    assert "store             embedded\n" in cli.format_state(pb.SenderState(sender_id="s"))
    shared = pb.SenderState(sender_id="s", store="redis://h:1", store_unavailable=True)
    assert "store             redis://h:1 (unavailable)" in cli.format_state(shared)
