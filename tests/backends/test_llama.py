"""The in-process llama.cpp backend on the real SmolLM2 model, directly and through the proxy."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from prometheus_client import REGISTRY

from backends import GenRequest, create
from backends.base import Finish, Scheduled, TextDelta, Usage
from tests.conftest import local_model, request_series

MSG = [{"role": "user", "content": "Write a long story about a dragon."}]


@pytest.fixture
async def backend():
    b = create("smollm2", local_model())
    await b.start()
    yield b
    await b.close()


class FakeCPU:
    """process_time that advances 1 s per reading: a step reads it before and after its decode,
    so every step costs exactly 1 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


async def collect(b, body, kind="chat"):
    return [ev async for ev in b.generate(GenRequest(kind, "smollm2", body))]


async def test_events_usage_matches_tokenizer(backend, monkeypatch):
    monkeypatch.setattr("backends.llama_engine.process_time", FakeCPU())
    steps0 = backend.engine.steps
    evs = await collect(backend, {"messages": MSG, "temperature": 0, "max_tokens": 12})
    assert isinstance(evs[0], Scheduled)
    assert isinstance(evs[-2], Finish) and evs[-2].reason == "length"
    usage = evs[-1]
    assert isinstance(usage, Usage) and usage.completion_tokens == 12
    # alone in the engine, the request is charged every step's CPU time: 1 s a step on the fake clock
    assert usage.cpu_s == pytest.approx(backend.engine.steps - steps0)
    deltas = [e for e in evs if isinstance(e, TextDelta)]
    assert sum(d.tokens for d in deltas) == 12
    times = [e.t for e in evs]
    assert times == sorted(times)
    prompt = backend.formatter(messages=MSG).prompt
    llm = backend.tokenizer.llm
    assert usage.prompt_tokens == len(llm.tokenize(prompt.encode(), add_bos=False, special=True))


async def test_stop_string_cuts_text(backend):
    body = {"messages": [{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
            "temperature": 0, "max_tokens": 80}
    full = "".join(e.text for e in await collect(backend, body) if isinstance(e, TextDelta))
    assert "7" in full
    evs = await collect(backend, {**body, "stop": ["7"]})
    cut = "".join(e.text for e in evs if isinstance(e, TextDelta))
    assert cut == full[:full.index("7")] and [e.reason for e in evs if isinstance(e, Finish)] == ["stop"]


async def test_seed_makes_sampling_repeatable(backend):
    body = {"messages": MSG, "temperature": 1.0, "max_tokens": 16, "seed": 42}
    a = "".join(e.text for e in await collect(backend, body) if isinstance(e, TextDelta))
    b = "".join(e.text for e in await collect(backend, body) if isinstance(e, TextDelta))
    assert a == b


def submitted_jobs(backend, monkeypatch) -> list:
    """The engine's jobs as the backend submits them: what the engine really decoded."""
    jobs, submit = [], backend.engine.submit
    monkeypatch.setattr(backend.engine, "submit", lambda job: (jobs.append(job), submit(job)))
    return jobs


async def leave_after(backend, req: GenRequest, deltas: int) -> int:
    """A client that reads ``deltas`` text deltas and leaves; the deltas it read."""
    gen = backend.generate(req)
    n = 0
    async for ev in gen:
        n += isinstance(ev, TextDelta)
        if n == deltas:
            break
    await gen.aclose()
    return n


async def until_idle(backend, seconds: float = 30.0) -> None:
    """Wait for the engine to return every slot (it does once the sequences have stopped)."""
    for _ in range(int(seconds / 0.05)):
        if backend.active == 0:
            return
        await asyncio.sleep(0.05)


async def test_cancellation_frees_the_slot_within_tokens(backend, monkeypatch):
    body = {"messages": MSG, "temperature": 0, "max_tokens": 500}
    jobs = submitted_jobs(backend, monkeypatch)
    await leave_after(backend, GenRequest("chat", "smollm2", body), 3)
    await until_idle(backend)
    assert backend.active == 0 and backend.engine.kv_cells(jobs[0].seq) == 0  # its KV cells are freed
    # stopped within a step or two of the third token (the consumer's close races one step), not after 500
    assert 3 <= jobs[0].produced <= 5
    evs = await collect(backend, {**body, "max_tokens": 2})
    assert evs[-1].completion_tokens == 2


async def test_requests_queue_for_the_slot(backend):
    body = {"messages": MSG, "temperature": 0, "max_tokens": 20}
    first, second = await asyncio.gather(collect(backend, body), collect(backend, body))
    end_first = first[-1].t
    assert second[0].t >= end_first or first[0].t >= second[-1].t  # one waited for the other's whole run


async def test_context_overflow_is_a_400(backend):
    from backends import BackendError
    with pytest.raises(BackendError) as e:
        await collect(backend, {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 5})
    assert e.value.status == 400 and e.value.code == "context_length_exceeded"


# --- through the proxy ---

@pytest.fixture
async def proxy(proxy_client):
    return await proxy_client({"smollm2": local_model()})


async def post(client, body, headers=None):
    return await client.post("/v1/chat/completions", data=orjson.dumps({"model": "smollm2", **body}),
                             headers={"Content-Type": "application/json", **(headers or {})})


async def test_streamed_equals_non_streamed_at_temperature_0(proxy, monkeypatch):
    from proxy.app import ENERGY, ROUTER
    body = {"messages": MSG, "temperature": 0, "max_tokens": 30}
    full = await (await post(proxy, body)).json()
    engine = proxy.server.app[ROUTER].models["smollm2"]["device"].backend.engine
    monkeypatch.setattr("backends.llama_engine.process_time", FakeCPU())
    steps0 = engine.steps
    raw = await (await post(proxy, {**body, "stream": True, "stream_options": {"include_usage": True}})).read()
    chunks = [orjson.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == full["usage"]
    rec = chunks[-1]["edgemeter"]
    # the fake clock's 1 s a step, priced by the host's CPU-time estimate
    assert rec["backend"] == "llama.cpp" and rec["compute_energy_method"] == "estimate"
    assert rec["cpu_s"] == pytest.approx(engine.steps - steps0)
    assert rec["compute_j"] == pytest.approx(rec["cpu_s"] * proxy.server.app[ENERGY].watts_per_core)
    assert rec["energy_per_token_j"] == pytest.approx(rec["compute_j"] / rec["completion_tokens"])


async def test_metrics_served_while_generating(proxy):
    task = asyncio.create_task(post(proxy, {"messages": MSG, "temperature": 0, "max_tokens": 150}))
    await asyncio.sleep(0.3)
    t = time.perf_counter()
    r = await proxy.get("/metrics")
    took = time.perf_counter() - t
    text = await r.text()
    running = [line for line in text.splitlines() if line.startswith("edgemeter_num_requests_running{")
               and 'model="smollm2"' in line]
    assert r.status == 200 and not task.done()
    # answered mid-generation (summed: other tests' series of this model, e.g. other placements, may exist)
    assert running and sum(float(line.rsplit(" ", 1)[1]) for line in running) == 1.0
    assert took < 1.0
    await task


async def test_client_disconnect_cancels_generation(proxy):
    import aiohttp
    url = proxy.make_url("/v1/chat/completions")
    left = {**request_series("smollm2", "llama.cpp", "local", "local"), "status": "499"}
    left_before = REGISTRY.get_sample_value("edgemeter_requests_total", left) or 0
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"model": "smollm2", "messages": MSG, "max_tokens": 1000, "stream": True,
                                     "temperature": 0}) as r:
            await r.content.readline()
    backend = proxy.server.app[__import__("proxy.app", fromlist=["ROUTER"]).ROUTER].models["smollm2"]["device"].backend
    await until_idle(backend, 5.0)
    assert backend.active == 0 and backend.engine.kv_cells(0) == 0
    assert REGISTRY.get_sample_value("edgemeter_requests_total", left) == left_before + 1


async def test_queue_time_reported(proxy):
    body = {"messages": MSG, "temperature": 0, "max_tokens": 40}
    a, b = await asyncio.gather(post(proxy, body), post(proxy, body))
    first, second = sorted([(await a.json())["edgemeter"], (await b.json())["edgemeter"]], key=lambda r: r["queue_s"])
    # one slot: the second waits exactly while the first generates, which is the first's whole request
    assert first["queue_s"] < 0.05
    assert second["queue_s"] == pytest.approx(first["e2e_s"] - first["queue_s"], abs=0.05)
