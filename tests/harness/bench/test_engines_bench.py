"""The engine table's figures against hand-computed truth, and its driver against a scripted Backend."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from backends.base import Backend, Finish, Scheduled, TextDelta, Usage
from harness import data
from harness.bench import engines
from tests.harness_fixtures import data_dir


def req(scheduled, first, decoded, prompt, completion):
    return {"submitted": 0.0, "scheduled": scheduled, "first": first, "decoded": decoded, "prompt_tokens": prompt,
            "completion_tokens": completion}


def test_covered_is_the_union_of_spans():
    assert engines.covered([(0, 2), (1, 3), (5, 6), (5.5, 5.8)]) == 4.0
    assert engines.covered([]) == 0.0


def test_summarize_by_hand():
    # B joins while A decodes: A's tokens at 1.5 and 2.0 come from steps that also ran B's prefill
    # (1.2..2.0), so only the pieces 2..3 and 3..4 are decode-only: 2 + 3 tokens (B's three at 4.0) in 2 s
    # (counting every piece would give 7 tokens in 3 s)
    a = req(0.0, 1.0, [(1.5, 1), (2.0, 1), (3.0, 1)], prompt=100, completion=4)
    b = req(1.2, 2.0, [(3.0, 1), (4.0, 3)], prompt=50, completion=5)
    out = engines.summarize(0.0, 5.0, [a, b])
    assert out == {"problems_s": 2 / 5.0, "gen_tps": 5 / 2.0, "prefill_tps": pytest.approx(150 / 1.8, rel=1e-12),
                   "ttft_s": (1.0 + 2.0) / 2, "completion_tokens": 4.5}


class Scripted(Backend):
    """A backend whose request i takes ``i`` + 2 tokens; it counts how many run at once."""
    kind = "scripted"

    def __init__(self):
        super().__init__("scripted")
        self.running = self.most = 0
        self.bodies = []

    async def generate(self, r):
        self.bodies.append(r.body)
        self.running += 1
        self.most = max(self.most, self.running)
        yield Scheduled()
        n = 2 + len(self.bodies) % 3
        for _ in range(n):
            await asyncio.sleep(0.001)
            yield TextDelta("x")
        self.running -= 1
        yield Finish("length")
        yield Usage(10, n)


async def test_measure_keeps_concurrency_in_flight(monkeypatch):
    monkeypatch.delenv(data.ENV, raising=False)
    b = Scripted()
    monkeypatch.setattr(engines, "backend", lambda engine, args, c: b)
    args = SimpleNamespace(problems=7, runs=2, max_tokens=5)
    runs = await engines.measure("llama.cpp", args, 3)
    assert b.most == 3 and len(b.bodies) == 14  # three in flight, 7 problems x 2 runs
    assert {body["max_tokens"] for body in b.bodies} == {5} and {body["temperature"] for body in b.bodies} == {0}
    assert [r["completion_tokens"] for r in runs] == [pytest.approx(sum(2 + i % 3 for i in range(1, 8)) / 7),
                                                      pytest.approx(sum(2 + i % 3 for i in range(8, 15)) / 7)]
    assert b.bodies[0]["messages"][1]["content"].startswith(engines.BUILT_IN[0])


def test_problems_come_from_the_data_set_when_it_is_set(monkeypatch):
    from harness.common import datasets
    folder = data_dir("gsm8k")
    monkeypatch.delenv(data.ENV, raising=False)
    turns, origin = engines.problems(10)
    assert origin.startswith("built-in") and len(turns) == 10 and turns[8] == turns[0]  # cycled
    monkeypatch.setenv(data.ENV, str(folder))
    turns, origin = engines.problems(3)
    assert origin.startswith("GSM8K test split, first 3 of 1319")
    assert [t[1]["content"].split("\n\n")[0] for t in turns] == [t.prompt for t in datasets.load("gsm8k")[:3]]
    assert turns[0][0]["role"] == "system" and "FINAL ANSWER" in turns[0][0]["content"]
