"""The gateway's HTTP surface as an OpenAPI 3.1 document (``GET /openapi.json``, ``docs/openapi.yaml``).

Built from the code rather than written beside it: the admin request bodies
are the pydantic models the admin API validates with, so the document cannot
drift from what is enforced. The model endpoints are described as the gateway
checks them (``gateway/requests.py``), loosely where the upstream decides:
any other field passes through, and an upstream's own 4xx answer is relayed.

``python -m distillguard.gateway.openapi`` prints it as YAML (that is how
``docs/openapi.yaml`` is made; a test keeps the two equal), and a schemathesis
run in the test-suite fuzzes a live gateway against it.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

import orjson
from pydantic import BaseModel

from distillguard.gateway.admin import (
    MAX_ADMIN_BODY,
    MAX_BULK_BODY,
    MAX_WATERMARK_BODY,
    AccountCreate,
    AccountStatus,
    BulkAccounts,
    KeyCreate,
    Limits,
)

__all__ = ["allowed_methods", "build_openapi", "openapi_json"]

JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}
_ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
_OBJECT: dict[str, Any] = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(codes: dict[str, str], schema: dict[str, Any] = _ERROR) -> dict[str, Any]:
    return {code: _json(schema, text) for code, text in codes.items()}


_MODEL_ERRORS = {
    "400": "malformed JSON, a body nested too deeply, or a request the upstream protocol cannot carry",
    "401": "missing or unknown API key",
    "403": "revoked key, suspended or blocked account, attestation required, region not served",
    "404": "no upstream serves this model",
    "408": "the request's head or body arrived too slowly",
    "413": "body larger than max_body_bytes",
    "422": "a field of the wrong type or a required field missing",
    "429": "a limit was reached (Retry-After says when to retry)",
    "4XX": "an upstream's own client error, relayed",
    "502": "the upstream failed, closed the connection or broke the protocol",
    "503": "the upstream is unreachable or overloaded",
    "504": "the upstream did not answer in time",
}
_ADMIN_ERRORS = {
    "401": "missing or wrong admin token",
    "404": "no such route, account, key, review or cluster",
    "413": f"body larger than {MAX_ADMIN_BODY} bytes ({MAX_WATERMARK_BODY} for watermark detect, {MAX_BULK_BODY} for accounts/bulk)",
    "422": "a body that is not the expected object, or a field that is wrong or unknown",
    "503": "the store is unavailable (retry), or online detection is off (risk, flagged)",
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"type": "string"}, "content": {}},
}
_SAMPLING = {  # null is taken as absent
    "max_tokens": {"type": ["integer", "null"]},
    "max_completion_tokens": {"type": ["integer", "null"]},
    "n": {"type": ["integer", "null"]},
    "top_logprobs": {"type": ["integer", "null"]},
    "temperature": {"type": ["number", "null"]},
    "top_p": {"type": ["number", "null"]},
    "stream": {"type": ["boolean", "null"]},
}
_STREAM = {"text/event-stream": {"schema": {"description": "each event's data: a JSON chunk, or [DONE]"}}}


def _model_operation(summary: str, required: list[str], properties: dict[str, Any], answer: dict[str, Any], *,
                     anthropic: bool = False, streams: bool = True) -> dict[str, Any]:
    body = {"type": "object", "required": ["model", *required],
            "properties": {"model": {"type": "string"}, **properties}, "additionalProperties": True}
    ok: dict[str, Any] = {"description": "the upstream's answer (a stream of server-sent events when stream is true)",
                          "content": {JSON: {"schema": answer}, **(_STREAM if streams else {})}}
    return {
        "summary": summary,
        "security": [{"apiKey": []}, {"anthropicKey": []}] if anthropic else [{"apiKey": []}],
        "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
        "responses": {"200": ok, **_errors(_MODEL_ERRORS, _ANTHROPIC_ERROR if anthropic else _ERROR)},
    }


def _admin(summary: str, answer: dict[str, Any], *, body: type[BaseModel] | None = None, created: bool = False,
           parameters: list[dict[str, Any]] | None = None, extra: dict[str, str] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "tags": ["admin"], "security": [{"adminToken": []}]}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        needed = any(field.is_required() for field in body.model_fields.values())  # else an empty body means {}
        operation["requestBody"] = {"required": needed, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
    codes = {k: v for k, v in _ADMIN_ERRORS.items() if body is not None or k not in ("413", "422")}
    codes.update(extra or {})
    operation["responses"] = {"201" if created else "200": _json(answer, "done"), **_errors(codes)}
    return operation


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or {"type": "string"}}


def _components() -> dict[str, Any]:
    from distillguard.policy.admin import ManualAction, ReviewResolution
    from distillguard.watermark.gateway import WatermarkDetectRequest

    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "code": {"type": ["string", "null"]}, "param": {}}}}},
        "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
            "type": {"const": "error"},
            "error": {"type": "object", "required": ["type", "message"],
                      "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}},
        "Account": {"type": "object", "required": ["account_id", "name", "status"], "properties": {
            "account_id": {"type": "string"}, "name": {"type": "string"}, "org_id": {"type": ["string", "null"]},
            "status": {"enum": ["active", "suspended"]}, "limits": {"type": ["object", "null"]},
            "created_at": {"type": "number"}}},
        "Key": {"type": "object", "required": ["key_id", "account_id"], "properties": {
            "key_id": {"type": "string"}, "account_id": {"type": "string"}, "prefix": {"type": "string"},
            "revoked": {"type": "boolean"}, "limits": {"type": ["object", "null"]}}},
        "List": {"type": "object", "required": ["data"], "properties": {"data": {"type": "array"}}},
    }
    for model in (AccountCreate, BulkAccounts, KeyCreate, Limits, AccountStatus, ManualAction, ReviewResolution, WatermarkDetectRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "schemas": schemas,
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "a distillguard API key (sk-dg-…)"},
            "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "adminToken": {"type": "http", "scheme": "bearer", "description": "the admin_token setting"},
        },
    }


def _paths() -> dict[str, Any]:
    chat = {"type": "object", "properties": {"choices": {"type": "array"}, "usage": {}}}
    message = {"type": "object", "properties": {"type": {"const": "message"}, "content": {"type": "array"}}}
    account_id = _path_param("account_id", "an account id (acct_…)")
    list_of = {"$ref": "#/components/schemas/List"}
    return {
        "/v1/chat/completions": {"post": _model_operation(
            "OpenAI chat completions", ["messages"], {"messages": {"type": "array", "items": _MESSAGE}, **_SAMPLING}, chat)},
        "/v1/completions": {"post": _model_operation(
            "OpenAI legacy completions", ["prompt"], {"prompt": {"type": ["string", "array"]}, **_SAMPLING}, chat)},
        "/v1/embeddings": {"post": _model_operation(
            "OpenAI embeddings", ["input"], {"input": {"type": ["string", "array"]}}, {"type": "object"}, streams=False)},
        "/v1/responses": {"post": _model_operation(
            "OpenAI Responses API (OpenAI-protocol upstreams only)", [],
            {"input": {"type": ["string", "array", "null"], "items": {"type": "object"}}, "instructions": {"type": ["string", "null"]},
             "max_output_tokens": {"type": ["integer", "null"]}, "temperature": {"type": ["number", "null"]},
             "top_p": {"type": ["number", "null"]}, "stream": {"type": ["boolean", "null"]}},
            {"type": "object", "properties": {"output": {"type": "array"}, "usage": {}}})},
        "/v1/messages": {"post": _model_operation(
            "Anthropic messages", ["messages", "max_tokens"],
            {"messages": {"type": "array", "items": _MESSAGE}, "system": {}, "tools": {"type": "array"}, **_SAMPLING},
            message, anthropic=True)},
        "/v1/messages/count_tokens": {"post": _model_operation(
            "Anthropic token count", ["messages"], {"messages": {"type": "array", "items": _MESSAGE}, "system": {}},
            {"type": "object", "required": ["input_tokens"], "properties": {"input_tokens": {"type": "integer"}}},
            anthropic=True, streams=False)},
        "/v1/models": {"get": {
            "summary": "models this gateway routes", "security": [{"apiKey": []}],
            "responses": {"200": _json({"type": "object", "required": ["object", "data"], "properties": {
                "object": {"const": "list"}, "data": {"type": "array", "items": {
                    "type": "object", "required": ["id", "object"], "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}}},
                "the model list"), **_errors({k: _MODEL_ERRORS[k] for k in ("401", "403", "429")})}}},
        "/v1/distillguard/enroll": {"post": {
            "summary": "enroll an attesting install's public key (docs/attestation.md)", "security": [{"apiKey": []}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "type": "object", "required": ["install_id", "public_key", "created", "proof"], "properties": {
                    "install_id": {"type": "string", "minLength": 8, "maxLength": 128},
                    "public_key": {"type": "string", "description": "base64url raw Ed25519 public key"},
                    "created": {"type": "integer", "description": "POSIX seconds"},
                    "proof": {"type": "string", "description": "base64url Ed25519 signature (docs/attestation.md)"}}}}}},
            "responses": {"200": _json({"type": "object", "required": ["install_id", "status"], "properties": {
                "install_id": {"type": "string"}, "status": {"enum": ["enrolled", "already_enrolled"]}}}, "enrolled"),
                **_errors({"400": "not JSON", "401": "missing or unknown API key", "403": "a proof that does not verify",
                           "404": "attestation not enabled", "409": "enrolled with another key or account",
                           "413": "body too large", "422": "a field missing or malformed", "503": "the store failed"})}}},
        "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {"200": _json(
            {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}, "the process answers")}}},
        "/readyz": {"get": {"summary": "readiness: the event store and every upstream", "security": [], "responses": {
            code: _json({"type": "object", "required": ["status", "problems"], "properties": {
                "status": {"enum": ["ready", "not_ready"]}, "problems": {"type": "array", "items": {"type": "string"}}}}, text)
            for code, text in (("200", "ready"), ("503", "not ready; problems says why"))}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {
            "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "this document", "security": [], "responses": {"200": _json(_OBJECT, "OpenAPI 3.1")}}},
        "/admin/v1/status": {"get": _admin("keys loaded, event sink statistics, upstreams, components", _OBJECT)},
        "/admin/v1/accounts": {
            "get": _admin("all accounts", list_of),
            "post": _admin("create an account", {"$ref": "#/components/schemas/Account"}, body=AccountCreate, created=True),
        },
        "/admin/v1/accounts/bulk": {"post": _admin(
            "create up to 10,000 accounts, each with a key if asked, in one transaction (the secrets are in this answer only); "
            "an item whose external_id the store already holds is answered with status 'exists' and not created again",
            {"type": "object", "required": ["data", "created", "existing"], "properties": {
                "data": {"type": "array", "items": {"type": "object", "required": ["account_id", "name", "org_id", "external_id", "key_id",
                                                                                   "secret", "status"],
                                                    "properties": {"account_id": {"type": "string"}, "name": {"type": "string"},
                                                                   "org_id": {"type": ["string", "null"]},
                                                                   "external_id": {"type": ["string", "null"]},
                                                                   "key_id": {"type": ["string", "null"]},
                                                                   "secret": {"type": ["string", "null"]},
                                                                   "status": {"enum": ["created", "exists"]}}}},
                "created": {"type": "object", "required": ["accounts", "keys"],
                            "properties": {"accounts": {"type": "integer"}, "keys": {"type": "integer"}}},
                "existing": {"type": "integer"}}},
            body=BulkAccounts, created=True)},
        "/admin/v1/accounts/{account_id}": {"get": _admin("one account with its keys", {"$ref": "#/components/schemas/Account"},
                                                          parameters=[account_id])},
        "/admin/v1/accounts/{account_id}/keys": {"post": _admin(
            "issue a key (the secret is in this answer only)", {"type": "object", "required": ["key_id", "account_id", "secret"],
                                                                 "properties": {"secret": {"type": "string"}}},
            body=KeyCreate, created=True, parameters=[account_id])},
        "/admin/v1/accounts/{account_id}/limits": {m: _admin(
            "set the account's limit overrides", {"type": "object", "required": ["account_id", "limits"]},
            body=Limits, parameters=[account_id]) for m in ("put", "post")},
        "/admin/v1/accounts/{account_id}/status": {m: _admin(
            "suspend or re-activate the account", {"type": "object", "required": ["account_id", "status"]},
            body=AccountStatus, parameters=[account_id]) for m in ("put", "post")},
        "/admin/v1/accounts/{account_id}/action": {"post": _admin(
            "a manual policy override (docs/policy.md)", {"type": "object", "required": ["account_id", "action"]},
            body=_manual_action(), parameters=[account_id])},
        "/admin/v1/accounts/{account_id}/risk": {"get": _admin(
            "the account's risk entry, as in a scan report, with scored: true (with the fleet's central scorer, every "
            "account it scored); 404 with code account_not_scored for an existing account with no entry; 503 when the "
            "central scorer's risk table in Redis cannot be read", _OBJECT, parameters=[account_id])},
        "/admin/v1/keys": {"get": _admin("keys (prefix only, never secrets)", list_of,
                                         parameters=[_query("account_id", "only this account's keys")])},
        "/admin/v1/keys/{key_id}": {"delete": _admin("revoke a key", {"type": "object", "required": ["key_id", "revoked"]},
                                                     parameters=[_path_param("key_id", "a key id (key_…)")])},
        "/admin/v1/keys/{key_id}/revoke": {"post": _admin("revoke a key", {"type": "object", "required": ["key_id", "revoked"]},
                                                          parameters=[_path_param("key_id", "a key id (key_…)")])},
        "/admin/v1/events": {"get": {
            **_admin("the event log in time order", _OBJECT, parameters=[_query("since", "ISO-8601 timestamp, inclusive", {"type": "string", "format": "date-time"})],
                     extra={"400": "since is not a timestamp"}),
            "responses": {"200": {"description": "one event per line", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                          **_errors({"400": "since is not a timestamp", **{k: _ADMIN_ERRORS[k] for k in ("401", "503")}})}}},
        "/admin/v1/flagged": {"get": _admin("accounts and clusters at or above the flag threshold", _OBJECT)},
        "/admin/v1/clusters": {"get": _admin("clusters in the online scorer's latest report", list_of)},
        "/admin/v1/clusters/{cluster_id}/action": {"post": _admin(
            "a manual override for every member of a cluster", {"type": "object", "required": ["cluster_id", "action", "accounts"]},
            body=_manual_action(), parameters=[_path_param("cluster_id", "a cluster id (cl_…)")])},
        "/admin/v1/audit": {"get": _admin("the audit trail, newest first", list_of, parameters=[
            _query("limit", "how many rows (1–10000)", {"type": "integer", "minimum": 1, "maximum": 10000})],
            extra={"422": "limit out of range"})},
        "/admin/v1/review": {"get": _admin("the review queue", list_of, parameters=[
            _query("status", "open (default), confirmed or dismissed; empty for all")])},
        "/admin/v1/review/{review_id}": {"post": _admin(
            "resolve a review item", {"type": "object", "required": ["review_id", "status"]},
            body=_review_resolution(), parameters=[_path_param("review_id", "a review id (rev_…)")])},
        "/admin/v1/watermark/detect": {"post": _admin("test a text for the gateway's watermark (docs/watermark.md)",
                                                      _OBJECT, body=_watermark_request())},
    }


def _manual_action() -> type[BaseModel]:
    from distillguard.policy.admin import ManualAction

    return ManualAction


def _review_resolution() -> type[BaseModel]:
    from distillguard.policy.admin import ReviewResolution

    return ReviewResolution


def _watermark_request() -> type[BaseModel]:
    from distillguard.watermark.gateway import WatermarkDetectRequest

    return WatermarkDetectRequest


@functools.cache
def build_openapi() -> dict[str, Any]:
    """The whole document (built once; the gateway serves it as is)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "distillguard gateway", "version": "0.1.0",
                 "description": "OpenAI- and Anthropic-compatible gateway, and its admin API (docs/gateway.md)."},
        "paths": _paths(),
        "components": _components(),
    }


@functools.cache
def openapi_json() -> bytes:
    return orjson.dumps(build_openapi())


@functools.cache
def _route_patterns() -> list[tuple[re.Pattern[str], list[str]]]:
    return [(re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"), sorted(m.upper() for m in item))
            for template, item in build_openapi()["paths"].items()]


def allowed_methods(path: str) -> list[str]:
    """The methods documented for ``path`` (empty when no route matches): the ``Allow`` header of a 405."""
    for pattern, methods in _route_patterns():
        if pattern.match(path):
            return methods
    return []


def main() -> None:
    import yaml

    sys.stdout.write("# Generated by `python -m distillguard.gateway.openapi`; do not edit (tests/test_openapi.py checks it).\n")
    sys.stdout.write(yaml.safe_dump(build_openapi(), sort_keys=False, allow_unicode=True, width=120))


if __name__ == "__main__":
    main()
