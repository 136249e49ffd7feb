"""The real DAG, end to end (``dag.test()``), against a real OpenBao and the Kosli sandbox.

Outcomes are checked through the sandbox and Vault directly, never through the tool's bookkeeping.
"""

from __future__ import annotations

import time

import pytest

from sandbox.secret_scan import find_secrets_in_database, find_secrets_in_files, find_secrets_in_text
from tests.support.scenario import AIRFLOW_LOGS

pytestmark = pytest.mark.e2e


def assert_rotated(scenario, run) -> str:
    """The end state every rotation must reach; returns the new key."""
    assert run.state == "success", scenario.task_states(run)
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert scenario.live_secrets() == [new_key], "exactly one live secret, the one in Vault"
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
    assert "previous_key" not in scenario.vault_record(), "the old key is forgotten once dead"
    return new_key


@pytest.mark.parametrize("strategy", ["rotate", "replace"])
def test_rotation_leaves_one_live_key_held_by_vault_and_every_consumer(scenario, strategy, capfd, airflow_db):
    run = scenario.run(strategy=strategy, grace_hours=1)

    new_key = assert_rotated(scenario, run)
    metadata = scenario.vault_metadata()
    assert metadata["state"] == "idle"
    assert metadata["key_id"] == scenario.vault_record()["key_id"]
    assert metadata["fingerprint"].startswith("sha256:")

    secrets = [new_key, scenario.old_key]
    output = capfd.readouterr()
    assert not find_secrets_in_text(output.out + output.err, secrets), "a key was printed"
    assert find_secrets_in_database(airflow_db, secrets) == []
    assert find_secrets_in_files(AIRFLOW_LOGS, secrets) == []


def test_rotate_waits_for_the_grace_period_before_the_old_key_dies(scenario):
    scenario.kosli.hour_seconds = 5.0  # a 10 s grace: longer than the steps around it take without waiting
    run = scenario.run(strategy="rotate", grace_hours=2)

    assert_rotated(scenario, run)
    # Kosli's grace (2 sandbox hours) starts when rotate_and_store's POST is answered, after the task started;
    # the old key may only be proven dead once it is over. Half a second allows for the two clocks' rounding.
    rotation_started, _ = scenario.task_times(run, "rotate_and_store")
    _, grace_waited_until = scenario.task_times(run, "wait_grace")
    assert (grace_waited_until - rotation_started).total_seconds() >= 2 * 5.0 - 0.5


def test_rotate_works_when_kosli_gives_the_rotated_key_a_new_id(scenario):
    scenario.kosli.rotate_new_id = True

    assert_rotated(scenario, scenario.run(strategy="rotate", grace_hours=1))


@pytest.mark.parametrize(
    ("strategy", "minting_call", "fault"),
    [
        ("rotate", r"/api-keys/[^/]+/rotate$", {"action": "drop_after_commit"}),
        ("replace", r"/api-keys$", {"action": "drop_after_commit"}),
        ("rotate", r"/api-keys/[^/]+/rotate$", {"action": "status_after_commit", "status": 502}),
        ("replace", r"/api-keys$", {"action": "status_after_commit", "status": 503}),
    ],
    ids=["rotate-connection-lost", "replace-connection-lost", "rotate-5xx-after-commit", "replace-5xx-after-commit"],
)
def test_a_key_lost_between_kosli_and_vault_is_revoked_on_the_rerun(scenario, strategy, minting_call, fault):
    """Kosli commits the new key, then the answer never reaches the task (lost connection, or a 5xx)."""
    scenario.kosli.hour_seconds = 60.0  # the old key must outlive the failed run and the rerun's fan-out
    scenario.kosli.faults.add(minting_call, method="POST", **fault)

    failed = scenario.run(strategy=strategy, grace_hours=1)

    assert failed.state == "failed"
    assert scenario.task_states(failed)["rotate_and_store"] == "failed"
    assert scenario.vault_record()["key"] == scenario.old_key, "the old key is still the one in use"
    assert len(scenario.live_secrets()) == 2, "Kosli holds a secret nobody has"

    resumed = scenario.run(strategy=strategy, grace_hours=1)

    assert_rotated(scenario, resumed)


def test_dry_run_changes_nothing_and_returns_the_plan(scenario):
    run = scenario.run(strategy="replace", dry_run=True)

    assert run.state == "success"
    states = scenario.task_states(run)
    assert states["preflight"] == "success"
    assert states["rotate_and_store"] == "skipped"
    assert scenario.live_secrets() == [scenario.old_key]
    assert scenario.vault_record() == {"key": scenario.old_key}
    plan = scenario.xcom(run, "preflight")
    assert plan["strategy"] == "replace" and plan["key"] == "acme/ci-bot"
    assert [(c["name"], c["today"]) for c in plan["consumers"]] == [
        ("reporter-vault", "reachable; holds nothing yet: the key will be created there"),
        ("release-cli", "reachable; holds the current key: it will be updated"),
    ]
    assert {c["verify"] for c in plan["consumers"]} == {
        "read back: reads the value back and compares its full SHA-256 digest"
    }


def test_a_manual_run_without_a_reason_is_refused_before_any_call_to_kosli(scenario):
    scenario.kosli.reset_stats()

    run = scenario.run(reason="   ")

    assert run.state == "failed"
    assert scenario.task_states(run)["preflight"] == "failed"
    assert scenario.kosli.stats()["total_requests"] == 0
    assert scenario.live_secrets() == [scenario.old_key]


def test_a_second_manual_run_right_after_a_rotation_needs_force(scenario):
    first = scenario.run(strategy="replace")
    key_after_first = assert_rotated(scenario, first)

    second = scenario.run(strategy="replace")
    assert second.state == "success"
    assert scenario.task_states(second)["rotate_and_store"] == "skipped"
    assert scenario.vault_record()["key"] == key_after_first

    forced = scenario.run(strategy="replace", force=True)
    assert forced.state == "success", scenario.task_states(forced)
    assert scenario.vault_record()["key"] != key_after_first
    assert scenario.live_secrets() == [scenario.vault_record()["key"]]


def test_a_failed_rotation_says_in_vault_what_is_left_and_the_next_run_resumes(scenario):
    scenario.kosli.hour_seconds = 60.0
    scenario.kosli.faults.add(r"/environments/acme$", method="GET", status=503, times=0)

    failed = scenario.run(strategy="replace")

    assert failed.state == "failed"
    assert scenario.vault_record() == {"key": scenario.old_key}, "nothing changed, so nothing is recorded"

    scenario.kosli.faults.clear()
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=500, times=0)
    failed = scenario.run(strategy="replace")

    assert failed.state == "failed", scenario.task_states(failed)
    metadata = scenario.vault_metadata()
    assert metadata["state"] == "stored", (scenario.task_states(failed), metadata)
    assert metadata["failed_step"] == "revoke_old"
    assert "the old key" in metadata["todo"] and "resumes without rotating again" in metadata["todo"]
    assert "lock_owner" not in metadata, "a failed run releases the lock"
    new_key = scenario.vault_record()["key"]
    assert scenario.old_key in scenario.live_secrets(), "the old key still works"

    scenario.kosli.faults.clear()
    resumed = scenario.run(strategy="replace")

    assert resumed.state == "success", {t: s for t, s in scenario.task_states(resumed).items() if s != "success"}
    assert scenario.vault_record()["key"] == new_key, "resumed, not rotated again"
    assert scenario.live_secrets() == [new_key]
    audit = scenario.audit_entries()[-1]
    assert any("revoke_old failed" in event for event in audit["history"])
    assert any("took over" in event for event in audit["history"])


def test_replace_does_not_revoke_an_old_key_that_is_still_being_used(scenario):
    """Something not in the inventory uses the old key after every listed consumer got the new one."""
    import threading

    scenario.kosli.hour_seconds = 60.0
    reads_of_old_key = scenario.kosli.faults.add(rf"/api-keys/{scenario.old_key_id}$", method="GET", delay=1.5, times=0)

    def unlisted_consumer_uses_the_old_key() -> None:
        # The gate reads the old key's last_used_at first; revoke_old reads it again before revoking.
        while reads_of_old_key.fired < 2:
            time.sleep(0.05)
        scenario.probe(scenario.old_key)

    user = threading.Thread(target=unlisted_consumer_uses_the_old_key, daemon=True)
    user.start()
    stopped = scenario.run(strategy="replace")
    user.join(timeout=10)

    assert stopped.state == "failed"
    states = scenario.task_states(stopped)
    assert states["all_consumers_verified"] == "success" and states["revoke_old"] == "failed"
    assert scenario.old_key in scenario.live_secrets(), "the old key was not revoked"
    assert "was used at" in scenario.vault_metadata()["failure"]

    scenario.kosli.faults.clear()
    forced = scenario.run(strategy="replace", force=True)
    assert forced.state == "failed", "force lifts the one-hour limit only, never the usage guard"
    assert scenario.old_key in scenario.live_secrets()

    despite = scenario.run(strategy="replace", revoke_despite_recent_use=True)

    assert_rotated(scenario, despite)
