"""An Azure Key Vault secret holding the key: each write is a new version, earlier versions optionally disabled.

The client is azure-keyvault-secrets' ``SecretClient`` with the credential of an Airflow ``azure`` connection
(``consumers.azure_connection``: an app's client secret or the worker's managed identity, sovereign clouds, why the
CA comes from ``REQUESTS_CA_BUNDLE``, why azure-core's retries are off). Key Vault is HTTPS only: the client sends
no bearer token over plain HTTP, so ``vault_url`` must be https. Its first request is answered with a 401 bearer
challenge naming the tenant and the resource; the client then asks Entra for a token. Extra
``verify_challenge_resource`` (default true) may be turned off for a vault reached under a name that is not below
the challenge's resource (a custom private-endpoint domain).

A write adds a version unless the latest already holds the key (a rerun adds none). A soft-deleted secret of the
same name (409 ``ObjectIsDeletedButRecoverable``) is recovered first, waited for, then set. ``retire: disable``
disables every earlier enabled version once the old key is dead, never the latest.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from kosli_rotation.consumers.azure_connection import (
    TIMEOUTS,
    classify,
    credential_from,
    flag,
    inner_code,
    pin_azure_loggers,
    tls_failure,
    tls_refusal,
)
from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.consumers.transport import Fixes, Transport, connection_or_explain, poll_until
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint, short

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_NAME = r"^[0-9a-zA-Z-]{1,127}$"
SERVICE = "Azure Key Vault"
OFFICER = "Key Vault Secrets Officer"
#: Seconds a recovered secret may take to become readable before this attempt gives up (the next one goes on).
RECOVER_WAIT = 60.0
MAX_TAGS = 15
#: Marks a latest version that exists but is disabled (Key Vault answers 403 SecretDisabled to reading it).
DISABLED = object()
DELETED = object()


class AzureKeyVaultConfig(ConsumerConfig):
    kind: Literal["azure_key_vault"]
    conn_id: str = Field(default="azure_default", min_length=1, description="Airflow connection of type azure.")
    vault_url: str = Field(description="The vault's https URL, e.g. https://acme.vault.azure.net")
    secret_name: str = Field(description="The secret's name: 1-127 letters, digits and dashes.")
    content_type: str | None = Field(default=None, min_length=1, max_length=255, description="Set on each version.")
    tags: dict[Annotated[str, Field(min_length=1, max_length=512)], Annotated[str, Field(max_length=256)]] | None = (
        Field(default=None, max_length=MAX_TAGS, description="Set on each version (Key Vault allows 15).")
    )
    retire: Literal["none", "disable"] = Field(
        default="none", description="'disable': once the old key is dead, disable every earlier enabled version."
    )

    @field_validator("vault_url")
    @classmethod
    def _https_vault(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme != "https":
            raise ValueError(
                f"vault_url {url!r} must be an https URL (Key Vault is HTTPS only), e.g. https://acme.vault.azure.net"
            )
        if not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"vault_url {url!r} must be just https://<host>, e.g. https://acme.vault.azure.net")
        if parts.path.strip("/"):
            raise ValueError(f"vault_url {url!r} must have no path: the vault's URL, not a secret's")
        return f"https://{parts.netloc}"

    @field_validator("secret_name")
    @classmethod
    def _secret_name(cls, name: str) -> str:
        if not re.match(SECRET_NAME, name):
            raise ValueError(f"secret_name {name!r} is not a Key Vault secret name: 1-127 letters, digits and dashes")
        return name


def _holds(latest: Any, key: str) -> bool:
    """Whether ``_latest``'s answer is a readable version holding ``key`` (full digests compared)."""
    return not _unreadable(latest) and digest(latest.value or "") == digest(key)


def _unreadable(latest: Any) -> bool:
    return latest is None or latest is DISABLED


class AzureKeyVaultConsumer(Consumer[AzureKeyVaultConfig]):
    """Sets a new version holding the key unless the latest holds it; recovers a soft-deleted secret first."""

    kind = "azure_key_vault"

    def __init__(self, config: AzureKeyVaultConfig) -> None:
        super().__init__(config)
        self._client: Any = None
        self._transport: Transport | None = None

    def describe(self) -> str:
        config = self.config
        return f"Azure Key Vault secret {config.secret_name} in {config.vault_url} (connection {config.conn_id})"

    # -- client ----------------------------------------------------------------------------------------

    def _connect(self) -> tuple[Any, Transport]:
        """The SecretClient and its transport for the Airflow connection, made on first use."""
        if self._client is None or self._transport is None:
            from azure.keyvault.secrets import SecretClient

            pin_azure_loggers()
            conn_id = self.config.conn_id
            create = (
                f'an azure connection, e.g. AIRFLOW_CONN_{conn_id.upper()}=\'{{"conn_type": "azure", "login": "<client '
                'id>", "password": "<client secret>", "extra": {"tenant_id": "<tenant id>"}}\' (no login/password: '
                "the worker's managed identity)"
            )
            connection = connection_or_explain(conn_id, self.name, create)
            extra = dict(connection.extra_dejson or {})
            credential = credential_from(connection, self.name, conn_id)
            verify = flag(extra, "verify_challenge_resource", True, self.name, conn_id)
            forbidden = (
                f"give {credential.who} the '{OFFICER}' role on the vault or on secret {self.config.secret_name} "
                "(RBAC vaults), or, on a vault using access policies, the secret permissions get, list, set and recover"
            )
            not_found = f"check vault_url {self.config.vault_url} and secret_name {self.config.secret_name}"
            self._transport = Transport(
                consumer=self.name,
                service=SERVICE,
                conn_id=conn_id,
                classify=classify,
                fixes=Fixes(unauthorized=credential.unauthorized_fix, forbidden=forbidden, not_found=not_found),
            )
            self._client = SecretClient(
                self.config.vault_url,
                credential.credential,
                verify_challenge_resource=verify,
                retry_total=0,
                **TIMEOUTS,
            )
        return self._client, self._transport

    def _call(self, action: Callable[[Any], T], what: str) -> T:
        """``action(client)`` through the transport; what the transport cannot classify is explained here."""
        client, transport = self._connect()
        try:
            return transport.call(lambda: action(client), what)
        except ValueError as error:
            raise self._misconfigured(error, what) from None
        except Exception as error:
            if not tls_failure(error):
                raise
            raise tls_refusal(self.name, what, self.config.vault_url) from None

    def _misconfigured(self, error: ValueError, what: str) -> ConsumerError:
        text, conn = str(error), f"connection {self.config.conn_id!r}"
        hint = f"the {SERVICE} client refused the configuration of {conn} ({type(error).__name__})"
        if "challenge resource" in text:
            hint = (
                f"the vault's challenge names a resource that {self.config.vault_url} is not under: use the vault's "
                f"own URL, or (a custom domain, a test vault) set extra verify_challenge_resource false on {conn}"
            )
        elif "well-known" in text or "invalid_instance" in text:
            hint = f"extra authority_host of {conn} is not listed by Microsoft: if you trust it, set extra "
            hint += "disable_instance_discovery true"
        return ConsumerError(self.name, f"cannot {what}: {hint}", retryable=False)

    # -- reading ---------------------------------------------------------------------------------------

    def _latest(self, client: Any) -> Any:
        """The latest version (with its value), None when there is none, ``DISABLED`` when it is disabled."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            return client.get_secret(self.config.secret_name)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as error:
            if error.status_code == 403 and inner_code(error) == "SecretDisabled":
                return DISABLED
            raise

    def _read(self) -> Any:
        return self._call(self._latest, f"read secret {self.config.secret_name}")

    def read_digest(self) -> str | None:
        latest = self._read()
        return digest(latest.value) if not _unreadable(latest) and latest.value else None

    def check_access(self) -> None:
        """A token, the challenge and reading the secret (404 is fine: it is created). Writing cannot be probed
        without writing; a refused write fails fast in ``write`` with the role to grant."""
        self._read()

    # -- writing ---------------------------------------------------------------------------------------

    def _set_once(self, client: Any, key: str) -> Any:
        from azure.core.exceptions import ResourceExistsError

        try:
            return client.set_secret(
                self.config.secret_name, key, content_type=self.config.content_type, tags=self.config.tags
            ).properties.version
        except ResourceExistsError as error:
            if inner_code(error) == "ObjectIsDeletedButRecoverable":
                return DELETED
            raise

    def write(self, key: str) -> None:
        latest = self._read()
        if _holds(latest, key):
            log.info("%s already holds %s; no new version", self.describe(), fingerprint(key))
            return
        what = f"set secret {self.config.secret_name}"
        version = self._call(lambda client: self._set_once(client, key), what)
        if version is DELETED:
            self._recover()
            latest = self._read()
            if _holds(latest, key):
                log.info("Recovered %s, which already holds %s", self.describe(), fingerprint(key))
                return
            version = self._call(lambda client: self._set_once(client, key), what)
            if version is DELETED:
                raise ConsumerError(self.name, f"{self.describe()} was deleted again while being set", retryable=True)
        log.info("Stored %s in %s (version %s)", fingerprint(key), self.describe(), version)

    def _recover(self) -> None:
        """Recover the soft-deleted secret and wait (bounded) until it reads again. The poller's own ``wait``
        polls every 2 s in a thread; this waits in the task, through the transport."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self.config.secret_name

        def start(client: Any) -> None:
            with contextlib.suppress(ResourceNotFoundError):  # recovered by an earlier attempt (or purged)
                client.begin_recover_deleted_secret(name)

        self._call(start, f"recover soft-deleted secret {name}")
        log.info("Recovering soft-deleted %s", self.describe())
        readable = poll_until(
            lambda: True if self._read() is not None else None, time.monotonic() + RECOVER_WAIT, max_pause=2.0
        )
        if readable is None:
            raise ConsumerError(
                self.name, f"{self.describe()} was recovered but is still not readable after {RECOVER_WAIT:.0f} s"
            )

    def retire_superseded(self, key: str) -> str | None:
        """``retire: disable``: disable every enabled version but the latest, once the latest holds ``key``."""
        if self.config.retire != "disable":
            return None
        name = self.config.secret_name
        latest = self._read()
        if not _holds(latest, key):
            held = "nothing readable" if _unreadable(latest) else short(digest(latest.value or ""))
            raise ConsumerError(
                self.name,
                f"refusing to disable earlier versions of {self.describe()}: its latest version holds {held}, not "
                f"the new key {fingerprint(key)}",
                retryable=False,
            )
        current = latest.properties
        listed = self._call(
            lambda client: list(client.list_properties_of_secret_versions(name, max_page_size=25)),
            f"list versions of secret {name}",
        )
        stale = [
            item.version
            for item in listed
            if item.enabled is not False
            and item.version != current.version
            and not (item.created_on and current.created_on and item.created_on > current.created_on)
        ]
        for version in stale:
            self._call(
                lambda client, version=version: client.update_secret_properties(name, version, enabled=False),
                f"disable version {version} of secret {name}",
            )
        if not stale:
            return None
        log.info("Disabled %d earlier version(s) of %s", len(stale), self.describe())
        return f"disabled {len(stale)} earlier version(s) of {name}; version {current.version} stays current"
