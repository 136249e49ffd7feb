"""The few calls of Airflow's REST API (v2) the demo makes: log in, find, unpause, trigger and watch DAGs.

The demo drives Airflow the way a user's script would, through the public API, never its database.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

from demo.processes import DemoError

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# A loaded API server (two test workers and a whole Airflow on two cores) can take longer than a timeout to answer.
IDEMPOTENT_ATTEMPTS = 4


class AirflowApi:
    """A logged-in session against the API server; logs in again when the token expires."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url
        self._credentials = {"username": username, "password": password}
        self._session = requests.Session()

    def healthy(self) -> bool:
        """The API server answers (the health endpoint needs no login)."""
        return requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200

    def log_in(self) -> None:
        response = requests.post(f"{self.url}/auth/token", json=self._credentials, timeout=10)
        if response.status_code not in (200, 201):
            raise DemoError(f"logging in to Airflow as {self._credentials['username']} failed: {_describe(response)}")
        self._session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 30)
        response = self._send(method, path, **kwargs)
        if response.status_code == 401:
            self.log_in()
            response = self._send(method, path, **kwargs)
        if not response.ok:
            raise DemoError(f"Airflow API {method} {path} failed: {_describe(response)}")
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request; a read (or the idempotent unpause) that times out on a loaded API server is sent again.

        A trigger (POST) is never resent: if the first one took effect, a second would start a second run.
        """
        attempts = 1 if method == "POST" else IDEMPOTENT_ATTEMPTS
        for attempt in range(1, attempts):
            try:
                return self._session.request(method, f"{self.url}/api/v2{path}", **kwargs)
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(2 * attempt)
        try:
            return self._session.request(method, f"{self.url}/api/v2{path}", **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise DemoError(f"Airflow API {method} {path} did not answer in {attempts} tries: {error}") from error

    def dag_ids(self) -> set[str]:
        return {dag["dag_id"] for dag in self._call("GET", "/dags", params={"limit": 100})["dags"]}

    def import_errors(self) -> list[str]:
        errors = self._call("GET", "/importErrors")["import_errors"]
        return [f"{error['filename']}: {error['stack_trace'].strip().splitlines()[-1]}" for error in errors]

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{quote(dag_id)}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a manual run now (no logical date, as the UI does), its reason as the run's note; return its id."""
        body = {"logical_date": None, "conf": conf, "note": conf.get("reason")}
        run = self._call("POST", f"/dags/{quote(dag_id)}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/dags/{quote(dag_id)}/dagRuns", params={"limit": 100})["dag_runs"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self._call("GET", path, params={"limit": 100})["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task: dict[str, Any]) -> list[str]:
        """The lines of a task instance's log for its latest try (``task``: an entry of ``task_instances``)."""
        content = self._log_content(dag_id, run_id, task)
        if isinstance(content, str):
            return content.splitlines()
        return [_log_line(line) for line in content]

    def task_log_entries(self, dag_id: str, run_id: str, task: dict[str, Any]) -> list[dict[str, Any]]:
        """The structured entries of that log (``event``, ``timestamp``, ``level``...); a plain-text log gives
        one entry per line, with its text as the event and no timestamp."""
        content = self._log_content(dag_id, run_id, task)
        if isinstance(content, str):
            return [{"event": line} for line in content.splitlines()]
        return [line if isinstance(line, dict) else {"event": str(line)} for line in content]

    def _log_content(self, dag_id: str, run_id: str, task: dict[str, Any]) -> Any:
        path = (
            f"/dags/{quote(dag_id)}/dagRuns/{quote(run_id, safe='')}/taskInstances/{quote(task['task_id'])}"
            f"/logs/{max(1, int(task.get('try_number') or 1))}"
        )
        return self._call("GET", path, params={"map_index": task.get("map_index", -1)})["content"]

    def run_page(self, dag_id: str, run_id: str) -> str:
        """Where the UI shows this run's grid and logs."""
        return f"{self.url}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def _log_line(line: Any) -> str:
    """One structured log entry as text: the event, then the exception's type and message when there is one."""
    if not isinstance(line, dict):
        return str(line)
    text = str(line.get("event", ""))
    for error in line.get("error_detail") or []:
        if isinstance(error, dict):
            text += f"\n{error.get('exc_type', '')}: {error.get('exc_value', '')}"
            frames = error.get("frames") or []
            if frames:
                last = frames[-1]
                text += f" (at {last.get('filename')}:{last.get('lineno')} in {last.get('name')})"
    return text


def _describe(response: requests.Response) -> str:
    return f"HTTP {response.status_code} {response.text[:300].strip()}"
