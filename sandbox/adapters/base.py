"""The contract every consumer kind's fixture adapter fulfils: start its sandbox, give the Airflow connections that
reach it, seed a target holding a value, and look at what the target holds through the service's own view.

The sandbox fleet (``sandbox.fleet``), the test support (``tests/support``), the demo (``demo/world.py``) and the
contract test (``tests/consumers/test_contract.py``) all loop over ``sandbox.adapters.ADAPTERS``; a new consumer
kind adds its module, its sandbox, one adapter here and its quirk tests. Demo and test infrastructure, not product
code: nothing under ``src/`` imports it. Values are handed to the caller only, never printed or logged.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

LOOPBACK = "127.0.0.1"
VARIABLE = "KOSLI_API_TOKEN"
ROTATOR = "rotator"
#: Canary job outcomes, whatever the service calls them.
SUCCESS, FAILURE, RUNNING = "success", "failure", "running"


def fingerprint(value: str) -> str:
    """``sha256:`` and 12 hex digits: the product's convention for showing a key, computed here."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FleetSettings:
    """What every adapter may need to know about the world it runs in.

    ``kosli_url``/``org``: where canary jobs check the secret they hold. ``canary_seconds``: how long a canary job
    runs; ``rollout_seconds``: how long a Kubernetes rollout takes. ``vault`` (a function returning an hvac client),
    ``vault_url``, ``vault_token`` and ``vault_mount``: the Vault that ``vault_kv`` targets live in.
    ``kubernetes_namespaces``: where the rotator's Kubernetes account may act. ``files_dir``: where file targets
    (Kosli CLI configs) are written.
    """

    kosli_url: str
    org: str
    canary_seconds: float = 0.2
    rollout_seconds: float = 0.2
    vault: Callable[[], Any] | None = None
    vault_url: str | None = None
    vault_token: str | None = None
    vault_mount: str | None = None
    kubernetes_namespaces: Sequence[str] = ("reporting",)
    files_dir: Path | None = None


@dataclass
class SeededConsumer:
    """One consumer target in a sandbox: its inventory entry and ways to look at it through the service."""

    entry: dict[str, Any]
    #: Where it is, for people (no value).
    where: str
    #: What any description of the target must name (a repository, a project, a credential id...).
    fragment: str
    #: The plaintext it holds now, as the service's own store shows it (None: nothing stored).
    read: Callable[[], str | None]
    #: Something that changes whenever its store is written (a counter, a version, a file stamp).
    write_mark: Callable[[], Any]
    #: Each canary job run, oldest first: ``success``, ``failure`` or ``running`` (None: no canary).
    canary_runs: Callable[[], list[str]] | None = None
    #: What the canary is, for people.
    canary: str = ""
    #: Kubernetes: for each current pod of the restarted workloads, the fingerprint of the key it started with.
    pod_fingerprints: Callable[[], list[str | None]] | None = None

    @property
    def name(self) -> str:
        return str(self.entry["name"])

    @property
    def kind(self) -> str:
        return str(self.entry["kind"])


class InjectedFault:
    """Scripted answers an adapter made its service give; ``fired`` counts those given so far."""

    def __init__(self, fired: Callable[[], int], remove: Callable[[], None]) -> None:
        self._fired = fired
        self.remove = remove

    @property
    def fired(self) -> int:
        return self._fired()


@dataclass
class FixtureAdapter(ABC):
    """One consumer kind's sandbox, its connections and its targets."""

    #: The consumer kind (a key of ``kosli_rotation.consumers.KINDS``).
    kind: ClassVar[str]
    #: The service's name as people know it, for ``ConsumerFleet.services``.
    service: ClassVar[str]
    #: Why the contract test cannot inject HTTP faults or wrong credentials for this kind (None: it can).
    no_faults: ClassVar[str | None] = None
    #: Why a write to a target that does not exist yet fails (None: the write creates it).
    missing_target: ClassVar[str | None] = None

    settings: FleetSettings
    #: conn_id -> the Airflow connection (as a dict) that reaches the sandbox with the rotator's account.
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    url: str = ""

    @abstractmethod
    def start(self, stack: contextlib.ExitStack) -> None:
        """Start the sandbox (stopped by ``stack``), create the rotator's account, fill ``connections``/``url``."""

    @abstractmethod
    def seed(self, name: str, value: str | None, target: str, **quirks: Any) -> SeededConsumer:
        """A new target holding ``value`` (None: the target does not exist yet), its names derived from ``target``
        (short, unique within the kind); ``quirks`` are the kind's own options (a canary or not, ...). Returns it
        with its inventory entry."""

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        """The same connections (same ids) with credentials the service refuses (401 or 403)."""
        raise NotImplementedError(self.no_faults or f"{self.kind} has no wrong-credentials fixture")

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        """Answer the next ``times`` writes (0: every write) to any target with ``status`` and ``headers``."""
        raise NotImplementedError(self.no_faults or f"{self.kind} has no fault injection")

    def requests_served(self) -> int:
        """Every request the service answered so far (injected faults included), to tell a retry storm."""
        raise NotImplementedError(self.no_faults or f"{self.kind} does not count requests")
