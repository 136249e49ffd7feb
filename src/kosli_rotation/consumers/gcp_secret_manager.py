"""A GCP Secret Manager secret whose latest version holds the key (google-cloud-secret-manager, REST transport).

The Airflow Google provider is not used (a very large dependency tree for a handful of calls); its
``google_cloud_platform`` connection is mirrored instead: extras ``keyfile_dict`` (the key file's JSON, text or
object) or ``key_path``, ``project`` (also with the ``extra__google_cloud_platform__`` prefix), plus our own
``api_endpoint`` (Private Service Connect, or a sandbox). Without a key, application default credentials apply.

GCP traps handled here (field notes 2026-12, section 2): ``latest`` is the highest version number whatever its
state, so disabling it makes the secret unreadable; a rotation or a rollback therefore always *adds* a version, and
earlier versions are retired (``retire``) only once the old key is dead, never ``latest``. Readers pinned to a
version alias do not follow a rotation: the dry-run plan warns. The client retries only reads and ignores server
waits, so every call passes ``retry=None`` and ``Transport`` does the retrying; AddSecretVersion is paced per
secret to stay under GCP's 2 a second. Payloads are sent with their CRC32C and checked when read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

import kosli_rotation.consumers.gcp_client as gcp
from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")

PROJECT_ID = re.compile(r"^(?:[a-z][a-z0-9-]{4,28}[a-z0-9]|\d{1,20})$")
SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
LOCATION = r"^[a-z]+(?:-[a-z]+)*\d+$"
LABEL_KEY, LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$"), re.compile(r"^[a-z0-9_-]{0,63}$")
ENABLED, DISABLED = 1, 2
STATE_NAMES = {ENABLED: "enabled", DISABLED: "disabled"}
PAST = {"disable": "disabled", "destroy": "destroyed"}


class GcpSecretManagerConfig(ConsumerConfig):
    kind: Literal["gcp_secret_manager"]
    conn_id: str = Field(default="google_cloud_default", min_length=1, description="google_cloud_platform connection.")
    project: str | None = Field(default=None, description="Project id (or number); default: the connection's project.")
    secret_id: str = Field(description="The secret's id within the project.")
    replication: Literal["automatic"] | list[Annotated[str, Field(pattern=LOCATION)]] = Field(
        default="automatic", description="For a secret we create: automatic, or the user-managed locations."
    )
    create_if_missing: bool = Field(default=True, description="Create the secret if it does not exist.")
    retire: Literal["none", "disable", "destroy"] = Field(
        default="none", description="Once the old key is dead: disable or destroy the versions before the current one."
    )
    labels: dict[str, str] | None = Field(default=None, description="Labels of a secret we create.")

    @field_validator("project", "secret_id")
    @classmethod
    def _ids(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.field_name == "project" and value is not None and not PROJECT_ID.match(value):
            raise ValueError(f"{value!r} is not a project id (6-30 of a-z 0-9 -, starting with a letter) or number")
        if info.field_name == "secret_id" and not SECRET_ID.match(str(value)):
            raise ValueError(f"{value!r} is not a secret id (1-255 of A-Z a-z 0-9 _ -; no '/' or full names)")
        return value

    @field_validator("replication")
    @classmethod
    def _locations(cls, replication: str | list[str]) -> str | list[str]:
        if isinstance(replication, list) and (not replication or len(set(replication)) != len(replication)):
            raise ValueError("user-managed replication needs one or more distinct locations, e.g. [europe-west1]")
        return replication

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (labels or {}).items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
                raise ValueError(f"label {key!r}: keys are 1-63 of a-z 0-9 _ - starting with a letter, values 0-63")
        if labels and len(labels) > 64:
            raise ValueError("at most 64 labels")
        return labels

    @model_validator(mode="after")
    def _creation_options(self) -> GcpSecretManagerConfig:
        if not self.create_if_missing and (self.labels or self.replication != "automatic"):
            raise ValueError("replication and labels only apply when create_if_missing is true")
        return self


class GcpSecretManagerConsumer(Consumer[GcpSecretManagerConfig]):
    """Adds a version holding the key (creating the secret if needed); verified by reading ``latest`` back."""

    kind = "gcp_secret_manager"

    def __init__(self, config: GcpSecretManagerConfig) -> None:
        super().__init__(config)
        self._session: gcp.GcpSession | None = None
        self._project = config.project
        self._aliases: dict[str, int] | None = None  # from check_access: alias -> version number
        self._aliases_note = ""

    @property
    def _path(self) -> str:
        return f"projects/{self._project}/secrets/{self.config.secret_id}"

    def describe(self) -> str:
        where = f"project {self._project}" if self._project else "the connection's project"
        return f"GCP Secret Manager secret {self.config.secret_id} in {where} (connection {self.config.conn_id})"

    # -- client ----------------------------------------------------------------------------------------------

    def _client(self) -> Any:
        """The client for the Airflow connection, built on first use (DAG parsing stays offline)."""
        if self._session is None:
            session = gcp.connect(self.config.conn_id, self.name)
            self._project = self.config.project or session.project
            if not self._project:
                raise ConsumerError(
                    self.name,
                    f"no project: set project on the consumer or extra project on connection {self.config.conn_id!r}",
                    retryable=False,
                )
            self._session = session
        return self._session.client

    def _call(self, action: Callable[[], T], what: str, permission: str, resource: str | None = None) -> T:
        """One API call through ``Transport``: retried, a 403 naming the role to grant and to whom."""
        self._client()  # building it may fail (connection, key): those errors are not remote failures
        assert self._session is not None
        grant = f"{self._account} {gcp.ROLE_FOR[permission]} ({permission}) on {resource or self._path}"
        return self._session.call(action, what, consumer=self.name, grant=grant, project=str(self._project))

    @property
    def _account(self) -> str:
        return (self._session.account if self._session else None) or "the connection's identity"

    # -- reading ---------------------------------------------------------------------------------------------

    def _latest_raw(self) -> tuple[int, bytes] | None:
        """``latest`` without retries: (number, payload), None if there is no secret or no version."""
        from google.api_core import exceptions as api

        try:
            response = self._client().access_secret_version(name=f"{self._path}/versions/latest", **gcp.NO_RETRY)
        except api.NotFound:
            return None
        except api.BadRequest as error:
            if gcp.failed_precondition(error):
                raise gcp.unreadable_latest(error, self.name, self.describe(), self._path) from None
            raise
        data = bytes(response.payload.data)
        if "data_crc32c" in response.payload and response.payload.data_crc32c != gcp.crc32c(data):
            raise ConsumerError(self.name, f"the payload read from {self.describe()} fails its CRC32C check")
        return gcp.version_number(response.name), data

    def _latest(self) -> tuple[int, str | None]:
        """(number, digest of its payload) of ``latest``; (0, None) when there is no secret or no version."""
        latest = self._call(
            self._latest_raw, f"read the latest version of {self._path}", "secretmanager.versions.access"
        )
        if latest is None:
            return 0, None
        return latest[0], digest(latest[1].decode("utf-8", "replace")) if latest[1] else None

    def read_digest(self) -> str | None:
        return self._latest()[1]

    def _get_secret(self) -> tuple[Any, bool]:
        """(the secret or None if it does not exist, whether reading it was denied)."""
        from google.api_core import exceptions as api

        def get() -> tuple[Any, bool]:
            try:
                return self._client().get_secret(name=self._path, **gcp.NO_RETRY), False
            except api.NotFound:
                return None, False
            except api.Forbidden:
                return None, True

        return self._call(get, f"read {self._path}", "secretmanager.secrets.get")

    def check_access(self) -> None:
        """The secret (its aliases, for the plan) and our permissions on it; if it is missing, the project."""
        from google.api_core import exceptions as api

        secret, denied = self._get_secret()
        if denied:
            self._aliases_note = "aliases not checked (reading the secret needs secretmanager.secrets.get)"
        elif secret is not None:
            self._aliases = {alias: int(number) for alias, number in secret.version_aliases.items()}
            if self._aliases:
                log.warning("%s: %s", self.describe(), self._alias_warning())
        if secret is None and not denied:
            self._check_creatable()
            return
        needed = ["secretmanager.versions.add", "secretmanager.versions.access"]
        if self.config.retire != "none":
            needed += ["secretmanager.versions.list", f"secretmanager.versions.{self.config.retire}"]

        def test() -> set[str] | None:
            request = {"resource": self._path, "permissions": needed}
            try:
                return set(self._client().test_iam_permissions(request=request, **gcp.NO_RETRY).permissions)
            except api.NotFound:
                return None

        held = self._call(test, f"test our permissions on {self._path}", "secretmanager.secrets.get")
        if held is None:
            self._check_creatable()
            return
        missing = [permission for permission in needed if permission not in held]
        if missing:
            roles = ", ".join(sorted({gcp.ROLE_FOR[permission] for permission in missing}))
            raise ConsumerError(
                self.name,
                f"{self._account} lacks {', '.join(missing)} on {self._path}: grant {roles}",
                retryable=False,
            )

    def _check_creatable(self) -> None:
        """A missing secret is created by the first write: the project must be reachable (secrets.list)."""
        from google.api_core import exceptions as api

        if not self.config.create_if_missing:
            raise self._missing()
        parent = f"projects/{self._project}"

        def probe() -> None:
            try:
                self._client().list_secrets(request={"parent": parent, "page_size": 1}, **gcp.NO_RETRY)
            except api.Forbidden:
                log.info("%s: may not list secrets in %s; creating the secret is not checked ahead", self.name, parent)

        self._call(probe, f"list secrets in {parent}", "secretmanager.secrets.list", parent)

    def _missing(self) -> ConsumerError:
        return ConsumerError(
            self.name,
            f"{self.describe()} does not exist and create_if_missing is false: create it (gcloud secrets create "
            f"{self.config.secret_id} --project={self._project} --replication-policy=automatic)",
            retryable=False,
        )

    def _alias_warning(self) -> str:
        pinned = ", ".join(f"{alias} -> version {number}" for alias, number in sorted((self._aliases or {}).items()))
        return f"WARNING: aliases {pinned} pin readers to a version: they will not follow the rotation"

    def verification_plan(self) -> str:
        plan = super().verification_plan() + " (of the latest version, CRC32C-checked)"
        if self._aliases:
            plan += "; " + self._alias_warning()
        elif self._aliases_note:
            plan += "; " + self._aliases_note
        if self.config.retire != "none":
            plan += f"; once the old key is dead, the versions before the current one are {PAST[self.config.retire]}"
        return plan

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, key: str) -> None:
        """Add a version holding ``key`` unless ``latest`` holds it already; create the secret first if needed."""
        number, held = self._latest()
        if held == digest(key):
            log.info("%s: version %s holds %s already", self.describe(), number, fingerprint(key))
            return
        if not number and self.config.create_if_missing:
            secret, denied = self._get_secret()
            if secret is None and not denied:
                self._create()
        self._add_version(key)

    def _create(self) -> None:
        from google.api_core import exceptions as api

        replication = self.config.replication
        policy = (
            {"automatic": {}}
            if replication == "automatic"
            else {"user_managed": {"replicas": [{"location": location} for location in replication]}}
        )
        parent = f"projects/{self._project}"
        request = {"parent": parent, "secret_id": self.config.secret_id}
        request["secret"] = {"replication": policy, "labels": self.config.labels or {}}

        def create() -> bool:
            try:
                self._client().create_secret(request=request, **gcp.NO_RETRY)
            except api.Conflict:  # ALREADY_EXISTS: created meanwhile, or by our own attempt whose answer was lost
                return False
            return True

        if self._call(create, f"create {self._path}", "secretmanager.secrets.create", parent):
            log.info("Created %s (replication %s)", self.describe(), replication)

    def _add_version(self, key: str) -> None:
        """AddSecretVersion with the payload's CRC32C, paced per secret; a retry first checks whether the lost
        attempt landed, so it adds no second version."""
        from google.api_core import exceptions as api

        data = key.encode()
        request = {"parent": self._path, "payload": {"data": data, "data_crc32c": gcp.crc32c(data)}}
        attempts = 0

        def add() -> int | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                latest = self._latest_raw()
                if latest is not None and latest[1] == data:
                    return latest[0]
            gcp.pace(self._path)
            try:
                version = self._client().add_secret_version(request=request, **gcp.NO_RETRY)
            except api.NotFound:
                if not self.config.create_if_missing:
                    raise self._missing() from None
                raise ConsumerError(self.name, f"{self.describe()} was deleted meanwhile: run again") from None
            return gcp.version_number(version.name)

        number = self._call(add, f"add a version to {self._path}", "secretmanager.versions.add")
        log.info("Stored %s in %s as version %s", fingerprint(key), self.describe(), number)

    # -- retiring --------------------------------------------------------------------------------------------

    def retire_superseded(self, key: str) -> str | None:
        """Disable (or destroy) every version numbered below ``latest``, once ``latest`` is proven to hold ``key``.

        ``latest`` itself is never touched; versions already in the wanted state are skipped, so it is idempotent.
        """
        from google.api_core import exceptions as api

        verb = self.config.retire
        if verb == "none":
            return None
        current, held = self._latest()
        if held != digest(key):  # drifted since it was verified: retiring now could leave no version with the key
            why = f"its latest version {current} does not hold" if current else "it holds no version with"
            text = f"refusing to {verb} earlier versions of {self.describe()}: {why} the new key {fingerprint(key)}"
            raise ConsumerError(self.name, text, retryable=False)
        versions = self._call(
            lambda: list(
                self._client().list_secret_versions(request={"parent": self._path, "page_size": 100}, **gcp.NO_RETRY)
            ),
            f"list the versions of {self._path}",
            "secretmanager.versions.list",
        )
        wanted = {ENABLED} if verb == "disable" else {ENABLED, DISABLED}
        numbers = sorted(gcp.version_number(v.name) for v in versions if int(v.state) in wanted)
        done = [number for number in numbers if number < current]
        for number in done:
            name = f"{self._path}/versions/{number}"

            def change(name: str = name) -> None:
                try:
                    getattr(self._client(), f"{verb}_secret_version")(request={"name": name}, **gcp.NO_RETRY)
                except api.BadRequest as error:  # FAILED_PRECONDITION: destroyed meanwhile, nothing left to retire
                    if not gcp.failed_precondition(error):
                        raise

            self._call(change, f"{verb} {name}", f"secretmanager.versions.{verb}")
        if not done:
            return f"nothing {PAST[verb]}: no version before {current} is {' or '.join(STATE_NAMES[s] for s in wanted)}"
        shown = ", ".join(str(number) for number in done)
        log.info(
            "%s: %s versions %s; version %s holds %s", self.describe(), PAST[verb], shown, current, fingerprint(key)
        )
        return f"{PAST[verb]} versions {shown} of {self._path} (version {current} holds the key)"
