"""Kubernetes API sandbox: Secrets, Deployments and StatefulSets of a tiny cluster, served locally.

Contract: /work/shared/reference/ci_secret_apis.md section 5, checked against the official ``kubernetes`` client
(36.x) that the Airflow cncf-kubernetes provider hands out. It serves the paths that client uses for a Secret and
for ``kubectl rollout restart`` / ``kubectl rollout status``, with the API server's auth (bearer tokens, 401),
RBAC (403 with the real message), API Priority and Fairness (429 + ``Retry-After``) and ``Status`` error bodies.

Workloads are simulated: a pod-template change bumps ``metadata.generation`` and a background thread replaces the
pods one by one over ``rollout_seconds``; every simulated pod records the fingerprint of the Secret value it
started with (from the template's ``secretKeyRef``), so a test can prove restarted pods got the new key.
``stuck_rollouts`` freezes every rollout (a Deployment then reports ``ProgressDeadlineExceeded`` after its
``progressDeadlineSeconds``). Where the behaviour is chosen rather than known it is marked ``# Assumption:``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import json
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.server import (
    Abort,
    InvalidJSONBody,
    Request,
    Response,
    SandboxServer,
    json_response,
    non_negative_float,
    positive_float,
    route,
    strict_bool,
)

NAMESPACE = r"/api/v1/namespaces/(?P<namespace>[^/]+)"
SECRETS = rf"{NAMESPACE}/secrets"
SECRET = rf"{SECRETS}/(?P<name>[^/]+)"
WORKLOAD = r"/apis/apps/v1/namespaces/(?P<namespace>[^/]+)/(?P<plural>deployments|statefulsets)/(?P<name>[^/]+)"
ACCESS_REVIEWS = r"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"

STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
PATCH_TYPES = (STRATEGIC_MERGE_PATCH, MERGE_PATCH)

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
SECRET_KEY_MESSAGE = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
    "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600

#: What a user seeded without rules may do: everything (like cluster-admin).
CLUSTER_ADMIN = [{"verbs": ["*"], "resources": ["*"], "namespaces": ["*"]}]


@dataclass(frozen=True)
class _Resource:
    plural: str
    kind: str
    group: str
    api_version: str

    @property
    def qualified(self) -> str:
        """How the API server names the resource in messages: ``secrets``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def details(self, name: str | None = None, **extra: Any) -> dict[str, Any]:
        details: dict[str, Any] = {"name": name} if name else {}
        if self.group:
            details["group"] = self.group
        return {**details, "kind": self.plural, **extra}


NAMESPACES = _Resource("namespaces", "Namespace", "", "v1")
SECRET_RESOURCE = _Resource("secrets", "Secret", "", "v1")
DEPLOYMENTS = _Resource("deployments", "Deployment", "apps", "apps/v1")
STATEFULSETS = _Resource("statefulsets", "StatefulSet", "apps", "apps/v1")
WORKLOAD_RESOURCES = {resource.plural: resource for resource in (DEPLOYMENTS, STATEFULSETS)}
KIND_TO_PLURAL = {"Deployment": "deployments", "StatefulSet": "statefulsets"}


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The API server's ``Status`` object for a failed request."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _failure(
    code: int,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Abort:
    return Abort(json_response(code, status_body(code, reason, message, details), headers))


def _not_found(resource: _Resource, name: str) -> Abort:
    return _failure(404, "NotFound", f'{resource.qualified} "{name}" not found', resource.details(name))


def _invalid(resource: _Resource, name: str, field_path: str, message: str) -> Abort:
    cause = {"reason": "FieldValueInvalid", "message": message, "field": field_path}
    details = {"name": name, **({"group": resource.group} if resource.group else {}), "kind": resource.kind}
    return _failure(
        422,
        "Invalid",
        f'{resource.qualified_kind} "{name}" is invalid: {field_path}: {message}',
        {**details, "causes": [cause]},
    )


def _timestamp(epoch: float | None = None) -> str:
    """RFC 3339 in UTC with seconds, as ``creationTimestamp`` and condition times are serialized."""
    return datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fingerprint(value: str) -> str:
    """``sha256:`` and 12 hex digits: the same convention as the product's fingerprints, computed here."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class _Rule:
    """One RBAC rule: which verbs on which resources in which namespaces (``*`` = any), optionally by name."""

    verbs: frozenset[str]
    resources: frozenset[str]
    namespaces: frozenset[str]
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> _Rule:
        unknown = set(spec) - {"verbs", "resources", "namespaces", "names"}
        if unknown:
            raise ValueError(f"unknown rule fields {sorted(unknown)}")
        return cls(
            frozenset(spec.get("verbs", [])),
            frozenset(spec.get("resources", [])),
            frozenset(spec.get("namespaces", ["*"])),
            frozenset(spec.get("names", [])),
        )

    def allows(self, verb: str, resource: str, namespace: str, name: str | None) -> bool:
        def has(values: frozenset[str], value: str) -> bool:
            return "*" in values or value in values

        named = not self.names or (name is not None and name in self.names)
        return has(self.verbs, verb) and has(self.resources, resource) and has(self.namespaces, namespace) and named


@dataclass
class _User:
    name: str
    rules: list[_Rule]

    def may(self, verb: str, resource: str, namespace: str, name: str | None = None) -> bool:
        return any(rule.allows(verb, resource, namespace, name) for rule in self.rules)


@dataclass
class _Pod:
    name: str
    revision: str
    started_at: float
    started_with: dict[str, str | None]  # "<secret>/<key>" -> fingerprint of the value the pod started with

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "started_at": self.started_at,
            "started_with": dict(self.started_with),
        }


@dataclass
class _Workload:
    resource: _Resource
    obj: dict[str, Any]
    pods: list[_Pod] = field(default_factory=list)
    observed_revision: str = ""  # the template revision the controller last saw
    last_progress: float = 0.0  # monotonic time of the rollout's last step, for the progress deadline

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def generation(self) -> int:
        return self.obj["metadata"]["generation"]

    @property
    def desired_replicas(self) -> int:
        return self.obj["spec"].get("replicas", 1)

    @property
    def revision(self) -> str:
        """A hash of the pod template: a new one means a new ReplicaSet / controller revision."""
        template = json.dumps(self.obj["spec"]["template"], sort_keys=True)
        return hashlib.sha256(template.encode()).hexdigest()[:10]

    def secret_refs(self) -> list[tuple[str, str]]:
        """(secret, key) of every ``env[].valueFrom.secretKeyRef`` in the pod template's containers."""
        refs = []
        for container in self.obj["spec"]["template"].get("spec", {}).get("containers", []):
            for variable in container.get("env") or []:
                ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name") and ref.get("key"):
                    refs.append((ref["name"], ref["key"]))
        return refs


class KubernetesSandbox(SandboxServer):
    """The core/v1 Secret, apps/v1 Deployment/StatefulSet and SelfSubjectAccessReview endpoints of one cluster.

    ``rate_limit`` requests per ``rate_limit_window`` seconds per user give 429 (0 = off). ``rollout_seconds`` is
    how long a rollout of any size takes; ``stuck_rollouts`` stops every rollout from progressing.
    """

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "rollout_seconds": non_negative_float,
        "stuck_rollouts": strict_bool,
        "rate_limit": _non_negative_int,
        "rate_limit_window": positive_float,
    }

    def __init__(
        self,
        *,
        rollout_seconds: float = 0.5,
        stuck_rollouts: bool = False,
        rate_limit: int = 0,
        rate_limit_window: float = 1.0,
        latency: float = 0.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(latency=latency, access_log=access_log)
        self.rollout_seconds = rollout_seconds
        self.stuck_rollouts = stuck_rollouts
        self.rate_limiter = self.add_rate_limiter(rate_limit, rate_limit_window)
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._users: dict[str, _User] = {}  # bearer token -> user
        self._secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self._secret_writes: dict[tuple[str, str], int] = {}
        self._workloads: dict[tuple[str, str, str], _Workload] = {}  # (plural, namespace, name)
        self._resource_version = 0
        self._stopping = threading.Event()

    # -- settings ----------------------------------------------------------------------------------------

    @property
    def rate_limit(self) -> int:
        return self.rate_limiter.limit

    @rate_limit.setter
    def rate_limit(self, value: int) -> None:
        self.rate_limiter.limit = value

    @property
    def rate_limit_window(self) -> float:
        return self.rate_limiter.window_seconds

    @rate_limit_window.setter
    def rate_limit_window(self, value: float) -> None:
        self.rate_limiter.window_seconds = value

    # -- lifecycle: rollout threads end with the server ---------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> KubernetesSandbox:
        self._stopping.clear()
        return super().start(host, port)

    def stop(self) -> None:
        self._stopping.set()
        super().stop()

    # -- test / demo API ---------------------------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        with self.lock:
            if name not in self._namespaces:
                self._namespaces[name] = {
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {
                        "name": name,
                        "uid": str(uuid.uuid4()),
                        "resourceVersion": self._next_resource_version(),
                        "creationTimestamp": _timestamp(),
                        "labels": {"kubernetes.io/metadata.name": name},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }

    def add_user(self, name: str, rules: list[dict[str, Any]] | None = None, token: str | None = None) -> str:
        """Register a bearer token for user ``name`` with RBAC ``rules`` (None = cluster-admin); return it.

        A rule is ``{"verbs": [...], "resources": [...], "namespaces": [...], "names": [...]}``; ``*`` matches
        anything, ``namespaces`` defaults to all and an absent ``names`` means every object.
        """
        parsed = [_Rule.parse(rule) for rule in (CLUSTER_ADMIN if rules is None else rules)]
        token = token or secrets.token_urlsafe(24)
        with self.lock:
            self._users[token] = _User(name, parsed)
        return token

    def put_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str] | None = None,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        immutable: bool = False,
        type: str = "Opaque",
    ) -> dict[str, Any]:
        """Create or replace a Secret from plaintext ``data``, bypassing auth (as an operator would)."""
        with self.lock:
            self.add_namespace(namespace)
            metadata: dict[str, Any] = {"name": name, "namespace": namespace}
            if labels:
                metadata["labels"] = dict(labels)
            if annotations:
                metadata["annotations"] = dict(annotations)
            secret: dict[str, Any] = {"kind": "Secret", "apiVersion": "v1", "metadata": metadata, "type": type}
            if data:
                secret["data"] = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            if immutable:
                secret["immutable"] = True
            self._secrets.pop((namespace, name), None)
            return copy.deepcopy(self._store_secret(namespace, name, None, secret))

    def add_workload(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        replicas: int = 2,
        secret: str | None = "kosli-api-token",
        key: str = "key",
        env_name: str = "KOSLI_API_TOKEN",
        paused: bool = False,
        update_strategy: str = "RollingUpdate",
        partition: int = 0,
        progress_deadline_seconds: int = DEFAULT_PROGRESS_DEADLINE_SECONDS,
    ) -> dict[str, Any]:
        """Create a rolled-out Deployment or StatefulSet whose container reads ``secret``/``key`` into an env var.

        Its pods start at once and record the Secret value as it is now.
        """
        resource = WORKLOAD_RESOURCES[KIND_TO_PLURAL.get(kind, kind)]
        labels = {"app": name}
        container: dict[str, Any] = {"name": "app", "image": "ghcr.io/kosli-dev/cli:latest"}
        if secret:
            container["env"] = [{"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "revisionHistoryLimit": 10,
        }
        if resource is DEPLOYMENTS:
            spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
            spec["progressDeadlineSeconds"] = progress_deadline_seconds
            if paused:
                spec["paused"] = True
        else:
            spec["serviceName"] = name
            spec["podManagementPolicy"] = "OrderedReady"
            spec["updateStrategy"] = {"type": update_strategy}
            if update_strategy == "RollingUpdate":
                spec["updateStrategy"]["rollingUpdate"] = {"partition": partition}
        with self.lock:
            self.add_namespace(namespace)
            obj = {
                "kind": resource.kind,
                "apiVersion": resource.api_version,
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_resource_version(),
                    "generation": 1,
                    "creationTimestamp": _timestamp(),
                    "labels": dict(labels),
                },
                "spec": spec,
            }
            workload = _Workload(resource, obj)
            workload.pods = [self._new_pod(workload, namespace, ordinal) for ordinal in range(replicas)]
            self._observe(workload)
            self._refresh_status(workload, complete=True)
            self._workloads[(resource.plural, namespace, name)] = workload
            return copy.deepcopy(obj)

    def seed(
        self,
        namespaces: list[str] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
        secrets: list[dict[str, Any]] | None = None,
        workloads: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Create namespaces, users (``{name: {"rules": [...], "token": optional}}``), Secrets (``put_secret``
        kwargs) and workloads (``add_workload`` kwargs, with ``kind``); return ``{"tokens": {user: token}}``."""
        for namespace in namespaces or []:
            self.add_namespace(namespace)
        tokens = {
            name: self.add_user(name, spec.get("rules"), spec.get("token")) for name, spec in (users or {}).items()
        }
        for spec in secrets or []:
            self.put_secret(**spec)
        for spec in workloads or []:
            spec = dict(spec)
            self.add_workload(spec.pop("kind"), **spec)
        return {"tokens": tokens}

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """``{"namespaces": [...], "users": {...}, "secrets": [...], "workloads": [...]}``, see :meth:`seed`."""
        unknown = set(document) - {"namespaces", "users", "secrets", "workloads"}
        if unknown:
            raise ValueError(f"unknown seed sections {sorted(unknown)}")
        return self.seed(**document)

    def kubeconfig(self, token: str, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig (as a dict) that points a client at this sandbox with ``token``."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "sandbox", "user": {"token": token}}],
            "contexts": [
                {"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox", "namespace": namespace}}
            ],
            "current-context": "sandbox",
        }

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded to plaintext; None if there is no such Secret."""
        with self.lock:
            secret = self._secrets.get((namespace, name))
            if secret is None:
                return None
            return {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}

    def secret_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            secret = self._secrets.get((namespace, name))
            return copy.deepcopy(secret) if secret else None

    def secret_writes(self, namespace: str, name: str) -> int:
        """How many times the API changed this Secret's ``data`` (creation included; no-op patches excluded)."""
        with self.lock:
            return self._secret_writes.get((namespace, name), 0)

    def workload(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._workload(kind, namespace, name).obj)

    def pods(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """The workload's current pods: name, template revision, start time and the Secret values they read."""
        with self.lock:
            return [pod.to_json() for pod in self._workload(kind, namespace, name).pods]

    def pod_fingerprints(self, kind: str, namespace: str, name: str) -> list[str | None]:
        """For each current pod, the fingerprint of the value its first ``secretKeyRef`` held when it started."""
        with self.lock:
            return [next(iter(pod.started_with.values()), None) for pod in self._workload(kind, namespace, name).pods]

    def _workload(self, kind: str, namespace: str, name: str) -> _Workload:
        workload = self._workloads.get((KIND_TO_PLURAL.get(kind, kind), namespace, name))
        if workload is None:
            raise LookupError(f"no {kind} {namespace}/{name}")
        return workload

    @route("GET", r"/_sandbox/secrets/(?P<namespace>[^/]+)/(?P<name>[^/]+)")
    def _admin_secret(self, request: Request, namespace: str, name: str) -> Response:
        data = self.secret_data(namespace, name)
        if data is None:
            return json_response(404, {"message": f"no Secret {namespace}/{name}"})
        return json_response(200, {"data": data, "writes": self.secret_writes(namespace, name)})

    @route("GET", r"/_sandbox/workloads/(?P<namespace>[^/]+)/(?P<plural>[^/]+)/(?P<name>[^/]+)")
    def _admin_workload(self, request: Request, namespace: str, plural: str, name: str) -> Response:
        try:
            return json_response(
                200, {"object": self.workload(plural, namespace, name), "pods": self.pods(plural, namespace, name)}
            )
        except LookupError as error:
            return json_response(404, {"message": str(error)})

    # -- framework hooks ---------------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return json_response(404, status_body(404, "NotFound", "the server could not find the requested resource", {}))

    def method_not_allowed(self, request: Request) -> Response:
        message = "the server does not allow this method on the requested resource"
        return json_response(405, status_body(405, "MethodNotAllowed", message, {}))

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        # Assumption: the decoder's wording differs from Go's; the status, reason and shape are the server's.
        message = f"couldn't get version/kind; json parse error: {error}"
        return json_response(400, status_body(400, "BadRequest", message))

    # -- public API: namespaces and Secrets ----------------------------------------------------------------

    @route("GET", NAMESPACE)
    def get_namespace(self, request: Request, namespace: str) -> Response:
        with self.lock:
            self._authorize(request, "get", NAMESPACES, namespace, namespace)
            found = self._namespaces.get(namespace)
            if found is None:
                raise _not_found(NAMESPACES, namespace)
            return json_response(200, found)

    @route("GET", SECRETS)
    def list_secrets(self, request: Request, namespace: str) -> Response:
        # Assumption: no `limit`/`continue` paging; nothing here lists enough Secrets to need it.
        with self.lock:
            self._authorize(request, "list", SECRET_RESOURCE, namespace)
            items = [secret for (ns, _), secret in sorted(self._secrets.items()) if ns == namespace]
            metadata = {"resourceVersion": str(self._resource_version)}
            return json_response(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": items})

    @route("POST", SECRETS)
    def create_secret(self, request: Request, namespace: str) -> Response:
        with self.lock:
            self._authorize(request, "create", SECRET_RESOURCE, namespace)
            body = self._object_body(request, SECRET_RESOURCE)
            metadata = body.setdefault("metadata", {})
            name = metadata.get("name") or ""
            if metadata.setdefault("namespace", namespace) != namespace:
                message = "the namespace of the provided object does not match the namespace sent on the request"
                raise _failure(400, "BadRequest", message)
            if not name:
                raise _invalid(SECRET_RESOURCE, "", "metadata.name", "Required value: name or generateName is required")
            if namespace not in self._namespaces:
                raise _not_found(NAMESPACES, namespace)
            if (namespace, name) in self._secrets:
                raise _failure(409, "AlreadyExists", f'secrets "{name}" already exists', SECRET_RESOURCE.details(name))
            return json_response(201, self._store_secret(namespace, name, None, body))

    @route("GET", SECRET)
    def get_secret(self, request: Request, namespace: str, name: str) -> Response:
        with self.lock:
            self._authorize(request, "get", SECRET_RESOURCE, namespace, name)
            return json_response(200, self._existing_secret(namespace, name))

    @route("PUT", SECRET)
    def replace_secret(self, request: Request, namespace: str, name: str) -> Response:
        with self.lock:
            self._authorize(request, "update", SECRET_RESOURCE, namespace, name)
            body = self._object_body(request, SECRET_RESOURCE)
            metadata = body.setdefault("metadata", {})
            if metadata.get("name", name) != name:
                message = f"the name of the object ({metadata['name']}) does not match the name on the URL ({name})"
                raise _failure(400, "BadRequest", message)
            current = self._existing_secret(namespace, name)
            self._check_precondition(SECRET_RESOURCE, current, metadata.get("resourceVersion"))
            return json_response(200, self._store_secret(namespace, name, current, body))

    @route("PATCH", SECRET)
    def patch_secret(self, request: Request, namespace: str, name: str) -> Response:
        with self.lock:
            self._authorize(request, "patch", SECRET_RESOURCE, namespace, name)
            patch = self._patch_body(request)
            current = self._existing_secret(namespace, name)
            self._check_precondition(SECRET_RESOURCE, current, (patch.get("metadata") or {}).get("resourceVersion"))
            return json_response(200, self._store_secret(namespace, name, current, _merge_patch(current, patch)))

    # -- public API: workloads ----------------------------------------------------------------------------

    @route("GET", WORKLOAD)
    def get_workload(self, request: Request, namespace: str, plural: str, name: str) -> Response:
        resource = WORKLOAD_RESOURCES[plural]
        with self.lock:
            self._authorize(request, "get", resource, namespace, name)
            return json_response(200, self._existing_workload(resource, namespace, name).obj)

    @route("PATCH", WORKLOAD)
    def patch_workload(self, request: Request, namespace: str, plural: str, name: str) -> Response:
        resource = WORKLOAD_RESOURCES[plural]
        with self.lock:
            self._authorize(request, "patch", resource, namespace, name)
            patch = self._patch_body(request)
            workload = self._existing_workload(resource, namespace, name)
            current = workload.obj
            self._check_precondition(resource, current, (patch.get("metadata") or {}).get("resourceVersion"))
            updated = _merge_patch(current, patch)
            # The server owns identity, bookkeeping and status; a patch of the main resource cannot change them.
            updated["metadata"] = {**updated.get("metadata", {}), **_server_owned(current["metadata"])}
            updated["status"] = current["status"]
            replicas = updated.get("spec", {}).get("replicas", 1)
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                raise _invalid(
                    resource, name, "spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0"
                )
            if updated == current:
                return json_response(200, current)  # a no-op patch writes nothing and keeps the resourceVersion
            updated["metadata"]["resourceVersion"] = self._next_resource_version()
            if updated["spec"] != current["spec"]:
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
            workload.obj = updated
            if updated["spec"] != current["spec"] and not updated["spec"].get("paused"):
                self._start_rollout(workload)
            return json_response(200, updated)

    # -- public API: access reviews -----------------------------------------------------------------------

    @route("POST", ACCESS_REVIEWS)
    def create_access_review(self, request: Request) -> Response:
        """``kubectl auth can-i``: any authenticated user may ask what it may do itself."""
        with self.lock:
            user = self._authenticate(request)
        body = request.json()
        attributes = (body.get("spec") or {}).get("resourceAttributes") if isinstance(body, dict) else None
        if not isinstance(attributes, dict):
            message = (
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
                "Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified"
            )
            raise _failure(422, "Invalid", message)
        allowed = user.may(
            attributes.get("verb", ""),
            attributes.get("resource", ""),
            attributes.get("namespace", ""),
            attributes.get("name") or None,
        )
        review_status: dict[str, Any] = {"allowed": allowed}
        if allowed:
            review_status["reason"] = f'RBAC: allowed by sandbox rules of User "{user.name}"'
        review = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"resourceAttributes": attributes},
            "status": review_status,
        }
        return json_response(201, review)

    # -- auth ------------------------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> _User:
        """401 for a missing or unknown bearer token, then API Priority and Fairness (429) per user."""
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        user = self._users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise _failure(401, "Unauthorized", "Unauthorized")
        if self.rate_limit and (wait := self.rate_limiter.hit(user.name)):
            seconds = max(1, math.ceil(wait))
            headers = {
                "Retry-After": str(seconds),
                "X-Kubernetes-PF-FlowSchema-UID": "sandbox-service-accounts",
                "X-Kubernetes-PF-PriorityLevel-UID": "sandbox-workload-low",
            }
            message = "Too many requests, please try again later."
            raise _failure(429, "TooManyRequests", message, {"retryAfterSeconds": seconds}, headers)
        return user

    def _authorize(
        self, request: Request, verb: str, resource: _Resource, namespace: str, name: str | None = None
    ) -> _User:
        """Authenticate, throttle, then check RBAC (403) before the object is looked up, as the server does."""
        user = self._authenticate(request)
        if not user.may(verb, resource.plural, namespace, name):
            subject = f'{resource.qualified} "{name}"' if name else resource.qualified
            message = (
                f'{subject} is forbidden: User "{user.name}" cannot {verb} resource "{resource.plural}" '
                f'in API group "{resource.group}" in the namespace "{namespace}"'
            )
            raise _failure(403, "Forbidden", message, resource.details(name))
        return user

    # -- internals (call with self.lock held) ------------------------------------------------------------

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    @staticmethod
    def _object_body(request: Request, resource: _Resource) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            message = f"the object provided is unrecognized (must be of type {resource.kind})"
            raise _failure(400, "BadRequest", message)
        return body

    @staticmethod
    def _patch_body(request: Request) -> dict[str, Any]:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in PATCH_TYPES:
            # Assumption: the sandbox implements only these two of the server's patch types.
            accepted = ", ".join(PATCH_TYPES)
            message = f"the body of the request was in an unknown format - accepted media types include: {accepted}"
            raise _failure(415, "UnsupportedMediaType", message)
        patch = request.json()
        if not isinstance(patch, dict):
            raise _failure(
                400, "BadRequest", "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        # Assumption: strategic merge is treated as a JSON merge patch; the patches of Secrets' data and of
        # pod-template annotations only touch maps, where the two agree. List merge keys are not emulated.
        return patch

    @staticmethod
    def _check_precondition(resource: _Resource, current: dict[str, Any], resource_version: Any) -> None:
        if resource_version is not None and str(resource_version) != current["metadata"]["resourceVersion"]:
            name = current["metadata"]["name"]
            message = (
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            raise _failure(409, "Conflict", message, resource.details(name))

    def _existing_secret(self, namespace: str, name: str) -> dict[str, Any]:
        secret = self._secrets.get((namespace, name))
        if secret is None:
            raise _not_found(SECRET_RESOURCE, name)
        return secret

    def _existing_workload(self, resource: _Resource, namespace: str, name: str) -> _Workload:
        workload = self._workloads.get((resource.plural, namespace, name))
        if workload is None:
            raise _not_found(resource, name)
        return workload

    def _store_secret(
        self, namespace: str, name: str, current: dict[str, Any] | None, proposed: dict[str, Any]
    ) -> dict[str, Any]:
        """Validate ``proposed`` (a create, replace or patched Secret), then store it unless it changes nothing."""
        secret = copy.deepcopy(proposed)
        secret["kind"], secret["apiVersion"] = "Secret", "v1"
        secret.setdefault("type", "Opaque")
        data = dict(secret.get("data") or {})
        for key, value in (secret.pop("stringData", None) or {}).items():  # write-only, merged into data
            data[key] = base64.b64encode(str(value).encode()).decode()
        for key, value in data.items():
            if not SECRET_KEY.match(key) or key in (".", ".."):
                raise _invalid(SECRET_RESOURCE, name, f"data[{key}]", f'Invalid value: "{key}": {SECRET_KEY_MESSAGE}')
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                message = f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data in data[{key}]'
                raise _failure(400, "BadRequest", message) from None
        if data:
            secret["data"] = data
        else:
            secret.pop("data", None)
        if current is None:
            if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
                raise _invalid(SECRET_RESOURCE, name, "metadata.name", f'Invalid value: "{name}": {SUBDOMAIN_MESSAGE}')
            secret["metadata"] = {
                **secret.get("metadata", {}),
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _timestamp(),
            }
        else:
            secret["metadata"] = {**secret.get("metadata", {}), **_server_owned(current["metadata"])}
            if current.get("immutable") and (secret.get("data") != current.get("data") or not secret.get("immutable")):
                raise _invalid(SECRET_RESOURCE, name, "data", "Forbidden: field is immutable when `immutable` is set")
            if secret["type"] != current["type"]:
                raise _invalid(SECRET_RESOURCE, name, "type", f'Invalid value: "{secret["type"]}": field is immutable')
            if secret == current:
                return current  # a no-op write: nothing stored, resourceVersion unchanged
        secret["metadata"]["resourceVersion"] = self._next_resource_version()
        if current is None or secret.get("data") != current.get("data"):
            self._secret_writes[(namespace, name)] = self._secret_writes.get((namespace, name), 0) + 1
        self._secrets[(namespace, name)] = secret
        return secret

    def _secret_fingerprint(self, namespace: str, secret: str, key: str) -> str | None:
        value = self._secrets.get((namespace, secret), {}).get("data", {}).get(key)
        return fingerprint(base64.b64decode(value).decode()) if value else None

    def _new_pod(self, workload: _Workload, namespace: str, ordinal: int) -> _Pod:
        """A pod of the current template; it reads the Secret values its env refers to now, as kubelet does."""
        revision = workload.revision
        if workload.resource is STATEFULSETS:
            name = f"{workload.name}-{ordinal}"
        else:
            name = f"{workload.name}-{revision}-{secrets.token_hex(3)}"
        started_with = {
            f"{secret}/{key}": self._secret_fingerprint(namespace, secret, key)
            for secret, key in workload.secret_refs()
        }
        return _Pod(name, revision, time.time(), started_with)

    # -- rollout simulation ---------------------------------------------------------------------------------

    def _start_rollout(self, workload: _Workload) -> None:
        key = (workload.resource.plural, workload.obj["metadata"]["namespace"], workload.name)
        workload.last_progress = time.monotonic()
        thread = threading.Thread(
            target=self._run_rollout, args=(key, workload.generation), name=f"rollout-{key[2]}", daemon=True
        )
        thread.start()

    def _run_rollout(self, key: tuple[str, str, str], generation: int) -> None:
        """Observe the new generation, then replace one pod per step until the workload matches its spec.

        A newer generation takes over (this thread ends); ``stuck_rollouts`` holds every step back.
        """
        observed = False
        while True:
            with self.lock:
                workload = self._workloads.get(key)
                if workload is None or workload.generation != generation:
                    return
                step = self.rollout_seconds / (max(workload.desired_replicas, len(workload.pods)) + 1)
            if self._stopping.wait(step):
                return
            with self.lock:
                workload = self._workloads.get(key)
                if workload is None or workload.generation != generation:
                    return
                if not observed:
                    self._observe(workload)
                    self._refresh_status(workload, complete=False)
                    observed = True
                elif self.stuck_rollouts:
                    self._check_progress_deadline(workload)
                else:
                    self._advance(workload, key[1])
                    workload.last_progress = time.monotonic()
                    converged = self._converged(workload)
                    self._refresh_status(workload, complete=converged)
                    if converged:
                        return

    @staticmethod
    def _converged(workload: _Workload) -> bool:
        pods = workload.pods
        return len(pods) == workload.desired_replicas and all(pod.revision == workload.revision for pod in pods)

    def _advance(self, workload: _Workload, namespace: str) -> None:
        """One controller step: replace an outdated pod, or add or remove one to match the spec."""
        outdated = [index for index, pod in enumerate(workload.pods) if pod.revision != workload.revision]
        if outdated:
            # A StatefulSet updates from the highest ordinal down; a Deployment's order does not matter.
            index = outdated[-1] if workload.resource is STATEFULSETS else outdated[0]
            workload.pods[index] = self._new_pod(workload, namespace, index)
            return
        if len(workload.pods) < workload.desired_replicas:
            workload.pods.append(self._new_pod(workload, namespace, len(workload.pods)))
            return
        if len(workload.pods) > workload.desired_replicas:
            workload.pods.pop()

    def _observe(self, workload: _Workload) -> None:
        """The controller saw the current generation: a new ReplicaSet / update revision is known."""
        status = workload.obj.setdefault("status", {})
        status["observedGeneration"] = workload.generation
        if workload.revision == workload.observed_revision:
            return  # e.g. a scale: same template, same revision
        workload.observed_revision = workload.revision
        if workload.resource is DEPLOYMENTS:
            annotations = workload.obj["metadata"].setdefault("annotations", {})
            revision = int(annotations.get("deployment.kubernetes.io/revision", "0"))
            annotations["deployment.kubernetes.io/revision"] = str(revision + 1)
        else:
            status["updateRevision"] = f"{workload.name}-{workload.revision}"
            status.setdefault("currentRevision", status["updateRevision"])

    def _refresh_status(self, workload: _Workload, *, complete: bool) -> None:
        status = workload.obj["status"]
        pods = workload.pods
        updated = sum(pod.revision == workload.revision for pod in pods)
        status.update(replicas=len(pods), readyReplicas=len(pods), availableReplicas=len(pods), updatedReplicas=updated)
        if workload.resource is STATEFULSETS:
            if complete:
                status["currentRevision"] = status["updateRevision"]
            current = status["currentRevision"].rsplit("-", 1)[-1]
            status["currentReplicas"] = sum(pod.revision == current for pod in pods)
            status["collisionCount"] = 0
        else:
            missing = workload.desired_replicas - len(pods)
            if missing > 0:
                status["unavailableReplicas"] = missing
            else:
                status.pop("unavailableReplicas", None)
            replica_set = f'ReplicaSet "{workload.name}-{workload.revision}"'
            if complete:
                self._set_condition(
                    workload,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    f"{replica_set} has successfully progressed.",
                )
            else:
                self._set_condition(
                    workload, "Progressing", "True", "ReplicaSetUpdated", f"{replica_set} is progressing."
                )
            self._set_condition(
                workload, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."
            )
        workload.obj["metadata"]["resourceVersion"] = self._next_resource_version()

    def _check_progress_deadline(self, workload: _Workload) -> None:
        deadline = workload.obj["spec"].get("progressDeadlineSeconds")
        if workload.resource is not DEPLOYMENTS or deadline is None:
            return
        if time.monotonic() - workload.last_progress >= deadline:
            replica_set = f'ReplicaSet "{workload.name}-{workload.revision}"'
            if self._set_condition(
                workload,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                f"{replica_set} has timed out progressing.",
            ):
                workload.obj["metadata"]["resourceVersion"] = self._next_resource_version()

    @staticmethod
    def _set_condition(workload: _Workload, kind: str, status: str, reason: str, message: str) -> bool:
        """Set one status condition; True if it changed."""
        conditions = workload.obj["status"].setdefault("conditions", [])
        now = _timestamp()
        existing = next((condition for condition in conditions if condition["type"] == kind), None)
        if existing and (existing["status"], existing["reason"], existing["message"]) == (status, reason, message):
            return False
        condition = {"type": kind, "status": status, "lastUpdateTime": now, "reason": reason, "message": message}
        condition["lastTransitionTime"] = (
            existing["lastTransitionTime"] if existing and existing["status"] == status else now
        )
        if existing:
            conditions[conditions.index(existing)] = condition
        else:
            conditions.append(condition)
        return True


def _server_owned(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata fields only the server sets; clients' values for them are ignored."""
    owned = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp")
    return {key: metadata[key] for key in owned if key in metadata}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollout-seconds", type=float, default=0.5, help="how long a simulated rollout takes")
    parser.add_argument("--stuck-rollouts", action="store_true", help="rollouts never complete")
    parser.add_argument("--rate-limit", type=int, default=0, help="requests per window per user before 429 (0 = off)")
    parser.add_argument("--rate-limit-window", type=float, default=1.0, help="seconds per rate-limit window")


def from_cli_args(args: argparse.Namespace) -> KubernetesSandbox:
    return KubernetesSandbox(
        rollout_seconds=args.rollout_seconds,
        stuck_rollouts=args.stuck_rollouts,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        latency=args.latency,
        access_log=args.access_log,
    )
