"""One sandbox of every consumer service, each holding the OLD key, wired for the real DAG (``dag.test()``).

A ``Fleet`` is what a deployment looks like before a rotation: a GitHub repository secret, a GitLab project
variable, a Jenkins Secret-text credential, a CircleCI context variable, a Kubernetes Secret read by a
Deployment and an AWS Secrets Manager secret, all holding the key that is in Vault now, beside the two consumers
``Scenario`` already has (a Vault KV path and a Kosli CLI config file). The canary-capable services (GitHub,
Jenkins, CircleCI) run their canary jobs for real against the Kosli sandbox, with whatever secret they hold.

The sandboxes, the seeding and the reading are ``sandbox.fleet.ConsumerFleet``'s (``make demo`` uses it too); what
is pytest's lives here: connections set with ``monkeypatch``, quicker client pacing, and moto behind a front that
counts AWS writes. Everything the tests assert is read through each sandbox's own view (decrypted secrets, stored
variables, write counters, canary run lists, pod start records), never through the product's code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sandbox.fleet import ConsumerFleet
from tests.support.aws_errors import AwsErrorFront
from tests.support.scenario import CONSUMER_FIELD, CONSUMER_VAULT_PATH, ORG, Scenario

GITHUB_REPO = "acme/app"
GITLAB_PROJECT = "acme/platform/app"
JENKINS_CREDENTIAL = "kosli-api-token"
CIRCLECI_PROJECT = "gh/acme/app"
K8S_NAMESPACE = "reporting"
K8S_DEPLOYMENT = "k8s-reporter"
AWS_SECRET = "ci/kosli"
AWS_WRITES = ("secretsmanager.PutSecretValue", "secretsmanager.CreateSecret")

#: Consumer names in the inventory, by kind (the two Scenario kinds keep Scenario's names).
NAMES = {
    "vault_kv": "reporter-vault",
    "kosli_cli_config": "release-cli",
    "github_actions": "gh-app",
    "gitlab_ci": "gitlab-app",
    "jenkins_credential": "jenkins-ci",
    "circleci_env": "circleci-ctx",
    "kubernetes_secret": "k8s-reporter",
    "aws_secrets_manager": "aws-ci",
}
#: The consumers whose verification runs a canary job in its sandbox.
CANARIES = ("gh-app", "jenkins-ci", "circleci-ctx")


class Fleet(ConsumerFleet):
    """Sandboxes on free loopback ports, seeded with the scenario's old key; ``consumers`` lists their entries."""

    def __init__(self, scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(
            kosli_url=scenario.kosli.url,
            org=ORG,
            vault=scenario.vault,
            vault_mount=scenario.mount,
            kubernetes_namespaces=[K8S_NAMESPACE],
        )
        self.scenario = scenario
        self.monkeypatch = monkeypatch
        self.old_key = scenario.old_key

    def start(self) -> Fleet:
        super().start()
        try:
            self._quick_client_pacing()
            self._count_aws_writes()
            self._seed_every_kind()
            for conn_id, connection in self.airflow_env().items():
                self.monkeypatch.setenv(conn_id, connection)
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

    def _quick_client_pacing(self) -> None:
        """Client-side pacing that only slows a local sandbox down (the consumer tests do the same)."""
        from kosli_rotation.consumers import github_actions, kubernetes_secret

        self.monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_REQUESTS", 0.0)
        self.monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_WRITES", 0.0)
        self.monkeypatch.setattr(kubernetes_secret, "ROLLOUT_POLL_SECONDS", 0.05)

    def _count_aws_writes(self) -> None:
        """moto counts nothing: the product reaches it through a front that records every operation."""
        self.aws_front = self._stack.enter_context(AwsErrorFront(self.moto_url))
        self.route_aws_through(self.aws_front.url)

    def _seed_every_kind(self) -> None:
        old_key = self.old_key
        self.add_vault_kv(
            NAMES["vault_kv"], old_key, path=CONSUMER_VAULT_PATH, field=CONSUMER_FIELD, keep={"other": "kept"}
        )
        self.add_kosli_cli_config(
            NAMES["kosli_cli_config"], old_key, path=self.scenario.cli_config_path, host=self.scenario.kosli.url
        )
        self.add_github_actions(NAMES["github_actions"], old_key, repository=GITHUB_REPO, canary_workflow="canary.yml")
        self.add_gitlab_ci(NAMES["gitlab_ci"], old_key, project=GITLAB_PROJECT)
        self.add_jenkins_credential(NAMES["jenkins_credential"], old_key, credential_id=JENKINS_CREDENTIAL)
        self.add_circleci_env(NAMES["circleci_env"], old_key, context="kosli", canary_project=CIRCLECI_PROJECT)
        self.add_kubernetes_secret(NAMES["kubernetes_secret"], old_key, deployment=K8S_DEPLOYMENT)
        self.add_aws_secrets_manager(NAMES["aws_secrets_manager"], old_key, secret_id=AWS_SECRET)
        aws = NAMES["aws_secrets_manager"]
        self.seeded[aws] = dataclasses.replace(
            self.seeded[aws], write_mark=lambda: sum(op in AWS_WRITES for op in self.aws_front.operations)
        )

    def deployment_pod_fingerprints(self) -> list[str | None]:
        """For each current pod of the Deployment, the fingerprint of the key it started with (sandbox's view)."""
        pods = self.seeded[NAMES["kubernetes_secret"]].pod_fingerprints
        assert pods is not None
        return pods()
