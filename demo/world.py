"""What the demo rotates: two service-account keys of org ``acme``, their Vault records, their consumers,
and the inventory that tells the DAG about them.

Keys are handled here only to seed Vault and the consumer files; they are never printed or logged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import yaml

from demo.processes import DemoError, shown

ORG = "acme"
ADMIN_ACCOUNT = "admin-bot"
VAULT_MOUNT = "secret"  # the KV v2 mount every `bao server -dev` has
CONSUMER_FIELD = "KOSLI_API_TOKEN"


@dataclass(frozen=True)
class DemoKey:
    """One key to rotate, with where it lives and how the demo's manual run rotates it."""

    name: str
    service_account: str
    label: str
    app: str
    conf: dict[str, Any]

    @property
    def dag_id(self) -> str:
        return f"rotate_kosli_key_{self.name}"

    @property
    def vault_path(self) -> str:
        return f"kosli/{ORG}/{self.service_account}"

    @property
    def consumer_vault_path(self) -> str:
        return f"apps/{self.app}/kosli"

    @property
    def vault_consumer(self) -> str:
        return f"{self.app}-vault"

    @property
    def cli_consumer(self) -> str:
        return f"{self.app}-cli-config"

    @property
    def consumer_names(self) -> tuple[str, str]:
        """In inventory order, which is also the map index of each consumer's task in the DAG."""
        return (self.vault_consumer, self.cli_consumer)

    def cli_config(self, state_dir: Path) -> Path:
        return state_dir / "consumers" / f"{self.name}.yml"


KEYS = (
    DemoKey(
        name="acme-ci-bot",
        service_account="ci-bot",
        label="ci",
        app="ci",
        conf={"reason": "make demo: routine rotation", "strategy": "rotate", "grace_hours": 1},
    ),
    DemoKey(
        name="acme-reporter-bot",
        service_account="reporter-bot",
        label="reporter",
        app="reporter",
        conf={"reason": "make demo: the key may have leaked", "strategy": "replace"},
    ),
)


@dataclass
class SeededKeys:
    """The sandbox's ready line: its URL and the secrets it minted (kept in memory only)."""

    url: str
    admin_key: str
    secrets: dict[str, str] = field(default_factory=dict)  # service account -> its one key


def seed_document() -> dict[str, Any]:
    """The sandbox seed: an admin account that may manage keys, and one key per account to rotate."""
    accounts: dict[str, Any] = {ADMIN_ACCOUNT: {"privilege": "admin", "keys": [{"description": "key admin"}]}}
    for key in KEYS:
        accounts[key.service_account] = {"privilege": "member", "keys": [{"description": key.label}]}
    return {"orgs": {ORG: {"service_accounts": accounts}}}


def parse_ready_line(text: str) -> SeededKeys:
    """Read the URL and the minted secrets from the sandbox's ready line."""
    ready = json.loads(text)
    minted = ready["seeded"][ORG]
    return SeededKeys(
        url=ready["url"],
        admin_key=minted[ADMIN_ACCOUNT][0]["key"],
        secrets={key.service_account: minted[key.service_account][0]["key"] for key in KEYS},
    )


def seed_vault_and_consumers(vault: hvac.Client, seeded: SeededKeys, state_dir: Path) -> None:
    """Put each current key where a team would have it before adopting the tool: its Vault record,
    an app's Vault secret and a Kosli CLI config file. The rotation then moves all three."""
    (state_dir / "consumers").mkdir(parents=True, exist_ok=True)
    kv = vault.secrets.kv.v2
    for key in KEYS:
        secret = seeded.secrets[key.service_account]
        kv.create_or_update_secret(path=key.vault_path, secret={"key": secret}, mount_point=VAULT_MOUNT)
        kv.create_or_update_secret(
            path=key.consumer_vault_path,
            secret={"KOSLI_ORG": ORG, CONSUMER_FIELD: secret},
            mount_point=VAULT_MOUNT,
        )
        write_private(key.cli_config(state_dir), yaml.safe_dump({"org": ORG, "host": seeded.url, "api-token": secret}))


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it holds a key or a password."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def inventory_document(state_dir: Path) -> dict[str, Any]:
    """The inventory for the two keys; short retries so a failure shows quickly in the demo."""
    entries = []
    for key in KEYS:
        entries.append(
            {
                "name": key.name,
                "org": ORG,
                "service_account": key.service_account,
                "key_label": key.label,
                "vault_path": key.vault_path,
                "description": f"Demo: the key of {ORG}/{key.service_account}",
                "consumers": [
                    {
                        "name": key.vault_consumer,
                        "kind": "vault_kv",
                        "path": key.consumer_vault_path,
                        "field": CONSUMER_FIELD,
                    },
                    {"name": key.cli_consumer, "kind": "kosli_cli_config", "path": str(key.cli_config(state_dir))},
                ],
            }
        )
    return {"defaults": {"retries": 1, "retry_delay_seconds": 5}, "keys": entries}


def write_inventory(state_dir: Path) -> Path:
    """Write the inventory and validate it with the product's loader, before Airflow ever parses it."""
    from kosli_rotation.inventory import InventoryError, load_inventory

    path = state_dir / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory_document(state_dir), sort_keys=False))
    try:
        inventory = load_inventory(path)
    except InventoryError as error:
        raise DemoError(f"the demo wrote an unusable inventory: {error}") from None
    problems = [problem for broken in inventory.broken for problem in broken.problems]
    if problems or [entry.name for entry in inventory.entries] != [key.name for key in KEYS]:
        raise DemoError(f"the demo's inventory {shown(path)} is invalid: " + "; ".join(problems))
    return path
