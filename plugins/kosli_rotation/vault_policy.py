"""The least-privilege Vault policy the rotation DAGs need, computed from the inventory.

    PYTHONPATH=plugins python -m kosli_rotation.vault_policy [--inventory FILE] [--mount secret]

prints an HCL policy granting exactly: read and write of each key's record, of the notes the tool keeps
next to it (consumer status, audit entries), of its metadata, and of the Vault paths listed as consumers.
Nothing else: no list of the mount, no delete, no destroy, no sys/ beyond Vault's default policy.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from kosli_rotation.consumers.vault_kv import VaultKvConfig
from kosli_rotation.inventory import Inventory, load_inventory

READ_WRITE = '["create", "read", "update"]'


def _rule(path: str, capabilities: str, why: str) -> str:
    return f'# {why}\npath "{path}" {{\n  capabilities = {capabilities}\n}}\n'


def _rules(inventory: Inventory, default_mount: str) -> Iterator[str]:
    for entry in inventory.entries:
        mount, record = entry.vault_mount or default_mount, entry.vault_path
        yield _rule(f"{mount}/data/{record}", READ_WRITE, f"{entry.dag_id}: the key's record")
        yield _rule(f"{mount}/metadata/{record}", '["read", "update"]', "its non-secret summary (custom_metadata)")
        yield _rule(f"{mount}/data/{record}/consumers/*", READ_WRITE, "when each consumer was last verified")
        yield _rule(f"{mount}/metadata/{record}/consumers/", '["list"]', "listing those (the dashboard)")
        yield _rule(f"{mount}/data/{record}/audit/*", READ_WRITE, "audit entries")
        yield _rule(f"{mount}/metadata/{record}/audit/", '["list"]', "listing audit entries")
        yield _rule(f"{mount}/data/{record}/unclaimed/*", READ_WRITE, "minted keys parked after losing their fence")
        yield _rule(f"{mount}/metadata/{record}/unclaimed/", '["list"]', "finding parked keys to revoke")
        yield _rule(f"{mount}/metadata/{record}/unclaimed/*", '["delete"]', "forgetting a parked key once it is dead")
        for consumer in entry.consumers:
            if isinstance(consumer, VaultKvConfig) and consumer.conn_id == entry.vault_conn_id:
                path = f"{consumer.mount or default_mount}/data/{consumer.path}"
                yield _rule(path, READ_WRITE, f"consumer {consumer.name}")


def vault_policy(inventory: Inventory, default_mount: str = "secret") -> str:
    """The policy text. ``default_mount`` is the KV mount of the Vault connection (its ``schema``)."""
    header = f"# Vault policy for kosli-key-rotation, generated from {inventory.path}\n\n"
    return header + "\n".join(dict.fromkeys(_rules(inventory, default_mount)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", help="inventory file (default: $KOSLI_ROTATION_INVENTORY or inventory.yaml)")
    parser.add_argument("--mount", default="secret", help="KV v2 mount of the Vault connection (default: secret)")
    args = parser.parse_args()
    print(vault_policy(load_inventory(args.inventory), args.mount), end="")


if __name__ == "__main__":
    main()
