"""``make demo`` end to end: the real demo process, with --exit-when-done, in a state dir of its own.

The demo checks the outcome itself, through Vault, the Kosli sandbox and each consumer sandbox's own view, and scans
the real Airflow deployment's database and log files for the keys; this test holds it to what its summary says.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kosli_rotation.consumers import KINDS

REPO = Path(__file__).resolve().parents[2]
BUSY_PORT = 8080
DAG_IDS = ("rotate_kosli_key_acme-ci-bot", "rotate_kosli_key_acme-reporter-bot")
#: The columns of a key's consumer table, separated by two spaces or more.
COLUMNS = ("status", "name", "kind", "holds", "proof", "where")
CANARY_KINDS = ("github_actions", "jenkins_credential", "circleci_env")


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    """Listen on ``port`` so the demo must pick another (if something else listens there already, so be it)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # else TIME_WAIT leftovers make bind fail
        try:
            listener.bind(("127.0.0.1", port))
            listener.listen()
        except OSError:
            pass  # another program listens there: the demo must move away from it all the same
        yield


def demo_environment() -> dict[str, str]:
    """The caller's environment without the Airflow settings tests/conftest.py made: the demo sets its own."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AIRFLOW") and name != "KOSLI_ROTATION_INVENTORY"
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_demo(command: list[str], timeout: float) -> tuple[int, str, str]:
    """Run the demo; past ``timeout``, SIGTERM it (not SIGKILL) so that it still stops what it started."""
    process = subprocess.Popen(
        command, cwd=REPO, env=demo_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=120)
        stderr += f"\n(the test stopped the demo after {timeout:.0f} s)"
    return process.returncode, stdout, stderr


def consumer_row(line: str) -> dict[str, str]:
    """A row of a key's consumer table, by column."""
    return dict(zip(COLUMNS, re.split(r" {2,}", line.strip()), strict=True))


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_demo_rotates_both_keys_and_moves_off_a_busy_port(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "demo", "--exit-when-done", "--timeout", "600"]
    command += ["--state-dir", str(tmp_path / "demo-state")]
    with port_taken(BUSY_PORT):
        code, stdout, stderr = run_demo(command, timeout=720)
    output = f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"

    assert code == 0, output
    moved = re.search(rf"Port {BUSY_PORT} is taken, so the Airflow UI and API use port (\d+) instead", stdout)
    assert moved and int(moved.group(1)) != BUSY_PORT, output
    for dag_id in DAG_IDS:
        assert re.search(rf"^  {dag_id}, run \S+: success$", stdout, re.MULTILINE), output
    assert "All checks passed" in stdout, output
    assert stdout.count("[ok] audit entry: triggered by 'admin'") == len(DAG_IDS), "who triggered each run, and why"

    rows = [consumer_row(line) for line in stdout.splitlines() if re.match(r"^    (ok|FAIL) ", line)]
    assert {row["kind"] for row in rows} == set(KINDS), output
    for row in rows:
        assert row["status"] == "ok" and re.fullmatch(r"new key sha256:[0-9a-f]{12}", row["holds"]), (row, output)
        if row["kind"] in CANARY_KINDS:
            assert re.fullmatch(r"canary: [1-9]\d* runs?, success", row["proof"]), (row, output)
        if row["kind"] == "kubernetes_secret":
            restarted = re.fullmatch(r"restart: (\d+)/(\d+) pods on new key", row["proof"])
            assert restarted and restarted.group(1) == restarted.group(2) != "0", (row, output)

    scan = re.search(r"^Secret scan: (\d+) hits in (\d+) files and (\d+) tables \(.*?(\d+) task logs", stdout, re.M)
    assert scan, output
    hits, files, tables, task_logs = map(int, scan.groups())
    assert hits == 0, output
    assert files >= task_logs >= 20 and tables >= 20, output
