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


def test_a_missing_connection_is_explained_by_any_call(monkeypatch):
    """The base URL is looked up before the admin key: that lookup explains a missing connection too."""
    monkeypatch.delenv("AIRFLOW_CONN_KOSLI_MISSING", raising=False)
    with pytest.raises(InvalidRequestError, match="connection 'kosli_missing' is not defined") as error:
        KosliHook("kosli_missing").list_keys(ORG, SERVICE_ACCOUNT)
    assert not error.value.retryable


def test_a_connection_that_cannot_be_read_is_not_called_undefined(monkeypatch):
    """A secrets backend that cannot be loaded is reported as such, retryable: not as a connection to create."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    for section in ("SECRETS__BACKEND", "WORKERS__SECRETS_BACKEND"):
        monkeypatch.setenv(f"AIRFLOW__{section}", "nowhere.MissingBackend")
    clear_secrets_backends_cache()
    try:
        with pytest.raises(RotationError, match="cannot read Airflow connection 'kosli_default'") as error:
            KosliHook().admin_key()
    finally:
        clear_secrets_backends_cache()
    assert "secrets_backend" in str(error.value) and "not defined" not in str(error.value)
    assert not isinstance(error.value, InvalidRequestError) and error.value.retryable


@pytest.mark.timeout(30)
def test_a_wait_longer_than_one_task_waits_is_not_waited_for(kosli, hook):
    """Kosli asking for an hour: the call gives up at once, retryable (Airflow's task retry comes back later)."""
    sandbox, _ = kosli
    rule = sandbox.faults.add(KEYS + "$", method="GET", status=429, headers={"Retry-After": "3600"}, times=0)
    with pytest.raises(KosliApiError) as error:
        hook.list_keys(ORG, SERVICE_ACCOUNT)
    assert error.value.status == 429 and error.value.retryable
    assert rule.fired == 1


def test_a_retry_after_date_and_a_408_are_honoured(kosli, hook):
    """Retry-After as an HTTP date (RFC 9110) and 408 Request Timeout are transient, as in the consumers."""
    import email.utils
    import time

    sandbox, _ = kosli
    soon = email.utils.formatdate(time.time() + 1, usegmt=True)
    dated = sandbox.faults.add(KEYS + "$", method="GET", status=503, headers={"Retry-After": soon}, times=1)
    timed_out = sandbox.faults.add(KEYS + "$", method="GET", status=408, headers={"Retry-After": "0"}, times=1)
    assert len(hook.list_keys(ORG, SERVICE_ACCOUNT)) == 1
    assert (dated.fired, timed_out.fired) == (1, 1)


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


# -- auth that cannot be swapped, ids that cannot escape their path -----------------------------------------


def authorizations_seen(sandbox, path: str = "/environments/") -> list[str | None]:
    """Record the Authorization header of every request to ``path`` (the rule matches nothing)."""
    seen: list[str | None] = []
    sandbox.faults.add(path, delay=0, times=0, when=lambda request: seen.append(request.headers.get("Authorization")))
    return seen


def dead_key(hook: KosliHook, kosli) -> str:
    _, (key_id, secret) = kosli
    hook.revoke_key(ORG, SERVICE_ACCOUNT, key_id)
    return secret


def test_a_connection_login_cannot_replace_the_key_under_test(kosli, monkeypatch):
    sandbox, _ = kosli
    secret = dead_key(KosliHook(), kosli)
    admin = json.loads(__import__("os").environ["AIRFLOW_CONN_KOSLI_DEFAULT"])["password"]
    connection = {"conn_type": "http", "host": sandbox.url, "login": admin, "password": admin}
    monkeypatch.setenv("AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps(connection))
    seen = authorizations_seen(sandbox)

    assert KosliHook().probe(ORG, secret) == 401, "the probe must test the dead key, not the connection's login"
    assert seen == [f"Bearer {secret}"]


@pytest.fixture
def admin_in_netrc(kosli, monkeypatch, tmp_path):
    """A HOME whose ~/.netrc (also named by NETRC) holds the admin key for the sandbox's host."""
    sandbox, _ = kosli
    admin = json.loads(__import__("os").environ["AIRFLOW_CONN_KOSLI_DEFAULT"])["password"]
    host = sandbox.url.split("://", 1)[1].rsplit(":", 1)[0]
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {host}\n  login {admin}\n  password unused\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    return admin


def test_a_netrc_entry_cannot_replace_the_key_under_test(kosli, admin_in_netrc):
    sandbox, _ = kosli
    hook = KosliHook()
    secret = dead_key(hook, kosli)
    seen = authorizations_seen(sandbox)

    assert hook.probe(ORG, secret) == 401, "the probe must test the dead key, not the netrc entry"
    assert seen == [f"Bearer {secret}"]
    assert [key.description for key in hook.list_keys(ORG, SERVICE_ACCOUNT)] == [], "admin calls use the admin key"


def test_a_redirect_is_not_followed_with_other_credentials(kosli, admin_in_netrc):
    sandbox, _ = kosli
    hook = KosliHook()
    secret = dead_key(hook, kosli)
    target = f"{sandbox.url}/api/v2/environments/{ORG}?again=1"
    sandbox.faults.add(f"/environments/{ORG}$", status=307, headers={"Location": target}, body="", times=1)

    with pytest.raises(KosliApiError) as error:
        hook.probe(ORG, secret)
    assert error.value.status == 307, "a redirect is an answer to report, never followed with netrc credentials"


@pytest.mark.parametrize("key", ["", None])
def test_a_probe_without_the_key_under_test_is_refused(kosli, key):
    sandbox, _ = kosli
    sandbox.reset_stats()
    with pytest.raises(InvalidRequestError, match="the key to probe"):
        KosliHook().probe(ORG, key)
    assert sandbox.stats()["total_requests"] == 0, "it never falls back to the connection's admin key"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda hook: hook.list_keys("..", SERVICE_ACCOUNT), "org"),
        (lambda hook: hook.list_keys(ORG, "ci/../admin-bot"), "service account"),
        (lambda hook: hook.get_key(ORG, SERVICE_ACCOUNT, ".."), "key id"),
        (lambda hook: hook.revoke_key(ORG, SERVICE_ACCOUNT, "a/b"), "key id"),
        (lambda hook: hook.rotate_key(ORG, SERVICE_ACCOUNT, "k\r\nX: y", grace_period_hours=1), "key id"),
        (lambda hook: hook.create_key(ORG, "ci\x00bot", description="x"), "service account"),
        (lambda hook: hook.probe("acme\n", "some-key"), "org"),
        (lambda hook: hook.probe("", "some-key"), "org"),
    ],
    ids=["org-dotdot", "sa-slash", "key-dotdot", "key-slash", "key-crlf", "sa-nul", "org-newline", "org-empty"],
)
def test_ids_that_could_leave_their_path_are_refused_before_any_call(kosli, call, field):
    sandbox, _ = kosli
    sandbox.reset_stats()
    with pytest.raises(InvalidRequestError, match=f"Kosli {field} "):
        call(KosliHook())
    assert sandbox.stats()["total_requests"] == 0


def test_ids_are_url_quoted(kosli, hook):
    with pytest.raises(KosliApiError) as error:
        hook.get_key(ORG, SERVICE_ACCOUNT, "k y%?#")
    assert error.value.status == 404
    assert error.value.path.endswith("/api-keys/k%20y%25%3F%23")
