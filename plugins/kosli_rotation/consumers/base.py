"""The interface every consumer kind implements: describe, check access, write, verify.

A consumer is a place that must hold the current Kosli key (a CI secret, a Kubernetes Secret,
a Vault path, a CLI config file...). Adding a kind means one module with a config model and a
``Consumer`` subclass, registered in ``kosli_rotation.consumers``, plus its sandbox and tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kosli_rotation.fingerprints import fingerprint

CONSUMER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class ConsumerConfig(BaseModel):
    """Fields every consumer entry in the inventory has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CONSUMER_NAME, description="Unique within the key; names the mapped task.")
    kind: str


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one consumer: ``ok`` and, either way, how it was established."""

    ok: bool
    method: str
    detail: str = ""


ConfigT = TypeVar("ConfigT", bound=ConsumerConfig)


class Consumer(ABC, Generic[ConfigT]):
    """One place that holds the key. Implementations must be safe to call again after any failure."""

    kind: ClassVar[str]
    #: Whether the stored value can be read back, so writes can be skipped and verified by fingerprint.
    readable: ClassVar[bool] = True
    #: How many consumers of this kind one task writes or verifies at once (the service's rate limits).
    max_concurrency: ClassVar[int] = 8

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def describe(self) -> str:
        """One line for plans and logs: where the key goes, never the key."""

    @abstractmethod
    def check_access(self) -> None:
        """Raise ``ConsumerError`` if the consumer cannot be reached or written with our credentials."""

    @abstractmethod
    def write(self, key: str) -> None:
        """Create or update the stored value. Must be idempotent."""

    def read_fingerprint(self) -> str | None:
        """Fingerprint of the value the consumer holds now, or None if it holds nothing.

        Only readable consumers implement it; write-only stores verify differently.
        """
        raise NotImplementedError(f"{self.kind} consumers cannot be read back")

    def holds(self, key: str) -> bool:
        """True when the consumer provably holds ``key`` already (never for write-only stores)."""
        return self.readable and self.read_fingerprint() == fingerprint(key)

    def verification_plan(self) -> str:
        """How ``verify`` will prove this consumer holds the key, for the dry-run plan."""
        if self.readable:
            return "reads the value back and compares fingerprints"
        how = "write-only: the write is confirmed by the store's metadata, the value cannot be read back"
        if getattr(self.config, "canary", None):
            return how + "; then the canary job must succeed with it"
        return how + "; no canary is configured, so nothing proves the consumer works with it"

    def verify(self, key: str, written_at: float) -> Verification:
        """Prove the consumer now holds ``key``. Readable stores compare fingerprints."""
        held = self.read_fingerprint()
        expected = fingerprint(key)
        if held == expected:
            return Verification(True, "read back", f"holds {expected}")
        return Verification(False, "read back", f"holds {held or 'nothing'}, expected {expected}")
