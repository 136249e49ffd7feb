"""The jenkins_credential consumer's quirks against the Jenkins sandbox (through the Jenkins provider and
python-jenkins): credentials XML (id, scope, description and the rest of config.xml kept; redacted secrets; another
credential type refused), folder stores and domains, CSRF crumbs, missing permissions, http or https from the
connection, a proxy's rate limit as 503, canary builds.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503 on the write, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Outcomes are read from the sandbox's own view (the decrypted credential, its build records and request
counts), never through the consumer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import jenkins
import pytest
import requests
from pydantic import ValidationError

from kosli_rotation.consumers.jenkins_credential import (
    CRUMB_ATTEMPTS,
    JenkinsCredentialConfig,
    JenkinsCredentialConsumer,
)
from kosli_rotation.consumers.jenkins_xml import SECRET_TEXT_CLASS
from kosli_rotation.errors import ConsumerError
from kosli_rotation.scrub import scrub
from sandbox.jenkins import JenkinsSandbox
from sandbox.kosli import KosliSandbox

ORG = "acme"
CREDENTIAL = "kosli-api-token"
CANARY_JOB = "canaries/kosli-check"
WRONG_KEY = "not-a-kosli-key-" + "x" * 27


class World:
    """A Kosli sandbox with two working keys, and a Jenkins sandbox whose canary job probes Kosli."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **jenkins_options: Any) -> None:
        self.monkeypatch = monkeypatch
        self.kosli = KosliSandbox().start()
        minted = self.kosli.seed(ORG, service_accounts={"ci-bot": {"privilege": "member", "keys": [{}, {}]}})
        self.old_key, self.new_key = (key["key"] for key in minted["ci-bot"])
        options = {"canary_seconds": 0.2, "quiet_period": 0.05, **jenkins_options}
        self.jenkins = JenkinsSandbox(kosli_url=self.kosli.url, kosli_org=ORG, **options).start()
        self.token = self.jenkins.add_user("rotator")
        self.jenkins.add_job(CANARY_JOB, credential_id=CREDENTIAL)
        self.connect("rotator", self.token)

    def connect(self, login: str, password: str, **fields: Any) -> None:
        """The sandbox serves plain HTTP, so the connection says so (``use_https`` false; https is the default)."""
        port = int(self.jenkins.url.rsplit(":", 1)[1])
        connection = {"conn_type": "jenkins", "host": "127.0.0.1", "port": port, "login": login, "password": password}
        connection["extra"] = {"use_https": False}
        self.monkeypatch.setenv("AIRFLOW_CONN_JENKINS_DEFAULT", json.dumps(connection | fields))

    def consumer(self, **config: Any) -> JenkinsCredentialConsumer:
        config = {"name": "jenkins-ci", "kind": "jenkins_credential", "credential_id": CREDENTIAL, **config}
        return JenkinsCredentialConsumer(JenkinsCredentialConfig(**config))

    def stored(self, **where: Any) -> dict[str, Any]:
        return self.jenkins.stored_credential(CREDENTIAL, **where)

    def requests_to(self, handler: str) -> int:
        return self.jenkins.stats()["requests"].get(handler, 0)

    def stop(self) -> None:
        self.jenkins.wait_for_builds()
        self.jenkins.stop()
        self.kosli.stop()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    built = World(monkeypatch)
    yield built
    built.stop()


@pytest.fixture
def make_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    worlds: list[World] = []

    def make(**jenkins_options: Any) -> World:
        worlds.append(World(monkeypatch, **jenkins_options))
        return worlds[-1]

    yield make
    for built in worlds:
        built.stop()


# -- config ----------------------------------------------------------------------------------------------


def test_config_defaults_and_folder_store() -> None:
    config = JenkinsCredentialConfig(
        name="j", kind="jenkins_credential", credential_id="kosli.api-token_1", store={"folder": "team/app"}
    )
    assert (config.conn_id, config.domain, config.canary, config.canary_timeout_seconds) == (
        "jenkins_default",
        "_",
        None,
        600,
    )
    assert config.store.folder == "team/app"
    assert JenkinsCredentialConfig(name="j", kind="jenkins_credential", credential_id="x").store == "system"


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"credential_id": "has space"}, "credential_id"),
        ({"store": "folder"}, "store"),
        ({"store": {"folder": "/team"}}, "not a Jenkins item path"),
        ({"store": {"folder": "team//app"}}, "not a Jenkins item path"),
        ({"domain": "a/b"}, "not a credentials domain"),
        ({"canary": {"job": "x?y"}}, "not a Jenkins item path"),
        ({"canary": {"job": "ok", "unknown": 1}}, "unknown"),
        ({"canary_timeout_seconds": 0}, "canary_timeout_seconds"),
    ],
)
def test_config_rejects(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        JenkinsCredentialConfig(**{"name": "j", "kind": "jenkins_credential", "credential_id": "x", **fields})


def test_describe_names_the_target(world: World) -> None:
    consumer = world.consumer(store={"folder": "team/app"}, domain="prod", canary={"job": CANARY_JOB})
    assert consumer.describe() == (
        f"Jenkins Secret text credential {CREDENTIAL} in folder team/app, domain prod "
        f"(connection jenkins_default); canary job {CANARY_JOB}"
    )
    assert consumer.readable is False


# -- writes ----------------------------------------------------------------------------------------------


def test_creates_a_missing_credential(world: World) -> None:
    world.consumer(description="Kosli key for CI").write(world.new_key)

    stored = world.stored()
    assert stored | {"stored_xml": ""} == {
        "class": SECRET_TEXT_CLASS,
        "id": CREDENTIAL,
        "scope": "GLOBAL",
        "description": "Kosli key for CI",
        "secret": world.new_key,
        "stored_xml": "",
    }
    assert world.new_key not in stored["stored_xml"]
    assert (world.requests_to("create_credentials"), world.requests_to("update_credential_config")) == (1, 0)


def test_updates_in_place_keeping_id_scope_and_description(world: World) -> None:
    world.jenkins.put_credential(CREDENTIAL, world.old_key, description="owned by the platform team", scope="SYSTEM")

    world.consumer(description="ignored for an existing credential").write(world.new_key)

    stored = world.stored()
    assert (stored["secret"], stored["description"], stored["scope"]) == (
        world.new_key,
        "owned by the platform team",
        "SYSTEM",
    )
    assert 'plugin="plain-credentials@' in stored["stored_xml"]  # the rest of config.xml survives too
    assert (world.requests_to("create_credentials"), world.requests_to("update_credential_config")) == (0, 1)


def test_updates_when_jenkins_redacts_the_secret(make_world: Any) -> None:
    world = make_world(redact_secrets=True)
    world.jenkins.put_credential(CREDENTIAL, world.old_key, description="kept")

    world.consumer().write(world.new_key)

    assert (world.stored()["secret"], world.stored()["description"]) == (world.new_key, "kept")


def test_folder_store_and_named_domain(world: World) -> None:
    world.jenkins.add_folder("team/app")
    world.jenkins.add_domain("prod", folder="team/app")
    consumer = world.consumer(store={"folder": "team/app"}, domain="prod")

    consumer.check_access()
    consumer.write(world.new_key)

    assert world.stored(folder="team/app", domain="prod")["secret"] == world.new_key
    with pytest.raises(LookupError):
        world.stored()  # nothing landed in the system store
    assert consumer.verify(world.new_key, written_at=0).ok


def test_refuses_to_overwrite_another_credential_type(world: World) -> None:
    client = jenkins.Jenkins(world.jenkins.url, "rotator", world.token)
    xml = (
        "<com.cloudbees.plugins.credentials.impl.UsernamePasswordCredentialsImpl><scope>GLOBAL</scope>"
        f"<id>{CREDENTIAL}</id><username>bot</username><password>pw</password>"
        "</com.cloudbees.plugins.credentials.impl.UsernamePasswordCredentialsImpl>"
    )
    url = f"{world.jenkins.url}/credentials/store/system/domain/_/createCredentials"
    client.jenkins_request(requests.Request("POST", url, data=xml, headers={"Content-Type": "application/xml"}))

    with pytest.raises(ConsumerError, match="UsernamePasswordCredentialsImpl, not Secret text") as raised:
        world.consumer().write(world.new_key)
    assert raised.value.retryable is False
    assert world.stored()["class"].endswith("UsernamePasswordCredentialsImpl")
    assert world.requests_to("update_credential_config") == 0


# -- verify and canary -----------------------------------------------------------------------------------


def test_verify_without_canary_checks_existence(world: World) -> None:
    consumer = world.consumer()
    missing = consumer.verify(world.new_key, written_at=0)
    assert (missing.ok, missing.method) == (False, "write-only: credential exists")
    assert "not found" in missing.detail

    consumer.write(world.new_key)
    found = consumer.verify(world.new_key, written_at=0)
    assert found.ok
    assert "unproven" in found.detail


def test_canary_build_succeeds_with_the_new_key(world: World) -> None:
    world.jenkins.put_credential(CREDENTIAL, world.old_key)
    world.jenkins.add_job(CANARY_JOB, credential_id=CREDENTIAL, parameters={"REASON": "", "DRY_RUN": "false"})
    consumer = world.consumer(canary={"job": CANARY_JOB, "parameters": {"REASON": "key rotation", "DRY_RUN": True}})

    consumer.write(world.new_key)
    outcome = consumer.verify(world.new_key, written_at=0)

    assert outcome.ok, outcome.detail
    assert outcome.method == "write-only: credential exists + canary build"
    assert f"canary build {CANARY_JOB} #1 finished SUCCESS" in outcome.detail
    builds = world.jenkins.builds(CANARY_JOB)
    assert [(build["result"], build["parameters"]) for build in builds] == [
        ("SUCCESS", {"REASON": "key rotation", "DRY_RUN": "true"})
    ]


def test_canary_build_fails_when_the_stored_secret_is_wrong(world: World) -> None:
    consumer = world.consumer(canary={"job": CANARY_JOB})

    consumer.write(WRONG_KEY)
    outcome = consumer.verify(world.new_key, written_at=0)

    assert not outcome.ok
    assert "finished FAILURE" in outcome.detail
    assert "HTTP 401" in world.jenkins.builds(CANARY_JOB)[0]["console"][1]


def test_canary_that_does_not_finish_in_time_fails_verification(make_world: Any) -> None:
    world = make_world(canary_seconds=1.5)
    consumer = world.consumer(canary={"job": CANARY_JOB}, canary_timeout_seconds=0.5)
    consumer.write(world.new_key)

    outcome = consumer.verify(world.new_key, written_at=0)

    assert not outcome.ok
    assert "did not finish within 0.5 s" in outcome.detail


# -- access and credential errors ------------------------------------------------------------------------


def test_check_access_passes_and_names_what_is_missing(world: World) -> None:
    world.consumer(canary={"job": CANARY_JOB}).check_access()

    with pytest.raises(ConsumerError, match="HTTP 404") as no_folder:
        world.consumer(store={"folder": "nowhere"}).check_access()
    assert no_folder.value.retryable is False
    with pytest.raises(ConsumerError, match="see canary job team/missing") as no_job:
        world.consumer(canary={"job": "team/missing"}).check_access()
    assert no_job.value.retryable is False


def test_user_without_update_permission_is_refused_at_once(world: World) -> None:
    token = world.jenkins.add_user("viewer", permissions=["Overall/Read", "Credentials/View", "Credentials/Create"])
    world.jenkins.put_credential(CREDENTIAL, world.old_key)
    world.connect("viewer", token)
    world.jenkins.reset_stats()

    with pytest.raises(ConsumerError, match="missing the Credentials/Update permission") as raised:
        world.consumer().write(world.new_key)

    assert raised.value.retryable is False
    assert world.requests_to("update_credential_config") == 1
    assert world.stored()["secret"] == world.old_key


def test_connection_without_port_is_explained(world: World) -> None:
    world.monkeypatch.setenv(
        "AIRFLOW_CONN_JENKINS_DEFAULT",
        json.dumps({"conn_type": "jenkins", "host": "127.0.0.1", "login": "rotator", "password": world.token}),
    )
    with pytest.raises(ConsumerError, match="needs port") as raised:
        world.consumer().check_access()
    assert raised.value.retryable is False


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [
        (None, "https"),
        ({}, "https"),
        ({"use_https": True}, "https"),
        ({"use_https": "true"}, "https"),
        ({"use_https": False}, "http"),
        ({"use_https": "false"}, "http"),
    ],
)
def test_https_unless_the_connection_says_http(world: World, extra: Any, scheme: str) -> None:
    world.connect("rotator", world.token, extra=extra)
    consumer = world.consumer()
    assert consumer._server().server.startswith(f"{scheme}://127.0.0.1:")


def test_the_api_token_is_held_for_the_masker_and_the_scrubber(world: World) -> None:
    world.consumer().check_access()
    assert world.token not in scrub(f"token {world.token} end")


def test_missing_connection_is_explained(world: World) -> None:
    with pytest.raises(ConsumerError, match="'jenkins_other' is not defined") as raised:
        world.consumer(conn_id="jenkins_other").check_access()
    assert raised.value.retryable is False


def test_an_unreadable_connection_is_not_called_undefined(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secrets backend that cannot be loaded is reported as such, retryable: not as a connection to create."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    for section in ("SECRETS__BACKEND", "WORKERS__SECRETS_BACKEND"):
        monkeypatch.setenv(f"AIRFLOW__{section}", "nowhere.MissingBackend")
    clear_secrets_backends_cache()
    try:
        with pytest.raises(ConsumerError, match="cannot read Airflow connection 'jenkins_default'") as raised:
            world.consumer().check_access()
    finally:
        clear_secrets_backends_cache()
    assert "secrets_backend" in str(raised.value) and "not defined" not in str(raised.value)
    assert raised.value.retryable is True


# -- transient failures ----------------------------------------------------------------------------------


def test_rate_limited_by_the_proxy_then_recovers(make_world: Any) -> None:
    world = make_world(rate_limit=2, rate_limit_window=1.0)

    world.consumer().write(world.new_key)  # crumb, GET config.xml, POST createCredentials: the third waits

    assert world.stored()["secret"] == world.new_key
    assert world.jenkins.stats()["rate_limited"] >= 1


def test_server_errors_then_recovers(world: World) -> None:
    world.jenkins.put_credential(CREDENTIAL, world.old_key)
    world.jenkins.faults.add(r"/config\.xml$", method="POST", status=502, body="<html>Bad Gateway</html>", times=1)

    world.consumer().write(world.new_key)

    assert world.stored()["secret"] == world.new_key
    assert world.jenkins.stats()["faults_fired"] == 1


def test_persistent_server_errors_give_a_retryable_error(world: World) -> None:
    world.jenkins.faults.add(r"/config\.xml$", status=503, headers={"Retry-After": "0"}, times=None)

    with pytest.raises(ConsumerError, match="HTTP 503") as raised:
        world.consumer().write(world.new_key)

    assert raised.value.retryable is True
    assert world.jenkins.stats()["faults_fired"] == 5


def test_a_crumb_jenkins_no_longer_accepts_is_refreshed(world: World) -> None:
    consumer = world.consumer()
    consumer.write(world.old_key)
    world.jenkins._crumb_salt = "restarted"  # a Jenkins restart invalidates every crumb issued before

    consumer.write(world.new_key)

    assert world.stored()["secret"] == world.new_key
    assert world.requests_to("crumb_issuer") == 2


def test_a_crumb_refused_every_time_stops_with_the_cause(world: World) -> None:
    """A proxy that drops Jenkins' session cookie makes every crumb stale: fetched again a few times, then a
    non-retryable error that names the crumb, not a missing permission."""
    page = "<html><head><title>Error 403 No valid crumb was included in the request</title></head></html>"
    world.jenkins.faults.add(r"/createCredentials$", method="POST", status=403, body=page, times=None)

    with pytest.raises(ConsumerError, match="CSRF crumb kept being refused") as raised:
        world.consumer().write(world.new_key)

    assert raised.value.retryable is False
    assert world.jenkins.stats()["faults_fired"] == CRUMB_ATTEMPTS
    assert world.requests_to("crumb_issuer") == CRUMB_ATTEMPTS  # the first crumb, then one per refusal but the last


def test_the_key_never_reaches_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    consumer = world.consumer(canary={"job": CANARY_JOB})
    consumer.write(world.new_key)
    consumer.write(world.new_key)
    assert consumer.verify(world.new_key, written_at=0).ok
    assert f"Updated the secret of Jenkins credential {CREDENTIAL}" in caplog.text
    assert world.new_key not in caplog.text
