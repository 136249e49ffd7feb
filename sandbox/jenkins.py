"""Jenkins sandbox: credentials stores ("Secret text"), CSRF crumbs, jobs, the build queue and builds.

Contract: /work/shared/reference/ci_secret_apis.md section 3, the credentials plugin's
``CredentialsStoreAction`` (config.xml GET needs Credentials/View, POST Credentials/Update, createCredentials
Credentials/Create and answers 409 for an existing id) and what python-jenkins 1.8.3 sends and parses
(crumb from ``/crumbIssuer/api/json`` on a cookie session, ``Location`` of ``/build``, ``executable.number`` of
a queue item, ``building``/``result`` of a build). Where public material is silent the choice made here is
marked ``# Assumption:``.

Deliberate differences, each switchable:
- ``require_crumb`` (default on): every POST needs the crumb issued to the same user and session. Real Jenkins
  exempts callers that authenticate with an API token; requiring it here exercises clients' crumb handling.
- ``redact_secrets`` (default off): GET config.xml shows the secret as Jenkins encrypts it on disk
  (``{AQAAABAAAAA...}``). Credentials plugin 2.1.1+ serves ``<secret><secret-redacted/></secret>`` instead;
  switch this on to get that. Either way the plaintext never leaves the sandbox over the public API.
- ``rate_limit``: Jenkins has no rate limit of its own. This emulates a reverse proxy in front of it that
  answers 503 with ``Retry-After`` (nginx ``limit_req`` answers 503 by default).

Canary jobs run for real in a background thread: after the quiet period the build binds the Secret text
credential its job names (looked up from the innermost folder store out to the system store, any domain) and
calls the Kosli sandbox ``GET {kosli_url}/api/v2/environments/{org}`` with it; SUCCESS iff HTTP 200.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import html
import math
import re
import secrets
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

import requests

from sandbox.server import (
    ADMIN_PREFIX,
    Abort,
    Request,
    Response,
    SandboxServer,
    json_response,
    non_negative_float,
    positive_float,
    route,
    strict_bool,
    text_response,
)

JENKINS_VERSION = "2.479.3"
SECRET_TEXT = "org.jenkinsci.plugins.plaincredentials.impl.StringCredentialsImpl"
SECRET_FIELDS = ("secret", "password")  # elements whose text Jenkins keeps as an encrypted hudson.util.Secret
CRUMB_FIELD = "Jenkins-Crumb"
SESSION_COOKIE = "JSESSIONID.sandbox"
NO_VALID_CRUMB = "No valid crumb was included in the request"

#: Permission names as Jenkins shows them, and the ids it sends in ``X-Required-Permission``.
PERMISSIONS = {
    "Overall/Read": "hudson.model.Hudson.Read",
    "Credentials/View": "com.cloudbees.plugins.credentials.CredentialsProvider.View",
    "Credentials/Create": "com.cloudbees.plugins.credentials.CredentialsProvider.Create",
    "Credentials/Update": "com.cloudbees.plugins.credentials.CredentialsProvider.Update",
    "Credentials/Delete": "com.cloudbees.plugins.credentials.CredentialsProvider.Delete",
    "Job/Read": "hudson.model.Item.Read",
    "Job/Build": "hudson.model.Item.Build",
}

ITEM = r"(?P<item>(?:/job/[^/]+)+)"
# The system store lives under the root (``/credentials``) and, since the "Manage Jenkins" redesign, under
# ``/manage/credentials``; a folder store lives under its folder.
STORE = r"(?P<context>(?:/job/[^/]+)+|/manage|)/credentials/store/(?P<store>[^/]+)/domain/(?P<domain>[^/]+)"
# Stapler also resolves the plural ``credentials/{id}``, which the plugin's own curl examples use.
CREDENTIAL = rf"{STORE}/credentials?/(?P<credential_id>[^/]+)"
SYSTEM = ""  # the key of the system store in ``_stores``; folder stores are keyed by the folder's full name


def _error_page(status: int, message: str, path: str, headers: dict[str, str] | None = None) -> Response:
    """The HTML error page Jenkins' Jetty (Winstone) renders for ``sendError``."""
    message = html.escape(message)
    body = (
        '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>\n'
        f"<title>Error {status} {message}</title>\n</head>\n<body><h2>HTTP ERROR {status} {message}</h2>\n"
        f"<table>\n<tr><th>URI:</th><td>{html.escape(path)}</td></tr>\n<tr><th>STATUS:</th><td>{status}</td></tr>\n"
        f"<tr><th>MESSAGE:</th><td>{message}</td></tr>\n<tr><th>SERVLET:</th><td>Stapler</td></tr>\n</table>\n"
        "</body>\n</html>\n"
    )
    return Response(status, body, {"Content-Type": "text/html;charset=utf-8", **(headers or {})})


def _fail(status: int, request: Request, message: str | None = None, headers: dict[str, str] | None = None) -> Abort:
    return Abort(_error_page(status, message or HTTPStatus(status).phrase, request.path, headers))


def _item_name(context: str) -> str:
    """``/job/a/job/b`` -> ``a/b``."""
    return "/".join(context.split("/job/")[1:])


def _item_url_path(full_name: str) -> str:
    return "".join(f"/job/{quote(part)}" for part in full_name.split("/"))


def _valid_item_name(full_name: str) -> str:
    parts = full_name.split("/")
    if not full_name or any(
        not part or part in (".", "..") or re.search(r'[\\?*%!@#$^&|<>\[\]:;"]', part) for part in parts
    ):
        raise ValueError(f"{full_name!r} is not a valid Jenkins item path")
    return full_name


def _optional_limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected null or an integer >= 1, got {value!r}")
    return value


@dataclass
class _User:
    name: str
    api_tokens: set[str]
    password: str | None
    permissions: frozenset[str]

    def accepts(self, secret: str) -> bool:
        return secret in self.api_tokens or (self.password is not None and secret == self.password)


@dataclass
class _Credential:
    """One credential as Jenkins keeps it: its XML, with every secret field encrypted."""

    element: ET.Element

    @property
    def id(self) -> str:
        return self.element.findtext("id") or ""


@dataclass
class _Build:
    number: int
    queue_id: int
    parameters: dict[str, str]
    started_by: str
    timestamp: float
    building: bool = True
    result: str | None = None
    duration: float = 0.0
    console: list[str] = field(default_factory=list)


@dataclass
class _Job:
    full_name: str
    credential_id: str
    org: str | None
    parameters: dict[str, str] | None  # None: not parameterized; else the defaults
    builds: dict[int, _Build] = field(default_factory=dict)
    next_number: int = 1


@dataclass
class _QueueItem:
    id: int
    job: str
    parameters: dict[str, str]
    started_by: str
    in_queue_since: float
    build_number: int | None = None


class JenkinsSandbox(SandboxServer):
    """Jenkins' credentials REST API (system and folder stores), crumbs, basic auth and canary builds.

    ``rate_limit`` requests per ``rate_limit_window`` seconds per user give 503 with ``Retry-After`` (a proxy's
    limit; Jenkins has none). ``canary_seconds`` is how long a build runs, ``quiet_period`` how long it waits in
    the queue first.
    """

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "require_crumb": strict_bool,
        "redact_secrets": strict_bool,
        "canary_seconds": non_negative_float,
        "quiet_period": non_negative_float,
        "rate_limit": _optional_limit,
        "rate_limit_window": positive_float,
    }

    def __init__(
        self,
        *,
        kosli_url: str | None = None,
        kosli_org: str | None = None,
        canary_seconds: float = 0.5,
        quiet_period: float = 0.05,
        require_crumb: bool = True,
        redact_secrets: bool = False,
        rate_limit: int | None = None,
        rate_limit_window: float = 60.0,
        hour_seconds: float = 3600.0,
        latency: float = 0.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(hour_seconds=hour_seconds, latency=latency, access_log=access_log)
        self.kosli_url = kosli_url.rstrip("/") if kosli_url else None
        self.kosli_org = kosli_org
        self.canary_seconds = canary_seconds
        self.quiet_period = quiet_period
        self.require_crumb = require_crumb
        self.redact_secrets = redact_secrets
        self.rate_limit = _optional_limit(rate_limit)
        self._limiter = self.add_rate_limiter(self.rate_limit or 1, rate_limit_window)
        self._instance_key = secrets.token_bytes(32)  # stands in for Jenkins' secrets/master.key
        self._crumb_salt = secrets.token_hex(16)
        self._users: dict[str, _User] = {}
        self._folders: set[str] = set()
        self._stores: dict[str, dict[str, dict[str, _Credential]]] = {SYSTEM: {"_": {}}}  # store -> domain -> id
        self._jobs: dict[str, _Job] = {}
        self._queue: dict[int, _QueueItem] = {}
        self._next_queue_id = 1
        self._runs: list[threading.Thread] = []

    @property
    def rate_limit_window(self) -> float:
        return self._limiter.window_seconds

    @rate_limit_window.setter
    def rate_limit_window(self, value: float) -> None:
        self._limiter.window_seconds = value

    # -- test / demo API ---------------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        permissions: list[str] | None = None,
        api_token: str | None = None,
        password: str | None = None,
    ) -> str:
        """Create a user (all permissions of ``PERMISSIONS`` by default) and return its API token."""
        granted = frozenset(PERMISSIONS if permissions is None else permissions)
        unknown = sorted(granted - set(PERMISSIONS))
        if unknown:
            raise ValueError(f"unknown permissions {unknown}; known: {sorted(PERMISSIONS)}")
        token = api_token or "11" + secrets.token_hex(16)  # Jenkins' API token shape: 34 hex digits
        with self.lock:
            self._users[name] = _User(name, {token}, password, granted)
        return token

    def add_folder(self, full_name: str) -> None:
        """Create a folder (and its parents), each with a folder credentials store holding domain ``_``."""
        parts = _valid_item_name(full_name).split("/")
        with self.lock:
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth])
                if folder in self._jobs:
                    raise ValueError(f"{folder!r} is a job, not a folder")
                self._folders.add(folder)
                self._stores.setdefault(folder, {"_": {}})

    def add_domain(self, domain: str, *, folder: str | None = None) -> None:
        with self.lock:
            self._store_domains(folder).setdefault(domain, {})

    def put_credential(
        self,
        credential_id: str,
        secret: str,
        *,
        folder: str | None = None,
        domain: str = "_",
        description: str = "",
        scope: str = "GLOBAL",
    ) -> None:
        """Create or replace a Secret text credential directly (no auth, not counted)."""
        element = ET.Element(SECRET_TEXT, {"plugin": "plain-credentials@183.va_de8f1dd5a_2b_"})
        for tag, text in (("scope", scope), ("id", credential_id), ("description", description), ("secret", secret)):
            ET.SubElement(element, tag).text = text
        with self.lock:
            credentials = self._domain_credentials(folder, domain)
            credentials[credential_id] = _Credential(self._sealed(element))

    def stored_credential(self, credential_id: str, *, folder: str | None = None, domain: str = "_") -> dict[str, Any]:
        """What Jenkins holds, decrypted: ``{"class", "id", "scope", "description", "secret"}``; LookupError if none."""
        with self.lock:
            credential = self._domain_credentials(folder, domain).get(credential_id)
            if credential is None:
                raise LookupError(f"no credential {credential_id!r} in domain {domain!r} of {folder or 'system'}")
            element = credential.element
            return {
                "class": element.tag,
                "id": credential.id,
                "scope": element.findtext("scope"),
                "description": element.findtext("description"),
                "secret": self._decrypt(element.findtext("secret") or ""),
                "stored_xml": ET.tostring(element, encoding="unicode"),
            }

    def add_job(
        self,
        full_name: str,
        *,
        credential_id: str = "kosli-api-token",
        org: str | None = None,
        parameters: dict[str, str] | None = None,
    ) -> None:
        """A canary job binding ``credential_id`` and probing Kosli org ``org`` (default: ``kosli_org``)."""
        _valid_item_name(full_name)
        parent = full_name.rpartition("/")[0]
        if parent:
            self.add_folder(parent)
        with self.lock:
            if full_name in self._folders:
                raise ValueError(f"{full_name!r} is a folder")
            self._jobs[full_name] = _Job(full_name, credential_id, org, parameters)

    def builds(self, job: str) -> list[dict[str, Any]]:
        """Every build of ``job``, oldest first, with its result and console lines."""
        with self.lock:
            return [
                {
                    "number": build.number,
                    "building": build.building,
                    "result": build.result,
                    "parameters": dict(build.parameters),
                    "console": list(build.console),
                }
                for build in self._jobs[job].builds.values()
            ]

    def wait_for_builds(self, timeout: float = 10.0) -> None:
        """Join every build thread started so far (tests call it before stopping the sandbox)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._runs):
            thread.join(max(0.0, deadline - time.monotonic()))

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Seed users, folders, domains, credentials and jobs; return each user's API token.

        ``{"users": {name: {"permissions": [...], "api_token", "password"}}, "folders": [path],
        "domains": {"system" | folder: [name]}, "credentials": [{"id", "secret", "folder", "domain",
        "description", "scope"}], "jobs": {path: {"credential_id", "org", "parameters"}}}``
        """
        tokens = {name: self.add_user(name, **spec) for name, spec in document.get("users", {}).items()}
        for folder in document.get("folders", []):
            self.add_folder(folder)
        for store, domains in document.get("domains", {}).items():
            for domain in domains:
                self.add_domain(domain, folder=None if store == "system" else store)
        for spec in document.get("credentials", []):
            spec = dict(spec)
            self.put_credential(spec.pop("id"), spec.pop("secret"), **spec)
        for name, spec in document.get("jobs", {}).items():
            self.add_job(name, **spec)
        return {"users": {name: {"api_token": token} for name, token in tokens.items()}}

    @route("GET", r"/_sandbox/credential")
    def _admin_credential(self, request: Request) -> Response:
        try:
            stored = self.stored_credential(
                request.query_value("id") or "",
                folder=request.query_value("folder"),
                domain=request.query_value("domain") or "_",
            )
        except LookupError as error:
            return json_response(404, {"message": str(error)})
        return json_response(200, stored)

    @route("GET", r"/_sandbox/builds")
    def _admin_builds(self, request: Request) -> Response:
        try:
            return json_response(200, self.builds(request.query_value("job") or ""))
        except KeyError:
            return json_response(404, {"message": "no such job"})

    # -- framework hooks ---------------------------------------------------------------------------------

    def process(self, request: Request) -> Response | None:
        """Every Jenkins answer carries ``X-Jenkins`` (python-jenkins' ``get_version`` reads it)."""
        response = super().process(request)
        if response is not None and not request.path.startswith(ADMIN_PREFIX):
            response.headers.setdefault("X-Jenkins", JENKINS_VERSION)
        return response

    def not_found(self, request: Request) -> Response:
        return _error_page(404, "Not Found", request.path)

    def method_not_allowed(self, request: Request) -> Response:
        return _error_page(
            405, "This URL requires POST" if request.method == "GET" else "Method Not Allowed", request.path
        )

    # -- public API: instance, crumbs --------------------------------------------------------------------

    @route("GET", r"/")
    @route("GET", r"/api/json")
    def instance(self, request: Request) -> Response:
        with self.lock:
            self._caller(request)
            jobs = [
                {"_class": "hudson.model.FreeStyleProject", "name": name, "url": self._item_url(name)}
                for name in self._jobs
                if "/" not in name
            ] + [
                {"_class": "com.cloudbees.hudson.plugins.folder.Folder", "name": name, "url": self._item_url(name)}
                for name in self._folders
                if "/" not in name
            ]
        body = {
            "_class": "hudson.model.Hudson",
            "mode": "NORMAL",
            "nodeDescription": "the Jenkins controller",
            "numExecutors": 2,
            "jobs": jobs,
            "useCrumbs": self.require_crumb,
            "useSecurity": True,
            "url": self.url + "/",
        }
        return json_response(200, body)

    @route("GET", r"/crumbIssuer/api/json")
    def crumb_issuer(self, request: Request) -> Response:
        """A crumb bound to the user and the web session; a new session cookie is set when none came in."""
        with self.lock:
            user = self._caller(request)
        session = self._session(request)
        headers = {}
        if session is None:
            session = secrets.token_hex(12)
            headers["Set-Cookie"] = f"{SESSION_COOKIE}={session}; Path=/; HttpOnly"
        body = {
            "_class": "hudson.security.csrf.DefaultCrumbIssuer",
            "crumb": self._crumb(user.name, session),
            "crumbRequestField": CRUMB_FIELD,
        }
        return json_response(200, body, headers)

    # -- public API: credentials -------------------------------------------------------------------------

    @route("GET", rf"{STORE}/api/json")
    def domain_info(self, request: Request, context: str, store: str, domain: str) -> Response:
        with self.lock:
            user = self._caller(request)
            credentials = self._resolve_domain(request, context, store, domain)
            self._require(user, "Credentials/View", request)
            body = {
                "_class": "com.cloudbees.plugins.credentials.CredentialsStoreAction$DomainWrapper",
                "credentials": [{"id": credential_id} for credential_id in credentials],
                "description": "Credentials that should be available irrespective of domain specification "
                "to requirements matching."
                if domain == "_"
                else "",
                "displayName": "Global credentials (unrestricted)" if domain == "_" else domain,
                "fullName": f"{_item_name(context) + '/' if context.startswith('/job/') else ''}{store}/{domain}",
                "global": domain == "_",
                "urlName": domain,
            }
            return json_response(200, body)

    @route("POST", rf"{STORE}/createCredentials")
    def create_credentials(self, request: Request, context: str, store: str, domain: str) -> Response:
        with self.lock:
            user = self._caller(request)
            credentials = self._resolve_domain(request, context, store, domain)
            self._require(user, "Credentials/Create", request)
            credential = self._submitted_credential(request)
            if not credential.id:
                ET.SubElement(credential.element, "id").text = str(uuid.uuid4())  # Jenkins fills in a random id
            if credential.id in credentials:
                return Response(409)  # HttpResponses.status(SC_CONFLICT): no body
            credentials[credential.id] = credential
            return Response(200)

    @route("GET", rf"{CREDENTIAL}/config.xml")
    def get_credential_config(
        self, request: Request, context: str, store: str, domain: str, credential_id: str
    ) -> Response:
        with self.lock:
            user = self._caller(request)
            credential = self._resolve_credential(request, context, store, domain, credential_id)
            self._require(user, "Credentials/View", request)
            element = copy.deepcopy(credential.element)
            if self.redact_secrets:
                for secret in self._secret_elements(element):
                    tail = secret.tail
                    secret.clear()
                    secret.tail = tail
                    ET.SubElement(secret, "secret-redacted")
            return Response(200, ET.tostring(element, encoding="unicode"), {"Content-Type": "application/xml"})

    @route("POST", rf"{CREDENTIAL}/config.xml")
    def update_credential_config(
        self, request: Request, context: str, store: str, domain: str, credential_id: str
    ) -> Response:
        with self.lock:
            user = self._caller(request)
            credentials = self._resolve_domain(request, context, store, domain)
            current = self._resolve_credential(request, context, store, domain, credential_id)
            self._require(user, "Credentials/Update", request)
            replacement = self._submitted_credential(request)
            # updateCredentials swaps the object in place, even when the submitted id differs.
            # Assumption: an id that collides with another credential of the domain is refused with 409.
            if replacement.id != current.id and replacement.id in credentials:
                return Response(409)
            del credentials[current.id]
            credentials[replacement.id] = replacement
            return Response(200)

    @route("DELETE", rf"{CREDENTIAL}/config.xml")
    def delete_credential(
        self, request: Request, context: str, store: str, domain: str, credential_id: str
    ) -> Response:
        with self.lock:
            user = self._caller(request)
            credentials = self._resolve_domain(request, context, store, domain)
            self._resolve_credential(request, context, store, domain, credential_id)
            self._require(user, "Credentials/Delete", request)
            del credentials[credential_id]
            return Response(200)

    @route("GET", rf"{CREDENTIAL}/api/json")
    def credential_info(self, request: Request, context: str, store: str, domain: str, credential_id: str) -> Response:
        with self.lock:
            user = self._caller(request)
            credential = self._resolve_credential(request, context, store, domain, credential_id)
            self._require(user, "Credentials/View", request)
            body = {
                "_class": "com.cloudbees.plugins.credentials.CredentialsStoreAction$CredentialsWrapper",
                "description": credential.element.findtext("description") or "",
                "displayName": credential.element.findtext("description") or credential.id,
                "fingerprint": None,
                "fullName": f"{store}/{domain}/{credential.id}",
                "id": credential.id,
                "typeName": "Secret text" if credential.element.tag == SECRET_TEXT else credential.element.tag,
            }
            return json_response(200, body)

    # -- public API: jobs, queue, builds -----------------------------------------------------------------

    @route("GET", rf"{ITEM}/api/json")
    def item_info(self, request: Request, item: str) -> Response:
        with self.lock:
            user = self._caller(request)
            name = _item_name(item)
            if name in self._folders:
                self._require(user, "Job/Read", request)
                children = [child for child in [*self._jobs, *self._folders] if child.rpartition("/")[0] == name]
                body = {
                    "_class": "com.cloudbees.hudson.plugins.folder.Folder",
                    "name": name.rpartition("/")[2],
                    "fullName": name,
                    "url": self._item_url(name),
                    "jobs": [{"name": child.rpartition("/")[2], "url": self._item_url(child)} for child in children],
                }
                return json_response(200, body)
            job = self._job(request, item)
            self._require(user, "Job/Read", request)
            return json_response(200, self._job_json(job))

    @route("POST", rf"{ITEM}/build")
    @route("POST", rf"{ITEM}/buildWithParameters")
    def build(self, request: Request, item: str) -> Response:
        with self.lock:
            user = self._caller(request)
            job = self._job(request, item)
            self._require(user, "Job/Build", request)
            submitted = self._build_parameters(request)
            if request.path.endswith("/buildWithParameters") and job.parameters is None:
                raise _fail(400, request, f"{job.full_name} is not parameterized")
            parameters = {**(job.parameters or {}), **submitted} if job.parameters is not None else {}
            queue_item = _QueueItem(self._next_queue_id, job.full_name, parameters, user.name, time.time())
            self._next_queue_id += 1
            self._queue[queue_item.id] = queue_item
            run = threading.Thread(target=self._run_build, args=(queue_item,), name="jenkins-build", daemon=True)
            self._runs.append(run)
        run.start()
        return Response(201, "", {"Location": f"{self.url}/queue/item/{queue_item.id}/"})

    @route("GET", r"/queue/item/(?P<number>\d+)/api/json")
    def queue_item(self, request: Request, number: str) -> Response:
        with self.lock:
            self._caller(request)
            queue_item = self._queue.get(int(number))
            if queue_item is None:
                raise _fail(404, request)
            job_url = self._item_url(queue_item.job)
            body: dict[str, Any] = {
                "id": queue_item.id,
                "inQueueSince": int(queue_item.in_queue_since * 1000),
                "params": "".join(f"\n{name}={value}" for name, value in queue_item.parameters.items()),
                "task": {"_class": "hudson.model.FreeStyleProject", "name": queue_item.job, "url": job_url},
                "url": f"queue/item/{queue_item.id}/",
            }
            if queue_item.build_number is None:
                expires = max(0.0, queue_item.in_queue_since + self.quiet_period - time.time())
                body |= {
                    "_class": "hudson.model.Queue$WaitingItem",
                    "blocked": False,
                    "buildable": False,
                    "why": f"In the quiet period. Expires in {expires * 1000:.0f} ms",
                }
            else:
                body |= {
                    "_class": "hudson.model.Queue$LeftItem",
                    "cancelled": False,
                    "why": None,
                    "executable": {
                        "_class": "hudson.model.FreeStyleBuild",
                        "number": queue_item.build_number,
                        "url": f"{job_url}{queue_item.build_number}/",
                    },
                }
            return json_response(200, body)

    @route("GET", rf"{ITEM}/(?P<number>\d+)/api/json")
    def build_info(self, request: Request, item: str, number: str) -> Response:
        with self.lock:
            user = self._caller(request)
            job = self._job(request, item)
            self._require(user, "Job/Read", request)
            build = job.builds.get(int(number))
            if build is None:
                raise _fail(404, request)
            return json_response(200, self._build_json(job, build))

    @route("GET", rf"{ITEM}/(?P<number>\d+)/consoleText")
    def console_text(self, request: Request, item: str, number: str) -> Response:
        with self.lock:
            user = self._caller(request)
            job = self._job(request, item)
            self._require(user, "Job/Read", request)
            build = job.builds.get(int(number))
            if build is None:
                raise _fail(404, request)
            return text_response(200, "".join(line + "\n" for line in build.console))

    # -- auth, crumbs, rate limit (call with self.lock held) ---------------------------------------------

    def _caller(self, request: Request) -> _User:
        """Rate-limit (the proxy), authenticate (401), require Overall/Read (403), check the crumb of a POST."""
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        name, secret = "", ""
        if scheme.lower() == "basic":
            try:
                name, _, secret = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name = ""
        if self.rate_limit:
            self._limiter.limit = self.rate_limit
            wait = self._limiter.hit(name or "anonymous")
            if wait:
                raise Abort(
                    Response(
                        503,
                        "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
                        "<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>",
                        {"Content-Type": "text/html", "Retry-After": str(max(1, math.ceil(wait)))},
                    )
                )
        # Assumption: other schemes (Bearer...) are ignored, so such a caller is anonymous, as in Jenkins.
        user = self._users.get(name) if scheme.lower() == "basic" else None
        if scheme.lower() == "basic" and (user is None or not user.accepts(secret)):
            raise _fail(
                401, request, f"Invalid password/token for user: {name}", {"WWW-Authenticate": 'Basic realm="Jenkins"'}
            )
        if user is None:
            raise _fail(
                403,
                request,
                "Authentication required",
                {"X-You-Are-Authenticated-As": "anonymous", "X-Required-Permission": PERMISSIONS["Overall/Read"]},
            )
        self._require(user, "Overall/Read", request)
        if request.method == "POST" and self.require_crumb:
            session = self._session(request)
            presented = request.headers.get(CRUMB_FIELD)
            if session is None or not presented or presented != self._crumb(user.name, session):
                raise _fail(403, request, NO_VALID_CRUMB)
        return user

    @staticmethod
    def _require(user: _User, permission: str, request: Request) -> None:
        if permission not in user.permissions:
            raise _fail(
                403,
                request,
                f"{user.name} is missing the {permission} permission",
                {"X-You-Are-Authenticated-As": user.name, "X-Required-Permission": PERMISSIONS[permission]},
            )

    @staticmethod
    def _session(request: Request) -> str | None:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(request.headers.get("Cookie", ""))
        except Exception:  # a malformed Cookie header is no session
            return None
        morsel = cookies.get(SESSION_COOKIE)
        return morsel.value if morsel else None

    def _crumb(self, user: str, session: str) -> str:
        return hashlib.sha256(f"{self._crumb_salt}:{user}:{session}".encode()).hexdigest()

    # -- secrets at rest ---------------------------------------------------------------------------------

    def _keystream(self, iv: bytes, length: int) -> bytes:
        blocks = (hashlib.sha256(self._instance_key + iv + n.to_bytes(4, "big")).digest() for n in range(length))
        return b"".join(blocks)[:length]

    def _encrypt(self, plaintext: str) -> str:
        """hudson.util.Secret's on-disk shape: ``{`` base64(version 1, IV length, data length, IV, data) ``}``.

        Assumption: the cipher is a toy (SHA-256 keystream over PKCS#7-padded data) with the real layout, so the
        value looks like Jenkins' ``{AQAAABAAAAA...}`` and round-trips inside this sandbox only.
        """
        data = plaintext.encode()
        padding = 16 - len(data) % 16
        data += bytes([padding]) * padding
        iv = secrets.token_bytes(16)
        cipher = bytes(a ^ b for a, b in zip(data, self._keystream(iv, len(data)), strict=True))
        blob = b"\x01" + len(iv).to_bytes(4, "big") + len(cipher).to_bytes(4, "big") + iv + cipher
        return "{" + base64.b64encode(blob).decode() + "}"

    def _decrypt(self, value: str) -> str:
        """Like ``Secret.fromString``: a value this instance encrypted is decrypted, anything else is plaintext."""
        if not (value.startswith("{") and value.endswith("}")):
            return value
        try:
            blob = base64.b64decode(value[1:-1], validate=True)
            iv_length = int.from_bytes(blob[1:5], "big")
            data_length = int.from_bytes(blob[5:9], "big")
            iv, cipher = blob[9 : 9 + iv_length], blob[9 + iv_length : 9 + iv_length + data_length]
            if blob[0] != 1 or len(cipher) != data_length or not data_length or data_length % 16:
                return value
            data = bytes(a ^ b for a, b in zip(cipher, self._keystream(iv, len(cipher)), strict=True))
            padding = data[-1]
            if not 1 <= padding <= 16 or data[-padding:] != bytes([padding]) * padding:
                return value
            return data[:-padding].decode()
        except (binascii.Error, UnicodeDecodeError, IndexError):
            return value

    @staticmethod
    def _secret_elements(element: ET.Element) -> list[ET.Element]:
        return [child for child in element if child.tag in SECRET_FIELDS]

    def _sealed(self, element: ET.Element) -> ET.Element:
        """The credential as stored: each secret field re-encrypted (an encrypted value of ours is kept as is)."""
        for secret in self._secret_elements(element):
            if len(secret):  # <secret><secret-redacted/></secret> carries no value
                raise ValueError("the credential's secret is redacted, not a value")
            secret.text = self._encrypt(self._decrypt(secret.text or ""))
        return element

    # -- resolution and rendering (call with self.lock held) ---------------------------------------------

    def _store_domains(self, folder: str | None) -> dict[str, dict[str, _Credential]]:
        key = folder or SYSTEM
        if key not in self._stores:
            raise LookupError(f"no folder {folder!r}")
        return self._stores[key]

    def _domain_credentials(self, folder: str | None, domain: str) -> dict[str, _Credential]:
        domains = self._store_domains(folder)
        if domain not in domains:
            raise LookupError(f"no domain {domain!r} in the {folder or 'system'} store")
        return domains[domain]

    def _resolve_domain(self, request: Request, context: str, store: str, domain: str) -> dict[str, _Credential]:
        """The credentials of a store's domain named by the URL; 404 for any other store, folder or domain."""
        system = context in ("", "/manage")
        folder = None if system else _item_name(context)
        if store != ("system" if system else "folder") or (folder is not None and folder not in self._folders):
            raise _fail(404, request)
        try:
            return self._domain_credentials(folder, domain)
        except LookupError:
            raise _fail(404, request) from None

    def _resolve_credential(
        self, request: Request, context: str, store: str, domain: str, credential_id: str
    ) -> _Credential:
        credential = self._resolve_domain(request, context, store, domain).get(credential_id)
        if credential is None:
            raise _fail(404, request)
        return credential

    def _submitted_credential(self, request: Request) -> _Credential:
        """The credential XML of a POST, sealed for storage.

        Assumption: a submitted ``<secret-redacted/>`` (a GET's output posted back unchanged) is refused with 400;
        Jenkins would store a credential without a usable secret.
        """
        element = self._submitted_xml(request)
        try:
            return _Credential(self._sealed(element))
        except ValueError as error:
            raise _fail(400, request, str(error)) from None

    @staticmethod
    def _submitted_xml(request: Request) -> ET.Element:
        content_type = request.headers.get("Content-Type") or ""
        if not content_type:
            raise _fail(400, request, "No Content-Type header set")
        if not content_type.startswith(("application/xml", "text/xml")):
            # Assumption: the form-encoded ``json=`` variant of createCredentials is not emulated.
            raise _fail(400, request, "This sandbox only accepts credential XML (application/xml or text/xml)")
        text = re.sub(r"^\s*<\?xml[^>]*\?>", "", request.body.decode("utf-8", "replace"))
        try:
            return ET.fromstring(text)
        except ET.ParseError:
            raise _fail(500, request, "java.io.IOException: Failed to parse credential") from None

    def _job(self, request: Request, item: str) -> _Job:
        job = self._jobs.get(_item_name(item))
        if job is None:
            raise _fail(404, request)
        return job

    def _item_url(self, full_name: str) -> str:
        return f"{self.url}{_item_url_path(full_name)}/"

    def _job_json(self, job: _Job) -> dict[str, Any]:
        def reference(build: _Build) -> dict[str, Any]:
            return {"_class": "hudson.model.FreeStyleBuild", "number": build.number, "url": self._build_url(job, build)}

        builds = sorted(job.builds.values(), key=lambda build: -build.number)
        in_queue = any(item.job == job.full_name and item.build_number is None for item in self._queue.values())
        body: dict[str, Any] = {
            "_class": "hudson.model.FreeStyleProject",
            "name": job.full_name.rpartition("/")[2],
            "fullName": job.full_name,
            "url": self._item_url(job.full_name),
            "buildable": True,
            "inQueue": in_queue,
            "nextBuildNumber": job.next_number,
            "builds": [reference(build) for build in builds],
            "firstBuild": reference(builds[-1]) if builds else None,
            "lastBuild": reference(builds[0]) if builds else None,
            "property": [],
        }
        if job.parameters is not None:
            definitions = [
                {"name": name, "type": "StringParameterDefinition", "defaultParameterValue": {"value": value}}
                for name, value in job.parameters.items()
            ]
            body["property"] = [
                {"_class": "hudson.model.ParametersDefinitionProperty", "parameterDefinitions": definitions}
            ]
        return body

    def _build_url(self, job: _Job, build: _Build) -> str:
        return f"{self._item_url(job.full_name)}{build.number}/"

    def _build_json(self, job: _Job, build: _Build) -> dict[str, Any]:
        return {
            "_class": "hudson.model.FreeStyleBuild",
            "actions": [
                {
                    "_class": "hudson.model.ParametersAction",
                    "parameters": [{"name": name, "value": value} for name, value in build.parameters.items()],
                },
                {
                    "_class": "hudson.model.CauseAction",
                    "causes": [{"shortDescription": f"Started by user {build.started_by}", "userId": build.started_by}],
                },
            ],
            "building": build.building,
            "duration": int(build.duration * 1000),
            "fullDisplayName": f"{job.full_name} #{build.number}",
            "id": str(build.number),
            "number": build.number,
            "queueId": build.queue_id,
            "result": build.result,
            "timestamp": int(build.timestamp * 1000),
            "url": self._build_url(job, build),
        }

    @staticmethod
    def _build_parameters(request: Request) -> dict[str, str]:
        submitted = {name: values[-1] for name, values in request.query.items()}
        content_type = request.headers.get("Content-Type") or ""
        if request.body and content_type.startswith("application/x-www-form-urlencoded"):
            form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
            submitted |= {name: values[-1] for name, values in form.items()}
        submitted.pop("token", None)
        submitted.pop("delay", None)
        return submitted

    # -- canary builds -----------------------------------------------------------------------------------

    def _bound_secret(self, job: _Job) -> str | None:
        """``withCredentials``' lookup: the job's folders from the innermost out, then the system store."""
        parts = job.full_name.split("/")[:-1]
        folders = ["/".join(parts[:depth]) for depth in range(len(parts), 0, -1)]
        for store in [*folders, SYSTEM]:
            for credentials in self._stores.get(store, {}).values():
                credential = credentials.get(job.credential_id)
                if credential is not None and credential.element.tag == SECRET_TEXT:
                    return self._decrypt(credential.element.findtext("secret") or "")
        return None

    def _run_build(self, queue_item: _QueueItem) -> None:
        time.sleep(self.quiet_period)
        with self.lock:
            job = self._jobs[queue_item.job]
            build = _Build(job.next_number, queue_item.id, queue_item.parameters, queue_item.started_by, time.time())
            job.next_number += 1
            job.builds[build.number] = build
            queue_item.build_number = build.number
            build.console.append(f"Started by user {queue_item.started_by}")
            secret = self._bound_secret(job)
            org = job.org or self.kosli_org
        time.sleep(self.canary_seconds)
        result, lines = self._probe_kosli(job.credential_id, secret, org)
        with self.lock:
            build.console.extend(lines)
            build.console.append(f"Finished: {result}")
            build.result = result
            build.duration = time.time() - build.timestamp
            build.building = False

    def _probe_kosli(self, credential_id: str, secret: str | None, org: str | None) -> tuple[str, list[str]]:
        if secret is None:
            return "FAILURE", [f"ERROR: Could not find credentials entry with ID '{credential_id}'"]
        if not self.kosli_url or not org:
            return "FAILURE", ["ERROR: the sandbox has no Kosli URL or org to probe"]
        url = f"{self.kosli_url}/api/v2/environments/{quote(org, safe='')}"
        try:
            status = requests.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code
        except requests.RequestException as error:
            return "FAILURE", [f"ERROR: GET {url} failed: {type(error).__name__}"]
        return ("SUCCESS" if status == 200 else "FAILURE"), [f"GET {url} with ****: HTTP {status}"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kosli-url", help="Kosli (sandbox) base URL that canary builds call")
    parser.add_argument("--kosli-org", help="Kosli org that canary builds probe (a job may name its own)")
    parser.add_argument("--canary-seconds", type=float, default=0.5, help="how long a canary build runs")
    parser.add_argument("--quiet-period", type=float, default=0.05, help="seconds a build waits in the queue")
    parser.add_argument("--no-crumb", action="store_true", help="accept POSTs without a CSRF crumb")
    parser.add_argument("--redact-secrets", action="store_true", help="GET config.xml shows <secret-redacted/>")
    parser.add_argument("--rate-limit", type=int, help="requests per window per user before a proxy 503")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="rate-limit window in seconds")


def from_cli_args(args: argparse.Namespace) -> JenkinsSandbox:
    return JenkinsSandbox(
        kosli_url=args.kosli_url,
        kosli_org=args.kosli_org,
        canary_seconds=args.canary_seconds,
        quiet_period=args.quiet_period,
        require_crumb=not args.no_crumb,
        redact_secrets=args.redact_secrets,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        access_log=args.access_log,
    )
