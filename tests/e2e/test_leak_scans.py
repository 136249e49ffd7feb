"""No secret in any sink, on failure paths as on success: runs of the real DAG that fail at each step (with Kosli or
a consumer answering hostile, secret-reflecting error bodies) and one that succeeds, then a scan of everything they
left behind, for every secret in play (old and new keys, the Kosli admin key, the Vault token, the consumers'
credentials), raw and base64:

* the Airflow database, every table (XCom, rendered fields, run conf, task instance notes, logs tables, ...);
* the task logs (``dag.test()`` runs tasks in this process and writes their logs to the console) and every log
  record, with Python logging at DEBUG (the client libraries' loggers stay pinned at WARNING);
* the notices received (e-mail and webhook);
* the Vault record's text fields, its metadata, the consumer notes and the audit entries;
* the Key rotation page's HTML, rendered through the page's own Vault policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from sandbox.secret_scan import find_secrets_in_text, scan_database
from tests.e2e.test_hostile_remotes import fleet_credentials, hostile_body, notify_by_mail_and_webhook
from tests.support.scenario import RECORD_PATH, Scenario
from tests.support.sinks import body

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

API_KEYS = r"/service-accounts/acme/ci-bot/api-keys"


def bearer(request) -> str:
    return (request.headers.get("Authorization") or "").removeprefix("Bearer ")


def fail_preflight(scenario: Scenario, _: Any) -> str:
    scenario.kosli.faults.add(r"/environments/", status=502, body=hostile_body(scenario.admin_key), times=0)
    return "preflight"


def fail_the_mint(scenario: Scenario, _: Any) -> str:
    scenario.kosli.faults.add(API_KEYS + "$", method="POST", status=400, body=hostile_body(scenario.admin_key))
    return "rotate_and_store"


def fail_the_fan_out(scenario: Scenario, fleet: Any) -> str:
    from tests.e2e.test_hostile_remotes import reflect_what_it_got
    from tests.support.fleet import NAMES

    scenario.write_inventory(
        consumers=[c for c in fleet.consumers if c["name"] in (NAMES["github_actions"], NAMES["vault_kv"])]
    )
    rule = fleet.sandbox("github_actions").faults.add("", status=500, times=0)
    rule.when = reflect_what_it_got(rule, scenario.admin_key, *fleet_credentials(fleet))
    return "all_consumers_verified"


def fail_the_new_key_check(scenario: Scenario, _: Any) -> str:
    known = (scenario.old_key, scenario.admin_key)
    scenario.kosli.faults.add(
        r"/environments/",
        status=401,
        body=hostile_body(scenario.admin_key),
        times=0,
        when=lambda request: bearer(request) not in known,
    )
    return "verify_new_key"


def fail_the_revocation(scenario: Scenario, _: Any) -> str:
    scenario.kosli.faults.add(
        API_KEYS + "/", method="DELETE", status=500, body=hostile_body(scenario.admin_key), times=0
    )
    return "revoke_old"


def succeed(scenario: Scenario, _: Any) -> str:
    return ""


RUNS: dict[str, Callable[[Scenario, Any], str]] = {
    "failing-preflight": fail_preflight,
    "failing-mint": fail_the_mint,
    "failing-fan-out": fail_the_fan_out,
    "failing-new-key-check": fail_the_new_key_check,
    "failing-revocation": fail_the_revocation,
    "succeeding": succeed,
}


def leaks(text: str, secrets: list[str]) -> list[str]:
    """Where in ``text`` a secret (plain or base64) occurs: 80 characters either side, the secret itself replaced."""
    from sandbox.secret_scan import secret_forms

    found = []
    for number, secret in enumerate(secrets):
        for form in secret_forms(secret):
            at = text.encode().find(form)
            if at >= 0:
                window = text.encode()[max(at - 80, 0) : at + len(form) + 80].replace(
                    form, f"<secret {number}>".encode()
                )
                found.append(window.decode(errors="replace"))
    return found


def page_html(scenario: Scenario, run: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Key rotation page as its viewer gets it, read through a token of the page's own Vault policy."""
    from kosli_rotation.dashboard import LatestRun, collect_rows, render_page
    from kosli_rotation.inventory import load_inventory
    from kosli_rotation.vault_policy import page_policy

    client = scenario.vault()
    client.sys.create_or_update_policy(name="leak-scan-page", policy=page_policy(load_inventory(), scenario.mount))
    token = client.auth.token.create(policies=["leak-scan-page"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT", scenario.bao.airflow_connection(scenario.mount, token=token)
    )
    states = scenario.task_states(run)
    failed = next((task for task, state in states.items() if state == "failed" and task != "any_step_failed"), None)
    latest = LatestRun(run.run_id, str(run.state), failed_task=failed)
    return render_page(collect_rows(lambda dag_id: latest, may_read=lambda dag_id: True))


def vault_documents(scenario: Scenario) -> dict[str, Any]:
    """Everything the tool wrote to Vault that is not a key field: the record's other fields, its metadata, the
    consumer notes and the audit entries."""
    kv = scenario.vault().secrets.kv.v2
    record = {name: value for name, value in scenario.vault_record().items() if name not in ("key", "previous_key")}
    metadata = kv.read_secret_metadata(path=RECORD_PATH, mount_point=scenario.mount)["data"]
    documents: dict[str, Any] = {"record": record, "metadata": metadata}
    try:
        documents["audit"] = scenario.audit_entries()
    except Exception:  # no audit entry (a run that did not finish)
        documents["audit"] = []
    try:
        names = kv.list_secrets(path=f"{RECORD_PATH}/consumers", mount_point=scenario.mount)["data"]["keys"]
    except Exception:  # no consumer note yet (a run that failed before the fan-out)
        names = []
    for name in names:
        note = kv.read_secret_version(
            path=f"{RECORD_PATH}/consumers/{name}", mount_point=scenario.mount, raise_on_deleted_version=True
        )
        documents[f"consumers/{name}"] = note["data"]
    return documents


@pytest.mark.parametrize("how", list(RUNS))
def test_no_secret_reaches_any_sink(
    how, request, scenario, openbao, airflow_db, mailbox, webhook, capfd, caplog, monkeypatch
):
    fleet = request.getfixturevalue("fleet") if how == "failing-fan-out" else None
    notify_by_mail_and_webhook(scenario)
    failing_step = RUNS[how](scenario, fleet)
    caplog.set_level(logging.DEBUG)

    run = scenario.run(strategy="replace")

    states = scenario.task_states(run)
    if failing_step:
        assert run.state == "failed" and states[failing_step] == "failed", states
        assert mailbox.messages and webhook.received, "the failure was announced"
        subjects = [mail["Subject"] for mail in mailbox.messages]
        notices = "".join(subjects + [body(mail) for mail in mailbox.messages] + [json.dumps(webhook.received)])
        assert any(failing_step in subject for subject in subjects), "a notice names the step that failed"
    else:
        assert run.state == "success", states
        notices = ""
    record = scenario.vault_record()
    secrets = sorted(
        {scenario.admin_key, openbao.token, scenario.old_key, record["key"], *scenario.live_secrets()}
        | ({record["previous_key"]} if record.get("previous_key") else set())
        | set(fleet_credentials(fleet) if fleet else [])
    )
    output = capfd.readouterr()

    hits, tables = scan_database(airflow_db, secrets)
    assert hits == [], f"secrets in the Airflow database: {hits}"
    assert {"xcom", "rendered_task_instance_fields", "dag_run", "task_instance"} <= set(tables)
    logged = {"console": output.out + output.err, "log records": caplog.text}
    found = {where: leaks(text, secrets) for where, text in logged.items()}
    assert not any(found.values()), f"a secret was logged at DEBUG: {found}"
    assert not find_secrets_in_text(notices, secrets), "a secret in a notice"
    assert not find_secrets_in_text(json.dumps(vault_documents(scenario)), secrets), "a secret in Vault's text"
    assert not find_secrets_in_text(page_html(scenario, run, monkeypatch), secrets), "a secret on the page"
