"""The consumer engine: write the key that stays to consumers, prove they hold it, and keep that proof honest.

A consumer's proof is a note beside the record (``consumers/<name>``, a ``ConsumerEvidence``). It counts only
for the key now stored (full SHA-256 digest), for the operation's attempt (its fencing token), from the run
that asks, and only if it was gathered after the last write to the consumer. A failed write or verify withdraws
it. Before any revocation, readable consumers are read again, live (``prove_live``): a note is a record of the
past, and a consumer can drift back to the outgoing key after it was verified.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel, ConfigDict

from kosli_rotation.consumers import Consumer, build_consumers
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore
from kosli_rotation.record import KeyRecord, iso
from kosli_rotation.scrub import describe_error

log = logging.getLogger(__name__)


class ConsumerEvidence(BaseModel):
    """What the tool knows about one consumer, as written beside the record. Holds digests, never a key."""

    model_config = ConfigDict(extra="ignore")

    consumer: str
    kind: str
    target: str
    proof: str = ""
    written_digest: str | None = None
    written_fingerprint: str | None = None  # display only
    written_attempt: str | None = None
    written_at: str | None = None
    written_epoch: float | None = None
    verified_digest: str | None = None
    verified_fingerprint: str | None = None  # display only
    verified_key_id: str | None = None
    verified_attempt: str | None = None
    verified_run_id: str | None = None
    verified_at: str | None = None
    verified_epoch: float | None = None
    method: str | None = None
    detail: str | None = None
    withdrawn: str | None = None  # why the last proof was withdrawn (a failed write or verify)

    def proves(self, record: KeyRecord, run_id: str) -> bool:
        """This note proves the consumer holds the record's key, for this attempt, from this run."""
        if self.verified_digest != record.key_digest or self.verified_attempt != record.attempt:
            return False
        if self.verified_run_id != run_id:
            return False
        written_since = self.written_attempt == record.attempt and self.written_epoch is not None
        return not written_since or (self.verified_epoch or 0) >= (self.written_epoch or 0)

    def without_proof(self, why: str) -> ConsumerEvidence:
        return self.model_copy(
            update={
                "verified_digest": None,
                "verified_fingerprint": None,
                "verified_key_id": None,
                "verified_attempt": None,
                "verified_run_id": None,
                "verified_at": None,
                "verified_epoch": None,
                "withdrawn": why[:300],
            }
        )


def run_concurrently(
    consumers: list[Consumer], action: Callable[[Consumer], str]
) -> tuple[dict[str, str], list[ConsumerError]]:
    """Run ``action`` on each consumer concurrently (bounded by its kind); outcomes and failures, per consumer."""
    if not consumers:
        return {}, []
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
    return outcomes, sorted(failures, key=lambda failure: failure.consumer)


def for_each_consumer(consumers: list[Consumer], action: Callable[[Consumer], str]) -> dict[str, str]:
    """``run_concurrently``, isolating failures: one failing consumer never hides the others, and the error
    names every one that failed."""
    outcomes, failures = run_concurrently(consumers, action)
    for failure in failures:
        log.error("%s", failure)
    if failures:
        raise ConsumerError(
            ", ".join(f.consumer for f in failures),
            f"{len(failures)} of {len(consumers)} failed: " + "; ".join(str(f) for f in failures),
            retryable=all(f.retryable for f in failures),
        )
    return outcomes


class ConsumerEngine:
    """Writes, verifies and proves the consumers of one inventory entry against its Vault record."""

    def __init__(self, entry: KeyEntry, store: KeyStore) -> None:
        self.entry = entry
        self.store = store

    def consumers(self, names: list[str] | None = None) -> list[Consumer]:
        """The consumers named (all by default), built together: a kind may share a client and, through the key's
        Vault, a pace (GitHub's per-token lease)."""
        configs = [self.entry.consumer(name) for name in (names or self.entry.consumer_names)]
        return build_consumers(configs, vault=self.store)

    # -- evidence notes ----------------------------------------------------------------------------

    def evidence(self, consumer: Consumer) -> ConsumerEvidence:
        note = self.store.read_note(f"consumers/{consumer.name}") or {}
        return ConsumerEvidence.model_validate(
            {**note, "consumer": consumer.name, "kind": consumer.kind, "target": consumer.describe()}
        )

    def _save(self, evidence: ConsumerEvidence, consumer: Consumer) -> None:
        evidence = evidence.model_copy(update={"proof": consumer.proof})
        self.store.write_note(f"consumers/{consumer.name}", evidence.model_dump(mode="json", exclude_none=True))

    def _withdraw(self, consumer: Consumer, why: str) -> None:
        """Best effort: a failed write or verify leaves no proof behind (the gate also asks for this run's)."""
        try:
            self._save(self.evidence(consumer).without_proof(why), consumer)
        except Exception as error:
            log.warning("could not withdraw the proof of %s: %s", consumer.name, type(error).__name__)

    # -- fan_out / verify --------------------------------------------------------------------------

    def write(self, consumer: Consumer, record: KeyRecord) -> str:
        """Give ``consumer`` the record's key unless it provably holds it (or, write-only, this attempt wrote it)."""
        evidence = self.evidence(consumer)
        shown = fingerprint(record.key)
        try:
            if consumer.readable and consumer.holds(record.key):
                outcome = f"already holds {shown}"
            elif (
                not consumer.readable
                and evidence.written_digest == record.key_digest
                and evidence.written_attempt == record.attempt
            ):
                outcome = f"{shown} was written at {evidence.written_at} (write-only: not read back)"
            else:
                consumer.write(record.key)
                now = time.time()
                evidence = evidence.without_proof("written again: the proof must come after the write").model_copy(
                    update={
                        "written_digest": record.key_digest,
                        "written_fingerprint": shown,
                        "written_attempt": record.attempt,
                        "written_at": iso(now),
                        "written_epoch": now,
                        "withdrawn": None,
                    }
                )
                self._save(evidence, consumer)
                outcome = f"wrote {shown}"
        except Exception as error:
            # What the consumer said (scrubbed): the gate's error, the notice and the record then say what to fix.
            self._withdraw(consumer, f"write failed: {describe_error(error)}")
            raise
        log.info("%s: %s", consumer.describe(), outcome)
        return outcome

    def verify(self, consumer: Consumer, record: KeyRecord, run_id: str, *, chosen: bool) -> str:
        """Prove ``consumer`` holds the record's key; the proof is recorded for this attempt and this run."""
        try:
            outcome = consumer.verify(record.key, written_at=record.rotated_at or 0)
        except Exception as error:
            self._withdraw(consumer, f"verify failed: {type(error).__name__}")
            raise
        if not outcome.ok:
            self._withdraw(consumer, f"not verified ({outcome.method})")
            if not chosen:  # left out on purpose (something else updates it): the gate holds the outgoing key
                log.warning("%s, not chosen for this run, does not hold the key yet", consumer.describe())
                return f"not chosen for this run and not verified ({outcome.method}): {outcome.detail}"
            raise ConsumerError(consumer.name, f"not verified ({outcome.method}): {outcome.detail}")
        now = time.time()
        evidence = self.evidence(consumer).model_copy(
            update={
                "verified_digest": record.key_digest,
                "verified_fingerprint": fingerprint(record.key),
                "verified_key_id": record.key_id,
                "verified_attempt": record.attempt,
                "verified_run_id": run_id,
                "verified_at": iso(now),
                "verified_epoch": now,
                "method": outcome.method,
                "detail": outcome.detail,
                "withdrawn": None,
            }
        )
        self._save(evidence, consumer)
        log.info("%s verified (%s): %s", consumer.describe(), outcome.method, outcome.detail)
        return f"verified ({outcome.method})"

    # -- what the gate and the revocation ask --------------------------------------------------------

    def unproven(self, record: KeyRecord, run_id: str) -> dict[str, str]:
        """Consumers without a valid proof for this attempt from this run, with what is missing."""
        missing: dict[str, str] = {}
        for consumer in self.consumers():
            evidence = self.evidence(consumer)
            if evidence.proves(record, run_id):
                continue
            if evidence.verified_digest == record.key_digest and evidence.verified_attempt == record.attempt:
                missing[consumer.name] = f"verified by run {evidence.verified_run_id}, not by this run"
            else:
                missing[consumer.name] = evidence.withdrawn or "never verified with this key"
        return missing

    def prove_live(self, record: KeyRecord) -> dict[str, str]:
        """Read every readable consumer again now; return those not holding the record's key, with what they hold."""
        expected = record.key_digest

        def read(consumer: Consumer) -> str:
            held = consumer.read_digest()
            if held != expected:
                raise ConsumerError(
                    consumer.name, f"holds {fingerprint_of(held, record)} now, not {fingerprint(record.key)}"
                )
            return "holds it now"

        readable = [consumer for consumer in self.consumers() if consumer.readable]
        _, failures = run_concurrently(readable, read)
        return {failure.consumer: str(failure) for failure in failures}

    def retire_superseded(self, record: KeyRecord) -> dict[str, str]:
        """Once the outgoing key is dead: let each store that keeps earlier versions retire them (as its entry
        asks); a failure fails the step, naming every consumer that failed, and a rerun tries again."""

        def retire(consumer: Consumer) -> str:
            return consumer.retire_superseded(record.key) or ""

        outcomes = for_each_consumer(self.consumers(), retire)
        return {name: outcome for name, outcome in outcomes.items() if outcome}


def fingerprint_of(held_digest: str | None, record: KeyRecord) -> str:
    """How a held value is shown: which key it is, if it is one we know."""
    if held_digest is None:
        return "nothing"
    if record.outgoing_key and held_digest == digest(record.outgoing_key):
        return f"the outgoing key {fingerprint(record.outgoing_key)}"
    return "another value " + held_digest[:19]


def plan_line(consumer: Consumer, record: KeyRecord) -> str:
    """What preflight sees at a consumer (read-only): can we write there, and what would change?"""
    consumer.check_access()
    if not consumer.readable:
        return "reachable; write-only, so what it holds cannot be told: it will be written"
    held = consumer.read_digest()
    if held is None:
        return "reachable; holds nothing yet: the key will be created there"
    if held == record.key_digest:
        return "reachable; holds the current key: it will be updated"
    return f"reachable; holds another value ({held[:19]}): it will be overwritten"


def describe_all(consumers: list[Consumer], outcomes: dict[str, str], chosen: Callable[[str], bool]) -> list[Any]:
    return [
        {
            "name": consumer.name,
            "target": consumer.describe(),
            "today": outcomes[consumer.name],
            "update": chosen(consumer.name),
            "proof": consumer.proof,
            "verify": consumer.verification_plan(),
        }
        for consumer in consumers
    ]
