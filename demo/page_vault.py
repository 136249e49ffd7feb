"""The Key rotation page's own Vault token: a policy that reads record metadata and consumer notes, nothing else.

The page (kosli_rotation/dashboard.py) reads Vault through the connection ``kosli_rotation_page_vault``, never the
workers' token, which can read every key. ``page_vault_token`` makes a token of that policy on the demo's OpenBao.
The policy text is ``kosli_rotation.vault_policy.page_policy`` once that generator exists; until then the same
rules are written out here.
"""

from __future__ import annotations

from typing import Any

from kosli_rotation import vault_policy
from kosli_rotation.inventory import Inventory

POLICY_NAME = "kosli-rotation-page"


def _inline_page_policy(inventory: Inventory, default_mount: str) -> str:
    rules = []
    for entry in inventory.entries:
        mount, record = entry.vault_mount or default_mount, entry.vault_path
        rules += [
            f'path "{mount}/metadata/{record}" {{\n  capabilities = ["read"]\n}}\n',
            f'path "{mount}/metadata/{record}/consumers/" {{\n  capabilities = ["list"]\n}}\n',
            f'path "{mount}/data/{record}/consumers/*" {{\n  capabilities = ["read"]\n}}\n',
        ]
    return "# The Key rotation page: metadata and consumer notes only, never a key\n" + "\n".join(rules)


def page_policy(inventory: Inventory, default_mount: str) -> str:
    generator = getattr(vault_policy, "page_policy", None)
    return generator(inventory, default_mount) if generator else _inline_page_policy(inventory, default_mount)


def page_vault_token(client: Any, inventory: Inventory, default_mount: str) -> str:
    """A token (renewable, 24 h) whose only policy beyond Vault's default is the page's; ``client`` is root."""
    client.sys.create_or_update_policy(name=POLICY_NAME, policy=page_policy(inventory, default_mount))
    return str(client.auth.token.create(policies=[POLICY_NAME], ttl="24h", renewable=True)["auth"]["client_token"])
