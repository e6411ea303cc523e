"""The demo of `make run`: load a dataset through Kafka, ingest it, build the RFM snapshots.

1. Unless ``user_actions`` already holds demo rows (``metadata.demo = true``), produce
   about 200,000 events of 5,000 users over the 45 days ending yesterday (UTC) to the
   topic (key = user id, ``acks=all``): whales, engaged, medium and casual users, and
   churners inactive for the last 20-40 days, with ``SPEND_CYBER_TOKENS`` /
   ``EARN_CYBER_TOKENS`` events; plus a few malformed records (they land in the
   dead-letter table) and about 3,000 site visits (inserted into ``site_visits``).
2. Ingest with the Dagster CLI (``dagster asset materialize --select user_actions``),
   repeated until every record of the topic is in ``user_actions`` or the dead letters.
3. Backfill the demo period of the ``rfm`` group in ONE run
   (``--partition-range A...B``); the newest day publishes ``user_segments``.

Both Dagster steps run against the stack's ``DAGSTER_HOME``, so the UI shows the runs,
partitions, checks and metadata. Running ``make run`` again loads nothing twice.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg

from pipelines.settings import libpq_url

ROOT = Path(__file__).resolve().parent.parent
DEMO_DAYS = 45
N_USERS = 5_000
SEED = 20261204
SOURCES = ("webapp_button", "email_campaign", "push_notification", "banner", "footer_link")
PLAIN_ACTIONS = ("LOGIN", "PLAY_GAME", "VIEW_REWARD", "CLAIM_DAILY_BONUS")


@dataclass(frozen=True)
class Persona:
    name: str
    users: int
    events_per_day: float
    spend_share: float
    spend_tokens: tuple[int, int]
    churn_days: tuple[int, int] | None = None  # inactive for the last N days


PERSONAS = (
    Persona("whale", 100, 6.0, 0.35, (150, 600)),
    Persona("engaged", 650, 2.8, 0.30, (60, 220)),
    Persona("medium", 1_450, 0.33, 0.30, (20, 60)),
    Persona("casual", 1_800, 0.2, 0.20, (5, 40)),
    Persona("churner", 1_000, 2.5, 0.30, (30, 200), churn_days=(20, 40)),
)
MALFORMED: tuple[tuple[bytes | None, bytes], ...] = (
    (b"1", b"{not json"),
    (b"2", orjson.dumps({"user_id": 2, "action_timestamp": "2026-01-01T00:00:00Z"})),
    (b"3", orjson.dumps({"user_id": -3, "action_type": "LOGIN"})),
    (b"4", orjson.dumps({"user_id": 4, "action_type": "SPEND_CYBER_TOKENS", "metadata": {}})),
    (None, b"\xff\xfe binary garbage"),
)


def _yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def generate_events(last_day: dt.date, seed: int = SEED) -> Iterator[dict[str, object]]:
    """The demo events (deterministic for a seed and a last day)."""
    rng = random.Random(seed)
    first_day = last_day - dt.timedelta(days=DEMO_DAYS - 1)
    user_id = 0
    for persona in PERSONAS:
        for _ in range(persona.users):
            user_id += 1
            weight = rng.lognormvariate(0, 0.35)
            active_until = last_day
            if persona.churn_days:
                active_until = last_day - dt.timedelta(days=rng.randint(*persona.churn_days))
            day = first_day
            while day <= active_until:
                expected = persona.events_per_day * weight
                count = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
                for _ in range(count):
                    moment = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(
                        seconds=rng.randrange(86_400)
                    )
                    roll = rng.random()
                    metadata: dict[str, object] = {"demo": True}
                    if roll < persona.spend_share:
                        action = "SPEND_CYBER_TOKENS"
                        low, high = persona.spend_tokens
                        metadata["spent_tokens"] = rng.randint(low, high)
                    elif roll < persona.spend_share + 0.15:
                        action = "EARN_CYBER_TOKENS"
                        metadata["earned_tokens"] = rng.randint(10, 300)
                    else:
                        action = rng.choice(PLAIN_ACTIONS)
                    yield {
                        "user_id": user_id,
                        "action_type": action,
                        "action_timestamp": moment.isoformat().replace("+00:00", "Z"),
                        "metadata": metadata,
                    }
                day += dt.timedelta(days=1)


def generate_site_visits(last_day: dt.date, seed: int = SEED) -> list[tuple[int, str, dt.datetime]]:
    rng = random.Random(seed + 1)
    first = dt.datetime.combine(last_day - dt.timedelta(days=DEMO_DAYS - 1), dt.time(), dt.UTC)
    return [
        (
            rng.randint(1, N_USERS),
            rng.choices(SOURCES, weights=(50, 20, 15, 10, 5))[0],
            first + dt.timedelta(seconds=rng.randrange(DEMO_DAYS * 86_400)),
        )
        for _ in range(3_000)
    ]


def _has_demo_rows(dsn: str) -> bool:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM user_actions WHERE metadata @> '{\"demo\": true}')"
        ).fetchone()
    return bool(row and row[0])


def produce(brokers: list[str], topic: str, last_day: dt.date) -> tuple[int, int]:
    """Produce the demo events and the malformed records; returns (events, malformed)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=brokers,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=30_000,
    )
    try:
        count = 0
        for record in generate_events(last_day):
            producer.send(topic, key=str(record["user_id"]).encode(), value=orjson.dumps(record))
            count += 1
        for key, value in MALFORMED:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    return count, len(MALFORMED)


def _insert_site_visits(dsn: str, last_day: dt.date) -> int:
    visits = generate_site_visits(last_day)
    with (
        psycopg.connect(dsn, connect_timeout=10) as conn,
        conn.cursor().copy(
            "COPY site_visits (user_id, source, visit_timestamp) FROM STDIN"
        ) as copy,
    ):
        for row in visits:
            copy.write_row(row)
    return len(visits)


def _seed_risk_profiles(dsn: str) -> int:
    """Risk profiles come from another system; the demo sets some so the policy varies."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        cur = conn.execute(
            """
            INSERT INTO user_segments (user_id, risk_profile)
            SELECT g, CASE WHEN g <= %(whales)s THEN
                           CASE WHEN g %% 2 = 1 THEN 'High-Risk' ELSE 'Low-Risk' END
                      ELSE (ARRAY['Low-Risk', 'Medium-Risk', 'High-Risk'])[g %% 3 + 1] END
            FROM generate_series(1, %(users)s) AS g
            ON CONFLICT (user_id) DO NOTHING
            """,
            {"whales": PERSONAS[0].users, "users": N_USERS},
        )
        return cur.rowcount


def _topic_end(brokers: list[str], topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=brokers, request_timeout_ms=30_000)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def _stored(dsn: str, topic: str) -> int:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM user_actions WHERE kafka_topic = %s)"
            " + (SELECT count(*) FROM user_actions_dead_letter WHERE kafka_topic = %s)",
            (topic, topic),
        ).fetchone()
    return int(row[0]) if row else 0


def _dagster(args: list[str], env: dict[str, str], log: Path) -> None:
    exe = Path(sys.executable).parent / "dagster"
    cmd = [str(exe), "asset", "materialize", "-m", "pipelines.definitions", *args]
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(
            f"make run: `dagster asset materialize {' '.join(args)}` failed; see {log}"
        )


def _step(text: str) -> None:
    sys.stdout.write(f"  - {text}\n")
    sys.stdout.flush()


def run_demo(env: dict[str, str]) -> list[str]:
    """Load, ingest and build the demo; returns the lines `make run` prints at the end."""
    dsn = libpq_url(env["DATABASE_URL"])
    brokers = [b.strip() for b in env["KAFKA_BROKER"].split(",") if b.strip()]
    topic = env.get("KAFKA_TOPIC", "topic_user_actions")
    state = Path(env["DAGSTER_HOME"]).parent
    log = state / "logs" / "demo.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run_env = {**os.environ, **env, "DAGSTER_DISABLE_TELEMETRY": "1"}
    last_day = _yesterday()
    sys.stdout.write("Loading the demo:\n")

    produced = 0
    stored_before = _stored(dsn, topic)
    if _has_demo_rows(dsn):
        _step("demo data already in user_actions: nothing produced (make run is idempotent)")
    else:
        started = time.monotonic()
        events, malformed = produce(brokers, topic, last_day)
        produced = events + malformed
        _step(
            f"produced {events:,} events of {N_USERS:,} users and {malformed} malformed records "
            f"to {topic} in {time.monotonic() - started:.1f}s"
        )
        _step(f"inserted {_insert_site_visits(dsn, last_day):,} site visits")
        _step(
            f"risk profiles for {_seed_risk_profiles(dsn):,} users (the pipeline never sets them)"
        )

    # drain the topic: ingestion runs until every record is a row or a dead letter
    target = max(_topic_end(brokers, topic), stored_before + produced)
    started = time.monotonic()
    stored = stored_before
    for _ in range(20):
        _dagster(["--select", "user_actions"], run_env, log)
        previous, stored = stored, _stored(dsn, topic)
        if stored >= target or stored == previous:
            break
    _step(
        f"ingested through Dagster: {stored:,} records of {topic} stored (rows + dead letters; "
        f"topic end {target:,}) in {time.monotonic() - started:.1f}s"
    )

    start_env = env.get("RFM_START_DATE") or os.environ.get("RFM_START_DATE")
    first = last_day - dt.timedelta(days=DEMO_DAYS - 1)
    if start_env:
        first = max(first, dt.date.fromisoformat(start_env))
    started = time.monotonic()
    _dagster(
        ["--select", "group:rfm", "--partition-range", f"{first.isoformat()}...{last_day}"],
        run_env,
        log,
    )
    _step(
        f"RFM snapshots {first}..{last_day} built in one run ({time.monotonic() - started:.1f}s);"
        f" newest published to user_segments"
    )
    return _summary(dsn, env, last_day)


def _summary(dsn: str, env: dict[str, str], last_day: dt.date) -> list[str]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        groups = conn.execute(
            "SELECT rfm_group, count(*) FROM user_segments WHERE rfm_group IS NOT NULL "
            "GROUP BY 1 ORDER BY 2"
        ).fetchall()
        dead = conn.execute("SELECT count(*) FROM user_actions_dead_letter").fetchone()
        picks = [
            conn.execute(
                "SELECT min(user_id) FROM user_segments WHERE rfm_group = %s "
                "AND risk_profile IS NOT DISTINCT FROM %s",
                (group, risk),
            ).fetchone()
            for group, risk in (("Whale", "High-Risk"), ("Medium", "Low-Risk"), ("Low", None))
        ]
    found = [row[0] for row in picks if row and row[0] is not None]
    user = found[0] if found else 1
    other = found[1] if len(found) > 1 else user
    api = env["API_URL"]
    lines = [
        "  Segments   : " + ", ".join(f"{g} {n:,}" for g, n in groups) + f" (snapshot {last_day})",
        f"  Dead letter: {dead[0] if dead else 0} malformed records in user_actions_dead_letter",
    ]
    secret = env.get("JWT_SECRET", "")
    try:
        from serving.auth import mint_token

        service = mint_token(secret, "make-run-demo", role="service", ttl=86_400)
        user_token = mint_token(secret, str(user), ttl=86_400)
    except Exception as exc:  # the API package may be missing in a partial checkout
        lines.append(f"  Tokens     : cannot mint ({exc}); see serving/auth.py")
        return lines
    lines += [
        "  Tokens     : valid 24 h, signed with JWT_SECRET from .local/stack.env",
        f"    export SERVICE_TOKEN={service}",
        f"    export USER_TOKEN={user_token}   # user {user} (acts on that user only)",
        "  Try        :",
        f'    curl -s -H "Authorization: Bearer $USER_TOKEN" '
        f"{api}/api/user-segments/{user}/recommendation",
        f'    curl -s -H "Authorization: Bearer $SERVICE_TOKEN" '
        f"{api}/api/user-segments/{other}/recommendation",
        f'    curl -s -X POST -H "Authorization: Bearer $USER_TOKEN" '
        f"-H 'Content-Type: application/json' "
        f'-d \'{{"user_id": {user}, "action_type": "SPEND_CYBER_TOKENS", '
        f'"metadata": {{"spent_tokens": 250}}}}\' {api}/api/actions',
        f'    curl -s -X POST -H "Authorization: Bearer $SERVICE_TOKEN" '
        f"-H 'Content-Type: application/json' "
        f'-d \'{{"user_id": {user}, "source": "webapp_button"}}\' {api}/api/notify/site_visit',
        "  Analyze    : make analyze SQL=sql/analysis/segment_distribution.sql",
    ]
    return lines
