"""Configuration precedence (flags > env > file > defaults) and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiergate import config as cfg
from tiergate.policy.events import Quality, SenderStatus, TemplateStatus

pytestmark = pytest.mark.engine_independent

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiergate.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    c = cfg.load({}, env={"XDG_STATE_HOME": "/srv/state"})
    assert str(c.listen) == "127.0.0.1:50051"
    assert c.profile == "meta-2025"
    assert c.clock == "server"
    assert c.max_batch == 1000
    assert c.data_dir == Path("/srv/state/tiergate")  # durable unless asked otherwise
    assert c.webhook_listen is None
    assert c.durability == cfg.DEFAULT_DURABILITY
    assert c.origins["listen"] == "default"


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "127.0.0.1:7001"\nprofile = "meta-2024"\nmax_batch = 10\nclock = "request"\n',
    )
    env = {"TIERGATE_LISTEN": "127.0.0.1:7002", "TIERGATE_MAX_BATCH": "20"}
    c = cfg.load({"config": str(path), "listen": "127.0.0.1:7003"}, env=env)
    assert c.listen == cfg.Endpoint("127.0.0.1", 7003)
    assert c.max_batch == 20
    assert c.profile == "meta-2024"
    assert c.clock == "request"
    assert c.origins == {
        **c.origins,
        "listen": "flag",
        "max_batch": "env",
        "profile": "file",
        "clock": "file",
        "config": "flag",
    }


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "legacy-2x"\n')
    c = cfg.load({}, env={"TIERGATE_CONFIG": str(path)})
    assert c.profile == "legacy-2x"
    assert c.config == path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('listen = "nope"', "listen"),
        ('listen = "127.0.0.1:99999"', "listen"),
        ("max_batch = 0", "max_batch"),
        ('max_batch = "many"', "max_batch"),
        ('clock = "wall"', "clock"),
        ('durability = "sometimes"', "durability"),
        ('profile = ""', "profile"),
        ("shutdown_grace = -1", "shutdown_grace"),
        ('log_level = "loud"', "log_level"),
        ('colour = "blue"', "colour"),
        ('[[senders]]\nportfolio_id = "p"', "senders[0].sender_id"),
        ('[[senders]]\nsender_id = "1"\nquality = "PURPLE"', "senders[0].quality"),
        ('[[senders]]\nsender_id = "1"\nthroughput_mps = "fast"', "senders[0].throughput_mps"),
        ('[[senders]]\nsender_id = "1"\nnickname = "x"', "senders[0].nickname"),
        ('[[senders]]\nsender_id = "1"\n[[senders]]\nsender_id = "1"', "senders[1].sender_id"),
        ('senders = "all"', "senders"),
        ('[[templates]]\ntemplate_name = "x"', "templates[0].template_id"),
        ('[[templates]]\ntemplate_id = "1"\nstatus = "LIVE"', "templates[0].status"),
        ("listen = ", "config"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text + "\n")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load({"config": str(path)}, env={})
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_bad_env_names_the_key() -> None:
    with pytest.raises(cfg.ConfigError, match=r"^max_batch: ") as info:
        cfg.load({}, env={"TIERGATE_MAX_BATCH": "1e9x"})
    assert info.value.key == "max_batch"


def test_missing_file() -> None:
    with pytest.raises(cfg.ConfigError, match="file not found") as info:
        cfg.load({"config": "/nonexistent/tiergate.toml"}, env={})
    assert info.value.key == "config"


def test_ipv6_and_ephemeral_endpoints() -> None:
    assert cfg.parse_endpoint("listen", "[::1]:0") == cfg.Endpoint("::1", 0)
    assert str(cfg.Endpoint("::1", 50051)) == "[::1]:50051"


def test_senders_and_templates_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[senders]]
sender_id = "111"
portfolio_id = "p1"
tier = "TIER_2K"
quality = "yellow"
status = "FLAGGED"
throughput_mps = 20
coexistence = true

[[templates]]
template_id = "t1"
template_name = "welcome"
status = "TEMPLATE_STATUS_PAUSED"
""",
    )
    c = cfg.load({"config": str(path)}, env={})
    (s,) = c.senders
    assert (s.sender_id, s.portfolio_id, s.tier) == ("111", "p1", "TIER_2K")
    assert s.quality is Quality.YELLOW
    assert s.status is SenderStatus.FLAGGED
    assert s.throughput_mps == 20 and s.coexistence is True
    assert s.waba_id is None  # unset stays "unchanged"
    (t,) = c.templates
    assert (t.template_id, t.template_name, t.status) == ("t1", "welcome", TemplateStatus.PAUSED)


def test_example_config_is_valid() -> None:
    c = cfg.load({"config": str(REPO / "examples" / "tiergate.toml")}, env={})
    assert len(c.senders) == 2
    assert len({s.portfolio_id for s in c.senders}) == 1
    assert c.data_dir == Path("data")


def test_data_dir_none_keeps_state_in_memory_only(tmp_path: Path) -> None:
    assert cfg.load({"data_dir": "none"}, env={}).data_dir is None
    assert cfg.load({}, env={"TIERGATE_DATA_DIR": "none"}).data_dir is None
    path = write(tmp_path, 'data_dir = "~/tg"\n')
    assert cfg.load({"config": str(path)}, env={}).data_dir == Path("~/tg").expanduser()


def test_shadow_and_watch_thresholds_from_flags_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "tiergate.toml"
    path.write_text("shadow = true\nwatch_thresholds = [100, 50]\n")
    c = cfg.load({"config": str(path)}, env={})
    assert (c.shadow, c.watch_thresholds) == (True, (50, 100))
    c = cfg.load({}, env={"TIERGATE_SHADOW": "1", "TIERGATE_WATCH_THRESHOLDS": "80, 95"})
    assert (c.shadow, c.watch_thresholds) == (True, (80, 95))
    c = cfg.load({"shadow": True}, env={})
    assert (c.shadow, c.watch_thresholds) == (True, (80, 90, 100))
    assert cfg.load({}, env={}).shadow is False
    for bad in ("0,80", "80,x", ""):
        with pytest.raises(cfg.ConfigError, match="watch_thresholds"):
            cfg.load({}, env={"TIERGATE_WATCH_THRESHOLDS": bad})
