"""Dagster definitions of the rfm area (filled in by its issue)."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
