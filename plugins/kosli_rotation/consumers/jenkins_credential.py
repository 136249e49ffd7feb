"""A Jenkins "Secret text" credential that jobs bind with ``withCredentials``, updated in place.

Through a python-jenkins ``Jenkins`` client on the Jenkins provider's connection (type ``jenkins``: host without
scheme, port, schema = context path such as ``jenkins``, login = user, password = that user's API token).
HTTPS is the default: only extra ``{"use_https": false}`` selects plain HTTP (the provider's ``JenkinsHook``
defaults to HTTP, so the client is built here, with the hook's URL layout). Every request goes through the
client's ``jenkins_request``, so its basic auth and its CSRF crumb handling (fetched once from
``/crumbIssuer/api/json`` on a cookie session, then sent on every request) are what real users run.

python-jenkins' credential helpers only address folder stores, and they turn any failure (a 503 from a proxy
included) into "does not exist" while adding lookups of their own. So both stores are addressed by URL, in the
layout those helpers use: ``manage/credentials/store/system/domain/<d>/`` or
``job/<f>/job/<g>/credentials/store/folder/domain/<d>/``; then ``credential/<id>/config.xml`` (GET, POST) and
``createCredentials``.

Retries: the hook builds the client with python-jenkins' defaults, i.e. urllib3 retries off and no timeout.
We set a timeout and retry with ``call_with_retries``: 429/5xx (honouring ``Retry-After``, e.g. from a proxy in
front of Jenkins, which has no rate limit of its own), timeouts and connection errors; 401/403 stop at once.
python-jenkins folds HTTP errors into its own exceptions, whose ``__context__`` still holds the response.
"""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret
from kosli_rotation.retrying import backoff_delay, call_with_retries, retry_after_seconds

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_TEXT_CLASS = "org.jenkinsci.plugins.plaincredentials.impl.StringCredentialsImpl"
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
REQUEST_TIMEOUT = 30.0
MAX_ATTEMPTS = 5
RETRY_BUDGET_SECONDS = 180.0
MAX_SINGLE_WAIT = 60.0
FIRST_POLL_SECONDS = 0.25
MAX_POLL_SECONDS = 5.0
NO_VALID_CRUMB = "No valid crumb"
CANCELLED = -1  # stands for "no build will come" while following a queue item
#: Characters Jenkins refuses in item names (``Jenkins.checkGoodName``).
BAD_ITEM_CHARACTERS = re.compile(r'[\\?*%!@#$^&|<>\[\]:;"]')


def _item_path(path: str) -> str:
    """Validate a folder or job full name such as ``team/deploy/kosli-canary``."""
    parts = path.split("/")
    for part in parts:
        if not part.strip() or part in (".", "..") or BAD_ITEM_CHARACTERS.search(part):
            raise ValueError(
                f"{path!r} is not a Jenkins item path: give folder and job names separated by '/', "
                "without leading or trailing '/' and without any of ?*%!@#$^&|<>[]:;\\\""
            )
    return path


def _item_url(path: str) -> str:
    """``team/app`` -> ``job/team/job/app/``, as python-jenkins builds job URLs."""
    return "".join(f"job/{quote(part, safe='')}/" for part in path.split("/"))


class FolderStore(BaseModel):
    """The credentials store of a folder (CloudBees Folders plugin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(description="Full name of the folder, e.g. 'team/deploy'.")

    @field_validator("folder")
    @classmethod
    def _folder_path(cls, folder: str) -> str:
        return _item_path(folder)


class JenkinsCanary(BaseModel):
    """A job that uses the credential; its build must succeed with the new value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str = Field(description="Full name of the job, e.g. 'team/kosli-canary'.")
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("job")
    @classmethod
    def _job_path(cls, job: str) -> str:
        return _item_path(job)

    def build_parameters(self) -> dict[str, str] | None:
        """Jenkins parameters are strings; booleans as Jenkins writes them. None triggers ``/build``."""
        if not self.parameters:
            return None
        return {
            name: (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in self.parameters.items()
        }


class JenkinsCredentialConfig(ConsumerConfig):
    kind: Literal["jenkins_credential"]
    conn_id: str = "jenkins_default"
    credential_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The credential's ID, as jobs reference it (letters, digits, '_', '.', '-').",
    )
    store: Literal["system"] | FolderStore = "system"
    domain: str = Field(default="_", description="Credentials domain; '_' is the global domain.")
    description: str = Field(
        default="Kosli API key (rotated by kosli-key-rotation)",
        description="Used when the credential is created; an existing credential keeps its own.",
    )
    canary: JenkinsCanary | None = None
    canary_timeout_seconds: float = Field(default=600, gt=0)

    @field_validator("domain")
    @classmethod
    def _domain_name(cls, domain: str) -> str:
        if not domain.strip() or "/" in domain or BAD_ITEM_CHARACTERS.search(domain):
            raise ValueError(f"{domain!r} is not a credentials domain name ('_' is the global domain)")
        return domain


def _says_http(use_https: Any) -> bool:
    """Whether the connection's ``use_https`` explicitly turns HTTPS off (false, "false", 0, "no", "off")."""
    return use_https is False or str(use_https).strip().lower() in ("false", "0", "no", "off")


def _http_response(error: BaseException | None) -> Any:
    """The ``requests.Response`` behind an error, looking through python-jenkins' wrapping exceptions."""
    for _ in range(5):
        if error is None:
            return None
        response = getattr(error, "response", None)
        if response is not None and hasattr(response, "status_code"):
            return response
        error = error.__cause__ or error.__context__
    return None


def _is_stale_crumb(response: Any) -> bool:
    return response is not None and response.status_code == 403 and NO_VALID_CRUMB in (response.text or "")


def _retry_delay(error: Exception, attempt: int) -> float | None:
    """How long to wait before retrying ``error``, or None when retrying cannot help."""
    import jenkins
    import requests

    response = _http_response(error)
    if response is None:
        transient = isinstance(error, requests.ConnectionError | requests.Timeout | jenkins.TimeoutException)
        return backoff_delay(attempt) if transient else None
    status = response.status_code
    if _is_stale_crumb(response):
        return 0.0  # the crumb was dropped; the next attempt fetches a fresh one
    if status == 429 or (status >= 500 and status != 501):
        hinted = retry_after_seconds(response.headers.get("Retry-After"))
        return min(hinted, MAX_SINGLE_WAIT) if hinted is not None else backoff_delay(attempt)
    return None


def _jenkins_message(response: Any) -> str:
    """The message of a Jenkins error page (its ``<title>``), or the start of a non-HTML body."""
    text = response.text or ""
    title = re.search(r"<title>(.*?)</title>", text, re.DOTALL)
    message = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return " ".join(message.split())[:200] or response.reason or "no message"


def _parse_xml(text: str) -> ET.Element:
    # XStream may declare XML 1.1; the declaration carries nothing we need.
    return ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text))


class JenkinsCredentialConsumer(Consumer[JenkinsCredentialConfig]):
    """Creates the Secret text credential or rewrites its config.xml, keeping id, scope and description.

    Jenkins never returns the value (GET config.xml shows it encrypted or redacted) nor when it changed, so a
    write is verified by the credential's existence and, when configured, a canary build that uses it.
    """

    kind = "jenkins_credential"
    readable = False

    def __init__(self, config: JenkinsCredentialConfig) -> None:
        super().__init__(config)
        self._jenkins: Any = None

    # -- plumbing -------------------------------------------------------------------------------

    def _server(self) -> Any:
        """The python-jenkins client of the connection (checked first: no URL without a port), HTTPS by default."""
        if self._jenkins is None:
            from airflow.providers.jenkins.hooks.jenkins import JenkinsHook

            conn_id = self.config.conn_id
            try:
                connection = JenkinsHook.get_connection(conn_id)
            except Exception as error:
                raise ConsumerError(
                    self.name,
                    f"Airflow connection {conn_id!r} is not defined ({type(error).__name__}): create a 'jenkins' "
                    "connection with host, port, login (Jenkins user) and password (its API token)",
                    retryable=False,
                ) from None
            problems = [
                problem
                for problem, missing in (
                    ("host (without http:// or https://)", not connection.host or "://" in connection.host),
                    ("port (the URL is https://host:port[/schema])", not connection.port),
                    ("login (the Jenkins user)", not connection.login),
                    ("password (the user's API token)", not connection.password),
                )
                if missing
            ]
            if problems:
                raise ConsumerError(
                    self.name, f"Airflow connection {conn_id!r} needs {', '.join(problems)}", retryable=False
                )
            import jenkins

            scheme = "http" if _says_http(connection.extra_dejson.get("use_https", True)) else "https"
            url = f"{scheme}://{connection.host}:{connection.port}"
            url += f"/{connection.schema}" if connection.schema else ""
            pin_client_loggers()
            server = jenkins.Jenkins(url, connection.login, hold_secret(connection.password))
            server.timeout = REQUEST_TIMEOUT
            self._jenkins = server
        return self._jenkins

    def _store_url(self) -> str:
        domain = quote(self.config.domain, safe="")
        if self.config.store == "system":
            return f"manage/credentials/store/system/domain/{domain}/"
        return f"{_item_url(self.config.store.folder)}credentials/store/folder/domain/{domain}/"

    def _config_xml_url(self) -> str:
        return f"{self._store_url()}credential/{quote(self.config.credential_id, safe='')}/config.xml"

    def _where(self) -> str:
        store = "the system store" if self.config.store == "system" else f"folder {self.config.store.folder}"
        return f"{store}, domain {self.config.domain}"

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        """Run one Jenkins call with bounded retries; turn its final failure into a ``ConsumerError``."""
        try:
            return call_with_retries(
                action,
                delay_for=_retry_delay,
                what=f"Jenkins: {what}",
                max_attempts=MAX_ATTEMPTS,
                deadline=time.monotonic() + RETRY_BUDGET_SECONDS,
            )
        except ConsumerError:
            raise
        except Exception as error:
            raise self._failure(error, what) from None

    def _request(
        self, method: str, path: str, what: str, *, data: bytes | None = None, accept: tuple[int, ...] = ()
    ) -> Any:
        """A request through python-jenkins (auth, crumb); statuses in ``accept`` are returned, not raised."""
        import requests

        server = self._server()

        def attempt() -> Any:
            request = requests.Request(method, server.server + path, data=data, headers=XML_HEADERS if data else {})
            try:
                return server.jenkins_request(request)
            except Exception as error:
                response = _http_response(error)
                if response is not None and response.status_code in accept:
                    return response
                if _is_stale_crumb(response):
                    server.crumb = None  # python-jenkins caches the crumb for good; make it fetch a new one
                raise

        return self._retrying(attempt, what)

    def _failure(self, error: Exception, what: str) -> ConsumerError:
        conn_id = self.config.conn_id
        response = _http_response(error)
        if response is None:
            return ConsumerError(
                self.name, f"cannot {what}: Jenkins unreachable ({type(error).__name__}) via connection {conn_id!r}"
            )
        status, message = response.status_code, _jenkins_message(response)
        if status == 401:
            hint = "set its login to the Jenkins user and its password to a current API token of that user"
            return ConsumerError(
                self.name,
                f"Jenkins rejected the credentials of connection {conn_id!r} (HTTP 401: {message}); {hint}",
                retryable=False,
            )
        if status == 403:
            hint = (
                "the CSRF crumb kept being refused (a proxy dropping the session cookie?)"
                if _is_stale_crumb(response)
                else "grant its user Credentials/View, Create and Update on that store (and Job/Build on the canary)"
            )
            return ConsumerError(
                self.name,
                f"Jenkins refused to {what} for connection {conn_id!r} (HTTP 403: {message}); {hint}",
                retryable=False,
            )
        if status == 404:
            return ConsumerError(
                self.name,
                f"cannot {what}: Jenkins has no such store, domain, folder or job (HTTP 404); check store, domain "
                f"and canary in the inventory, and host, port and schema of connection {conn_id!r}",
                retryable=False,
            )
        transient = status == 429 or (status >= 500 and status != 501)
        return ConsumerError(
            self.name, f"cannot {what}: Jenkins answered HTTP {status} ({message})", retryable=transient
        )

    # -- the interface --------------------------------------------------------------------------

    def describe(self) -> str:
        canary = f"; canary job {self.config.canary.job}" if self.config.canary else ""
        return (
            f"Jenkins Secret text credential {self.config.credential_id} in {self._where()} "
            f"(connection {self.config.conn_id}){canary}"
        )

    def check_access(self) -> None:
        """The store's domain is visible to our user (and the canary job, if any).

        Jenkins has no API to ask for a permission without using it: a missing Credentials/Create or Update
        shows up at the write, as a non-retryable 403.
        """
        self._request(
            "GET", f"{self._store_url()}api/json?tree=credentials[id]", f"list the credentials of {self._where()}"
        )
        if self.config.canary:
            job = self.config.canary.job
            self._request("GET", f"{_item_url(job)}api/json?tree=name", f"see canary job {job}")

    def write(self, key: str) -> None:
        what = f"read credential {self.config.credential_id} in {self._where()}"
        current = self._request("GET", self._config_xml_url(), what, accept=(404,))
        if current.status_code == 404:
            created = self._request(
                "POST",
                f"{self._store_url()}createCredentials",
                f"create credential {self.config.credential_id} in {self._where()}",
                data=self._new_credential_xml(key),
                accept=(409,),
            )
            if created.status_code != 409:
                log.info("Created Jenkins credential %s in %s", self.config.credential_id, self._where())
                return
            # Someone created it between our GET and POST (or our earlier POST landed): update it instead.
            current = self._request("GET", self._config_xml_url(), what)
        self._request(
            "POST",
            self._config_xml_url(),
            f"update credential {self.config.credential_id} in {self._where()}",
            data=self._updated_credential_xml(current.text, key),
        )
        log.info("Updated the secret of Jenkins credential %s in %s", self.config.credential_id, self._where())

    def verify(self, key: str, written_at: float) -> Verification:
        """Existence (Jenkins keeps no modification time, so ``written_at`` cannot be checked), then the canary."""
        what = f"read credential {self.config.credential_id} in {self._where()}"
        response = self._request("GET", self._config_xml_url(), what, accept=(404,))
        method = "write-only: credential exists" + (" + canary build" if self.config.canary else "")
        if response.status_code == 404:
            return Verification(False, method, f"credential {self.config.credential_id} not found in {self._where()}")
        element = self._secret_text_element(response.text)
        if element.findtext("id") != self.config.credential_id:
            return Verification(False, method, f"config.xml names id {element.findtext('id')!r}")
        exists = f"Secret text {self.config.credential_id} exists in {self._where()} (Jenkins shows no value or date)"
        if self.config.canary is None:
            return Verification(True, method, exists + "; no canary configured, so the value itself is unproven")
        ok, outcome = self._run_canary(self.config.canary)
        return Verification(ok, method, f"{exists}; {outcome}")

    # -- XML ------------------------------------------------------------------------------------

    def _new_credential_xml(self, key: str) -> bytes:
        element = ET.Element(SECRET_TEXT_CLASS)
        for tag, text in (
            ("scope", "GLOBAL"),
            ("id", self.config.credential_id),
            ("description", self.config.description),
            ("secret", key),
        ):
            ET.SubElement(element, tag).text = text
        return ET.tostring(element, encoding="utf-8")

    def _secret_text_element(self, text: str) -> ET.Element:
        try:
            element = _parse_xml(text)
        except ET.ParseError as error:
            raise ConsumerError(self.name, f"Jenkins returned config.xml that is not XML ({error})") from None
        if element.tag != SECRET_TEXT_CLASS:
            raise ConsumerError(
                self.name,
                f"credential {self.config.credential_id} in {self._where()} is a {element.tag}, not Secret text: "
                "delete it or choose another credential_id",
                retryable=False,
            )
        return element

    def _updated_credential_xml(self, current: str, key: str) -> bytes:
        """The credential as Jenkins returned it (id, scope, description, plugin version), with the new secret.

        The old secret comes back encrypted (``{AQAAAB...}``) or as ``<secret-redacted/>``; both are replaced.
        """
        element = self._secret_text_element(current)
        secret = element.find("secret")
        if secret is None:
            secret = ET.SubElement(element, "secret")
        tail = secret.tail
        secret.clear()
        secret.text, secret.tail = key, tail
        return ET.tostring(element, encoding="utf-8")

    # -- canary ---------------------------------------------------------------------------------

    def _run_canary(self, canary: JenkinsCanary) -> tuple[bool, str]:
        """Trigger the canary job, follow its queue item to a build, and wait (bounded) for its result."""
        server = self._server()
        deadline = time.monotonic() + self.config.canary_timeout_seconds
        timeout = f"within {self.config.canary_timeout_seconds:g} s"
        queue_id = self._retrying(
            lambda: server.build_job(canary.job, canary.build_parameters()), f"trigger canary job {canary.job}"
        )

        def started_build() -> int | None:
            item = self._retrying(lambda: server.get_queue_item(queue_id), f"read queue item {queue_id}")
            if item.get("cancelled"):
                return CANCELLED
            return (item.get("executable") or {}).get("number")

        number = self._poll(started_build, deadline)
        if number == CANCELLED:
            return False, f"canary queue item {queue_id} of {canary.job} was cancelled"
        if number is None:
            return False, f"canary job {canary.job} (queue item {queue_id}) did not start {timeout}"

        def result() -> str | None:
            info = self._retrying(
                lambda: server.get_build_info(canary.job, number), f"read build {canary.job} #{number}"
            )
            return None if info.get("building") or info.get("result") is None else str(info["result"])

        outcome = self._poll(result, deadline)
        if outcome is None:
            return False, f"canary build {canary.job} #{number} did not finish {timeout}"
        log.info("Canary build %s #%d finished %s", canary.job, number, outcome)
        return outcome == "SUCCESS", f"canary build {canary.job} #{number} finished {outcome}"

    @staticmethod
    def _poll(probe: Callable[[], T | None], deadline: float) -> T | None:
        """Call ``probe`` with growing pauses until it returns a value or the deadline passes."""
        pause = FIRST_POLL_SECONDS
        while True:
            value = probe()
            if value is not None:
                return value
            if time.monotonic() + pause > deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL_SECONDS)
