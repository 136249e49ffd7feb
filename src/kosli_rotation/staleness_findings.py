"""What the staleness check reads and says: the record's non-secret view (``read_record``), a key's findings and
its health. Kept apart from the checks (``staleness.py``, ``staleness_expiry.py``) so both import it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kosli_rotation.errors import InvalidRequestError
from kosli_rotation.fingerprints import digest, short
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import MANAGED_BY, KeyStore, Phase
from kosli_rotation.kosli_hook import ApiKey, KosliHook
from kosli_rotation.scrub import one_line

DAY = 86400.0


@dataclass(frozen=True)
class Finding:
    """One thing the check established about a key: a ``problem`` to announce, or a note of what is fine."""

    check: str  # "record", "age", "state" or "consumer <name>"
    message: str  # scrubbed: it may quote a remote's error, and goes to the log, XCom and notices
    problem: bool = True
    notify: bool = True  # False: a problem announced before (an expiry warning between its thresholds)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", one_line(self.message))


@dataclass(frozen=True)
class RecordView:
    """The non-secret facts of a key's Vault record the checks need (from ``KeyRecord.summary()``).

    ``fingerprint`` and ``previous_fingerprint`` are for display; ``digest`` and ``previous_digest`` (full
    SHA-256) are what consumers are compared with, known when the summary carries them or the record was read.
    """

    state: Phase
    fingerprint: str
    key_id: str | None = None
    previous_fingerprint: str | None = None
    digest: str | None = None
    previous_digest: str | None = None
    run_id: str | None = None
    strategy: str | None = None
    rotated_at: float | None = None
    grace_ends_at: float | None = None
    lock_owner: str | None = None
    lock_expires_at: float | None = None
    failed_step: str | None = None
    failure: str | None = None
    todo: str | None = None
    source: str = "metadata"  # where it was read: "metadata" (the summary) or "record" (the data)

    @classmethod
    def from_summary(cls, summary: dict[str, str], source: str) -> RecordView:
        times = ("rotated_at", "grace_ends_at", "lock_expires_at")
        plain = (
            *("key_id", "previous_fingerprint", "digest", "previous_digest"),
            *("run_id", "strategy", "lock_owner", "failed_step", "failure", "todo"),
        )
        return cls(
            state=Phase(summary.get("state", Phase.IDLE.value)),
            fingerprint=summary["fingerprint"],
            source=source,
            **{name: summary.get(name) for name in plain},
            **{name: _epoch(summary.get(name)) for name in times},
        )


@dataclass
class KeyHealth:
    """What the staleness check found for one inventory entry."""

    entry: KeyEntry
    findings: list[Finding] = field(default_factory=list)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # to write beside the record once notified

    @property
    def key(self) -> str:
        return f"{self.entry.org}/{self.entry.service_account}"

    @property
    def problems(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.problem]

    def facts(self, *, dag_id: str = "", run_id: str = "") -> dict[str, Any]:
        """JSON-able, secret-free: for the task's XCom, the log and a staleness notice."""
        return {
            "key": self.key,
            "name": self.entry.name,
            "rotation_dag_id": self.entry.dag_id,
            "dag_id": dag_id,
            "run_id": run_id,
            "healthy": not self.problems,
            "problems": len(self.problems),
            "findings": [asdict(finding) for finding in self.findings],
        }

    def summary(self) -> str:
        if not self.problems:
            return f"{self.key}: healthy"
        return f"{self.key} needs attention: " + "; ".join(f"[{f.check}] {f.message}" for f in self.problems)


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else None


def _days(seconds: float) -> str:
    return f"{seconds / DAY:.1f} days"


# -- reading the record ---------------------------------------------------------------------------


def read_record(store: KeyStore) -> RecordView:
    """The record's non-secret facts: from its metadata summary when that is current, else from the record.

    The summary is mirrored right after each write of the record (best effort). Vault sets the metadata's
    ``updated_time`` to the current version's ``created_time`` when the record is written, and moves it on
    when the summary is: so the summary is current exactly when the two differ. Raises the key store's errors
    (missing record, access denied, malformed record) with their messages.
    """
    import hvac.exceptions

    try:
        metadata = store.client.secrets.kv.v2.read_secret_metadata(path=store.path, mount_point=store.mount)["data"]
    except hvac.exceptions.InvalidPath:
        metadata = {}  # no record: load() below says so, and how to create it
    except hvac.exceptions.Forbidden:
        raise InvalidRequestError(
            f"Vault denied reading the metadata of {store.location}: the token of connection {store.conn_id!r} "
            "needs the policy printed by `python -m kosli_rotation.vault_policy`"
        ) from None
    summary = dict(metadata.get("custom_metadata") or {})
    version = (metadata.get("versions") or {}).get(str(metadata.get("current_version")), {})
    current = version.get("created_time") and metadata.get("updated_time") != version.get("created_time")
    if current and summary.get("managed_by") == MANAGED_BY and summary.get("fingerprint"):
        return RecordView.from_summary(summary, "metadata")
    # A record seeded by hand, or a summary older than the record: compute the summary from the record.
    return view_of_record(store)


def view_of_record(store: KeyStore) -> RecordView:
    """The view computed from the record itself, with the full digests of its keys (the keys stay in here)."""
    data = store.load().record.model_dump(by_alias=True)  # the record's own field names, as stored in Vault
    key, previous = data["key"], data.get("previous_key")  # previous_key: the key that goes, while one is in flight
    plain = ("key_id", "run_id", "strategy", "lock_owner", "failed_step", "failure", "todo")
    times = ("rotated_at", "grace_ends_at", "lock_expires_at")
    return RecordView(
        state=Phase(data.get("state") or Phase.IDLE),
        fingerprint=short(digest(key)),
        digest=digest(key),
        previous_fingerprint=short(digest(previous)) if previous else None,
        previous_digest=digest(previous) if previous else None,
        source="record",
        **{name: data.get(name) for name in plain},
        **{name: data.get(name) for name in times},
    )


class AgeUnknown(Exception):
    """Kosli was asked, but cannot tell the age of the key in Vault."""

    def __init__(self, message: str, *, problem: bool) -> None:
        super().__init__(message)
        self.problem = problem


def kosli_key(entry: KeyEntry, view: RecordView, kosli: KosliHook) -> ApiKey:
    """Kosli's present metadata of the key in Vault, found by the record's key id, else the inventory's ``key_id``
    or ``key_label`` (as the rotation finds it). Raises ``AgeUnknown`` saying why not."""
    keys = kosli.list_keys(entry.org, entry.service_account)
    where = f"{entry.org}/{entry.service_account}"
    key_id = view.key_id or entry.key_id
    if key_id:
        found = next((key for key in keys if key.id == key_id), None)
        if found is None:
            raise AgeUnknown(f"Kosli does not list key {key_id} for {where}: is it revoked?", problem=True)
        return found
    if entry.key_label:
        matches = [key for key in keys if key.description == entry.key_label]
        if len(matches) == 1:
            return matches[0]
        raise AgeUnknown(
            f"key_label {entry.key_label!r} matches {len(matches)} keys of {where}: set key_id in the inventory",
            problem=True,
        )
    raise AgeUnknown(
        "neither the record nor the inventory names the key: set key_id or key_label in the inventory",
        problem=False,
    )
