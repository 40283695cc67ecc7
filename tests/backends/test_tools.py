"""Native tool calls on the in-process engines: the parser on constructed output, and the embedded
SmolLM2 (whose template has no tools section) forced into valid calls by a grammar, through the
official openai client."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

from backends.base import Finish, TextDelta, ToolCallDelta, Usage
from backends.text import parsed
from backends.tools import ToolCallParser, ToolPlan
from tests.backends.test_llama import submitted_jobs
from tests.conftest import local_model, wait_ready

# Units the model would not write unprompted: only the grammar makes a call carry them.
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                             "unit": {"type": "string", "enum": ["rankine", "reaumur"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
             "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
             "required": ["a", "b"]}}}]
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


# --- the parser, on constructed model output ---

async def run_parser(pieces: list[str], plan: ToolPlan, constrained=False) -> list:
    async def events():
        for i, p in enumerate(pieces):
            yield TextDelta(p, 1, t=float(i))
        yield Finish("stop", t=float(len(pieces)))
        yield Usage(5, len(pieces))
    return [ev async for ev in parsed(events(), None, ToolCallParser(plan, constrained))]


def split(evs):
    text = "".join(e.text for e in evs if isinstance(e, TextDelta))
    calls = [e for e in evs if isinstance(e, ToolCallDelta)]
    return text, calls, next(e.reason for e in evs if isinstance(e, Finish))


async def test_auto_hermes_call_parsed_from_streamed_pieces():
    plan = ToolPlan(TOOLS, "auto")
    pieces = ["Let me check.", " <tool", "_call>\n{\"name\": \"get_", "weather\", \"arguments\": {\"city\": ",
              "\"Paris\", \"unit\": \"rankine\"}}\n</tool_", "call>", "<tool_call>{\"name\": \"add\", ",
              "\"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>"]
    evs = await run_parser(pieces, plan)
    text, calls, reason = split(evs)
    assert text == "Let me check. " and reason == "tool_calls"
    assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris", "unit": "rankine"}), (1, "add", {"a": 1, "b": 2})]
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    # every generated token is accounted to exactly one emitted delta
    assert sum(e.tokens for e in evs if isinstance(e, (TextDelta, ToolCallDelta))) == len(pieces)
    assert calls[0].t == 5.0  # sent when its closing tag arrived, not at the end of the output


async def test_auto_llama3_json_calls_and_fallbacks():
    plan = ToolPlan(TOOLS, "auto")
    _, calls, _ = split(await run_parser(['{"name": "add", "parameters": {"a": 2, "b": 3}}; ',
                                          '{"name": "add", "arguments": {"a": 4, "b": 5}}'], plan))
    assert [json.loads(c.arguments) for c in calls] == [{"a": 2, "b": 3}, {"a": 4, "b": 5}]
    # an unknown function, broken JSON, a plain answer: text, as the model wrote it
    for pieces in (['<tool_call>{"name": "rm", "arguments": {}}</tool_call>'],
                   ['<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>'],
                   ['{"a": 1}'], ["The weather ", "is fine < 3 degrees."]):
        text, calls, reason = split(await run_parser(pieces, plan))
        assert text == "".join(pieces) and calls == [] and reason == "stop"
    # a named choice only accepts that function
    text, calls, _ = split(await run_parser(['<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>'],
                                            ToolPlan(TOOLS, NAMED)))
    assert calls == [] and "add" in text


async def test_unclosed_call_at_the_end_still_counts():
    _, calls, reason = split(await run_parser(['<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'],
                                              ToolPlan(TOOLS, "auto")))
    assert [c.name for c in calls] == ["add"] and reason == "tool_calls"


def test_generic_prompt_carries_history_and_forced_schema():
    plan = ToolPlan(TOOLS, "required")
    history = [{"role": "user", "content": "2+3?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    out = plan.generic_messages(history)
    assert out[0]["role"] == "system" and "get_weather" in out[0]["content"] and "must call" in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\n5\n</tool_response>"}
    schema = plan.forced_schema()
    good = {"name": "add", "arguments": {"a": 1, "b": 2}}
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "add", "arguments": {"city": "x", "unit": "rankine"}}, schema)
    assert ToolPlan.from_body({"tools": TOOLS, "tool_choice": "none"}) is None


# --- the embedded SmolLM2 through the proxy and the openai client ---

@pytest.fixture
async def server(aiohttp_server):
    from proxy.app import create_app
    from proxy.config import from_dict
    srv = await aiohttp_server(create_app(from_dict({"models": {"smollm2": local_model(slots=2)}})))
    await wait_ready(srv)
    return srv


@pytest.fixture
def client(server):
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)


def backend_of(server):
    from proxy.app import ROUTER
    return server.app[ROUTER].models["smollm2"]["device"].backend


async def test_forced_call_validates_against_the_schema(client, server, monkeypatch):
    """Fails without the grammar: unconstrained, SmolLM2 answers in prose and never says rankine or reaumur."""
    jobs = submitted_jobs(backend_of(server), monkeypatch)
    r = await client.chat.completions.create(model="smollm2", messages=MSG, tools=TOOLS, tool_choice=NAMED,
                                             temperature=0, max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert choice.message.content is None
    # usage is the engine's: it evaluated exactly the prompt and the generated tokens
    # (the end-of-generation token that closed the call is sampled, never evaluated)
    assert r.usage.completion_tokens > len(call.function.arguments) // 8
    assert len(jobs[-1].fed) == r.usage.prompt_tokens + r.usage.completion_tokens
    record = r.model_extra["edgemeter"]
    assert record["completion_tokens"] == r.usage.completion_tokens and record["finish_reason"] == "tool_calls"


async def test_required_call_streamed(client):
    stream = await client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Add 2 and 3"}],
                                                  tools=TOOLS, tool_choice="required", temperature=0, max_tokens=80,
                                                  stream=True, stream_options={"include_usage": True})
    calls, reasons, usage, content = {}, [], None, ""
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            content += c.delta.content or ""
            reasons.append(c.finish_reason)
            for tc in c.delta.tool_calls or ():
                call = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
                call["arguments"] += tc.function.arguments or ""
    assert content == "" and reasons[-1] == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] in ("get_weather", "add")
    jsonschema.validate(json.loads(call["arguments"]), {t["function"]["name"]: t["function"]["parameters"]
                                                        for t in TOOLS}[call["name"]])
    assert usage.completion_tokens > 0


async def test_grammar_is_per_request_while_another_request_runs(client):
    """Two slots decode at once: the forced request's grammar must not touch the free one."""
    free = dict(model="smollm2", messages=MSG, temperature=0, max_tokens=24)
    alone = (await client.chat.completions.create(**free)).choices[0].message.content
    forced, beside = await asyncio.gather(
        client.chat.completions.create(model="smollm2", messages=MSG, tools=TOOLS, tool_choice=NAMED,
                                       temperature=0, max_tokens=80),
        client.chat.completions.create(**free))
    assert beside.choices[0].message.content == alone and not beside.choices[0].message.tool_calls
    assert "rankine" not in alone and "reaumur" not in alone
    jsonschema.validate(json.loads(forced.choices[0].message.tool_calls[0].function.arguments), WEATHER)


@pytest.mark.parametrize("tools,choice,param", [
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "strin"}}}}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "bad name"}}], None,
     "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], None, "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f"}}], {"type": "function", "function": {"name": "g"}},
     "tool_choice"),
    ([{"type": "function", "function": {"name": "f"}}], "always", "tool_choice"),
    ([{"type": "code"}], None, "tools[0]"),
])
async def test_malformed_tools_are_a_400_naming_the_field(client, tools, choice, param):
    kw = {"tool_choice": choice} if choice is not None else {}
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="smollm2", messages=MSG, tools=tools, max_tokens=4, **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == param


async def test_malformed_earlier_call_is_a_400(client):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
               {"role": "tool", "tool_call_id": "x", "content": "1"}]
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="smollm2", messages=history, tools=TOOLS, max_tokens=4)
    assert e.value.body["param"] == "messages[1].tool_calls[0]"
    # a parameters object jsonschema cannot even read
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=4, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"$schema": ["no", "uri"]}}}])
    assert e.value.body["param"] == "tools[0].function.parameters"


async def test_constrained_call_streams_its_arguments():
    """Under the grammar the call's shape is known: name first, then argument text as generated,
    without the call object's closing brace."""
    pieces = ['{"name": "get', '_weather", "arguments": ', '{"city": "Pa', 'ris", "unit": ',
              '"rankine"}', ' }', "\n"]
    evs = await run_parser(pieces, ToolPlan(TOOLS, NAMED), constrained=True)
    calls = [e for e in evs if isinstance(e, ToolCallDelta)]
    assert calls[0].name == "get_weather" and calls[0].id.startswith("call_") and calls[0].t == 1.0
    assert [c.arguments for c in calls] == ["", '{"city": "Pa', 'ris", "unit":', ' "rankine"', "}"]
    assert all(c.id is None and c.name is None for c in calls[1:])
    assert json.loads("".join(c.arguments for c in calls)) == {"city": "Paris", "unit": "rankine"}
    assert sum(c.tokens for c in calls) == 6 and split(evs)[2] == "tool_calls"
