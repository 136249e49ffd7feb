"""Kosli's flows, trails, custom attestation types and custom attestations, as the Kosli CLI calls them.

Built on ``KosliHook`` (its bearer auth, id checks, retries and error texts). Writes are multipart forms with the
JSON in a ``data_json`` field, the type's schema as the ``type_schema`` file and a flow's template as
``template_file`` (kosli-dev/cli ``createFlow.go``, ``beginTrail.go``, ``createAttestationType.go``,
``attestCustom.go``). Posting an attestation is never repeated after it may have reached Kosli (a 429 only):
the caller looks for it on the trail before posting again.
"""

from __future__ import annotations

import json
from typing import Any

from kosli_rotation.kosli_hook import KosliHook

#: The template a flow gets when this tool creates it: no required attestations (the CLI's empty template).
EMPTY_TEMPLATE = "version: 1\n"


def _form(data: dict[str, Any], **files: tuple[str, str]) -> dict[str, tuple[str | None, str, str]]:
    """A multipart form as the CLI builds it: ``data_json``, then the named files."""
    form: dict[str, tuple[str | None, str, str]] = {"data_json": (None, json.dumps(data), "application/json")}
    for field, (filename, content) in files.items():
        form[field] = (filename, content, "application/octet-stream")
    return form


class KosliAttestationHook(KosliHook):
    """One org's flows, trails and custom attestations (the connection's key needs member privilege or more)."""

    def _get_or_none(self, *segments: str | tuple[str, str]) -> Any:
        """The JSON at ``segments``, or None when Kosli answers 404."""
        response = self._call("GET", self._endpoint(*segments), accept=(200, 404))
        return None if response.status_code == 404 else response.json()

    # -- flows and trails ---------------------------------------------------------------------------------

    def get_flow(self, org: str, flow: str) -> dict[str, Any] | None:
        return self._get_or_none("flows", ("org", org), ("flow", flow))

    def create_flow(self, org: str, flow: str, *, description: str) -> None:
        """PUT the flow with an empty template (``kosli create flow --use-empty-template``); a PUT is idempotent."""
        data = {"name": flow, "description": description}
        form = _form(data, template_file=("template.yml", EMPTY_TEMPLATE))
        self._call("PUT", self._endpoint("flows", ("org", org), "template_file"), files=form)

    def get_trail(self, org: str, flow: str, trail: str) -> dict[str, Any] | None:
        return self._get_or_none("trails", ("org", org), ("flow", flow), ("trail", trail))

    def begin_trail(self, org: str, flow: str, trail: str, *, description: str) -> None:
        """PUT the trail: 201 begun, 200 updated; 404 when the flow does not exist."""
        form = _form({"name": trail, "description": description})
        self._call("PUT", self._endpoint("trails", ("org", org), ("flow", flow)), files=form)

    # -- custom attestation types -------------------------------------------------------------------------

    def get_attestation_type(self, org: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none("custom-attestation-types", ("org", org), ("attestation type", name))

    def create_attestation_type(
        self, org: str, name: str, *, description: str, schema: dict[str, Any], rules: list[str], summary: list[Any]
    ) -> None:
        """POST the type (a known name gets a new version, so callers look first)."""
        data = {
            "name": name,
            "description": description,
            "evaluator": {"content_type": "jq", "rules": rules},
            "summary": summary,
        }
        form = _form(data, type_schema=("schema.json", json.dumps(schema)))
        self._call("POST", self._endpoint("custom-attestation-types", ("org", org)), files=form)

    # -- custom attestations ------------------------------------------------------------------------------

    def attestations_named(self, org: str, flow: str, trail: str, name: str) -> list[dict[str, Any]]:
        """Every attestation called ``name`` on the trail (``kosli get attestation NAME --flow --trail``)."""
        segments = ("attestations", ("org", org), ("flow", flow), "trail", ("trail", trail), ("attestation", name))
        body = self._get_or_none(*segments)
        if body is None:
            return []
        items = body.get("data", []) if isinstance(body, dict) else body
        return [item for item in items if isinstance(item, dict)]

    def attest_custom(
        self, org: str, flow: str, trail: str, *, type_name: str, name: str, data: dict[str, Any], description: str
    ) -> None:
        """POST one custom attestation to the trail. Not repeated once it may have reached Kosli."""
        payload = {
            "type_name": type_name,
            "attestation_name": name,
            "attestation_data": data,
            "description": description,
        }
        endpoint = self._endpoint("attestations", ("org", org), ("flow", flow), "trail", ("trail", trail), "custom")
        self._call("POST", endpoint, files=_form(payload), repeatable=False)
