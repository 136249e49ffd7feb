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

Retries: python-jenkins has urllib3 retries off and no timeout. We set a timeout and the shared ``Transport``
retries (honouring ``Retry-After``, e.g. from a proxy: Jenkins has no rate limit of its own); a crumb Jenkins no
longer accepts (it restarted) is fetched again at once. python-jenkins folds HTTP errors into its own exceptions,
whose ``__context__`` still holds the response.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.consumers.jenkins_xml import new_credential_xml, secret_text_element, with_new_secret
from kosli_rotation.consumers.transport import Fixes, RemoteFailure, Transport, connection_or_explain, poll_until
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret
from kosli_rotation.scrub import describe_error

log = logging.getLogger(__name__)
T = TypeVar("T")

XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
REQUEST_TIMEOUT = 30.0
NO_VALID_CRUMB = "No valid crumb"
#: Requests sent with a fresh crumb before a crumb refusal is taken as final.
CRUMB_ATTEMPTS = 3
CANCELLED = -1  # stands for "no build will come" while following a queue item
#: Characters Jenkins refuses in item names (``Jenkins.checkGoodName``).
BAD_ITEM_CHARACTERS = re.compile(r'[\\?*%!@#$^&|<>\[\]:;"]')
#: What to change when Jenkins refuses; ``{conn_id}`` is filled per consumer.
FIXES = Fixes(
    unauthorized="set its login to the Jenkins user and its password to a current API token of that user",
    forbidden="grant its user Credentials/View, Create and Update on that store (and Job/Build on the canary)",
    not_found="Jenkins has no such store, domain, folder or job: check store, domain and canary in the inventory, "
    "and host, port and schema of connection {conn_id!r}",
)
CREATE_CONNECTION = "a 'jenkins' connection with host, port, login (Jenkins user) and password (its API token)"


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


def _domain_name(domain: str) -> str:
    if not domain.strip() or "/" in domain or BAD_ITEM_CHARACTERS.search(domain):
        raise ValueError(f"{domain!r} is not a credentials domain name ('_' is the global domain)")
    return domain


#: A folder or job full name, checked as Jenkins checks item names.
ItemPath = Annotated[str, AfterValidator(_item_path)]


def _item_url(path: str) -> str:
    """``team/app`` -> ``job/team/job/app/``, as python-jenkins builds job URLs."""
    return "".join(f"job/{quote(part, safe='')}/" for part in path.split("/"))


class FolderStore(BaseModel):
    """The credentials store of a folder (CloudBees Folders plugin)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: ItemPath = Field(description="Full name of the folder, e.g. 'team/deploy'.")


class JenkinsCanary(BaseModel):
    """A job that uses the credential; its build must succeed with the new value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: ItemPath = Field(description="Full name of the job, e.g. 'team/kosli-canary'.")
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def build_parameters(self) -> dict[str, str] | None:
        """Jenkins parameters are strings; booleans as Jenkins writes them. None triggers ``/build``."""
        as_text = {
            name: str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in self.parameters.items()
        }
        return as_text or None


class JenkinsCredentialConfig(ConsumerConfig):
    kind: Literal["jenkins_credential"]
    conn_id: str = "jenkins_default"
    credential_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The credential's ID, as jobs reference it (letters, digits, '_', '.', '-').",
    )
    store: Literal["system"] | FolderStore = "system"
    domain: Annotated[str, AfterValidator(_domain_name)] = Field(
        default="_", description="Credentials domain; '_' is the global domain."
    )
    description: str = Field(
        default="Kosli API key (rotated by kosli-key-rotation)",
        description="Used when the credential is created; an existing credential keeps its own.",
    )
    canary: JenkinsCanary | None = None
    canary_timeout_seconds: float = Field(default=600, gt=0)


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


def _jenkins_message(response: Any) -> str:
    """The message of a Jenkins error page (its ``<title>``), or the start of a non-HTML body."""
    text = response.text or ""
    title = re.search(r"<title>(.*?)</title>", text, re.DOTALL)
    message = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    return " ".join(message.split())[:200] or response.reason or "no message"


def _classify(error: Exception) -> RemoteFailure | None:
    """A Jenkins answer behind ``error`` (through python-jenkins' wrapping), or no answer at all; None otherwise."""
    import jenkins
    import requests

    if isinstance(error, ConsumerError):
        return None  # ours, already saying what to fix (its context may still hold the answer it is about)
    response = _http_response(error)
    if response is not None:
        return RemoteFailure(response.status_code, _jenkins_message(response), dict(response.headers))
    if isinstance(error, requests.ConnectionError | requests.Timeout | jenkins.TimeoutException):
        return RemoteFailure(None, f"no answer ({type(error).__name__})")
    return None


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
        self._transport = Transport.for_consumer(config, "Jenkins", _classify, FIXES)

    # -- plumbing -------------------------------------------------------------------------------

    def _server(self) -> Any:
        """The python-jenkins client of the connection (checked first: no URL without a port), HTTPS by default."""
        if self._jenkins is None:
            conn_id = self.config.conn_id
            connection = connection_or_explain(conn_id, self.name, CREATE_CONNECTION)
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

    def _credential(self) -> str:
        return f"credential {self.config.credential_id} in {self._where()}"

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        """Run one Jenkins call through the transport; python-jenkins' own failures without an answer behind them
        (an empty or unreadable one) become a retryable ``ConsumerError`` too."""
        import jenkins

        try:
            return self._transport.call(action, what)
        except jenkins.JenkinsException as error:
            raise ConsumerError(
                self.name,
                f"cannot {what}: Jenkins gave no usable answer ({describe_error(error, limit=200)}) via connection "
                f"{self.config.conn_id!r}",
            ) from None

    def _request(
        self, method: str, path: str, what: str, *, data: bytes | None = None, accept: tuple[int, ...] = ()
    ) -> Any:
        """A request through python-jenkins (auth, crumb); statuses in ``accept`` are returned, not raised."""
        import requests

        server = self._server()

        def attempt() -> Any:
            for _ in range(CRUMB_ATTEMPTS):
                request = requests.Request(method, server.server + path, data=data, headers=XML_HEADERS if data else {})
                try:
                    return server.jenkins_request(request)
                except Exception as error:
                    response = _http_response(error)
                    if response is not None and response.status_code in accept:
                        return response
                    if not _is_stale_crumb(response):
                        raise
                server.crumb = None  # python-jenkins caches the crumb for good; make it fetch a new one
            raise ConsumerError(
                self.name,
                f"Jenkins refused to {what} for connection {self.config.conn_id!r} (HTTP 403: {NO_VALID_CRUMB}); "
                "the CSRF crumb kept being refused (a proxy dropping the session cookie?)",
                retryable=False,
            )

        return self._retrying(attempt, what)

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
        what = f"read {self._credential()}"
        current = self._request("GET", self._config_xml_url(), what, accept=(404,))
        if current.status_code == 404:
            created = self._request(
                "POST",
                f"{self._store_url()}createCredentials",
                f"create {self._credential()}",
                data=new_credential_xml(self.config.credential_id, self.config.description, key),
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
            f"update {self._credential()}",
            data=with_new_secret(current.text, key, consumer=self.name, credential=self._credential()),
        )
        log.info("Updated the secret of Jenkins credential %s in %s", self.config.credential_id, self._where())

    def verify(self, key: str, written_at: float) -> Verification:
        """Existence (Jenkins keeps no modification time, so ``written_at`` cannot be checked), then the canary."""
        what = f"read {self._credential()}"
        response = self._request("GET", self._config_xml_url(), what, accept=(404,))
        method = "write-only: credential exists" + (" + canary build" if self.config.canary else "")
        if response.status_code == 404:
            return Verification(False, method, f"{self._credential()} not found")
        element = secret_text_element(response.text, consumer=self.name, credential=self._credential())
        if element.findtext("id") != self.config.credential_id:
            return Verification(False, method, f"config.xml names id {element.findtext('id')!r}")
        exists = f"Secret text {self.config.credential_id} exists in {self._where()} (Jenkins shows no value or date)"
        if self.config.canary is None:
            return Verification(True, method, exists + "; no canary configured, so the value itself is unproven")
        ok, outcome = self._run_canary(self.config.canary)
        return Verification(ok, method, f"{exists}; {outcome}")

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

        number = poll_until(started_build, deadline)
        if number == CANCELLED:
            return False, f"canary queue item {queue_id} of {canary.job} was cancelled"
        if number is None:
            return False, f"canary job {canary.job} (queue item {queue_id}) did not start {timeout}"

        def result() -> str | None:
            info = self._retrying(
                lambda: server.get_build_info(canary.job, number), f"read build {canary.job} #{number}"
            )
            return None if info.get("building") or info.get("result") is None else str(info["result"])

        outcome = poll_until(result, deadline)
        if outcome is None:
            return False, f"canary build {canary.job} #{number} did not finish {timeout}"
        log.info("Canary build %s #%d finished %s", canary.job, number, outcome)
        return outcome == "SUCCESS", f"canary build {canary.job} #{number} finished {outcome}"
