"""One sandbox of every consumer kind, each holding the OLD key, wired for the real DAG (``dag.test()``).

A ``Fleet`` is what a deployment looks like before a rotation: one consumer of every kind the product has
(``kosli_rotation.consumers.KINDS``), each seeded through its fixture adapter (``sandbox.adapters``) with the key
that is in Vault now: a GitHub repository secret, a GitLab project variable, a Jenkins Secret-text credential, a
CircleCI context variable, a Kubernetes Secret read by a Deployment, an AWS Secrets Manager secret, a Vault KV path
and a Kosli CLI config file... The canary-capable services (GitHub, Jenkins, CircleCI) run their canary jobs for
real against the Kosli sandbox, with whatever secret they hold.

The sandboxes, the seeding and the reading are ``sandbox.fleet.ConsumerFleet``'s (``make demo`` uses it too); what
is pytest's lives here: connections set with ``monkeypatch`` and quicker client pacing. Everything the tests assert
is read through each sandbox's own view (decrypted secrets, stored variables, write counters, canary run lists, pod
start records), never through the product's code.
"""

from __future__ import annotations

from typing import Any

import pytest

from kosli_rotation.consumers import KINDS
from sandbox.fleet import ConsumerFleet, consumer_name
from tests.support.scenario import ORG, Scenario

#: Every kind's target is called this (names of repositories, projects, credentials... derive from it).
TARGET = "app"
K8S_NAMESPACE = "reporting"
#: Consumer names in the inventory, by kind: the one naming rule of ``sandbox.fleet``.
NAMES = {kind: consumer_name(kind, TARGET) for kind in KINDS}
#: Each kind's options beyond its plain target: canaries where the service runs them, a Deployment to restart.
QUIRKS: dict[str, dict[str, Any]] = {
    "vault_kv": {"keep": {"other": "kept"}},
    "github_actions": {"canary": True, "workflow": "canary.yml"},
    "jenkins_credential": {"canary": True},
    "circleci_env": {"canary": True},
    "kubernetes_secret": {"restart": True},
}
#: The consumers whose verification runs a canary job in its sandbox.
CANARIES = tuple(NAMES[kind] for kind in ("github_actions", "jenkins_credential", "circleci_env"))


def quick_client_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Client-side pacing that only slows a local sandbox down (the consumer tests do the same)."""
    from kosli_rotation.consumers import github_actions, kubernetes_secret

    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_REQUESTS", 0.0)
    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_WRITES", 0.0)
    monkeypatch.setattr(kubernetes_secret, "ROLLOUT_POLL_SECONDS", 0.05)


class Fleet(ConsumerFleet):
    """Sandboxes on free loopback ports, seeded with the scenario's old key; ``consumers`` lists their entries."""

    def __init__(self, scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(
            kosli_url=scenario.kosli.url,
            org=ORG,
            vault=scenario.vault,
            vault_url=scenario.bao.url,
            vault_token=scenario.bao.token,
            vault_mount=scenario.mount,
            kubernetes_namespaces=[K8S_NAMESPACE],
            files_dir=scenario.workdir / "kosli-cli",
            kinds=tuple(KINDS),
        )
        self.scenario = scenario
        self.monkeypatch = monkeypatch
        self.old_key = scenario.old_key

    def start(self) -> Fleet:
        super().start()
        try:
            quick_client_pacing(self.monkeypatch)
            for kind in self.kinds:
                self.add(kind, NAMES[kind], self.old_key, TARGET, **QUIRKS.get(kind, {}))
            # Only the connections: an adapter's own variables (a CA bundle) are set in this process by the adapter
            # for as long as it runs, and monkeypatch would restore them after it has stopped.
            for variable, value in self.airflow_env().items():
                if variable.startswith("AIRFLOW_CONN_"):
                    self.monkeypatch.setenv(variable, value)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def consumers(self) -> list[dict[str, Any]]:
        return self.entries

    @property
    def consumer_names(self) -> list[str]:
        return list(self.seeded)

    def deployment_pod_fingerprints(self) -> list[str | None]:
        """For each current pod of the Deployment, the fingerprint of the key it started with (sandbox's view)."""
        pods = self.seeded[NAMES["kubernetes_secret"]].pod_fingerprints
        assert pods is not None
        return pods()
