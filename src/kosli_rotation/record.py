"""The Vault record of one Kosli key: its fields, its phases, and the named transitions between them.

The record's *data* is the source of truth of a rotation. Its fields keep the names a user seeds by hand
(``key``, and ``previous_key`` while a rotation is in flight); the code reads them by role:

* ``key`` is the key that **stays**: the new key in a rotation, the restored key in a rollback;
* ``outgoing_key`` (stored as ``previous_key``) is the key that **goes**: the old key in a rotation, the new
  key in a rollback.

So a rollback is the same machine as a rotation with the roles swapped and ``operation == "rollback"``:
both revoke the outgoing key once every consumer is proven to hold the key that stays.

Every transition is a method that returns a new record (the caller writes it with check-and-set); which
step may make which transition is declared once, in ``kosli_rotation.machine``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kosli_rotation.fingerprints import digest, fingerprint

MANAGED_BY = "kosli-key-rotation"

Operation = Literal["rotation", "rollback"]
Strategy = Literal["rotate", "replace"]


class Phase(StrEnum):
    """Where a key is in its rotation (or rollback). Each step checks it first and moves it forward."""

    IDLE = "idle"  # one key, in use; nothing in flight
    ROTATING = "rotating"  # intent written; the Kosli call may or may not have happened
    STORED = "stored"  # the key that stays is in Vault; the outgoing key is kept until it is dead
    OLD_KEY_REVOKED = "old_key_revoked"  # the outgoing key is revoked (or left to Kosli's grace expiry)
    OLD_KEY_DEAD = "old_key_dead"  # the outgoing key got HTTP 401


AFTER_STORE = frozenset({Phase.STORED, Phase.OLD_KEY_REVOKED, Phase.OLD_KEY_DEAD})


def iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else None


class KeyRecord(BaseModel):
    """Everything in the Vault record. Only ``key`` is required, so a user can seed it by hand."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    key: str
    key_id: str | None = None
    outgoing_key: str | None = Field(default=None, alias="previous_key")
    outgoing_key_id: str | None = Field(default=None, alias="previous_key_id")
    state: Phase = Phase.IDLE
    operation: Operation = "rotation"
    run_id: str | None = None  # the run that started the operation in flight, or finished the last one
    strategy: Strategy | None = None
    reason: str | None = None
    triggered_by: str | None = None
    started_at: float | None = None  # when the intent was written, before calling Kosli
    #: The fencing token of the operation in flight: every write after the mint names it, and a write whose
    #: token is no longer the record's is refused. Also tags the description of keys we mint (orphan search).
    attempt: str | None = None
    grace_hours: int | None = None  # the grace a 'rotate' asked Kosli for: known even if the answer was lost
    #: When the outgoing key stops working whatever we do: the latest a 'rotate' asked for lets it live (set with
    #: the intent, so it is known even if Kosli's answer was lost), then the grace end Kosli named.
    outgoing_dies_by: float | None = None
    finishes_lost_rotate: bool = False  # this rotation finishes a 'rotate' whose answer was lost
    rotated_at: float | None = None  # when the current key was stored: the key's age counts from here
    #: Kosli's expiry of the key we minted, as it answered the mint: for the page only (the due check and the
    #: staleness check ask Kosli for its present expires_at).
    key_expires_at: float | None = None
    due: str | None = None  # why a scheduled rotation was due (max_age_days, or expires_at within the lead)
    grace_ends_at: float | None = None  # when Kosli kills the outgoing key by itself
    consumers_verified_at: float | None = None  # when every consumer was last proven to hold the key
    old_key_last_used_at: float | None = None  # Kosli's last_used_at of the outgoing key id at that moment
    outgoing_dead_at: float | None = None  # when the outgoing key was proven dead (HTTP 401), for the audit
    note: str | None = None
    last_finished_run_id: str | None = None
    # One operation at a time, across runs and Airflow deployments: whoever holds an unexpired lock owns it.
    # Expiry is on Vault's clock (``KeyStore.vault_now``), never a worker's.
    lock_owner: str | None = None
    lock_expires_at: float | None = None
    failed_step: str | None = None
    failure: str | None = None
    todo: str | None = None
    history: list[str] = []  # what happened to the operation in flight, for the audit entry
    steps_in_flight: dict[str, str] = {}  # step -> who runs it since when; a step found here was interrupted
    #: The retry budget (``attention.py``), beside the phase so a resumed rotation continues where it stopped:
    #: each failed run of the rotation (run id, when, step, scrubbed reason), since when it waits for a person,
    #: and Kosli's expires_at of the key consumers are on, as last seen (the dying-key rule reads it offline).
    failed_runs: list[dict[str, str]] = []
    needs_attention_since: float | None = None
    watched_key_expires_at: float | None = None

    # -- reading ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        return self.state != Phase.IDLE

    @property
    def is_rollback(self) -> bool:
        return self.in_flight and self.operation == "rollback"

    @property
    def key_digest(self) -> str:
        return digest(self.key)

    def locked_by_other(self, owner: str, vault_now: float) -> bool:
        """A lock only means something while an operation is in flight."""
        if not self.in_flight or not self.lock_owner or self.lock_owner == owner:
            return False
        return (self.lock_expires_at or 0) > vault_now

    @property
    def grace_to_wait_for(self) -> float | None:
        """When Kosli kills the outgoing key by itself, if a rotation is waiting for that; else None."""
        if self.state == Phase.STORED and self.strategy == "rotate":
            return self.grace_ends_at
        return None

    def wait_ends_at(self, observation_seconds: float) -> float | None:
        """When ``wait_grace`` may let the run go on: Kosli's grace end for a 'rotate'; for a 'replace', the end
        of the window in which the outgoing key id's use is watched. None: nothing to wait for."""
        if self.state != Phase.STORED:
            return None
        if self.strategy == "rotate":
            return self.grace_ends_at
        watched = self.outgoing_key_id and self.outgoing_key_id != self.key_id
        if watched and observation_seconds > 0 and self.consumers_verified_at:
            return self.consumers_verified_at + observation_seconds
        return None

    @property
    def outgoing_key_dies_at(self) -> float | None:
        """When the outgoing key stops working whatever we do, if that is known (see ``outgoing_dies_by``)."""
        return self.outgoing_dies_by if self.state in (Phase.ROTATING, Phase.STORED) else None

    # -- transitions (see machine.py for which step makes which) ---------------------------------

    def noted(self, event: str) -> KeyRecord:
        """The record with ``event`` added to its history (the last 50 are kept)."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        return self.model_copy(update={"history": [*self.history, f"{stamp} {event}"][-50:]})

    def locked(self, owner: str, *, until: float) -> KeyRecord:
        return self.model_copy(update={"lock_owner": owner, "lock_expires_at": until})

    def taken_over(self, owner: str, *, until: float) -> KeyRecord:
        """Owned by ``owner`` (renewed, or taken over from a failed or dead holder), failure cleared."""
        renewed = self.locked(owner, until=until).model_copy(
            update={"failed_step": None, "failure": None, "todo": None}
        )
        return renewed if self.lock_owner == owner else renewed.noted(f"{owner} took over at phase {self.state.value}")

    def intent(
        self,
        owner: str,
        *,
        run_id: str,
        reason: str,
        by: str,
        strategy: Strategy,
        key_id: str,
        attempt: str,
        grace_hours: int,
        until: float,
        finishes_lost_rotate: bool = False,
        due: str | None = None,
    ) -> KeyRecord:
        """IDLE or ROTATING -> ROTATING: about to ask Kosli for a key, under a fresh fencing token. A deadline
        left by a lost 'rotate' of the same key id still holds."""
        now = datetime.now(UTC).timestamp()
        dies_by = now + grace_hours * 3600 if strategy == "rotate" else None
        if self.state == Phase.ROTATING and self.outgoing_dies_by:
            dies_by = min(dies_by or self.outgoing_dies_by, self.outgoing_dies_by)
        return (
            self.noted(f"{owner} recorded its intent to {strategy} key {key_id} (attempt #{attempt})")
            .locked(owner, until=until)
            .model_copy(
                update={
                    "state": Phase.ROTATING,
                    "operation": "rotation",
                    "key_id": key_id,
                    "run_id": run_id,
                    "reason": reason,
                    "due": due,
                    "triggered_by": by,
                    "strategy": strategy,
                    "finishes_lost_rotate": finishes_lost_rotate,
                    "started_at": now,
                    "attempt": attempt,
                    "grace_hours": grace_hours if strategy == "rotate" else None,
                    "outgoing_dies_by": dies_by,
                    "grace_ends_at": None,
                    "consumers_verified_at": None,
                    "old_key_last_used_at": None,
                    "failed_step": None,
                    "failure": None,
                    "todo": None,
                }
            )
        )

    def withdrawn(self, why: str) -> KeyRecord:
        """ROTATING -> IDLE: Kosli provably minted nothing."""
        return self.noted(f"{why}; intent withdrawn").model_copy(
            update={"state": Phase.IDLE, "attempt": None, "lock_owner": None, "lock_expires_at": None}
        )

    def stored(
        self, secret: str, key_id: str, *, grace_ends_at: float | None, expires_at: float | None = None
    ) -> KeyRecord:
        """ROTATING -> STORED: the minted key is the key in use; the old one is outgoing until it is dead."""
        return self.noted(f"stored new key {key_id} ({fingerprint(secret)})").model_copy(
            update={
                "outgoing_key": self.key,
                "outgoing_key_id": self.key_id,
                "key": secret,
                "key_id": key_id,
                "state": Phase.STORED,
                "rotated_at": datetime.now(UTC).timestamp(),
                "key_expires_at": expires_at,
                "grace_ends_at": grace_ends_at if self.strategy == "rotate" else None,
                "outgoing_dies_by": (grace_ends_at if self.strategy == "rotate" else None) or self.outgoing_dies_by,
            }
        )

    def rolled_back(self, owner: str, *, run_id: str, reason: str, by: str, attempt: str, until: float) -> KeyRecord:
        """STORED (a 'replace' rotation) -> STORED (a rollback): the roles swap, under a fresh fencing token, so
        no evidence gathered for the rotation counts for the rollback."""
        assert self.outgoing_key and self.outgoing_key_id
        now = datetime.now(UTC).timestamp()
        return (
            self.noted(
                f"{owner} rolls back the rotation started by run {self.run_id} ({self.strategy}): restores key "
                f"{self.outgoing_key_id} ({fingerprint(self.outgoing_key)}), revokes key {self.key_id} "
                f"({fingerprint(self.key)}); reason: {reason}; by {by}"
            )
            .locked(owner, until=until)
            .model_copy(
                update={
                    "key": self.outgoing_key,
                    "key_id": self.outgoing_key_id,
                    "outgoing_key": self.key,
                    "outgoing_key_id": self.key_id,
                    "state": Phase.STORED,
                    "operation": "rollback",
                    "strategy": "replace",
                    "attempt": attempt,
                    "run_id": run_id,
                    "reason": reason,
                    "due": None,
                    "key_expires_at": None,  # the page's copy of the expiry was the other key's
                    "triggered_by": by,
                    "started_at": now,
                    "rotated_at": now,  # when the key in Vault was written: consumers' writes must come after it
                    "grace_ends_at": None,
                    "grace_hours": None,
                    "outgoing_dies_by": None,
                    "consumers_verified_at": None,
                    "old_key_last_used_at": None,
                    "failed_step": None,
                    "failure": None,
                    "todo": None,
                }
            )
        )

    def all_verified(self, *, at: float, old_key_last_used_at: float | None) -> KeyRecord:
        return self.model_copy(update={"consumers_verified_at": at, "old_key_last_used_at": old_key_last_used_at})

    def revoked(self) -> KeyRecord:
        """STORED -> OLD_KEY_REVOKED."""
        return self.model_copy(update={"state": Phase.OLD_KEY_REVOKED})

    def dead(self, *, at: float | None = None) -> KeyRecord:
        """OLD_KEY_REVOKED -> OLD_KEY_DEAD: the outgoing key got HTTP 401 (at ``at``)."""
        return self.model_copy(update={"state": Phase.OLD_KEY_DEAD, "outgoing_dead_at": at})

    def finished(self, run_id: str, *, rotated_at: float | None) -> KeyRecord:
        """OLD_KEY_DEAD -> IDLE: the outgoing key is forgotten, and so is everything about the operation."""
        return self.model_copy(
            update={
                "state": Phase.IDLE,
                "operation": "rotation",
                "outgoing_key": None,
                "outgoing_key_id": None,
                "attempt": None,
                "grace_hours": None,
                "finishes_lost_rotate": False,
                "outgoing_dies_by": None,
                "grace_ends_at": None,
                "rotated_at": rotated_at,
                "last_finished_run_id": run_id,
                "lock_owner": None,
                "lock_expires_at": None,
                "note": None,
                "history": [],
                "steps_in_flight": {},
                "consumers_verified_at": None,
                "old_key_last_used_at": None,
                "outgoing_dead_at": None,
                "failed_runs": [],
                "needs_attention_since": None,
                "watched_key_expires_at": None,
            }
        )

    def failed(self, owner: str, step: str, error: str, todo: str) -> KeyRecord:
        """What broke and what is left to do; the lock released so the next run can resume at once."""
        released = {"lock_owner": None, "lock_expires_at": None} if self.lock_owner == owner else {}
        return self.noted(f"{step} failed in {owner}: {error}").model_copy(
            update={"failed_step": step, "failure": error, "todo": todo, **released}
        )

    # -- what leaves Vault -------------------------------------------------------------------------

    def to_vault(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=False)

    def summary(self, updated_at: float) -> dict[str, str]:
        """The non-secret view mirrored into custom_metadata (Vault wants str -> str)."""
        fields = {
            "managed_by": MANAGED_BY,
            "state": self.state.value,
            "operation": self.operation if self.in_flight else None,
            "key_id": self.key_id,
            "fingerprint": fingerprint(self.key),
            "digest": self.key_digest,  # the full SHA-256, for comparisons (a 256-bit key: it reveals nothing)
            "previous_key_id": self.outgoing_key_id,
            "previous_fingerprint": fingerprint(self.outgoing_key) if self.outgoing_key else None,
            "previous_digest": digest(self.outgoing_key) if self.outgoing_key else None,
            "run_id": self.run_id,
            "strategy": self.strategy,
            "rotated_at": iso(self.rotated_at),
            "key_expires_at": iso(self.key_expires_at),
            "due": self.due,
            "grace_ends_at": iso(self.grace_ends_at),
            "old_key_dies_at": iso(self.outgoing_key_dies_at),
            "consumers_verified_at": iso(self.consumers_verified_at),
            "last_finished_run_id": self.last_finished_run_id,
            "lock_owner": self.lock_owner,
            "lock_expires_at": iso(self.lock_expires_at),
            "failed_step": self.failed_step,
            "failure": self.failure,
            "todo": self.todo,
            "failed_runs": str(len(self.failed_runs)) if self.failed_runs else None,
            "needs_attention_since": iso(self.needs_attention_since),
            "updated_at": iso(updated_at),
        }
        return {name: value[:512] for name, value in fields.items() if value}
