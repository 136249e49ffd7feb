"""Kubernetes: a Secret ``kosli-{target}`` (data key ``key``) in the first of the fleet's namespaces of the
Kubernetes sandbox, optionally read by a Deployment ``{target}-web`` that the entry asks to restart.

Quirks: ``restart`` (add the Deployment, ``replicas`` pods), ``namespace`` and ``data_key``. The rotator is a
service account allowed everything in the fleet's namespaces (RBAC), by bearer token in a kubeconfig.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import ROTATOR, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.kubernetes import KubernetesSandbox

CONN_ID = "kubernetes_default"


class KubernetesSecretAdapter(ServedAdapter):
    kind = "kubernetes_secret"
    service = "Kubernetes"
    write_path = r"/api/v1/namespaces/[^/]+/secrets(/[^/]+)?$"

    server: KubernetesSandbox

    def start(self, stack: contextlib.ExitStack) -> None:
        namespaces = list(self.settings.kubernetes_namespaces)
        self.server = stack.enter_context(KubernetesSandbox(rollout_seconds=self.settings.rollout_seconds))
        for namespace in namespaces:
            self.server.add_namespace(namespace)
        token = self.server.add_user(
            f"system:serviceaccount:airflow:{ROTATOR}",
            [{"verbs": ["*"], "resources": ["*"], "namespaces": namespaces}],
        )
        self.url = self.server.url
        self.connections[CONN_ID] = self._connection(token)

    def _connection(self, token: str) -> dict[str, Any]:
        kubeconfig = self.server.kubeconfig(token, self.settings.kubernetes_namespaces[0])
        return {"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: self._connection(invalid_token("", 32))}

    def seed(
        self,
        name: str,
        value: str | None,
        target: str,
        *,
        restart: bool = False,
        replicas: int = 2,
        namespace: str | None = None,
        data_key: str = "key",
    ) -> SeededConsumer:
        """``value`` None: the namespace exists, the Secret not yet (no Deployment can read it then)."""
        kubernetes = self.server
        namespace = namespace or self.settings.kubernetes_namespaces[0]
        secret, deployment = f"kosli-{target}", f"{target}-web"
        if value is not None:
            kubernetes.put_secret(namespace, secret, {data_key: value})
        elif restart:
            raise ValueError("a Deployment reading the Secret needs the Secret: seed a value with restart")
        entry: dict[str, Any] = {
            "name": name,
            "kind": self.kind,
            "namespace": namespace,
            "secret_name": secret,
            "data_key": data_key,
        }
        pod_fingerprints = None
        if restart:
            kubernetes.add_workload("Deployment", namespace, deployment, replicas=replicas, secret=secret, key=data_key)
            entry["restart"] = [{"kind": "Deployment", "name": deployment}]
            entry["rollout_timeout_seconds"] = 60

            def pod_fingerprints() -> list[str | None]:
                return kubernetes.pod_fingerprints("Deployment", namespace, deployment)

        def read() -> str | None:
            return (kubernetes.secret_data(namespace, secret) or {}).get(data_key)

        def marks() -> tuple[int, int] | int:
            writes = kubernetes.secret_writes(namespace, secret)
            if not restart:
                return writes
            return (writes, kubernetes.workload("Deployment", namespace, deployment)["metadata"]["generation"])

        return SeededConsumer(
            entry,
            f"Kubernetes Secret {namespace}/{secret}, data key {data_key!r}",
            f"{namespace}/{secret}",
            read=read,
            write_mark=marks,
            canary=f"Deployment {deployment} restarted" if restart else "",
            pod_fingerprints=pod_fingerprints,
        )


ADAPTER = KubernetesSecretAdapter
