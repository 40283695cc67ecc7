"""``python -m harness bench energy``: does the device's radio energy add up through a live proxy?

Starts the proxy on ``--config`` (default config.yaml: SmolLM2 in process) and, for each
``--networks`` preset, runs one hybrid session of ``--calls`` streamed calls ``--gap-s``
apart on a fresh device, then ends the session (which waits for the last radio tail).
Reported per preset, from the same run:

  provisional  the calls' records summed the old way: radio_j plus each record's full
               provisional tail (what totals reported before tails were settled)
  session      the session end's settled radio_j
  metrics      the rise of edgemeter_radio_energy_joules_total over non-idle states: what
               the device's radio spent (no other traffic runs on the proxy meanwhile)
  attributed   the rise of edgemeter_request_radio_energy_joules_total
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.bench.overhead import start
from harness.common.procs import free_port, stop


def counters(root: str, network: str) -> tuple[float, float]:
    """(non-idle radio joules, request-attributed radio joules) for one network."""
    text = urllib.request.urlopen(f"{root}/metrics").read().decode()
    spent = attributed = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("network") != network or not s.name.endswith("_total"):
                continue
            if s.name == "edgemeter_radio_energy_joules_total" and s.labels["state"] not in ("idle", "psm"):
                spent += s.value
            elif s.name == "edgemeter_request_radio_energy_joules_total":
                attributed += s.value
    return spent, attributed


def post(url: str, body: dict, headers: dict) -> list[bytes]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read().splitlines()


def session(root: str, model: str, network: str, calls: int, gap_s: float, max_tokens: int) -> dict:
    sid = uuid.uuid4().hex[:12]
    h = {"X-Edgemeter-Mode": "hybrid", "X-Edgemeter-Network": network, "X-Edgemeter-Device": f"bench-{sid}",
         "X-Edgemeter-Session": sid}
    before = counters(root, network)
    records = []
    for i in range(calls):
        if i:
            time.sleep(gap_s)
        lines = post(f"{root}/v1/chat/completions",
                     {"model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": 0, "seed": i,
                      "messages": [{"role": "user", "content": f"Count from {i} to {i + 9}."}]}, h)
        records += [json.loads(x[6:])["edgemeter"] for x in lines if x.startswith(b"data: {") and b'"edgemeter"' in x]
    end = json.loads(b"".join(post(f"{root}/edgemeter/v1/sessions/{sid}/end", {"final_answer": ""}, h)))
    spent, attributed = (a - b for a, b in zip(counters(root, network), before))
    return {"network": network, "calls": len(records),
            "provisional_j": sum(r["radio_j"] + r["radio_tail_provisional_j"] for r in records),
            "session_j": end["radio_j"], "metrics_j": spent, "attributed_j": attributed,
            "wait_s": end["radio_settle_wait_s"], "tokens": sum(r["completion_tokens"] for r in records)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m harness bench energy", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--networks", default="4g")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--gap-s", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args(argv)
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as d:
        proc = start([sys.executable, "-m", "proxy", "--config", args.config, "--port", str(port),
                      "--log-level", "WARNING"], Path(d) / "proxy.log", f"{root}/readyz", timeout=300)
        try:
            rows = [session(root, args.model, n, args.calls, args.gap_s, args.max_tokens)
                    for n in args.networks.split(",")]
        finally:
            stop(proc)
    print("| network | calls | tokens | provisional sum J | session (settled) J | /metrics non-idle J "
          "| request counter J | settled / spent | end waited s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['calls']} | {r['tokens']} | {r['provisional_j']:.2f} | {r['session_j']:.2f} | "
              f"{r['metrics_j']:.2f} | {r['attributed_j']:.2f} | {r['session_j'] / r['metrics_j']:.4f} | "
              f"{r['wait_s']:.1f} |")
    return 0
