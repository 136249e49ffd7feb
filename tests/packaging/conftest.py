"""The provider's wheel, built once per session the way a release builds it, for every packaging test.

Offline (``--no-build-isolation``: setuptools and wheel come from .venv), from a copy of what the build reads, so
the build's leftovers (build/, *.egg-info) never land in the repo.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "airflow-provider-kosli-rotation"


def copy_sources(destination: Path) -> Path:
    """What the build reads, copied: setuptools writes build/ and *.egg-info next to the sources it packages."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "src" / "kosli_rotation", destination / "src" / "kosli_rotation", ignore=ignore)
    return destination


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    sources = copy_sources(tmp_path_factory.mktemp("sources"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(sources), "--no-deps", "--no-build-isolation", "-w", str(out)],
        capture_output=True,
        text=True,
        cwd=sources,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def dist_info_file(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [entry for entry in archive.namelist() if entry.endswith(f".dist-info/{name}")]
        return archive.read(path).decode()
