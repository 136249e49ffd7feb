"""The Kosli hook against the Kosli sandbox: what is retried, what never is, and what errors say."""

from __future__ import annotations

import json

import pytest

from kosli_rotation.errors import InvalidRequestError, KosliApiError, KosliOutcomeUnknown, RotationError
from kosli_rotation.kosli_hook import KosliHook, MintedKey
from tests.support.scenario import ORG, SERVICE_ACCOUNT, start_kosli

KEYS = rf"/api/v2/service-accounts/{ORG}/{SERVICE_ACCOUNT}/api-keys"


@pytest.fixture
def kosli(monkeypatch):
    sandbox, admin_key, ci_key = start_kosli(hour_seconds=60)
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": sandbox.url, "password": admin_key})
    )
    yield sandbox, ci_key
    sandbox.stop()


@pytest.fixture
def hook() -> KosliHook:
    return KosliHook(max_attempts=3)


def minted_count(sandbox) -> int:
    return len(sandbox.live_secrets(ORG, SERVICE_ACCOUNT))


def test_the_key_lifecycle(kosli, hook):
    _, (key_id, secret) = kosli
    assert [key.id for key in hook.list_keys(ORG, SERVICE_ACCOUNT)] == [key_id]
    assert hook.probe(ORG, secret) == 200

    rotated = hook.rotate_key(ORG, SERVICE_ACCOUNT, key_id, grace_period_hours=5)
    assert rotated.id == key_id and rotated.secret != secret
    assert rotated.grace_period_expires_at and rotated.grace_period_expires_at > rotated.created_at
    assert "secret" not in repr(rotated) and rotated.secret not in repr(rotated)
    assert hook.probe(ORG, secret) == 200, "the old key lives through its grace period"

    created = hook.create_key(ORG, SERVICE_ACCOUNT, description="new")
    assert hook.get_key(ORG, SERVICE_ACCOUNT, created.id).description == "new"
    assert hook.revoke_key(ORG, SERVICE_ACCOUNT, key_id) is True
    assert hook.revoke_key(ORG, SERVICE_ACCOUNT, key_id) is False, "404 on an already revoked key is fine"
    assert hook.probe(ORG, secret) == 401
    assert hook.probe(ORG, rotated.secret) == 401
    assert hook.probe(ORG, created.secret) == 200


def test_reads_honour_retry_after_on_429(kosli, hook):
    sandbox, _ = kosli
    rule = sandbox.faults.add(KEYS + "$", method="GET", status=429, headers={"Retry-After": "1"}, times=2)
    assert len(hook.list_keys(ORG, SERVICE_ACCOUNT)) == 1
    assert rule.fired == 2


def test_a_read_that_times_out_is_retried(kosli):
    sandbox, _ = kosli
    rule = sandbox.faults.add(KEYS + "$", method="GET", delay=2.0, times=1)
    assert len(KosliHook(timeout=0.5, max_attempts=3).list_keys(ORG, SERVICE_ACCOUNT)) == 1
    assert rule.fired == 1


def test_reads_give_up_after_a_bounded_number_of_5xx(kosli, hook):
    sandbox, _ = kosli
    rule = sandbox.faults.add(KEYS + "$", method="GET", status=503, times=0)
    with pytest.raises(KosliApiError) as error:
        hook.list_keys(ORG, SERVICE_ACCOUNT)
    assert error.value.status == 503 and error.value.retryable
    assert rule.fired == 3


@pytest.mark.parametrize("fault", [{"status": 502}, {"action": "drop_after_commit"}, {"action": "drop_before"}])
def test_a_rotate_that_may_have_happened_is_never_repeated(kosli, hook, fault):
    sandbox, (key_id, _) = kosli
    rule = sandbox.faults.add(KEYS + "/[^/]+/rotate$", method="POST", times=0, **fault)
    with pytest.raises(KosliOutcomeUnknown, match="may have been minted anyway"):
        hook.rotate_key(ORG, SERVICE_ACCOUNT, key_id, grace_period_hours=1)
    assert rule.fired == 1


def test_a_create_refused_with_429_is_safe_to_repeat_and_mints_one_key(kosli, hook):
    sandbox, _ = kosli
    rule = sandbox.faults.add(KEYS + "$", method="POST", status=429, headers={"Retry-After": "0"}, times=2)
    hook.create_key(ORG, SERVICE_ACCOUNT, description="after 429")
    assert rule.fired == 2
    assert minted_count(sandbox) == 2  # the seeded key and exactly one new one


def test_validation_errors_carry_kosli_message_and_fields_and_are_not_retried(kosli, hook):
    _, (key_id, _) = kosli
    with pytest.raises(KosliApiError) as error:
        hook.rotate_key(ORG, SERVICE_ACCOUNT, key_id, grace_period_hours=721)
    assert error.value.status == 400
    assert "Input payload validation failed: grace_period_hours" in str(error.value)
    assert not error.value.retryable


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        ('"Internal problem"', {"Content-Type": "application/json"}, "Internal problem"),
        ("<html>Bad gateway</html>", {"Content-Type": "text/html"}, "<html>Bad gateway</html>"),
        ({"error": "teapot"}, None, "teapot"),
    ],
)
def test_error_bodies_of_every_shape_become_one_clear_message(kosli, hook, body, headers, expected):
    sandbox, _ = kosli
    sandbox.faults.add(KEYS + "$", method="GET", status=418, body=body, headers=headers or {})
    with pytest.raises(KosliApiError, match=f"HTTP 418: {expected}"):
        hook.list_keys(ORG, SERVICE_ACCOUNT)


def test_a_wrong_admin_key_is_a_401_not_retried(kosli, monkeypatch):
    sandbox, _ = kosli
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": sandbox.url, "password": "wrong-key"})
    )
    sandbox.reset_stats()
    with pytest.raises(KosliApiError) as error:
        KosliHook().list_keys(ORG, SERVICE_ACCOUNT)
    assert error.value.status == 401
    assert sandbox.stats()["total_requests"] == 1


def test_a_host_given_with_the_api_prefix_still_works(kosli, monkeypatch):
    sandbox, (key_id, _) = kosli
    admin = json.loads(__import__("os").environ["AIRFLOW_CONN_KOSLI_DEFAULT"])["password"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT",
        json.dumps({"conn_type": "http", "host": sandbox.url + "/api/v2", "password": admin}),
    )
    assert [key.id for key in KosliHook().list_keys(ORG, SERVICE_ACCOUNT)] == [key_id]


def test_connection_problems_name_the_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_KOSLI_DEFAULT", raising=False)
    with pytest.raises(InvalidRequestError, match="connection 'kosli_missing' is not defined"):
        KosliHook("kosli_missing").admin_key()
    monkeypatch.setenv("AIRFLOW_CONN_KOSLI_NOPASS", json.dumps({"conn_type": "http", "host": "http://x"}))
    with pytest.raises(InvalidRequestError, match="'kosli_nopass' has no password"):
        KosliHook("kosli_nopass").admin_key()


def test_an_unreachable_kosli_is_a_retryable_error_for_reads(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9", "password": "k"})
    )
    with pytest.raises(RotationError, match="cannot reach Kosli") as error:
        KosliHook(max_attempts=2).list_keys(ORG, SERVICE_ACCOUNT)
    assert error.value.retryable


def test_the_secret_is_read_from_key_or_from_the_tutorials_api_key_field():
    body = {"id": "k1", "created_at": 1.0, "grace_period_expires_at": 9}
    assert MintedKey.from_json({**body, "key": "s" * 43}).secret == "s" * 43
    assert MintedKey.from_json({**body, "api_key": "t" * 43}).secret == "t" * 43
    with pytest.raises(KosliOutcomeUnknown, match="without a key id or value"):
        MintedKey.from_json(body)
