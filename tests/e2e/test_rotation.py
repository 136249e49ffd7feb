"""The real DAG, end to end, against a real OpenBao and the Kosli sandbox."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("strategy", ["rotate", "replace"])
def test_rotation_leaves_one_live_key_held_by_vault_and_every_consumer(scenario, strategy):
    run = scenario.run(strategy=strategy, grace_hours=1)

    assert run.state == "success", scenario.task_states(run)
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert scenario.live_secrets() == [new_key]
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
