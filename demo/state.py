"""The demo's state directory: wiped at each start, so a second ``make demo`` starts clean.

Wiping a directory is dangerous, so the demo only wipes one it made itself (it leaves a marker file),
and never one a running demo still uses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from demo.processes import DemoError, shown

MARKER = ".kosli-rotation-demo"
PID_FILE = "demo.pid"


def prepare_state_dir(state_dir: Path) -> None:
    """Wipe the previous demo's state and claim the directory for this process."""
    if state_dir.exists():
        if any(state_dir.iterdir()) and not (state_dir / MARKER).exists():
            raise DemoError(f"{state_dir} is not empty and was not made by the demo: pass another --state-dir")
        _refuse_if_in_use(state_dir)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    (state_dir / MARKER).write_text("State of `python -m demo` (make demo); wiped each time the demo starts.\n")
    (state_dir / PID_FILE).write_text(f"{os.getpid()}\n")


def _refuse_if_in_use(state_dir: Path) -> None:
    try:
        pid = int((state_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return
    if pid != os.getpid() and _is_demo(pid):
        raise DemoError(
            f"another demo (pid {pid}) is still using {shown(state_dir)}: stop it first (Ctrl-C in its terminal, "
            f"or `kill {pid}`), or pass another --state-dir"
        )


def _is_demo(pid: int) -> bool:
    """Whether ``pid`` runs ``-m demo`` (a reused pid of another program does not count, where /proc tells)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.joinpath("self").exists():
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return any(arguments[i : i + 2] == [b"-m", b"demo"] for i in range(len(arguments)))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
