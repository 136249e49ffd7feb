"""Two Airflow deployments (two metadata databases) pointed at the same Vault record, triggered together:
exactly one rotation happens. The check-and-set lock in the Vault record decides, not Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def deployment(home: Path) -> dict[str, str]:
    """The environment of a second Airflow deployment: same connections and inventory, its own database."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs")}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def trigger(scenario, env: dict[str, str], log: Path) -> subprocess.Popen:
    conf = json.dumps({"reason": "same key, two deployments", "strategy": "replace"})
    return subprocess.Popen(
        [AIRFLOW, "dags", "test", scenario.dag_id, "-c", conf], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def test_two_deployments_triggered_together_rotate_the_key_once(scenario, airflow_db, tmp_path):
    # Kosli answers slowly, so the second deployment arrives while the first one holds the rotation.
    scenario.kosli.faults.add(r"/api-keys$", method="POST", delay=3.0, times=0)
    first_env, second_env = dict(os.environ), deployment(tmp_path / "second-airflow")
    scenario.kosli.reset_stats()

    runs = [trigger(scenario, env, tmp_path / f"deployment-{n}.log") for n, env in enumerate((first_env, second_env))]
    for run in runs:
        assert run.wait(timeout=300) is not None

    minted = scenario.kosli.stats()["requests"].get("create_api_key", 0)
    assert minted == 1, "exactly one key was minted"
    new_key = scenario.vault_record()["key"]
    assert scenario.live_secrets() == [new_key]
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
    logs = [(tmp_path / f"deployment-{n}.log").read_text() for n in range(2)]
    assert (
        sum("belongs to rotate_kosli_key_acme-ci-bot/" in log or "was rotated 0 minutes ago" in log for log in logs)
        == 1
    )
