"""Fuzzing the HTTP API: schemathesis against the OpenAPI document the proxy serves, and
hypothesis against the request parser with bytes and JSON no schema describes.

Backend: the scripted upstream (tests/fake_upstream.py), so a request that gets through
costs milliseconds. Budgets are small and derandomized, so CI sees the same examples each
run: no 5xx from any input, every error OpenAI-shaped, every response as documented.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import threading

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import openapi
from proxy.app import ROUTER, create_app
from tests.conftest import make_config, require, wait_http
from tests.fake_upstream import make_app as fake_app

try:  # the dev extra; without it (or after an API change) only the schemathesis test cannot run
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_schema_conformance, status_code_conformance)
except ImportError as e:
    schemathesis, SCHEMATHESIS_ERROR = None, e

FUZZ = settings(max_examples=30, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
ERROR_KEYS = {"message", "type", "param", "code"}
MODELS = ("echo",)  # upstream faults are test_reliability's: here any 5xx is the proxy's own


def config(upstream: str = "http://127.0.0.1:9"):
    models = {name: {"backend": "upstream", "base_url": f"{upstream}/v1", "model": name, "read_timeout": 2.0}
              for name in MODELS}
    return make_config(models, defaults={"mode": "hybrid", "network": "local"})


def served_document() -> dict:
    """What GET /openapi.json serves for this config (checked against the live proxy below):
    schemathesis needs the document when tests are collected, before any server runs."""
    router = create_app(config())[ROUTER]
    return orjson.loads(orjson.dumps(openapi.document(list(router.models), list(router.devices.presets),
                                                      api_key=False, metrics_auth=False)))


class Live:
    """The scripted upstream and the proxy on their own event loop in a thread, on real
    ports: schemathesis and requests are synchronous."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.runners: list[web.AppRunner] = []
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.url = self.start(create_app(config(self.start(fake_app()))))
        wait_http(f"{self.url}/readyz")

    def start(self, app: web.Application) -> str:
        async def go():
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            self.port = site._server.sockets[0].getsockname()[1]
            return f"http://127.0.0.1:{self.port}"
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, content type, body) of one request to the proxy."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read()
        finally:
            conn.close()

    def close(self) -> None:
        async def stop():
            for runner in reversed(self.runners):
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def live():
    server = Live()
    yield server
    server.close()


if schemathesis is not None:
    schema = schemathesis.openapi.from_dict(served_document())
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=30,
                                    deterministic=True)

    @schema.parametrize()
    @FUZZ
    def test_every_operation_holds_to_its_document(case, live):
        """Valid and invalid requests drawn from /openapi.json: never a 5xx, every status and
        content type documented, every JSON body (errors included) matching its schema, and
        everything the document forbids rejected with a 4xx."""
        response = case.call(base_url=live.url, timeout=10)
        case.validate_response(response, checks=[  # each check raises on a violation
            not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
            negative_data_rejection])
        operation = served_document()["paths"][case.path].get(case.method.lower())
        # a method the document does not list (schemathesis tries some) is refused as such
        documented = operation["responses"] if operation else {"405": {}}
        assert str(response.status_code) in documented, (case.method, case.path, response.text[:300])
else:
    def test_every_operation_holds_to_its_document():
        require(False, f"schemathesis ({SCHEMATHESIS_ERROR})", "pip install -e '.[dev]'")


def test_the_proxy_serves_the_fuzzed_document_and_it_covers_every_route(live):
    doc = orjson.loads(live.request("GET", "/openapi.json")[2])
    assert doc == served_document()
    routes = {(r.method.lower(), r.resource.canonical) for r in create_app(config()).router.routes()
              if r.method != "HEAD"}
    assert routes == {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == list(MODELS)


def test_model_names_stay_behind_the_api_key():
    doc = openapi.document(["secret-model"], ["local"], api_key=True, metrics_auth=True)
    assert "secret-model" not in orjson.dumps(doc).decode()
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]


# --- below the schema: raw bytes and arbitrary JSON ---

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
FIELDS = ["model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "n", "stop", "tools", "tool_choice",
          "chat_template_kwargs"]
# Known fields with any JSON value, and well-formed requests with one field replaced.
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6) | st.builds(
    lambda field, value, stream: {"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                                  "stream": stream, field: value},
    st.sampled_from(FIELDS[1:]), JSON_VALUES, st.booleans())


def answered_as_openai(status: int, ctype: str, body: bytes) -> bool:
    """A 2xx, or a 4xx with an OpenAI-shaped error; a stream ends in [DONE] or an error event."""
    if status >= 500:
        return False
    if status >= 400:
        return set(orjson.loads(body)["error"]) == ERROR_KEYS
    if ctype.startswith("text/event-stream"):
        events = [b[6:] for b in body.split(b"\n\n") if b.startswith(b"data: ")]
        return events[-1] == b"[DONE]" or set(orjson.loads(events[-1])["error"]) == ERROR_KEYS
    return True


@given(body=BODIES, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
@FUZZ
def test_arbitrary_json_in_known_fields(live, body, path):
    # json, not orjson: integers beyond 64 bits must reach the proxy too
    status, ctype, answer = live.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert answered_as_openai(status, ctype, answer), (status, answer[:300])


@given(raw=st.binary(max_size=256) | st.text(max_size=64).map(str.encode),
       ctype=st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain", ""]))
@FUZZ
def test_arbitrary_bytes(live, raw, ctype):
    status, answer_ctype, answer = live.request("POST", "/v1/chat/completions", raw, {"Content-Type": ctype})
    assert answered_as_openai(status, answer_ctype, answer), (status, answer[:300])
    assert live.request("GET", "/healthz")[0] == 200
