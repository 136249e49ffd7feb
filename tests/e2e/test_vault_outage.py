"""Vault goes away right after Kosli minted the new key: the task holds the key in memory (masked) and keeps
retrying the write for ``vault_retry_seconds``; past that it fails loudly, and the rerun cleans up."""

from __future__ import annotations

import json

import pytest

from sandbox.forward_proxy import ForwardProxy

pytestmark = pytest.mark.e2e
RECORD = "/data/kosli/acme/ci-bot$"


def storing_the_new_key(request) -> bool:
    return b'"state": "stored"' in request.body


@pytest.fixture
def vault_proxy(scenario, monkeypatch):
    """Vault, reached through a proxy that can fail requests: the product talks to the proxy."""
    with ForwardProxy(scenario.bao.url) as proxy:
        connection = json.loads(scenario.bao.airflow_connection(scenario.mount))
        connection["port"] = int(proxy.url.rsplit(":", 1)[1])
        monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", json.dumps(connection))
        yield proxy


def test_a_short_vault_outage_after_the_rotate_is_ridden_out(scenario, vault_proxy):
    outage = vault_proxy.faults.add(RECORD, method="POST", status=503, times=3, when=storing_the_new_key)

    run = scenario.run(strategy="rotate", grace_hours=1)

    assert run.state == "success", scenario.task_states(run)
    assert outage.fired == 3
    new_key = scenario.vault_record()["key"]
    assert scenario.live_secrets() == [new_key]
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}


def test_a_long_vault_outage_fails_loudly_and_the_rerun_revokes_the_key_nobody_holds(scenario, vault_proxy, caplog):
    scenario.kosli.hour_seconds = 60.0
    scenario.write_inventory(vault_retry_seconds=5)
    vault_proxy.faults.add(RECORD, method="POST", status=503, times=0, when=storing_the_new_key)

    failed = scenario.run(strategy="replace")

    assert failed.state == "failed"
    assert scenario.task_states(failed)["rotate_and_store"] == "failed"
    assert scenario.vault_record()["key"] == scenario.old_key
    assert len(scenario.live_secrets()) == 2, "Kosli holds the minted key, which nobody could store"
    assert "could not be written" in caplog.text and "The value is lost with this task" in caplog.text

    vault_proxy.faults.clear()
    resumed = scenario.run(strategy="replace")

    assert resumed.state == "success", scenario.task_states(resumed)
    new_key = scenario.vault_record()["key"]
    assert scenario.live_secrets() == [new_key], "the orphan and the old key are revoked, only the stored key lives"
    assert scenario.probe(scenario.old_key) == 401
    assert any("reconciled from Kosli's key list" in event for event in scenario.audit_entries()[-1]["history"])
