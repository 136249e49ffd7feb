"""What every consumer kind shares: held values compared by full digest, and how each is proven, said plainly."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from kosli_rotation.consumers import KINDS, AnyConsumerConfig, Consumer, build_consumer
from kosli_rotation.consumers.vault_kv import VaultKvConfig
from kosli_rotation.fingerprints import digest, fingerprint, short

KEY = "kosli_" + "k" * 43
CONFIGS = TypeAdapter(AnyConsumerConfig)

#: A minimal valid inventory entry for each kind.
MINIMAL: dict[str, dict[str, Any]] = {
    "vault_kv": {"path": "apps/ci"},
    "kosli_cli_config": {"path": "/etc/kosli/release.yml"},
    "aws_secrets_manager": {"secret_id": "kosli/ci"},
    "jenkins_credential": {"credential_id": "kosli-key"},
    "circleci_env": {"project_slug": "gh/acme/app"},
    "gitlab_ci": {"project": "acme/app"},
    "github_actions": {"repository": "acme/app"},
    "kubernetes_secret": {"namespace": "prod"},
    "gcp_secret_manager": {"project": "acme-prod", "secret_id": "kosli-ci"},
    "azure_key_vault": {"vault_url": "https://acme.vault.azure.net", "secret_name": "kosli-ci"},
}
CANARIES: dict[str, dict[str, Any]] = {
    "jenkins_credential": {"job": "team/kosli-canary"},
    "circleci_env": {"project_slug": "gh/acme/canary"},
    "github_actions": {"workflow": "canary.yml"},
}


def config(kind: str, **fields: Any) -> Any:
    return CONFIGS.validate_python({"name": "c", "kind": kind, **MINIMAL[kind], **fields})


# -- digests and fingerprints -----------------------------------------------------------------------------------


def test_a_digest_is_the_full_sha256_and_a_fingerprint_its_short_display_form() -> None:
    full = digest(KEY)
    assert full.startswith("sha256:") and len(full) == len("sha256:") + 64
    assert fingerprint(KEY) == short(full) == full[: len("sha256:") + 12]
    assert short(fingerprint(KEY)) == fingerprint(KEY)
    assert digest(KEY) != digest(KEY + "x")
    for nonsense in ("sha256:abc", "md5:0123456789abcdef", "sha256:XYZ456789abcdef"):
        with pytest.raises(ValueError, match="is not a sha256 digest or fingerprint"):
            short(nonsense)


class Holding(Consumer[VaultKvConfig]):
    """A readable consumer that holds whatever digest it is given."""

    kind = "vault_kv"

    def __init__(self, held: str | None) -> None:
        super().__init__(VaultKvConfig(name="held", kind="vault_kv", path="apps/held"))
        self.held = held

    def describe(self) -> str:
        return "in memory"

    def check_access(self) -> None:
        pass

    def write(self, key: str) -> None:
        self.held = digest(key)

    def read_digest(self) -> str | None:
        return self.held


def test_a_value_sharing_only_the_fingerprint_is_not_the_key() -> None:
    """48 bits tell keys apart for people; holding the key is decided by the whole digest."""
    expected = digest(KEY)
    tail = expected[19:]
    lookalike = expected[:19] + ("0" if tail[0] != "0" else "1") + tail[1:]
    assert short(lookalike) == fingerprint(KEY) and lookalike != expected

    consumer = Holding(lookalike)
    assert not consumer.holds(KEY)
    outcome = consumer.verify(KEY, 0)
    assert not outcome.ok and outcome.detail == f"holds {fingerprint(KEY)}, expected {fingerprint(KEY)}"

    consumer.write(KEY)
    assert consumer.holds(KEY)
    assert consumer.verify(KEY, 0).detail == f"holds {fingerprint(KEY)}"
    assert KEY not in consumer.verify(KEY, 0).detail and expected not in consumer.verify(KEY, 0).detail


# -- proof --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "proof"),
    [
        ("vault_kv", {}, "read back"),
        ("kosli_cli_config", {}, "read back"),
        ("aws_secrets_manager", {}, "read back"),
        ("kubernetes_secret", {}, "read back"),
        ("gitlab_ci", {}, "read back"),
        ("gitlab_ci", {"hidden": True}, "write-confirmed only"),
        ("github_actions", {}, "write-confirmed only"),
        ("github_actions", {"canary": CANARIES["github_actions"]}, "write-confirmed + canary"),
        ("circleci_env", {}, "write-confirmed only"),
        ("circleci_env", {"canary": CANARIES["circleci_env"]}, "write-confirmed + canary"),
        ("jenkins_credential", {}, "write-confirmed only"),
        ("jenkins_credential", {"canary": CANARIES["jenkins_credential"]}, "write-confirmed + canary"),
    ],
)
def test_each_consumer_says_plainly_how_it_is_proven(kind: str, fields: dict[str, Any], proof: str) -> None:
    consumer = build_consumer(config(kind, **fields))
    assert consumer.proof == proof
    assert consumer.verification_plan().startswith(f"{proof}: ")


def test_the_verification_plans_keep_saying_what_is_and_is_not_proven() -> None:
    assert build_consumer(config("vault_kv")).verification_plan() == (
        "read back: reads the value back and compares its full SHA-256 digest"
    )
    assert build_consumer(config("github_actions")).verification_plan() == (
        "write-confirmed only: write-only: the write is confirmed by the store's metadata, the value cannot be read "
        "back; no canary is configured, so nothing proves the consumer works with it"
    )
    with_canary = build_consumer(config("circleci_env", canary=CANARIES["circleci_env"])).verification_plan()
    assert with_canary.endswith("; then the canary job must succeed with it")
    gitlab = build_consumer(config("gitlab_ci")).verification_plan()
    assert "if the variable turns out hidden, write-confirmed only" in gitlab


# -- verify: canary ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_takes_the_verify_field(kind: str) -> None:
    assert config(kind).verify == "default"
    assert config(kind, verify="default").verify == "default"
    with pytest.raises(ValidationError, match="Input should be 'default' or 'canary'"):
        config(kind, verify="sometimes")


@pytest.mark.parametrize("kind", sorted(CANARIES))
def test_verify_canary_needs_the_canary_to_be_configured(kind: str) -> None:
    assert config(kind, verify="canary", canary=CANARIES[kind]).verify == "canary"
    with pytest.raises(ValidationError, match="verify: canary needs `canary` to be configured"):
        config(kind, verify="canary")


@pytest.mark.parametrize("kind", sorted(set(KINDS) - set(CANARIES)))
def test_verify_canary_on_a_kind_without_canary_jobs_names_the_kinds_that_have_them(kind: str) -> None:
    with pytest.raises(ValidationError) as error:
        config(kind, verify="canary")
    assert f"kind {kind} has no canary job; drop `verify: canary`" in str(error.value)
    assert "(kinds with one: circleci_env, github_actions, jenkins_credential)" in str(error.value)
