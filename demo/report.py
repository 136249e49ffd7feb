"""Following the two runs as they happen, then checking the outcome where it matters.

The checks look at the world directly (Vault, the consumer files, the sandbox's live secrets), not at
what the DAG reports about itself, and print fingerprints only, never a key.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import hvac
import requests
import yaml
from hvac.exceptions import VaultError

from demo.airflow_api import TERMINAL_RUN_STATES, AirflowApi
from demo.processes import DemoError, Supervisor, shown
from demo.world import CONSUMER_FIELD, ORG, VAULT_MOUNT, DemoKey
from kosli_rotation.fingerprints import fingerprint

POLL_SECONDS = 2.0
MAX_FAILED_POLLS = 5
STATE_NOTES = {
    "deferred": "  (waiting out Kosli's grace period in the triggerer; no worker slot held)",
    "up_for_retry": "  (will retry)",
}


@dataclass
class TrackedRun:
    """One run the demo triggered, and the last states it printed for it."""

    key: DemoKey
    run_id: str
    state: str = "queued"
    tasks: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_RUN_STATES


def _say(key: DemoKey, what: str, state: str) -> None:
    print(f"{datetime.now():%H:%M:%S}  {key.name:<18} {what:<34} {state}{STATE_NOTES.get(state, '')}")


def _task_label(key: DemoKey, instance: dict[str, Any]) -> str:
    """``fan_out[ci-vault]`` for a mapped task (named after its consumer), else the task id."""
    index = instance["map_index"]
    if index < 0:
        return instance["task_id"]
    # Airflow renders the consumer's name only once the task ran (until then it shows the index);
    # the map index is the consumer's position in the inventory.
    name = dict(enumerate(key.consumer_names)).get(index) or instance.get("rendered_map_index") or index
    return f"{instance['task_id']}[{name}]"


def _update(api: AirflowApi, run: TrackedRun) -> None:
    """Print every task whose state changed since the last poll, in the order they started."""
    instances = api.task_instances(run.key.dag_id, run.run_id)
    instances.sort(key=lambda ti: (ti.get("start_date") or "9999", ti["task_id"], ti["map_index"]))
    for instance in instances:
        label, state = _task_label(run.key, instance), instance.get("state")
        if state and run.tasks.get(label) != state:
            run.tasks[label] = state
            tries = f" (try {instance['try_number']})" if instance.get("try_number", 0) > 1 else ""
            _say(run.key, label, state + tries)
    state = api.dag_run(run.key.dag_id, run.run_id)["state"]
    if state != run.state:
        run.state = state
        _say(run.key, "== the run ==", state)


def _watch_other_runs(api: AirflowApi, runs: list[TrackedRun], seen: set[str], ended: set[str]) -> None:
    """Mention, in one line each, the runs the scheduler starts by itself and how they end. (Airflow 3
    starts the latest missed daily check as soon as a DAG is unpaused; preflight skips a key not due.)"""
    ours = {(run.key.dag_id, run.run_id) for run in runs}
    for key in {run.key.dag_id: run.key for run in runs}.values():
        for listed in api.dag_runs(key.dag_id):
            run_id, kind, state = listed["dag_run_id"], f"note: {listed['run_type']} run", listed["state"]
            ident = f"{key.dag_id} {run_id}"
            if (key.dag_id, run_id) in ours or ident in ended:
                continue
            if ident not in seen:
                seen.add(ident)
                _say(key, kind, f"{run_id} started by the scheduler")
            if state in TERMINAL_RUN_STATES:
                ended.add(ident)
                tasks = Counter(str(ti.get("state")) for ti in api.task_instances(key.dag_id, run_id))
                _say(key, kind, f"ended {state} (tasks: {', '.join(f'{n} {s}' for s, n in sorted(tasks.items()))})")


def follow(api: AirflowApi, runs: list[TrackedRun], supervisor: Supervisor, *, timeout: float) -> None:
    """Poll every 2 s until every run the demo triggered has finished; fail after ``timeout`` seconds.

    A few failed polls in a row are tolerated: SQLite-backed Airflow sometimes answers 5xx under load.
    """
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    ended: set[str] = set()
    failures = 0
    while not all(run.finished for run in runs):
        if time.monotonic() > deadline:
            states = ", ".join(f"{run.key.dag_id} {run.state}" for run in runs)
            raise DemoError(f"the runs did not finish within {timeout:.0f} s ({states}); see the UI and task logs")
        for process in supervisor.processes:
            process.check_running()
        try:
            for run in runs:
                if not run.finished:
                    _update(api, run)
            _watch_other_runs(api, runs, seen, ended)
            failures = 0
        except (DemoError, requests.RequestException) as error:
            failures += 1
            if failures >= MAX_FAILED_POLLS:
                raise DemoError(f"following the runs failed {failures} times in a row; last: {error}") from None
        time.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"    [{'ok' if self.ok else 'FAIL'}] {self.text}"


def _kv_field(vault: hvac.Client, path: str, name: str) -> str | None:
    response = vault.secrets.kv.v2.read_secret_version(
        path=path, mount_point=VAULT_MOUNT, raise_on_deleted_version=True
    )
    return (response["data"]["data"] or {}).get(name)


def _held(value: Any) -> str:
    return fingerprint(str(value)) if value else "nothing"


def check_key(
    run: TrackedRun, *, vault: hvac.Client, kosli_url: str, state_dir: Path, old_fingerprint: str
) -> list[Check]:
    """Did this run leave one new live key, held by Vault and by both consumers?"""
    key = run.key
    checks = [Check(run.state == "success", f"the run ended {run.state}")]
    try:
        current = _held(_kv_field(vault, key.vault_path, "key"))
        checks.append(
            Check(
                current not in (old_fingerprint, "nothing"),
                f"Vault {VAULT_MOUNT}/{key.vault_path} holds {current} (before the run: {old_fingerprint})",
            )
        )
        in_vault = _held(_kv_field(vault, key.consumer_vault_path, CONSUMER_FIELD))
        where = f"Vault {VAULT_MOUNT}/{key.consumer_vault_path}, field {CONSUMER_FIELD}"
        checks.append(Check(in_vault == current, f"consumer {key.vault_consumer} ({where}) holds {in_vault}"))
        config = key.cli_config(state_dir)
        in_file = _held((yaml.safe_load(config.read_text()) or {}).get("api-token"))
        checks.append(Check(in_file == current, f"consumer {key.cli_consumer} ({shown(config)}) holds {in_file}"))
        live = _live_fingerprints(kosli_url, key.service_account)
        count = "exactly one live key" if len(live) == 1 else f"{len(live)} live keys"
        listed = ", ".join(live) or "none"
        checks.append(Check(live == [current], f"Kosli {ORG}/{key.service_account} accepts {count}: {listed}"))
    except (OSError, ValueError, requests.RequestException, VaultError) as error:
        checks.append(Check(False, f"could not look: {type(error).__name__}: {error}"))
    return checks


def _live_fingerprints(kosli_url: str, service_account: str) -> list[str]:
    """Every secret the sandbox would accept right now for the account (its test-only endpoint)."""
    response = requests.get(
        f"{kosli_url}/_sandbox/live-secrets", params={"org": ORG, "sa": service_account}, timeout=10
    )
    response.raise_for_status()
    return sorted(fingerprint(secret["secret"]) for secret in response.json())


def print_summary(results: list[tuple[TrackedRun, list[Check]]]) -> bool:
    """Print each run's outcome and checks; True when every check holds."""
    print("\nSummary")
    for run, checks in results:
        print(f"  {run.key.dag_id}, run {run.run_id}: {run.state}")
        for check in checks:
            print(check)
    passed = all(check.ok for _, checks in results for check in checks)
    if passed:
        print(
            "All checks passed: each key was replaced, Vault and every consumer hold the new one, the old one is dead."
        )
    else:
        print("Some checks FAILED (see above); the grid and task logs in the UI say why.")
    return passed
