"""The gitlab_ci consumer's quirks (python-gitlab) against the GitLab sandbox, checked through the sandbox's stored
values: variable flags (masked, raw, protected, hidden), environment scopes, group variables, roles and scopes
GitLab refuses, the lost creation race, GitLab's rate-limit headers and python-gitlab's own retries.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from kosli_rotation.consumers import gitlab_ci, transport
from kosli_rotation.consumers.gitlab_ci import GitLabCiConfig, GitLabCiConsumer
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import fingerprint
from sandbox.gitlab import GitLabSandbox
from tests.support.client_logs import held_by_the_masker

PROJECT = "acme/platform/app"
GROUP = "acme"
VARIABLE = "KOSLI_API_TOKEN"
KEY = "kosli_new_" + "K" * 40
OLD_KEY = "kosli_old_" + "O" * 40
WRITE_HANDLERS = ("create_variable", "update_variable")


class GitLab:
    """The started sandbox (project acme/platform/app in group acme), its tokens, and the Airflow connection."""

    def __init__(self, server: GitLabSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = server
        self.monkeypatch = monkeypatch
        server.add_project(PROJECT)
        server.add_project("acme/secret-stuff")
        self.maintainer = server.add_token({PROJECT: "maintainer"}, name="rotator")
        self.developer = server.add_token({PROJECT: "developer"}, name="dev")
        self.group_owner = server.add_token({GROUP: "owner"}, name="owner")
        self.group_maintainer = server.add_token({GROUP: "maintainer"}, name="group-maintainer")
        self.read_only = server.add_token({PROJECT: "maintainer"}, name="reader", scopes=["read_api"])
        self.connect(self.maintainer)

    def connect(self, token: str, conn_id: str = "gitlab_default", **fields: Any) -> None:
        connection = {"conn_type": "http", "host": self.server.url, "password": token, **fields}
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))

    def consumer(self, **config: Any) -> GitLabCiConsumer:
        config = {"name": "gitlab-ci", "kind": "gitlab_ci", **config}
        if "group" not in config:
            config.setdefault("project", PROJECT)
        return GitLabCiConsumer(GitLabCiConfig(**config))

    def stored(self, scope: str = "*", **owner: Any) -> dict[str, Any] | None:
        return self.server.variable(VARIABLE, environment_scope=scope, **(owner or {"project": PROJECT}))

    def writes(self) -> int:
        return self.server.stats()["variable_writes"]

    def requests(self, handler: str | None = None) -> int:
        stats = self.server.stats()
        return stats["requests"].get(handler, 0) if handler else stats["total_requests"]


@pytest.fixture
def gl(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitLab]:
    with GitLabSandbox() as server:
        yield GitLab(server, monkeypatch)


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without a server hint lasts 10 ms, so exhausting the retry budget stays fast."""
    monkeypatch.setattr(transport, "backoff_delay", lambda attempt, **_: 0.01)


# -- create and update: flags and scopes -------------------------------------------------------------------


def test_creates_a_missing_variable_with_the_configured_flags(gl: GitLab) -> None:
    consumer = gl.consumer()
    consumer.check_access()
    assert not consumer.holds(KEY)
    consumer.write(KEY)
    stored = gl.stored()
    assert stored is not None
    assert stored["value"] == KEY
    assert {name: stored[name] for name in ("variable_type", "masked", "protected", "raw", "hidden")} == {
        "variable_type": "env_var",
        "masked": True,
        "protected": False,
        "raw": True,
        "hidden": False,
    }
    assert (gl.requests("update_variable"), gl.requests("create_variable"), gl.writes()) == (1, 1, 1)
    assert consumer.verify(KEY, written_at=time.time()).ok


def test_updates_in_place_and_keeps_the_existing_flags(gl: GitLab) -> None:
    gl.server.set_variable(
        VARIABLE, OLD_KEY, project=PROJECT, masked=False, protected=True, raw=False, description="set by hand"
    )
    consumer = gl.consumer(masked=True, protected=False, raw=True)  # creation-only flags: ignored on update
    assert not consumer.holds(KEY)
    consumer.write(KEY)
    stored = gl.stored()
    assert stored == {
        "variable_type": "env_var",
        "key": VARIABLE,
        "value": KEY,
        "hidden": False,
        "protected": True,
        "masked": False,
        "raw": False,
        "environment_scope": "*",
        "description": "set by hand",
    }
    assert (gl.requests("create_variable"), gl.writes()) == (0, 1)


def test_writes_only_the_configured_environment_scope(gl: GitLab) -> None:
    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT)
    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT, environment_scope="production")
    gl.consumer(environment_scope="production").write(KEY)
    assert gl.server.stored_value(VARIABLE, project=PROJECT, environment_scope="production") == KEY
    assert gl.server.stored_value(VARIABLE, project=PROJECT, environment_scope="*") == OLD_KEY

    gl.consumer(environment_scope="staging").write(KEY)  # absent in that scope: created beside the others
    assert gl.server.stored_value(VARIABLE, project=PROJECT, environment_scope="staging") == KEY


def test_group_variable(gl: GitLab) -> None:
    gl.connect(gl.group_owner)
    consumer = gl.consumer(group=GROUP)
    consumer.check_access()
    consumer.write(KEY)
    assert gl.server.stored_value(VARIABLE, group=GROUP) == KEY
    assert consumer.verify(KEY, written_at=time.time()).ok

    gl.connect(gl.group_maintainer)  # group variables need the Owner role
    with pytest.raises(ConsumerError, match="Owner role on group acme") as refused:
        gl.consumer(group=GROUP).check_access()
    assert refused.value.retryable is False


def test_project_by_numeric_id(gl: GitLab) -> None:
    project_id = gl.server.add_project(PROJECT)  # existing: returns its id
    gl.consumer(project=str(project_id)).write(KEY)
    assert gl.stored()["value"] == KEY


# -- verification ------------------------------------------------------------------------------------------


def test_verify_reports_a_different_or_missing_value_without_revealing_it(gl: GitLab) -> None:
    consumer = gl.consumer()
    missing = consumer.verify(KEY, written_at=time.time())
    assert (missing.ok, missing.method) == (False, "read back")
    assert "does not exist" in missing.detail

    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT)
    outcome = consumer.verify(KEY, written_at=time.time())
    assert (outcome.ok, outcome.method) == (False, "read back")
    assert fingerprint(OLD_KEY) in outcome.detail and fingerprint(KEY) in outcome.detail
    assert OLD_KEY not in outcome.detail and KEY not in outcome.detail

    consumer.write(KEY)
    verified = consumer.verify(KEY, written_at=time.time())
    assert verified.ok and verified.detail.endswith(f"holds {fingerprint(KEY)}")


def test_hidden_variable_is_rewritten_and_verified_by_acknowledgement(gl: GitLab) -> None:
    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT, masked=True, hidden=True, protected=True)
    consumer = gl.consumer()
    consumer.check_access()
    assert consumer.read_digest() is None  # GitLab returns no value for it
    for _ in range(2):  # like a write-only store, every run writes again
        if not consumer.holds(KEY):
            consumer.write(KEY)
    assert gl.writes() == 2
    stored = gl.stored()
    assert (stored["value"], stored["hidden"], stored["masked"], stored["protected"]) == (KEY, True, True, True)

    outcome = consumer.verify(KEY, written_at=time.time())
    assert (outcome.ok, outcome.method) == (True, "write acknowledged")
    assert "cannot be read back" in outcome.detail and "HTTP 200" in outcome.detail
    assert fingerprint(KEY) in outcome.detail and KEY not in outcome.detail
    assert gl.writes() == 3  # the acknowledgement came from an idempotent re-write of the same value
    assert gl.stored()["value"] == KEY


def test_hidden_flag_creates_a_masked_and_hidden_variable(gl: GitLab) -> None:
    gl.consumer(hidden=True).write(KEY)
    stored = gl.stored()
    assert (stored["value"], stored["hidden"], stored["masked"]) == (KEY, True, True)


def test_verify_of_a_hidden_variable_fails_when_gitlab_answers_for_another_scope(gl: GitLab) -> None:
    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT, environment_scope="production", hidden=True)
    other_scope = {"key": VARIABLE, "value": None, "hidden": True, "environment_scope": "*"}
    gl.server.faults.add(r"/variables/KOSLI_API_TOKEN$", method="PUT", status=200, body=other_scope)
    outcome = gl.consumer(environment_scope="production").verify(KEY, written_at=time.time())
    assert (outcome.ok, outcome.method) == (False, "write acknowledged")
    assert "ignores filter[environment_scope]" in outcome.detail


# -- refusals: no retries, clear messages ------------------------------------------------------------------


def test_the_connection_token_is_held_for_the_masker(gl: GitLab) -> None:
    gl.consumer().check_access()
    assert held_by_the_masker(gl.maintainer)


def test_developer_role_is_refused_with_the_role_to_grant(gl: GitLab) -> None:
    gl.connect(gl.developer)
    with pytest.raises(ConsumerError, match="Maintainer role on project acme/platform/app") as refused:
        gl.consumer().check_access()
    assert refused.value.retryable is False
    assert gl.requests() == 1


def test_invisible_or_unknown_project_is_a_404_that_says_what_to_check(gl: GitLab) -> None:
    for project in ("acme/secret-stuff", "acme/nope"):
        with pytest.raises(ConsumerError, match="was not found") as refused:
            gl.consumer(project=project).check_access()
        assert refused.value.retryable is False
        assert "404 Project Not Found" in str(refused.value)


def test_token_without_api_scope_is_refused_before_writing(gl: GitLab) -> None:
    gl.connect(gl.read_only)
    with pytest.raises(ConsumerError, match=r"scopes \['read_api'\].*needs the api scope") as refused:
        gl.consumer().check_access()
    assert refused.value.retryable is False


def test_missing_connection_or_token(gl: GitLab) -> None:
    with pytest.raises(ConsumerError, match="'gitlab_elsewhere' is not defined") as undefined:
        gl.consumer(conn_id="gitlab_elsewhere").check_access()
    assert undefined.value.retryable is False
    gl.connect("", conn_id="gitlab_empty")
    with pytest.raises(ConsumerError, match="'gitlab_empty' has no password"):
        gl.consumer(conn_id="gitlab_empty").write(KEY)


def test_a_connection_variable_airflow_cannot_read_is_named_not_called_undefined(gl: GitLab) -> None:
    gl.monkeypatch.setenv("AIRFLOW_CONN_GITLAB_BROKEN", "{not json")
    with pytest.raises(ConsumerError, match="is set in AIRFLOW_CONN_GITLAB_BROKEN, but Airflow cannot read") as raised:
        gl.consumer(conn_id="gitlab_broken").check_access()
    assert raised.value.retryable is False


def test_unmaskable_value_is_refused_without_echoing_it(gl: GitLab) -> None:
    bad_key = "has spaces in it"
    with pytest.raises(ConsumerError, match="masked variable needs") as refused:
        gl.consumer().write(bad_key)
    assert refused.value.retryable is False
    assert bad_key not in str(refused.value)
    assert gl.stored() is None


def test_the_key_is_never_logged(gl: GitLab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    consumer = gl.consumer()
    consumer.check_access()
    consumer.write(KEY)
    consumer.verify(KEY, written_at=time.time())
    assert KEY not in caplog.text
    assert f"Created GitLab CI/CD variable {VARIABLE}" in caplog.text and fingerprint(KEY) in caplog.text


# -- races, rate limits, 5xx -------------------------------------------------------------------------------


def test_lost_creation_race_updates_instead(gl: GitLab) -> None:
    gl.server.set_variable(VARIABLE, OLD_KEY, project=PROJECT)
    # The variable "appears" between our PUT (404) and our POST (400 already taken), as with a concurrent creator.
    gl.server.faults.add(
        r"/variables/KOSLI_API_TOKEN$", method="PUT", status=404, body={"message": "404 Variable Not Found"}
    )
    gl.consumer().write(KEY)
    assert gl.stored()["value"] == KEY
    assert (gl.requests("update_variable"), gl.requests("create_variable")) == (2, 1)


def test_rate_limited_then_recovering(gl: GitLab) -> None:
    gl.server.apply_settings({"rate_limit": 2, "rate_limit_window": 1.0})
    started = time.monotonic()
    consumer = gl.consumer()
    consumer.check_access()  # three requests: the third waits for the next window
    consumer.write(KEY)
    assert consumer.verify(KEY, written_at=time.time()).ok
    assert gl.stored()["value"] == KEY
    assert gl.server.stats()["rate_limited"] >= 1
    assert time.monotonic() - started < 15


def test_server_errors_then_recovering(gl: GitLab) -> None:
    rule = gl.server.faults.add(r"/variables", method="PUT", status=502, times=1)
    gl.server.faults.add(r"/variables", method="POST", status=503, headers={"Retry-After": "0"}, times=1)
    gl.consumer().write(KEY)
    assert rule.fired == 1
    assert gl.server.stats()["faults_fired"] == 2
    assert gl.stored()["value"] == KEY


def test_persistent_rate_limit_gives_up_after_our_budget_not_the_library_s(gl: GitLab) -> None:
    """python-gitlab would retry a 429 ten times per call, sleeping any Retry-After; only our loop may retry."""
    gl.server.faults.add(r"/variables", method="PUT", status=429, headers={"Retry-After": "0"}, times=None)
    with pytest.raises(ConsumerError, match="HTTP 429") as gave_up:
        gl.consumer().write(KEY)
    assert gave_up.value.retryable is True
    assert gl.requests("update_variable") == transport.DEFAULT_POLICY.max_attempts


def test_unreachable_gitlab_gives_up_as_retryable(gl: GitLab, quick_backoff: None) -> None:
    gl.monkeypatch.setenv(
        "AIRFLOW_CONN_GITLAB_DEFAULT", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9", "password": "t"})
    )
    with pytest.raises(ConsumerError, match=r"GitLab at http://127\.0\.0\.1:9 did not answer") as gave_up:
        gl.consumer().check_access()
    assert gave_up.value.retryable is True


def test_a_wait_longer_than_a_minute_fails_at_once_as_retryable(gl: GitLab) -> None:
    """The shared policy: a server asking for more than a minute is not waited for inside the task (this kind used
    to wait a capped minute and try again; Airflow's own task retry comes back later instead)."""
    gl.server.faults.add(r"/variables", method="PUT", status=429, headers={"Retry-After": "3600"}, times=0)
    started = time.monotonic()
    with pytest.raises(ConsumerError, match="asks to wait 3600 s, longer than one task waits") as gave_up:
        gl.consumer().write(KEY)
    assert gave_up.value.retryable is True
    assert gl.requests("update_variable") == 1
    assert time.monotonic() - started < 5


def test_ratelimit_reset_is_waited_for_when_retry_after_is_missing(gl: GitLab) -> None:
    reset = {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(time.time()) + 2)}  # GitLab: a Unix time
    gl.server.faults.add(r"/variables", method="PUT", status=429, headers=reset, times=1)
    started = time.monotonic()
    gl.consumer().write(KEY)
    assert time.monotonic() - started >= 0.9
    assert gl.requests("update_variable") == 2 and gl.stored()["value"] == KEY


def test_retry_after_as_an_http_date_is_honoured(gl: GitLab) -> None:
    """A proxy may send Retry-After as a date; this kind used to ignore it and back off on its own."""
    when = {"Retry-After": email.utils.formatdate(time.time() + 3, usegmt=True)}
    gl.server.faults.add(r"/variables", method="PUT", status=503, headers=when, times=1)
    started = time.monotonic()
    gl.consumer().write(KEY)
    assert time.monotonic() - started >= 1.5  # our own backoff would have waited about one second
    assert gl.requests("update_variable") == 2 and gl.stored()["value"] == KEY


def test_not_implemented_is_final_and_not_retried(gl: GitLab) -> None:
    gl.server.faults.add(r"/variables", method="PUT", status=501, times=0)
    with pytest.raises(ConsumerError, match="HTTP 501") as refused:
        gl.consumer().write(KEY)
    assert refused.value.retryable is False
    assert gl.requests("update_variable") == 1


@pytest.mark.parametrize("status", [400, 422])
def test_an_answer_that_echoes_the_key_is_scrubbed(gl: GitLab, status: int) -> None:
    echo = {"message": {"value": [f"{KEY} is not what we expected"]}}
    gl.server.faults.add(r"/variables", method="PUT", status=status, body=echo, times=0)
    with pytest.raises(ConsumerError) as refused:
        gl.consumer().write(KEY)
    assert refused.value.retryable is False
    assert KEY not in str(refused.value) and "is not what we expected" in str(refused.value)


# -- configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"project": PROJECT, "group": GROUP}, "exactly one of 'project' or 'group'"),
        ({}, "exactly one of 'project' or 'group'"),
        ({"project": PROJECT, "variable": "KOSLI-TOKEN"}, "letters, digits and '_'"),
        ({"project": PROJECT, "variable": "K" * 256}, "1 to 255"),
        ({"project": "app"}, "needs its namespace"),
        ({"project": "https://gitlab.com/acme/app"}, "is a URL"),
        ({"project": "acme/app.git"}, "not a GitLab full path"),
        ({"project": "/acme/app"}, "not a GitLab full path"),
        ({"project": 0}, "positive"),
        ({"group": True}, "numeric id or a full path"),
        ({"project": PROJECT, "environment_scope": "prod;rm"}, "environment_scope"),
        ({"project": PROJECT, "hidden": True, "masked": False}, "always masked"),
    ],
)
def test_config_validation(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GitLabCiConfig(name="gitlab-ci", kind="gitlab_ci", **config)


def test_config_defaults_and_numeric_ids() -> None:
    config = GitLabCiConfig(name="gitlab-ci", kind="gitlab_ci", project="1234")
    assert (config.project, config.variable, config.environment_scope, config.conn_id) == (
        1234,
        "KOSLI_API_TOKEN",
        "*",
        "gitlab_default",
    )
    assert (config.masked, config.protected, config.raw, config.hidden) == (True, False, True, False)
    described = GitLabCiConsumer(config).describe()
    assert described == (
        "GitLab CI/CD variable KOSLI_API_TOKEN (environment scope '*') of project 1234 (connection gitlab_default)"
    )


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"host": "https://gitlab.example.com/"}, "https://gitlab.example.com"),
        ({"host": "https://gitlab.example.com/api/v4"}, "https://gitlab.example.com"),
        ({"host": "gitlab.example.com"}, "https://gitlab.example.com"),
        ({"host": "gitlab.local", "schema": "http", "port": 8080}, "http://gitlab.local:8080"),
        ({"host": "https://example.com/gitlab", "port": 8443}, "https://example.com:8443/gitlab"),
    ],
)
def test_base_url_from_the_connection(fields: dict[str, Any], url: str) -> None:
    connection = SimpleNamespace(**{"host": None, "schema": None, "port": None, **fields})
    assert gitlab_ci._base_url(connection, "gitlab_default") == url


def test_no_network_or_connection_lookup_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_GITLAB_DEFAULT", raising=False)
    consumer = GitLabCiConsumer(GitLabCiConfig(name="gitlab-ci", kind="gitlab_ci", group="acme/platform"))
    assert "group acme/platform" in consumer.describe()
