"""The Key rotation page's own Vault token: a policy that reads record metadata and consumer notes, nothing else.

The page (kosli_rotation/dashboard_access.py) reads Vault through the connection ``kosli_rotation_page_vault``,
never the workers' token, which can read every key. ``page_vault_token`` makes a token of the page's policy
(``kosli_rotation.vault_policy.page_policy``) on the demo's OpenBao.
"""

from __future__ import annotations

from typing import Any

from kosli_rotation.inventory import Inventory
from kosli_rotation.vault_policy import page_policy

POLICY_NAME = "kosli-rotation-page"


def page_vault_token(client: Any, inventory: Inventory, default_mount: str) -> str:
    """A token (renewable, 24 h) whose only policy beyond Vault's default is the page's; ``client`` is root."""
    client.sys.create_or_update_policy(name=POLICY_NAME, policy=page_policy(inventory, default_mount))
    return str(client.auth.token.create(policies=[POLICY_NAME], ttl="24h", renewable=True)["auth"]["client_token"])
