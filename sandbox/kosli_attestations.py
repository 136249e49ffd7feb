"""Kosli's flows, trails, custom attestation types and custom attestations, as the Kosli CLI sends them.

Mixed into ``KosliSandbox`` (same auth, 401/403/404/429 and 400 envelopes). Requests are multipart forms whose
JSON goes in a ``data_json`` field, as the CLI sends them (kosli-dev/cli ``createFlow.go``, ``beginTrail.go``,
``createAttestationType.go``, ``attestCustom.go``; field notes 2026-12 section 1):

* ``PUT /api/v2/flows/{org}/template_file`` (``data_json`` {name, description, visibility}, ``template_file``)
  and the deprecated JSON ``PUT /api/v2/flows/{org}``: 201 created, 200 updated; ``GET /api/v2/flows/{org}/{flow}``.
* ``PUT /api/v2/trails/{org}/{flow}`` (``data_json`` {name, description, user_data, ...}): 201 begun, 200 updated;
  404 for an unknown flow (Kosli's text: "Flow named 'x' does not exist for organization 'y'").
  ``GET /api/v2/trails/{org}/{flow}/{trail}`` with its ``compliance_status``.
* ``POST /api/v2/custom-attestation-types/{org}`` (``data_json`` {name, description, evaluator: {content_type: jq,
  rules}, summary}, file ``type_schema``): each POST of a known name adds a version (the CLI's ``get
  attestation-type`` lists ``versions``). ``GET /api/v2/custom-attestation-types/{org}/{name}``.
* ``POST /api/v2/attestations/{org}/{flow}/trail/{trail}/custom`` (``data_json`` {type_name, attestation_data,
  attestation_name, description, user_data, annotations, origin_url}): the type's schema (draft-07) and every jq
  rule are applied to ``attestation_data``; it is compliant when every rule gives ``true`` (Terraform reference,
  ``custom_attestation_type``). ``GET /api/v2/attestations/{org}/{flow}/trail/{trail}/{name}`` lists them.

Attesting needs a member-level key (field notes); admin keys may too, reader and snapshotter keys get 403.
"""

from __future__ import annotations

import json
import re
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import jq
import jsonschema

from sandbox.server import Abort, Request, Response, json_response, route

API = "/api/v2"
ORG = r"(?P<org>[^/]+)"
FLOW = r"(?P<flow>[^/]+)"
TRAIL = r"(?P<trail>[^/]+)"
#: The CLI's rule for Kosli names (flows, trails, types, attestations).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,199}$")
ATTESTING_PRIVILEGES = ("admin", "member")
FORBIDDEN = {"message": "You don't have permission to access this resource"}


def _invalid(errors: dict[str, str]) -> Abort:
    return Abort(json_response(400, {"message": "Input payload validation failed", "errors": errors}))


def multipart_form(request: Request) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body by field name; 400 (Kosli's envelope) for anything else."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _invalid({"body": "expected multipart/form-data with a data_json field"})
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            parts[str(name)] = part.get_payload(decode=True) or b""
    return parts


def data_json(parts: dict[str, bytes]) -> dict[str, Any]:
    try:
        document = json.loads(parts["data_json"])
    except KeyError:
        raise _invalid({"data_json": "Field required"}) from None
    except ValueError:
        raise _invalid({"data_json": "JSON decode error"}) from None
    if not isinstance(document, dict):
        raise _invalid({"data_json": "Input should be a valid dictionary"})
    return document


def _name(document: dict[str, Any], field: str) -> str:
    value = document.get(field)
    if not isinstance(value, str) or not NAME.match(value):
        raise _invalid({field: "must start with a letter or digit and hold only letters, digits and '_.~-'"})
    return value


def evaluate(rules: list[str], data: Any) -> list[dict[str, Any]]:
    """Each jq rule on ``data``: passed only when it outputs ``true`` (and nothing else)."""
    results = []
    for rule in rules:
        try:
            outputs = jq.compile(rule).input_value(data).all()
            passed, error = bool(outputs) and all(output is True for output in outputs), None
        except Exception as exc:  # a rule that fails to run is a failed rule, as in Kosli's evaluation
            passed, error = False, str(exc)[:300]
        results.append({"rule": rule, "passed": passed, **({"error": error} if error else {})})
    return results


class AttestationRoutes:
    """Routes and state of flows, trails and custom attestations; mixed into ``KosliSandbox``."""

    lock: Any
    clock: Any
    _authorize: Any

    def _attestation_state(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_kosli_attestations"):
            self._kosli_attestations: dict[str, dict[str, Any]] = {}
        return self._kosli_attestations

    def _org_state(self, org: str) -> dict[str, Any]:
        return self._attestation_state().setdefault(org, {"flows": {}, "types": {}})

    def _member(self, request: Request, org: str) -> Any:
        caller = self._authorize(request, org)
        if str(caller.account.privilege) not in ATTESTING_PRIVILEGES:
            raise Abort(json_response(403, FORBIDDEN))
        return caller

    def _flow(self, org: str, flow: str) -> dict[str, Any]:
        found = self._org_state(org)["flows"].get(flow)
        if found is None:
            message = f"Flow named '{flow}' does not exist for organization '{org}'"
            raise Abort(json_response(404, {"message": message}))
        return found

    def _trail(self, org: str, flow: str, trail: str) -> dict[str, Any]:
        found = self._flow(org, flow)["trails"].get(trail)
        if found is None:
            message = f"Trail named '{trail}' does not exist for flow '{flow}' in organization '{org}'"
            raise Abort(json_response(404, {"message": message}))
        return found

    # -- test API ----------------------------------------------------------------------------------------

    def trail_attestations(self, org: str, flow: str, trail: str) -> list[dict[str, Any]]:
        """Every attestation on a trail, oldest first (in-process, for tests)."""
        with self.lock:
            found = self._org_state(org)["flows"].get(flow, {"trails": {}})["trails"].get(trail)
            return [dict(item) for item in found["attestations"]] if found else []

    def attestation_type(self, org: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._org_state(org)["types"].get(name)
            return json.loads(json.dumps(found)) if found else None

    # -- flows ---------------------------------------------------------------------------------------------

    @route("PUT", rf"{API}/flows/{ORG}/template_file")
    def put_flow_with_template(self, request: Request, org: str) -> Response:
        parts = multipart_form(request)
        with self.lock:
            self._member(request, org)
            document = data_json(parts)
            return self._put_flow(org, document, parts.get("template_file", b"version: 1").decode(errors="replace"))

    @route("PUT", rf"{API}/flows/{ORG}")
    def put_flow(self, request: Request, org: str) -> Response:
        """The CLI's deprecated JSON form (no template file)."""
        with self.lock:
            self._member(request, org)
            try:
                document = json.loads(request.body or b"{}")
            except ValueError:
                raise _invalid({"body": "JSON decode error"}) from None
            return self._put_flow(org, document if isinstance(document, dict) else {}, "version: 1")

    def _put_flow(self, org: str, document: dict[str, Any], template: str) -> Response:
        name = _name(document, "name")
        flows = self._org_state(org)["flows"]
        existing = flows.get(name)
        now = self.clock.now()
        flow = existing or {"name": name, "org": org, "created_at": now, "trails": {}}
        flow.update(description=str(document.get("description") or ""), template=template, last_modified_at=now)
        flows[name] = flow
        return json_response(200 if existing else 201, _public(flow, "trails"))

    @route("GET", rf"{API}/flows/{ORG}/{FLOW}")
    def get_flow(self, request: Request, org: str, flow: str) -> Response:
        with self.lock:
            self._authorize(request, org)
            return json_response(200, _public(self._flow(org, flow), "trails"))

    # -- trails --------------------------------------------------------------------------------------------

    @route("PUT", rf"{API}/trails/{ORG}/{FLOW}")
    def begin_trail(self, request: Request, org: str, flow: str) -> Response:
        parts = multipart_form(request)
        with self.lock:
            self._member(request, org)
            document = data_json(parts)
            name = _name(document, "name")
            trails = self._flow(org, flow)["trails"]
            existing = trails.get(name)
            now = self.clock.now()
            trail = existing or {"name": name, "flow": flow, "org": org, "created_at": now, "attestations": []}
            trail.update(
                description=str(document.get("description") or ""),
                user_data=document.get("user_data") or {},
                origin_url=document.get("origin_url"),
                last_modified_at=now,
            )
            trails[name] = trail
            return json_response(200 if existing else 201, _trail_json(trail))

    @route("GET", rf"{API}/trails/{ORG}/{FLOW}/{TRAIL}")
    def get_trail(self, request: Request, org: str, flow: str, trail: str) -> Response:
        with self.lock:
            self._authorize(request, org)
            return json_response(200, _trail_json(self._trail(org, flow, trail)))

    # -- custom attestation types --------------------------------------------------------------------------

    @route("POST", rf"{API}/custom-attestation-types/{ORG}")
    def create_attestation_type(self, request: Request, org: str) -> Response:
        parts = multipart_form(request)
        with self.lock:
            caller = self._member(request, org)
            document = data_json(parts)
            name = _name(document, "name")
            schema = self._schema(parts.get("type_schema"))
            evaluator = document.get("evaluator") or {}
            rules = evaluator.get("rules") or []
            if evaluator and evaluator.get("content_type") != "jq":
                raise _invalid({"evaluator.content_type": "Input should be 'jq'"})
            if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
                raise _invalid({"evaluator.rules": "Input should be a valid list of strings"})
            for index, rule in enumerate(rules):
                try:
                    jq.compile(rule)
                except ValueError as error:
                    raise _invalid({f"evaluator.rules.{index}": f"invalid jq: {str(error)[:200]}"}) from None
            if schema is None and not rules:
                raise _invalid({"body": "a custom attestation type needs a type_schema, jq rules, or both"})
            types = self._org_state(org)["types"]
            now = self.clock.now()
            found = types.setdefault(
                name, {"name": name, "org": org, "archived": False, "created_at": now, "versions": []}
            )
            found.update(description=str(document.get("description") or ""), last_modified_at=now)
            found["created_by"] = found.get("created_by") or caller.account.name
            found["versions"].append(
                {
                    "version": len(found["versions"]) + 1,
                    "timestamp": now,
                    "created_by": caller.account.name,
                    "type_schema": schema,
                    "evaluator": {"content_type": "jq", "rules": rules},
                    "summary": document.get("summary") or [],
                }
            )
            return json_response(201, found)

    @staticmethod
    def _schema(raw: bytes | None) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            schema = json.loads(raw)
            jsonschema.Draft7Validator.check_schema(schema)
        except (ValueError, jsonschema.SchemaError) as error:
            raise _invalid({"type_schema": f"not a valid JSON schema: {str(error)[:200]}"}) from None
        return schema

    @route("GET", rf"{API}/custom-attestation-types/{ORG}/(?P<name>[^/]+)")
    def get_attestation_type(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            self._authorize(request, org)
            found = self._org_state(org)["types"].get(name)
            if found is None:
                message = f"Custom attestation type named '{name}' does not exist for organization '{org}'"
                return json_response(404, {"message": message})
            return json_response(200, found)

    # -- custom attestations ------------------------------------------------------------------------------

    @route("POST", rf"{API}/attestations/{ORG}/{FLOW}/trail/{TRAIL}/custom")
    def attest_custom(self, request: Request, org: str, flow: str, trail: str) -> Response:
        parts = multipart_form(request)
        with self.lock:
            caller = self._member(request, org)
            document = data_json(parts)
            attestation_name = _name(document, "attestation_name")
            if "." in attestation_name:
                raise _invalid({"attestation_name": "an artifact's attestation ('name.attestation') needs an artifact"})
            type_name = document.get("type_name")
            found_type = self._org_state(org)["types"].get(type_name) if isinstance(type_name, str) else None
            if found_type is None:
                message = f"Custom attestation type named '{type_name}' does not exist for organization '{org}'"
                return json_response(404, {"message": message})
            target = self._trail(org, flow, trail)
            if "attestation_data" not in document:
                raise _invalid({"attestation_data": "Field required"})
            data = document["attestation_data"]
            latest = found_type["versions"][-1]
            if latest["type_schema"] is not None:
                # Assumption: data that breaks the type's schema is refused, not recorded as non-compliant.
                problems = sorted(jsonschema.Draft7Validator(latest["type_schema"]).iter_errors(data), key=str)
                if problems:
                    where = "/".join(map(str, problems[0].absolute_path)) or "(root)"
                    raise _invalid({"attestation_data": f"{where}: {problems[0].message}"[:300]})
            results = evaluate(latest["evaluator"]["rules"], data)
            attestation = {
                "attestation_id": str(uuid.uuid4()),
                "attestation_name": attestation_name,
                "attestation_type": f"custom:{type_name}",
                "type_version": latest["version"],
                "is_compliant": all(result["passed"] for result in results),
                "evaluation": results,
                "attestation_data": data,
                "user_data": document.get("user_data") or {},
                "description": document.get("description") or "",
                "annotations": document.get("annotations") or {},
                "origin_url": document.get("origin_url"),
                "reported_by": caller.account.name,
                "created_at": self.clock.now(),
            }
            target["attestations"].append(attestation)
            target["last_modified_at"] = attestation["created_at"]
            return json_response(201, {"message": "OK"})

    @route("GET", rf"{API}/attestations/{ORG}/{FLOW}/trail/{TRAIL}/(?P<name>[^/]+)")
    def get_trail_attestation(self, request: Request, org: str, flow: str, trail: str, name: str) -> Response:
        """Every attestation of that name on the trail, newest first (the CLI's ``get attestation``)."""
        with self.lock:
            self._authorize(request, org)
            found = self._trail(org, flow, trail)["attestations"]
            return json_response(200, [item for item in reversed(found) if item["attestation_name"] == name])


def _public(document: dict[str, Any], *hidden: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in hidden}


def _trail_json(trail: dict[str, Any]) -> dict[str, Any]:
    """The trail with its compliance: the latest attestation of each name counts (Kosli's statuses)."""
    latest: dict[str, dict[str, Any]] = {}
    for attestation in trail["attestations"]:
        latest[attestation["attestation_name"]] = attestation
    statuses = [
        {
            "attestation_name": item["attestation_name"],
            "attestation_id": item["attestation_id"],
            "attestation_type": item["attestation_type"],
            "is_compliant": item["is_compliant"],
            "status": "COMPLETE",
            "unexpected": True,  # Assumption: trails here have no template, so every attestation is unexpected
        }
        for item in latest.values()
    ]
    compliant = all(status["is_compliant"] for status in statuses)
    return {
        **_public(trail, "attestations"),
        "compliance_status": {
            "status": "COMPLIANT" if compliant else "NON-COMPLIANT",
            "is_compliant": compliant,
            "attestations_statuses": statuses,
        },
    }
