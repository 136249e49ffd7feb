"""Preflight's judgements that need no consumer: is the key due, does it work, will the Vault token outlive the run."""

from __future__ import annotations

import logging
import time

from kosli_rotation.errors import InvalidRequestError, RunNotNeeded, VerificationError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_identity import KeyIdentity
from kosli_rotation.key_store import KeyStore
from kosli_rotation.kosli_hook import ApiKey
from kosli_rotation.record import KeyRecord, Phase, iso
from kosli_rotation.run_request import RunRequest

log = logging.getLogger(__name__)

#: A manual run does not rotate a key that was rotated this recently, unless forced.
MIN_MANUAL_INTERVAL = 3600.0
#: What a rotation's steps take beyond its waits and a Vault retry, for the Vault token's remaining TTL.
STEP_MARGIN_SECONDS = 600


def check_due(entry: KeyEntry, identity: KeyIdentity, run: RunRequest, record: KeyRecord) -> str | None:
    """A scheduled run rotates a key that reached its maximum age, or whose expiry in Kosli (its present answer,
    never a stored copy) is within ``expiry_lead_days``; a manual one any key not rotated in the last hour (unless
    forced). Returns why a scheduled run is due (None for a manual run); raises ``RunNotNeeded`` if it is not."""
    now = time.time()
    if run.manual:
        recently = record.rotated_at and now - record.rotated_at < MIN_MANUAL_INTERVAL
        if recently and not run.force:
            raise RunNotNeeded(
                f"the key was rotated {int((now - record.rotated_at) / 60)} minutes ago by run "
                f"{record.last_finished_run_id}; set 'force' to rotate it again"
            )
        return None
    due = due_rule(entry, record, identity.current_key(record), now)
    log.info("due: %s", due)
    return due


def due_rule(entry: KeyEntry, record: KeyRecord, key: ApiKey | None, now: float) -> str:
    """Which rule makes a scheduled rotation due now, said for the log and the page; ``RunNotNeeded`` saying when
    it will be due if none does. ``key`` is Kosli's present metadata of the key in Vault."""
    expires_at = key.expires_at if key else 0
    lead = entry.expiry_lead_days * 86400
    if expires_at and expires_at - now <= lead:
        return f"Kosli expires the key on {iso(expires_at)}, within expiry_lead_days ({entry.expiry_lead_days})"
    born = record.rotated_at or (key.created_at if key else None)
    max_age = entry.max_age_days * 86400
    if not born:
        return "the key's age is unknown (Kosli does not list it and no rotation is recorded)"
    if now - born >= max_age:
        return f"the key is {(now - born) / 86400:.1f} days old, past max_age_days ({entry.max_age_days})"
    by_expiry = (
        f", or on {iso(expires_at - lead)}, {entry.expiry_lead_days} days (expiry_lead_days) before Kosli expires "
        f"it on {iso(expires_at)}, if that comes first"
        if expires_at
        else ""
    )
    raise RunNotNeeded(
        f"the key is {(now - born) / 86400:.1f} days old; it is due after {entry.max_age_days} days "
        f"(max_age_days), on {iso(born + max_age)}{by_expiry}"
    )


def scheduled_due(entry: KeyEntry, run: RunRequest, record: KeyRecord, keys: list[ApiKey], key_id: str) -> str | None:
    """Why a scheduled rotation about to mint is due, for its record (and so the page); None for a manual run."""
    if run.manual:
        return record.due if record.in_flight else None
    if record.in_flight:
        return record.due  # a resumed rotation was due when it began
    try:
        return due_rule(entry, record, next((key for key in keys if key.id == key_id), None), time.time())
    except RunNotNeeded as not_due:  # preflight judged it due a moment ago: say what Kosli says now
        return f"judged due by preflight; now: {not_due}"


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
