"""Credentials a client obtains inside a consumer are held for the masker the moment the consumer has them."""

from __future__ import annotations

import json

import pytest
from kubernetes.client import Configuration

from kosli_rotation.consumers.kubernetes_secret import KubernetesSecretConfig, KubernetesSecretConsumer
from kosli_rotation.held_credentials import hold_kube_credentials
from sandbox.kubernetes import KubernetesSandbox
from tests.support.client_logs import held_by_the_masker

NAMESPACE = "prod"


def test_the_kubeconfig_token_is_held_when_the_kubernetes_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with KubernetesSandbox() as server:
        server.add_namespace(NAMESPACE)
        token = server.add_user(
            "system:serviceaccount:airflow:rotator", [{"verbs": ["*"], "resources": ["*"], "namespaces": [NAMESPACE]}]
        )
        extra = {"kube_config": server.kubeconfig(token, NAMESPACE)}
        monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes", "extra": extra}))
        consumer = KubernetesSecretConsumer(
            KubernetesSecretConfig(name="k8s", kind="kubernetes_secret", namespace=NAMESPACE)
        )
        consumer.check_access()
    assert held_by_the_masker(token)


def test_kube_tokens_passwords_client_keys_and_refreshed_tokens_are_held(tmp_path) -> None:
    key_file = tmp_path / "client.key"
    key_file.write_text("-----BEGIN EC PRIVATE KEY-----\nkube-client-key-material-0001\n-----END EC PRIVATE KEY-----\n")
    configuration = Configuration()
    configuration.api_key = {"authorization": "Bearer kube-static-token-0001"}
    configuration.password = "kube-basic-password-0001"
    configuration.key_file = str(key_file)
    configuration.refresh_api_key_hook = lambda config: config.api_key.update(
        authorization="Bearer kube-refreshed-0001"
    )

    hold_kube_credentials(configuration)
    assert held_by_the_masker("kube-static-token-0001")
    assert held_by_the_masker("kube-basic-password-0001")
    assert held_by_the_masker("kube-client-key-material-0001")
    assert not held_by_the_masker("kube-refreshed-0001")
    configuration.refresh_api_key_hook(configuration)
    assert held_by_the_masker("kube-refreshed-0001"), "a token from a refresh is held when it arrives"
