"""The manual trigger form: which consumers a run updates, and who asked for it and why."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

CHOSEN, LEFT_OUT = "release-cli", "reporter-vault"


def test_a_run_updates_only_the_chosen_consumers_and_keeps_the_old_key_until_every_consumer_holds_the_new_one(
    scenario,
):
    before = scenario.consumer_values()
    first = scenario.run(strategy="replace", consumers=[CHOSEN], reason="offboarding: release team first")

    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.consumer_values() == {CHOSEN: new_key, LEFT_OUT: before[LEFT_OUT]}, "left out: not written"
    assert first.state == "failed"
    states = scenario.task_states(first)
    assert states["all_consumers_verified"] == "failed"
    assert states["revoke_old"] != "success"
    assert scenario.probe(scenario.old_key) == 200, "the left-out consumer still needs the old key"
    assert scenario.vault_metadata()["todo"].count(LEFT_OUT) >= 1

    second = scenario.run(strategy="replace", reason="offboarding: the rest")

    assert second.state == "success"
    assert scenario.consumer_values() == {CHOSEN: new_key, LEFT_OUT: new_key}
    assert scenario.probe(scenario.old_key) == 401
    assert scenario.live_secrets() == [new_key]
    audit = scenario.audit_entries()[-1]
    assert audit["reason"] == "offboarding: release team first", "the rotation's reason is the run that started it"
    assert audit["triggered_by"]


def test_a_dry_run_shows_which_consumers_the_run_would_update(scenario):
    run = scenario.run(dry_run=True, consumers=[CHOSEN])

    plan = scenario.xcom(run, "preflight")
    assert {consumer["name"]: consumer["update"] for consumer in plan["consumers"]} == {CHOSEN: True, LEFT_OUT: False}
    assert scenario.vault_record()["key"] == scenario.old_key
    assert scenario.live_secrets() == [scenario.old_key]
