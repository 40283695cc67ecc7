"""python -m harness COMMAND ...

Commands:
  quickstart  start the proxy on config.yaml, run a short agent benchmark through it, print the report
  run         agent benchmarks (GSM8K, MBPP, HumanEval) through an OpenAI endpoint
  report      summaries, tables and plots from a run directory
  load        load generator (synchronous, concurrency, constant/Poisson rate, sweep)
  overhead    the proxy's own cost: direct vs through the proxy against a fast upstream
  replay      cost recorded agent traces under other modes, networks and radios
  soak        many concurrent streams through the proxy for a while: errors, memory, token accounting
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "quickstart": "harness.quickstart",
    "run": "harness.run",
    "report": "harness.report",
    "load": "harness.load",
    "overhead": "harness.overhead",
    "replay": "harness.replay",
    "soak": "harness.soak",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
