"""The consumer contract test's world: one fixture adapter (``sandbox.adapters``) per kind, started once per kind,
and per case fresh values, fresh targets and the Airflow connections set as ``AIRFLOW_CONN_*`` variables.

Only ``tests/consumers/test_contract.py`` asks for these fixtures; the kinds' own tests do not use them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.adapters import (
    ADAPTER_KINDS,
    FixtureAdapter,
    FleetSettings,
    InjectedFault,
    SeededConsumer,
    adapter_class,
)
from sandbox.fleet import consumer_name

#: Fields of a connection (at any depth: extras, kubeconfigs) that hold a credential.
CREDENTIAL_FIELDS = frozenset(
    {"password", "token", "client-key-data", "private_key", "aws_secret_access_key", "aws_session_token"}
)


def credentials_in(connections: dict[str, Any]) -> list[str]:
    """Every credential the connections hold, wherever it sits (a kubeconfig given as YAML text included)."""
    found: list[str] = []

    def walk(value: Any, name: str | None) -> None:
        if isinstance(value, str) and name == "kube_config":
            value = yaml.safe_load(value)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, str(key))
        elif isinstance(value, list):
            for item in value:
                walk(item, name)
        elif isinstance(value, str) and name in CREDENTIAL_FIELDS:
            found.append(value)

    walk(connections, None)
    return found


def fresh_value() -> str:
    """A stand-in for a Kosli key: 43 URL-safe characters, different every time."""
    return secrets.token_urlsafe(32)


@dataclass
class Contract:
    """One kind's started adapter, and what a case needs around it."""

    adapter: FixtureAdapter
    monkeypatch: pytest.MonkeyPatch
    old: str = field(default_factory=fresh_value)
    new: str = field(default_factory=fresh_value)
    #: Everything no output of the case may show: both values and every credential used.
    secrets: list[str] = field(default_factory=list)
    faults: list[InjectedFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.secrets += [self.old, self.new, *credentials_in(self.adapter.connections)]
        self.connect(self.adapter.connections)

    @property
    def kind(self) -> str:
        return self.adapter.kind

    def connect(self, connections: dict[str, dict[str, Any]]) -> None:
        """Set these connections as Airflow reads them from the environment."""
        self.secrets += credentials_in(connections)
        for conn_id, connection in connections.items():
            self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))

    def seed(self, value: str | None) -> SeededConsumer:
        """A new target of its own (``value`` None: not holding anything yet)."""
        target = "t" + secrets.token_hex(4)
        return self.adapter.seed(consumer_name(self.kind, target), value, target)

    def consumer(self, seeded: SeededConsumer) -> Any:
        """The kind's real consumer for the seeded entry, built as the inventory builds it."""
        from pydantic import TypeAdapter

        from kosli_rotation.consumers import AnyConsumerConfig, build_consumer

        return build_consumer(TypeAdapter(AnyConsumerConfig).validate_python(seeded.entry))

    def fail_writes(self, status: int, *, times: int, headers: dict[str, str]) -> InjectedFault:
        """The adapter's fault on every target's writes, removed when the case ends."""
        fault = self.adapter.fail_writes(status, times=times, headers=headers)
        self.faults.append(fault)
        return fault

    def requests_served(self) -> int:
        """Requests the kind's service saw so far."""
        return self.adapter.requests_served()


@pytest.fixture(scope="module", params=ADAPTER_KINDS)
def started_adapter(
    request: pytest.FixtureRequest, openbao: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FixtureAdapter]:
    """The kind's adapter, started once for all its cases (with a KV mount of its own on the session's OpenBao,
    and a directory under the temporary directory, which the CLI config allowlist of tests/conftest.py admits)."""
    kind: str = request.param
    settings = FleetSettings(
        kosli_url="http://127.0.0.1:9",  # no canaries in the contract: nothing calls Kosli
        org="acme",
        vault_url=openbao.url,
        vault_token=openbao.token,
        vault_mount=openbao.new_kv_mount(),
        files_dir=Path(tmp_path_factory.mktemp(f"contract-{kind}")),
    )
    with contextlib.ExitStack() as stack:
        adapter = adapter_class(kind)(settings)
        adapter.start(stack)
        yield adapter


@pytest.fixture
def contract(started_adapter: FixtureAdapter, monkeypatch: pytest.MonkeyPatch) -> Iterator[Contract]:
    """The case's world: fresh values, the rotator's connections set, quick client pacing."""
    from tests.support.fleet import quick_client_pacing

    quick_client_pacing(monkeypatch)
    world = Contract(started_adapter, monkeypatch)
    yield world
    for fault in world.faults:
        fault.remove()
