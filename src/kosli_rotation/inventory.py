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

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from kosli_rotation import safe_yaml
from kosli_rotation.consumers import KINDS, AnyConsumerConfig
from kosli_rotation.consumers.vault_kv import VAULT_MOUNT, VaultKvConfig
from kosli_rotation.key_store import VaultPath
from kosli_rotation.lifecycle import LifecycleSettings
from kosli_rotation.notifications import NotifyTarget

ENV_VAR = "KOSLI_ROTATION_INVENTORY"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "inventory.yaml"
ENTRY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
#: Parts of Kosli URLs (``/api/v2/service-accounts/{org}/{service_account}/api-keys/{key_id}``): no ``/``, no
#: ``.`` (so no ``..`` for requests to collapse), no ``%`` (nothing pre-quoted), no control characters.
KOSLI_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
KOSLI_KEY_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
#: A key's description in Kosli: any printable text (it is compared, never put in a URL), no control characters.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,200}$"
#: What a lock must outlive beyond the Vault retry of a just-minted key: the Kosli call before it (its timeout and
#: retries) and a margin.
LOCK_MARGIN_SECONDS = 120


class InventoryError(Exception):
    """The inventory file as a whole cannot be used (missing, not YAML, wrong shape)."""


class KeyEntry(LifecycleSettings):
    """One Kosli key to keep rotated: one DAG (its TTL, window, retry budget and attestation: ``lifecycle.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ENTRY_NAME, description="Names the DAG: rotate_kosli_key_<name>.")
    org: str = Field(pattern=KOSLI_NAME)
    service_account: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9-]{0,63}$")
    key_id: str | None = Field(default=None, pattern=KOSLI_KEY_ID, description="Kosli key id, if the record lacks it.")
    key_label: str | None = Field(default=None, pattern=PRINTABLE, description="Or the key's description in Kosli.")
    vault_path: VaultPath
    vault_mount: str | None = Field(
        default=None, pattern=VAULT_MOUNT, description="KV v2 mount; default: the connection's."
    )
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
        document = safe_yaml.load_file(path)
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found (set {ENV_VAR} to its path)") from None
    except OSError as error:
        raise InventoryError(f"{path}: cannot read the inventory ({error.strerror})") from None
    except safe_yaml.YamlInputError as error:
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
    valid: list[tuple[int, str, KeyEntry]] = []
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
        valid.append((index, label, entry))
    shared = clashes([(f"keys[{index}] ({entry.name})", entry) for index, _, entry in valid])
    for position, (index, label, entry) in enumerate(valid):
        if shared[position]:
            # Two entries of one name would give two DAGs one id: a clash of names keeps neither name.
            named = None if any(field == "name" for field, _ in shared[position]) else entry.name
            found = [f"{label}: {field}: {problem}" for field, problem in shared[position]]
            inventory.broken.append(BrokenEntry(index, named, found))
        else:
            inventory.entries.append(entry)
    inventory.broken.sort(key=lambda broken: broken.index)
    return inventory


Problem = tuple[str, str]  # (field, what is wrong)


def _where(conn_id: str, mount: str | None, path: str) -> str:
    return f"{mount or '<mount of ' + conn_id + '>'}/{path} (connection {conn_id})"


def _same_mount(one: str | None, other: str | None) -> str | None:
    """Why two mounts on one connection may be one ("" when they are equal), or None if they cannot be.

    An unset mount is the connection's (the Vault provider takes the connection's ``schema``, else ``secret``),
    known only when a task connects. So an unset mount may be any explicit one: two entries that differ only in
    that are taken to share a record, and told to set the mount on both."""
    if one == other:
        return ""
    if one is None or other is None:
        return (
            f"; an unset mount is the connection's (its schema, else 'secret'), which may be '{one or other}': "
            "set the mount on both to tell them apart"
        )
    return None


def _inside(path: str, record: str) -> bool:
    """Whether ``path`` is ``record`` or one of the notes kept below it (consumers/, audit/, unclaimed/)."""
    return path == record or path.startswith(record + "/")


def _kosli_key(who: str, entry: KeyEntry, other_who: str, other: KeyEntry) -> Problem | None:
    """Whether two entries may rotate one Kosli key. ``key_id`` wins over ``key_label`` (key_identity.py), and an
    entry naming neither rotates whichever key its Vault record names: it may be any key of the account."""
    if (entry.org, entry.service_account) != (other.org, other.service_account):
        return None
    vague = [name for name, e in ((who, entry), (other_who, other)) if not (e.key_id or e.key_label)]
    if vague:
        return "key_label", f"{' and '.join(vague)} name(s) neither key_id nor key_label: the record decides the key"
    if entry.key_id and other.key_id:
        return ("key_id", f"key_id {entry.key_id}") if entry.key_id == other.key_id else None
    if entry.key_label and entry.key_label == other.key_label:
        return "key_label", f"key_label {entry.key_label!r}, with a key_id on at most one of them"
    return None


def _pair(who: str, entry: KeyEntry, other_who: str, other: KeyEntry) -> list[Problem]:
    """What ``entry`` shares with ``other`` that two entries may not: a DAG name, a Vault record, a Kosli key."""
    problems: list[Problem] = []
    if entry.name == other.name:
        problems.append(("name", f"{other_who} has the same name (one DAG id, {entry.dag_id}, for both)"))
    why = _same_mount(entry.vault_mount, other.vault_mount)
    overlap = _inside(entry.vault_path, other.vault_path) or _inside(other.vault_path, entry.vault_path)
    if why is not None and entry.vault_conn_id == other.vault_conn_id and overlap:
        mine, theirs = (_where(e.vault_conn_id, e.vault_mount, e.vault_path) for e in (entry, other))
        problems.append(("vault_path", f"the Vault record {mine} is, holds or lies in {theirs} of {other_who}{why}"))
    kosli = _kosli_key(who, entry, other_who, other)
    if kosli is not None:
        field, why = kosli
        account = f"{entry.org}/{entry.service_account}"
        problems.append((field, f"{other_who} may rotate the same Kosli key of {account}: {why}"))
    return problems


def _prefixes(path: str) -> list[str]:
    """``a/b/c`` -> ``a``, ``a/b``, ``a/b/c``: the records a path may lie in."""
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _consumer_clashes(
    entries: list[tuple[str, KeyEntry]], records: dict[tuple[str, str], list[int]], found: list[list[Problem]]
) -> None:
    """A vault_kv consumer aimed at a key's record (or the notes below it) would overwrite what the rotation of
    that key relies on: the consumer's entry and the record's are both broken."""
    for position, (who, entry) in enumerate(entries):
        for index, consumer in enumerate(entry.consumers):
            if not isinstance(consumer, VaultKvConfig):
                continue
            for prefix in _prefixes(consumer.path):
                for target in records.get((consumer.conn_id, prefix), []):
                    target_who, record = entries[target]
                    why = _same_mount(consumer.mount, record.vault_mount)
                    if why is None:
                        continue
                    owner = f"{target_who} itself" if target == position else target_who
                    writes = _where(consumer.conn_id, consumer.mount, consumer.path)
                    record_at = _where(record.vault_conn_id, record.vault_mount, record.vault_path)
                    said = f"vault_kv consumer {consumer.name!r} writes {writes}, in the Vault record {record_at}"
                    found[position].append((f"consumers[{index}].path", f"{said} of {owner}{why}"))
                    if target != position:
                        found[target].append(("vault_path", f"{said} of this entry: it is a consumer of {who}{why}"))


def clashes(entries: list[tuple[str, KeyEntry]]) -> list[list[Problem]]:
    """For each valid entry (named by ``who``, e.g. ``keys[2] (ci-bot)``), what it claims that another claims too.
    Compared after defaults are applied, both ways, so both entries of a clash learn of it. Only entries sharing a
    name, a service account or a Vault connection and path prefix are compared (thousands of entries stay fast)."""
    found: list[list[Problem]] = [[] for _ in entries]
    names: dict[str, list[int]] = {}
    accounts: dict[tuple[str, str], list[int]] = {}
    records: dict[tuple[str, str], list[int]] = {}
    for i, (_, entry) in enumerate(entries):
        names.setdefault(entry.name, []).append(i)
        accounts.setdefault((entry.org, entry.service_account), []).append(i)
        records.setdefault((entry.vault_conn_id, entry.vault_path), []).append(i)
    pairs = {(i, j) for group in (*names.values(), *accounts.values()) for i in group for j in group if i != j}
    for i, (_, entry) in enumerate(entries):
        for prefix in _prefixes(entry.vault_path):
            pairs.update(
                pair for j in records.get((entry.vault_conn_id, prefix), []) if j != i for pair in ((i, j), (j, i))
            )
    for i, j in sorted(pairs):
        (who, entry), (other_who, other) = entries[i], entries[j]
        found[i].extend(_pair(who, entry, other_who, other))
    _consumer_clashes(entries, records, found)
    return found
