"""The generated least-privilege Vault policy is enough for a whole rotation, and no more than that."""

from __future__ import annotations

import os

import pytest

from kosli_rotation.inventory import load_inventory
from kosli_rotation.vault_policy import vault_policy

pytestmark = pytest.mark.e2e


def restricted_token(scenario) -> str:
    client = scenario.vault()
    policy = vault_policy(load_inventory(os.environ["KOSLI_ROTATION_INVENTORY"]), scenario.mount)
    client.sys.create_or_update_policy(name="kosli-key-rotation", policy=policy)
    return client.auth.token.create(policies=["kosli-key-rotation"], ttl="1h")["auth"]["client_token"]


def test_a_rotation_succeeds_with_only_the_generated_policy(scenario, monkeypatch):
    token = restricted_token(scenario)
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", scenario.bao.airflow_connection(scenario.mount, token=token))

    run = scenario.run(strategy="replace")

    assert run.state == "success", scenario.task_states(run)
    assert scenario.live_secrets() == [scenario.vault_record()["key"]]


def test_the_policy_grants_nothing_outside_its_paths(scenario):
    client = scenario.vault()
    token = restricted_token(scenario)
    mount = scenario.mount
    capabilities = client.sys.get_capabilities(
        paths=[f"{mount}/data/kosli/acme/other-key", f"{mount}/data/apps/other", f"{mount}/metadata/"],
        token=token,
    )
    assert set(capabilities[f"{mount}/data/kosli/acme/other-key"]) == {"deny"}
    assert set(capabilities[f"{mount}/data/apps/other"]) == {"deny"}
    assert set(capabilities[f"{mount}/metadata/"]) == {"deny"}
