"""The Kosli sandbox's flows, trails, custom attestation types and attestations, over real HTTP, sent the way the
Kosli CLI sends them (multipart, JSON in ``data_json``, the schema as the ``type_schema`` file)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.kosli import KosliSandbox

SCHEMA = {"type": "object", "required": ["old_key_http"], "properties": {"old_key_http": {"type": "integer"}}}
RULES = [".old_key_http == 401", ".new_key_http == 200"]


class Kosli:
    def __init__(self, server: KosliSandbox) -> None:
        self.server = server
        seeded = server.seed(
            "acme",
            service_accounts={
                "admin-bot": {"privilege": "admin", "keys": [{}]},
                "ci-bot": {"privilege": "member", "keys": [{}]},
                "viewer": {"privilege": "reader", "keys": [{}]},
            },
        )
        self.admin, self.member, self.reader = (seeded[name][0]["key"] for name in ("admin-bot", "ci-bot", "viewer"))
        self.other = server.seed("globex", service_accounts={"boss": {"privilege": "admin", "keys": [{}]}})["boss"][0][
            "key"
        ]

    def send(
        self, method: str, path: str, key: str | None, data: Any = None, files: dict[str, Any] | None = None
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        form = {"data_json": (None, json.dumps(data), "application/json")} if data is not None else {}
        return requests.request(
            method, f"{self.server.url}/api/v2{path}", headers=headers, files={**form, **(files or {})}, timeout=5
        )

    def flow(self, name: str = "key-rotations", key: str | None = None) -> requests.Response:
        return self.send(
            "PUT",
            "/flows/acme/template_file",
            key or self.member,
            {"name": name, "description": "rotations"},
            {"template_file": ("template.yml", b"version: 1")},
        )

    def trail(self, name: str = "ci-bot-2026-12-01", flow: str = "key-rotations", **extra: Any) -> requests.Response:
        return self.send("PUT", f"/trails/acme/{flow}", self.member, {"name": name, **extra})

    def attestation_type(self, schema: Any = SCHEMA, rules: list[str] = RULES, key: str | None = None):
        files = {"type_schema": ("schema.json", json.dumps(schema).encode())} if schema is not None else {}
        payload = {
            "name": "kosli-key-rotation",
            "description": "d",
            "evaluator": {"content_type": "jq", "rules": rules},
        }
        return self.send("POST", "/custom-attestation-types/acme", key or self.member, payload, files)

    def attest(self, data: Any, name: str = "key-rotation-1", trail: str = "ci-bot-2026-12-01", **extra: Any):
        payload = {"type_name": "kosli-key-rotation", "attestation_name": name, "attestation_data": data, **extra}
        return self.send("POST", f"/attestations/acme/key-rotations/trail/{trail}/custom", self.member, payload)


@pytest.fixture
def kosli() -> Iterator[Kosli]:
    with KosliSandbox() as server:
        yield Kosli(server)


def test_flow_then_trail_then_custom_attestation_whose_rules_pass(kosli):
    assert kosli.flow().status_code == 201
    assert kosli.flow().status_code == 200, "a second PUT updates the flow"
    assert kosli.trail().status_code == 201, "begun"
    assert kosli.trail(description="again").status_code == 200, "updated"
    assert kosli.attestation_type().status_code == 201

    answer = kosli.attest({"old_key_http": 401, "new_key_http": 200})

    assert answer.status_code == 201, answer.text
    trail = kosli.send("GET", "/trails/acme/key-rotations/ci-bot-2026-12-01", kosli.reader).json()
    (status,) = trail["compliance_status"]["attestations_statuses"]
    assert status["attestation_name"] == "key-rotation-1"
    assert status["attestation_type"] == "custom:kosli-key-rotation"
    assert status["is_compliant"] is True
    (stored,) = kosli.send(
        "GET", "/attestations/acme/key-rotations/trail/ci-bot-2026-12-01/key-rotation-1", kosli.reader
    ).json()
    assert stored["attestation_data"] == {"old_key_http": 401, "new_key_http": 200}
    assert [result["passed"] for result in stored["evaluation"]] == [True, True]


def test_a_rule_that_does_not_give_true_makes_the_attestation_non_compliant(kosli):
    kosli.flow(), kosli.trail(), kosli.attestation_type(rules=[*RULES, ".missing.deeper | length > 0"])

    assert kosli.attest({"old_key_http": 200, "new_key_http": 200}).status_code == 201

    (stored,) = kosli.server.trail_attestations("acme", "key-rotations", "ci-bot-2026-12-01")
    assert stored["is_compliant"] is False
    assert [result["passed"] for result in stored["evaluation"]] == [False, True, False]
    trail = kosli.send("GET", "/trails/acme/key-rotations/ci-bot-2026-12-01", kosli.member).json()
    assert trail["compliance_status"]["status"] == "NON-COMPLIANT"


def test_data_that_breaks_the_schema_is_refused_with_kosli_s_400(kosli):
    kosli.flow(), kosli.trail(), kosli.attestation_type()

    answer = kosli.attest({"old_key_http": "401"})

    assert answer.status_code == 400
    assert answer.json()["message"] == "Input payload validation failed"
    assert "old_key_http" in answer.json()["errors"]["attestation_data"]
    assert kosli.server.trail_attestations("acme", "key-rotations", "ci-bot-2026-12-01") == []


def test_begin_trail_on_an_unknown_flow_is_404_with_kosli_s_text(kosli):
    answer = kosli.trail(flow="nope")

    assert answer.status_code == 404
    assert answer.json() == {"message": "Flow named 'nope' does not exist for organization 'acme'"}


def test_attesting_to_an_unknown_type_or_trail_is_404(kosli):
    kosli.flow(), kosli.trail()
    assert kosli.attest({"old_key_http": 401}).status_code == 404, "no type yet"
    kosli.attestation_type()
    assert kosli.attest({"old_key_http": 401}, trail="other").status_code == 404


def test_posting_a_known_type_again_adds_a_version(kosli):
    kosli.attestation_type()
    kosli.attestation_type(rules=[".old_key_http == 401"])

    found = kosli.send("GET", "/custom-attestation-types/acme/kosli-key-rotation", kosli.reader).json()
    assert [version["version"] for version in found["versions"]] == [1, 2]
    assert found["versions"][0]["type_schema"] == SCHEMA
    assert found["versions"][1]["evaluator"] == {"content_type": "jq", "rules": [".old_key_http == 401"]}
    missing = kosli.send("GET", "/custom-attestation-types/acme/other", kosli.reader)
    assert missing.status_code == 404 and "does not exist" in missing.json()["message"]


@pytest.mark.parametrize(
    ("schema", "rules", "field"),
    [(None, [], "body"), ({"type": 12}, [], "type_schema"), (None, [".a =="], "evaluator.rules.0")],
)
def test_a_type_needs_a_valid_schema_or_valid_jq_rules(kosli, schema, rules, field):
    answer = kosli.attestation_type(schema=schema, rules=rules)

    assert answer.status_code == 400
    assert field in answer.json()["errors"]


def test_auth_a_reader_cannot_write_and_another_org_cannot_read(kosli):
    assert kosli.flow(key=kosli.reader).status_code == 403
    assert kosli.attestation_type(key=kosli.reader).status_code == 403
    assert kosli.flow(key=kosli.admin).status_code == 201, "an admin key may attest too"
    assert kosli.send("GET", "/flows/acme/key-rotations", None).status_code == 401
    assert kosli.send("GET", "/flows/acme/key-rotations", "not-a-key").status_code == 401
    assert kosli.send("GET", "/flows/acme/key-rotations", kosli.other).status_code == 403


def test_a_json_body_instead_of_the_multipart_form_is_a_400(kosli):
    answer = requests.put(
        f"{kosli.server.url}/api/v2/trails/acme/key-rotations",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {kosli.member}"},
        timeout=5,
    )

    assert answer.status_code == 400
    assert "data_json" in answer.json()["errors"]["body"]


def test_injected_faults_apply_to_attestations(kosli):
    kosli.flow(), kosli.trail(), kosli.attestation_type()
    kosli.server.faults.add(r"/custom$", status=503, times=1)

    assert kosli.attest({"old_key_http": 401, "new_key_http": 200}).status_code == 503
    assert kosli.attest({"old_key_http": 401, "new_key_http": 200}).status_code == 201
