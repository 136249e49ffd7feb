"""A key's whole life against the Kosli sandbox and real OpenBao: keys minted with a TTL carry Kosli's expiry, and a
scheduled run is due when Kosli is about to expire the key, whatever its age."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
import requests

from tests.support.scenario import ORG, RECORD_PATH, SERVICE_ACCOUNT
from tests.support.scheduled_runs import scheduled_run

pytestmark = pytest.mark.e2e
DAY = 86400


def kosli_key(scenario, key_id: str) -> dict:
    """Kosli's metadata of ``key_id``, as its API answers the admin key."""
    response = requests.get(
        f"{scenario.kosli.url}/api/v2/service-accounts/{ORG}/{SERVICE_ACCOUNT}/api-keys/{key_id}",
        headers={"Authorization": f"Bearer {scenario.admin_key}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()


def console(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    captured = capfd.readouterr()
    return "\n".join((captured.out, captured.err, caplog.text))


def young_key_in_vault(scenario, *, expires_in_days: float | None) -> tuple[str, str]:
    """A key of ci-bot rotated a day ago by this tool (so far from max_age_days), which Kosli expires in
    ``expires_in_days`` (None: never); the Vault record holds it. Returns its id and value."""
    expires_at = int(time.time() + expires_in_days * DAY) if expires_in_days is not None else 0
    key_id, secret = scenario.kosli.create_key(ORG, SERVICE_ACCOUNT, description="ci", expires_at=expires_at)
    record = {"key": secret, "key_id": key_id, "rotated_at": time.time() - DAY}
    scenario.vault().secrets.kv.v2.create_or_update_secret(path=RECORD_PATH, secret=record, mount_point=scenario.mount)
    return key_id, secret


@pytest.mark.parametrize("strategy", ["rotate", "replace"])
def test_a_key_minted_with_key_ttl_days_expires_that_many_days_out_in_kosli(scenario, strategy):
    scenario.write_inventory(key_ttl_days=120)
    before = time.time()

    run = scenario.run(strategy=strategy, grace_hours=1)

    assert run.state == "success", scenario.task_states(run)
    record = scenario.vault_record()
    assert record["key"] != scenario.old_key
    expires_at = kosli_key(scenario, record["key_id"])["expires_at"]
    assert before + 120 * DAY <= expires_at <= time.time() + 120 * DAY
    assert scenario.probe(record["key"]) == 200
    shown = datetime.fromisoformat(scenario.vault_metadata()["key_expires_at"]).timestamp()
    assert abs(shown - expires_at) <= 1, "the page's summary shows Kosli's expiry of the new key"


def test_a_key_minted_without_a_ttl_never_expires(scenario):
    run = scenario.run(strategy="replace")

    assert run.state == "success"
    assert kosli_key(scenario, scenario.vault_record()["key_id"])["expires_at"] == 0
    assert "key_expires_at" not in scenario.vault_metadata()


def test_a_scheduled_run_rotates_a_young_key_that_kosli_expires_within_the_lead(scenario, capfd, caplog):
    old_id, old_secret = young_key_in_vault(scenario, expires_in_days=10)
    expiry = datetime.fromtimestamp(kosli_key(scenario, old_id)["expires_at"], UTC).isoformat(timespec="seconds")
    scenario.write_inventory(key_label=None, strategy="replace")

    run = scheduled_run(scenario.dag())

    assert run.state == "success", scenario.task_states(run)
    record = scenario.vault_record()
    assert record["key"] != old_secret and scenario.probe(old_secret) == 401
    said = f"due: Kosli expires the key on {expiry}, within expiry_lead_days (14)"
    assert said in console(capfd, caplog)
    assert scenario.vault_metadata()["due"] == said.removeprefix("due: "), "the page shows which rule made it due"
    assert scenario.xcom(run, "preflight")["due"] == said.removeprefix("due: ")


def test_a_scheduled_run_leaves_a_young_key_far_from_its_expiry(scenario, capfd, caplog):
    _, secret = young_key_in_vault(scenario, expires_in_days=60)
    scenario.write_inventory(key_label=None)

    run = scheduled_run(scenario.dag())

    assert scenario.task_states(run)["preflight"] == "skipped"
    assert scenario.vault_record()["key"] == secret and scenario.probe(secret) == 200
    said = console(capfd, caplog)
    assert "it is due after 90 days (max_age_days)" in said and "before Kosli expires it on" in said


# -- the daily staleness check warns before Kosli expires the key ------------------------------------------------


def worker_token(scenario) -> str:
    """A token with only the workers' generated policy (which must grant the expiry note)."""
    from kosli_rotation.inventory import load_inventory
    from kosli_rotation.vault_policy import vault_policy

    client = scenario.vault()
    policy = vault_policy(load_inventory(os.environ["KOSLI_ROTATION_INVENTORY"]), scenario.mount)
    client.sys.create_or_update_policy(name=f"worker-{scenario.mount}", policy=policy)
    return client.auth.token.create(policies=[f"worker-{scenario.mount}"], ttl="1h")["auth"]["client_token"]


def test_a_key_kosli_expires_in_two_days_fails_the_staleness_check_naming_the_date_once(scenario, mailbox, monkeypatch):
    from tests.e2e.test_staleness import checks_by_key, staleness_run
    from tests.support.sinks import body

    key_id, _ = young_key_in_vault(scenario, expires_in_days=2)
    expiry = datetime.fromtimestamp(kosli_key(scenario, key_id)["expires_at"], UTC).isoformat(timespec="seconds")
    scenario.write_inventory(key_label=None, consumers=[], notify=[{"kind": "email", "to": ["ci@acme.example"]}])
    token = worker_token(scenario)
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", scenario.bao.airflow_connection(scenario.mount, token=token))

    first = staleness_run()

    assert first.state == "failed"
    assert checks_by_key(first) == {scenario.name: "failed"}
    (notice,) = mailbox.to("ci@acme.example")
    assert notice["Subject"] == "Kosli key needs attention: acme/ci-bot (expiry)"
    assert f"Kosli expires the key {key_id} on {expiry}" in body(notice)
    assert "NO rotation has come although one was due on" in body(notice), "no rotation is coming before it"

    again = staleness_run()

    assert again.state == "failed", "it fails every day the expiry is this close"
    assert len(mailbox.to("ci@acme.example")) == 1, "but the 7-day threshold was announced already: no new notice"

    scenario.vault().secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{RECORD_PATH}/notices/expiry", mount_point=scenario.mount
    )
    staleness_run()

    assert len(mailbox.to("ci@acme.example")) == 2, "without its note the check announces rather than stays silent"


# -- the page --------------------------------------------------------------------------------------------------


def test_the_page_shows_kosli_s_expiry_the_next_due_date_by_its_rule_and_why_the_last_run_was_due(
    scenario, monkeypatch
):
    from demo.page_vault import page_vault_token
    from kosli_rotation.dashboard import collect_rows, render_page
    from kosli_rotation.inventory import load_inventory

    young_key_in_vault(scenario, expires_in_days=10)
    scenario.write_inventory(key_label=None, strategy="replace", key_ttl_days=110, max_age_days=100)
    assert scheduled_run(scenario.dag()).state == "success"
    token = page_vault_token(scenario.vault(), load_inventory(), scenario.mount)
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT", scenario.bao.airflow_connection(scenario.mount, token=token)
    )

    (row,) = collect_rows(lambda dag_id: None, may_read=lambda dag_id: True)

    expires_at = kosli_key(scenario, scenario.vault_record()["key_id"])["expires_at"]
    assert row.key_expires_at == expires_at
    assert row.next_due_by == (expires_at - 14 * DAY, "expiry_lead_days"), "96 days after minting, before 100"
    page = render_page([row])
    assert f"Kosli expires the key {datetime.fromtimestamp(expires_at, UTC):%Y-%m-%d %H:%M} UTC" in page
    assert "by expiry_lead_days" in page
    assert "last due: Kosli expires the key on " in page and "within expiry_lead_days (14)" in page
