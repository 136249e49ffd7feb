"""Another Vault (or OpenBao) KV v2 path that some system reads the key from.

Reads and writes go through ``KeyStore`` (``read_data``, ``set_field``): the same check-and-set loop and the same
retries while Vault is away as the key's own record, so a concurrent writer costs a re-read, never its fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import Field

from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConcurrentWriteError, ConsumerError, RotationError
from kosli_rotation.fingerprints import digest
from kosli_rotation.key_store import KeyStore, VaultPath
from kosli_rotation.scrub import describe_error

T = TypeVar("T")
#: A KV v2 mount as the inventory may name it: one segment of ASCII letters, digits, ``_`` and ``-``, so it can
#: neither end a quoted string in the generated HCL policy nor reach another mount (or ``sys/``) through a ``/``.
VAULT_MOUNT = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: Check-and-set conflicts one write accepts before it gives up (retryable: the writer elsewhere may settle).
MAX_CONFLICTS = 5


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
        self._store = KeyStore(config.path, conn_id=config.conn_id, mount=config.mount)

    def describe(self) -> str:
        return f"Vault KV {self._store.location}, field {self.config.field} (connection {self.config.conn_id})"

    def _call(self, doing: str, action: Callable[[], T]) -> T:
        """``action`` on the key store, its errors (connection, denial, Vault away after its retries) made ours."""
        import hvac.exceptions

        try:
            return action()
        except ConcurrentWriteError:
            text = f"{self._store.location} kept changing while {doing} it ({MAX_CONFLICTS} check-and-set conflicts)"
            raise ConsumerError(self.name, text, retryable=True) from None
        except RotationError as error:  # the connection is missing, the token denied, the write refused
            refused = isinstance(error.__context__, hvac.exceptions.InvalidRequest)  # a 400: the same write fails again
            raise ConsumerError(self.name, describe_error(error), retryable=error.retryable and not refused) from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as error:  # a raw call, refused
            text = (
                f"Vault refused the token of connection {self.config.conn_id!r} while {doing} {self._store.location} "
                f"({describe_error(error)}): give the connection a valid token whose policy covers this path"
            )
            raise ConsumerError(self.name, text, retryable=False) from None
        except Exception as error:  # Vault unreachable, sealed or overloaded through every retry
            text = f"cannot reach Vault while {doing} {self._store.location}: {describe_error(error)}"
            raise ConsumerError(self.name, text, retryable=True) from None

    def check_access(self) -> None:
        store = self._store
        paths = {"paths": [f"{self._call('connecting for', lambda: store.mount)}/data/{store.path}"]}
        response = self._call(
            "checking access to", lambda: store.client.adapter.post("/v1/sys/capabilities-self", json=paths)
        )
        capabilities = set(response.get("capabilities") or response.get("data", {}).get("capabilities", []))
        if not capabilities & {"root", "create", "update"} or not capabilities & {"root", "read"}:
            raise ConsumerError(
                self.name,
                f"the token of connection {self.config.conn_id!r} may not read and write "
                f"{store.location} (capabilities: {sorted(capabilities) or 'none'})",
                retryable=False,
            )

    def read_digest(self) -> str | None:
        data, _ = self._call("reading", self._store.read_data)
        value = data.get(self.config.field)
        return digest(value) if value else None

    def write(self, key: str) -> None:
        self._call("writing", lambda: self._store.set_field(self.config.field, key, max_conflicts=MAX_CONFLICTS))
