"""GCP Secret Manager sandbox: the REST v1 surface google-cloud-secret-manager's ``rest`` transport calls.

Contract: the client's ``transports/rest_base.py`` (paths and bodies), the v1 REST reference and
/work/shared/reference/field_notes_2026-12.md section 2. Served: create (``POST /v1/projects/{p}/secrets?
secretId=``, 409 ALREADY_EXISTS), get and list secrets (``versionAliases`` shown), ``:addVersion`` (checks
``dataCrc32c`` when given), get, access, list, ``:disable``, ``:enable`` and ``:destroy`` of versions, and
``:testIamPermissions`` on a secret. ``latest`` is the highest version number whatever its state, so a disabled
latest makes the secret unreadable (400 FAILED_PRECONDITION). Enums are integers when the request asks for
``enum-encoding=int`` in ``$alt`` (the client always does), names otherwise. Errors are ``{"error": {"code",
"message", "status"}}``. AddSecretVersion is limited per secret (2 a second by default: 429 RESOURCE_EXHAUSTED).
Resource names in answers use the project number, as GCP's do. Callers authenticate with a bearer token
(``sandbox.gcp_iam``: self-signed JWTs, or tokens from ``POST /token``); a missing permission is 403 with GCP's
"(or it may not exist)" wording, which is also what a caller without it gets for what does not exist. Where
public material is silent the choice made here is marked ``# Assumption:``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
from typing import Any

from sandbox.gcp_iam import GcpIam
from sandbox.gcp_secret_store import (
    DESTROYED,
    DISABLED,
    ENABLED,
    MAX_PAYLOAD,
    SECRET_ID,
    SERVICE_AUDIENCE,
    STATES,
    UNAUTHENTICATED,
    Project,
    Secret,
    SecretStore,
    Version,
    crc32c,
    error_body,
    fail,
)
from sandbox.server import InvalidJSONBody, Request, Response, SandboxServer, json_response, route

SECRET = r"/v1/projects/(?P<project>[^/]+)/secrets/(?P<secret>[^/:]+)"
VERSION = SECRET + r"/versions/(?P<version>[^/:]+)"


class GcpSecretManagerSandbox(SecretStore, SandboxServer):
    """Projects of secrets, their versions, and the IAM (``self.iam``) that decides who may do what."""

    def __init__(self, *, add_version_qps: int = 2, page_size: int = 25, **options: Any) -> None:
        super().__init__(**options)
        self.iam = GcpIam(lambda: f"{self.url}/token", audiences=[SERVICE_AUDIENCE])
        self.page_size = page_size  # Assumption: the default page size is not published
        self.add_limiter = self.add_rate_limiter(add_version_qps, 1.0)
        self._projects: dict[str, Project] = {}
        self._numbers = itertools.count(482910357001)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            adds = sum(s.adds for p in self._projects.values() for s in p.secrets.values())
        return {**super().stats(), "version_adds": adds, "tokens_minted": self.iam.tokens_minted}

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """``{"projects": ["acme-prod"], "service_accounts": [{"email", "roles"}], "secrets": [{"project",
        "secret_id", "value"?}]}``; returns ``{"keys": {email: key file}}``."""
        for project in document.get("projects", []):
            self.add_project(project)
        keys = {
            spec["email"]: self.add_service_account(spec["email"], spec.get("roles", ()))
            for spec in document.get("service_accounts", [])
        }
        for spec in document.get("secrets", []):
            self.put_secret(spec["project"], spec["secret_id"], spec.get("value"))
        return {"keys": keys}

    # -- helpers ------------------------------------------------------------------------------------------
    def _authorize(self, request: Request, permission: str, resource: str) -> Project:
        """The caller's project after auth (401) and the permission check (403) on ``projects/<p>/...``."""
        caller = self.iam.caller(request.headers.get("Authorization"))
        if caller is None:
            raise fail(401, UNAUTHENTICATED)
        project_ref, _, rest = resource.removeprefix("projects/").partition("/")
        project = next((p for p in self._projects.values() if project_ref in (p.project_id, str(p.number))), None)
        iam_resource = f"projects/{project.project_id if project else project_ref}" + (f"/{rest}" if rest else "")
        if project is None or permission not in self.iam.permissions(caller, iam_resource):
            raise fail(403, f"Permission '{permission}' denied for resource '{resource}' (or it may not exist).")
        return project

    def _found(self, project: Project, secret_id: str, *, versions: bool = False) -> Secret:
        secret = project.secrets.get(secret_id)
        if secret is None:
            suffix = " or has no versions" if versions else ""
            raise fail(404, f"Secret [projects/{project.number}/secrets/{secret_id}] not found{suffix}.")
        return secret

    def _version(self, project: Project, secret: Secret, ref: str) -> Version:
        name = f"projects/{project.number}/secrets/{secret.secret_id}"
        if ref == "latest":
            chosen = secret.latest()
            if chosen is None:
                raise fail(404, f"Secret [{name}] not found or has no versions.")
            return chosen
        number = secret.aliases.get(ref) if not ref.isdigit() else int(ref)
        if number is None or not 1 <= number <= len(secret.versions):
            raise fail(404, f"Secret Version [{name}/versions/{ref}] not found.")
        return secret.versions[number - 1]

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return json_response(400, error_body(400, f"Invalid JSON payload received. {error}"))

    def not_found(self, request: Request) -> Response:
        return json_response(404, error_body(404, "Requested entity was not found."))

    # -- OAuth ----------------------------------------------------------------------------------------------

    @route("POST", r"/token")
    def token(self, request: Request) -> Response:
        status, body = self.iam.token_endpoint(request.body)
        return json_response(status, body)

    # -- secrets --------------------------------------------------------------------------------------------

    @route("POST", r"/v1/projects/(?P<project>[^/]+)/secrets")
    def create_secret(self, request: Request, project: str) -> Response:
        secret_id = request.query_value("secretId") or ""
        with self.lock:
            owner = self._authorize(request, "secretmanager.secrets.create", f"projects/{project}")
            if not SECRET_ID.match(secret_id):
                raise fail(400, "Secret ID must match [a-zA-Z_0-9-]{1,255}.")  # Assumption: the exact wording
            body = request.json()
            replication = body.get("replication") if isinstance(body, dict) else None
            replicas = (replication or {}).get("userManaged", {}).get("replicas") if replication else None
            if not replication or ("automatic" not in replication and not replicas):
                raise fail(400, "Secret.replication is required.")  # Assumption: the exact wording
            if replicas is not None and not all(isinstance(r, dict) and r.get("location") for r in replicas):
                raise fail(400, "Secret.replication.user_managed.replicas[].location is required.")
            if secret_id in owner.secrets:
                raise fail(409, f"Secret [projects/{owner.number}/secrets/{secret_id}] already exists.")
            secret = Secret(secret_id, replication, dict(body.get("labels") or {}), self.clock.now())
            owner.secrets[secret_id] = secret
            return json_response(200, self._secret_json(owner, secret))

    @route("GET", r"/v1/projects/(?P<project>[^/]+)/secrets")
    def list_secrets(self, request: Request, project: str) -> Response:
        with self.lock:
            owner = self._authorize(request, "secretmanager.secrets.list", f"projects/{project}")
            page, token = self._page(request, sorted(owner.secrets.values(), key=lambda s: s.secret_id))
            shown: dict[str, Any] = {"secrets": [self._secret_json(owner, s) for s in page]}
            shown["totalSize"] = len(owner.secrets)
            return json_response(200, {**shown, **({"nextPageToken": token} if token else {})})

    @route("GET", SECRET)
    def get_secret(self, request: Request, project: str, secret: str) -> Response:
        with self.lock:
            owner = self._authorize(request, "secretmanager.secrets.get", f"projects/{project}/secrets/{secret}")
            return json_response(200, self._secret_json(owner, self._found(owner, secret)))

    @route("POST", SECRET + r":testIamPermissions")
    def test_iam_permissions(self, request: Request, project: str, secret: str) -> Response:
        caller = self.iam.caller(request.headers.get("Authorization"))
        if caller is None:
            raise fail(401, UNAUTHENTICATED)
        body = request.json()
        asked = body.get("permissions", []) if isinstance(body, dict) else []
        with self.lock:
            owner = self._projects.get(project) or next(
                (p for p in self._projects.values() if str(p.number) == project), None
            )
            if owner is None or secret not in owner.secrets:  # Assumption: as for any other method on a secret
                raise fail(404, f"Secret [projects/{owner.number if owner else project}/secrets/{secret}] not found.")
            held = self.iam.permissions(caller, f"projects/{owner.project_id}/secrets/{secret}")
        return json_response(200, {"permissions": [p for p in asked if p in held]} if held & set(asked) else {})

    # -- versions -------------------------------------------------------------------------------------------

    @route("POST", SECRET + r":addVersion")
    def add_secret_version(self, request: Request, project: str, secret: str) -> Response:
        with self.lock:
            owner = self._authorize(request, "secretmanager.versions.add", f"projects/{project}/secrets/{secret}")
            stored = self._found(owner, secret)
            body = request.json()
            payload = body.get("payload") if isinstance(body, dict) else None
            try:
                data = base64.b64decode((payload or {}).get("data", ""), validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise fail(400, "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed.") from None
            if len(data) > MAX_PAYLOAD:
                raise fail(400, f"Secret payload must be at most {MAX_PAYLOAD} bytes.")
            given = (payload or {}).get("dataCrc32c")
            if given is not None and str(given) != str(crc32c(data)):
                raise fail(400, "Checksum mismatch: the data_crc32c provided does not match the payload data.")
            if self.add_limiter.hit(f"{owner.number}/{secret}"):
                raise fail(
                    429,
                    "Quota exceeded for quota metric 'Secret version adds' and limit 'Secret version adds per "
                    f"second per secret' of service 'secretmanager.googleapis.com' for consumer "
                    f"'project_number:{owner.number}'.",  # Assumption: GCP's exact wording; no Retry-After
                )
            version = Version(len(stored.versions) + 1, data, self.clock.now(), checksum_given=given is not None)
            stored.versions.append(version)
            stored.adds += 1
            return json_response(200, self._version_json(request, owner, stored, version))

    @route("GET", SECRET + r"/versions")
    def list_secret_versions(self, request: Request, project: str, secret: str) -> Response:
        with self.lock:
            resource = f"projects/{project}/secrets/{secret}"
            owner = self._authorize(request, "secretmanager.versions.list", resource)
            stored = self._found(owner, secret)
            newest_first = list(reversed(stored.versions))
            page, token = self._page(request, newest_first)
            shown: dict[str, Any] = {"versions": [self._version_json(request, owner, stored, v) for v in page]}
            shown["totalSize"] = len(newest_first)
            return json_response(200, {**shown, **({"nextPageToken": token} if token else {})})

    @route("GET", VERSION)
    def get_secret_version(self, request: Request, project: str, secret: str, version: str) -> Response:
        with self.lock:
            resource = f"projects/{project}/secrets/{secret}/versions/{version}"
            owner = self._authorize(request, "secretmanager.versions.get", resource)
            stored = self._found(owner, secret)
            return json_response(200, self._version_json(request, owner, stored, self._version(owner, stored, version)))

    @route("GET", VERSION + r":access")
    def access_secret_version(self, request: Request, project: str, secret: str, version: str) -> Response:
        with self.lock:
            resource = f"projects/{project}/secrets/{secret}/versions/{version}"
            owner = self._authorize(request, "secretmanager.versions.access", resource)
            stored = self._found(owner, secret, versions=True)
            chosen = self._version(owner, stored, version)
            name = f"projects/{owner.number}/secrets/{secret}/versions/{chosen.number}"
            if chosen.state != ENABLED or chosen.data is None:
                raise fail(400, f"Secret Version [{name}] is in {STATES[chosen.state]} state.", "FAILED_PRECONDITION")
            data = base64.b64encode(chosen.data).decode()
            return json_response(200, {"name": name, "payload": {"data": data, "dataCrc32c": str(crc32c(chosen.data))}})

    @route("POST", VERSION + r":(?P<verb>disable|enable|destroy)")
    def change_version_state(self, request: Request, project: str, secret: str, version: str, verb: str) -> Response:
        with self.lock:
            resource = f"projects/{project}/secrets/{secret}/versions/{version}"
            owner = self._authorize(request, f"secretmanager.versions.{verb}", resource)
            stored = self._found(owner, secret)
            if not version.isdigit():  # Assumption: state changes take a version number, not latest or an alias
                raise fail(400, f"Invalid resource field value in the request: version {version!r}.")
            chosen = self._version(owner, stored, version)
            if chosen.state == DESTROYED:  # Assumption: a destroyed version cannot change state, even again
                name = f"projects/{owner.number}/secrets/{secret}/versions/{chosen.number}"
                raise fail(400, f"Secret Version [{name}] is in DESTROYED state.", "FAILED_PRECONDITION")
            self._set_state(chosen, {"disable": DISABLED, "enable": ENABLED, "destroy": DESTROYED}[verb])
            return json_response(200, self._version_json(request, owner, stored, chosen))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--add-version-qps", type=int, default=2, help="AddSecretVersion calls per second per secret")
    parser.add_argument("--page-size", type=int, default=25, help="default page size of listings")


def from_cli_args(args: argparse.Namespace) -> GcpSecretManagerSandbox:
    return GcpSecretManagerSandbox(
        add_version_qps=args.add_version_qps,
        page_size=args.page_size,
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        access_log=args.access_log,
    )


__all__ = ["GcpSecretManagerSandbox", "add_cli_arguments", "crc32c", "error_body", "from_cli_args"]
