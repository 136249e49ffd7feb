"""Fan-out acceptance tests: the real DAG (``dag.test()``) against OpenBao, the Kosli sandbox and one sandbox of
every consumer service (``sandbox/fleet.py``, wired by ``tests/support/fleet.py``), each holding the old key
before the run.

Outcomes are read through the sandboxes' own views (decrypted secrets, stored variables, write counters, canary
job lists, pod start records), Vault (hvac) and the Kosli sandbox, never through the product's bookkeeping.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from airflow.listeners import hookimpl

from kosli_rotation.consumers import KINDS
from sandbox.fleet import fingerprint as sandbox_fingerprint
from sandbox.secret_scan import find_secrets_in_text
from tests.support.fleet import CANARIES, NAMES, Fleet
from tests.support.scenario import Scenario

pytestmark = pytest.mark.e2e

MINTING_CALLS = ("create_api_key", "rotate_api_key")
FAILING_KIND = "jenkins_credential"
FAILING = NAMES[FAILING_KIND]


# -- reading a run -------------------------------------------------------------------------------------------


def _instances(dag_run: Any) -> list[tuple[str, int, str, str]]:
    """(task_id, map_index, label, state) of every task instance of the run; a mapped task's label is its grid
    label, e.g. ``fan_out[app-jenkins]`` (one batch per kind here, so one consumer per batch)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return [
            (ti.task_id, ti.map_index, _label(ti.task_id, ti.map_index, ti.rendered_map_index), str(ti.state))
            for ti in instances
        ]


def task_states(dag_run: Any) -> dict[str, str]:
    return {label: state for _, _, label, state in _instances(dag_run)}


def map_labels(dag_run: Any) -> dict[tuple[str, int], str]:
    return {(task_id, map_index): label for task_id, map_index, label, _ in _instances(dag_run)}


def _label(task_id: str, map_index: int, rendered: str | None) -> str:
    step = task_id.rpartition(".")[2]  # mapped consumer steps live in the "consumers" task group
    return step if map_index < 0 else f"{step}[{rendered or map_index}]"


class FailedTasks:
    """An Airflow listener (the documented ``on_task_instance_failed`` plugin hook): each failed task's error.

    ``dag.test()`` runs the tasks in-process, so the task runner calls it with the exception the task raised,
    whatever the logging configuration does with the console output.
    """

    def __init__(self) -> None:
        self.errors: dict[tuple[str, int], str] = {}

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        self.errors[(task_instance.task_id, task_instance.map_index)] = str(error)

    def by_label(self, dag_run: Any) -> dict[str, str]:
        """The errors of this run's failed tasks, by label (``fan_out[app-jenkins]``)."""
        labels = map_labels(dag_run)
        return {labels[where]: error for where, error in self.errors.items() if where in labels}


@pytest.fixture
def failed_tasks() -> Iterator[FailedTasks]:
    from airflow.sdk.listener import get_listener_manager

    listener, manager = FailedTasks(), get_listener_manager()
    manager.add_listener(listener)
    yield listener
    manager.pm.unregister(listener)


def console(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """Everything the run printed or logged. Airflow sends its logging to stdout during the first ``dag.test()``
    of the session and to pytest's log capture afterwards, so both are read."""
    captured = capfd.readouterr()
    return "\n".join((captured.out, captured.err, caplog.text))


def minting_calls(scenario: Scenario) -> int:
    """Keys Kosli was asked to create or rotate (the sandbox counts every request by handler)."""
    requests = scenario.kosli.stats()["requests"]
    return sum(requests.get(handler, 0) for handler in MINTING_CALLS)


def assert_every_kind_is_in_the_inventory(scenario: Scenario, fleet: Fleet) -> None:
    kinds = {consumer["kind"] for consumer in scenario.entry["consumers"]}
    assert kinds == set(KINDS), f"consumer kinds the fleet does not cover: {sorted(set(KINDS) - kinds)}"
    assert fleet.held_values() == dict.fromkeys(fleet.consumer_names, scenario.old_key), "seeded with the old key"


# -- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["rotate", "replace"])
def test_every_consumer_of_every_kind_gets_the_new_key_and_the_old_key_dies(
    fleet_scenario: Scenario,
    fleet: Fleet,
    strategy: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    scenario = fleet_scenario
    assert_every_kind_is_in_the_inventory(scenario, fleet)
    writes_before = fleet.write_marks()

    run = scenario.run(strategy=strategy, grace_hours=1)

    assert run.state == "success", task_states(run)
    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert fleet.held_values() == dict.fromkeys(fleet.consumer_names, new_key)
    assert scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert scenario.live_secrets() == [new_key], "exactly one live secret, the one in Vault"
    assert minting_calls(scenario) == 1

    canaries = fleet.canary_outcomes()
    for name in CANARIES:
        assert canaries[name], f"{name}: no canary job ran"
        assert set(canaries[name]) == {"success"}, f"{name}: canary jobs {canaries[name]}"

    writes_after = fleet.write_marks()
    for name, before in writes_before.items():
        after = writes_after[name]
        if isinstance(before, int):
            assert after == before + 1, f"{name} was written {after - before} times, not once"
        else:
            assert after != before, f"{name} was not written"

    output = console(capfd, caplog)
    assert not find_secrets_in_text(output, [new_key, scenario.old_key]), "a key was printed"
    timed = set(re.findall(r"step (\w+)(?:\[[^]]*\])?: its own work took \d+\.\d{3} s", output))
    assert {"preflight", "rotate_and_store", "fan_out", "verify_consumers", "revoke_old"} <= timed, (
        f"the task log says how long each step's own work took (the rest is Airflow's); only {sorted(timed)}"
    )

    secret_writes_before, generation_before = writes_before[NAMES["kubernetes_secret"]]
    assert writes_after[NAMES["kubernetes_secret"]] == (secret_writes_before + 1, generation_before + 1)
    pods = fleet.deployment_pod_fingerprints()
    assert pods and set(pods) == {sandbox_fingerprint(new_key)}, "every pod restarted and started with the new key"


def test_a_failing_consumer_blocks_revocation_and_a_new_run_finishes_without_rotating_again(
    fleet_scenario: Scenario,
    fleet: Fleet,
    failed_tasks: FailedTasks,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    scenario = fleet_scenario
    scenario.kosli.hour_seconds = 120.0  # whatever Kosli does by the hour, the old key outlives both runs
    assert_every_kind_is_in_the_inventory(scenario, fleet)
    others = [name for name in fleet.consumer_names if name != FAILING]
    # Jenkins refuses the credential writes only, after preflight's read-only access checks have passed.
    refusal = fleet.adapter(FAILING_KIND).fail_writes(403)

    failed = scenario.run(strategy="replace")

    assert failed.state == "failed"
    states = task_states(failed)
    assert states["preflight"] == "success"
    assert states[f"fan_out[{FAILING}]"] == "failed", states
    assert {name: states[f"fan_out[{name}]"] for name in others} == dict.fromkeys(others, "success")
    assert states["all_consumers_verified"] == "failed", states
    assert {states[step] for step in ("revoke_old", "confirm_old_key_dead", "finalize")} <= {"upstream_failed", "None"}

    errors = failed_tasks.by_label(failed)
    consumer_tasks = [label for label in errors if label.startswith(("fan_out[", "verify_consumers["))]
    assert consumer_tasks == [f"fan_out[{FAILING}]"], errors
    fan_out_error, gate_error = errors[f"fan_out[{FAILING}]"], errors["all_consumers_verified"]
    assert repr(FAILING) in fan_out_error and "HTTP 403" in fan_out_error, fan_out_error
    assert FAILING in gate_error and "NOT revoked" in gate_error, gate_error
    assert gate_error in console(capfd, caplog), "the gate's message is shown on the console"

    new_key = scenario.vault_record()["key"]
    assert new_key != scenario.old_key
    assert scenario.probe(scenario.old_key) == 200, "the old key still works"
    assert scenario.live_secrets() == sorted([scenario.old_key, new_key])
    held = fleet.held_values()
    assert held[FAILING] == scenario.old_key
    assert {name: held[name] for name in others} == dict.fromkeys(others, new_key)
    assert minting_calls(scenario) == 1
    writes_after_failure = fleet.write_marks()

    refusal.remove()
    resumed = scenario.run(strategy="replace")

    assert resumed.state == "success", task_states(resumed)
    assert scenario.vault_record()["key"] == new_key, "the rerun finished the rotation with the stored key"
    assert minting_calls(scenario) == 1, "Kosli was not asked for another key"
    assert scenario.live_secrets() == [new_key]
    assert scenario.probe(scenario.old_key) == 401
    assert fleet.held_values() == dict.fromkeys(fleet.consumer_names, new_key)
    writes_after_rerun = fleet.write_marks()
    assert {name: writes_after_rerun[name] for name in others} == {
        name: writes_after_failure[name] for name in others
    }, "consumers done in the failed run were written again"
    assert writes_after_rerun[FAILING] > writes_after_failure[FAILING]
    canaries = fleet.canary_outcomes()
    for name in CANARIES:
        assert canaries[name] and set(canaries[name]) == {"success"}, f"{name}: canary jobs {canaries[name]}"

    assert set(fleet.deployment_pod_fingerprints()) == {sandbox_fingerprint(new_key)}


def test_the_gate_names_only_the_consumer_that_failed(
    fleet_scenario: Scenario, fleet: Fleet, failed_tasks: FailedTasks
) -> None:
    fleet_scenario.kosli.hour_seconds = 120.0
    fleet.adapter(FAILING_KIND).fail_writes(403)

    failed = fleet_scenario.run(strategy="replace")

    assert failed.state == "failed"
    gate_error = failed_tasks.by_label(failed)["all_consumers_verified"]
    blamed = re.match(r"consumer '([^']*)'", gate_error)
    assert blamed is not None, gate_error
    assert blamed.group(1).split(", ") == [FAILING], gate_error
    states = task_states(failed)
    others = [name for name in fleet.consumer_names if name != FAILING]
    assert {name: states.get(f"verify_consumers[{name}]") for name in others} == dict.fromkeys(others, "success")


def test_dry_run_writes_nothing_and_plans_every_consumer(
    fleet_scenario: Scenario,
    fleet: Fleet,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    scenario = fleet_scenario
    assert_every_kind_is_in_the_inventory(scenario, fleet)
    writes_before = fleet.write_marks()

    run = scenario.run(strategy="replace", dry_run=True)

    assert run.state == "success", task_states(run)
    assert fleet.write_marks() == writes_before, "a consumer was written"
    assert fleet.held_values() == dict.fromkeys(fleet.consumer_names, scenario.old_key)
    assert minting_calls(scenario) == 0
    assert scenario.live_secrets() == [scenario.old_key]
    assert scenario.vault_record() == {"key": scenario.old_key}
    assert fleet.canary_outcomes() == {name: [] for name in CANARIES}, "a dry run runs no canary"

    plan = scenario.xcom(run, "preflight")
    planned = {consumer["name"]: consumer for consumer in plan["consumers"]}
    assert sorted(planned) == sorted(fleet.consumer_names)
    where = fleet.target_fragments()
    for name, consumer in planned.items():
        assert where[name] in consumer["target"], f"{name}: plan target {consumer['target']!r}"
        assert consumer["verify"], f"{name}: the plan does not say how it is verified"
        if name in CANARIES:
            assert "canary" in consumer["verify"], f"{name}: {consumer['verify']!r}"
