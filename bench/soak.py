"""Soak test (issue 6 part 5): mixed API traffic for a long time while the ingestion sensor
runs, then proof that every acknowledged action reached Postgres exactly once.

Not part of `make test` or `make bench` (too long); run it by hand against a running stack::

    make up            # or `make run` for the demo data (recommendations then answer 200)
    source .local/stack.env
    .venv/bin/python bench/soak.py               # 10 minutes; --seconds 60 for a short one

Traffic (closed loop, ``--workers`` concurrent clients, paced to ``--rate`` requests/s):
POST /api/actions (valid events of a few action types), POST /api/notify/site_visit and
GET /api/user-segments/{id}/recommendation, with a service token minted from
``JWT_SECRET``. Ingestion is *not* driven by this script: the Dagster daemon's
``kafka_ingest_sensor`` (started by `make up`) launches the runs, as in production.

At the end it waits (``--catchup-timeout``) until every action the API acknowledged (202
with topic, partition, offset) is in ``user_actions`` (or the dead letters), and checks
each stored row is the action sent (user id, action type); site visits answered 201 must
all be rows of ``site_visits``. Prints the counts and ``RESULT`` lines; exits 1 on any
mismatch, or when more requests failed (5xx or no answer) than ``--max-errors``.
Needs ``API_URL``, ``JWT_SECRET``, ``DATABASE_URL`` (and ``KAFKA_TOPIC``) in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import psycopg

from pipelines.settings import libpq_url
from serving.auth import mint_token

ACTION_TYPES = ("LOGIN", "VIEW_PAGE", "SPEND_CYBER_TOKENS", "EARN_CYBER_TOKENS", "PLAY_GAME")
MIX = (("action", 0.45), ("site_visit", 0.15), ("recommendation", 0.40))


@dataclass
class Stats:
    requests: collections.Counter[tuple[str, int | str]] = field(
        default_factory=collections.Counter
    )
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    #: (topic, partition, offset) -> (user_id, action_type) of every acknowledged action
    produced: dict[tuple[str, int, int], tuple[int, str]] = field(default_factory=dict)
    visits_created: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def failed(self) -> int:
        return sum(n for (_, status), n in self.requests.items() if _is_error(status))


def _is_error(status: int | str) -> bool:
    return not isinstance(status, int) or status >= 500


def _action(rng: random.Random, user_id: int) -> dict[str, object]:
    action_type = rng.choice(ACTION_TYPES)
    metadata: dict[str, object] = {"soak": True}
    if action_type == "SPEND_CYBER_TOKENS":
        metadata["spent_tokens"] = rng.randint(1, 500)
    elif action_type == "EARN_CYBER_TOKENS":
        metadata["earned_tokens"] = rng.randint(1, 200)
    elif action_type == "VIEW_PAGE":
        metadata["page"] = f"/shop/{rng.randint(1, 50)}"
    return {"user_id": user_id, "action_type": action_type, "metadata": metadata}


async def worker(
    client: httpx.AsyncClient,
    stats: Stats,
    args: argparse.Namespace,
    source: str,
    stop_at: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    interval = args.workers / args.rate if args.rate > 0 else 0.0
    next_at = time.monotonic() + rng.uniform(0, interval)
    while (now := time.monotonic()) < stop_at:
        if interval:
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - interval)
        kind = rng.choices(names, weights)[0]
        user_id = rng.randint(args.first_user, args.first_user + args.users - 1)
        started = time.perf_counter()
        try:
            if kind == "action":
                body = _action(rng, user_id)
                response = await client.post("/api/actions", json=body)
            elif kind == "site_visit":
                body = {"user_id": user_id, "source": source}
                response = await client.post("/api/notify/site_visit", json=body)
            else:
                response = await client.get(f"/api/user-segments/{user_id}/recommendation")
        except httpx.HTTPError as exc:
            stats.requests[(kind, type(exc).__name__)] += 1
            if len(stats.errors) < 20:
                stats.errors.append(f"{kind}: {exc!r}")
            await asyncio.sleep(0.05)
            continue
        stats.latencies[kind].append(time.perf_counter() - started)
        status = response.status_code
        stats.requests[(kind, status)] += 1
        if kind == "action" and status == 202:
            where = response.json()
            key = (where["topic"], int(where["partition"]), int(where["offset"]))
            if key in stats.produced:
                stats.errors.append(f"the API acknowledged two actions at {key}")
            stats.produced[key] = (user_id, str(body["action_type"]))
        elif kind == "site_visit" and status == 201:
            stats.visits_created += 1
        elif status >= 400 and status != 404 and len(stats.errors) < 20:
            stats.errors.append(f"{kind} {status}: {response.text[:200]}")


async def reporter(stats: Stats, started: float, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(10.0, max(stop_at - time.monotonic(), 0.1)))
        elapsed = time.monotonic() - started
        print(
            f"[{elapsed:6.0f}s] requests {stats.total:,} ({stats.total / elapsed:,.0f}/s), "
            f"failed {stats.failed}, actions acknowledged {len(stats.produced):,}",
            flush=True,
        )


def _by_partition(
    produced: dict[tuple[str, int, int], tuple[int, str]],
) -> dict[tuple[str, int], list[int]]:
    groups: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
    for topic, partition, offset in produced:
        groups[(topic, partition)].append(offset)
    return groups


def stored_positions(conn: psycopg.Connection, produced: dict) -> tuple[int, int]:
    """(rows, dead letters) stored at the acknowledged positions."""
    rows = dead = 0
    for (topic, partition), offsets in _by_partition(produced).items():
        params = (topic, partition, offsets)
        rows += conn.execute(
            "SELECT count(*) FROM user_actions WHERE kafka_topic = %s AND kafka_partition = %s"
            " AND kafka_offset = ANY(%s)",
            params,
        ).fetchone()[0]
        dead += conn.execute(
            "SELECT count(*) FROM user_actions_dead_letter WHERE kafka_topic = %s"
            " AND kafka_partition = %s AND kafka_offset = ANY(%s)",
            params,
        ).fetchone()[0]
    return rows, dead


def content_mismatches(conn: psycopg.Connection, produced: dict) -> list[str]:
    problems = []
    for (topic, partition), offsets in _by_partition(produced).items():
        for offset, user_id, action_type in conn.execute(
            "SELECT kafka_offset, user_id, action_type FROM user_actions WHERE kafka_topic = %s"
            " AND kafka_partition = %s AND kafka_offset = ANY(%s)",
            (topic, partition, offsets),
        ):
            if produced[(topic, partition, offset)] != (user_id, action_type):
                problems.append(
                    f"{topic}/{partition}@{offset}: stored {(user_id, action_type)}, "
                    f"sent {produced[(topic, partition, offset)]}"
                )
    return problems


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="traffic duration")
    parser.add_argument("--rate", type=float, default=150.0, help="requests/s in total (0: max)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent clients")
    parser.add_argument("--users", type=int, default=5_000, help="user ids used")
    parser.add_argument("--first-user", type=int, default=1, help="first user id")
    parser.add_argument(
        "--catchup-timeout", type=float, default=240.0, help="max wait for ingestion at the end"
    )
    parser.add_argument("--max-errors", type=int, default=0, help="failed requests tolerated")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    missing = [n for n in ("API_URL", "JWT_SECRET", "DATABASE_URL") if not os.environ.get(n)]
    if missing:
        print(f"{', '.join(missing)} not set: `source .local/stack.env` first", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    api_url = os.environ["API_URL"]
    dsn = libpq_url(os.environ["DATABASE_URL"])
    token = mint_token(
        os.environ["JWT_SECRET"],
        "soak",
        role="service",
        ttl=timedelta(seconds=args.seconds + args.catchup_timeout + 600),
    )
    source = f"soak-{uuid.uuid4().hex[:12]}"
    dagster = os.environ.get("DAGSTER_URL")
    if dagster:
        try:
            httpx.get(f"{dagster}/server_info", timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            print(
                f"warning: Dagster UI at {dagster} does not answer ({exc!r}); without the "
                "daemon's sensor nothing is ingested",
                flush=True,
            )
    try:
        httpx.get(f"{api_url}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"the API at {api_url} does not answer: {exc!r}", file=sys.stderr)
        return 2

    print(
        f"soak: {args.seconds:.0f}s of mixed traffic against {api_url} "
        f"({args.workers} workers, {args.rate:g} req/s, users {args.first_user}.."
        f"{args.first_user + args.users - 1}, seed {seed}, site visit source {source})",
        flush=True,
    )
    stats = Stats()

    async def traffic() -> None:
        limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
        async with httpx.AsyncClient(
            base_url=api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            limits=limits,
        ) as client:
            started = time.monotonic()
            stop_at = started + args.seconds
            tasks = [
                worker(client, stats, args, source, stop_at, seed + i) for i in range(args.workers)
            ]
            await asyncio.gather(reporter(stats, started, stop_at), *tasks)

    traffic_started = time.monotonic()
    asyncio.run(traffic())
    traffic_seconds = time.monotonic() - traffic_started

    produced = len(stats.produced)
    print(f"traffic done: waiting up to {args.catchup_timeout:.0f}s for ingestion", flush=True)
    waited_from = time.monotonic()
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        while True:
            rows, dead = stored_positions(conn, stats.produced)
            if rows + dead >= produced or time.monotonic() - waited_from > args.catchup_timeout:
                break
            time.sleep(2.0)
        catchup = time.monotonic() - waited_from
        mismatches = content_mismatches(conn, stats.produced)
        visits_stored = conn.execute(
            "SELECT count(*) FROM site_visits WHERE source = %s", (source,)
        ).fetchone()[0]

    print()
    print("requests by endpoint and status:")
    for (kind, status), n in sorted(stats.requests.items(), key=lambda item: str(item[0])):
        print(f"  {kind:15s} {status!s:>22s}  {n:,}")
    for problem in stats.errors[:20]:
        print(f"  problem: {problem}")
    print(
        f"requests served        {stats.total - stats.failed:,} of {stats.total:,} "
        f"({stats.total / traffic_seconds:,.0f}/s over {traffic_seconds:.0f}s)"
    )
    print(f"errors (5xx, no answer) {stats.failed:,}")
    print(f"events produced        {produced:,} (acknowledged by the API)")
    print(
        f"rows ingested          {rows:,} rows + {dead:,} dead letters at those positions "
        f"(caught up {catchup:.0f}s after the traffic)"
    )
    print(f"site visits            {stats.visits_created:,} answered 201, {visits_stored:,} stored")
    for kind, _ in MIX:
        lat = stats.latencies.get(kind, [])
        print(
            f"latency {kind:15s} p50 {percentile(lat, 0.5) * 1e3:7.1f} ms  "
            f"p99 {percentile(lat, 0.99) * 1e3:7.1f} ms  ({len(lat):,} answers)"
        )
    print(f"RESULT soak_requests {stats.total} requests")
    print(f"RESULT soak_request_errors {stats.failed} requests (limit {args.max_errors})")
    print(f"RESULT soak_events_produced {produced} events")
    print(f"RESULT soak_events_ingested {rows + dead} events (must equal produced)")
    print(f"RESULT soak_ingest_catchup {catchup:.1f} s (limit {args.catchup_timeout:.0f})")

    failures = []
    if rows + dead != produced:
        failures.append(f"{produced - rows - dead} acknowledged events are not in Postgres")
    if dead:
        failures.append(f"{dead} acknowledged (valid) events were dead-lettered")
    if mismatches:
        failures.append(
            f"{len(mismatches)} stored rows differ from what was sent: {mismatches[:3]}"
        )
    if visits_stored != stats.visits_created:
        failures.append(f"{stats.visits_created} site visits answered 201, {visits_stored} stored")
    if stats.failed > args.max_errors:
        failures.append(f"{stats.failed} requests failed (limit {args.max_errors})")
    if any("acknowledged two actions" in e for e in stats.errors):
        failures.append("the API acknowledged two actions at one position")
    if produced == 0:
        failures.append("no action was acknowledged")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("soak: " + ("FAILED" if failures else "OK: every acknowledged event ingested once"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
