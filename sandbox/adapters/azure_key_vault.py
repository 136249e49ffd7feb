"""Fixture adapter of ``azure_key_vault``: the Key Vault sandbox over HTTPS, an app with the least-privileged role the
consumer needs (Key Vault Secrets Officer), the ``azure_default`` connection reaching it, and secrets seeded in it.

The client verifies the sandbox's certificate for real. Connections are dicts, so the CA cannot travel in one (and the
product deliberately has no CA setting): ``start`` makes ``REQUESTS_CA_BUNDLE`` name a bundle holding the sandbox CA
(added to any bundle already named) in this process for the stack's lifetime, and ``environment`` holds that variable
for child processes (Airflow workers a fleet starts must get it in their environment). The connection's extras
``authority_host`` (the sandbox is its own Entra authority), ``disable_instance_discovery`` (Microsoft does not list
it) and ``verify_challenge_resource: false`` (it is not under vault.azure.net) are what any non-Azure authority and
vault host need.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

from sandbox.adapters.base import LOOPBACK, InjectedFault, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.azure_identity import OFFICER
from sandbox.azure_key_vault import AzureKeyVaultSandbox
from sandbox.tls import make_authority, trusted_by_requests

CONN_ID = "azure_default"


def _never(_: Any) -> bool:
    return False


class AzureKeyVaultAdapter(ServedAdapter):
    kind = "azure_key_vault"
    service = "Azure Key Vault"
    #: A write is a new version (PUT); faults answer authenticated ones, not the client's bare challenge request.
    write_path = r"^/secrets/[^/]+/?$"
    write_methods = frozenset({"PUT"})

    server: AzureKeyVaultSandbox
    #: Variables a child process needs to reach the sandbox (``REQUESTS_CA_BUNDLE``), for ``ConsumerFleet``.
    environment: dict[str, str]

    def start(self, stack: contextlib.ExitStack) -> None:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="azure-kv-")))
        authority = make_authority(directory)
        self.environment = stack.enter_context(trusted_by_requests(authority.ca_file, directory))
        self.server = stack.enter_context(AzureKeyVaultSandbox(authority=authority).start(LOOPBACK))
        self.client_id, client_secret = self.server.add_app(OFFICER)
        self.url = self.server.url
        self.connections[CONN_ID] = self._connection(client_secret)

    def _connection(self, client_secret: str) -> dict[str, Any]:
        extra = {
            "tenant_id": self.server.tenant,
            "authority_host": self.server.url,
            "disable_instance_discovery": True,
            "verify_challenge_resource": False,
        }
        return {"conn_type": "azure", "login": self.client_id, "password": client_secret, "extra": extra}

    def seed(self, name: str, value: str | None, target: str, **quirks: Any) -> SeededConsumer:
        """Secret ``<target>-kosli`` holding ``value`` (None: not created yet); quirks are inventory fields
        (``retire``, ``tags``, ``content_type``)."""
        vault = self.server
        secret_name = re.sub(r"[^0-9a-zA-Z-]", "-", f"{target}-kosli")[:127]
        if value is not None:
            vault.put_secret(secret_name, value)
        entry = {"name": name, "kind": self.kind, "vault_url": vault.url, "secret_name": secret_name, **quirks}
        return SeededConsumer(
            entry=entry,
            where=f"Azure Key Vault secret {secret_name} in {vault.url}",
            fragment=secret_name,
            read=lambda: vault.value(secret_name),
            write_mark=lambda: len(vault.versions(secret_name)),
        )

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        """The same app with a client secret Entra refuses (401 ``invalid_client``, AADSTS7000215)."""
        return {CONN_ID: self._connection(invalid_token("kv~", 40))}

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        code = "Throttled" if status == 429 else "ServiceUnavailable" if status == 503 else f"Http{status}"
        rule = self.server.faults.add(
            self.write_path,
            method="PUT",
            status=status,
            times=times or None,
            headers=dict(headers or {}),
            body={"error": {"code": code, "message": "Injected by the sandbox adapter"}},
            when=lambda request: bool(request.headers.get("Authorization")),
        )

        def remove() -> None:
            rule.when = _never

        return InjectedFault(lambda: rule.fired, remove)

    def requests_served(self) -> int:
        """Requests to the vault and the token endpoint; the OpenID discovery document (public metadata each new
        credential fetches once, no credential sent) is not counted."""
        return super().requests_served() - self.requests_to("openid_configuration")


ADAPTER = AzureKeyVaultAdapter
