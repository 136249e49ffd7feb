"""One sandbox of every consumer service, with targets seeded to hold a key, read back through each sandbox's view.

Demo and test infrastructure, not product code (nothing under ``src/`` imports it): the fan-out tests
(``tests/support/fleet.py``), the benchmarks (``bench/``) and ``make demo`` (``demo/``) use it. A ``ConsumerFleet``
starts, in this process and on free loopback ports, the fixture adapter of each of its ``kinds``
(``sandbox.adapters``: the GitHub, GitLab, Jenkins, CircleCI and Kubernetes sandboxes, moto for AWS, a proxy in
front of the given Vault, ...), each with an account for the rotator; ``connections`` are the Airflow connections
that reach them with that account. ``add`` creates one consumer target holding a value (a GitHub repository
secret with a canary workflow, a Kubernetes Secret read by a Deployment, ...) through the kind's adapter and returns
its inventory entry.

Each seeded consumer can then be looked at through the service's own view, never through the product's code: the
value it holds, a mark that changes whenever its store is written, its canary job runs and, for Kubernetes, the key
each restarted pod started with (see ``SeededConsumer``). Values are handed to the caller only: nothing here prints
or logs one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from sandbox.adapters import ADAPTER_KINDS, adapter_class
from sandbox.adapters.base import (
    FAILURE,
    LOOPBACK,
    ROTATOR,
    RUNNING,
    SUCCESS,
    VARIABLE,
    FixtureAdapter,
    FleetSettings,
    SeededConsumer,
    fingerprint,
)
from sandbox.server import SandboxServer


def consumer_name(kind: str, target: str) -> str:
    """The one naming rule of seeded consumers: ``<target>-<the kind's first word>`` (``app-github``,
    ``reporter-kubernetes``, ``ci-kosli``...), unique per kind since no two kinds share a first word."""
    return f"{target}-{kind.partition('_')[0]}"


class ConsumerFleet:
    """The consumer sandboxes of one Kosli org, one per kind of ``kinds``, and the consumers seeded in them.

    ``kosli_url``/``org``: where canary jobs check the secret they hold. The other settings are
    ``sandbox.adapters.base.FleetSettings``'s (Vault for ``vault_kv``, ``files_dir`` for ``kosli_cli_config``...).
    """

    def __init__(
        self,
        *,
        kosli_url: str,
        org: str,
        canary_seconds: float = 0.2,
        rollout_seconds: float = 0.2,
        vault: Callable[[], Any] | None = None,
        vault_url: str | None = None,
        vault_token: str | None = None,
        vault_mount: str | None = None,
        kubernetes_namespaces: Sequence[str] = ("reporting",),
        files_dir: Path | None = None,
        kinds: Sequence[str] = ADAPTER_KINDS,
    ) -> None:
        self.settings = FleetSettings(
            kosli_url=kosli_url,
            org=org,
            canary_seconds=canary_seconds,
            rollout_seconds=rollout_seconds,
            vault=vault,
            vault_url=vault_url,
            vault_token=vault_token,
            vault_mount=vault_mount,
            kubernetes_namespaces=tuple(kubernetes_namespaces),
            files_dir=files_dir,
        )
        self.kinds = tuple(kinds)
        #: Each kind's started adapter, in ``kinds`` order.
        self.adapters: dict[str, FixtureAdapter] = {}
        #: The consumers seeded so far, by name, in the order they were added.
        self.seeded: dict[str, SeededConsumer] = {}
        self._stack = contextlib.ExitStack()

    @property
    def org(self) -> str:
        return self.settings.org

    @property
    def kosli_url(self) -> str:
        return self.settings.kosli_url

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            for kind in self.kinds:
                adapter = adapter_class(kind)(self.settings)
                adapter.start(self._stack)
                taken = set(adapter.connections) & set(self.connections)
                if taken:
                    raise ValueError(f"{kind}'s adapter reuses connection ids of another kind: {sorted(taken)}")
                self.adapters[kind] = adapter
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every sandbox, each after its running canary jobs (which call Kosli) have finished."""
        self._stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def adapter(self, kind: str) -> FixtureAdapter:
        try:
            return self.adapters[kind]
        except KeyError:
            raise KeyError(f"this fleet has no {kind} adapter (kinds: {', '.join(self.adapters)})") from None

    def sandbox(self, kind: str) -> SandboxServer:
        """The server behind ``kind``'s connections (its sandbox, or the proxy in front of the real service), for
        tests that script it beyond ``fail_writes`` and for settings such as latency."""
        server = getattr(self.adapter(kind), "server", None)
        if not isinstance(server, SandboxServer):
            raise TypeError(f"{kind}'s adapter has no sandbox server")
        return server

    @property
    def connections(self) -> dict[str, dict[str, Any]]:
        """conn_id -> the Airflow connection (as a dict) that reaches a sandbox with the rotator's account."""
        return {conn_id: conn for adapter in self.adapters.values() for conn_id, conn in adapter.connections.items()}

    @property
    def services(self) -> dict[str, str]:
        """Each sandbox's name and URL (kinds without one, such as files, are left out)."""
        return {adapter.service: adapter.url for adapter in self.adapters.values() if adapter.url}

    def airflow_env(self) -> dict[str, str]:
        """The connections as Airflow reads them from the environment (``AIRFLOW_CONN_<ID>``), and the variables an
        adapter says a process reaching its sandbox needs (its optional ``environment``, e.g. a CA bundle)."""
        needed = {name: value for adapter in self.adapters.values() for name, value in self._environment(adapter)}
        connections = self.connections.items()
        return {**needed, **{f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections}}

    @staticmethod
    def _environment(adapter: FixtureAdapter) -> list[tuple[str, str]]:
        return list((getattr(adapter, "environment", None) or {}).items())

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The inventory entries of every seeded consumer."""
        return [consumer.entry for consumer in self.seeded.values()]

    # -- seeding: one consumer target holding ``value``; returns the inventory entry ------------------------

    def add(self, kind: str, name: str, value: str, target: str, **quirks: Any) -> dict[str, Any]:
        """A target of ``kind`` holding ``value``, its names derived from ``target``; ``quirks`` are the kind's
        options (see its adapter). Returns its inventory entry."""
        if name in self.seeded:
            raise ValueError(f"a consumer named {name!r} was seeded already")
        consumer = self.adapter(kind).seed(name, value, target, **quirks)
        self.seeded[name] = consumer
        return consumer.entry

    # -- looking at every consumer at once -------------------------------------------------------------------

    def held_values(self) -> dict[str, str | None]:
        """The plaintext each consumer holds now, as its own store shows it."""
        return {name: consumer.read() for name, consumer in self.seeded.items()}

    def write_marks(self) -> dict[str, Any]:
        return {name: consumer.write_mark() for name, consumer in self.seeded.items()}

    def canary_outcomes(self) -> dict[str, list[str]]:
        """Each canary consumer's job runs, oldest first."""
        return {
            name: consumer.canary_runs() for name, consumer in self.seeded.items() if consumer.canary_runs is not None
        }

    def target_fragments(self) -> dict[str, str]:
        return {name: consumer.fragment for name, consumer in self.seeded.items()}


__all__ = [
    "FAILURE",
    "LOOPBACK",
    "ROTATOR",
    "RUNNING",
    "SUCCESS",
    "VARIABLE",
    "ConsumerFleet",
    "SeededConsumer",
    "consumer_name",
    "fingerprint",
]
