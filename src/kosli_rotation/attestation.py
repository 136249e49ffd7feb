"""Attest each finished rotation in Kosli: a ``kosli-key-rotation`` custom attestation on the key's trail.

The evidence comes from what the finished rotation left in Vault (its audit entry, with each consumer's proof)
and from Kosli now (the new key still answers 200). It holds key ids and fingerprints, never a key. Kosli judges
it by the type's jq rules: the old key answered 401, the new key answered 200, every consumer was verified with
the new key.

Safe to retry: the type is created only when missing, the flow and the trail only when absent, and an attestation
of this rotation already on the trail (found by its ``rotation`` id) is never posted again. A failed attestation
never undoes the rotation: the key stays rotated and the Vault record finished; the step fails after its retries
and a notice says that only the attestation is missing and how to add it (clear the ``attest`` task).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

from kosli_rotation.attestation_client import KosliAttestationHook
from kosli_rotation.errors import InvalidRequestError, RotationError, RunNotNeeded, VerificationError
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore
from kosli_rotation.notifications import send_notice
from kosli_rotation.run_request import RunRequest
from kosli_rotation.scrub import describe_error

log = logging.getLogger(__name__)


class AttestationNotCompliant(VerificationError):
    """Kosli holds the attestation but its rules do not pass: the evidence does not prove the rotation. A retry
    would find the same attestation, so it is not retried."""

    retryable = False


TYPE_NAME = "kosli-key-rotation"
TYPE_DESCRIPTION = "A Kosli API key rotated with zero downtime by kosli-key-rotation: proof the old key is dead"
ATTESTATION_PREFIX = "key-rotation-"
FINGERPRINT = {"type": "string", "pattern": "^sha256:[0-9a-f]{12}$"}
TIMESTAMP = {"type": ["string", "null"]}
KEY = {
    "type": "object",
    "required": ["id", "fingerprint", "http_status"],
    "properties": {"id": {"type": ["string", "null"]}, "fingerprint": FINGERPRINT, "http_status": {"type": "integer"}},
}
CONSUMER = {
    "type": "object",
    "required": ["name", "kind", "proof", "verified_fingerprint"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"type": "string"},
        "target": {"type": "string"},
        "proof": {"type": "string"},
        "method": {"type": ["string", "null"]},
        "verified_fingerprint": {"type": ["string", "null"]},
        "verified_at": TIMESTAMP,
    },
}
#: The evidence's JSON schema (draft-07), the ``type_schema`` of the attestation type.
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "kosli-key-rotation evidence",
    "type": "object",
    "required": ["rotation", "key", "strategy", "triggered_by", "reason", "old_key", "new_key", "timings", "consumers"],
    "properties": {
        "rotation": {"type": "string"},
        "key": {"type": "string"},
        "strategy": {"enum": ["rotate", "replace"]},
        "trigger": {"enum": ["manual", "scheduled"]},
        "triggered_by": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]},
        "old_key": KEY,
        "new_key": KEY,
        "timings": {"type": "object", "additionalProperties": TIMESTAMP},
        "consumers_expected": {"type": "integer", "minimum": 0},
        "consumers": {"type": "array", "items": CONSUMER},
    },
}
#: Kosli's verdict: every rule must give true for the attestation to be compliant.
RULES = [
    ".old_key.http_status == 401",
    ".new_key.http_status == 200",
    ".new_key.fingerprint != .old_key.fingerprint",
    "(.consumers | length) == .consumers_expected",
    ". as $rotation | .consumers | all(.verified_fingerprint == $rotation.new_key.fingerprint)",
]
SUMMARY = [
    {"name": "old key", "expression": ".old_key.http_status"},
    {"name": "new key", "expression": ".new_key.http_status"},
    {"name": "consumers verified", "expression": ".consumers | length"},
]


def evidence(
    audit: dict[str, Any], *, rotation: str, manual: bool, new_key_status: int, expected: int
) -> dict[str, Any]:
    """The attestation data of one finished rotation, from its audit entry: ids, fingerprints, who, why, when."""
    old, new = audit.get("old_key") or {}, audit.get("new_key") or {}
    consumers = [
        {
            "name": name,
            "kind": str(note.get("kind") or ""),
            "target": str(note.get("target") or ""),
            "proof": str(note.get("proof") or ""),
            "method": note.get("method"),
            "verified_fingerprint": note.get("verified_fingerprint"),
            "verified_at": note.get("verified_at"),
        }
        for name, note in sorted((audit.get("consumers") or {}).items())
        if isinstance(note, dict)
    ]
    return {
        "rotation": rotation,
        "key": str(audit.get("key") or ""),
        "dag_id": audit.get("dag_id"),
        "run_id": audit.get("run_id"),
        "strategy": audit.get("strategy"),
        "trigger": "manual" if manual else "scheduled",
        "triggered_by": audit.get("triggered_by"),
        "reason": audit.get("reason"),
        # The old key reaches "dead" only once it answered 401 (confirm_old_key_dead); Vault records when.
        "old_key": {
            "id": old.get("id"),
            "fingerprint": old.get("fingerprint"),
            "http_status": 401 if audit.get("old_key_dead_at") else 0,
        },
        "new_key": {"id": new.get("id"), "fingerprint": new.get("fingerprint"), "http_status": new_key_status},
        "timings": {
            "started_at": audit.get("started_at"),
            "stored_at": audit.get("stored_at"),
            "grace_ends_at": audit.get("grace_ends_at"),
            "old_key_dead_at": audit.get("old_key_dead_at"),
            "finished_at": audit.get("finished_at"),
        },
        "consumers_expected": expected,
        "consumers": consumers,
    }


class Attestation:
    """The ``attest`` step of one key's rotation DAG (only for inventory entries with ``attest``)."""

    def __init__(self, entry: KeyEntry) -> None:
        if entry.attest is None:
            raise InvalidRequestError(f"inventory entry {entry.name!r} has no 'attest' field: nothing to attest to")
        self.entry = entry
        self.target = entry.attest

    @cached_property
    def store(self) -> KeyStore:
        return KeyStore(self.entry.vault_path, conn_id=self.entry.vault_conn_id, mount=self.entry.vault_mount)

    @cached_property
    def kosli(self) -> KosliAttestationHook:
        return KosliAttestationHook(self.entry.kosli_conn_id)

    def finished_rotation(self, run_id: str) -> tuple[str, dict[str, Any]]:
        """The audit entry this run's finalize wrote (newest first), and the rotation's id (its audit name)."""
        for name in sorted(self.store.list_notes("audit"), reverse=True):
            audit = self.store.read_note(f"audit/{name}") or {}
            if audit.get("finished_by_run") == run_id and audit.get("event") == "kosli-key-rotated":
                return str(audit.get("supplements") or f"audit/{name}").removeprefix("audit/"), audit
        raise RunNotNeeded(f"run {run_id} finished no rotation of {self.entry.org}/{self.entry.service_account}")

    def trail_for(self, audit: dict[str, Any]) -> str:
        finished = str(audit.get("finished_at") or "")
        day = datetime.fromisoformat(finished).astimezone(UTC).date() if finished else date.today()
        return self.target.trail_name(self.entry.name, day)

    def new_key_status(self, audit: dict[str, Any]) -> int:
        """What Kosli answers the new key now, if Vault still holds it (a later rotation may have replaced it)."""
        record = self.store.load().record
        if record.key_id != (audit.get("new_key") or {}).get("id") or record.in_flight:
            raise InvalidRequestError(
                f"the key rotated by this run is no longer the one in {self.store.location} (another rotation "
                "followed): this rotation can no longer be attested with fresh evidence"
            )
        return self.kosli.probe(self.entry.org, record.key)

    def ensure_type(self) -> str:
        """Create the attestation type if missing, or add a version if its schema or rules differ from ours."""
        org = self.entry.org
        found = self.kosli.get_attestation_type(org, TYPE_NAME)
        latest = ((found or {}).get("versions") or [{}])[-1]
        if found and latest.get("type_schema") == SCHEMA and (latest.get("evaluator") or {}).get("rules") == RULES:
            return "present"
        self.kosli.create_attestation_type(
            org, TYPE_NAME, description=TYPE_DESCRIPTION, schema=SCHEMA, rules=RULES, summary=SUMMARY
        )
        return "updated" if found else "created"

    def ensure_trail(self, trail: str) -> None:
        org, flow = self.entry.org, self.target.flow
        if self.kosli.get_flow(org, flow) is None:
            self.kosli.create_flow(org, flow, description="Kosli API key rotations (kosli-key-rotation)")
            log.info("Created Kosli flow %s/%s", org, flow)
        if self.kosli.get_trail(org, flow, trail) is None:
            self.kosli.begin_trail(org, flow, trail, description=f"Rotations of Kosli key {self.entry.name}")
            log.info("Began Kosli trail %s/%s/%s", org, flow, trail)

    def attested(self, trail: str, name: str, rotation: str) -> dict[str, Any] | None:
        """This rotation's attestation if it is on the trail already."""
        for item in self.kosli.attestations_named(self.entry.org, self.target.flow, trail, name):
            if (item.get("attestation_data") or {}).get("rotation") == rotation:
                return item
        return None

    def attest(self, run: RunRequest) -> dict[str, Any]:
        """Post this run's finished rotation to its Kosli trail as a ``kosli-key-rotation`` attestation, once."""
        rotation, audit = self.finished_rotation(run.run_id)
        trail, name, flow = self.trail_for(audit), ATTESTATION_PREFIX + rotation, self.target.flow
        where = {"flow": flow, "trail": trail, "attestation": name}
        type_state = self.ensure_type()
        self.ensure_trail(trail)
        found = self.attested(trail, name, rotation)
        if found is None:
            data = evidence(
                audit,
                rotation=rotation,
                manual=run.manual,
                new_key_status=self.new_key_status(audit),
                expected=len(self.entry.consumer_names),
            )
            description = f"Rotation of {data['key']} ({data['strategy']}): {data['reason'] or 'no reason given'}"
            self.kosli.attest_custom(
                self.entry.org, flow, trail, type_name=TYPE_NAME, name=name, data=data, description=description[:500]
            )
            found = self.attested(trail, name, rotation)
            if found is None:
                raise RotationError(f"Kosli accepted the attestation {name} but does not list it on trail {trail}")
        else:
            log.info("Rotation %s is attested on %s/%s already: not posted again", rotation, flow, trail)
        compliant = found.get("is_compliant")
        log.info(
            "Rotation %s attested on Kosli trail %s/%s as %s: compliant=%s", rotation, flow, trail, name, compliant
        )
        if compliant is not True:
            raise AttestationNotCompliant(
                f"Kosli holds the attestation {name} on {flow}/{trail}, but its rules do not pass: "
                f"{[r for r in found.get('evaluation', []) if not r.get('passed')] or 'see it in Kosli'}"
            )
        return {**where, "type": type_state, "compliant": True}


def report_attestation_failure(entry: KeyEntry, context: Any) -> None:
    """When ``attest`` fails for good: say that the rotation stands and only its attestation is missing."""
    error = context.get("exception")
    dag_run = context["dag_run"]
    facts = {
        "event": "kosli-key-attestation-failed",
        "key": f"{entry.org}/{entry.service_account}",
        "dag_id": entry.dag_id,
        "run_id": dag_run.run_id,
        "failed_step": "attest",
        "error": describe_error(error),
        "rotated": True,
        "todo": (
            "The key IS rotated: the new key is in Vault and every consumer, the old key is dead, the Vault record "
            "is finished. Only the Kosli attestation is missing. Fix the cause (the Kosli connection's key needs "
            f"member privilege or more; flow {entry.attest.flow if entry.attest else '?'}), then clear the 'attest' "
            f"task of run {dag_run.run_id}: it posts the attestation once. Do not trigger a new rotation for this."
        ),
    }
    log.error("Rotation of %s stands, but its Kosli attestation failed: %s", facts["key"], facts["error"])
    subject = f"Kosli key rotated, attestation failed: {facts['key']}"
    body = "\n".join(
        [
            f"Key: {facts['key']} (DAG {facts['dag_id']}, run {facts['run_id']})",
            f"Error: {facts['error']}",
            f"What to do: {facts['todo']}",
        ]
    )
    send_notice(entry.notify, subject=subject, body=body, payload=facts, context=context, what="attestation notice")
