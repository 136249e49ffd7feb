"""Repository and environment secrets that shadow an organization secret.

A workflow reads a secret by name, and GitHub prefers an environment's secret to its repository's, and a
repository's to its organization's. So a stale repository or environment secret of the same name hides the
organization secret: those workflows would never see the new key, while the organization secret's own
``updated_at`` says the rotation landed. Verifying an organization secret therefore looks, in every repository
that sees it, for a secret of the same name.

What it costs, in reads (never paced: only mutating requests wait in the token's pace): the repositories that see
the secret (visibility ``selected``: its repository list; ``all``/``private``: the organization's repositories),
one request per 100; then per repository one listing of its secrets, one of its environments, and one per
environment of that environment's secrets (each a page per 100).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from kosli_rotation.consumers._github_client import GithubSession
from kosli_rotation.errors import ConsumerError

T = TypeVar("T")
Call = Callable[[str, Callable[[], T]], T]


def seeing_repositories(session: GithubSession, organization: str, name: str, visibility: str, call: Call) -> list[str]:
    """The full names of the repositories whose workflows see the organization secret ``name``."""
    if visibility == "selected":
        url = f"/orgs/{organization}/actions/secrets/{name}/repositories"
        listed = call(f"list the repositories selected for secret {name}", lambda: session.pages(url, "repositories"))
    else:
        query = {"type": "all", "sort": "full_name"}
        url = f"/orgs/{organization}/repos"
        listed = call(f"list the repositories of organization {organization}", lambda: session.pages(url, None, query))
        # 'private' reaches private and internal repositories (both answer "private": true), 'all' every one.
        listed = [repository for repository in listed if visibility == "all" or repository.get("private")]
    return [str(repository["full_name"]) for repository in listed if not repository.get("archived")]


def _holds(session: GithubSession, scope: str, name: str, where: str, call: Call) -> bool:
    secrets: list[Any] = call(f"list the Actions secrets of {where}", lambda: session.pages(scope, "secrets"))
    return any(str(secret["name"]).upper() == name for secret in secrets)


def shadowing_secrets(session: GithubSession, repositories: list[str], name: str, call: Call) -> list[str]:
    """Each repository or environment among ``repositories`` that holds its own secret ``name``, in words."""
    found: list[str] = []
    for full_name in repositories:
        where = f"repository {full_name}"
        if _holds(session, f"/repos/{full_name}/actions/secrets", name, where, call):
            found.append(where)
        url = f"/repos/{full_name}/environments"
        environments = call(f"list the environments of {where}", lambda url=url: session.pages(url, "environments"))
        for environment in environments:
            scope = f"/repos/{full_name}/environments/{quote(str(environment['name']), safe='')}/secrets"
            named = f"environment {str(environment['name'])!r} of {where}"
            if _holds(session, scope, name, named, call):
                found.append(named)
    return found


def shadowing_refusal(organization: str, name: str, found: list[str]) -> str:
    """What a failed verification says: each shadowing secret, why it matters, and what to do."""
    return (
        f"{len(found)} secret(s) named {name} shadow the organization secret of {organization} (GitHub prefers an "
        f"environment's secret, then a repository's, to the organization's): {'; '.join(found)}. Workflows there "
        "would never see the new key. Delete each of those secrets (the organization secret then serves them), or, "
        "if one must stay, take its repository out of the organization secret's selected repositories and make that "
        "secret a consumer of this key"
    )


def unshadowed(session: GithubSession, consumer: str, organization: str, name: str, visibility: str, call: Call) -> str:
    """Refuse (not retryable: a person must act) when a repository or environment secret hides the organization
    secret ``name``; else say, for the verification's detail, how many repositories were checked."""
    repositories = seeing_repositories(session, organization, name, visibility, call)
    found = shadowing_secrets(session, repositories, name, call)
    if found:
        raise ConsumerError(consumer, shadowing_refusal(organization, name, found), retryable=False)
    checked = f"{len(repositories)} repositories see it (visibility {visibility})"
    return f"; {checked}, no repository or environment secret {name} shadows it"
