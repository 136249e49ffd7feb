"""Fixtures of the fan-out acceptance tests: the Scenario of tests/conftest.py, plus a Fleet of consumer sandboxes
(``sandbox.fleet.ConsumerFleet``, a loop over the fixture adapters of ``sandbox.adapters`` that ``make demo`` uses
too, seeded with the scenario's key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported in the fixture: collecting the other e2e tests should not load every consumer kind
    from tests.support.fleet import Fleet
    from tests.support.scenario import Scenario


@pytest.fixture
def fleet(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """One sandbox of every consumer service, each holding the scenario's current (old) key."""
    from tests.support.fleet import Fleet

    with Fleet(scenario, monkeypatch) as started:
        yield started


@pytest.fixture
def fleet_scenario(scenario: Scenario, fleet: Fleet) -> Scenario:
    """The scenario's key with the fleet's consumers in its inventory: one of every kind, seeded through the kinds'
    fixture adapters (they replace the Scenario's own two)."""
    scenario.write_inventory(consumers=fleet.consumers)
    return scenario


@pytest.fixture
def mailbox(monkeypatch):
    """A local SMTP server, and the ``smtp_default`` connection pointing at it."""
    import json

    from aiosmtpd.controller import Controller

    from tests.support.services import free_port
    from tests.support.sinks import Mailbox

    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    extra = {"disable_tls": True, "disable_ssl": True, "from_email": "rotation@acme.example"}
    connection = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(connection))
    yield box
    controller.stop()


@pytest.fixture
def webhook(monkeypatch):
    """A local webhook endpoint, and the ``rotation_webhook`` connection pointing at it."""
    import json

    from tests.support.sinks import WebhookSink

    sink = WebhookSink().start()
    monkeypatch.setenv("AIRFLOW_CONN_ROTATION_WEBHOOK", json.dumps({"conn_type": "http", "host": sink.url}))
    yield sink
    sink.stop()


@pytest.fixture
def github(scenario, monkeypatch):
    """The GitHub sandbox with repo ``acme/app``, an admin token for it, and ``github_default`` pointing at it
    (pacing off: the sandbox's limits are not what these tests are about)."""
    import json

    from kosli_rotation.consumers import github_actions
    from sandbox.github import GitHubSandbox

    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_REQUESTS", 0.0)
    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_WRITES", 0.0)
    token = "ghp_" + "e" * 36
    with GitHubSandbox() as sandbox:
        sandbox.add_repo("acme/app")
        sandbox.add_token(token, repos={"acme/app": "admin"})
        monkeypatch.setenv(
            "AIRFLOW_CONN_GITHUB_DEFAULT", json.dumps({"conn_type": "github", "password": token, "host": sandbox.url})
        )
        yield sandbox
