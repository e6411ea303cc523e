"""The production shape: docker-compose.yml (checked by Debian's `docker-compose config`),
the Dockerfile and its entrypoint.

There is no Docker engine in the test environment, so the compose file is validated and
resolved by docker-compose itself, and the entrypoint's roles that need no container
(settings check, `migrate`) run against the session's real Postgres.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from devstack import servers
from devstack.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
APP_SERVICES = {"migrate", "dagster-webserver", "dagster-daemon", "api"}
ALL_SERVICES = APP_SERVICES | {"postgres", "redis", "kafka", "kafka-init"}
APP_VARIABLES = {
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKER",
    "KAFKA_TOPIC",
    "JWT_SECRET",
    "DATA_LAKE_DIR",
    "DAGSTER_HOME",
    "DAGSTER_PG_URL",
    "RFM_START_DATE",
}


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe:
        return exe
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("docker-compose is not installed, and CI=true (.ci/run installs it with apt)")
    pytest.skip("docker-compose is not installed (apt-get install docker-compose; CI installs it)")


def _compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # never read the developer's .env
    empty_env_file.write_text("")
    clean_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run(
        [
            _docker_compose(),
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE),
            "config",
        ],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("compose")
    proc = _compose_config(tmp, JWT_SECRET="jwt-secret-for-config", POSTGRES_PASSWORD="pw123")
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    return {name: spec["condition"] for name, spec in deps.items()}


def test_services_and_official_images(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == ALL_SERVICES
    assert re.fullmatch(r"postgres:1[67](\..*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7(\..*)?", services["redis"]["image"])
    assert services["kafka"]["image"].startswith("apache/kafka:3.")
    assert services["kafka-init"]["image"] == services["kafka"]["image"]


def test_application_services_are_built_from_the_dockerfile(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    images = set()
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"]).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        images.add(services[name]["image"])
    assert len(images) == 1, "one image for every application role"
    commands = {name: services[name]["command"] for name in APP_SERVICES}
    assert commands == {
        "migrate": ["migrate"],
        "api": ["api"],
        "dagster-webserver": ["dagster-webserver"],
        "dagster-daemon": ["dagster-daemon"],
    }


def test_healthchecks_and_start_order(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("postgres", "redis", "kafka", "dagster-webserver", "dagster-daemon", "api"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/server_info" in " ".join(services["dagster-webserver"]["healthcheck"]["test"])
    assert "liveness-check" in services["dagster-daemon"]["healthcheck"]["test"]
    assert "kafka-broker-api-versions" in " ".join(services["kafka"]["healthcheck"]["test"])

    completed = "service_completed_successfully"
    healthy = "service_healthy"
    assert _depends(services["migrate"]) == {"postgres": healthy}
    assert _depends(services["kafka-init"]) == {"kafka": healthy}
    assert _depends(services["api"]) == {
        "migrate": completed,
        "kafka-init": completed,
        "redis": healthy,
    }
    assert _depends(services["dagster-webserver"]) == {
        "migrate": completed,
        "kafka-init": completed,
        "redis": healthy,
    }
    assert _depends(services["dagster-daemon"]) == {
        "dagster-webserver": healthy,
        "migrate": completed,
    }
    # every "healthy" condition points at a service that has a healthcheck, and one-shots
    # are never restarted
    for service in services.values():
        for dep, condition in _depends(service).items():
            if condition == healthy:
                assert services[dep].get("healthcheck"), dep
    assert services["migrate"]["restart"] == "no"
    assert services["kafka-init"]["restart"] == "no"


def test_kafka_is_kraft_single_node_and_topic_is_created_with_six_partitions(
    resolved: dict[str, Any],
) -> None:
    kafka_env = resolved["services"]["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert str(kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]

    init = resolved["services"]["kafka-init"]
    args = [*init["entrypoint"], *init["command"]]
    assert args[0] == "/opt/kafka/bin/kafka-topics.sh"
    assert args[args.index("--partitions") + 1] == "6"
    assert args[args.index("--topic") + 1] == "topic_user_actions"
    assert "--create" in args and "--if-not-exists" in args
    assert args[args.index("--bootstrap-server") + 1] == "kafka:9092"


def test_application_environment_is_complete_and_valid(
    resolved: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.settings import get_settings, load_settings

    services = resolved["services"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert APP_VARIABLES <= set(env), f"{name} lacks {APP_VARIABLES - set(env)}"
        assert env["JWT_SECRET"] == "jwt-secret-for-config"
        assert env["KAFKA_BROKER"] == "kafka:9092"
        assert env["KAFKA_TOPIC"] == "topic_user_actions"
        assert env["DATABASE_URL"].endswith("@postgres:5432/cc_analytics")
        assert env["DAGSTER_PG_URL"].endswith("@postgres:5432/dagster")
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        get_settings.cache_clear()
        settings = load_settings()  # the values pass the application's own validation
        assert settings.kafka_broker == ["kafka:9092"]
    get_settings.cache_clear()

    # DAGSTER_HOME and DATA_LAKE_DIR live on volumes shared by webserver and daemon
    for name in ("dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        targets = {str(v).split(":")[1] for v in services[name]["volumes"]}
        assert {env["DAGSTER_HOME"], env["DATA_LAKE_DIR"]} <= targets, name
    assert {"lake", "dagster_home", "pgdata", "kafkadata"} <= set(resolved["volumes"])


def test_topic_follows_kafka_topic(tmp_path: Path) -> None:
    proc = _compose_config(
        tmp_path, JWT_SECRET="x", POSTGRES_PASSWORD="pw", KAFKA_TOPIC="actions_eu"
    )
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert "actions_eu" in services["kafka-init"]["command"]
    assert {services[name]["environment"]["KAFKA_TOPIC"] for name in APP_SERVICES} == {"actions_eu"}


@pytest.mark.parametrize("missing", ["JWT_SECRET", "POSTGRES_PASSWORD"])
def test_config_refuses_to_resolve_without_a_required_secret(tmp_path: Path, missing: str) -> None:
    env = {"JWT_SECRET": "x", "POSTGRES_PASSWORD": "pw"}
    del env[missing]
    proc = _compose_config(tmp_path, **env)
    assert proc.returncode != 0
    assert f"set {missing}" in proc.stderr


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_existing_files_and_runs_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = []
    for word, rest in instructions:
        if word not in {"COPY", "ADD"}:
            continue
        args = rest.split()
        if any(arg.startswith("--from") for arg in args):
            continue
        sources = [arg for arg in args if not arg.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
            assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"
            copied.append(source)
    assert {"requirements-runtime.lock", "alembic.ini", "dagster.yaml", "workspace.yaml"} <= set(
        copied
    )
    assert {"pipelines", "serving", "sql", "docker/entrypoint.sh"} <= set(copied)

    froms = [rest for word, rest in instructions if word == "FROM"]
    assert all(ref.startswith("python:3.11-slim") for ref in froms)
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install --no-deps -r requirements-runtime.lock" in runs
    assert "pip check" in runs
    assert "[dev" not in runs and "local]" not in runs


def test_entrypoint_is_executable_shell() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    tracked = subprocess.run(
        ["git", "ls-files", "-s", "docker/entrypoint.sh"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout
    if tracked:
        assert tracked.startswith("100755"), "git must record the entrypoint as executable"


def _entrypoint(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    venv_bin = str(Path(sys.executable).parent)
    full_env = {"PATH": f"{venv_bin}:{os.environ['PATH']}", "APP_DIR": str(ROOT), **env}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), role],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_entrypoint_stops_with_one_line_naming_a_missing_setting(tmp_path: Path) -> None:
    proc = _entrypoint(
        "api", {"REDIS_URL": "redis://r:6379/0", "KAFKA_BROKER": "k:9092", "HOME": str(tmp_path)}
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "cc-analytics: DATABASE_URL is not set (see .env.example)"
    )


def test_entrypoint_migrate_creates_dagster_database_and_schema(
    pg_server: PostgresServer, empty_database_url: str, tmp_path: Path
) -> None:
    dagster_db = f"dagster_{uuid.uuid4().hex[:10]}"
    env = {
        "DATABASE_URL": empty_database_url,
        "DAGSTER_PG_URL": servers.database_url(pg_server.url(), dagster_db),
        "REDIS_URL": "redis://redis:6379/0",
        "KAFKA_BROKER": "kafka:9092",
        "HOME": str(tmp_path),
    }
    try:
        for _ in range(2):  # a second run (container restart) is harmless
            proc = _entrypoint("migrate", env)
            assert proc.returncode == 0, proc.stderr
        with psycopg.connect(pg_server.url()) as conn:
            assert conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dagster_db,)
            ).fetchone()
        with psycopg.connect(empty_database_url) as conn:
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                ).fetchall()
            }
        assert {"user_actions", "kafka_offsets", "user_segments", "alembic_version"} <= tables
    finally:
        servers.drop_database(pg_server.url(), dagster_db)
