"""The inventory: which Kosli keys to rotate, where each is stored, and who consumes it.

A YAML file (path from ``KOSLI_ROTATION_INVENTORY``, else ``inventory.yaml`` at the repo root)::

    defaults:            # optional; every key entry inherits these
      grace_hours: 24
    keys:
      - name: acme-ci-bot
        org: acme
        service_account: ci-bot
        key_label: ci              # or key_id; only needed until the Vault record knows the id
        vault_path: kosli/acme/ci-bot
        consumers:
          - {name: shared-vault, kind: vault_kv, path: apps/reporter}

Errors name the file, the entry and the field; one broken entry never hides the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kosli_rotation.consumers import KINDS, AnyConsumerConfig
from kosli_rotation.key_store import VaultPath
from kosli_rotation.notifications import NotifyTarget

ENV_VAR = "KOSLI_ROTATION_INVENTORY"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "inventory.yaml"
ENTRY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
#: What a lock must outlive beyond the Vault retry of a just-minted key: the Kosli call before it (its timeout and
#: retries) and a margin.
LOCK_MARGIN_SECONDS = 120


class InventoryError(Exception):
    """The inventory file as a whole cannot be used (missing, not YAML, wrong shape)."""


class KeyEntry(BaseModel):
    """One Kosli key to keep rotated: one DAG."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ENTRY_NAME, description="Names the DAG: rotate_kosli_key_<name>.")
    org: str = Field(min_length=1)
    service_account: str = Field(pattern=r"^[a-zA-Z0-9-]{1,64}$")
    key_id: str | None = Field(default=None, description="Kosli key id, if the Vault record lacks it.")
    key_label: str | None = Field(default=None, description="Or the key's description (label) in Kosli.")
    vault_path: VaultPath
    vault_mount: str | None = Field(default=None, description="KV v2 mount; default: the connection's.")
    vault_conn_id: str = "vault_default"
    kosli_conn_id: str = "kosli_default"
    strategy: Literal["rotate", "replace"] = Field(default="rotate", description="For scheduled runs.")
    grace_hours: int = Field(default=24, ge=1, le=720)
    max_age_days: int = Field(default=90, ge=1, le=3650)
    schedule: str = Field(default="0 6 * * *", description="When to check whether the key is due (cron).")
    owner: str = "platform"
    retries: int = Field(default=3, ge=0, le=10, description="Airflow retries of each step.")
    retry_delay_seconds: int = Field(default=20, ge=1, le=3600, description="First retry delay; doubles.")
    description: str | None = None
    consumers: list[AnyConsumerConfig] = Field(default_factory=list)
    lock_ttl_seconds: int = Field(
        default=3600, ge=60, le=86400, description="A rotation lock not renewed for this long may be taken over."
    )
    vault_retry_seconds: int = Field(
        default=600, ge=5, le=3600, description="How long a just-minted key's Vault write is retried."
    )
    usage_observation_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="'replace': how long the old key id's use is watched after every consumer holds the new key, "
        "before it is revoked (any use in that window refuses the revocation).",
    )
    notify: list[NotifyTarget] = Field(default_factory=list, description="Where failure notices go.")
    fan_out_batch_size: int = Field(
        default=10, ge=1, le=500, description="Consumers of one kind and connection handled by one task."
    )
    pool: str | None = Field(
        default=None, min_length=1, description="Airflow pool for this key's tasks, to cap concurrent rotation work."
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(schedule):
            raise ValueError(f"{schedule!r} is not a cron expression")
        return schedule

    @model_validator(mode="after")
    def _lock_outlives_a_vault_retry(self) -> KeyEntry:
        """A lock that can expire while a just-minted key's Vault write is still retrying invites another run to
        take over mid-write: the lock must outlive the retry and the Kosli call before it."""
        needed = self.vault_retry_seconds + LOCK_MARGIN_SECONDS
        if self.lock_ttl_seconds <= needed:
            raise ValueError(
                f"lock_ttl_seconds ({self.lock_ttl_seconds}) must be more than vault_retry_seconds "
                f"({self.vault_retry_seconds}) + {LOCK_MARGIN_SECONDS} s for the Kosli call: raise lock_ttl_seconds "
                "or lower vault_retry_seconds"
            )
        return self

    @model_validator(mode="after")
    def _unique_consumer_names(self) -> KeyEntry:
        seen: set[str] = set()
        for consumer in self.consumers:
            if consumer.name in seen:
                raise ValueError(f"consumer name {consumer.name!r} is used twice")
            seen.add(consumer.name)
        return self

    @property
    def dag_id(self) -> str:
        return f"rotate_kosli_key_{self.name}"

    @property
    def consumer_names(self) -> list[str]:
        return [consumer.name for consumer in self.consumers]

    @property
    def consumer_batches(self) -> list[list[str]]:
        """Consumers grouped by kind and connection (one account, one rate limit), in chunks.

        One mapped task per batch: a task per consumer would cost a process start each, which
        dominates fan-out to hundreds of consumers; a batch writes its consumers concurrently.
        """
        groups: dict[tuple[str, str], list[str]] = {}
        for consumer in self.consumers:
            groups.setdefault((consumer.kind, str(getattr(consumer, "conn_id", ""))), []).append(consumer.name)
        size = self.fan_out_batch_size
        return [names[i : i + size] for names in groups.values() for i in range(0, len(names), size)]

    def consumer(self, name: str) -> Any:
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        raise KeyError(f"{self.name} has no consumer named {name!r}")


@dataclass(frozen=True)
class BrokenEntry:
    """An entry that failed validation; its DAG shows this instead of running."""

    index: int
    name: str | None
    problems: list[str]

    @property
    def dag_id(self) -> str:
        if self.name and isinstance(self.name, str) and _valid_name(self.name):
            return f"rotate_kosli_key_{self.name}"
        return f"rotate_kosli_key_invalid_entry_{self.index}"


@dataclass
class Inventory:
    path: Path
    entries: list[KeyEntry] = field(default_factory=list)
    broken: list[BrokenEntry] = field(default_factory=list)

    def entry(self, name: str) -> KeyEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"{self.path}: no valid key entry named {name!r}")


def _valid_name(name: str) -> bool:
    import re

    return re.match(ENTRY_NAME, name) is not None


def _field_path(location: tuple[Any, ...]) -> str:
    """('consumers', 0, 'vault_kv', 'path') -> 'consumers[0].path' (drops pydantic's union tag)."""
    parts: list[str] = []
    previous: Any = None
    for item in location:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif not (isinstance(previous, int) and item in KINDS):
            parts.append(str(item))
        previous = item
    return ".".join(parts) or "(entry)"


def _describe(error: ValidationError) -> list[str]:
    return [f"{_field_path(detail['loc'])}: {detail['msg']}" for detail in error.errors()]


def inventory_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Parse and validate the inventory. File-level problems raise ``InventoryError``; entry-level
    problems are collected in ``Inventory.broken`` so the valid entries still get their DAGs."""
    path = Path(path) if path else inventory_path()
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found (set {ENV_VAR} to its path)") from None
    except yaml.YAMLError as error:
        raise InventoryError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InventoryError(f"{path}: expected a mapping with a 'keys' list (and optional 'defaults')")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(f"{path}: 'defaults' must be a mapping")
    unknown = set(document) - {"keys", "defaults"}
    if unknown:
        raise InventoryError(f"{path}: unknown top-level field(s) {sorted(unknown)}; expected keys, defaults")

    inventory = Inventory(path=path)
    claimed: dict[tuple[str, ...], str] = {}
    for index, raw in enumerate(document["keys"]):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"{path}: keys[{index}]" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(raw, dict):
            inventory.broken.append(BrokenEntry(index, None, [f"{label}: expected a mapping"]))
            continue
        try:
            entry = KeyEntry.model_validate({**defaults, **raw})
        except ValidationError as error:
            problems = [f"{label}: {problem}" for problem in _describe(error)]
            inventory.broken.append(BrokenEntry(index, name, problems))
            continue
        clashes = [
            f"{label}: {what} is already used by {claimed[claim]}" for what, claim in _claims(entry) if claim in claimed
        ]
        if clashes:
            inventory.broken.append(BrokenEntry(index, None, clashes))
            continue
        for _, claim in _claims(entry):
            claimed[claim] = f"keys[{index}] ({entry.name})"
        inventory.entries.append(entry)
    return inventory


def _claims(entry: KeyEntry) -> list[tuple[str, tuple[str, ...]]]:
    """What two entries may not share: a DAG name, a Vault record, a Kosli key."""
    claims = [
        ("name", ("name", entry.name)),
        ("vault_path", ("vault", entry.vault_conn_id, entry.vault_mount or "", entry.vault_path)),
    ]
    if entry.key_id or entry.key_label:
        key = entry.key_id or f"label:{entry.key_label}"
        claims.append(("the Kosli key", ("kosli", entry.kosli_conn_id, entry.org, entry.service_account, key)))
    return claims
