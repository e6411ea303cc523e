"""The demo of `make run`: load a dataset through Kafka, ingest it, build RFM snapshots.

Filled in by the feature issues (ingestion, RFM); returns lines to print after the URLs.
"""

from __future__ import annotations


def run_demo(env: dict[str, str]) -> list[str]:
    api = env["API_URL"]
    return [f"  Try        : curl -s {api}/health"]
