"""python -m harness bench NAME ...: every benchmark command, one module each.

Benchmarks:
  overhead  the proxy's own cost: direct vs through the proxy against a fast upstream
  link      the simulated link against its configured figures, per preset
  llama     proxy vs direct llama-cpp-python on the same model
  mlx       MLX vs llama.cpp on the same model at several concurrencies
  engines   the engine table: llama.cpp and MLX per batch size (gen and prefill tok/s, memory, problems/s)
  quality   perplexity and the quantization ladder, with paired error bars
  replay    replay against live runs, and the speed of a full replay sweep
  sandbox   per-call cost of the code sandbox
  energy    device radio energy through a live proxy: settled session totals against /metrics
"""
from __future__ import annotations

import importlib

BENCHMARKS = ("overhead", "link", "llama", "mlx", "engines", "quality", "replay", "sandbox", "energy")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(f"harness.bench.{argv[0]}").main(argv[1:])
