"""Minting: the intent, the one Kosli call that shows a key once, the fenced Vault write, and reconciliation.

The order is what makes a lost key impossible: the intent (with a fresh fencing token, the *attempt*) is in
Vault before Kosli is called; the minted key is written over the record only while the record is still that
attempt's; a key that lost the fence is parked beside the record (``unclaimed/<attempt>``), never dropped, and
revoked by the next sweep. An intent found without a stored key means a key may exist that nobody holds: the next
attempt revokes what this tool provably minted (keys tagged with the lost attempt), never a key it cannot tell
apart from one a human made.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from kosli_rotation.errors import FenceLost, KeyStoreError, KosliApiError, KosliOutcomeUnknown
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_identity import KeyIdentity
from kosli_rotation.key_store import KeyStore, Snapshot
from kosli_rotation.kosli_hook import ApiKey, KosliHook, MintedKey
from kosli_rotation.record import KeyRecord, Phase, iso

log = logging.getLogger(__name__)

#: Tolerated clock difference between Kosli and the worker when matching key creation times.
CLOCK_SKEW = 300.0
#: Statuses with which Kosli refuses a mint before changing anything (validation, auth, unknown key). Any other
#: answer (a proxy's 408 or 502, a 5xx after commit, a lost connection) leaves the outcome unknown.
REFUSED_BEFORE_COMMIT = frozenset({400, 401, 403, 404, 422})
TAG = re.compile(r" \(rotated \d{4}-\d{2}-\d{2} #[0-9a-f]+\)$")


def minted_description(old_description: str, attempt: str) -> str:
    """Keep the old key's label, and tag the new key so an interrupted attempt can find what it minted."""
    base = TAG.sub("", old_description) or "kosli-key-rotation"
    suffix = f" (rotated {datetime.now(UTC):%Y-%m-%d} #{attempt})"
    return base[: 256 - len(suffix)] + suffix


def expiry_for(entry: KeyEntry, now: float | None = None) -> int | None:
    """Kosli's ``expires_at`` for a key minted now: ``key_ttl_days`` from now (None: the key never expires)."""
    if entry.key_ttl_days is None:
        return None
    return int((time.time() if now is None else now) + entry.key_ttl_days * 86400)


class Minter:
    def __init__(self, entry: KeyEntry, store: KeyStore, kosli: KosliHook, identity: KeyIdentity) -> None:
        self.entry = entry
        self.store = store
        self.kosli = kosli
        self.identity = identity

    def mint(self, intent: KeyRecord, old_description: str, version: int) -> MintedKey:
        """The one call that shows a key once. A refusal Kosli gives before committing withdraws the intent;
        any other failure leaves it, so the next attempt reconciles."""
        entry = self.entry
        assert intent.key_id is not None and intent.attempt is not None
        expires_at = expiry_for(entry)
        try:
            if intent.strategy == "rotate":
                return self.kosli.rotate_key(
                    entry.org,
                    entry.service_account,
                    intent.key_id,
                    grace_period_hours=intent.grace_hours or 24,
                    expires_at=expires_at,
                )
            return self.kosli.create_key(
                entry.org,
                entry.service_account,
                description=minted_description(old_description, intent.attempt),
                expires_at=expires_at,
            )
        except KosliApiError as error:
            if error.status not in REFUSED_BEFORE_COMMIT:
                raise KosliOutcomeUnknown(
                    f"Kosli's answer to the mint (HTTP {error.status}) does not prove it minted nothing: the intent "
                    f"stays, and the next attempt reconciles from Kosli's key list ({error.message})"
                ) from None
            if intent.strategy == "replace" and self._tagged(self.identity.list_keys(), intent):
                raise KosliOutcomeUnknown(
                    f"Kosli answered HTTP {error.status} but lists a key of attempt #{intent.attempt}: the next "
                    "attempt revokes it"
                ) from None
            self.store.save(intent.withdrawn(f"Kosli refused the call (HTTP {error.status})"), version)
            raise error from None

    def persist(self, minted: MintedKey, intent: KeyRecord) -> Snapshot:
        """Store the just-minted key, fenced to its attempt, retrying Vault for a bounded time."""

        def store_new_key(record: KeyRecord) -> KeyRecord | None:
            if record.key == minted.secret:
                return None
            if record.state != Phase.ROTATING:
                raise FenceLost(f"Vault record {self.store.location} left phase 'rotating' ({record.state.value!r})")
            return record.stored(
                minted.secret, minted.id, grace_ends_at=minted.grace_period_expires_at, expires_at=minted.expires_at
            )

        deadline = time.monotonic() + self.entry.vault_retry_seconds
        try:
            return self.store.update_fenced(intent.attempt, store_new_key, deadline=deadline)
        except FenceLost as lost:
            where = self._park(minted, intent)
            raise FenceLost(
                f"{lost}. The key attempt #{intent.attempt} minted ({minted.id}, {fingerprint(minted.secret)}) is "
                f"parked at {where}, never over the record; the next run revokes it"
            ) from None
        except Exception as error:
            log.critical(
                "Kosli minted key %s (%s) but Vault %s could not be written: %s. Parking it beside the record. "
                "The value is lost with this task if Vault refuses that too: a retry reconciles (keys of attempt "
                "#%s are revoked and a fresh key is created). Until then the old key keeps working.",
                minted.id,
                fingerprint(minted.secret),
                self.store.location,
                type(error).__name__,
                intent.attempt,
            )
            try:
                self._park(minted, intent)
            except Exception as parking:
                log.critical("Parking failed too: %s", type(parking).__name__)
            raise KeyStoreError(f"could not store the new key in Vault {self.store.location}: {error}") from None

    def _park(self, minted: MintedKey, intent: KeyRecord) -> str:
        assert intent.attempt is not None
        return self.store.park_unclaimed(intent.attempt, minted.id, minted.secret)

    # -- after a lost attempt ------------------------------------------------------------------------

    @staticmethod
    def _tagged(keys: list[ApiKey], record: KeyRecord) -> list[ApiKey]:
        started = (record.started_at or 0) - CLOCK_SKEW
        return [
            key
            for key in keys
            if key.id != record.key_id and key.created_at >= started and key.description.endswith(f"#{record.attempt})")
        ]

    @staticmethod
    def _lost_rotate_under_a_new_id(keys: list[ApiKey], record: KeyRecord) -> list[ApiKey]:
        """A 'rotate' cannot tag what it mints: if Kosli gave the rotated key a new id, the orphan is a key with the
        old key's label created since the intent. Revoked only when it is the one such key; with more than one (a
        person made a key with that label meanwhile) none can be told apart, so none is revoked and all are named."""
        if record.strategy != "rotate":
            return []
        old = next((key for key in keys if key.id == record.key_id), None)
        started = (record.started_at or 0) - CLOCK_SKEW
        candidates = [
            key
            for key in keys
            if old
            and key.id != old.id
            and key.description == old.description
            and key.created_at >= started
            and not key.description.endswith(f"#{record.attempt})")
        ]
        if len(candidates) > 1:
            log.warning(
                "Keys %s all carry the label of key %s and were created since the lost rotate: one may be its "
                "orphan, but they cannot be told apart from keys a person made, so none is revoked. Revoke the one "
                "nobody holds by hand.",
                [key.id for key in candidates],
                record.key_id,
            )
            return []
        return candidates

    def reconcile(self, record: KeyRecord, keys: list[ApiKey]) -> tuple[str, bool, str]:
        """An earlier attempt wrote its intent but stored no key. Revoke what it provably minted; return the
        strategy that finishes safely, whether that finishes a lost 'rotate', and a summary for the history."""
        orphans = self._tagged(keys, record) + self._lost_rotate_under_a_new_id(keys, record)
        log.warning(
            "Run %s wrote an intent at %s (attempt #%s) but stored no key: reconciling from Kosli's key list",
            record.run_id,
            iso(record.started_at),
            record.attempt,
        )
        for orphan in orphans:
            self.kosli.revoke_key(self.entry.org, self.entry.service_account, orphan.id)
            log.warning("Revoked key %s (created %s): its value was never stored", orphan.id, iso(orphan.created_at))
        summary = (
            f"attempt #{record.attempt} by {record.run_id} stored no key; reconciled from Kosli's key list: "
            f"revoked {[orphan.id for orphan in orphans] or 'no orphan'} (keys tagged #{record.attempt}, or the one "
            "key a lost rotate left under a new id)"
        )
        if record.strategy == "rotate":
            dies = iso(record.outgoing_dies_by)
            log.warning(
                "A lost rotate may have left a secret nobody holds under key %s, and its old secret dies by %s. "
                "Finishing with 'replace': a new key is created, and key %s is revoked once every consumer holds it.",
                record.key_id,
                dies,
                record.key_id,
            )
            summary += f"; a lost rotate cannot be undone, so finishing with 'replace' (old key dies by {dies})"
            return "replace", True, summary
        return record.strategy or "replace", record.finishes_lost_rotate, summary

    def sweep_unclaimed(self, record: KeyRecord) -> list[str]:
        """Revoke keys parked by attempts that lost their fence, unless the record holds them; forget the parked
        copy once its key is dead or held. Returns the key ids revoked."""
        revoked: list[str] = []
        for attempt, key_id, secret in self.store.unclaimed():
            if secret in (record.key, record.outgoing_key) and record.state != Phase.IDLE:
                continue  # the record holds it: the operation in flight decides its fate
            if secret == record.key:
                self.store.forget_unclaimed(attempt)
                continue
            if key_id not in (record.key_id, record.outgoing_key_id):
                self.kosli.revoke_key(self.entry.org, self.entry.service_account, key_id)
                revoked.append(key_id)
            elif self.kosli.probe(self.entry.org, secret) != 401:
                continue  # shares an id with a key in use: it dies with the outgoing key, not before
            log.warning("Key %s parked by attempt #%s is revoked; forgetting the parked copy", key_id, attempt)
            self.store.forget_unclaimed(attempt)
        return revoked
