"""The proxy's HTTP API as an OpenAPI 3.0 document, served at GET /openapi.json.

Built per app from its config, so the enums are the deployment's own: the network
presets, and the model names unless an API key is set (then /v1/models, behind the key,
is where they are listed). Request schemas say what ``proxy.validate`` enforces and no
more: anything the document forbids, the proxy rejects with a 4xx, which is what the
fuzz tests (tests/proxy/test_fuzz.py) hold it to. Every error, whatever its status, has
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from proxy.config import AUTO, MODES
from proxy.validate import MAX_TOKENS_LIMIT, ROLES

JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


ERROR = _json(_ref("Error"), "An OpenAI-shaped error.")


def _errors(*statuses: int) -> dict:
    return {str(s): ERROR for s in statuses}


def _number(lo: float, hi: float) -> dict:
    return {"type": "number", "minimum": lo, "maximum": hi, "nullable": True}


def _integer(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi, "nullable": True}


def _generation_fields(models: list[str] | None) -> dict:
    """Fields chat and text completions share (validate._common)."""
    model = {"type": "string", "minLength": 1}
    if models is not None:
        model["enum"] = models
    return {
        "model": model,
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "nullable": True,
                           "properties": {"include_usage": {"type": "boolean"}}},
        "max_tokens": _integer(1, MAX_TOKENS_LIMIT),
        "max_completion_tokens": _integer(1, MAX_TOKENS_LIMIT),
        "temperature": _number(0, 2),
        "top_p": _number(0, 1),
        "presence_penalty": _number(-2, 2),
        "frequency_penalty": _number(-2, 2),
        "seed": _integer(-(2**63), 2**64 - 1),
        "n": _integer(1, 1),
        "stop": {"nullable": True, "anyOf": [
            {"type": "string"},
            {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}}]},
    }


def _schemas(models: list[str] | None) -> dict:
    part = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
            "description": "A content part; a text part also needs a string 'text'."}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {"nullable": True, "anyOf": [{"type": "string"}, {"type": "array", "items": part}]}}}
    usage = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
             "properties": {k: {"type": "integer", "minimum": 0}
                            for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
    return {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {
            "error": {"type": "object", "required": ["message", "type", "param", "code"],
                      "additionalProperties": False, "properties": {
                          "message": {"type": "string"}, "type": {"type": "string"},
                          "param": {"type": "string", "nullable": True},
                          "code": {"type": "string", "nullable": True}}}}},
        "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            **_generation_fields(models),
            "messages": {"type": "array", "minItems": 1, "items": message},
            "tools": {"type": "array", "nullable": True, "items": {
                "type": "object", "required": ["type", "function"], "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "description": {"type": "string"},
                        "parameters": {"type": "object", "description": "A JSON Schema (checked as one)."}}}}}},
            "tool_choice": {"nullable": True, "description": "Needs 'tools'; a named function must be one of them.",
                            "anyOf": [{"type": "string", "enum": ["none", "auto", "required"]},
                                      {"type": "object", "required": ["type", "function"]}]},
            "chat_template_kwargs": {"type": "object", "nullable": True,
                                     "description": "Extra variables for the chat template, e.g. enable_thinking."}},
            "description": "Unknown fields are kept and forwarded to an upstream backend."},
        "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
            **_generation_fields(models),
            "prompt": {"anyOf": [{"type": "string"},
                                 {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}}]}},
            "description": "One prompt per request. Unknown fields are kept."},
        "Completion": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                       "properties": {"id": {"type": "string"},
                                      "object": {"type": "string", "enum": ["chat.completion", "text_completion"]},
                                      "created": {"type": "integer"}, "model": {"type": "string"},
                                      "choices": {"type": "array", "items": {"type": "object"}},
                                      "usage": usage,
                                      "edgemeter": {"type": "object", "description": "The request's record."}}},
        "Model": {"type": "object", "required": ["id", "object", "owned_by", "root"], "properties": {
            "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}, "root": {"type": "string"},
            "max_model_len": {"type": "integer", "nullable": True},
            "placements": {"type": "object", "description": "device and/or cloud: the backend each answers"},
            "placement_emulated": {"type": "boolean"}}},
        "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")}}},
        "SessionRecord": {"type": "object", "required": ["session", "mode", "network", "calls"], "properties": {
            "session": {"type": "string"}, "mode": {"type": "string", "enum": [*MODES, AUTO]},
            "network": {"type": "string"}, "calls": {"type": "integer", "minimum": 0}}},
    }


def document(models: list[str], networks: list[str], *, api_key: bool, metrics_auth: bool) -> dict:
    listed = None if api_key else models
    routing = [
        {"name": "X-Edgemeter-Mode", "in": "header", "schema": {"type": "string", "enum": [*MODES, AUTO]},
         "description": "Deployment mode for this request (default from config); auto: the configured policy picks."},
        {"name": "X-Edgemeter-Task", "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 128},
         "description": "Task class, for auto mode's policy (e.g. gsm8k)."},
        {"name": "X-Edgemeter-Auto-Scope", "in": "header", "schema": {"type": "string", "enum": ["call", "session"]},
         "description": "Auto mode: decide per call, or once per session (default: auto.scope)."},
        {"name": "X-Edgemeter-Network", "in": "header", "schema": {"type": "string", "enum": networks},
         "description": "Simulated network preset."},
        {"name": "X-Edgemeter-Device", "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 128},
         "description": "Simulated device: its own link and radio (printable characters)."},
        {"name": "X-Edgemeter-Session", "in": "header", "schema": {"type": "string", "minLength": 1, "maxLength": 128},
         "description": "Agent session the call belongs to (printable characters)."},
    ]
    secured = [{"bearerAuth": []}] if api_key else []
    auth_errors = (401,) if api_key else ()

    def generate(request: str, summary: str) -> dict:
        return {"post": {
            "summary": summary, "parameters": routing, "security": secured,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
            "responses": {
                "200": {"description": "The completion; with stream: true, server-sent events ending in "
                                       "data: [DONE] (a failure after the first token is an error event).",
                        "content": {JSON: {"schema": _ref("Completion")},
                                    "text/event-stream": {"schema": {
                                        "type": "object", "required": ["data"], "description": "One event: a chunk "
                                        "as JSON, an error as JSON, or [DONE].",
                                        "properties": {"data": {"type": "string"}}}}}},
                **_errors(400, *auth_errors, 404, 408, 413, 415, 429, 500, 502, 503, 504),
                "default": ERROR}}}

    doc = {
        "openapi": "3.0.3",
        "info": {"title": "Edgemeter", "version": "1",
                 "description": "OpenAI-compatible proxy that measures LLM traffic: per-token latency, simulated "
                                "networks, radio and compute energy."},
        "paths": {
            "/v1/chat/completions": generate("ChatRequest", "Chat completion (OpenAI)"),
            "/v1/completions": generate("CompletionRequest", "Text completion (OpenAI)"),
            "/v1/models": {"get": {"summary": "Configured models", "security": secured, "responses": {
                "200": _json(_ref("ModelList"), "Every configured model."), **_errors(*auth_errors)}}},
            "/v1/models/{model}": {"get": {"summary": "One configured model", "security": secured,
                                           "parameters": [{"name": "model", "in": "path", "required": True,
                                                           "schema": {"type": "string"}}],
                                           "responses": {"200": _json(_ref("Model"), "The model."),
                                                         **_errors(*auth_errors, 404)}}},
            "/edgemeter/v1/sessions/{session_id}/end": {"post": {
                "summary": "End an agent session; in cloud mode its final answer comes down the device link.",
                "security": secured,
                "parameters": [{"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {JSON: {"schema": {
                    "type": "object", "properties": {"final_answer": {"type": "string"}}}}}},
                "responses": {"200": _json(_ref("SessionRecord"), "The session's totals."),
                              **_errors(400, *auth_errors, 404, 408, 413, 415)}}},
            "/edgemeter/v1/devices/{device_id}/reset": {"post": {
                "summary": "Put a simulated device back to an idle radio and fresh links: its pending radio tail is "
                           "settled as run out in full (no real-time wait), its links dropped.",
                "security": secured,
                "parameters": [{"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json({"type": "object", "required": ["device", "links", "tail_settled_j"],
                                            "properties": {"device": {"type": "string"},
                                                           "links": {"type": "array", "items": {"type": "string"}},
                                                           "tail_settled_j": {"type": "number"}}},
                                           "What was reset."),
                              **_errors(*auth_errors)}}},
            "/edgemeter/v1/info": {"get": {
                "summary": "Provenance: each model's weights hash, format, quantization and engine; the effective "
                           "config (presets, radio profiles, energy, seed; secrets redacted); the git commit.",
                "security": secured,
                "responses": {"200": _json({"type": "object", "required": ["edgemeter", "models", "config"],
                                            "properties": {"edgemeter": {"type": "object"},
                                                           "models": {"type": "object"},
                                                           "config": {"type": "object"}}}, "Provenance."),
                              **_errors(*auth_errors)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": secured if metrics_auth else [],
                                 "responses": {"200": {"description": "Prometheus text format.",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               **_errors(*(auth_errors if metrics_auth else ()))}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(
                {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                "The process serves.")}}},
            "/readyz": {"get": {"summary": "Readiness: every model loaded", "responses": {
                str(status): _json({"type": "object", "required": ["status", "models"], "properties": {
                    "status": {"type": "string", "enum": [state]},
                    "models": {"type": "object", "additionalProperties": {"type": "boolean"}}}}, state)
                for status, state in ((200, "ready"), (503, "loading"))}}},
            "/health": {"get": {"summary": "Readiness as vLLM and SGLang answer it (empty body)", "responses": {
                "200": {"description": "Every model loaded."}, "503": {"description": "Still loading."}}}},
            "/ping": {"get": {"summary": "Same as /health", "responses": {
                "200": {"description": "Every model loaded."}, "503": {"description": "Still loading."}}}},
            "/version": {"get": {"summary": "Edgemeter's version", "responses": {"200": _json(
                {"type": "object", "required": ["version"], "properties": {"version": {"type": "string"}}},
                "The installed version.")}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3.0 document.")}}},
        },
        "components": {"schemas": _schemas(listed)},
    }
    if api_key:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return doc


async def serve(request: web.Request) -> web.Response:
    from .app import CONFIG, ROUTER  # the app module imports this one
    router, config = request.app[ROUTER], request.app[CONFIG]
    doc = document(list(router.models), list(router.devices.presets), api_key=bool(config.server.api_key),
                   metrics_auth=config.server.metrics_auth)
    return web.Response(body=orjson.dumps(doc), content_type=JSON)
