"""Microsoft Entra ID, as much as Azure clients really call: one tenant's OpenID discovery and client-credentials token
endpoint (what MSAL's ``ConfidentialClientApplication`` uses under azure-identity's ``ClientSecretCredential``), and
the App Service managed-identity endpoint (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, what
``ManagedIdentityCredential`` uses when those variables are set).

A mixin for a ``SandboxServer``: the Key Vault sandbox is its own authority (``authority_host`` = its URL), so one
process and one port serve both, as ``python -m sandbox azure_key_vault`` needs. Tokens are opaque random strings
bound to a principal, an audience and an expiry; the resource server asks ``principal_for(request, audience)``.
Errors have Entra's shapes (``{"error", "error_description" "AADSTS...", "error_codes"}``). MSAL's instance
discovery goes to login.microsoftonline.com whatever the authority, so a client of this sandbox must disable it
(azure-identity's ``disable_instance_discovery=True``), as for any authority Microsoft does not list.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sandbox.server import Request, Response, json_response, route

#: The audience of Key Vault tokens in Azure's public cloud.
VAULT_RESOURCE = "https://vault.azure.net"
#: Key Vault's built-in roles and the secret operations each allows (``Microsoft.KeyVault/vaults/secrets/*``).
ROLES: dict[str, frozenset[str]] = {
    "Key Vault Secrets Officer": frozenset({"get", "list", "set", "update", "delete", "recover", "purge"}),
    "Key Vault Secrets User": frozenset({"get", "list"}),
    "Key Vault Reader": frozenset({"list"}),
}
#: The RBAC data action behind each operation, as Key Vault's 403 names it.
DATA_ACTIONS = {
    "get": "getSecret/action",
    "list": "readMetadata/action",
    "set": "setSecret/action",
    "update": "update/action",
    "delete": "delete",
    "recover": "recover/action",
    "purge": "purge/action",
}
OFFICER, SECRETS_USER, READER = "Key Vault Secrets Officer", "Key Vault Secrets User", "Key Vault Reader"
MI_PATH = "/msi/token"


@dataclass
class Principal:
    """An app registration (with a client secret) or a managed identity, and its role on the vault."""

    client_id: str
    role: str | None
    secret: str | None = None
    managed: bool = False
    object_id: str = ""


@dataclass(frozen=True)
class Token:
    client_id: str
    audience: str
    expires: float


def entra_error(status: int, error: str, code: int, description: str) -> Response:
    trace = str(uuid.uuid4())
    text = f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {uuid.uuid4()} Timestamp: {_now_iso()}"
    body = {"error": error, "error_description": text, "error_codes": [code], "trace_id": trace}
    return json_response(status, body)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())


class EntraIdentity:
    """Token endpoints for one tenant and its principals (mix into a ``SandboxServer`` and call ``init_identity``)."""

    url: str

    def init_identity(self, tenant: str | None = None, token_seconds: float = 3600.0) -> None:
        self.tenant = tenant or str(uuid.uuid4())
        self.token_seconds = token_seconds
        self.identity_header = secrets.token_hex(16)
        self.principals: dict[str, Principal] = {}
        #: Every token request that reached this authority: tenant, client id, scope or resource (no secrets).
        self.token_requests: list[dict[str, str]] = []
        self._tokens: dict[str, Token] = {}
        self._system_identity: str | None = None
        self._identity_lock = threading.Lock()

    # -- principals (in-process) ------------------------------------------------------------------------

    def add_app(self, role: str | None = OFFICER, *, client_id: str | None = None) -> tuple[str, str]:
        """A new app registration with one client secret; returns (client id, client secret)."""
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {sorted(ROLES)}")
        principal = Principal(client_id or str(uuid.uuid4()), role, secret=secrets.token_urlsafe(30))
        principal.object_id = str(uuid.uuid4())
        with self._identity_lock:
            self.principals[principal.client_id] = principal
        return principal.client_id, str(principal.secret)

    def add_managed_identity(self, role: str | None = OFFICER, *, system: bool = False) -> str:
        """A managed identity of the host; ``system``: the one used when no client id is asked for."""
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {sorted(ROLES)}")
        principal = Principal(str(uuid.uuid4()), role, managed=True, object_id=str(uuid.uuid4()))
        with self._identity_lock:
            self.principals[principal.client_id] = principal
            if system:
                self._system_identity = principal.client_id
        return principal.client_id

    def set_role(self, client_id: str, role: str | None) -> None:
        """Change (or with None remove) a principal's role assignment on the vault."""
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        with self._identity_lock:
            self.principals[client_id].role = role

    def identity_environment(self) -> dict[str, str]:
        """What App Service sets for a managed identity: the variables ``ManagedIdentityCredential`` reads."""
        return {"IDENTITY_ENDPOINT": self.url + MI_PATH, "IDENTITY_HEADER": self.identity_header}

    # -- the resource server's view ---------------------------------------------------------------------

    def principal_for(self, request: Request, audience: str) -> tuple[Principal | None, str]:
        """The principal behind the request's bearer token, or None and why (for the 401's message)."""
        header = request.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "AKV10000: Request is missing a Bearer or PoP token."
        with self._identity_lock:
            token = self._tokens.get(value.strip())
            principal = self.principals.get(token.client_id) if token else None
        if token is None or principal is None:
            return None, "AKV10022: Invalid token: the token is unknown or was not issued by this tenant."
        if token.expires <= time.time():
            return None, "AKV10020: Invalid token: the token has expired."
        if token.audience.rstrip("/") != audience.rstrip("/"):
            return None, f"AKV10022: Invalid audience. Expected {audience}, found: {token.audience}."
        return principal, ""

    def rbac_denial(self, principal: Principal, operation: str) -> str | None:
        """Key Vault's 403 message when ``principal``'s role does not allow ``operation`` (None: allowed)."""
        if principal.role is not None and operation in ROLES[principal.role]:
            return None
        return (
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role "
            "definitions were changed recently, please observe propagation time.\r\n"
            f"Caller: appid={principal.client_id};oid={principal.object_id};iss=https://sts.windows.net/{self.tenant}/"
            f"\r\nAction: 'Microsoft.KeyVault/vaults/secrets/{DATA_ACTIONS[operation]}'\r\nAssignment: (not found)\r\n"
        )

    def _issue(self, principal: Principal, audience: str) -> tuple[str, int]:
        token = "sbx." + secrets.token_urlsafe(32)
        expires = time.time() + self.token_seconds
        with self._identity_lock:
            self._tokens[token] = Token(principal.client_id, audience, expires)
        return token, int(self.token_seconds)

    # -- routes ----------------------------------------------------------------------------------------

    @route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration")
    def openid_configuration(self, request: Request, tenant: str) -> Response:
        if tenant not in (self.tenant, "organizations", "common"):
            return entra_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{self.url}/{self.tenant}"
        return json_response(
            200,
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "tenant_region_scope": "EU",
            },
        )

    @route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token")
    def token(self, request: Request, tenant: str) -> Response:
        form = {name: values[0] for name, values in parse_qs(request.body.decode(errors="replace")).items()}
        client_id, scope = form.get("client_id", ""), form.get("scope", "")
        self.token_requests.append({"tenant": tenant, "client_id": client_id, "scope": scope, "via": "authority"})
        if tenant != self.tenant:
            return entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return entra_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        principal = self.principals.get(client_id)
        if principal is None or principal.managed:
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{self.tenant}'.",
            )
        if not secrets.compare_digest(form.get("client_secret", ""), principal.secret or ""):
            return entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        resources = [item.removesuffix("/.default") for item in scope.split() if item.endswith("/.default")]
        if len(resources) != 1:
            return entra_error(400, "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid.")
        access_token, expires_in = self._issue(principal, resources[0])
        body = {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in}
        return json_response(200, {**body, "access_token": access_token})

    @route("GET", r"/msi/token")
    def managed_identity_token(self, request: Request) -> Response:
        resource = request.query_value("resource") or ""
        client_id = request.query_value("client_id")
        self.token_requests.append(
            {"tenant": self.tenant, "client_id": client_id or "", "scope": resource, "via": "mi"}
        )
        header = request.headers.get("X-IDENTITY-HEADER") or ""
        if not secrets.compare_digest(header, self.identity_header):
            return json_response(401, {"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is wrong"})
        if request.query_value("api-version") != "2019-08-01" or not resource:
            return json_response(400, {"statusCode": 400, "message": "api-version 2019-08-01 and resource required"})
        principal = self.principals.get(client_id or self._system_identity or "")
        if principal is None or not principal.managed:
            message = f"No managed identity with client_id {client_id}" if client_id else "No system identity"
            return json_response(400, {"statusCode": 400, "message": message})
        access_token, expires_in = self._issue(principal, resource.removesuffix("/.default"))
        body: dict[str, Any] = {
            "expires_on": str(int(time.time()) + expires_in),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": principal.client_id,
        }
        return json_response(200, {**body, "access_token": access_token})
