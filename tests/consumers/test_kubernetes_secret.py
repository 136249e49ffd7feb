"""The kubernetes_secret consumer's quirks (cncf-kubernetes hook + official client) against the Kubernetes sandbox:
its annotations and the other keys, labels and annotations kept, rollouts and the pods' start times, reruns after
a stuck or failed rollout, RBAC refusals, kubeconfig errors, the Status bodies and API Priority and Fairness.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Outcomes are checked through the sandbox's own view: the decoded Secret data it stores, its write counts, and
the fingerprints of the Secret value each simulated pod started with.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

# Imported at collection on purpose: importing Airflow configures its logging, which replaces the root handlers,
# and so would drop caplog's handler if it first happened inside a test.
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from pydantic import TypeAdapter, ValidationError

from kosli_rotation.consumers import kubernetes_secret, transport
from kosli_rotation.consumers.kubernetes_secret import (
    RESTARTED_AT,
    WRITTEN_AT,
    WRITTEN_DIGEST,
    WRITTEN_FINGERPRINT,
    KubernetesSecretConfig,
    KubernetesSecretConsumer,
)
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint
from sandbox.kubernetes import KubernetesSandbox

NAMESPACE = "prod"
SECRET = "kosli-api-token"
KEY = "kosli_new_" + "N" * 40
OLD_KEY = "kosli_old_" + "O" * 40
RESTART_BOTH = [{"kind": "Deployment", "name": "web"}, {"kind": "StatefulSet", "name": "db"}]
SECRET_WRITES = ("create_secret", "patch_secret", "replace_secret")
FULL_ACCESS = [{"verbs": ["*"], "resources": ["*"], "namespaces": [NAMESPACE]}]


class Cluster:
    """The started sandbox with namespace prod, a rotator token limited to it, and the Airflow connection."""

    def __init__(self, server: KubernetesSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = server
        self.monkeypatch = monkeypatch
        server.add_namespace(NAMESPACE)
        self.token = server.add_user("system:serviceaccount:airflow:rotator", FULL_ACCESS)
        self.connect(self.token)

    def connect(self, token: str, conn_id: str = "kubernetes_default") -> None:
        extra = {"kube_config": self.server.kubeconfig(token, NAMESPACE)}
        self.monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "kubernetes", "extra": extra})
        )

    def consumer(self, **config: Any) -> KubernetesSecretConsumer:
        config = {"name": "k8s-reporter", "kind": "kubernetes_secret", "namespace": NAMESPACE, **config}
        return KubernetesSecretConsumer(KubernetesSecretConfig(**config))

    def workloads(self, replicas: int = 2) -> None:
        self.server.add_workload("Deployment", NAMESPACE, "web", replicas=replicas)
        self.server.add_workload("StatefulSet", NAMESPACE, "db", replicas=replicas)

    def stored(self) -> dict[str, str] | None:
        return self.server.secret_data(NAMESPACE, SECRET)

    def pods_started_with(self) -> set[str | None]:
        return set(self.server.pod_fingerprints("Deployment", NAMESPACE, "web")) | set(
            self.server.pod_fingerprints("StatefulSet", NAMESPACE, "db")
        )

    def generations(self) -> tuple[int, int]:
        return (
            self.server.workload("Deployment", NAMESPACE, "web")["metadata"]["generation"],
            self.server.workload("StatefulSet", NAMESPACE, "db")["metadata"]["generation"],
        )

    def requests(self, *handlers: str) -> int:
        counts = self.server.stats()["requests"]
        return sum(counts.get(handler, 0) for handler in handlers) if handlers else sum(counts.values())


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setattr(kubernetes_secret, "ROLLOUT_POLL_SECONDS", 0.05)
    with KubernetesSandbox(rollout_seconds=0.2) as server:
        yield Cluster(server, monkeypatch)


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without a Retry-After lasts 10 ms, so exhausting the retry budget stays fast."""
    monkeypatch.setattr(transport, "backoff_delay", lambda attempt, **_: 0.01)


def fan_out(consumer: KubernetesSecretConsumer, key: str) -> bool:
    """What rotation.fan_out does: write unless the consumer provably holds the key. True if it wrote."""
    if consumer.holds(key):
        return False
    consumer.write(key)
    return True


# -- create, update, idempotency ------------------------------------------------------------------------------


def test_creates_a_missing_secret(cluster: Cluster) -> None:
    consumer = cluster.consumer()
    consumer.check_access()
    assert consumer.read_digest() is None
    written_at = time.time()
    assert fan_out(consumer, KEY)
    assert cluster.stored() == {"key": KEY}
    secret = cluster.server.secret_object(NAMESPACE, SECRET)
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["annotations"][WRITTEN_DIGEST] == digest(KEY)
    assert secret["metadata"]["annotations"][WRITTEN_FINGERPRINT] == fingerprint(KEY)  # for people to read
    assert cluster.requests("create_secret") == 1
    assert consumer.read_digest() == digest(KEY)
    outcome = consumer.verify(KEY, written_at)
    assert outcome.ok and outcome.method == "read back"
    assert f"holds {fingerprint(KEY)}" in outcome.detail


def test_updates_only_its_key_keeping_other_keys_labels_and_annotations(cluster: Cluster) -> None:
    cluster.server.put_secret(
        NAMESPACE,
        SECRET,
        {"key": OLD_KEY, "other": "keep-me"},
        labels={"app.kubernetes.io/name": "k8s-reporter"},
        annotations={"owner": "platform"},
    )
    consumer = cluster.consumer()
    consumer.check_access()
    assert consumer.read_digest() == digest(OLD_KEY)
    assert fan_out(consumer, KEY)
    assert cluster.stored() == {"key": KEY, "other": "keep-me"}
    metadata = cluster.server.secret_object(NAMESPACE, SECRET)["metadata"]
    assert metadata["labels"] == {"app.kubernetes.io/name": "k8s-reporter"}
    assert metadata["annotations"]["owner"] == "platform"
    assert cluster.requests(*SECRET_WRITES) == 1
    assert consumer.verify(KEY, time.time()).ok
    stale = consumer.verify(OLD_KEY, time.time())
    assert not stale.ok
    assert f"holds {fingerprint(KEY)}, expected {fingerprint(OLD_KEY)}" in stale.detail


def test_custom_secret_name_and_key_through_a_kubeconfig_file(cluster: Cluster, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig.json"
    kubeconfig.write_text(json.dumps(cluster.server.kubeconfig(cluster.token)))
    connection = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
    cluster.monkeypatch.setenv("AIRFLOW_CONN_K8S_PROD", json.dumps(connection))
    cluster.server.put_secret(NAMESPACE, "reporter", {"apikey": OLD_KEY})
    consumer = cluster.consumer(conn_id="k8s_prod", secret_name="reporter", data_key="apikey")
    assert consumer.describe() == "Kubernetes Secret prod/reporter, key apikey (connection k8s_prod)"
    consumer.check_access()
    consumer.write(KEY)
    assert cluster.server.secret_data(NAMESPACE, "reporter") == {"apikey": KEY}


def test_idempotent_rerun_writes_and_restarts_nothing(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.workloads()
    consumer = cluster.consumer(restart=RESTART_BOTH)
    assert fan_out(consumer, KEY)
    generations = cluster.generations()
    writes = cluster.requests(*SECRET_WRITES, "patch_workload")
    assert not fan_out(cluster.consumer(restart=RESTART_BOTH), KEY)
    consumer.write(KEY)  # even a direct second write changes nothing
    assert cluster.requests(*SECRET_WRITES, "patch_workload") == writes
    assert cluster.server.secret_writes(NAMESPACE, SECRET) == 2  # the seed and our one write
    assert cluster.generations() == generations


# -- restarts and rollouts ------------------------------------------------------------------------------------


def test_restarts_workloads_so_their_pods_start_with_the_new_key(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.workloads(replicas=3)
    assert cluster.pods_started_with() == {fingerprint(OLD_KEY)}
    consumer = cluster.consumer(restart=RESTART_BOTH)
    assert "then rollout restart of deployment/web, statefulset/db" in consumer.describe()
    consumer.check_access()
    before = time.time()
    consumer.write(KEY)
    # write() returns only once both rollouts are complete: every pod now runs with the new key.
    assert cluster.pods_started_with() == {fingerprint(KEY)}
    pods = cluster.server.pods("Deployment", NAMESPACE, "web") + cluster.server.pods("StatefulSet", NAMESPACE, "db")
    assert len(pods) == 6 and all(pod["started_at"] >= before for pod in pods)
    assert cluster.generations() == (2, 2)
    template = cluster.server.workload("Deployment", NAMESPACE, "web")["spec"]["template"]
    assert RESTARTED_AT in template["metadata"]["annotations"]
    outcome = consumer.verify(KEY, before)
    assert outcome.ok and outcome.method == "read back + rollout status"
    assert "deployment/web: successfully rolled out (3/3" in outcome.detail
    assert "statefulset/db: rolling update complete: 3 pods" in outcome.detail


def test_rerun_after_a_stuck_rollout_waits_without_restarting_again(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.workloads()
    cluster.server.stuck_rollouts = True
    consumer = cluster.consumer(restart=RESTART_BOTH, rollout_timeout_seconds=0.5)
    with pytest.raises(ConsumerError) as error:
        fan_out(consumer, KEY)
    assert error.value.retryable
    assert "rollouts not complete after 0.5 s" in str(error.value)
    assert cluster.stored() == {"key": KEY}
    assert cluster.pods_started_with() == {fingerprint(OLD_KEY)}
    assert not consumer.verify(KEY, time.time() - 5).ok
    assert cluster.generations() == (2, 2)

    cluster.server.stuck_rollouts = False
    assert fan_out(cluster.consumer(restart=RESTART_BOTH), KEY)  # not held yet: the rollouts are unfinished
    assert cluster.generations() == (2, 2)  # no second restart
    assert cluster.server.secret_writes(NAMESPACE, SECRET) == 2  # no second Secret write
    assert cluster.pods_started_with() == {fingerprint(KEY)}
    assert consumer.verify(KEY, time.time() - 5).ok


def test_rerun_after_a_failure_before_the_restart_restarts(cluster: Cluster, quick_backoff: None) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.workloads()
    cluster.server.faults.add(r"/deployments/web$", method="PATCH", status=503, times=5)
    consumer = cluster.consumer(restart=RESTART_BOTH)
    with pytest.raises(ConsumerError) as error:
        fan_out(consumer, KEY)
    assert error.value.retryable and "patch deployment/web" in str(error.value)
    assert cluster.stored() == {"key": KEY}
    assert cluster.generations() == (1, 1)  # web failed first, so db was not reached
    failed = consumer.verify(KEY, time.time() - 5)
    assert not failed.ok and "deployment/web" in failed.detail and "restartedAt never" in failed.detail

    assert fan_out(consumer, KEY)
    assert cluster.generations() == (2, 2)
    assert cluster.server.secret_writes(NAMESPACE, SECRET) == 2
    assert cluster.pods_started_with() == {fingerprint(KEY)}
    assert consumer.verify(KEY, time.time() - 5).ok


def restart_by_hand(cluster: Cluster, plural: str, name: str, restarted_at: str) -> None:
    """What an operator's ``kubectl rollout restart`` (or a rollback to such a template) does, then its rollout."""
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}
    response = requests.patch(
        f"{cluster.server.url}/apis/apps/v1/namespaces/{NAMESPACE}/{plural}/{name}",
        json=body,
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/strategic-merge-patch+json"},
        timeout=5,
    )
    assert response.status_code == 200
    kind = "Deployment" if plural == "deployments" else "StatefulSet"

    def rolled_out() -> bool:
        workload = cluster.server.workload(kind, NAMESPACE, name)
        status = workload["status"]
        return (
            status["observedGeneration"] == workload["metadata"]["generation"]
            and status["updatedReplicas"] == status["replicas"] == workload["spec"]["replicas"]
            and status.get("currentRevision") == status.get("updateRevision")
        )

    deadline = time.monotonic() + 5
    while not rolled_out():
        assert time.monotonic() < deadline, f"{plural}/{name} did not roll out"
        time.sleep(0.05)


def test_a_key_placed_by_someone_else_still_gets_its_restart(cluster: Cluster) -> None:
    """The Secret holds the key but not our annotations: only pods restarted after Vault stored it count."""
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": KEY})
    cluster.workloads()
    consumer = cluster.consumer(restart=RESTART_BOTH)
    stored_in_vault = time.time() - 60
    unproven = consumer.verify(KEY, stored_in_vault)
    assert not unproven.ok and "restartedAt never" in unproven.detail
    restart_by_hand(cluster, "deployments", "web", "2020-01-01T00:00:00Z")
    restart_by_hand(cluster, "statefulsets", "db", "2020-01-01T00:00:00Z")
    too_early = consumer.verify(KEY, stored_in_vault)
    assert not too_early.ok and "restartedAt 2020-01-01T00:00:00+00:00" in too_early.detail
    now = datetime.now(UTC).isoformat()
    restart_by_hand(cluster, "deployments", "web", now)
    restart_by_hand(cluster, "statefulsets", "db", now)
    assert consumer.verify(KEY, stored_in_vault).ok
    assert not consumer.holds(KEY)  # holds() only trusts our own record of when the value was written

    assert fan_out(consumer, KEY)
    assert cluster.server.secret_writes(NAMESPACE, SECRET) == 1  # the value was left alone; only annotated
    assert cluster.generations() == (4, 4)
    assert cluster.pods_started_with() == {fingerprint(KEY)}
    assert consumer.holds(KEY)


def test_a_secret_annotated_by_an_older_version_is_not_trusted_but_written_again(cluster: Cluster) -> None:
    """Older versions annotated only the 48-bit fingerprint: too short to trust written-at by, so it counts as
    unknown (like a Secret someone else filled) and is annotated again, with the full digest."""
    old_stamp = "2020-01-01T00:00:00+00:00"
    cluster.server.put_secret(
        NAMESPACE, SECRET, {"key": KEY}, annotations={WRITTEN_FINGERPRINT: fingerprint(KEY), WRITTEN_AT: old_stamp}
    )
    consumer = cluster.consumer()
    assert consumer.read_digest() == digest(KEY)
    assert consumer.holds(KEY)  # no restart targets: the value itself, compared in full, is the proof

    cluster.workloads()
    restarting = cluster.consumer(restart=RESTART_BOTH)
    assert not restarting.holds(KEY)  # the old annotation does not say when this value was written
    assert fan_out(restarting, KEY)
    annotations = cluster.server.secret_object(NAMESPACE, SECRET)["metadata"]["annotations"]
    assert annotations[WRITTEN_DIGEST] == digest(KEY) and annotations[WRITTEN_AT] != old_stamp
    assert cluster.server.secret_writes(NAMESPACE, SECRET) == 1  # the value was left alone; only annotated
    assert cluster.pods_started_with() == {fingerprint(KEY)}
    assert restarting.holds(KEY)


def test_a_rollback_to_a_template_restarted_before_the_write_is_noticed(cluster: Cluster) -> None:
    cluster.workloads()
    consumer = cluster.consumer(restart=[{"kind": "Deployment", "name": "web"}])
    consumer.write(KEY)
    assert consumer.holds(KEY)
    restart_by_hand(cluster, "deployments", "web", "2020-01-01T00:00:00Z")
    assert not consumer.holds(KEY)
    assert not consumer.verify(KEY, time.time() - 60).ok
    assert fan_out(consumer, KEY)
    assert consumer.holds(KEY)


def test_cronjob_consumers_need_no_restart_and_verify_by_value(cluster: Cluster) -> None:
    cluster.workloads()
    consumer = cluster.consumer()
    consumer.write(KEY)
    assert cluster.generations() == (1, 1)
    assert consumer.verify(KEY, time.time()).method == "read back"


def test_progress_deadline_exceeded_fails_at_once(cluster: Cluster) -> None:
    cluster.server.add_workload("Deployment", NAMESPACE, "web", progress_deadline_seconds=1)
    cluster.server.stuck_rollouts = True
    consumer = cluster.consumer(restart=[{"kind": "Deployment", "name": "web"}], rollout_timeout_seconds=60)
    started = time.monotonic()
    with pytest.raises(ConsumerError) as error:
        consumer.write(KEY)
    assert time.monotonic() - started < 10
    assert not error.value.retryable
    assert "exceeded its progress deadline" in str(error.value)
    assert cluster.stored() == {"key": KEY}


# -- verify -------------------------------------------------------------------------------------------------


def test_verify_fails_when_the_secret_is_missing_or_holds_another_key(cluster: Cluster) -> None:
    consumer = cluster.consumer()
    missing = consumer.verify(KEY, time.time())
    assert not missing.ok and "holds nothing" in missing.detail
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    other = consumer.verify(KEY, time.time())
    assert not other.ok and fingerprint(OLD_KEY) in other.detail
    assert not consumer.holds(KEY)


def test_verify_fails_while_a_rollout_is_still_in_progress(cluster: Cluster) -> None:
    cluster.workloads()
    consumer = cluster.consumer(restart=RESTART_BOTH, rollout_timeout_seconds=0.2)
    cluster.server.stuck_rollouts = True
    with pytest.raises(ConsumerError):
        consumer.write(KEY)
    deadline = time.monotonic() + 5
    while any(
        cluster.server.workload(kind, NAMESPACE, name)["status"]["observedGeneration"] != 2
        for kind, name in (("Deployment", "web"), ("StatefulSet", "db"))
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    outcome = consumer.verify(KEY, time.time() - 5)
    assert not outcome.ok
    assert "0 out of 2 new replicas have been updated" in outcome.detail
    assert "statefulset/db: waiting for" in outcome.detail


# -- access and credentials -------------------------------------------------------------------------------


def test_wrong_token_fails_fast_without_retries(cluster: Cluster) -> None:
    cluster.connect("not-a-valid-token")
    consumer = cluster.consumer(restart=RESTART_BOTH)
    with pytest.raises(ConsumerError) as error:
        consumer.check_access()
    assert not error.value.retryable
    assert "'kubernetes_default'" in str(error.value) and "HTTP 401: Unauthorized" in str(error.value)
    assert "renew the token" in str(error.value)
    with pytest.raises(ConsumerError) as write_error:
        cluster.consumer().write(KEY)
    assert not write_error.value.retryable
    assert cluster.requests() <= 2
    assert cluster.stored() is None


def test_missing_rbac_permissions_are_named(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.server.add_workload("Deployment", NAMESPACE, "web")
    reader = cluster.server.add_user(
        "system:serviceaccount:airflow:reader", [{"verbs": ["get"], "resources": ["*"], "namespaces": [NAMESPACE]}]
    )
    cluster.connect(reader)
    with pytest.raises(ConsumerError) as error:
        cluster.consumer().check_access()
    assert not error.value.retryable
    assert "may not patch secrets/kosli-api-token in namespace prod" in str(error.value)
    with pytest.raises(ConsumerError) as write_error:
        cluster.consumer().write(KEY)
    assert not write_error.value.retryable
    assert 'cannot patch resource "secrets"' in str(write_error.value)
    assert cluster.stored() == {"key": OLD_KEY}

    secrets_only = cluster.server.add_user(
        "secrets-only", [{"verbs": ["get", "patch"], "resources": ["secrets"], "namespaces": [NAMESPACE]}]
    )
    cluster.connect(secrets_only)
    with pytest.raises(ConsumerError) as workload_error:
        cluster.consumer(restart=[{"kind": "Deployment", "name": "web"}]).check_access()
    assert 'deployments.apps "web" is forbidden' in str(workload_error.value)

    nobody = cluster.server.add_user("nobody", [])
    cluster.connect(nobody)
    with pytest.raises(ConsumerError) as read_error:
        cluster.consumer().check_access()
    assert "refused to get Secret prod/kosli-api-token" in str(read_error.value)


def test_check_access_names_what_is_missing_or_unrestartable(cluster: Cluster) -> None:
    with pytest.raises(ConsumerError) as forbidden_namespace:
        cluster.consumer(namespace="staging").check_access()  # the rotator may only use prod
    assert "refused to get Secret staging/kosli-api-token" in str(forbidden_namespace.value)
    cluster.connect(cluster.server.add_user("cluster-admin"))
    with pytest.raises(ConsumerError) as no_namespace:
        cluster.consumer(namespace="staging").check_access()
    assert "namespace staging does not exist" in str(no_namespace.value) and not no_namespace.value.retryable

    with pytest.raises(ConsumerError) as no_workload:
        cluster.consumer(restart=[{"kind": "Deployment", "name": "ghost"}]).check_access()
    assert "deployment/ghost does not exist in namespace prod" in str(no_workload.value)

    cluster.server.add_workload("Deployment", NAMESPACE, "paused", paused=True)
    cluster.server.add_workload("StatefulSet", NAMESPACE, "manual", update_strategy="OnDelete")
    cluster.server.add_workload("StatefulSet", NAMESPACE, "canary", partition=1)
    for name, kind, problem in [
        ("paused", "Deployment", "is paused"),
        ("manual", "StatefulSet", "OnDelete"),
        ("canary", "StatefulSet", "partition of 1"),
    ]:
        with pytest.raises(ConsumerError) as error:
            cluster.consumer(restart=[{"kind": kind, "name": name}]).check_access()
        assert problem in str(error.value) and not error.value.retryable


def test_missing_connection_is_a_clear_error(cluster: Cluster) -> None:
    with pytest.raises(ConsumerError) as error:
        cluster.consumer(conn_id="k8s_nowhere").check_access()
    assert "connection 'k8s_nowhere' is not defined: create a kubernetes connection" in str(error.value)
    assert not error.value.retryable


SECRET_SHAPED = "kosli_live_9f8e7d6c5b4a3928171605f4e3d2c1b0"


def quotes(secret: str, text: str) -> bool:
    """Whether ``text`` holds any 10 characters of ``secret`` in a row (PyYAML's snippet shows part of a line)."""
    return any(secret[i : i + 10] in text for i in range(len(secret) - 9))


@pytest.mark.parametrize("source", ["kube_config", "kube_config_path"])
def test_a_broken_kubeconfig_is_reported_by_position_never_by_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    """PyYAML quotes the line it broke on; in a kubeconfig that is often the token line."""
    text = f"apiVersion: v1\nusers:\n- name: rotator\n  user:\n    token: {SECRET_SHAPED}: [\n"
    if source == "kube_config_path":
        (tmp_path / "kubeconfig").write_text(text)
        text = str(tmp_path / "kubeconfig")
    extra = {source: text}
    monkeypatch.setenv("AIRFLOW_CONN_K8S_BROKEN", json.dumps({"conn_type": "kubernetes", "extra": extra}))
    consumer = KubernetesSecretConsumer(
        KubernetesSecretConfig(name="k8s-reporter", kind="kubernetes_secret", namespace=NAMESPACE, conn_id="k8s_broken")
    )
    with pytest.raises(ConsumerError) as error:
        consumer.check_access()
    message = str(error.value)
    assert "k8s-reporter" in message and "connection 'k8s_broken'" in message
    assert "ScannerError at line 5, column " in message and "mapping values are not allowed here" in message
    assert not quotes(SECRET_SHAPED, message) and "token" not in message


# -- rate limits and server errors ------------------------------------------------------------------------


def test_rate_limited_then_recovering(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.server.apply_settings({"rate_limit": 2, "rate_limit_window": 1.0})
    assert fan_out(cluster.consumer(), KEY)  # three requests: the third waits out Retry-After: 1
    assert cluster.server.stats()["rate_limited"] >= 1
    assert cluster.stored() == {"key": KEY}


def test_server_errors_then_recovering(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500}
    cluster.server.faults.add(r"/secrets/kosli-api-token$", method="PATCH", status=500, body=status, times=1)
    cluster.consumer().write(KEY)
    assert cluster.server.stats()["faults_fired"] == 1
    assert cluster.requests("patch_secret") == 2
    assert cluster.stored() == {"key": KEY}


def test_dropped_connections_go_through_our_retry_policy_only(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """urllib3's default would silently re-send a GET at once; we switch it off, so our backoff and budget apply."""
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    consumer = cluster.consumer()
    assert consumer.read_digest() == digest(OLD_KEY)  # the client is set up (and Airflow's logging)
    caplog.set_level(logging.WARNING)
    cluster.server.faults.add(r"/secrets/kosli-api-token$", method="GET", action="drop_before", times=1)
    assert consumer.read_digest() == digest(OLD_KEY)
    assert cluster.requests("get_secret") == 3
    assert [record.message for record in caplog.records if "retry 1 in" in record.message]


def test_create_race_falls_back_to_patch(cluster: Cluster) -> None:
    """Someone creates the Secret between our read (404) and our create (409 AlreadyExists)."""
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY, "other": "theirs"})
    not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
    cluster.server.faults.add(r"/secrets/kosli-api-token$", method="GET", status=404, body=not_found, times=1)
    cluster.consumer().write(KEY)
    assert cluster.requests("create_secret") == 1
    assert cluster.stored() == {"key": KEY, "other": "theirs"}


def test_not_implemented_is_not_retried(cluster: Cluster) -> None:
    """501: the server will not learn the method by the next attempt (the shared transport's rule)."""
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.server.faults.add(r"/secrets/kosli-api-token$", method="PATCH", status=501, times=None)
    with pytest.raises(ConsumerError) as error:
        cluster.consumer().write(KEY)
    assert not error.value.retryable and "HTTP 501" in str(error.value)
    assert cluster.requests("patch_secret") == 1


def test_a_wait_longer_than_a_task_waits_fails_retryable_at_once(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.server.faults.add(
        r"/secrets/kosli-api-token$", method="PATCH", status=429, headers={"Retry-After": "600"}, times=None
    )
    started = time.monotonic()
    with pytest.raises(ConsumerError) as error:
        cluster.consumer().write(KEY)
    assert time.monotonic() - started < 5
    assert error.value.retryable and "asks to wait 600 s" in str(error.value)
    assert cluster.requests("patch_secret") == 1


def test_retry_warnings_show_the_status_message_not_the_whole_answer(
    cluster: Cluster, quick_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's ApiException text carries every response header and the whole body: never logged."""
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    consumer = cluster.consumer()
    assert consumer.read_digest() == digest(OLD_KEY)  # the client is set up (and Airflow's logging)
    caplog.set_level(logging.WARNING)
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd is busy", "code": 503}
    cluster.server.faults.add(r"/secrets/kosli-api-token$", method="PATCH", status=503, body=status, times=1)
    consumer.write(KEY)
    warnings = [record.getMessage() for record in caplog.records if "retry 1 in" in record.getMessage()]
    assert warnings and "HTTP 503: etcd is busy" in warnings[0]
    assert "HTTP response headers" not in caplog.text and '"kind"' not in caplog.text


def test_refused_writes_are_not_retried(cluster: Cluster) -> None:
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY}, immutable=True)
    with pytest.raises(ConsumerError) as error:
        cluster.consumer().write(KEY)
    assert not error.value.retryable and "immutable" in str(error.value)
    assert cluster.requests("patch_secret") == 1


def test_the_key_is_never_logged_or_raised(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY})
    cluster.workloads()
    cluster.consumer(restart=RESTART_BOTH).write(KEY)
    cluster.server.put_secret(NAMESPACE, SECRET, {"key": OLD_KEY}, immutable=True)
    with pytest.raises(ConsumerError) as error:
        cluster.consumer().write(KEY)
    encoded = base64.b64encode(KEY.encode()).decode()
    for text in (caplog.text, str(error.value)):
        assert KEY not in text and encoded not in text
    assert fingerprint(KEY) in caplog.text


# -- configuration ----------------------------------------------------------------------------------------


def test_config_defaults_follow_the_k8s_reporter_chart_and_the_provider() -> None:
    config = KubernetesSecretConfig(name="reporter", kind="kubernetes_secret", namespace="kosli")
    assert (config.conn_id, config.secret_name, config.data_key) == ("kubernetes_default", "kosli-api-token", "key")
    assert (KubernetesHook.default_conn_name, KubernetesHook.conn_type) == (config.conn_id, "kubernetes")
    assert (config.restart, config.rollout_timeout_seconds) == ((), 600)
    parsed = TypeAdapter(KubernetesSecretConfig).validate_python(
        {"name": "r", "kind": "kubernetes_secret", "namespace": "kosli", "restart": RESTART_BOTH}
    )
    assert [target.ref for target in parsed.restart] == ["deployment/web", "statefulset/db"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"namespace": "Prod"}, "not a DNS-1123 label"),
        ({"namespace": "p" * 64}, "not a DNS-1123 label"),
        ({"secret_name": "kosli_api_token"}, "secret_name 'kosli_api_token' is not a DNS-1123 subdomain"),
        ({"data_key": "bad key"}, "data_key 'bad key'"),
        ({"data_key": ".."}, "data_key '..'"),
        ({"restart": [{"kind": "DaemonSet", "name": "x"}]}, "Deployment"),
        ({"restart": [{"kind": "Deployment", "name": "Web"}]}, "workload name 'Web'"),
        ({"restart": [{"kind": "Deployment", "name": "web"}] * 2}, "deployment/web more than once"),
        ({"rollout_timeout_seconds": 0}, "greater than 0"),
        ({"secret": "typo"}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        KubernetesSecretConfig(**{"name": "r", "kind": "kubernetes_secret", "namespace": "prod", **fields})
    assert message in str(error.value)
