"""Acceptance: the provider installs into someone else's Airflow and rotates a key there.

A new venv that has never seen this repo gets the wheel with the repo's constraints (tests/support/fresh_airflow.py);
its DAG folder holds only the thin DAG file and an inventory, its plugins folder is empty. Its own ``airflow`` lists
the provider, the ``kosli`` connection type and the "Key rotation" plugin, and its components (API server, scheduler,
DAG processor, triggerer: tests/support/deployment.py) run a manual ``rotate`` whose ``wait_grace`` defers to the
real triggerer until Kosli's grace period is over. The end state is read from the Kosli sandbox and Vault.

The sandboxes (Kosli, OpenBao, the two consumers of tests/support/scenario.py) run in this process: they stand in
for the hosted services, not for the product. First run on a machine: the wheelhouse is built from the package
index (about a minute more); the venv is new every run.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.conftest import DISTRIBUTION
from tests.support.deployment import Deployment
from tests.support.fresh_airflow import FreshAirflow, dag_folder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
#: Kosli hours of the grace period: 1 h lasts 2 s in the sandbox (tests/conftest.py ``kosli``), so about a minute,
#: long enough that it is not over before ``wait_grace`` starts even on a loaded machine.
GRACE_HOURS = 30

WHERE_FROM = """
import json, sys
from importlib.metadata import distribution
import kosli_rotation
direct_url = distribution("airflow-provider-kosli-rotation").read_text("direct_url.json")
print(json.dumps({"library": kosli_rotation.__file__, "path": sys.path, "direct_url": json.loads(direct_url or "{}")}))
"""


@pytest.fixture(scope="module")
def fresh(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> FreshAirflow:
    return FreshAirflow.create(wheel, tmp_path_factory.mktemp("someone-elses") / "venv")


def test_the_fresh_venv_has_the_provider_from_the_wheel_and_nothing_of_the_repo(fresh, wheel, tmp_path):
    dags, plugins = dag_folder(tmp_path, REPO / "inventory.yaml")
    env = fresh.env(dags, plugins, KOSLI_ROTATION_INVENTORY=str(dags / "inventory.yaml"))
    where = subprocess.run(
        [fresh.python, "-c", WHERE_FROM], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}
    )
    assert where.returncode == 0, where.stderr[-3000:]
    found = json.loads(where.stdout)
    assert found["library"].startswith(str(fresh.venv)), found["library"]
    ours = (str(REPO), sys.prefix, str(Path(importlib.import_module("kosli_rotation").__file__).parents[1]))
    assert not [entry for entry in found["path"] if entry.startswith(ours)], found["path"]
    assert found["direct_url"].get("url", "").endswith(wheel.name), "installed from the wheel file"
    assert not found["direct_url"].get("dir_info", {}).get("editable"), "not an editable install"

    version = importlib.import_module("kosli_rotation").__version__
    assert fresh.json(tmp_path, env, "providers", "get", DISTRIBUTION) == [
        {"Provider": DISTRIBUTION, "Version": version}
    ]
    hooks = {hook["connection_type"]: hook for hook in fresh.json(tmp_path, env, "providers", "hooks")}
    assert hooks["kosli"]["class"] == "kosli_rotation.kosli_hook.KosliHook"
    assert hooks["kosli"]["package_name"] == DISTRIBUTION
    (plugin,) = [entry for entry in fresh.json(tmp_path, env, "plugins") if entry["name"] == "kosli_key_rotation"]
    assert plugin["source"].startswith(f"{DISTRIBUTION}=="), "from the distribution's entry point, not plugins/"
    assert [view["name"] for view in plugin["external_views"]] == ["Key rotation"]
    assert not list(plugins.iterdir())


def picked_up(airflow: Deployment, dag_id: str, run_id: str) -> dict[str, Any] | None:
    """``wait_grace`` while it is deferred and its trigger is assigned to a triggerer; None before."""
    ti = airflow.task_states(dag_id, run_id).get("wait_grace", {})
    trigger = ti.get("trigger") or {}
    return ti if ti.get("state") == "deferred" and trigger.get("triggerer_id") is not None else None


def test_a_rotate_in_the_fresh_airflow_defers_to_its_triggerer_and_ends_with_only_the_new_key_alive(
    fresh, scenario, tmp_path
):
    dags, plugins = dag_folder(tmp_path / "user", scenario.workdir / "inventory.yaml")
    kosli = {"conn_type": "kosli", "host": scenario.kosli.url, "password": scenario.admin_key}
    env = fresh.env(
        dags,
        plugins,
        KOSLI_ROTATION_INVENTORY=str(dags / "inventory.yaml"),
        AIRFLOW_CONN_KOSLI_DEFAULT=json.dumps(kosli),  # the provider's own connection type
    )
    dag_id = scenario.dag_id
    with Deployment(tmp_path / "airflow", airflow=fresh.airflow, **env) as airflow:
        airflow.wait("the DAG to be parsed", lambda: dag_id in airflow.api.dag_ids())
        kosli_form = airflow.connection_forms()["kosli"]
        run_id = airflow.api.trigger(
            dag_id, {"reason": "installed elsewhere", "strategy": "rotate", "force": True, "grace_hours": GRACE_HOURS}
        )
        airflow.api.unpause(dag_id)
        deferred = airflow.wait(
            "wait_grace to defer to the triggerer", lambda: picked_up(airflow, dag_id, run_id), timeout=300
        )
        new_key = scenario.vault_record()["key"]
        during_grace = scenario.probe(scenario.old_key)
        finished = airflow.wait(
            "the run to finish",
            lambda: (r := airflow.api.dag_run(dag_id, run_id))["state"] in ("success", "failed") and r,
            timeout=420,
        )
        tasks = airflow.task_states(dag_id, run_id)
        grace_log = "\n".join(airflow.api.task_log(dag_id, run_id, tasks["wait_grace"]))

    assert finished["state"] == "success", {task: ti["state"] for task, ti in tasks.items()}
    assert deferred["trigger"]["classpath"] == "kosli_rotation.triggers.GraceEndTrigger"
    assert "Deferring until the grace period ends" in grace_log and "Grace period over" in grace_log
    assert (kosli_form["hook_name"], kosli_form["standard_fields"]["host"]["title"]) == ("Kosli", "Kosli host")
    assert during_grace == 200, "the old key works until the grace period is over"
    # Compared, never shown: a failing assertion must not print a key.
    assert new_key != scenario.old_key, "Vault holds a new key"
    consumers = scenario.consumer_values()
    assert [name for name, value in consumers.items() if value != new_key] == [], "every consumer holds the new key"
    live = scenario.live_secrets()
    assert (len(live), new_key in live) == (1, True), "one live key in Kosli: the new one"
    assert scenario.probe(new_key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert [entry["run_id"] for entry in scenario.audit_entries()] == [run_id], "one rotation, by the manual run"
