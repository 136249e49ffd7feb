"""Following the two runs as they happen, then checking the outcome where it matters.

The checks look at the world directly (Vault, the Kosli sandbox's live secrets, and each consumer through its
own service's view: decrypted secrets, stored variables, canary job runs, the key each restarted pod started
with), not at what the DAG reports about itself, and print fingerprints only, never a key.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import hvac
import requests
from botocore.exceptions import BotoCoreError, ClientError
from hvac.exceptions import VaultError

from demo.airflow_api import TERMINAL_RUN_STATES, AirflowApi
from demo.processes import DemoError, Supervisor
from demo.services import ADMIN_USER
from demo.world import ORG, VAULT_MOUNT, DemoKey
from kosli_rotation.fingerprints import fingerprint
from sandbox.fleet import SUCCESS, SeededConsumer

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
    #: The grid label of each consumer batch, by map index (Airflow renders it only once the task ran).
    batch_labels: list[str] = field(default_factory=list)
    state: str = "queued"
    tasks: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_RUN_STATES


def _say(key: DemoKey, what: str, state: str) -> None:
    print(f"{datetime.now():%H:%M:%S}  {key.name:<18} {what:<30} {state}{STATE_NOTES.get(state, '')}")


def _task_label(run: TrackedRun, instance: dict[str, Any]) -> str:
    """``fan_out[ci-github]`` for a mapped consumer task (named after its batch of consumers), else the task id."""
    index, task = instance["map_index"], instance["task_id"].removeprefix("consumers.")
    if index < 0:
        return task
    labels = dict(enumerate(run.batch_labels))
    return f"{task}[{labels.get(index) or instance.get('rendered_map_index') or index}]"


def _update(api: AirflowApi, run: TrackedRun) -> None:
    """Print every task whose state changed since the last poll, in the order they started."""
    instances = api.task_instances(run.key.dag_id, run.run_id)
    instances.sort(key=lambda ti: (ti.get("start_date") or "9999", ti["task_id"], ti["map_index"]))
    for instance in instances:
        label, state = _task_label(run, instance), instance.get("state")
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
    return _kv_document(vault, path).get(name)


def _held(value: Any) -> str:
    return fingerprint(str(value)) if value else "nothing"


LOOK_ERRORS = (OSError, ValueError, LookupError, requests.RequestException, VaultError, BotoCoreError, ClientError)


@dataclass(frozen=True)
class ConsumerRow:
    """One consumer in the summary table: what it holds and, for canaries and restarts, how that went."""

    ok: bool
    name: str
    kind: str
    holds: str
    proof: str
    where: str

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return _columns(status, self.name, self.kind, self.holds, self.proof, self.where)


def _columns(*cells: str) -> str:
    """A table row: fixed widths, and at least two spaces between cells, whatever their length."""
    widths = (4, 19, 19, 27, 28)
    return "    " + "  ".join(f"{cell:<{width}}" for cell, width in zip(cells, (*widths, 0), strict=True)).rstrip()


TABLE_HEADER = _columns("", "consumer", "kind", "holds", "canary / restart", "where")


def check_consumer(consumer: SeededConsumer, current: str, old: str) -> ConsumerRow:
    """Does the consumer hold the new key (fingerprint ``current``), as its service shows it; and did its canary
    jobs succeed, or its restarted pods start with the new key?"""
    name, kind, where = consumer.name, consumer.kind, consumer.where
    try:
        held = _held(consumer.read())
        ok = held == current
        holds = {current: "new key", old: "OLD key", "nothing": ""}.get(held, "other key")
        proof = "-"
        if consumer.canary_runs is not None:
            runs = consumer.canary_runs()
            ok = ok and bool(runs) and set(runs) == {SUCCESS}
            outcomes = ", ".join(sorted(set(runs))) or "none ran"
            proof = f"canary: {len(runs)} run{'s' * (len(runs) != 1)}, {outcomes}"
        if consumer.pod_fingerprints is not None:
            pods = consumer.pod_fingerprints()
            fresh = sum(pod == current for pod in pods)
            ok = ok and bool(pods) and fresh == len(pods)
            proof = f"restart: {fresh}/{len(pods)} pods on new key"
    except LOOK_ERRORS as error:
        return ConsumerRow(False, name, kind, "could not look", f"{type(error).__name__}", where)
    return ConsumerRow(ok, name, kind, f"{holds} {held}".strip(), proof, where)


def check_key(
    run: TrackedRun, *, vault: hvac.Client, kosli_url: str, old_fingerprint: str, consumers: list[SeededConsumer]
) -> tuple[list[Check], list[ConsumerRow]]:
    """Did this run leave one new live key, held by Vault and by every consumer?"""
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
        live = _live_fingerprints(kosli_url, key.service_account)
        count = "exactly one live key" if len(live) == 1 else f"{len(live)} live keys"
        listed = ", ".join(live) or "none"
        checks.append(Check(live == [current], f"Kosli {ORG}/{key.service_account} accepts {count}: {listed}"))
        checks.append(_audit_check(vault, run))
    except LOOK_ERRORS as error:
        checks.append(Check(False, f"could not look: {type(error).__name__}: {error}"))
        return checks, []
    return checks, [check_consumer(consumer, current, old_fingerprint) for consumer in consumers]


def _audit_check(vault: hvac.Client, run: TrackedRun) -> Check:
    """The run's audit entry in Vault says who triggered it and why (the user the demo logged in as)."""
    kv, folder = vault.secrets.kv.v2, f"{run.key.vault_path}/audit"
    names = kv.list_secrets(path=folder, mount_point=VAULT_MOUNT)["data"]["keys"]
    entries = [_kv_document(vault, f"{folder}/{name}") for name in names]
    audit = next((entry for entry in entries if entry.get("finished_by_run") == run.run_id), None)
    if audit is None:
        return Check(False, f"no audit entry in Vault {VAULT_MOUNT}/{folder} for run {run.run_id}")
    who, why = audit.get("triggered_by"), audit.get("reason")
    expected = (ADMIN_USER, run.key.conf["reason"])
    return Check((who, why) == expected, f"audit entry: triggered by {who!r}, reason {why!r}")


def _kv_document(vault: hvac.Client, path: str) -> dict[str, Any]:
    response = vault.secrets.kv.v2.read_secret_version(
        path=path, mount_point=VAULT_MOUNT, raise_on_deleted_version=True
    )
    return response["data"]["data"] or {}


def _live_fingerprints(kosli_url: str, service_account: str) -> list[str]:
    """Every secret the sandbox would accept right now for the account (its test-only endpoint)."""
    response = requests.get(
        f"{kosli_url}/_sandbox/live-secrets", params={"org": ORG, "sa": service_account}, timeout=10
    )
    response.raise_for_status()
    return sorted(fingerprint(secret["secret"]) for secret in response.json())


def print_summary(results: list[tuple[TrackedRun, list[Check], list[ConsumerRow]]]) -> bool:
    """Print each run's outcome, its checks and a table of its consumers; True when every check holds."""
    print("\nSummary")
    for run, checks, rows in results:
        print(f"  {run.key.dag_id}, run {run.run_id}: {run.state}")
        for check in checks:
            print(check)
        if rows:
            print(TABLE_HEADER)
            for row in rows:
                print(row)
    passed = all(check.ok for _, checks, rows in results for check in [*checks, *rows])
    kinds = {row.kind for _, _, rows in results for row in rows}
    if passed:
        print(
            f"All checks passed: each key was replaced, Vault and every consumer ({len(kinds)} kinds) hold the new "
            "one, every canary succeeded, the old one is dead."
        )
    else:
        print("Some checks FAILED (see above); the grid and task logs in the UI say why.")
    return passed
