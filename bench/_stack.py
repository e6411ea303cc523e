"""Stack for a bench script run by hand: use the environment, or start private servers.

`make bench` sets DATABASE_URL / KAFKA_BROKER (the `make up` stack). Run directly
(`python bench/ingest.py`) without them, :func:`ensure_env` starts a private PostgreSQL
(durable, like `make up`) and broker on free ports in a temp dir, sets the variables for
this process, and stops them at exit. It never touches `.local/` or the default ports.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from devstack import servers
from devstack.servers import KafkaBroker, PostgresServer


def ensure_env() -> dict[str, str]:
    """DATABASE_URL and KAFKA_BROKER of a usable stack (private servers if unset)."""
    if not os.environ.get("DATABASE_URL"):
        root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        pg = PostgresServer(root / "postgres", servers.free_port(), durable=True)
        pg.start()
        atexit.register(shutil.rmtree, root, True)
        atexit.register(pg.stop, "immediate")
        servers.ensure_database(pg.url(), "bench")
        url = servers.database_url(pg.url(), "bench")
        servers.migrate(url)
        os.environ["DATABASE_URL"] = url
    if not os.environ.get("KAFKA_BROKER"):
        root = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
        broker = KafkaBroker(root / "kafka", servers.free_port())
        broker.start()
        atexit.register(shutil.rmtree, root, True)
        atexit.register(broker.stop)
        os.environ["KAFKA_BROKER"] = broker.bootstrap
    return {"DATABASE_URL": os.environ["DATABASE_URL"], "KAFKA_BROKER": os.environ["KAFKA_BROKER"]}
