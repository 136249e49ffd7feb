"""Each finished rotation is attested in Kosli: the real DAG against real OpenBao and the Kosli sandbox.

What Kosli holds is read from the sandbox directly (its trails, types and the bodies it received), and compared
with fingerprints the test computes itself from the keys.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import pytest

from sandbox.secret_scan import find_secrets_in_database, find_secrets_in_files, find_secrets_in_text
from tests.support.scenario import AIRFLOW_LOGS, ORG

pytestmark = pytest.mark.e2e

FLOW = "key-rotations"
TYPE = "kosli-key-rotation"
ATTEST = r"/api/v2/(attestations|trails|flows|custom-attestation-types)/"


def shown(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def trail_of(scenario) -> str:
    finished = scenario.audit_entries()[-1]["finished_at"]
    return f"{scenario.name}-{datetime.fromisoformat(finished).date().isoformat()}"


def attest_returned_no_key(scenario, run, keys: list[str]) -> bool:
    """What ``attest`` returned (the XCom tab): where the attestation is, never a key."""
    returned = scenario.xcom(run, "attest")
    assert returned["compliant"] is True and returned["trail"] == trail_of(scenario), returned
    return not find_secrets_in_text(str(returned), keys)


def sent_to_kosli(scenario) -> list[bytes]:
    """Every request body the attestation endpoints receive (a rule that records and never fires)."""
    bodies: list[bytes] = []
    scenario.kosli.faults.add(ATTEST, times=0, delay=0, when=lambda request: bodies.append(request.body) and False)
    return bodies


def test_a_finished_rotation_appears_as_an_attestation_on_its_trail_whose_rules_pass(scenario, capfd, airflow_db):
    scenario.write_inventory(attest={"flow": FLOW})
    bodies = sent_to_kosli(scenario)

    run = scenario.run(strategy="replace", reason="offboarding of a contractor")

    assert run.state == "success", scenario.task_states(run)
    new_key = scenario.vault_record()["key"]
    (attestation,) = scenario.kosli.trail_attestations(ORG, FLOW, trail_of(scenario))
    assert attestation["attestation_type"] == f"custom:{TYPE}"
    assert attestation["is_compliant"] is True
    assert [result["passed"] for result in attestation["evaluation"]] == [True] * 5
    data = attestation["attestation_data"]
    new_key_id = scenario.vault_record()["key_id"]
    assert data["new_key"] == {"id": new_key_id, "fingerprint": shown(new_key), "http_status": 200}
    assert data["old_key"] == {"id": scenario.old_key_id, "fingerprint": shown(scenario.old_key), "http_status": 401}
    assert (data["strategy"], data["trigger"], data["reason"]) == ("replace", "manual", "offboarding of a contractor")
    assert data["triggered_by"]
    assert all(data["timings"][when] for when in ("started_at", "stored_at", "old_key_dead_at", "finished_at"))
    assert [(c["name"], c["verified_fingerprint"]) for c in data["consumers"]] == [
        ("release-cli", shown(new_key)),
        ("reporter-vault", shown(new_key)),
    ]
    assert {c["proof"] for c in data["consumers"]} == {"read back"}
    assert scenario.kosli.attestation_type(ORG, TYPE)["versions"][0]["evaluator"]["rules"], "the type has jq rules"
    keys = [new_key, scenario.old_key, scenario.admin_key]
    assert bodies, "the tool talked to Kosli's attestation endpoints"
    assert not find_secrets_in_text(b"\n".join(bodies).decode(errors="replace"), keys), "a key was sent to Kosli"
    assert not find_secrets_in_text(str(attestation), keys)
    assert attest_returned_no_key(scenario, run, keys)
    output = capfd.readouterr()
    assert not find_secrets_in_text(output.out + output.err, keys), "a key was printed"
    assert find_secrets_in_database(airflow_db, keys) == []
    assert find_secrets_in_files(AIRFLOW_LOGS, keys) == []


def test_the_type_is_created_once_and_a_second_rotation_reuses_it(scenario):
    scenario.write_inventory(attest={"flow": FLOW, "trail": "{name}"})

    first = scenario.run(strategy="replace")
    second = scenario.run(strategy="rotate", grace_hours=1, force=True, reason="second rotation today")

    assert (first.state, second.state) == ("success", "success"), scenario.task_states(second)
    assert len(scenario.kosli.attestation_type(ORG, TYPE)["versions"]) == 1, "one version: created once"
    attestations = scenario.kosli.trail_attestations(ORG, FLOW, scenario.name)
    assert [a["attestation_data"]["strategy"] for a in attestations] == ["replace", "rotate"]
    assert len({a["attestation_name"] for a in attestations}) == 2, "one attestation per rotation"
    assert all(a["is_compliant"] for a in attestations)
    second_data = attestations[1]["attestation_data"]
    assert second_data["timings"]["grace_ends_at"], "a 'rotate' has a grace end"
    assert second_data["new_key"]["fingerprint"] == shown(scenario.vault_record()["key"])


def test_a_retry_after_kosli_stored_the_attestation_but_answered_503_posts_no_duplicate(scenario):
    scenario.write_inventory(attest={"flow": FLOW}, retries=1, retry_delay_seconds=1)
    lost_answer = scenario.kosli.faults.add(r"/custom$", method="POST", action="status_after_commit", status=503)

    run = scenario.run(strategy="replace")

    assert run.state == "success", scenario.task_states(run)
    assert lost_answer.fired == 1
    (attestation,) = scenario.kosli.trail_attestations(ORG, FLOW, trail_of(scenario))
    assert attestation["is_compliant"] is True


@pytest.mark.parametrize(
    ("status", "tries"),
    [(403, 1), (503, 2)],
    ids=["refused: reported at once", "unavailable: retried, then reported"],
)
def test_kosli_refusing_the_attestation_leaves_the_key_rotated_and_reports_it(scenario, webhook, status, tries):
    scenario.write_inventory(
        attest={"flow": FLOW},
        retries=1,
        retry_delay_seconds=1,
        notify=[{"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"}],
    )
    refused = scenario.kosli.faults.add(r"/custom$", method="POST", status=status, times=0)

    run = scenario.run(strategy="replace")

    assert run.state == "failed"
    states = scenario.task_states(run)
    assert states["attest"] == "failed"
    assert states["finalize"] == "success"
    assert refused.fired == tries, "a refusal is final; an outage is retried (retries: 1), never within a try"
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(new_key) == 200 and scenario.probe(scenario.old_key) == 401
    assert scenario.live_secrets() == [new_key]
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
    assert scenario.vault_record()["state"] == "idle"
    assert scenario.vault_record()["last_finished_run_id"] == run.run_id, "the Vault record stays finished"
    assert scenario.kosli.trail_attestations(ORG, FLOW, trail_of(scenario)) == []
    (event,) = webhook.received
    assert event["event"] == "kosli-key-attestation-failed"
    assert event["rotated"] is True
    assert f"HTTP {status}" in event["error"]
    assert "The key IS rotated" in event["todo"] and "clear the 'attest' task" in event["todo"]
    assert not find_secrets_in_text(str(event), [new_key, scenario.old_key, scenario.admin_key])


def test_entries_without_attest_have_no_attest_step(scenario):
    assert "attest" not in scenario.dag().task_ids
