"""CircleCI sandbox: API v2 contexts and their environment variables, project environment variables, pipelines.

Contract: /work/shared/reference/ci_secret_apis.md section 4 and CircleCI's API v2 reference: ``Circle-Token``
(or basic auth with the token as user, or ``Bearer``) personal tokens, ``{"message": ...}`` error bodies
(401 "You must log in first."), ``{"items", "next_page_token"}`` pages read back with ``page-token``, context
variable upsert by PUT (200), project variable create-or-replace by POST (201, value masked as ``xxxx`` + last 4
characters), ``POST /project/{slug}/pipeline`` and ``GET /pipeline/{id}/workflow``. Where public material is
silent the choice made here is marked ``# Assumption:``.

Access model (Assumption: CircleCI hides what a token cannot see): a token's user sees the orgs it belongs to;
anything of another org answers 404 ("Context not found", "Project not found"). Members read, list and trigger
pipelines; changing a context's or project's variables needs the org ``admin`` role, else 403.

Canary pipelines run for real in a background thread: after ``setup_seconds`` the project's one workflow
(``kosli-canary``) starts, ``canary_seconds`` later it reads the variable its project names (contexts first, in
order, then the project: CircleCI's precedence) and calls the Kosli sandbox ``GET {kosli_url}/api/v2/
environments/{org}`` with it: ``success`` iff HTTP 200, else ``failed``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

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

API = "/api/v2"
# Slugs keep their '/' separators literal: vcs/org/repo, or circleci/<org-id>/<project-id>.
SLUG = r"(?P<slug>(?:gh|github|bb|bitbucket|circleci)/[^/]+/[^/]+)"
CONTEXT = rf"{API}/context/(?P<context_id>[^/]+)"
PROJECT = rf"{API}/project/{SLUG}"
VCS_ALIASES = {"github": "gh", "bitbucket": "bb"}
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_VALUE_LENGTH = 32 * 1024  # Assumption: CircleCI does not publish a limit; this one only bounds memory.

NOT_LOGGED_IN = {"message": "You must log in first."}
PERMISSION_DENIED = {"message": "Permission denied"}  # Assumption: the real 403 text is not published.
CONTEXT_NOT_FOUND = {"message": "Context not found"}
PROJECT_NOT_FOUND = {"message": "Project not found"}
ENV_VAR_NOT_FOUND = {"message": "Environment variable not found."}
PIPELINE_NOT_FOUND = {"message": "Pipeline not found"}
WORKFLOW_NOT_FOUND = {"message": "Workflow not found"}
RATE_LIMITED = {"message": "Rate limit exceeded"}  # Assumption: the real 429 body is not published.
CANARY_WORKFLOW = "kosli-canary"


def _iso(epoch: float) -> str:
    """CircleCI's timestamps: ISO 8601 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch * 1000) % 1000:03d}Z"


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> Abort:
    return Abort(json_response(status, {"message": message}, headers))


def _canonical_slug(slug: str) -> str:
    vcs, _, rest = slug.partition("/")
    return f"{VCS_ALIASES.get(vcs, vcs)}/{rest}"


def _masked(value: str) -> str:
    return "xxxx" + value[-4:]


def _optional_limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected null or an integer >= 1, got {value!r}")
    return value


def _page_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return value


@dataclass
class _Org:
    id: str
    slug: str  # gh/acme, bb/acme, or circleci/<id> for GitHub App and GitLab orgs
    name: str


@dataclass
class _User:
    id: str
    login: str
    tokens: set[str]
    roles: dict[str, str]  # org id -> "admin" | "member"


@dataclass
class _Variable:
    value: str
    created_at: float
    updated_at: float


@dataclass
class _Context:
    id: str
    name: str
    org_id: str
    created_at: float
    variables: dict[str, _Variable] = field(default_factory=dict)


@dataclass
class _Canary:
    variable: str = "KOSLI_API_TOKEN"
    contexts: list[str] = field(default_factory=list)  # context names of the project's org, in config order
    org: str | None = None  # the Kosli org probed; default: the sandbox's kosli_org


@dataclass
class _Project:
    slug: str
    id: str
    name: str
    org_id: str
    canary: _Canary
    variables: dict[str, _Variable] = field(default_factory=dict)


@dataclass
class _Workflow:
    id: str
    name: str
    pipeline_id: str
    created_at: float
    status: str = "running"
    stopped_at: float | None = None
    log: list[str] = field(default_factory=list)


@dataclass
class _Pipeline:
    id: str
    number: int
    project_slug: str
    branch: str | None
    tag: str | None
    parameters: dict[str, Any]
    triggered_by: str
    created_at: float
    state: str = "created"
    workflows: list[_Workflow] = field(default_factory=list)


class CircleCiSandbox(SandboxServer):
    """CircleCI API v2: contexts, context and project environment variables, pipelines and their workflows.

    ``rate_limit`` requests per ``rate_limit_window`` seconds per token give 429 with ``Retry-After`` and
    ``X-RateLimit-*`` headers. ``page_size`` is the page length of every listing.
    """

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "canary_seconds": non_negative_float,
        "setup_seconds": non_negative_float,
        "rate_limit": _optional_limit,
        "rate_limit_window": positive_float,
        "page_size": _page_size,
    }

    def __init__(
        self,
        *,
        kosli_url: str | None = None,
        kosli_org: str | None = None,
        canary_seconds: float = 0.5,
        setup_seconds: float = 0.05,
        rate_limit: int | None = None,
        rate_limit_window: float = 60.0,
        page_size: int = 20,
        hour_seconds: float = 3600.0,
        latency: float = 0.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(hour_seconds=hour_seconds, latency=latency, access_log=access_log)
        self.kosli_url = kosli_url.rstrip("/") if kosli_url else None
        self.kosli_org = kosli_org
        self.canary_seconds = canary_seconds
        self.setup_seconds = setup_seconds
        self.rate_limit = _optional_limit(rate_limit)
        self._limiter = self.add_rate_limiter(self.rate_limit or 1, rate_limit_window)
        self.page_size = _page_size(page_size)
        self._orgs: dict[str, _Org] = {}
        self._users: dict[str, _User] = {}  # token -> user
        self._contexts: dict[str, _Context] = {}
        self._projects: dict[str, _Project] = {}
        self._pipelines: dict[str, _Pipeline] = {}
        self._workflows: dict[str, _Workflow] = {}
        self._pipeline_numbers: dict[str, int] = {}
        self._runs: list[threading.Thread] = []

    @property
    def rate_limit_window(self) -> float:
        return self._limiter.window_seconds

    @rate_limit_window.setter
    def rate_limit_window(self, value: float) -> None:
        self._limiter.window_seconds = value

    # -- test / demo API ---------------------------------------------------------------------------------

    def add_org(self, slug: str | None = None, *, name: str | None = None, org_id: str | None = None) -> str:
        """An org by VCS slug (``gh/acme``), or without one (``circleci/<id>``, GitHub App/GitLab); returns its id."""
        org_id = org_id or str(uuid.uuid4())
        if slug is not None and not re.fullmatch(r"(gh|github|bb|bitbucket)/[^/]+", slug):
            raise ValueError(f"{slug!r} is not an org slug like gh/acme or bb/acme")
        slug = _canonical_slug(slug) if slug else f"circleci/{org_id}"
        with self.lock:
            existing = self._org(slug)
            if existing is not None:
                return existing.id
            self._orgs[org_id] = _Org(org_id, slug, name or slug.rpartition("/")[2])
        return org_id

    def add_user(self, login: str, roles: dict[str, str], *, token: str | None = None) -> str:
        """A user with ``roles`` (org slug or id -> "admin" | "member"); returns a personal API token."""
        with self.lock:
            resolved: dict[str, str] = {}
            for org_key, role in roles.items():
                org = self._org(org_key)
                if org is None or role not in ("admin", "member"):
                    raise ValueError(f"unknown org {org_key!r} or role {role!r} (admin or member)")
                resolved[org.id] = role
            token = token or "CCIPAT_" + secrets.token_hex(20)
            self._users[token] = _User(str(uuid.uuid4()), login, {token}, resolved)
        return token

    def add_context(self, org: str, name: str) -> str:
        """A context of ``org`` (slug or id); returns its id."""
        with self.lock:
            owner = self._org(org)
            if owner is None:
                raise LookupError(f"no org {org!r}")
            context = _Context(str(uuid.uuid4()), name, owner.id, time.time())
            self._contexts[context.id] = context
            return context.id

    def add_project(
        self,
        slug: str,
        *,
        variable: str = "KOSLI_API_TOKEN",
        contexts: list[str] | None = None,
        kosli_org: str | None = None,
    ) -> str:
        """A project whose canary workflow reads ``variable`` (from ``contexts`` first, then the project)."""
        slug = _canonical_slug(slug)
        vcs, org_part, name = slug.split("/")
        with self.lock:
            if vcs == "circleci":
                org = self._orgs.get(org_part)
                if org is None:
                    raise LookupError(f"no org with id {org_part!r}")
            else:
                org = self._orgs[self.add_org(f"{vcs}/{org_part}")]
            project_id = name if vcs == "circleci" else str(uuid.uuid4())
            self._projects[slug] = _Project(
                slug, project_id, name, org.id, _Canary(variable, contexts or [], kosli_org)
            )
            return slug

    def set_context_variable(self, context_id: str, name: str, value: str) -> None:
        with self.lock:
            self._upsert(self._contexts[context_id].variables, name, value)

    def set_project_variable(self, slug: str, name: str, value: str) -> None:
        with self.lock:
            self._upsert(self._projects[_canonical_slug(slug)].variables, name, value)

    def context_variable(self, context_id: str, name: str) -> dict[str, Any] | None:
        """The stored plaintext and timestamps of a context variable, or None."""
        with self.lock:
            held = self._contexts[context_id].variables.get(name)
            return (
                None
                if held is None
                else {"value": held.value, "created_at": held.created_at, "updated_at": held.updated_at}
            )

    def project_variable(self, slug: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            held = self._projects[_canonical_slug(slug)].variables.get(name)
            return (
                None
                if held is None
                else {"value": held.value, "created_at": held.created_at, "updated_at": held.updated_at}
            )

    def pipelines(self, slug: str) -> list[dict[str, Any]]:
        """Every pipeline of the project, oldest first, with its workflows' statuses and logs."""
        with self.lock:
            return [
                {
                    "id": pipeline.id,
                    "number": pipeline.number,
                    "branch": pipeline.branch,
                    "parameters": dict(pipeline.parameters),
                    "workflows": [
                        {"name": workflow.name, "status": workflow.status, "log": list(workflow.log)}
                        for workflow in pipeline.workflows
                    ],
                }
                for pipeline in self._pipelines.values()
                if pipeline.project_slug == _canonical_slug(slug)
            ]

    def wait_for_workflows(self, timeout: float = 10.0) -> None:
        """Join every pipeline thread started so far (tests call it before stopping the sandbox)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._runs):
            thread.join(max(0.0, deadline - time.monotonic()))

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Seed orgs, users, contexts (with variables) and projects; return tokens and context ids.

        ``{"orgs": [slug | {"slug", "name", "id"}], "users": {login: {"roles": {org: role}, "token"}},
        "contexts": [{"org", "name", "variables": {name: value}}], "projects": {slug: {"variable", "contexts",
        "kosli_org", "variables": {name: value}}}}``
        """
        for spec in document.get("orgs", []):
            spec = {"slug": spec} if isinstance(spec, str) else spec
            self.add_org(spec.get("slug"), name=spec.get("name"), org_id=spec.get("id"))
        tokens = {
            login: self.add_user(login, spec["roles"], token=spec.get("token"))
            for login, spec in document.get("users", {}).items()
        }
        contexts: dict[str, str] = {}
        for spec in document.get("contexts", []):
            context_id = self.add_context(spec["org"], spec["name"])
            contexts[spec["name"]] = context_id
            for name, value in spec.get("variables", {}).items():
                self.set_context_variable(context_id, name, value)
        for slug, spec in document.get("projects", {}).items():
            spec = dict(spec)
            variables = spec.pop("variables", {})
            self.add_project(slug, **spec)
            for name, value in variables.items():
                self.set_project_variable(slug, name, value)
        return {"tokens": tokens, "contexts": contexts}

    @route("GET", r"/_sandbox/context-variable")
    def _admin_context_variable(self, request: Request) -> Response:
        try:
            held = self.context_variable(request.query_value("context_id") or "", request.query_value("name") or "")
        except KeyError:
            return json_response(404, CONTEXT_NOT_FOUND)
        return json_response(200 if held else 404, held or ENV_VAR_NOT_FOUND)

    @route("GET", r"/_sandbox/project-variable")
    def _admin_project_variable(self, request: Request) -> Response:
        try:
            held = self.project_variable(request.query_value("slug") or "", request.query_value("name") or "")
        except KeyError:
            return json_response(404, PROJECT_NOT_FOUND)
        return json_response(200 if held else 404, held or ENV_VAR_NOT_FOUND)

    # -- framework hooks ---------------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return json_response(404, {"message": "Not found"})

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return json_response(400, {"message": "Invalid JSON body"})

    # -- public API: user, contexts ----------------------------------------------------------------------

    @route("GET", rf"{API}/me")
    def me(self, request: Request) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            return json_response(200, {"id": user.id, "login": user.login, "name": user.login}, headers)

    @route("GET", rf"{API}/context")
    def list_contexts(self, request: Request) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            owner_id, owner_slug = request.query_value("owner-id"), request.query_value("owner-slug")
            if bool(owner_id) == bool(owner_slug):
                raise _message(400, "Exactly one of owner-id and owner-slug must be given", headers)
            if request.query_value("owner-type", "organization") not in ("organization", "account"):
                raise _message(400, "owner-type must be organization or account", headers)
            org = self._org(owner_id or owner_slug or "")
            # Assumption: an org the token's user does not belong to lists no contexts (not an error).
            visible = (
                []
                if org is None or org.id not in user.roles
                else [c for c in self._contexts.values() if c.org_id == org.id]
            )
            items = [{"id": c.id, "name": c.name, "created_at": _iso(c.created_at)} for c in visible]
            return json_response(200, self._page(request, items, headers), headers)

    @route("GET", CONTEXT)
    def get_context(self, request: Request, context_id: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            context = self._context(user, context_id, headers)
            return json_response(
                200, {"id": context.id, "name": context.name, "created_at": _iso(context.created_at)}, headers
            )

    @route("GET", rf"{CONTEXT}/environment-variable")
    def list_context_variables(self, request: Request, context_id: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            context = self._context(user, context_id, headers)
            items = [
                {
                    "variable": name,
                    "context_id": context.id,
                    "created_at": _iso(held.created_at),
                    "updated_at": _iso(held.updated_at),
                }
                for name, held in sorted(context.variables.items())
            ]
            return json_response(200, self._page(request, items, headers), headers)

    @route("PUT", rf"{CONTEXT}/environment-variable/(?P<name>[^/]+)")
    def put_context_variable(self, request: Request, context_id: str, name: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            context = self._context(user, context_id, headers, admin=True)
            value = self._value(request, headers, name)
            held = self._upsert(context.variables, name, value)
            body = {
                "variable": name,
                "context_id": context.id,
                "created_at": _iso(held.created_at),
                "updated_at": _iso(held.updated_at),
            }
            return json_response(200, body, headers)

    @route("DELETE", rf"{CONTEXT}/environment-variable/(?P<name>[^/]+)")
    def delete_context_variable(self, request: Request, context_id: str, name: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            context = self._context(user, context_id, headers, admin=True)
            context.variables.pop(name, None)
            return json_response(200, {"message": "Environment variable deleted."}, headers)

    # -- public API: projects ----------------------------------------------------------------------------

    @route("GET", PROJECT)
    def get_project(self, request: Request, slug: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            project = self._project(user, slug, headers)
            org = self._orgs[project.org_id]
            body = {
                "slug": project.slug,
                "name": project.name,
                "id": project.id,
                "organization_name": org.name,
                "organization_slug": org.slug,
                "organization_id": org.id,
                "vcs_info": {
                    "vcs_url": f"https://example.invalid/{org.name}/{project.name}",
                    "provider": org.slug.split("/")[0],
                    "default_branch": "main",
                },
            }
            return json_response(200, body, headers)

    @route("GET", rf"{PROJECT}/envvar")
    def list_project_variables(self, request: Request, slug: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            project = self._project(user, slug, headers)
            items = [self._project_variable_json(name, held) for name, held in sorted(project.variables.items())]
            return json_response(200, self._page(request, items, headers), headers)

    @route("POST", rf"{PROJECT}/envvar")
    def create_project_variable(self, request: Request, slug: str) -> Response:
        """Create, or replace a variable of the same name. Assumption: the docs only say "Creates"."""
        with self.lock:
            user, headers = self._caller(request)
            project = self._project(user, slug, headers, admin=True)
            body = request.json()
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str) or not ENV_VAR_NAME.fullmatch(name):
                raise _message(400, "name must be a valid environment variable name", headers)
            held = self._upsert(project.variables, name, self._value(request, headers, name))
            return json_response(201, self._project_variable_json(name, held), headers)

    @route("GET", rf"{PROJECT}/envvar/(?P<name>[^/]+)")
    def get_project_variable(self, request: Request, slug: str, name: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            held = self._project(user, slug, headers).variables.get(name)
            if held is None:
                raise Abort(json_response(404, ENV_VAR_NOT_FOUND, headers))
            return json_response(200, self._project_variable_json(name, held), headers)

    @route("DELETE", rf"{PROJECT}/envvar/(?P<name>[^/]+)")
    def delete_project_variable(self, request: Request, slug: str, name: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            project = self._project(user, slug, headers, admin=True)
            if project.variables.pop(name, None) is None:
                raise Abort(json_response(404, ENV_VAR_NOT_FOUND, headers))
            return json_response(200, {"message": "Environment variable deleted."}, headers)

    # -- public API: pipelines and workflows -------------------------------------------------------------

    @route("POST", rf"{PROJECT}/pipeline")
    def trigger_pipeline(self, request: Request, slug: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            project = self._project(user, slug, headers)
            body = request.json() if request.body.strip() else {}
            if not isinstance(body, dict):
                raise _message(400, "The request body must be a JSON object", headers)
            branch, tag, parameters = body.get("branch"), body.get("tag"), body.get("parameters") or {}
            if branch is not None and tag is not None:
                raise _message(400, "Only one of branch or tag may be given", headers)
            if not isinstance(parameters, dict) or not all(
                isinstance(v, str | int | float | bool) for v in parameters.values()
            ):
                raise _message(400, "parameters must be an object of strings, numbers and booleans", headers)
            number = self._pipeline_numbers.get(project.slug, 0) + 1
            self._pipeline_numbers[project.slug] = number
            pipeline = _Pipeline(
                str(uuid.uuid4()),
                number,
                project.slug,
                branch if branch or tag else "main",
                tag,
                parameters,
                user.login,
                time.time(),
            )
            self._pipelines[pipeline.id] = pipeline
            run = threading.Thread(target=self._run_pipeline, args=(pipeline,), name="circleci-pipeline", daemon=True)
            self._runs.append(run)
        run.start()
        body = {
            "id": pipeline.id,
            "state": "pending",
            "number": pipeline.number,
            "created_at": _iso(pipeline.created_at),
        }
        return json_response(201, body, headers)

    @route("GET", rf"{API}/pipeline/(?P<pipeline_id>[^/]+)")
    def get_pipeline(self, request: Request, pipeline_id: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            pipeline = self._pipeline(user, pipeline_id, headers)
            body = {
                "id": pipeline.id,
                "number": pipeline.number,
                "project_slug": pipeline.project_slug,
                "state": pipeline.state,
                "created_at": _iso(pipeline.created_at),
                "trigger": {"type": "api", "actor": {"login": pipeline.triggered_by}},
                "vcs": {"branch": pipeline.branch, "tag": pipeline.tag},
            }
            return json_response(200, body, headers)

    @route("GET", rf"{API}/pipeline/(?P<pipeline_id>[^/]+)/workflow")
    def list_pipeline_workflows(self, request: Request, pipeline_id: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            pipeline = self._pipeline(user, pipeline_id, headers)
            items = [self._workflow_json(pipeline, workflow) for workflow in pipeline.workflows]
            return json_response(200, self._page(request, items, headers), headers)

    @route("GET", rf"{API}/workflow/(?P<workflow_id>[^/]+)")
    def get_workflow(self, request: Request, workflow_id: str) -> Response:
        with self.lock:
            user, headers = self._caller(request)
            workflow = self._workflows.get(workflow_id)
            if workflow is None:
                raise Abort(json_response(404, WORKFLOW_NOT_FOUND, headers))
            pipeline = self._pipeline(user, workflow.pipeline_id, headers)
            return json_response(200, self._workflow_json(pipeline, workflow), headers)

    # -- internals (call with self.lock held) ------------------------------------------------------------

    def _caller(self, request: Request) -> tuple[_User, dict[str, str]]:
        """Authenticate (401), then rate-limit per token (429); returns the user and the rate-limit headers."""
        token = request.headers.get("Circle-Token") or ""
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if not token and scheme.lower() == "bearer":
            token = credentials.strip()
        elif not token and scheme.lower() == "basic":
            try:
                token = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                token = ""
        user = self._users.get(token)
        if user is None:
            raise Abort(json_response(401, NOT_LOGGED_IN))
        if not self.rate_limit:
            return user, {}
        self._limiter.limit = self.rate_limit
        wait = self._limiter.hit(token)
        # Assumption: CircleCI does not document its X-RateLimit-* headers; Reset is in epoch seconds here.
        reset = math.ceil(time.time() + (wait or self._limiter.window_seconds))
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(self._limiter.remaining(token)),
            "X-RateLimit-Reset": str(reset),
        }
        if wait:
            raise Abort(json_response(429, RATE_LIMITED, {**headers, "Retry-After": str(max(1, math.ceil(wait)))}))
        return user, headers

    def _org(self, key: str) -> _Org | None:
        """An org by id or slug (``github/acme`` and ``gh/acme`` are the same)."""
        if key in self._orgs:
            return self._orgs[key]
        slug = _canonical_slug(key)
        return next((org for org in self._orgs.values() if org.slug == slug), None)

    @staticmethod
    def _can_write(user: _User, org_id: str) -> bool:
        return user.roles.get(org_id) == "admin"

    def _context(self, user: _User, context_id: str, headers: dict[str, str], *, admin: bool = False) -> _Context:
        context = self._contexts.get(context_id)
        if context is None or context.org_id not in user.roles:
            raise Abort(json_response(404, CONTEXT_NOT_FOUND, headers))
        if admin and not self._can_write(user, context.org_id):
            raise Abort(json_response(403, PERMISSION_DENIED, headers))
        return context

    def _project(self, user: _User, slug: str, headers: dict[str, str], *, admin: bool = False) -> _Project:
        project = self._projects.get(_canonical_slug(slug))
        if project is None or project.org_id not in user.roles:
            raise Abort(json_response(404, PROJECT_NOT_FOUND, headers))
        if admin and not self._can_write(user, project.org_id):
            raise Abort(json_response(403, PERMISSION_DENIED, headers))
        return project

    def _pipeline(self, user: _User, pipeline_id: str, headers: dict[str, str]) -> _Pipeline:
        pipeline = self._pipelines.get(pipeline_id)
        if pipeline is None or self._projects[pipeline.project_slug].org_id not in user.roles:
            raise Abort(json_response(404, PIPELINE_NOT_FOUND, headers))
        return pipeline

    @staticmethod
    def _value(request: Request, headers: dict[str, str], name: str) -> str:
        if not ENV_VAR_NAME.fullmatch(name):
            raise _message(400, f"Invalid environment variable name: {name[:64]}", headers)
        body = request.json()
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise _message(400, "value is required and must be a string", headers)
        if len(value) > MAX_VALUE_LENGTH:
            raise _message(400, "value is too long", headers)
        return value

    @staticmethod
    def _upsert(variables: dict[str, _Variable], name: str, value: str) -> _Variable:
        """Every write moves updated_at, even a byte-identical one; created_at stays."""
        now = time.time()
        held = variables.get(name)
        if held is None:
            held = variables[name] = _Variable(value, now, now)
        else:
            held.value, held.updated_at = value, now
        return held

    @staticmethod
    def _project_variable_json(name: str, held: _Variable) -> dict[str, Any]:
        return {"name": name, "value": _masked(held.value), "created_at": _iso(held.created_at)}

    def _workflow_json(self, pipeline: _Pipeline, workflow: _Workflow) -> dict[str, Any]:
        return {
            "pipeline_id": pipeline.id,
            "id": workflow.id,
            "name": workflow.name,
            "project_slug": pipeline.project_slug,
            "status": workflow.status,
            "started_by": self._user_id(pipeline.triggered_by),
            "pipeline_number": pipeline.number,
            "created_at": _iso(workflow.created_at),
            "stopped_at": _iso(workflow.stopped_at) if workflow.stopped_at else None,
        }

    def _user_id(self, login: str) -> str | None:
        return next((user.id for user in self._users.values() if user.login == login), None)

    def _page(self, request: Request, items: list[dict[str, Any]], headers: dict[str, str]) -> dict[str, Any]:
        """One page of ``items`` and the token of the next (an opaque base64 offset here)."""
        token = request.query_value("page-token")
        start = 0
        if token:
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise _message(400, "Invalid page-token", headers) from None
        end = start + self.page_size
        next_token = base64.urlsafe_b64encode(f"offset:{end}".encode()).decode() if end < len(items) else None
        return {"items": items[start:end], "next_page_token": next_token}

    # -- canary pipelines --------------------------------------------------------------------------------

    def _canary_value(self, project: _Project) -> str | None:
        """The canary's variable as a job sees it: contexts (in order) win over the project's own variables."""
        for name in project.canary.contexts:
            for context in self._contexts.values():
                if (
                    context.org_id == project.org_id
                    and context.name == name
                    and project.canary.variable in context.variables
                ):
                    return context.variables[project.canary.variable].value
        held = project.variables.get(project.canary.variable)
        return held.value if held else None

    def _run_pipeline(self, pipeline: _Pipeline) -> None:
        time.sleep(self.setup_seconds)
        with self.lock:
            workflow = _Workflow(str(uuid.uuid4()), CANARY_WORKFLOW, pipeline.id, time.time())
            pipeline.workflows.append(workflow)
            pipeline.state = "created"
            self._workflows[workflow.id] = workflow
            project = self._projects[pipeline.project_slug]
            variable, org = project.canary.variable, project.canary.org or self.kosli_org
        time.sleep(self.canary_seconds)
        with self.lock:
            value = self._canary_value(project)
        status, line = self._probe_kosli(variable, value, org)
        with self.lock:
            workflow.log.append(line)
            workflow.status = status
            workflow.stopped_at = time.time()

    def _probe_kosli(self, variable: str, value: str | None, org: str | None) -> tuple[str, str]:
        if not value:
            return "failed", f"${variable} is not set"
        if not self.kosli_url or not org:
            return "failed", "the sandbox has no Kosli URL or org to probe"
        url = f"{self.kosli_url}/api/v2/environments/{quote(org, safe='')}"
        try:
            status = requests.get(url, headers={"Authorization": f"Bearer {value}"}, timeout=10).status_code
        except requests.RequestException as error:
            return "failed", f"GET {url} failed: {type(error).__name__}"
        return ("success" if status == 200 else "failed"), f"GET {url} with ${variable}: HTTP {status}"


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kosli-url", help="Kosli (sandbox) base URL that canary workflows call")
    parser.add_argument("--kosli-org", help="Kosli org that canary workflows probe (a project may name its own)")
    parser.add_argument("--canary-seconds", type=float, default=0.5, help="how long a canary workflow runs")
    parser.add_argument("--setup-seconds", type=float, default=0.05, help="seconds before a pipeline has workflows")
    parser.add_argument("--rate-limit", type=int, help="requests per window per token before 429")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="rate-limit window in seconds")
    parser.add_argument("--page-size", type=int, default=20, help="items per page of every listing")


def from_cli_args(args: argparse.Namespace) -> CircleCiSandbox:
    return CircleCiSandbox(
        kosli_url=args.kosli_url,
        kosli_org=args.kosli_org,
        canary_seconds=args.canary_seconds,
        setup_seconds=args.setup_seconds,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        page_size=args.page_size,
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        access_log=args.access_log,
    )
