"""Reads and writes the Vault KV v2 record of one Kosli key (see ``record.py``), and the notes beside it.

Every write is a check-and-set on the version we read, so two writers can never both win; a write after the
mint is also *fenced* (``update_fenced``): it applies only while the record still belongs to the attempt that
makes it. A non-secret summary is mirrored into the record's ``custom_metadata`` for dashboards and humans who
may read metadata but not the key. Time that decides who owns a record is Vault's (``vault_now``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import AfterValidator, ValidationError

from kosli_rotation.errors import ConcurrentWriteError, FenceLost, InvalidRequestError, KeyStoreError
from kosli_rotation.fingerprints import hold_secret
from kosli_rotation.record import MANAGED_BY, KeyRecord, Phase, iso
from kosli_rotation.retrying import backoff_delay, call_with_retries
from kosli_rotation.scrub import describe_error, scrub_data
from kosli_rotation.vault_notes import pack_note, unpack_note

if TYPE_CHECKING:
    import hvac

__all__ = ["MANAGED_BY", "KeyRecord", "KeyStore", "Phase", "Snapshot", "VaultPath", "check_and_set"]

log = logging.getLogger(__name__)
S = TypeVar("S")
T = TypeVar("T")
W = TypeVar("W")


def check_vault_path(path: str) -> str:
    """A KV path relative to its mount: no leading or trailing slash, no empty segment, no ``..`` anywhere, segments
    of ASCII letters, digits, ``_ . -`` only (nothing that could end a quoted HCL string or act as a policy glob)."""
    allowed = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")
    segments = path.split("/")
    if path.startswith("/") or ".." in path or any(segment in ("", ".") for segment in segments):
        raise ValueError(f"{path!r} is not a path inside the KV mount (no leading '/', no empty, '.' or '..' segments)")
    if len(path) > 512 or not set(path) <= allowed:
        raise ValueError(f"{path!r} may use only letters, digits, '-', '_', '.' and '/' (at most 512 characters)")
    return path


VaultPath = Annotated[str, AfterValidator(check_vault_path)]


@dataclass(frozen=True)
class Snapshot:
    """A record as read, with the KV version a check-and-set write must name."""

    record: KeyRecord
    version: int


#: The record's fields that hold a key (stored as they are; everything else is scrubbed).
RECORD_SECRETS = frozenset({"key", "previous_key"})


def open_vault(conn_id: str) -> tuple[hvac.Client, str]:
    """An authenticated hvac client and the KV v2 mount named by an Airflow Vault connection."""
    from airflow.providers.hashicorp.hooks.vault import VaultHook
    from airflow.sdk.exceptions import AirflowNotFoundException  # what VaultHook raises for an undefined conn_id

    try:
        hook = VaultHook(vault_conn_id=conn_id)
        client = hook.get_conn()
        if isinstance(client.token, str):
            hold_secret(client.token)
        return client, hook.vault_client.mount_point
    except AirflowNotFoundException as error:
        raise InvalidRequestError(
            f"Airflow connection {conn_id!r} is not defined: create a Vault connection "
            f"(e.g. AIRFLOW_CONN_{conn_id.upper()}='vault://:TOKEN@host:8200/secret"
            "?auth_type=token&kv_engine_version=2')"
        ) from error
    except Exception as error:
        raise KeyStoreError(f"cannot connect to Vault through connection {conn_id!r}: {error}") from error


def vault_delay(error: Exception, attempt: int) -> float | None:
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


def check_and_set(
    read: Callable[[], S],
    change: Callable[[S], W | None],
    write: Callable[[S, W], S],
    *,
    deadline: float | None = None,
    max_conflicts: int | None = None,
) -> S:
    """The one check-and-set loop: ``read``, ``change`` it (None: nothing to write, the read is returned), ``write``
    naming the version read; when another writer got in between (``ConcurrentWriteError``), read and re-apply, until
    ``deadline`` passes or after ``max_conflicts`` conflicts (then the conflict is raised)."""
    conflicts = 0
    while True:
        current = read()
        changed = change(current)
        if changed is None:
            return current
        try:
            return write(current, changed)
        except ConcurrentWriteError:
            conflicts += 1
            if (deadline is not None and time.monotonic() > deadline) or conflicts == max_conflicts:
                raise


class KeyStore:
    """Reads and writes one Vault KV secret, always with check-and-set: a key's record (``load``, ``save``,
    ``update``), or any secret one of whose fields is set (``read_data``, ``set_field``: the vault_kv consumer)."""

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

    def _retried(self, action: Callable[[], T], doing: str, deadline: float | None = None) -> T:
        """``action`` retried while Vault is away (until ``deadline``, else 5 attempts), never on a refusal."""
        attempts = None if deadline else 5
        return call_with_retries(action, delay_for=vault_delay, what=doing, deadline=deadline, max_attempts=attempts)

    def _denied(self, doing: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"Vault denied {doing} {self.location}: the token of connection {self.conn_id!r} needs "
            "the policy printed by `python -m kosli_rotation.vault_policy`"
        )

    def _write_current(self, data: dict[str, Any], version: int, *, deadline: float | None) -> int:
        """Write ``data`` to ``path`` only if it is still at ``version`` (0: absent); the new version.
        ``ConcurrentWriteError`` when another writer got in first."""
        import hvac.exceptions

        write = partial(self._kv().create_or_update_secret, self.path, data, cas=version, mount_point=self.mount)
        try:
            response = self._retried(write, f"writing Vault {self.location}", deadline)
        except hvac.exceptions.InvalidRequest as error:
            if "check-and-set" in str(error):
                raise ConcurrentWriteError(f"Vault {self.location} changed since version {version} was read") from None
            raise KeyStoreError(f"Vault refused the write to {self.location}: {describe_error(error)}") from None
        except hvac.exceptions.Forbidden as error:
            raise self._denied("writing") from error
        return int(response["data"]["version"])

    def load(self, *, deadline: float | None = None) -> Snapshot:
        """Read the record. Raises ``KeyStoreError`` naming the path when it is missing or malformed."""
        data, version = self.read_data(deadline=deadline)
        if not data:
            raise KeyStoreError(
                f"Vault record {self.location} does not exist. Store the current key there first, "
                f"for example: bao kv put -mount={self.mount} {self.path} key=<current Kosli key>",
            )
        try:
            record = KeyRecord.model_validate(data)
        except ValidationError as error:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in error.errors())
            raise KeyStoreError(
                f"Vault record {self.location} is malformed ({fields}); it needs at least a 'key' field"
            ) from None
        hold_secret(record.key)
        if record.outgoing_key:
            hold_secret(record.outgoing_key)
        return Snapshot(record, version)

    def save(self, record: KeyRecord, version: int, *, deadline: float | None = None) -> Snapshot:
        """Write ``record`` only if the record is still at ``version``; return the new snapshot."""
        # Every field but the two keys is text a person (or a remote, through an error) wrote: scrub it.
        data = {name: v if name in RECORD_SECRETS else scrub_data(v) for name, v in record.to_vault().items()}
        new_version = self._write_current(data, version, deadline=deadline)
        self._mirror_metadata(record)
        return Snapshot(record, new_version)

    def update(self, change: Callable[[KeyRecord], KeyRecord | None], *, deadline: float | None = None) -> Snapshot:
        """Read, apply ``change``, write with check-and-set; on a conflict, read again and re-apply.

        ``change`` returns None when there is nothing to write (the work is already done).
        """
        return check_and_set(
            lambda: self.load(deadline=deadline),
            lambda snapshot: change(snapshot.record.model_copy(deep=True)),
            lambda snapshot, record: self.save(record, snapshot.version, deadline=deadline),
            deadline=deadline,
        )

    def read_data(self, *, deadline: float | None = None) -> tuple[dict[str, Any], int]:
        """The secret's fields as they are, and its version: ({}, 0) when it does not exist, ({}, n) when its latest
        version n is deleted (a check-and-set write must name n)."""
        import hvac.exceptions

        read = partial(
            self._kv().read_secret_version, self.path, mount_point=self.mount, raise_on_deleted_version=False
        )
        try:
            response = self._retried(read, f"reading Vault {self.location}", deadline)["data"]
        except hvac.exceptions.InvalidPath:
            return {}, 0
        except hvac.exceptions.Forbidden as error:
            raise self._denied("reading") from error
        return dict(response["data"] or {}), int(response["metadata"]["version"])

    def set_field(self, field: str, value: str, *, deadline: float | None = None, max_conflicts: int = 5) -> None:
        """Set ``field`` of the secret at ``path`` to ``value``, keeping its other fields (creating it when absent):
        the check-and-set loop of ``update``, with its retries; nothing is written when it holds ``value``."""
        check_and_set(
            lambda: self.read_data(deadline=deadline),
            lambda held: None if held[0].get(field) == value else {**held[0], field: value},
            lambda held, data: (data, self._write_current(data, held[1], deadline=deadline)),
            deadline=deadline,
            max_conflicts=max_conflicts,
        )

    def update_fenced(
        self, attempt: str | None, change: Callable[[KeyRecord], KeyRecord | None], *, deadline: float | None = None
    ) -> Snapshot:
        """``update``, applied only while the record still belongs to ``attempt`` (the fencing token the
        operation in flight was given at its intent). Raises ``FenceLost`` when another attempt took over."""

        def fenced(record: KeyRecord) -> KeyRecord | None:
            if record.attempt != attempt:
                raise FenceLost(
                    f"Vault record {self.location} now belongs to attempt #{record.attempt or '-'} "
                    f"(phase {record.state.value!r}, owner {record.lock_owner or 'none'}), not to #{attempt}: "
                    "this attempt was taken over and changes nothing more"
                )
            return change(record)

        return self.update(fenced, deadline=deadline)

    def vault_now(self) -> float:
        """Vault's clock (``sys/health``'s ``server_time_utc``): who owns a record is judged on one clock for every
        worker, so a worker whose clock runs ahead cannot think a live lock expired."""

        def health() -> Any:
            return self.client.sys.read_health_status(method="GET", standby_ok=True)

        response = self._retried(health, f"reading the time of Vault {self.location}")
        body = response.json() if hasattr(response, "json") else response
        return float(body["server_time_utc"])

    def token_seconds_left(self) -> float | None:
        """Seconds the connection's static Vault token has left; None when it never expires, or when the connection
        logs in afresh in every task (approle, kubernetes, ...): then no token has to outlive the rotation."""
        from airflow.providers.hashicorp.hooks.vault import VaultHook

        if VaultHook(vault_conn_id=self.conn_id).vault_client.auth_type != "token":
            return None
        data = self.client.auth.token.lookup_self()["data"]
        return float(data["ttl"]) if data.get("ttl") else None

    def mark_step(self, owner: str, step: str, *, running: bool) -> None:
        """Journal which steps of an operation in flight are running. A step that starts while it is still
        marked as running was interrupted (its process killed): that goes into the history, for the audit.
        Journaling is best effort; it must never be why a step fails."""
        stamp = iso(time.time())

        def mark(record: KeyRecord) -> KeyRecord | None:
            if not record.in_flight or record.locked_by_other(owner, vault_now):
                return None
            steps = dict(record.steps_in_flight)
            if not running:
                if steps.pop(step, None) is None:
                    return None
                return record.model_copy(update={"steps_in_flight": steps})
            if step in steps:
                record = record.noted(f"{step} was interrupted ({steps[step]}); {owner} runs it again")
            steps[step] = f"{owner} since {stamp}"
            return record.model_copy(update={"steps_in_flight": steps})

        try:
            vault_now = self.vault_now()
            self.update(mark)
        except Exception as error:
            log.warning("could not journal step %s in %s: %s", step, self.location, type(error).__name__)

    def park_unclaimed(self, attempt: str, key_id: str, secret: str) -> str:
        """Keep a minted key that lost its fence beside the record (never over it) until reconciliation revokes
        it: written once (check-and-set 0), retried like the record itself."""
        path = f"{self.path}/unclaimed/{attempt}"

        def write() -> Any:
            return self._kv().create_or_update_secret(
                path=path, secret={"key": secret, "key_id": key_id}, cas=0, mount_point=self.mount
            )

        import hvac.exceptions

        try:
            self._retried(write, f"parking a key at Vault {self.mount}/{path}")
        except hvac.exceptions.InvalidRequest as error:
            if "check-and-set" not in str(error):
                raise
        return f"{self.mount}/{path}"

    def unclaimed(self) -> list[tuple[str, str, str]]:
        """Parked keys as (attempt, key id, secret); each secret is registered with the masker."""
        parked = []
        for attempt in self.list_notes("unclaimed"):
            data = self.read_note(f"unclaimed/{attempt}")
            if data and data.get("key") and data.get("key_id"):
                parked.append((attempt, str(data["key_id"]), hold_secret(str(data["key"]))))
        return parked

    def forget_unclaimed(self, attempt: str) -> None:
        self._kv().delete_metadata_and_all_versions(path=f"{self.path}/unclaimed/{attempt}", mount_point=self.mount)

    def _mirror_metadata(self, record: KeyRecord) -> None:
        """Best effort: the summary helps humans, but the data written just before is what counts."""
        try:
            self.client.adapter.post(
                f"/v1/{self.mount}/metadata/{self.path}",
                json={"custom_metadata": scrub_data(record.summary(time.time()))},
            )
        except Exception as error:  # the record itself is already safe
            log.warning("could not update metadata of %s: %s", self.location, type(error).__name__)

    def read_metadata(self) -> dict[str, str]:
        """The mirrored non-secret summary (what a dashboard may read)."""
        response = self._kv().read_secret_metadata(path=self.path, mount_point=self.mount)
        return dict(response["data"].get("custom_metadata") or {})

    def write_note(self, relative: str, data: dict[str, Any], *, once: bool = False) -> str | None:
        """Write a non-secret document (scrubbed) next to the record, of any size: consumer status, or with
        ``once`` a write-once audit entry (check-and-set 0: an entry that exists is kept as it is, and None is
        returned instead of its location)."""
        import hvac.exceptions

        path, packed = f"{self.path}/{relative}", pack_note(scrub_data(data))
        try:
            self._retried(
                lambda: self._kv().create_or_update_secret(
                    path=path, secret=packed, mount_point=self.mount, **({"cas": 0} if once else {})
                ),
                f"writing Vault {self.mount}/{path}",
            )
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as error:
            # An entry that exists answers cas=0 with a check-and-set error, or 403 under the create-only policy.
            if not (once and self.read_note(relative) is not None):
                raise KeyStoreError(f"Vault refused the write to {self.mount}/{path}: {error}") from None
            log.info("%s/%s was written before (write-once): kept as it is", self.mount, path)
            return None
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
