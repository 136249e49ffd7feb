"""Roll a rotation back while the old key still lives: the rotation's own machine, run with the roles swapped.

Only the first two steps are a rollback's own:

1. ``check_rollback_possible``: the record is at phase ``stored`` of a ``replace`` rotation (a new key is
   stored, the old one not yet revoked) and the old key still gets HTTP 200. Read-only.
2. ``restore_old_key_in_vault``: one fenced check-and-set write (``KeyRecord.rolled_back``) swaps the roles:
   the old key is the key that stays again, the new key is the outgoing one, ``operation`` is ``rollback``,
   and a fresh fencing token means no proof gathered for the rotation counts for the rollback.

Then the rotation's steps run unchanged on that record (``Rotation`` under the rollback DAG's name):
``fan_out`` / ``verify_consumers`` (write and prove the old key), ``revoke_old`` (on live evidence only: it
revokes the *new* key), ``confirm_old_key_dead`` (the new key gets 401) and ``finalize`` (the audit entry says
a rollback happened, and the key keeps its original age).

Why ``rotate`` cannot be rolled back: Kosli kills the old secret by itself when the grace period ends, whatever
we do, so a rollback would put a dying key in every consumer; and when the new key shares the old key's id (what
Kosli does), revoking the new secret would kill the old one too. For a bad new key, rotate again with ``replace``.
"""

from __future__ import annotations

import logging
import secrets as token_source
import time
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from kosli_rotation.errors import InvalidRequestError, KeyStoreError, RunNotNeeded
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.machine import enter
from kosli_rotation.notifications import notify_failure
from kosli_rotation.record import KeyRecord, Phase, iso
from kosli_rotation.rotation import Rotation, RunRequest

log = logging.getLogger(__name__)

#: How many of the latest audit entries are searched for when the restored key was first stored.
AUDIT_LOOKBACK = 20


class RollbackRefused(InvalidRequestError):
    """The record is not in a state a rollback can safely start from; the message says why."""


def rollback_dag_id(entry: KeyEntry) -> str:
    return f"rollback_kosli_key_{entry.name}"


class Rollback:
    """The rollback's own steps for one inventory entry; the rest is ``self.rotation``'s."""

    def __init__(self, entry: KeyEntry) -> None:
        self.entry = entry
        self.rotation = Rotation(entry, dag_id=rollback_dag_id(entry))

    @property
    def dag_id(self) -> str:
        return self.rotation.dag_id

    def _refusal(self, record: KeyRecord) -> str | None:
        """Why a rollback cannot start from this record (without asking Kosli), or None."""
        where, rotate_dag = self.rotation.where, self.entry.dag_id
        fresh_key = f"To replace the key in use instead, trigger {rotate_dag} with strategy 'replace'."
        if record.state == Phase.IDLE:
            return (
                f"nothing to roll back: no rotation of {where} is in flight (phase 'idle'), so there is no old "
                f"key to go back to (a finished rotation has revoked and forgotten it). {fresh_key}"
            )
        if record.state == Phase.ROTATING:
            return (
                f"nothing to roll back yet: the rotation started by run {record.run_id} has stored no new key "
                f"(phase 'rotating'); the key in Vault is still the old one. The next run of {rotate_dag} "
                "reconciles from Kosli's key list and revokes any key it minted that nobody holds."
            )
        if record.state in (Phase.OLD_KEY_REVOKED, Phase.OLD_KEY_DEAD):
            return (
                f"too late to roll back: the old key {record.outgoing_key_id} is already revoked (phase "
                f"{record.state.value!r}). {fresh_key}"
            )
        if not record.outgoing_key or not record.outgoing_key_id:
            return f"the Vault record {self.rotation.store.location} no longer holds the old key or its id"
        if record.finishes_lost_rotate:
            return (
                f"cannot roll back: this rotation finishes a 'rotate' whose answer was lost, so under the old key's id "
                f"{record.outgoing_key_id} a secret nobody holds may still live, and the old key dies by "
                f"{iso(record.outgoing_dies_by)}: only revoking that id, as the rotation does, is safe. Let the "
                f"rotation finish ({rotate_dag})."
            )
        if record.strategy == "rotate":
            grace = (
                f"Kosli kills the old secret by itself when its grace period ends ({iso(record.grace_ends_at)}"
                + (", already past" if record.grace_ends_at and record.grace_ends_at <= time.time() else "")
                + "), whatever this DAG does, so a rollback would put a dying key in every consumer."
            )
            if record.outgoing_key_id == record.key_id:
                return (
                    f"cannot roll back a 'rotate': the new key shares the old key's id {record.key_id}, so revoking "
                    f"the new secret would kill the old one too; and {grace} Let the rotation finish. {fresh_key}"
                )
            return f"cannot roll back a 'rotate': {grace} Let the rotation finish. {fresh_key}"
        return None

    def _plan(self, record: KeyRecord) -> dict[str, Any]:
        """What the rollback does, in ids and fingerprints, from the record before or after the swap."""
        restored = record.is_rollback
        old, old_id = (record.key, record.key_id) if restored else (record.outgoing_key, record.outgoing_key_id)
        new, new_id = (record.outgoing_key, record.outgoing_key_id) if restored else (record.key, record.key_id)
        return {
            "key": self.rotation.where,
            "old_key_restored_in_vault": restored,
            "restore": {"id": old_id, "fingerprint": fingerprint(old or "")},
            "revoke": {"id": new_id, "fingerprint": fingerprint(new or "")},
            "consumers": self.entry.consumer_names,
        }

    def _check_can_start(self, record: KeyRecord, run: RunRequest) -> None:
        refusal = self._refusal(record)
        if refusal:
            raise RollbackRefused(refusal)
        self.rotation.ownership.refuse_if_locked(record, run.run_id)
        status = self.rotation.kosli.probe(self.entry.org, record.outgoing_key or "")
        if status != 200:
            raise RollbackRefused(
                f"the old key {record.outgoing_key_id} ({fingerprint(record.outgoing_key or '')}) gets HTTP {status} "
                "from Kosli: it no longer works (revoked, or its grace period ended), so there is nothing to roll "
                f"back to. Let {self.entry.dag_id} finish the rotation."
            )

    # -- 1. check_rollback_possible -------------------------------------------------------------

    def check_rollback_possible(self, run: RunRequest) -> dict[str, Any]:
        """Refuse, saying why, unless the old key can be put back: a new key is stored (phase ``stored``),
        the old key still authenticates (HTTP 200), and the rotation was a ``replace``."""
        record = self.rotation.store.load().record
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            raise RunNotNeeded("this run already rolled the key back; trigger a new run to do anything else")
        if record.is_rollback:
            self.rotation.ownership.refuse_if_locked(record, run.run_id)
            log.info("Resuming the rollback started by run %s, at phase %r", record.run_id, record.state.value)
            return self._plan(record)
        self._check_can_start(record, run)
        plan = self._plan(record)
        log.info("Rollback plan for %s: %s", self.rotation.where, plan)
        return plan

    # -- 2. restore_old_key_in_vault ------------------------------------------------------------

    def restore_old_key_in_vault(self, run: RunRequest) -> dict[str, Any]:
        """Swap the roles in the record with one fenced write: the old key in use again, the new key outgoing."""
        if run.dry_run:
            raise RunNotNeeded("dry run: the plan returned by check_rollback_possible is what a real run would do")
        store = self.rotation.store
        record = store.load().record
        if not record.is_rollback:
            self._check_can_start(record, run)  # again: the old key must still work when it goes back
            enter("restore_old_key", record, store.location)
            expected = (record.key_id, record.key_digest, record.outgoing_key_id)
            owner, until = self.rotation.owner(run), store.vault_now() + self.entry.lock_ttl_seconds

            def restore(r: KeyRecord) -> KeyRecord | None:
                if r.is_rollback:
                    return None  # restored already, by this run or an earlier one
                if (r.key_id, r.key_digest, r.outgoing_key_id) != expected:
                    raise KeyStoreError(f"the Vault record {store.location} changed meanwhile; run the check again")
                return r.rolled_back(
                    owner,
                    run_id=run.run_id,
                    reason=run.reason,
                    by=run.triggered_by,
                    attempt=token_source.token_hex(4),
                    until=until,
                )

            store.update_fenced(record.attempt, restore)
        record = self.rotation.ownership.own(run.run_id)  # takes over a rollback an earlier run left, if any
        log.info(
            "Vault %s holds the old key %s (%s) again; key %s (%s) is kept until it is revoked",
            store.location,
            record.key_id,
            fingerprint(record.key),
            record.outgoing_key_id,
            fingerprint(record.outgoing_key or ""),
        )
        return self._plan(record)

    # -- 3 to 7: the rotation's own steps, on the swapped record ----------------------------------

    def journal(self, run_id: str, step_name: str) -> AbstractContextManager[None]:
        return self.rotation.journal(run_id, step_name)

    def _rollback_in_flight(self) -> KeyRecord:
        record = self.rotation.store.load().record
        if not record.is_rollback and not (record.state == Phase.IDLE and record.last_finished_run_id):
            raise RunNotNeeded(
                f"no rollback of {self.rotation.where} is in flight (phase {record.state.value!r}): "
                "restore_old_key_in_vault has not run (see the step that failed)"
            )
        return record

    def fan_out_old_key(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Write the old key back to a batch of consumers, skipping those that hold it already."""
        self._rollback_in_flight()
        return self.rotation.fan_out(batch, run)

    def verify_consumers(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Prove each consumer of a batch holds the old key again, for this rollback and this run."""
        self._rollback_in_flight()
        return self.rotation.verify_consumers(batch, run)

    def all_consumers_verified(self, run: RunRequest) -> dict[str, Any]:
        """The gate: every consumer is proven, by this run, to hold the old key again."""
        self._rollback_in_flight()
        return self.rotation.all_consumers_verified(run)

    def revoke_new_key(self, run: RunRequest) -> dict[str, Any]:
        """On live evidence only (the old key answers 200, every consumer holds it now), revoke the new key id."""
        self._rollback_in_flight()
        outcome = self.rotation.revoke_old(run)
        return {"new_key_id": outcome["old_key_id"], "revoked": outcome["revoked"]}

    def confirm_new_key_dead(self, run: RunRequest) -> dict[str, Any]:
        """The new key must get HTTP 401, and the old key still 200."""
        self._rollback_in_flight()
        outcome = self.rotation.confirm_old_key_dead(run)
        return {"new_key_id": outcome["old_key_id"], "new_fingerprint": outcome["old_fingerprint"], "status": 401}

    def finalize_rollback(self, run: RunRequest) -> dict[str, Any]:
        """Write the audit entry, then put the record back to ``idle`` with the old key and its original age."""
        record = self._rollback_in_flight()
        return self.rotation.finalize(run, rotated_at=self._first_stored_at(record) if record.in_flight else None)

    def _first_stored_at(self, record: KeyRecord) -> float | None:
        """When the restored key was first stored, from the latest audit entries; None if unknown (the due
        check then counts its age from Kosli's ``created_at`` of the key)."""
        store, wanted = self.rotation.store, fingerprint(record.key)
        for name in sorted(store.list_notes("audit"), reverse=True)[:AUDIT_LOOKBACK]:
            audit = store.read_note(f"audit/{name}") or {}
            if "new_key" in audit:  # a rotation's entry: the key it stored, and when
                described, stamp = audit["new_key"] or {}, audit.get("stored_at")
            else:  # a rollback's entry: the key it restored, and when that key was first stored
                described = audit.get("restored_key") or {}
                stamp = described.get("stored_at")
            if described.get("fingerprint") == wanted and stamp:
                return datetime.fromisoformat(stamp).timestamp()
        return None


def on_rollback_step_failure(entry: KeyEntry) -> Any:
    """When a rollback step fails for good: record what is left in Vault, release the lock, and notify
    the key's ``notify`` targets (not for a refusal: nothing changed, and whoever triggered it sees why)."""

    def record(context: Any) -> None:
        task_id = context["task_instance"].task_id
        facts = Rollback(entry).rotation.record_failure(
            context["dag_run"].run_id, task_id, context.get("exception"), operation="rollback"
        )
        log.error("Rollback of %s failed at %s. %s", facts["key"], task_id, facts["todo"])
        if facts["changed"]:
            notify_failure(entry.notify, facts, context)

    return record
