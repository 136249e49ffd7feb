"""AWS Secrets Manager: a secret ``{target}/kosli`` whose whole SecretString is the value, in moto's server.

The connection reaches moto through an ``AwsErrorFront`` (``sandbox.aws_front``): moto injects no faults and counts
nothing, the front answers AWS-shaped errors to writes (``fail_writes``), refuses the wrong access key as AWS does
an unknown one (``UnrecognizedClientException``) and records every operation with the secret it names, so writes
are counted per secret. The service's own view (``read``) asks moto directly.

moto's backends are process-wide: the adapter resets them when it starts.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sandbox.adapters.base import LOOPBACK, FixtureAdapter, InjectedFault, SeededConsumer
from sandbox.adapters.served import invalid_token
from sandbox.aws_front import THROTTLING, AwsError, AwsErrorFront

CONN_ID = "aws_default"
AWS_REGION = "eu-west-1"
AWS_ACCESS_KEY = "AKIAEXAMPLEKEY000001"
AWS_SECRET_KEY = "dummy-secret-access-key"
#: An access key id the front refuses (``wrong_credentials``).
WRONG_ACCESS_KEY = "AKIAEXAMPLEWRONG0001"
#: The operations that write a secret.
WRITES = frozenset(
    {"secretsmanager.PutSecretValue", "secretsmanager.CreateSecret", "secretsmanager.UpdateSecretVersionStage"}
)


def aws_error(status: int) -> AwsError:
    """What Secrets Manager answers for ``status``: throttling is HTTP 400 ``ThrottlingException`` there (429 is
    taken to mean it), server errors keep their status."""
    if status == 429:
        return THROTTLING
    if status >= 500:
        code = "InternalServiceError" if status == 500 else "ServiceUnavailable"
        return AwsError(status, code, "An error occurred on the server side.")
    return AwsError(status, f"Http{status}", "Injected error")


class AwsSecretsManagerAdapter(FixtureAdapter):
    kind = "aws_secrets_manager"
    service = "AWS (moto)"

    def start(self, stack: contextlib.ExitStack) -> None:
        """moto's server from an empty account, and the front every connection goes through."""
        import boto3
        import requests
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request moto serves to whatever stream logging was configured with first.
        werkzeug = logging.getLogger("werkzeug")
        was_disabled, werkzeug.disabled = werkzeug.disabled, True
        stack.callback(setattr, werkzeug, "disabled", was_disabled)
        moto = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        requests.post(f"{self.moto_url}/moto-api/reset", timeout=5).raise_for_status()
        self.aws = boto3.client(
            "secretsmanager",
            endpoint_url=self.moto_url,
            region_name=AWS_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.front = stack.enter_context(AwsErrorFront(self.moto_url))
        self.front.refused_access_keys.add(WRONG_ACCESS_KEY)
        self.url = self.front.url
        self.connections[CONN_ID] = {
            "conn_type": "aws",
            "login": AWS_ACCESS_KEY,
            "password": AWS_SECRET_KEY,
            "extra": {"region_name": AWS_REGION, "endpoint_url": self.front.url},
        }

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        connection = self.connections[CONN_ID]
        return {CONN_ID: {**connection, "login": WRONG_ACCESS_KEY, "password": invalid_token("", 40)}}

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        rule = self.front.add_rule(aws_error(status), times=times, operations=WRITES, headers=headers)
        return InjectedFault(lambda: rule.fired, lambda: setattr(rule, "active", False))

    def requests_served(self) -> int:
        return len(self.front.operations)

    def writes_to(self, secret_id: str) -> int:
        """Write operations the front saw for ``secret_id`` (by name, or by an ARN of it)."""
        arn_part = f":secret:{secret_id}-"
        return sum(
            operation in WRITES and named is not None and (named == secret_id or arn_part in named)
            for operation, named in list(self.front.calls)
        )

    def seed(self, name: str, value: str | None, target: str, **quirks: Any) -> SeededConsumer:
        """``value`` None: no secret of that name exists yet (the consumer creates it)."""
        if quirks:
            raise TypeError(f"aws_secrets_manager has no quirks {sorted(quirks)}")
        aws, secret_id = self.aws, f"{target}/kosli"
        if value is not None:
            aws.create_secret(Name=secret_id, SecretString=value)

        def read() -> str | None:
            try:
                return aws.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")["SecretString"]
            except aws.exceptions.ResourceNotFoundException:
                return None

        return SeededConsumer(
            {"name": name, "kind": self.kind, "secret_id": secret_id},
            f"AWS Secrets Manager {secret_id} ({AWS_REGION})",
            secret_id,
            read=read,
            write_mark=lambda: self.writes_to(secret_id),
        )


ADAPTER = AwsSecretsManagerAdapter
