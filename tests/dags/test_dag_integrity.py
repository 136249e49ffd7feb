"""Every DAG file imports cleanly, with no network, and builds the DAG the README describes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STEPS = [
    "preflight",
    "rotate_and_store",
    "verify_new_key",
    "consumers.fan_out",
    "consumers.verify_consumers",
    "all_consumers_verified",
    "wait_grace",
    "revoke_old",
    "confirm_old_key_dead",
    "finalize",
]


@pytest.fixture
def no_network(monkeypatch):
    """Parsing must not touch the network: any connection attempt fails the parse."""

    def refuse(self, address):
        raise AssertionError(f"DAG parsing tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def inventory(tmp_path, monkeypatch):
    def write(document: dict) -> Path:
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(path))
        return path

    return write


def parse_dags(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    # Airflow itself fails an import that takes longer than this.
    monkeypatch.setenv("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "10")
    return DagBag(dag_folder=str(REPO / "dags"))


def entry(name: str, **fields) -> dict:
    return {
        "name": name,
        "org": "acme",
        "service_account": name,
        "key_label": "ci",
        "vault_path": f"kosli/acme/{name}",
        "consumers": [{"name": "apps", "kind": "vault_kv", "path": f"apps/{name}"}],
        **fields,
    }


def test_the_repository_inventory_loads_without_errors_or_network(no_network, monkeypatch):
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(REPO / "inventory.yaml"))
    bag = parse_dags(monkeypatch)
    assert bag.import_errors == {}
    assert bag.dags, "the repository inventory yields no DAG"


def test_a_dag_is_one_task_per_step_in_order(no_network, inventory, monkeypatch):
    inventory({"keys": [entry("ci-bot", grace_hours=48)]})
    dag = parse_dags(monkeypatch).dags["rotate_kosli_key_ci-bot"]

    order, task = [], dag.get_task("preflight")
    while task is not None:
        order.append(task.task_id)
        downstream = [t for t in task.downstream_list if t.task_id != "any_step_failed"]
        assert len(downstream) <= 1, f"{task.task_id} fans out to {downstream}"
        task = downstream[0] if downstream else None
    assert order == STEPS
    watcher = dag.get_task("any_step_failed")
    assert watcher.trigger_rule == "one_failed"
    assert set(watcher.upstream_task_ids) == set(STEPS), "a failure of any step fails the run"
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert all(t.retries >= 1 for t in dag.tasks if t.task_id in STEPS), "every step retries"
    assert dag.get_task("consumers.fan_out").map_index_template
    assert dag.params["grace_hours"] == 48
    assert set(dag.params.keys()) == {
        "reason",
        "strategy",
        "grace_hours",
        "force",
        "revoke_despite_recent_use",
        "resume_after_attention",
        "dry_run",
        "consumers",
    }
    assert dag.get_task("revoke_old").trigger_rule == "all_success", "never revokes after a failed step of its run"
    assert dag.params["strategy"] == "replace", "manual runs default to replace"
    assert dag.params["consumers"] == ["apps"], "every consumer is updated unless the form says otherwise"
    assert dag.params.get_param("consumers").schema["items"]["enum"] == ["apps"]
    assert all(param.description for param in dag.params.values()), "every field of the form says what it does"
    assert {task.pool for task in dag.tasks} == {"default_pool"}, "no pool unless the inventory names one"


def step_order(dag) -> list[str]:
    order, task = [], dag.get_task("preflight")
    while task is not None:
        order.append(task.task_id)
        downstream = [t for t in task.downstream_list if t.task_id != "any_step_failed"]
        assert len(downstream) <= 1, f"{task.task_id} fans out to {downstream}"
        task = downstream[0] if downstream else None
    return order


def test_a_key_with_a_window_or_blackout_waits_for_it_after_preflight_and_others_do_not(
    no_network, inventory, monkeypatch
):
    inventory(
        {
            "keys": [
                entry("windowed", rotation_window={"days": ["tue"], "hours": "09:00-16:00", "timezone": "Europe/Oslo"}),
                entry("blacked-out", blackout=["2026-12-20..2027-01-03"]),
                entry("plain"),
            ]
        }
    )
    dags = parse_dags(monkeypatch).dags

    with_wait = [*STEPS[:1], "wait_window", *STEPS[1:]]
    for dag_id in ("rotate_kosli_key_windowed", "rotate_kosli_key_blacked-out"):
        dag = dags[dag_id]
        assert step_order(dag) == with_wait
        wait = dag.get_task("wait_window")
        assert type(wait).__name__ == "WaitForRotationWindow"
        assert "any_step_failed" in wait.downstream_task_ids, "a failed wait fails the run"
        assert wait.retries >= 1
    assert "| scheduled rotations start | tue 09:00-16:00 Europe/Oslo |" in dags["rotate_kosli_key_windowed"].doc_md
    assert step_order(dags["rotate_kosli_key_plain"]) == STEPS
    assert "wait_window" not in dags["rotate_kosli_key_plain"].task_ids


def test_a_pool_named_in_the_inventory_holds_every_task_of_the_key(no_network, inventory, monkeypatch):
    inventory({"keys": [entry("ci-bot", pool="kosli_rotation")]})

    dag = parse_dags(monkeypatch).dags["rotate_kosli_key_ci-bot"]

    assert {task.pool for task in dag.tasks} == {"kosli_rotation"}
    assert dag.doc_md and "ci-bot" in dag.doc_md


def test_a_broken_entry_does_not_hide_the_others(no_network, inventory, monkeypatch):
    path = inventory({"keys": [entry("good"), entry("bad", grace_hours=9000), entry("also-good")]})
    bag = parse_dags(monkeypatch)

    assert bag.import_errors == {}
    assert {"rotate_kosli_key_good", "rotate_kosli_key_also-good"} <= set(bag.dags)
    broken = bag.dags["rotate_kosli_key_bad"]
    assert [t.task_id for t in broken.tasks] == ["inventory_error"]
    assert f"{path}: keys[1] (bad): grace_hours" in broken.doc_md


def test_an_unreadable_inventory_is_an_import_error_naming_the_file(no_network, tmp_path, monkeypatch):
    path = tmp_path / "inventory.yaml"
    path.write_text("keys: [\n  - name: x\n   org: broken indentation\n")
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(path))

    errors = parse_dags(monkeypatch).import_errors

    assert errors, "the broken inventory must show as an import error"
    assert all(f"{path}: not valid YAML" in error for error in errors.values()), errors


ROLLBACK_STEPS = [
    "check_rollback_possible",
    "restore_old_key_in_vault",
    "consumers.fan_out_old_key",
    "consumers.verify_consumers",
    "all_consumers_verified",
    "revoke_new_key",
    "confirm_new_key_dead",
    "finalize_rollback",
]


def test_the_staleness_dag_checks_each_key_of_the_inventory_daily_in_one_mapped_task(
    no_network, inventory, monkeypatch
):
    inventory({"keys": [entry("ci-bot"), entry("bad", grace_hours=9000), entry("deploy-bot")]})
    bag = parse_dags(monkeypatch)

    assert bag.import_errors == {}
    dag = bag.dags["kosli_key_staleness"]
    (check,) = dag.tasks
    assert check.task_id == "check_that_the_key_is_fresh"
    assert check.map_index_template == "{{ key_name }}", "labelled with the key's name in the grid"
    assert check.op_kwargs_expand_input.value == {"name": ["ci-bot", "deploy-bot", "bad"]}, "invalid entries too"
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 7 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.doc_md and "past its `max_age_days`" in dag.doc_md


def test_a_rollback_dag_per_key_is_one_task_per_step_in_order_and_manual_only(no_network, inventory, monkeypatch):
    inventory({"keys": [entry("ci-bot", grace_hours=48), entry("bad", grace_hours=9000)]})
    bag = parse_dags(monkeypatch)

    assert "rollback_kosli_key_bad" not in bag.dags, "no rollback for an entry that cannot be rotated"
    dag = bag.dags["rollback_kosli_key_ci-bot"]
    order, task = [], dag.get_task("check_rollback_possible")
    while task is not None:
        order.append(task.task_id)
        downstream = [t for t in task.downstream_list if t.task_id != "any_step_failed"]
        assert len(downstream) <= 1, f"{task.task_id} fans out to {downstream}"
        task = downstream[0] if downstream else None
    assert order == ROLLBACK_STEPS
    assert set(dag.get_task("any_step_failed").upstream_task_ids) == set(ROLLBACK_STEPS)
    assert dag.get_task("all_consumers_verified").trigger_rule == "none_skipped", "it names unverified consumers"
    assert dag.get_task("revoke_new_key").trigger_rule == "all_success", "never revokes after a failed step of its run"
    assert dag.get_task("consumers.fan_out_old_key").map_index_template
    assert type(dag.timetable).__name__ == "NullTimetable", "manual runs only"
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    reason = dag.params.get_param("reason")
    assert not reason.has_value and reason.schema["type"] == "string" and reason.schema["minLength"] == 1
    assert dag.params.get_param("grace_hours").schema == {"const": 48}, "fixed, hidden from the form"
    assert {name for name, param in dag.params.items() if "const" not in param.schema} == {"reason", "dry_run"}
    assert dag.doc_md and "ci-bot" in dag.doc_md


def test_an_unreadable_inventory_is_reported_once_and_builds_no_dag_that_could_act_on_a_guess(
    no_network, tmp_path, monkeypatch
):
    path = tmp_path / "inventory.yaml"
    path.write_text("keys: [\n  - name: x\n")
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(path))

    bag = parse_dags(monkeypatch)

    assert [Path(file).name for file in bag.import_errors] == ["kosli_key_rotation.py"], "reported once"
    assert bag.dags == {}, "no rotation, rollback or staleness DAG is built from half an inventory"


def test_the_dags_folder_holds_one_short_file_that_only_builds_the_dags():
    """What a user copies into their dags/: the steps live in the installed provider, not in the DAG file."""
    (dag_file,) = (REPO / "dags").glob("*.py")
    code = [line for line in dag_file.read_text().split('"""')[2].splitlines() if line.strip()]
    assert code == ["from kosli_rotation.dags import build_dags", "globals().update(build_dags())"]


def test_a_large_inventory_can_be_built_in_two_files_that_together_hold_the_same_dags(
    no_network, inventory, tmp_path, monkeypatch
):
    """Hundreds of keys: each file parses about half the DAGs and stays under Airflow's import timeout."""
    from airflow.dag_processing.dagbag import DagBag

    inventory({"keys": [entry("ci-bot"), entry("deploy-bot")]})
    folder = tmp_path / "dags"
    folder.mkdir()
    # Airflow's safe mode parses only files that say "airflow" and "dag": the docstring does.
    build = '"""Airflow DAGs."""\nimport kosli_rotation.dags as d\nglobals().update(d.build_dags(include={!r}))\n'
    (folder / "kosli_rotations.py").write_text(build.format(["rotation", "staleness"]))
    (folder / "kosli_rollbacks.py").write_text(build.format(["rollback"]))

    split = DagBag(dag_folder=str(folder))

    assert split.import_errors == {}
    assert set(split.dags) == set(parse_dags(monkeypatch).dags)
    assert {Path(dag.fileloc).name for dag_id, dag in split.dags.items() if dag_id.startswith("rollback_")} == {
        "kosli_rollbacks.py"
    }, "each DAG belongs to the file that built it (what the worker parses to run its tasks)"


def test_an_unknown_family_is_an_import_error_naming_the_choices(no_network, inventory, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    inventory({"keys": [entry("ci-bot")]})
    folder = tmp_path / "dags"
    folder.mkdir()
    code = '"""Airflow DAGs."""\nfrom kosli_rotation.dags import build_dags\nbuild_dags(include=["rotations"])\n'
    (folder / "kosli.py").write_text(code)

    (error,) = DagBag(dag_folder=str(folder)).import_errors.values()

    assert "unknown ['rotations']; choose from ['rollback', 'rotation', 'staleness']" in error


def test_every_task_that_returns_a_mapping_pushes_its_keys_as_airflow_would_infer(no_network, inventory, monkeypatch):
    """Our tasks state ``multiple_outputs`` (inferring it costs parse time): it must be what Airflow infers from the
    return annotation, or a downstream ``xcom_pull(key=...)`` of a step's result would find nothing."""
    import typing
    from collections.abc import Mapping

    attested = entry("ci-bot", attest={"flow": "key-rotations", "trail": "{name}-{date}"})
    inventory({"keys": [attested, {"name": "broken"}]})
    bag = parse_dags(monkeypatch)
    assert bag.import_errors == {}
    checked = set()
    for dag in bag.dags.values():
        for task in dag.tasks:
            if task.is_mapped or not hasattr(task, "python_callable"):
                continue  # the staleness check's one mapped task; the sensors
            returns = typing.get_type_hints(task.python_callable).get("return")
            origin = typing.get_origin(returns) or returns
            inferred = isinstance(origin, type) and issubclass(origin, Mapping)
            assert task.multiple_outputs is inferred, f"{dag.dag_id}.{task.task_id}"
            checked.add(task.task_id)
    assert {"preflight", "consumers.fan_out", "attest", "any_step_failed", "inventory_error"} <= checked
