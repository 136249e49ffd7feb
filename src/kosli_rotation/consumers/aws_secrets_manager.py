"""An AWS Secrets Manager secret holding the key: the whole SecretString, or one field of a JSON SecretString.

The client is boto3 ``secretsmanager``, as AWS users run it. The Airflow Amazon provider is deliberately not
used: ``apache-airflow-providers-amazon`` pulls in a very large dependency tree for the four API calls made
here. Its ``aws`` connection is mirrored instead, so a user's existing ``aws_default`` works unchanged:
``login`` / ``password`` are the access key id / secret access key (or extras ``aws_access_key_id`` /
``aws_secret_access_key``), extras ``region_name``, ``endpoint_url`` (moto, LocalStack, VPC endpoints),
``aws_session_token``, ``role_arn`` (+ ``assume_role_kwargs``, e.g. ``ExternalId``) and ``service_config``
(per-service ``endpoint_url``; as in the provider, role assumption never uses the global ``endpoint_url``).
Without an access key pair, boto3's default credential chain applies (environment, instance profile, ...).

Calls go through ``consumers.transport``: its one retry policy for throttling (``ThrottlingException`` comes as
HTTP 400, seen as 429), 5xx, timeouts and connection errors, so botocore's own retries are off (one attempt each,
10 s / 30 s connect / read timeouts). Refused credentials are never retried: they become
``ConsumerError(retryable=False)`` at once, with the fix their error code names. The session, role assumption and
error codes are in ``_aws_client``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers._aws_client import (
    FIXES,
    AwsTransport,
    assume_role,
    botocore_config,
    classify,
    error_code,
    local_error,
    open_session,
)
from kosli_rotation.consumers.base import Consumer, ConsumerConfig
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
SECRET_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
)
REGION = r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$"
CURRENT = "AWSCURRENT"
#: Namespace of the ClientRequestTokens this consumer derives (any fixed UUID would do).
TOKEN_NAMESPACE = uuid.UUID("6f3c8a52-1d0e-5b7a-9c43-2e8f4b1a7d90")


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


class AwsSecretsManagerConsumer(Consumer[AwsSecretsManagerConfig]):
    """Creates the secret or adds a version with the key as AWSCURRENT; JSON secrets keep their other fields."""

    kind = "aws_secrets_manager"

    def __init__(self, config: AwsSecretsManagerConfig) -> None:
        super().__init__(config)
        self._secrets: Any = None
        self._transport = AwsTransport(
            consumer=self.name, service="AWS", conn_id=config.conn_id, classify=classify, fixes=FIXES
        )

    def describe(self) -> str:
        field = f", JSON field {self.config.json_field}" if self.config.json_field else ""
        region = self._secrets.meta.region_name if self._secrets else self.config.region or self.config.arn_region
        where = f"in {region}" if region else "in the connection's region"
        return f"AWS Secrets Manager secret {self.config.secret_id}{field} {where} (connection {self.config.conn_id})"

    # -- calls -----------------------------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T], *, none_on: str | None = None) -> T | None:
        """One AWS call through the transport; None when AWS answers with the error code ``none_on`` (the caller's
        to handle). A secret scheduled for deletion says so; botocore's own errors say what to set."""
        from botocore.exceptions import ClientError

        def attempt() -> T | None:
            try:
                return action()
            except ClientError as error:
                code = error_code(error)
                if code == none_on:
                    return None
                message = str(error.response.get("Error", {}).get("Message", ""))
                if code == "InvalidRequestException" and "delet" in message.lower():
                    raise self._scheduled_for_deletion() from None
                raise

        try:
            return self._transport.call(attempt, what)
        except Exception as error:
            local = local_error(self.name, self.config.conn_id, what, error)
            if local is None:
                raise
            raise local from None

    def _client(self) -> Any:
        """The secretsmanager client for the Airflow connection, created on first use (DAG parsing stays offline)."""
        if self._secrets is None:
            pin_client_loggers()  # botocore at DEBUG logs STS answers and request bodies
            conn_id = self.config.conn_id
            session, extra = open_session(self.name, conn_id, self.config.region or self.config.arn_region)
            service_config = extra.get("service_config") or {}
            endpoint_url = (service_config.get("secretsmanager") or {}).get("endpoint_url") or extra.get("endpoint_url")
            if extra.get("role_arn"):
                session = assume_role(self.name, conn_id, session, extra, self._call)
            self._secrets = self._call(  # no region at all surfaces here
                "connect to Secrets Manager",
                lambda: session.client("secretsmanager", endpoint_url=endpoint_url, config=botocore_config()),
            )
        return self._secrets

    @property
    def _target(self) -> str:
        return f"Secrets Manager secret {self.config.secret_id}"

    def _scheduled_for_deletion(self) -> ConsumerError:
        restore = f"aws secretsmanager restore-secret --secret-id {self.config.secret_id}"
        text = f"{self.describe()} is scheduled for deletion: restore it ({restore}) or point the consumer elsewhere"
        return ConsumerError(self.name, text, retryable=False)

    # -- reading ---------------------------------------------------------------------------------------------

    def _read_secret_string(self) -> str | None:
        """The AWSCURRENT SecretString, or None when the secret (or a current value) does not exist."""
        client = self._client()
        # AWSCURRENT is AWS's default; naming it also makes moto honour UpdateSecretVersionStage.
        response = self._call(
            f"read {self._target}",
            lambda: client.get_secret_value(SecretId=self.config.secret_id, VersionStage=CURRENT),
            none_on="ResourceNotFoundException",
        )
        if response is None:
            return None
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
        client = self._client()
        description = self._call(
            f"describe {self._target}",
            lambda: client.describe_secret(SecretId=self.config.secret_id),
            none_on="ResourceNotFoundException",
        )
        if description is None:
            if not self._may_create():
                raise self._missing()
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
        optional = {"KmsKeyId": self.config.kms_key_id, "Description": self.config.description}
        given = {name: value for name, value in optional.items() if value}
        exists = "ResourceExistsException"
        token, created = self._send("create", secret_string, exists, Name=self.config.secret_id, **given)
        if created is None:
            return False
        log.info("Created %s holding %s (version %s)", self.describe(), fingerprint(key), token)
        return True

    def _put(self, secret_string: str, key: str) -> None:
        """PutSecretValue as AWSCURRENT; if AWS ignored it (this value's version exists), make that version current."""
        token, response = self._send(
            "write", secret_string, "ResourceNotFoundException", SecretId=self.config.secret_id, VersionStages=[CURRENT]
        )
        if response is None:
            raise self._missing()
        if CURRENT not in response.get("VersionStages", [CURRENT]):
            self._make_current(token)
        log.info("Stored %s in %s (version %s)", fingerprint(key), self.describe(), token)

    def _send(self, operation: str, secret_string: str, none_on: str, **params: Any) -> tuple[str, Any]:
        """CreateSecret (``create``) or PutSecretValue (``write``) with ``secret_string`` and the idempotency token
        derived from it; returns the token and the answer (None when AWS answers ``none_on``)."""
        token = client_request_token(self.config.secret_id, secret_string)
        client = self._client()
        send = client.create_secret if operation == "create" else client.put_secret_value
        answer = self._call(
            f"{operation} {self._target}",
            lambda: send(SecretString=secret_string, ClientRequestToken=token, **params),
            none_on=none_on,
        )
        return token, answer

    def _make_current(self, version_id: str) -> None:
        client, secret_id = self._client(), self.config.secret_id
        described = self._call(f"describe {self._target}", lambda: client.describe_secret(SecretId=secret_id))
        stages = described.get("VersionIdsToStages", {})
        current = next((version for version, labels in stages.items() if CURRENT in labels), None)
        self._call(
            f"move AWSCURRENT of {self._target}",
            lambda: client.update_secret_version_stage(
                SecretId=secret_id,
                VersionStage=CURRENT,
                MoveToVersionId=version_id,
                **({"RemoveFromVersionId": current} if current and current != version_id else {}),
            ),
        )
        log.info("Moved AWSCURRENT of %s to version %s, which already held this value", self.describe(), version_id)
