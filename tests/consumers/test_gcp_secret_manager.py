"""The gcp_secret_manager consumer's own quirks, with google-cloud-secret-manager against the GCP Secret Manager
sandbox over real HTTP; what a secret holds is read through the sandbox's own view. (Create, update, rerun, wrong
credentials, 429 and 5xx handling common to every kind are in test_contract.py.)"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kosli_rotation.consumers import gcp_client
from kosli_rotation.consumers.gcp_secret_manager import GcpSecretManagerConfig, GcpSecretManagerConsumer
from kosli_rotation.errors import ConsumerError
from sandbox.gcp_secret_manager import GcpSecretManagerSandbox
from sandbox.gcp_secret_store import DESTROYED, DISABLED
from tests.support.client_logs import held_by_the_masker

PROJECT = "acme-prod"
SECRET = "reporter-kosli"
KEY = "kosli_new_" + "K" * 40
OLD_KEY = "kosli_old_" + "O" * 40
ROTATOR = f"kosli-rotator@{PROJECT}.iam.gserviceaccount.com"
CREATOR = f"projects/{PROJECT}/roles/secretCreator"
ROTATOR_ROLES = [
    "roles/secretmanager.secretVersionAdder",
    "roles/secretmanager.secretAccessor",
    "roles/secretmanager.viewer",
    CREATOR,
]
RETIRER_ROLES = ["roles/secretmanager.secretVersionManager", "roles/secretmanager.secretAccessor"]


class Gcp:
    """The started sandbox (project acme-prod), service account keys, and the Airflow connection."""

    def __init__(self, server: GcpSecretManagerSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = server
        self.monkeypatch = monkeypatch
        server.add_project(PROJECT)
        server.iam.add_role(CREATOR, ["secretmanager.secrets.create"])
        self.rotator = server.add_service_account(ROTATOR, ROTATOR_ROLES)
        self.connect(self.rotator)

    def connect(self, key: dict[str, Any] | None, **extra: Any) -> None:
        """The connection with this key file as JSON text (None: no key, application default credentials)."""
        fields = {"project": PROJECT, "api_endpoint": self.server.url, **extra}
        if key is not None:
            fields["keyfile_dict"] = json.dumps(key)
        connection = {"conn_type": "google_cloud_platform", "extra": fields}
        self.monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(connection))

    def account(self, name: str, roles: list[str]) -> dict[str, Any]:
        return self.server.add_service_account(f"{name}@{PROJECT}.iam.gserviceaccount.com", roles)

    def consumer(self, **config: Any) -> GcpSecretManagerConsumer:
        config = {"name": "gcp-sm", "kind": "gcp_secret_manager", "project": PROJECT, "secret_id": SECRET, **config}
        return GcpSecretManagerConsumer(GcpSecretManagerConfig(**config))

    def seed(self, *values: str) -> None:
        self.server.put_secret(PROJECT, SECRET, values[0] if values else None)
        for value in values[1:]:
            self.server.add_version(PROJECT, SECRET, value)

    def states(self) -> list[str]:
        return [version["state"] for version in self.server.versions(PROJECT, SECRET)]

    def latest(self) -> str | None:
        data = self.server.payload(PROJECT, SECRET)
        return data.decode() if data is not None else None

    def requests(self, handler: str) -> int:
        return int(self.server.stats()["requests"].get(handler, 0))


@pytest.fixture
def gcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gcp]:
    monkeypatch.setattr(gcp_client, "WRITE_SPACING_SECONDS", 0.0)
    with GcpSecretManagerSandbox() as server:
        yield Gcp(server, monkeypatch)


# -- writes: CRC32C, creation, rollbacks, lost answers -------------------------------------------------------


def test_a_write_sends_the_payloads_crc32c_and_a_corrupted_read_is_caught(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    consumer = gcp.consumer()

    consumer.write(KEY)

    assert gcp.latest() == KEY
    assert gcp.server.versions(PROJECT, SECRET)[-1]["checksum_given"], "dataCrc32c was sent (and matched)"
    gcp.server.faults.add(
        r"/versions/latest:access$",
        status=200,
        body={
            "name": f"projects/1/secrets/{SECRET}/versions/2",
            "payload": {"data": base64.b64encode(KEY.encode()).decode(), "dataCrc32c": "1"},
        },
        times=1,
    )
    with pytest.raises(ConsumerError, match="CRC32C"):
        consumer.read_digest()


def test_a_missing_secret_is_created_with_the_inventorys_replication_and_labels(gcp: Gcp) -> None:
    consumer = gcp.consumer(replication=["europe-west1", "europe-west4"], labels={"team": "platform"})
    consumer.check_access()  # missing: the project is reachable, the write will create it

    consumer.write(KEY)

    secret = gcp.server.secret(PROJECT, SECRET)
    assert secret is not None
    replicas = [{"location": "europe-west1"}, {"location": "europe-west4"}]
    assert secret["replication"] == {"userManaged": {"replicas": replicas}}
    assert secret["labels"] == {"team": "platform"}
    assert gcp.latest() == KEY and gcp.states() == ["ENABLED"]
    gcp.consumer(secret_id="other-kosli").write(KEY)
    assert gcp.server.secret(PROJECT, "other-kosli")["replication"] == {"automatic": {}}


def test_a_rollback_style_write_adds_a_version_and_never_disables_latest(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    gcp.consumer().write(KEY)

    gcp.consumer().write(OLD_KEY)  # what a rollback does: the old key back, as a new version

    assert gcp.latest() == OLD_KEY
    assert gcp.states() == ["ENABLED", "ENABLED", "ENABLED"]
    assert gcp.requests("change_version_state") == 0


def test_a_retry_after_a_lost_answer_adds_no_second_version(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    lost = gcp.server.faults.add(r":addVersion$", action="drop_after_commit", times=1)

    gcp.consumer().write(KEY)

    assert lost.fired == 1
    assert gcp.latest() == KEY and len(gcp.states()) == 2, "the landed version is kept, no duplicate"


def test_a_disabled_latest_is_a_clear_error_and_nothing_is_written_over_it(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY, KEY)
    gcp.server.set_state(PROJECT, SECRET, 2, DISABLED)
    consumer = gcp.consumer()

    for action in (consumer.read_digest, lambda: consumer.write(KEY)):
        with pytest.raises(ConsumerError) as raised:
            action()
        message = str(raised.value)
        assert raised.value.retryable is False
        assert "latest version (2)" in message and "DISABLED" in message, message
        assert f"gcloud secrets versions enable 2 --secret={SECRET} --project={PROJECT}" in message
    assert len(gcp.states()) == 2

    gcp.server.set_state(PROJECT, SECRET, 2, DESTROYED)
    with pytest.raises(ConsumerError, match=r"DESTROYED.*cannot come back"):
        consumer.read_digest()


# -- retiring superseded versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("retire", "after"), [("disable", "DISABLED"), ("destroy", "DESTROYED")])
def test_retiring_after_the_old_key_is_dead_spares_latest_and_is_idempotent(gcp: Gcp, retire: str, after: str) -> None:
    gcp.seed(OLD_KEY, "kosli_older_" + "X" * 30)
    gcp.consumer().write(KEY)
    gcp.server.set_state(PROJECT, SECRET, 2, DISABLED)  # retired by hand already
    gcp.connect(gcp.account("retirer", RETIRER_ROLES))
    consumer = gcp.consumer(retire=retire)
    consumer.check_access()  # the retirer holds what retiring needs

    said = consumer.retire_superseded(KEY)

    expected = ["DISABLED", "DISABLED"] if retire == "disable" else ["DESTROYED", "DESTROYED"]
    assert gcp.states() == [*expected, "ENABLED"], said
    assert gcp.latest() == KEY
    assert said is not None and "3 holds the key" in said
    changes = gcp.requests("change_version_state")
    again = consumer.retire_superseded(KEY)
    assert again is not None and again.startswith(f"nothing {after.lower()}"), again
    assert gcp.requests("change_version_state") == changes, "nothing changed the second time"


def test_retiring_refuses_unless_latest_holds_the_key(gcp: Gcp) -> None:
    """A target that drifted since it was verified fails the step (as Azure's does): retiring now could leave no
    version holding the key, and the operator must hear of the drift."""
    gcp.seed(OLD_KEY, KEY, OLD_KEY)  # someone wrote the old key again meanwhile
    gcp.connect(gcp.account("retirer", RETIRER_ROLES))

    with pytest.raises(ConsumerError, match="latest version 3 does not hold the new key") as raised:
        gcp.consumer(retire="destroy").retire_superseded(KEY)

    assert raised.value.retryable is False
    assert gcp.states() == ["ENABLED"] * 3
    assert gcp.consumer().retire_superseded(KEY) is None, "retire: none (the default) does nothing"


# -- the plan and access checks --------------------------------------------------------------------------------


def test_the_plan_warns_that_aliases_pin_readers_to_a_version(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY, KEY)
    gcp.server.set_alias(PROJECT, SECRET, "prod", 1)
    consumer = gcp.consumer()
    assert "WARNING" not in consumer.verification_plan(), "nothing known before check_access"

    consumer.check_access()

    plan = consumer.verification_plan()
    assert plan.startswith("read back")
    assert "WARNING: aliases prod -> version 1 pin readers to a version: they will not follow the rotation" in plan
    gcp.server.set_alias(PROJECT, SECRET, "prod", None)
    unaliased = gcp.consumer()
    unaliased.check_access()
    assert "WARNING" not in unaliased.verification_plan()


def test_a_refusal_names_the_role_to_grant_and_to_whom(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    reader = gcp.account("reader", ["roles/secretmanager.secretAccessor", "roles/secretmanager.viewer"])
    gcp.connect(reader)

    with pytest.raises(ConsumerError) as checked:
        gcp.consumer().check_access()
    assert "lacks secretmanager.versions.add" in str(checked.value)
    assert "grant roles/secretmanager.secretVersionAdder" in str(checked.value)
    with pytest.raises(ConsumerError) as written:
        gcp.consumer().write(KEY)
    message = str(written.value)
    assert written.value.retryable is False
    assert reader["client_email"] in message and "roles/secretmanager.secretVersionAdder" in message, message
    assert "PERMISSION_DENIED" in message
    with pytest.raises(ConsumerError, match=r"secretmanager\.secrets\.create"):
        gcp.consumer(secret_id="new-kosli").write(KEY)


def test_least_privilege_without_viewer_works_and_the_plan_says_aliases_were_not_checked(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    gcp.server.set_alias(PROJECT, SECRET, "prod", 1)
    gcp.connect(
        gcp.account("minimal", ["roles/secretmanager.secretVersionAdder", "roles/secretmanager.secretAccessor"])
    )
    consumer = gcp.consumer()

    consumer.check_access()  # reading the secret is refused (403), testIamPermissions still answers
    consumer.write(KEY)

    assert "aliases not checked" in consumer.verification_plan()
    assert gcp.latest() == KEY


def test_a_secret_created_by_someone_else_meanwhile_is_written_not_recreated(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, SECRET)  # exists, no version yet; its GET answers 404 once, as if not yet there
    gcp.server.faults.add(
        rf"/secrets/{SECRET}$", method="GET", status=404, body={"error": {"code": 404, "status": "NOT_FOUND"}}, times=1
    )

    gcp.consumer().write(KEY)

    assert gcp.requests("create_secret") == 1, "the create was answered ALREADY_EXISTS"
    assert gcp.latest() == KEY and len(gcp.states()) == 1


def test_a_missing_secret_that_may_not_be_created_fails_the_access_check(gcp: Gcp) -> None:
    with pytest.raises(ConsumerError) as raised:
        gcp.consumer(create_if_missing=False).check_access()
    assert raised.value.retryable is False
    assert f"gcloud secrets create {SECRET} --project={PROJECT}" in str(raised.value)


# -- quota and pacing ------------------------------------------------------------------------------------------


def test_writes_to_one_secret_are_paced_under_its_quota(gcp: Gcp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcp_client, "WRITE_SPACING_SECONDS", 0.6)
    gcp.seed(OLD_KEY)
    started = time.monotonic()

    for n in range(4):
        gcp.consumer().write(f"{KEY}{n}")

    assert gcp.server.add_limiter.rejected == 0, "no AddSecretVersion was refused"
    assert time.monotonic() - started >= 1.8
    assert len(gcp.states()) == 5


def test_a_per_secret_quota_429_is_retried_until_it_passes(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)  # pacing off (the fixture): back-to-back writes exceed 2 a second
    for n in range(3):
        gcp.consumer().write(f"{KEY}{n}")

    assert gcp.server.add_limiter.rejected >= 1, "the quota answered 429"
    assert gcp.latest() == f"{KEY}2" and len(gcp.states()) == 4


# -- credentials -----------------------------------------------------------------------------------------------


def test_application_default_credentials_when_the_connection_has_no_key(
    gcp: Gcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "adc.json"
    key_file.write_text(json.dumps(gcp.rotator))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    gcp.connect(None)
    gcp.seed(OLD_KEY)

    gcp.consumer().write(KEY)

    assert gcp.latest() == KEY
    assert held_by_the_masker(gcp.rotator["private_key"])

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    with pytest.raises(ConsumerError) as raised:
        gcp.consumer().check_access()
    assert raised.value.retryable is False
    assert "'google_cloud_default'" in str(raised.value) and "GOOGLE_APPLICATION_CREDENTIALS" in str(raised.value)


def test_the_key_is_held_for_the_masker_and_a_bad_key_is_named_not_shown(gcp: Gcp) -> None:
    gcp.seed(OLD_KEY)
    gcp.consumer().check_access()
    assert held_by_the_masker(gcp.rotator["private_key"])

    gcp.connect(None, keyfile_dict='{"type": "authorized_user", "private_key": "not-a-service-account-key-at-all"}')
    with pytest.raises(ConsumerError) as raised:
        gcp.consumer().check_access()
    assert "keyfile_dict is not a service account key" in str(raised.value)
    assert "not-a-service-account-key-at-all" not in str(raised.value)
    gcp.connect(gcp.rotator, key_path="/etc/key.json")
    with pytest.raises(ConsumerError, match="mutually exclusive"):
        gcp.consumer().check_access()


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"project": "Acme_Prod"}, "not a project id"),
        ({"secret_id": "projects/acme-prod/secrets/x"}, "not a secret id"),
        ({"secret_id": "x" * 256}, "not a secret id"),
        ({"replication": []}, "one or more distinct locations"),
        ({"replication": ["europe-west1", "europe-west1"]}, "one or more distinct locations"),
        ({"replication": ["Europe West"]}, "pattern"),
        ({"retire": "delete"}, "retire"),
        ({"labels": {"Team": "x"}}, "label 'Team'"),
        ({"create_if_missing": False, "replication": ["europe-west1"]}, "only apply when create_if_missing"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(fields: dict[str, Any], complaint: str) -> None:
    config = {"name": "gcp-sm", "kind": "gcp_secret_manager", "project": PROJECT, "secret_id": SECRET, **fields}
    with pytest.raises(ValidationError, match=complaint):
        GcpSecretManagerConfig(**config)
