"""Benchmarks 3, 4 and 6: rotations through a real ``airflow standalone`` (LocalExecutor), as ``make demo`` runs it.

One deployment serves all three: OpenBao, the Kosli sandbox (one Kosli hour lasts ``HOUR_SECONDS``), the consumer
sandboxes with 50 ms latency and ``airflow standalone``, all started with the demo's own building blocks. Runs are
triggered and read through the Airflow REST API; the Vault record and audit entries say when the new key was stored.

- 3. Exposure window (strategy ``replace``): from the new key stored in Vault until Kosli revoked the old key (from
  then on it gets 401; ``confirm_old_key_dead`` proves it), for 10 and 200 consumers, split into our share (the
  steps' own work, from the time each step logs) and Airflow's (scheduling, queueing, task process start-up).
- 4. Grace wait cost: worker slots and processes while ``wait_grace`` waits out a grace period, against idle Airflow.
- 6. End-to-end time of one rotation with 10 consumers, per task.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.report import Sample, Section

LATENCY = 0.05
EXPOSURE_SIZES, QUICK_EXPOSURE_SIZES = {10: 3, 200: 1}, {2: 1}
#: The line each step logs at its end (``kosli_rotation.taskflow.STEP_TIMING``).
OWN_WORK = re.compile(r"^step (?P<step>.+): its own work took (?P<seconds>\d+\.\d+) s$")
GRACE_HOURS = 1  # one Kosli hour of the sandbox: HOUR_SECONDS
#: The grace benchmark's wait: on a loaded machine the steps between the rotation and `wait_grace` can take most of
#: a minute, and a grace that is over before `wait_grace` starts is never deferred (nothing to measure).
GRACE_WAIT_HOURS = 3


@dataclass
class Deployment:
    api: Any  # demo.airflow_api.AirflowApi
    airflow: Any  # demo.services.Airflow
    vault: Any  # demo.services.Vault
    fleet: Any

    def record(self, vault_path: str) -> dict[str, Any]:
        from demo.world import VAULT_MOUNT

        kv = self.vault.client().secrets.kv.v2
        return kv.read_secret_version(path=vault_path, mount_point=VAULT_MOUNT, raise_on_deleted_version=True)["data"][
            "data"
        ]


def _parse(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


@contextlib.contextmanager
def deployment(keys: dict[str, tuple[int, str]]) -> Iterator[Deployment]:
    """Start everything; ``keys``: key name -> (number of consumers, scheduled strategy)."""
    from bench.fan_out_world import GITHUB_LIMITS, MIX, kinds, seed
    from demo.airflow_api import AirflowApi
    from demo.processes import Supervisor, free_ports, wait_for
    from demo.services import (
        ADMIN_USER,
        AirflowPorts,
        start_airflow,
        start_consumer_sandboxes,
        start_kosli,
        start_vault,
    )
    from demo.world import ORG, VAULT_MOUNT

    supervisor, fleet = Supervisor(), None
    with tempfile.TemporaryDirectory(prefix="bench-airflow-") as scratch:
        state = Path(scratch)
        try:
            vault = start_vault(supervisor, state, free_ports(1)[0], 30)
            kosli = start_kosli(supervisor, state, 30, accounts={name: "bench" for name in keys})
            fleet = start_consumer_sandboxes(vault, kosli)
            for kind, _ in MIX:
                fleet.sandbox(kind).apply_settings({"latency": LATENCY})
            fleet.sandbox("github_actions").apply_settings(GITHUB_LIMITS)
            entries, offset = [], 0
            for name, (count, strategy) in keys.items():
                secret = kosli.seeded.secrets[name]
                vault.client().secrets.kv.v2.create_or_update_secret(
                    path=f"kosli/{ORG}/{name}", secret={"key": secret}, mount_point=VAULT_MOUNT
                )
                consumers = [seed(fleet, kind, offset + i, secret) for i, kind in enumerate(kinds(count))]
                offset += count
                entries.append(
                    {
                        "name": name,
                        "org": ORG,
                        "service_account": name,
                        "key_label": "bench",
                        "vault_path": f"kosli/{ORG}/{name}",
                        "strategy": strategy,
                        "grace_hours": GRACE_HOURS,
                        "retries": 1,
                        "retry_delay_seconds": 5,
                        # The exposure window measured is the tool's own work; the observation window of the old
                        # key's use (usage_observation_seconds, 10 min by default) would add its length to it.
                        "usage_observation_seconds": 0,
                        "consumers": consumers,
                    }
                )
            inventory = state / "inventory.yaml"
            inventory.write_text(yaml.safe_dump({"keys": entries}, sort_keys=False))
            ports = AirflowPorts(*free_ports(4))
            airflow = start_airflow(
                supervisor,
                state,
                ports,
                inventory=inventory,
                vault=vault,
                kosli=kosli,
                connections=fleet.airflow_env(),
            )
            api = AirflowApi(airflow.url, ADMIN_USER, airflow.password)
            wait_for("the Airflow API", lambda: api.healthy() or None, timeout=300, watch=[airflow.process], interval=1)
            api.log_in()
            wanted = {f"rotate_kosli_key_{name}" for name in keys}
            wait_for("the DAGs", lambda: wanted <= api.dag_ids() or None, timeout=300, watch=[airflow.process])
            for dag_id in wanted:
                api.unpause(dag_id)
            yield Deployment(api, airflow, vault, fleet)
        finally:
            supervisor.stop_all()
            if fleet is not None:
                fleet.stop()


def _finish(deploy: Deployment, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = deploy.api.dag_run(dag_id, run_id)
        if run["state"] in ("success", "failed"):
            if run["state"] != "success":
                raise RuntimeError(f"{dag_id} run {run_id} ended {run['state']}{_failures(deploy, dag_id, run_id)}")
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dag_id} run {run_id} did not finish in {timeout:.0f} s")
        time.sleep(1)


def _failures(deploy: Deployment, dag_id: str, run_id: str) -> str:
    """The failed task instances and the end of their logs: a benchmark that fails must say why."""
    report = []
    for task in deploy.api.task_instances(dag_id, run_id):
        if task["state"] == "failed":
            label = task["task_id"] + (f"[{task['map_index']}]" if task.get("map_index", -1) >= 0 else "")
            lines = deploy.api.task_log(dag_id, run_id, task)
            report.append(f"\n--- {label} failed; its log ends:\n" + "\n".join(lines[-15:]))
    return "".join(report)


def _wait_for_scheduled_runs(deploy: Deployment, dag_id: str) -> None:
    """Unpausing starts the latest daily due check (it skips: the key is not due); let it end first."""
    deadline = time.monotonic() + 300
    while any(run["state"] not in ("success", "failed") for run in deploy.api.dag_runs(dag_id)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduled run of {dag_id} did not finish")
        time.sleep(1)


def _rotate(deploy: Deployment, name: str, conf: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    dag_id = f"rotate_kosli_key_{name}"
    _wait_for_scheduled_runs(deploy, dag_id)
    run_id = deploy.api.trigger(dag_id, {"reason": "benchmark", "force": True, **conf})
    _finish(deploy, dag_id, run_id)
    return run_id, deploy.api.task_instances(dag_id, run_id)


def _intervals(instances: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """When each task instance ran, as Airflow recorded it."""
    return [
        (_parse(ti["start_date"]), _parse(ti["end_date"]))
        for ti in instances
        if ti.get("start_date") and ti.get("end_date")
    ]


def _own_work(
    deploy: Deployment, dag_id: str, run_id: str, instances: list[dict[str, Any]]
) -> list[tuple[float, float]]:
    """When each step's own work ran, from the line each step logs at its end (``taskflow.STEP_TIMING``)."""
    intervals = []
    for ti in instances:
        if ti["state"] != "success":
            continue
        for entry in deploy.api.task_log_entries(dag_id, run_id, ti):
            said = OWN_WORK.search(str(entry.get("event", "")))
            if said and entry.get("timestamp"):
                end = _parse(str(entry["timestamp"]))
                intervals.append((end - float(said["seconds"]), end))
    return intervals


def _covered(intervals: list[tuple[float, float]], first: float, last: float) -> float:
    """Seconds of [first, last] inside at least one of ``intervals``."""
    covered, reach = 0.0, first
    for start, end in sorted((max(first, start), min(last, end)) for start, end in intervals):
        if end <= reach:
            continue
        covered += end - max(start, reach)
        reach = end
    return covered


def _first_start(item: tuple[str, tuple[list[float], list[float]]]) -> float:
    return min(item[1][0])


def exposure_section(deploy: Deployment, sizes: dict[int, int], per_task: dict[str, list[float]]) -> Section:
    section = Section(
        "3. Exposure window with `replace`: new key stored -> old key revoked (401)",
        [
            "consumers",
            "exposure window",
            "ours (the steps' own work)",
            "Airflow's share",
            "of which between tasks",
            "until 401 confirmed",
        ],
        settings={
            "executor": "LocalExecutor (airflow standalone)",
            "sandbox latency": f"{LATENCY * 1000:.0f} ms",
            "repeats": ", ".join(f"{r} at N={n}" for n, r in sizes.items()),
        },
    )
    for n, repeats in sizes.items():
        windows, mine, airflows, between, confirmed = [], [], [], [], []
        for _ in range(repeats):
            run_id, instances = _rotate(deploy, f"exposure-{n}", {"strategy": "replace"})
            record = deploy.record(f"kosli/acme/exposure-{n}")
            stored = record["rotated_at"]
            by_task: dict[str, list[dict[str, Any]]] = {}
            for ti in instances:
                by_task.setdefault(ti["task_id"], []).append(ti)
            revoked = max(_parse(ti["end_date"]) for ti in by_task["revoke_old"])
            dead = max(_parse(ti["end_date"]) for ti in by_task["confirm_old_key_dead"])
            window = revoked - stored
            ran = [ti for ti in instances if ti["task_id"] != "any_step_failed"]
            own = _covered(_own_work(deploy, f"rotate_kosli_key_exposure-{n}", run_id, ran), stored, revoked)
            windows.append(window)
            mine.append(own)
            airflows.append(window - own)
            between.append(window - _covered(_intervals(ran), stored, revoked))
            confirmed.append(dead - stored)
            if n == min(sizes):
                ran = {
                    task_id: ([_parse(ti["start_date"]) for ti in tis if ti.get("start_date")],
                              [_parse(ti["end_date"]) for ti in tis if ti.get("end_date")])
                    for task_id, tis in by_task.items()
                    if any(ti["state"] == "success" for ti in tis)  # not the skipped failure handler
                }  # fmt: skip
                for task_id, (starts, ends) in sorted((kv for kv in ran.items() if all(kv[1])), key=_first_start):
                    per_task.setdefault(task_id, []).append(max(ends) - min(starts))
                run_start = min(_parse(ti["start_date"]) for ti in instances if ti.get("start_date"))
                run_end = max(_parse(ti["end_date"]) for ti in instances if ti.get("end_date"))
                per_task.setdefault("(whole run)", []).append(run_end - run_start)
        window_sample = Sample.of(windows)
        section.add_row(
            n,
            window_sample.show(),
            Sample.of(mine).show(),
            Sample.of(airflows).show(),
            Sample.of(between).show(),
            Sample.of(confirmed).show(),
        )
        section.headlines[f"exposure_window_{n}"] = (
            f"{window_sample.median:.0f} s: ours {Sample.of(mine).median:.1f} s, "
            f"Airflow's {Sample.of(airflows).median:.1f} s"
        )
    section.notes.append(
        "Ours: the part of the window during which at least one step's own work ran (each step logs how long it "
        "took when it ends: its calls to Vault, Kosli and the consumers). Airflow's share is the rest: the "
        "scheduler noticing a finished task, queueing the next and the executor starting it (of which between "
        "tasks: no task instance running at all), and inside each task instance its process start-up, a fresh "
        "Python process that loads Airflow and parses the DAG file. Ours is mostly the two consumer steps, fan-out "
        "and verify, and those are mostly GitHub's pace: one write a second per token (benchmark 1a)."
    )
    return section


def per_task_section(per_task: dict[str, list[float]], n: int) -> Section:
    section = Section(
        f"6. One rotation end to end under `airflow standalone`, {n} consumers, per task",
        ["task", "wall time (first start to last end)"],
        settings={"strategy": "replace", "runs": str(len(per_task.get("(whole run)", [])))},
    )
    order = [task_id for task_id in per_task if task_id != "(whole run)"] + ["(whole run)"]  # in the order they ran
    for task_id in order:
        section.add_row(f"`{task_id}`", Sample.of(per_task[task_id]).show())
    whole = Sample.of(per_task["(whole run)"])
    section.headlines["end_to_end_10"] = f"{whole.median:.0f} s"
    section.notes.append(
        "Mapped consumer tasks count from the first batch's start to the last batch's end. `wait_grace` returns at "
        "once with `replace` (there is no grace to wait for). The sum of the steps is below the whole run: the rest "
        "is Airflow moving from one task to the next (see benchmark 3)."
    )
    return section


def _airflow_processes(deploy: Deployment) -> list[psutil.Process]:
    root = psutil.Process(deploy.airflow.process.popen.pid)
    return [root, *root.children(recursive=True)]


def _footprint(deploy: Deployment) -> tuple[int, float]:
    processes = _airflow_processes(deploy)
    rss = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            rss += process.memory_info().rss
    return len(processes), rss / 2**20


def _running_task_instances(deploy: Deployment, dag_id: str, run_id: str) -> tuple[int, str]:
    instances = deploy.api.task_instances(dag_id, run_id)
    running = sum(ti["state"] == "running" for ti in instances)
    sensor = next(ti["state"] for ti in instances if ti["task_id"] == "wait_grace")
    return running, sensor


def grace_section(deploy: Deployment) -> Section:
    from demo.services import HOUR_SECONDS

    dag_id = "rotate_kosli_key_grace"
    _wait_for_scheduled_runs(deploy, dag_id)
    time.sleep(5)
    idle = [_footprint(deploy) for _ in range(3)]
    run_id = deploy.api.trigger(dag_id, {"reason": "benchmark", "strategy": "rotate", "grace_hours": GRACE_WAIT_HOURS})
    deadline = time.monotonic() + 300
    while _running_task_instances(deploy, dag_id, run_id)[1] != "deferred":
        if time.monotonic() > deadline or deploy.api.dag_run(dag_id, run_id)["state"] in ("success", "failed"):
            states = {ti["task_id"]: ti["state"] for ti in deploy.api.task_instances(dag_id, run_id)}
            raise RuntimeError(f"wait_grace never deferred in run {run_id}: {states}")
        time.sleep(0.5)
    time.sleep(2)  # let the task process that deferred exit
    samples = []
    for _ in range(4):
        running, sensor = _running_task_instances(deploy, dag_id, run_id)
        if sensor == "deferred":
            samples.append((running, *_footprint(deploy)))
        time.sleep(2)
    # Measured last: the run is left waiting when the deployment stops (its end is not what this measures).
    section = Section(
        "4. What waiting out a grace period costs",
        ["", "task instances running", "Airflow processes", "their memory (RSS)"],
        settings={
            "grace": f"{GRACE_WAIT_HOURS} Kosli hours = {GRACE_WAIT_HOURS * HOUR_SECONDS} s in the sandbox",
            "samples": str(len(samples)),
        },
    )
    section.add_row(
        "idle Airflow",
        "0",
        Sample.of([count for count, _ in idle]).show("", 0),
        Sample.of([rss for _, rss in idle]).show("MiB", 0),
    )
    if samples:
        section.add_row(
            "a rotation waiting (`wait_grace` deferred)",
            Sample.of([s[0] for s in samples]).show("", 0),
            Sample.of([s[1] for s in samples]).show("", 0),
            Sample.of([s[2] for s in samples]).show("MiB", 0),
        )
        section.headlines["grace_running_task_instances"] = str(max(s[0] for s in samples))
        extra = statistics.median(s[1] for s in samples) - statistics.median(c for c, _ in idle)
        section.headlines["grace_extra_processes"] = f"{extra:.0f}"
    section.notes.append(
        "While `wait_grace` is deferred, no task instance runs and no worker slot is held: the wait is a timer in the "
        "triggerer, which runs anyway. The process count is the `airflow standalone` tree (scheduler, dag-processor, "
        "triggerer, api-server and their helpers); a difference of a process or two comes from the dag-processor's "
        "parsing processes coming and going, not from the wait. Memory is the sum of each process's RSS (shared pages "
        "counted in every process), for comparison only."
    )
    return section


def run(quick: bool) -> list[Section]:
    sizes = QUICK_EXPOSURE_SIZES if quick else EXPOSURE_SIZES
    keys = {f"exposure-{n}": (n, "replace") for n in sizes}
    keys["grace"] = (2, "rotate")
    per_task: dict[str, list[float]] = {}
    with deployment(keys) as deploy:
        exposure = exposure_section(deploy, sizes, per_task)
        grace = grace_section(deploy)
    return [exposure, grace, per_task_section(per_task, min(sizes))]
