"""An AWS Secrets Manager secret holding the key: the whole SecretString, or one field of a JSON SecretString.

The client is boto3 ``secretsmanager``, as AWS users run it. The Airflow Amazon provider is deliberately not
used: ``apache-airflow-providers-amazon`` pulls in a very large dependency tree for the four API calls made
here. Its ``aws`` connection is mirrored instead, so a user's existing ``aws_default`` works unchanged:
``login`` / ``password`` are the access key id / secret access key (or extras ``aws_access_key_id`` /
``aws_secret_access_key``), extras ``region_name``, ``endpoint_url`` (moto, LocalStack, VPC endpoints),
``aws_session_token``, ``role_arn`` (+ ``assume_role_kwargs``, e.g. ``ExternalId``) and ``service_config``
(per-service ``endpoint_url``; as in the provider, role assumption never uses the global ``endpoint_url``).
Without an access key pair, boto3's default credential chain applies (environment, instance profile, ...).

Retries are botocore's own: ``standard`` mode with ``total_max_attempts=5`` (botocore's ``max_attempts`` counts
retries, so ``max_attempts=5`` would mean 6 requests), for throttling, 5xx, timeouts and connection errors, with
exponential backoff (full jitter, at most 20 s a wait, honouring ``x-amz-retry-after``) and 10 s / 30 s
connect / read timeouts, so giving up takes at most about 3 minutes. Refused credentials are never retried:
they become ``ConsumerError(retryable=False)`` at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint, hold_secret

log = logging.getLogger(__name__)

SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
SECRET_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
)
REGION = r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$"
CURRENT = "AWSCURRENT"
MAX_ATTEMPTS = 5
#: Namespace of the ClientRequestTokens this consumer derives (any fixed UUID would do).
TOKEN_NAMESPACE = uuid.UUID("6f3c8a52-1d0e-5b7a-9c43-2e8f4b1a7d90")

_BAD_KEY = "the access key id (login) is unknown to AWS: fix login/password"
_BAD_SIGNATURE = "the secret access key (password) does not match the access key id"
_EXPIRED = "the session token has expired: renew extra aws_session_token, or use role_arn"
_DENIED = (
    "the identity may not do this: its IAM policy, the secret's resource policy and the KMS key policy must allow "
    "secretsmanager:DescribeSecret, GetSecretValue, PutSecretValue, UpdateSecretVersionStage (CreateSecret when "
    "create_if_missing) and kms:Decrypt, kms:GenerateDataKey; with role_arn, the role must trust the identity"
)
#: AWS refusing the credentials: JSON-protocol codes (Secrets Manager) and query-protocol codes (STS).
CREDENTIAL_REFUSALS = {
    "UnrecognizedClientException": _BAD_KEY,
    "InvalidClientTokenId": _BAD_KEY,
    "InvalidSignatureException": _BAD_SIGNATURE,
    "SignatureDoesNotMatch": _BAD_SIGNATURE,
    "ExpiredTokenException": _EXPIRED,
    "ExpiredToken": _EXPIRED,
    "AccessDeniedException": _DENIED,
    "AccessDenied": _DENIED,
}
THROTTLED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}


class AwsSecretsManagerConfig(ConsumerConfig):
    kind: Literal["aws_secrets_manager"]
    conn_id: str = Field(default="aws_default", min_length=1, description="Airflow connection of type aws.")
    secret_id: str = Field(description="Secret name, or its ARN (an ARN also fixes the region).")
    json_field: str | None = Field(
        default=None, min_length=1, description="Set only this field of a JSON-object SecretString, keeping others."
    )
    create_if_missing: bool = Field(default=True, description="Create the secret by name if it does not exist.")
    kms_key_id: str | None = Field(default=None, min_length=1, description="KMS key for a secret we create.")
    description: str | None = Field(default=None, max_length=2048, description="Description of a secret we create.")
    region: str | None = Field(default=None, pattern=REGION, description="Overrides the connection's region_name.")

    @field_validator("secret_id")
    @classmethod
    def _name_or_arn(cls, secret_id: str) -> str:
        if not (SECRET_NAME.match(secret_id) or SECRET_ARN.match(secret_id)):
            raise ValueError(
                f"{secret_id!r} is neither a secret name (1-512 of A-Z a-z 0-9 / _ + = . @ -) "
                "nor a Secrets Manager ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)"
            )
        return secret_id

    @model_validator(mode="after")
    def _consistent(self) -> AwsSecretsManagerConfig:
        arn_region = self.arn_region
        if arn_region and self.region and arn_region != self.region:
            raise ValueError(f"region {self.region!r} contradicts the region {arn_region!r} in secret_id's ARN")
        if not self.create_if_missing and (self.kms_key_id or self.description):
            raise ValueError("kms_key_id and description only apply when create_if_missing is true")
        return self

    @property
    def arn_region(self) -> str | None:
        match = SECRET_ARN.match(self.secret_id)
        return match["region"] if match else None


def client_request_token(secret_id: str, secret_string: str) -> str:
    """The version id for storing ``secret_string`` in ``secret_id``: the same value always gets the same token.

    AWS ignores a PutSecretValue whose token names an existing version with the same value, so a retried write
    adds no version. It is derived from the digest of the whole new SecretString (the key itself, or the key
    plus the JSON object's other fields), not from the key alone, because AWS rejects a known token that comes
    with a different value. A UUID of a SHA-256 reveals nothing about the value.
    """
    value_hash = hashlib.sha256(secret_string.encode()).hexdigest()
    return str(uuid.uuid5(TOKEN_NAMESPACE, f"{secret_id}\n{value_hash}"))


def _error_code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _botocore_config() -> Any:
    """botocore's standard retry mode does the bounded retrying; timeouts keep one attempt from hanging."""
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}, connect_timeout=10, read_timeout=30)


class AwsSecretsManagerConsumer(Consumer[AwsSecretsManagerConfig]):
    """Creates the secret or adds a version with the key as AWSCURRENT; JSON secrets keep their other fields."""

    kind = "aws_secrets_manager"

    def __init__(self, config: AwsSecretsManagerConfig) -> None:
        super().__init__(config)
        self._secrets: Any = None

    def describe(self) -> str:
        field = f", JSON field {self.config.json_field}" if self.config.json_field else ""
        region = self._secrets.meta.region_name if self._secrets else self.config.region or self.config.arn_region
        where = f"in {region}" if region else "in the connection's region"
        return f"AWS Secrets Manager secret {self.config.secret_id}{field} {where} (connection {self.config.conn_id})"

    # -- client ----------------------------------------------------------------------------------------------

    def _client(self) -> Any:
        """The secretsmanager client for the Airflow connection, created on first use (DAG parsing stays offline)."""
        if self._secrets is None:
            pin_client_loggers()  # botocore at DEBUG logs STS answers and request bodies
            session, extra = self._session()
            service_config = extra.get("service_config") or {}
            endpoint_url = (service_config.get("secretsmanager") or {}).get("endpoint_url") or extra.get("endpoint_url")
            with self._aws_call("connecting to"):  # no region at all surfaces here
                if extra.get("role_arn"):
                    session = self._assume_role(session, extra)
                self._secrets = session.client("secretsmanager", endpoint_url=endpoint_url, config=_botocore_config())
        return self._secrets

    def _session(self) -> tuple[Any, dict[str, Any]]:
        """A boto3 session with the ``aws`` connection's credentials and region, and the connection's extras."""
        import boto3
        from airflow.sdk import BaseHook

        conn_id = self.config.conn_id
        try:
            connection = BaseHook.get_connection(conn_id)
        except Exception as error:
            if type(error).__name__ == "AirflowNotFoundException":
                raise ConsumerError(
                    self.name,
                    f"Airflow connection {conn_id!r} is not defined: create an aws connection, e.g. "
                    f'AIRFLOW_CONN_{conn_id.upper()}=\'{{"conn_type": "aws", "login": "<access key id>", '
                    '"password": "<secret access key>", "extra": {"region_name": "eu-west-1"}}\'',
                    retryable=False,
                ) from None
            raise
        extra = dict(connection.extra_dejson or {})
        if connection.login or connection.password:
            access_key_id, secret_access_key = connection.login, connection.password
        else:
            access_key_id, secret_access_key = extra.get("aws_access_key_id"), extra.get("aws_secret_access_key")
        if bool(access_key_id) != bool(secret_access_key):
            raise ConsumerError(
                self.name,
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
            region_name=self.config.region or self.config.arn_region or extra.get("region_name") or None,
        )
        return session, extra

    def _assume_role(self, session: Any, extra: dict[str, Any]) -> Any:
        """Temporary credentials for ``role_arn``, obtained with the connection's own credentials."""
        import boto3

        role_arn = extra["role_arn"]
        if extra.get("assume_role_method", "assume_role") != "assume_role":
            raise ConsumerError(
                self.name,
                f"connection {self.config.conn_id!r}: only assume_role_method 'assume_role' is supported",
                retryable=False,
            )
        sts_endpoint = ((extra.get("service_config") or {}).get("sts") or {}).get("endpoint_url")
        sts = session.client("sts", endpoint_url=sts_endpoint, config=_botocore_config())
        session_name = re.sub(r"[^\w+=,.@-]", "-", f"kosli-rotation-{self.config.conn_id}")[:64]
        with self._aws_call(f"assuming role {role_arn}"):
            credentials = sts.assume_role(
                RoleArn=role_arn, RoleSessionName=session_name, **(extra.get("assume_role_kwargs") or {})
            )["Credentials"]
        return boto3.session.Session(  # the access key id is an identifier (CloudTrail shows it); the rest is secret
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=hold_secret(credentials["SecretAccessKey"]),
            aws_session_token=hold_secret(credentials["SessionToken"]),
            region_name=session.region_name,
        )

    # -- errors ----------------------------------------------------------------------------------------------

    @contextmanager
    def _aws_call(self, action: str) -> Iterator[None]:
        """Turn botocore's exceptions (raised after its own retries) into ``ConsumerError``s that say what to do."""
        try:
            yield
        except ConsumerError:
            raise
        except Exception as error:
            translated = self._translate(error, action)
            if translated is None:
                raise
            raise translated from None

    def _translate(self, error: Exception, action: str) -> ConsumerError | None:
        from botocore import exceptions

        conn_id = self.config.conn_id
        where = f"while {action} {self.describe()}"
        if isinstance(error, exceptions.ClientError):
            code = _error_code(error)
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = str(error.response.get("Error", {}).get("Message", ""))[:300]
            attempts = int(error.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0) + 1
            if code in CREDENTIAL_REFUSALS or status in (401, 403):
                hint = CREDENTIAL_REFUSALS.get(code, "check the connection's credentials and the identity's policies")
                refusal = code if code and not code.isdigit() else f"HTTP {status}"  # unparsed bodies leave a status
                return ConsumerError(
                    self.name,
                    f"AWS refused the credentials of connection {conn_id!r} ({refusal}) {where}: {hint}",
                    retryable=False,
                )
            if code in THROTTLED or status == 429 or status >= 500:
                return ConsumerError(
                    self.name, f"AWS kept answering {code} (HTTP {status}) {where}, {attempts} attempts", retryable=True
                )
            if code == "InvalidRequestException" and "delet" in message.lower():
                return self._scheduled_for_deletion()
            return ConsumerError(self.name, f"AWS answered {code} (HTTP {status}) {where}: {message}", retryable=False)
        if isinstance(error, exceptions.ConnectionError | exceptions.HTTPClientError):
            return ConsumerError(self.name, f"cannot reach AWS {where}: {error}", retryable=True)
        if isinstance(error, exceptions.NoRegionError):
            return ConsumerError(
                self.name,
                f"no AWS region for connection {conn_id!r}: set extra region_name, or region on the consumer",
                retryable=False,
            )
        if isinstance(error, exceptions.NoCredentialsError):
            return ConsumerError(
                self.name,
                f"connection {conn_id!r} has no access key and the worker has no default AWS credentials: "
                "set login/password, or give the worker an instance profile / AWS_* environment",
                retryable=False,
            )
        if isinstance(error, exceptions.ParamValidationError):  # its text may quote a parameter: keep it out
            return ConsumerError(self.name, f"invalid request {where}", retryable=False)
        if isinstance(error, exceptions.BotoCoreError):
            return ConsumerError(self.name, f"{type(error).__name__} {where}: {error}", retryable=False)
        return None

    def _scheduled_for_deletion(self) -> ConsumerError:
        return ConsumerError(
            self.name,
            f"{self.describe()} is scheduled for deletion: restore it "
            f"(aws secretsmanager restore-secret --secret-id {self.config.secret_id}) or point the consumer elsewhere",
            retryable=False,
        )

    # -- reading ---------------------------------------------------------------------------------------------

    def _read_secret_string(self) -> str | None:
        """The AWSCURRENT SecretString, or None when the secret (or a current value) does not exist."""
        from botocore.exceptions import ClientError

        with self._aws_call("reading"):
            try:
                # AWSCURRENT is AWS's default; naming it also makes moto honour UpdateSecretVersionStage.
                response = self._client().get_secret_value(SecretId=self.config.secret_id, VersionStage=CURRENT)
            except ClientError as error:
                if _error_code(error) == "ResourceNotFoundException":
                    return None
                raise
        if "SecretString" not in response:
            raise ConsumerError(
                self.name,
                f"{self.describe()} holds SecretBinary, not a string: refusing to replace it",
                retryable=False,
            )
        return str(response["SecretString"])

    def _json_fields(self, secret_string: str) -> dict[str, Any]:
        try:
            fields = json.loads(secret_string)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise ConsumerError(
                self.name,
                f"the SecretString of {self.describe()} is not a JSON object, so field {self.config.json_field!r} "
                "cannot be set in it: make it a JSON object, or drop json_field to replace the whole value",
                retryable=False,
            )
        return fields

    def _held_value(self, secret_string: str | None) -> str | None:
        if secret_string is None or self.config.json_field is None:
            return secret_string
        value = self._json_fields(secret_string).get(self.config.json_field)
        return value if isinstance(value, str) else None

    def read_digest(self) -> str | None:
        value = self._held_value(self._read_secret_string())
        return digest(value) if value else None

    def check_access(self) -> None:
        """DescribeSecret and GetSecretValue: credentials, region, existence, deletion state and JSON shape.

        Write permission cannot be probed without writing (Secrets Manager has no dry run); a refused write
        still fails fast and clearly in ``write``.
        """
        from botocore.exceptions import ClientError

        with self._aws_call("describing"):
            try:
                description = self._client().describe_secret(SecretId=self.config.secret_id)
            except ClientError as error:
                if _error_code(error) != "ResourceNotFoundException":
                    raise
                if not self._may_create():
                    raise self._missing() from None
                return
        if description.get("DeletedDate"):
            raise self._scheduled_for_deletion()
        self._held_value(self._read_secret_string())

    # -- writing ---------------------------------------------------------------------------------------------

    def _may_create(self) -> bool:
        """CreateSecret takes a name: a secret given by ARN must exist already."""
        return self.config.create_if_missing and self.config.arn_region is None

    def _missing(self) -> ConsumerError:
        reason = "secret_id is an ARN" if self.config.create_if_missing else "create_if_missing is false"
        return ConsumerError(
            self.name, f"{self.describe()} does not exist and {reason}: create it first", retryable=False
        )

    def _new_secret_string(self, current: str | None, key: str) -> str:
        if self.config.json_field is None:
            return key
        fields = self._json_fields(current) if current is not None else {}
        fields[self.config.json_field] = key
        return json.dumps(fields)

    def write(self, key: str) -> None:
        current = self._read_secret_string()
        if current is None and self._may_create():
            if self._create(self._new_secret_string(None, key), key):
                return
            current = self._read_secret_string()  # created meanwhile, or it exists without a value yet
        self._put(self._new_secret_string(current, key), key)

    def _create(self, secret_string: str, key: str) -> bool:
        """CreateSecret with the value; False when the secret turns out to exist (then it gets a new version)."""
        from botocore.exceptions import ClientError

        token = client_request_token(self.config.secret_id, secret_string)
        optional = {"KmsKeyId": self.config.kms_key_id, "Description": self.config.description}
        with self._aws_call("creating"):
            try:
                self._client().create_secret(
                    Name=self.config.secret_id,
                    SecretString=secret_string,
                    ClientRequestToken=token,
                    **{name: value for name, value in optional.items() if value},
                )
            except ClientError as error:
                if _error_code(error) == "ResourceExistsException":
                    return False
                raise
        log.info("Created %s holding %s (version %s)", self.describe(), fingerprint(key), token)
        return True

    def _put(self, secret_string: str, key: str) -> None:
        """PutSecretValue as AWSCURRENT; if AWS ignored it (this value's version exists), make that version current."""
        from botocore.exceptions import ClientError

        token = client_request_token(self.config.secret_id, secret_string)
        with self._aws_call("writing"):
            try:
                response = self._client().put_secret_value(
                    SecretId=self.config.secret_id,
                    SecretString=secret_string,
                    ClientRequestToken=token,
                    VersionStages=[CURRENT],
                )
            except ClientError as error:
                if _error_code(error) == "ResourceNotFoundException":
                    raise self._missing() from None
                raise
        if CURRENT not in response.get("VersionStages", [CURRENT]):
            self._make_current(token)
        log.info("Stored %s in %s (version %s)", fingerprint(key), self.describe(), token)

    def _make_current(self, version_id: str) -> None:
        with self._aws_call("moving AWSCURRENT in"):
            stages = self._client().describe_secret(SecretId=self.config.secret_id).get("VersionIdsToStages", {})
            current = next((version for version, labels in stages.items() if CURRENT in labels), None)
            self._client().update_secret_version_stage(
                SecretId=self.config.secret_id,
                VersionStage=CURRENT,
                MoveToVersionId=version_id,
                **({"RemoveFromVersionId": current} if current and current != version_id else {}),
            )
        log.info("Moved AWSCURRENT of %s to version %s, which already held this value", self.describe(), version_id)
