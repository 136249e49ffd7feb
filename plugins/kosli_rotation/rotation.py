"""The rotation steps, in the order they run. Each first checks whether its work is already done.

Kosli shows a new key once. So the state of a rotation lives in the key's Vault record, written
with check-and-set before and after every step that changes the world, and every step reads it
back before acting. That makes each step safe to retry after a failure or a kill at any line,
and lets a later run resume an unfinished rotation instead of starting another one:

1. ``preflight``: is the key due, do the admin key, the current key and every consumer work? Its
   result is the plan (a dry run stops after it).
2. ``rotate_and_store``: write an intent, ask Kosli for the new key, store it in Vault at once.
   If a previous attempt died after its intent, reconcile from Kosli's key list first.
3. ``verify_new_key``: the new key authenticates.
4. ``fan_out`` / ``verify_consumers`` / ``all_consumers_verified``: every consumer holds the new key
   (one mapped task per batch of consumers of one kind and account; the gate lists any that do not).
5. ``wait_grace`` (a deferrable sensor, see ``sensors.py``): Kosli's grace period has passed.
6. ``revoke_old`` / ``confirm_old_key_dead``: the old key gets HTTP 401 (and the new one 200).
7. ``finalize``: drop the old key from the record and write the audit entry.

Nothing here returns or logs a secret: steps hand each other Vault paths, key ids and fingerprints.
"""

from __future__ import annotations

import logging
import re
import secrets as token_source
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from kosli_rotation.consumers import Consumer, build_consumer
from kosli_rotation.errors import (
    ConcurrentWriteError,
    ConsumerError,
    InvalidRequestError,
    KeyStoreError,
    KosliApiError,
    OldKeyStillInUse,
    RotationInProgress,
    VerificationError,
)
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyRecord, KeyStore, Phase
from kosli_rotation.kosli_hook import ApiKey, KosliHook, MintedKey
from kosli_rotation.retrying import backoff_delay, call_with_retries

log = logging.getLogger(__name__)

#: A manual run does not rotate a key that was rotated this recently, unless forced.
MIN_MANUAL_INTERVAL = 3600.0
#: Tolerated clock difference between Kosli and the worker when matching key creation times.
CLOCK_SKEW = 300.0
#: Probes of the new key retry 401s for a while: a new key may take a moment to propagate.
NEW_KEY_PROBES = 6
#: Probes of the old key retry for a while: Kosli's revocation may lag our clock slightly.
OLD_KEY_PROBES = 8
#: The default life of the rotation lock without renewal (inventory: lock_ttl_seconds). Every step renews it.
LOCK_TTL = 3600.0

AFTER_STORE = (Phase.STORED, Phase.OLD_KEY_REVOKED, Phase.OLD_KEY_DEAD)


class _UnexpectedStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class RunNotNeeded(Exception):
    """This run has nothing to do (key not due, dry run, already done). Downstream steps skip."""


@dataclass(frozen=True)
class RunRequest:
    """What one DAG run asks for, after validation. Holds no secret."""

    run_id: str
    manual: bool
    reason: str
    strategy: str
    grace_hours: int
    force: bool = False
    dry_run: bool = False
    triggered_by: str = "scheduler"
    #: The consumers this run may write to (a manual choice); None: all of them.
    consumers: frozenset[str] | None = None

    def updates(self, consumer: str) -> bool:
        return self.consumers is None or consumer in self.consumers


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else None


def _minted_description(old_description: str, attempt: str) -> str:
    """Keep the old key's label, and tag the new key so an interrupted attempt can find its orphans."""
    base = re.sub(r" \(rotated \d{4}-\d{2}-\d{2} #[0-9a-f]+\)$", "", old_description) or "kosli-key-rotation"
    suffix = f" (rotated {datetime.now(UTC):%Y-%m-%d} #{attempt})"
    return base[: 256 - len(suffix)] + suffix


class Rotation:
    """The rotation steps for one inventory entry. Hooks are opened lazily, inside tasks only."""

    def __init__(self, entry: KeyEntry) -> None:
        self.entry = entry

    @cached_property
    def store(self) -> KeyStore:
        entry = self.entry
        return KeyStore(entry.vault_path, conn_id=entry.vault_conn_id, mount=entry.vault_mount)

    @cached_property
    def kosli(self) -> KosliHook:
        return KosliHook(self.entry.kosli_conn_id)

    def consumer(self, name: str) -> Consumer:
        return build_consumer(self.entry.consumer(name))

    @property
    def where(self) -> str:
        return f"{self.entry.org}/{self.entry.service_account}"

    # -- ownership: one rotation at a time ------------------------------------------------------

    def owner(self, run: RunRequest | str) -> str:
        return f"{self.entry.dag_id}/{run if isinstance(run, str) else run.run_id}"

    @contextmanager
    def journal(self, run_id: str, step_name: str) -> Iterator[None]:
        """Run a step with it marked as running in the record, so a rerun can tell it was interrupted."""
        owner = self.owner(run_id)
        self.store.mark_step(owner, step_name, running=True)
        try:
            yield
        finally:
            self.store.mark_step(owner, step_name, running=False)

    def _refuse_if_locked(self, record: KeyRecord, run: RunRequest) -> None:
        if record.locked_by_other(self.owner(run), time.time()):
            raise RotationInProgress(
                f"the rotation of {self.where} belongs to {record.lock_owner} (phase {record.state.value!r}) "
                f"until {_iso(record.lock_expires_at)}; this run does nothing. If that run is dead, its lock "
                "expires by itself; then any run resumes the rotation."
            )

    def _own(self, run: RunRequest) -> KeyRecord:
        """Load the record, make sure this run owns the rotation in flight, and renew the lock if due.

        A run takes over a rotation whose lock was released (a failed run) or expired (a dead one).
        """
        record = self.store.load().record
        self._refuse_if_locked(record, run)
        owner, now = self.owner(run), time.time()
        # The lock never covers the grace wait: taking over a rotation that waits is safe (the end of the
        # wait comes from Vault), and a dead holder must not block the key for the whole grace period.
        lasts = float(self.entry.lock_ttl_seconds)
        if record.lock_owner == owner and (record.lock_expires_at or 0) - now > lasts / 2:
            return record

        def take(r: KeyRecord) -> KeyRecord | None:
            self._refuse_if_locked(r, run)
            taken = r.locked_for(owner, lasts).model_copy(update={"failed_step": None, "failure": None, "todo": None})
            return taken if r.lock_owner == owner else taken.noted(f"{owner} took over at phase {r.state.value}")

        return self.store.update(take).record

    # -- 1. preflight ---------------------------------------------------------------------------

    def preflight(self, run: RunRequest) -> dict[str, Any]:
        """Check everything a rotation needs before anything changes; stop here if there is nothing to do."""
        record = self.store.load().record
        resuming = record.state != Phase.IDLE
        if resuming:
            self._refuse_if_locked(record, run)
            log.info(
                "Resuming the rotation started by run %s, now at phase %r (strategy %s)%s",
                record.run_id,
                record.state.value,
                record.strategy,
                f"; it failed at {record.failed_step}: {record.failure}" if record.failed_step else "",
            )
        elif record.last_finished_run_id == run.run_id:
            raise RunNotNeeded(f"this run already rotated the key (now {record.key_id}); trigger a new run")
        else:
            self._check_due(run, record)

        keys = self._list_keys_as_admin()
        key_id = record.key_id if resuming else self._current_key_id(record, keys)
        current_status = self.kosli.probe(self.entry.org, record.key)
        strategy = record.strategy if resuming else run.strategy
        if current_status != 200:
            message = (
                f"the key in Vault {self.store.location} ({fingerprint(record.key)}) gets HTTP "
                f"{current_status} from Kosli: consumers using it are failing already"
            )
            # An interrupted rotation (phase 'rotating') is finished by rotate_and_store's reconciliation, which
            # creates a fresh key with the admin key: a dead key in Vault must not block that.
            if record.state == Phase.ROTATING:
                log.warning("%s; the interrupted rotation is reconciled and finished with a fresh key", message)
            elif resuming or strategy != "replace":
                raise VerificationError(message + "; run a manual rotation with strategy 'replace'")
            else:
                log.warning("%s; 'replace' will create a working key", message)

        consumers = [self.consumer(name) for name in self.entry.consumer_names]
        today = self._for_each_consumer(self.entry.consumer_names, lambda c: self._check_consumer(c, record))
        plan = {
            "key": self.where,
            "key_id": key_id,
            "fingerprint": fingerprint(record.key),
            "strategy": strategy,
            "grace_hours": run.grace_hours if strategy == "rotate" else None,
            "resuming": resuming,
            "consumers": [
                {
                    "name": consumer.name,
                    "target": consumer.describe(),
                    "today": today["consumers"][consumer.name],
                    "update": run.updates(consumer.name),
                    "verify": consumer.verification_plan(),
                }
                for consumer in consumers
            ],
        }
        log.info("Plan for %s: %s", self.entry.dag_id, plan)
        return plan

    def _check_due(self, run: RunRequest, record: KeyRecord) -> None:
        now = time.time()
        if run.manual:
            recently = record.rotated_at and now - record.rotated_at < MIN_MANUAL_INTERVAL
            if recently and not run.force:
                raise RunNotNeeded(
                    f"the key was rotated {int((now - record.rotated_at) / 60)} minutes ago by run "
                    f"{record.last_finished_run_id}; set 'force' to rotate it again"
                )
            return
        born = record.rotated_at or self._key_created_at(record)
        max_age = self.entry.max_age_days * 86400
        if born and now - born < max_age:
            raise RunNotNeeded(
                f"the key is {(now - born) / 86400:.1f} days old; it is due after {self.entry.max_age_days} "
                f"days, on {_iso(born + max_age)}"
            )

    def _key_created_at(self, record: KeyRecord) -> float | None:
        keys = self._list_keys_as_admin()
        key_id = self._current_key_id(record, keys)
        return next((key.created_at for key in keys if key.id == key_id), None)

    def _list_keys_as_admin(self) -> list[ApiKey]:
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

    def _current_key_id(self, record: KeyRecord, keys: list[ApiKey]) -> str:
        """The id of the key in Vault: from the record, else the inventory's key_id or key_label."""
        entry = self.entry
        known = {key.id for key in keys}
        if record.key_id:
            if record.key_id not in known and record.state == Phase.IDLE:
                raise InvalidRequestError(
                    f"Vault record {self.store.location} names key {record.key_id}, which Kosli does not list "
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

    @staticmethod
    def _check_consumer(consumer: Consumer, record: KeyRecord) -> str:
        """Can we write there, and what would the rotation change? (Read-only.)"""
        consumer.check_access()
        if not consumer.readable:
            return "reachable; write-only, so what it holds cannot be told: it will be written"
        held = consumer.read_fingerprint()
        if held is None:
            return "reachable; holds nothing yet: the key will be created there"
        if held == fingerprint(record.key):
            return "reachable; holds the current key: it will be updated"
        return f"reachable; holds another value ({held}): it will be overwritten"

    # -- 2. rotate_and_store --------------------------------------------------------------------

    def rotate_and_store(self, run: RunRequest) -> dict[str, Any]:
        """Mint the new key and store it in Vault within one task, behind an intent record."""
        if run.dry_run:
            raise RunNotNeeded("dry run: the plan returned by preflight is what a real run would do; nothing changed")
        snapshot = self.store.load()
        record = snapshot.record
        self._refuse_if_locked(record, run)
        if record.state in AFTER_STORE:
            log.info("New key %s (%s) is already stored; nothing to do", record.key_id, fingerprint(record.key))
            return self._reference(record)
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            raise RunNotNeeded("this run already finished a rotation")

        keys = self._list_keys_as_admin()
        strategy = run.strategy
        reconciled = ""
        if record.state == Phase.ROTATING:
            strategy, reconciled = self._reconcile(record, keys)
            keys = self._list_keys_as_admin()
        key_id = record.key_id or self._current_key_id(record, keys)
        old_description = next((key.description for key in keys if key.id == key_id), "")

        attempt = token_source.token_hex(4)
        intent = record.locked_for(self.owner(run), self.entry.lock_ttl_seconds)
        if reconciled:
            intent = intent.noted(reconciled)
        intent = intent.noted(f"{self.owner(run)} recorded its intent to {strategy} key {key_id} (attempt #{attempt})")
        intent = intent.model_copy(
            update={
                "state": Phase.ROTATING,
                "key_id": key_id,
                "run_id": run.run_id,
                "strategy": strategy,
                "reason": run.reason,
                "triggered_by": run.triggered_by,
                "started_at": time.time(),
                "attempt": attempt,
                "grace_ends_at": None,
                "failed_step": None,
                "failure": None,
                "todo": None,
            }
        )
        try:
            snapshot = self.store.save(intent, snapshot.version)
        except ConcurrentWriteError:
            # Another run (perhaps of another Airflow deployment) wrote first: if it now owns the
            # rotation, it is the one rotation; this run must not start a second.
            self._refuse_if_locked(self.store.load().record, run)
            raise
        log.info(
            "Intent recorded in Vault %s (version %d): %s key %s",
            self.store.location,
            snapshot.version,
            strategy,
            key_id,
        )

        minted = self._mint(intent, old_description, run.grace_hours, snapshot.version)
        stored = self._persist(minted, intent)
        log.info(
            "Kosli minted key %s (%s); stored in Vault %s version %d. Old key %s (%s) kept until it is dead.",
            minted.id,
            fingerprint(minted.secret),
            self.store.location,
            stored.version,
            stored.record.previous_key_id,
            fingerprint(stored.record.previous_key or ""),
        )
        return self._reference(stored.record)

    def _mint(self, intent: KeyRecord, old_description: str, grace_hours: int, version: int) -> MintedKey:
        entry = self.entry
        assert intent.key_id is not None and intent.attempt is not None
        try:
            if intent.strategy == "rotate":
                return self.kosli.rotate_key(
                    entry.org, entry.service_account, intent.key_id, grace_period_hours=grace_hours
                )
            return self.kosli.create_key(
                entry.org,
                entry.service_account,
                description=_minted_description(old_description, intent.attempt),
            )
        except KosliApiError as error:
            # Kosli refused before doing anything: withdraw the intent so the next attempt starts clean.
            withdrawn = intent.noted(f"Kosli refused the call (HTTP {error.status}); intent withdrawn")
            self.store.save(
                withdrawn.model_copy(update={"state": Phase.IDLE, "attempt": None, "lock_owner": None}), version
            )
            raise error from None

    def _persist(self, minted: MintedKey, intent: KeyRecord) -> Any:
        """Store the just-minted key, retrying Vault for a bounded time: losing it is the one disaster."""

        def store_new_key(record: KeyRecord) -> KeyRecord | None:
            if record.key == minted.secret:
                return None
            return record.noted(f"stored new key {minted.id} ({fingerprint(minted.secret)})").model_copy(
                update={
                    "previous_key": intent.key if record.key == intent.key else record.previous_key,
                    "previous_key_id": intent.key_id,
                    "key": minted.secret,
                    "key_id": minted.id,
                    "state": Phase.STORED,
                    "rotated_at": time.time(),
                    "grace_ends_at": minted.grace_period_expires_at if intent.strategy == "rotate" else None,
                }
            )

        try:
            # The key exists only in this process now: keep retrying Vault for as long as the inventory allows.
            return self.store.update(store_new_key, deadline=time.monotonic() + self.entry.vault_retry_seconds)
        except Exception as error:
            log.critical(
                "Kosli minted key %s (%s) but Vault %s could not be written: %s. The value is lost with this "
                "task. Retrying the task reconciles: keys minted by attempt #%s are revoked and a fresh key "
                "is created. Until then the old key keeps working.",
                minted.id,
                fingerprint(minted.secret),
                self.store.location,
                error,
                intent.attempt,
            )
            raise KeyStoreError(f"could not store the new key in Vault {self.store.location}: {error}") from None

    def _reconcile(self, record: KeyRecord, keys: list[ApiKey]) -> tuple[str, str]:
        """An earlier attempt wrote its intent but never stored a key: whatever it minted is held by
        nobody. Revoke what can be told apart, and return the strategy that finishes safely."""
        started = (record.started_at or 0) - CLOCK_SKEW
        old = next((key for key in keys if key.id == record.key_id), None)
        orphans = [
            key
            for key in keys
            if key.id != record.key_id
            and key.created_at >= started
            and (f"#{record.attempt})" in key.description or (old and key.description == old.description))
        ]
        log.warning(
            "Run %s wrote an intent at %s (attempt #%s) but stored no key: reconciling from Kosli's key list",
            record.run_id,
            _iso(record.started_at),
            record.attempt,
        )
        for orphan in orphans:
            self.kosli.revoke_key(self.entry.org, self.entry.service_account, orphan.id)
            log.warning("Revoked key %s (created %s): its value was never stored", orphan.id, _iso(orphan.created_at))
        summary = (
            f"attempt #{record.attempt} by {record.run_id} stored no key; reconciled from Kosli's key list: "
            f"revoked {[orphan.id for orphan in orphans] or 'no orphan'}"
        )
        if record.strategy == "rotate":
            log.warning(
                "A lost rotate may have left a secret nobody holds under key %s. Finishing with 'replace': "
                "a new key is created, and key %s (with anything lost under it) is revoked once every "
                "consumer holds the new key.",
                record.key_id,
                record.key_id,
            )
            summary += f"; a lost rotate cannot be undone, so finishing with 'replace' (revoking {record.key_id} later)"
            return "replace", summary
        return record.strategy or "replace", summary

    def _reference(self, record: KeyRecord) -> dict[str, Any]:
        """What downstream steps may know about the stored key: where it is, never what it is."""
        return {
            "vault": self.store.location,
            "key_id": record.key_id,
            "fingerprint": fingerprint(record.key),
            "previous_key_id": record.previous_key_id,
            "strategy": record.strategy,
            "grace_ends_at": _iso(record.grace_ends_at),
        }

    def _stored_record(self, run: RunRequest) -> KeyRecord:
        """The record of a rotation whose new key is stored, owned by this run."""
        record = self.store.load().record
        if record.state in AFTER_STORE:
            record = self._own(run)
        if record.state not in AFTER_STORE:
            raise KeyStoreError(
                f"Vault record {self.store.location} is at phase {record.state.value!r}: no new key is stored"
            )
        return record

    # -- 3. verify_new_key ----------------------------------------------------------------------

    def verify_new_key(self, run: RunRequest) -> dict[str, Any]:
        """The new key authenticates against Kosli (retrying 401s while it propagates)."""
        record = self._stored_record(run)
        status = self._probe_until(record.key, want=200, attempts=NEW_KEY_PROBES)
        if status != 200:
            raise VerificationError(
                f"the new key {record.key_id} ({fingerprint(record.key)}) gets HTTP {status}; the old key is "
                "untouched. Check the key in Kosli before retrying"
            )
        log.info("New key %s (%s) works: HTTP 200", record.key_id, fingerprint(record.key))
        return {"key_id": record.key_id, "fingerprint": fingerprint(record.key), "status": status}

    def _probe_until(self, key: str, *, want: int, attempts: int) -> int:
        """Probe ``key`` until it gets ``want``; return the last status seen."""

        def probe() -> int:
            status = self.kosli.probe(self.entry.org, key)
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

    # -- 4. fan_out / verify_consumers / all_consumers_verified --------------------------------

    def fan_out(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Write the new key to a batch of consumers, skipping those that already hold it or were left out."""
        record = self._stored_record(run)

        def write(consumer: Consumer) -> str:
            if not run.updates(consumer.name):
                log.info("%s: not chosen for this run, left as it is", consumer.describe())
                return "not chosen for this run: left as it is"
            return self._write_one(consumer, record)

        return self._for_each_consumer(batch, write)

    def _write_one(self, consumer: Consumer, record: KeyRecord) -> str:
        key_fingerprint = fingerprint(record.key)
        status = self._consumer_status(consumer.name)
        if consumer.readable and consumer.holds(record.key):
            outcome = f"already holds {key_fingerprint}"
        elif not consumer.readable and status.get("written_fingerprint") == key_fingerprint:
            outcome = f"{key_fingerprint} was written at {status.get('written_at')} (write-only: not read back)"
        else:
            consumer.write(record.key)
            status = {**status, "written_fingerprint": key_fingerprint, "written_at": _iso(time.time())}
            self._save_consumer_status(consumer, status)
            outcome = f"wrote {key_fingerprint}"
        log.info("%s: %s", consumer.describe(), outcome)
        return outcome

    def verify_consumers(self, batch: list[str], run: RunRequest) -> dict[str, Any]:
        """Prove each consumer of a batch holds the new key; record when, for the gate and the audit."""
        record = self._stored_record(run)
        return self._for_each_consumer(batch, lambda consumer: self._verify_one(consumer, record, run))

    def _verify_one(self, consumer: Consumer, record: KeyRecord, run: RunRequest) -> str:
        outcome = consumer.verify(record.key, written_at=record.rotated_at or 0)
        if not outcome.ok and not run.updates(consumer.name):
            # Left out on purpose (something else updates it): not this task's failure; the gate holds the old key.
            log.warning("%s, not chosen for this run, does not hold the new key yet", consumer.describe())
            return f"not chosen for this run and not verified ({outcome.method}): {outcome.detail}"
        if not outcome.ok:
            raise ConsumerError(consumer.name, f"not verified ({outcome.method}): {outcome.detail}")
        status = {
            **self._consumer_status(consumer.name),
            "verified_fingerprint": fingerprint(record.key),
            "verified_key_id": record.key_id,
            "verified_at": _iso(time.time()),
            "method": outcome.method,
            "detail": outcome.detail,
            "run_id": run.run_id,
        }
        self._save_consumer_status(consumer, status)
        log.info("%s verified (%s): %s", consumer.describe(), outcome.method, outcome.detail)
        return f"verified ({outcome.method})"

    def all_consumers_verified(self, run: RunRequest) -> dict[str, Any]:
        """The gate before any revocation: every consumer is proven to hold the current key."""
        if self.store.load().record.state not in AFTER_STORE:
            raise RunNotNeeded("no new key is stored, so there is nothing to gate (an earlier step failed)")
        record = self._stored_record(run)
        missing = self._unverified_consumers(record)
        if missing:
            left_out = [name for name in missing if not run.updates(name)]
            raise ConsumerError(
                ", ".join(missing),
                f"not verified with the new key {record.key_id} ({fingerprint(record.key)}), so the old key "
                f"{record.previous_key_id} is NOT revoked. {self._old_key_outlook(record)} "
                + (f"Not chosen for this run: {', '.join(left_out)}. " if left_out else "")
                + "Fix the consumers, then clear their failed tasks (or trigger a new run: it resumes here).",
                retryable=False,
            )
        if record.consumers_verified_at is None:
            baseline = self._old_key_last_used_at(record)
            record = self.store.update(
                lambda r: (
                    r.model_copy(update={"consumers_verified_at": time.time(), "old_key_last_used_at": baseline})
                    if r.consumers_verified_at is None
                    else None
                )
            ).record
        log.info("All %d consumers hold %s", len(self.entry.consumers), fingerprint(record.key))
        return {"consumers": len(self.entry.consumers), "verified_at": _iso(record.consumers_verified_at)}

    def _unverified_consumers(self, record: KeyRecord) -> list[str]:
        current = fingerprint(record.key)
        return [
            name
            for name in self.entry.consumer_names
            if self._consumer_status(name).get("verified_fingerprint") != current
        ]

    def _old_key_last_used_at(self, record: KeyRecord) -> float | None:
        """When Kosli last saw the old key id used (only meaningful when the new key has another id)."""
        if not record.previous_key_id or record.previous_key_id == record.key_id:
            return None
        try:
            return self.kosli.get_key(self.entry.org, self.entry.service_account, record.previous_key_id).last_used_at
        except KosliApiError as error:
            if error.status == 404:
                return None
            raise

    @staticmethod
    def _old_key_outlook(record: KeyRecord) -> str:
        if record.grace_to_wait_for:
            hours = (record.grace_to_wait_for - time.time()) / 3600
            return (
                f"Kosli revokes the old key by itself at {_iso(record.grace_to_wait_for)} "
                f"({hours:.1f} h from now): consumers still on it break then."
            )
        return "The old key stays valid until this run revokes it."

    def _for_each_consumer(self, names: list[str], action: Callable[[Consumer], str]) -> dict[str, Any]:
        """Run ``action`` on each consumer concurrently (bounded by its kind), isolating failures."""
        consumers = [self.consumer(name) for name in names]
        if not consumers:
            return {"consumers": {}}
        workers = max(1, min(len(consumers), min(type(c).max_concurrency for c in consumers)))
        outcomes: dict[str, str] = {}
        failures: list[ConsumerError] = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="consumer") as pool:
            futures = {pool.submit(action, consumer): consumer for consumer in consumers}
            for future in as_completed(futures):
                consumer = futures[future]
                try:
                    outcomes[consumer.name] = future.result()
                except ConsumerError as error:
                    failures.append(error)
                except Exception as error:  # an unexpected failure of one consumer must not hide the others
                    failures.append(ConsumerError(consumer.name, f"{type(error).__name__}: {error}"))
        for failure in failures:
            log.error("%s", failure)
        if failures:
            raise ConsumerError(
                ", ".join(sorted(f.consumer for f in failures)),
                f"{len(failures)} of {len(consumers)} failed: " + "; ".join(str(f) for f in failures),
                retryable=all(f.retryable for f in failures),
            )
        return {"consumers": outcomes}

    def _consumer_status(self, name: str) -> dict[str, Any]:
        return self.store.read_note(f"consumers/{name}") or {}

    def _save_consumer_status(self, consumer: Consumer, status: dict[str, Any]) -> None:
        self.store.write_note(
            f"consumers/{consumer.name}",
            {**status, "consumer": consumer.name, "kind": consumer.kind, "target": consumer.describe()},
        )

    # -- 5. wait_grace: see sensors.WaitForGraceEnd (KeyRecord.grace_to_wait_for) ---------------

    # -- 6. revoke_old / confirm_old_key_dead ---------------------------------------------------

    def revoke_old(self, run: RunRequest) -> dict[str, Any]:
        """Revoke the old key id, unless the new key shares it (then Kosli's grace expiry did it)."""
        record = self._stored_record(run)
        if record.state != Phase.STORED:
            log.info("Old key %s is already revoked", record.previous_key_id)
            return {"old_key_id": record.previous_key_id, "revoked": "already"}
        old_id = record.previous_key_id
        if old_id is None:
            raise KeyStoreError(f"Vault record {self.store.location} lost the old key id; cannot revoke it")
        missing = self._unverified_consumers(record)
        if missing:
            raise ConsumerError(", ".join(missing), "not verified with the new key: the old key is not revoked")
        if record.strategy == "replace" and not run.force:
            self._check_old_key_unused(record)
        if old_id == record.key_id:
            if record.grace_ends_at and time.time() < record.grace_ends_at:
                raise VerificationError(
                    f"the grace period of key {old_id} ends at {_iso(record.grace_ends_at)}; not revoking before"
                )
            how = "left to Kosli: the old secret expired with its grace period (its key id is the new key's)"
        else:
            revoked = self.kosli.revoke_key(self.entry.org, self.entry.service_account, old_id)
            how = "revoked" if revoked else "already gone (404)"
        self.store.update(
            lambda r: r.model_copy(update={"state": Phase.OLD_KEY_REVOKED}) if r.state == Phase.STORED else None
        )
        log.info("Old key %s: %s", old_id, how)
        return {"old_key_id": old_id, "revoked": how}

    def _check_old_key_unused(self, record: KeyRecord) -> None:
        """``replace`` revokes at once, so first make sure nothing unlisted still uses the old key."""
        used_at = self._old_key_last_used_at(record)
        baseline = record.old_key_last_used_at
        if used_at and (baseline is None or used_at > baseline):
            raise OldKeyStillInUse(
                f"the old key {record.previous_key_id} was used at {_iso(used_at)}, after every listed consumer "
                f"had the new key ({_iso(record.consumers_verified_at)}): something not in the inventory (or a "
                "job that started before the fan-out) still uses it, and would break now. Find it, give it the "
                "new key, then trigger a run with 'force' to revoke the old key anyway."
            )

    def confirm_old_key_dead(self, run: RunRequest) -> dict[str, Any]:
        """The old key must get HTTP 401, and the new key must still get 200."""
        record = self._stored_record(run)
        old_fp = fingerprint(record.previous_key or "")
        if record.state == Phase.STORED:
            raise KeyStoreError("the old key has not been revoked yet (phase 'stored')")
        if record.state == Phase.OLD_KEY_REVOKED:
            if not record.previous_key:
                raise KeyStoreError(f"Vault record {self.store.location} lost the old key; cannot probe it")
            status = self._probe_until(record.previous_key, want=401, attempts=OLD_KEY_PROBES)
            if status != 401:
                raise VerificationError(
                    f"the old key {record.previous_key_id} ({old_fp}) still gets HTTP {status} after revocation"
                )
            self.store.update(
                lambda r: (
                    r.model_copy(update={"state": Phase.OLD_KEY_DEAD}) if r.state == Phase.OLD_KEY_REVOKED else None
                )
            )
        new_status = self.kosli.probe(self.entry.org, record.key)
        if new_status != 200:
            raise VerificationError(
                f"after revoking the old key, the new key {record.key_id} ({fingerprint(record.key)}) gets HTTP "
                f"{new_status}: consumers are failing. Rotate again with strategy 'replace' now"
            )
        log.info(
            "Old key %s (%s) gets HTTP 401; new key %s still gets 200",
            record.previous_key_id,
            old_fp,
            record.key_id,
        )
        return {"old_key_id": record.previous_key_id, "old_fingerprint": old_fp, "status": 401}

    # -- 7. finalize ----------------------------------------------------------------------------

    def finalize(self, run: RunRequest) -> dict[str, Any]:
        """Write the audit entry, then forget the old key: the rotation is complete."""
        record = self.store.load().record
        if record.state == Phase.IDLE and record.last_finished_run_id == run.run_id:
            log.info("Rotation already finalized by this run")
            return {"key_id": record.key_id, "fingerprint": fingerprint(record.key), "finalized": "already"}
        if record.state != Phase.OLD_KEY_DEAD:
            raise KeyStoreError(f"cannot finalize at phase {record.state.value!r}: the old key is not confirmed dead")
        record = self._own(run)
        audit = {
            "event": "kosli-key-rotated",
            "key": self.where,
            "run_id": record.run_id,
            "finished_by_run": run.run_id,
            "triggered_by": record.triggered_by,
            "reason": record.reason,
            "strategy": record.strategy,
            "old_key": {"id": record.previous_key_id, "fingerprint": fingerprint(record.previous_key or "")},
            "new_key": {"id": record.key_id, "fingerprint": fingerprint(record.key)},
            "consumers": {name: self.store.read_note(f"consumers/{name}") for name in self.entry.consumer_names},
            "started_at": _iso(record.started_at),
            "stored_at": _iso(record.rotated_at),
            "finished_at": _iso(time.time()),
            "note": record.note,
            "history": [*record.history, f"{_iso(time.time())} finished by {self.owner(run)}"],
        }
        stamp = datetime.fromtimestamp(record.started_at or time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
        audit_path = self.store.write_note(f"audit/{stamp}-{record.attempt or 'manual'}", audit)

        def forget_old_key(r: KeyRecord) -> KeyRecord | None:
            if r.state != Phase.OLD_KEY_DEAD:
                return None
            return r.model_copy(
                update={
                    "state": Phase.IDLE,
                    "previous_key": None,
                    "previous_key_id": None,
                    "attempt": None,
                    "grace_ends_at": None,
                    "last_finished_run_id": run.run_id,
                    "lock_owner": None,
                    "lock_expires_at": None,
                    "history": [],
                    "steps_in_flight": {},
                    "consumers_verified_at": None,
                    "old_key_last_used_at": None,
                }
            )

        self.store.update(forget_old_key)
        log.info("Rotation of %s complete; audit entry at %s: %s", self.where, audit_path, audit)
        return {"audit": audit_path, "key_id": record.key_id, "fingerprint": fingerprint(record.key)}

    # -- when a step fails for good -------------------------------------------------------------

    def record_failure(self, run_id: str, step_name: str, error: BaseException | None) -> dict[str, Any]:
        """Write into the Vault record what broke and what is left to do, and release the lock so the
        next run can resume at once. Returns the facts a failure notification needs."""
        record = self.store.load().record
        facts: dict[str, Any] = {
            "key": self.where,
            "dag_id": self.entry.dag_id,
            "run_id": run_id,
            "failed_step": step_name,
            "error": str(error or "unknown error")[:500],
            "phase": record.state.value,
            "unverified_consumers": [],
            "old_key_dies_at": None,
            "hours_left": None,
        }
        if record.state == Phase.IDLE:
            facts["todo"] = "Nothing changed: fix the cause and trigger a new run."
            return facts
        if record.locked_by_other(self.owner(run_id), time.time()):
            facts["todo"] = f"Nothing to do here: the rotation in flight belongs to {record.lock_owner}."
            return facts
        if record.state in AFTER_STORE:
            facts["unverified_consumers"] = self._unverified_consumers(record)
        if record.grace_to_wait_for:
            facts["old_key_dies_at"] = _iso(record.grace_to_wait_for)
            facts["hours_left"] = round((record.grace_to_wait_for - time.time()) / 3600, 2)
        facts["todo"] = self._todo(record, facts["unverified_consumers"])

        def mark_failed(r: KeyRecord) -> KeyRecord:
            released = {"lock_owner": None, "lock_expires_at": None} if r.lock_owner == self.owner(run_id) else {}
            failed = r.noted(f"{step_name} failed in {self.owner(run_id)}: {facts['error']}")
            return failed.model_copy(
                update={"failed_step": step_name, "failure": facts["error"], "todo": facts["todo"], **released}
            )

        self.store.update(mark_failed)
        return facts

    def _todo(self, record: KeyRecord, unverified: list[str]) -> str:
        if record.state == Phase.ROTATING:
            return (
                "A key may have been minted and not stored. Trigger a new run (or clear the failed task): it "
                "reconciles from Kosli's key list, revokes what nobody holds, and finishes the rotation."
            )
        if record.state == Phase.STORED:
            waiting = f" Consumers not verified yet: {', '.join(unverified)}." if unverified else ""
            return (
                f"The new key {record.key_id} is stored in Vault; the old key {record.previous_key_id} still works."
                f"{waiting} Fix the cause, then clear the failed task or trigger a new run: it resumes without "
                "rotating again."
            )
        return (
            f"The old key {record.previous_key_id} is revoked; what is left is confirming it is dead and writing "
            "the audit entry. Clear the failed task or trigger a new run."
        )
