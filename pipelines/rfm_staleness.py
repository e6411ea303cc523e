"""Which built RFM partitions a late event makes stale (pure: dates and times in, dates out).

Vocabulary: a *build* of a daily partition records ``source_watermark`` (every event
ingested before it was visible to the build) and ``built_at``. *Evidence* is, per event
day ``Y``, the latest ``ingested_at`` ``t`` among events of day ``Y`` that the sensor has
seen arrive.

Rules (``D`` ranges over built snapshots, ``window(D)`` = ``[D-29, D]``):

1. ``user_daily_activity[Y]`` is stale when ``t >= its source_watermark``: it was built
   before those events were visible.
2. ``rfm_scores[D]`` for ``D >= Y`` is stale when ``t >= D's source_watermark``: the
   snapshot's own reads (events before its window: recency and population; window days
   without a built aggregate) could not see them. A late event on day ``Y`` can change
   *every* later snapshot - frequency and monetary for ``D`` in ``[Y, Y+29]``, recency and
   population for any ``D >= Y`` (it may be the user's latest or first event) - so no
   later snapshot is exempt.
3. ``rfm_scores[D]`` is stale when a day ``Y`` of its window read from the aggregate has a
   stale aggregate (rule 1), or when any aggregate of its window was (re)built at or after
   ``D``'s watermark (the snapshot read an older version). Rule 3b needs no evidence; it
   also catches a rebuild run that refreshed the aggregates but failed before the
   snapshots.
4. A snapshot that took users' latest event dates from an earlier snapshot (its
   ``prior_snapshot``) is stale when that one is stale, was rebuilt after it, or is gone.

Evidence that makes nothing stale any more (everything it touched was rebuilt after it)
is consumed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Build:
    source_watermark: dt.datetime
    built_at: dt.datetime
    prior_snapshot: dt.date | None = None  # snapshots: latest event dates carried from it


@dataclass(frozen=True)
class Staleness:
    """Stale partitions per asset, and the evidence still worth keeping."""

    stale_activity: frozenset[dt.date]
    stale_scores: frozenset[dt.date]
    open_evidence: dict[dt.date, dt.datetime]

    @property
    def stale_days(self) -> list[dt.date]:
        return sorted(self.stale_activity | self.stale_scores)

    def rebuild_range(self) -> tuple[dt.date, dt.date] | None:
        """One partition range covering every stale day (oldest first, newest last)."""
        days = self.stale_days
        return (days[0], days[-1]) if days else None


def find_stale(
    evidence: Mapping[dt.date, dt.datetime],
    activity_builds: Mapping[dt.date, Build],
    score_builds: Mapping[dt.date, Build],
    *,
    window_days: int,
) -> Staleness:
    """Apply the rules of the module docstring."""
    window = dt.timedelta(days=window_days - 1)
    stale_activity: set[dt.date] = set()
    stale_scores: set[dt.date] = set()
    open_evidence: dict[dt.date, dt.datetime] = {}

    for day, late in evidence.items():
        touched = False
        activity = activity_builds.get(day)
        activity_stale = activity is not None and late >= activity.source_watermark
        if activity_stale:
            stale_activity.add(day)
            touched = True
        for snapshot, build in score_builds.items():
            if snapshot < day:
                continue
            in_window = snapshot - window <= day
            if late >= build.source_watermark or (in_window and activity_stale):
                stale_scores.add(snapshot)
                touched = True
        if touched:
            open_evidence[day] = late

    for snapshot, build in score_builds.items():
        for offset in range(window_days):
            activity = activity_builds.get(snapshot - dt.timedelta(days=offset))
            if activity is not None and activity.built_at >= build.source_watermark:
                stale_scores.add(snapshot)
                break

    # rule 4: carried from a stale or since rebuilt (or vanished) snapshot - oldest first, so
    # staleness flows down a chain of carried snapshots in one pass
    for snapshot in sorted(score_builds):
        build = score_builds[snapshot]
        prior = build.prior_snapshot
        if prior is None:
            continue
        source = score_builds.get(prior)
        if source is None or prior in stale_scores or source.built_at > build.built_at:
            stale_scores.add(snapshot)

    return Staleness(frozenset(stale_activity), frozenset(stale_scores), open_evidence)
