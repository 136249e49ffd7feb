"""Shared fixtures. Airflow reads its configuration when first imported, so the environment is set
here, at import time, before any test module imports Airflow."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "test-output"
# One Airflow home per test session, so parallel sessions never share (or wipe) a database.
AIRFLOW_HOME = OUTPUT / f"airflow-home-{os.getpid()}"

shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)
AIRFLOW_HOME.mkdir(parents=True)
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "KOSLI_ROTATION_INVENTORY": str(REPO / "inventory.yaml"),
        # Where kosli_cli_config consumers may write: the repo inventory's /etc/kosli, and the tests' temporary
        # directories (every scenario writes its CLI config under its tmp_path). Tests of the allowlist narrow it.
        "KOSLI_ROTATION_CLI_CONFIG_DIRS": f"/etc/kosli:{tempfile.gettempdir()}",
    }
)

# Airflow configures its logging once per process, on first import: do it here, at its default level, so no test
# decides it for the rest of its worker. A test that imported it first with logging_level=DEBUG left the whole worker
# at DEBUG, where Airflow 3.3.2's in-process task supervisor logs each value sent to the masker raw
# ("Sending request ... MaskSecret(value=...)"), and a later test's "no key printed" check found its keys there.
importlib.import_module("airflow")

from tests.support.services import OpenBao  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database, as ``dag.test()`` needs (about 5 s, once per session)."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    bao = OpenBao.start(AIRFLOW_HOME / "openbao.log")
    yield bao
    bao.stop()


@pytest.fixture
def vault_mount(openbao: OpenBao, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty KV v2 mount, and the ``vault_default`` connection pointing at it."""
    mount = openbao.new_kv_mount()
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", openbao.airflow_connection(mount))
    return mount


@pytest.fixture
def kosli() -> Iterator[tuple]:
    """The Kosli sandbox, seeded with org ``acme`` (1 Kosli hour lasts 2 s)."""
    from tests.support.scenario import start_kosli

    sandbox, admin_key, ci_key = start_kosli()
    yield sandbox, admin_key, ci_key
    sandbox.stop()


@pytest.fixture
def scenario(airflow_db, openbao, vault_mount, kosli, tmp_path, monkeypatch):
    """One key, its Vault record and two consumers holding the current key, and the inventory."""
    from tests.support.scenario import Scenario

    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", os.environ["KOSLI_ROTATION_INVENTORY"])
    monkeypatch.setenv("AIRFLOW_CONN_KOSLI_DEFAULT", "")
    sandbox, admin_key, (key_id, key) = kosli
    return Scenario(sandbox, openbao, vault_mount, tmp_path, admin_key, key_id, key).setup()
