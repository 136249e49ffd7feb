"""Inventory validation: every error names the file, the entry and the field."""

from __future__ import annotations

import pytest
import yaml

from kosli_rotation.inventory import InventoryError, load_inventory

VALID = {
    "name": "ci-bot",
    "org": "acme",
    "service_account": "ci-bot",
    "key_label": "ci",
    "vault_path": "kosli/acme/ci-bot",
    "consumers": [{"name": "apps", "kind": "vault_kv", "path": "apps/ci"}],
}


def write(tmp_path, document) -> str:
    path = tmp_path / "inventory.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return str(path)


def problems_of(tmp_path, **changes) -> list[str]:
    entry = {**VALID, **changes}
    entry = {name: value for name, value in entry.items() if value is not None}
    inventory = load_inventory(write(tmp_path, {"keys": [entry]}))
    assert not inventory.entries
    return inventory.broken[0].problems


def test_a_valid_entry_gets_defaults_and_a_dag_id(tmp_path):
    inventory = load_inventory(write(tmp_path, {"defaults": {"grace_hours": 48}, "keys": [VALID]}))
    (entry,) = inventory.entries
    assert entry.dag_id == "rotate_kosli_key_ci-bot"
    assert (entry.grace_hours, entry.max_age_days, entry.strategy) == (48, 90, "rotate")
    assert entry.consumer_names == ["apps"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"org": None}, "org: Field required"),
        ({"service_account": "ci bot"}, "service_account: String should match pattern"),
        ({"grace_hours": 0}, "grace_hours: Input should be greater than or equal to 1"),
        ({"grace_hours": 721}, "grace_hours: Input should be less than or equal to 720"),
        ({"grace_hours": "a day"}, "grace_hours: Input should be a valid integer"),
        ({"max_age_days": 0}, "max_age_days: Input should be greater than or equal to 1"),
        ({"strategy": "yolo"}, "strategy: Input should be 'rotate' or 'replace'"),
        ({"vault_path": "../other-mount/x"}, "vault_path: Value error, '../other-mount/x' is not a path inside"),
        ({"vault_path": "/abs/path"}, "vault_path: Value error, '/abs/path' is not a path inside"),
        ({"vault_path": "a//b"}, "vault_path: Value error"),
        ({"schedule": "every day"}, "schedule: Value error, 'every day' is not a cron expression"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"name": "has space"}, "name: String should match pattern"),
        ({"consumers": [{"name": "x", "kind": "gitub"}]}, "consumers[0]: Input tag 'gitub' found using 'kind'"),
        ({"consumers": [{"name": "x"}]}, "consumers[0]: Unable to extract tag using discriminator 'kind'"),
        ({"consumers": [{"name": "x", "kind": "vault_kv"}]}, "consumers[0].path: Field required"),
        (
            {"consumers": [{"name": "x", "kind": "vault_kv", "path": "a/../b"}]},
            "consumers[0].path: Value error, 'a/../b' is not a path inside",
        ),
        (
            {"consumers": [{"name": "x", "kind": "kosli_cli_config", "path": "relative.yml"}]},
            "consumers[0].path: Value error, 'relative.yml' must be an absolute path",
        ),
        (
            {
                "consumers": [
                    {"name": "x", "kind": "vault_kv", "path": "a"},
                    {"name": "x", "kind": "vault_kv", "path": "b"},
                ]
            },
            "consumer name 'x' is used twice",
        ),
        ({"retries": -1}, "retries: Input should be greater than or equal to 0"),
    ],
)
def test_each_broken_field_is_named_with_file_and_entry(tmp_path, changes, expected):
    (problem,) = problems_of(tmp_path, **changes)
    assert problem.startswith(f"{tmp_path / 'inventory.yaml'}: keys[0] (")
    assert expected in problem


def test_one_broken_entry_does_not_hide_the_others(tmp_path):
    second = {**VALID, "name": "other", "vault_path": "kosli/acme/other", "key_label": "other", "grace_hours": -5}
    third = {**VALID, "name": "third", "vault_path": "kosli/acme/third", "key_label": "third"}
    inventory = load_inventory(write(tmp_path, {"keys": [VALID, second, third]}))
    assert [entry.name for entry in inventory.entries] == ["ci-bot", "third"]
    (broken,) = inventory.broken
    assert (broken.index, broken.dag_id) == (1, "rotate_kosli_key_other")
    assert "keys[1] (other): grace_hours" in broken.problems[0]


@pytest.mark.parametrize(
    ("field", "clash"),
    [
        ("name", {"vault_path": "kosli/x", "key_label": "x"}),
        ("vault_path", {"name": "x", "key_label": "x"}),
        ("the Kosli key", {"name": "x", "vault_path": "kosli/x"}),
    ],
)
def test_two_entries_may_not_share_a_dag_a_vault_record_or_a_key(tmp_path, field, clash):
    inventory = load_inventory(write(tmp_path, {"keys": [VALID, {**VALID, **clash}]}))
    assert len(inventory.entries) == 1
    name = clash.get("name", "ci-bot")
    assert f"keys[1] ({name}): {field} is already used by keys[0] (ci-bot)" in inventory.broken[0].problems[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys: [", "not valid YAML"),
        ("- just a list", "expected a mapping with a 'keys' list"),
        ("keys: {}", "expected a mapping with a 'keys' list"),
        ("keys: []\ndefaults: [1]", "'defaults' must be a mapping"),
        ("keys: []\nkeyz: []", "unknown top-level field(s) ['keyz']"),
    ],
)
def test_a_file_that_cannot_be_used_at_all_raises_naming_the_file(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError, match="^" + path.replace(".", r"\.")) as error:
        load_inventory(path)
    assert expected in str(error.value)


def test_a_missing_file_says_which_variable_to_set(tmp_path):
    with pytest.raises(InventoryError, match="KOSLI_ROTATION_INVENTORY"):
        load_inventory(tmp_path / "nope.yaml")


def test_a_non_mapping_entry_is_reported_and_skipped(tmp_path):
    inventory = load_inventory(write(tmp_path, {"keys": ["just-a-name", VALID]}))
    assert [entry.name for entry in inventory.entries] == ["ci-bot"]
    assert inventory.broken[0].problems == [f"{tmp_path / 'inventory.yaml'}: keys[0]: expected a mapping"]
    assert inventory.broken[0].dag_id == "rotate_kosli_key_invalid_entry_0"


@pytest.mark.parametrize(
    ("consumer", "expected"),
    [
        (
            {"name": "apps", "kind": "vault_kv", "path": "apps/ci", "verify": "canary"},
            "consumers[0]: Value error, kind vault_kv has no canary job; drop `verify: canary` (kinds with one: "
            "circleci_env, github_actions, jenkins_credential)",
        ),
        (
            {"name": "app", "kind": "github_actions", "repository": "acme/app", "verify": "canary"},
            "consumers[0]: Value error, verify: canary needs `canary` to be configured",
        ),
        (
            {"name": "app", "kind": "github_actions", "repository": "acme/app", "verify": "always"},
            "consumers[0].verify: Input should be 'default' or 'canary'",
        ),
    ],
)
def test_verify_canary_is_refused_where_no_canary_can_prove_the_consumer(tmp_path, consumer, expected):
    (problem,) = problems_of(tmp_path, consumers=[consumer])
    assert problem.startswith(f"{tmp_path / 'inventory.yaml'}: keys[0] (ci-bot): ")
    assert expected in problem


def test_verify_canary_with_a_canary_configured_is_accepted(tmp_path):
    consumer = {
        "name": "app",
        "kind": "github_actions",
        "repository": "acme/app",
        "verify": "canary",
        "canary": {"workflow": "canary.yml"},
    }
    (entry,) = load_inventory(write(tmp_path, {"keys": [{**VALID, "consumers": [consumer]}]})).entries
    assert (entry.consumers[0].verify, entry.consumers[0].canary.workflow) == ("canary", "canary.yml")
