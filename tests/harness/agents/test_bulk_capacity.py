"""``harness run --run-mode bulk`` without --concurrency keeps as many agents in flight as the proxy
says its engine decodes together: a real proxy in-process, over a scripted upstream whose backend's
capacity is injected (the upstream backend itself does not say)."""
from __future__ import annotations

import json

import pytest

from backends.upstream import UpstreamBackend
from harness.agents import run
from harness.agents.results import read_rows
from proxy.app import create_app
from tests.conftest import make_config, wait_ready
from tests.harness.agents.test_agent import serve
from tests.harness_fixtures import data_dir


async def bulk_run(aiohttp_server, tmp_path, capsys, models: dict, *extra: str):
    """Six GSM8K tasks in bulk mode through a proxy serving ``models`` (name -> injected capacity,
    None: the backend does not say); returns (rows, the agents' devices, run.json's concurrency,
    what the run printed)."""
    _, upstream = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    proxy = await aiohttp_server(create_app(make_config(
        {name: {"backend": "upstream", "base_url": upstream} for name in models})))
    await wait_ready(proxy)
    argv = ["--base-url", str(proxy.make_url("/v1")), "--dataset", "gsm8k", "--data-dir", str(data_dir()),
            "--limit", "6", "--run-mode", "bulk", "--out", str(tmp_path), "--no-progress", "--no-report", *extra]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    chosen = json.loads((tmp_path / "run.json").read_text())["concurrency"]
    return rows, {r["device"] for r in rows}, chosen, capsys.readouterr().err


@pytest.fixture
def capacities(monkeypatch):
    """Each upstream backend's capacity, by model name."""
    table: dict = {}
    monkeypatch.setattr(UpstreamBackend, "capacity", lambda self: table[self.name])
    return table


async def test_bulk_run_uses_the_capacity_the_proxy_reports(aiohttp_server, tmp_path, capsys, capacities):
    capacities["small"] = 3
    rows, devices, chosen, err = await bulk_run(aiohttp_server, tmp_path, capsys, capacities)
    assert len(rows) == 6 and {r["run_mode"] for r in rows} == {"bulk"}
    assert devices == {"harness-0", "harness-1", "harness-2"}  # three agents in flight, each its own device
    assert chosen == {"value": 3, "source": "proxy capacity", "capacities": {"small": 3},
                      "reason": "concurrency 3: the capacity the proxy reports (the batch its engine decodes "
                                "together: small 3)"}
    assert chosen["reason"] in err


async def test_a_sweep_takes_the_smallest_capacity(aiohttp_server, tmp_path, capsys, capacities):
    capacities.update(big=5, small=2, other=7)  # "other" is served but not swept
    _, devices, chosen, _ = await bulk_run(aiohttp_server, tmp_path, capsys, capacities, "--models", "big,small")
    assert devices == {"harness-0", "harness-1"}
    assert (chosen["value"], chosen["capacities"]) == (2, {"big": 5, "small": 2})


async def test_explicit_concurrency_wins_and_silence_means_one(aiohttp_server, tmp_path, capsys, capacities):
    capacities["small"] = 3
    _, devices, chosen, _ = await bulk_run(aiohttp_server, tmp_path / "given", capsys, capacities,
                                           "--concurrency", "2")
    assert devices == {"harness-0", "harness-1"} and (chosen["value"], chosen["source"]) == (2, "--concurrency")
    capacities["small"] = None
    _, devices, chosen, err = await bulk_run(aiohttp_server, tmp_path / "silent", capsys, capacities)
    assert devices == {"harness-0"} and (chosen["value"], chosen["source"]) == (1, "default")
    assert "no capacity reported for small" in chosen["reason"] and chosen["reason"] in err
