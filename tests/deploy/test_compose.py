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
OTHER_SERVICES = ("airflow-init", "postgres", "redis", "openbao", "openbao-policies", "openbao-init")


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
        assert {"postgres", "redis", "openbao", "airflow-init", "openbao-init"} <= set(services[name]["depends_on"]), (
            name
        )
        assert services[name]["depends_on"]["openbao-init"]["condition"] == "service_completed_successfully", name


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
    assert re.search(r"^RUN pip wheel [^\n]*--no-deps", dockerfile, re.M), "the Dockerfile builds the provider's wheel"
    assert re.search(r"-c \S*constraints\.txt \\\n\s+\S*/airflow_provider_kosli_rotation-\*\.whl", dockerfile), (
        "the Dockerfile installs the built wheel, with the constraints"
    )


def test_connections_come_from_the_environment_and_no_credential_is_written_in_the_file(
    compose: dict[str, Any],
) -> None:
    for name in AIRFLOW_SERVICES:
        environment = _environment(compose["services"][name])
        assert "${AIRFLOW_CONN_KOSLI_DEFAULT:?" in environment["AIRFLOW_CONN_KOSLI_DEFAULT"], name
        assert environment["AIRFLOW_CONN_VAULT_DEFAULT"].startswith("${AIRFLOW_CONN_VAULT_DEFAULT"), name
    secret_looking = re.compile(r"(ghp_|glpat-|AKIA[0-9A-Z]{16}|-----BEGIN|password\"?\s*:\s*\"[^<$])")
    assert not secret_looking.findall(COMPOSE.read_text()), "a credential is written in docker-compose.yaml"


def _volumes_of(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for the service's named-volume mounts."""
    return {path: host for path, host in _mounts(service).items() if not host.startswith(("./", "/", "$"))}


def test_the_bundled_openbao_keeps_its_data_on_a_volume_and_is_not_in_dev_mode(compose: dict[str, Any]) -> None:
    service = compose["services"]["openbao"]
    command = " ".join(service["command"])
    assert "-dev" not in command, "dev mode keeps everything in memory: every record is lost on a restart"
    config = re.search(r"-config=(\S+)", command)
    assert config and _mounts(service).get(config.group(1)) == "./deploy/openbao/config.hcl", command
    storage = re.search(
        r'storage\s+"raft"\s*\{[^}]*?\bpath\s*=\s*"([^"]+)"', (REPO / "deploy/openbao/config.hcl").read_text()
    )
    assert storage, "deploy/openbao/config.hcl keeps no data"
    volume = _volumes_of(service).get(storage.group(1))
    assert volume in (compose.get("volumes") or {}), f"the storage path {storage.group(1)} is not on a named volume"


def test_an_init_service_unseals_openbao_and_gives_each_airflow_service_only_its_own_token(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    init, policies = services["openbao-init"], services["openbao-policies"]
    assert _mounts(init).get(init["entrypoint"][-1]) == "./deploy/openbao/init.sh", init["entrypoint"]
    assert init["depends_on"]["openbao"]["condition"] == "service_started"  # it is sealed, so not healthy, until then
    assert init["depends_on"]["openbao-policies"]["condition"] == "service_completed_successfully"
    generate = " ".join(policies["command"])
    assert "kosli_rotation.vault_policy" in generate and "--page" in generate, generate
    environment = _environment(init)
    by_volume = {volume: path for path, volume in _volumes_of(init).items()}
    assert environment["BAO_POLICY_DIR"] == next(
        path for path, volume in _volumes_of(init).items() if volume in _volumes_of(policies).values()
    ), "openbao-init does not read the policies openbao-policies writes"
    secrets_volume = next(volume for path, volume in _volumes_of(init).items() if path == environment["BAO_INIT_DIR"])
    worker_volume = next(v for v, p in by_volume.items() if environment["BAO_WORKER_TOKEN_FILE"].startswith(p + "/"))
    page_volume = next(v for v, p in by_volume.items() if environment["BAO_PAGE_TOKEN_FILE"].startswith(p + "/"))
    holders = {
        volume: sorted(name for name, service in services.items() if volume in _volumes_of(service).values())
        for volume in (secrets_volume, worker_volume, page_volume)
    }
    assert holders == {
        secrets_volume: ["openbao-init"],  # the unseal key and root token: nowhere else
        worker_volume: ["airflow-worker", "openbao-init"],
        page_volume: ["airflow-apiserver", "openbao-init"],
    }, holders
    for name in ("airflow-worker", "airflow-apiserver"):
        entrypoint = services[name]["entrypoint"]
        script = next(arg for arg in entrypoint if arg.endswith(".sh"))
        assert _mounts(services[name]).get(script) == "./deploy/openbao/airflow-connections.sh", name
    assert _environment(services["airflow-apiserver"])["AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT"].startswith(
        "${AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT"
    )


def test_the_stock_inventory_is_valid_in_the_compose_environment(compose: dict[str, Any], monkeypatch) -> None:
    """Every Airflow service gets the CLI-config allowlist, and the bundled inventory's consumers fit inside it."""
    from kosli_rotation.inventory import load_inventory

    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        environment = _environment(compose["services"][name])
        allowed = re.sub(
            r"^\$\{KOSLI_ROTATION_CLI_CONFIG_DIRS:-(.*)\}$",
            r"\1",
            environment.get("KOSLI_ROTATION_CLI_CONFIG_DIRS", ""),
        )
        assert allowed, f"{name}: KOSLI_ROTATION_CLI_CONFIG_DIRS is not set, so no kosli_cli_config consumer can work"
    monkeypatch.setenv("KOSLI_ROTATION_CLI_CONFIG_DIRS", allowed)
    inventory = load_inventory(REPO / "inventory.yaml")
    assert inventory.broken == [], [problem for broken in inventory.broken for problem in broken.problems]
