"""Roll a rotation back while the old key still lives: the old key back in Vault and in every consumer,
the new key revoked. The steps, in the order they run, each first checking whether its work is done:

1. ``check_rollback_possible``: the record is at phase ``stored`` (a new key is stored, the old one not yet
   revoked), the old key still gets HTTP 200, and the rotation was a ``replace`` (see below). Read-only.
2. ``restore_old_key_in_vault``: one check-and-set write swaps the keys: the old key becomes ``key`` again and
   the new key becomes ``previous_key``, the one to revoke. The record then reads exactly like a ``replace``
   rotation *to the old key* (phase ``stored``), marked as a rollback in its ``note`` and ``history``.
3. ``fan_out_old_key`` / ``verify_consumers``: the rotation's own consumer steps, run on that record, so they
   write and prove the old key (one mapped task per batch of consumers, as in the rotation).
4. ``revoke_new_key``: the gate: every consumer is proven to hold the old key, then the new key id is deleted.
5. ``confirm_new_key_dead``: the new key gets HTTP 401, the old key still 200.
6. ``finalize_rollback``: the record back to ``idle`` with the old key (and its original age), and an audit
   entry saying that a rollback happened, why and by whom.

A rollback holds the rotation lock of the key's record (``Rotation._own``), under the rollback DAG's name, so a
rollback and a rotation never interleave: whichever holds the lock, the other refuses. If a rollback fails, it
releases the lock and records what is left; the rollback DAG (or, as the record reads like a ``replace``
rotation, the rotation DAG) resumes it.

Why ``rotate`` cannot be rolled back: Kosli kills the old secret by itself when the grace period ends, whatever
we do, so a rollback would put a dying key in every consumer; and when the new key shares the old key's id (what
Kosli does), revoking the new secret would kill the old one too. For a bad new key, rotate again with ``replace``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from kosli_rotation.errors import ConsumerError, InvalidRequestError, KeyStoreError, VerificationError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyRecord, KeyStore, Phase
from kosli_rotation.kosli_hook import KosliHook
from kosli_rotation.notifications import notify_failure
from kosli_rotation.rotation import LOCK_TTL, OLD_KEY_PROBES, Rotation, RunNotNeeded, RunRequest

log = logging.getLogger(__name__)

#: How many of the latest audit entries are searched for when the restored key was first stored.
AUDIT_LOOKBACK = 20
#: What ``Rotation._reconcile`` notes in the history when it finishes a lost ``rotate`` as ``replace``.
LOST_ROTATE = "a lost rotate cannot be undone"


class RollbackRefused(InvalidRequestError):
    """The record is not in a state a rollback can safely start from; the message says why."""


def rollback_dag_id(entry: KeyEntry) -> str:
    return f"rollback_kosli_key_{entry.name}"


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else None


class _RollbackMachinery(Rotation):
    """The rotation's record, lock and consumer steps, owned under the rollback DAG's name."""

    def owner(self, run: RunRequest | str) -> str:
        return f"{rollback_dag_id(self.entry)}/{run if isinstance(run, str) else run.run_id}"


class Rollback:
    """The rollback steps for one inventory entry. Hooks are opened lazily, inside tasks only."""

    def __init__(self, entry: KeyEntry) -> None:
        self.entry = entry
        self.machinery = _RollbackMachinery(entry)

    @property
    def dag_id(self) -> str:
        return rollback_dag_id(self.entry)

    @property
    def store(self) -> KeyStore:
        return self.machinery.store

    @property
    def kosli(self) -> KosliHook:
        return self.machinery.kosli

    @property
    def where(self) -> str:
        return self.machinery.where

    # -- the rollback in flight -----------------------------------------------------------------

    def _mark(self, run_id: str) -> str:
        return f"rollback {self.dag_id}/{run_id}: "

    def in_flight(self, record: KeyRecord) -> bool:
        """The record is a rollback in flight: restored by a run of this DAG that has not finalized yet.

        The mark names the run that restored the old key, which is also the record's ``run_id``; a rotation
        started later sets its own ``run_id``, so an old mark can never be mistaken for a live one.
        """
        note, run_id = record.note or "", record.run_id or ""
        return record.state != Phase.IDLE and bool(run_id) and note.startswith(self._mark(run_id))

    def _owned(self, run: RunRequest) -> KeyRecord:
        """The record of the rollback in flight, owned by this run (renewing the lock)."""
        record = self.store.load().record
        if not self.in_flight(record):
            raise KeyStoreError(
                f"no rollback of {self.where} is in flight (phase {record.state.value!r}): "
                "restore_old_key_in_vault has not run, or the rollback already finished"
            )
        return self.machinery._own(run)

    def _refusal(self, record: KeyRecord) -> str | None:
        """Why a rollback cannot start from this record (without asking Kosli), or None."""
        rotate_dag = self.entry.dag_id
        fresh_key = f"To replace the key in use instead, trigger {rotate_dag} with strategy 'replace'."
        if record.state == Phase.IDLE:
            return (
                f"nothing to roll back: no rotation of {self.where} is in flight (phase 'idle'), so there is no old "
                f"key to go back to (a finished rotation has revoked and forgotten it). {fresh_key}"
            )
        if record.state == Phase.ROTATING:
            return (
                f"nothing to roll back yet: the rotation started by run {record.run_id} has stored no new key "
                f"(phase 'rotating'); the key in Vault is still the old one. The next run of {rotate_dag} "
                "reconciles from Kosli's key list and revokes any key nobody holds."
            )
        if record.state in (Phase.OLD_KEY_REVOKED, Phase.OLD_KEY_DEAD):
            return (
                f"too late to roll back: the old key {record.previous_key_id} is already revoked (phase "
                f"{record.state.value!r}). {fresh_key}"
            )
        if not record.previous_key or not record.previous_key_id:
            return f"the Vault record {self.store.location} no longer holds the old key or its id: nothing to restore"
        if any(LOST_ROTATE in event for event in record.history):
            return (
                f"cannot roll back: this rotation finishes a 'rotate' whose answer was lost, so under the old key's id "
                f"{record.previous_key_id} a secret nobody holds may still live, and the old key dies when that "
                "rotate's grace period ends: only revoking that id, as the rotation does, is safe. Let the rotation "
                f"finish ({rotate_dag})."
            )
        if record.strategy == "rotate":
            grace = (
                f"Kosli kills the old secret by itself when its grace period ends ({_iso(record.grace_ends_at)}"
                + (", already past" if record.grace_ends_at and record.grace_ends_at <= time.time() else "")
                + "), whatever this DAG does, so a rollback would put a dying key in every consumer."
            )
            if record.previous_key_id == record.key_id:
                return (
                    f"cannot roll back a 'rotate': the new key shares the old key's id {record.key_id}, so revoking "
                    f"the new secret would kill the old one too; and {grace} Let the rotation finish. {fresh_key}"
                )
            return f"cannot roll back a 'rotate': {grace} Let the rotation finish. {fresh_key}"
        return None

    def _plan(self, record: KeyRecord, *, restored: bool) -> dict[str, Any]:
        """What the rollback does, in ids and fingerprints, from the record before or after the swap."""
        old, old_id = (record.key, record.key_id) if restored else (record.previous_key or "", record.previous_key_id)
        new, new_id = (record.previous_key or "", record.previous_key_id) if restored else (record.key, record.key_id)
        return {
            "key": self.where,
            "old_key_restored_in_vault": restored,
            "restore": {"id": old_id, "fingerprint": fingerprint(old)},
            "revoke": {"id": new_id, "fingerprint": fingerprint(new)},
            "consumers": self.entry.consumer_names,
        }

    def _check_can_start(self, record: KeyRecord, run: RunRequest) -> None:
        """Refuse unless a rollback can start from ``record``: the right phase and strategy, no other run
        holding the lock, and the old key still authenticating (HTTP 200)."""
        refusal = self._refusal(record)
        if refusal:
            raise RollbackRefused(refusal)
        self.machinery._refuse_if_locked(record, run)
        status = self.kosli.probe(self.entry.org, record.previous_key or "")
        if status != 200:
            raise RollbackRefused(
                f"the old key {record.previous_key_id} ({fingerprint(record.previous_key or '')}) gets HTTP {status} "
                "from Kosli: it no longer works (revoked, or its grace period ended), so there is nothing to roll "
                f"back to. Let {self.entry.dag_id} finish the rotation."
            )

    # -- 1. check_rollback_possible -------------------------------------------------------------

    def check_rollback_possible(self, run: RunRequest) -> dict[str, Any]:
        """Refuse, saying why, unless the old key can be put back: a new key is stored (phase ``stored``),
        the old key still authenticates (HTTP 200), and the rotation was a ``replace``."""
        record = self.store.load().record
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            raise RunNotNeeded("this run already rolled the key back; trigger a new run to do anything else")
        if self.in_flight(record):
            self.machinery._refuse_if_locked(record, run)
            log.info("Resuming the rollback started by run %s, at phase %r", record.run_id, record.state.value)
            return self._plan(record, restored=True)
        self._check_can_start(record, run)
        plan = self._plan(record, restored=False)
        log.info("Rollback plan for %s: %s", self.where, plan)
        return plan

    # -- 2. restore_old_key_in_vault ------------------------------------------------------------

    def restore_old_key_in_vault(self, run: RunRequest) -> dict[str, Any]:
        """Swap the keys in the record with one check-and-set write: the old key in use again, the new key
        kept as ``previous_key`` to be revoked; take the rotation lock for this run."""
        if run.dry_run:
            raise RunNotNeeded("dry run: the plan returned by check_rollback_possible is what a real run would do")
        record = self.store.load().record
        if not self.in_flight(record):
            self._check_can_start(record, run)  # again: the old key must still work when it goes back
            expected = (record.key_id, fingerprint(record.key), record.previous_key_id)
            owner = self.machinery.owner(run)

            def restore(r: KeyRecord) -> KeyRecord | None:
                if self.in_flight(r):
                    return None  # restored already, by this run or an earlier one
                if (r.key_id, fingerprint(r.key), r.previous_key_id) != expected:
                    raise KeyStoreError(
                        f"the Vault record {self.store.location} changed meanwhile; run the check again"
                    )
                self.machinery._refuse_if_locked(r, run)
                note = (
                    f"{owner} rolls back the rotation started by run {r.run_id} ({r.strategy}): restores key "
                    f"{r.previous_key_id} ({fingerprint(r.previous_key or '')}), revokes key {r.key_id} "
                    f"({fingerprint(r.key)}); reason: {run.reason}; by {run.triggered_by}"
                )
                return (
                    r.noted(note)
                    .locked_for(owner, LOCK_TTL)
                    .model_copy(
                        update={
                            "key": r.previous_key,
                            "key_id": r.previous_key_id,
                            "previous_key": r.key,
                            "previous_key_id": r.key_id,
                            "state": Phase.STORED,
                            "strategy": "replace",
                            "run_id": run.run_id,
                            "reason": run.reason,
                            "triggered_by": run.triggered_by,
                            "started_at": time.time(),
                            # When the key in Vault was written: consumers' writes must come after it.
                            "rotated_at": time.time(),
                            "grace_ends_at": None,
                            "consumers_verified_at": None,
                            "old_key_last_used_at": None,
                            "note": self._mark(run.run_id) + run.reason,
                            "failed_step": None,
                            "failure": None,
                            "todo": None,
                        }
                    )
                )

            self.store.update(restore)
        record = self._owned(run)  # takes over a rollback an earlier run left, if any
        log.info(
            "Vault %s holds the old key %s (%s) again; key %s (%s) is kept until it is revoked",
            self.store.location,
            record.key_id,
            fingerprint(record.key),
            record.previous_key_id,
            fingerprint(record.previous_key or ""),
        )
        return self._plan(record, restored=True)

    # -- 3. fan_out_old_key / verify_consumers: the rotation's own steps, on the swapped record ---

    def fan_out_old_key(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Write the old key back to a batch of consumers, skipping those that hold it already."""
        self._owned(run)
        return self.machinery.fan_out(batch, run)

    def verify_consumers(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Prove each consumer of a batch holds the old key again; record when, for the gate and the audit."""
        self._owned(run)
        return self.machinery.verify_consumers(batch, run)

    # -- 4. revoke_new_key ----------------------------------------------------------------------

    def revoke_new_key(self, run: RunRequest) -> dict[str, Any]:
        """The gate: once every consumer is proven to hold the old key, revoke the new key id."""
        record = self.store.load().record
        if not self.in_flight(record):
            raise RunNotNeeded("no rollback is in flight, so there is nothing to revoke (see the step that failed)")
        record = self.machinery._own(run)
        new_id = record.previous_key_id
        if record.state != Phase.STORED:
            log.info("New key %s is already revoked", new_id)
            return {"new_key_id": new_id, "revoked": "already"}
        missing = self.machinery._unverified_consumers(record)
        if missing:
            raise ConsumerError(
                ", ".join(missing),
                f"not verified with the old key {record.key_id} ({fingerprint(record.key)}), so the new key {new_id} "
                "is NOT revoked: both keys still work. Fix the consumers, then clear their failed tasks (or trigger "
                "a new rollback run: it resumes here).",
                retryable=False,
            )
        if new_id is None or new_id == record.key_id:
            raise KeyStoreError(f"Vault record {self.store.location} names no new key id apart from the old one")
        revoked = self.kosli.revoke_key(self.entry.org, self.entry.service_account, new_id)
        self.store.update(
            lambda r: (
                r.model_copy(update={"state": Phase.OLD_KEY_REVOKED})
                if r.state == Phase.STORED and self.in_flight(r)
                else None
            )
        )
        how = "revoked" if revoked else "already gone (404)"
        log.info("New key %s (%s): %s", new_id, fingerprint(record.previous_key or ""), how)
        return {"new_key_id": new_id, "revoked": how}

    # -- 5. confirm_new_key_dead ----------------------------------------------------------------

    def confirm_new_key_dead(self, run: RunRequest) -> dict[str, Any]:
        """The new key must get HTTP 401, and the old key still 200."""
        record = self._owned(run)
        new_fp = fingerprint(record.previous_key or "")
        if record.state == Phase.STORED:
            raise KeyStoreError("the new key has not been revoked yet (phase 'stored')")
        if record.state == Phase.OLD_KEY_REVOKED:
            if not record.previous_key:
                raise KeyStoreError(f"Vault record {self.store.location} lost the new key; cannot probe it")
            status = self.machinery._probe_until(record.previous_key, want=401, attempts=OLD_KEY_PROBES)
            if status != 401:
                raise VerificationError(
                    f"the new key {record.previous_key_id} ({new_fp}) still gets HTTP {status} after revocation"
                )
            self.store.update(
                lambda r: (
                    r.model_copy(update={"state": Phase.OLD_KEY_DEAD})
                    if r.state == Phase.OLD_KEY_REVOKED and self.in_flight(r)
                    else None
                )
            )
        status = self.kosli.probe(self.entry.org, record.key)
        if status != 200:
            raise VerificationError(
                f"the restored key {record.key_id} ({fingerprint(record.key)}) gets HTTP {status}: consumers are "
                f"failing. Rotate now: trigger {self.entry.dag_id} with strategy 'replace'"
            )
        log.info(
            "New key %s (%s) gets HTTP 401; the restored key %s still gets 200",
            record.previous_key_id,
            new_fp,
            record.key_id,
        )
        return {"new_key_id": record.previous_key_id, "new_fingerprint": new_fp, "status": 401}

    # -- 6. finalize_rollback -------------------------------------------------------------------

    def finalize_rollback(self, run: RunRequest) -> dict[str, Any]:
        """Write the audit entry, then put the record back to ``idle`` with the old key and its original age."""
        record = self.store.load().record
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            log.info("Rollback already finalized by this run")
            return {"key_id": record.key_id, "fingerprint": fingerprint(record.key), "finalized": "already"}
        if not self.in_flight(record) or record.state != Phase.OLD_KEY_DEAD:
            raise KeyStoreError(
                f"cannot finalize at phase {record.state.value!r}: the new key is not confirmed dead"
                + ("" if self.in_flight(record) else " (and no rollback is in flight)")
            )
        record = self.machinery._own(run)
        stored_at = self._first_stored_at(record)
        now = time.time()
        audit = {
            "event": "kosli-key-rolled-back",
            "key": self.where,
            "dag_id": self.dag_id,
            "run_id": record.run_id,
            "finished_by_run": run.run_id,
            "triggered_by": record.triggered_by,
            "reason": record.reason,
            "restored_key": {"id": record.key_id, "fingerprint": fingerprint(record.key), "stored_at": _iso(stored_at)},
            "revoked_key": {"id": record.previous_key_id, "fingerprint": fingerprint(record.previous_key or "")},
            "consumers": {name: self.store.read_note(f"consumers/{name}") for name in self.entry.consumer_names},
            "started_at": _iso(record.started_at),
            "finished_at": _iso(now),
            "history": [*record.history, f"{_iso(now)} rollback finished by {self.machinery.owner(run)}"],
        }
        stamp = datetime.fromtimestamp(record.started_at or now, UTC).strftime("%Y%m%dT%H%M%SZ")
        audit_path = self.store.write_note(f"audit/{stamp}-rollback", audit)

        def back_to_idle(r: KeyRecord) -> KeyRecord | None:
            if r.state != Phase.OLD_KEY_DEAD or not self.in_flight(r):
                return None
            return r.model_copy(
                update={
                    "state": Phase.IDLE,
                    "previous_key": None,
                    "previous_key_id": None,
                    "rotated_at": stored_at,  # the key is as old as it was: a rollback does not make it younger
                    "grace_ends_at": None,
                    "last_finished_run_id": run.run_id,
                    "lock_owner": None,
                    "lock_expires_at": None,
                    "note": None,
                    "history": [],
                    "consumers_verified_at": None,
                    "old_key_last_used_at": None,
                }
            )

        self.store.update(back_to_idle)
        log.info("Rollback of %s complete; audit entry at %s: %s", self.where, audit_path, audit)
        return {"audit": audit_path, "key_id": record.key_id, "fingerprint": fingerprint(record.key)}

    def _first_stored_at(self, record: KeyRecord) -> float | None:
        """When the restored key was first stored, from the latest audit entries; None if unknown (the due
        check then counts its age from Kosli's ``created_at`` of the key)."""
        wanted = fingerprint(record.key)
        for name in sorted(self.store.list_notes("audit"), reverse=True)[:AUDIT_LOOKBACK]:
            audit = self.store.read_note(f"audit/{name}") or {}
            if "new_key" in audit:  # a rotation's entry: the key it stored, and when
                described, stamp = audit["new_key"] or {}, audit.get("stored_at")
            else:  # a rollback's entry: the key it restored, and when that key was first stored
                described = audit.get("restored_key") or {}
                stamp = described.get("stored_at")
            if described.get("fingerprint") == wanted and stamp:
                return datetime.fromisoformat(stamp).timestamp()
        return None

    # -- when a step fails for good -------------------------------------------------------------

    def record_failure(self, run_id: str, step_name: str, error: BaseException | None) -> dict[str, Any]:
        """Write into the record what broke and what is left, and release the lock, if this run's rollback
        changed anything; a refusal changes nothing. Returns the facts a failure notice needs, with
        ``changed`` saying whether a rollback is in flight (only then is a notice worth sending)."""
        record = self.store.load().record
        owner = self.machinery.owner(run_id)
        facts: dict[str, Any] = {
            "operation": "rollback",
            "key": self.where,
            "dag_id": self.dag_id,
            "run_id": run_id,
            "failed_step": step_name,
            "error": str(error or "unknown error")[:500],
            "phase": record.state.value,
            "key_to_verify": "the restored (old) key",
            "unverified_consumers": [],
            "old_key_dies_at": None,
            "hours_left": None,
            "changed": False,
        }
        if not self.in_flight(record) or record.locked_by_other(owner, time.time()):
            facts["todo"] = "Nothing changed: read the error, then trigger a new run if a rollback is still wanted."
            return facts
        facts["changed"] = True
        if record.state == Phase.STORED:
            facts["unverified_consumers"] = self.machinery._unverified_consumers(record)
            waiting = (
                f" Consumers not verified with it yet: {', '.join(facts['unverified_consumers'])}."
                if facts["unverified_consumers"]
                else ""
            )
            facts["todo"] = (
                f"The old key {record.key_id} is back in Vault and works; the new key {record.previous_key_id} works "
                f"too, and is not revoked.{waiting} Fix the cause, then clear the failed task or trigger "
                f"{self.dag_id} again: it resumes the rollback."
            )
        else:
            facts["todo"] = (
                f"The new key {record.previous_key_id} is revoked; what is left is confirming it is dead and writing "
                f"the audit entry. Clear the failed task or trigger {self.dag_id} again."
            )

        def mark_failed(r: KeyRecord) -> KeyRecord:
            released = {"lock_owner": None, "lock_expires_at": None} if r.lock_owner == owner else {}
            failed = r.noted(f"{step_name} failed in {owner}: {facts['error']}")
            return failed.model_copy(
                update={"failed_step": step_name, "failure": facts["error"], "todo": facts["todo"], **released}
            )

        self.store.update(mark_failed)
        return facts


def on_rollback_step_failure(entry: KeyEntry) -> Any:
    """When a rollback step fails for good: record what is left in Vault, release the lock, and notify
    the key's ``notify`` targets (not for a refusal: nothing changed, and whoever triggered it sees why)."""

    def record(context: Any) -> None:
        task_id = context["task_instance"].task_id
        facts = Rollback(entry).record_failure(context["dag_run"].run_id, task_id, context.get("exception"))
        log.error("Rollback of %s failed at %s. %s", facts["key"], task_id, facts["todo"])
        if facts["changed"]:
            notify_failure(entry.notify, facts, context)

    return record
