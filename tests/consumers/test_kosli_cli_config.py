"""The kosli_cli_config consumer's quirks: writes only under the configured directories, never through a symlink,
never readable by group or other, atomically; a broken file is reported by position, never by its content.

The behaviours every kind shares (create, update, rerun, verify, nothing leaked at DEBUG; a local file has no
credentials, rate limits or HTTP statuses) are in ``tests/consumers/test_contract.py``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from kosli_rotation.consumers.kosli_cli_config import KosliCliConfigConfig, KosliCliConfigConsumer
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest
from kosli_rotation.inventory import load_inventory

KEY = "kosli_new_" + "N" * 40
OLD_KEY = "kosli_old_" + "O" * 40
#: Shaped like a key, but no token shape the scrubber knows: only not quoting the file keeps it out of an error.
SECRET = "kosli_live_9f8e7d6c5b4a3928171605f4e3d2c1b0"
#: Where the worker may write CLI configs: colon-separated directories (README, "kosli_cli_config").
DIRS_ENV_VAR = "KOSLI_ROTATION_CLI_CONFIG_DIRS"


def quotes(secret: str, text: str) -> bool:
    """Whether ``text`` holds any 10 characters of ``secret`` in a row (PyYAML's snippet shows part of a line)."""
    return any(secret[i : i + 10] in text for i in range(len(secret) - 9))


@pytest.fixture
def allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The one directory the worker may write CLI configs under (and a second, unrelated one in the list)."""
    directory = tmp_path / "allowed"
    directory.mkdir()
    monkeypatch.setenv(DIRS_ENV_VAR, f"/nonexistent/kosli:{directory}")
    return directory


def consumer(path: Path | str, **fields: Any) -> KosliCliConfigConsumer:
    return KosliCliConfigConsumer(
        KosliCliConfigConfig(name="release-cli", kind="kosli_cli_config", path=str(path), **fields)
    )


def inventory_problem(tmp_path: Path, **consumer_fields: Any) -> str:
    """The one problem of an inventory entry with this kosli_cli_config consumer."""
    entry = {
        "name": "ci-bot",
        "org": "acme",
        "service_account": "ci-bot",
        "key_label": "ci",
        "vault_path": "kosli/acme/ci-bot",
        "consumers": [{"name": "release-cli", "kind": "kosli_cli_config", **consumer_fields}],
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    inventory = load_inventory(path)
    assert not inventory.entries
    (problem,) = inventory.broken[0].problems
    assert problem.startswith(f"{path}: keys[0] (ci-bot): consumers[0]."), problem
    return problem


# -- the happy path keeps its properties ----------------------------------------------------------------------


def test_writes_atomically_keeping_other_settings_and_no_group_or_other_bits(allowed: Path) -> None:
    path = allowed / "release.yml"
    path.write_text(f"org: acme\nhost: https://app.kosli.com\napi-token: {OLD_KEY}\n")
    path.chmod(0o644)
    target = consumer(path)
    target.check_access()
    assert target.read_digest() == digest(OLD_KEY)

    target.write(KEY)

    assert yaml.safe_load(path.read_text()) == {"org": "acme", "host": "https://app.kosli.com", "api-token": KEY}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert target.read_digest() == digest(KEY)
    assert [p.name for p in allowed.iterdir()] == ["release.yml"], "no temporary file left behind"


def test_a_read_only_mode_is_kept_and_a_missing_file_is_created(allowed: Path) -> None:
    path = allowed / "sub" / "ro.yml"
    path.parent.mkdir()
    target = consumer(path, mode=0o400)
    target.check_access()
    target.write(KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    target.write(KEY + "x")  # a read-only file is still replaced (the directory is what must be writable)
    assert yaml.safe_load(path.read_text()) == {"api-token": KEY + "x"}


def test_a_parent_symlink_that_resolves_inside_the_allowlist_is_fine(allowed: Path) -> None:
    (allowed / "real").mkdir()
    (allowed / "link").symlink_to(allowed / "real")
    consumer(allowed / "link" / "c.yml").write(KEY)
    assert yaml.safe_load((allowed / "real" / "c.yml").read_text()) == {"api-token": KEY}


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "said"),
    [
        ({"mode": 0o640}, "mode", "group or other"),
        ({"mode": 0o604}, "mode", "group or other"),
        ({"mode": 0o777}, "mode", "group or other"),
        ({"mode": 0o200}, "mode", "owner"),
        ({"path": "relative.yml"}, "path", "absolute"),
        ({"path": "/ALLOWED/../../etc/cron.d/x.yml"}, "path", "normalised"),
        ({"path": "/ALLOWED/./x.yml"}, "path", "normalised"),
        ({"path": "/ALLOWED/x\n.yml"}, "path", "control"),
        ({"path": "/etc/cron.d/kosli.yml"}, "path", DIRS_ENV_VAR),
        ({"path": "/ALLOWED-sibling/x.yml"}, "path", DIRS_ENV_VAR),
        ({"path": "/ALLOWED"}, "path", DIRS_ENV_VAR),
    ],
)
def test_the_inventory_refuses_a_path_outside_the_allowlist_or_a_mode_others_can_read(
    tmp_path: Path, allowed: Path, fields: dict[str, Any], field: str, said: str
) -> None:
    fields = {"path": str(allowed / "c.yml"), **fields}
    fields["path"] = fields["path"].replace("/ALLOWED", str(allowed))
    problem = inventory_problem(tmp_path, **fields)
    assert f"consumers[0].{field}: " in problem and said in problem


def test_with_no_allowlist_configured_no_path_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DIRS_ENV_VAR, raising=False)
    problem = inventory_problem(tmp_path, path=str(tmp_path / "c.yml"))
    assert "consumers[0].path: " in problem and f"{DIRS_ENV_VAR} is not set" in problem


def test_a_symlink_at_the_file_is_never_followed(allowed: Path, tmp_path: Path) -> None:
    victim = tmp_path / "kubeconfig"
    victim.write_text(f"users:\n- user: {{token: {SECRET}}}\n")
    victim.chmod(0o600)
    (allowed / "c.yml").symlink_to(victim)
    target = consumer(allowed / "c.yml")
    for action in (target.check_access, target.read_digest, lambda: target.write(KEY)):
        with pytest.raises(ConsumerError) as error:
            action()
        message = str(error.value)
        assert "release-cli" in message and str(allowed / "c.yml") in message and "symlink" in message
        assert not quotes(SECRET, message)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and SECRET in victim.read_text(), "the target is untouched"
    assert (allowed / "c.yml").is_symlink()


def test_a_parent_symlink_that_leads_outside_the_allowlist_is_refused(allowed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    target = consumer(allowed / "escape" / "c.yml")
    for action in (target.check_access, lambda: target.write(KEY)):
        with pytest.raises(ConsumerError) as error:
            action()
        message = str(error.value)
        assert "release-cli" in message and str(outside) in message and DIRS_ENV_VAR in message
    assert list(outside.iterdir()) == []


def test_a_fifo_or_directory_at_the_path_is_refused(allowed: Path) -> None:
    os.mkfifo(allowed / "fifo.yml")
    with pytest.raises(ConsumerError, match="not a regular file"):
        consumer(allowed / "fifo.yml").read_digest()


def test_a_broken_file_is_reported_by_position_never_by_content(allowed: Path) -> None:
    path = allowed / "c.yml"
    path.write_text(f"org: acme\napi-token: @{SECRET}\n")
    with pytest.raises(ConsumerError) as error:
        consumer(path).read_digest()
    message = str(error.value)
    assert "release-cli" in message and str(path) in message and "line 2, column 12" in message
    assert not quotes(SECRET, message)


def test_an_alias_bomb_is_refused(allowed: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = allowed / "c.yml"
    path.write_text("\n".join(lines) + f"\napi-token: {OLD_KEY}\n")
    with pytest.raises(ConsumerError) as error:
        consumer(path).write(KEY)
    assert "release-cli" in str(error.value) and str(path) in str(error.value) and "alias" in str(error.value)
    assert OLD_KEY in path.read_text(), "nothing written"


def test_an_oversized_file_is_refused(allowed: Path) -> None:
    path = allowed / "c.yml"
    path.write_text(f"api-token: {OLD_KEY}\n" + "# padding\n" * 120_000)
    with pytest.raises(ConsumerError, match="larger than 1 MiB"):
        consumer(path).read_digest()
