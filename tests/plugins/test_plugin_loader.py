"""Airflow's plugin loader imports every .py under plugins/ as a top-level module named by its file
stem. The library stays out of that scan (it is an installed package, src/kosli_rotation), or its modules would
shadow real packages; the "Key rotation" page loads from the package's ``airflow.plugins`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL_PACKAGES = ["github", "gitlab", "kubernetes", "jenkins", "hvac", "boto3", "yaml", "nacl", "pydantic"]

LOAD_PLUGINS_AND_REPORT = """
import json, sys
from airflow import plugins_manager
plugins_manager.ensure_plugins_loaded()
import {packages}
print(json.dumps({{
    "files": {{name: getattr(sys.modules[name], "__file__", None) for name in {names!r}}},
    "top_level": sorted(name for name in sys.modules if "." not in name),
    "import_errors": plugins_manager.get_import_errors(),
    "modules": sorted(sys.modules),
    "plugins": [plugin.name for plugin in plugins_manager._get_plugins()[0]],
    "external_views": [view["name"] for view in plugins_manager._get_ui_plugins()[0]],
}}))
"""


def load_plugins(plugins_folder: Path, tmp_path: Path) -> dict:
    """Load plugins the way every Airflow component does, in a clean interpreter."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    code = LOAD_PLUGINS_AND_REPORT.format(packages=", ".join(REAL_PACKAGES), names=REAL_PACKAGES)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def library_module_stems() -> set[str]:
    return {path.stem for path in (REPO / "src" / "kosli_rotation").rglob("*.py")} - {"__init__"}


def test_real_packages_still_resolve_after_airflow_loads_our_plugins(tmp_path):
    report = load_plugins(REPO / "plugins", tmp_path)

    site_packages = sysconfig.get_paths()["purelib"]
    for name, file in report["files"].items():
        assert file and file.startswith(site_packages), f"{name} resolved to {file}, not the installed package"
    assert not library_module_stems() & set(report["top_level"]), "library modules were loaded as plugins"
    assert report["import_errors"] == {}
    assert "kosli_key_rotation" in report["plugins"], "the Key rotation page's plugin is loaded"
    assert "Key rotation" in report["external_views"]
    assert "kosli_rotation.inventory" not in report["modules"], "the plugin imports the library only when serving"
    assert not list((REPO / "plugins").rglob("*.py")), "plugins/ holds nothing of the tool: it is an installed package"


def test_the_page_loads_from_the_installed_package_with_an_empty_plugins_folder(tmp_path):
    """Cloud Composer, MWAA and Astronomer users install the package and copy nothing into their plugins folder."""
    empty = tmp_path / "empty-plugins"
    empty.mkdir()

    report = load_plugins(empty, tmp_path)

    assert report["plugins"].count("kosli_key_rotation") == 1, report["plugins"]
    assert "Key rotation" in report["external_views"]
    assert report["import_errors"] == {}


def test_a_library_module_in_a_plugins_folder_shadows_the_real_package(tmp_path):
    """The hazard that keeps the library out of plugins/, shown on a throwaway plugins folder."""
    plugins = tmp_path / "plugins"
    (plugins / "lib").mkdir(parents=True)
    (plugins / "lib" / "github.py").write_text("SHADOW = True\n")

    report = load_plugins(plugins, tmp_path)

    assert report["files"]["github"] == str(plugins / "lib" / "github.py")
