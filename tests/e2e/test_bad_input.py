"""Invalid trigger parameters are rejected before any call to Kosli, naming the parameter."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"grace_hours": 0}, "grace_hours"),
        ({"grace_hours": 721}, "grace_hours"),
        ({"grace_hours": "a day"}, "grace_hours"),
        ({"strategy": "delete-everything"}, "strategy"),
        ({"force": "yes"}, "force"),
        ({"dry_run": 1}, "dry_run"),
        ({"revoke_despite_recent_use": "please"}, "revoke_despite_recent_use"),
        ({"resume_after_attention": "true"}, "resume_after_attention"),
        ({"reason": ["not", "text"]}, "reason"),
        ({"consumers": ["release-cli", "no-such-consumer"]}, "consumers"),
        ({"consumers": []}, "consumers"),
        ({"consumers": "release-cli"}, "consumers"),
    ],
)
def test_the_trigger_form_refuses_bad_parameters_before_the_run_starts(scenario, conf, named):
    from airflow.sdk.exceptions import ParamValidationError

    scenario.kosli.reset_stats()
    with pytest.raises(ParamValidationError, match=named):
        scenario.run(**conf)
    assert scenario.kosli.stats()["total_requests"] == 0
    assert scenario.live_secrets() == [scenario.old_key]


def test_a_manual_run_without_a_reason_fails_in_preflight_before_any_call_to_kosli(scenario):
    scenario.kosli.reset_stats()

    run = scenario.run(reason=None)

    assert run.state == "failed"
    assert scenario.task_states(run)["preflight"] == "failed"
    assert scenario.kosli.stats()["total_requests"] == 0


def test_a_missing_connection_is_named_and_nothing_is_rotated(scenario, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_KOSLI_DEFAULT")
    scenario.write_inventory(kosli_conn_id="kosli_prod")

    run = scenario.run(strategy="replace")

    assert run.state == "failed"
    assert scenario.vault_metadata().get("state", "idle") == "idle"
    assert scenario.live_secrets() == [scenario.old_key]


def test_a_vault_token_that_expires_before_the_rotation_can_finish_is_refused_in_preflight(
    scenario, monkeypatch, caplog, capfd
):
    """A token that dies mid-rotation would strand the new key: preflight refuses it, naming the connection."""
    short_lived = scenario.vault().auth.token.create(ttl="15m", renewable=False)["auth"]["client_token"]
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", scenario.bao.airflow_connection(scenario.mount, short_lived))
    scenario.kosli.reset_stats()

    run = scenario.run(strategy="replace")

    assert run.state == "failed"
    assert scenario.task_states(run)["preflight"] == "failed"
    assert scenario.kosli.stats()["total_requests"] == 0, "refused before any call to Kosli"
    assert scenario.live_secrets() == [scenario.old_key]
    said = caplog.text + capfd.readouterr().out  # Airflow's logging may go to either, depending on test order
    assert "Vault token of connection 'vault_default' expires in 15 min, before this rotation can finish" in said


# -- the inventory as a security boundary (issue 12.4) --------------------------------------------------------


def test_an_inventory_entry_that_would_inject_into_the_vault_policy_is_a_broken_dag_that_cannot_rotate(scenario):
    """A mount that ends the HCL string of its policy rule: the entry's DAG explains what to fix instead."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.support.scenario import REPO

    path = scenario.write_inventory(vault_mount='secret" {capabilities=["sudo"]}\npath "sys/*')
    bag = DagBag(dag_folder=str(REPO / "dags"))
    dag = bag.dags[scenario.dag_id]
    assert dag.description.startswith("Inventory entry is invalid: ")
    assert f"{path}: keys[0] ({scenario.name}): vault_mount: " in dag.description
    assert "rotate_and_store" not in dag.task_ids


def test_a_cli_config_whose_directory_leads_outside_the_allowed_ones_is_refused_before_any_key_is_minted(
    scenario, tmp_path, monkeypatch
):
    """A directory symlink inside the allowlist that points elsewhere: preflight refuses it, nothing is written
    there, and no key is minted."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "cli").symlink_to(outside)
    monkeypatch.setenv("KOSLI_ROTATION_CLI_CONFIG_DIRS", str(allowed))
    vault_consumer, _ = scenario.entry["consumers"]
    cli = {"name": "release-cli", "kind": "kosli_cli_config", "path": str(allowed / "cli" / "config.yml")}
    scenario.write_inventory(consumers=[vault_consumer, cli])
    scenario.kosli.reset_stats()

    run = scenario.run(strategy="replace")

    assert run.state == "failed"
    assert scenario.task_states(run)["preflight"] == "failed"
    assert list(outside.iterdir()) == [], "nothing written outside the allowed directories"
    assert scenario.live_secrets() == [scenario.old_key], "no key minted"
