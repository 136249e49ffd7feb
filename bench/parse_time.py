"""Benchmark 5: what the dag-processor pays every cycle to parse the DAG file, by inventory size.

Each measurement parses dags/kosli_key_rotation.py (every key's rotation and rollback DAG, and the staleness check)
in a fresh interpreter with Airflow's own DagBag (what a
dag-processor parsing process does), against a generated inventory of N keys with three consumers each, and reports
the parse time and the peak memory of that process above a bare ``import airflow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bench.report import Sample, Section

REPO = Path(__file__).resolve().parents[1]
SIZES, QUICK_SIZES = (1, 100, 1000), (1, 5)
REPEATS = 3
DEFAULT_IMPORT_TIMEOUT = 30  # seconds: Airflow's [core] dagbag_import_timeout

#: Peak memory is the process's VmHWM (its own high-water mark): ru_maxrss would carry over the parent's peak, which
#: Linux keeps across fork and exec, and after the fan-out benchmarks the parent is the larger process.
PARSE = """
import json, time
import airflow
from airflow.dag_processing.dagbag import DagBag

def high_water_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

baseline = high_water_kib()
started = time.perf_counter()
bag = DagBag(dag_folder={dag_file!r}, safe_mode=False)
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "dags": len(bag.dags), "errors": len(bag.import_errors),
    "peak_kib": high_water_kib(), "baseline_kib": baseline}}))
"""


def inventory(n: int) -> dict:
    """N keys of one org, each with a Vault, a GitHub and a Kubernetes consumer: a realistic entry."""
    return {
        "defaults": {"org": "acme"},
        "keys": [
            {
                "name": f"key-{i:04d}",
                "service_account": f"bot-{i:04d}",
                "key_label": "ci",
                "vault_path": f"kosli/acme/bot-{i:04d}",
                "consumers": [
                    {"name": "vault", "kind": "vault_kv", "path": f"apps/bot-{i:04d}"},
                    {"name": "github", "kind": "github_actions", "repository": f"acme/app-{i:04d}"},
                    {"name": "k8s", "kind": "kubernetes_secret", "namespace": "apps", "secret_name": f"kosli-{i:04d}"},
                ],
            }
            for i in range(n)
        ],
    }


def parse_once(inventory_path: Path, home: Path) -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Measured whatever it takes; the notes compare it with Airflow's default import timeout.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "KOSLI_ROTATION_INVENTORY": str(inventory_path),
    }
    code = PARSE.format(dag_file=str(REPO / "dags" / "kosli_key_rotation.py"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"parsing failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def dags_built(keys: int) -> int:
    """A rotation and a rollback DAG per key, and one staleness check for the whole inventory."""
    return 2 * keys + 1


def run(quick: bool) -> list[Section]:
    sizes, repeats = (QUICK_SIZES, 1) if quick else (SIZES, REPEATS)
    section = Section(
        "5. DAG parse time and memory by inventory size",
        ["keys in the inventory", "DAGs", "parse time", "per key", "peak memory above `import airflow`"],
        settings={"consumers per key": "3", "parser": "Airflow's DagBag in a fresh process", "repeats": str(repeats)},
    )
    medians: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as scratch:
        home = Path(scratch) / "airflow-home"
        home.mkdir()
        for n in sizes:
            path = Path(scratch) / f"inventory-{n}.yaml"
            path.write_text(yaml.safe_dump(inventory(n)))
            results = [parse_once(path, home) for _ in range(repeats)]
            expected = dags_built(n)
            if any(r["dags"] != expected or r["errors"] for r in results):
                raise RuntimeError(f"the inventory of {n} keys did not parse into {expected} DAGs: {results[0]}")
            seconds = Sample.of([r["seconds"] for r in results])
            memory = Sample.of([(r["peak_kib"] - r["baseline_kib"]) / 1024 for r in results])
            section.add_row(n, expected, seconds.show(), f"{seconds.median / n * 1000:.1f} ms", memory.show("MiB", 0))
            section.headlines[f"parse_{n}"] = f"{seconds.median:.2f} s"
            medians[n] = seconds.median
    smallest, largest = min(medians), max(medians)
    per_key = (medians[largest] - medians[smallest]) / (largest - smallest)
    section.notes.append(
        "Parsing reads the inventory and builds two DAGs per key (rotation, rollback) and the staleness check; it "
        "opens no connection (a test enforces it). The "
        f"time is a fixed part (about {medians[smallest]:.1f} s here: the DAG file, the library and the inventory's "
        f"validation) plus about {per_key * 1000:.0f} ms per key, linear in the number of keys. The dag-processor "
        "pays it once per parse cycle (`[dag_processor] min_file_process_interval`, 30 s by default); with "
        "hundreds of keys, raise that interval: the inventory changes rarely."
    )
    slow = [n for n, seconds in medians.items() if seconds > DEFAULT_IMPORT_TIMEOUT / 2]
    if slow:
        section.notes.append(
            f"At {', '.join(map(str, slow))} keys one file takes more than half of Airflow's default "
            f"`[core] dagbag_import_timeout` ({DEFAULT_IMPORT_TIMEOUT} s), past which the file is an import error and "
            'its DAGs go away: build them in two files (`build_dags(include=["rotation", "staleness"])` and '
            '`build_dags(include=["rollback"])`), or raise the timeout.'
        )
    return [section]
