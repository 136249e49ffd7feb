"""From an Airflow ``azure`` connection to an azure-identity credential, and azure-core's errors as the transport
sees them: what any Azure consumer kind needs (``azure_key_vault`` uses it).

The Airflow Microsoft Azure provider is not needed; its ``azure`` connection is mirrored, so an existing
``azure_default`` works: ``login`` / ``password`` are an app registration's client id / client secret with extra
``tenant_id`` (or the provider's ``tenantId``); without them the worker's managed identity is used
(``ManagedIdentityCredential``; extra ``managed_identity_client_id`` picks a user-assigned one). Extra
``authority_host`` names a sovereign cloud's Entra endpoint (https://login.microsoftonline.us, ...), and
``disable_instance_discovery`` trusts an authority Microsoft does not list (Azure Stack, a private cloud).

TLS: there is no CA setting here on purpose. requests (beneath azure-core and MSAL) honours ``REQUESTS_CA_BUNDLE``,
the standard way a TLS-inspecting proxy's CA is trusted, so deployments and the sandbox use one mechanism and the
product has no knob that could switch verification off.

Retries: azure-core's own are off (``retry_total=0``, in the credentials too), so every call, token requests
included, is retried by ``consumers.transport`` alone: one budget, server waits honoured, refusals explained once.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kosli_rotation.consumers.transport import RemoteFailure
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret

#: Connect / read timeouts of every request (azure-core's keywords).
TIMEOUTS = {"connection_timeout": 10, "read_timeout": 30}
#: azure-core logs each request at INFO, MSAL its token traffic at DEBUG: pinned like ``client_logging``'s.
LOUD_LOGGERS = ("azure", "msal")


@dataclass(frozen=True)
class AzureCredential:
    """A token credential, who it is (for messages) and what to fix when Entra or the service refuses it."""

    credential: Any
    who: str
    unauthorized_fix: str


class HeldTokens:
    """A credential that holds every access token for the masker and the scrubber the moment it arrives (a hostile
    service echoing our Authorization header back, or a client logging it, shows no token)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        token = self._inner.get_token(*scopes, **kwargs)
        hold_secret(token.token)
        return token

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        info = self._inner.get_token_info(*scopes, options=options)
        hold_secret(info.token)
        return info

    def close(self) -> None:
        self._inner.close()


def pin_azure_loggers() -> None:
    for name in LOUD_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def flag(extra: dict[str, Any], name: str, default: bool, consumer: str, conn_id: str) -> bool:
    """A boolean extra, given as JSON or (URI-form connections) as the text true/false."""
    value = extra.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConsumerError(consumer, f"connection {conn_id!r}: extra {name} must be true or false", retryable=False)


def credential_from(connection: Any, consumer: str, conn_id: str) -> AzureCredential:
    """The credential an ``azure`` connection describes; the client secret is held for the scrubber at once."""
    from azure.identity import ClientSecretCredential, ManagedIdentityCredential

    extra = dict(connection.extra_dejson or {})
    authority = extra.get("authority_host") or None
    if authority is not None and urlsplit(str(authority)).scheme != "https":
        raise ConsumerError(
            consumer,
            f"connection {conn_id!r}: extra authority_host {authority!r} must be an https URL, "
            "e.g. https://login.microsoftonline.us",
            retryable=False,
        )
    options: dict[str, Any] = {"retry_total": 0, **TIMEOUTS}
    client_id, secret = connection.login or "", connection.password or ""
    if not (client_id or secret):
        identity = extra.get("managed_identity_client_id") or None
        who = f"managed identity {identity}" if identity else "the worker's system-assigned managed identity"
        fix = (
            f"{who} got no token: the worker needs a managed identity (App Service's IDENTITY_ENDPOINT and "
            "IDENTITY_HEADER, or the instance metadata endpoint), and extra managed_identity_client_id must name a "
            f"user-assigned identity attached to it; or set login/password of connection {conn_id!r} for an app"
        )
        return AzureCredential(HeldTokens(ManagedIdentityCredential(client_id=identity, **options)), who, fix)
    tenant = extra.get("tenant_id") or extra.get("tenantId")
    if not (client_id and secret and tenant):
        raise ConsumerError(
            consumer,
            f"connection {conn_id!r} needs login (client id), password (client secret) and extra tenant_id "
            "together; or none of them to use the worker's managed identity",
            retryable=False,
        )
    hold_secret(secret)
    discovery_off = flag(extra, "disable_instance_discovery", False, consumer, conn_id)
    try:
        credential = ClientSecretCredential(
            str(tenant), client_id, secret, authority=authority, disable_instance_discovery=discovery_off, **options
        )
    except ValueError as error:  # a malformed tenant id; the text is azure-identity's own, no value in it
        raise ConsumerError(consumer, f"connection {conn_id!r}: extra tenant_id: {error}", retryable=False) from None
    fix = (
        f"check login (app {client_id}), password (a current client secret: its value, not its id) and extra "
        f"tenant_id {tenant}; tokens are asked of {authority or 'the public cloud (login.microsoftonline.com)'}"
    )
    return AzureCredential(HeldTokens(credential), f"app {client_id}", fix)


def inner_code(error: Any) -> str:
    """The ``innererror.code`` of an azure-core ``HttpResponseError`` (``ObjectIsDeletedButRecoverable``, ...)."""
    inner = getattr(getattr(error, "error", None), "innererror", None)
    return str(inner.get("code", "")) if isinstance(inner, dict) else ""


def tls_failure(error: BaseException) -> bool:
    """Whether certificate verification failed somewhere in ``error``'s chain (azure-identity wraps it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__ or current.__context__
    return False


def tls_refusal(consumer: str, what: str, where: str) -> ConsumerError:
    return ConsumerError(
        consumer,
        f"cannot {what}: the TLS certificate of {where} (or of the authority) is not trusted; if your own CA signs "
        "it (a TLS-inspecting proxy), point REQUESTS_CA_BUNDLE at a bundle holding it",
        retryable=False,
    )


def classify(error: Exception) -> RemoteFailure | None:
    """azure-core's exceptions as a ``RemoteFailure``; None (re-raised as is) for TLS failures and the rest."""
    from azure.core import exceptions as azure

    if tls_failure(error):
        return None
    response = getattr(error, "response", None)
    headers = dict(response.headers) if response is not None and response.headers is not None else {}
    if isinstance(error, azure.ClientAuthenticationError):  # the token request, or the service refusing the token
        status = getattr(error, "status_code", None)
        if status is not None and RemoteFailure(status, "").transient:
            return RemoteFailure(status, error.message, headers)
        return RemoteFailure(401, error.message)
    if isinstance(error, azure.HttpResponseError):
        odata = getattr(error, "error", None)
        inner = inner_code(error)
        code = f"{odata.code} ({inner})" if odata and inner else getattr(odata, "code", None)
        message = f"{code}: {odata.message}" if odata and code else error.message
        return RemoteFailure(error.status_code, message or type(error).__name__, headers)
    if isinstance(error, azure.ServiceRequestError | azure.ServiceResponseError):
        return RemoteFailure(None, f"no answer ({type(error).__name__}: {error.message})")
    return None
