"""A small real Airflow deployment for the tests that need one: API server, scheduler (LocalExecutor), triggerer and
DAG processor, each its own process, on their own SQLite database, the repo's DAGs and the scenario's inventory.
Another executor, metadata database or extra components (a Celery worker) come through ``env`` and ``components``
(``tests/support/celery_stack.py``).

``dag.test()`` runs a deferred task's trigger inline, in the task's own process, and makes only manual runs; proving
that a scheduled run waits *deferred, holding no worker slot* needs the real scheduler making the run from the DAG's
cron and the real triggerer running the trigger. The test drives and inspects it through the REST API, as a user
would (``demo.airflow_api``); the components' logs go to files in its home, shown when something does not happen.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any, Self

from demo.airflow_api import AirflowApi
from demo.processes import LOOPBACK, ManagedProcess, Supervisor, free_ports, group_members, wait_for
from tests.support.attacks import other_deployment

AIRFLOW = str(Path(sys.executable).parent / "airflow")
USER = "admin"
COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")


class Deployment:
    """Start with ``with Deployment(home, env) as airflow:``; everything it started is stopped on exit."""

    def __init__(
        self, home: Path, components: tuple[str, ...] = COMPONENTS, airflow: str = AIRFLOW, **env: str
    ) -> None:
        """``airflow``: the command the components run as (default: this venv's); ``env`` overrides the rest."""
        home.mkdir(parents=True, exist_ok=True)
        self.airflow = airflow
        api, worker_logs, trigger_logs, health = free_ports(4)
        self.home = home
        self.url = f"http://{LOOPBACK}:{api}"
        password_file = home / "passwords.json"
        password = secrets.token_urlsafe(12)
        password_file.write_text(json.dumps({USER: password}))
        self.components = components
        settings = dict(
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(password_file),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__API__HOST=LOOPBACK,
            AIRFLOW__API__PORT=str(api),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(worker_logs),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(trigger_logs),
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(health),
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
        )
        self.env = other_deployment(home, airflow, **{**settings, **env})
        self.api = AirflowApi(self.url, USER, password)
        self.supervisor = Supervisor()
        self.processes: list[ManagedProcess] = []

    def __enter__(self) -> Self:
        try:
            for component in self.components:
                self.start_component(component)
            wait_for("the API server to answer", self._healthy, timeout=180, watch=self.processes, hint=self.logs())
            self.api.log_in()
        except BaseException:
            self.supervisor.stop_all()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.supervisor.stop_all()

    def start_component(self, component: str) -> ManagedProcess:
        """Start ``airflow <component>`` (words split on spaces, e.g. ``celery worker``), its log in the home."""
        process = self.supervisor.start(
            f"airflow {component}",
            [self.airflow, *component.split()],
            log=self.home / f"{component.replace(' ', '-')}.log",
            env=self.env,
            cwd=self.home,
        )
        self.processes.append(process)
        return process

    def _healthy(self) -> bool | None:
        return True if self.api.healthy() else None

    def logs(self) -> str:
        return f"Logs: {', '.join(str(process.log) for process in self.processes)}"

    def wait(self, what: str, check: Any, timeout: float = 180) -> Any:
        """Poll ``check`` (None or False: not yet) while every component still runs."""
        return wait_for(what, lambda: check() or None, timeout=timeout, watch=self.processes, hint=self.logs())

    def task_states(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        return {ti["task_id"]: ti for ti in self.api.task_instances(dag_id, run_id)}

    def pool(self, name: str = "default_pool") -> dict[str, Any]:
        return self.api._call("GET", f"/pools/{name}")

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.api._call("GET", f"/dags/{dag_id}/details")

    def busy_workers(self) -> list[str]:
        """The titles of this deployment's LocalExecutor workers that run a task (an idle one says ``<idle>``;
        a busy one names its task instance)."""
        scheduler = next(process for process in self.processes if process.name == "airflow scheduler")
        titles = []
        for pid in group_members(scheduler.popen.pid):
            try:
                titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
            except OSError:
                continue  # it ended while we looked
        return [title for title in titles if "LocalExecutor:" in title and "<idle>" not in title]

    def connection_forms(self) -> dict[str, dict[str, Any]]:
        """What the UI's "Add Connection" form offers, by connection type (the UI's own endpoint, not /api/v2)."""
        response = self.api._session.get(f"{self.url}/ui/connections/hook_meta", timeout=30)
        response.raise_for_status()
        return {form["connection_type"]: form for form in response.json()}
