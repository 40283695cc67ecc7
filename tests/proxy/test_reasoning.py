"""Thinking apart from the answer: the reasoning parser on constructed token streams, the proxy's
reasoning_content, reasoning token counts and time to first answer token, against injected truth."""
from __future__ import annotations

import time

import orjson
import pytest

from backends.base import Backend, Finish, TextDelta, Usage
from backends.reasoning import ReasoningParser, check_setting
from backends.text import parsed
from proxy.meter import RequestMeter
from tests.fake_upstream import ANSWER, REASONING_USAGE, THOUGHT, make_app

# A DeepSeek-R1-style output, one token per piece, the closing tag split across two tokens.
R1 = ["<think>", "Two", " plus", " two", "</th", "ink>", "\n\n", "It", " is", " 4."]
ANSWER_AT = 7  # index of the first answer token ("It")


async def run(pieces, kind="deepseek_r1", kwargs=None, t0=100.0, gap=0.01) -> list:
    async def events():
        for i, p in enumerate(pieces):
            yield TextDelta(p, 1, t=t0 + i * gap)
        yield Finish("stop", t=t0 + len(pieces) * gap)
        yield Usage(3, len(pieces), t=t0 + len(pieces) * gap)
    return [ev async for ev in parsed(events(), ReasoningParser(kind, kwargs))]


def texts(evs, reasoning):
    return "".join(e.text for e in evs if isinstance(e, TextDelta) and e.reasoning == reasoning)


async def test_split_counts_and_first_answer_time():
    evs = await run(R1)
    assert texts(evs, True) == "Two plus two" and texts(evs, False) == "It is 4."
    deltas = [e for e in evs if isinstance(e, TextDelta)]
    assert [d.reasoning for d in deltas] == sorted([d.reasoning for d in deltas], reverse=True)  # thinking first
    first_answer = next(d for d in deltas if not d.reasoning)
    assert first_answer.t == 100.0 + ANSWER_AT * 0.01 and first_answer.text == "It"
    usage = evs[-1]
    assert usage.reasoning_tokens == 6  # <think> .. ink>: the tokens before the answer began
    assert sum(d.tokens for d in deltas) == len(R1) == usage.completion_tokens


@pytest.mark.parametrize("pieces,kind,kwargs,thought,answer", [
    # the template opened <think> in the prompt: output starts inside thinking
    (["Hmm", "</think>", "Hi"], "deepseek_r1", None, "Hmm", "Hi"),
    (["Hmm", "</think>", "Hi"], "qwen3", {"enable_thinking": True}, "Hmm", "Hi"),
    # the model opened <think> itself, in the same piece as its first thought
    ([" <think>Hmm", "</think>", "Hi"], "deepseek_r1", None, "Hmm", "Hi"),
    # thinking turned off for the template: everything is answer
    (["Hi", " there"], "qwen3", {"enable_thinking": False}, "", "Hi there"),
    # cut off while thinking (max_tokens): all of it is reasoning, a half tag included
    (["<think>", "Long", " thought", "</thi"], "deepseek_r1", None, "Long thought</thi", ""),
    # a "<" inside the thinking is text, not a tag
    (["a < b", " and c <", "d", "</think>", "ok"], "qwen3", None, "a < b and c <d", "ok"),
])
async def test_parser_cases(pieces, kind, kwargs, thought, answer):
    evs = await run(pieces, kind, kwargs)
    assert texts(evs, True) == thought and texts(evs, False) == answer


def test_setting_is_checked():
    assert check_setting(None) is None and check_setting("none") is None and check_setting("qwen3") == "qwen3"
    with pytest.raises(ValueError, match="reasoning_parser"):
        check_setting("r1")


def test_meter_times_first_answer_token_on_injected_clock():
    meter = RequestMeter("m", "b", "local", "local", "d", None, t_received=100.0, bytes_up=10,
                         placement={"placement": "device", "placement_emulated": False})
    meter.produced(100.25, answer=False)
    meter.delivered(100.5, 1, answer=False)   # a reasoning token
    meter.delivered(101.0, 3, answer=False)
    meter.produced(101.5)
    meter.delivered(101.75, 1, answer=True)   # the first answer token
    meter.delivered(102.0, 1, answer=True)
    meter.completion_tokens, meter.reasoning_tokens = 6, 4
    rec = meter.finish(200)
    assert rec["ttft_s"] == 0.5 and rec["ttfat_s"] == 1.75 and rec["reasoning_tokens"] == 4


# --- through the proxy ---

class Scripted(Backend):
    """An in-process-like engine whose token stream and timing are the test's: R1's pieces, each
    made 50 ms after the last (injected times), through the real reasoning parser."""
    kind = "scripted"

    async def generate(self, req):
        t0 = time.perf_counter()

        async def raw():
            for i, p in enumerate(R1):
                yield TextDelta(p, 1, t=t0 + i * 0.05)
            yield Finish("stop", t=t0 + len(R1) * 0.05)
            yield Usage(3, len(R1), t=t0 + len(R1) * 0.05)
        async for ev in parsed(raw(), ReasoningParser("deepseek_r1", req.body.get("chat_template_kwargs"))):
            yield ev


@pytest.fixture
async def proxy(aiohttp_server, proxy_client):
    from proxy.app import ROUTER
    from proxy.router import Served
    fake = await aiohttp_server(make_app())
    client = await proxy_client({"reasoning": {"backend": "upstream", "base_url": str(fake.make_url("/v1"))}},
                                server={"request_log": None})
    scripted = Scripted("scripted")
    scripted.ready = True
    # a stand-in for both placements, as a plain model block would be
    client.server.app[ROUTER].models["scripted"] = {p: Served(p, scripted, "scripted", True, "in-process")
                                                     for p in ("device", "cloud")}
    return client


async def post(client, body):
    return await client.post("/v1/chat/completions", data=orjson.dumps(body),
                             headers={"Content-Type": "application/json"})


def sse(raw: bytes) -> list:
    return [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]


MSG = [{"role": "user", "content": "2+2?"}]


async def test_constructed_stream_through_the_proxy(proxy):
    body = await (await post(proxy, {"model": "scripted", "messages": MSG})).json()
    msg = body["choices"][0]["message"]
    assert msg["reasoning_content"] == "Two plus two" and msg["content"] == "It is 4."
    assert body["usage"]["completion_tokens"] == len(R1)
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}
    rec = body["edgemeter"]
    assert rec["reasoning_tokens"] == 6
    # non-streamed times are the engine's (injected): the first text is "Two" (token 1; <think> shows
    # nothing), the first answer text "It" (token 7), six tokens of 50 ms later
    assert rec["ttfat_s"] - rec["ttft_s"] == pytest.approx((ANSWER_AT - 1) * 0.05, abs=1e-9)

    chunks = sse(await (await post(proxy, {"model": "scripted", "messages": MSG, "stream": True,
                                           "stream_options": {"include_usage": True}})).read())
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Two plus two"
    assert "".join(d.get("content") or "" for d in deltas) == "It is 4."
    assert not any("reasoning_content" in d and "content" in d for d in deltas)  # one kind per delta
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 6}
    assert chunks[-1]["edgemeter"]["ttfat_s"] >= chunks[-1]["edgemeter"]["ttft_s"]


async def test_upstream_reasoning_content_passes_through(proxy):
    gap = 0.2
    chunks = sse(await (await post(proxy, {"model": "reasoning", "messages": MSG, "stream": True, "gap": gap,
                                           "stream_options": {"include_usage": True}})).read())
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == THOUGHT  # piece by piece
    assert [d["content"] for d in deltas if d.get("content")] == ANSWER
    usage, rec = chunks[-1]["usage"], chunks[-1]["edgemeter"]
    assert usage["completion_tokens_details"] == REASONING_USAGE["completion_tokens_details"]
    assert rec["reasoning_tokens"] == 6 and rec["completion_tokens"] == 9
    # the upstream paused `gap` between its thinking and its answer, so the answer cannot reach the
    # client sooner than `gap` after the request did (a bound a loaded machine cannot break; the gap
    # between the two first tokens can shrink when the thinking chunks are read late)
    assert rec["ttfat_s"] >= gap and rec["ttfat_s"] > rec["ttft_s"]

    body = await (await post(proxy, {"model": "reasoning", "messages": MSG, "send_usage": False})).json()
    assert body["choices"][0]["message"]["reasoning_content"] == "".join(THOUGHT)
    assert body["choices"][0]["message"]["content"] == "".join(ANSWER)
    # no usage from the upstream: one token per chunk, thinking counted apart
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": len(THOUGHT)}
    assert body["usage"]["completion_tokens"] == len(THOUGHT) + len(ANSWER)

    text = await (await proxy.get("/metrics")).text()
    counted = [line for line in text.splitlines() if line.startswith("edgemeter_reasoning_tokens_total{")
               and 'model="reasoning"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 6 + len(THOUGHT)
    assert any(line.startswith("edgemeter_time_to_first_answer_token_seconds_count{") and 'model="reasoning"' in line
               for line in text.splitlines())


def test_chat_template_kwargs_reach_the_template():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from backends.base import GenRequest
    from backends.llama import LlamaBackend
    backend = LlamaBackend("m", {"source": "unused.gguf", "reasoning_parser": "qwen3"})
    backend.formatter = Jinja2ChatFormatter(
        "{{ messages[0].content }}{% if enable_thinking is defined and not enable_thinking %}"
        "<think>\n\n</think>\n\n{% endif %}", eos_token="</s>", bos_token="<s>")

    class Tokens:  # the rendered prompt, not its tokens, is what is checked
        rendered = None

        def tokenize(self, text, add_bos, special):
            Tokens.rendered = text.decode()
            return [0]
    backend.tokenizer = type("Vocab", (), {"llm": Tokens()})()
    backend._prompt_tokens(GenRequest("chat", "m", {"messages": MSG, "chat_template_kwargs": {"enable_thinking": False}}))
    assert Tokens.rendered == "2+2?<think>\n\n</think>\n\n"
    backend._prompt_tokens(GenRequest("chat", "m", {"messages": MSG}))
    assert Tokens.rendered == "2+2?"
    with pytest.raises(ValueError, match="reasoning_parser"):
        LlamaBackend("m", {"source": "unused.gguf", "reasoning_parser": "r1"})
