"""The grace wait: deferred to the triggerer (no worker slot held), targeted at Kosli's grace end."""

from __future__ import annotations

import asyncio
import importlib
import time

import pytest
from airflow.sdk.exceptions import TaskDeferred

from kosli_rotation.key_store import KeyStore, Phase
from kosli_rotation.sensors import MARGIN_SECONDS, WaitForGraceEnd
from kosli_rotation.triggers import GraceEndTrigger

RECORD = "kosli/acme/ci-bot"


@pytest.fixture
def record(vault_mount):
    store = KeyStore(RECORD)

    def write(**fields):
        store.client.secrets.kv.v2.create_or_update_secret(
            path=RECORD, secret={"key": "k" * 43, **fields}, mount_point=store.mount
        )

    return write


def sensor() -> WaitForGraceEnd:
    return WaitForGraceEnd(task_id="wait_grace", vault_path=RECORD)


def test_a_rotate_in_its_grace_period_defers_to_the_trigger_until_kosli_grace_end(record):
    ends_at = time.time() + 3600
    record(state=Phase.STORED.value, strategy="rotate", grace_ends_at=ends_at)

    with pytest.raises(TaskDeferred) as deferred:
        sensor().execute(context={})

    trigger = deferred.value.trigger
    assert isinstance(trigger, GraceEndTrigger)
    assert trigger.ends_at == pytest.approx(ends_at + MARGIN_SECONDS)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout.total_seconds() > 3600


@pytest.mark.parametrize(
    "fields",
    [
        {"state": "stored", "strategy": "replace"},
        {"state": "stored", "strategy": "rotate", "grace_ends_at": 1.0},
        {"state": "old_key_revoked", "strategy": "rotate", "grace_ends_at": 9e9},
    ],
)
def test_nothing_to_wait_for_finishes_at_once(record, fields):
    record(**fields)
    assert sensor().execute(context={}) is None


def test_the_trigger_serializes_to_an_importable_class_and_fires_after_its_time():
    trigger = GraceEndTrigger(ends_at=time.time() + 0.2, key=RECORD, check_every=0.05)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)

    started = time.monotonic()
    event = asyncio.run(rebuilt.run().__anext__())

    assert time.monotonic() - started >= 0.15
    assert event.payload == {"key": RECORD, "grace_ended_at": kwargs["ends_at"]}
