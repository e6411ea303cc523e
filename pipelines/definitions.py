"""The one place the Dagster `Definitions` of the code location are built.

Each source area (`pipelines.defs.ingest`, `pipelines.defs.rfm`) exposes its assets,
checks, sensors, schedules and jobs as a `dg.Definitions` named `defs`; this module merges
them with the shared resources.
"""

from __future__ import annotations

import dagster as dg

from pipelines.defs import ingest, rfm
from pipelines.defs.resources import build_resources

defs = dg.Definitions.merge(
    ingest.defs,
    rfm.defs,
    dg.Definitions(resources=build_resources()),
)
