"""The compose file's OpenBao keeps its data, run for real without Docker: `bao server` with the very config file
docker-compose.yaml mounts (only its storage path and listener addresses moved to this test's own), the init script
the openbao-init service runs, and the entrypoint that gives the Airflow services their connections. A record is
written through the worker's connection, the server restarted, unsealed again by the script, and the record read
back; the page's connection reads the summary but not the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.deploy.test_compose import _environment, _mounts
from tests.support.services import bao_binary, free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _host_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service has bind-mounted at ``container_path``."""
    host = _mounts(service).get(container_path)
    assert host and host.startswith("./"), f"{container_path} is not a file of the repository mounted in the service"
    return REPO / host


def openbao_config(compose: dict[str, Any]) -> tuple[Path, str]:
    """The config file the openbao service runs with, and the storage path inside the container."""
    service = compose["services"]["openbao"]
    command = service["command"] if isinstance(service["command"], list) else service["command"].split()
    assert "-dev" not in command, "the compose OpenBao runs in dev mode (in memory): it loses every record"
    configs = [arg.removeprefix("-config=") for arg in command if arg.startswith("-config=")]
    assert len(configs) == 1, f"the openbao service names no single -config file: {command}"
    config = _host_file(service, configs[0])
    storage = re.search(r'storage\s+"raft"\s*\{[^}]*?\bpath\s*=\s*"([^"]+)"', config.read_text())
    assert storage, f"{config} keeps no data (no raft storage with a path)"
    return config, storage.group(1)


def init_script(compose: dict[str, Any]) -> Path:
    service = compose["services"]["openbao-init"]
    script = next(arg for arg in [*service["entrypoint"], *(service.get("command") or [])] if arg.endswith(".sh"))
    return _host_file(service, script)


def connections_script(compose: dict[str, Any]) -> Path:
    service = compose["services"]["airflow-worker"]
    script = next(arg for arg in service["entrypoint"] if arg.endswith(".sh"))
    return _host_file(service, script)


def on_this_host(config: str, storage: str, data: Path, port: int, cluster_port: int) -> str:
    """``config`` with exactly its storage path and listener addresses replaced; everything else as committed."""
    replacements = {
        f'"{storage}"': f'"{data}"',
        re.search(r'\baddress\s*=\s*("[^"]+")', config).group(1): f'"127.0.0.1:{port}"',
        re.search(r'\bcluster_address\s*=\s*("[^"]+")', config).group(1): f'"127.0.0.1:{cluster_port}"',
    }
    for old, new in replacements.items():
        assert config.count(old) == 1, f"{old} appears {config.count(old)} times in the config"
        config = config.replace(old, new)
    return config


class Server:
    def __init__(self, config: Path, log: Path, url: str) -> None:
        self.config, self.log, self.url = config, log, url
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={self.config}"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"bao server exited: {self.log.read_text()[-2000:]}"
            try:
                requests.get(f"{self.url}/v1/sys/seal-status", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"bao server did not answer in 30 s: {self.log.read_text()[-2000:]}")

    def sealed(self) -> bool:
        return bool(requests.get(f"{self.url}/v1/sys/seal-status", timeout=5).json()["sealed"])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def world(compose, tmp_path):
    config, storage = openbao_config(compose)
    port, cluster_port = free_port(), free_port()
    host_config = tmp_path / "config.hcl"
    host_config.write_text(on_this_host(config.read_text(), storage, tmp_path / "data", port, cluster_port))
    (tmp_path / "data").mkdir()
    server = Server(host_config, tmp_path / "openbao.log", f"http://127.0.0.1:{port}")
    yield server, tmp_path
    server.stop()


def run_init(compose: dict[str, Any], server: Server, workdir: Path) -> subprocess.CompletedProcess:
    environment = _environment(compose["services"]["openbao-init"])
    env = {
        **os.environ,
        **environment,
        "PATH": f"{Path(bao_binary()).parent}:{os.environ['PATH']}",
        "BAO_ADDR": server.url,
        "BAO_INIT_DIR": str(workdir / "init"),
        "BAO_POLICY_DIR": str(workdir / "policies"),
        "BAO_WORKER_TOKEN_FILE": str(workdir / "tokens" / "worker" / "token"),
        "BAO_PAGE_TOKEN_FILE": str(workdir / "tokens" / "page" / "token"),
        "BAO_TOKEN_OWNER": "",
    }
    env.pop("BAO_TOKEN", None)
    return subprocess.run(["sh", str(init_script(compose))], env=env, capture_output=True, text=True, timeout=300)


def airflow_connections(compose: dict[str, Any], server: Server, workdir: Path) -> dict[str, str]:
    """What the Airflow services' entrypoint exports, from the tokens the init script wrote."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
        "KOSLI_ROTATION_WORKER_TOKEN_FILE": str(workdir / "tokens" / "worker" / "token"),
        "KOSLI_ROTATION_PAGE_TOKEN_FILE": str(workdir / "tokens" / "page" / "token"),
        "KOSLI_ROTATION_BAO_HOST": "127.0.0.1",
        "KOSLI_ROTATION_BAO_PORT": server.url.rsplit(":", 1)[1],
        "AIRFLOW_ENTRYPOINT": "env",
    }
    printed = subprocess.run(
        ["bash", str(connections_script(compose))], env=env, capture_output=True, text=True, check=True
    ).stdout
    exported = dict(line.split("=", 1) for line in printed.splitlines() if line.startswith("AIRFLOW_CONN_"))
    return {name: exported[name] for name in ("AIRFLOW_CONN_VAULT_DEFAULT", "AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT")}


def test_a_record_survives_a_restart_of_the_compose_openbao(compose, world, monkeypatch):
    server, workdir = world
    (workdir / "policies").mkdir()
    plugins = {
        **os.environ,
        "KOSLI_ROTATION_INVENTORY": str(REPO / "inventory.yaml"),
    }
    for name, extra in (("worker", []), ("page", ["--page"])):
        policy = subprocess.run(
            [sys.executable, "-m", "kosli_rotation.vault_policy", "--mount", "secret", *extra],
            env=plugins,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (workdir / "policies" / f"{name}.hcl").write_text(policy)

    server.start()
    first = run_init(compose, server, workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not server.sealed()
    for kept in ("unseal-key", "root-token"):
        assert (workdir / "init" / kept).stat().st_mode & 0o077 == 0, f"{kept} is readable by others"
    worker_token = (workdir / "tokens" / "worker" / "token").read_text()

    from kosli_rotation.key_store import KeyStore
    from kosli_rotation.record import KeyRecord

    for name, value in airflow_connections(compose, server, workdir).items():
        monkeypatch.setenv(name, value)
    record_path = yaml.safe_load((REPO / "inventory.yaml").read_text())["keys"][0]["vault_path"]
    worker = KeyStore(record_path)  # vault_default: the worker's token
    worker.save(KeyRecord(key="the-kosli-key", key_id="k-1"), 0)
    summary = worker.read_metadata()
    assert summary, "the worker's policy let it write the record but not its summary"

    server.stop()
    server.start()
    assert server.sealed(), "a restarted server without auto-unseal starts sealed"
    again = run_init(compose, server, workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not server.sealed()
    assert (workdir / "tokens" / "worker" / "token").read_text() == worker_token, "the worker's token was replaced"

    reread = KeyStore(record_path)
    assert reread.load().record.key == "the-kosli-key"
    page = KeyStore(record_path, conn_id="kosli_rotation_page_vault")
    assert page.read_metadata() == summary
    import hvac.exceptions

    with pytest.raises(hvac.exceptions.Forbidden):
        page.client.secrets.kv.v2.read_secret_version(path=record_path, mount_point="secret")
    assert json.loads(os.environ["AIRFLOW_CONN_VAULT_DEFAULT"])["password"] == worker_token
