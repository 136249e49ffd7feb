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
