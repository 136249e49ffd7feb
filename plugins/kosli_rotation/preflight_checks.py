"""Preflight's judgements that need no consumer: is the key due, does it work, will the Vault token outlive the run."""

from __future__ import annotations

import logging
import time

from kosli_rotation.errors import InvalidRequestError, RunNotNeeded, VerificationError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_identity import KeyIdentity
from kosli_rotation.key_store import KeyStore
from kosli_rotation.record import KeyRecord, Phase, iso
from kosli_rotation.run_request import RunRequest

log = logging.getLogger(__name__)

#: A manual run does not rotate a key that was rotated this recently, unless forced.
MIN_MANUAL_INTERVAL = 3600.0
#: What a rotation's steps take beyond its waits and a Vault retry, for the Vault token's remaining TTL.
STEP_MARGIN_SECONDS = 600


def check_due(entry: KeyEntry, identity: KeyIdentity, run: RunRequest, record: KeyRecord) -> None:
    """A scheduled run rotates a key that reached its maximum age; a manual one any key not rotated in the last
    hour (unless forced)."""
    now = time.time()
    if run.manual:
        recently = record.rotated_at and now - record.rotated_at < MIN_MANUAL_INTERVAL
        if recently and not run.force:
            raise RunNotNeeded(
                f"the key was rotated {int((now - record.rotated_at) / 60)} minutes ago by run "
                f"{record.last_finished_run_id}; set 'force' to rotate it again"
            )
        return
    born = record.rotated_at or identity.created_at(record)
    max_age = entry.max_age_days * 86400
    if born and now - born < max_age:
        raise RunNotNeeded(
            f"the key is {(now - born) / 86400:.1f} days old; it is due after {entry.max_age_days} "
            f"days, on {iso(born + max_age)}"
        )


def check_vault_token(entry: KeyEntry, store: KeyStore, strategy: str, grace_hours: int) -> None:
    """A static Vault token must outlive the rotation: one that expires mid-way strands the new key. The rotation
    lasts the grace period ('rotate') or the observation window ('replace'), plus its steps (a Vault retry and
    ten minutes)."""
    waits = grace_hours * 3600 if strategy == "rotate" else entry.usage_observation_seconds
    needed = waits + entry.vault_retry_seconds + STEP_MARGIN_SECONDS
    left = store.token_seconds_left()
    if left is not None and left < needed:
        raise InvalidRequestError(
            f"the Vault token of connection {entry.vault_conn_id!r} expires in {left / 60:.0f} min, before this "
            f"rotation can finish (it needs {needed / 60:.0f} min: the "
            f"{'grace period' if strategy == 'rotate' else 'observation window'} and the steps): renew it, or use "
            "a longer-lived token or an auth method that logs in for every task"
        )


def check_current_key(status: int, record: KeyRecord, strategy: str | None, location: str) -> None:
    """The key in Vault must work (HTTP 200), except where the rotation is how it gets fixed."""
    if status == 200:
        return
    message = (
        f"the key in Vault {location} ({fingerprint(record.key)}) gets HTTP {status} from Kosli: consumers using it "
        "are failing already"
    )
    # An interrupted rotation (phase 'rotating') is finished by rotate_and_store's reconciliation, which creates a
    # fresh key with the admin key: a dead key in Vault must not block that.
    if record.state == Phase.ROTATING:
        log.warning("%s; the interrupted rotation is reconciled and finished with a fresh key", message)
    elif record.in_flight or strategy != "replace":
        raise VerificationError(message + "; run a manual rotation with strategy 'replace'")
    else:
        log.warning("%s; 'replace' will create a working key", message)
