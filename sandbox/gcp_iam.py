"""GCP IAM and OAuth, as a GCP sandbox needs them: service accounts and their keys, roles, bindings on resources,
and the bearer tokens Google's client libraries send.

Contract: google-auth 2.x (``google/oauth2/service_account.py``, ``_client.py``, ``jwt.py``) and the Secret
Manager IAM roles (cloud.google.com/secret-manager/docs/access-control). A service account key is the JSON file
GCP issues (``type``, ``private_key_id``, ``private_key``, ``client_email``, ``token_uri``...). Two bearer tokens
are accepted, as Google does:

- a **self-signed JWT** (what gapic clients send for a service-account key, since they set
  ``always_use_jwt_access``): RS256, header ``kid`` = ``private_key_id``, ``iss`` = ``sub`` = the account's
  email, at most one hour long, and a ``scope`` claim with cloud-platform or an ``aud`` of the service;
- an **access token** minted by ``POST /token`` for the JWT-bearer grant (``grant_type=urn:ietf:params:oauth:
  grant-type:jwt-bearer&assertion=<JWT>``, ``aud`` = Google's token URI, which google-auth always puts there, or
  this sandbox's), the flow of other Google clients.

A deleted key, an unknown account or a bad signature is refused: ``invalid_grant`` (400) at the token endpoint,
401 at the API (the service module shapes that answer). Permissions come from roles bound on a resource or any
of its ancestors (``projects/acme-prod/secrets/x`` inherits ``projects/acme-prod``), by project id.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The audience google-auth puts in every grant assertion, whatever the key's ``token_uri``.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
TOKEN_SECONDS = 3600
_SM = "secretmanager"
_VERSION_MANAGER = {f"{_SM}.versions.{verb}" for verb in ("add", "enable", "disable", "destroy", "get", "list")}
_VIEWER = {f"{_SM}.secrets.get", f"{_SM}.secrets.list", f"{_SM}.secrets.getIamPolicy", f"{_SM}.versions.get"}
_VIEWER |= {f"{_SM}.versions.list", f"{_SM}.locations.get", f"{_SM}.locations.list"}
#: The predefined Secret Manager roles and their permissions (resourcemanager.* left out).
ROLES: dict[str, frozenset[str]] = {
    "roles/secretmanager.admin": frozenset(
        _VERSION_MANAGER
        | _VIEWER
        | {f"{_SM}.versions.access"}
        | {f"{_SM}.secrets.{verb}" for verb in ("create", "delete", "update", "setIamPolicy")}
    ),
    "roles/secretmanager.secretAccessor": frozenset({f"{_SM}.versions.access"}),
    "roles/secretmanager.secretVersionAdder": frozenset({f"{_SM}.versions.add"}),
    "roles/secretmanager.secretVersionManager": frozenset(_VERSION_MANAGER),
    "roles/secretmanager.viewer": frozenset(_VIEWER),
}


class OAuthError(Exception):
    """A refused token request: the OAuth error code and description Google's token endpoint answers with."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


@dataclass
class _Account:
    email: str
    project: str
    unique_id: str
    keys: dict[str, Any] = field(default_factory=dict)  # private_key_id -> RSA public key
    disabled: bool = False


def resource_chain(resource: str) -> list[str]:
    """``projects/p/secrets/s/versions/3`` -> itself, ``projects/p/secrets/s``, ``projects/p``: IAM inheritance."""
    parts = resource.strip("/").split("/")
    return ["/".join(parts[:end]) for end in range(len(parts), 1, -2)]


class GcpIam:
    """Accounts, keys, roles and bindings of one sandbox, and the tokens it issued. Thread-safe."""

    def __init__(self, token_uri: Any, *, audiences: Iterable[str] = ()) -> None:
        self._token_uri = token_uri  # a callable: the sandbox's URL is known only once it serves
        self.audiences = set(audiences)
        self.roles: dict[str, frozenset[str]] = dict(ROLES)
        self._accounts: dict[str, _Account] = {}
        self._bindings: dict[str, dict[str, set[str]]] = {}  # resource -> member email -> roles
        self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expiry)
        self._ids = itertools.count(100000000000000000001)
        self._lock = threading.RLock()
        self.tokens_minted = 0

    @property
    def token_uri(self) -> str:
        return str(self._token_uri())

    # -- accounts, keys, roles ------------------------------------------------------------------------------

    def add_role(self, name: str, permissions: Iterable[str]) -> str:
        """A custom role (``projects/<p>/roles/<id>``) with exactly these permissions."""
        with self._lock:
            self.roles[name] = frozenset(permissions)
        return name

    def add_service_account(self, email: str, roles: Mapping[str, Iterable[str]] | Iterable[str] = ()) -> dict:
        """A service account ``<name>@<project>.iam.gserviceaccount.com``, bound to ``roles`` (a list: on its own
        project; a mapping: resource -> roles), with one key; returns the key file's JSON (a dict)."""
        name, _, domain = email.partition("@")
        project = domain.split(".", 1)[0]
        if not name or not domain.endswith(".iam.gserviceaccount.com"):
            raise ValueError(f"{email!r} is not a service account email (<name>@<project>.iam.gserviceaccount.com)")
        with self._lock:
            if email in self._accounts:
                raise ValueError(f"service account {email} exists already")
            self._accounts[email] = _Account(email, project, str(next(self._ids)))
        bindings = roles if isinstance(roles, Mapping) else {f"projects/{project}": roles}
        for resource, names in bindings.items():
            for role in names:
                self.grant(email, role, resource)
        return self.add_key(email)

    def add_key(self, email: str) -> dict[str, Any]:
        """A new key of the account, as the JSON key file GCP hands out once."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        with self._lock:
            account = self._account(email)
            account.keys[key_id] = private_key.public_key()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": account.project,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": account.unique_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "universe_domain": "googleapis.com",
        }

    def delete_key(self, email: str, key_id: str) -> None:
        """Delete a key: JWTs it signs are refused from now on (tokens minted with it live on until they expire)."""
        with self._lock:
            self._account(email).keys.pop(key_id, None)

    def set_disabled(self, email: str, disabled: bool = True) -> None:
        """Disable (or enable) the account: none of its tokens or keys works while it is disabled."""
        with self._lock:
            self._account(email).disabled = disabled

    def grant(self, email: str, role: str, resource: str) -> None:
        """Bind ``role`` to the account on ``resource`` (``projects/<id>`` or ``projects/<id>/secrets/<id>``)."""
        with self._lock:
            if role not in self.roles:
                raise ValueError(f"unknown role {role!r}; known: {sorted(self.roles)}")
            self._bindings.setdefault(resource.strip("/"), {}).setdefault(email, set()).add(role)

    def revoke(self, email: str, role: str, resource: str) -> None:
        with self._lock:
            self._bindings.get(resource.strip("/"), {}).get(email, set()).discard(role)

    def permissions(self, email: str, resource: str) -> set[str]:
        """Every permission the account holds on ``resource``, through bindings on it or its ancestors."""
        with self._lock:
            held: set[str] = set()
            for level in resource_chain(resource):
                for role in self._bindings.get(level, {}).get(email, ()):
                    held |= self.roles.get(role, frozenset())
            return held

    def _account(self, email: str) -> _Account:
        account = self._accounts.get(email)
        if account is None:
            raise LookupError(f"no service account {email}")
        return account

    # -- tokens ---------------------------------------------------------------------------------------------

    def _verified_jwt(self, token: str, *, audiences: set[str] | None) -> _Account:
        """The account whose active key signed ``token`` (RS256, at most an hour long, unexpired)."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as error:
            raise OAuthError("invalid_grant", f"Invalid JWT: {error}") from None
        with self._lock:
            account = self._accounts.get(str(claims.get("iss")))
            public_key = account.keys.get(str(header.get("kid"))) if account else None
        if account is None or public_key is None or header.get("alg") != "RS256":
            raise OAuthError("invalid_grant", "Invalid JWT Signature.")
        try:
            jwt.decode(token, public_key, algorithms=["RS256"], leeway=60, options={"verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise OAuthError(
                "invalid_grant", "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
            ) from None
        except jwt.InvalidTokenError:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from None
        if float(claims.get("exp", 0)) - float(claims.get("iat", 0)) > TOKEN_SECONDS + 60:
            raise OAuthError(
                "invalid_grant", "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
            )
        if audiences is not None and claims.get("aud") not in audiences:
            raise OAuthError("invalid_grant", "Invalid JWT: Failed audience check.")
        if account.disabled:
            raise OAuthError("invalid_grant", "Invalid grant: account not found", 400)
        return account

    def token_endpoint(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /token``: the JWT-bearer grant; (status, JSON body) as Google's token endpoint answers."""
        form = {name: values[0] for name, values in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        try:
            account = self._verified_jwt(form.get("assertion", ""), audiences={self.token_uri, GOOGLE_TOKEN_AUDIENCE})
        except OAuthError as error:
            return error.status, {"error": error.code, "error_description": error.description}
        minted = "ya29.sandbox-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[minted] = (account.email, time.time() + TOKEN_SECONDS)
            self.tokens_minted += 1
        return 200, {"access_token": minted, "expires_in": TOKEN_SECONDS - 1, "token_type": "Bearer"}

    def caller(self, authorization: str | None) -> str | None:
        """The account an ``Authorization`` header authenticates, or None (the API answers 401 then)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            minted = self._tokens.get(token)
        if minted is not None:
            email, expiry = minted
            with self._lock:
                account = self._accounts.get(email)
            return email if account and not account.disabled and time.time() < expiry else None
        try:
            account = self._verified_jwt(token, audiences=None)
        except OAuthError:
            return None
        import jwt

        claims = jwt.decode(token, options={"verify_signature": False})
        scoped = CLOUD_PLATFORM in str(claims.get("scope", "")).split()
        return account.email if scoped or claims.get("aud") in self.audiences else None
