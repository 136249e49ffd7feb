"""The interface every consumer kind implements: describe, check access, write, verify.

A consumer is a place that must hold the current Kosli key (a CI secret, a Kubernetes Secret,
a Vault path, a CLI config file...). Adding a kind means one module with a config model and a
``Consumer`` subclass, registered in ``kosli_rotation.consumers``, plus its sandbox and tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kosli_rotation.fingerprints import digest, short

if TYPE_CHECKING:
    from kosli_rotation.key_store import KeyStore

CONSUMER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

#: How a consumer is proven to hold the key, said plainly (``Consumer.proof``).
Proof = Literal["read back", "write-confirmed + canary", "write-confirmed only"]
READ_BACK: Proof = "read back"
WRITE_CONFIRMED_AND_CANARY: Proof = "write-confirmed + canary"
WRITE_CONFIRMED_ONLY: Proof = "write-confirmed only"


def _kinds_with_canary() -> list[str]:
    """The kinds whose config has a ``canary`` field (every config model is imported by then)."""
    kinds: set[str] = set()
    pending = list(ConsumerConfig.__subclasses__())
    while pending:
        config = pending.pop()
        pending.extend(config.__subclasses__())
        if "canary" in config.model_fields:
            kinds.update(str(kind) for kind in get_args(config.model_fields["kind"].annotation))
    return sorted(kinds)


class ConsumerConfig(BaseModel):
    """Fields every consumer entry in the inventory has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CONSUMER_NAME, description="Unique within the key; names the mapped task.")
    kind: str
    verify: Literal["default", "canary"] = Field(
        default="default",
        description="'canary': this write-only consumer must be proven by its canary job, so one must be configured.",
    )

    @model_validator(mode="after")
    def _verify_canary_is_configured(self) -> ConsumerConfig:
        if self.verify != "canary":
            return self
        if "canary" not in type(self).model_fields:
            with_canary = ", ".join(_kinds_with_canary()) or "none"
            raise ValueError(
                f"kind {self.kind} has no canary job; drop `verify: canary` (kinds with one: {with_canary})"
            )
        if getattr(self, "canary", None) is None:
            raise ValueError(
                "verify: canary needs `canary` to be configured: give the canary job that proves this consumer "
                "works with the new key, or drop `verify: canary`"
            )
        return self


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
    #: Whether the stored value can be read back, so writes can be skipped and verified by digest.
    readable: ClassVar[bool] = True
    #: How many consumers of this kind one task writes or verifies at once (the service's rate limits).
    max_concurrency: ClassVar[int] = 8

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def share(cls, consumers: list[Consumer], vault: KeyStore | None) -> None:
        """Let the consumers of this kind that one task builds together share what they may (a client, caches,
        a pace kept in ``vault``, the key's Vault). The default shares nothing."""

    @abstractmethod
    def describe(self) -> str:
        """One line for plans and logs: where the key goes, never the key."""

    @abstractmethod
    def check_access(self) -> None:
        """Raise ``ConsumerError`` if the consumer cannot be reached or written with our credentials."""

    @abstractmethod
    def write(self, key: str) -> None:
        """Create or update the stored value. Must be idempotent."""

    def retire_superseded(self, key: str) -> str | None:
        """Once the old key is dead: disable (or destroy) the earlier values this store keeps, when its inventory
        entry asks for it. Never touches the value holding ``key``; must be safe to call again. Returns what was
        done, for the log (None: nothing to do, the default for stores that keep no history)."""
        return None

    def read_digest(self) -> str | None:
        """Full digest (``fingerprints.digest``) of the value the consumer holds now, or None if it holds nothing.

        Only readable consumers implement it; write-only stores verify differently. Compare it with
        ``digest(key)``; show ``fingerprints.short`` of it.
        """
        raise NotImplementedError(f"{self.kind} consumers cannot be read back")

    def holds(self, key: str) -> bool:
        """True when the consumer provably holds ``key`` already (never for write-only stores)."""
        return self.readable and self.read_digest() == digest(key)

    @property
    def proof(self) -> Proof:
        """What proves this consumer holds the key: ``read back`` (the value itself is compared by full digest),
        ``write-confirmed + canary`` (write-only: the store confirms the write, then a canary job must succeed
        with the key) or ``write-confirmed only`` (write-only, no canary: nothing proves the value itself)."""
        if self.readable:
            return READ_BACK
        if getattr(self.config, "canary", None):
            return WRITE_CONFIRMED_AND_CANARY
        return WRITE_CONFIRMED_ONLY

    def verification_plan(self) -> str:
        """How ``verify`` will prove this consumer holds the key, for the dry-run plan; starts with ``proof``."""
        if self.readable:
            return f"{self.proof}: reads the value back and compares its full SHA-256 digest"
        how = f"{self.proof}: write-only: the write is confirmed by the store's metadata, the value cannot be read back"
        if self.proof == WRITE_CONFIRMED_AND_CANARY:
            return how + "; then the canary job must succeed with it"
        return how + "; no canary is configured, so nothing proves the consumer works with it"

    def verify(self, key: str, written_at: float) -> Verification:
        """Prove the consumer now holds ``key``. Readable stores compare full digests (details show fingerprints)."""
        held = self.read_digest()
        expected = digest(key)
        if held == expected:
            return Verification(True, "read back", f"holds {short(expected)}")
        shown = short(held) if held else "nothing"
        return Verification(False, "read back", f"holds {shown}, expected {short(expected)}")
