"""run.json's provenance block, checked against injected truth through a real Edgemeter proxy."""
from __future__ import annotations

import json
import os
import subprocess

import psutil

from harness.agents import agent, run
from harness.common import provenance
from harness.agents.results import read_rows
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
    assert prov["agent"]["system_prompts"] == {f"{p}/{k}": text for (p, k), text in agent._SYSTEM.items()}
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


def test_sweep_order_is_a_seeded_randomized_block_design():
    from harness.common.datasets import Task
    tasks = [Task("gsm8k", str(i), "q", "1", {}) for i in range(6)]
    combos = [run.Combo(m, n, "x") for m in ("local", "cloud") for n in ("wifi", "4g")]
    jobs = run.plan(tasks, combos, 1, 2)
    a, b, c = run.interleave(jobs, 1), run.interleave(jobs, 1), run.interleave(jobs, 2)
    assert a == b and a != c and sorted(map(Job_key, a)) == sorted(map(Job_key, jobs))
    blocks = [a[i:i + 4] for i in range(0, len(a), 4)]  # each (task, sample, repeat) visits every point at once
    assert all({j.combo for j in blk} == set(combos) and len({(j.task.id, j.repeat) for j in blk}) == 1
               for blk in blocks)
    assert [(blk[0].task.id, blk[0].repeat) for blk in blocks] == [(str(i), r) for i in range(6) for r in range(2)]
    assert len({blk[0].combo for blk in blocks}) > 1  # the point that runs first changes


def Job_key(j):
    return j.key()


async def test_run_records_its_order_and_runs_it(aiohttp_server, tmp_path):
    s, url = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    argv = ["--base-url", url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--ids", "0,1,2",
            "--out", str(tmp_path), "--modes", "local,cloud", "--networks", "wifi,4g", "--warmup", "0",
            "--no-progress", "--no-report", "--order-seed", "9"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["order"]["seed"] == 9 and info["repeats"] == run.ACCURATE_REPEATS == 3
    rows = read_rows(tmp_path / "results.jsonl")
    got = [(r["task_id"], r["repeat"], r["mode"], r["network"]) for r in rows]
    combos = [run.Combo(m, n, "scripted") for m in ("local", "cloud") for n in ("wifi", "4g")]
    from harness.common import datasets
    tasks = datasets.select(datasets.load("gsm8k", str(data_dir())), ids=["0", "1", "2"])
    want = [(j.task.id, j.repeat, j.combo.mode, j.combo.network)
            for j in run.interleave(run.plan(tasks, combos, 1, 3), 9)]
    assert got == want and len(got) == 3 * 3 * 4
