"""The versioned secret stores end to end: the real rotation, rollback and staleness DAGs (``dag.test()``) against
OpenBao, the Kosli sandbox and the fleet's GCP Secret Manager and Azure Key Vault consumers.

Both stores keep every version: a rotation or a rollback adds one (never rewrites ``latest``), and ``retire`` disables
(or, on GCP, destroys) the earlier ones once the outgoing key is dead, never ``latest``. Outcomes are read through the
sandboxes' own views (version lists, states, payloads, write counters), Vault and the Kosli sandbox, never through the
product's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.adapters.gcp_secret_manager import ROTATOR_EMAIL
from sandbox.secret_scan import find_secrets_in_text
from tests.e2e.test_fan_out import FailedTasks, task_states
from tests.e2e.test_rollback import rollback
from tests.e2e.test_staleness import checks_by_key, staleness_run
from tests.support.fleet import NAMES, Fleet
from tests.support.scenario import Scenario
from tests.support.sinks import body

pytestmark = pytest.mark.e2e

GCP_KIND, AZURE_KIND = "gcp_secret_manager", "azure_key_vault"
GCP, AZURE = NAMES[GCP_KIND], NAMES[AZURE_KIND]
VERSION_ADDER = "roles/secretmanager.secretVersionAdder"
#: What ``retire`` needs on GCP beyond the fleet rotator's least privilege (the README's IAM table).
VERSION_MANAGER = "roles/secretmanager.secretVersionManager"
HOOK = {"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"}


@pytest.fixture
def stores(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """The e2e fleet with the two versioned stores only (each seeded with the old key as version 1)."""
    fleet = Fleet(scenario, monkeypatch)
    fleet.kinds = (GCP_KIND, AZURE_KIND)
    with fleet as started:
        yield started


@pytest.fixture
def task_errors() -> Iterator[FailedTasks]:
    """Each failed task's error (test_fan_out's listener)."""
    from airflow.sdk.listener import get_listener_manager

    listener, manager = FailedTasks(), get_listener_manager()
    manager.add_listener(listener)
    yield listener
    manager.pm.unregister(listener)


def use_the_stores(scenario: Scenario, fleet: Fleet, *, gcp_retire: str, **entry: Any) -> Scenario:
    """The key's consumers are the fleet's GCP secret and Azure Key Vault secret, with these ``retire`` options;
    the GCP rotator is granted the role retiring needs on its secret, as an operator following the README would."""
    gcp = fleet.seeded[GCP].entry
    resource = f"projects/{gcp['project']}/secrets/{gcp['secret_id']}"
    fleet.sandbox(GCP_KIND).iam.grant(ROTATOR_EMAIL, VERSION_MANAGER, resource)
    consumers = [
        {**fleet.seeded[GCP].entry, "retire": gcp_retire},
        {**fleet.seeded[AZURE].entry, "retire": "disable"},
    ]
    scenario.write_inventory(consumers=consumers, **entry)
    return scenario


# -- the sandboxes' views --------------------------------------------------------------------------------------


def gcp_history(fleet: Fleet) -> list[tuple[str | None, str]]:
    """Each version of the GCP secret, oldest first: (its payload, None once destroyed; its state)."""
    store, entry = fleet.sandbox(GCP_KIND), fleet.seeded[GCP].entry
    project, secret_id = entry["project"], entry["secret_id"]
    shown = []
    for version in store.versions(project, secret_id):
        data = store.payload(project, secret_id, version["number"])
        shown.append((data.decode() if data is not None else None, version["state"]))
    return shown


def azure_history(fleet: Fleet) -> list[tuple[str | None, str]]:
    """Each version of the Key Vault secret, oldest first: (its value, ENABLED or DISABLED)."""
    vault, name = fleet.sandbox(AZURE_KIND), fleet.seeded[AZURE].entry["secret_name"]
    return [(vault.value(name, v["version"]), "ENABLED" if v["enabled"] else "DISABLED") for v in vault.versions(name)]


def histories(fleet: Fleet, **keys: str) -> dict[str, list[tuple[str | None, str]]]:
    """Both stores' histories with the values shown by the names given (``old=..., new=...``), never the keys."""
    names = {value: name for name, value in keys.items()}
    shown = {GCP: gcp_history(fleet), AZURE: azure_history(fleet)}
    return {
        consumer: [(names.get(value, "other") if value is not None else None, state) for value, state in versions]
        for consumer, versions in shown.items()
    }


def store_writes(fleet: Fleet) -> dict[str, Any]:
    """What the stores were asked to write over their APIs: GCP's accepted adds, Key Vault's write counters."""
    entry = fleet.seeded[GCP].entry
    gcp = fleet.sandbox(GCP_KIND).version_adds(entry["project"], entry["secret_id"])
    return {GCP: gcp, AZURE: fleet.sandbox(AZURE_KIND).stats()["writes"]}


def drift_back(fleet: Fleet, kind: str, value: str) -> None:
    """Someone puts ``value`` back by hand: a new latest version, added through the store's own view."""
    entry = fleet.seeded[NAMES[kind]].entry
    if kind == GCP_KIND:
        fleet.sandbox(kind).add_version(entry["project"], entry["secret_id"], value)
    else:
        fleet.sandbox(kind).put_secret(entry["secret_name"], value)


# -- the tests -------------------------------------------------------------------------------------------------


def test_dry_run_plans_both_stores_read_back_warns_of_a_pinned_alias_and_writes_nothing(
    scenario: Scenario, stores: Fleet
) -> None:
    use_the_stores(scenario, stores, gcp_retire="destroy")
    gcp = stores.seeded[GCP].entry
    stores.sandbox(GCP_KIND).set_alias(gcp["project"], gcp["secret_id"], "prod", 1)
    before, writes = histories(stores, old=scenario.old_key), store_writes(stores)
    assert before == {GCP: [("old", "ENABLED")], AZURE: [("old", "ENABLED")]}

    run = scenario.run(strategy="replace", dry_run=True)

    assert run.state == "success", scenario.task_states(run)
    assert histories(stores, old=scenario.old_key) == before, "a dry run added or retired a version"
    assert store_writes(stores) == writes
    assert scenario.live_secrets() == [scenario.old_key]
    assert scenario.vault_record() == {"key": scenario.old_key}
    plan = {consumer["name"]: consumer for consumer in scenario.xcom(run, "preflight")["consumers"]}
    assert sorted(plan) == sorted([GCP, AZURE])
    for name, consumer in plan.items():
        assert consumer["proof"] == "read back", (name, consumer)
        assert consumer["verify"].startswith("read back"), (name, consumer["verify"])
        assert "holds the current key" in consumer["today"], (name, consumer["today"])
    assert gcp["secret_id"] in plan[GCP]["target"] and stores.seeded[AZURE].fragment in plan[AZURE]["target"]
    gcp_plan = plan[GCP]["verify"]
    assert "prod -> version 1" in gcp_plan and "will not follow the rotation" in gcp_plan, gcp_plan
    assert "destroyed" in gcp_plan, f"the plan does not say the earlier versions are destroyed: {gcp_plan}"
    assert "alias" not in plan[AZURE]["verify"], plan[AZURE]["verify"]


def test_a_rotation_adds_a_version_to_each_store_and_retires_the_earlier_ones_once_the_old_key_is_dead(
    scenario: Scenario, stores: Fleet, capfd: pytest.CaptureFixture[str]
) -> None:
    use_the_stores(scenario, stores, gcp_retire="destroy")

    run = scenario.run(strategy="rotate", grace_hours=1)

    assert run.state == "success", scenario.task_states(run)
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(scenario.old_key) == 401 and scenario.probe(new_key) == 200
    assert stores.held_values() == {GCP: new_key, AZURE: new_key}, "latest holds the new key"
    assert histories(stores, old=scenario.old_key, new=new_key) == {
        GCP: [(None, "DESTROYED"), ("new", "ENABLED")],
        AZURE: [("old", "DISABLED"), ("new", "ENABLED")],
    }
    retired = scenario.xcom(run, "confirm_old_key_dead")["retired"]
    assert sorted(retired) == sorted([GCP, AZURE]), retired
    assert not find_secrets_in_text(capfd.readouterr().out, [new_key, scenario.old_key]), "a key was printed"
    writes = store_writes(stores)
    assert writes[GCP] == 1 and writes[AZURE]["set"] == 1, writes
    after = histories(stores, old=scenario.old_key, new=new_key)

    rerun = scenario.run(strategy="rotate", grace_hours=1)

    assert rerun.state == "success", scenario.task_states(rerun)
    assert scenario.vault_record()["key"] == new_key
    assert histories(stores, old=scenario.old_key, new=new_key) == after, "the rerun added or changed a version"
    assert store_writes(stores) == writes


def test_a_store_that_drifts_back_to_the_old_key_is_flagged_by_the_staleness_check(
    scenario: Scenario, stores: Fleet, webhook: Any
) -> None:
    use_the_stores(scenario, stores, gcp_retire="disable")
    assert scenario.run(strategy="replace").state == "success"
    new_key = scenario.vault_record()["key"]
    scenario.write_inventory(notify=[HOOK])
    assert staleness_run().state == "success", "a fresh rotation is healthy"
    assert webhook.received == []

    drift_back(stores, GCP_KIND, scenario.old_key)
    assert stores.held_values() == {GCP: scenario.old_key, AZURE: new_key}
    run = staleness_run()

    assert run.state == "failed"
    assert checks_by_key(run) == {scenario.name: "failed"}
    (event,) = webhook.received
    flagged = {f["check"]: f["message"] for f in event["findings"] if f["problem"]}
    assert list(flagged) == [f"consumer {GCP}"], event["findings"]
    assert "not the current key" in flagged[f"consumer {GCP}"]
    assert stores.seeded[GCP].entry["secret_id"] in flagged[f"consumer {GCP}"]

    drift_back(stores, AZURE_KIND, scenario.old_key)
    webhook.received.clear()
    again = staleness_run()

    assert again.state == "failed"
    (event,) = webhook.received
    flagged = {f["check"]: f["message"] for f in event["findings"] if f["problem"]}
    assert sorted(flagged) == sorted([f"consumer {GCP}", f"consumer {AZURE}"]), event["findings"]
    assert not find_secrets_in_text(str(event), [new_key, scenario.old_key])


def test_a_rollback_adds_a_version_holding_the_old_key_and_then_disables_the_earlier_ones_only(
    scenario: Scenario, stores: Fleet
) -> None:
    use_the_stores(scenario, stores, gcp_retire="disable")
    # A replace rotation that gave both stores the new key, then Kosli refused to revoke the old one.
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)
    stopped = scenario.run(strategy="replace")
    assert stopped.state == "failed"
    assert scenario.task_states(stopped)["revoke_old"] == "failed"
    scenario.kosli.faults.clear()
    old, new_key = scenario.old_key, scenario.vault_record()["key"]
    both_before = [("old", "ENABLED"), ("new", "ENABLED")]
    assert histories(stores, old=old, new=new_key) == {GCP: both_before, AZURE: both_before}, (
        "nothing is retired while the old key lives"
    )

    run = rollback(scenario)

    assert run.state == "success", scenario.task_states(run)
    assert scenario.vault_record()["key"] == old
    assert scenario.probe(new_key) == 401 and scenario.probe(old) == 200
    assert stores.held_values() == {GCP: old, AZURE: old}
    both_after = [("old", "DISABLED"), ("new", "DISABLED"), ("old", "ENABLED")]
    assert histories(stores, old=old, new=new_key) == {GCP: both_after, AZURE: both_after}, (
        "the rollback adds a version holding the old key; the earlier ones are disabled, never latest"
    )
    writes = store_writes(stores)
    assert writes[GCP] == 2 and writes[AZURE]["set"] == 2, writes


def test_a_gcp_write_refused_with_403_fails_that_consumer_only_names_the_role_and_a_rerun_finishes(
    scenario: Scenario, stores: Fleet, task_errors: FailedTasks, mailbox: Any
) -> None:
    scenario.kosli.hour_seconds = 120.0  # the old key outlives both runs
    use_the_stores(scenario, stores, gcp_retire="destroy", notify=[{"kind": "email", "to": ["sec@acme.example"]}])
    refusal = stores.adapter(GCP_KIND).fail_writes(403)

    failed = scenario.run(strategy="replace")

    assert failed.state == "failed"
    states = task_states(failed)
    assert (states[f"fan_out[{GCP}]"], states[f"fan_out[{AZURE}]"]) == ("failed", "success"), states
    assert states["all_consumers_verified"] == "failed"
    assert refusal.fired >= 1
    errors = task_errors.by_label(failed)
    assert [label for label in errors if label.startswith(("fan_out[", "verify_consumers["))] == [f"fan_out[{GCP}]"]
    fan_out_error = errors[f"fan_out[{GCP}]"]
    assert VERSION_ADDER in fan_out_error and "HTTP 403" in fan_out_error, fan_out_error
    new_key = scenario.vault_record()["key"]
    assert stores.held_values() == {GCP: scenario.old_key, AZURE: new_key}
    assert scenario.probe(scenario.old_key) == 200, "nothing was revoked"
    (notice,) = mailbox.messages
    notice_text, record_text = body(notice), scenario.vault_record()["failure"]  # metadata: cut to 512 bytes
    assert GCP in notice_text and GCP in record_text, "the notice and the record name the consumer that failed"
    assert not find_secrets_in_text(notice_text, [new_key, scenario.old_key])
    writes = store_writes(stores)

    refusal.remove()
    resumed = scenario.run(strategy="replace")

    assert resumed.state == "success", task_states(resumed)
    assert scenario.vault_record()["key"] == new_key, "resumed, not rotated again"
    assert scenario.probe(scenario.old_key) == 401
    assert stores.held_values() == {GCP: new_key, AZURE: new_key}
    after = store_writes(stores)
    assert after[AZURE] == {**writes[AZURE], "update": after[AZURE]["update"]}, "Azure was written again"
    assert after[GCP] == writes[GCP] + 1
    assert histories(stores, old=scenario.old_key, new=new_key) == {
        GCP: [(None, "DESTROYED"), ("new", "ENABLED")],
        AZURE: [("old", "DISABLED"), ("new", "ENABLED")],
    }
    assert VERSION_ADDER in notice_text, "the notice says which role to grant"
    assert VERSION_ADDER in record_text, "the Vault record's failure says which role to grant"
