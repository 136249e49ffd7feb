"""One operation at a time per key, across runs and Airflow deployments: the lock in the Vault record.

The lock names its owner (``<dag_id>/<run_id>``) and expires on Vault's clock, so a worker whose clock runs
ahead cannot think a live lock expired. A step renews it when it starts and, while it runs, every third of the
lock's life (``keep_alive``), so a long fan-out never loses its lock to a second run. A dead holder simply stops
renewing: its lock expires, and any run takes the operation over (its fencing token then stops the dead one's
writes, should it come back).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kosli_rotation.errors import RotationInProgress
from kosli_rotation.key_store import KeyStore
from kosli_rotation.record import KeyRecord, iso

log = logging.getLogger(__name__)


class Ownership:
    def __init__(self, store: KeyStore, dag_id: str, lock_ttl: float, where: str) -> None:
        self.store = store
        self.dag_id = dag_id
        self.lock_ttl = lock_ttl
        self.where = where

    def owner(self, run_id: str) -> str:
        return f"{self.dag_id}/{run_id}"

    def refuse_if_locked(self, record: KeyRecord, run_id: str, vault_now: float | None = None) -> None:
        if not record.in_flight or not record.lock_owner or record.lock_owner == self.owner(run_id):
            return
        now = self.store.vault_now() if vault_now is None else vault_now
        if record.locked_by_other(self.owner(run_id), now):
            raise RotationInProgress(
                f"the {record.operation} of {self.where} belongs to {record.lock_owner} (phase "
                f"{record.state.value!r}) until {iso(record.lock_expires_at)} (Vault's clock); this run does nothing. "
                "If that run is dead, its lock expires by itself; then any run resumes it."
            )

    def own(self, run_id: str) -> KeyRecord:
        """Load the record, make sure this run owns the operation in flight, and renew the lock if due.

        A run takes over an operation whose lock was released (a failed run) or expired (a dead one).
        """
        record = self.store.load().record
        owner, now = self.owner(run_id), self.store.vault_now()
        self.refuse_if_locked(record, run_id, now)
        if record.lock_owner == owner and (record.lock_expires_at or 0) - now > self.lock_ttl / 2:
            return record

        def take(r: KeyRecord) -> KeyRecord | None:
            self.refuse_if_locked(r, run_id, now)
            return r.taken_over(owner, until=now + self.lock_ttl) if r.in_flight else None

        return self.store.update(take).record

    def renew(self, run_id: str) -> bool:
        """Extend this run's lock; False when it is no longer this run's (taken over, or the operation ended)."""
        owner = self.owner(run_id)
        now = self.store.vault_now()
        still_ours = True

        def extend(r: KeyRecord) -> KeyRecord | None:
            nonlocal still_ours
            if not r.in_flight or r.lock_owner != owner:
                still_ours = False
                return None
            return r.locked(owner, until=now + self.lock_ttl)

        self.store.update(extend)
        return still_ours

    @contextmanager
    def keep_alive(self, run_id: str) -> Iterator[None]:
        """Renew the lock every third of its life while the block runs (a thread; best effort: a renewal that
        fails is retried at the next beat, and the fencing token protects the record meanwhile)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lock_ttl / 3):
                try:
                    if not self.renew(run_id):
                        return
                except Exception as error:
                    log.warning("could not renew the lock of %s: %s", self.where, type(error).__name__)

        keeper = threading.Thread(target=beat, name="lock-keeper", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join(timeout=5)
