"""Dagster definitions of the ingest area (filled in by its issue)."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
