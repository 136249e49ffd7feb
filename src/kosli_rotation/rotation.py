"""The rotation steps, in the order they run. Each starts at the one gate (``machine.enter``) on the stored state.

Kosli shows a new key once. So the state of a rotation lives in the key's Vault record (``record.py``), written
with check-and-set and, after the mint, fenced to the attempt that owns it; every step reads it back before
acting. That makes each step safe to retry after a failure or a kill at any line, and lets a later run resume an
unfinished rotation instead of starting another one:

1. ``preflight``: is the key due, do the admin key, the current key, the Vault token and every consumer work?
   Its result is the plan (a dry run stops after it).
2. ``rotate_and_store``: write an intent, ask Kosli for the new key, store it in Vault at once (``minting.py``).
3. ``verify_new_key``: the new key authenticates.
4. ``fan_out`` / ``verify_consumers`` / ``all_consumers_verified``: every consumer is proven, by this run, to
   hold the new key (``consumer_engine.py``; one mapped task per batch, the gate lists any that are not).
5. ``wait_grace`` (a deferrable sensor, see ``sensors.py``): Kosli's grace period, or for ``replace`` the
   observation window of the outgoing key's use, has passed.
6. ``revoke_old`` / ``confirm_old_key_dead``: on live evidence only (``revocation.py``), the old key is revoked
   and gets HTTP 401; then stores that keep versions retire the earlier ones, where the inventory asks.
7. ``finalize``: the audit entry, then the record forgets the old key.

A rollback (``rollback.py``) runs steps 4, 6 and 7 of this class on a record whose roles it swapped. Nothing here
returns or logs a secret: steps hand each other Vault paths, key ids and fingerprints.
"""

from __future__ import annotations

import logging
import secrets as token_source
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kosli_rotation.attention import admit, refused_by_budget, watched_key_expiry
from kosli_rotation.consumer_engine import ConsumerEngine, describe_all, for_each_consumer, plan_line
from kosli_rotation.consumers.github_grouping import recommend_organization_secrets
from kosli_rotation.errors import ConcurrentWriteError, ConsumerError, RunNotNeeded, VerificationError
from kosli_rotation.facts import audit_entry, audit_name, failure_facts, key_reference
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_identity import KeyIdentity, probe_until
from kosli_rotation.key_store import KeyStore
from kosli_rotation.kosli_hook import KosliHook
from kosli_rotation.machine import enter
from kosli_rotation.minting import Minter
from kosli_rotation.ownership import Ownership
from kosli_rotation.preflight_checks import check_current_key, check_due, check_vault_token, scheduled_due
from kosli_rotation.record import AFTER_STORE, KeyRecord, Phase, iso
from kosli_rotation.revocation import Revocation
from kosli_rotation.run_request import RunRequest
from kosli_rotation.scrub import describe_error

log = logging.getLogger(__name__)

#: Probes of the new key retry 401s for a while: a new key may take a moment to propagate.
NEW_KEY_PROBES = 6
#: The default life of the rotation lock without renewal (inventory: lock_ttl_seconds).
LOCK_TTL = 3600.0

__all__ = ["LOCK_TTL", "Rotation", "RunNotNeeded", "RunRequest"]


class Rotation:
    """The rotation steps for one inventory entry. Hooks are opened lazily, inside tasks only."""

    def __init__(self, entry: KeyEntry, *, dag_id: str | None = None) -> None:
        self.entry = entry
        self.dag_id = dag_id or entry.dag_id  # whose runs own the record while they run these steps

    @cached_property
    def store(self) -> KeyStore:
        entry = self.entry
        return KeyStore(entry.vault_path, conn_id=entry.vault_conn_id, mount=entry.vault_mount)

    @cached_property
    def kosli(self) -> KosliHook:
        return KosliHook(self.entry.kosli_conn_id)

    @cached_property
    def identity(self) -> KeyIdentity:
        return KeyIdentity(self.entry, self.kosli, self.store.location)

    @cached_property
    def engine(self) -> ConsumerEngine:
        return ConsumerEngine(self.entry, self.store)

    @cached_property
    def revocation(self) -> Revocation:
        return Revocation(self.entry, self.kosli, self.identity, self.engine)

    @cached_property
    def ownership(self) -> Ownership:
        return Ownership(self.store, self.dag_id, float(self.entry.lock_ttl_seconds), self.where)

    @property
    def where(self) -> str:
        return f"{self.entry.org}/{self.entry.service_account}"

    def owner(self, run: RunRequest | str) -> str:
        return self.ownership.owner(run if isinstance(run, str) else run.run_id)

    @contextmanager
    def journal(self, run_id: str, step_name: str) -> Iterator[None]:
        """Run a step marked as running in the record (a rerun can tell it was interrupted), renewing the lock
        while it runs."""
        owner = self.owner(run_id)
        self.store.mark_step(owner, step_name, running=True)
        try:
            with self.ownership.keep_alive(run_id):
                yield
        finally:
            self.store.mark_step(owner, step_name, running=False)

    def _owned(self, run: RunRequest, step_name: str) -> tuple[KeyRecord, bool]:
        """The record of the operation in flight, owned by this run, and whether ``step_name`` has work to do."""
        record = self.store.load().record
        if record.state in AFTER_STORE:
            record = self.ownership.own(run.run_id)
        return record, enter(step_name, record, self.store.location)

    # -- 1. preflight ---------------------------------------------------------------------------

    def preflight(self, run: RunRequest) -> dict[str, Any]:
        """Check everything a rotation needs before anything changes; stop here if there is nothing to do."""
        record = self.store.load().record
        record = admit(self.entry, self.store, record, run, dag_id=self.dag_id)
        resuming, due = record.in_flight, record.due
        if resuming:
            self.ownership.refuse_if_locked(record, run.run_id)
            log.info(
                "Resuming the %s started by run %s, now at phase %r (strategy %s)%s",
                record.operation,
                record.run_id,
                record.state.value,
                record.strategy,
                f"; it failed at {record.failed_step}: {record.failure}" if record.failed_step else "",
            )
        elif record.last_finished_run_id == run.run_id:
            raise RunNotNeeded(f"this run already rotated the key (now {record.key_id}); trigger a new run")
        else:
            due = check_due(self.entry, self.identity, run, record)
        strategy = record.strategy if resuming else run.strategy
        check_vault_token(self.entry, self.store, strategy or run.strategy, run.grace_hours)
        keys = self.identity.list_keys()
        key_id = record.key_id if resuming else self.identity.current_key_id(record, keys)
        check_current_key(self.kosli.probe(self.entry.org, record.key), record, strategy, self.store.location)
        consumers = self.engine.consumers()
        today = for_each_consumer(consumers, lambda consumer: plan_line(consumer, record))
        plan = {
            "key": self.where,
            "key_id": key_id,
            "fingerprint": fingerprint(record.key),
            "strategy": strategy,
            "grace_hours": run.grace_hours if strategy == "rotate" else None,
            "resuming": resuming,
            "due": due,
            "watched_key_expires_at": watched_key_expiry(keys, record, key_id),  # the retry budget (attention.py)
            "consumers": describe_all(consumers, today, run.updates),
            "github_organization_secrets": recommend_organization_secrets(self.entry.consumers),
        }
        log.info("Plan for %s: %s", self.entry.dag_id, plan)
        return plan

    # -- 2. rotate_and_store --------------------------------------------------------------------

    def rotate_and_store(self, run: RunRequest) -> dict[str, Any]:
        """Mint the new key and store it in Vault within one task, behind an intent record."""
        if run.dry_run:
            raise RunNotNeeded("dry run: the plan returned by preflight is what a real run would do; nothing changed")
        snapshot = self.store.load()
        record = snapshot.record
        now = self.store.vault_now()
        self.ownership.refuse_if_locked(record, run.run_id, now)
        if not enter("rotate_and_store", record, self.store.location):
            log.info("New key %s (%s) is already stored; nothing to do", record.key_id, fingerprint(record.key))
            return key_reference(record, self.store.location)
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            raise RunNotNeeded("this run already finished a rotation")
        minter = Minter(self.entry, self.store, self.kosli, self.identity)
        minter.sweep_unclaimed(record)
        keys = self.identity.list_keys()
        strategy, lost_rotate, reconciled = run.strategy, False, ""
        if record.state == Phase.ROTATING:
            strategy, lost_rotate, reconciled = minter.reconcile(record, keys)
            keys = self.identity.list_keys()
        key_id = record.key_id or self.identity.current_key_id(record, keys)
        old_description = next((key.description for key in keys if key.id == key_id), "")

        intent = (record.noted(reconciled) if reconciled else record).intent(
            self.owner(run),
            run_id=run.run_id,
            reason=run.reason,
            by=run.triggered_by,
            strategy=strategy,  # type: ignore[arg-type]
            key_id=key_id,
            attempt=token_source.token_hex(4),
            grace_hours=run.grace_hours,
            until=now + self.entry.lock_ttl_seconds,
            finishes_lost_rotate=lost_rotate,
            due=scheduled_due(self.entry, run, record, keys, key_id),
        )
        try:
            snapshot = self.store.save(intent, snapshot.version)
        except ConcurrentWriteError:
            # Another run (perhaps of another Airflow deployment) wrote first: if it now owns the
            # rotation, it is the one rotation; this run must not start a second.
            self.ownership.refuse_if_locked(self.store.load().record, run.run_id)
            raise
        log.info(
            "Intent recorded in Vault %s (version %d): %s key %s",
            self.store.location,
            snapshot.version,
            strategy,
            key_id,
        )
        minted = minter.mint(intent, old_description, snapshot.version)
        stored = minter.persist(minted, intent)
        log.info(
            "Kosli minted key %s (%s); stored in Vault %s version %d. Old key %s (%s) kept until it is dead.",
            minted.id,
            fingerprint(minted.secret),
            self.store.location,
            stored.version,
            stored.record.outgoing_key_id,
            fingerprint(stored.record.outgoing_key or ""),
        )
        return key_reference(stored.record, self.store.location)

    # -- 3. verify_new_key ----------------------------------------------------------------------

    def verify_new_key(self, run: RunRequest) -> dict[str, Any]:
        """The new key authenticates against Kosli (retrying 401s while it propagates)."""
        record, _ = self._owned(run, "verify_new_key")
        status = probe_until(self.kosli, self.entry.org, record.key, want=200, attempts=NEW_KEY_PROBES)
        if status != 200:
            raise VerificationError(
                f"the new key {record.key_id} ({fingerprint(record.key)}) gets HTTP {status}; the old key is "
                "untouched. Check the key in Kosli before retrying"
            )
        log.info("New key %s (%s) works: HTTP 200", record.key_id, fingerprint(record.key))
        return {"key_id": record.key_id, "fingerprint": fingerprint(record.key), "status": status}

    # -- 4. fan_out / verify_consumers / all_consumers_verified --------------------------------

    def fan_out(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Write the key to a batch of consumers, skipping those that already hold it or were left out."""
        record, work = self._owned(run, "fan_out")
        if not work:
            return {"consumers": dict.fromkeys(batch, "already done: the outgoing key is revoked")}

        def write(consumer: Any) -> str:
            if not run.updates(consumer.name):
                log.info("%s: not chosen for this run, left as it is", consumer.describe())
                return "not chosen for this run: left as it is"
            return self.engine.write(consumer, record)

        return {"consumers": for_each_consumer(self.engine.consumers(batch), write)}

    def verify_consumers(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Prove each consumer of a batch holds the key; the proof counts for this attempt and this run only."""
        record, work = self._owned(run, "verify_consumers")
        if not work:
            return {"consumers": dict.fromkeys(batch, "already done: the outgoing key is revoked")}
        outcomes = for_each_consumer(
            self.engine.consumers(batch),
            lambda consumer: self.engine.verify(consumer, record, run.run_id, chosen=run.updates(consumer.name)),
        )
        return {"consumers": outcomes}

    def all_consumers_verified(self, run: RunRequest) -> dict[str, Any]:
        """The gate before any revocation: every consumer is proven, by this run, to hold the current key."""
        if self.store.load().record.state not in AFTER_STORE:
            raise RunNotNeeded("no new key is stored, so there is nothing to gate (an earlier step failed)")
        refused_by_budget(self.entry, self.store.load().record, time.time())
        record, work = self._owned(run, "all_consumers_verified")
        if not work:
            return {"consumers": len(self.entry.consumers), "verified_at": iso(record.consumers_verified_at)}
        missing = self.engine.unproven(record, run.run_id)
        if missing:
            left_out = [name for name in missing if not run.updates(name)]
            raise ConsumerError(
                ", ".join(missing),
                f"not proven to hold the key {record.key_id} ({fingerprint(record.key)}) in this run, so the "
                f"outgoing key {record.outgoing_key_id} is NOT revoked. "
                + (f"Not chosen for this run: {', '.join(left_out)}. " if left_out else "")
                + "Fix the consumers, then clear their failed tasks (or trigger a new run: it resumes here). Why: "
                + "; ".join(f"{name}: {why}" for name, why in missing.items()),
                retryable=False,
            )
        if record.consumers_verified_at is None:
            baseline = self.identity.last_used_at(
                record.outgoing_key_id if record.outgoing_key_id != record.key_id else None
            )
            record = self.store.update_fenced(
                record.attempt,
                lambda r: (
                    r.all_verified(at=time.time(), old_key_last_used_at=baseline)
                    if r.consumers_verified_at is None
                    else None
                ),
            ).record
        log.info("All %d consumers hold %s", len(self.entry.consumers), fingerprint(record.key))
        return {"consumers": len(self.entry.consumers), "verified_at": iso(record.consumers_verified_at)}

    # -- 5. wait_grace: see sensors.WaitForGraceEnd (KeyRecord.wait_ends_at) --------------------

    # -- 6. revoke_old / confirm_old_key_dead ---------------------------------------------------

    def revoke_old(self, run: RunRequest) -> dict[str, Any]:
        """Revoke the outgoing key id, on live evidence only (unless the new key shares it: Kosli's grace did it)."""
        record, work = self._owned(run, "revoke_old")
        if not work:
            log.info("Outgoing key %s is already revoked", record.outgoing_key_id)
            return {"old_key_id": record.outgoing_key_id, "revoked": "already"}
        self.revocation.check_evidence(record, run.run_id)
        self.revocation.check_usage(record, despite_recent_use=run.revoke_despite_recent_use)
        how = self.revocation.revoke(record)
        self.store.update_fenced(record.attempt, lambda r: r.revoked() if r.state == Phase.STORED else None)
        log.info("Outgoing key %s: %s", record.outgoing_key_id, how)
        return {"old_key_id": record.outgoing_key_id, "revoked": how}

    def confirm_old_key_dead(self, run: RunRequest) -> dict[str, Any]:
        """The outgoing key must get HTTP 401, and the key that stays must still get 200."""
        record, work = self._owned(run, "confirm_old_key_dead")
        old_fp = fingerprint(record.outgoing_key or "")
        if work:
            self.revocation.confirm_dead(record)
            dead_at = time.time()
            self.store.update_fenced(
                record.attempt, lambda r: r.dead(at=dead_at) if r.state == Phase.OLD_KEY_REVOKED else None
            )
        self.revocation.confirm_staying_works(record)
        log.info("Outgoing key %s (%s) gets HTTP 401; key %s gets 200", record.outgoing_key_id, old_fp, record.key_id)
        retired = self.engine.retire_superseded(record)
        return {"old_key_id": record.outgoing_key_id, "old_fingerprint": old_fp, "status": 401, "retired": retired}

    # -- 7. finalize ----------------------------------------------------------------------------

    def finalize(self, run: RunRequest, *, rotated_at: float | None = None) -> dict[str, Any]:
        """Write the audit entry, then forget the outgoing key: the operation is complete."""
        record = self.store.load().record
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            log.info("Already finalized by this run")
            return {"key_id": record.key_id, "fingerprint": fingerprint(record.key), "finalized": "already"}
        enter("finalize", record, self.store.location)
        record = self.ownership.own(run.run_id)
        consumers = {name: self.store.read_note(f"consumers/{name}") for name in self.entry.consumer_names}
        audit = audit_entry(
            record,
            where=self.where,
            dag_id=self.dag_id,
            finished_by=self.owner(run),
            run_id=run.run_id,
            consumers=consumers,
        )
        if record.is_rollback:
            audit["restored_key"]["stored_at"] = iso(rotated_at)
        name = audit_name(record)
        # Audit entries are write-once: a finalize resumed after its entry was sealed adds a supplement.
        audit_path = self.store.write_note(name, audit, once=True) or self.store.write_note(
            f"{name}-resumed-{int(time.time())}", {**audit, "supplements": name}, once=True
        )
        kept_age = rotated_at if record.is_rollback else record.rotated_at
        self.store.update_fenced(
            record.attempt,
            lambda r: r.finished(run.run_id, rotated_at=kept_age) if r.state == Phase.OLD_KEY_DEAD else None,
        )
        Minter(self.entry, self.store, self.kosli, self.identity).sweep_unclaimed(self.store.load().record)
        log.info(
            "%s of %s complete; audit entry at %s: %s", record.operation.capitalize(), self.where, audit_path, audit
        )
        return {"audit": audit_path, "key_id": record.key_id, "fingerprint": fingerprint(record.key)}

    # -- when a step fails for good -------------------------------------------------------------

    def record_failure(
        self, run_id: str, step_name: str, error: BaseException | None, *, operation: str | None = None
    ) -> dict[str, Any]:
        """Write into the Vault record what broke and what is left to do, and release the lock so the
        next run can resume at once. Returns the facts a failure notice needs. With ``operation``, a record
        holding another operation is left alone (a refused rollback changes nothing)."""
        record = self.store.load().record
        owner = self.owner(run_id)
        message = describe_error(error)
        unverified = list(self.engine.unproven(record, run_id)) if record.state == Phase.STORED else []
        facts = failure_facts(
            record,
            where=self.where,
            dag_id=self.dag_id,
            run_id=run_id,
            step=step_name,
            error=message,
            unverified=unverified,
        )
        if not record.in_flight:
            return facts
        if operation and record.operation != operation:
            facts.update(
                changed=False, todo=f"Nothing changed: read the error, then trigger {self.dag_id} again if needed."
            )
            return facts
        if record.locked_by_other(owner, self.store.vault_now()):
            facts["todo"] = f"Nothing to do here: the {record.operation} in flight belongs to {record.lock_owner}."
            facts["changed"] = False
            return facts
        facts["counts_against_budget"] = operation is None  # a rollback is a person's run already (attention.py)
        self.store.update(lambda r: r.failed(owner, step_name, message, facts["todo"]) if r.in_flight else None)
        return facts
