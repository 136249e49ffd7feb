"""One sandbox of every consumer service, each holding the OLD key, wired for the real DAG.

A ``Fleet`` is what a deployment looks like before a rotation: a GitHub repository secret, a GitLab project
variable, a Jenkins Secret-text credential, a CircleCI context variable, a Kubernetes Secret read by a
Deployment and an AWS Secrets Manager secret, all holding the key that is in Vault now, beside the two consumers
``Scenario`` already has (a Vault KV path and a Kosli CLI config file). The canary-capable services (GitHub,
Jenkins, CircleCI) run their canary jobs for real against the Kosli sandbox, with whatever secret they hold.

Everything the tests assert is read through each sandbox's own view (decrypted secrets, stored variables, write
counters, canary run lists, pod start records), never through the product's code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from kosli_rotation.consumers import KINDS
from sandbox.circleci import CircleCiSandbox
from sandbox.github import GitHubSandbox
from sandbox.gitlab import GitLabSandbox
from sandbox.jenkins import JenkinsSandbox
from tests.support.aws_errors import AwsErrorFront
from tests.support.scenario import CONSUMER_FIELD, CONSUMER_VAULT_PATH, ORG, Scenario

VARIABLE = "KOSLI_API_TOKEN"
GITHUB_TOKEN = "ghp_fleet_rotator_of_acme"
GITHUB_REPO = "acme/app"
GITHUB_CANARY = "canary.yml"
GITLAB_PROJECT = "acme/platform/app"
JENKINS_CREDENTIAL = "kosli-api-token"
JENKINS_CANARY = "canaries/kosli-check"
CIRCLECI_OWNER = "gh/acme"
CIRCLECI_PROJECT = "gh/acme/app"
K8S_NAMESPACE = "reporting"
K8S_SECRET = "kosli-api-token"
K8S_DATA_KEY = "key"
K8S_DEPLOYMENT = "k8s-reporter"
AWS_REGION = "eu-west-1"
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

KUBERNETES_MISSING = (
    "consumer kind 'kubernetes_secret' is not registered in kosli_rotation.consumers.KINDS yet: the Kubernetes "
    "Secret / Deployment restart part of the fan-out is not exercised"
)


class Fleet:
    """Sandboxes on free loopback ports, seeded with the old key; ``consumers`` lists their inventory entries."""

    def __init__(self, scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scenario = scenario
        self.monkeypatch = monkeypatch
        self.old_key = scenario.old_key
        self.kubernetes_registered = "kubernetes_secret" in KINDS
        self.consumers: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Fleet:
        try:
            self._quick_client_pacing()
            self._seed_scenario_consumers()
            self._start_github()
            self._start_gitlab()
            self._start_jenkins()
            self._start_circleci()
            self._start_aws()
            if self.kubernetes_registered:
                self._start_kubernetes()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every sandbox, each after its running canary jobs (which call Kosli) have finished."""
        self._stack.close()

    @property
    def consumer_names(self) -> list[str]:
        return [consumer["name"] for consumer in self.consumers]

    # -- seeding ---------------------------------------------------------------------------------------

    def _quick_client_pacing(self) -> None:
        """Client-side pacing that only slows a local sandbox down (the consumer tests do the same)."""
        from kosli_rotation.consumers import github_actions

        self.monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_REQUESTS", 0.0)
        self.monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_WRITES", 0.0)
        if self.kubernetes_registered:
            from kosli_rotation.consumers import kubernetes_secret

            self.monkeypatch.setattr(kubernetes_secret, "ROLLOUT_POLL_SECONDS", 0.05)

    def _connect(self, conn_id: str, connection: dict[str, Any]) -> None:
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))

    def _seed_scenario_consumers(self) -> None:
        """Scenario's Vault consumer starts empty; a deployment before rotation has the old key there too."""
        scenario = self.scenario
        scenario.vault().secrets.kv.v2.create_or_update_secret(
            path=CONSUMER_VAULT_PATH, secret={CONSUMER_FIELD: self.old_key, "other": "kept"}, mount_point=scenario.mount
        )
        self.consumers.extend(scenario.entry["consumers"])

    def _start_github(self) -> None:
        kosli = self.scenario.kosli
        self.github = self._stack.enter_context(GitHubSandbox(kosli_url=kosli.url, kosli_org=ORG, run_seconds=0.3))
        self._stack.callback(self.github.wait_for_runs)
        self.github.seed_document(
            {
                "orgs": {ORG: {}},
                "repos": {GITHUB_REPO: {"workflows": [{"file": GITHUB_CANARY}], "secrets": {VARIABLE: self.old_key}}},
                "tokens": {GITHUB_TOKEN: {"orgs": {ORG: "admin"}}},
            }
        )
        self._connect("github_default", {"conn_type": "github", "host": self.github.url, "password": GITHUB_TOKEN})
        self.consumers.append(
            {
                "name": NAMES["github_actions"],
                "kind": "github_actions",
                "repository": GITHUB_REPO,
                "canary": {"workflow": GITHUB_CANARY},
            }
        )

    def _start_gitlab(self) -> None:
        self.gitlab = self._stack.enter_context(GitLabSandbox())
        self.gitlab.add_project(GITLAB_PROJECT)
        token = self.gitlab.add_token({GITLAB_PROJECT: "maintainer"}, name="rotator")
        self.gitlab.set_variable(VARIABLE, self.old_key, project=GITLAB_PROJECT, masked=True, raw=True)
        self._connect("gitlab_default", {"conn_type": "http", "host": self.gitlab.url, "password": token})
        self.consumers.append({"name": NAMES["gitlab_ci"], "kind": "gitlab_ci", "project": GITLAB_PROJECT})

    def _start_jenkins(self) -> None:
        kosli = self.scenario.kosli
        self.jenkins = self._stack.enter_context(
            JenkinsSandbox(kosli_url=kosli.url, kosli_org=ORG, canary_seconds=0.2, quiet_period=0.05)
        )
        self._stack.callback(self.jenkins.wait_for_builds)
        token = self.jenkins.add_user("rotator")
        self.jenkins.add_job(JENKINS_CANARY, credential_id=JENKINS_CREDENTIAL)
        self.jenkins.put_credential(JENKINS_CREDENTIAL, self.old_key, description="Kosli key of the CI bot")
        port = int(self.jenkins.url.rsplit(":", 1)[1])
        self._connect(
            "jenkins_default",
            {"conn_type": "jenkins", "host": "127.0.0.1", "port": port, "login": "rotator", "password": token},
        )
        self.consumers.append(
            {
                "name": NAMES["jenkins_credential"],
                "kind": "jenkins_credential",
                "credential_id": JENKINS_CREDENTIAL,
                "canary": {"job": JENKINS_CANARY},
            }
        )

    def _start_circleci(self) -> None:
        kosli = self.scenario.kosli
        self.circleci = self._stack.enter_context(
            CircleCiSandbox(kosli_url=kosli.url, kosli_org=ORG, canary_seconds=0.2, setup_seconds=0.05)
        )
        self._stack.callback(self.circleci.wait_for_workflows)
        self.circleci.add_org(CIRCLECI_OWNER)
        token = self.circleci.add_user("rotator", {CIRCLECI_OWNER: "admin"})
        self.circleci_context = self.circleci.add_context(CIRCLECI_OWNER, "kosli")
        self.circleci.add_project(CIRCLECI_PROJECT, contexts=["kosli"])
        self.circleci.set_context_variable(self.circleci_context, VARIABLE, self.old_key)
        self._connect("circleci_default", {"conn_type": "http", "host": self.circleci.url, "password": token})
        self.consumers.append(
            {
                "name": NAMES["circleci_env"],
                "kind": "circleci_env",
                "context_id": self.circleci_context,
                "canary": {"project_slug": CIRCLECI_PROJECT},
            }
        )

    def _start_aws(self) -> None:
        """moto's server, behind a counting front (moto counts nothing); the secret holds the old key."""
        # werkzeug's request log would write to the stream of whichever test first configured it.
        self.monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", True)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # moto's backends are process-wide: start from an empty account whatever ran before in this process.
        requests.post(f"{self.moto_url}/moto-api/reset", timeout=5).raise_for_status()
        self.aws_front = self._stack.enter_context(AwsErrorFront(self.moto_url))
        self.aws = boto3.client(
            "secretsmanager",
            endpoint_url=self.moto_url,
            region_name=AWS_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.aws.create_secret(Name=AWS_SECRET, SecretString=self.old_key)
        self._connect(
            "aws_default",
            {
                "conn_type": "aws",
                "login": "AKIAEXAMPLEKEY000001",
                "password": "dummy-secret-access-key",
                "extra": {"region_name": AWS_REGION, "endpoint_url": self.aws_front.url},
            },
        )
        self.consumers.append(
            {"name": NAMES["aws_secrets_manager"], "kind": "aws_secrets_manager", "secret_id": AWS_SECRET}
        )

    def _start_kubernetes(self) -> None:
        from sandbox.kubernetes import KubernetesSandbox

        self.kubernetes = self._stack.enter_context(KubernetesSandbox(rollout_seconds=0.2))
        self.kubernetes.add_namespace(K8S_NAMESPACE)
        token = self.kubernetes.add_user(
            "system:serviceaccount:airflow:rotator",
            [{"verbs": ["*"], "resources": ["*"], "namespaces": [K8S_NAMESPACE]}],
        )
        self.kubernetes.put_secret(K8S_NAMESPACE, K8S_SECRET, {K8S_DATA_KEY: self.old_key})
        self.kubernetes.add_workload(
            "Deployment", K8S_NAMESPACE, K8S_DEPLOYMENT, replicas=2, secret=K8S_SECRET, key=K8S_DATA_KEY
        )
        self._connect(
            "kubernetes_default",
            {"conn_type": "kubernetes", "extra": {"kube_config": self.kubernetes.kubeconfig(token, K8S_NAMESPACE)}},
        )
        self.consumers.append(
            {
                "name": NAMES["kubernetes_secret"],
                "kind": "kubernetes_secret",
                "namespace": K8S_NAMESPACE,
                "secret_name": K8S_SECRET,
                "data_key": K8S_DATA_KEY,
                "restart": [{"kind": "Deployment", "name": K8S_DEPLOYMENT}],
                "rollout_timeout_seconds": 60,
            }
        )

    # -- looking at the world through each sandbox -------------------------------------------------------

    def held_values(self) -> dict[str, str | None]:
        """The plaintext each consumer holds now, as its own store shows it (None: nothing stored)."""
        values = dict(self.scenario.consumer_values())
        values[NAMES["github_actions"]] = self.github.secret_value(GITHUB_REPO, VARIABLE)
        values[NAMES["gitlab_ci"]] = self.gitlab.stored_value(VARIABLE, project=GITLAB_PROJECT)
        try:
            values[NAMES["jenkins_credential"]] = self.jenkins.stored_credential(JENKINS_CREDENTIAL)["secret"]
        except LookupError:
            values[NAMES["jenkins_credential"]] = None
        held = self.circleci.context_variable(self.circleci_context, VARIABLE)
        values[NAMES["circleci_env"]] = held["value"] if held else None
        values[NAMES["aws_secrets_manager"]] = self.aws.get_secret_value(
            SecretId=AWS_SECRET, VersionStage="AWSCURRENT"
        )["SecretString"]
        if self.kubernetes_registered:
            data = self.kubernetes.secret_data(K8S_NAMESPACE, K8S_SECRET) or {}
            values[NAMES["kubernetes_secret"]] = data.get(K8S_DATA_KEY)
        return values

    def write_marks(self) -> dict[str, Any]:
        """Per consumer, something that changes whenever its store is written (counters, versions, stamps)."""
        scenario = self.scenario
        metadata = scenario.vault().secrets.kv.v2.read_secret_metadata(
            path=CONSUMER_VAULT_PATH, mount_point=scenario.mount
        )
        cli = os.stat(scenario.cli_config_path)

        def requests_to(server: Any, *handlers: str) -> int:
            counts = server.stats()["requests"]
            return sum(counts.get(handler, 0) for handler in handlers)

        marks: dict[str, Any] = {
            NAMES["vault_kv"]: metadata["data"]["current_version"],
            NAMES["kosli_cli_config"]: (cli.st_ino, cli.st_mtime_ns),
            NAMES["github_actions"]: requests_to(self.github, "put_secret"),
            NAMES["gitlab_ci"]: self.gitlab.stats()["variable_writes"],
            NAMES["jenkins_credential"]: requests_to(self.jenkins, "create_credentials", "update_credential_config"),
            NAMES["circleci_env"]: requests_to(self.circleci, "put_context_variable"),
            NAMES["aws_secrets_manager"]: sum(op in AWS_WRITES for op in self.aws_front.operations),
        }
        if self.kubernetes_registered:
            marks[NAMES["kubernetes_secret"]] = (
                self.kubernetes.secret_writes(K8S_NAMESPACE, K8S_SECRET),
                self.kubernetes.workload("Deployment", K8S_NAMESPACE, K8S_DEPLOYMENT)["metadata"]["generation"],
            )
        return marks

    def canary_outcomes(self) -> dict[str, list[str]]:
        """Each canary consumer's job runs, oldest first: ``success``, ``failure`` or ``running``."""
        github = [
            run["conclusion"] if run["status"] == "completed" else "running" for run in self.github.runs(GITHUB_REPO)
        ]
        jenkins = [
            "running" if build["building"] or build["result"] is None else build["result"].lower()
            for build in self.jenkins.builds(JENKINS_CANARY)
        ]
        circleci = [
            {"success": "success", "failed": "failure"}.get(workflow["status"], "running")
            for pipeline in self.circleci.pipelines(CIRCLECI_PROJECT)
            for workflow in pipeline["workflows"]
        ]
        return {NAMES["github_actions"]: github, NAMES["jenkins_credential"]: jenkins, NAMES["circleci_env"]: circleci}

    def target_fragments(self) -> dict[str, str]:
        """Per consumer, what any description of its target must name (repository, project, credential...)."""
        fragments = {
            NAMES["vault_kv"]: CONSUMER_VAULT_PATH,
            NAMES["kosli_cli_config"]: str(self.scenario.cli_config_path),
            NAMES["github_actions"]: GITHUB_REPO,
            NAMES["gitlab_ci"]: GITLAB_PROJECT,
            NAMES["jenkins_credential"]: JENKINS_CREDENTIAL,
            NAMES["circleci_env"]: self.circleci_context,
            NAMES["aws_secrets_manager"]: AWS_SECRET,
        }
        if self.kubernetes_registered:
            fragments[NAMES["kubernetes_secret"]] = K8S_NAMESPACE
        return fragments

    def deployment_pod_fingerprints(self) -> list[str | None]:
        """For each current pod of the Deployment, the fingerprint of the key it started with (sandbox's view)."""
        return self.kubernetes.pod_fingerprints("Deployment", K8S_NAMESPACE, K8S_DEPLOYMENT)
