"""Revoking the outgoing key: only on live evidence that nothing listed still needs it, then proving it dead.

The same code serves a rotation (the outgoing key is the old key) and a rollback (it is the new key). Before
the DELETE, ``check_evidence`` asks the present, not the record of the past:

1. the key that stays answers HTTP 200 now;
2. every listed consumer was proven to hold it by this operation's attempt, in this run, after the last write
   to it (``ConsumerEvidence.proves``);
3. every readable consumer holds it *now* (read back again);
4. for 'replace', Kosli saw no use of the outgoing key id since every consumer was verified (what the usage
   guard can see is said in the README: only uses of another key id, only while the run watches).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kosli_rotation.consumer_engine import ConsumerEngine
from kosli_rotation.errors import EvidenceMissing, KeyStoreError, OldKeyStillInUse, VerificationError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_identity import KeyIdentity, probe_until
from kosli_rotation.kosli_hook import KosliHook
from kosli_rotation.record import KeyRecord, iso

log = logging.getLogger(__name__)

#: Probes of the outgoing key retry for a while: Kosli's revocation may lag slightly.
OLD_KEY_PROBES = 8


def roles(record: KeyRecord) -> tuple[str, str]:
    """How the key that stays and the outgoing key are called in messages."""
    return ("restored key", "new key") if record.is_rollback else ("new key", "old key")


class Revocation:
    def __init__(self, entry: KeyEntry, kosli: KosliHook, identity: KeyIdentity, engine: ConsumerEngine) -> None:
        self.entry = entry
        self.kosli = kosli
        self.identity = identity
        self.engine = engine

    def check_evidence(self, record: KeyRecord, run_id: str) -> None:
        """Raise ``EvidenceMissing`` naming what is missing, unless revoking the outgoing key is proven safe."""
        staying, outgoing = roles(record)
        problems: list[str] = []
        status = self.kosli.probe(self.entry.org, record.key)
        if status != 200:
            problems.append(f"the {staying} {record.key_id} ({fingerprint(record.key)}) gets HTTP {status}, not 200")
        unproven = self.engine.unproven(record, run_id)
        problems += [f"consumer {name!r}: {why}" for name, why in unproven.items()]
        drifted = self.engine.prove_live(record)
        problems += [why for name, why in drifted.items() if name not in unproven]
        if problems:
            names = sorted({*unproven, *drifted})
            raise EvidenceMissing(
                f"the {outgoing} {record.outgoing_key_id} is NOT revoked: "
                + (f"not proven to hold the {staying}: {', '.join(names)}. " if names else "")
                + "; ".join(problems)
                + ". Fix that, then clear the failed task or trigger a new run: it resumes here and checks again."
            )

    def check_usage(self, record: KeyRecord, *, despite_recent_use: bool) -> None:
        """'replace' revokes at once, so first make sure Kosli saw no use of the outgoing key id since every
        consumer had the key that stays. Only ``despite_recent_use`` overrides it (never ``force``)."""
        if record.strategy != "replace" or not record.outgoing_key_id or record.outgoing_key_id == record.key_id:
            return
        used_at = self.identity.last_used_at(record.outgoing_key_id)
        baseline = record.old_key_last_used_at
        if not used_at or (baseline is not None and used_at <= baseline):
            return
        _, outgoing = roles(record)
        message = (
            f"the {outgoing} {record.outgoing_key_id} was used at {iso(used_at)}, after every listed consumer "
            f"had been proven to hold its replacement ({iso(record.consumers_verified_at)}): something not in the "
            "inventory (or a job that started before the fan-out) still uses it"
        )
        if despite_recent_use:
            log.warning("%s; revoking anyway, as revoke_despite_recent_use asks", message)
            return
        raise OldKeyStillInUse(
            f"{message}, and would break now. Find it and give it the new key, then trigger a run with "
            "'revoke_despite_recent_use' to revoke it anyway."
        )

    def revoke(self, record: KeyRecord) -> str:
        old_id = record.outgoing_key_id
        if old_id is None:
            raise KeyStoreError("the Vault record lost the outgoing key id; cannot revoke it")
        if old_id == record.key_id:
            if record.grace_ends_at and record.grace_ends_at > time.time():
                raise VerificationError(
                    f"the grace period of key {old_id} ends at {iso(record.grace_ends_at)}; not revoking before"
                )
            return "left to Kosli: the old secret expired with its grace period (its key id is the new key's)"
        revoked = self.kosli.revoke_key(self.entry.org, self.entry.service_account, old_id)
        return "revoked" if revoked else "already gone (404)"

    def confirm_dead(self, record: KeyRecord) -> dict[str, Any]:
        """The outgoing key gets HTTP 401 (retrying while Kosli's revocation lags)."""
        _, outgoing = roles(record)
        if not record.outgoing_key:
            raise KeyStoreError(f"the Vault record lost the {outgoing}; cannot probe it")
        status = probe_until(self.kosli, self.entry.org, record.outgoing_key, want=401, attempts=OLD_KEY_PROBES)
        if status != 401:
            raise VerificationError(
                f"the {outgoing} {record.outgoing_key_id} ({fingerprint(record.outgoing_key)}) still gets HTTP "
                f"{status} after revocation"
            )
        return {"status": status}

    def confirm_staying_works(self, record: KeyRecord) -> None:
        staying, _ = roles(record)
        status = self.kosli.probe(self.entry.org, record.key)
        if status != 200:
            raise VerificationError(
                f"after revoking, the {staying} {record.key_id} ({fingerprint(record.key)}) gets HTTP {status}: "
                f"consumers are failing. Rotate now: trigger {self.entry.dag_id} with strategy 'replace'"
            )
