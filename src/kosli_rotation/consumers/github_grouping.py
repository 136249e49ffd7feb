"""Where one GitHub organization secret would replace many repository secrets: a recommendation for the plan.

GitHub's answer when many repositories share a key is one organization secret shared with selected repositories:
one write per rotation instead of one per repository, and one place to look. The plan groups a key's repository
consumers (no environment: an environment secret is scoped on purpose) by connection, secret name and owner, and
says how many writes each group would save. Names only: a plan holds no secret.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


def organization_secret_savings(configs: Iterable[Any]) -> list[dict[str, Any]]:
    """Groups of two or more ``github_actions`` repository consumers with one connection, secret name and owner."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for config in configs:
        if getattr(config, "kind", None) != "github_actions" or not config.repository or config.environment:
            continue
        owner = str(config.repository).split("/", 1)[0]
        groups.setdefault((config.conn_id, config.secret_name, owner.lower()), []).append(config)
    savings = []
    for (conn_id, secret_name, _), members in groups.items():
        if len(members) < 2:
            continue
        savings.append(
            {
                "organization": str(members[0].repository).split("/", 1)[0],
                "secret_name": secret_name,
                "conn_id": conn_id,
                "repositories": [member.repository for member in members],
                "consumers": [member.name for member in members],
                "writes_today": len(members),
                "writes_with_an_organization_secret": 1,
                "saved": len(members) - 1,
            }
        )
    return savings


def recommend_organization_secrets(configs: Iterable[Any]) -> list[dict[str, Any]]:
    """The groups, each logged in plain words (the plan returns them too)."""
    savings = organization_secret_savings(configs)
    for group in savings:
        log.info(
            "%d repositories of %s hold their own GitHub Actions secret %s (connection %s): one organization "
            "secret with those selected repositories would take 1 write per rotation instead of %d (%d saved). "
            "Move them to it, and delete the repository secrets: a repository secret shadows the organization's.",
            group["writes_today"],
            group["organization"],
            group["secret_name"],
            group["conn_id"],
            group["writes_today"],
            group["saved"],
        )
    return savings
