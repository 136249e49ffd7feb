"""The least-privilege Vault policies the rotation needs, computed from the inventory.

    PYTHONPATH=plugins python -m kosli_rotation.vault_policy [--inventory FILE] [--mount secret] [--page]

prints an HCL policy. The worker's (the default) grants exactly: read and write of each key's record and of the
consumer status notes beside it; updates of the record's metadata limited to its ``custom_metadata`` (the summary:
never ``max_versions``, ``delete_version_after`` or ``cas_required``, which could destroy the version history);
audit entries that can be created and read but never overwritten (write-once); the minted keys parked beside the
record; the Vault paths listed as consumers; and, for entries with GitHub consumers, the per-token pace leases
(``kosli-rotation/github-pace/*`` in the entry's mount). Nothing else: no list of the mount, no delete or destroy of a
record, no sys/ beyond Vault's default policy.

``--page`` prints the policy of the Airflow UI's Key rotation page (its own connection,
``kosli_rotation_page_vault``): read of each record's metadata (the summary), list and read of the consumer status
notes. No read of any record's data: the page's token cannot read a key.

Every path is checked (letters, digits, ``_ - .`` and ``/`` between segments; no glob, quote, space or control
character) and written as an escaped HCL string, so an inventory cannot add rules to the policy.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from kosli_rotation.consumers.github_actions import GithubActionsConfig
from kosli_rotation.consumers.github_pace import PACE_PATH
from kosli_rotation.consumers.vault_kv import VaultKvConfig
from kosli_rotation.inventory import Inventory, KeyEntry, load_inventory

READ_WRITE = ("create", "read", "update")
#: What an inventory may put into a policy path: segments of letters, digits, '_', '-', '.', joined by '/'.
SAFE_PIECE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
#: What a generated path may hold (the pieces above plus the policy's own globs).
SAFE_PATH = re.compile(r"[A-Za-z0-9_./*-]+")


@dataclass(frozen=True)
class Rule:
    path: str
    capabilities: tuple[str, ...]
    why: str
    allowed_parameters: tuple[str, ...] = ()


def hcl_string(text: str) -> str:
    """``text`` as one HCL string literal: JSON's escaping (quotes, backslashes, control and non-ASCII characters
    as escapes), and ``$``/``%`` escaped too so that no interpolation or template sequence can begin."""
    return json.dumps(text, ensure_ascii=True).replace("$", "\\u0024").replace("%", "\\u0025")


def _comment(text: str) -> str:
    """A one-line comment: anything outside printable ASCII (a newline would end the comment) becomes '?'."""
    return "# " + re.sub(r"[^\x20-\x7e]", "?", text)


def checked(value: str, what: str) -> str:
    """``value`` if it is safe in a policy path; a ValueError naming ``what`` (entry and field) otherwise."""
    segments = value.split("/")
    if not SAFE_PIECE.fullmatch(value) or any(segment in (".", "..") for segment in segments):
        raise ValueError(
            f"{what} {value!r} cannot go into the Vault policy: use only letters, digits, '_', '-' and '.' in "
            "segments joined by '/' (no '*', '+', quotes, spaces or control characters, no empty, '.' or '..' "
            "segments)"
        )
    return value


def _render(rule: Rule) -> str:
    if not SAFE_PATH.fullmatch(rule.path):  # unreachable after ``checked``: the second line of defence
        raise ValueError(f"refusing to write the policy path {rule.path!r}")
    lines = [
        _comment(rule.why),
        f"path {hcl_string(rule.path)} {{",
        f"  capabilities = {json.dumps(rule.capabilities)}",
    ]
    if rule.allowed_parameters:
        lines.append("  allowed_parameters = {")
        lines += [f"    {hcl_string(name)} = []" for name in rule.allowed_parameters]
        lines.append("  }")
    return "\n".join([*lines, "}"]) + "\n"


def _record(entry: KeyEntry, default_mount: str) -> tuple[str, str]:
    where = f"inventory entry {entry.name!r}:"
    mount = checked(entry.vault_mount, f"{where} vault_mount") if entry.vault_mount else default_mount
    return mount, checked(entry.vault_path, f"{where} vault_path")


def _worker_rules(inventory: Inventory, default_mount: str) -> Iterator[Rule]:
    for entry in inventory.entries:
        mount, record = _record(entry, default_mount)
        yield Rule(f"{mount}/data/{record}", READ_WRITE, f"{entry.dag_id}: the key's record")
        yield Rule(
            f"{mount}/metadata/{record}",
            ("read", "update"),
            "its non-secret summary: custom_metadata only (never max_versions, delete_version_after, cas_required)",
            allowed_parameters=("custom_metadata",),
        )
        yield Rule(f"{mount}/data/{record}/consumers/*", READ_WRITE, "when each consumer was last verified")
        yield Rule(f"{mount}/metadata/{record}/consumers/", ("list",), "listing those")
        yield Rule(f"{mount}/data/{record}/notices/*", READ_WRITE, "which expiry notices the staleness check sent")
        yield Rule(f"{mount}/data/{record}/audit/*", ("create", "read"), "audit entries: written once, never updated")
        yield Rule(f"{mount}/metadata/{record}/audit/", ("list",), "listing audit entries")
        yield Rule(f"{mount}/data/{record}/unclaimed/*", READ_WRITE, "minted keys parked after losing their fence")
        yield Rule(f"{mount}/metadata/{record}/unclaimed/", ("list",), "finding parked keys to revoke")
        yield Rule(f"{mount}/metadata/{record}/unclaimed/*", ("delete",), "forgetting a parked key once it is dead")
        if any(isinstance(consumer, GithubActionsConfig) for consumer in entry.consumers):
            why = "the pace of each GitHub token: a lease per token (a digest names it, never the token)"
            yield Rule(f"{mount}/data/{PACE_PATH}/*", READ_WRITE, why)
        for consumer in entry.consumers:
            if isinstance(consumer, VaultKvConfig) and consumer.conn_id == entry.vault_conn_id:
                what = f"inventory entry {entry.name!r}: consumer {consumer.name!r}"
                consumer_mount = checked(consumer.mount, f"{what} mount") if consumer.mount else default_mount
                path = checked(consumer.path, f"{what} path")
                yield Rule(f"{consumer_mount}/data/{path}", READ_WRITE, f"consumer {consumer.name}")


def _page_rules(inventory: Inventory, default_mount: str) -> Iterator[Rule]:
    for entry in inventory.entries:
        mount, record = _record(entry, default_mount)
        yield Rule(f"{mount}/metadata/{record}", ("read",), f"{entry.dag_id}: the record's summary (custom_metadata)")
        yield Rule(f"{mount}/metadata/{record}/consumers/", ("list",), "listing the consumer status notes")
        yield Rule(f"{mount}/data/{record}/consumers/*", ("read",), "each consumer's status note (never the key)")


def _policy(rules: Iterator[Rule], inventory: Inventory, default_mount: str, what: str) -> str:
    checked(default_mount, "the default mount (--mount, the Vault connection's schema)")
    header = _comment(f"Vault policy for kosli-key-rotation ({what}), generated from {inventory.path}") + "\n\n"
    return header + "\n".join(dict.fromkeys(_render(rule) for rule in rules))


def vault_policy(inventory: Inventory, default_mount: str = "secret") -> str:
    """The workers' policy text. ``default_mount`` is the KV mount of the Vault connection (its ``schema``).
    Raises ValueError, naming the entry and field, for a mount or path that cannot safely go into a policy."""
    return _policy(_worker_rules(inventory, default_mount), inventory, default_mount, "the rotation's workers")


def page_policy(inventory: Inventory, default_mount: str = "secret") -> str:
    """The Key rotation page's policy: each record's summary and its consumer status notes, never a key."""
    return _policy(_page_rules(inventory, default_mount), inventory, default_mount, "the Key rotation page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", help="inventory file (default: $KOSLI_ROTATION_INVENTORY or inventory.yaml)")
    parser.add_argument("--mount", default="secret", help="KV v2 mount of the Vault connection (default: secret)")
    parser.add_argument(
        "--page", action="store_true", help="the Key rotation page's read-only policy instead of the workers'"
    )
    args = parser.parse_args()
    generate = page_policy if args.page else vault_policy
    try:
        print(generate(load_inventory(args.inventory), args.mount), end="")
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
