"""Child processes the demo owns, free ports, and waiting with a deadline.

Each child runs in its own session (process group), so the terminal's Ctrl-C reaches only the
demo, which then stops every group in order, including grandchildren such as Airflow's workers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class DemoError(Exception):
    """Something the demo needs did not work; the message says what, and which log to read."""


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``port`` (SO_REUSEADDR: sockets in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together, so none is picked twice)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [probe.getsockname()[1] for probe in probes]


@dataclass
class ManagedProcess:
    """A child process group started by the demo, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 15.0

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 15.0,
        keep_stdout: bool = True,
    ) -> ManagedProcess:
        """Start ``command`` in a new session; its output goes to ``log`` (stdout too unless told not to)."""
        with log.open("ab") as stream:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=stream if keep_stdout else subprocess.DEVNULL,
                stderr=stream,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        return cls(name, popen, log, stop_signal, stop_timeout)

    def exit_code(self) -> int | None:
        return self.popen.poll()

    def check_running(self) -> None:
        """Raise a ``DemoError`` pointing at the log when the process has died."""
        code = self.exit_code()
        if code is not None:
            raise DemoError(f"{self.name} exited with code {code}; read {shown(self.log)}")

    def stop(self) -> None:
        """Ask the leader to stop its own children; then SIGTERM the whole group; then kill what is left.

        The leader goes first because signalling the group at once can wedge a program that also
        signals its children (``airflow standalone``'s scheduler and triggerer hung when hit twice).
        """
        if not self._group_busy():
            return
        with suppress(ProcessLookupError):
            os.kill(self.popen.pid, self.stop_signal)
        if self._wait_for_group(self.stop_timeout):
            return
        self._signal_group(signal.SIGTERM)
        if self._wait_for_group(10.0):
            return
        print(f"  {self.name} did not stop in time; killing what is left of it")
        self._signal_group(signal.SIGKILL)
        self._wait_for_group(10.0)

    def _signal_group(self, signum: int) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def _wait_for_group(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._group_busy():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _group_busy(self) -> bool:
        """Whether the leader or any other member of its group still runs (zombies do not count)."""
        return self.popen.poll() is None or bool(group_members(self.popen.pid))


class Supervisor:
    """Every process group the demo started, so that all of them are stopped, even after a failed start."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, command: Sequence[str], *, log: Path, **options: Any) -> ManagedProcess:
        """Start and remember a process group (options as for ``ManagedProcess.start``)."""
        process = ManagedProcess.start(name, command, log=log, **options)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop the last started first: Airflow before the services its tasks call."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def group_members(pgid: int) -> list[int]:
    """Live, non-zombie processes in a process group. Reads /proc on Linux; elsewhere asks the kernel."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if group == str(pgid) and state != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for(
    what: str,
    check: Callable[[], T | None],
    *,
    timeout: float,
    watch: Sequence[ManagedProcess] = (),
    hint: str = "",
    interval: float = 0.5,
) -> T:
    """Poll ``check`` until it returns something other than None; fail clearly on timeout or a dead process.

    ``check`` may raise ``OSError`` or ``requests`` connection errors while the service is starting:
    those count as "not yet".
    """
    import requests

    deadline = time.monotonic() + max(timeout, 0.0)
    last_problem = ""
    while True:
        for process in watch:
            process.check_running()
        try:
            result = check()
        except (OSError, requests.RequestException) as error:
            result, last_problem = None, f" (last error: {error})"
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not happen within {timeout:.0f} s{last_problem}. {hint}".rstrip())
        time.sleep(interval)
