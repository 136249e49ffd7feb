"""SIGKILL the real DAG at a precise point, then recover it the way an operator would: the crash matrix's tools.

The DAG runs in a subprocess, ``airflow dags test``, which runs every task in that one process: killing the process
group with SIGKILL kills the running task without any Python cleanup, ``finally`` or failure callback. To kill at
an exact point, a fault rule *holds* a request the running step makes, in the Kosli sandbox or in a
:class:`~sandbox.forward_proxy.ForwardProxy` in front of OpenBao. Once the request is held the process is killed,
then the hold is released: the request is dropped unhandled, it never happened. The sandboxes, OpenBao and its
proxy live in the pytest process (OpenBao in its own), so they outlive the kill.

Recovery is a rerun of the *same* DAG run (same run id, so the same owner of the rotation lock), what an Airflow
retry of the killed task or a *Clear* in the UI amounts to for the rotation. ``airflow dags test`` always makes a
new run id (``manual__<now>``), so the rerun calls ``dag.test()``, what that command runs, in-process with the
killed run's ``run_after`` and logical date: the run id is derived from them. Every task of the run runs again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from sandbox.forward_proxy import ForwardProxy
from sandbox.server import FaultRule, Request, SandboxServer
from tests.support.scenario import CONSUMER_VAULT_PATH, ORG, RECORD_PATH, SERVICE_ACCOUNT, Scenario

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: How long a run may take to reach its kill point.
REACH_TIMEOUT = 120.0


def bearer(request: Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def posted(request: Request, *fragments: str) -> bool:
    """The JSON body holds every fragment (``json.dumps`` spacing, as hvac and requests send it)."""
    return all(fragment.encode() in request.body for fragment in fragments)


class DagProcess:
    """``airflow dags test`` of the scenario's DAG in its own process group; its output goes to a file."""

    def __init__(self, dag_id: str, conf: dict[str, Any], env: dict[str, str], output: Path) -> None:
        self.output = output
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the kill reaches whatever it started, nothing else
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the task."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the DAG run took more than {timeout} s:\n{self.tail()}") from None

    def says(self, text: str) -> bool:
        return text in self.output.read_text(errors="replace")

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class KilledRun:
    """What is left of a killed run: enough to rerun the same run."""

    run_id: str
    logical_date: datetime
    run_after: datetime
    conf: dict[str, Any]
    output: Path


class CrashLab:
    """The scenario's world with OpenBao behind a forwarding proxy, and the means to kill the DAG in it."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.vault_proxy = ForwardProxy(scenario.bao.url).start()
        self.vault_connection = self._through_proxy(scenario.bao.airflow_connection(scenario.mount))
        self._runs = 0

    def _through_proxy(self, connection: str) -> str:
        document = json.loads(connection)
        host, port = self.vault_proxy.url.removeprefix("http://").split(":")
        return json.dumps({**document, "host": host, "port": int(port)})

    def stop(self) -> None:
        self.vault_proxy.stop()

    @property
    def env(self) -> dict[str, str]:
        """The environment of the pytest process (Airflow home, connections, inventory), Vault through the proxy."""
        return {**os.environ, "AIRFLOW_CONN_VAULT_DEFAULT": self.vault_connection}

    # -- traps ------------------------------------------------------------------------------------------

    def vault_path(self, relative: str = "") -> str:
        return rf"^/v1/{self.scenario.mount}/data/{RECORD_PATH}{relative}$"

    def hold_record_write(self, *fragments: str) -> FaultRule:
        """Hold the first write of the key's Vault record whose body holds every fragment."""
        return self.vault_proxy.faults.add(
            self.vault_path(), method="POST", action="hold", when=lambda request: posted(request, *fragments)
        )

    def hold_vault_write(self, path: str, *fragments: str) -> FaultRule:
        return self.vault_proxy.faults.add(
            path, method="POST", action="hold", when=lambda request: posted(request, *fragments)
        )

    def hold_consumer_write(self) -> FaultRule:
        return self.hold_vault_write(rf"^/v1/{self.scenario.mount}/data/{CONSUMER_VAULT_PATH}$")

    def hold_kosli(self, path: str, method: str, when: Callable[[Request], bool] | None = None) -> FaultRule:
        return self.scenario.kosli.faults.add(path, method=method, action="hold", when=when)

    @staticmethod
    def tap(server: SandboxServer, path: str, method: str, when: Callable[[Request], bool]) -> threading.Event:
        """An event set once a matching request passes ``server`` (the request itself is untouched)."""
        seen = threading.Event()

        def observe(request: Request) -> bool:
            if when(request):
                seen.set()
            return False  # never matches: an observer only

        server.faults.add(path, method=method, status=599, times=0, when=observe)
        return seen

    def release_everything(self) -> None:
        """Drop every held request (it never happened) and remove every rule."""
        self.vault_proxy.faults.clear()
        self.scenario.kosli.faults.clear()

    # -- runs -------------------------------------------------------------------------------------------

    def start(self, **conf: Any) -> tuple[DagProcess, dict[str, Any]]:
        conf.setdefault("reason", "crash matrix")
        self._runs += 1
        output = self.workdir / f"dags-test-{self._runs}.log"
        return DagProcess(self.scenario.dag_id, conf, self.env, output), conf

    def run_and_kill(self, moment: Callable[[DagProcess], bool], **conf: Any) -> KilledRun:
        """Start a run, SIGKILL it at ``moment``, then drop whatever request was held."""
        process, conf = self.start(**conf)
        deadline = time.monotonic() + REACH_TIMEOUT
        try:
            while not moment(process):
                if not process.alive:
                    raise AssertionError(f"the run ended before the kill point:\n{process.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the kill point was not reached in {REACH_TIMEOUT} s:\n{process.tail()}")
                time.sleep(0.05)
            process.kill()
        finally:
            if process.alive:
                process.kill()
            self.release_everything()
        return self._last_run(conf, process.output)

    def _last_run(self, conf: dict[str, Any], output: Path) -> KilledRun:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            run = session.query(DagRun).filter_by(dag_id=self.scenario.dag_id).order_by(DagRun.id.desc()).limit(1).one()
            return KilledRun(run.run_id, run.logical_date, run.run_after, conf, output)

    def rerun(self, killed: KilledRun) -> Any:
        """Run the killed run again, as the same run (see the module docstring); returns the DagRun."""
        run = self.scenario.dag().test(
            run_after=killed.run_after, logical_date=killed.logical_date, run_conf=killed.conf
        )
        assert run.run_id == killed.run_id, (run.run_id, killed.run_id)
        return run

    # -- the world, seen through the sandboxes and Vault ----------------------------------------------------

    def kosli_key_ids(self) -> list[str]:
        """The service account's keys as Kosli lists them to an admin."""
        answer = requests.get(
            f"{self.scenario.kosli.url}/api/v2/service-accounts/{ORG}/{SERVICE_ACCOUNT}/api-keys",
            headers={"Authorization": f"Bearer {self.scenario.admin_key}"},
            timeout=5,
        )
        answer.raise_for_status()
        return sorted(key["id"] for key in answer.json())
