"""Kosli sandbox: the public Kosli HTTP contract for service accounts and API keys, served locally.

Contract: /work/shared/reference/kosli_api.md (sections 1-3, 5, 6). Where the public material is silent the
behaviour chosen here is marked ``# Assumption:``. Test-only helpers (seeding, live secrets) live in-process
and under ``/_sandbox/``; the product must never need them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import enum
import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from sandbox.kosli_attestations import AttestationRoutes
from sandbox.server import (
    Abort,
    InvalidJSONBody,
    Request,
    Response,
    SandboxServer,
    json_response,
    route,
    strict_bool,
    text_response,
)

API = "/api/v2"
ORG = r"(?P<org>[^/]+)"
SERVICE_ACCOUNT = rf"{API}/service-accounts/{ORG}/(?P<name>[^/]+)"
API_KEY = rf"{SERVICE_ACCOUNT}/api-keys/(?P<key_id>[^/]+)"

MAX_EXPIRES_AT = 4_102_444_800
DEFAULT_GRACE_PERIOD_HOURS = 24
DEFAULT_PER_PAGE = 15  # Assumption: the server's default page size equals the CLI's (15).
MAX_PER_PAGE = 100  # Assumption: the real upper bound is not published.
REPEATABLE_QUERY_PARAMS = frozenset({"type", "space_id", "tag"})

NOT_AUTHENTICATED = {"message": "Not authenticated"}  # Assumption: FastAPI HTTPBearer's text, as a 401.
INVALID_API_KEY = {"message": "Invalid API key"}  # Assumption: the real 401 body is not published.
FORBIDDEN = {"message": "You don't have permission to access this resource"}
SERVICE_ACCOUNT_NOT_FOUND = {"message": "Service account not found"}
API_KEY_NOT_FOUND = {"message": "API key not found"}


class Privilege(enum.StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    SNAPSHOTTER = "snapshotter"
    READER = "reader"


def _not_in_the_past(expires_at: int) -> int:
    if expires_at != 0 and expires_at < time.time():
        raise ValueError("expires_at must not be in the past")
    return expires_at


ExpiresAt = Annotated[int, Field(le=MAX_EXPIRES_AT), AfterValidator(_not_in_the_past)]
Description = Annotated[str, Field(max_length=512)]


class ServiceAccountCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9\-]+$")]
    description: Description | None = None
    privilege: Privilege = Privilege.READER


class ServiceAccountUpdate(BaseModel):
    description: Description | None = None
    privilege: Privilege | None = None  # Assumption: null privilege means unchanged, like an omitted one.


class ApiKeyCreate(BaseModel):
    description: Annotated[str, Field(min_length=1, max_length=256)]
    expires_at: ExpiresAt | None = None


class ApiKeyRotate(BaseModel):
    grace_period_hours: Annotated[int, Field(ge=1, le=720)] = DEFAULT_GRACE_PERIOD_HOURS
    expires_at: ExpiresAt | None = None


EnvironmentType = Literal["K8S", "ECS", "S3", "lambda", "server", "docker", "azure-apps", "cloud-run", "logical"]


class EnvironmentQuery(BaseModel):
    name: str | None = None
    type: list[EnvironmentType] = []
    space_id: list[str] = []
    tag: list[str] = []
    sort: Literal["name", "last_modified_at", "last_changed_at"] | None = None
    sort_direction: Literal["asc", "desc"] = "asc"
    page: Annotated[int, Field(ge=1)] | None = None
    per_page: Annotated[int, Field(ge=1, le=MAX_PER_PAGE)] | None = None


Model = TypeVar("Model", bound=BaseModel)


def _validated(model: type[Model], document: Any, prefix: str = "") -> Model:
    """Validate like Kosli's FastAPI app, but answer with its 400 envelope instead of FastAPI's 422."""
    try:
        return model.model_validate(document)
    except ValidationError as error:
        errors: dict[str, str] = {}
        for item in error.errors():
            errors.setdefault(prefix + (".".join(map(str, item["loc"])) or "body"), item["msg"])
        raise Abort(_validation_failed(errors)) from error


def _validation_failed(errors: dict[str, str]) -> Response:
    return json_response(400, {"message": "Input payload validation failed", "errors": errors})


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _earliest(*deadlines: float | None) -> float | None:
    """The first of several deadlines, where None means "never"."""
    return min((deadline for deadline in deadlines if deadline is not None), default=None)


@dataclass
class _Secret:
    digest: str  # sha256 of the secret, as Kosli stores it
    valid_until: float | None  # epoch seconds; None = no deadline

    def live(self, now: float) -> bool:
        return self.valid_until is None or now < self.valid_until


@dataclass
class _ApiKey:
    id: str
    description: str
    created_at: float
    expires_at: int  # 0 = never
    current: _Secret | None  # None once a rotate_new_id rotation moved the current secret to a new id
    previous: _Secret | None = None  # the rotated-away secret, valid until its grace end
    last_used_at: float | None = None

    def secrets_by_role(self) -> dict[str, _Secret]:
        roles = (("current", self.current), ("previous", self.previous))
        return {role: secret for role, secret in roles if secret is not None}

    def forget_dead_secrets(self, now: float) -> None:
        """Lazy expiry: a secret past its deadline (expiry or grace end) is revoked when next looked at."""
        if self.current and not self.current.live(now):
            self.current = None
        if self.previous and not self.previous.live(now):
            self.previous = None

    def issued(self, secret: str, **extra: Any) -> dict[str, Any]:
        """The flat ApiKeyCreated / ApiKeyRotated body: the one time the secret is shown."""
        return {
            "id": self.id,
            "key": secret,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            **extra,
        }

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }
        if self.last_used_at is not None:  # "Omitted if never used"
            data["last_used_at"] = self.last_used_at
        return data


@dataclass
class _ServiceAccount:
    name: str
    privilege: Privilege
    description: str | None
    creating_user_id: str
    created_at: float
    for_webhook: bool = False
    keys: dict[str, _ApiKey] = field(default_factory=dict)

    def active_keys(self, now: float) -> dict[str, _ApiKey]:
        """Keys with at least one live secret; dead ones are dropped for good (they are revoked)."""
        for key_id, key in list(self.keys.items()):
            key.forget_dead_secrets(now)
            if not key.secrets_by_role():
                del self.keys[key_id]
        return self.keys

    def to_json(self, *, list_item: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "display_name": self.name,
            "privilege": self.privilege.value,
            "description": self.description,
            "creating_user_id": self.creating_user_id,
            "created_at": self.created_at,
        }
        if not list_item:  # the list endpoint does not return for_webhook
            data["for_webhook"] = self.for_webhook
        return data


@dataclass
class _Org:
    name: str
    owner_user_id: str  # stands in for the human user who created the seeded service accounts
    service_accounts: dict[str, _ServiceAccount] = field(default_factory=dict)
    environments: list[dict[str, Any]] = field(default_factory=list)


class _Caller(NamedTuple):
    org: _Org
    account: _ServiceAccount
    key: _ApiKey


def _presented_secret(request: Request) -> str | None:
    """The API key from ``Bearer <key>`` or ``Basic base64(<key>:<ignored>)``."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _environment(org: str, spec: str | dict[str, Any], now: float) -> dict[str, Any]:
    """A full environment object (shape of the docs' live example) from a name or a partial dict."""
    spec = {"name": spec} if isinstance(spec, str) else spec
    return {
        "org": org,
        "type": "K8S",
        "description": "",
        "last_modified_at": now,
        "last_reported_at": None,
        "last_changed_at": None,
        "state": None,
        "include_scaling": False,
        "tags": {},
        "policies": [],
        "included_environments": None,
        **spec,
    }


def _has_tag(environment: dict[str, Any], tag: str) -> bool:
    key, has_value, value = tag.partition(":")
    tags = environment.get("tags") or {}
    return key in tags and (not has_value or str(tags[key]) == value)


def _select_environments(environments: list[dict[str, Any]], query: EnvironmentQuery) -> list[dict[str, Any]]:
    # Assumption: repeated tag filters must all match; repeated type/space_id filters match any.
    selected = [
        env
        for env in environments
        if (query.name is None or query.name.lower() in env["name"].lower())
        and (not query.type or env["type"] in query.type)
        and (not query.space_id or env.get("space_id") in query.space_id)
        and all(_has_tag(env, tag) for tag in query.tag)
    ]
    if query.sort:
        sort_key = query.sort
        selected.sort(key=lambda env: (env[sort_key] is None, env[sort_key] or 0))
    if query.sort_direction == "desc":
        selected.reverse()
    return selected


def _page(path: str, items: list[dict[str, Any]], page: int, per_page: int) -> dict[str, Any]:
    start = (page - 1) * per_page
    return {
        "page": page,
        "per_page": per_page,
        "total_pages": max(1, math.ceil(len(items) / per_page)),  # Assumption: an empty result has 1 page.
        "total_count": len(items),
        "environments": items[start : start + per_page],
        "_links": {"self": {"href": f"{path}?page={page}&per_page={per_page}"}},
    }


class KosliSandbox(AttestationRoutes, SandboxServer):
    """Kosli's ``/api/v2`` service-account and API-key endpoints, environments probe and ``/ready``; flows, trails
    and custom attestations come from ``AttestationRoutes`` (``sandbox.kosli_attestations``).

    ``rotate_new_id=False`` keeps the key id on rotation (what a real server does); ``True`` emulates the
    other plausible design, where the new secret gets a new id and the old id lives on until its grace end.
    ``rate_limit`` requests per ``rate_limit_window`` seconds per key give 429 with ``Retry-After``.
    """

    SETTINGS = {**SandboxServer.SETTINGS, "rotate_new_id": strict_bool}

    def __init__(
        self,
        *,
        hour_seconds: float = 3600.0,
        rotate_new_id: bool = False,
        latency: float = 0.0,
        rate_limit: int | None = None,
        rate_limit_window: float = 60.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(hour_seconds=hour_seconds, latency=latency, access_log=access_log)
        self.rotate_new_id = rotate_new_id
        # Assumption: Kosli publishes no rate limits; this only exists to exercise clients' 429 handling.
        self.rate_limiter = self.add_rate_limiter(rate_limit, rate_limit_window) if rate_limit else None
        self._orgs: dict[str, _Org] = {}
        # secret digest -> (org, service account, key id); may be stale, see _identify()
        self._key_owners: dict[str, tuple[str, str, str]] = {}
        self._test_plaintexts: dict[str, str] = {}  # digest -> secret; test-only, feeds live_secrets()

    # -- test / demo API ---------------------------------------------------------------------------------

    def seed(
        self,
        org: str,
        service_accounts: dict[str, dict[str, Any]] | None = None,
        environments: list[str | dict[str, Any]] | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Create (or extend) an org, its service accounts and their keys; return the minted keys per account.

        ``service_accounts`` maps a name to ``{"privilege", "description", "keys": [create_key kwargs]}``.
        """
        with self.lock:
            now = self.clock.now()
            target = self._orgs.setdefault(org, _Org(org, owner_user_id=str(uuid.uuid4())))
            target.environments.extend(_environment(org, spec, now) for spec in environments or [])
            minted: dict[str, list[dict[str, Any]]] = {}
            for name, spec in (service_accounts or {}).items():
                spec = dict(spec)
                key_specs = spec.pop("keys", [])
                if name not in target.service_accounts:
                    payload = ServiceAccountCreate.model_validate({"name": name, **spec})
                    self._add_service_account(target, payload)
                minted[name] = []
                for key_spec in key_specs:
                    key, secret = self._mint(org, name, **key_spec)
                    minted[name].append(key.issued(secret))
            return minted

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """``{"orgs": {org: {"service_accounts": ..., "environments": ...}}}`` -> ``{org: {sa: [keys]}}``."""
        return {org: self.seed(org, **spec) for org, spec in document.get("orgs", {}).items()}

    def create_key(self, org: str, sa: str, description: str = "sandbox", expires_at: int = 0) -> tuple[str, str]:
        """Mint a key without going through auth; returns ``(key_id, secret)``."""
        key, secret = self._mint(org, sa, description, expires_at)
        return key.id, secret

    def _mint(self, org: str, sa: str, description: str = "sandbox", expires_at: int = 0) -> tuple[_ApiKey, str]:
        payload = ApiKeyCreate.model_validate({"description": description, "expires_at": expires_at})
        with self.lock:
            owner_org, account = self._lookup(org, sa)
            return self._create_key(owner_org, account, payload.description, payload.expires_at or 0)

    def live_secrets(self, org: str, sa: str, key_id: str | None = None) -> list[dict[str, Any]]:
        """Every secret that would authenticate right now for ``sa`` (optionally only ``key_id``)."""
        with self.lock:
            _, account = self._lookup(org, sa)
            return [
                {
                    "key_id": key.id,
                    "secret": self._test_plaintexts[secret.digest],
                    "role": role,
                    "valid_until": secret.valid_until,
                }
                for key in account.active_keys(self.clock.now()).values()
                if key_id in (None, key.id)
                for role, secret in key.secrets_by_role().items()
            ]

    @route("GET", r"/_sandbox/live-secrets")
    def _admin_live_secrets(self, request: Request) -> Response:
        try:
            org, sa = request.query_value("org") or "", request.query_value("sa") or ""
            secrets_now = self.live_secrets(org, sa, request.query_value("key_id"))
        except LookupError as error:
            return json_response(404, {"message": str(error)})
        return json_response(200, secrets_now)

    # -- framework hooks ---------------------------------------------------------------------------------

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return _validation_failed({"body": "JSON decode error"})

    # -- public API --------------------------------------------------------------------------------------

    @route("GET", r"/ready")
    def ready(self, request: Request) -> Response:
        return text_response(200, "OK")

    @route("GET", rf"{API}/environments/{ORG}")
    def list_environments(self, request: Request, org: str) -> Response:
        with self.lock:
            caller = self._authorize(request, org)
            environments = [dict(env) for env in caller.org.environments]
        query_document = {
            name: values if name in REPEATABLE_QUERY_PARAMS else values[0] for name, values in request.query.items()
        }
        query = _validated(EnvironmentQuery, query_document, prefix="query.")
        selected = _select_environments(environments, query)
        if query.page is None and query.per_page is None:
            return json_response(200, selected)
        page = _page(request.path, selected, query.page or 1, query.per_page or DEFAULT_PER_PAGE)
        return json_response(200, page)

    @route("GET", rf"{API}/service-accounts/{ORG}")
    def list_service_accounts(self, request: Request, org: str) -> Response:
        with self.lock:
            caller = self._authorize(request, org, admin=True)
            accounts = caller.org.service_accounts.values()
            return json_response(200, [account.to_json(list_item=True) for account in accounts])

    @route("POST", rf"{API}/service-accounts/{ORG}")
    def create_service_account(self, request: Request, org: str) -> Response:
        with self.lock:
            caller = self._authorize(request, org, admin=True)
            payload = _validated(ServiceAccountCreate, self._body(request))
            if payload.name in caller.org.service_accounts:
                # Assumption: modelled on the real 409 text for duplicate controls.
                message = f"A service account named '{payload.name}' already exists in organization '{org}'"
                return json_response(409, {"message": message})
            return json_response(201, self._add_service_account(caller.org, payload).to_json())

    @route("GET", SERVICE_ACCOUNT)
    def get_service_account(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            _, account = self._authorized_account(request, org, name)
            return json_response(200, account.to_json())

    @route("PATCH", SERVICE_ACCOUNT)
    def update_service_account(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            _, account = self._authorized_account(request, org, name)
            payload = _validated(ServiceAccountUpdate, self._body(request))
            if "description" in payload.model_fields_set:  # omitted = unchanged, null = cleared
                account.description = payload.description
            if payload.privilege is not None:
                account.privilege = payload.privilege
            return json_response(200, account.to_json())

    @route("DELETE", SERVICE_ACCOUNT)
    def delete_service_account(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            owner_org, account = self._authorized_account(request, org, name)
            del owner_org.service_accounts[account.name]  # its keys go with it
            return json_response(200, "OK")

    @route("GET", rf"{SERVICE_ACCOUNT}/api-keys")
    def list_api_keys(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            _, account = self._authorized_account(request, org, name)
            keys = account.active_keys(self.clock.now()).values()
            return json_response(200, [key.metadata() for key in keys])

    @route("POST", rf"{SERVICE_ACCOUNT}/api-keys")
    def create_api_key(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            owner_org, account = self._authorized_account(request, org, name)
            payload = _validated(ApiKeyCreate, self._body(request))
            key, secret = self._create_key(owner_org, account, payload.description, payload.expires_at or 0)
            return json_response(201, key.issued(secret))

    @route("GET", API_KEY)
    def get_api_key(self, request: Request, org: str, name: str, key_id: str) -> Response:
        with self.lock:
            _, _, key = self._authorized_key(request, org, name, key_id)
            return json_response(200, key.metadata())

    @route("POST", rf"{API_KEY}/rotate")
    def rotate_api_key(self, request: Request, org: str, name: str, key_id: str) -> Response:
        with self.lock:
            owner_org, account, key = self._authorized_key(request, org, name, key_id)
            payload = _validated(ApiKeyRotate, self._body(request))
            if key.current is None:
                # Assumption: with rotate_new_id, an id that only lives on for its grace period cannot be
                # rotated again (its successor id is the one to rotate).
                message = f"API key '{key_id}' was already rotated; rotate its replacement instead"
                return json_response(400, {"message": message})
            rotated, secret, grace_end = self._rotate(owner_org, account, key, payload)
            return json_response(201, rotated.issued(secret, grace_period_expires_at=grace_end))

    @route("DELETE", API_KEY)
    def revoke_api_key(self, request: Request, org: str, name: str, key_id: str) -> Response:
        with self.lock:
            _, account, key = self._authorized_key(request, org, name, key_id)
            del account.keys[key.id]  # every secret of the id (current and previous) dies with it
            return json_response(200, "revoked")

    # -- internals (call with self.lock held) ------------------------------------------------------------

    @staticmethod
    def _body(request: Request) -> Any:
        # Assumption: an empty body counts as {} (the CLI sends {} for a default rotate).
        return request.json() if request.body.strip() else {}

    def _lookup(self, org: str, sa: str) -> tuple[_Org, _ServiceAccount]:
        """In-process lookup for the test API; raises LookupError instead of answering 404."""
        target = self._orgs.get(org)
        account = target.service_accounts.get(sa) if target else None
        if target is None or account is None:
            raise LookupError(f"no service account '{sa}' in org '{org}'")
        return target, account

    def _authorize(self, request: Request, org: str, *, admin: bool = False) -> _Caller:
        """Authenticate the caller (401), rate-limit it (429), record the use, then check access (403).

        Assumption: every service-account and API-key endpoint needs an admin key of the org (the tutorial
        uses one); authentication and authorization are checked before the payload is validated.
        """
        secret = _presented_secret(request)
        if secret is None:
            raise Abort(json_response(401, NOT_AUTHENTICATED, {"WWW-Authenticate": "Bearer"}))
        caller = self._identify(secret)
        if caller is None:
            raise Abort(json_response(401, INVALID_API_KEY, {"WWW-Authenticate": "Bearer"}))
        if self.rate_limiter and (wait := self.rate_limiter.hit(caller.key.id)):
            retry_after = {"Retry-After": str(math.ceil(wait))}
            raise Abort(json_response(429, {"message": "Too many requests"}, retry_after))
        caller.key.last_used_at = self.clock.now()
        if caller.org.name != org or (admin and caller.account.privilege != Privilege.ADMIN):
            raise Abort(json_response(403, FORBIDDEN))
        return caller

    def _identify(self, secret: str) -> _Caller | None:
        """The live key holding ``secret``; the owner map may be stale, so the key has the last word."""
        digest = _sha256(secret)
        org_name, sa_name, key_id = self._key_owners.get(digest, ("", "", ""))
        try:
            org, account = self._lookup(org_name, sa_name)
        except LookupError:
            return None
        key = account.active_keys(self.clock.now()).get(key_id)
        if key is None or digest not in (held.digest for held in key.secrets_by_role().values()):
            return None
        return _Caller(org, account, key)

    def _authorized_account(self, request: Request, org: str, name: str) -> tuple[_Org, _ServiceAccount]:
        caller = self._authorize(request, org, admin=True)
        account = caller.org.service_accounts.get(name)
        if account is None:
            raise Abort(json_response(404, SERVICE_ACCOUNT_NOT_FOUND))
        return caller.org, account

    def _authorized_key(
        self, request: Request, org: str, name: str, key_id: str
    ) -> tuple[_Org, _ServiceAccount, _ApiKey]:
        owner_org, account = self._authorized_account(request, org, name)
        key = account.active_keys(self.clock.now()).get(key_id)
        if key is None:
            raise Abort(json_response(404, API_KEY_NOT_FOUND))
        return owner_org, account, key

    def _add_service_account(self, org: _Org, payload: ServiceAccountCreate) -> _ServiceAccount:
        account = _ServiceAccount(
            name=payload.name,
            privilege=payload.privilege,
            description=payload.description,
            creating_user_id=org.owner_user_id,
            created_at=self.clock.now(),
        )
        org.service_accounts[account.name] = account
        return account

    def _new_secret(self, org: _Org, account: _ServiceAccount, key_id: str, expires_at: int) -> tuple[str, _Secret]:
        secret = secrets.token_urlsafe(32)
        digest = _sha256(secret)
        self._key_owners[digest] = (org.name, account.name, key_id)
        self._test_plaintexts[digest] = secret
        return secret, _Secret(digest, valid_until=expires_at or None)

    def _create_key(
        self, org: _Org, account: _ServiceAccount, description: str, expires_at: int
    ) -> tuple[_ApiKey, str]:
        key_id = str(uuid.uuid4())[:32]  # Kosli's truncated uuid, e.g. 7954691b-ffdd-4ad6-baf7-5630b372
        secret, current = self._new_secret(org, account, key_id, expires_at)
        key = _ApiKey(key_id, description, self.clock.now(), expires_at, current)
        account.keys[key_id] = key
        return key, secret

    def _rotate(
        self, org: _Org, account: _ServiceAccount, key: _ApiKey, payload: ApiKeyRotate
    ) -> tuple[_ApiKey, str, int]:
        """Give ``key`` a new secret (or a successor id) and keep the old secret alive until the grace end."""
        assert key.current is not None
        expires_at = payload.expires_at or 0
        # Rounded up, so the old secret never dies before the reported time.
        grace_end = math.ceil(self.clock.now() + self.clock.hours(payload.grace_period_hours))
        # Assumption: Kosli keeps at most one previous secret per key id (the public docs are silent): the
        # secret that was current becomes the previous one with the new grace end, and an older previous
        # secret still in its grace period is revoked at once.
        key.previous = _Secret(key.current.digest, _earliest(key.current.valid_until, grace_end))
        if self.rotate_new_id:
            key.current = None
            successor, secret = self._create_key(org, account, key.description, expires_at)
            return successor, secret, grace_end
        # Assumption: the stable key id keeps its created_at; expires_at becomes the new secret's expiry.
        secret, key.current = self._new_secret(org, account, key.id, expires_at)
        key.expires_at = expires_at
        return key, secret, grace_end


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rotate-new-id", action="store_true", help="rotation creates a new key id instead of keeping it"
    )


def from_cli_args(args: argparse.Namespace) -> KosliSandbox:
    return KosliSandbox(
        hour_seconds=args.hour_seconds,
        rotate_new_id=args.rotate_new_id,
        latency=args.latency,
        access_log=args.access_log,
    )
