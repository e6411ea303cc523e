"""Run one ingestion and SIGKILL this very process at a writer checkpoint.

Used by the crash tests: ``python -m tests.ingest.crash_runner DSN BROKER TOPIC STAGE BATCH
BATCH_RECORDS`` kills itself when the writer reaches ``STAGE`` ("copied": rows and offsets
written, transaction open; "committed": just after COMMIT) of batch number ``BATCH``.
"""

from __future__ import annotations

import os
import signal
import sys

from pipelines.ingest.kafka_to_postgres import IngestConfig, ingest


def main() -> None:
    dsn, broker, topic, stage, batch, batch_records = sys.argv[1:7]

    def checkpoint(reached: str, number: int) -> None:
        if reached == stage and number == int(batch):
            os.kill(os.getpid(), signal.SIGKILL)

    ingest(
        dsn,
        [broker],
        IngestConfig(topic=topic, batch_records=int(batch_records)),
        checkpoint=checkpoint,
    )
    sys.exit(3)  # the checkpoint was never reached


if __name__ == "__main__":
    main()
