"""``make demo`` end to end: the real demo process, with --exit-when-done, in a state dir of its own."""

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

REPO = Path(__file__).resolve().parents[2]
BUSY_PORT = 8080


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
    for dag_id in ("rotate_kosli_key_acme-ci-bot", "rotate_kosli_key_acme-reporter-bot"):
        assert re.search(rf"^  {dag_id}, run \S+: success$", stdout, re.MULTILINE), output
    assert "All checks passed" in stdout, output
