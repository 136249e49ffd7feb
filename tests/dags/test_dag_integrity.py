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
    assert set(dag.params.keys()) == {"reason", "strategy", "grace_hours", "force", "dry_run"}
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

    assert len(errors) == 1
    assert f"{path}: not valid YAML" in next(iter(errors.values()))
