"""One fixture adapter per consumer kind (``sandbox.adapters.base.FixtureAdapter``), in ``KINDS`` order.

Each module ``sandbox/adapters/<kind>.py`` defines ``ADAPTER``, its adapter class. To add a kind, add its line here.
"""

from __future__ import annotations

import importlib

from sandbox.adapters.base import FixtureAdapter, FleetSettings, InjectedFault, SeededConsumer

#: Every consumer kind that has a fixture adapter (the fan-out and contract tests check this is every kind).
ADAPTER_KINDS = (
    "vault_kv",
    "kosli_cli_config",
    "aws_secrets_manager",
    "jenkins_credential",
    "circleci_env",
    "gitlab_ci",
    "github_actions",
    "kubernetes_secret",
    "gcp_secret_manager",
    "azure_key_vault",
)


def adapter_class(kind: str) -> type[FixtureAdapter]:
    """The adapter class of ``kind``."""
    if kind not in ADAPTER_KINDS:
        raise KeyError(f"no fixture adapter for consumer kind {kind!r}")
    return importlib.import_module(f"sandbox.adapters.{kind}").ADAPTER


__all__ = ["ADAPTER_KINDS", "FixtureAdapter", "FleetSettings", "InjectedFault", "SeededConsumer", "adapter_class"]
