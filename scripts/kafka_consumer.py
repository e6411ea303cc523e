"""Print the user-action topic's messages as they arrive (partition, offset, key, value).

Follows the topic from its end (only new messages) or, with ``--from-beginning``, from the
first retained message; stops cleanly on Ctrl-C (exit status 0). No consumer group: it
reads every partition (manual assignment) and commits nothing, so it never disturbs
ingestion.

Usage::

    python scripts/kafka_consumer.py [--from-beginning] [--topic T] [--bootstrap HOST:PORT]
                                     [--max-messages N]

The broker and topic default to ``KAFKA_BROKER`` / ``KAFKA_TOPIC`` from the environment,
else from ``.local/stack.env`` (written by ``make up``), else ``topic_user_actions``.
"""

from __future__ import annotations

import argparse
import os
import sys

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from devstack.cli import read_stack_env


def setting(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or read_stack_env().get(name) or default


def render(record: object) -> str:
    key = getattr(record, "key", None)
    value = getattr(record, "value", None)
    key_text = key.decode("utf-8", "replace") if key is not None else "-"
    value_text = value.decode("utf-8", "replace") if value is not None else "-"
    return (
        f"partition={getattr(record, 'partition', '?')} offset={getattr(record, 'offset', '?')} "
        f"key={key_text} value={value_text}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", default=setting("KAFKA_TOPIC", "topic_user_actions"))
    parser.add_argument("--bootstrap", default=setting("KAFKA_BROKER"))
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the first retained message"
    )
    parser.add_argument(
        "--max-messages", type=int, default=0, help="stop after N messages (0: never)"
    )
    args = parser.parse_args(argv)
    if not args.bootstrap:
        print("KAFKA_BROKER is not set (use --bootstrap or `make up`)", file=sys.stderr)
        return 2
    brokers = [part.strip() for part in args.bootstrap.split(",") if part.strip()]
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=brokers,
            enable_auto_commit=False,
            client_id="cc-kafka-consumer-script",
            max_poll_records=500,
        )
    except KafkaError as exc:
        print(f"cannot reach the Kafka broker at {args.bootstrap}: {exc}", file=sys.stderr)
        return 2
    printed = 0
    try:
        partitions = consumer.partitions_for_topic(args.topic)
        if not partitions:
            print(f"topic {args.topic!r} does not exist on {args.bootstrap}", file=sys.stderr)
            return 2
        assigned = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if args.from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        for tp in assigned:
            consumer.position(tp)  # resolve the start now, so "following" is accurate
        where = "the beginning" if args.from_beginning else "the end"
        print(
            f"following {args.topic} ({len(assigned)} partitions) on {args.bootstrap} from "
            f"{where}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while True:
            batches = consumer.poll(timeout_ms=500)
            for tp in sorted(batches, key=lambda t: t.partition):
                for record in batches[tp]:
                    line = render(record)
                    printed += 1
                    print(line, flush=True)
                    if args.max_messages and printed >= args.max_messages:
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()
        print(f"stopped after {printed} message(s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
