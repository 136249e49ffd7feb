"""One Kosli key wired to real OpenBao, the Kosli sandbox and two consumers, ready for the real DAG.

The test inspects the outcome through the sandbox and Vault directly (hvac, YAML), never through
the product's own bookkeeping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sandbox.kosli import KosliSandbox
from tests.support.services import OpenBao

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_LOGS = Path(os.environ["AIRFLOW_HOME"]) / "logs"
ORG = "acme"
SERVICE_ACCOUNT = "ci-bot"
RECORD_PATH = "kosli/acme/ci-bot"
CONSUMER_VAULT_PATH = "apps/reporter"
CONSUMER_FIELD = "KOSLI_API_TOKEN"


def start_kosli(hour_seconds: float = 2.0, **options: Any) -> tuple[KosliSandbox, str, tuple[str, str]]:
    """A Kosli sandbox with org ``acme``: an admin service account and ``ci-bot`` with one key."""
    kosli = KosliSandbox(hour_seconds=hour_seconds, **options).start()
    minted = kosli.seed(
        ORG,
        service_accounts={
            "admin-bot": {"privilege": "admin", "keys": [{"description": "key admin"}]},
            SERVICE_ACCOUNT: {"privilege": "member", "keys": [{"description": "ci"}]},
        },
    )
    admin_key = minted["admin-bot"][0]["key"]
    ci = minted[SERVICE_ACCOUNT][0]
    return kosli, admin_key, (ci["id"], ci["key"])


@dataclass
class Scenario:
    kosli: KosliSandbox
    bao: OpenBao
    mount: str
    workdir: Path
    admin_key: str
    old_key_id: str
    old_key: str
    entry: dict[str, Any] = field(default_factory=dict)

    name = "acme-ci-bot"

    @property
    def dag_id(self) -> str:
        return f"rotate_kosli_key_{self.name}"

    @property
    def cli_config_path(self) -> Path:
        return self.workdir / "kosli-cli" / "config.yml"

    def setup(self) -> Scenario:
        os.environ["AIRFLOW_CONN_KOSLI_DEFAULT"] = (
            f'{{"conn_type": "http", "host": "{self.kosli.url}", "password": "{self.admin_key}"}}'
        )
        self.vault().secrets.kv.v2.create_or_update_secret(
            path=RECORD_PATH, secret={"key": self.old_key}, mount_point=self.mount
        )
        self.cli_config_path.parent.mkdir(parents=True, exist_ok=True)
        self.cli_config_path.write_text(f"org: {ORG}\nhost: {self.kosli.url}\napi-token: {self.old_key}\n")
        self.entry = {
            "name": self.name,
            "org": ORG,
            "service_account": SERVICE_ACCOUNT,
            "key_label": "ci",
            "vault_path": RECORD_PATH,
            "retries": 0,
            "usage_observation_seconds": 0,
            "consumers": [
                {"name": "reporter-vault", "kind": "vault_kv", "path": CONSUMER_VAULT_PATH, "field": CONSUMER_FIELD},
                {"name": "release-cli", "kind": "kosli_cli_config", "path": str(self.cli_config_path)},
            ],
        }
        self.write_inventory()
        return self

    def write_inventory(self, **changes: Any) -> Path:
        self.entry.update(changes)
        path = self.workdir / "inventory.yaml"
        path.write_text(yaml.safe_dump({"keys": [self.entry]}, sort_keys=False))
        os.environ["KOSLI_ROTATION_INVENTORY"] = str(path)
        return path

    # -- running the real DAG -------------------------------------------------------------------

    def dag(self) -> Any:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        return bag.dags[self.dag_id]

    def run(self, **conf: Any) -> Any:
        """One run of the real DAG through ``dag.test()``; returns the DagRun."""
        conf.setdefault("reason", "test rotation")
        return self.dag().test(run_conf=conf)

    @staticmethod
    def task_states(dag_run: Any) -> dict[str, str]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            instances = session.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
            return {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state) for ti in instances}

    @staticmethod
    def xcom(dag_run: Any, task_id: str) -> Any:
        """What a task returned in this run (as the XCom tab of the UI shows it)."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value")
                .one()
            )
            return XComModel.deserialize_value(row)

    @staticmethod
    def task_times(dag_run: Any, task_id: str) -> tuple[datetime, datetime]:
        """When one (unmapped) task of this run started and ended."""
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id)
                .one()
            )
            return ti.start_date, ti.end_date

    # -- looking at the world directly ----------------------------------------------------------

    def vault(self) -> Any:
        return self.bao.client()

    def vault_record(self) -> dict[str, Any]:
        response = self.vault().secrets.kv.v2.read_secret_version(
            path=RECORD_PATH, mount_point=self.mount, raise_on_deleted_version=True
        )
        return response["data"]["data"]

    def vault_metadata(self) -> dict[str, str]:
        response = self.vault().secrets.kv.v2.read_secret_metadata(path=RECORD_PATH, mount_point=self.mount)
        return response["data"]["custom_metadata"] or {}

    def audit_entries(self) -> list[dict[str, Any]]:
        """The audit entries in Vault, oldest first."""
        kv = self.vault().secrets.kv.v2
        names = sorted(kv.list_secrets(path=f"{RECORD_PATH}/audit", mount_point=self.mount)["data"]["keys"])
        return [
            kv.read_secret_version(
                path=f"{RECORD_PATH}/audit/{name}", mount_point=self.mount, raise_on_deleted_version=True
            )["data"]["data"]
            for name in names
        ]

    def live_secrets(self) -> list[str]:
        return sorted(s["secret"] for s in self.kosli.live_secrets(ORG, SERVICE_ACCOUNT))

    def consumer_values(self) -> dict[str, str | None]:
        try:
            data = self.vault().secrets.kv.v2.read_secret_version(
                path=CONSUMER_VAULT_PATH, mount_point=self.mount, raise_on_deleted_version=True
            )["data"]["data"]
        except Exception:
            data = {}
        cli = yaml.safe_load(self.cli_config_path.read_text()) or {}
        return {"reporter-vault": data.get(CONSUMER_FIELD), "release-cli": cli.get("api-token")}

    def probe(self, key: str) -> int:
        import requests

        return requests.get(
            f"{self.kosli.url}/api/v2/environments/{ORG}", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ).status_code
