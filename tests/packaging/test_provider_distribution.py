"""The provider distribution: `pip wheel .` builds a wheel that Airflow's ProvidersManager can discover.

The wheel is built once per session, offline (tests/packaging/conftest.py), and read as a user's pip would install
it: its entry points, its provider info, and every class that info names.
"""

from __future__ import annotations

import configparser
import importlib
import json
import subprocess
import sys
import zipfile

from tests.packaging.conftest import DISTRIBUTION, dist_info_file


def test_the_wheel_is_the_library_under_a_third_party_provider_name(wheel):
    assert wheel.name.startswith("airflow_provider_kosli_rotation-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "kosli_rotation/triggers.py" in names and "kosli_rotation/provider_info.py" in names
    assert "kosli_rotation/consumers/__init__.py" in names, "subpackages ship too"
    assert not [name for name in names if name.startswith(("src/", "plugins/", "tests/", "sandbox/", "dags/"))]
    metadata = dist_info_file(wheel, "METADATA")
    assert f"Name: {DISTRIBUTION}" in metadata
    assert f"Version: {importlib.import_module('kosli_rotation').__version__}" in metadata
    assert "Requires-Dist: apache-airflow" in metadata


def test_the_wheel_declares_the_entry_point_airflow_reads(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info_file(wheel, "entry_points.txt"))
    assert dict(entry_points["apache_airflow_provider"]) == {
        "provider_info": "kosli_rotation.provider_info:get_provider_info"
    }
    assert dict(entry_points["airflow.plugins"]) == {
        "kosli_key_rotation": "kosli_rotation.ui_plugin:KosliKeyRotationPlugin"
    }, "the Key rotation page ships in the wheel, not in a plugins folder"


def test_the_provider_info_passes_airflows_own_schema_and_names_the_distribution():
    from airflow.providers_manager import _create_provider_info_schema_validator

    from kosli_rotation.provider_info import get_provider_info

    info = get_provider_info()
    _create_provider_info_schema_validator().validate(info)
    # ProvidersManager refuses a provider whose package-name is not its distribution's name.
    assert info["package-name"] == DISTRIBUTION
    assert info["versions"] == [importlib.import_module("kosli_rotation").__version__]


def test_the_kosli_connection_type_has_its_hook_and_form():
    from kosli_rotation.provider_info import get_provider_info

    (kosli,) = [entry for entry in get_provider_info()["connection-types"] if entry["connection-type"] == "kosli"]
    assert kosli["hook-class-name"] == "kosli_rotation.kosli_hook.KosliHook"
    form = kosli["ui-field-behaviour"]
    assert form["relabeling"] == {"host": "Kosli host", "password": "Admin API key"}
    assert set(form["hidden-fields"]) == {"schema", "login", "port", "extra"}
    assert form["placeholders"]["host"].startswith("https://")


def test_the_triggers_are_listed_by_their_installed_path():
    from kosli_rotation.provider_info import get_provider_info

    listed = [name for entry in get_provider_info()["triggers"] for name in entry["python-modules"]]
    assert listed == ["kosli_rotation.triggers.GraceEndTrigger", "kosli_rotation.triggers.WindowOpenTrigger"]


def named_classes(info: dict) -> list[str]:
    names = [entry["hook-class-name"] for entry in info.get("connection-types", [])]
    names += [name for entry in info.get("triggers", []) for name in entry["python-modules"]]
    names += list(info.get("notifications", []))
    names += [plugin["plugin-class"] for plugin in info.get("plugins", [])]
    return names


def test_every_class_the_provider_info_names_imports():
    from kosli_rotation.provider_info import get_provider_info

    names = named_classes(get_provider_info())
    assert names
    for dotted in names:
        module, _, attribute = dotted.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), attribute), type), dotted
    info = get_provider_info()
    for module in [name for part in ("hooks", "sensors") for entry in info[part] for name in entry["python-modules"]]:
        importlib.import_module(module)


def test_the_hook_declares_the_connection_type_the_provider_info_maps_to_it():
    from kosli_rotation.kosli_hook import KosliHook

    assert (KosliHook.conn_type, KosliHook.hook_name) == ("kosli", "Kosli")


DISCOVER = """
import json, sys
from airflow.providers_manager import ProvidersManager
manager = ProvidersManager()
name = "airflow-provider-kosli-rotation"
provider = manager.providers[name]
hook = manager.hooks["kosli"]
print(json.dumps({
    "version": provider.version,
    "hook": hook.hook_class_name if hook else None,
    "form": manager.field_behaviours.get("kosli"),
    "triggers": sorted(t.trigger_class_name for t in manager.trigger if t.package_name == name),
    "library": sys.modules["kosli_rotation"].__file__,
}))
"""


def test_airflow_discovers_the_installed_wheel_without_the_plugins_folder(wheel, tmp_path):
    """Installed into a bare target on its own, the provider is found by Airflow, not through plugins/."""
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "AIRFLOW_HOME": str(tmp_path / "airflow")}
    result = subprocess.run(
        [sys.executable, "-c", DISCOVER], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["version"] == importlib.import_module("kosli_rotation").__version__
    assert found["hook"] == "kosli_rotation.kosli_hook.KosliHook"
    assert found["form"]["relabeling"] == {"host": "Kosli host", "password": "Admin API key"}
    assert found["triggers"] == ["kosli_rotation.triggers.GraceEndTrigger", "kosli_rotation.triggers.WindowOpenTrigger"]
    assert found["library"].startswith(str(target)), "the library came from the wheel, not from plugins/"
