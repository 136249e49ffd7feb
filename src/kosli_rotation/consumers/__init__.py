"""Consumer kinds, one module each, behind the interface in ``consumers.base``.

To add a kind: write ``consumers/<kind>.py`` with a ``ConsumerConfig`` subclass (``kind: Literal[...]``)
and a ``Consumer`` subclass, then add the pair to ``KINDS`` below.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from kosli_rotation.consumers.aws_secrets_manager import AwsSecretsManagerConfig, AwsSecretsManagerConsumer
from kosli_rotation.consumers.azure_key_vault import AzureKeyVaultConfig, AzureKeyVaultConsumer
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Proof, Verification
from kosli_rotation.consumers.circleci_env import CircleCiEnvConfig, CircleCiEnvConsumer
from kosli_rotation.consumers.gcp_secret_manager import GcpSecretManagerConfig, GcpSecretManagerConsumer
from kosli_rotation.consumers.github_actions import GithubActionsConfig, GithubActionsConsumer
from kosli_rotation.consumers.gitlab_ci import GitLabCiConfig, GitLabCiConsumer
from kosli_rotation.consumers.jenkins_credential import JenkinsCredentialConfig, JenkinsCredentialConsumer
from kosli_rotation.consumers.kosli_cli_config import KosliCliConfigConfig, KosliCliConfigConsumer
from kosli_rotation.consumers.kubernetes_secret import KubernetesSecretConfig, KubernetesSecretConsumer
from kosli_rotation.consumers.vault_kv import VaultKvConfig, VaultKvConsumer

if TYPE_CHECKING:
    from kosli_rotation.key_store import KeyStore

KINDS: dict[str, tuple[type[ConsumerConfig], type[Consumer]]] = {
    "vault_kv": (VaultKvConfig, VaultKvConsumer),
    "kosli_cli_config": (KosliCliConfigConfig, KosliCliConfigConsumer),
    "aws_secrets_manager": (AwsSecretsManagerConfig, AwsSecretsManagerConsumer),
    "jenkins_credential": (JenkinsCredentialConfig, JenkinsCredentialConsumer),
    "circleci_env": (CircleCiEnvConfig, CircleCiEnvConsumer),
    "gitlab_ci": (GitLabCiConfig, GitLabCiConsumer),
    "github_actions": (GithubActionsConfig, GithubActionsConsumer),
    "kubernetes_secret": (KubernetesSecretConfig, KubernetesSecretConsumer),
    "gcp_secret_manager": (GcpSecretManagerConfig, GcpSecretManagerConsumer),
    "azure_key_vault": (AzureKeyVaultConfig, AzureKeyVaultConsumer),
}

#: The inventory's consumer entry: whichever config model its ``kind`` names.
AnyConsumerConfig = Annotated[
    functools.reduce(operator.or_, [config for config, _ in KINDS.values()]),  # type: ignore[valid-type]
    Field(discriminator="kind"),
]


def build_consumer(config: ConsumerConfig) -> Consumer:
    """The consumer object for one inventory entry."""
    return KINDS[config.kind][1](config)


def build_consumers(configs: list[ConsumerConfig], vault: KeyStore | None = None) -> list[Consumer]:
    """The consumer objects of one task, each kind's sharing what it may (``Consumer.share``)."""
    built = [build_consumer(config) for config in configs]
    for kind in dict.fromkeys(type(consumer) for consumer in built):
        kind.share([consumer for consumer in built if type(consumer) is kind], vault)
    return built


__all__ = [
    "KINDS",
    "AnyConsumerConfig",
    "Consumer",
    "ConsumerConfig",
    "Proof",
    "Verification",
    "build_consumer",
    "build_consumers",
]
