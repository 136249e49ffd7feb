"""Someone else's Airflow: a new virtual environment that has never seen this repo, with the provider installed
from its wheel under the repo's constraints, and nothing else of ours.

What pip installs besides the wheel comes from a wheelhouse: ``pip wheel`` of the wheel's own requirements under
constraints.txt, built once from the package index and kept in test-output/wheelhouse/<key> (the key changes with
constraints.txt or the requirements). The install itself is offline and reads no pip configuration: only the
wheelhouse, the constraints and the wheel, so what lands in the venv is what constraints.txt pins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
WHEELHOUSES = REPO / "test-output" / "wheelhouse"
#: The thin DAG file a user copies into their DAG folder.
DAG_FILE = REPO / "dags" / "kosli_key_rotation.py"


def requirements_of(wheel: Path) -> list[str]:
    """The wheel's ``Requires-Dist`` lines: what pip resolves when a user installs it."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    return sorted(metadata.get_all("Requires-Dist") or [])


def _pip(python: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(python), "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"pip {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def wheelhouse(wheel: Path) -> Path:
    """Wheels of everything the provider needs, pinned by constraints.txt; built on first use (about a minute on a
    fresh machine, from the package index and pip's configuration), then reused."""
    requirements = requirements_of(wheel)
    key = hashlib.sha256(CONSTRAINTS.read_bytes() + "\n".join(requirements).encode()).hexdigest()[:16]
    house = WHEELHOUSES / key
    if (house / "COMPLETE").exists():
        return house
    partial = WHEELHOUSES / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    wanted = partial / "requirements.txt"
    wanted.write_text("\n".join(requirements) + "\n")
    try:
        _pip(sys.executable, "wheel", "-r", str(wanted), "-c", str(CONSTRAINTS), "-w", str(partial), "--quiet")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave half a wheelhouse behind
        raise
    (partial / "COMPLETE").write_text("\n".join(requirements) + "\n")
    try:
        partial.rename(house)
    except OSError:  # another session finished the same wheelhouse first
        shutil.rmtree(partial, ignore_errors=True)
    return house


def hermetic_pip_env() -> dict[str, str]:
    """This process's environment without pip's configuration (files and PIP_* variables)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@dataclass
class FreshAirflow:
    """A venv holding Airflow and the provider, installed from the wheel; ``env`` runs its ``airflow`` in a home
    whose DAG folder and (empty) plugins folder are the caller's."""

    venv: Path

    @classmethod
    def create(cls, wheel: Path, venv: Path) -> FreshAirflow:
        # From the base interpreter: the new venv inherits nothing of .venv (no site-packages, no editable src).
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        house = wheelhouse(wheel)
        python = venv / "bin" / "python"
        _pip(python, "install", "--no-index", "--find-links", str(house), "-c", str(CONSTRAINTS), str(wheel), "-q",
             env=hermetic_pip_env())  # fmt: skip
        return cls(venv)

    @property
    def airflow(self) -> str:
        return str(self.venv / "bin" / "airflow")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self, dags: Path, plugins: Path, **extra: str) -> dict[str, str]:
        """Overrides of this process's environment that make a process the fresh venv's and nobody else's."""
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "VIRTUAL_ENV": str(self.venv),
            "PYTHONPATH": "",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **extra,
        }

    def run(self, home: Path, env: dict[str, str], *args: str) -> str:
        """One ``airflow`` command of the fresh venv, in ``home``; its stdout."""
        environment = {**os.environ, "AIRFLOW_HOME": str(home), **env}
        result = subprocess.run(
            [self.airflow, *args], capture_output=True, text=True, env=environment, cwd=home, timeout=300
        )
        assert result.returncode == 0, f"airflow {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result.stdout

    def json(self, home: Path, env: dict[str, str], *args: str) -> Any:
        """An ``airflow ... -o json`` answer, parsed (the last line: Airflow may log before it)."""
        return json.loads(self.run(home, env, *args, "-o", "json").strip().splitlines()[-1])


def dag_folder(destination: Path, inventory: Path) -> tuple[Path, Path]:
    """A user's DAG folder, holding only the thin DAG file and the inventory, and an empty plugins folder."""
    dags, plugins = destination / "dags", destination / "plugins"
    dags.mkdir(parents=True)
    plugins.mkdir(parents=True)
    shutil.copy2(DAG_FILE, dags / DAG_FILE.name)
    shutil.copy2(inventory, dags / "inventory.yaml")
    return dags, plugins
