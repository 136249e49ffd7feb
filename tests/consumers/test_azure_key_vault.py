"""The azure_key_vault consumer's own quirks, against the Key Vault sandbox over HTTPS with the real
azure-keyvault-secrets and azure-identity clients (create, update, rerun, wrong credentials, 429 and 5xx are the
contract test's). Outcomes are read through the sandbox's own view, never through the consumer."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kosli_rotation.consumers import KINDS
from kosli_rotation.consumers.azure_key_vault import AzureKeyVaultConfig, AzureKeyVaultConsumer
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.scrub import scrub
from sandbox.azure_identity import OFFICER, READER, SECRETS_USER
from sandbox.azure_key_vault import AzureKeyVaultSandbox
from sandbox.secret_scan import find_secrets_in_text
from sandbox.tls import CertificateAuthority, make_authority
from tests.support.client_logs import configure_airflow_at_debug, everything_logged, log_everything_at_debug

SECRET = "kosli-api-key"
OLD, KEY = "old-kosli-key-" + "o" * 30, "new-kosli-key-" + "n" * 30


@pytest.fixture(scope="module")
def authority() -> Iterator[CertificateAuthority]:
    with tempfile.TemporaryDirectory() as directory:
        yield make_authority(Path(directory))


class World:
    """A vault (HTTPS, its own Entra authority), an app with Key Vault Secrets Officer, ``azure_default`` for it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, authority: CertificateAuthority, **options: Any) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(authority.ca_file))
        self.vault = AzureKeyVaultSandbox(authority=authority, **options).start()
        self.client_id, self.client_secret = self.vault.add_app(OFFICER)
        self.connect()

    def extra(self, **changes: Any) -> dict[str, Any]:
        extra = {"tenant_id": self.vault.tenant, "authority_host": self.vault.url}
        extra |= {"disable_instance_discovery": True, "verify_challenge_resource": False}
        return {name: value for name, value in {**extra, **changes}.items() if value is not None}

    def connect(self, login: str | None = None, password: str | None = None, **extra: Any) -> None:
        login = self.client_id if login is None else login
        password = self.client_secret if password is None else password
        connection = {"conn_type": "azure", "login": login, "password": password, "extra": self.extra(**extra)}
        self.monkeypatch.setenv("AIRFLOW_CONN_AZURE_DEFAULT", json.dumps(connection))

    def consumer(self, **config: Any) -> AzureKeyVaultConsumer:
        fields = {"vault_url": self.vault.url, "secret_name": SECRET, **config}
        return AzureKeyVaultConsumer(AzureKeyVaultConfig(name="vault", kind="azure_key_vault", **fields))

    def writes(self, operation: str = "set") -> int:
        return int(self.vault.stats()["writes"][operation])


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, authority: CertificateAuthority) -> Iterator[World]:
    built = World(monkeypatch, authority)
    yield built
    built.vault.stop()


def refused(action: Any) -> ConsumerError:
    with pytest.raises(ConsumerError) as raised:
        action()
    return raised.value


# -- config ----------------------------------------------------------------------------------------------


def test_registered_with_defaults() -> None:
    assert KINDS["azure_key_vault"] == (AzureKeyVaultConfig, AzureKeyVaultConsumer)
    config = AzureKeyVaultConfig(
        name="v", kind="azure_key_vault", vault_url="https://acme.vault.azure.net/", secret_name="kosli"
    )
    assert (config.conn_id, config.vault_url, config.retire, config.content_type, config.tags) == (
        "azure_default",
        "https://acme.vault.azure.net",
        "none",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"vault_url": "http://acme.vault.azure.net"}, "must be an https URL"),
        ({"vault_url": "acme.vault.azure.net"}, "must be an https URL"),
        ({"vault_url": "https://acme.vault.azure.net/secrets/kosli"}, "must have no path"),
        ({"vault_url": "https://acme.vault.azure.net?x=1"}, "must be just https://<host>"),
        ({"vault_url": "https://user:pw@acme.vault.azure.net"}, "must be just https://<host>"),
        ({"secret_name": "kosli_key"}, "not a Key Vault secret name"),
        ({"secret_name": "k" * 128}, "not a Key Vault secret name"),
        ({"secret_name": ""}, "not a Key Vault secret name"),
        ({"tags": {f"t{n}": "v" for n in range(16)}}, "tags"),
        ({"tags": {"": "v"}}, "tags"),
        ({"tags": {"t": "v" * 257}}, "tags"),
        ({"content_type": ""}, "content_type"),
        ({"retire": "destroy"}, "retire"),
        ({"conn_id": ""}, "conn_id"),
    ],
)
def test_config_rejects(fields: dict[str, Any], complaint: str) -> None:
    base = {"vault_url": "https://acme.vault.azure.net", "secret_name": "kosli"}
    with pytest.raises(ValidationError, match=complaint):
        AzureKeyVaultConfig(name="v", kind="azure_key_vault", **{**base, **fields})


# -- TLS and the challenge -------------------------------------------------------------------------------


def test_the_challenge_flow_over_https_with_the_test_ca(world: World) -> None:
    consumer = world.consumer(content_type="text/plain", tags={"owner": "platform"})
    consumer.write(KEY)
    assert world.vault.value(SECRET) == KEY
    (version,) = world.vault.versions(SECRET)
    assert (version["content_type"], version["tags"]) == ("text/plain", {"owner": "platform"})
    requests = world.vault.stats()["requests"]
    assert requests["openid_configuration"] == 1 and requests["token"] == 1, "one token, via the authority"
    assert requests["get_secret"] >= 2, "the bare challenge request, then the authorised read"
    assert consumer.verify(KEY, 0.0).ok


def test_a_vault_certificate_the_worker_does_not_trust_fails_at_once_saying_so(world: World) -> None:
    import certifi

    world.monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    error = refused(world.consumer().check_access)
    assert error.retryable is False
    assert "not trusted" in str(error) and "REQUESTS_CA_BUNDLE" in str(error)


def test_challenge_resource_verification_on_by_default_explains_the_extra(world: World) -> None:
    world.connect(verify_challenge_resource=None)  # the sandbox is not under vault.azure.net
    error = refused(world.consumer().check_access)
    assert error.retryable is False and "verify_challenge_resource false" in str(error)
    assert world.vault.stats()["requests"].get("token", 0) == 0, "no token is asked for a mismatched resource"


# -- soft delete -----------------------------------------------------------------------------------------


def test_a_soft_deleted_secret_is_recovered_then_set(world: World) -> None:
    earlier = world.vault.put_secret(SECRET, OLD)
    world.vault.soft_delete(SECRET)
    world.vault.recover_seconds = 0.5  # readable again only a while after the recovery
    world.consumer().write(KEY)
    assert world.vault.value(SECRET) == KEY
    assert world.vault.versions(SECRET)[0]["version"] == earlier, "the recovered history is kept"
    assert (world.writes("recover"), world.writes("set")) == (1, 1)


def test_a_recovered_secret_already_holding_the_key_gets_no_new_version(world: World) -> None:
    world.vault.put_secret(SECRET, KEY)
    world.vault.soft_delete(SECRET)
    world.consumer().write(KEY)
    assert world.vault.value(SECRET) == KEY
    assert (world.writes("recover"), world.writes("set"), len(world.vault.versions(SECRET))) == (1, 0, 1)


def test_a_rerun_adds_no_version_and_a_disabled_latest_reads_as_nothing(world: World) -> None:
    world.vault.put_secret(SECRET, KEY, enabled=False)
    consumer = world.consumer()
    assert consumer.read_digest() is None, "403 SecretDisabled: the latest holds nothing readable"
    consumer.write(KEY)
    consumer.write(KEY)
    assert world.writes("set") == 1 and world.vault.value(SECRET) == KEY


# -- retiring earlier versions ---------------------------------------------------------------------------


def test_retire_disables_every_earlier_version_never_the_current_and_is_idempotent(
    monkeypatch: pytest.MonkeyPatch, authority: CertificateAuthority
) -> None:
    world = World(monkeypatch, authority, page_size=2)  # five versions: three pages, followed by nextLink
    try:
        for number in range(3):
            world.vault.put_secret(SECRET, f"{OLD}-{number}")
        world.vault.put_secret(SECRET, OLD, enabled=False)
        consumer = world.consumer(retire="disable")
        consumer.write(KEY)
        assert world.vault.stats()["requests"].get("list_versions", 0) == 0, "writing retires nothing"
        done = consumer.retire_superseded(KEY)
        versions = world.vault.versions(SECRET)
        assert [v["enabled"] for v in versions] == [False, False, False, False, True]
        assert done is not None and f"version {versions[-1]['version']} stays current" in done
        assert world.vault.stats()["requests"]["list_versions"] == 3, "every page was read"
        assert world.writes("update") == 3, "the already disabled version was left alone"
        assert consumer.retire_superseded(KEY) is None and world.writes("update") == 3
        assert world.vault.value(SECRET) == KEY
    finally:
        world.vault.stop()


def test_retire_refuses_when_the_latest_does_not_hold_the_key(world: World) -> None:
    world.vault.put_secret(SECRET, OLD)
    world.vault.put_secret(SECRET, "someone-else-wrote-" + "x" * 20)
    error = refused(lambda: world.consumer(retire="disable").retire_superseded(KEY))
    assert error.retryable is False and "refusing to disable" in str(error) and fingerprint(KEY) in str(error)
    assert all(v["enabled"] for v in world.vault.versions(SECRET)) and world.writes("update") == 0


def test_retire_none_touches_nothing(world: World) -> None:
    world.vault.put_secret(SECRET, OLD)
    consumer = world.consumer()
    consumer.write(KEY)
    assert consumer.retire_superseded(KEY) is None
    assert [v["enabled"] for v in world.vault.versions(SECRET)] == [True, True]


# -- credentials and access --------------------------------------------------------------------------------


def test_managed_identity_through_the_sandbox_identity_endpoint(world: World) -> None:
    system = world.vault.add_managed_identity(OFFICER, system=True)
    assigned = world.vault.add_managed_identity(OFFICER)
    for name, value in world.vault.identity_environment().items():
        world.monkeypatch.setenv(name, value)
    world.connect(login="", password="", tenant_id=None)
    world.consumer().write(KEY)
    world.connect(login="", password="", tenant_id=None, managed_identity_client_id=assigned)
    world.consumer().write(OLD)
    assert world.vault.value(SECRET) == OLD
    via = [(request["via"], request["client_id"]) for request in world.vault.token_requests]
    assert via == [("mi", ""), ("mi", assigned)], "the system identity, then the user-assigned one"
    assert system != assigned


def test_a_managed_identity_the_host_refuses_is_not_retried(world: World) -> None:
    world.vault.add_managed_identity(OFFICER, system=True)
    world.monkeypatch.setenv("IDENTITY_ENDPOINT", world.vault.identity_environment()["IDENTITY_ENDPOINT"])
    world.monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    world.connect(login="", password="", tenant_id=None)
    error = refused(world.consumer().check_access)
    assert error.retryable is False and "system-assigned managed identity got no token" in str(error)
    assert len(world.vault.token_requests) == 1


def test_a_reader_app_is_told_which_role_to_grant(world: World) -> None:
    world.vault.put_secret(SECRET, OLD)
    client_id, secret = world.vault.add_app(SECRETS_USER)
    world.connect(login=client_id, password=secret)
    consumer = world.consumer()
    consumer.check_access()  # reading is allowed
    error = refused(lambda: consumer.write(KEY))
    assert error.retryable is False
    assert "ForbiddenByRbac" in str(error) and f"give app {client_id} the 'Key Vault Secrets Officer' role" in str(
        error
    )
    assert "get, list, set and recover" in str(error), "and the access-policy permissions"
    assert world.writes() == 0 and world.vault.value(SECRET) == OLD


def test_a_metadata_reader_cannot_even_check_access(world: World) -> None:
    client_id, secret = world.vault.add_app(READER)
    world.connect(login=client_id, password=secret)
    error = refused(world.consumer().check_access)
    assert error.retryable is False and "Key Vault Secrets Officer" in str(error)


def test_authority_host_is_honoured(world: World) -> None:
    world.consumer().check_access()
    assert world.vault.token_requests == [
        {
            "tenant": world.vault.tenant,
            "client_id": world.client_id,
            "scope": "https://vault.azure.net/.default",
            "via": "authority",
        }
    ]


@pytest.mark.parametrize(
    ("login", "password", "extra", "complaint"),
    [
        (None, None, {"authority_host": "http://login.example"}, "authority_host 'http://login.example' must be"),
        (None, None, {"tenant_id": None}, "needs login (client id), password (client secret) and extra tenant_id"),
        ("", None, {}, "needs login (client id), password (client secret) and extra tenant_id"),
        (None, None, {"verify_challenge_resource": "maybe"}, "extra verify_challenge_resource must be true or false"),
        (None, None, {"tenant_id": "not a tenant!"}, "extra tenant_id: Invalid tenant"),
    ],
)
def test_connection_mistakes_are_named(
    world: World, login: str | None, password: str | None, extra: dict[str, Any], complaint: str
) -> None:
    world.connect(login=login, password=password, **extra)
    error = refused(world.consumer().check_access)
    assert error.retryable is False and complaint in str(error)
    assert world.vault.stats()["total_requests"] == 0


def test_the_provider_spelling_tenantid_and_text_flags_work(world: World) -> None:
    world.connect(tenant_id=None, tenantId=world.vault.tenant, verify_challenge_resource="false")
    world.consumer().write(KEY)
    assert world.vault.value(SECRET) == KEY


def test_a_wrong_client_secret_is_refused_at_once_naming_what_to_check(world: World) -> None:
    world.connect(password="wrong-client-secret-" + "w" * 20)
    error = refused(world.consumer().check_access)
    assert error.retryable is False
    assert "AADSTS7000215" in str(error) and f"tokens are asked of {world.vault.url}" in str(error)
    assert len(world.vault.token_requests) == 1, "not retried"


@pytest.fixture
def airflow_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_airflow_at_debug(monkeypatch)


def test_debug_logging_leaks_neither_the_client_secret_nor_tokens_nor_the_key(
    airflow_at_debug: None, world: World, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    log_everything_at_debug(caplog)
    consumer = world.consumer()
    consumer.write(KEY)
    assert consumer.verify(KEY, 0.0).ok
    tokens = list(world.vault._tokens)
    logged = everything_logged(caplog, capfd)
    assert f"Stored {fingerprint(KEY)}" in logged, "the consumer's own lines are captured"
    assert not find_secrets_in_text(logged, [KEY, world.client_secret, *tokens])
    for secret in (world.client_secret, *tokens):
        assert secret not in scrub(f"held: {secret}"), "the client secret and every access token are held"


def test_a_vault_reflecting_the_request_in_its_errors_shows_no_secret(world: World) -> None:
    """A hostile vault (or proxy) answers writes with 500s echoing the Authorization header and the body."""
    from kosli_rotation.scrub import hold_secret

    hold_secret(KEY)  # the rotation holds the key the moment it is minted
    rule = world.vault.faults.add(r"^/secrets/", method="PUT", status=500, times=0, headers={"Retry-After": "0"})

    def reflect(request: Any) -> bool:
        token = (request.headers.get("Authorization") or "").rpartition(" ")[2]  # bare: no "Bearer" to key on
        rule.body = {"error": {"code": "Oops", "message": f"<h1>session {token}</h1> got: {request.body.decode()}"}}
        return True

    rule.when = reflect
    error = refused(lambda: world.consumer().write(KEY))
    assert error.retryable is True and "HTTP 500" in str(error) and rule.fired == 5
    assert world.vault._tokens and "session sbx." in str(rule.body), "the token was echoed back"
    assert not find_secrets_in_text(str(error), [KEY, world.client_secret, *world.vault._tokens])
