"""The window wait: scheduled runs outside the window defer to the triggerer; manual runs never wait."""

from __future__ import annotations

import asyncio
import importlib
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore
from kosli_rotation.triggers import WindowOpenTrigger
from kosli_rotation.window_wait import WaitForRotationWindow
from kosli_rotation.windows import next_opening

RECORD = "kosli/acme/ci-bot"


def entry_with_window(hours: str) -> KeyEntry:
    return KeyEntry.model_validate(
        {
            "name": "ci-bot",
            "org": "acme",
            "service_account": "ci-bot",
            "key_label": "ci",
            "vault_path": RECORD,
            "rotation_window": {"hours": hours, "timezone": "UTC"},
        }
    )


def closed_now() -> KeyEntry:
    """A window opening two hours from now (every day, UTC): closed at the moment."""
    start = datetime.now(UTC) + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return entry_with_window(f"{start:%H}:00-{end:%H}:00")


def context(run_type: str) -> dict:
    return {"dag_run": SimpleNamespace(run_type=run_type, dag_id="rotate_kosli_key_ci-bot", run_id=f"{run_type}__1")}


@pytest.fixture
def idle_record(vault_mount):
    store = KeyStore(RECORD)
    store.client.secrets.kv.v2.create_or_update_secret(path=RECORD, secret={"key": "k" * 43}, mount_point=store.mount)


def test_a_scheduled_run_outside_the_window_defers_until_it_opens(idle_record):
    entry = closed_now()
    with pytest.raises(TaskDeferred) as deferred:
        WaitForRotationWindow(task_id="wait_window", entry=entry).execute(context("scheduled"))

    trigger = deferred.value.trigger
    assert isinstance(trigger, WindowOpenTrigger)
    assert trigger.opens_at == pytest.approx(next_opening(entry, datetime.now(UTC)).timestamp())
    assert trigger.dag_id == "rotate_kosli_key_ci-bot", "it watches for a manual run queued behind it"
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout > timedelta(hours=1)


def test_a_manual_run_ignores_the_window_and_says_so(capsys):
    WaitForRotationWindow(task_id="wait_window", entry=closed_now()).execute(context("manual"))

    said = capsys.readouterr().out  # the task log (Airflow's structlog writes to stdout outside a task runner)
    assert "manual run: rotation_window every day" in said
    assert "ignored" in said


def test_a_rotation_in_flight_does_not_wait_for_the_window(vault_mount, capsys):
    store = KeyStore(RECORD)
    store.client.secrets.kv.v2.create_or_update_secret(
        path=RECORD,
        secret={"key": "k" * 43, "state": "stored", "strategy": "rotate", "operation": "rotation", "run_id": "r1"},
        mount_point=store.mount,
    )
    WaitForRotationWindow(task_id="wait_window", entry=closed_now()).execute(context("scheduled"))

    assert "finishing it does not wait for the rotation window" in capsys.readouterr().out


def test_a_run_queued_behind_the_waiting_one_makes_it_step_aside():
    with pytest.raises(AirflowSkipException, match="they go first"):
        WaitForRotationWindow(task_id="wait_window", entry=closed_now()).execute_complete(
            context("scheduled"), event={"key": "ci-bot", "queued_runs": 1}
        )


def test_the_trigger_serializes_to_an_importable_class_and_fires_at_the_opening():
    trigger = WindowOpenTrigger(opens_at=time.time() + 0.2, key="ci-bot", check_every=0.05)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert module == "kosli_rotation.triggers"
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)

    started = time.monotonic()
    event = asyncio.run(rebuilt.run().__anext__())

    assert time.monotonic() - started >= 0.15
    assert event.payload == {"key": "ci-bot", "window_opened_at": kwargs["opens_at"]}


def open_now() -> KeyEntry:
    """A window open at the moment (every day, UTC, from the last hour to two hours from now)."""
    start = datetime.now(UTC) - timedelta(hours=1)
    end = start + timedelta(hours=3)
    return entry_with_window(f"{start:%H}:00-{end:%H}:00")


def scheduled_context() -> dict:
    return {**context("scheduled"), "params": {}}


def test_a_trigger_that_fired_after_the_window_closed_waits_for_the_next_opening(idle_record):
    with pytest.raises(TaskDeferred) as deferred:
        WaitForRotationWindow(task_id="wait_window", entry=closed_now()).execute_complete(
            scheduled_context(), event={"key": "ci-bot", "window_opened_at": time.time() - 86400}
        )
    assert deferred.value.trigger.opens_at > time.time()


def test_at_the_opening_a_key_rotated_meanwhile_is_no_longer_due_and_nothing_happens(scenario):
    # The due check asks Kosli for the key's present expiry, so the record holds the sandbox's real key.
    store = KeyStore(RECORD)
    store.client.secrets.kv.v2.create_or_update_secret(
        path=RECORD, secret={"key": scenario.old_key, "rotated_at": time.time() - 3600}, mount_point=store.mount
    )
    with pytest.raises(AirflowSkipException, match="due after 90 days"):
        WaitForRotationWindow(task_id="wait_window", entry=open_now()).execute_complete(
            scheduled_context(), event={"key": "ci-bot", "window_opened_at": time.time()}
        )


def test_at_the_opening_a_key_still_due_goes_on(scenario):
    store = KeyStore(RECORD)
    store.client.secrets.kv.v2.create_or_update_secret(
        path=RECORD, secret={"key": scenario.old_key, "rotated_at": time.time() - 100 * 86400}, mount_point=store.mount
    )
    WaitForRotationWindow(task_id="wait_window", entry=open_now()).execute_complete(
        scheduled_context(), event={"key": "ci-bot", "window_opened_at": time.time()}
    )
