"""Tools of the adversarial end-to-end tests (tests/e2e/test_guarantees_under_attack.py): the bad days.

Everything here acts on the world the real DAG runs in (OpenBao, the Kosli sandbox, proxies in front of them,
other Airflow deployments) and reads outcomes from it directly, never through the tool's bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.server import Request, SandboxServer
from tests.support.scenario import CONSUMER_FIELD, CONSUMER_VAULT_PATH, RECORD_PATH, REPO, Scenario

AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: The Vault connection the ``reporter-vault`` consumer uses in these tests: its own token, not the tool's.
REPORTER_CONN_ID = "reporter_vault"
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


# -- watching requests go by --------------------------------------------------------------------------


@dataclass
class Tap:
    """Counts the requests that passed a sandbox (or proxy) and matched; ``then`` runs on each, synchronously,
    before the request is handled: the world changes at that exact moment."""

    seen: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    bodies: list[bytes] = field(default_factory=list)


def tap(
    server: SandboxServer,
    path: str,
    method: str,
    when: Callable[[Request], bool] | None = None,
    then: Callable[[int], None] | None = None,
) -> Tap:
    """Observe matching requests without touching them. Add taps before action rules: the first matching rule
    wins, and a tap never matches."""
    seen = Tap()

    def observe(request: Request) -> bool:
        if when is None or when(request):
            seen.count += 1
            seen.bodies.append(request.body)
            if then is not None:
                then(seen.count)
            seen.seen.set()
        return False

    server.faults.add(path, method=method, status=599, times=0, when=observe)
    return seen


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# -- Vault: connections, a consumer's own token, the record --------------------------------------------


def vault_connection(
    scenario: Scenario, *, url: str | None = None, token: str | None = None, timeout: float = 0
) -> str:
    """An Airflow Vault connection (JSON) to the scenario's mount, optionally through ``url`` (a proxy), with
    another token, or with a longer HTTP timeout than hvac's 30 s."""
    document = json.loads(scenario.bao.airflow_connection(scenario.mount, token))
    if url:
        host, port = url.removeprefix("http://").split(":")
        document.update(host=host, port=int(port))
    if timeout:
        document["extra"]["client_kwargs"] = {"timeout": timeout}
    return json.dumps(document)


class ConsumerVaultToken:
    """The token the ``reporter-vault`` consumer is written with: a policy of its own on its path only, which
    the team that owns that path can tighten (a policy change, a token rotated on their side)."""

    def __init__(self, scenario: Scenario, conn_id: str = REPORTER_CONN_ID) -> None:
        self.scenario = scenario
        self.conn_id = conn_id
        self.policy = f"reporter-{scenario.mount}"
        self._grant("create", "read", "update")
        created = scenario.vault().auth.token.create(policies=[self.policy], ttl="4h")
        self.token = created["auth"]["client_token"]

    def _grant(self, *capabilities: str) -> None:
        rules = (
            f'path "{self.scenario.mount}/data/{CONSUMER_VAULT_PATH}" {{ capabilities = {json.dumps(capabilities)} }}'
        )
        self.scenario.vault().sys.create_or_update_policy(name=self.policy, policy=rules)

    def read_only(self) -> None:
        """The path's owners took the write away: reads still work, writes get 403."""
        self._grant("read")

    @property
    def env_var(self) -> str:
        return f"AIRFLOW_CONN_{self.conn_id.upper()}"

    def connection(self, *, url: str | None = None, timeout: float = 0) -> str:
        return vault_connection(self.scenario, url=url, token=self.token, timeout=timeout)


def reporter_through(scenario: Scenario, conn_id: str) -> None:
    """The scenario's inventory with the ``reporter-vault`` consumer written through connection ``conn_id``."""
    consumers = [
        {**consumer, "conn_id": conn_id} if consumer["name"] == "reporter-vault" else consumer
        for consumer in scenario.entry["consumers"]
    ]
    scenario.write_inventory(consumers=consumers)


def set_reporter_value(scenario: Scenario, value: str) -> None:
    """Someone (not the tool) puts ``value`` into the ``reporter-vault`` consumer, as root."""
    scenario.vault().secrets.kv.v2.create_or_update_secret(
        path=CONSUMER_VAULT_PATH, secret={CONSUMER_FIELD: value}, mount_point=scenario.mount
    )


def raw_record(scenario: Scenario) -> tuple[dict[str, Any], int]:
    read = scenario.vault().secrets.kv.v2.read_secret_version(
        path=RECORD_PATH, mount_point=scenario.mount, raise_on_deleted_version=True
    )
    return read["data"]["data"], int(read["data"]["metadata"]["version"])


def expire_the_lock(scenario: Scenario) -> None:
    """What a stall longer than ``lock_ttl_seconds`` (a suspended VM, a frozen process) does to its holder's lock:
    the record says it expired. Written with check-and-set, as any writer must."""
    record, version = raw_record(scenario)
    record = {**record, "lock_expires_at": time.time() - 1}
    scenario.vault().secrets.kv.v2.create_or_update_secret(
        path=RECORD_PATH, secret=record, cas=version, mount_point=scenario.mount
    )


def parked_keys(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """The keys parked at ``<vault_path>/unclaimed/<attempt>``: attempt -> data (``key``, ``key_id``)."""
    import hvac.exceptions

    kv = scenario.vault().secrets.kv.v2
    try:
        names = kv.list_secrets(path=f"{RECORD_PATH}/unclaimed", mount_point=scenario.mount)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    parked = {}
    for name in names:
        read = kv.read_secret_version(
            path=f"{RECORD_PATH}/unclaimed/{name}", mount_point=scenario.mount, raise_on_deleted_version=True
        )
        parked[name.rstrip("/")] = read["data"]["data"]
    return parked


def failure_text(scenario: Scenario, log_text: str = "") -> str:
    """Every place a run's failure is told: the record's ``failure``, its metadata's, and the task logs given."""
    try:
        record_failure = str(raw_record(scenario)[0].get("failure") or "")
    except Exception:
        record_failure = ""
    return "\n".join([record_failure, scenario.vault_metadata().get("failure", ""), log_text])


# -- other Airflow deployments, other workers -----------------------------------------------------------


def other_deployment(home: Path, airflow: str = AIRFLOW, **env: str) -> dict[str, str]:
    """The environment of another Airflow deployment (its own metadata database, migrated by ``airflow``), same
    inventory and connections as this process unless ``env`` says otherwise."""
    home.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        **env,
    }
    migrated = subprocess.run([airflow, "db", "migrate"], env=environment, capture_output=True, text=True, cwd=home)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return environment


def with_clock_ahead(env: dict[str, str], offset: str) -> dict[str, str]:
    """``env`` for a worker whose wall clock is ``offset`` (libfaketime syntax, e.g. ``+2h``) ahead."""
    if not Path(LIBFAKETIME).exists():
        raise RuntimeError(f"{LIBFAKETIME} is missing: apt-get install -y faketime")
    return {**env, "LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def rollback(scenario: Scenario, **conf: Any) -> Any:
    """One run of the real rollback DAG of the scenario's key (``dag.test()``)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    conf.setdefault("reason", "the reporter cannot take the new key")
    return bag.dags[f"rollback_kosli_key_{scenario.name}"].test(run_conf=conf)


class Prober:
    """Something not in the inventory that keeps using a key (a nightly job, a forgotten script)."""

    def __init__(self, scenario: Scenario, key: str, every: float = 0.25) -> None:
        self.scenario, self.key, self.every = scenario, key, every
        self.stop = threading.Event()
        self.uses = 0
        self._thread = threading.Thread(target=self._use, daemon=True)

    def _use(self) -> None:
        while not self.stop.is_set():
            try:
                self.scenario.probe(self.key)
                self.uses += 1
            except Exception:
                pass
            self.stop.wait(self.every)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
