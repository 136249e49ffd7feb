"""A key in a Kubernetes Secret, such as the one the Kosli k8s reporter reads, and the workloads that read it.

The Kosli k8s reporter (Helm chart ``k8s-reporter``) reads Secret ``kosli-api-token``, key ``key``, into
``KOSLI_API_TOKEN``. The chart is a CronJob: every run starts a new pod that reads the Secret then, so the next
run uses the new key and nothing needs restarting. Long-running pods (Deployments, StatefulSets) only read an
env var from a Secret when they start: list them under ``restart`` and each gets a rollout restart exactly like
``kubectl rollout restart``, then is waited for the way ``kubectl rollout status`` decides completion.

Idempotence across failures: the Secret carries annotations written in the same patch as the value,
``kosli-key-rotation/written-digest`` (the full SHA-256 digest, compared), ``kosli-key-rotation/written-at`` and,
for people only, ``kosli-key-rotation/written-fingerprint`` (its short form). A Secret annotated by an older version
(a fingerprint but no digest) counts as not written by us: it is written again. A workload whose pod template's
``kubectl.kubernetes.io/restartedAt`` is at or after ``written-at`` has been restarted for this value. So a rerun
after a failure neither writes the Secret again nor restarts twice, yet still restarts what was missed and waits
for rollouts that had not finished; and a rollback to an older template is noticed and restarted again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.retrying import backoff_delay, call_with_retries, retry_after_seconds
from kosli_rotation.safe_yaml import describe_yaml_error
from kosli_rotation.scrub import describe_error

log = logging.getLogger(__name__)
T = TypeVar("T")

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
WRITTEN_AT = "kosli-key-rotation/written-at"
#: Display only (the short fingerprint): never compared, a 48-bit prefix proves nothing.
WRITTEN_FINGERPRINT = "kosli-key-rotation/written-fingerprint"
#: The full digest of the value we wrote: what ``written-at`` is trusted by.
WRITTEN_DIGEST = "kosli-key-rotation/written-digest"

#: Retry budget for one API call: attempts, overall seconds, and the longest single wait honoured.
MAX_ATTEMPTS = 5
RETRY_BUDGET_SECONDS = 180.0
MAX_SINGLE_WAIT = 60.0
#: How often rollout status is polled while waiting.
ROLLOUT_POLL_SECONDS = 1.0
#: Tolerated clock difference when a workload's restart is compared with the Vault store time.
CLOCK_SKEW_SECONDS = 2.0


def _dns_label(value: str, what: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS-1123 label: at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _dns_subdomain(value: str, what: str) -> str:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS-1123 subdomain: at most 253 lower-case letters, digits, '-' and '.', "
            "each dot-separated part starting and ending with a letter or digit"
        )
    return value


class RestartTarget(BaseModel):
    """A workload whose pods read the Secret at start, so they must be restarted to pick up a new key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["Deployment", "StatefulSet"]
    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return _dns_subdomain(name, "workload name")

    @property
    def ref(self) -> str:
        """``deployment/web``, as kubectl names it."""
        return f"{self.kind.lower()}/{self.name}"


class KubernetesSecretConfig(ConsumerConfig):
    kind: Literal["kubernetes_secret"]
    conn_id: str = Field(default="kubernetes_default", description="Airflow connection of type 'kubernetes'.")
    namespace: str
    secret_name: str = Field(default="kosli-api-token", description="The k8s reporter chart's default.")
    data_key: str = Field(default="key", description="The k8s reporter chart's default key.")
    restart: tuple[RestartTarget, ...] = Field(
        default=(), description="Deployments/StatefulSets to rollout-restart after a change. A CronJob needs none."
    )
    rollout_timeout_seconds: float = Field(default=600, gt=0, description="Wait at most this long for rollouts.")

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, namespace: str) -> str:
        return _dns_label(namespace, "namespace")

    @field_validator("secret_name")
    @classmethod
    def _valid_secret_name(cls, name: str) -> str:
        return _dns_subdomain(name, "secret_name")

    @field_validator("data_key")
    @classmethod
    def _valid_data_key(cls, key: str) -> str:
        if len(key) > 253 or not SECRET_KEY.match(key) or key in (".", ".."):
            raise ValueError(f"data_key {key!r} must be letters, digits, '-', '_' or '.' (at most 253, not . or ..)")
        return key

    @field_validator("restart")
    @classmethod
    def _no_duplicates(cls, targets: tuple[RestartTarget, ...]) -> tuple[RestartTarget, ...]:
        refs = [target.ref for target in targets]
        duplicates = sorted({ref for ref in refs if refs.count(ref) > 1})
        if duplicates:
            raise ValueError(f"restart lists {', '.join(duplicates)} more than once")
        return targets


class _ApiError(Exception):
    """One failed API call, reduced to what decides retries and error messages (never a request body)."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        retry_after: float | None = None,
        connection_failed: bool = False,
    ) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.connection_failed = connection_failed

    @property
    def transient(self) -> bool:
        """429 (API Priority and Fairness), 5xx, refused/reset connections and timeouts may pass."""
        return self.connection_failed or self.status == 429 or self.status >= 500

    @classmethod
    def from_api_exception(cls, error: Any) -> _ApiError:
        """From the client's ApiException: the API server's ``Status`` message, else the HTTP reason."""
        message = ""
        try:
            body = json.loads(error.body or "")
            message = str(body.get("message", ""))[:500] if isinstance(body, dict) else ""
        except (TypeError, ValueError):
            pass
        headers = error.headers or {}
        return cls(
            int(error.status or 0),
            str(error.reason or ""),
            message or str(error.reason or "no message"),
            retry_after=retry_after_seconds(headers.get("Retry-After")),
        )


def _retry_delay(error: Exception, attempt: int) -> float | None:
    """Retry transient API errors, honouring ``Retry-After`` (capped); anything else stops at once."""
    if not isinstance(error, _ApiError) or not error.transient:
        return None
    if error.retry_after is not None:
        return min(error.retry_after, MAX_SINGLE_WAIT)
    return backoff_delay(attempt)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 / ISO time as kubectl or we wrote it; None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _RolloutState:
    """One restart target as it stands: restarted for the current value? rolled out?"""

    target: RestartTarget
    restarted_at: datetime | None
    done: bool
    progress: str  # kubectl rollout status's wording of where it is
    failure: str | None = None  # a rollout that will not finish by waiting

    def restarted_since(self, moment: datetime | None) -> bool:
        return moment is not None and self.restarted_at is not None and self.restarted_at >= moment

    def describe(self) -> str:
        restarted = self.restarted_at.isoformat() if self.restarted_at else "never"
        return f"{self.target.ref}: {self.failure or self.progress} (restartedAt {restarted})"


def rollout_status(kind: str, workload: Any) -> tuple[bool, str, str | None]:
    """``(done, progress, failure)`` decided as ``kubectl rollout status`` does for ``workload`` (a client model)."""
    generation = workload.metadata.generation or 0
    status = workload.status
    observed = (status.observed_generation if status else None) or 0
    desired = 1 if workload.spec.replicas is None else workload.spec.replicas
    name = workload.metadata.name
    if kind == "Deployment":
        if observed < generation:
            return False, "waiting for the deployment spec update to be observed", None
        conditions = (status.conditions if status else None) or []
        progressing = next((condition for condition in conditions if condition.type == "Progressing"), None)
        if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
            return False, "stalled", f"deployment {name!r} exceeded its progress deadline"
        updated = status.updated_replicas or 0
        replicas = status.replicas or 0
        available = status.available_replicas or 0
        if updated < desired:
            return False, f"{updated} out of {desired} new replicas have been updated", None
        if replicas > updated:
            return False, f"{replicas - updated} old replicas are pending termination", None
        if available < updated:
            return False, f"{available} of {updated} updated replicas are available", None
        return True, f"successfully rolled out ({updated}/{desired} replicas updated and available)", None
    if not observed or generation > observed:
        return False, "waiting for the statefulset spec update to be observed", None
    ready = status.ready_replicas or 0
    if ready < desired:
        return False, f"waiting for {desired - ready} pods to be ready", None
    if status.update_revision != status.current_revision:
        updated = status.updated_replicas or 0
        return False, f"waiting for the rolling update to complete: {updated} pods at {status.update_revision}", None
    return True, f"rolling update complete: {desired} pods at revision {status.current_revision}", None


def _client_problem(error: BaseException) -> str:
    """What went wrong building the client, never the kubeconfig's text: a YAML error (PyYAML quotes the line it
    broke on, often the token line) by its type and position only; anything else scrubbed."""
    import yaml

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return f"{type(cause).__name__} at {describe_yaml_error(cause)} in its kubeconfig"
    return f"{type(error).__name__}: {describe_error(error)}"


class KubernetesSecretConsumer(Consumer[KubernetesSecretConfig]):
    """Creates the Secret (type Opaque) or patches only its key, then restarts and waits for listed workloads."""

    kind = "kubernetes_secret"
    readable = True

    def __init__(self, config: KubernetesSecretConfig) -> None:
        super().__init__(config)
        self._apis: tuple[Any, Any, Any] | None = None
        self._server = "<not connected>"

    # -- description -------------------------------------------------------------------------------------

    @property
    def _secret_ref(self) -> str:
        return f"Secret {self.config.namespace}/{self.config.secret_name}"

    def describe(self) -> str:
        restarts = ", ".join(target.ref for target in self.config.restart)
        then = f", then rollout restart of {restarts}" if restarts else ""
        return f"Kubernetes {self._secret_ref}, key {self.config.data_key}{then} (connection {self.config.conn_id})"

    # -- the client ---------------------------------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any, Any]:
        """CoreV1Api, AppsV1Api and AuthorizationV1Api from the provider's hook, built on first use."""
        if self._apis is None:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
            from kubernetes.client import AuthorizationV1Api, rest

            from kosli_rotation.held_credentials import hold_kube_credentials

            try:
                hook = KubernetesHook(conn_id=self.config.conn_id)
                api_client = hook.api_client
            except Exception as error:  # missing connection, bad kubeconfig, conflicting options
                raise ConsumerError(
                    self.name,
                    f"cannot build a Kubernetes client from connection {self.config.conn_id!r} "
                    f"({_client_problem(error)}); fix the connection's kube_config / kube_config_path / "
                    "in_cluster extras",
                    retryable=False,
                ) from None
            hold_kube_credentials(api_client.configuration)  # token, password, client key; refreshed tokens too
            # One retry policy, ours (call_with_retries): turn off urllib3's default of 3 immediate retries
            # per request, which would multiply every attempt below and ignore Retry-After.
            api_client.configuration.retries = False
            api_client.rest_client = rest.RESTClientObject(api_client.configuration)
            self._server = api_client.configuration.host
            self._apis = (hook.core_v1_client, hook.apps_v1_client, AuthorizationV1Api(api_client))
        return self._apis

    def _request(self, doing: str, action: Callable[[], T], *, expect: tuple[int, ...] = ()) -> T:
        """Run one API call with bounded retries. Statuses in ``expect`` come back as ``_ApiError`` for the
        caller to handle; every other failure becomes a ``ConsumerError`` that says what to fix."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        def attempt() -> T:
            try:
                return action()
            except ApiException as error:
                raise _ApiError.from_api_exception(error) from None
            except HTTPError as error:  # connection refused/reset, timeouts
                raise _ApiError(0, "", f"{type(error).__name__}: {error}", connection_failed=True) from None

        try:
            return call_with_retries(
                attempt,
                delay_for=_retry_delay,
                what=f"{doing} ({self._server})",
                max_attempts=MAX_ATTEMPTS,
                deadline=time.monotonic() + RETRY_BUDGET_SECONDS,
            )
        except _ApiError as error:
            if error.status in expect:
                raise
            raise self._consumer_error(error, doing) from None

    def _consumer_error(self, error: _ApiError, doing: str) -> ConsumerError:
        connection = f"connection {self.config.conn_id!r}"
        if error.status == 401:
            message = (
                f"the Kubernetes API {self._server} refused the credentials of {connection} while trying to {doing} "
                "(401 Unauthorized): renew the token or client certificate in that connection's kubeconfig"
            )
            return ConsumerError(self.name, message, retryable=False)
        if error.status == 403:
            message = (
                f"the user of {connection} may not {doing} ({error.message}): grant it that verb with a Role and "
                f"RoleBinding in namespace {self.config.namespace}"
            )
            return ConsumerError(self.name, message, retryable=False)
        if error.transient:
            message = f"could not {doing} at {self._server}: {error}; gave up after retries"
            return ConsumerError(self.name, message, retryable=True)
        return ConsumerError(self.name, f"could not {doing} ({connection}): {error}", retryable=False)

    # -- reading -----------------------------------------------------------------------------------------

    def _read_secret(self) -> Any | None:
        core, _, _ = self._clients()
        try:
            return self._request(
                f"get {self._secret_ref}",
                lambda: core.read_namespaced_secret(self.config.secret_name, self.config.namespace),
                expect=(404,),
            )
        except _ApiError:
            return None

    def _held_value(self, secret: Any | None) -> str | None:
        encoded = ((secret.data if secret else None) or {}).get(self.config.data_key)
        if not encoded:
            return None
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    @staticmethod
    def _annotations(obj: Any) -> dict[str, str]:
        return dict((obj.metadata.annotations if obj and obj.metadata else None) or {})

    def _written_at(self, secret: Any, key: str) -> datetime | None:
        """When we wrote ``key`` into the Secret, if its annotations say so for this very value (by full digest;
        an older version's fingerprint-only annotations do not count, so the value is written again)."""
        annotations = self._annotations(secret)
        if annotations.get(WRITTEN_DIGEST) != digest(key):
            return None
        return _parse_time(annotations.get(WRITTEN_AT))

    def read_digest(self) -> str | None:
        value = self._held_value(self._read_secret())
        return digest(value) if value else None

    def _read_workload(self, target: RestartTarget) -> Any:
        _, apps, _ = self._clients()
        read = apps.read_namespaced_deployment if target.kind == "Deployment" else apps.read_namespaced_stateful_set
        try:
            return self._request(
                f"get {target.ref} in namespace {self.config.namespace}",
                lambda: read(target.name, self.config.namespace),
                expect=(404,),
            )
        except _ApiError:
            raise ConsumerError(
                self.name,
                f"{target.ref} does not exist in namespace {self.config.namespace} (connection "
                f"{self.config.conn_id!r}): fix the consumer's restart list",
                retryable=False,
            ) from None

    def _rollout_state(self, target: RestartTarget, workload: Any | None = None) -> _RolloutState:
        workload = workload if workload is not None else self._read_workload(target)
        template_metadata = workload.spec.template.metadata
        template_annotations = (template_metadata.annotations if template_metadata else None) or {}
        done, progress, failure = rollout_status(target.kind, workload)
        return _RolloutState(target, _parse_time(template_annotations.get(RESTARTED_AT)), done, progress, failure)

    def _check_restartable(self, target: RestartTarget, workload: Any) -> None:
        """Refuse what ``kubectl rollout restart`` cannot finish: paused, OnDelete or partitioned workloads."""
        problem = None
        if target.kind == "Deployment" and workload.spec.paused:
            problem = "is paused (run kubectl rollout resume first)"
        elif target.kind == "StatefulSet":
            strategy = workload.spec.update_strategy
            if strategy is not None and strategy.type == "OnDelete":
                problem = "uses updateStrategy OnDelete, so a restart replaces no pods"
            elif strategy is not None and strategy.rolling_update and (strategy.rolling_update.partition or 0) > 0:
                partition = strategy.rolling_update.partition
                problem = f"has a rollout partition of {partition}: pods below it would keep the old key"
        if problem:
            raise ConsumerError(
                self.name, f"{target.ref} in namespace {self.config.namespace} {problem}", retryable=False
            )

    # -- access --------------------------------------------------------------------------------------------

    def check_access(self) -> None:
        """Reach the API, read the Secret (or its namespace), and ask the API server (SelfSubjectAccessReview,
        as ``kubectl auth can-i`` does) whether we may patch or create it and patch each restart target."""
        core, _, _ = self._clients()
        namespace = self.config.namespace
        if self._read_secret() is None:
            try:
                self._request(f"get namespace {namespace}", lambda: core.read_namespace(namespace), expect=(403, 404))
            except _ApiError as error:
                if error.status == 404:
                    raise ConsumerError(
                        self.name,
                        f"namespace {namespace} does not exist in {self._server} (connection "
                        f"{self.config.conn_id!r}): create it or fix the consumer's namespace",
                        retryable=False,
                    ) from None
                log.info("Cannot read namespace %s (403); creating %s will tell", namespace, self._secret_ref)
            self._require("create", "secrets", "")
        else:
            self._require("patch", "secrets", "", self.config.secret_name)
        for target in self.config.restart:
            self._check_restartable(target, self._read_workload(target))
            self._require("patch", f"{target.kind.lower()}s", "apps", target.name)

    def _require(self, verb: str, resource: str, group: str, name: str | None = None) -> None:
        from kubernetes.client import (
            V1ResourceAttributes,
            V1SelfSubjectAccessReview,
            V1SelfSubjectAccessReviewSpec,
        )

        _, _, authorization = self._clients()
        attributes = V1ResourceAttributes(
            namespace=self.config.namespace, verb=verb, group=group, resource=resource, name=name
        )
        review = V1SelfSubjectAccessReview(spec=V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
        what = f"{resource}/{name}" if name else resource
        try:
            answer = self._request(
                f"review access to {verb} {what}",
                lambda: authorization.create_self_subject_access_review(review),
                expect=(403, 404),
            )
        except _ApiError:
            log.warning("Cannot ask the API server whether we may %s %s; the write will tell", verb, what)
            return
        if not answer.status.allowed:
            raise ConsumerError(
                self.name,
                f"the user of connection {self.config.conn_id!r} may not {verb} {what} in namespace "
                f"{self.config.namespace}: grant it with a Role and RoleBinding there",
                retryable=False,
            )

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, key: str) -> None:
        written_at = self._store(key)
        if not self.config.restart:
            return
        deadline = time.monotonic() + self.config.rollout_timeout_seconds
        for target in self.config.restart:
            workload = self._read_workload(target)
            state = self._rollout_state(target, workload)
            if state.restarted_since(written_at):
                log.info("%s was already restarted at %s, after the Secret changed", target.ref, state.restarted_at)
                continue
            self._check_restartable(target, workload)
            self._restart(target)
        self._wait_for_rollouts(written_at, deadline)

    def _store(self, key: str) -> datetime:
        """Put ``key`` into the Secret unless it is there; return when it was written (our annotation)."""
        core, _, _ = self._clients()
        secret = self._read_secret()
        key_fingerprint = fingerprint(key)
        if secret is not None and self._held_value(secret) == key and (stamp := self._written_at(secret, key)):
            log.info("%s already holds %s (written %s)", self._secret_ref, key_fingerprint, stamp.isoformat())
            return stamp
        now = _now()
        annotations = {WRITTEN_AT: now.isoformat(), WRITTEN_DIGEST: digest(key), WRITTEN_FINGERPRINT: key_fingerprint}
        encoded = base64.b64encode(key.encode()).decode()
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.config.secret_name,
                    "namespace": self.config.namespace,
                    "annotations": annotations,
                },
                "type": "Opaque",
                "data": {self.config.data_key: encoded},
            }
            try:
                self._request(
                    f"create {self._secret_ref}",
                    lambda: core.create_namespaced_secret(self.config.namespace, body),
                    expect=(409,),
                )
                log.info("Created %s with key %s = %s", self._secret_ref, self.config.data_key, key_fingerprint)
                return now
            except _ApiError:
                log.info("%s appeared meanwhile (409 AlreadyExists); patching it instead", self._secret_ref)
                secret = self._read_secret()
        # Only our key and our annotations: other keys, labels and annotations stay as they are.
        patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
        if self._held_value(secret) != key:
            patch["data"] = {self.config.data_key: encoded}
        self._request(
            f"patch {self._secret_ref}",
            lambda: core.patch_namespaced_secret(self.config.secret_name, self.config.namespace, patch),
        )
        log.info("Set key %s of %s to %s", self.config.data_key, self._secret_ref, key_fingerprint)
        return now

    def _restart(self, target: RestartTarget) -> None:
        """``kubectl rollout restart``: stamp the pod template, so the controller replaces every pod."""
        _, apps, _ = self._clients()
        restarted_at = _now().isoformat()
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}
        patch_workload = (
            apps.patch_namespaced_deployment if target.kind == "Deployment" else apps.patch_namespaced_stateful_set
        )
        self._request(
            f"patch {target.ref} in namespace {self.config.namespace}",
            lambda: patch_workload(target.name, self.config.namespace, patch),
        )
        log.info("Restarted %s in namespace %s (restartedAt %s)", target.ref, self.config.namespace, restarted_at)

    def _wait_for_rollouts(self, written_at: datetime, deadline: float) -> None:
        pending = list(self.config.restart)
        while True:
            states = [self._rollout_state(target) for target in pending]
            for state in states:
                if state.failure:
                    raise ConsumerError(
                        self.name,
                        f"{state.failure} in namespace {self.config.namespace}; the Secret holds the new key but "
                        "its pods do not run with it: fix the workload, then rerun",
                        retryable=False,
                    )
                if state.done:
                    log.info("Rollout of %s complete: %s", state.target.ref, state.progress)
            pending = [state.target for state in states if not state.done]
            if not pending:
                return
            if time.monotonic() + ROLLOUT_POLL_SECONDS > deadline:
                waiting = "; ".join(state.describe() for state in states if not state.done)
                raise ConsumerError(
                    self.name,
                    f"rollouts not complete after {self.config.rollout_timeout_seconds:g} s ({waiting}); the Secret "
                    f"holds the new key since {written_at.isoformat()}: a retry waits again without restarting",
                    retryable=True,
                )
            time.sleep(ROLLOUT_POLL_SECONDS)

    # -- verifying ----------------------------------------------------------------------------------------------

    def _assess(self, key: str, written_at: float | None = None) -> Verification:
        """Does the Secret hold ``key``, and does every restart target run pods started after it was written?"""
        key_fingerprint = fingerprint(key)
        secret = self._read_secret()
        value = self._held_value(secret)
        if value != key:
            held = fingerprint(value) if value else "nothing"
            return Verification(False, "read back", f"{self._secret_ref} holds {held}, expected {key_fingerprint}")
        resource_version = secret.metadata.resource_version
        detail = (
            f"{self._secret_ref} key {self.config.data_key} holds {key_fingerprint} "
            f"(resourceVersion {resource_version})"
        )
        if not self.config.restart:
            return Verification(True, "read back", detail)
        reference = self._written_at(secret, key)
        if reference is None and written_at is not None:
            # Not written by us (no annotations): pods must at least postdate the key's storage in Vault.
            reference = datetime.fromtimestamp(written_at - CLOCK_SKEW_SECONDS, UTC)
        states = [self._rollout_state(target) for target in self.config.restart]
        ok = reference is not None and all(state.done and state.restarted_since(reference) for state in states)
        since = reference.isoformat() if reference else "an unknown time"
        detail += f", written {since}; " + "; ".join(state.describe() for state in states)
        return Verification(ok, "read back + rollout status", detail)

    def holds(self, key: str) -> bool:
        """The Secret holds ``key`` and every restart target has finished restarting since it was written."""
        return self._assess(key).ok

    def verify(self, key: str, written_at: float) -> Verification:
        return self._assess(key, written_at)
