"""Acceptance: a due scheduled run outside its rotation window waits for it deferred, holding no worker slot, and
rotates once the window opens. A real deployment (``tests/support/deployment.py``): the scheduler makes the run from
the DAG's cron, the triggerer runs the wait, LocalExecutor workers run the steps; checked through the REST API.

The window comes from the inventory, computed from now so that it opens about a minute after the scheduled run
starts (the key is due because its record says it was stored 100 days ago). No product code is patched.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.deployment import Deployment
from tests.support.scenario import RECORD_PATH

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: Between the scheduled run's start and the window's opening: preflight runs, then the wait defers.
LEAD = timedelta(seconds=100)  # generous: under load (xdist, 2 cores) preflight alone can take half a minute


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def minute_after(moment: datetime) -> datetime:
    return (moment + timedelta(minutes=1)).replace(second=0, microsecond=0)


def window_from(opens: datetime) -> dict[str, str]:
    return {"hours": f"{opens:%H:%M}-{opens + timedelta(minutes=15):%H:%M}", "timezone": "UTC"}


def due_and_windowed(scenario, opens: datetime) -> None:
    """Every-minute schedule, 'replace' (no grace wait), key stored 100 days ago: the next scheduled run is due."""
    scenario.vault().secrets.kv.v2.create_or_update_secret(
        path=RECORD_PATH,
        secret={"key": scenario.old_key, "rotated_at": time.time() - 100 * 86400},
        mount_point=scenario.mount,
    )
    scenario.write_inventory(schedule="* * * * *", strategy="replace", rotation_window=window_from(opens))


def test_a_due_scheduled_run_outside_its_window_defers_holding_no_slot_and_rotates_when_it_opens(scenario, tmp_path):
    due_and_windowed(scenario, datetime.now(UTC) + timedelta(hours=3))  # closed for now
    with Deployment(tmp_path / "airflow") as airflow:
        airflow.wait("the DAG to be parsed", lambda: scenario.dag_id in airflow.api.dag_ids())
        airflow.api.unpause(scenario.dag_id)
        tick = airflow.wait(
            "the next scheduled run to be planned", lambda: airflow.dag(scenario.dag_id).get("next_dagrun_run_after")
        )
        opens = minute_after(max(when(tick), datetime.now(UTC)) + LEAD)
        scenario.write_inventory(rotation_window=window_from(opens))  # read by each task as it starts

        run = airflow.wait(
            "the scheduler to make a scheduled run",
            lambda: next((r for r in airflow.api.dag_runs(scenario.dag_id) if r["run_type"] == "scheduled"), None),
        )
        run_id = run["dag_run_id"]
        airflow.wait(
            "wait_window to defer",
            lambda: airflow.task_states(scenario.dag_id, run_id).get("wait_window", {}).get("state") == "deferred",
        )

        # Deferred, before the window: no worker slot, no task process, nothing changed.
        airflow.wait("the worker that deferred the wait to go idle", lambda: airflow.busy_workers() == [], timeout=30)
        assert datetime.now(UTC) < opens
        tasks = airflow.task_states(scenario.dag_id, run_id)
        assert tasks["preflight"]["state"] == "success"
        assert not [t for t, ti in tasks.items() if ti["state"] in ("running", "queued", "scheduled")], tasks
        pool = airflow.pool()
        assert (pool["deferred_slots"], pool["running_slots"], pool["queued_slots"]) == (1, 0, 0), pool
        assert pool["occupied_slots"] == 0, "a deferred wait holds no slot of the pool"
        assert scenario.vault_record()["key"] == scenario.old_key
        log = "\n".join(airflow.api.task_log(scenario.dag_id, run_id, tasks["wait_window"]))
        assert f"deferring until it opens at {opens:%Y-%m-%d %H:%M} UTC" in log

        finished = airflow.wait(
            "the run to finish",
            lambda: (r := airflow.api.dag_run(scenario.dag_id, run_id))["state"] in ("success", "failed") and r,
            timeout=420,
        )
        tasks = airflow.task_states(scenario.dag_id, run_id)
        assert finished["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}

    assert tasks["finalize"]["state"] == "success"
    assert when(tasks["rotate_and_store"]["start_date"]) >= opens, "nothing changed before the window opened"
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401


def test_a_manual_run_triggered_while_a_scheduled_run_waits_goes_first_and_ignores_the_window(scenario, tmp_path):
    """``max_active_runs`` is 1: the manual run queues behind the waiting scheduled run, which steps aside."""
    due_and_windowed(scenario, datetime.now(UTC) + timedelta(hours=3))
    with Deployment(tmp_path / "airflow") as airflow:
        airflow.wait("the DAG to be parsed", lambda: scenario.dag_id in airflow.api.dag_ids())
        airflow.api.unpause(scenario.dag_id)
        scheduled = airflow.wait(
            "the scheduler to make a scheduled run",
            lambda: next((r for r in airflow.api.dag_runs(scenario.dag_id) if r["run_type"] == "scheduled"), None),
        )["dag_run_id"]
        airflow.wait(
            "wait_window to defer",
            lambda: airflow.task_states(scenario.dag_id, scheduled).get("wait_window", {}).get("state") == "deferred",
        )

        manual = airflow.api.trigger(scenario.dag_id, {"reason": "incident: the key leaked", "strategy": "replace"})
        stepped_aside = airflow.wait(
            "the scheduled run to step aside",
            lambda: (r := airflow.api.dag_run(scenario.dag_id, scheduled))["state"] in ("success", "failed") and r,
        )
        finished = airflow.wait(
            "the manual run to finish",
            lambda: (r := airflow.api.dag_run(scenario.dag_id, manual))["state"] in ("success", "failed") and r,
            timeout=420,
        )
        waiting = airflow.task_states(scenario.dag_id, scheduled)
        tasks = airflow.task_states(scenario.dag_id, manual)
        manual_log = "\n".join(airflow.api.task_log(scenario.dag_id, manual, tasks["wait_window"]))
        scheduled_log = "\n".join(airflow.api.task_log(scenario.dag_id, scheduled, waiting["wait_window"]))

    assert stepped_aside["state"] == "success"
    assert waiting["wait_window"]["state"] == "skipped" and waiting["rotate_and_store"]["state"] == "skipped"
    assert "they go first" in scheduled_log
    assert finished["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}
    assert "manual run: rotation_window every day" in manual_log and "ignored" in manual_log
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key and scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert [entry["run_id"] for entry in scenario.audit_entries()] == [manual], "one rotation, by the manual run"
