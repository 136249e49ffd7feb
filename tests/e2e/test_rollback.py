"""The real rollback DAG (``dag.test()``) after a real rotation stopped before revoking the old key, against a
real OpenBao and the Kosli sandbox; and its refusals. Outcomes are read from Vault, the consumers' files and the
sandbox directly, never through the tool's bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from sandbox.secret_scan import find_secrets_in_database, find_secrets_in_files, find_secrets_in_text
from tests.support.scenario import AIRFLOW_LOGS, REPO

pytestmark = pytest.mark.e2e


def rollback(scenario, **conf):
    """One run of the real rollback DAG of the scenario's key."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    conf.setdefault("reason", "the release host cannot take the new key yet")
    return bag.dags[f"rollback_kosli_key_{scenario.name}"].test(run_conf=conf)


def rotation_stopped_before_revoking(scenario) -> str:
    """A ``replace`` rotation that stored the new key and gave it to every consumer, then Kosli refused the
    revocation of the old key. Returns the new key."""
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)
    stopped = scenario.run(strategy="replace")
    assert stopped.state == "failed"
    assert scenario.task_states(stopped)["revoke_old"] == "failed"
    scenario.kosli.faults.clear()
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
    assert sorted(scenario.live_secrets()) == sorted([scenario.old_key, new_key])
    return new_key


def test_a_rollback_puts_the_old_key_back_everywhere_and_kills_the_new_one(scenario, capfd, airflow_db):
    new_key = rotation_stopped_before_revoking(scenario)
    before = scenario.vault_record()

    dry = rollback(scenario, dry_run=True)
    assert dry.state == "success"
    assert scenario.task_states(dry)["restore_old_key_in_vault"] == "skipped"
    assert scenario.xcom(dry, "check_rollback_possible")["restore"]["id"] == scenario.old_key_id
    assert scenario.vault_record() == before, "a dry run changes nothing"

    run = rollback(scenario, reason="release host cannot take the new key")

    assert run.state == "success", scenario.task_states(run)
    assert scenario.vault_record()["key"] == scenario.old_key
    assert scenario.consumer_values() == {"reporter-vault": scenario.old_key, "release-cli": scenario.old_key}
    assert scenario.probe(new_key) == 401
    assert scenario.probe(scenario.old_key) == 200
    assert scenario.live_secrets() == [scenario.old_key], "exactly one live secret: the old key"
    record = scenario.vault_record()
    assert record["state"] == "idle"
    assert "previous_key" not in record and "lock_owner" not in record and "failed_step" not in record
    assert record["key_id"] == scenario.old_key_id
    assert scenario.vault_metadata()["state"] == "idle"
    audit = scenario.audit_entries()[-1]
    assert audit["event"] == "kosli-key-rolled-back"
    assert audit["reason"] == "release host cannot take the new key"
    assert audit["triggered_by"], "who rolled back"
    assert audit["restored_key"]["id"] == scenario.old_key_id
    assert audit["revoked_key"]["id"] != scenario.old_key_id
    assert any("rolls back the rotation started by run" in event for event in audit["history"])

    secrets = [new_key, scenario.old_key]
    output = capfd.readouterr()
    assert not find_secrets_in_text(output.out + output.err, secrets), "a key was printed"
    assert find_secrets_in_database(airflow_db, secrets) == []
    assert find_secrets_in_files(AIRFLOW_LOGS, secrets) == []

    # The key can be rotated again from there, by the rotation DAG.
    rotated = scenario.run(strategy="replace", reason="rotate again once the release host is fixed")
    assert rotated.state == "success", scenario.task_states(rotated)
    assert scenario.live_secrets() == [scenario.vault_record()["key"]]
    assert scenario.vault_record()["key"] not in (scenario.old_key, new_key)


def test_a_failed_rollback_says_what_is_left_and_the_next_run_resumes_it(scenario, mailbox):
    scenario.write_inventory(notify=[{"kind": "email", "to": ["security@acme.example"]}])
    new_key = rotation_stopped_before_revoking(scenario)
    mailbox.messages.clear()  # the rotation's own failure notice
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)

    failed = rollback(scenario)

    assert failed.state == "failed"
    assert scenario.task_states(failed)["revoke_new_key"] == "failed"
    assert scenario.vault_record()["key"] == scenario.old_key, "the old key is back in Vault"
    assert scenario.consumer_values() == {"reporter-vault": scenario.old_key, "release-cli": scenario.old_key}
    metadata = scenario.vault_metadata()
    assert metadata["failed_step"] == "revoke_new_key" and "it resumes the rollback" in metadata["todo"]
    assert "lock_owner" not in metadata, "a failed rollback releases the lock"
    (notice,) = mailbox.messages
    assert notice["Subject"] == "Kosli key rollback failed: acme/ci-bot at revoke_new_key"

    scenario.kosli.faults.clear()
    resumed = rollback(scenario, reason="resume")

    assert resumed.state == "success", scenario.task_states(resumed)
    assert scenario.live_secrets() == [scenario.old_key]
    assert scenario.probe(new_key) == 401
    assert scenario.audit_entries()[-1]["reason"] == "the release host cannot take the new key yet", (
        "the reason of the run that started the rollback"
    )


def test_after_a_rollback_the_key_is_as_old_as_it_was(scenario):
    assert scenario.run(strategy="replace").state == "success"
    first = scenario.vault_record()
    stored_at = datetime.fromisoformat(scenario.audit_entries()[-1]["stored_at"]).timestamp()
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)
    assert scenario.run(strategy="replace", force=True).state == "failed"
    scenario.kosli.faults.clear()

    assert rollback(scenario).state == "success"

    record = scenario.vault_record()
    assert (record["key"], record["key_id"]) == (first["key"], first["key_id"])
    assert int(record["rotated_at"]) == int(stored_at), "its age still counts from when it was first stored"
    assert scenario.live_secrets() == [first["key"]]


def test_a_rotation_that_finishes_a_lost_rotate_cannot_be_rolled_back(scenario, capfd):
    """A lost rotate leaves a secret nobody holds under the old key id: only revoking that id is safe."""
    scenario.kosli.hour_seconds = 60.0
    scenario.kosli.faults.add(r"/api-keys/[^/]+/rotate$", method="POST", action="drop_after_commit")
    assert scenario.run(strategy="rotate", grace_hours=1).state == "failed"
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)
    assert scenario.run(strategy="rotate", grace_hours=1).state == "failed"
    before = scenario.vault_record()
    assert before["state"] == "stored" and before["strategy"] == "replace"
    capfd.readouterr()

    run = rollback(scenario)

    assert run.state == "failed"
    assert "finishes a 'rotate' whose answer was lost" in capfd.readouterr().out
    assert scenario.vault_record() == before, "nothing changed"


def test_a_rotation_run_cannot_interleave_with_a_rollback_in_flight(scenario, tmp_path):
    """The rollback runs in another Airflow deployment (its own database) and holds the key's lock in Vault
    while Kosli is slow to revoke; a rotation run meanwhile refuses, and the rollback finishes undisturbed."""
    new_key = rotation_stopped_before_revoking(scenario)
    revocation = scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", action="hold", hold_timeout=25)
    airflow = str(Path(sys.executable).parent / "airflow")
    home = tmp_path / "other-airflow"
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs")}
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    conf = json.dumps({"reason": "rolled back from the other deployment"})
    log = tmp_path / "rollback.log"
    rolling_back = subprocess.Popen(
        [airflow, "dags", "test", f"rollback_kosli_key_{scenario.name}", "-c", conf],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert revocation.wait_held(timeout=120), log.read_text()[-3000:]
        scenario.kosli.reset_stats()

        rotation = scenario.run(strategy="replace", force=True)

        assert rotation.state == "failed"
        assert scenario.task_states(rotation)["preflight"] == "failed"
        assert scenario.kosli.stats()["requests"].get("create_api_key", 0) == 0, "nothing minted"
        assert scenario.vault_record()["lock_owner"].startswith(f"rollback_kosli_key_{scenario.name}/")
    finally:
        revocation.release()  # the DELETE never happened: the rollback's client retries it
        rolling_back.wait(timeout=300)

    assert scenario.live_secrets() == [scenario.old_key], log.read_text()[-3000:]
    assert scenario.probe(new_key) == 401
    assert scenario.vault_record()["state"] == "idle"
    assert scenario.audit_entries()[-1]["reason"] == "rolled back from the other deployment"


def test_there_is_nothing_to_roll_back_when_no_rotation_is_in_flight(scenario, capfd):
    scenario.kosli.reset_stats()

    run = rollback(scenario)

    assert run.state == "failed"
    states = scenario.task_states(run)
    assert states["check_rollback_possible"] == "failed"
    assert states["restore_old_key_in_vault"] == "upstream_failed"
    assert states["revoke_new_key"] == "skipped"
    assert "nothing to roll back: no rotation of acme/ci-bot is in flight" in capfd.readouterr().out
    assert scenario.vault_record() == {"key": scenario.old_key}, "nothing changed"
    assert scenario.kosli.stats()["total_requests"] == 0


def test_a_rollback_needs_a_reason(scenario):
    from airflow.sdk.exceptions import ParamValidationError

    for reason in (None, "", "   "):
        with pytest.raises(ParamValidationError, match="reason"):
            rollback(scenario, reason=reason)


def test_a_rotate_that_shares_the_old_key_id_cannot_be_rolled_back(scenario, github, capfd):
    """Kosli's rotate keeps the key id: revoking the new secret would kill the old one, which dies at grace end."""
    scenario.kosli.hour_seconds = 3600.0
    scenario.write_inventory(
        consumers=[
            *scenario.entry["consumers"],
            {"name": "app-actions", "kind": "github_actions", "repository": "acme/app"},
        ]
    )
    github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=403, times=0)
    stopped = scenario.run(strategy="rotate", grace_hours=24)
    assert stopped.state == "failed"
    before = scenario.vault_record()
    assert before["state"] == "stored" and before["key_id"] == before["previous_key_id"] == scenario.old_key_id
    capfd.readouterr()

    run = rollback(scenario)

    assert run.state == "failed"
    assert scenario.task_states(run)["check_rollback_possible"] == "failed"
    out = capfd.readouterr().out
    assert f"cannot roll back a 'rotate': the new key shares the old key's id {scenario.old_key_id}" in out
    assert "Kosli kills the old secret by itself when its grace period ends" in out
    assert scenario.vault_record() == before, "nothing changed"
    assert sorted(scenario.live_secrets()) == sorted([scenario.old_key, before["key"]])
