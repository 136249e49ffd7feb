"""GCP Secret Manager: a secret ``{target}-kosli`` of project ``acme-prod`` whose latest version holds the value, in
the GCP Secret Manager sandbox (``sandbox.gcp_secret_manager``).

The rotator is a service account with the least privilege the README names, bound on the project (a secret the
tool creates has no bindings of its own yet): ``roles/secretmanager.secretVersionAdder`` and ``secretAccessor`` (add
and read versions), ``roles/secretmanager.viewer`` (read the secret and its aliases, list versions) and a custom
role with ``secretmanager.secrets.create`` alone. Its connection carries the key file as an object in
``keyfile_dict`` (so the contract's credential scan sees its ``private_key``) and the sandbox as ``api_endpoint``.

Quirks of ``seed``: any ``gcp_secret_manager`` config field (``retire``, ``replication``...) goes into the entry
(``retire: disable|destroy`` also binds ``roles/secretmanager.secretVersionManager`` on the secret, as the README
asks, or preflight refuses the entry); ``aliases`` (alias -> version number) are set on the seeded secret.
``wrong_credentials`` is a key of an account the sandbox never issued (its JWTs are refused with 401).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import InjectedFault, SeededConsumer
from sandbox.adapters.served import ServedAdapter
from sandbox.gcp_iam import GcpIam
from sandbox.gcp_secret_manager import GcpSecretManagerSandbox
from sandbox.gcp_secret_store import error_body

CONN_ID = "google_cloud_default"
PROJECT = "acme-prod"
ROTATOR_EMAIL = f"kosli-rotator@{PROJECT}.iam.gserviceaccount.com"
CREATOR_ROLE = f"projects/{PROJECT}/roles/kosliSecretCreator"
ROTATOR_ROLES = (
    "roles/secretmanager.secretVersionAdder",
    "roles/secretmanager.secretAccessor",
    "roles/secretmanager.viewer",
    CREATOR_ROLE,
)
#: What ``retire: disable|destroy`` needs beyond those, bound on the secret alone.
RETIRER_ROLE = "roles/secretmanager.secretVersionManager"


def connection(key: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """A ``google_cloud_platform`` connection with this key file, reaching ``endpoint``."""
    return {
        "conn_type": "google_cloud_platform",
        "extra": {"keyfile_dict": key, "project": PROJECT, "api_endpoint": endpoint},
    }


class GcpSecretManagerAdapter(ServedAdapter):
    kind = "gcp_secret_manager"
    service = "GCP Secret Manager"
    write_path = r":addVersion$"
    write_methods = frozenset({"POST"})

    server: GcpSecretManagerSandbox

    def start(self, stack: contextlib.ExitStack) -> None:
        self.server = stack.enter_context(GcpSecretManagerSandbox())
        self.server.add_project(PROJECT)
        self.server.iam.add_role(CREATOR_ROLE, ["secretmanager.secrets.create"])
        self.url = self.server.url
        self.connections[CONN_ID] = connection(self.server.add_service_account(ROTATOR_EMAIL, ROTATOR_ROLES), self.url)

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        stranger = GcpIam(lambda: self.server.iam.token_uri)  # issues keys this sandbox never heard of
        key = stranger.add_service_account(f"stranger@{PROJECT}.iam.gserviceaccount.com")
        return {CONN_ID: connection(key, self.url)}

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        """AddSecretVersion answered with ``status`` in GCP's error shape."""
        rule = self.server.faults.add(
            self.write_path,
            method="POST",
            status=status,
            body=error_body(status, "Injected failure."),
            headers=dict(headers or {}),
            times=times or None,
        )

        def remove() -> None:
            rule.when = lambda _request: False  # listed still (with its count), matching nothing

        return InjectedFault(lambda: rule.fired, remove)

    def seed(self, name: str, value: str | None, target: str, **quirks: Any) -> SeededConsumer:
        """``value`` None: the secret does not exist yet (the rotator may create it)."""
        server, secret_id = self.server, f"{target}-kosli"
        aliases = quirks.pop("aliases", {})
        if value is not None:
            server.put_secret(PROJECT, secret_id, value)
        for alias, number in aliases.items():
            server.set_alias(PROJECT, secret_id, alias, number)
        if quirks.get("retire", "none") != "none":
            server.iam.grant(ROTATOR_EMAIL, RETIRER_ROLE, f"projects/{PROJECT}/secrets/{secret_id}")

        def read() -> str | None:
            data = server.payload(PROJECT, secret_id)
            return data.decode() if data is not None else None

        entry = {"name": name, "kind": self.kind, "project": PROJECT, "secret_id": secret_id, **quirks}
        return SeededConsumer(
            entry,
            f"GCP Secret Manager projects/{PROJECT}/secrets/{secret_id}",
            secret_id,
            read=read,
            write_mark=lambda: len(server.versions(PROJECT, secret_id)),
        )


ADAPTER = GcpSecretManagerAdapter
