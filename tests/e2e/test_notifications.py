"""A failed rotation sends one notice through Airflow's notifiers: an e-mail and a webhook."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_a_failure_after_the_new_key_exists_is_announced_with_what_is_left(scenario, mailbox, webhook, github):
    scenario.kosli.hour_seconds = 3600.0  # a real hour: the notice says how long the old key has left
    scenario.write_inventory(
        consumers=[
            *scenario.entry["consumers"],
            {"name": "app-actions", "kind": "github_actions", "repository": "acme/app"},
        ],
        notify=[
            {"kind": "email", "to": ["security@acme.example"]},
            {"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"},
        ],
    )
    # Preflight only reads; the secret write is refused for good (the token lost its rights meanwhile).
    github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=403, times=0)

    run = scenario.run(strategy="rotate", grace_hours=24)

    assert run.state == "failed"
    (mail,) = mailbox.messages
    assert mail["To"] == "security@acme.example"
    assert mail["Subject"] == "Kosli key rotation failed: acme/ci-bot at all_consumers_verified"
    body = "\n".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "Consumers not verified with the new key: app-actions" in body
    assert "hours left" in body
    (event,) = webhook.received
    assert event["event"] == "kosli-key-rotation-failed"
    assert event["failed_step"] == "all_consumers_verified"
    assert event["unverified_consumers"] == ["app-actions"]
    assert 23 < event["hours_left"] <= 24
    assert scenario.old_key in scenario.live_secrets(), "nothing was revoked"
