"""The world of the rotation state machine (tests/kosli_rotation/test_rotation_machine.py), one per example.

A fresh KV mount on the session's real OpenBao, reached by the product through a :class:`ForwardProxy` (so Vault
can be taken away or made to hang for one step), a fresh Kosli sandbox, and two readable consumers: a ``vault_kv``
path on the same OpenBao (its own connection, so its credentials can be broken alone) and a Kosli CLI config file.

The test looks at the world directly, never through the product's bookkeeping: Vault with hvac straight to OpenBao
(not through the proxy), Kosli through the sandbox's own state (``live_secrets``), the consumers' targets as they are.
Faults are installed for one step at a time and switched off by a flag in their ``when`` predicate, so a request a
``hold`` keeps is never dropped by the clean-up of another step's faults.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from sandbox.forward_proxy import ForwardProxy
from sandbox.kosli import KosliSandbox
from sandbox.server import FaultRule, Request
from tests.support.scenario import CONSUMER_FIELD, CONSUMER_VAULT_PATH, ORG, RECORD_PATH, SERVICE_ACCOUNT, start_kosli
from tests.support.services import OpenBao

#: One Kosli hour lasts this many seconds, so a 'rotate' with ``GRACE_HOURS`` waits about a second. Long enough that
#: every secret in its grace period is seen live (with its deadline) by the invariants after the step that rotated it.
HOUR_SECONDS = 1.0
GRACE_HOURS = 1
VAULT_CONSUMER = "reporter-vault"
CLI_CONSUMER = "release-cli"
CONSUMERS = (VAULT_CONSUMER, CLI_CONSUMER)
#: The POSTs that mint a key: create (``replace``) and rotate.
MINT_PATH = r"/api-keys(/[^/]+/rotate)?$"
#: Retries of the product back off this many times faster than in production: every retry still happens, in order,
#: only the sleeps between them are shorter (the sandboxes need no time to recover).
BACKOFF_SPEEDUP = 50.0
#: hvac's request timeout in the product's connections: longer than any example, so a request the proxy holds (a hung
#: Vault write) waits for the test to release it rather than timing out at a moment that depends on the machine's speed.
VAULT_CLIENT_TIMEOUT = 600


def _no_answer(request: Request) -> bool:
    return False


class Switch:
    """Turns a set of fault rules on and off (their ``when`` predicates read it)."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, request: Request) -> bool:
        return self.on


class KillSwitch:
    """A worker dies at the ``at``-th request (0-based) its step sends to Kosli or Vault, counted across both.

    That request is dropped unanswered, either before it is handled or after (``after_commit``: the change sticks,
    the answer is lost), and every later request of the step is dropped before it is handled: a dead process sends
    nothing. Side effects without a request (a file write) still happen in program order, which only ever moves the
    kill point later.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.on = True
        self.sent = 0
        self._lock = threading.Lock()

    def index(self, request: Request) -> int:
        with self._lock:
            if "_kill_index" not in request.__dict__:
                request.__dict__["_kill_index"] = self.sent
                self.sent += 1
            return request.__dict__["_kill_index"]

    def is_the_kill(self, request: Request) -> bool:
        return self.on and self.index(request) == self.at

    def is_after_the_kill(self, request: Request) -> bool:
        return self.on and self.index(request) > self.at

    @property
    def fired(self) -> bool:
        return self.sent > self.at


def posted(request: Request, *fragments: str) -> bool:
    return all(fragment.encode() in request.body for fragment in fragments)


@contextmanager
def faster_backoff() -> Iterator[None]:
    """Every ``backoff_delay`` the product's modules imported, divided by ``BACKOFF_SPEEDUP``; restored after."""
    from kosli_rotation import retrying

    original = retrying.backoff_delay

    def quick(attempt: int, **options: Any) -> float:
        return original(attempt, **options) / BACKOFF_SPEEDUP

    patched = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("kosli_rotation") and getattr(module, "backoff_delay", None) is original
    ]
    for module in patched:
        module.backoff_delay = quick  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in patched:
            module.backoff_delay = original  # type: ignore[attr-defined]


@dataclass
class Snapshot:
    """The world as it is now, read directly."""

    record: dict[str, Any]
    live: dict[str, dict[str, Any]]  # secret -> live_secrets() item (key_id, role, valid_until)
    parked: set[str]  # every string found under <vault_path>/unclaimed/
    consumers: dict[str, str | None]

    @property
    def live_ids(self) -> set[str]:
        return {item["key_id"] for item in self.live.values()}


@dataclass
class World:
    bao: OpenBao
    workdir: Path
    mount: str = ""
    kosli: KosliSandbox = field(init=False)
    proxy: ForwardProxy = field(init=False)
    admin_key: str = ""
    first_key: str = ""
    mints: int = 0  # mint POSTs seen by Kosli (before any fault decides their fate)
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _backoff: Any = None

    def start(self) -> World:
        self.mount = self.bao.new_kv_mount()
        self.kosli, self.admin_key, (_, self.first_key) = start_kosli(hour_seconds=HOUR_SECONDS)
        self.kosli.faults.add(MINT_PATH, method="POST", status=599, times=0, when=self._count_mint)
        self.proxy = ForwardProxy(self.bao.url, timeout=VAULT_CLIENT_TIMEOUT).start()
        self._set_env(
            AIRFLOW_CONN_KOSLI_DEFAULT=json.dumps(
                {"conn_type": "http", "host": self.kosli.url, "password": self.admin_key}
            ),
            AIRFLOW_CONN_VAULT_DEFAULT=self.vault_connection(),
            AIRFLOW_CONN_VAULT_CONSUMER=self.vault_connection(),
        )
        self._backoff = faster_backoff()
        self._backoff.__enter__()
        self.vault().create_or_update_secret(path=RECORD_PATH, secret={"key": self.first_key}, mount_point=self.mount)
        self.write_consumer(VAULT_CONSUMER, self.first_key)
        self.cli_path.parent.mkdir(parents=True)
        self.cli_path.write_text(f"org: {ORG}\nhost: {self.kosli.url}\napi-token: {self.first_key}\n")
        return self

    def stop(self) -> None:
        if self._backoff is not None:
            self._backoff.__exit__(None, None, None)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.proxy.stop()
        self.kosli.stop()
        with contextlib.suppress(Exception):  # best effort: the dev server is in memory and dies with the session
            self.bao.client().sys.disable_secrets_engine(self.mount)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _set_env(self, **values: str) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _count_mint(self, request: Request) -> bool:
        self.mints += 1
        return False  # an observer: never answers

    # -- the product's configuration ----------------------------------------------------------------

    def vault_connection(self, token: str | None = None) -> str:
        host, port = self.proxy.url.removeprefix("http://").split(":")
        return json.dumps(
            {
                "conn_type": "vault",
                "host": host,
                "port": int(port),
                "schema": self.mount,
                "password": token or self.bao.token,
                "extra": {
                    "auth_type": "token",
                    "kv_engine_version": 2,
                    "client_kwargs": {"timeout": VAULT_CLIENT_TIMEOUT},
                },
            }
        )

    def entry_document(self, extra_fields: set[str]) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": "acme-ci-bot",
            "org": ORG,
            "service_account": SERVICE_ACCOUNT,
            "key_label": "ci",
            "vault_path": RECORD_PATH,
            "retries": 0,
            "vault_retry_seconds": 5,
            "consumers": [
                {
                    "name": VAULT_CONSUMER,
                    "kind": "vault_kv",
                    "path": CONSUMER_VAULT_PATH,
                    "field": CONSUMER_FIELD,
                    "conn_id": "vault_consumer",
                },
                {"name": CLI_CONSUMER, "kind": "kosli_cli_config", "path": str(self.cli_path)},
            ],
        }
        if "usage_observation_seconds" in extra_fields:
            document["usage_observation_seconds"] = 0
        return document

    # -- faults -------------------------------------------------------------------------------------

    def install_kill(self, at: int, after_commit: bool) -> KillSwitch:
        kill = KillSwitch(at)
        first = "drop_after_commit" if after_commit else "drop_before"
        for server in (self.kosli, self.proxy):
            server.faults.add("", action=first, times=1, when=kill.is_the_kill)
            server.faults.add("", action="drop_before", times=0, when=kill.is_after_the_kill)
        return kill

    def install_mint_502(self) -> Switch:
        switch = Switch()
        self.kosli.faults.add(MINT_PATH, method="POST", action="status_after_commit", status=502, when=switch)
        return switch

    def install_vault_outage(self, requests_failed: int, writes_only: bool) -> Switch:
        switch = Switch()

        def hit(request: Request) -> bool:
            return switch.on and (not writes_only or request.method in ("POST", "PUT", "PATCH", "DELETE"))

        self.proxy.faults.add("", action="drop_before", times=requests_failed, when=hit)
        return switch

    def install_hung_store(self) -> tuple[FaultRule, Switch]:
        """Hold the write of the key's record that stores a new key (phase 'stored'): the worker hangs in it."""
        switch = Switch()
        rule = self.proxy.faults.add(
            rf"^/v1/{self.mount}/data/{RECORD_PATH}$",
            method="POST",
            action="hold",
            when=lambda request: switch.on and posted(request, '"state": "stored"'),
        )
        return rule, switch

    # -- consumers ----------------------------------------------------------------------------------

    @property
    def cli_dir(self) -> Path:
        return self.workdir / "kosli-cli"

    @property
    def cli_path(self) -> Path:
        return self.cli_dir / "config.yml"

    @property
    def cli_away(self) -> Path:
        return self.workdir / "kosli-cli.unmounted"

    def break_consumer(self, name: str) -> None:
        """The vault_kv consumer's token is refused; the CLI config's directory is gone (tests run as root, so
        permissions would not stop a write)."""
        if name == VAULT_CONSUMER:
            os.environ["AIRFLOW_CONN_VAULT_CONSUMER"] = self.vault_connection(token="s.revoked-token")
        else:
            self.cli_dir.rename(self.cli_away)

    def restore_consumer(self, name: str) -> None:
        if name == VAULT_CONSUMER:
            os.environ["AIRFLOW_CONN_VAULT_CONSUMER"] = self.vault_connection()
        else:
            self.cli_away.rename(self.cli_dir)

    def write_consumer(self, name: str, key: str) -> None:
        """What a human or a config tool does to the consumer's target, behind the product's back."""
        if name == VAULT_CONSUMER:
            data = self._vault_consumer_data()
            data[CONSUMER_FIELD] = key
            self.vault().create_or_update_secret(path=CONSUMER_VAULT_PATH, secret=data, mount_point=self.mount)
        else:
            settings = yaml.safe_load(self.cli_path.read_text()) or {}
            settings["api-token"] = key
            self.cli_path.write_text(yaml.safe_dump(settings, sort_keys=False))

    def consumer_values(self) -> dict[str, str | None]:
        path = self.cli_path if self.cli_path.exists() else self.cli_away / self.cli_path.name
        settings = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
        return {
            VAULT_CONSUMER: self._vault_consumer_data().get(CONSUMER_FIELD),
            CLI_CONSUMER: settings.get("api-token"),
        }

    def _vault_consumer_data(self) -> dict[str, Any]:
        import hvac.exceptions

        try:
            response = self.vault().read_secret_version(
                path=CONSUMER_VAULT_PATH, mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return {}
        return dict(response["data"]["data"] or {})

    def use_key(self, key: str) -> int:
        """A job of the consumer runs with the key it holds (Kosli notes the key id's last use)."""
        return requests.get(
            f"{self.kosli.url}/api/v2/environments/{ORG}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).status_code

    # -- looking at the world -----------------------------------------------------------------------

    def vault(self) -> Any:
        """hvac's KV v2 API straight to OpenBao (never through the proxy the product uses)."""
        return self.bao.client().secrets.kv.v2

    def record(self) -> dict[str, Any]:
        response = self.vault().read_secret_version(
            path=RECORD_PATH, mount_point=self.mount, raise_on_deleted_version=True
        )
        return dict(response["data"]["data"])

    def parked(self) -> set[str]:
        """Every string value under <vault_path>/unclaimed/ (where a key nobody holds may be parked), recursively."""
        import hvac.exceptions

        found: set[str] = set()

        def walk(path: str) -> None:
            try:
                names = self.vault().list_secrets(path=path, mount_point=self.mount)["data"]["keys"]
            except hvac.exceptions.InvalidPath:
                return
            for name in names:
                if name.endswith("/"):
                    walk(f"{path}/{name.rstrip('/')}")
                    continue
                try:
                    data = self.vault().read_secret_version(
                        path=f"{path}/{name}", mount_point=self.mount, raise_on_deleted_version=True
                    )["data"]["data"]
                except hvac.exceptions.InvalidPath:
                    continue
                found.update(_strings(data))

        walk(f"{RECORD_PATH}/unclaimed")
        return found

    def snapshot(self) -> Snapshot:
        live = {item["secret"]: item for item in self.kosli.live_secrets(ORG, SERVICE_ACCOUNT)}
        return Snapshot(self.record(), live, self.parked(), self.consumer_values())


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


Step = tuple[str, tuple[str, ...] | None]


def step_plan(batches: list[list[str]]) -> list[Step]:
    """The DAG's tasks in the order one run executes them; each consumer batch runs fan_out then verify_consumers.
    ``wait_grace`` is the sensor (not a Rotation method): the machine waits for the record's grace end itself."""
    consumer_steps: list[Step] = []
    for batch in batches:
        consumer_steps += [("fan_out", tuple(batch)), ("verify_consumers", tuple(batch))]
    return [
        ("preflight", None),
        ("rotate_and_store", None),
        ("verify_new_key", None),
        *consumer_steps,
        ("all_consumers_verified", None),
        ("wait_grace", None),
        ("revoke_old", None),
        ("confirm_old_key_dead", None),
        ("finalize", None),
    ]


def step_name(step: Step) -> str:
    name, batch = step
    return f"{name}[{', '.join(batch)}]" if batch else name
