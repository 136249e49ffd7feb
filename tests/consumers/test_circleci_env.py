"""The circleci_env consumer's quirks against the CircleCI sandbox (through the HTTP provider's HttpHook): contexts by
id or by name (paginated), project variables and their masked last characters, verification by ``updated_at``,
members without admin, other orgs' targets, CircleCI's X-RateLimit-Reset, canary pipelines.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Outcomes are read from the sandbox's own view (stored plaintext, timestamps, pipelines and request counts),
never through the consumer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from kosli_rotation.consumers.circleci_env import CircleCiEnvConfig, CircleCiEnvConsumer
from kosli_rotation.errors import ConsumerError
from sandbox.circleci import CircleCiSandbox
from sandbox.kosli import KosliSandbox

ORG = "acme"
OWNER = "gh/acme"
APP = "gh/acme/app"
VARIABLE = "KOSLI_API_TOKEN"
WRONG_KEY = "not-a-kosli-key-" + "x" * 27


class World:
    """Kosli with two working keys; CircleCI org gh/acme with context ``kosli`` and project ``app`` whose canary
    workflow reads KOSLI_API_TOKEN from that context, then from the project."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **circleci_options: Any) -> None:
        self.monkeypatch = monkeypatch
        self.kosli = KosliSandbox().start()
        minted = self.kosli.seed(ORG, service_accounts={"ci-bot": {"privilege": "member", "keys": [{}, {}]}})
        self.old_key, self.new_key = (key["key"] for key in minted["ci-bot"])
        options = {"canary_seconds": 0.2, "setup_seconds": 0.05, **circleci_options}
        self.circleci = CircleCiSandbox(kosli_url=self.kosli.url, kosli_org=ORG, **options).start()
        self.org_id = self.circleci.add_org(OWNER)
        self.admin = self.circleci.add_user("rotator", {OWNER: "admin"})
        self.context_id = self.circleci.add_context(OWNER, "kosli")
        self.circleci.add_project(APP, contexts=["kosli"])
        self.connect(self.admin)

    def connect(self, token: str, **fields: Any) -> None:
        connection = {"conn_type": "http", "host": self.circleci.url, "password": token, **fields}
        self.monkeypatch.setenv("AIRFLOW_CONN_CIRCLECI_DEFAULT", json.dumps(connection))

    def consumer(self, **config: Any) -> CircleCiEnvConsumer:
        if not {"context_id", "context", "project_slug"} & set(config):
            config["context_id"] = self.context_id
        return CircleCiEnvConsumer(CircleCiEnvConfig(name="circleci-ci", kind="circleci_env", **config))

    def in_context(self) -> dict[str, Any] | None:
        return self.circleci.context_variable(self.context_id, VARIABLE)

    def in_project(self, slug: str = APP) -> dict[str, Any] | None:
        return self.circleci.project_variable(slug, VARIABLE)

    def requests_to(self, handler: str) -> int:
        return self.circleci.stats()["requests"].get(handler, 0)

    def stop(self) -> None:
        self.circleci.wait_for_workflows()
        self.circleci.stop()
        self.kosli.stop()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    built = World(monkeypatch)
    yield built
    built.stop()


@pytest.fixture
def make_world(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    worlds: list[World] = []

    def make(**circleci_options: Any) -> World:
        worlds.append(World(monkeypatch, **circleci_options))
        return worlds[-1]

    yield make
    for built in worlds:
        built.stop()


# -- config ----------------------------------------------------------------------------------------------

CONTEXT_ID = "0b4c7b2e-95f4-4a55-9d34-2f1d0e8a4c11"


def test_config_defaults() -> None:
    config = CircleCiEnvConfig(name="c", kind="circleci_env", context={"owner_slug": OWNER, "name": "kosli"})
    assert (config.conn_id, config.variable, config.canary, config.canary_timeout_seconds) == (
        "circleci_default",
        VARIABLE,
        None,
        600,
    )
    canary = CircleCiEnvConfig(name="c", kind="circleci_env", project_slug=APP, canary={"project_slug": APP}).canary
    assert canary is not None and (canary.branch, canary.parameters) == ("main", {})


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({}, "exactly one of context_id, context or project_slug"),
        ({"context_id": CONTEXT_ID, "project_slug": APP}, "exactly one of context_id, context or project_slug"),
        ({"context_id": "not-a-uuid"}, "context_id"),
        ({"context": {"name": "kosli"}}, "exactly one of owner_slug"),
        ({"context": {"name": "kosli", "owner_slug": OWNER, "owner_id": CONTEXT_ID}}, "exactly one of owner_slug"),
        ({"context": {"name": "kosli", "owner_slug": "acme"}}, "owner_slug"),
        ({"project_slug": "acme/app"}, "project_slug"),
        ({"project_slug": "circleci/not-uuid/x"}, "project_slug"),
        ({"context_id": CONTEXT_ID, "variable": "1BAD-NAME"}, "variable"),
        ({"context_id": CONTEXT_ID, "canary": {"project_slug": "gh/acme"}}, "project_slug"),
        ({"context_id": CONTEXT_ID, "canary_timeout_seconds": -1}, "canary_timeout_seconds"),
    ],
)
def test_config_rejects(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        CircleCiEnvConfig(name="c", kind="circleci_env", **fields)


def test_config_accepts_every_slug_form() -> None:
    for slug in (APP, "github/acme/app", "bb/acme/app", f"circleci/{CONTEXT_ID}/{CONTEXT_ID}"):
        assert CircleCiEnvConfig(name="c", kind="circleci_env", project_slug=slug).project_slug == slug


def test_describe_names_the_target(world: World) -> None:
    by_name = world.consumer(context={"owner_slug": OWNER, "name": "kosli"}, canary={"project_slug": APP})
    assert by_name.describe() == (
        f"CircleCI context 'kosli' of {OWNER}, variable {VARIABLE} (connection circleci_default); "
        f"canary pipeline of {APP} on main"
    )
    assert world.consumer(project_slug=APP).describe().startswith(f"CircleCI project {APP}, variable {VARIABLE}")
    assert world.consumer().readable is False


# -- context variables -----------------------------------------------------------------------------------


def test_updates_a_context_variable_in_place_and_verifies_by_updated_at(world: World) -> None:
    world.circleci.set_context_variable(world.context_id, VARIABLE, world.old_key)
    created_at = world.in_context()["created_at"]  # type: ignore[index]
    stored_in_vault_at = time.time()
    consumer = world.consumer()

    consumer.write(world.new_key)

    held = world.in_context()
    assert held is not None
    assert (held["value"], held["created_at"]) == (world.new_key, created_at)
    assert held["updated_at"] > created_at
    outcome = consumer.verify(world.new_key, written_at=stored_in_vault_at)
    assert (outcome.ok, outcome.method) == (True, "write-only: updated_at")
    assert "not before the key was stored" in outcome.detail


def test_verify_fails_when_the_variable_predates_the_key_or_is_missing(world: World) -> None:
    consumer = world.consumer()
    missing = consumer.verify(world.new_key, written_at=time.time())
    assert (missing.ok, f"{VARIABLE} is not set" in missing.detail) == (False, True)

    world.circleci.set_context_variable(world.context_id, VARIABLE, world.old_key)
    stale = consumer.verify(world.new_key, written_at=time.time() + 60)  # the key was stored after the last write
    assert not stale.ok
    assert "before the key was stored" in stale.detail


def test_context_by_name_follows_pagination(make_world: Any) -> None:
    world = make_world(page_size=1)
    target = [world.circleci.add_context(OWNER, name) for name in ("alpha", "beta", "gamma")][-1]
    for name in ("A_VAR", "B_VAR", "C_VAR"):
        world.circleci.set_context_variable(target, name, "v")
    stored_in_vault_at = time.time()

    by_slug = world.consumer(context={"owner_slug": OWNER, "name": "gamma"})
    by_slug.write(world.new_key)
    assert world.circleci.context_variable(target, VARIABLE)["value"] == world.new_key  # type: ignore[index]
    assert world.requests_to("list_contexts") == 4  # kosli, alpha, beta, gamma: one per page
    assert by_slug.verify(world.new_key, written_at=stored_in_vault_at).ok  # the variable is on the 4th page
    assert world.requests_to("list_context_variables") == 4

    by_id = world.consumer(context={"owner_id": world.org_id, "name": "kosli"})
    by_id.check_access()

    with pytest.raises(ConsumerError, match="no context named 'missing'") as missing:
        world.consumer(context={"owner_slug": OWNER, "name": "missing"}).write(world.new_key)
    assert missing.value.retryable is False


# -- project variables -----------------------------------------------------------------------------------


def test_project_variable_create_replace_and_masked_check(world: World) -> None:
    consumer = world.consumer(project_slug=APP)
    consumer.check_access()
    consumer.write(world.old_key)
    consumer.write(world.new_key)  # POST again replaces the value

    assert world.in_project()["value"] == world.new_key  # type: ignore[index]
    assert world.requests_to("create_project_variable") == 2
    outcome = consumer.verify(world.new_key, written_at=0)
    assert (outcome.ok, outcome.method) == (True, "write-only: masked last 4 characters")
    assert "weak check" in outcome.detail
    assert world.new_key[-4:] not in outcome.detail

    world.circleci.set_project_variable(APP, VARIABLE, world.old_key)
    assert not consumer.verify(world.new_key, written_at=0).ok
    assert not world.consumer(project_slug="gh/acme/app").verify(WRONG_KEY, written_at=0).ok


# -- canary ----------------------------------------------------------------------------------------------


def test_canary_pipeline_succeeds_with_the_new_key(world: World) -> None:
    stored_in_vault_at = time.time()
    world.circleci.set_context_variable(world.context_id, VARIABLE, world.old_key)
    canary = {"project_slug": APP, "branch": "release", "parameters": {"reason": "rotation", "dry_run": False}}
    consumer = world.consumer(canary=canary)

    consumer.write(world.new_key)
    outcome = consumer.verify(world.new_key, written_at=stored_in_vault_at)

    assert outcome.ok, outcome.detail
    assert outcome.method == "write-only: updated_at + canary pipeline"
    assert f"canary pipeline {APP} #1: kosli-canary success" in outcome.detail
    pipelines = world.circleci.pipelines(APP)
    assert [(p["branch"], p["parameters"], p["workflows"][0]["status"]) for p in pipelines] == [
        ("release", {"reason": "rotation", "dry_run": False}, "success")
    ]


def test_canary_pipeline_fails_when_the_stored_secret_is_wrong(world: World) -> None:
    stored_in_vault_at = time.time()
    consumer = world.consumer(canary={"project_slug": APP})

    consumer.write(WRONG_KEY)
    outcome = consumer.verify(world.new_key, written_at=stored_in_vault_at)

    assert not outcome.ok
    assert "kosli-canary failed" in outcome.detail
    assert "HTTP 401" in world.circleci.pipelines(APP)[0]["workflows"][0]["log"][0]


def test_canary_with_project_variable(world: World) -> None:
    world.circleci.add_project("gh/acme/service")  # its canary reads the project's own variable
    consumer = world.consumer(project_slug="gh/acme/service", canary={"project_slug": "gh/acme/service"})
    consumer.write(world.new_key)
    assert consumer.verify(world.new_key, written_at=0).ok


def test_canary_that_does_not_finish_in_time_fails_verification(make_world: Any) -> None:
    world = make_world(canary_seconds=1.5)
    consumer = world.consumer(canary={"project_slug": APP}, canary_timeout_seconds=0.5)
    consumer.write(world.new_key)

    outcome = consumer.verify(world.new_key, written_at=0)

    assert not outcome.ok
    assert "did not finish within 0.5 s" in outcome.detail


# -- access and credential errors ------------------------------------------------------------------------


def test_member_without_admin_is_refused_at_once(world: World) -> None:
    world.connect(world.circleci.add_user("dev", {OWNER: "member"}))
    world.circleci.reset_stats()

    with pytest.raises(ConsumerError, match="HTTP 403: Permission denied") as raised:
        world.consumer().write(world.new_key)

    assert raised.value.retryable is False
    assert world.circleci.stats()["total_requests"] == 1
    assert world.in_context() is None


def test_targets_of_another_org_are_not_found(world: World) -> None:
    world.circleci.add_org("gh/globex")
    world.circleci.add_project("gh/globex/secret-app")
    other_context = world.circleci.add_context("gh/globex", "kosli")
    for consumer in (world.consumer(project_slug="gh/globex/secret-app"), world.consumer(context_id=other_context)):
        with pytest.raises(ConsumerError, match="HTTP 404") as raised:
            consumer.check_access()
        assert raised.value.retryable is False
    with pytest.raises(ConsumerError, match="see canary project gh/acme/ghost"):
        world.consumer(canary={"project_slug": "gh/acme/ghost"}).check_access()


@pytest.mark.parametrize(
    ("connection", "complaint"),
    [
        ({"login": "someone"}, "no login"),
        ({"password": ""}, "personal API token as password"),
    ],
)
def test_connection_mistakes_are_explained(world: World, connection: dict[str, Any], complaint: str) -> None:
    world.connect(world.admin, **connection)
    with pytest.raises(ConsumerError, match=complaint) as raised:
        world.consumer().check_access()
    assert raised.value.retryable is False


def test_missing_connection_is_explained(world: World) -> None:
    with pytest.raises(ConsumerError, match="'circleci_other' is not defined") as raised:
        world.consumer(conn_id="circleci_other").check_access()
    assert raised.value.retryable is False


def test_an_unreadable_connection_is_not_called_undefined(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A secrets backend that cannot be loaded is reported as such, retryable: not as a connection to create."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    for section in ("SECRETS__BACKEND", "WORKERS__SECRETS_BACKEND"):
        monkeypatch.setenv(f"AIRFLOW__{section}", "nowhere.MissingBackend")
    clear_secrets_backends_cache()
    try:
        with pytest.raises(ConsumerError, match="cannot read Airflow connection 'circleci_default'") as raised:
            world.consumer().check_access()
    finally:
        clear_secrets_backends_cache()
    assert "secrets_backend" in str(raised.value) and "not defined" not in str(raised.value)
    assert raised.value.retryable is True


# -- transient failures ----------------------------------------------------------------------------------


def test_rate_limited_then_recovers(make_world: Any) -> None:
    world = make_world(rate_limit=2, rate_limit_window=1.0)
    stored_in_vault_at = time.time()
    consumer = world.consumer(context={"owner_slug": OWNER, "name": "kosli"})

    consumer.write(world.new_key)  # list contexts, PUT
    assert consumer.verify(world.new_key, written_at=stored_in_vault_at).ok  # the listing waits for the window

    assert world.in_context()["value"] == world.new_key  # type: ignore[index]
    assert world.circleci.stats()["rate_limited"] >= 1


def test_rate_limit_reset_header_is_honoured_without_retry_after(world: World) -> None:
    reset = str(int(time.time()) + 1)
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    world.circleci.faults.add(r"/environment-variable/", method="PUT", status=429, headers=headers, times=1)

    world.consumer().write(world.new_key)

    assert world.in_context()["value"] == world.new_key  # type: ignore[index]
    assert world.circleci.stats()["faults_fired"] == 1


def test_server_errors_then_recovers(world: World) -> None:
    world.circleci.faults.add(r"/environment-variable/", method="PUT", status=502, times=1)

    world.consumer().write(world.new_key)

    assert world.in_context()["value"] == world.new_key  # type: ignore[index]
    assert world.circleci.stats()["faults_fired"] == 1


def test_the_key_never_reaches_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    stored_in_vault_at = time.time()
    consumer = world.consumer(canary={"project_slug": APP})
    consumer.write(world.new_key)
    assert consumer.verify(world.new_key, written_at=stored_in_vault_at).ok
    assert f"Set CircleCI variable {VARIABLE} in context {world.context_id}" in caplog.text
    assert world.new_key not in caplog.text
    assert world.admin not in caplog.text
