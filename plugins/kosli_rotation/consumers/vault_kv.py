"""Another Vault (or OpenBao) KV v2 path that some system reads the key from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest
from kosli_rotation.key_store import VaultPath, open_vault
from kosli_rotation.scrub import describe_error

#: A KV v2 mount as the inventory may name it: one segment of ASCII letters, digits, ``_`` and ``-``, so it can
#: neither end a quoted string in the generated HCL policy nor reach another mount (or ``sys/``) through a ``/``.
VAULT_MOUNT = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class VaultKvConfig(ConsumerConfig):
    kind: Literal["vault_kv"]
    path: VaultPath
    field: str = "KOSLI_API_TOKEN"
    mount: str | None = Field(default=None, pattern=VAULT_MOUNT, description="KV v2 mount; default: the connection's.")
    conn_id: str = "vault_default"


class VaultKvConsumer(Consumer[VaultKvConfig]):
    """Sets one field of a KV v2 secret with check-and-set, keeping the secret's other fields."""

    kind = "vault_kv"

    def __init__(self, config: VaultKvConfig) -> None:
        super().__init__(config)
        self._client: Any = None
        self._mount = config.mount

    def _kv(self) -> Any:
        if self._client is None:
            self._client, default_mount = open_vault(self.config.conn_id)
            self._mount = self._mount or default_mount
        return self._client.secrets.kv.v2

    def describe(self) -> str:
        mount = self._mount or "<default mount>"
        return f"Vault KV {mount}/{self.config.path}, field {self.config.field} (connection {self.config.conn_id})"

    def _read(self) -> tuple[dict[str, Any], int]:
        """The secret's data and version; ({}, 0) when it does not exist yet (cas=0 creates it)."""
        import hvac.exceptions

        kv = self._kv()
        try:
            response = kv.read_secret_version(
                path=self.config.path, mount_point=self._mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return {}, 0
        except hvac.exceptions.Forbidden:
            raise ConsumerError(self.name, f"Vault denied reading {self.describe()}", retryable=False) from None
        return dict(response["data"]["data"] or {}), int(response["data"]["metadata"]["version"])

    def check_access(self) -> None:
        self._kv()
        response = self._client.adapter.post(
            "/v1/sys/capabilities-self", json={"paths": [f"{self._mount}/data/{self.config.path}"]}
        )
        capabilities = set(response.get("capabilities") or response.get("data", {}).get("capabilities", []))
        if not capabilities & {"root", "create", "update"} or not capabilities & {"root", "read"}:
            raise ConsumerError(
                self.name,
                f"the token of connection {self.config.conn_id!r} may not read and write "
                f"{self._mount}/{self.config.path} (capabilities: {sorted(capabilities) or 'none'})",
                retryable=False,
            )

    def read_digest(self) -> str | None:
        value = self._read()[0].get(self.config.field)
        return digest(value) if value else None

    def write(self, key: str) -> None:
        import hvac.exceptions

        for _ in range(5):
            data, version = self._read()
            data[self.config.field] = key
            try:
                self._kv().create_or_update_secret(
                    path=self.config.path, secret=data, cas=version, mount_point=self._mount
                )
                return
            except hvac.exceptions.InvalidRequest as error:
                if "check-and-set" not in str(error):
                    raise ConsumerError(
                        self.name, f"Vault refused the write: {describe_error(error)}", retryable=False
                    ) from None
            except hvac.exceptions.Forbidden:
                raise ConsumerError(self.name, f"Vault denied writing {self.describe()}", retryable=False) from None
        raise ConsumerError(self.name, "the secret kept changing under us (5 check-and-set conflicts)")
