"""The attestation's evidence judged by its own type (schema and jq rules, evaluated the way the Kosli sandbox
does), the attestation client against the Kosli sandbox, and where the ``attest`` step sits in the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from kosli_rotation.attestation import RULES, SCHEMA, evidence
from kosli_rotation.attestation_client import KosliAttestationHook
from kosli_rotation.errors import KosliApiError
from sandbox.kosli_attestations import evaluate
from tests.support.scenario import ORG, start_kosli

REPO = Path(__file__).resolve().parents[2]
NEW, OLD = "sha256:" + "a" * 12, "sha256:" + "b" * 12


def audit(**changes) -> dict:
    """An audit entry as ``finalize`` writes it, for a 'replace' with two verified consumers."""
    consumer = {
        "kind": "vault_kv",
        "target": "Vault KV kv/apps/reporter",
        "proof": "read back",
        "method": "read back",
        "verified_fingerprint": NEW,
        "verified_digest": "sha256:" + "a" * 64,
        "verified_at": "2026-12-01T10:00:02+00:00",
    }
    entry = {
        "event": "kosli-key-rotated",
        "key": "acme/ci-bot",
        "run_id": "manual__1",
        "finished_by_run": "manual__1",
        "triggered_by": "alice",
        "reason": "offboarding",
        "strategy": "replace",
        "old_key": {"id": "old-id", "fingerprint": OLD},
        "new_key": {"id": "new-id", "fingerprint": NEW},
        "consumers": {"reporter": consumer, "cli": {**consumer, "kind": "kosli_cli_config"}},
        "started_at": "2026-12-01T10:00:00+00:00",
        "stored_at": "2026-12-01T10:00:01+00:00",
        "grace_ends_at": None,
        "old_key_dead_at": "2026-12-01T10:00:03+00:00",
        "finished_at": "2026-12-01T10:00:04+00:00",
    }
    entry.update(changes)
    return entry


def judged(data: dict) -> list[bool]:
    jsonschema.Draft7Validator(SCHEMA).validate(data)
    return [result["passed"] for result in evaluate(RULES, data)]


def test_the_evidence_of_a_finished_rotation_passes_every_rule():
    data = evidence(audit(), rotation="20261201T100000Z-ab12cd34", manual=True, new_key_status=200, expected=2)

    assert judged(data) == [True] * len(RULES)
    assert data["consumers"][0] == {
        "name": "cli",
        "kind": "kosli_cli_config",
        "target": "Vault KV kv/apps/reporter",
        "proof": "read back",
        "method": "read back",
        "verified_fingerprint": NEW,
        "verified_at": "2026-12-01T10:00:02+00:00",
    }
    assert "digest" not in json.dumps(data), "fingerprints only: no full digests, never a key"
    assert (data["trigger"], data["triggered_by"], data["reason"]) == ("manual", "alice", "offboarding")


@pytest.mark.parametrize(
    ("changes", "status", "failing_rule"),
    [
        ({"old_key_dead_at": None}, 200, 0),
        ({}, 401, 1),
        ({"new_key": {"id": "new-id", "fingerprint": OLD}}, 200, 2),
        ({"consumers": {"reporter": None}}, 200, 3),
    ],
    ids=["old key never proven dead", "new key refused", "same key", "a consumer without proof"],
)
def test_evidence_that_does_not_prove_the_rotation_fails_its_rule(changes, status, failing_rule):
    data = evidence(audit(**changes), rotation="r", manual=False, new_key_status=status, expected=2)

    assert judged(data)[failing_rule] is False


def test_a_consumer_verified_with_another_key_fails_the_every_consumer_rule():
    other = {"kind": "vault_kv", "proof": "read back", "verified_fingerprint": OLD}
    data = evidence(
        audit(consumers={"a": other, "b": {**other, "verified_fingerprint": NEW}}),
        rotation="r",
        manual=False,
        new_key_status=200,
        expected=2,
    )

    assert judged(data) == [True, True, True, True, False]


@pytest.fixture
def kosli(monkeypatch):
    sandbox, admin_key, _ = start_kosli(hour_seconds=60)
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": sandbox.url, "password": admin_key})
    )
    yield sandbox
    sandbox.stop()


def test_the_client_creates_the_type_flow_and_trail_and_attests_as_the_cli_does(kosli):
    hook = KosliAttestationHook()
    assert hook.get_attestation_type(ORG, "kosli-key-rotation") is None
    assert hook.get_flow(ORG, "key-rotations") is None

    hook.create_attestation_type(ORG, "kosli-key-rotation", description="d", schema=SCHEMA, rules=RULES, summary=[])
    hook.create_flow(ORG, "key-rotations", description="d")
    hook.begin_trail(ORG, "key-rotations", "ci-bot-2026-12-01", description="d")
    data = evidence(audit(), rotation="r1", manual=True, new_key_status=200, expected=2)
    hook.attest_custom(
        ORG, "key-rotations", "ci-bot-2026-12-01", type_name="kosli-key-rotation", name="r1", data=data, description="d"
    )

    (found,) = hook.attestations_named(ORG, "key-rotations", "ci-bot-2026-12-01", "r1")
    assert found["is_compliant"] is True
    assert hook.get_attestation_type(ORG, "kosli-key-rotation")["versions"][0]["type_schema"] == SCHEMA
    assert hook.attestations_named(ORG, "key-rotations", "no-such-trail", "r1") == []


def test_a_lost_answer_to_the_attestation_post_is_not_repeated(kosli):
    hook = KosliAttestationHook()
    hook.create_attestation_type(ORG, "kosli-key-rotation", description="d", schema=SCHEMA, rules=RULES, summary=[])
    hook.create_flow(ORG, "f", description="d")
    hook.begin_trail(ORG, "f", "t", description="d")
    kosli.faults.add(r"/custom$", method="POST", action="status_after_commit", status=502, times=0)
    data = evidence(audit(), rotation="r1", manual=True, new_key_status=200, expected=2)

    with pytest.raises(KosliApiError) as raised:
        hook.attest_custom(ORG, "f", "t", type_name="kosli-key-rotation", name="r1", data=data, description="d")

    assert raised.value.retryable, "Airflow's retry looks on the trail first"
    assert len(kosli.trail_attestations(ORG, "f", "t")) == 1, "posted once, not repeated inside the call"


def test_begin_trail_on_a_missing_flow_names_it(kosli):
    with pytest.raises(KosliApiError, match="Flow named 'nope' does not exist"):
        KosliAttestationHook().begin_trail(ORG, "nope", "t", description="d")


def test_the_attest_step_follows_finalize_only_for_entries_with_attest(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    def entry(name: str, **fields) -> dict:
        return {
            "name": name,
            "org": "acme",
            "service_account": name,
            "key_label": "ci",
            "vault_path": f"kosli/acme/{name}",
            **fields,
        }

    path = tmp_path / "inventory.yaml"
    keys = [entry("plain"), entry("attested", attest={"flow": "key-rotations"})]
    path.write_text(yaml.safe_dump({"keys": keys}))
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(path))
    dags = DagBag(dag_folder=str(REPO / "dags")).dags

    assert "attest" not in dags["rotate_kosli_key_plain"].task_ids
    attest = dags["rotate_kosli_key_attested"].get_task("attest")
    assert attest.upstream_task_ids == {"finalize"}
    assert "any_step_failed" in attest.downstream_task_ids, "a failed attestation shows as a failed run"
    assert attest.retries >= 1, "a failed attestation is retried"
