"""The aws_secrets_manager consumer's quirks against moto's server mode, with boto3 read-backs straight from moto:
JSON fields, version stages and idempotency tokens, ARNs, create_if_missing, role assumption, AWS's own error
codes, a secret scheduled for deletion, regions.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Faults moto cannot produce (throttling, 5xx, the exact credential errors Secrets Manager returns) come from
``AwsErrorFront``, a local front that answers scripted errors and proxies the rest to moto.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer
from pydantic import TypeAdapter, ValidationError

from kosli_rotation.consumers import transport
from kosli_rotation.consumers.aws_secrets_manager import (
    AwsSecretsManagerConfig,
    AwsSecretsManagerConsumer,
    client_request_token,
)
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.scrub import scrub
from sandbox.secret_scan import find_secrets_in_text
from tests.support.aws_errors import (
    ACCESS_DENIED,
    EXPIRED_TOKEN,
    INTERNAL_ERROR,
    INVALID_SIGNATURE,
    THROTTLING,
    UNRECOGNIZED_CLIENT,
    AwsError,
    AwsErrorFront,
)
from tests.support.client_logs import configure_airflow_at_debug, everything_logged, log_everything_at_debug

REGION = "eu-west-1"
SECRET = "ci/kosli"
KEY = "kosli-key-" + "a" * 40
OLD_KEY = "kosli-key-" + "b" * 40


class Aws:
    """moto seen directly through boto3, plus the ``aws_default`` connection the consumer uses."""

    def __init__(self, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.moto_url = moto_url
        self.monkeypatch = monkeypatch
        self.direct = boto3.client(
            "secretsmanager",
            endpoint_url=moto_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.connect(moto_url)

    def connect(self, endpoint_url: str, **extra: Any) -> None:
        connection = {
            "conn_type": "aws",
            "login": "AKIAEXAMPLEKEY000001",
            "password": "dummy-secret-access-key",
            "extra": {"region_name": REGION, "endpoint_url": endpoint_url, **extra},
        }
        self.monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))

    def consumer(self, **config: Any) -> AwsSecretsManagerConsumer:
        config = {"name": "aws-ci", "kind": "aws_secrets_manager", "secret_id": SECRET, **config}
        return AwsSecretsManagerConsumer(AwsSecretsManagerConfig(**config))

    def _current(self, secret_id: str) -> dict[str, Any]:
        # By stage: moto's GetSecretValue without one ignores UpdateSecretVersionStage (AWS defaults to AWSCURRENT).
        return self.direct.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")

    def value(self, secret_id: str = SECRET) -> str:
        return self._current(secret_id)["SecretString"]

    def versions(self, secret_id: str = SECRET) -> dict[str, list[str]]:
        listed = self.direct.list_secret_version_ids(SecretId=secret_id)["Versions"]
        return {version["VersionId"]: version["VersionStages"] for version in listed}

    def current_version(self, secret_id: str = SECRET) -> str:
        return self._current(secret_id)["VersionId"]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    requests.post(f"{moto_url}/moto-api/reset", timeout=5).raise_for_status()
    monkeypatch.setattr(transport, "backoff_delay", lambda attempt, **_: 0.01)  # retries wait 10 ms, not seconds
    return Aws(moto_url, monkeypatch)


@pytest.fixture
def front(aws: Aws) -> Iterator[AwsErrorFront]:
    """The consumer talks to moto through the error front."""
    with AwsErrorFront(aws.moto_url) as running:
        aws.connect(running.url)
        yield running


@contextmanager
def moto_checks_credentials(moto_url: str) -> Iterator[None]:
    """moto's IAM auth in server mode (what ``set_initial_no_auth_action_count(0)`` does): unknown keys → 403."""
    requests.post(f"{moto_url}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{moto_url}/moto-api/reset-auth", data=b"inf", timeout=5).raise_for_status()


# -- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"secret_id": "has space"}, "neither a secret name"),
        ({"secret_id": "arn:aws:s3:::bucket"}, "neither a secret name"),
        ({"region": "Europe"}, "pattern"),
        (
            {"secret_id": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ci/kosli-AbCdEf", "region": REGION},
            "contradicts",
        ),
        ({"create_if_missing": False, "kms_key_id": "alias/ci"}, "only apply when create_if_missing"),
        ({"json_field": ""}, "at least 1 character"),
    ],
)
def test_config_rejects_what_cannot_work(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        AwsSecretsManagerConfig(name="aws-ci", kind="aws_secrets_manager", **{"secret_id": SECRET, **fields})


def test_config_is_in_the_inventory_union_shape() -> None:
    config = TypeAdapter(AwsSecretsManagerConfig).validate_python(
        {"name": "aws-ci", "kind": "aws_secrets_manager", "secret_id": SECRET, "json_field": "KOSLI_API_TOKEN"}
    )
    assert (config.conn_id, config.create_if_missing, config.region) == ("aws_default", True, None)


def test_describe_names_the_target_never_the_value(aws: Aws) -> None:
    consumer = aws.consumer(json_field="KOSLI_API_TOKEN")
    assert consumer.describe() == (
        "AWS Secrets Manager secret ci/kosli, JSON field KOSLI_API_TOKEN in the connection's region "
        "(connection aws_default)"
    )
    consumer.write(KEY)
    assert "in eu-west-1" in consumer.describe() and KEY not in consumer.describe()


# -- create / update / idempotence ---------------------------------------------------------------------------


def test_creates_a_missing_plain_secret(aws: Aws) -> None:
    consumer = aws.consumer(description="Kosli API key for CI", kms_key_id="alias/ci-secrets")
    consumer.check_access()
    assert not consumer.holds(KEY)

    consumer.write(KEY)

    assert aws.value() == KEY
    described = aws.direct.describe_secret(SecretId=SECRET)
    assert (described["Description"], described["KmsKeyId"]) == ("Kosli API key for CI", "alias/ci-secrets")
    assert aws.versions() == {client_request_token(SECRET, KEY): ["AWSCURRENT"]}


def test_creates_a_missing_json_secret_with_only_the_field(aws: Aws) -> None:
    aws.consumer(json_field="KOSLI_API_TOKEN").write(KEY)
    assert json.loads(aws.value()) == {"KOSLI_API_TOKEN": KEY}


def test_updates_a_plain_secret_as_a_new_current_version(aws: Aws) -> None:
    old_version = aws.direct.create_secret(Name=SECRET, SecretString=OLD_KEY)["VersionId"]

    aws.consumer().write(KEY)

    assert aws.value() == KEY
    assert aws.versions()[old_version] == ["AWSPREVIOUS"]
    assert aws.versions()[aws.current_version()] == ["AWSCURRENT"]


def test_updates_one_json_field_keeping_the_others(aws: Aws) -> None:
    aws.direct.create_secret(
        Name=SECRET, SecretString=json.dumps({"KOSLI_ORG": "acme", "KOSLI_API_TOKEN": OLD_KEY, "retries": 3})
    )
    consumer = aws.consumer(json_field="KOSLI_API_TOKEN")
    assert consumer.read_digest() == digest(OLD_KEY)

    consumer.write(KEY)

    assert json.loads(aws.value()) == {"KOSLI_ORG": "acme", "KOSLI_API_TOKEN": KEY, "retries": 3}
    assert len(aws.versions()) == 2


def test_retried_write_reuses_the_token_so_no_second_version(aws: Aws) -> None:
    aws.direct.create_secret(Name=SECRET, SecretString=json.dumps({"KOSLI_API_TOKEN": OLD_KEY, "org": "acme"}))
    aws.consumer(json_field="KOSLI_API_TOKEN").write(KEY)
    versions = aws.versions()

    aws.consumer(json_field="KOSLI_API_TOKEN").write(KEY)  # written again without the holds() check

    assert aws.versions() == versions
    expected_string = json.dumps({"KOSLI_API_TOKEN": KEY, "org": "acme"})
    assert aws.current_version() == client_request_token(SECRET, expected_string)


def test_rewrite_after_someone_else_changed_it_makes_our_version_current_again(aws: Aws) -> None:
    consumer = aws.consumer()
    consumer.write(KEY)
    aws.direct.put_secret_value(SecretId=SECRET, SecretString="hand-edited")

    consumer.write(KEY)  # AWS ignores the PutSecretValue (same token, same value): the label must be moved

    assert aws.value() == KEY
    assert aws.current_version() == client_request_token(SECRET, KEY)
    assert len(aws.versions()) == 2


def test_an_existing_secret_given_by_arn(aws: Aws) -> None:
    arn = aws.direct.create_secret(Name=SECRET, SecretString=OLD_KEY)["ARN"]
    consumer = aws.consumer(secret_id=arn)
    consumer.check_access()
    consumer.write(KEY)
    assert aws.value() == KEY


def test_a_missing_secret_is_not_created_when_told_not_to(aws: Aws) -> None:
    consumer = aws.consumer(create_if_missing=False)
    with pytest.raises(ConsumerError, match="does not exist and create_if_missing is false") as raised:
        consumer.check_access()
    assert raised.value.retryable is False
    with pytest.raises(ConsumerError, match="does not exist"):
        consumer.write(KEY)
    assert aws.direct.list_secrets()["SecretList"] == []


def test_json_field_in_a_non_json_secret_is_refused_and_untouched(aws: Aws) -> None:
    aws.direct.create_secret(Name=SECRET, SecretString=OLD_KEY)
    consumer = aws.consumer(json_field="KOSLI_API_TOKEN")
    with pytest.raises(ConsumerError, match="not a JSON object") as raised:
        consumer.write(KEY)
    assert raised.value.retryable is False and OLD_KEY not in str(raised.value)
    assert aws.value() == OLD_KEY


# -- verify --------------------------------------------------------------------------------------------------


def test_verify_ok_after_write(aws: Aws) -> None:
    consumer = aws.consumer(json_field="KOSLI_API_TOKEN")
    consumer.write(KEY)
    outcome = consumer.verify(KEY, written_at=0)
    assert outcome.ok and outcome.method == "read back" and fingerprint(KEY) in outcome.detail


def test_verify_not_ok_when_the_secret_holds_another_value(aws: Aws) -> None:
    consumer = aws.consumer(json_field="KOSLI_API_TOKEN")
    consumer.write(KEY)
    aws.direct.put_secret_value(SecretId=SECRET, SecretString=json.dumps({"KOSLI_API_TOKEN": OLD_KEY}))

    outcome = consumer.verify(KEY, written_at=0)

    assert not outcome.ok
    assert fingerprint(OLD_KEY) in outcome.detail and KEY not in outcome.detail


def test_role_arn_is_assumed_through_sts(aws: Aws) -> None:
    with AwsErrorFront(aws.moto_url) as sts:
        aws.connect(
            aws.moto_url,
            role_arn="arn:aws:iam::123456789012:role/kosli-rotation",
            assume_role_kwargs={"ExternalId": "kosli"},
            service_config={"sts": {"endpoint_url": sts.url}},
        )
        aws.consumer().write(KEY)
        assert sts.operations == ["AssumeRole"]
    assert aws.value() == KEY


@pytest.fixture
def airflow_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_airflow_at_debug(monkeypatch)


def test_debug_logging_leaks_neither_the_assumed_credentials_nor_the_key(
    airflow_at_debug: None, aws: Aws, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A deployment at DEBUG (root and Airflow): botocore would log the STS answer and the PutSecretValue body."""
    log_everything_at_debug(caplog)
    role_arn = "arn:aws:iam::123456789012:role/kosli-rotation"
    aws.connect(aws.moto_url, role_arn=role_arn, service_config={"sts": {"endpoint_url": aws.moto_url}})
    consumer = aws.consumer()
    consumer.write(KEY)
    assert consumer.verify(KEY, 0.0).ok

    assumed = consumer._client()._request_signer._credentials.get_frozen_credentials()
    assert assumed.access_key != "AKIAEXAMPLEKEY000001", "the role was assumed"
    logged = everything_logged(caplog, capfd)
    assert f"holding {fingerprint(KEY)}" in logged, "the consumer's own lines are captured"
    assert not find_secrets_in_text(logged, [assumed.secret_key]), "the assumed secret access key was logged"
    assert not find_secrets_in_text(logged, [assumed.token]), "the assumed session token was logged"
    assert not find_secrets_in_text(logged, [KEY]), "the key written was logged"
    for secret in (assumed.secret_key, assumed.token):
        assert secret not in scrub(f"held: {secret}"), "assumed credentials are held for the masker and scrubber"


# -- failures ------------------------------------------------------------------------------------------------


def test_wrong_credentials_refused_by_moto_iam_fail_at_once(aws: Aws, front: AwsErrorFront) -> None:
    consumer = aws.consumer()
    with moto_checks_credentials(aws.moto_url), pytest.raises(ConsumerError) as raised:
        consumer.check_access()
    assert raised.value.retryable is False
    assert "for connection 'aws_default' (HTTP 403" in str(raised.value)  # moto: an XML body, so no error code
    assert "secretsmanager:DescribeSecret" in str(raised.value)
    assert SECRET in str(raised.value)
    assert len(front.operations) <= 2


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (UNRECOGNIZED_CLIENT, "access key id (login) is unknown"),
        (INVALID_SIGNATURE, "secret access key (password) does not match"),
        (EXPIRED_TOKEN, "session token has expired"),
        (ACCESS_DENIED, "secretsmanager:DescribeSecret, GetSecretValue, PutSecretValue"),
    ],
)
def test_refused_credentials_are_not_retried(aws: Aws, front: AwsErrorFront, error: AwsError, hint: str) -> None:
    front.fail_always(error)
    with pytest.raises(ConsumerError, match=re.escape(hint)) as raised:
        aws.consumer().write(KEY)
    assert raised.value.retryable is False
    assert error.code in str(raised.value) and "connection 'aws_default'" in str(raised.value)
    assert KEY not in str(raised.value)
    assert len(front.operations) <= 2


@pytest.mark.parametrize("error", [THROTTLING, INTERNAL_ERROR])
def test_throttling_or_5xx_then_recovering_still_writes(aws: Aws, front: AwsErrorFront, error: AwsError) -> None:
    front.fail_next(error, times=2)

    aws.consumer().write(KEY)

    assert front.rejected == 2
    assert front.operations[:3] == ["secretsmanager.GetSecretValue"] * 3  # the transport retried the same call
    assert aws.value() == KEY


@pytest.mark.parametrize("error", [THROTTLING, INTERNAL_ERROR])
def test_persistent_throttling_or_5xx_gives_up_after_5_attempts_as_retryable(
    aws: Aws, front: AwsErrorFront, error: AwsError
) -> None:
    front.fail_always(error)
    with pytest.raises(ConsumerError, match=f"cannot read Secrets Manager secret ci/kosli .*{error.code}") as raised:
        aws.consumer().write(KEY)
    assert raised.value.retryable is True
    assert front.operations == ["secretsmanager.GetSecretValue"] * transport.DEFAULT_POLICY.max_attempts


def test_unreachable_endpoint_is_retryable(aws: Aws) -> None:
    with AwsErrorFront() as closed:
        url = closed.url
    aws.connect(url)  # nothing listens there any more
    with pytest.raises(ConsumerError, match=r"AWS did not answer .*EndpointConnectionError") as raised:
        aws.consumer().check_access()
    assert raised.value.retryable is True


def test_secret_scheduled_for_deletion_is_refused_clearly(aws: Aws) -> None:
    aws.direct.create_secret(Name=SECRET, SecretString=OLD_KEY)
    aws.direct.delete_secret(SecretId=SECRET, RecoveryWindowInDays=7)
    consumer = aws.consumer()

    for step in (consumer.check_access, lambda: consumer.write(KEY)):
        with pytest.raises(ConsumerError, match="scheduled for deletion: restore it") as raised:
            step()
        assert raised.value.retryable is False

    versions = aws.direct.describe_secret(SecretId=SECRET)["VersionIdsToStages"]
    assert len(versions) == 1


def test_undefined_connection_says_how_to_define_it(aws: Aws) -> None:
    with pytest.raises(ConsumerError, match="AIRFLOW_CONN_AWS_CI_ACCOUNT") as raised:
        aws.consumer(conn_id="aws_ci_account").check_access()
    assert raised.value.retryable is False


def test_no_region_anywhere_says_where_to_set_it(aws: Aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    connection = {"conn_type": "aws", "login": "AKIAEXAMPLEKEY000001", "password": "dummy"}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    with pytest.raises(ConsumerError, match="no AWS region for connection 'aws_default'") as raised:
        aws.consumer().check_access()
    assert raised.value.retryable is False
