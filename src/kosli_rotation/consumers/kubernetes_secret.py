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

Calls go through ``consumers.transport`` (one retry policy, the API server's ``Retry-After``, refusals that say what
to fix); the restarts and rollout waits are in ``_kubernetes_rollout``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kosli_rotation.consumers._kubernetes_client import KubernetesApis, build_apis, classify, status_error
from kosli_rotation.consumers._kubernetes_rollout import RESTARTED_AT, ExpectedStatus, Rollouts, parse_time
from kosli_rotation.consumers._kubernetes_rollout import now as _now
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.consumers.transport import Fixes, Transport
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint

__all__ = ["RESTARTED_AT", "KubernetesSecretConfig", "KubernetesSecretConsumer", "RestartTarget"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

WRITTEN_AT = "kosli-key-rotation/written-at"
#: Display only (the short fingerprint): never compared, a 48-bit prefix proves nothing.
WRITTEN_FINGERPRINT = "kosli-key-rotation/written-fingerprint"
#: The full digest of the value we wrote: what ``written-at`` is trusted by.
WRITTEN_DIGEST = "kosli-key-rotation/written-digest"

#: How often rollout status is polled while waiting.
ROLLOUT_POLL_SECONDS = 1.0
#: Tolerated clock difference when a workload's restart is compared with the Vault store time.
CLOCK_SKEW_SECONDS = 2.0
#: What the user must change when the API server refuses (what was refused, and in which namespace, is named).
FIXES = Fixes(
    unauthorized="renew the token or client certificate in that connection's kubeconfig",
    forbidden="grant it that verb with a Role and RoleBinding in that namespace",
    not_found="fix the consumer's namespace, secret_name or restart list",
)


#: Kubernetes' two name rules: the longest name, its pattern, and the rule said for people.
DNS_LABEL = (
    63,
    DNS1123_LABEL,
    "label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
)
DNS_SUBDOMAIN = (
    253,
    DNS1123_SUBDOMAIN,
    "subdomain: at most 253 lower-case letters, digits, '-' and '.', each dot-separated part starting and ending "
    "with a letter or digit",
)


def _dns_name(value: str, what: str, rule: tuple[int, re.Pattern[str], str]) -> str:
    longest, pattern, said = rule
    if len(value) > longest or not pattern.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1123 {said}")
    return value


class RestartTarget(BaseModel):
    """A workload whose pods read the Secret at start, so they must be restarted to pick up a new key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["Deployment", "StatefulSet"]
    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return _dns_name(name, "workload name", DNS_SUBDOMAIN)

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
        return _dns_name(namespace, "namespace", DNS_LABEL)

    @field_validator("secret_name")
    @classmethod
    def _valid_secret_name(cls, name: str) -> str:
        return _dns_name(name, "secret_name", DNS_SUBDOMAIN)

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


class KubernetesSecretConsumer(Consumer[KubernetesSecretConfig]):
    """Creates the Secret (type Opaque) or patches only its key, then restarts and waits for listed workloads."""

    kind = "kubernetes_secret"
    readable = True

    def __init__(self, config: KubernetesSecretConfig) -> None:
        super().__init__(config)
        self._built: KubernetesApis | None = None
        self._transport: Transport | None = None
        self.rollouts = Rollouts(self.name, config.namespace, config.conn_id, lambda: self._apis().apps, self._request)

    # -- description -------------------------------------------------------------------------------------

    @property
    def _secret_ref(self) -> str:
        return f"Secret {self.config.namespace}/{self.config.secret_name}"

    def describe(self) -> str:
        restarts = ", ".join(target.ref for target in self.config.restart)
        then = f", then rollout restart of {restarts}" if restarts else ""
        return f"Kubernetes {self._secret_ref}, key {self.config.data_key}{then} (connection {self.config.conn_id})"

    # -- the client ---------------------------------------------------------------------------------------

    def _apis(self) -> KubernetesApis:
        """The client, built on first use (DAG parsing stays offline), and the transport its calls go through."""
        if self._built is None:
            self._built = build_apis(self.name, self.config.conn_id)
            self._transport = Transport(
                consumer=self.name,
                service=f"Kubernetes API {self._built.server}",
                conn_id=self.config.conn_id,
                classify=classify,
                fixes=FIXES,
            )
        return self._built

    def _request(self, doing: str, action: Callable[[], T], *, expect: tuple[int, ...] = ()) -> T:
        """One API call through the transport. Statuses in ``expect`` come back at once as ``ExpectedStatus`` for
        the caller to handle; every other failure becomes a ``ConsumerError`` that says what to fix."""
        from kubernetes.client.exceptions import ApiException

        self._apis()
        assert self._transport is not None

        def attempt() -> T:
            try:
                return action()
            except ApiException as error:
                if error.status in expect:
                    raise ExpectedStatus(error.status) from None
                raise status_error(error) from None

        return self._transport.call(attempt, doing)

    # -- reading -----------------------------------------------------------------------------------------

    def _read_secret(self) -> Any | None:
        core = self._apis().core
        try:
            return self._request(
                f"get {self._secret_ref}",
                lambda: core.read_namespaced_secret(self.config.secret_name, self.config.namespace),
                expect=(404,),
            )
        except ExpectedStatus:
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
        return parse_time(annotations.get(WRITTEN_AT))

    def read_digest(self) -> str | None:
        value = self._held_value(self._read_secret())
        return digest(value) if value else None

    # -- access --------------------------------------------------------------------------------------------

    def check_access(self) -> None:
        """Reach the API, read the Secret (or its namespace), and ask the API server (SelfSubjectAccessReview,
        as ``kubectl auth can-i`` does) whether we may patch or create it and patch each restart target."""
        core = self._apis().core
        namespace = self.config.namespace
        if self._read_secret() is None:
            try:
                self._request(f"get namespace {namespace}", lambda: core.read_namespace(namespace), expect=(403, 404))
            except ExpectedStatus as error:
                if error.status == 404:
                    raise ConsumerError(
                        self.name,
                        f"namespace {namespace} does not exist in {self._apis().server} (connection "
                        f"{self.config.conn_id!r}): create it or fix the consumer's namespace",
                        retryable=False,
                    ) from None
                log.info("Cannot read namespace %s (403); creating %s will tell", namespace, self._secret_ref)
            self._require("create", "secrets", "")
        else:
            self._require("patch", "secrets", "", self.config.secret_name)
        for target in self.config.restart:
            self.rollouts.check_restartable(target, self.rollouts.read(target))
            self._require("patch", f"{target.kind.lower()}s", "apps", target.name)

    def _require(self, verb: str, resource: str, group: str, name: str | None = None) -> None:
        from kubernetes.client import (
            V1ResourceAttributes,
            V1SelfSubjectAccessReview,
            V1SelfSubjectAccessReviewSpec,
        )

        authorization = self._apis().authorization
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
        except ExpectedStatus:
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
            workload = self.rollouts.read(target)
            state = self.rollouts.state(target, workload)
            if state.restarted_since(written_at):
                log.info("%s was already restarted at %s, after the Secret changed", target.ref, state.restarted_at)
                continue
            self.rollouts.check_restartable(target, workload)
            self.rollouts.restart(target)
        self.rollouts.wait(
            self.config.restart,
            written_at=written_at,
            deadline=deadline,
            timeout_seconds=self.config.rollout_timeout_seconds,
            poll_seconds=ROLLOUT_POLL_SECONDS,
        )

    def _store(self, key: str) -> datetime:
        """Put ``key`` into the Secret unless it is there; return when it was written (our annotation)."""
        core = self._apis().core
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
            except ExpectedStatus:
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
        states = [self.rollouts.state(target) for target in self.config.restart]
        ok = reference is not None and all(state.done and state.restarted_since(reference) for state in states)
        since = reference.isoformat() if reference else "an unknown time"
        detail += f", written {since}; " + "; ".join(state.describe() for state in states)
        return Verification(ok, "read back + rollout status", detail)

    def holds(self, key: str) -> bool:
        """The Secret holds ``key`` and every restart target has finished restarting since it was written."""
        return self._assess(key).ok

    def verify(self, key: str, written_at: float) -> Verification:
        return self._assess(key, written_at)
