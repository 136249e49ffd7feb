"""Vault KV v2: a secret at ``apps/{target}/kosli`` on the fleet's Vault mount whose field ``KOSLI_API_TOKEN``
holds the value (beside the ``keep`` fields).

Seeded entries use a connection of their own, ``vault_consumers``, that reaches the fleet's Vault through a
``ForwardProxy`` (``sandbox/forward_proxy.py``) with the fleet's token. So the faults ``fail_writes`` injects and
the requests counted hit the consumer writes only, never the rotation's own record, which the DAG keeps through
``vault_default`` straight to Vault. (Being another connection, it is also outside the worker policy that
``vault_policy`` derives for consumers on ``vault_default``; the fleet's token is the one it was given.) The
service's own view (``read``, ``write_mark``) asks Vault directly, not through the proxy.

Quirks: ``field`` (the field holding the value) and ``keep`` (other fields the secret holds, to be kept).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sandbox.adapters.base import LOOPBACK, VARIABLE, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.forward_proxy import ForwardProxy

CONN_ID = "vault_consumers"


class VaultKvAdapter(ServedAdapter):
    kind = "vault_kv"
    service = "Vault KV (consumers' proxy)"
    write_path = r"^/v1/[^/]+/data/"

    server: ForwardProxy

    def start(self, stack: contextlib.ExitStack) -> None:
        """A proxy in front of the fleet's Vault, and the ``vault_consumers`` connection through it."""
        import hvac

        settings = self.settings
        given: Callable[[], Any] | None = settings.vault
        if settings.vault_mount is None or (given is None and not (settings.vault_url and settings.vault_token)):
            raise ValueError("vault_kv consumers need the fleet's vault_mount, and vault_url/vault_token (or vault)")
        probe = given() if given is not None else None
        vault_url = settings.vault_url or probe.url
        token = settings.vault_token or probe.token
        self.vault: Callable[[], Any] = given or (lambda: hvac.Client(url=vault_url, token=token))
        self.mount: str = settings.vault_mount
        self.server = stack.enter_context(ForwardProxy(vault_url))
        self.url = self.server.url
        self.connections[CONN_ID] = self._connection(token)

    def _connection(self, token: str) -> dict[str, Any]:
        return {
            "conn_type": "vault",
            "host": LOOPBACK,
            "port": int(self.url.rsplit(":", 1)[1]),
            "schema": self.mount,
            "password": token,
            "extra": {"auth_type": "token", "kv_engine_version": 2},
        }

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: self._connection(invalid_token("hvs.", 24))}

    def seed(
        self,
        name: str,
        value: str | None,
        target: str,
        *,
        field: str = VARIABLE,
        keep: dict[str, str] | None = None,
    ) -> SeededConsumer:
        """``value`` None: the secret does not exist yet, or (with ``keep``) holds only the ``keep`` fields."""
        from hvac.exceptions import InvalidPath

        kv, mount, path = self.vault().secrets.kv.v2, self.mount, f"apps/{target}/kosli"
        data = {**(keep or {}), **({field: value} if value is not None else {})}
        if data:
            kv.create_or_update_secret(path=path, secret=data, mount_point=mount)

        def read() -> str | None:
            try:
                response = kv.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
            except InvalidPath:
                return None
            return (response["data"]["data"] or {}).get(field)

        def version() -> int:
            try:
                return int(kv.read_secret_metadata(path=path, mount_point=mount)["data"]["current_version"])
            except InvalidPath:
                return 0

        entry = {"name": name, "kind": self.kind, "path": path, "field": field, "conn_id": CONN_ID}
        return SeededConsumer(entry, f"Vault {mount}/{path}, field {field}", path, read, version)


ADAPTER = VaultKvAdapter
