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
        ("key_label", {"name": "x", "vault_path": "kosli/x"}),
    ],
)
def test_two_entries_may_not_share_a_dag_a_vault_record_or_a_key(tmp_path, field, clash):
    """Both entries of a clash are broken (neither can be trusted to rotate alone), each naming the other."""
    inventory = load_inventory(write(tmp_path, {"keys": [VALID, {**VALID, **clash}]}))
    assert inventory.entries == []
    name = clash.get("name", "ci-bot")
    first, second = (" ".join(broken.problems) for broken in inventory.broken)
    path = tmp_path / "inventory.yaml"
    assert first.startswith(f"{path}: keys[0] (ci-bot): {field}: ") and f"keys[1] ({name})" in first
    assert second.startswith(f"{path}: keys[1] ({name}): {field}: ") and "keys[0] (ci-bot)" in second
    if field == "name":
        assert [broken.dag_id for broken in inventory.broken] == [
            "rotate_kosli_key_invalid_entry_0",
            "rotate_kosli_key_invalid_entry_1",
        ], "no two DAGs with one id"


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


# -- inputs as a security boundary (issue 12.4) --------------------------------------------------------------------

#: Shaped like a key, but no token shape the scrubber knows: only not quoting the file keeps it out of an error.
SECRET = "kosli_live_9f8e7d6c5b4a3928171605f4e3d2c1b0"
INJECTION = 'secret" {capabilities=["sudo"]}\npath "sys/*'


def quotes(secret: str, text: str) -> bool:
    """Whether ``text`` holds any 10 characters of ``secret`` in a row (PyYAML's snippet shows part of a line)."""
    return any(secret[i : i + 10] in text for i in range(len(secret) - 9))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vault_mount": INJECTION}, "vault_mount"),
        ({"vault_mount": "secret/../sys"}, "vault_mount"),
        ({"vault_mount": "kv/nested"}, "vault_mount"),
        ({"vault_mount": ""}, "vault_mount"),
        ({"vault_path": 'kosli/x" {capabilities=["sudo"]}'}, "vault_path"),
        ({"vault_path": "kosli/\uff41"}, "vault_path"),  # a fullwidth letter: isalnum() but not ASCII
        ({"vault_path": "kosli/a..b"}, "vault_path"),
        ({"vault_path": "kosli/x/"}, "vault_path"),
        ({"vault_path": "kosli/*"}, "vault_path"),
        (
            {"consumers": [{"name": "x", "kind": "vault_kv", "path": "apps/ci", "mount": INJECTION}]},
            "consumers[0].mount",
        ),
        ({"consumers": [{"name": "x", "kind": "vault_kv", "path": "apps/+/ci"}]}, "consumers[0].path"),
        ({"org": ".."}, "org"),
        ({"org": "acme/../other"}, "org"),
        ({"org": "ac\nme"}, "org"),
        ({"org": "acme%2F.."}, "org"),
        ({"service_account": ".."}, "service_account"),
        ({"key_id": "../../api-keys"}, "key_id"),
        ({"key_id": "a/b"}, "key_id"),
        ({"key_id": "7954691b\x00"}, "key_id"),
        ({"key_label": "ci\x1b[2J"}, "key_label"),
        ({"key_label": "ci\u2028forged line"}, "key_label"),
    ],
)
def test_names_and_vault_locations_have_strict_patterns(tmp_path, changes, field):
    """Nothing can inject into the generated HCL policy, escape its KV mount, or walk a Kosli URL."""
    (problem,) = problems_of(tmp_path, **changes)
    assert problem.startswith(f"{tmp_path / 'inventory.yaml'}: keys[0] (ci-bot): {field}: ")


def test_a_vault_kv_mount_and_path_that_are_well_formed_are_accepted(tmp_path):
    consumer = {"name": "x", "kind": "vault_kv", "path": "apps/team_a/ci.bot-1", "mount": "kv-2_apps"}
    (entry,) = load_inventory(
        write(tmp_path, {"keys": [{**VALID, "vault_mount": "kv", "key_id": "7954691b-0f4e", "consumers": [consumer]}]})
    ).entries
    assert (entry.vault_mount, entry.consumers[0].mount) == ("kv", "kv-2_apps")


def entry(name, **changes):
    return {**VALID, "name": name, "vault_path": f"kosli/acme/{name}", "key_label": name, "consumers": [], **changes}


def both_broken(tmp_path, first, second):
    """Load two clashing entries (and a third, fine one); both clashing ones are broken, each naming the other."""
    path = write(tmp_path, {"keys": [first, second, entry("bystander", service_account="other")]})
    inventory = load_inventory(path)
    assert [e.name for e in inventory.entries] == ["bystander"], "a clash never hides the other entries"
    assert [b.index for b in inventory.broken] == [0, 1], "both entries of a clash are broken"
    return [" ".join(b.problems) for b in inventory.broken]


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        # The record decides which key an entry naming neither key_id nor key_label rotates: it may be the other's.
        (entry("a"), entry("b", key_label=None), "key_label"),
        (entry("a", key_label=None), entry("b", key_label=None), "key_label"),
        (entry("a", key_id="k-1", key_label=None), entry("b", key_id="k-1", key_label=None), "key_id"),
        # key_id wins over key_label, but a label-only entry may name the same key as one with both.
        (entry("a", key_id="k-1", key_label="ci"), entry("b", key_label="ci"), "key_label"),
        # Two connections may point at one Kosli host: the org and service account name the key.
        (entry("a"), entry("b", key_label="a", kosli_conn_id="kosli_other"), "key_label"),
    ],
)
def test_two_entries_on_one_kosli_key_are_both_broken(tmp_path, first, second, field):
    problems = both_broken(tmp_path, first, second)
    inventory = tmp_path / "inventory.yaml"
    assert problems[0].startswith(f"{inventory}: keys[0] (a): {field}: ")
    assert "keys[1] (b)" in problems[0]
    assert problems[1].startswith(f"{inventory}: keys[1] (b): {field}: ")
    assert "keys[0] (a)" in problems[1]
    assert "acme/ci-bot" in problems[1], "names the Kosli key"


def test_two_entries_on_different_keys_of_one_service_account_are_fine(tmp_path):
    keys = [entry("a"), entry("b"), entry("c", key_id="k-1"), entry("d", key_id="k-2", key_label="a-other")]
    inventory = load_inventory(write(tmp_path, {"keys": keys}))
    assert (len(inventory.entries), inventory.broken) == (4, [])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # A missing vault_mount means the connection's mount (its schema, else 'secret'): it may be any mount.
        (entry("a", vault_path="kosli/x"), entry("b", vault_path="kosli/x", vault_mount="secret")),
        (entry("a", vault_path="kosli/x", vault_mount="kv"), entry("b", vault_path="kosli/x")),
        (entry("a", vault_path="kosli/x", vault_mount="kv"), entry("b", vault_path="kosli/x", vault_mount="kv")),
        # A record inside another's notes (consumers/, audit/, unclaimed/).
        (entry("a", vault_path="kosli/x"), entry("b", vault_path="kosli/x/audit/2024")),
    ],
)
def test_two_entries_on_one_vault_record_are_both_broken(tmp_path, first, second):
    problems = both_broken(tmp_path, first, second)
    assert problems[0].startswith(f"{tmp_path / 'inventory.yaml'}: keys[0] (a): vault_path: ")
    assert "keys[1] (b)" in problems[0]
    assert problems[1].startswith(f"{tmp_path / 'inventory.yaml'}: keys[1] (b): vault_path: ")
    assert "keys[0] (a)" in problems[1]


def test_entries_on_other_mounts_or_connections_share_no_record(tmp_path):
    keys = [
        entry("a", vault_path="kosli/x", vault_mount="kv"),
        entry("b", vault_path="kosli/x", vault_mount="secret"),
        entry("c", vault_path="kosli/x", vault_conn_id="vault_other"),
        entry("d", vault_path="kosli/xy"),
    ]
    inventory = load_inventory(write(tmp_path, {"keys": keys}))
    assert (len(inventory.entries), inventory.broken) == (4, [])


@pytest.mark.parametrize(
    ("consumer", "owner"),
    [
        ({"path": "kosli/acme/a"}, "keys[0] (a)"),
        ({"path": "kosli/acme/a/consumers/reporter"}, "keys[0] (a)"),
        ({"path": "kosli/acme/a/unclaimed/attempt-1", "mount": "secret"}, "keys[0] (a)"),
        ({"path": "kosli/acme/b/audit/1"}, "keys[1] (b) itself"),
    ],
)
def test_a_vault_kv_consumer_aimed_at_a_record_or_its_notes_is_refused(tmp_path, consumer, owner):
    second = entry("b", consumers=[{"name": "sneaky", "kind": "vault_kv", **consumer}])
    inventory = load_inventory(write(tmp_path, {"keys": [entry("a"), second]}))
    broken = next(b for b in inventory.broken if b.index == 1)
    (problem,) = broken.problems
    assert problem.startswith(f"{tmp_path / 'inventory.yaml'}: keys[1] (b): consumers[0].path: ")
    assert owner in problem


def test_a_vault_kv_consumer_on_another_mount_or_connection_is_fine(tmp_path):
    consumers = [
        {"name": "other-mount", "kind": "vault_kv", "path": "kosli/acme/a", "mount": "apps"},
        {"name": "other-conn", "kind": "vault_kv", "path": "kosli/acme/a", "conn_id": "vault_apps"},
        {"name": "sibling", "kind": "vault_kv", "path": "kosli/acme/ab"},
    ]
    inventory = load_inventory(
        write(tmp_path, {"keys": [entry("a", vault_mount="secret"), entry("b", consumers=consumers)]})
    )
    assert (len(inventory.entries), inventory.broken) == (2, [])


def test_a_yaml_error_names_the_position_never_the_content(tmp_path):
    text = f"keys:\n  - name: ci-bot\n    description: {SECRET}: [broken\n"
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as error:
        load_inventory(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not valid YAML: line 3, column ")
    assert not quotes(SECRET, message) and "description" not in message


def test_an_oversized_inventory_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, "keys: []\n" + "# padding\n" * 120_000)
    with pytest.raises(InventoryError, match=r"larger than 1 MiB"):
        load_inventory(path)


def test_an_alias_bomb_is_refused(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write(tmp_path, "bomb:\n" + "".join(f"  {line}\n" for line in lines) + "keys: []\n")
    with pytest.raises(InventoryError) as error:
        load_inventory(path)
    assert str(error.value).startswith(f"{path}: not valid YAML: ")
    assert "alias" in str(error.value)


def test_a_few_anchors_and_aliases_are_fine(tmp_path):
    text = (
        "defaults: &shared\n  grace_hours: 48\nkeys:\n"
        "  - {name: a, org: acme, service_account: ci-bot, key_label: a, vault_path: kosli/a, <<: *shared}\n"
    )
    (entry_a,) = load_inventory(write(tmp_path, text)).entries
    assert entry_a.grace_hours == 48


WINDOW_ENTRY = """keys:
  - name: ci-bot
    org: acme
    service_account: ci-bot
    key_label: ci
    vault_path: kosli/acme/ci-bot
    {field}
"""


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        # YAML 1.1 reads an unquoted 10:00 as the base-60 number 600.
        (
            "rotation_window: {days: [tue], hours: 10:00, timezone: UTC}",
            "keys[0] (ci-bot): rotation_window.hours: Value error, 600 is a number, not 'HH:MM-HH:MM': YAML reads "
            'unquoted times as numbers; quote them: hours: "09:00-16:00"',
        ),
        (
            "rotation_window: {hours: '9-17'}",
            "keys[0] (ci-bot): rotation_window.hours: Value error, '9-17' is not 'HH:MM-HH:MM'",
        ),
        (
            "rotation_window: {hours: '16:00-16:00'}",
            "keys[0] (ci-bot): rotation_window.hours: Value error, '16:00-16:00' is an empty span",
        ),
        (
            "rotation_window: {days: [tuesday]}",
            "keys[0] (ci-bot): rotation_window.days[0]: Input should be 'mon', 'tue'",
        ),
        (
            "rotation_window: {timezone: Europe/Olso}",
            "keys[0] (ci-bot): rotation_window.timezone: Value error, 'Europe/Olso' is not an IANA time zone",
        ),
        (
            "blackout: [2026-12-24, 20261231]",
            "keys[0] (ci-bot): blackout: Value error, 20261231 is not a date ('2026-12-24') or a range",
        ),
        (
            "blackout: ['2027-01-03..2026-12-20']",
            "keys[0] (ci-bot): blackout: Value error, '2027-01-03..2026-12-20' ends before it starts",
        ),
    ],
)
def test_a_bad_rotation_window_or_blackout_names_the_entry_and_field(tmp_path, field, expected):
    inventory = load_inventory(write(tmp_path, WINDOW_ENTRY.format(field=field)))

    assert not inventory.entries
    assert any(expected in problem for problem in inventory.broken[0].problems), inventory.broken[0].problems


def test_unquoted_blackout_dates_and_a_quoted_window_are_accepted(tmp_path):
    window = 'rotation_window: {days: [tue, wed], hours: "22:00-02:00", timezone: Europe/Oslo}'
    field = window + "\n    blackout: [2026-12-24]"
    (entry,) = load_inventory(write(tmp_path, WINDOW_ENTRY.format(field=field))).entries

    assert entry.rotation_window.span[0].hour == 22
    assert entry.blackout[0].covers(__import__("datetime").date(2026, 12, 24))
