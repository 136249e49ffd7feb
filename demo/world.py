"""What the demo rotates: two service-account keys of org ``acme``, their Vault records, their consumers (between
them, one of every kind: in Vault, a Kosli CLI config file and the consumer sandboxes of ``sandbox.fleet``), and
the inventory that tells the DAG about them.

Keys are handled here only to seed Vault and the consumers; they are never printed or logged.
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
from sandbox.adapters import ADAPTER_KINDS
from sandbox.fleet import ConsumerFleet, consumer_name

ORG = "acme"
ADMIN_ACCOUNT = "admin-bot"
VAULT_MOUNT = "secret"  # the KV v2 mount every `bao server -dev` has
CONSUMER_FIELD = "KOSLI_API_TOKEN"


@dataclass(frozen=True)
class DemoKey:
    """One key to rotate, with where it lives, its consumers' kinds and how the demo's manual run rotates it."""

    name: str
    service_account: str
    label: str
    app: str
    conf: dict[str, Any]
    kinds: tuple[str, ...]

    @property
    def dag_id(self) -> str:
        return f"rotate_kosli_key_{self.name}"

    @property
    def vault_path(self) -> str:
        return f"kosli/{ORG}/{self.service_account}"

    def consumer_name(self, kind: str) -> str:
        return consumer_name(kind, self.app)

    def cli_config(self, state_dir: Path) -> Path:
        """Where its Kosli CLI config consumer is (the ``kosli_cli_config`` adapter's ``{target}.yml``)."""
        return cli_config_dir(state_dir) / f"{self.app}.yml"


def cli_config_dir(state_dir: Path) -> Path:
    """The one directory the workers may write CLI configs to (``KOSLI_ROTATION_CLI_CONFIG_DIRS``)."""
    return state_dir / "consumers"


#: Where the reporter's Kubernetes Secret and the Deployment reading it live.
K8S_NAMESPACE = "kosli-reporter"
#: Each kind's options beyond its plain target: canaries where the service runs them, the Deployment to restart,
#: CircleCI's context by name, the Vault secret's other field.
QUIRKS: dict[str, dict[str, Any]] = {
    "vault_kv": {"field": CONSUMER_FIELD, "keep": {"KOSLI_ORG": ORG}},
    "github_actions": {"canary": True},
    "jenkins_credential": {"canary": True},
    "circleci_env": {"canary": True, "by_name": True},
    "kubernetes_secret": {"restart": True},
}

#: Both keys are in an app's Vault secret and a Kosli CLI config file.
SHARED_KINDS = ("vault_kv", "kosli_cli_config")
#: The reporter's key is in the cluster and the cloud secret stores of AWS and Google Cloud...
REPORTER_KINDS = ("kubernetes_secret", "aws_secrets_manager", "gcp_secret_manager")
#: ... the CI bot's in every other kind with a fixture adapter (the CI systems, Azure Key Vault), so that between
#: them the two keys have a consumer of every kind (``seed_keys_and_consumers`` checks it).
CI_KINDS = tuple(kind for kind in ADAPTER_KINDS if kind not in SHARED_KINDS + REPORTER_KINDS)
KEYS = (
    DemoKey(
        name="acme-ci-bot",
        service_account="ci-bot",
        label="ci",
        app="ci",
        conf={"reason": "make demo: routine rotation", "strategy": "rotate", "grace_hours": 1},
        kinds=SHARED_KINDS + CI_KINDS,
    ),
    DemoKey(
        name="acme-reporter-bot",
        service_account="reporter-bot",
        label="reporter",
        app="reporter",
        conf={"reason": "make demo: the key may have leaked", "strategy": "replace"},
        kinds=SHARED_KINDS + REPORTER_KINDS,
    ),
)


@dataclass
class SeededKeys:
    """The sandbox's ready line: its URL and the secrets it minted (kept in memory only)."""

    url: str
    admin_key: str
    secrets: dict[str, str] = field(default_factory=dict)  # service account -> its one key


def demo_accounts() -> dict[str, str]:
    """The service accounts whose keys the demo rotates, with their key's label."""
    return {key.service_account: key.label for key in KEYS}


def seed_document(accounts: dict[str, str] | None = None) -> dict[str, Any]:
    """The sandbox seed: an admin account that may manage keys, and one key per account to rotate (``accounts``:
    service account -> key label; the demo's by default)."""
    seeded: dict[str, Any] = {ADMIN_ACCOUNT: {"privilege": "admin", "keys": [{"description": "key admin"}]}}
    for account, label in (accounts or demo_accounts()).items():
        seeded[account] = {"privilege": "member", "keys": [{"description": label}]}
    return {"orgs": {ORG: {"service_accounts": seeded}}}


def parse_ready_line(text: str) -> SeededKeys:
    """Read the URL and the minted secrets from the sandbox's ready line."""
    ready = json.loads(text)
    minted = ready["seeded"][ORG]
    return SeededKeys(
        url=ready["url"],
        admin_key=minted[ADMIN_ACCOUNT][0]["key"],
        secrets={account: keys[0]["key"] for account, keys in minted.items() if account != ADMIN_ACCOUNT},
    )


def seed_keys_and_consumers(
    vault: hvac.Client, seeded: SeededKeys, fleet: ConsumerFleet, state_dir: Path
) -> dict[str, list[dict[str, Any]]]:
    """Put each current key where a team would have it before adopting the tool: its Vault record and every
    consumer of the key (in the sandboxes of ``fleet``, an app's Vault secret, a Kosli CLI config file).
    The rotation then moves all of them. Returns each key's consumer entries for the inventory."""
    uncovered = sorted(set(fleet.kinds) - {kind for key in KEYS for kind in key.kinds})
    if uncovered:
        raise DemoError(f"no demo key has a consumer of kind {', '.join(uncovered)}: add it to a key in KEYS")
    # The CLI configs go where the workers may write them, known once the state directory is.
    quirks = {**QUIRKS, "kosli_cli_config": {"directory": cli_config_dir(state_dir)}}
    consumers = {}
    for key in KEYS:
        secret = seeded.secrets[key.service_account]
        vault.secrets.kv.v2.create_or_update_secret(
            path=key.vault_path, secret={"key": secret}, mount_point=VAULT_MOUNT
        )
        consumers[key.name] = [
            fleet.add(kind, key.consumer_name(kind), secret, key.app, **quirks.get(kind, {})) for kind in key.kinds
        ]
    return consumers


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read: it holds a key or a password."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def inventory_document(consumers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The inventory for the two keys; short retries so a failure shows quickly in the demo, and a short watch of
    the old key's use before 'replace' revokes it (the default is 10 minutes)."""
    entries = [
        {
            "name": key.name,
            "org": ORG,
            "service_account": key.service_account,
            "key_label": key.label,
            "vault_path": key.vault_path,
            "description": f"Demo: the key of {ORG}/{key.service_account}",
            "consumers": consumers[key.name],
        }
        for key in KEYS
    ]
    return {"defaults": {"retries": 1, "retry_delay_seconds": 5, "usage_observation_seconds": 15}, "keys": entries}


def write_inventory(state_dir: Path, consumers: dict[str, list[dict[str, Any]]]) -> tuple[Path, dict[str, list[str]]]:
    """Write the inventory and validate it with the product's loader, before Airflow ever parses it.

    Returns its path and, per key, the labels of its consumer batches (one mapped task each, in map index order,
    as the grid shows them)."""
    from kosli_rotation.consumers.kosli_cli_config import DIRS_ENV_VAR
    from kosli_rotation.inventory import InventoryError, load_inventory

    # The CLI configs live under state_dir/consumers: the one directory the workers may write them to (every
    # Airflow process the demo starts inherits this environment).
    os.environ[DIRS_ENV_VAR] = str(cli_config_dir(state_dir))
    path = state_dir / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory_document(consumers), sort_keys=False))
    try:
        inventory = load_inventory(path)
    except InventoryError as error:
        raise DemoError(f"the demo wrote an unusable inventory: {error}") from None
    problems = [problem for broken in inventory.broken for problem in broken.problems]
    if problems or [entry.name for entry in inventory.entries] != [key.name for key in KEYS]:
        raise DemoError(f"the demo's inventory {shown(path)} is invalid: " + "; ".join(problems))
    return path, {entry.name: [", ".join(batch) for batch in entry.consumer_batches] for entry in inventory.entries}
