"""Which Kosli key an inventory entry's Vault record holds, as Kosli lists it (with the admin key)."""

from __future__ import annotations

from kosli_rotation.errors import InvalidRequestError, KosliApiError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.kosli_hook import ApiKey, KosliHook
from kosli_rotation.record import KeyRecord, Phase
from kosli_rotation.retrying import backoff_delay, call_with_retries


class _UnexpectedStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def probe_until(kosli: KosliHook, org: str, key: str, *, want: int, attempts: int) -> int:
    """Probe ``key`` until it gets ``want`` (a new key may take a moment to work, a revoked one to stop);
    return the last status seen."""

    def probe() -> int:
        status = kosli.probe(org, key)
        if status != want:
            raise _UnexpectedStatus(status)
        return status

    try:
        return call_with_retries(
            probe,
            delay_for=lambda error, n: backoff_delay(n) if isinstance(error, _UnexpectedStatus) else None,
            what=f"waiting for HTTP {want} with key {fingerprint(key)}",
            max_attempts=attempts,
        )
    except _UnexpectedStatus as error:
        return error.status


class KeyIdentity:
    """Finds the key id of the key in Vault: from the record, else the inventory's ``key_id`` or ``key_label``."""

    def __init__(self, entry: KeyEntry, kosli: KosliHook, location: str) -> None:
        self.entry = entry
        self.kosli = kosli
        self.location = location

    @property
    def where(self) -> str:
        return f"{self.entry.org}/{self.entry.service_account}"

    def list_keys(self) -> list[ApiKey]:
        """The service account's keys (metadata only), explaining an admin key that cannot list them."""
        try:
            return self.kosli.list_keys(self.entry.org, self.entry.service_account)
        except KosliApiError as error:
            if error.status in (401, 403):
                raise InvalidRequestError(
                    f"the admin key of connection {self.entry.kosli_conn_id!r} cannot manage keys of "
                    f"{self.where} (HTTP {error.status}: {error.message})"
                ) from None
            if error.status == 404:
                raise InvalidRequestError(f"Kosli has no service account {self.where}: {error.message}") from None
            raise

    def current_key_id(self, record: KeyRecord, keys: list[ApiKey]) -> str:
        entry = self.entry
        known = {key.id for key in keys}
        if record.key_id:
            if record.key_id not in known and record.state == Phase.IDLE:
                raise InvalidRequestError(
                    f"Vault record {self.location} names key {record.key_id}, which Kosli does not list "
                    f"for {self.where}; fix key_id in the record"
                )
            return record.key_id
        if entry.key_id:
            if entry.key_id not in known:
                raise InvalidRequestError(f"inventory key_id {entry.key_id} is not a key of {self.where}")
            return entry.key_id
        if entry.key_label:
            matches = [key for key in keys if key.description == entry.key_label]
            if len(matches) == 1:
                return matches[0].id
            listed = ", ".join(f"{key.id} ({key.description})" for key in keys) or "none"
            raise InvalidRequestError(
                f"inventory key_label {entry.key_label!r} matches {len(matches)} keys of {self.where} "
                f"(keys: {listed}); set key_id instead"
            )
        raise InvalidRequestError(
            f"neither the Vault record nor the inventory entry {entry.name!r} says which key of {self.where} "
            "is in Vault: set key_id or key_label in the inventory"
        )

    def current_key(self, record: KeyRecord) -> ApiKey | None:
        """Kosli's present metadata of the key in Vault (its created_at, expires_at); None if Kosli lists no
        such key."""
        keys = self.list_keys()
        key_id = self.current_key_id(record, keys)
        return next((key for key in keys if key.id == key_id), None)

    def created_at(self, record: KeyRecord) -> float | None:
        key = self.current_key(record)
        return key.created_at if key else None

    def last_used_at(self, key_id: str | None) -> float | None:
        """When Kosli last saw ``key_id`` used; None if never, or if Kosli no longer lists it."""
        if not key_id:
            return None
        try:
            return self.kosli.get_key(self.entry.org, self.entry.service_account, key_id).last_used_at
        except KosliApiError as error:
            if error.status == 404:
                return None
            raise
