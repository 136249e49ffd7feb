"""Remotes that answer with hostile text: template syntax, HTML and secret-shaped strings in their error bodies.

Remote text is data. The failure notice must still go out, say what broke in words a person can read (the hostile
text shown literally, HTML escaped), and carry no secret: not the Kosli admin key, not the Vault token, not the old or
the new key, not a consumer's credentials, even when the remote reflects them back (a proxy sees the headers).
"""

from __future__ import annotations

import html
import json

import pytest

from sandbox.secret_scan import find_secrets_in_text
from tests.support.sinks import body

pytestmark = pytest.mark.e2e

#: Jinja that would read connections if a notifier rendered it, HTML, and a token of a well-known shape.
TEMPLATE = "{% endraw %}{{ conn.kosli_default.password }}|{{ conn.vault_default.password }}{% raw %}"
MARKUP = "<script>alert('kosli')</script>"
TOKEN_SHAPED = "ghp_" + "Z" * 36


def hostile_body(*reflected: str) -> str:
    """An error page as a hostile proxy would write it, reflecting what it saw in the request."""
    return f"upstream said: {TEMPLATE} {MARKUP} token={TOKEN_SHAPED} " + " ".join(
        f"Authorization: Bearer {secret}" for secret in reflected
    )


def notify_by_mail_and_webhook(scenario) -> None:
    scenario.write_inventory(
        notify=[
            {"kind": "email", "to": ["security@acme.example"]},
            {"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"},
        ]
    )


def the_notices(mailbox, webhook) -> tuple[str, str, dict]:
    (mail,) = mailbox.messages
    (event,) = webhook.received
    return mail["Subject"], body(mail), event


def assert_no_secret(secrets: list[str], *texts: str) -> None:
    for text in texts:
        assert not find_secrets_in_text(text, secrets), "a secret reached a notice"
    assert TOKEN_SHAPED not in "".join(texts), "a token-shaped string reached a notice"


def test_a_kosli_host_answering_every_call_with_a_hostile_body_still_gets_a_clean_notice_out(
    scenario, openbao, mailbox, webhook
):
    notify_by_mail_and_webhook(scenario)
    scenario.kosli.faults.add("", status=502, body=hostile_body(scenario.admin_key), times=0)

    run = scenario.run()

    assert run.state == "failed"
    subject, mail_body, event = the_notices(mailbox, webhook)
    secrets = [scenario.admin_key, openbao.token, scenario.old_key]
    assert_no_secret(secrets, subject, mail_body, json.dumps(event))
    assert subject == "Kosli key rotation failed: acme/ci-bot at preflight"
    assert "Failed step: preflight" in mail_body
    # The remote's text is shown as it came, never executed: the template literally, the markup escaped.
    assert "{{ conn.kosli_default.password }}" in mail_body
    assert html.escape(MARKUP, quote=False) in mail_body and MARKUP not in mail_body
    assert "{{ conn.kosli_default.password }}" in event["error"]
    assert event["failed_step"] == "preflight"
    assert scenario.live_secrets() == [scenario.old_key], "nothing changed in Kosli"


WRITES = ("PUT", "POST", "PATCH", "DELETE")
#: The kinds whose sandbox can reflect a request in its answer (``ConsumerFleet.sandbox``).
HOSTILE_SANDBOXES = (
    "github_actions",
    "gitlab_ci",
    "jenkins_credential",
    "circleci_env",
    "kubernetes_secret",
    "gcp_secret_manager",
    "azure_key_vault",
)


def fleet_credentials(fleet) -> list[str]:
    """Every credential the fleet's Airflow connections hold: passwords, and the kubeconfig's token."""
    import yaml

    found = [str(c["password"]) for c in fleet.connections.values() if c.get("password")]
    kubeconfig = fleet.connections["kubernetes_default"]["extra"]["kube_config"]
    kubeconfig = yaml.safe_load(kubeconfig) if isinstance(kubeconfig, str) else kubeconfig
    found += [user["user"]["token"] for user in kubeconfig["users"] if user["user"].get("token")]
    keyfile = fleet.connections["google_cloud_default"]["extra"]["keyfile_dict"]
    keyfile = json.loads(keyfile) if isinstance(keyfile, str) else keyfile
    found.append(keyfile["private_key"])
    return found


def reflect_what_it_got(rule, *secrets: str):
    """A ``when`` predicate that makes the rule's error body echo the request: its body (the key being written)
    and the credentials the test knows the proxy saw."""

    def matches(request) -> bool:
        if request.method not in WRITES:
            return False
        rule.body = hostile_body(*secrets) + " got: " + request.body.decode(errors="replace")[:2000]
        return True

    return matches


@pytest.mark.parametrize("kind", [*HOSTILE_SANDBOXES, "aws_secrets_manager"])
def test_a_consumer_answering_its_writes_with_a_hostile_body_still_gets_a_clean_notice_out(
    kind, fleet_scenario, fleet, openbao, mailbox, webhook
):
    from tests.support.aws_errors import AwsError
    from tests.support.fleet import NAMES

    scenario, name = fleet_scenario, NAMES[kind]
    scenario.write_inventory(consumers=[c for c in fleet.consumers if c["name"] == name])
    notify_by_mail_and_webhook(scenario)
    credentials = fleet_credentials(fleet)
    known = [scenario.admin_key, openbao.token, *credentials]
    if kind == "aws_secrets_manager":
        fleet.adapter("aws_secrets_manager").front.fail_always(
            AwsError(400, "ValidationException", hostile_body(*known))
        )
    else:
        rule = fleet.sandbox(kind).faults.add("", status=500, times=0)
        rule.when = reflect_what_it_got(rule, *known)

    run = scenario.run(strategy="rotate", grace_hours=24)

    assert run.state == "failed"
    subject, mail_body, event = the_notices(mailbox, webhook)
    record = scenario.vault_record()
    assert_no_secret([*known, scenario.old_key, record["key"]], subject, mail_body, json.dumps(event))
    assert subject.startswith("Kosli key rotation failed: acme/ci-bot at ")
    assert name in mail_body, "the notice names the consumer that failed"
    assert MARKUP not in mail_body, "markup is escaped (where a consumer's error quotes the body)"
    assert "{{" not in mail_body or "{{ conn.kosli_default.password }}" in mail_body, "quoted text stays literal"
    assert scenario.old_key in scenario.live_secrets(), "nothing was revoked"
