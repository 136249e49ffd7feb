"""An Azure Key Vault (secrets only) over HTTPS, with its own Entra ID authority, for azure-keyvault-secrets.

What the real service does and the client depends on: TLS (the client sends no bearer token over plain HTTP), the
bearer challenge (a request without a valid token gets 401 and ``WWW-Authenticate: Bearer
authorization="<authority>/<tenant>", resource="https://vault.azure.net"``, and the client fetches a token for that
tenant and resource from ``sandbox.azure_identity``), a required ``api-version``, versions (every PUT makes one;
GET without a version reads the latest, a disabled one answers 403 ``SecretDisabled``), version listings paged by
``nextLink``, soft delete (a soft-deleted name answers PUT with 409 ``ObjectIsDeletedButRecoverable`` until it is
recovered, which takes ``recover_seconds`` to show, or purged), role-based access per principal (403
``ForbiddenByRbac``) and throttling per vault (429 ``Throttled`` with ``Retry-After``). Errors are
``{"error": {"code", "message", "innererror"}}``.

Test view: ``value(name, version=None)``, ``versions(name)``, ``stats()["writes"]``; seeding: ``add_app``,
``add_managed_identity``, ``put_secret``, ``soft_delete``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.azure_identity import OFFICER, VAULT_RESOURCE, EntraIdentity
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
)
from sandbox.tls import CertificateAuthority, TlsServing, make_authority

NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
MAX_PAGE = 25
RECOVERY_LEVEL = "Recoverable+Purgeable"
RETENTION_DAYS = 90
SECRET_PATH = r"/secrets/(?P<name>[^/]+)"
VERSION_PATH = SECRET_PATH + r"/?(?P<version>(?!versions$)[^/]*)"  # "" (or no "/"): the latest


@dataclass
class Version:
    id: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Secret:
    versions: list[Version] = field(default_factory=list)
    deleted: int | None = None  # when it was soft-deleted
    visible_at: float = 0.0  # a recovered secret shows again from then on


def kv_error(status: int, code: str, message: str, inner: str | None = None, **headers: str) -> Abort:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return Abort(json_response(status, {"error": error}, headers))


def _optional_limit(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"expected a positive integer or null, got {value!r}")
    return value


def _page_size(value: Any) -> int:
    if _optional_limit(value) is None or value > MAX_PAGE:
        raise ValueError(f"expected an integer 1..{MAX_PAGE}, got {value!r}")
    return int(value)


class AzureKeyVaultSandbox(TlsServing, EntraIdentity, SandboxServer):
    """One vault and its tenant. ``authority`` (``sandbox.tls.make_authority``) makes it serve HTTPS."""

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "rate_limit": _optional_limit,
        "rate_limit_window": positive_float,
        "page_size": _page_size,
        "recover_seconds": non_negative_float,
    }

    def __init__(
        self,
        *,
        authority: CertificateAuthority | None = None,
        tenant: str | None = None,
        resource: str = VAULT_RESOURCE,
        rate_limit: int | None = None,
        rate_limit_window: float = 10.0,
        page_size: int = MAX_PAGE,
        recover_seconds: float = 0.2,
        token_seconds: float = 3600.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.init_identity(tenant, token_seconds)
        self.authority = authority
        self.tls_context = authority.server_context() if authority else None
        self.resource = resource
        self.rate_limit = _optional_limit(rate_limit)
        self.page_size = _page_size(page_size)
        self.recover_seconds = recover_seconds
        self._limiter = self.add_rate_limiter(self.rate_limit or 1, rate_limit_window)
        self.secrets: dict[str, Secret] = {}
        self._writes = {operation: 0 for operation in ("set", "update", "delete", "recover", "purge")}

    @property
    def rate_limit_window(self) -> float:
        return self._limiter.window_seconds

    @rate_limit_window.setter
    def rate_limit_window(self, value: float) -> None:
        self._limiter.window_seconds = value

    # -- test view and seeding (in-process) -------------------------------------------------------------

    def put_secret(self, name: str, value: str, *, enabled: bool = True, content_type: str | None = None) -> str:
        """Add a version holding ``value`` (not counted as a client write); returns its version id."""
        if not NAME.match(name):
            raise ValueError(f"invalid secret name {name!r}")
        with self.lock:
            version = Version(uuid.uuid4().hex, value, content_type, {}, enabled=enabled)
            self.secrets.setdefault(name, Secret()).versions.append(version)
            return version.id

    def soft_delete(self, name: str) -> None:
        with self.lock:
            self.secrets[name].deleted = int(time.time())

    def value(self, name: str, version: str | None = None) -> str | None:
        """What the secret (its latest version, or ``version``) holds; None when absent or soft-deleted."""
        with self.lock:
            secret = self.secrets.get(name)
            if secret is None or secret.deleted is not None or not secret.versions:
                return None
            if version is None:
                return secret.versions[-1].value
            return next((v.value for v in secret.versions if v.id == version), None)

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version, oldest first: ``version``, ``enabled``, ``content_type``, ``tags`` (no values)."""
        with self.lock:
            secret = self.secrets.get(name)
            return [
                {"version": v.id, "enabled": v.enabled, "content_type": v.content_type, "tags": dict(v.tags)}
                for v in (secret.versions if secret else [])
            ]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            writes = dict(self._writes)
        return {**super().stats(), "writes": writes}

    def reset_stats(self) -> None:
        super().reset_stats()
        with self.lock:
            self._writes = dict.fromkeys(self._writes, 0)

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """``{"apps": [{"role": ...}], "managed_identities": [{"role": ..., "system": bool}], "secrets": {n: v}}``"""
        apps = [self.add_app(app.get("role", OFFICER)) for app in document.get("apps", [])]
        identities = [
            self.add_managed_identity(item.get("role", OFFICER), system=bool(item.get("system")))
            for item in document.get("managed_identities", [])
        ]
        for name, value in dict(document.get("secrets", {})).items():
            self.put_secret(name, str(value))
        ca_file = str(self.authority.ca_file) if self.authority else None
        seeded = {"tenant": self.tenant, "authority_host": self.url, "ca_file": ca_file}
        seeded["apps"] = [{"client_id": client_id, "secret": secret} for client_id, secret in apps]
        return {**seeded, "managed_identities": identities, "identity": self.identity_environment()}

    # -- framework hooks -------------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return json_response(404, {"error": {"code": "NotFound", "message": f"No route for {request.path}"}})

    def method_not_allowed(self, request: Request) -> Response:
        message = f"The requested method {request.method} is not allowed on {request.path}"
        return json_response(405, {"error": {"code": "MethodNotAllowed", "message": message}})

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return json_response(400, {"error": {"code": "BadParameter", "message": f"Invalid JSON body: {error}"}})

    # -- the gate every vault request passes -----------------------------------------------------------

    def _authorize(self, request: Request, operation: str) -> None:
        principal, why = self.principal_for(request, self.resource)
        if principal is None:
            challenge = f'Bearer authorization="{self.url}/{self.tenant}", resource="{self.resource}"'
            raise kv_error(401, "Unauthorized", why, **{"WWW-Authenticate": challenge})
        if not request.query_value("api-version"):
            raise kv_error(400, "BadParameter", "The 'api-version' query parameter is required.")
        if self.rate_limit:
            self._limiter.limit = self.rate_limit
            wait = self._limiter.hit("vault")
            if wait > 0:
                message = "Request was not processed because too many requests were received. Reason: A1"
                raise kv_error(429, "Throttled", message, **{"Retry-After": str(max(1, math.ceil(wait)))})
        denied = self.rbac_denial(principal, operation)
        if denied:
            raise kv_error(403, "Forbidden", denied, "ForbiddenByRbac")

    # -- state helpers ---------------------------------------------------------------------------------

    def _visible(self, name: str) -> Secret:
        secret = self.secrets.get(name)
        if secret is None or secret.deleted is not None or time.monotonic() < secret.visible_at:
            raise kv_error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted this "
                "secret you may be able to recover it using the correct recovery command.",
            )
        return secret

    def _version(self, name: str, version: str | None) -> Version:
        secret = self._visible(name)
        if not version:
            return secret.versions[-1]
        found = next((v for v in secret.versions if v.id == version), None)
        if found is None:
            raise kv_error(404, "SecretNotFound", f"A secret with (name/id) {name}/{version} was not found.")
        return found

    def _deleted(self, name: str) -> Secret:
        secret = self.secrets.get(name)
        if secret is None or secret.deleted is None:
            raise kv_error(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return secret

    def _bundle(self, name: str, version: Version, *, value: bool) -> dict[str, Any]:
        attributes = {"enabled": version.enabled, "created": version.created, "updated": version.updated}
        attributes |= {"recoveryLevel": RECOVERY_LEVEL, "recoverableDays": RETENTION_DAYS}
        body: dict[str, Any] = {"id": f"{self.url}/secrets/{name}/{version.id}", "attributes": attributes}
        body["tags"] = dict(version.tags)
        if version.content_type is not None:
            body["contentType"] = version.content_type
        if value:
            body["value"] = version.value
        return body

    def _deleted_bundle(self, name: str, secret: Secret) -> dict[str, Any]:
        deleted = int(secret.deleted or 0)
        return {
            **self._bundle(name, secret.versions[-1], value=False),
            "recoveryId": f"{self.url}/deletedsecrets/{name}",
            "deletedDate": deleted,
            "scheduledPurgeDate": deleted + RETENTION_DAYS * 86400,
        }

    # -- secrets ---------------------------------------------------------------------------------------

    @route("PUT", SECRET_PATH + "/?")
    def set_secret(self, request: Request, name: str) -> Response:
        self._authorize(request, "set")
        if not NAME.match(name):
            raise kv_error(400, "BadParameter", "The request URI contains an invalid name: " + name[:130])
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise kv_error(400, "BadParameter", "Property 'value' is required and must be a string.")
        tags = body.get("tags") or {}
        attributes = body.get("attributes") or {}
        with self.lock:
            secret = self.secrets.get(name)
            if secret is not None and secret.deleted is not None:
                message = (
                    f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in "
                    "this state, the secret can only be recovered or purged."
                )
                raise kv_error(409, "Conflict", message, "ObjectIsDeletedButRecoverable")
            version = Version(uuid.uuid4().hex, body["value"], body.get("contentType"), dict(tags))
            version.enabled = attributes.get("enabled", True) is not False
            self.secrets.setdefault(name, Secret()).versions.append(version)
            self._writes["set"] += 1
            return json_response(200, self._bundle(name, version, value=True))

    @route("GET", VERSION_PATH)
    def get_secret(self, request: Request, name: str, version: str) -> Response:
        self._authorize(request, "get")
        with self.lock:
            found = self._version(name, version)
            if not found.enabled:
                raise kv_error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
            return json_response(200, self._bundle(name, found, value=True))

    @route("PATCH", VERSION_PATH)
    def update_secret(self, request: Request, name: str, version: str) -> Response:
        self._authorize(request, "update")
        body = request.json()
        if not isinstance(body, dict):
            raise kv_error(400, "BadParameter", "The request body must be a JSON object.")
        with self.lock:
            found = self._version(name, version)
            attributes = body.get("attributes") or {}
            if "enabled" in attributes:
                found.enabled = bool(attributes["enabled"])
            if "contentType" in body:
                found.content_type = body["contentType"]
            if "tags" in body:
                found.tags = dict(body["tags"] or {})
            found.updated = int(time.time())
            self._writes["update"] += 1
            return json_response(200, self._bundle(name, found, value=False))

    @route("GET", SECRET_PATH + "/versions")
    def list_versions(self, request: Request, name: str) -> Response:
        self._authorize(request, "list")
        try:
            size = int(request.query_value("maxresults") or self.page_size)
            skip = int(request.query_value("$skiptoken") or 0)
        except ValueError:
            raise kv_error(400, "BadParameter", "maxresults and $skiptoken must be integers.") from None
        if not 1 <= size <= MAX_PAGE:
            raise kv_error(400, "BadParameter", f"Invalid value for maxresults: {size}. Must be 1..{MAX_PAGE}.")
        served = min(size, self.page_size)  # like Key Vault, a page may hold fewer than asked, with a nextLink
        with self.lock:
            versions = self._visible(name).versions
            page = [self._bundle(name, v, value=False) for v in versions[skip : skip + served]]
            more = skip + served < len(versions)
        query = f"api-version={request.query_value('api-version')}&$skiptoken={skip + served}&maxresults={size}"
        return json_response(200, {"value": page, "nextLink": f"{self.url}{request.path}?{query}" if more else None})

    @route("DELETE", SECRET_PATH + "/?")
    def delete_secret(self, request: Request, name: str) -> Response:
        self._authorize(request, "delete")
        with self.lock:
            secret = self._visible(name)
            secret.deleted = int(time.time())
            self._writes["delete"] += 1
            return json_response(200, self._deleted_bundle(name, secret))

    @route("GET", r"/deletedsecrets/(?P<name>[^/]+)/?")
    def get_deleted_secret(self, request: Request, name: str) -> Response:
        self._authorize(request, "list")
        with self.lock:
            return json_response(200, self._deleted_bundle(name, self._deleted(name)))

    @route("DELETE", r"/deletedsecrets/(?P<name>[^/]+)/?")
    def purge_deleted_secret(self, request: Request, name: str) -> Response:
        self._authorize(request, "purge")
        with self.lock:
            self._deleted(name)
            del self.secrets[name]
            self._writes["purge"] += 1
        return Response(204)

    @route("POST", r"/deletedsecrets/(?P<name>[^/]+)/recover")
    def recover_deleted_secret(self, request: Request, name: str) -> Response:
        self._authorize(request, "recover")
        with self.lock:
            secret = self._deleted(name)
            secret.deleted = None
            secret.visible_at = time.monotonic() + self.recover_seconds
            self._writes["recover"] += 1
            return json_response(200, self._bundle(name, secret.versions[-1], value=False))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-dir", type=Path, help="where to write ca.pem and the server certificate (a temp dir)")
    parser.add_argument("--tenant", help="the tenant id (a random GUID by default)")
    parser.add_argument("--rate-limit", type=int, help="requests per window per vault before 429")
    parser.add_argument("--rate-limit-window", type=float, default=10.0, help="rate-limit window in seconds")
    parser.add_argument("--page-size", type=int, default=MAX_PAGE, help=f"versions per page (1..{MAX_PAGE})")
    parser.add_argument("--recover-seconds", type=float, default=0.2, help="how long a recovery takes to show")


def from_cli_args(args: argparse.Namespace) -> AzureKeyVaultSandbox:
    directory = args.tls_dir or Path(tempfile.mkdtemp(prefix="azure-key-vault-sandbox-"))
    authority = make_authority(directory)
    print(f"azure_key_vault sandbox: trust {authority.ca_file} (REQUESTS_CA_BUNDLE)", file=sys.stderr)
    return AzureKeyVaultSandbox(
        authority=authority,
        tenant=args.tenant,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        page_size=args.page_size,
        recover_seconds=args.recover_seconds,
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        access_log=args.access_log,
    )
