"""One sandbox of every consumer service, with targets seeded to hold a key, read back through each sandbox's view.

Demo and test infrastructure, not product code (nothing under ``plugins/`` imports it): the fan-out tests
(``tests/support/fleet.py``) and ``make demo`` (``demo/``) both use it. A ``ConsumerFleet`` starts, in this process
and on free loopback ports, the GitHub, GitLab, Jenkins, CircleCI and Kubernetes sandboxes and moto's server for AWS
Secrets Manager, each with an account for the rotator; ``connections`` are the Airflow connections that reach them
with that account. The ``add_*`` methods create one consumer target holding a value (a GitHub repository secret
with a canary workflow, a Kubernetes Secret read by a Deployment, ...) and return its inventory entry; two more
kinds live outside the sandboxes: a Vault KV path (given a Vault client) and a Kosli CLI config file.

Each seeded consumer can then be looked at through the service's own view, never through the product's code: the
value it holds (decrypted secrets, stored variables), a mark that changes whenever its store is written, its
canary job runs (GitHub, Jenkins and CircleCI run them for real against the Kosli sandbox, with the secret they
hold) and, for Kubernetes, the key each restarted pod started with. Values are handed to the caller only: nothing
here prints or logs one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from hvac.exceptions import InvalidPath

from sandbox.circleci import CircleCiSandbox
from sandbox.github import GitHubSandbox
from sandbox.gitlab import GitLabSandbox
from sandbox.jenkins import JenkinsSandbox
from sandbox.kubernetes import KubernetesSandbox

LOOPBACK = "127.0.0.1"
VARIABLE = "KOSLI_API_TOKEN"
ROTATOR = "rotator"
GITHUB_TOKEN = "ghp_fleet_rotator_of_the_org"
AWS_REGION = "eu-west-1"
AWS_ACCESS_KEY = "AKIAEXAMPLEKEY000001"
AWS_SECRET_KEY = "dummy-secret-access-key"
#: Canary job outcomes, whatever the service calls them.
SUCCESS, FAILURE, RUNNING = "success", "failure", "running"


def fingerprint(value: str) -> str:
    """``sha256:`` and 12 hex digits: the product's convention for showing a key, computed here."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


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


class ConsumerFleet:
    """The consumer sandboxes of one Kosli org, and the consumers seeded in them.

    ``kosli_url``/``org``: where canary jobs check the secret they hold. ``canary_seconds``: how long a canary job
    runs; ``rollout_seconds``: how long a Kubernetes rollout takes. ``vault`` (a function returning an hvac client)
    and ``vault_mount`` are needed for ``vault_kv`` consumers only. ``kubernetes_namespaces``: where the rotator's
    Kubernetes account may act (RBAC).
    """

    def __init__(
        self,
        *,
        kosli_url: str,
        org: str,
        canary_seconds: float = 0.2,
        rollout_seconds: float = 0.2,
        vault: Callable[[], Any] | None = None,
        vault_mount: str | None = None,
        kubernetes_namespaces: Sequence[str] = ("reporting",),
    ) -> None:
        self.kosli_url = kosli_url
        self.org = org
        self.canary_seconds = canary_seconds
        self.rollout_seconds = rollout_seconds
        self.vault = vault
        self.vault_mount = vault_mount
        self.kubernetes_namespaces = list(kubernetes_namespaces)
        #: conn_id -> the Airflow connection (as a dict) that reaches a sandbox with the rotator's account.
        self.connections: dict[str, dict[str, Any]] = {}
        #: The consumers seeded so far, by name, in the order they were added.
        self.seeded: dict[str, SeededConsumer] = {}
        self._stack = contextlib.ExitStack()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self._start_github()
            self._start_gitlab()
            self._start_jenkins()
            self._start_circleci()
            self._start_kubernetes()
            self._start_aws()
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

    @property
    def services(self) -> dict[str, str]:
        """Each sandbox's name and URL."""
        return {
            "GitHub": self.github.url,
            "GitLab": self.gitlab.url,
            "Jenkins": self.jenkins.url,
            "CircleCI": self.circleci.url,
            "Kubernetes": self.kubernetes.url,
            "AWS (moto)": self.moto_url,
        }

    def airflow_env(self) -> dict[str, str]:
        """The connections as Airflow reads them from the environment (``AIRFLOW_CONN_<ID>``)."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in self.connections.items()}

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The inventory entries of every seeded consumer."""
        return [consumer.entry for consumer in self.seeded.values()]

    def _start_github(self) -> None:
        self.github = self._stack.enter_context(
            GitHubSandbox(kosli_url=self.kosli_url, kosli_org=self.org, run_seconds=self.canary_seconds)
        )
        self._stack.callback(self.github.wait_for_runs)
        self.github.add_org(self.org)
        self.github.add_token(GITHUB_TOKEN, login=ROTATOR, orgs={self.org: "admin"})
        self.connections["github_default"] = {"conn_type": "github", "host": self.github.url, "password": GITHUB_TOKEN}

    def _start_gitlab(self) -> None:
        self.gitlab = self._stack.enter_context(GitLabSandbox())
        self.gitlab.add_group(self.org)
        token = self.gitlab.add_token({self.org: "maintainer"}, name=ROTATOR)
        self.connections["gitlab_default"] = {"conn_type": "http", "host": self.gitlab.url, "password": token}

    def _start_jenkins(self) -> None:
        self.jenkins = self._stack.enter_context(
            JenkinsSandbox(
                kosli_url=self.kosli_url,
                kosli_org=self.org,
                canary_seconds=self.canary_seconds,
                quiet_period=min(0.05, self.canary_seconds),
            )
        )
        self._stack.callback(self.jenkins.wait_for_builds)
        token = self.jenkins.add_user(ROTATOR)
        port = int(self.jenkins.url.rsplit(":", 1)[1])
        self.connections["jenkins_default"] = {
            "conn_type": "jenkins",
            "host": LOOPBACK,
            "port": port,
            "login": ROTATOR,
            "password": token,
            "extra": {"use_https": False},  # the sandbox serves plain HTTP; Jenkins connections default to HTTPS
        }

    def _start_circleci(self) -> None:
        self.circleci = self._stack.enter_context(
            CircleCiSandbox(
                kosli_url=self.kosli_url,
                kosli_org=self.org,
                canary_seconds=self.canary_seconds,
                setup_seconds=min(0.05, self.canary_seconds),
            )
        )
        self._stack.callback(self.circleci.wait_for_workflows)
        self.circleci_owner = f"gh/{self.org}"
        self.circleci.add_org(self.circleci_owner)
        token = self.circleci.add_user(ROTATOR, {self.circleci_owner: "admin"})
        self.connections["circleci_default"] = {"conn_type": "http", "host": self.circleci.url, "password": token}

    def _start_kubernetes(self) -> None:
        self.kubernetes = self._stack.enter_context(KubernetesSandbox(rollout_seconds=self.rollout_seconds))
        for namespace in self.kubernetes_namespaces:
            self.kubernetes.add_namespace(namespace)
        token = self.kubernetes.add_user(
            f"system:serviceaccount:airflow:{ROTATOR}",
            [{"verbs": ["*"], "resources": ["*"], "namespaces": self.kubernetes_namespaces}],
        )
        kubeconfig = self.kubernetes.kubeconfig(token, self.kubernetes_namespaces[0])
        self.connections["kubernetes_default"] = {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}

    def _start_aws(self) -> None:
        """moto's server (AWS Secrets Manager), from an empty account."""
        import boto3
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request moto serves to whatever stream logging was configured with first.
        werkzeug = logging.getLogger("werkzeug")
        was_disabled, werkzeug.disabled = werkzeug.disabled, True
        self._stack.callback(setattr, werkzeug, "disabled", was_disabled)
        moto = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        moto.start()
        self._stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        # moto's backends are process-wide: start from an empty account whatever ran before in this process.
        import requests

        requests.post(f"{self.moto_url}/moto-api/reset", timeout=5).raise_for_status()
        self.aws = boto3.client(
            "secretsmanager",
            endpoint_url=self.moto_url,
            region_name=AWS_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.route_aws_through(self.moto_url)

    def route_aws_through(self, endpoint_url: str) -> None:
        """Point the ``aws_default`` connection at ``endpoint_url`` (moto itself, or a front in front of it)."""
        self.connections["aws_default"] = {
            "conn_type": "aws",
            "login": AWS_ACCESS_KEY,
            "password": AWS_SECRET_KEY,
            "extra": {"region_name": AWS_REGION, "endpoint_url": endpoint_url},
        }

    # -- seeding: one consumer target holding ``value``; each returns the inventory entry ------------------

    def _seeded(self, consumer: SeededConsumer) -> dict[str, Any]:
        if consumer.name in self.seeded:
            raise ValueError(f"a consumer named {consumer.name!r} was seeded already")
        self.seeded[consumer.name] = consumer
        return consumer.entry

    def add_vault_kv(
        self, name: str, value: str, *, path: str, field: str = VARIABLE, keep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A Vault KV v2 secret at ``path`` (on ``vault_mount``) whose ``field`` holds ``value``, beside ``keep``."""
        if self.vault is None or self.vault_mount is None:
            raise ValueError("vault_kv consumers need the fleet's vault and vault_mount")
        mount = self.vault_mount
        kv = self.vault().secrets.kv.v2
        kv.create_or_update_secret(path=path, secret={**(keep or {}), field: value}, mount_point=mount)

        def read() -> str | None:
            try:
                response = kv.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
            except InvalidPath:
                return None
            return (response["data"]["data"] or {}).get(field)

        def version() -> int:
            return kv.read_secret_metadata(path=path, mount_point=mount)["data"]["current_version"]

        entry = {"name": name, "kind": "vault_kv", "path": path, "field": field}
        return self._seeded(SeededConsumer(entry, f"Vault {mount}/{path}, field {field}", path, read, version))

    def add_kosli_cli_config(self, name: str, value: str, *, path: Path, host: str) -> dict[str, Any]:
        """A Kosli CLI config file (only its owner may read it) for the fleet's org, with ``value`` as api-token."""
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump({"org": self.org, "host": host, "api-token": value})
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(text)

        def read() -> str | None:
            try:
                return (yaml.safe_load(path.read_text()) or {}).get("api-token")
            except FileNotFoundError:
                return None

        def stamp() -> tuple[int, int]:
            stat = os.stat(path)
            return (stat.st_ino, stat.st_mtime_ns)

        entry = {"name": name, "kind": "kosli_cli_config", "path": str(path)}
        return self._seeded(SeededConsumer(entry, f"Kosli CLI config {path}", str(path), read, stamp))

    def add_github_actions(
        self, name: str, value: str, *, repository: str, canary_workflow: str | None = "kosli-canary.yml"
    ) -> dict[str, Any]:
        """A repository secret of the org's ``repository``, and a ``workflow_dispatch`` canary that uses it."""
        github = self.github
        github.add_repo(repository)
        github.set_secret(repository, VARIABLE, value)
        entry: dict[str, Any] = {"name": name, "kind": "github_actions", "repository": repository}
        canary_runs = None
        if canary_workflow:
            github.add_workflow(repository, canary_workflow, secret=VARIABLE)
            entry["canary"] = {"workflow": canary_workflow}

            def canary_runs() -> list[str]:
                runs = [run for run in github.runs(repository) if run["workflow"] == canary_workflow]
                return [run["conclusion"] if run["status"] == "completed" else RUNNING for run in runs]

        return self._seeded(
            SeededConsumer(
                entry,
                f"GitHub {repository}, secret {VARIABLE}",
                repository,
                read=lambda: github.secret_value(repository, VARIABLE),
                write_mark=lambda: _requests_to(github, "put_secret"),
                canary_runs=canary_runs,
                canary=f"workflow {canary_workflow}" if canary_workflow else "",
            )
        )

    def add_gitlab_ci(self, name: str, value: str, *, project: str) -> dict[str, Any]:
        """A masked, raw CI/CD variable of ``project`` (a project of the org's group)."""
        gitlab = self.gitlab
        gitlab.add_project(project)
        gitlab.set_variable(VARIABLE, value, project=project, masked=True, raw=True)
        entry = {"name": name, "kind": "gitlab_ci", "project": project}
        return self._seeded(
            SeededConsumer(
                entry,
                f"GitLab {project}, variable {VARIABLE}",
                project,
                read=lambda: gitlab.stored_value(VARIABLE, project=project),
                write_mark=lambda: gitlab.stats()["variable_writes"],
            )
        )

    def add_jenkins_credential(
        self, name: str, value: str, *, credential_id: str, canary_job: str | None = "canaries/kosli-check"
    ) -> dict[str, Any]:
        """A Secret-text credential in the system store, and a canary job that binds it."""
        jenkins = self.jenkins
        jenkins.put_credential(credential_id, value, description=f"Kosli API key ({name})")
        entry: dict[str, Any] = {"name": name, "kind": "jenkins_credential", "credential_id": credential_id}
        canary_runs = None
        if canary_job:
            jenkins.add_job(canary_job, credential_id=credential_id)
            entry["canary"] = {"job": canary_job}

            def canary_runs() -> list[str]:
                return [
                    RUNNING if build["building"] or build["result"] is None else build["result"].lower()
                    for build in jenkins.builds(canary_job)
                ]

        def read() -> str | None:
            try:
                return jenkins.stored_credential(credential_id)["secret"]
            except LookupError:
                return None

        return self._seeded(
            SeededConsumer(
                entry,
                f"Jenkins credential {credential_id}",
                credential_id,
                read=read,
                write_mark=lambda: _requests_to(jenkins, "create_credentials", "update_credential_config"),
                canary_runs=canary_runs,
                canary=f"job {canary_job}" if canary_job else "",
            )
        )

    def add_circleci_env(
        self,
        name: str,
        value: str,
        *,
        context: str,
        canary_project: str | None = None,
        by_name: bool = False,
    ) -> dict[str, Any]:
        """A variable of context ``context`` of the org, and optionally a project whose canary pipeline reads it.

        The entry names the context by its id, or by owner and name when ``by_name``.
        """
        circleci = self.circleci
        context_id = circleci.add_context(self.circleci_owner, context)
        circleci.set_context_variable(context_id, VARIABLE, value)
        target: dict[str, Any] = (
            {"context": {"owner_slug": self.circleci_owner, "name": context}} if by_name else {"context_id": context_id}
        )
        entry: dict[str, Any] = {"name": name, "kind": "circleci_env", **target}
        canary_runs = None
        if canary_project:
            circleci.add_project(canary_project, contexts=[context])
            entry["canary"] = {"project_slug": canary_project}

            def canary_runs() -> list[str]:
                return [
                    {"success": SUCCESS, "failed": FAILURE}.get(workflow["status"], RUNNING)
                    for pipeline in circleci.pipelines(canary_project)
                    for workflow in pipeline["workflows"]
                ]

        def read() -> str | None:
            held = circleci.context_variable(context_id, VARIABLE)
            return held["value"] if held else None

        return self._seeded(
            SeededConsumer(
                entry,
                f"CircleCI context {self.circleci_owner}/{context}, variable {VARIABLE}",
                context_id,
                read=read,
                write_mark=lambda: _requests_to(circleci, "put_context_variable"),
                canary_runs=canary_runs,
                canary=f"pipeline of {canary_project}" if canary_project else "",
            )
        )

    def add_kubernetes_secret(
        self,
        name: str,
        value: str,
        *,
        secret_name: str = "kosli-api-token",
        data_key: str = "key",
        deployment: str | None = None,
        namespace: str | None = None,
        replicas: int = 2,
    ) -> dict[str, Any]:
        """A Secret (in the first of the fleet's namespaces by default) and a Deployment whose pods read it at
        start; the entry asks for the Deployment's restart."""
        kubernetes = self.kubernetes
        namespace = namespace or self.kubernetes_namespaces[0]
        kubernetes.put_secret(namespace, secret_name, {data_key: value})
        entry: dict[str, Any] = {
            "name": name,
            "kind": "kubernetes_secret",
            "namespace": namespace,
            "secret_name": secret_name,
            "data_key": data_key,
        }
        pod_fingerprints = None
        if deployment:
            kubernetes.add_workload(
                "Deployment", namespace, deployment, replicas=replicas, secret=secret_name, key=data_key
            )
            entry["restart"] = [{"kind": "Deployment", "name": deployment}]
            entry["rollout_timeout_seconds"] = 60

            def pod_fingerprints() -> list[str | None]:
                return kubernetes.pod_fingerprints("Deployment", namespace, deployment)

        def read() -> str | None:
            return (kubernetes.secret_data(namespace, secret_name) or {}).get(data_key)

        def marks() -> tuple[int, int] | int:
            writes = kubernetes.secret_writes(namespace, secret_name)
            if not deployment:
                return writes
            return (writes, kubernetes.workload("Deployment", namespace, deployment)["metadata"]["generation"])

        return self._seeded(
            SeededConsumer(
                entry,
                f"Kubernetes Secret {namespace}/{secret_name}, data key {data_key!r}",
                namespace,
                read=read,
                write_mark=marks,
                canary=f"Deployment {deployment} restarted" if deployment else "",
                pod_fingerprints=pod_fingerprints,
            )
        )

    def add_aws_secrets_manager(self, name: str, value: str, *, secret_id: str) -> dict[str, Any]:
        """A Secrets Manager secret whose whole value is ``value``."""
        aws = self.aws
        aws.create_secret(Name=secret_id, SecretString=value)

        def read() -> str | None:
            try:
                return aws.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
            except aws.exceptions.ResourceNotFoundException:
                return None

        def versions() -> int:
            listed = aws.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
            return len(listed["Versions"])

        entry = {"name": name, "kind": "aws_secrets_manager", "secret_id": secret_id}
        return self._seeded(
            SeededConsumer(entry, f"AWS Secrets Manager {secret_id} ({AWS_REGION})", secret_id, read, versions)
        )

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


def _requests_to(server: Any, *handlers: str) -> int:
    """Requests a sandbox served with these handlers (the sandbox counts every request by handler)."""
    counts = server.stats()["requests"]
    return sum(counts.get(handler, 0) for handler in handlers)
