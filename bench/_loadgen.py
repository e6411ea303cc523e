"""A small HTTP/1.1 keep-alive load generator (asyncio + uvloop), for machines without wrk.

Run as a separate process by bench/api.py::

    python bench/_loadgen.py URL --connections 64 --duration 20 [--header "K: V"]
        [--id-base B --id-count N]   # replaces {id} in the URL with a random B+1..B+N

Prints one JSON line: requests, rps, p50_ms, p99_ms, non_2xx, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from urllib.parse import urlsplit


async def connection(
    host: str,
    port: int,
    requests: list[bytes],
    stop_at: float,
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    choose = random.Random().choice
    clock = time.perf_counter
    record = latencies.append
    try:
        while clock() < stop_at:
            started = clock()
            writer.write(choose(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.find(b"\r\n", at)])
                if length:
                    await reader.readexactly(length)
            record(clock() - started)
            if not 200 <= status < 300:
                counts["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["errors"] += 1
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if "{id}" in path:
        head, _, tail = path.partition("{id}")
        base, count = args.id_base, args.id_count

        def make_path() -> bytes:
            return f"{head}{base + random.randint(1, count)}{tail}".encode()
    else:
        fixed = path.encode()

        def make_path() -> bytes:
            return fixed

    headers = b"".join(h.encode() + b"\r\n" for h in args.header)
    requests = [
        b"GET " + make_path() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" + headers + b"\r\n"
        for _ in range(65536 if "{id}" in path else 1)
    ]
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}
    # warm-up, not measured
    await asyncio.gather(
        *(
            connection(host, port, requests, time.perf_counter() + 1, [], dict(counts))
            for _ in range(args.connections)
        )
    )
    started = time.perf_counter()
    stop_at = started + args.duration
    await asyncio.gather(
        *(
            connection(host, port, requests, stop_at, latencies, counts)
            for _ in range(args.connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "non_2xx": counts["non_2xx"],
        "errors": counts["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--id-base", type=int, default=0)
    parser.add_argument("--id-count", type=int, default=1)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
