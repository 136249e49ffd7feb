"""The Vault KV v2 record that holds one Kosli key, its rotation state, and the audit trail.

The record's *data* is the source of truth (the key, the previous key while a rotation is in
flight, and the rotation state). Every write is a check-and-set on the version we read, so two
writers can never both win. A non-secret summary is mirrored into the record's
``custom_metadata`` for dashboards and humans who may read metadata but not the key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from kosli_rotation.errors import ConcurrentWriteError, InvalidRequestError, KeyStoreError
from kosli_rotation.fingerprints import fingerprint, hold_secret
from kosli_rotation.retrying import backoff_delay, call_with_retries

if TYPE_CHECKING:
    import hvac

MANAGED_BY = "kosli-key-rotation"
#: OpenBao refuses a request whose JSON holds more than 1000 strings, keys included ("refused JSON input due to high
#: complexity"). A note above this budget (an audit entry listing hundreds of consumers) keeps its top-level scalars
#: as they are and carries its largest fields as JSON text, named in ``PACKED_FIELDS``; ``read_note`` unpacks them.
NOTE_STRING_BUDGET = 400
PACKED_FIELDS = "packed_as_json_text"


def check_vault_path(path: str) -> str:
    """A KV path relative to its mount: no leading slash, no empty, '.' or '..' segments."""
    segments = path.split("/")
    if path.startswith("/") or any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"{path!r} is not a path inside the KV mount (no leading '/', no empty, '.' or '..' segments)")
    if any(not segment.replace("-", "").replace("_", "").replace(".", "").isalnum() for segment in segments):
        raise ValueError(f"{path!r} may use only letters, digits, '-', '_', '.' and '/'")
    return path


VaultPath = Annotated[str, AfterValidator(check_vault_path)]


class Phase(StrEnum):
    """Where a key is in its rotation. Each step moves it forward and checks it first."""

    IDLE = "idle"  # one key, in use; no rotation in flight
    ROTATING = "rotating"  # intent written; the Kosli call may or may not have happened
    STORED = "stored"  # the new key is in Vault; the old one is kept as previous_key
    OLD_KEY_REVOKED = "old_key_revoked"  # revoked (or left to Kosli's grace expiry)
    OLD_KEY_DEAD = "old_key_dead"  # the old key got HTTP 401


class KeyRecord(BaseModel):
    """Everything in the Vault record. Only ``key`` is required, so a user can seed it by hand."""

    model_config = ConfigDict(extra="ignore")

    key: str
    key_id: str | None = None
    previous_key: str | None = None
    previous_key_id: str | None = None
    state: Phase = Phase.IDLE
    run_id: str | None = None  # the run that owns the rotation in flight, or finished the last one
    strategy: str | None = None
    reason: str | None = None
    triggered_by: str | None = None
    started_at: float | None = None  # when the intent was written, before calling Kosli
    attempt: str | None = None  # tag written into the description of keys we mint, to find orphans
    rotated_at: float | None = None  # when the current key was stored: the key's age counts from here
    grace_ends_at: float | None = None  # when Kosli kills the old key by itself
    consumers_verified_at: float | None = None  # when the last consumer was proven to hold the new key
    old_key_last_used_at: float | None = None  # Kosli's last_used_at of the old key id at that moment
    note: str | None = None
    last_finished_run_id: str | None = None
    # One rotation at a time, across runs and Airflow deployments: whoever holds an unexpired lock owns
    # the rotation in flight. A holder that dies simply stops renewing it.
    lock_owner: str | None = None
    lock_expires_at: float | None = None
    # Set when a step fails for good, cleared when a run carries on: what broke and what is left to do.
    failed_step: str | None = None
    failure: str | None = None
    todo: str | None = None
    history: list[str] = []  # what happened to the rotation in flight, for the audit entry
    steps_in_flight: dict[str, str] = {}  # step -> who runs it since when; a step found here was interrupted

    def locked_by_other(self, owner: str, now: float) -> bool:
        """A lock only means something while a rotation is in flight."""
        if self.state == Phase.IDLE or not self.lock_owner or self.lock_owner == owner:
            return False
        return (self.lock_expires_at or 0) > now

    def locked_for(self, owner: str, seconds: float) -> KeyRecord:
        return self.model_copy(update={"lock_owner": owner, "lock_expires_at": time.time() + seconds})

    def noted(self, event: str) -> KeyRecord:
        """The record with ``event`` added to its history (the last 50 are kept)."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        return self.model_copy(update={"history": [*self.history, f"{stamp} {event}"][-50:]})

    @property
    def grace_to_wait_for(self) -> float | None:
        """When Kosli kills the old key by itself, if a rotation is waiting for that; else None."""
        if self.state == Phase.STORED and self.strategy == "rotate":
            return self.grace_ends_at
        return None

    def summary(self) -> dict[str, str]:
        """The non-secret view mirrored into custom_metadata (Vault wants str -> str)."""
        fields = {
            "managed_by": MANAGED_BY,
            "state": self.state.value,
            "key_id": self.key_id,
            "fingerprint": fingerprint(self.key),
            "previous_key_id": self.previous_key_id,
            "previous_fingerprint": fingerprint(self.previous_key) if self.previous_key else None,
            "run_id": self.run_id,
            "strategy": self.strategy,
            "rotated_at": _iso(self.rotated_at),
            "grace_ends_at": _iso(self.grace_ends_at),
            "consumers_verified_at": _iso(self.consumers_verified_at),
            "last_finished_run_id": self.last_finished_run_id,
            "lock_owner": self.lock_owner,
            "lock_expires_at": _iso(self.lock_expires_at),
            "failed_step": self.failed_step,
            "failure": self.failure,
            "todo": self.todo,
            "updated_at": _iso(time.time()),
        }
        return {name: value[:512] for name, value in fields.items() if value}


@dataclass(frozen=True)
class Snapshot:
    """A record as read, with the KV version a check-and-set write must name."""

    record: KeyRecord
    version: int


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else None


def open_vault(conn_id: str) -> tuple[hvac.Client, str]:
    """An authenticated hvac client and the KV v2 mount named by an Airflow Vault connection."""
    from airflow.providers.hashicorp.hooks.vault import VaultHook

    try:
        hook = VaultHook(vault_conn_id=conn_id)
        return hook.get_conn(), hook.vault_client.mount_point
    except Exception as error:
        if type(error).__name__ == "AirflowNotFoundException":
            raise InvalidRequestError(
                f"Airflow connection {conn_id!r} is not defined: create a Vault connection "
                f"(e.g. AIRFLOW_CONN_{conn_id.upper()}='vault://:TOKEN@host:8200/secret"
                "?auth_type=token&kv_engine_version=2')"
            ) from error
        raise KeyStoreError(f"cannot connect to Vault through connection {conn_id!r}: {error}") from error


def _vault_delay(error: Exception, attempt: int) -> float | None:
    """Retry Vault when it is unreachable, sealed or overloaded; never on a refusal."""
    import hvac.exceptions
    import requests

    retryable = (
        requests.ConnectionError,
        requests.Timeout,
        hvac.exceptions.VaultDown,
        hvac.exceptions.InternalServerError,
        hvac.exceptions.RateLimitExceeded,
        hvac.exceptions.BadGateway,
    )
    return backoff_delay(attempt, cap=15.0) if isinstance(error, retryable) else None


class KeyStore:
    """Reads and writes one key's Vault record, always with check-and-set."""

    def __init__(self, path: str, *, conn_id: str = "vault_default", mount: str | None = None) -> None:
        self.path = path
        self.conn_id = conn_id
        self._mount = mount
        self._client: hvac.Client | None = None

    @property
    def client(self) -> hvac.Client:
        if self._client is None:
            self._client, default_mount = open_vault(self.conn_id)
            self._mount = self._mount or default_mount
        return self._client

    @property
    def mount(self) -> str:
        _ = self.client
        assert self._mount is not None
        return self._mount

    @property
    def location(self) -> str:
        return f"{self._mount or '<mount of ' + self.conn_id + '>'}/{self.path}"

    def _kv(self) -> Any:
        return self.client.secrets.kv.v2

    def load(self, *, deadline: float | None = None) -> Snapshot:
        """Read the record. Raises ``KeyStoreError`` naming the path when it is missing or malformed."""
        import hvac.exceptions

        def read() -> dict[str, Any]:
            return self._kv().read_secret_version(path=self.path, mount_point=self.mount, raise_on_deleted_version=True)

        try:
            response = call_with_retries(
                read,
                delay_for=_vault_delay,
                what=f"reading Vault {self.location}",
                deadline=deadline,
                max_attempts=None if deadline else 5,
            )
        except hvac.exceptions.InvalidPath as error:
            raise KeyStoreError(
                f"Vault record {self.location} does not exist. Store the current key there first, "
                f"for example: bao kv put -mount={self.mount} {self.path} key=<current Kosli key>",
            ) from error
        except hvac.exceptions.Forbidden as error:
            raise InvalidRequestError(
                f"Vault denied reading {self.location}: the token of connection {self.conn_id!r} needs "
                "the policy printed by `python -m kosli_rotation.vault_policy`"
            ) from error
        data = response["data"]["data"] or {}
        try:
            record = KeyRecord.model_validate(data)
        except ValidationError as error:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in error.errors())
            raise KeyStoreError(
                f"Vault record {self.location} is malformed ({fields}); it needs at least a 'key' field"
            ) from None
        hold_secret(record.key)
        if record.previous_key:
            hold_secret(record.previous_key)
        return Snapshot(record, int(response["data"]["metadata"]["version"]))

    def save(self, record: KeyRecord, version: int, *, deadline: float | None = None) -> Snapshot:
        """Write ``record`` only if the record is still at ``version``; return the new snapshot."""
        import hvac.exceptions

        data = record.model_dump(mode="json", exclude_none=True)

        def write() -> dict[str, Any]:
            return self._kv().create_or_update_secret(path=self.path, secret=data, cas=version, mount_point=self.mount)

        try:
            response = call_with_retries(
                write,
                delay_for=_vault_delay,
                what=f"writing Vault {self.location}",
                deadline=deadline,
                max_attempts=None if deadline else 5,
            )
        except hvac.exceptions.InvalidRequest as error:
            if "check-and-set" in str(error):
                raise ConcurrentWriteError(
                    f"Vault record {self.location} changed since version {version} was read"
                ) from None
            raise KeyStoreError(f"Vault refused the write to {self.location}: {error}") from None
        except hvac.exceptions.Forbidden as error:
            raise InvalidRequestError(
                f"Vault denied writing {self.location}: the token of connection {self.conn_id!r} needs "
                "the policy printed by `python -m kosli_rotation.vault_policy`"
            ) from error
        new_version = int(response["data"]["version"])
        self._mirror_metadata(record)
        return Snapshot(record, new_version)

    def update(self, change: Callable[[KeyRecord], KeyRecord | None], *, deadline: float | None = None) -> Snapshot:
        """Read, apply ``change``, write with check-and-set; on a conflict, read again and re-apply.

        ``change`` returns None when there is nothing to write (the work is already done).
        """
        while True:
            snapshot = self.load(deadline=deadline)
            changed = change(snapshot.record.model_copy(deep=True))
            if changed is None:
                return snapshot
            try:
                return self.save(changed, snapshot.version, deadline=deadline)
            except ConcurrentWriteError:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                continue

    def mark_step(self, owner: str, step: str, *, running: bool) -> None:
        """Journal which steps of a rotation in flight are running. A step that starts while it is still
        marked as running was interrupted (its process killed): that goes into the history, for the audit.
        Journaling is best effort; it must never be why a step fails."""
        now = time.time()

        def mark(record: KeyRecord) -> KeyRecord | None:
            if record.state == Phase.IDLE or record.locked_by_other(owner, now):
                return None
            steps = dict(record.steps_in_flight)
            if not running:
                if steps.pop(step, None) is None:
                    return None
                return record.model_copy(update={"steps_in_flight": steps})
            if step in steps:
                record = record.noted(f"{step} was interrupted ({steps[step]}); {owner} runs it again")
            steps[step] = f"{owner} since {_iso(now)}"
            return record.model_copy(update={"steps_in_flight": steps})

        try:
            self.update(mark)
        except Exception as error:
            import logging

            logging.getLogger(__name__).warning("could not journal step %s in %s: %s", step, self.location, error)

    def _mirror_metadata(self, record: KeyRecord) -> None:
        """Best effort: the summary helps humans, but the data written just before is what counts."""
        try:
            self.client.adapter.post(
                f"/v1/{self.mount}/metadata/{self.path}", json={"custom_metadata": record.summary()}
            )
        except Exception as error:  # the record itself is already safe
            import logging

            logging.getLogger(__name__).warning("could not update metadata of %s: %s", self.location, error)

    def read_metadata(self) -> dict[str, str]:
        """The mirrored non-secret summary (what a dashboard may read)."""
        response = self._kv().read_secret_metadata(path=self.path, mount_point=self.mount)
        return dict(response["data"].get("custom_metadata") or {})

    def write_note(self, relative: str, data: dict[str, Any]) -> str:
        """Write a non-secret document next to the record (audit entries, consumer status), of any size."""
        path, packed = f"{self.path}/{relative}", pack_note(data)
        call_with_retries(
            lambda: self._kv().create_or_update_secret(path=path, secret=packed, mount_point=self.mount),
            delay_for=_vault_delay,
            what=f"writing Vault {self.mount}/{path}",
        )
        return f"{self.mount}/{path}"

    def read_note(self, relative: str) -> dict[str, Any] | None:
        import hvac.exceptions

        try:
            response = self._kv().read_secret_version(
                path=f"{self.path}/{relative}", mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        return unpack_note(response["data"]["data"])

    def list_notes(self, relative: str) -> list[str]:
        import hvac.exceptions

        try:
            response = self._kv().list_secrets(path=f"{self.path}/{relative}", mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            return []
        return list(response["data"]["keys"])


def _strings(value: Any) -> int:
    """How many JSON strings ``value`` is written as (object keys count, as Vault's request limits count them)."""
    if isinstance(value, dict):
        return sum(1 + _strings(item) for item in value.values())
    if isinstance(value, list):
        return sum(_strings(item) for item in value)
    return 1 if isinstance(value, str) else 0


def pack_note(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as written to Vault: unchanged when small; else its largest fields as JSON text, largest first,
    until it fits ``NOTE_STRING_BUDGET``."""
    if _strings(data) <= NOTE_STRING_BUDGET:
        return data
    packed, names = dict(data), []
    for name in sorted((n for n, v in data.items() if isinstance(v, dict | list)), key=lambda n: -_strings(data[n])):
        packed[name] = json.dumps(data[name], sort_keys=True)
        names.append(name)
        if _strings(packed) + len(names) + 1 <= NOTE_STRING_BUDGET:
            break
    packed[PACKED_FIELDS] = names
    return packed


def unpack_note(data: dict[str, Any]) -> dict[str, Any]:
    """A note as ``pack_note`` was given it."""
    names = data.get(PACKED_FIELDS)
    if not names:
        return data
    unpacked = {name: value for name, value in data.items() if name != PACKED_FIELDS}
    for name in names:
        unpacked[name] = json.loads(data[name])
    return unpacked
