"""Secret hygiene on a real deployment: after the rotations, look for the keys wherever Airflow keeps things.

``dag.test()`` in the tests never writes real task log files; ``airflow standalone`` does (workers, triggerer,
scheduler, dag processor). So, before stopping Airflow, the demo reads its whole metadata database (every table,
every column) and every file under its Airflow home (task logs, triggerer and dag-processor logs, the database
file itself) and the console output of standalone (``airflow.log``: scheduler, api-server...), for every key
involved: each key's seeded (old) value, its new value now in Vault, and the admin key, in plain and base64 forms.
Findings name the place (``table.column``, a file), never the value.

So that "0 hits" means something, the scan first proves it looks at the right things: the task logs of every task
the two rotations ran are there, and the scanner does find the new keys where they belong (a consumer's Kosli
CLI config file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from demo.airflow_api import AirflowApi
from demo.processes import DemoError, shown
from demo.report import TrackedRun
from sandbox.secret_scan import scan_database, scan_files

#: Task states whose task ran, so that it must have written a log.
RAN = frozenset({"success", "failed", "up_for_retry", "up_for_reschedule", "deferred"})


@dataclass
class ScanResult:
    files: int
    tables: int
    task_logs: int
    keys: int
    hits: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.hits


def rotation_task_logs(api: AirflowApi, logs: Path, runs: list[TrackedRun]) -> int:
    """How many task log files the demo's rotation runs wrote; a task that ran without one is an error."""
    count = 0
    for run in runs:
        run_dir = logs / f"dag_id={run.key.dag_id}" / f"run_id={run.run_id}"
        files = [path for path in run_dir.rglob("*.log") if path.is_file()] if run_dir.is_dir() else []
        with_logs = {path.relative_to(run_dir).parts[0].removeprefix("task_id=") for path in files}
        ran = {ti["task_id"] for ti in api.task_instances(run.key.dag_id, run.run_id) if ti.get("state") in RAN}
        missing = sorted(ran - with_logs)
        if not files or missing:
            raise DemoError(
                f"the secret scan would prove nothing: no task log of {', '.join(missing) or 'any task'} of "
                f"{run.key.dag_id} run {run.run_id} under {shown(run_dir)}"
            )
        count += len(files)
    return count


def scan_for_keys(
    *,
    api: AirflowApi,
    airflow_home: Path,
    console_log: Path,
    runs: list[TrackedRun],
    keys: list[str],
    control: tuple[Path, str],
) -> ScanResult:
    """Scan Airflow's database, its home's files and its console output for ``keys``.

    ``control`` is a file and a key it holds by design: the scanner must find it there, or the scan is broken.
    """
    keys = sorted(set(filter(None, keys)))
    control_file, control_key = control
    if scan_files([control_file], [control_key])[0] != [str(control_file)]:
        raise DemoError(f"the secret scanner does not find the new key in {shown(control_file)}, which holds it")
    task_logs = rotation_task_logs(api, airflow_home / "logs", runs)
    database = airflow_home / "airflow.db"
    if not database.is_file():
        raise DemoError(f"the secret scan found no Airflow database at {shown(database)}")
    db_hits, tables = scan_database(database, keys)
    file_hits, files = scan_files([airflow_home, console_log], keys)
    hits = [f"table column {hit}" for hit in db_hits] + [f"file {shown(Path(hit))}" for hit in file_hits]
    return ScanResult(files=files, tables=len(tables), task_logs=task_logs, keys=len(keys), hits=hits)


def print_scan(result: ScanResult) -> None:
    print(
        f"Secret scan: {len(result.hits)} hits in {result.files} files and {result.tables} tables "
        f"({result.keys} keys, plain and base64; {result.task_logs} task logs of the two rotations among the files)"
    )
    for hit in result.hits:
        print(f"    a key is in {hit}")
