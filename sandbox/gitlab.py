"""GitLab sandbox: the REST v4 contract for project and group CI/CD variables, served locally.

Contract: /work/shared/reference/ci_secret_apis.md section 2, GitLab's ``lib/api/ci/variables.rb`` /
``group_variables.rb`` (404/400/409 bodies, ``filter[environment_scope]``), ``Ci::Maskable`` (masked-value
rules), ``API::Entities::Ci::Variable`` (``hidden`` variables come back with ``"value": null``) and
Rack::Attack's throttle response (429, ``Retry-After``, ``RateLimit-*``). What python-gitlab calls is served:
variables (list with offset pagination, get, create, update, delete), projects and groups by id or by
URL-encoded full path, ``GET /user`` and ``GET /personal_access_tokens/self``. Where public material is silent
the behaviour chosen here is marked ``# Assumption:``. Test-only helpers live in-process and under
``/_sandbox/``; the product must never need them.
"""

from __future__ import annotations

import argparse
import email.utils
import enum
import itertools
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from sandbox.server import (
    Abort,
    InvalidJSONBody,
    Request,
    Response,
    SandboxServer,
    json_response,
    positive_float,
    route,
    text_response,
)

API = "/api/v4"
ID = r"(?P<id>[^/]+)"
KEY = r"(?P<key>[^/]+)"
OWNER_KINDS = {"projects": "Project", "groups": "Group"}
VARIABLES = rf"{API}/(?P<kind>projects|groups)/{ID}/variables"

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
VARIABLE_TYPES = ("env_var", "file")
VISIBILITIES = ("private", "internal", "public")
SCOPE_FILTER = "filter[environment_scope]"

UNAUTHORIZED = {"message": "401 Unauthorized"}
FORBIDDEN = {"message": "403 Forbidden"}
VARIABLE_NOT_FOUND = {"message": "404 Variable Not Found"}
AMBIGUOUS = "There are multiple variables with provided parameters. Please use 'filter[environment_scope]'"

KEY_FORMAT = re.compile(r"[a-zA-Z0-9_]+")
SCOPE_FORMAT = re.compile(r"[a-zA-Z0-9_/${}. *-]+")  # Gitlab::Regex.environment_scope_regex
MASKABLE = re.compile(r"[a-zA-Z0-9_+=/@:.~-]{8,}")  # Ci::Maskable::REGEX (masked, expanded)
MASKABLE_RAW = re.compile(r"\S{8,}")  # Ci::Maskable::MASK_AND_RAW_REGEX (masked and raw)
PATH_SEGMENT = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]*")

Ref = str | int | None  # a project or group: numeric id or full path

TRUE_WORDS = {"true", "1", "t", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "f", "no", "n", "off"}


class AccessLevel(enum.IntEnum):
    """GitLab's member roles. Project variables need Maintainer; group variables need Owner."""

    GUEST = 10
    REPORTER = 20
    DEVELOPER = 30
    MAINTAINER = 40
    OWNER = 50

    @classmethod
    def parse(cls, value: str | int) -> AccessLevel:
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown role {value!r}; one of {[level.name.lower() for level in cls]}") from None


#: Who may manage variables (GitLab's ``admin_cicd_variables`` ability).
REQUIRED_LEVEL = {"projects": AccessLevel.MAINTAINER, "groups": AccessLevel.OWNER}


@dataclass
class _Variable:
    key: str
    value: str
    environment_scope: str = "*"
    variable_type: str = "env_var"
    protected: bool = False
    masked: bool = False
    hidden: bool = False
    raw: bool = False
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API entity: a hidden variable's value is never returned."""
        return {
            "variable_type": self.variable_type,
            "key": self.key,
            "value": None if self.hidden else self.value,
            "hidden": self.hidden,
            "protected": self.protected,
            "masked": self.masked,
            "raw": self.raw,
            "environment_scope": self.environment_scope,
            "description": self.description,
        }

    def stored(self) -> dict[str, Any]:
        """What the test API shows: everything, the plaintext value included."""
        return {**self.to_json(), "value": self.value}


@dataclass
class _Owner:
    """A group or a project: something with a full path, a visibility and CI/CD variables."""

    kind: str  # "groups" or "projects"
    id: int
    full_path: str
    visibility: str
    variables: list[_Variable] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.full_path.rsplit("/", 1)[-1]

    @property
    def parent_path(self) -> str | None:
        return self.full_path.rsplit("/", 1)[0] if "/" in self.full_path else None

    def matching(self, key: str, scope: str | None) -> list[_Variable]:
        return [v for v in self.variables if v.key == key and scope in (None, v.environment_scope)]


@dataclass
class _Token:
    value: str
    id: int
    name: str
    user_id: int
    username: str
    scopes: list[str]
    access: dict[str, AccessLevel]  # lower-cased full path of a group or project -> role there
    revoked: bool = False
    created_at: float = field(default_factory=time.time)


def _parse_bool(name: str, value: Any) -> bool:
    """Grape's Boolean coercion, answering its 400 for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise Abort(json_response(400, {"error": f"{name} is invalid"}))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def _check_path(full_path: str) -> str:
    segments = full_path.split("/")
    if not all(PATH_SEGMENT.fullmatch(segment) for segment in segments):
        raise ValueError(f"invalid GitLab path {full_path!r}")
    return full_path


class GitLabSandbox(SandboxServer):
    """GitLab's project and group CI/CD variable endpoints, with tokens, roles, visibility and rate limits.

    ``rate_limit`` requests per ``rate_limit_window`` seconds per token give Rack::Attack's 429 (switchable
    at run time through ``/_sandbox/settings``).
    """

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "rate_limit": lambda value: None if value is None else _positive_int(value),
        "rate_limit_window": positive_float,
    }

    def __init__(
        self,
        *,
        hour_seconds: float = 3600.0,
        latency: float = 0.0,
        rate_limit: int | None = None,
        rate_limit_window: float = 60.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(hour_seconds=hour_seconds, latency=latency, access_log=access_log)
        self._limiter = self.add_rate_limiter(rate_limit or 1, rate_limit_window)
        self._rate_limit = rate_limit
        self._owners: dict[tuple[str, str], _Owner] = {}  # (kind, lower-cased full path) -> owner
        self._tokens: dict[str, _Token] = {}
        self._ids = {"projects": itertools.count(1), "groups": itertools.count(1), "tokens": itertools.count(1)}
        self._user_ids: dict[str, int] = {}
        self.variable_writes = 0  # successful creates and updates: what "the key was written" means

    # -- settings ----------------------------------------------------------------------------------------

    @property
    def rate_limit(self) -> int | None:
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, value: int | None) -> None:
        self._rate_limit = value
        if value is not None:
            self._limiter.limit = value

    @property
    def rate_limit_window(self) -> float:
        return self._limiter.window_seconds

    @rate_limit_window.setter
    def rate_limit_window(self, value: float) -> None:
        self._limiter.window_seconds = value

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "variable_writes": self.variable_writes}

    def reset_stats(self) -> None:
        super().reset_stats()
        self.variable_writes = 0

    # -- test / demo API ---------------------------------------------------------------------------------

    def add_group(self, full_path: str, *, visibility: str = "private") -> int:
        """Create a group (and its missing parents); return its id. Existing groups are kept."""
        return self._add_owner("groups", full_path, visibility).id

    def add_project(self, full_path: str, *, visibility: str = "private") -> int:
        """Create a project in its namespace group (created when missing); return its id."""
        if "/" not in full_path:
            raise ValueError(f"project path {full_path!r} needs a namespace, e.g. 'group/{full_path}'")
        return self._add_owner("projects", full_path, visibility).id

    def add_token(
        self,
        access: dict[str, str | int] | None = None,
        *,
        token: str | None = None,
        name: str = "rotation-bot",
        username: str | None = None,
        scopes: list[str] | tuple[str, ...] = ("api",),
    ) -> str:
        """Register an access token; ``access`` maps a group or project full path to a role name or level.

        A role on a group also applies to its subgroups and projects, as in GitLab.
        """
        value = token or f"glpat-{secrets.token_urlsafe(15)}"
        levels = {path.lower(): AccessLevel.parse(level) for path, level in (access or {}).items()}
        with self.lock:
            user = username or name
            user_id = self._user_ids.setdefault(user, len(self._user_ids) + 1)
            self._tokens[value] = _Token(value, next(self._ids["tokens"]), name, user_id, user, list(scopes), levels)
        return value

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self._tokens[token].revoked = True

    def set_variable(
        self,
        key: str,
        value: str,
        *,
        project: Ref = None,
        group: Ref = None,
        environment_scope: str = "*",
        **flags: Any,
    ) -> None:
        """Create or replace a variable without going through auth or validation (flags: masked, hidden...)."""
        with self.lock:
            owner = self._lookup(project=project, group=group)
            owner.variables = [v for v in owner.variables if (v.key, v.environment_scope) != (key, environment_scope)]
            owner.variables.append(_Variable(key, value, environment_scope, **flags))

    def variable(
        self, key: str, *, project: Ref = None, group: Ref = None, environment_scope: str = "*"
    ) -> dict[str, Any] | None:
        """The stored variable with its plaintext value (hidden ones too), or None."""
        with self.lock:
            found = self._lookup(project=project, group=group).matching(key, environment_scope)
            return found[0].stored() if found else None

    def stored_value(
        self, key: str, *, project: Ref = None, group: Ref = None, environment_scope: str = "*"
    ) -> str | None:
        stored = self.variable(key, project=project, group=group, environment_scope=environment_scope)
        return stored["value"] if stored else None

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Seed groups, projects, tokens and variables; return their ids and the token values.

        ``{"groups": ["acme" | {"path", "visibility"}], "projects": [same], "tokens": [{"name", "token"?,
        "scopes"?, "access": {path: role}}], "variables": [{"project" | "group", "key", "value",
        "environment_scope"?, "masked"?, "hidden"?, ...}]}``
        """
        seeded: dict[str, dict[str, Any]] = {"groups": {}, "projects": {}, "tokens": {}}
        for kind, add in (("groups", self.add_group), ("projects", self.add_project)):
            for spec in document.get(kind, []):
                spec = {"path": spec} if isinstance(spec, str) else dict(spec)
                path = spec.pop("path")
                seeded[kind][path] = add(path, **spec)
        for spec in document.get("tokens", []):
            spec = dict(spec)
            seeded["tokens"][spec.get("name", "rotation-bot")] = self.add_token(spec.pop("access", {}), **spec)
        for spec in document.get("variables", []):
            self.set_variable(**spec)
        return seeded

    @route("GET", r"/_sandbox/variables")
    def _admin_variable(self, request: Request) -> Response:
        """``?project=acme/app&key=K&environment_scope=*`` (or ``group=``): the stored variable, value included."""
        try:
            stored = self.variable(
                request.query_value("key") or "",
                project=request.query_value("project"),
                group=request.query_value("group"),
                environment_scope=request.query_value("environment_scope", "*") or "*",
            )
        except LookupError as error:
            return json_response(404, {"message": str(error)})
        if stored is None:
            return json_response(404, {"message": "no such variable"})
        return json_response(200, stored)

    # -- framework hooks ---------------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return json_response(404, {"error": "404 Not Found"})

    def method_not_allowed(self, request: Request) -> Response:
        return json_response(405, {"error": "405 Not Allowed"})

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        # Assumption: GitLab's JSON parser middleware answers a malformed body with a plain 400.
        return json_response(400, {"error": "400 Bad request - Invalid JSON body"})

    # -- public API: identity ----------------------------------------------------------------------------

    @route("GET", rf"{API}/user")
    def current_user(self, request: Request) -> Response:
        with self.lock:
            token = self._require_token(request)
            return json_response(
                200,
                {
                    "id": token.user_id,
                    "username": token.username,
                    "name": token.username,
                    "state": "active",
                    "web_url": f"{self._base_url(request)}/{token.username}",
                },
            )

    @route("GET", rf"{API}/personal_access_tokens/self")
    def token_self(self, request: Request) -> Response:
        with self.lock:
            token = self._require_token(request)
            return json_response(
                200,
                {
                    "id": token.id,
                    "name": token.name,
                    "revoked": False,
                    "created_at": _iso(token.created_at),
                    "scopes": token.scopes,
                    "user_id": token.user_id,
                    "last_used_at": _iso(time.time()),
                    "active": True,
                    "expires_at": None,
                },
            )

    # -- public API: projects and groups -----------------------------------------------------------------

    @route("GET", rf"{API}/(?P<kind>projects|groups)/{ID}")
    def get_owner(self, request: Request, kind: str, id: str) -> Response:
        with self.lock:
            token = self._authenticate(request)
            owner = self._visible(kind, id, token)
            return json_response(200, self._owner_json(request, owner, token))

    # -- public API: variables ---------------------------------------------------------------------------

    @route("GET", VARIABLES)
    def list_variables(self, request: Request, kind: str, id: str) -> Response:
        with self.lock:
            owner = self._variable_owner(request, kind, id)
            items = [variable.to_json() for variable in owner.variables]
        return self._paginated(request, items)

    @route("GET", rf"{VARIABLES}/{KEY}")
    def get_variable(self, request: Request, kind: str, id: str, key: str) -> Response:
        with self.lock:
            owner = self._variable_owner(request, kind, id)
            return json_response(200, self._find(owner, key, self._scope_filter(request)).to_json())

    @route("POST", VARIABLES)
    def create_variable(self, request: Request, kind: str, id: str) -> Response:
        with self.lock:
            owner = self._variable_owner(request, kind, id)
            params = self._params(request)
            missing = [name for name in ("key", "value") if name not in params]
            if missing:
                raise Abort(json_response(400, {"error": ", ".join(f"{name} is missing" for name in missing)}))
            hidden = _parse_bool("masked_and_hidden", params.get("masked_and_hidden", False))
            variable = _Variable(
                key=str(params["key"]),
                value=str(params["value"]),
                environment_scope=str(params.get("environment_scope", "*")),
                variable_type=self._variable_type(params.get("variable_type", "env_var")),
                protected=_parse_bool("protected", params.get("protected", False)),
                masked=hidden or _parse_bool("masked", params.get("masked", False)),
                hidden=hidden,
                raw=_parse_bool("raw", params.get("raw", False)),
                description=params.get("description"),
            )
            self._validate(owner, variable)
            owner.variables.append(variable)
            self.variable_writes += 1
            return json_response(201, variable.to_json())

    @route("PUT", rf"{VARIABLES}/{KEY}")
    def update_variable(self, request: Request, kind: str, id: str, key: str) -> Response:
        with self.lock:
            owner = self._variable_owner(request, kind, id)
            variable = self._find(owner, key, self._scope_filter(request))
            params = self._params(request)
            updated = _Variable(**{**variable.__dict__})
            if "value" in params:
                updated.value = str(params["value"])
            if "variable_type" in params:
                updated.variable_type = self._variable_type(params["variable_type"])
            if "environment_scope" in params:
                updated.environment_scope = str(params["environment_scope"])
            if "description" in params:
                updated.description = params["description"]
            for flag in ("protected", "masked", "raw"):  # masked_and_hidden is create-only, as in GitLab
                if flag in params:
                    setattr(updated, flag, _parse_bool(flag, params[flag]))
            if variable.hidden and not updated.masked:
                # Assumption: the wording of GitLab's refusal to unmask a hidden variable.
                raise Abort(json_response(400, {"message": {"masked": ["Only visible variables can be unmasked"]}}))
            self._validate(owner, updated, replacing=variable)
            variable.__dict__.update(updated.__dict__)
            self.variable_writes += 1
            return json_response(200, variable.to_json())

    @route("DELETE", rf"{VARIABLES}/{KEY}")
    def delete_variable(self, request: Request, kind: str, id: str, key: str) -> Response:
        with self.lock:
            owner = self._variable_owner(request, kind, id)
            owner.variables.remove(self._find(owner, key, self._scope_filter(request)))
            return Response(204)

    # -- internals (call with self.lock held) ------------------------------------------------------------

    def _add_owner(self, kind: str, full_path: str, visibility: str) -> _Owner:
        _check_path(full_path)
        if visibility not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {VISIBILITIES}")
        with self.lock:
            parent = full_path.rsplit("/", 1)[0] if "/" in full_path else None
            if parent is not None and ("groups", parent.lower()) not in self._owners:
                self._add_owner("groups", parent, visibility)
            existing = self._owners.get((kind, full_path.lower()))
            if existing is not None:
                return existing
            owner = _Owner(kind, next(self._ids[kind]), full_path, visibility)
            self._owners[(kind, full_path.lower())] = owner
            return owner

    def _lookup(self, *, project: Ref = None, group: Ref = None) -> _Owner:
        """In-process lookup for the test API; raises LookupError instead of answering 404."""
        if (project is None) == (group is None):
            raise LookupError("name exactly one of project or group")
        kind, ref = ("projects", project) if project is not None else ("groups", group)
        owner = self._find_owner(kind, str(ref))
        if owner is None:
            raise LookupError(f"no {kind[:-1]} {ref!r}")
        return owner

    def _find_owner(self, kind: str, ref: str) -> _Owner | None:
        """By numeric id or by full path (case-insensitive, as GitLab routes are)."""
        if ref.isdigit():
            return next((o for (k, _), o in self._owners.items() if k == kind and o.id == int(ref)), None)
        return self._owners.get((kind, ref.lower()))

    @staticmethod
    def _presented_token(request: Request) -> str | None:
        """``PRIVATE-TOKEN`` header, ``Authorization: Bearer`` or the ``private_token`` query parameter."""
        header = request.headers.get("PRIVATE-TOKEN")
        if header:
            return header.strip()
        scheme, _, credentials = (request.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return request.query_value("private_token")

    def _authenticate(self, request: Request) -> _Token | None:
        """The caller's token (None when anonymous); 401 for an unknown or revoked token; then rate limits."""
        presented = self._presented_token(request)
        token = self._tokens.get(presented) if presented else None
        if presented and (token is None or token.revoked):
            raise Abort(json_response(401, UNAUTHORIZED))
        self._throttle(token)
        if token is not None:
            allowed = {"api"} | ({"read_api"} if request.method in ("GET", "HEAD") else set())
            if not allowed & set(token.scopes):
                needed = " ".join(sorted(allowed, reverse=True))
                raise Abort(json_response(403, _insufficient_scope(needed)))
        return token

    def _require_token(self, request: Request) -> _Token:
        token = self._authenticate(request)
        if token is None:
            raise Abort(json_response(401, UNAUTHORIZED))
        return token

    def _throttle(self, token: _Token | None) -> None:
        """Rack::Attack's authenticated (per token) and unauthenticated (per client) API throttles."""
        if self._rate_limit is None:
            return
        wait = self._limiter.hit(token.value if token else "anonymous")
        if not wait:
            return
        reset = time.time() + wait
        headers = {
            "Retry-After": str(max(1, math.ceil(wait))),
            "RateLimit-Name": "throttle_authenticated_api" if token else "throttle_unauthenticated_api",
            # Assumption: GitLab scales the limit to a per-minute quota; here it is the quota per window.
            "RateLimit-Limit": str(self._limiter.limit),
            "RateLimit-Observed": str(self._limiter.limit + 1),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(math.ceil(reset)),
            "RateLimit-ResetTime": email.utils.formatdate(reset, usegmt=True),
        }
        raise Abort(text_response(429, "Retry later\n", headers))

    def _access_level(self, token: _Token | None, owner: _Owner) -> int:
        """The token's role on ``owner``: its own membership or one inherited from an ancestor group."""
        if token is None:
            return 0
        path = owner.full_path.lower()
        levels = [int(level) for granted, level in token.access.items() if f"{path}/".startswith(f"{granted}/")]
        return max(levels, default=0)

    def _visible(self, kind: str, ref: str, token: _Token | None) -> _Owner:
        """The owner if the caller may see it; GitLab answers 404, not 403, for what you cannot see."""
        owner = self._find_owner(kind, ref)
        if owner is not None:
            member = self._access_level(token, owner) >= AccessLevel.GUEST
            public = owner.visibility == "public" or (owner.visibility == "internal" and token is not None)
            if member or public:
                return owner
        raise Abort(json_response(404, {"message": f"404 {OWNER_KINDS[kind]} Not Found"}))

    def _variable_owner(self, request: Request, kind: str, ref: str) -> _Owner:
        """Authenticated (401), visible (404) and managed by the caller (403): what every variable call needs."""
        token = self._require_token(request)
        owner = self._visible(kind, ref, token)
        if self._access_level(token, owner) < REQUIRED_LEVEL[kind]:
            raise Abort(json_response(403, FORBIDDEN))
        return owner

    @staticmethod
    def _params(request: Request) -> dict[str, Any]:
        """A JSON object or a form body, as Grape accepts both."""
        if not request.body.strip():
            return {}
        content_type = (request.headers.get("Content-Type") or "").lower()
        if "json" in content_type or request.body.lstrip().startswith(b"{"):
            document = request.json()
            if not isinstance(document, dict):
                raise Abort(json_response(400, {"error": "400 Bad request - body must be a JSON object"}))
            return document
        return {name: values[0] for name, values in parse_qs(request.body.decode(), keep_blank_values=True).items()}

    def _scope_filter(self, request: Request) -> str | None:
        """``filter[environment_scope]`` from the query string, or a ``filter`` hash in the body."""
        scope = request.query_value(SCOPE_FILTER)
        if scope is None and request.method in ("PUT", "DELETE") and request.body.strip():
            body_filter = self._params(request).get("filter")
            scope = body_filter.get("environment_scope") if isinstance(body_filter, dict) else None
        return scope

    @staticmethod
    def _find(owner: _Owner, key: str, scope: str | None) -> _Variable:
        found = owner.matching(key, scope)
        if not found:
            raise Abort(json_response(404, VARIABLE_NOT_FOUND))
        if len(found) > 1:
            raise Abort(json_response(409, {"message": AMBIGUOUS}))
        return found[0]

    @staticmethod
    def _variable_type(value: Any) -> str:
        if value not in VARIABLE_TYPES:
            raise Abort(json_response(400, {"error": "variable_type does not have a valid value"}))
        return str(value)

    @staticmethod
    def _validate(owner: _Owner, variable: _Variable, replacing: _Variable | None = None) -> None:
        """The model validations GitLab answers with 400 ``{"message": {attribute: [errors]}}``."""
        errors: dict[str, list[str]] = {}
        if not variable.key:
            errors.setdefault("key", []).append("can't be blank")
        if len(variable.key) > 255:
            errors.setdefault("key", []).append("is too long (maximum is 255 characters)")
        if not KEY_FORMAT.fullmatch(variable.key):
            errors.setdefault("key", []).append("can contain only letters, digits and '_'.")
        if not SCOPE_FORMAT.fullmatch(variable.environment_scope) or len(variable.environment_scope) > 255:
            errors.setdefault("environment_scope", []).append(
                "can contain only letters, digits, '-', '_', '/', '$', '{', '}', '.', '*' and spaces"
            )
        if variable.masked and not (MASKABLE_RAW if variable.raw else MASKABLE).fullmatch(variable.value):
            errors.setdefault("value", []).append("is invalid")
        slot = (variable.key, variable.environment_scope)
        taken = any(
            other is not replacing and (other.key, other.environment_scope) == slot for other in owner.variables
        )
        if taken:
            errors.setdefault("key", []).append(f"({variable.key}) has already been taken")
        if errors:
            raise Abort(json_response(400, {"message": errors}))

    @staticmethod
    def _base_url(request: Request) -> str:
        return f"http://{request.headers.get('Host') or 'localhost'}"

    def _owner_json(self, request: Request, owner: _Owner, token: _Token | None) -> dict[str, Any]:
        web_url = f"{self._base_url(request)}/{owner.full_path}"
        if owner.kind == "groups":
            parent = self._owners.get(("groups", (owner.parent_path or "").lower()))
            return {
                "id": owner.id,
                "name": owner.path,
                "path": owner.path,
                "full_name": owner.full_path.replace("/", " / "),
                "full_path": owner.full_path,
                "parent_id": parent.id if parent else None,
                "visibility": owner.visibility,
                "web_url": f"{self._base_url(request)}/groups/{owner.full_path}",
                "description": "",
            }
        namespace = self._owners[("groups", (owner.parent_path or "").lower())]
        direct = token.access.get(owner.full_path.lower()) if token else None
        inherited = self._access_level(token, namespace)
        return {
            "id": owner.id,
            "name": owner.path,
            "path": owner.path,
            "name_with_namespace": owner.full_path.replace("/", " / "),
            "path_with_namespace": owner.full_path,
            "description": None,
            "visibility": owner.visibility,
            "web_url": web_url,
            "namespace": {
                "id": namespace.id,
                "name": namespace.path,
                "path": namespace.path,
                "kind": "group",
                "full_path": namespace.full_path,
            },
            "permissions": {
                "project_access": {"access_level": int(direct), "notification_level": 3} if direct else None,
                "group_access": {"access_level": inherited, "notification_level": 3} if inherited else None,
            },
        }

    def _paginated(self, request: Request, items: list[dict[str, Any]]) -> Response:
        """Offset pagination with GitLab's ``X-*`` headers and ``Link`` (what python-gitlab follows)."""
        try:
            page = max(1, int(request.query_value("page", "1") or 1))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query_value("per_page", str(DEFAULT_PER_PAGE)) or 1)))
        except ValueError:
            return json_response(400, {"error": "page is invalid"})
        total_pages = max(1, math.ceil(len(items) / per_page))
        start = (page - 1) * per_page

        def link(number: int) -> str:
            query = {name: values[0] for name, values in request.query.items()}
            query.update(page=str(number), per_page=str(per_page))
            return f"{self._base_url(request)}{request.path}?{urlencode(query)}"

        relations = [("prev", page - 1)] if page > 1 else []
        relations += [("next", page + 1)] if page < total_pages else []
        relations += [("first", 1), ("last", total_pages)]
        headers = {
            "X-Page": str(page),
            "X-Per-Page": str(per_page),
            "X-Next-Page": str(page + 1) if page < total_pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "",
            "X-Total": str(len(items)),
            "X-Total-Pages": str(total_pages),
            "Link": ", ".join(f'<{link(number)}>; rel="{name}"' for name, number in relations),
        }
        return json_response(200, items[start : start + per_page], headers)


def _insufficient_scope(needed: str) -> dict[str, str]:
    return {
        "error": "insufficient_scope",
        "error_description": "The request requires higher privileges than provided by the access token.",
        "scope": needed,
    }


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1 or null, got {value!r}")
    return value


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate-limit", type=int, help="requests per window and token before 429 (default: off)")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="rate-limit window in seconds")


def from_cli_args(args: argparse.Namespace) -> GitLabSandbox:
    return GitLabSandbox(
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        access_log=args.access_log,
    )


__all__ = ["AccessLevel", "GitLabSandbox", "add_cli_arguments", "from_cli_args"]
