"""`make up` / `make down` / `make migrate` / `make run`: the local stack, idempotently.

State lives under `.local/` (git-ignored): server data, logs, PID files and
`.local/stack.env` (export lines for every setting). Where DATABASE_URL, REDIS_URL or
KAFKA_BROKER is already set in the environment, that server is used and no local one is
started. Every step waits until its service answers; a failure prints one line naming the
service and its log file, and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack import servers
from devstack.servers import KafkaBroker, PostgresServer, RedisServer, ServiceError

ROOT = Path(__file__).resolve().parent.parent
LOCAL = Path(os.environ.get("CC_STATE_DIR") or ROOT / ".local").resolve()
STACK_ENV = LOCAL / "stack.env"
APP_DB = "cc_analytics"
DAGSTER_DB = "dagster"
TOPIC_PARTITIONS = 6
# uvicorn settings of the API (bench/api.py runs its framework baseline with the same)
API_SERVER_ARGS = ("--no-access-log", "--loop", "uvloop", "--http", "httptools")


@dataclass(frozen=True)
class Ports:
    pg: int
    redis: int
    kafka: int
    dagster: int
    api: int

    @classmethod
    def from_env(cls) -> Ports:
        def port(name: str, default: int) -> int:
            raw = os.environ.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise SystemExit(f"{name} is malformed: {raw!r} is not a TCP port")
            return int(raw)

        return cls(
            pg=port("PG_PORT", 15432),
            redis=port("REDIS_PORT", 16379),
            kafka=port("KAFKA_PORT", 19092),
            dagster=port("DAGSTER_PORT", 3000),
            api=port("API_PORT", 8000),
        )


def _postgres() -> PostgresServer:
    return PostgresServer(LOCAL / "postgres", Ports.from_env().pg, durable=True)


def _redis() -> RedisServer:
    return RedisServer(LOCAL / "redis", Ports.from_env().redis)


def _kafka() -> KafkaBroker:
    return KafkaBroker(LOCAL / "kafka", Ports.from_env().kafka)


def read_stack_env() -> dict[str, str]:
    """The `export` lines of `.local/stack.env` (or `$CC_STATE_DIR/stack.env`) as a dict."""
    values: dict[str, str] = {}
    if STACK_ENV.exists():
        for line in STACK_ENV.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, raw = line[len("export ") :].partition("=")
                parts = shlex.split(raw)
                values[key] = parts[0] if parts else ""
    return values


def _write_stack_env(values: dict[str, str]) -> None:
    LOCAL.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `make up`; `source .local/stack.env` to use the local stack."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    STACK_ENV.write_text("\n".join(lines) + "\n")
    STACK_ENV.chmod(0o600)


def _step(name: str) -> None:
    print(f"  - {name}", flush=True)


def _fail(message: str) -> None:
    print(f"make up: {message}", file=sys.stderr)
    raise SystemExit(1)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return 200 <= resp.status < 300


def _service_pid(name: str) -> Path:
    return LOCAL / "run" / f"{name}.pid"


def _start_process(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    ready_url: str | None,
    timeout: float,
    port: int | None = None,
) -> None:
    pid_file = _service_pid(name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log = LOCAL / "logs" / f"{name}.log"
    pid = servers.read_pid(pid_file)
    if pid and servers.pid_alive(pid):
        _step(f"{name} already running (pid {pid})")
        return
    if port is not None and servers.port_open(port):
        _fail(f"{name}: port {port} is already in use by another process; see {log}")
    servers.spawn(cmd, log=log, pid_file=pid_file, env=env, cwd=ROOT)
    pid = servers.read_pid(pid_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid or not servers.pid_alive(pid):
            _fail(f"{name} exited during start-up; see {log}")
        if ready_url is None:
            if time.monotonic() > deadline - timeout + 5:
                break
        else:
            with contextlib.suppress(Exception):
                if _http_ok(ready_url):
                    break
        time.sleep(0.3)
    else:
        _fail(f"{name} did not answer within {timeout:.0f}s; see {log}")
    _step(f"{name} running (pid {pid}, log {log})")


def _dagster_home() -> Path:
    home = LOCAL / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def dagster_storage_url(url: str) -> str:
    """``DAGSTER_PG_URL`` with the psycopg2 driver named explicitly.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` URL to psycopg 3, whose server-side
    parameter binding rejects dagster-postgres' ``NOTIFY run_events, :notify_id``: every
    event write fails and no run ever starts. dagster-postgres is built on psycopg2 (its
    own dependency).
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg2://" + rest
    return url


def up(*, with_apps: bool = True) -> dict[str, str]:
    """Start the local stack; returns the environment it wrote to stack.env."""
    ports = Ports.from_env()
    LOCAL.mkdir(parents=True, exist_ok=True)
    previous = read_stack_env()
    print(f"Starting the local stack (state under {LOCAL}):", flush=True)

    try:
        if os.environ.get("DATABASE_URL"):
            database_url = os.environ["DATABASE_URL"]
            server_url = servers.database_url(database_url, "postgres")
            _step("postgres: using DATABASE_URL from the environment")
        else:
            pg = _postgres()
            state = "already running" if pg.running() else "started"
            server_url = pg.start()
            database_url = servers.database_url(server_url, APP_DB)
            servers.ensure_database(server_url, APP_DB)
            _step(f"postgres {state} on 127.0.0.1:{ports.pg} (log {pg.log_file})")
        dagster_pg_url = dagster_storage_url(
            os.environ.get("DAGSTER_PG_URL") or servers.database_url(server_url, DAGSTER_DB)
        )
        with contextlib.suppress(Exception):
            servers.ensure_database(server_url, DAGSTER_DB)

        if os.environ.get("REDIS_URL"):
            redis_url = os.environ["REDIS_URL"]
            _step("redis: using REDIS_URL from the environment")
        else:
            redis_server = _redis()
            state = "already running" if redis_server.running() else "started"
            redis_url = redis_server.start()
            _step(f"redis {state} on 127.0.0.1:{ports.redis} (log {redis_server.log_file})")

        topic = os.environ.get("KAFKA_TOPIC", "topic_user_actions")
        fresh_local_broker = False
        if os.environ.get("KAFKA_BROKER"):
            kafka_broker = os.environ["KAFKA_BROKER"]
            _step("kafka: using KAFKA_BROKER from the environment")
        else:
            broker = _kafka()
            fresh_local_broker = not broker.running()
            state = "started" if fresh_local_broker else "already running"
            kafka_broker = broker.start()
            _step(f"kafka broker (tansu, memory storage) {state} on {kafka_broker}")
        servers.ensure_topic(kafka_broker.split(","), topic, TOPIC_PARTITIONS)
        _step(f"topic {topic} ({TOPIC_PARTITIONS} partitions)")
    except ServiceError as exc:
        _fail(str(exc))

    env_values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BROKER": kafka_broker,
        "KAFKA_TOPIC": topic,
        "DAGSTER_HOME": str(LOCAL / "dagster_home"),
        "DAGSTER_PG_URL": dagster_pg_url,
        "DATA_LAKE_DIR": os.environ.get("DATA_LAKE_DIR", str(LOCAL / "lake")),
        "JWT_SECRET": os.environ.get("JWT_SECRET")
        or previous.get("JWT_SECRET")
        or secrets.token_urlsafe(48),
        # first daily RFM partition: kept from the first `make up`; defaults to the start of
        # the demo period (45 days before today, UTC) so every partition gets built
        "RFM_START_DATE": os.environ.get("RFM_START_DATE")
        or previous.get("RFM_START_DATE")
        or (datetime.now(UTC).date() - timedelta(days=45)).isoformat(),
        "API_URL": f"http://127.0.0.1:{ports.api}",
        "DAGSTER_URL": f"http://127.0.0.1:{ports.dagster}",
    }
    if not env_values["RFM_START_DATE"]:
        del env_values["RFM_START_DATE"]
    _write_stack_env(env_values)

    try:
        servers.migrate(database_url)
    except Exception as exc:
        _fail(f"migrations failed: {exc}")
    _step("migrations applied (alembic upgrade head)")
    if fresh_local_broker:
        retired = retire_forgotten_log(database_url, topic)
        if retired:
            _step(
                f"the local broker starts empty (memory storage): {retired} stored offsets of "
                f"{topic} retired with their rows (kafka_topic renamed to {topic}@retired-...);"
                " ingestion starts again at offset 0"
            )

    if with_apps:
        _dagster_home()
        env = {**os.environ, **env_values, "DAGSTER_DISABLE_TELEMETRY": "1"}
        venv_bin = Path(sys.executable).parent
        _start_process(
            "dagster-webserver",
            [
                str(venv_bin / "dagster-webserver"),
                "-w",
                str(ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(ports.dagster),
            ],
            env,
            f"{env_values['DAGSTER_URL']}/server_info",
            timeout=180,
            port=ports.dagster,
        )
        _start_process(
            "dagster-daemon",
            [str(venv_bin / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
            env,
            None,
            timeout=60,
        )
        _start_process(
            "api",
            [
                str(venv_bin / "uvicorn"),
                "serving.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports.api),
                *API_SERVER_ARGS,
                "--workers",
                os.environ.get("API_WORKERS", "1"),
            ],
            env,
            f"{env_values['API_URL']}/health",
            timeout=60,
            port=ports.api,
        )
    print(f"Stack is up. Settings: source {STACK_ENV}", flush=True)
    return env_values


def retire_forgotten_log(database_url: str, topic: str) -> int:
    """A fresh local tansu broker has forgotten every message: retire the stored offsets.

    Rows, dead letters and offsets of `topic` keep their data but move to the topic name
    `<topic>@retired-<UTC time>` in one transaction, so the exactly-once keys of the new,
    empty log (offsets from 0 again) cannot collide with them and ingestion does not refuse
    to start. Only `make up` calls this, and only when it started the local broker itself.
    Returns the number of partitions whose offsets were retired.
    """
    import datetime as dt

    import psycopg
    from psycopg import sql

    from pipelines.settings import libpq_url

    retired = f"{topic}@retired-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    with psycopg.connect(libpq_url(database_url), connect_timeout=10) as conn:
        moved = conn.execute(
            "UPDATE kafka_offsets SET topic = %s, updated_at = now()"
            " WHERE topic = %s AND next_offset > 0",
            (retired, topic),
        ).rowcount
        if moved:
            for table in ("user_actions", "user_actions_dead_letter"):
                conn.execute(
                    sql.SQL("UPDATE {} SET kafka_topic = %s WHERE kafka_topic = %s").format(
                        sql.Identifier(table)
                    ),
                    (retired, topic),
                )
    return moved


def down() -> None:
    """Stop exactly what `make up` started (PID files); safe to repeat."""
    stopped = []
    for name in ("api", "dagster-daemon", "dagster-webserver"):
        pid_file = _service_pid(name)
        pid = servers.read_pid(pid_file)
        if pid and servers.pid_alive(pid):
            servers.stop_pid(pid, timeout=20)
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    for server, name in ((_kafka(), "kafka"), (_redis(), "redis")):
        if server.running():
            server.stop()
            stopped.append(name)
    pg = _postgres()
    if pg.running():
        pg.stop()
        stopped.append("postgres")
    print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def migrate_cmd() -> None:
    url = os.environ.get("DATABASE_URL") or read_stack_env().get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set (run `make up` or export it)")
    servers.migrate(url)
    print("Migrations applied to DATABASE_URL (alembic upgrade head).")


def run() -> None:
    """`make run`: up, then the demo (load, ingest, RFM snapshots), then how to use it."""
    env_values = up()
    os.environ.update(env_values)
    from devstack import demo

    info = demo.run_demo(env_values)
    print()
    print("The CC Analytics Stack is running:")
    print(f"  Dagster UI : {env_values['DAGSTER_URL']}  (webserver + daemon; logs in .local/logs)")
    print(f"  API        : {env_values['API_URL']}  (OpenAPI docs at {env_values['API_URL']}/docs)")
    for line in info:
        print(line)
    print("  Settings   : source .local/stack.env")
    print("  Stop       : make down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "migrate", "run", "services"])
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
    elif args.command == "services":
        up(with_apps=False)
    elif args.command == "down":
        down()
    elif args.command == "migrate":
        migrate_cmd()
    elif args.command == "run":
        run()


if __name__ == "__main__":
    main()
