"""What drf-spectacular cannot infer about the REST API, added to /api/schema/ in one place
(a postprocessing hook, SPECTACULAR_SETTINGS) so that the schema tells the truth:

- every operation documents its error responses, all with the one shape that
  iacplatform.api_errors produces (`Error`: `detail`, and `errors` by field for a 400);
- path ids are whole numbers from 0 (Django's `<int:…>` matches nothing else: anything else
  is a 404 for an unknown URL);
- request strings refuse NUL characters (DRF's CharField does): documented with a pattern;
- links between operations (workspace -> configuration upload -> run -> confirm, discard,
  cancel, log) so a generated client or a fuzzer can follow them.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every API error: `detail` says what is wrong; a 400 also names the fields at fault.",
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "object",
            "description": "field -> messages (a 400 for a bad request body or query)",
            "additionalProperties": True,
        },
    },
    "required": ["detail"],
}

ERROR_DESCRIPTIONS = {
    "400": "The request is wrong (a malformed body, a bad field or query parameter): nothing was changed.",
    "401": "No valid credentials (`Authorization: Token <key>`).",
    "403": "Authenticated, but not allowed to do this.",
    "404": "No such object, or not readable by you (or no such URL).",
    "409": "Well-formed, but the object's current state does not allow it: nothing was changed.",
    "503": "The database is briefly unavailable: retry after `Retry-After` seconds.",
}

NO_NUL = "^[^\\u0000]*$"

# Fields whose reading may be null (a sensitive variable's value) but whose writing may not.
REQUEST_NOT_NULL = {"VariableRequest": ["value"], "PatchedVariableRequest": ["value"]}

# (source operationId, status, link name, target operationId, {parameter: expression})
LINKS: list[tuple[str, str, str, str, dict[str, str]]] = []


def _link(source: str, status: str, name: str, target: str, parameters: dict[str, str]) -> None:
    LINKS.append((source, status, name, target, parameters))


_link("v1_workspaces_create", "201", "UploadConfiguration",
      "v1_workspaces_configuration_versions_create", {"workspace_id": "$response.body#/id"})
_link("v1_workspaces_create", "201", "GetWorkspace", "v1_workspaces_retrieve", {"id": "$response.body#/id"})
_link("v1_workspaces_create", "201", "DeleteWorkspace", "v1_workspaces_destroy", {"id": "$response.body#/id"})
_link("v1_workspaces_configuration_versions_create", "201", "QueueRun", "v1_workspaces_runs_create",
      {"workspace_id": "$request.path.workspace_id"})
for _target, _name in [
    ("v1_runs_retrieve", "GetRun"),
    ("v1_runs_confirm_create", "ConfirmRun"),
    ("v1_runs_discard_create", "DiscardRun"),
    ("v1_runs_cancel_create", "CancelRun"),
    ("v1_runs_logs_retrieve", "RunLog"),
]:
    _link("v1_workspaces_runs_create", "201", _name, _target, {"id": "$response.body#/id"})
_link("v1_workspaces_create", "201", "GrantAccess", "v1_workspaces_access_create",
      {"workspace_id": "$response.body#/id"})
_link("v1_workspaces_access_create", "200", "RevokeAccess", "v1_workspaces_access_destroy",
      {"workspace_id": "$request.path.workspace_id", "team": "$response.body#/team"})
_link("v1_tokens_create", "201", "RevokeToken", "v1_tokens_destroy", {"key": "$response.body#/key"})
_link("v1_workspaces_variables_create", "201", "GetVariable", "v1_variables_retrieve",
      {"id": "$response.body#/id"})
_link("v1_workspaces_variables_create", "201", "DeleteVariable", "v1_variables_destroy",
      {"id": "$response.body#/id"})


def _no_nul(schema: dict[str, Any], components: dict[str, Any], seen: set[str]) -> None:
    """Add the NUL-refusing pattern to every string of a request schema (recursively)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen and name in components:
            seen.add(name)
            _no_nul(components[name], components, seen)
        return
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema \
            and "format" not in schema and not schema.get("readOnly"):
        schema["pattern"] = NO_NUL
    for key in ("properties",):
        for sub in schema.get(key, {}).values():
            if isinstance(sub, dict):
                _no_nul(sub, components, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _no_nul(schema[key], components, seen)
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            _no_nul(sub, components, seen)


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    by_id: dict[str, dict[str, Any]] = {}
    request_components: set[str] = set()
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            by_id[operation["operationId"]] = operation
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if parameter.get("in") == "path" and schema.get("type") == "integer":
                    schema.setdefault("minimum", 0)
                    schema.setdefault("maximum", 2**63 - 1)
                elif schema.get("type") == "string" and parameter.get("in") in ("path", "query"):
                    _no_nul(schema, components, set())
            for content in operation.get("requestBody", {}).get("content", {}).values():
                schema = content.get("schema", {})
                if "$ref" in schema:
                    request_components.add(schema["$ref"].rsplit("/", 1)[-1])
                else:
                    _no_nul(schema, components, set())
            statuses = ["400", "401", "403", "404", "503"]
            if method in ("post", "patch", "put", "delete"):
                statuses.append("409")
            for code in statuses:
                operation["responses"].setdefault(
                    code, {"description": ERROR_DESCRIPTIONS[code], "content": error_content}
                )
    for name, fields in REQUEST_NOT_NULL.items():
        for field in fields:
            components.get(name, {}).get("properties", {}).get(field, {}).pop("nullable", None)
    seen: set[str] = set()
    for name in sorted(request_components):
        _no_nul({"$ref": f"#/components/schemas/{name}"}, components, seen)
    for source, code, name, target, parameters in LINKS:
        if source in by_id and target in by_id and code in by_id[source]["responses"]:
            links = by_id[source]["responses"][code].setdefault("links", {})
            links[name] = {"operationId": target, "parameters": parameters}
    return result
