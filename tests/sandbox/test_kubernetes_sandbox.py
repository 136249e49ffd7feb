"""Tests of the Kubernetes sandbox's API contract, over real HTTP (``requests`` and the official client)."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from sandbox.kubernetes import KubernetesSandbox, from_cli_args

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
SECRET_PATH = "/api/v1/namespaces/prod/secrets/kosli-api-token"
WEB_PATH = "/apis/apps/v1/namespaces/prod/deployments/web"
DB_PATH = "/apis/apps/v1/namespaces/prod/statefulsets/db"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def fp(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


class Cluster:
    """A started sandbox with namespaces prod and staging, an admin token, and HTTP helpers."""

    def __init__(self, server: KubernetesSandbox) -> None:
        self.server = server
        self.admin = server.add_user("admin")
        server.add_namespace("prod")
        server.add_namespace("staging")

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if content_type:
            headers["Content-Type"] = content_type
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        return requests.request(method, f"{self.server.url}{path}", headers=headers, timeout=5, **kwargs)

    def patch(self, path: str, body: Any, content_type: str = SMP, token: str | None = None) -> requests.Response:
        return self.call("PATCH", path, token or self.admin, body, content_type)

    def restart(self, path: str, stamp: str = "2026-05-01T12:00:00Z") -> requests.Response:
        body = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        return self.patch(path, body)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with KubernetesSandbox(rollout_seconds=0.3) as server:
        yield Cluster(server)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- authentication, authorization, errors ------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-token"])
def test_missing_or_unknown_token_is_401_status(cluster: Cluster, token: str | None) -> None:
    response = cluster.call("GET", SECRET_PATH, token)
    assert response.status_code == 401
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_rbac_forbids_with_the_api_servers_message(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "v"})
    reader = cluster.server.add_user(
        "system:serviceaccount:prod:reader", [{"verbs": ["get"], "resources": ["secrets"], "namespaces": ["prod"]}]
    )
    assert cluster.call("GET", SECRET_PATH, reader).status_code == 200
    denied = cluster.patch(SECRET_PATH, {"data": {"key": b64("x")}}, token=reader)
    assert denied.status_code == 403
    assert denied.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "kosli-api-token" is forbidden: User "system:serviceaccount:prod:reader" cannot patch '
        'resource "secrets" in API group "" in the namespace "prod"',
        "reason": "Forbidden",
        "details": {"name": "kosli-api-token", "kind": "secrets"},
        "code": 403,
    }
    other_namespace = cluster.call("GET", "/api/v1/namespaces/staging/secrets/kosli-api-token", reader)
    assert other_namespace.status_code == 403
    create = cluster.call("POST", "/api/v1/namespaces/prod/secrets", reader, {"metadata": {"name": "x"}})
    assert create.json()["message"].startswith('secrets is forbidden: User "system:serviceaccount:prod:reader"')
    cluster.server.add_workload("Deployment", "prod", "web")
    deployment = cluster.call("GET", WEB_PATH, reader).json()
    assert deployment["message"].startswith('deployments.apps "web" is forbidden')
    assert 'in API group "apps"' in deployment["message"]
    assert deployment["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "v"}


def test_rbac_names_restrict_to_one_object(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "v"})
    cluster.server.put_secret("prod", "other", {"key": "v"})
    token = cluster.server.add_user("narrow", [{"verbs": ["get"], "resources": ["secrets"], "names": ["other"]}])
    assert cluster.call("GET", SECRET_PATH, token).status_code == 403
    assert cluster.call("GET", "/api/v1/namespaces/prod/secrets/other", token).status_code == 200


def test_not_found_statuses(cluster: Cluster) -> None:
    secret = cluster.call("GET", SECRET_PATH, cluster.admin)
    assert secret.status_code == 404
    assert secret.json()["message"] == 'secrets "kosli-api-token" not found'
    assert secret.json()["reason"] == "NotFound"
    assert secret.json()["details"] == {"name": "kosli-api-token", "kind": "secrets"}
    deployment = cluster.call("GET", WEB_PATH, cluster.admin).json()
    assert deployment["message"] == 'deployments.apps "web" not found'
    assert deployment["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    namespace = cluster.call("GET", "/api/v1/namespaces/ghost", cluster.admin).json()
    assert (namespace["code"], namespace["message"]) == (404, 'namespaces "ghost" not found')
    assert cluster.call("GET", "/api/v1/namespaces/prod", cluster.admin).json()["status"] == {"phase": "Active"}
    unknown_path = cluster.call("GET", "/api/v1/nodes", cluster.admin)
    assert (unknown_path.status_code, unknown_path.json()["kind"]) == (404, "Status")


# -- Secrets ------------------------------------------------------------------------------------------------


def test_create_then_already_exists(cluster: Cluster) -> None:
    body = {"metadata": {"name": "kosli-api-token"}, "data": {"key": b64("v1")}}
    created = cluster.call("POST", "/api/v1/namespaces/prod/secrets", cluster.admin, body)
    assert created.status_code == 201
    secret = created.json()
    assert (secret["kind"], secret["apiVersion"], secret["type"]) == ("Secret", "v1", "Opaque")
    assert secret["metadata"]["namespace"] == "prod" and secret["metadata"]["resourceVersion"].isdigit()
    again = cluster.call("POST", "/api/v1/namespaces/prod/secrets", cluster.admin, body)
    assert again.status_code == 409
    assert (again.json()["reason"], again.json()["message"]) == (
        "AlreadyExists",
        'secrets "kosli-api-token" already exists',
    )
    missing_namespace = cluster.call("POST", "/api/v1/namespaces/ghost/secrets", cluster.admin, body)
    assert missing_namespace.json()["message"] == 'namespaces "ghost" not found'
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "v1"}
    assert cluster.server.secret_writes("prod", "kosli-api-token") == 1


@pytest.mark.parametrize(
    ("body", "status", "reason", "fragment"),
    [
        ({"metadata": {"name": "Bad_Name"}}, 422, "Invalid", "metadata.name: Invalid value"),
        ({"metadata": {"name": "ok"}, "data": {"bad key": b64("v")}}, 422, "Invalid", "data[bad key]"),
        ({"metadata": {"name": "ok"}, "data": {"key": "!!not base64"}}, 400, "BadRequest", "illegal base64"),
        ({"metadata": {"name": "ok", "namespace": "staging"}}, 400, "BadRequest", "does not match the namespace"),
    ],
)
def test_create_validation(cluster: Cluster, body: dict[str, Any], status: int, reason: str, fragment: str) -> None:
    response = cluster.call("POST", "/api/v1/namespaces/prod/secrets", cluster.admin, body)
    assert response.status_code == status
    assert response.json()["reason"] == reason and response.json()["code"] == status
    assert fragment in response.json()["message"]
    if status == 422:
        assert response.json()["details"]["causes"][0]["reason"] == "FieldValueInvalid"


def test_invalid_json_is_a_400_status(cluster: Cluster) -> None:
    response = requests.post(
        f"{cluster.server.url}/api/v1/namespaces/prod/secrets",
        data=b"{oops",
        headers={"Authorization": f"Bearer {cluster.admin}", "Content-Type": "application/json"},
        timeout=5,
    )
    assert (response.status_code, response.json()["reason"]) == (400, "BadRequest")


def test_patch_merges_maps_and_tracks_resource_version(cluster: Cluster) -> None:
    created = cluster.server.put_secret(
        "prod", "kosli-api-token", {"key": "old", "other": "keep"}, labels={"team": "a"}, annotations={"note": "n"}
    )
    version = int(created["metadata"]["resourceVersion"])
    patched = cluster.patch(SECRET_PATH, {"data": {"key": b64("new")}, "metadata": {"annotations": {"x": "1"}}})
    assert patched.status_code == 200
    body = patched.json()
    assert int(body["metadata"]["resourceVersion"]) > version
    assert body["metadata"]["labels"] == {"team": "a"}
    assert body["metadata"]["annotations"] == {"note": "n", "x": "1"}
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "new", "other": "keep"}

    merge = cluster.patch(SECRET_PATH, {"metadata": {"annotations": {"x": None}}, "stringData": {"s": "plain"}}, MERGE)
    assert merge.json()["metadata"]["annotations"] == {"note": "n"}
    assert "stringData" not in merge.json()
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "new", "other": "keep", "s": "plain"}

    writes = cluster.server.secret_writes("prod", "kosli-api-token")
    current = merge.json()["metadata"]["resourceVersion"]
    no_op = cluster.patch(SECRET_PATH, {"data": {"key": b64("new")}})
    assert no_op.json()["metadata"]["resourceVersion"] == current
    assert cluster.server.secret_writes("prod", "kosli-api-token") == writes


def test_patch_preconditions_and_media_types(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "v"})
    stale = cluster.patch(SECRET_PATH, {"metadata": {"resourceVersion": "1"}, "data": {"key": b64("x")}})
    assert stale.status_code == 409
    assert stale.json()["reason"] == "Conflict"
    assert "the object has been modified" in stale.json()["message"]
    json_patch = cluster.patch(SECRET_PATH, [{"op": "add", "path": "/data/x", "value": "eA=="}], "application/json")
    assert (json_patch.status_code, json_patch.json()["reason"]) == (415, "UnsupportedMediaType")
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "v"}


def test_put_replaces_with_optimistic_concurrency(cluster: Cluster) -> None:
    secret = cluster.server.put_secret("prod", "kosli-api-token", {"key": "v", "other": "o"})
    replacement = {"metadata": {"name": "kosli-api-token", "resourceVersion": secret["metadata"]["resourceVersion"]}}
    replacement["data"] = {"key": b64("w")}
    replaced = cluster.call("PUT", SECRET_PATH, cluster.admin, replacement)
    assert replaced.status_code == 200
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "w"}
    assert cluster.call("PUT", SECRET_PATH, cluster.admin, replacement).json()["reason"] == "Conflict"
    renamed = cluster.call("PUT", SECRET_PATH, cluster.admin, {"metadata": {"name": "other"}})
    assert renamed.status_code == 400


def test_immutable_secret_refuses_new_data(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "v"}, immutable=True)
    response = cluster.patch(SECRET_PATH, {"data": {"key": b64("w")}})
    assert (response.status_code, response.json()["reason"]) == (422, "Invalid")
    assert "immutable" in response.json()["message"]
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "v"}


def test_real_client_reads_and_patches_with_strategic_merge(cluster: Cluster) -> None:
    from kubernetes import client, config

    cluster.server.put_secret("prod", "kosli-api-token", {"key": "old", "other": "keep"})
    configuration = client.Configuration()
    config.load_kube_config_from_dict(cluster.server.kubeconfig(cluster.admin), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    secret = core.read_namespaced_secret("kosli-api-token", "prod")
    assert base64.b64decode(secret.data["key"]).decode() == "old"
    core.patch_namespaced_secret("kosli-api-token", "prod", {"data": {"key": b64("new")}})  # a dict body: SMP
    assert cluster.server.secret_data("prod", "kosli-api-token") == {"key": "new", "other": "keep"}
    with pytest.raises(client.exceptions.ApiException) as error:
        core.read_namespaced_secret("missing", "prod")
    assert error.value.status == 404
    assert cluster.server.stats()["requests"]["patch_secret"] == 1


# -- rate limits ---------------------------------------------------------------------------------------------


def test_priority_and_fairness_429_per_user_switchable(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "v"})
    other = cluster.server.add_user("other")
    settings = requests.post(
        f"{cluster.server.url}/_sandbox/settings", json={"rate_limit": 2, "rate_limit_window": 30}, timeout=5
    )
    assert settings.json()["rate_limit"] == 2
    statuses = [cluster.call("GET", SECRET_PATH, cluster.admin).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = cluster.call("GET", SECRET_PATH, cluster.admin)
    assert int(limited.headers["Retry-After"]) in range(29, 31)
    assert limited.headers["X-Kubernetes-PF-FlowSchema-UID"]
    body = limited.json()
    assert (body["reason"], body["code"], body["details"]["retryAfterSeconds"]) == ("TooManyRequests", 429, 30)
    assert cluster.call("GET", SECRET_PATH, other).status_code == 200  # per user
    assert cluster.call("GET", SECRET_PATH).status_code == 401  # authentication comes first
    assert cluster.server.stats()["rate_limited"] == 2
    requests.post(f"{cluster.server.url}/_sandbox/settings", json={"rate_limit": 0}, timeout=5)
    assert cluster.call("GET", SECRET_PATH, cluster.admin).status_code == 200


def test_rate_limit_window_resets() -> None:
    with KubernetesSandbox(rate_limit=1, rate_limit_window=1.0) as server:
        token = server.add_user("u")
        server.add_namespace("prod")
        url = f"{server.url}/api/v1/namespaces/prod"
        headers = {"Authorization": f"Bearer {token}"}
        assert [requests.get(url, headers=headers, timeout=5).status_code for _ in range(2)] == [200, 429]
        time.sleep(1.05)
        assert requests.get(url, headers=headers, timeout=5).status_code == 200


# -- workloads and rollouts ------------------------------------------------------------------------------------


def test_restart_bumps_generation_and_rolls_pods_onto_the_current_secret(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "old"})
    cluster.server.add_workload("Deployment", "prod", "web", replicas=3)
    before = cluster.call("GET", WEB_PATH, cluster.admin).json()
    assert before["metadata"]["generation"] == 1
    assert before["status"]["observedGeneration"] == 1 and before["status"]["updatedReplicas"] == 3
    assert before["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert cluster.server.pod_fingerprints("Deployment", "prod", "web") == [fp("old")] * 3
    old_pods = cluster.server.pods("Deployment", "prod", "web")

    cluster.server.put_secret("prod", "kosli-api-token", {"key": "new"})
    assert cluster.server.pod_fingerprints("Deployment", "prod", "web") == [fp("old")] * 3  # env is read at start
    restarted = cluster.restart(WEB_PATH).json()
    assert restarted["metadata"]["generation"] == 2
    assert restarted["status"]["observedGeneration"] == 1  # the controller has not seen it yet
    assert int(restarted["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])

    def rolled_out() -> bool:
        status = cluster.call("GET", WEB_PATH, cluster.admin).json()["status"]
        return status["observedGeneration"] == 2 and status["updatedReplicas"] == 3 == status["replicas"]

    wait_until(rolled_out)
    after = cluster.call("GET", WEB_PATH, cluster.admin).json()
    assert after["status"]["availableReplicas"] == 3
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    progressing = next(c for c in after["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"
    assert cluster.server.pod_fingerprints("Deployment", "prod", "web") == [fp("new")] * 3
    pods = cluster.server.pods("Deployment", "prod", "web")
    assert {pod["name"] for pod in pods}.isdisjoint(pod["name"] for pod in old_pods)
    assert len({pod["revision"] for pod in pods}) == 1 and pods[0]["revision"] != old_pods[0]["revision"]
    assert min(pod["started_at"] for pod in pods) > max(pod["started_at"] for pod in old_pods)
    assert all(pod["started_with"] == {"kosli-api-token/key": fp("new")} for pod in pods)


def test_statefulset_rolls_from_the_highest_ordinal_and_updates_revisions(cluster: Cluster) -> None:
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "old"})
    cluster.server.add_workload("StatefulSet", "prod", "db", replicas=3)
    before = cluster.call("GET", DB_PATH, cluster.admin).json()["status"]
    assert before["currentRevision"] == before["updateRevision"]
    cluster.server.put_secret("prod", "kosli-api-token", {"key": "new"})
    cluster.server.stuck_rollouts = True
    cluster.restart(DB_PATH)
    wait_until(lambda: cluster.call("GET", DB_PATH, cluster.admin).json()["status"]["observedGeneration"] == 2)
    during = cluster.call("GET", DB_PATH, cluster.admin).json()["status"]
    assert during["updateRevision"] != during["currentRevision"] == before["currentRevision"]
    cluster.server.stuck_rollouts = False
    wait_until(lambda: cluster.server.pod_fingerprints("StatefulSet", "prod", "db")[0] == fp("new"))

    def revisions_equal() -> bool:
        status = cluster.call("GET", DB_PATH, cluster.admin).json()["status"]
        return status["currentRevision"] == status["updateRevision"]

    wait_until(revisions_equal)
    after = cluster.call("GET", DB_PATH, cluster.admin).json()["status"]
    assert (after["readyReplicas"], after["updatedReplicas"], after["currentReplicas"]) == (3, 3, 3)
    assert [pod["name"] for pod in cluster.server.pods("StatefulSet", "prod", "db")] == ["db-0", "db-1", "db-2"]


def test_stuck_rollout_never_converges_and_passes_its_progress_deadline(cluster: Cluster) -> None:
    cluster.server.add_workload("Deployment", "prod", "web", replicas=2, progress_deadline_seconds=1)
    requests.post(f"{cluster.server.url}/_sandbox/settings", json={"stuck_rollouts": True}, timeout=5)
    cluster.restart(WEB_PATH)

    def deadline_exceeded() -> bool:
        conditions = cluster.call("GET", WEB_PATH, cluster.admin).json()["status"]["conditions"]
        return any(c["reason"] == "ProgressDeadlineExceeded" and c["status"] == "False" for c in conditions)

    wait_until(deadline_exceeded, timeout=5)
    status = cluster.call("GET", WEB_PATH, cluster.admin).json()["status"]
    assert status["observedGeneration"] == 2 and status["updatedReplicas"] == 0
    requests.post(f"{cluster.server.url}/_sandbox/settings", json={"stuck_rollouts": False}, timeout=5)
    wait_until(lambda: cluster.call("GET", WEB_PATH, cluster.admin).json()["status"]["updatedReplicas"] == 2)


def test_workload_patches_no_op_scale_and_validation(cluster: Cluster) -> None:
    cluster.server.add_workload("Deployment", "prod", "web", replicas=1)
    first = cluster.restart(WEB_PATH, "2026-05-01T12:00:00Z").json()
    same = cluster.restart(WEB_PATH, "2026-05-01T12:00:00Z").json()
    assert same["metadata"]["generation"] == first["metadata"]["generation"] == 2
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    status_ignored = cluster.patch(WEB_PATH, {"status": {"replicas": 99}, "metadata": {"generation": 7}}).json()
    assert status_ignored["metadata"]["generation"] == 2 and status_ignored["status"]["replicas"] != 99
    scaled = cluster.patch(WEB_PATH, {"spec": {"replicas": 3}}).json()
    assert scaled["metadata"]["generation"] == 3
    wait_until(lambda: len(cluster.server.pods("Deployment", "prod", "web")) == 3)
    invalid = cluster.patch(WEB_PATH, {"spec": {"replicas": -1}})
    assert (invalid.status_code, invalid.json()["reason"]) == (422, "Invalid")
    assert invalid.json()["message"].startswith('Deployment.apps "web" is invalid: spec.replicas')


def test_real_client_deserializes_workloads(cluster: Cluster) -> None:
    from kubernetes import client, config

    cluster.server.add_workload("Deployment", "prod", "web")
    cluster.server.add_workload("StatefulSet", "prod", "db", update_strategy="OnDelete")
    configuration = client.Configuration()
    config.load_kube_config_from_dict(cluster.server.kubeconfig(cluster.admin), client_configuration=configuration)
    apps = client.AppsV1Api(client.ApiClient(configuration))
    deployment = apps.read_namespaced_deployment("web", "prod")
    assert deployment.spec.template.spec.containers[0].env[0].value_from.secret_key_ref.name == "kosli-api-token"
    assert deployment.status.conditions[0].type in ("Progressing", "Available")
    statefulset = apps.read_namespaced_stateful_set("db", "prod")
    assert statefulset.spec.update_strategy.type == "OnDelete"
    assert statefulset.status.current_revision == statefulset.status.update_revision


# -- access reviews, seeding, admin API, CLI ---------------------------------------------------------------------


def test_self_subject_access_review(cluster: Cluster) -> None:
    token = cluster.server.add_user(
        "u", [{"verbs": ["get", "patch"], "resources": ["secrets"], "namespaces": ["prod"]}]
    )

    def review(verb: str, namespace: str = "prod") -> dict[str, Any]:
        attributes = {"namespace": namespace, "verb": verb, "resource": "secrets", "name": "kosli-api-token"}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview"}
        body["spec"] = {"resourceAttributes": attributes}
        response = cluster.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token, body)
        assert response.status_code == 201
        return response.json()["status"]

    assert review("patch")["allowed"] is True
    assert review("create") == {"allowed": False}
    assert review("patch", "staging") == {"allowed": False}
    bad = cluster.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token, {"spec": {}})
    assert bad.status_code == 422


def test_seed_document_and_admin_endpoints_over_http(cluster: Cluster) -> None:
    admin = f"{cluster.server.url}/_sandbox"
    seeded = requests.post(
        f"{admin}/seed",
        json={
            "namespaces": ["ops"],
            "users": {"rotator": {"rules": [{"verbs": ["*"], "resources": ["*"], "namespaces": ["ops"]}]}},
            "secrets": [{"namespace": "ops", "name": "kosli-api-token", "data": {"key": "v1"}}],
            "workloads": [{"kind": "Deployment", "namespace": "ops", "name": "web", "replicas": 1}],
        },
        timeout=5,
    )
    assert seeded.status_code == 201
    token = seeded.json()["tokens"]["rotator"]
    assert cluster.call("GET", "/api/v1/namespaces/ops/secrets/kosli-api-token", token).status_code == 200
    assert cluster.call("GET", SECRET_PATH, token).status_code == 403
    secret = requests.get(f"{admin}/secrets/ops/kosli-api-token", timeout=5).json()
    assert secret == {"data": {"key": "v1"}, "writes": 1}
    workload = requests.get(f"{admin}/workloads/ops/deployments/web", timeout=5).json()
    assert workload["object"]["metadata"]["name"] == "web"
    assert workload["pods"][0]["started_with"] == {"kosli-api-token/key": fp("v1")}
    assert requests.get(f"{admin}/secrets/ops/missing", timeout=5).status_code == 404
    bad = requests.post(f"{admin}/seed", json={"clusters": []}, timeout=5)
    assert bad.status_code == 400


def test_cli_arguments_build_the_configured_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import __main__ as cli

    monkeypatch.setitem(cli.SANDBOXES, "kubernetes", "sandbox.kubernetes")
    args = cli._parser().parse_args(
        ["kubernetes", "--rollout-seconds", "2", "--stuck-rollouts", "--rate-limit", "5", "--rate-limit-window", "3"]
    )
    server = from_cli_args(args)
    assert server.settings() | {"latency": 0.0, "hour_seconds": 3600.0} == {
        "latency": 0.0,
        "hour_seconds": 3600.0,
        "rollout_seconds": 2.0,
        "stuck_rollouts": True,
        "rate_limit": 5,
        "rate_limit_window": 3.0,
    }
