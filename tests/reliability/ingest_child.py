"""One ingestion run in its own process, for tests that kill it from outside.

``python -m tests.reliability.ingest_child DSN BROKER TOPIC BATCH_RECORDS`` runs
:func:`pipelines.ingest.kafka_to_postgres.ingest` once (exactly what the Dagster asset
calls) and prints its report as one JSON line; exit 0 when the run completed.
"""

from __future__ import annotations

import logging
import sys

import orjson

from pipelines.ingest.kafka_to_postgres import IngestConfig, ingest


def main() -> None:
    dsn, broker, topic, batch_records = sys.argv[1:5]
    logging.basicConfig(level=logging.WARNING)
    report = ingest(dsn, [broker], IngestConfig(topic=topic, batch_records=int(batch_records)))
    print(
        orjson.dumps(
            {
                "records": report.records_read,
                "rows": report.rows_written,
                "dead": report.dead_letters,
                "skipped": report.skipped_partitions,
                "stopped_by": report.stopped_by,
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    main()
