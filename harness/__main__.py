"""python -m harness COMMAND ...

Commands:
  quickstart  start the proxy on config.yaml, run a short agent benchmark through it, print the report
  run         agent benchmarks (GSM8K, MBPP, HumanEval) through an OpenAI endpoint
  report      summaries, tables and plots from a run directory
  load        load generator (synchronous, concurrency, constant/Poisson rate, sweep)
  soak        many concurrent streams through the proxy for a while: errors, memory, token accounting
  replay      cost recorded agent traces under other modes, networks and radios
  auto fit    fit a table policy for the proxy's auto mode from a sweep's results
  bench NAME  a benchmark that prints figures (python -m harness bench --help lists them)
  data        list or fetch the benchmark data sets (GSM8K, MBPP, HumanEval, WikiText-2), verified by sha256
"""
from __future__ import annotations

import importlib
import sys

from harness.data import DataError

COMMANDS = {
    "quickstart": "harness.agents.quickstart",
    "run": "harness.agents.run",
    "report": "harness.agents.report",
    "load": "harness.load.generator",
    "soak": "harness.load.soak",
    "replay": "harness.replay.replay",
    "auto": "harness.agents.auto",
    "bench": "harness.bench",
    "data": "harness.data.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    try:
        return module.main(argv[1:])
    except DataError as e:  # a missing or corrupt data set: the message says how to get it
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
