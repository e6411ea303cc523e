"""`make up` / `make down` end to end (`python -m devstack.cli`), on free ports in a temp dir.

Proves SPEC §2 and issue 2 item 3: stack.env has every export, the services answer
(Postgres migrated, Redis, the topic with 6 partitions, the API's /health and the Dagster
webserver's /server_info), a second `up` is harmless and keeps the JWT secret, `down` stops
exactly what `up` started and is safe to repeat, servers named by DATABASE_URL / REDIS_URL /
KAFKA_BROKER are used instead of local ones, and a port held by something else makes `up`
fail with one line naming the service and its log file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from kafka import KafkaAdminClient

from devstack import servers
from devstack.servers import KafkaBroker, PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parents[2]
STACK_EXPORTS = {
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BROKER",
    "KAFKA_TOPIC",
    "DAGSTER_HOME",
    "DATA_LAKE_DIR",
    "JWT_SECRET",
    "API_URL",
    "DAGSTER_URL",
}
INHERITED_SETTINGS = (
    *STACK_EXPORTS,
    "DAGSTER_PG_URL",
    "RFM_START_DATE",
    "PG_PORT",
    "REDIS_PORT",
    "KAFKA_PORT",
    "DAGSTER_PORT",
    "API_PORT",
)


def _ports() -> dict[str, str]:
    names = ("PG_PORT", "REDIS_PORT", "KAFKA_PORT", "DAGSTER_PORT", "API_PORT")
    ports: set[int] = set()
    while len(ports) < len(names):
        ports.add(servers.free_port())
    return {name: str(port) for name, port in zip(names, sorted(ports), strict=True)}


def _env(state_dir: Path, ports: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    return {
        **env,
        "CC_STATE_DIR": str(state_dir),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        **ports,
        **extra,
    }


def _cli(command: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devstack.cli", command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def _sourced(stack_env: Path) -> dict[str, str]:
    """What a shell gets from `. .local/stack.env` (proves the export lines are valid sh)."""
    out = subprocess.run(
        ["sh", "-c", '. "$1" && env -0', "sh", str(stack_env)],
        capture_output=True,
        env={"PATH": os.environ["PATH"]},
        check=True,
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _get_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status == 200


def _stack_pids(state: Path) -> dict[str, int]:
    files = {
        "postgres": state / "postgres" / "data" / "postmaster.pid",
        "redis": state / "redis" / "redis.pid",
        "kafka": state / "kafka" / "kafka.pid",
        **{p.stem: p for p in (state / "run").glob("*.pid")},
    }
    pids = {name: servers.read_pid(path) for name, path in files.items()}
    return {name: pid for name, pid in pids.items() if pid}


def _processes_with_env(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains `marker` (e.g. our state dir)."""
    found = []
    needle = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes() and servers.pid_alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    # whatever happened, leave nothing running
    _cli("down", _env(state, {}), timeout=120)


def test_up_twice_then_down_twice(state_dir: Path) -> None:
    ports = _ports()
    env = _env(state_dir, ports)

    first = _cli("up", env)
    assert first.returncode == 0, first.stdout + first.stderr
    stack_env = state_dir / "stack.env"
    assert stack_env.stat().st_mode & 0o077 == 0, "stack.env holds a secret: owner-only"
    values = _sourced(stack_env)
    assert STACK_EXPORTS <= set(values), STACK_EXPORTS - set(values)
    assert values["KAFKA_TOPIC"] == "topic_user_actions"
    assert values["API_URL"] == f"http://127.0.0.1:{ports['API_PORT']}"
    assert values["DAGSTER_URL"] == f"http://127.0.0.1:{ports['DAGSTER_PORT']}"
    assert values["KAFKA_BROKER"] == f"127.0.0.1:{ports['KAFKA_PORT']}"
    assert f":{ports['PG_PORT']}/" in values["DATABASE_URL"]
    assert f":{ports['REDIS_PORT']}/" in values["REDIS_URL"]
    assert Path(values["DAGSTER_HOME"], "dagster.yaml").exists()
    secret = values["JWT_SECRET"]
    assert len(secret) >= 32

    # every service answers
    with psycopg.connect(values["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
    client = redis.Redis.from_url(values["REDIS_URL"], socket_timeout=5)
    assert client.ping() is True
    client.close()
    admin = KafkaAdminClient(bootstrap_servers=values["KAFKA_BROKER"], request_timeout_ms=10000)
    try:
        [topic] = admin.describe_topics([values["KAFKA_TOPIC"]])
    finally:
        admin.close()
    assert len(topic["partitions"]) == 6
    assert _get_ok(values["API_URL"] + "/health")
    assert _get_ok(values["DAGSTER_URL"] + "/server_info")

    pids = _stack_pids(state_dir)
    assert set(pids) == {
        "postgres",
        "redis",
        "kafka",
        "api",
        "dagster-webserver",
        "dagster-daemon",
    }

    # a second `up` changes nothing: same processes, same secret
    second = _cli("up", env)
    assert second.returncode == 0, second.stdout + second.stderr
    lines = second.stdout.splitlines()
    for name in ("postgres", "redis", "kafka", "api", "dagster-webserver", "dagster-daemon"):
        assert [line for line in lines if name in line and "already running" in line], name
    assert _stack_pids(state_dir) == pids
    assert _sourced(stack_env)["JWT_SECRET"] == secret

    # `down` stops exactly those processes, and frees every port
    down = _cli("down", env, timeout=120)
    assert down.returncode == 0, down.stderr
    for name in pids:
        assert name in down.stdout
    assert not [name for name, pid in pids.items() if servers.pid_alive(pid)]
    assert not [p for p in ports.values() if servers.port_open(int(p))]
    assert _processes_with_env(f"CC_STATE_DIR={state_dir}") == []

    again = _cli("down", env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "nothing was running" in again.stdout


def test_servers_named_in_the_environment_are_used_not_started(
    state_dir: Path,
    pg_server: PostgresServer,
    empty_database_url: str,
    redis_url: str,
    kafka_bootstrap: str,
) -> None:
    ports = _ports()
    topic = f"cli_topic_{uuid.uuid4().hex[:8]}"
    had_dagster_db = _database_exists(pg_server, "dagster")
    env = _env(
        state_dir,
        ports,
        DATABASE_URL=empty_database_url,
        REDIS_URL=redis_url,
        KAFKA_BROKER=kafka_bootstrap,
        KAFKA_TOPIC=topic,
    )
    try:
        proc = _cli("services", env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "postgres: using DATABASE_URL from the environment" in proc.stdout
        assert "redis: using REDIS_URL from the environment" in proc.stdout
        assert "kafka: using KAFKA_BROKER from the environment" in proc.stdout

        # no local server was started: no state, no PID, nothing on the local ports
        assert not (state_dir / "postgres").exists()
        assert _stack_pids(state_dir) == {}
        for name in ("PG_PORT", "REDIS_PORT", "KAFKA_PORT"):
            assert not servers.port_open(int(ports[name]))

        values = _sourced(state_dir / "stack.env")
        assert values["DATABASE_URL"] == empty_database_url
        assert values["REDIS_URL"] == redis_url
        assert values["KAFKA_BROKER"] == kafka_bootstrap
        # migrations went to the named database, the topic to the named broker
        with psycopg.connect(empty_database_url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert topic in servers.kafka_topics(kafka_bootstrap)

        # `down` leaves servers it did not start alone
        down = _cli("down", env, timeout=60)
        assert down.returncode == 0
        assert "nothing was running" in down.stdout
        assert pg_server.ready()
        assert redis.Redis.from_url(redis_url).ping() is True
    finally:
        if not had_dagster_db:
            servers.drop_database(pg_server.url(), "dagster")


def _database_exists(pg: PostgresServer, name: str) -> bool:
    with psycopg.connect(pg.url()) as conn:
        return bool(
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        )


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port on which something that is not Redis (a bare TCP listener) is listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_occupied_port_fails_with_one_line_naming_service_and_log(
    state_dir: Path, occupied_port: int, empty_database_url: str
) -> None:
    ports = {**_ports(), "REDIS_PORT": str(occupied_port)}
    env = _env(state_dir, ports, DATABASE_URL=empty_database_url)
    proc = _cli("services", env, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    log = state_dir / "redis" / "redis.log"
    assert "redis" in lines[0]
    assert str(log) in lines[0]
    assert str(occupied_port) in lines[0]
    assert (
        not (state_dir / "redis" / "redis.pid").exists()
        or not RedisServer(state_dir / "redis", occupied_port).running()
    )


def test_service_that_dies_during_start_up_is_reported_at_once(tmp_path: Path) -> None:
    """A server process that exits (here: a broker whose port is taken after the check)
    is reported as exited, naming its log, instead of waiting for the timeout."""
    broker = KafkaBroker(tmp_path / "kafka", servers.free_port())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", broker.port))  # bound but not listening: the check passes
        with pytest.raises(servers.ServiceError) as info:
            broker.start()
    message = str(info.value)
    assert message.startswith("kafka broker (tansu) exited during start-up")
    assert str(broker.log_file) in message
    broker.stop()
