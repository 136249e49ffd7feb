"""The real staleness DAG (``dag.test()``) over four keys: one past its max age, one whose rotation failed (a real
rotation run, stopped by Kosli refusing to revoke), one with a consumer holding a stale value, and a healthy one.
Each problem key's task fails and its owners get one e-mail naming the problem; the healthy key gets none."""

from __future__ import annotations

import time

import pytest
import yaml

from kosli_rotation.fingerprints import fingerprint
from tests.support.scenario import ORG, REPO
from tests.support.sinks import body

pytestmark = pytest.mark.e2e
DAG_ID = "kosli_key_staleness"
DAY = 86400


def staleness_run():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAG_ID].test()


def checks_by_key(run) -> dict[str, str]:
    """State of each mapped check, by the key name it is labelled with in the grid."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter_by(dag_id=DAG_ID, run_id=run.run_id).all()
        return {ti.rendered_map_index: str(ti.state) for ti in instances}


def another_key(scenario, service_account: str, *, rotated_days_ago: float, consumer_holds: str | None = None) -> dict:
    """A key of another service account of org acme: in the Kosli sandbox, its Vault record (as the tool leaves
    it after a rotation) and, when ``consumer_holds`` says what (a value, or ``"its key"``), one Vault consumer."""
    (minted,) = scenario.kosli.seed(ORG, {service_account: {"keys": [{"description": "ci"}]}})[service_account]
    kv = scenario.vault().secrets.kv.v2
    record = {"key": minted["key"], "key_id": minted["id"], "rotated_at": time.time() - rotated_days_ago * DAY}
    kv.create_or_update_secret(path=f"kosli/acme/{service_account}", secret=record, mount_point=scenario.mount)
    entry = {
        "name": f"acme-{service_account}",
        "org": ORG,
        "service_account": service_account,
        "vault_path": f"kosli/acme/{service_account}",
        "max_age_days": 30,
        "notify": [{"kind": "email", "to": [f"{service_account}@acme.example"]}],
    }
    if consumer_holds is not None:
        value = minted["key"] if consumer_holds == "its key" else consumer_holds
        path = f"apps/{service_account}"
        kv.create_or_update_secret(path=path, secret={"KOSLI_API_TOKEN": value}, mount_point=scenario.mount)
        entry["consumers"] = [{"name": f"{service_account}-vault", "kind": "vault_kv", "path": path}]
    return entry


def test_each_stale_key_fails_its_check_and_notifies_its_owners_and_a_healthy_key_does_not(scenario, mailbox, webhook):
    # A key whose rotation failed for real: the new key is stored and everywhere, Kosli refused to revoke the old.
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=403, times=0)
    scenario.write_inventory(notify=[{"kind": "email", "to": ["ci-bot@acme.example"]}])
    assert scenario.run(strategy="replace").state == "failed"
    scenario.kosli.faults.clear()
    mailbox.messages.clear()  # the rotation's own failure notice
    keys = [
        scenario.entry,
        another_key(scenario, "healthy-bot", rotated_days_ago=3, consumer_holds="its key"),
        another_key(scenario, "old-bot", rotated_days_ago=45),
        another_key(scenario, "stale-bot", rotated_days_ago=1, consumer_holds="k" * 43),
    ]
    keys[-1]["notify"].append({"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"})
    (scenario.workdir / "inventory.yaml").write_text(yaml.safe_dump({"keys": keys}, sort_keys=False))

    run = staleness_run()

    assert run.state == "failed"
    assert checks_by_key(run) == {
        "acme-ci-bot": "failed",
        "acme-healthy-bot": "success",
        "acme-old-bot": "failed",
        "acme-stale-bot": "failed",
    }
    assert mailbox.to("healthy-bot@acme.example") == []

    (failed,) = mailbox.to("ci-bot@acme.example")
    assert failed["Subject"] == "Kosli key needs attention: acme/ci-bot (state)"
    assert "failed at revoke_old (phase 'stored')" in body(failed)
    assert "resumes without rotating again" in body(failed), "what to do, from the record"

    (old,) = mailbox.to("old-bot@acme.example")
    assert old["Subject"] == "Kosli key needs attention: acme/old-bot (age)"
    assert "45.0 days old" in body(old) and "past its maximum age of 30 days" in body(old)

    (stale,) = mailbox.to("stale-bot@acme.example")
    assert stale["Subject"] == "Kosli key needs attention: acme/stale-bot (consumer stale-bot-vault)"
    assert f"[consumer stale-bot-vault] holds {fingerprint('k' * 43)}" in body(stale)
    assert "not the current key" in body(stale)
    assert len(mailbox.messages) == 3
    (event,) = webhook.received
    assert (event["event"], event["key"], event["problems"]) == ("kosli-key-stale", "acme/stale-bot", 1)
    assert [f["check"] for f in event["findings"] if f["problem"]] == ["consumer stale-bot-vault"]


def test_a_fresh_inventory_passes_the_check_without_any_notice(scenario, mailbox):
    kv = scenario.vault().secrets.kv.v2
    kv.create_or_update_secret(
        path="apps/reporter", secret={"KOSLI_API_TOKEN": scenario.old_key}, mount_point=scenario.mount
    )
    scenario.write_inventory(notify=[{"kind": "email", "to": ["ci-bot@acme.example"]}])

    run = staleness_run()

    assert run.state == "success"
    assert checks_by_key(run) == {"acme-ci-bot": "success"}
    assert mailbox.messages == []
