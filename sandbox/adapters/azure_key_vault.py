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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sandbox.adapters.base import LOOPBACK, FixtureAdapter, InjectedFault, SeededConsumer
from sandbox.azure_identity import OFFICER
from sandbox.azure_key_vault import AzureKeyVaultSandbox
from sandbox.tls import make_authority, trusted_by_requests

CONN_ID = "azure_default"
#: The writes ``fail_writes`` answers: a new version (PUT), authenticated (not the client's bare challenge request).
WRITE_PATH = r"^/secrets/[^/]+/?$"


@dataclass
class AzureKeyVaultAdapter(FixtureAdapter):
    kind: ClassVar[str] = "azure_key_vault"
    service: ClassVar[str] = "Azure Key Vault"

    #: Variables a child process needs to reach the sandbox (``REQUESTS_CA_BUNDLE``).
    environment: dict[str, str] = field(default_factory=dict)
    vault: AzureKeyVaultSandbox | None = None
    client_id: str = ""
    _client_secret: str = field(default="", repr=False)

    def start(self, stack: contextlib.ExitStack) -> None:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="azure-kv-")))
        authority = make_authority(directory)
        self.environment = stack.enter_context(trusted_by_requests(authority.ca_file, directory))
        self.vault = stack.enter_context(AzureKeyVaultSandbox(authority=authority).start(LOOPBACK))
        self.client_id, self._client_secret = self.vault.add_app(OFFICER)
        self.url = self.vault.url
        self.connections = {CONN_ID: self._connection(self._client_secret)}

    def _connection(self, client_secret: str) -> dict[str, Any]:
        assert self.vault is not None
        extra = {
            "tenant_id": self.vault.tenant,
            "authority_host": self.vault.url,
            "disable_instance_discovery": True,
            "verify_challenge_resource": False,
        }
        return {"conn_type": "azure", "login": self.client_id, "password": client_secret, "extra": extra}

    def seed(self, name: str, value: str, target: str, **quirks: Any) -> SeededConsumer:
        """Secret ``<target>-kosli`` holding ``value``; quirks are inventory fields (``retire``, ``tags``, ...)."""
        vault = self.vault
        assert vault is not None, "start the adapter first"
        secret_name = re.sub(r"[^0-9a-zA-Z-]", "-", f"{target}-kosli")[:127]
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
        return {CONN_ID: self._connection("not-the-client-secret-" + "x" * 18)}

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        vault = self.vault
        assert vault is not None, "start the adapter first"
        active = [True]
        code = {429: "Throttled", 503: "ServiceUnavailable"}.get(status, "InternalServerError" if status >= 500 else "")
        body = {"error": {"code": code or f"Http{status}", "message": "Injected by the sandbox adapter"}}
        rule = vault.faults.add(
            WRITE_PATH,
            method="PUT",
            status=status,
            times=times,
            headers=dict(headers or {}),
            body=body,
            when=lambda request: active[0] and bool(request.headers.get("Authorization")),
        )
        return InjectedFault(lambda: rule.fired, lambda: active.__setitem__(0, False))


ADAPTER = AzureKeyVaultAdapter
