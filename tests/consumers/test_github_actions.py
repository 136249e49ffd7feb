"""The github_actions consumer's quirks, against the GitHub sandbox (and the Kosli sandbox for canary runs):
sealed boxes and a public key rotated between GET and PUT, verification by ``updated_at``, environment and
organization secrets, secondary rate limits sent as 403, canary workflows, the App installation token.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Outcomes are read through the sandbox's own view: it decrypts the sealed boxes with the scope's private key,
which GitHub's API never allows, so nothing here trusts the consumer's own reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pydantic import ValidationError

from kosli_rotation.consumers import github_actions, transport
from kosli_rotation.consumers.github_actions import GithubActionsConfig, GithubActionsConsumer
from kosli_rotation.errors import ConsumerError
from sandbox.github import GitHubSandbox
from sandbox.kosli import KosliSandbox
from sandbox.secret_scan import find_secrets_in_text
from tests.support.client_logs import (
    configure_airflow_at_debug,
    everything_logged,
    held_by_the_masker,
    log_everything_at_debug,
)

ADMIN = "ghp_admin_of_acme"
READER = "ghp_reads_acme_app"
OUTSIDER = "ghp_no_grants"
OLD = "kosli-old-key-value"
SECRET = "KOSLI_API_TOKEN"


class World:
    """Kosli (org acme with a working key) and GitHub (org acme, repos, environment, canary workflows)."""

    def __init__(self, github: GitHubSandbox, kosli: KosliSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.github = github
        self.kosli = kosli
        self.monkeypatch = monkeypatch
        self.key = kosli.create_key("acme", "ci-bot", "new key")[1]  # a key Kosli accepts
        self.connect(ADMIN)

    def connect(self, token: str) -> None:
        connection = {"conn_type": "github", "password": token, "host": self.github.url}
        self.monkeypatch.setenv("AIRFLOW_CONN_GITHUB_DEFAULT", json.dumps(connection))

    def consumer(self, **config: Any) -> GithubActionsConsumer:
        config = {"name": "gh-app", "kind": "github_actions", **config}
        if "organization" not in config:
            config.setdefault("repository", "acme/app")
        return GithubActionsConsumer(GithubActionsConfig(**config))

    def writes(self) -> int:
        return self.github.stats()["requests"].get("put_secret", 0)


@pytest.fixture(autouse=True)
def unspaced_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyGithub's politeness delays (0.25 s per request, 1 s per write) only slow a local sandbox down."""
    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_REQUESTS", 0.0)
    monkeypatch.setattr(github_actions, "SECONDS_BETWEEN_WRITES", 0.0)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with KosliSandbox() as kosli:
        kosli.seed("acme", service_accounts={"ci-bot": {"privilege": "member"}})
        with GitHubSandbox(kosli_url=kosli.url, kosli_org="acme", run_seconds=0.3) as github:
            github.seed_document(
                {
                    "orgs": {"acme": {}},
                    "repos": {
                        "acme/app": {
                            "environments": ["production"],
                            "workflows": [
                                {"file": "canary.yml"},
                                {"file": "prod-canary.yml", "environment": "production"},
                            ],
                        },
                        "acme/tools": {},
                        "acme/site": {},
                    },
                    "tokens": {
                        ADMIN: {"orgs": {"acme": "admin"}},
                        READER: {"repos": {"acme/app": "read"}},
                        OUTSIDER: {},
                    },
                }
            )
            yield World(github, kosli, monkeypatch)
            github.wait_for_runs()


# -- repository secrets: update, verify by metadata, naming ------------------------------------------------


def test_updates_an_existing_secret_and_leaves_the_others(world: World) -> None:
    world.github.set_secret("acme/app", SECRET, OLD, updated_at=time.time() - 86400)
    world.github.set_secret("acme/app", "OTHER_TOKEN", "unrelated")
    created_at = world.github.secret_metadata("acme/app", SECRET)["created_at"]

    written_at = time.time()
    world.consumer().write(world.key)

    assert world.github.secret_value("acme/app", SECRET) == world.key
    assert world.github.secret_value("acme/app", "OTHER_TOKEN") == "unrelated"
    metadata = world.github.secret_metadata("acme/app", SECRET)
    assert metadata["created_at"] == created_at
    assert metadata["updated_at_epoch"] >= written_at
    outcome = world.consumer().verify(world.key, written_at)  # write-only: proven by the secret's updated_at
    assert outcome.ok and outcome.method == "metadata"
    assert outcome.detail.startswith("updated_at 20")


def test_verify_fails_when_the_secret_was_not_written_after_the_key_was_stored(world: World) -> None:
    consumer = world.consumer()
    missing = consumer.verify(world.key, time.time())
    assert not missing.ok and f"no secret {SECRET}" in missing.detail

    world.github.set_secret("acme/app", SECRET, OLD, updated_at=time.time() - 3600)
    stale = consumer.verify(world.key, written_at=time.time())
    assert not stale.ok and "before the key was stored" in stale.detail


def test_secret_name_is_configurable_and_stored_upper_case(world: World) -> None:
    world.consumer(secret_name="kosli_token").write(world.key)
    assert world.github.secret_value("acme/app", "KOSLI_TOKEN") == world.key
    assert world.github.secret_value("acme/app", SECRET) is None


def test_describe_names_the_target_and_never_the_key(world: World) -> None:
    consumer = world.consumer(environment="production")
    consumer.write(world.key)
    description = consumer.describe()
    assert description == (
        "GitHub Actions secret KOSLI_API_TOKEN of environment 'production' of repository acme/app "
        "(connection github_default)"
    )
    assert world.key not in description


def test_the_key_never_reaches_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    consumer = world.consumer(canary={"workflow": "canary.yml"})
    consumer.write(world.key)
    consumer.verify(world.key, time.time() - 1)
    assert caplog.records and world.key not in caplog.text


@pytest.fixture
def airflow_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_airflow_at_debug(monkeypatch)


def test_a_github_app_installation_token_is_held_and_never_logged_at_debug(
    airflow_at_debug: None, world: World, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A deployment at DEBUG, PyGithub's own logger too (it sets itself to INFO at import; a logging config or
    ``github.enable_console_debug_logging()`` lowers it): PyGithub would log the access_tokens answer."""
    app = world.github.add_app(orgs={"acme": "admin"})
    extra = {"app_id": app["app_id"], "installation_id": app["installation_id"], "private_key": app["private_key"]}
    connection = {"conn_type": "github", "host": world.github.url, "extra": extra}
    world.monkeypatch.setenv("AIRFLOW_CONN_GITHUB_DEFAULT", json.dumps(connection))
    log_everything_at_debug(caplog)
    import github  # noqa: F401  (first import sets the "github" logger to INFO)

    caplog.set_level(logging.DEBUG, logger="github")

    consumer = world.consumer(canary={"workflow": "canary.yml"})
    consumer.write(world.key)
    assert consumer.verify(world.key, time.time() - 1).ok
    assert world.github.secret_value("acme/app", SECRET) == world.key

    tokens = world.github.installation_tokens()
    assert tokens, "the consumer authenticated as the App installation"
    logged = everything_logged(caplog, capfd)
    assert "GitHub Actions secret" in logged, "the consumer's own lines are captured"
    assert not find_secrets_in_text(logged, tokens), "an installation token was logged"
    assert not find_secrets_in_text(logged, [world.key]), "the key written was logged"
    assert all(held_by_the_masker(token) for token in tokens), "installation tokens are held for the masker"


def test_the_connection_token_is_held_for_the_masker(world: World) -> None:
    world.consumer().check_access()
    assert held_by_the_masker(ADMIN)


# -- environment and organization secrets ----------------------------------------------------------------


def test_environment_secret_goes_to_the_environment_only(world: World) -> None:
    world.github.set_secret("acme/app", SECRET, OLD)
    consumer = world.consumer(environment="production")
    consumer.check_access()
    written_at = time.time()
    consumer.write(world.key)

    assert world.github.secret_value("acme/app", SECRET, environment="production") == world.key
    assert world.github.secret_value("acme/app", SECRET) == OLD
    assert consumer.verify(world.key, written_at).ok


def test_missing_environment_is_a_clear_refusal(world: World) -> None:
    with pytest.raises(ConsumerError) as raised:
        world.consumer(environment="staging").check_access()
    assert not raised.value.retryable
    assert "environment 'staging' of repository acme/app" in str(raised.value)


def test_new_organization_secret_is_private_by_default(world: World) -> None:
    consumer = world.consumer(organization="acme")
    consumer.check_access()
    written_at = time.time()
    consumer.write(world.key)

    assert world.github.secret_value("acme", SECRET) == world.key
    metadata = world.github.secret_metadata("acme", SECRET)
    assert (metadata["visibility"], metadata["selected_repositories"]) == ("private", [])
    assert consumer.verify(world.key, written_at).ok


def test_new_organization_secret_gets_the_configured_repositories(world: World) -> None:
    world.consumer(organization="acme", selected_repositories=["app", "acme/tools"]).write(world.key)
    metadata = world.github.secret_metadata("acme", SECRET)
    assert metadata["visibility"] == "selected"
    assert metadata["selected_repositories"] == ["acme/app", "acme/tools"]


def test_organization_secret_update_keeps_visibility_and_selected_repositories(world: World) -> None:
    world.github.set_secret("acme", SECRET, OLD, visibility="selected", selected_repositories=["app", "site"])
    # The inventory's visibility only applies to a new secret: an existing one keeps what its owners chose.
    world.consumer(organization="acme", visibility="all").write(world.key)

    assert world.github.secret_value("acme", SECRET) == world.key
    metadata = world.github.secret_metadata("acme", SECRET)
    assert metadata["visibility"] == "selected"
    assert metadata["selected_repositories"] == ["acme/app", "acme/site"]


def test_organization_secret_update_keeps_visibility_all(world: World) -> None:
    world.github.set_secret("acme", SECRET, OLD, visibility="all")
    world.consumer(organization="acme").write(world.key)
    assert world.github.secret_metadata("acme", SECRET)["visibility"] == "all"
    assert world.github.secret_value("acme", SECRET) == world.key


# -- refusals: no retry storm, messages that say what to fix ------------------------------------------------


def test_private_repository_the_token_cannot_see_is_a_404_refusal(world: World) -> None:
    world.connect(OUTSIDER)
    with pytest.raises(ConsumerError) as raised:
        world.consumer().check_access()
    assert not raised.value.retryable
    assert "404" in str(raised.value) and "repository acme/app" in str(raised.value)
    assert "github_default" in str(raised.value)
    assert world.github.stats()["total_requests"] == 1


def test_read_only_token_is_a_403_refusal(world: World) -> None:
    world.connect(READER)
    with pytest.raises(ConsumerError) as raised:
        world.consumer().check_access()
    assert not raised.value.retryable
    assert "403" in str(raised.value) and "Secrets write" in str(raised.value)
    assert world.github.stats()["total_requests"] == 1  # the refused public key: no repository lookup first


def test_organization_secret_needs_an_org_admin_token(world: World) -> None:
    world.github.add_token("ghp_member", orgs={"acme": "member"})
    world.connect("ghp_member")
    with pytest.raises(ConsumerError) as raised:
        world.consumer(organization="acme").write(world.key)
    assert not raised.value.retryable and "403" in str(raised.value) and "organization acme" in str(raised.value)
    assert world.github.secret_value("acme", SECRET) is None


def test_undefined_connection_is_a_clear_error(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConsumerError) as raised:
        world.consumer(conn_id="github_ci").check_access()
    assert not raised.value.retryable
    assert "'github_ci' is not defined" in str(raised.value) and "AIRFLOW_CONN_GITHUB_CI" in str(raised.value)


def test_a_connection_variable_airflow_cannot_read_is_named_not_called_undefined(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider hook reports both as not found; the shared lookup tells them apart."""
    monkeypatch.setenv("AIRFLOW_CONN_GITHUB_CI", "{not json")
    with pytest.raises(ConsumerError) as raised:
        world.consumer(conn_id="github_ci").check_access()
    assert not raised.value.retryable
    assert "is set in AIRFLOW_CONN_GITHUB_CI, but Airflow cannot read it" in str(raised.value)


# -- rate limits and server errors --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 429])
def test_secondary_rate_limit_is_waited_out(world: World, status: int) -> None:
    world.github.apply_settings({"secondary_limit": 1, "secondary_window": 1.0, "secondary_status": status})
    consumer = world.consumer()
    consumer.check_access()
    # Another write by the same token fills the one-write window just before ours.
    requests.delete(f"{world.github.url}/repos/acme/app/actions/secrets/UNRELATED", headers=_auth(ADMIN), timeout=5)
    started = time.monotonic()
    consumer.write(world.key)

    assert world.github.stats()["rate_limited"] >= 1
    assert time.monotonic() - started >= 0.5  # it waited for the window instead of hammering
    assert world.github.secret_value("acme/app", SECRET) == world.key


def test_secondary_limit_without_retry_after_waits_what_github_asks(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitHub: a secondary limit without retry-after means "wait at least a minute" (shortened here)."""
    monkeypatch.setattr(github_actions, "SECONDARY_LIMIT_WAIT_SECONDS", 2.5)  # our backoff: 1 s
    settings = {"secondary_limit": 1, "secondary_window": 0.5, "secondary_status": 403, "secondary_retry_after": False}
    world.github.apply_settings(settings)
    consumer = world.consumer()
    consumer.check_access()
    requests.delete(f"{world.github.url}/repos/acme/app/actions/secrets/UNRELATED", headers=_auth(ADMIN), timeout=5)
    started = time.monotonic()
    consumer.write(world.key)

    assert world.github.stats()["rate_limited"] == 1
    assert time.monotonic() - started >= 2.4
    assert world.github.secret_value("acme/app", SECRET) == world.key


def test_primary_rate_limit_waits_for_the_reset(world: World) -> None:
    world.github.apply_settings({"primary_limit": 1, "primary_window": 1.0})
    world.consumer().write(world.key)  # GET key uses the window up; the PUT waits for the reset

    assert world.github.stats()["rate_limited"] >= 1
    assert world.github.secret_value("acme/app", SECRET) == world.key


def test_rate_limit_reset_too_far_away_is_retryable_without_waiting(world: World) -> None:
    world.github.apply_settings({"primary_limit": 1, "primary_window": 3600.0})
    started = time.monotonic()
    with pytest.raises(ConsumerError) as raised:
        world.consumer().write(world.key)
    assert raised.value.retryable and "rate limit" in str(raised.value)
    assert time.monotonic() - started < 5


def test_server_error_is_retried(world: World) -> None:
    world.github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=502, times=1)
    world.consumer().write(world.key)

    assert world.github.stats()["faults_fired"] == 1
    assert world.writes() == 2
    assert world.github.secret_value("acme/app", SECRET) == world.key


def test_persistent_server_errors_give_up_as_retryable(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "backoff_delay", lambda attempt, **_: 0.01)
    world.github.faults.add(r"/actions/secrets/public-key$", status=503, times=None)
    with pytest.raises(ConsumerError) as raised:
        world.consumer().write(world.key)
    assert raised.value.retryable and "503" in str(raised.value)
    assert world.github.stats()["faults_fired"] == transport.DEFAULT_POLICY.max_attempts


def test_not_implemented_is_final_and_not_retried(world: World) -> None:
    """501 says the server will not learn the method by the next attempt (the shared rule; this kind used to
    retry it as a 5xx)."""
    world.github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=501, times=0)
    with pytest.raises(ConsumerError) as raised:
        world.consumer().write(world.key)
    assert not raised.value.retryable and "HTTP 501" in str(raised.value)
    assert world.writes() == 1


def test_a_public_key_rotated_between_our_get_and_put_is_fetched_again_once(world: World) -> None:
    """GitHub answers 422 to a value sealed with a replaced key: this kind's own rule tries once more at once
    (422 is not transient for the shared transport)."""
    rotated: list[str] = []

    def rotate_before_the_first_put(request: Any) -> bool:
        if not rotated:
            rotated.append(world.github.rotate_public_key("acme/app"))
        return False  # never fires: the PUT is served as usual, with the key_id now stale

    world.github.faults.add(
        r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", delay=0.0, when=rotate_before_the_first_put
    )
    world.consumer().write(world.key)
    assert rotated and world.writes() == 2
    assert world.github.stats()["requests"]["get_public_key"] == 2
    assert world.github.secret_value("acme/app", SECRET) == world.key


def test_persistent_422_is_a_final_refusal(world: World) -> None:
    world.github.faults.add(r"/actions/secrets/KOSLI_API_TOKEN$", method="PUT", status=422, times=0)
    with pytest.raises(ConsumerError) as raised:
        world.consumer().write(world.key)
    assert not raised.value.retryable and "HTTP 422" in str(raised.value)
    assert world.writes() == 2


# -- canary workflows ----------------------------------------------------------------------------------------


def test_canary_run_succeeds_with_the_new_key(world: World) -> None:
    world.github.set_secret("acme/app", SECRET, OLD)
    consumer = world.consumer(canary={"workflow": "canary.yml"})
    consumer.check_access()
    written_at = time.time()
    consumer.write(world.key)
    outcome = consumer.verify(world.key, written_at)

    assert outcome.ok and outcome.method == "metadata + canary"
    assert "canary run #1 of .github/workflows/canary.yml of acme/app succeeded" in outcome.detail
    (run,) = world.github.runs("acme/app")
    assert (run["status"], run["conclusion"], run["log"]) == ("completed", "success", ["Kosli answered HTTP 200"])


def test_canary_run_fails_when_the_stored_key_does_not_work(world: World) -> None:
    consumer = world.consumer(canary={"workflow": "canary.yml"})
    written_at = time.time()
    consumer.write("a-key-kosli-never-issued")
    outcome = consumer.verify("a-key-kosli-never-issued", written_at)

    assert not outcome.ok and "concluded failure" in outcome.detail
    (run,) = world.github.runs("acme/app")
    assert run["conclusion"] == "failure" and run["log"] == ["Kosli answered HTTP 401"]


def test_canary_found_by_listing_when_the_server_returns_no_run_id(world: World) -> None:
    world.github.apply_settings({"return_run_details": False})
    consumer = world.consumer(canary={"workflow": "canary.yml"})
    written_at = time.time()
    consumer.write(world.key)
    outcome = consumer.verify(world.key, written_at)

    assert outcome.ok and "canary run #1" in outcome.detail
    assert world.github.stats()["requests"]["list_workflow_runs"] >= 1


def test_canary_in_an_environment_reads_the_environment_secret(world: World) -> None:
    world.github.set_secret("acme/app", SECRET, "repository-level-key-kosli-rejects")
    consumer = world.consumer(environment="production", canary={"workflow": "prod-canary.yml"})
    written_at = time.time()
    consumer.write(world.key)
    assert consumer.verify(world.key, written_at).ok
    (run,) = world.github.runs("acme/app")
    assert (run["workflow"], run["conclusion"]) == ("prod-canary.yml", "success")


def test_canary_for_an_organization_secret_runs_in_the_named_repository(world: World) -> None:
    consumer = world.consumer(organization="acme", canary={"workflow": "canary.yml", "repository": "acme/app"})
    written_at = time.time()
    consumer.write(world.key)
    outcome = consumer.verify(world.key, written_at)
    assert outcome.ok and "acme/app" in outcome.detail


def test_canary_that_does_not_finish_in_time_is_not_verified(world: World) -> None:
    world.github.apply_settings({"run_seconds": 1.5})
    consumer = world.consumer(canary={"workflow": "canary.yml"}, canary_timeout_seconds=0.3)
    written_at = time.time()
    consumer.write(world.key)
    outcome = consumer.verify(world.key, written_at)
    assert not outcome.ok and "run #1 still" in outcome.detail and "after 0.3s" in outcome.detail


def test_missing_canary_workflow_fails_the_access_check(world: World) -> None:
    with pytest.raises(ConsumerError) as raised:
        world.consumer(canary={"workflow": "nope.yml"}).check_access()
    assert not raised.value.retryable and "workflow nope.yml of repository acme/app" in str(raised.value)


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"secret_name": "GITHUB_TOKEN"}, "must not start with GITHUB_"),
        ({"secret_name": "1TOKEN"}, "must not start with a digit"),
        ({"secret_name": "KOSLI-TOKEN"}, "letters, digits and underscores"),
        ({"repository": "acme"}, "write it as owner/name"),
        ({"repository": "acme/app", "organization": "acme"}, "exactly one target"),
        ({"repository": None}, "exactly one target"),
        ({"repository": None, "organization": "acme", "environment": "prod"}, "environment needs the repository"),
        ({"visibility": "all"}, "only apply to organization secrets"),
        (
            {"repository": None, "organization": "acme", "visibility": "all", "selected_repositories": ["x"]},
            "needs visibility 'selected'",
        ),
        (
            {"repository": None, "organization": "acme", "selected_repositories": ["other/x"]},
            "not in organization acme",
        ),
        ({"repository": None, "organization": "acme", "canary": {"workflow": "c.yml"}}, "needs canary.repository"),
        ({"canary": {"workflow": ".github/workflows/c.yml"}}, "workflow file name"),
        ({"canary": {"workflow": "c.yml", "when": "now"}}, "Extra inputs"),
    ],
)
def test_config_errors_say_what_is_wrong(config: dict[str, Any], message: str) -> None:
    entry = {"name": "gh", "kind": "github_actions", "repository": "acme/app", **config}
    with pytest.raises(ValidationError, match=message):
        GithubActionsConfig(**entry)


def test_config_defaults() -> None:
    config = GithubActionsConfig(name="gh", kind="github_actions", repository="acme/app", canary={"workflow": 42})
    assert (config.conn_id, config.secret_name, config.canary_timeout_seconds) == (
        "github_default",
        SECRET,
        600.0,
    )
    assert config.canary is not None and (config.canary.workflow, config.canary.ref) == ("42", "main")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
