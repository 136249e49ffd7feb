"""The retry budget: after ``max_failed_attempts`` failed scheduled runs the rotation waits for a person.

Real DAG, real OpenBao, the Kosli and GitHub sandboxes. The runs fail honestly: GitHub refuses the consumer's
secret write (403) until the test lifts that fault. Scheduled runs are DagRuns of ``run_type=scheduled``
(``tests/support/scheduled_runs.py``).
"""

from __future__ import annotations

import time

import pytest

from tests.support.scenario import ORG, RECORD_PATH, SERVICE_ACCOUNT
from tests.support.scheduled_runs import scheduled_run

pytestmark = pytest.mark.e2e
DUE = 100 * 86400  # the seeded key was stored 100 days ago: due (max_age_days 90)


@pytest.fixture
def failing(scenario, github, mailbox, webhook):
    """A due key whose GitHub consumer refuses every write, with failure notices by e-mail and webhook."""
    scenario.write_inventory(
        strategy="replace",
        consumers=[
            *scenario.entry["consumers"],
            {"name": "app-actions", "kind": "github_actions", "repository": "acme/app"},
        ],
        notify=[
            {"kind": "email", "to": ["security@acme.example"]},
            {"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"},
        ],
    )
    scenario.vault().secrets.kv.v2.create_or_update_secret(
        path=RECORD_PATH, secret={"key": scenario.old_key, "rotated_at": time.time() - DUE}, mount_point=scenario.mount
    )
    github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=403, times=0)
    return scenario


def subjects(mailbox) -> list[str]:
    return [mail["Subject"] for mail in mailbox.messages]


def body(mail) -> str:
    return "\n".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())


def console(capfd, caplog) -> str:
    captured = capfd.readouterr()
    return "\n".join((captured.out, captured.err, caplog.text))


def test_three_failed_scheduled_runs_stop_the_next_one_until_a_person_resumes(
    failing, github, mailbox, webhook, capfd, caplog
):
    scenario = failing
    runs = [scheduled_run(scenario.dag()) for _ in range(3)]

    assert [run.state for run in runs] == ["failed"] * 3
    record = scenario.vault_record()
    assert record["state"] == "stored", "the phase is kept: a resume continues from it"
    assert record["needs_attention_since"]
    assert [(failed["run_id"], failed["step"]) for failed in record["failed_runs"]] == [
        (run.run_id, "all_consumers_verified") for run in runs
    ]
    assert scenario.vault_metadata()["needs_attention_since"]
    attention = [mail for mail in mailbox.messages if "needs attention" in mail["Subject"]]
    assert subjects(mailbox)[:2] == ["Kosli key rotation failed: acme/ci-bot at all_consumers_verified"] * 2
    assert [mail["Subject"] for mail in attention] == [
        "Kosli key rotation needs attention: acme/ci-bot after 3 failed runs"
    ], "one notice when the budget is spent, instead of a third failure notice"
    text = body(attention[0])
    for run in runs:
        assert f"run {run.run_id} at all_consumers_verified: " in text
    assert "app-actions" in text and "HTTP 403" in text
    assert "Scheduled runs stop trying" in text
    assert "resume_after_attention" in text
    events = [event["event"] for event in webhook.received]
    assert events == ["kosli-key-rotation-failed"] * 2 + ["kosli-key-rotation-needs-attention"]
    assert len(webhook.received[-1]["failed_runs"]) == 3

    capfd.readouterr()
    scenario.kosli.reset_stats()
    fourth = scheduled_run(scenario.dag())

    assert scenario.kosli.stats()["total_requests"] == 0, "the fourth scheduled run did not try"
    assert scenario.task_states(fourth)["preflight"] == "skipped"
    said = console(capfd, caplog)
    assert "needs attention since" in said and "scheduled runs do not try again" in said
    assert "resume_after_attention" in said
    assert len(mailbox.messages) == 3 and len(webhook.received) == 3, "no further notice"
    assert len(scenario.vault_record()["failed_runs"]) == 3, "a refused run is not a failed run"

    told = scenario.run(reason="retry by hand")

    assert told.state == "failed"
    assert scenario.kosli.stats()["total_requests"] == 0
    said = console(capfd, caplog)
    assert "This run changed nothing" in said and "resume_after_attention set to true" in said
    assert len(mailbox.messages) == 3, "the refusal is not announced as a failure"
    assert len(scenario.vault_record()["failed_runs"]) == 3

    github.faults.clear()  # the person fixed the token's rights
    resumed = scenario.run(reason="GitHub token fixed", resume_after_attention=True)

    assert resumed.state == "success", scenario.task_states(resumed)
    record = scenario.vault_record()
    assert record["state"] == "idle"
    assert "needs_attention_since" not in record and record.get("failed_runs", []) == []
    assert scenario.old_key not in scenario.live_secrets(), "the old key is revoked"
    assert set(scenario.consumer_values().values()) == {record["key"]}
    (audit,) = scenario.audit_entries()
    assert audit["run_id"] == runs[0].run_id, "the rotation the first scheduled run started was resumed, not redone"
    assert any("resumed the rotation" in line for line in audit["history"])


def fourth_scheduled_run_tries(scenario, capfd, caplog) -> str:
    """Past the budget, a fourth scheduled run still calls Kosli (and fails: GitHub still refuses); what it said."""
    capfd.readouterr()
    scenario.kosli.reset_stats()
    fourth = scheduled_run(scenario.dag())
    assert fourth.state == "failed", "it tried, and GitHub still refuses"
    assert scenario.kosli.stats()["total_requests"] > 0
    return console(capfd, caplog)


def test_the_budget_never_blocks_a_rotate_whose_old_key_dies_by_itself(failing, mailbox, capfd, caplog):
    """A 'rotate' stored its new key; Kosli kills the old one at the grace end whatever we do, so consumers not on
    the new key break then: scheduled runs keep trying, and say why."""
    scenario = failing
    scenario.kosli.hour_seconds = 3600.0  # a real hour: the grace (24 h) outlives the test
    scenario.write_inventory(strategy="rotate", grace_hours=24)
    runs = [scheduled_run(scenario.dag()) for _ in range(3)]
    assert [run.state for run in runs] == ["failed"] * 3
    assert scenario.vault_record()["needs_attention_since"]
    (attention,) = [mail for mail in mailbox.messages if "needs attention" in mail["Subject"]]
    assert "Scheduled runs keep trying anyway, because the outgoing key" in body(attention)

    said = fourth_scheduled_run_tries(scenario, capfd, caplog)
    assert "the retry budget never blocks that, so this run tries anyway" in said
    assert len([mail for mail in mailbox.messages if "needs attention" in mail["Subject"]]) == 1, "still one notice"


def test_the_budget_never_blocks_a_rotation_whose_key_kosli_expires_within_the_lead(failing, mailbox, capfd, caplog):
    """A 'replace' (the old key lives until we revoke it) of a key Kosli expires in 5 days, with expiry_lead_days
    14: stopping would leave consumers on a key that dies by itself, so scheduled runs keep trying."""
    scenario = failing
    expires = int(time.time() + 5 * 86400)
    _key_id, secret = scenario.kosli.create_key(ORG, SERVICE_ACCOUNT, "ci-expiring", expires_at=expires)
    scenario.write_inventory(key_label="ci-expiring")
    scenario.vault().secrets.kv.v2.create_or_update_secret(
        path=RECORD_PATH, secret={"key": secret, "rotated_at": time.time() - DUE}, mount_point=scenario.mount
    )
    runs = [scheduled_run(scenario.dag()) for _ in range(3)]
    assert [run.state for run in runs] == ["failed"] * 3
    record = scenario.vault_record()
    assert record["needs_attention_since"] and record["watched_key_expires_at"] == expires
    (attention,) = [mail for mail in mailbox.messages if "needs attention" in mail["Subject"]]
    assert "Scheduled runs keep trying anyway, because Kosli expires the key consumers may still use" in body(attention)

    said = fourth_scheduled_run_tries(scenario, capfd, caplog)
    assert "within expiry_lead_days (14)" in said and "so this run tries anyway" in said
