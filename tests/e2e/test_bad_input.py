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
