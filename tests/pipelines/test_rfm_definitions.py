"""The rfm wiring as the code location exposes it: group, partitions, policies, schedule."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from pipelines.defs import rfm

_INSTANCE = dg.DagsterInstance.ephemeral()
RFM_ASSETS = {"user_daily_activity", "rfm_scores", "user_segments", "site_visits_lake"}


def test_daily_chain_is_one_group_with_shared_partitions_and_single_run_backfills() -> None:
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    in_group = {
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if graph.get(key).group_name == "rfm"
    }
    assert in_group == RFM_ASSETS
    for name in RFM_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def == rfm.daily_partitions
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert dg.AssetKey("user_actions") in graph.get(dg.AssetKey("user_daily_activity")).parent_keys
    assert isinstance(rfm.daily_partitions, dg.DailyPartitionsDefinition)
    assert rfm.daily_partitions.timezone == "UTC"
    check_keys = {key.name for key in graph.asset_check_keys}
    assert {"one_row_per_user", "groups_in_known_set", "no_negative_measures"} <= check_keys
    assert defs.resolve_job_def("rfm_daily_job") is not None
    assert defs.resolve_sensor_def("rfm_late_data_sensor") is not None


def test_schedule_builds_the_previous_utc_day_at_two() -> None:
    from pipelines.definitions import defs

    schedule = defs.resolve_schedule_def("rfm_daily_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone in (None, "UTC")
    at_two = dt.datetime(2026, 3, 11, 2, 0, tzinfo=dt.UTC)
    # Dagster keeps a process-wide weak reference to the instance a schedule was evaluated
    # with; an instance that outlives the test keeps later in-process runs working
    context = dg.build_schedule_context(instance=_INSTANCE, scheduled_execution_time=at_two)
    result = schedule.evaluate_tick(context)
    [request] = result.run_requests
    assert request.partition_key == "2026-03-10"


def test_start_date_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RFM_START_DATE", "2025-06-30")
    assert rfm.rfm_start_date() == dt.date(2025, 6, 30)
    monkeypatch.delenv("RFM_START_DATE")
    assert rfm.rfm_start_date() == rfm.DEFAULT_START_DATE
    monkeypatch.setenv("RFM_START_DATE", "2025-13-01")
    with pytest.raises(ValueError, match="RFM_START_DATE is malformed"):
        rfm.rfm_start_date()
