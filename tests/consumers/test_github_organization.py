"""Organization secrets: a repository or environment secret of the same name shadows one (GitHub's precedence:
environment, then repository, then organization), so verifying an organization secret fails, naming each
repository that would never see the new key; and the dry-run plan says where one organization secret with
selected repositories would replace many repository secrets.

Against the GitHub sandbox, which answers the listings as GitHub does (``tests/sandbox/test_github_sandbox.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kosli_rotation.consumers import github_actions
from kosli_rotation.consumers.github_actions import GithubActionsConfig
from kosli_rotation.consumers.github_grouping import organization_secret_savings
from kosli_rotation.errors import ConsumerError
from sandbox.github import GitHubSandbox
from sandbox.kosli import KosliSandbox
from tests.consumers.test_github_actions import ADMIN, OLD, SECRET, World, unspaced_requests  # noqa: F401 (autouse)
from tests.support.client_logs import everything_logged
from tests.support.machine_world import World as MachineWorld
from tests.support.services import OpenBao


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Org acme: private acme/app (environments production, staging), private acme/tools, public acme/site,
    and acme/lab, which no organization secret below selects."""
    with KosliSandbox() as kosli:
        kosli.seed("acme", service_accounts={"ci-bot": {"privilege": "member"}})
        with GitHubSandbox(kosli_url=kosli.url, kosli_org="acme") as github:
            github.seed_document(
                {
                    "orgs": {"acme": {}},
                    "repos": {
                        "acme/app": {"environments": ["production", "staging"]},
                        "acme/tools": {},
                        "acme/site": {"private": False},
                        "acme/lab": {"environments": ["production"]},
                    },
                    "tokens": {ADMIN: {"orgs": {"acme": "admin"}}},
                }
            )
            yield World(github, kosli, monkeypatch)


def organization_secret(world: World, visibility: str, selected: list[str] | None = None) -> None:
    world.github.set_secret("acme", SECRET, OLD, visibility=visibility, selected_repositories=selected)


def written_and_verified(world: World) -> tuple[float, github_actions.GithubActionsConsumer]:
    consumer = world.consumer(organization="acme")
    written_at = time.time()
    consumer.write(world.key)
    return written_at, consumer


def test_a_repository_or_environment_secret_of_the_same_name_fails_verification_naming_each(world: World) -> None:
    organization_secret(world, "selected", ["app", "tools", "site"])
    world.github.set_secret("acme/app", SECRET, OLD, environment="staging")
    world.github.set_secret("acme/tools", SECRET, OLD)
    world.github.set_secret("acme/site", "OTHER_TOKEN", "unrelated")  # another name shadows nothing
    world.github.set_secret("acme/lab", SECRET, OLD)  # not selected: it never saw the organization secret
    written_at, consumer = written_and_verified(world)

    with pytest.raises(ConsumerError) as raised:
        consumer.verify(world.key, written_at)

    message = str(raised.value)
    assert not raised.value.retryable
    assert "environment 'staging' of repository acme/app" in message
    assert "repository acme/tools" in message
    assert "acme/site" not in message and "acme/lab" not in message and "production" not in message
    assert "never see the new key" in message and "Delete each of those secrets" in message
    assert world.github.secret_value("acme", SECRET) == world.key  # the write itself landed


def test_without_shadowing_the_organization_secret_verifies_at_a_few_reads_per_repository(world: World) -> None:
    organization_secret(world, "selected", ["app", "tools"])
    world.github.set_secret("acme/lab", SECRET, OLD)  # not selected
    written_at, consumer = written_and_verified(world)
    world.github.reset_stats()

    verification = consumer.verify(world.key, written_at)

    assert verification.ok, verification.detail
    assert "2 repositories" in verification.detail and "no repository or environment secret" in verification.detail
    reads = world.github.stats()["requests"]
    # One listing of who sees it, then per repository its secrets and its environments, and each environment's.
    assert reads.get("list_selected_repositories") == 1
    assert reads.get("list_environments") == 2
    assert reads.get("list_secrets") == 1 + 2 + 2  # the organization's own listing (updated_at), 2 repos, 2 envs


def test_visibility_private_is_shadowed_only_in_private_repositories(world: World) -> None:
    organization_secret(world, "private")
    world.github.set_secret("acme/site", SECRET, OLD)  # public: it never sees a 'private' organization secret
    written_at, consumer = written_and_verified(world)
    assert consumer.verify(world.key, written_at).ok

    world.github.set_secret("acme/lab", SECRET, OLD, environment="production")
    with pytest.raises(ConsumerError) as raised:
        consumer.verify(world.key, written_at)
    assert "environment 'production' of repository acme/lab" in str(raised.value)
    assert "acme/site" not in str(raised.value)


def test_visibility_all_is_shadowed_in_public_repositories_too(world: World) -> None:
    organization_secret(world, "all")
    world.github.set_secret("acme/site", SECRET, OLD)
    written_at, consumer = written_and_verified(world)
    with pytest.raises(ConsumerError) as raised:
        consumer.verify(world.key, written_at)
    assert "repository acme/site" in str(raised.value)


# -- the plan: one organization secret instead of many repository secrets ------------------------------------


def config(name: str, **fields: object) -> GithubActionsConfig:
    return GithubActionsConfig(name=name, kind="github_actions", **fields)  # type: ignore[arg-type]


def test_the_plan_groups_repository_secrets_of_one_token_name_and_owner() -> None:
    configs = [
        config("a", repository="acme/app"),
        config("b", repository="Acme/tools"),
        config("c", repository="acme/site"),
        config("d", repository="acme/app", environment="production"),  # environment secrets are not grouped
        config("e", repository="other/app"),  # alone in its owner
        config("f", repository="acme/app", secret_name="OTHER"),
        config("g", repository="acme/tools", conn_id="github_second"),
        config("h", organization="acme"),
    ]
    assert organization_secret_savings(configs) == [
        {
            "organization": "acme",
            "secret_name": SECRET,
            "conn_id": "github_default",
            "repositories": ["acme/app", "Acme/tools", "acme/site"],
            "consumers": ["a", "b", "c"],
            "writes_today": 3,
            "writes_with_an_organization_secret": 1,
            "saved": 2,
        }
    ]
    assert organization_secret_savings([config("a", repository="acme/app")]) == []
    assert organization_secret_savings([]) == []


def test_a_dry_run_plan_recommends_an_organization_secret(
    openbao: OpenBao,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real preflight (OpenBao, the Kosli and GitHub sandboxes): the plan a dry run returns."""
    from kosli_rotation.inventory import KeyEntry
    from kosli_rotation.rotation import Rotation
    from kosli_rotation.run_request import RunRequest

    world = MachineWorld(openbao, tmp_path / "world").start()
    try:
        with GitHubSandbox() as github:
            github.seed_document(
                {
                    "orgs": {"acme": {}},
                    "repos": {f"acme/{name}": {} for name in ("app", "tools", "site")},
                    "tokens": {ADMIN: {"orgs": {"acme": "admin"}}},
                }
            )
            connection = {"conn_type": "github", "password": ADMIN, "host": github.url}
            monkeypatch.setenv("AIRFLOW_CONN_GITHUB_DEFAULT", json.dumps(connection))
            document = world.entry_document(set(KeyEntry.model_fields))
            repositories = [
                {"name": f"gh-{name}", "kind": "github_actions", "repository": f"acme/{name}"}
                for name in ("app", "tools", "site")
            ]
            document["consumers"] += repositories
            entry = KeyEntry.model_validate(document)
            request = RunRequest(
                run_id="manual__dry",
                manual=True,
                reason="dry run",
                strategy="replace",
                grace_hours=1,
                force=True,
                dry_run=True,
            )
            caplog.set_level(logging.INFO)
            plan = Rotation(entry).preflight(request)
    finally:
        world.stop()

    assert plan["github_organization_secrets"] == [
        {
            "organization": "acme",
            "secret_name": SECRET,
            "conn_id": "github_default",
            "repositories": ["acme/app", "acme/tools", "acme/site"],
            "consumers": ["gh-app", "gh-tools", "gh-site"],
            "writes_today": 3,
            "writes_with_an_organization_secret": 1,
            "saved": 2,
        }
    ]
    logged = everything_logged(caplog, capfd)
    recommendation = "one organization secret with those selected repositories would take 1 write per rotation"
    assert f"{recommendation} instead of 3 (2 saved)" in logged
    assert world.first_key not in logged and world.first_key not in json.dumps(plan)


def test_every_page_of_repositories_is_checked(world: World) -> None:
    """More repositories than one page (100) holds: the shadow in the last one is still found."""
    for number in range(101):
        world.github.add_repo(f"acme/svc-{number:03}")
    organization_secret(world, "all")
    world.github.set_secret("acme/svc-100", SECRET, OLD)
    written_at, consumer = written_and_verified(world)
    world.github.reset_stats()
    with pytest.raises(ConsumerError) as raised:
        consumer.verify(world.key, written_at)
    assert "repository acme/svc-100" in str(raised.value)
    assert world.github.stats()["requests"].get("list_org_repos") == 2
