"""The boto3 clients of an ``aws_secrets_manager`` consumer, built from its Airflow ``aws`` connection the way the
Amazon provider reads it, and how botocore's failures look to the transport.

A module of its own, apart from ``aws_secrets_manager`` (what is written where, and how a rerun adds no version),
because it is a subject of its own: the provider's connection fields mirrored without the provider, role
assumption, credentials held for the masker, and which AWS error code means which refusal and which fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kosli_rotation.consumers.transport import Fixes, RemoteFailure, Transport, connection_or_explain
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret
from kosli_rotation.scrub import describe_error

#: The consumer's ``_call(what, action)``: one call through the transport.
Call = Callable[..., Any]

_BAD_KEY = "the access key id (login) is unknown to AWS: fix login/password"
_BAD_SIGNATURE = "the secret access key (password) does not match the access key id"
_EXPIRED = "the session token has expired: renew extra aws_session_token, or use role_arn"
_DENIED = (
    "the identity may not do this: its IAM policy, the secret's resource policy and the KMS key policy must allow "
    "secretsmanager:DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage (CreateSecret when "
    "create_if_missing) and kms:Decrypt, kms:GenerateDataKey; with role_arn, the role must trust the identity"
)
#: AWS refusing the credentials, by error code (JSON protocol: Secrets Manager; query protocol: STS): the status the
#: transport sees (AWS answers most of them with HTTP 400) and the fix.
CREDENTIAL_REFUSALS = {
    "UnrecognizedClientException": (401, _BAD_KEY),
    "InvalidClientTokenId": (401, _BAD_KEY),
    "InvalidSignatureException": (401, _BAD_SIGNATURE),
    "SignatureDoesNotMatch": (401, _BAD_SIGNATURE),
    "ExpiredTokenException": (401, _EXPIRED),
    "ExpiredToken": (401, _EXPIRED),
    "AccessDeniedException": (403, _DENIED),
    "AccessDenied": (403, _DENIED),
}
#: Throttling, which AWS answers with HTTP 400: seen as 429, so the transport retries it.
THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
FIXES = Fixes(
    unauthorized="check the connection's access key (login/password), aws_session_token or role_arn",
    forbidden=_DENIED,
    not_found="fix secret_id (or its region), or create the secret",
)


def error_code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def botocore_config() -> Any:
    """One attempt per call (the transport retries), and timeouts that keep one attempt from hanging."""
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=30)


@dataclass(frozen=True)
class AwsFailure(RemoteFailure):
    """A remote failure with AWS's error code, which names the fix for a credential refusal."""

    code: str = ""


def classify(error: Exception) -> RemoteFailure | None:
    """botocore's ClientError by its error code (credential refusals as 401/403, throttling as 429, a missing
    resource as 404, else the HTTP status) and its connection errors and timeouts; None for anything else."""
    from botocore import exceptions

    if isinstance(error, exceptions.ClientError):
        code = error_code(error)
        metadata = error.response.get("ResponseMetadata", {})
        status = int(metadata.get("HTTPStatusCode") or 0) or None
        if code in CREDENTIAL_REFUSALS:
            status = CREDENTIAL_REFUSALS[code][0]
        elif code in THROTTLED:
            status = 429
        elif code == "ResourceNotFoundException":
            status = 404
        message = str(error.response.get("Error", {}).get("Message", "")) or "no message"
        shown = f"{code}: {message}" if code and not code.isdigit() else message  # unparsed bodies leave a status
        return AwsFailure(status, shown, dict(metadata.get("HTTPHeaders") or {}), code=code)
    if isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError):
        return RemoteFailure(None, f"{type(error).__name__}: {error}")
    return None


class AwsTransport(Transport):
    """The shared transport; a credential refusal gets the fix its error code names (a key AWS does not know, a
    signature that does not match, an expired session token) instead of the general one."""

    def refusal(self, failure: RemoteFailure, what: str) -> ConsumerError:
        fix = CREDENTIAL_REFUSALS.get(failure.code if isinstance(failure, AwsFailure) else "", (0, None))[1]
        if fix is None:
            return super().refusal(failure, what)
        named = Transport(
            consumer=self.consumer,
            service=self.service,
            conn_id=self.conn_id,
            classify=self.classify,
            fixes=Fixes(fix, fix, self.fixes.not_found),
        )
        return named.refusal(failure, what)


def local_error(consumer: str, conn_id: str, what: str, error: Exception) -> ConsumerError | None:
    """botocore's own errors, raised before any request (no region, no credentials, a bad parameter), as errors
    that say what to set; None for anything else."""
    from botocore import exceptions

    if isinstance(error, exceptions.NoRegionError):
        text = f"no AWS region for connection {conn_id!r}: set extra region_name, or region on the consumer"
        return ConsumerError(consumer, text, retryable=False)
    if isinstance(error, exceptions.NoCredentialsError):
        text = (
            f"connection {conn_id!r} has no access key and the worker has no default AWS credentials: set "
            "login/password, or give the worker an instance profile / AWS_* environment"
        )
        return ConsumerError(consumer, text, retryable=False)
    if isinstance(error, exceptions.ParamValidationError):  # its text may quote a parameter: keep it out
        return ConsumerError(consumer, f"invalid request: cannot {what}", retryable=False)
    if isinstance(error, exceptions.BotoCoreError):
        text = f"cannot {what}: {type(error).__name__}: {describe_error(error)}"
        return ConsumerError(consumer, text, retryable=False)
    return None


def open_session(consumer: str, conn_id: str, region: str | None) -> tuple[Any, dict[str, Any]]:
    """A boto3 session with the ``aws`` connection's credentials and ``region`` (else the connection's), and the
    connection's extras."""
    import boto3

    connection = connection_or_explain(
        conn_id,
        consumer,
        f'an aws connection, e.g. AIRFLOW_CONN_{conn_id.upper()}=\'{{"conn_type": "aws", "login": '
        '"<access key id>", "password": "<secret access key>", "extra": {"region_name": "eu-west-1"}}\'',
    )
    extra = dict(connection.extra_dejson or {})
    if connection.login or connection.password:
        access_key_id, secret_access_key = connection.login, connection.password
    else:
        access_key_id, secret_access_key = extra.get("aws_access_key_id"), extra.get("aws_secret_access_key")
    if bool(access_key_id) != bool(secret_access_key):
        raise ConsumerError(
            consumer,
            f"connection {conn_id!r} has only half an access key: set both login (access key id) and "
            "password (secret access key), or neither to use the worker's default AWS credentials",
            retryable=False,
        )
    session_token = extra.get("aws_session_token") or None
    for secret in (secret_access_key, session_token):
        if secret:
            hold_secret(secret)
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        aws_session_token=session_token,
        region_name=region or extra.get("region_name") or None,
    )
    return session, extra


def assume_role(consumer: str, conn_id: str, session: Any, extra: dict[str, Any], call: Call) -> Any:
    """A session with temporary credentials for ``role_arn``, obtained with the connection's own credentials
    through ``call`` (the consumer's ``_call``)."""
    import boto3

    role_arn = extra["role_arn"]
    if extra.get("assume_role_method", "assume_role") != "assume_role":
        raise ConsumerError(
            consumer,
            f"connection {conn_id!r}: only assume_role_method 'assume_role' is supported",
            retryable=False,
        )
    sts_endpoint = ((extra.get("service_config") or {}).get("sts") or {}).get("endpoint_url")
    sts = call("connect to STS", lambda: session.client("sts", endpoint_url=sts_endpoint, config=botocore_config()))
    session_name = re.sub(r"[^\w+=,.@-]", "-", f"kosli-rotation-{conn_id}")[:64]
    kwargs = extra.get("assume_role_kwargs") or {}
    credentials = call(
        f"assume role {role_arn}",
        lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name, **kwargs),
    )["Credentials"]
    return boto3.session.Session(  # the access key id is an identifier (CloudTrail shows it); the rest is secret
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=hold_secret(credentials["SecretAccessKey"]),
        aws_session_token=hold_secret(credentials["SessionToken"]),
        region_name=session.region_name,
    )
