"""docker-compose.yaml, checked statically (no Docker engine here): it is a valid Compose file, and it deploys what a
rotation needs: Celery workers, a triggerer for the grace wait, the repo's DAGs, plugins and inventory, pinned images,
and connections from the environment rather than in the file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
OTHER_SERVICES = ("airflow-init", "postgres", "redis", "openbao")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        # host:container[:mode]; the host part may hold ${VAR:-default}, with colons of its own
        match = re.fullmatch(r"(?P<host>.+):(?P<container>/[^:]+)(:(ro|rw))?", volume)
        assert match, f"cannot read the mount {volume!r}"
        mounts[match["container"]] = match["host"]
    return mounts


def test_the_file_is_valid_against_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_a_rotation_needs_is_there_with_the_celery_executor(compose: dict[str, Any]) -> None:
    services = compose["services"]
    missing = sorted((set(AIRFLOW_SERVICES) | set(OTHER_SERVICES)) - set(services))
    assert not missing, f"services missing from docker-compose.yaml: {missing}"
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, f"{name} runs {services[name]['command']!r}, not {command!r}"
        environment = _environment(services[name])
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:"), name


def test_every_dependency_names_a_service_that_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        for dependency in depends_on if isinstance(depends_on, list) else depends_on.keys():
            assert dependency in services, f"{name} depends on {dependency!r}, which is not a service"
    for name in AIRFLOW_SERVICES:
        assert {"postgres", "redis", "openbao", "airflow-init"} <= set(services[name]["depends_on"]), name


def test_the_repository_dags_plugins_and_inventory_are_mounted_where_airflow_looks(compose: dict[str, Any]) -> None:
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        service = compose["services"][name]
        environment, mounts = _environment(service), _mounts(service)
        assert mounts.get(environment["AIRFLOW__CORE__DAGS_FOLDER"]) == "./dags", name
        assert mounts.get(environment["AIRFLOW__CORE__PLUGINS_FOLDER"]) == "./plugins", name
        inventory = mounts.get(environment["KOSLI_ROTATION_INVENTORY"])
        assert inventory and inventory.endswith("inventory.yaml}"), f"{name}: the inventory file is not mounted"


def test_every_image_is_pinned_and_the_airflow_image_is_built_with_the_pinned_requirements(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert re.fullmatch(r"\d+(\.\d+)+(-[\w.]+)?", tag), f"{name}: image {image!r} is not pinned to a version"
        if name.startswith("airflow-"):
            assert service.get("build") == ".", f"{name} must run the image built from the Dockerfile"
    airflow_pin = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert airflow_pin, "requirements.txt pins apache-airflow"
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)", dockerfile, re.M)
    assert base and base.group(1).startswith(airflow_pin.group(1) + "-"), (
        f"the Dockerfile's base image {base and base.group(1)} is not Airflow {airflow_pin.group(1)}"
    )
    assert re.search(
        r"pip install[^\n]*(\\\n[^\n]*)*-r \S*requirements\.txt[^\n]*(\\\n[^\n]*)*-c \S*constraints\.txt", dockerfile
    ), "the Dockerfile installs requirements.txt with constraints.txt"


def test_connections_come_from_the_environment_and_no_credential_is_written_in_the_file(
    compose: dict[str, Any],
) -> None:
    for name in AIRFLOW_SERVICES:
        environment = _environment(compose["services"][name])
        assert "${AIRFLOW_CONN_KOSLI_DEFAULT:?" in environment["AIRFLOW_CONN_KOSLI_DEFAULT"], name
        assert environment["AIRFLOW_CONN_VAULT_DEFAULT"].startswith("${AIRFLOW_CONN_VAULT_DEFAULT"), name
    secret_looking = re.compile(r"(ghp_|glpat-|AKIA[0-9A-Z]{16}|-----BEGIN|password\"?\s*:\s*\"[^<$])")
    assert not secret_looking.findall(COMPOSE.read_text()), "a credential is written in docker-compose.yaml"
