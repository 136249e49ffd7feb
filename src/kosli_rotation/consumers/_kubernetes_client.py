"""The Kubernetes client of a ``kubernetes_secret`` consumer, built from its Airflow connection, and how the
client's failures look to the transport.

A module of its own, apart from ``kubernetes_secret`` (what is written where, and when it counts as done), because
building the client is a subject of its own: the provider's connection lookup (a missing ``kubernetes_default``
means the cluster's own credentials), kubeconfig errors reported by position only (PyYAML quotes the line it broke
on, often the token line), the kubeconfig's credentials held for the masker, and urllib3's own retries turned off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kosli_rotation.consumers.transport import HttpStatusError, RemoteFailure
from kosli_rotation.errors import ConsumerError
from kosli_rotation.safe_yaml import describe_yaml_error
from kosli_rotation.scrub import describe_error


def status_error(error: Any) -> HttpStatusError:
    """The client's ApiException as a ``HttpStatusError``: the API server's ``Status`` message (else the HTTP
    reason) and the answer's headers. The ApiException's own text holds every header and the whole body, so it is
    never what a retry warning or an error shows."""
    message = ""
    try:
        body = json.loads(error.body or "")
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
    except (TypeError, ValueError):
        pass
    return HttpStatusError(int(error.status or 0), message or str(error.reason or "no message"), error.headers)


def classify(error: Exception) -> RemoteFailure | None:
    """An API answer (``status_error``) and urllib3's refused or reset connections and timeouts, as the transport
    sees them; None for anything else."""
    from urllib3.exceptions import HTTPError

    if isinstance(error, HttpStatusError):
        return error.failure if error.failure.status else RemoteFailure(None, error.failure.message)
    if isinstance(error, HTTPError):
        return RemoteFailure(None, f"{type(error).__name__}: {error}")
    return None


def client_problem(error: BaseException) -> str:
    """What went wrong building the client, never the kubeconfig's text: a YAML error by its type and position
    only; anything else scrubbed."""
    import yaml

    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return f"{type(cause).__name__} at {describe_yaml_error(cause)} in its kubeconfig"
    return f"{type(error).__name__}: {describe_error(error)}"


@dataclass(frozen=True)
class KubernetesApis:
    """The three APIs a consumer calls, and the API server's address (for messages)."""

    core: Any
    apps: Any
    authorization: Any
    server: str


def build_apis(consumer: str, conn_id: str) -> KubernetesApis:
    """CoreV1Api, AppsV1Api and AuthorizationV1Api from the provider's hook for connection ``conn_id``."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from kubernetes.client import AuthorizationV1Api, rest

    from kosli_rotation.held_credentials import hold_kube_credentials

    hook = KubernetesHook(conn_id=conn_id)
    try:
        hook.conn_extras  # noqa: B018 - the provider's lookup: a missing kubernetes_default means in-cluster or ~/.kube
    except AirflowNotFoundException:
        example = '{"conn_type": "kubernetes", "extra": {"kube_config_path": "/path/to/kubeconfig"}}'
        raise ConsumerError(
            consumer,
            f"Airflow connection {conn_id!r} is not defined: create a kubernetes connection, e.g. "
            f"AIRFLOW_CONN_{conn_id.upper()}='{example}'",
            retryable=False,
        ) from None
    except Exception as error:  # a secrets backend away, ...
        text = f"cannot read Airflow connection {conn_id!r}: {describe_error(error)}"
        raise ConsumerError(consumer, text, retryable=True) from None
    try:
        api_client = hook.api_client
    except Exception as error:  # a bad kubeconfig, conflicting options
        raise ConsumerError(
            consumer,
            f"cannot build a Kubernetes client from connection {conn_id!r} ({client_problem(error)}); fix the "
            "connection's kube_config / kube_config_path / in_cluster extras",
            retryable=False,
        ) from None
    hold_kube_credentials(api_client.configuration)  # token, password, client key; refreshed tokens too
    # One retry policy, the transport's: turn off urllib3's default of 3 immediate retries per request, which
    # would multiply every attempt and ignore Retry-After.
    api_client.configuration.retries = False
    api_client.rest_client = rest.RESTClientObject(api_client.configuration)
    return KubernetesApis(
        hook.core_v1_client, hook.apps_v1_client, AuthorizationV1Api(api_client), api_client.configuration.host
    )
