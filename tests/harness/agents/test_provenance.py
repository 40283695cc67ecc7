"""run.json's provenance block, checked against injected truth through a real Edgemeter proxy."""
from __future__ import annotations

import json
import os
import subprocess

import psutil

from harness.agents import agent, run
from harness.common import provenance
from proxy.app import create_app
from tests.conftest import make_config, wait_ready
from tests.harness.agents.test_agent import serve
from tests.harness_fixtures import data_dir


async def test_run_json_holds_the_proxy_info_host_commit_and_agent_prompts(aiohttp_server, tmp_path):
    _, upstream = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    proxy = await aiohttp_server(create_app(make_config(
        {"scripted": {"backend": "upstream", "base_url": upstream}},
        server={"seed": 7}, networks={"slow4g": {"base": "4g", "rtt_ms": 123}})))
    await wait_ready(proxy)
    argv = ["--base-url", str(proxy.make_url("/v1")), "--dataset", "gsm8k", "--data-dir", str(data_dir()),
            "--ids", "0", "--out", str(tmp_path), "--warmup", "0", "--no-progress", "--no-report"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    prov = json.loads((tmp_path / "run.json").read_text())["provenance"]
    cfg = prov["server"]["config"]
    assert cfg["seed"] == 7 and cfg["networks"]["slow4g"]["rtt_ms"] == 123 and cfg["networks"]["slow4g"]["up_mbps"] == 5.9
    assert prov["server"]["models"]["scripted"]["base_url"] == upstream
    assert prov["agent"]["system_prompts"] == agent._SYSTEM
    assert prov["agent"]["task_templates"]["math"] == "{prompt}\n\nSolve it and give the final answer as a number."
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["software"]["checkout"]["commit"] == head
    assert prov["host"]["logical_cores"] == os.cpu_count()
    assert prov["host"]["memory_bytes"] == psutil.virtual_memory().total
    lines = provenance.header(prov)
    assert lines[0].startswith("- Edgemeter ") and head[:12] in lines[0]
    assert any(line.startswith("- model scripted: upstream") for line in lines)


async def test_a_server_without_the_info_route_is_said_so(aiohttp_server, tmp_path):
    _, url = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    argv = ["--base-url", url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--ids", "0",
            "--out", str(tmp_path), "--warmup", "0", "--no-progress", "--no-report"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    prov = json.loads((tmp_path / "run.json").read_text())["provenance"]
    assert "answered 404" in prov["server"]["unavailable"] and prov["host"]["cpu_model"]
