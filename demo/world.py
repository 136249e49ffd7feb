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
from sandbox.fleet import ConsumerFleet

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
        return f"{self.app}-{CONSUMER_SUFFIXES[kind]}"

    def cli_config(self, state_dir: Path) -> Path:
        return state_dir / "consumers" / f"{self.name}.yml"


CONSUMER_SUFFIXES = {
    "vault_kv": "vault",
    "kosli_cli_config": "cli-config",
    "github_actions": "github",
    "gitlab_ci": "gitlab",
    "jenkins_credential": "jenkins",
    "circleci_env": "circleci",
    "kubernetes_secret": "k8s",
    "aws_secrets_manager": "aws",
}
#: Where the reporter's Kubernetes Secret and the Deployment reading it live.
K8S_NAMESPACE = "kosli-reporter"

# Between them, the two keys have a consumer of every kind: the CI bot's key is in the CI systems, the reporter's
# in the cluster and in AWS; both are in an app's Vault secret and a Kosli CLI config file.
KEYS = (
    DemoKey(
        name="acme-ci-bot",
        service_account="ci-bot",
        label="ci",
        app="ci",
        conf={"reason": "make demo: routine rotation", "strategy": "rotate", "grace_hours": 1},
        kinds=("vault_kv", "kosli_cli_config", "github_actions", "gitlab_ci", "jenkins_credential", "circleci_env"),
    ),
    DemoKey(
        name="acme-reporter-bot",
        service_account="reporter-bot",
        label="reporter",
        app="reporter",
        conf={"reason": "make demo: the key may have leaked", "strategy": "replace"},
        kinds=("vault_kv", "kosli_cli_config", "kubernetes_secret", "aws_secrets_manager"),
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
    consumers = {}
    for key in KEYS:
        secret = seeded.secrets[key.service_account]
        vault.secrets.kv.v2.create_or_update_secret(
            path=key.vault_path, secret={"key": secret}, mount_point=VAULT_MOUNT
        )
        consumers[key.name] = [_add_consumer(fleet, key, kind, secret, seeded.url, state_dir) for kind in key.kinds]
    return consumers


def _add_consumer(
    fleet: ConsumerFleet, key: DemoKey, kind: str, secret: str, kosli_url: str, state_dir: Path
) -> dict[str, Any]:
    """One consumer of ``key`` holding ``secret``; its inventory entry."""
    name, app = key.consumer_name(kind), key.app
    if kind == "vault_kv":
        return fleet.add_vault_kv(name, secret, path=f"apps/{app}/kosli", field=CONSUMER_FIELD, keep={"KOSLI_ORG": ORG})
    if kind == "kosli_cli_config":
        return fleet.add_kosli_cli_config(name, secret, path=key.cli_config(state_dir), host=kosli_url)
    if kind == "github_actions":
        return fleet.add_github_actions(name, secret, repository=f"{ORG}/{app}-app", canary_workflow="kosli-canary.yml")
    if kind == "gitlab_ci":
        return fleet.add_gitlab_ci(name, secret, project=f"{ORG}/platform/{app}-app")
    if kind == "jenkins_credential":
        return fleet.add_jenkins_credential(
            name, secret, credential_id=f"kosli-api-token-{app}", canary_job=f"canaries/kosli-check-{app}"
        )
    if kind == "circleci_env":
        return fleet.add_circleci_env(
            name, secret, context=f"kosli-{app}", canary_project=f"gh/{ORG}/{app}-app", by_name=True
        )
    if kind == "kubernetes_secret":
        return fleet.add_kubernetes_secret(
            name, secret, namespace=K8S_NAMESPACE, secret_name="kosli-api-token", deployment=f"{app}-web"
        )
    if kind == "aws_secrets_manager":
        return fleet.add_aws_secrets_manager(name, secret, secret_id=f"{app}/kosli")
    raise DemoError(f"the demo has no consumer of kind {kind!r}")


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
    os.environ[DIRS_ENV_VAR] = str(state_dir / "consumers")
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
