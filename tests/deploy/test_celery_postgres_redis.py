"""Acceptance: the rotation on a distributed Airflow. CeleryExecutor with Redis as its broker, PostgreSQL as the
metadata database and result backend (both from Debian packages, ``tests/support/celery_stack.py``), and every
component its own process: api-server, scheduler, dag-processor, triggerer and a Celery worker
(``tests/support/deployment.py``), driven through the REST API as a user would.

One deployment for the module, three runs of the real DAG on the same key: ``rotate`` (the grace wait deferred to
the triggerer), ``replace``, then a ``replace`` whose Celery worker is SIGKILLed while a consumer's fan-out is
writing (the write held in a proxy in front of OpenBao, ``tests/support/crash.py``) and started again: the
scheduler notices the dead task by its missing heartbeat, Airflow retries it on the new worker, the run succeeds.
Each run must end with one live key, held by Vault and every consumer, and the old key dead (401 in the Kosli
sandbox); at the end no key is in the Postgres database, the task logs or any component's log.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from demo.hygiene import rotation_task_logs
from demo.processes import ManagedProcess, group_members
from sandbox.secret_scan import scan_files
from tests.support.celery_stack import TASK_HEARTBEAT_TIMEOUT, CeleryStack
from tests.support.crash import CrashLab
from tests.support.deployment import COMPONENTS, Deployment
from tests.support.scenario import Scenario, start_kosli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

WORKER = "celery worker"
#: Real seconds in a Kosli hour: a 'rotate' asking for a 1 h grace waits this long after Kosli's rotate; long
#: enough that the run reaches its grace wait (fan-out, verification, each a Celery task) before it ends.
KOSLI_HOUR = 45.0
FAN_OUT = "consumers.fan_out"


@dataclass
class Celery:
    """The module's world: the scenario's key and consumers, the crash lab's Vault proxy, the deployment."""

    scenario: Scenario
    lab: CrashLab
    stack: CeleryStack
    airflow: Deployment
    keys: list[str] = field(default_factory=list)  # every value the key had, oldest first
    runs: list[str] = field(default_factory=list)

    def trigger(self, **conf: Any) -> str:
        # force: the runs follow each other within the hour that manual rotations otherwise keep between them
        conf = {"reason": "celery deployment test", "force": True, **conf}
        run_id = self.airflow.api.trigger(self.scenario.dag_id, conf)
        self.runs.append(run_id)
        return run_id

    def finish(self, run_id: str, timeout: float = 300) -> dict[str, Any]:
        """Wait for the run to end; return its task instances by ``task_id[map_index]``."""
        run = self.airflow.wait(
            f"run {run_id} to finish",
            lambda: (
                (r := self.airflow.api.dag_run(self.scenario.dag_id, run_id))["state"] in ("success", "failed") and r
            ),
            timeout=timeout,
        )
        tasks = self.task_instances(run_id)
        assert run["state"] == "success", {name: ti["state"] for name, ti in tasks.items()}
        return tasks

    def task_instances(self, run_id: str) -> dict[str, Any]:
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""): ti
            for ti in self.airflow.api.task_instances(self.scenario.dag_id, run_id)
        }

    def assert_one_live_key(self) -> str:
        """One live key in Kosli, in Vault and in every consumer; the one before it answers 401. Returns it.

        Keys are compared by label (``old``, ``new``, ``other``), so a failing assertion never prints one."""
        scenario, old = self.scenario, self.keys[-1]
        new = scenario.vault_record()["key"]

        def label(value: str | None) -> str:
            return "new" if value == new else "old" if value == old else "other"

        assert label(new) == "new" and label(old) == "old", "the key in Vault was not rotated"
        assert [label(secret) for secret in scenario.live_secrets()] == ["new"], "Kosli: one live key, Vault's"
        assert {name: label(value) for name, value in scenario.consumer_values().items()} == {
            "reporter-vault": "new",
            "release-cli": "new",
        }
        assert scenario.probe(new) == 200
        assert scenario.probe(old) == 401, "the old key is dead"
        self.keys.append(new)
        scenario.old_key = new  # the next run rotates this one
        return new

    def worker(self) -> ManagedProcess:
        return next(p for p in self.airflow.processes if p.name == f"airflow {WORKER}" and p.exit_code() is None)

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (its pool and the task processes it runs): no cleanup runs."""
        worker = self.worker()
        os.killpg(worker.popen.pid, signal.SIGKILL)
        worker.popen.wait(timeout=30)
        deadline = time.monotonic() + 30
        while group_members(worker.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.airflow.processes.remove(worker)  # dead on purpose: no longer watched


@pytest.fixture(scope="module")
def world(airflow_db: Path, openbao: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    """The scenario's key (OpenBao, Kosli sandbox, two consumers) and a Celery deployment running its DAG."""
    workdir = tmp_path_factory.mktemp("celery")
    with pytest.MonkeyPatch.context() as env:
        # What the function-scoped ``scenario`` fixture does, once for the module: Scenario.setup sets these.
        env.setenv("KOSLI_ROTATION_INVENTORY", os.environ["KOSLI_ROTATION_INVENTORY"])
        env.setenv("AIRFLOW_CONN_KOSLI_DEFAULT", "")
        mount = openbao.new_kv_mount()
        kosli, admin_key, (key_id, key) = start_kosli(hour_seconds=KOSLI_HOUR)
        try:
            scenario = Scenario(kosli, openbao, mount, workdir, admin_key, key_id, key).setup()
            # A step killed with its worker is retried: that is Airflow's doing, with the inventory's retries.
            scenario.write_inventory(retries=2, retry_delay_seconds=1)
            lab = CrashLab(scenario, workdir)
            env.setenv("AIRFLOW_CONN_VAULT_DEFAULT", lab.vault_connection)  # Vault through the lab's proxy
            try:
                with (
                    CeleryStack(workdir / "stack") as stack,
                    Deployment(workdir / "airflow", (*COMPONENTS, WORKER), **stack.airflow_env()) as airflow,
                ):
                    airflow.wait("the DAG to be parsed", lambda: scenario.dag_id in airflow.api.dag_ids())
                    airflow.api.unpause(scenario.dag_id)
                    yield Celery(scenario, lab, stack, airflow, keys=[key])
            finally:
                lab.stop()
        finally:
            kosli.stop()


def test_a_rotate_on_celery_waits_out_the_grace_and_leaves_one_live_key(world: Celery) -> None:
    run_id = world.trigger(strategy="rotate", grace_hours=1)
    tasks = world.finish(run_id)
    assert tasks["wait_grace"]["state"] == "success"
    log = "\n".join(world.airflow.api.task_log(world.scenario.dag_id, run_id, tasks["wait_grace"]))
    assert "Deferring until the grace period ends" in log and "Grace period over" in log, "the triggerer waited"
    assert {tasks[f"{FAN_OUT}[{index}]"]["state"] for index in (0, 1)} == {"success"}, "two consumer batches"
    world.assert_one_live_key()


def test_a_replace_on_celery_leaves_one_live_key(world: Celery) -> None:
    world.finish(world.trigger(strategy="replace"))
    world.assert_one_live_key()


def test_a_celery_worker_killed_during_fan_out_is_replaced_and_the_run_still_ends_with_one_live_key(
    world: Celery,
) -> None:
    held = world.lab.hold_consumer_write()  # the vault_kv consumer's write of the new key waits in the proxy
    run_id = world.trigger(strategy="replace")
    world.airflow.wait(
        "a fan_out task to be running with its consumer write held",
        lambda: (
            held.wait_held(0)
            and any(ti["state"] == "running" for name, ti in world.task_instances(run_id).items() if FAN_OUT in name)
        ),
        timeout=240,
    )
    world.kill_worker()
    world.lab.release_everything()  # the held write is dropped: it never reached OpenBao
    world.airflow.start_component(WORKER)

    tasks = world.finish(run_id, timeout=300 + 3 * TASK_HEARTBEAT_TIMEOUT)
    retried = [name for name, ti in tasks.items() if FAN_OUT in name and ti["try_number"] > 1]
    assert retried, "the killed fan_out ran again, on the new worker"
    world.assert_one_live_key()


def test_no_key_is_in_the_postgres_database_or_any_log(world: Celery) -> None:
    """Every value the key had, and the Kosli admin key, plain and base64: nowhere Airflow keeps things."""
    assert len(world.runs) == 3 and len(world.keys) == 4, "the three rotations ran first"
    keys = [*world.keys, world.scenario.admin_key]
    airflow = world.airflow
    # So that "no hit" means something: every task that ran wrote its log here, and the scanners do find what is
    # there (the CLI consumer's config holds the live key; the database holds the run ids).
    runs = [SimpleNamespace(key=SimpleNamespace(dag_id=world.scenario.dag_id), run_id=run) for run in world.runs]
    assert rotation_task_logs(airflow.api, airflow.home / "logs", runs) > 0  # type: ignore[arg-type]
    cli_config = world.scenario.cli_config_path
    assert scan_files([cli_config], [world.keys[-1]])[0] == [str(cli_config)]
    assert "dag_run.run_id" in world.stack.scan(world.runs)[0]

    db_hits, tables = world.stack.scan(keys)
    file_hits, files = scan_files([airflow.home, world.stack.workdir], keys)
    assert "task_instance" in tables and "xcom" in tables and files > 10
    assert db_hits == [], f"a key is in these columns of the Postgres metadata database: {db_hits}"
    assert file_hits == [], f"a key is in these files: {file_hits}"
