"""API throughput: GET /api/user-segments/{id}/recommendation against the framework's limit.

1. seeds 1,000,000 rows into ``user_segments`` (ids 9,000,000,001...; ``BENCH_API_ROWS``)
   and streak keys in Redis for a tenth of them, then waits until the API's segment copy
   has them;
2. ``api_hello_rps``: a bare FastAPI endpoint returning constant JSON (bench/_hello_app.py),
   served by uvicorn with the API's own server settings (``devstack.cli.API_SERVER_ARGS``,
   ``API_WORKERS``) on a free port: the framework's limit on this machine;
3. ``api_reco_rps`` / ``api_reco_p99_ms``: the recommendation endpoint for random users,
   with a service token;
4. ``api_reco_vs_hello_ratio`` = reco / hello (target >= 0.5; p99 target < 25 ms).

Both loads: 64 keep-alive connections for 20 s (``BENCH_API_DURATION``) after a warm-up,
with wrk (Debian package ``wrk``) or, if it is missing, bench/_loadgen.py in a separate
process. Any non-2xx response or socket error fails the run (exit status 1).

With ``API_URL`` set (``make bench`` after ``make up``), the running API and the stack's
``DATABASE_URL``, ``REDIS_URL`` and ``JWT_SECRET`` are used; the seeded rows and keys are
removed afterwards (``BENCH_API_KEEP=1`` keeps them). Without ``API_URL``, private
PostgreSQL, Redis and broker servers and an API are started on free ports and stopped at
the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from devstack import servers  # noqa: E402
from devstack.cli import API_SERVER_ARGS  # noqa: E402
from pipelines.settings import libpq_url  # noqa: E402
from serving.auth import mint_token  # noqa: E402

BASE_ID = 9_000_000_000
ROWS = int(os.environ.get("BENCH_API_ROWS", "1000000"))
STREAK_EVERY = 10
DURATION = float(os.environ.get("BENCH_API_DURATION", "20"))
WARMUP = 3.0
CONNECTIONS = 64
WORKERS = os.environ.get("API_WORKERS", "1")
RECO_PATH = "/api/user-segments/{id}/recommendation"


def info(text: str) -> None:
    print(f"  {text}", flush=True)


def result(name: str, value: float, unit: str) -> None:
    print(f"RESULT {name} {value:.4g} {unit}", flush=True)


def uvicorn_cmd(app: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *API_SERVER_ARGS,
        "--workers",
        WORKERS,
        *extra,
    ]


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, urllib.error.URLError):
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise SystemExit(f"bench/api.py: {url} did not answer 200 within {timeout:.0f}s")


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        servers.stop_pid(proc.pid, timeout=15)


def private_stack(stack: contextlib.ExitStack) -> dict[str, str]:
    """Private servers and an API on free ports (when API_URL is not set)."""
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    stack.callback(shutil.rmtree, root, True)
    pg = servers.PostgresServer(root / "postgres", servers.free_port(), durable=False)
    pg.start()
    stack.callback(pg.stop, "immediate")
    servers.ensure_database(pg.url(), "bench")
    database_url = servers.database_url(pg.url(), "bench")
    servers.migrate(database_url)
    rds = servers.RedisServer(root / "redis", servers.free_port())
    redis_url = rds.start()
    stack.callback(rds.stop)
    broker = servers.KafkaBroker(root / "kafka", servers.free_port())
    bootstrap = broker.start()
    stack.callback(broker.stop)
    servers.ensure_topic(bootstrap, "topic_user_actions", 6)
    port = servers.free_port()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "KAFKA_BROKER": bootstrap,
        "KAFKA_TOPIC": "topic_user_actions",
        "JWT_SECRET": "bench-" + os.urandom(24).hex(),
        "API_URL": f"http://127.0.0.1:{port}",
    }
    info(f"private stack in {root} (API_URL not set)")
    seed(env)
    stack.enter_context(
        process(
            uvicorn_cmd("serving.main:app", port),
            {**os.environ, **env},
            root / "api.log",
        )
    )
    wait_http(env["API_URL"] + "/health", 120)
    return env


def stack_env(stack: contextlib.ExitStack) -> dict[str, str]:
    if not os.environ.get("API_URL"):
        return private_stack(stack)
    env = {}
    for name in ("API_URL", "DATABASE_URL", "REDIS_URL", "JWT_SECRET"):
        if not os.environ.get(name):
            raise SystemExit(f"bench/api.py: {name} is not set (API_URL is: use `make bench`)")
        env[name] = os.environ[name]
    seed(env)
    if os.environ.get("BENCH_API_KEEP") != "1":
        stack.callback(unseed, env)
    return env


def seed(env: dict[str, str]) -> None:
    started = time.monotonic()
    with psycopg.connect(libpq_url(env["DATABASE_URL"]), autocommit=True) as conn:
        have = conn.execute(
            "SELECT count(*) FROM user_segments WHERE user_id > %s AND user_id <= %s",
            (BASE_ID, BASE_ID + ROWS),
        ).fetchone()
        if not have or have[0] != ROWS:
            conn.execute(
                """
                INSERT INTO user_segments (user_id, rfm_group, risk_profile, recency_days,
                                           frequency, monetary, snapshot_date)
                SELECT %(base)s + g,
                       (ARRAY['Whale', 'High Engaged', 'Medium', 'Low'])[1 + (g * 7919) %% 4],
                       (ARRAY['High-Risk', 'Low-Risk', NULL, 'Medium-Risk'])
                           [1 + (g * 104729) %% 4],
                       g %% 30, g %% 60, (g %% 5000)::float8, CURRENT_DATE
                  FROM generate_series(1::bigint, %(rows)s) AS g
                ON CONFLICT (user_id) DO NOTHING
                """,
                {"base": BASE_ID, "rows": ROWS},
            )
        total = conn.execute("SELECT count(*) FROM user_segments").fetchone()
    client = redis.Redis.from_url(env["REDIS_URL"])
    pipe = client.pipeline(transaction=False)
    for n in range(1, ROWS + 1, STREAK_EVERY):
        pipe.set(f"user:{BASE_ID + n}:streak_count", n % 40)
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.execute()
    client.close()
    info(
        f"seeded {ROWS:,} bench rows (user_segments now {total[0] if total else 0:,} rows) "
        f"and {len(range(1, ROWS + 1, STREAK_EVERY)):,} streak keys in "
        f"{time.monotonic() - started:.1f}s"
    )


def unseed(env: dict[str, str]) -> None:
    with psycopg.connect(libpq_url(env["DATABASE_URL"]), autocommit=True) as conn:
        conn.execute(
            "DELETE FROM user_segments WHERE user_id > %s AND user_id <= %s",
            (BASE_ID, BASE_ID + ROWS),
        )
    client = redis.Redis.from_url(env["REDIS_URL"])
    keys = [f"user:{BASE_ID + n}:streak_count" for n in range(1, ROWS + 1, STREAK_EVERY)]
    for start in range(0, len(keys), 10_000):
        client.unlink(*keys[start : start + 10_000])
    client.close()
    info("removed the bench rows and streak keys (BENCH_API_KEEP=1 keeps them)")


def wait_segments_loaded(env: dict[str, str], headers: dict[str, str]) -> None:
    """The API answers 200 for bench users (every worker: many consecutive answers)."""
    started = time.monotonic()
    last = env["API_URL"] + RECO_PATH.format(id=BASE_ID + ROWS)
    wait_http(last, 180, headers)
    for _ in range(50):
        uid = BASE_ID + random.randint(1, ROWS)
        wait_http(env["API_URL"] + RECO_PATH.format(id=uid), 60, headers)
    info(f"the API serves the bench users ({time.monotonic() - started:.1f}s)")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    requests = re.search(r"(\d+) requests in", output)
    if not (rps and p99 and p50 and requests):
        raise SystemExit(f"bench/api.py: cannot read wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests": int(requests.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "errors": sum(int(n) for n in sockets.groups()) if sockets else 0,
    }


WRK_SCRIPT = """
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + seed)
end
request = function()
  local path = "%(prefix)s" .. string.format("%%09d", math.random(1, %(rows)d)) .. "%(suffix)s"
  return wrk.format("GET", path, {["Authorization"] = "Bearer %(token)s"})
end
"""


def load(url: str, *, token: str | None, duration: float, tmp: Path) -> dict[str, float]:
    """Drive ``url`` ({id} = a random bench user) at 64 connections for ``duration`` s."""
    wrk = shutil.which("wrk")
    if wrk:
        script = None
        if "{id}" in url:
            # ids are BASE_ID + n, n in 1..ROWS: "9" followed by n on 9 digits
            assert BASE_ID == 9_000_000_000 and ROWS < 10**9
            base, path = url.split("/api/", 1)
            prefix, _, suffix = ("/api/" + path).partition("{id}")
            script = tmp / "reco.lua"
            script.write_text(
                WRK_SCRIPT
                % {"prefix": prefix + "9", "suffix": suffix, "rows": ROWS, "token": token}
            )
            url = base
        threads = "2"
        args = [wrk, "-t", threads, "-c", str(CONNECTIONS), "--latency", "--timeout", "5s"]
        if script is not None:
            args += ["-s", str(script)]
        subprocess.run(
            [*args, "-d", f"{WARMUP:.0f}s", url], capture_output=True, text=True, check=True
        )
        run = subprocess.run(
            [*args, "-d", f"{duration:.0f}s", url], capture_output=True, text=True, check=True
        )
        return parse_wrk(run.stdout)
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "_loadgen.py"),
        url,
        "--connections",
        str(CONNECTIONS),
        "--duration",
        str(duration),
        "--id-base",
        str(BASE_ID),
        "--id-count",
        str(ROWS),
    ]
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    generator = "wrk" if shutil.which("wrk") else "bench/_loadgen.py (wrk not installed)"
    info(f"load generator: {generator}; {CONNECTIONS} connections, {DURATION:.0f}s each")
    with contextlib.ExitStack() as stack:
        env = stack_env(stack)
        token = mint_token(env["JWT_SECRET"], "bench-api", role="service", ttl=3600)
        headers = {"Authorization": f"Bearer {token}"}
        wait_segments_loaded(env, headers)
        tmp = Path(tempfile.mkdtemp(prefix="bench-api-run-"))
        stack.callback(shutil.rmtree, tmp, True)
        hello_port = servers.free_port()
        stack.enter_context(
            process(
                uvicorn_cmd("_hello_app:app", hello_port, "--app-dir", str(ROOT / "bench")),
                dict(os.environ),
                tmp / "hello.log",
            )
        )
        hello_url = f"http://127.0.0.1:{hello_port}"
        wait_http(hello_url + "/hello", 60)

        hello = load(hello_url + "/hello", token=None, duration=DURATION, tmp=tmp)
        info(
            f"hello: {hello['requests']:,} requests, p50 {hello['p50_ms']:.2f} ms, "
            f"p99 {hello['p99_ms']:.2f} ms, non-2xx {hello['non_2xx']}, errors {hello['errors']}"
        )
        reco = load(env["API_URL"] + RECO_PATH, token=token, duration=DURATION, tmp=tmp)
        info(
            f"reco : {reco['requests']:,} requests, p50 {reco['p50_ms']:.2f} ms, "
            f"p99 {reco['p99_ms']:.2f} ms, non-2xx {reco['non_2xx']}, errors {reco['errors']}"
        )
    ratio = reco["rps"] / hello["rps"] if hello["rps"] else 0.0
    result("api_reco_rps", reco["rps"], "req/s")
    result("api_reco_p99_ms", reco["p99_ms"], "ms")
    result("api_hello_rps", hello["rps"], "req/s")
    result("api_reco_vs_hello_ratio", ratio, "ratio")
    result("api_reco_non_2xx", reco["non_2xx"] + reco["errors"], "responses")
    info(f"api_reco_vs_hello_ratio {ratio:.3f} (target >= 0.5): {'ok' if ratio >= 0.5 else 'MISS'}")
    info(
        f"api_reco_p99_ms {reco['p99_ms']:.2f} (target < 25 at {CONNECTIONS} connections): "
        f"{'ok' if reco['p99_ms'] < 25 else 'MISS'}"
    )
    failed = reco["non_2xx"] + reco["errors"] + hello["non_2xx"] + hello["errors"]
    if failed:
        print(f"bench/api.py: {failed} non-2xx responses or socket errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
