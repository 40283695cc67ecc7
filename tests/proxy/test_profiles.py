"""The device-energy ledger: one formula in every mode, each part against injected truth."""
from __future__ import annotations

import orjson
import pytest

from proxy.energy import ComputeEnergy
from proxy.profiles import PROFILES, device_energy
from tests.fake_upstream import make_app

PHONE = PROFILES["phone"]


def test_every_profile_is_complete_and_positive():
    assert {"phone", "laptop", "jetson", "host"} <= PROFILES.keys()
    for p in PROFILES.values():
        if p.name != "host":  # configured figures, not measurements: none left at zero or out of range
            assert p.baseline_w > 0 and p.generating_w > 0 and p.cpu_core_w > 0
            assert p.prefill_tok_s > 0 and p.decode_tok_s > 0 and 0 < p.throttled <= 1


def test_sourced_profile_figures_are_their_sources():
    """The figures proxy/profiles.py cites, as the sources give them (the ASSUMPTIONs have none)."""
    phone, laptop, jetson = PROFILES["phone"], PROFILES["laptop"], PROFILES["jetson"]
    assert phone.baseline_w + phone.generating_w == 4.0                    # [EDGE] 3-5 W sustained: the middle
    assert (phone.decode_tok_s, phone.throttle_after_s) == (48.0, 35.0)    # [IPH] burst rate, -25 % after 35 s
    assert laptop.generating_w == 24.7                                     # [IPH] M4 Max package under MLX
    assert (laptop.prefill_tok_s, laptop.decode_tok_s) == (157.0, 102.0)  # [PLACE] M2 Max, batch 1
    assert jetson.decode_tok_s == 165.2 and jetson.baseline_w + jetson.generating_w == 25.0  # [ORIN] 25 W mode


@pytest.mark.parametrize("mode, tools_on_device", [("local", True), ("hybrid", True), ("cloud", False)])
def test_ledger_is_the_same_formula_in_every_mode(mode, tools_on_device):
    e = device_energy(PHONE, mode, wall_s=12.5, compute_j=7.0, tool_cpu_s=2.0, radio_j=3.25)
    tools = 2.0 * PHONE.cpu_core_w if tools_on_device else 0.0
    assert e["baseline_j"] == 12.5 * PHONE.baseline_w
    assert e["tools_j"] == tools
    assert e["device_j"] == pytest.approx(12.5 * PHONE.baseline_w + 7.0 + tools + 3.25, abs=1e-12)
    assert e["device_profile"] == "phone"


def test_device_profile_charges_its_power_over_the_generation_time():
    e = ComputeEnergy.from_config({"device": "phone"})
    assert e.method == "profile"
    assert e.end(e.begin(10.0), cpu_s=99.0, t=12.5) == (2.5 * PHONE.generating_w, "profile:phone")
    assert e.tool_core_w == PHONE.cpu_core_w
    host = ComputeEnergy.from_config({"method": "estimate", "watts_per_core": 3.0})
    assert host.profile.name == "host" and host.tool_core_w == 3.0
    with pytest.raises(ValueError, match="energy.device: unknown profile 'toaster'"):
        ComputeEnergy.from_config({"device": "toaster"})


@pytest.fixture
async def proxy(aiohttp_server, proxy_client):
    up = await aiohttp_server(make_app())
    models = {"echo": {"backend": "upstream", "base_url": str(up.make_url("/v1")), "model": "echo"}}
    return await proxy_client(models, energy={"device": "phone"})


async def end(proxy, sid, mode, **body):
    """One call in a new session, then its end: (status, session record, the call's record)."""
    h = {"Content-Type": "application/json", "X-Edgemeter-Mode": mode, "X-Edgemeter-Network": "local", "X-Edgemeter-Session": sid,
         "X-Edgemeter-Device": f"dev-{sid}"}
    r = await proxy.post("/v1/chat/completions", data=orjson.dumps(
        {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}), headers=h)
    assert r.status == 200
    call = (await r.json())["edgemeter"]
    r = await proxy.post(f"/edgemeter/v1/sessions/{sid}/end", json={"final_answer": "42", **body})
    return r.status, await r.json(), call


@pytest.mark.parametrize("mode", ["local", "hybrid", "cloud"])
async def test_session_end_reports_each_part_of_device_energy(proxy, mode):
    status, s, call = await end(proxy, f"s-{mode}", mode, tool_cpu_s=2.0)
    assert status == 200 and s["device_profile"] == "phone"
    # wall time is the process's own; it spans the session's call (it starts as the call is routed,
    # just after the call's clock, and ends after the call's answer came back)
    assert s["wall_s"] >= call["e2e_s"]
    assert s["baseline_j"] == pytest.approx(PHONE.baseline_w * s["wall_s"], rel=1e-12)
    # the upstream is no in-process engine and the network is local: no compute, no radio on the device
    assert s["compute_j"] == 0 and s["radio_j"] == 0
    assert s["tools_j"] == (2.0 * PHONE.cpu_core_w if mode != "cloud" else 0.0)
    assert s["device_j"] == pytest.approx(s["baseline_j"] + s["compute_j"] + s["tools_j"] + s["radio_j"])


async def test_session_end_rejects_bad_tool_time(proxy):
    status, body, _ = await end(proxy, "bad", "hybrid", tool_cpu_s=-1)
    assert status == 400 and body["error"]["param"] == "tool_cpu_s"


async def test_cloud_cost_is_per_model_and_only_where_the_model_is_in_the_cloud(aiohttp_server, proxy_client):
    up = await aiohttp_server(make_app())
    models = {"echo": {"backend": "upstream", "base_url": str(up.make_url("/v1")), "model": "echo"}}
    cost = {"usd_per_mtok_in": 2.0, "usd_per_mtok_out": 8.0, "dc_j_per_output_token": 0.5}
    proxy = await proxy_client(models, energy={"device": "phone", "cloud": {"echo": cost}})
    for mode in ("local", "hybrid", "cloud"):
        status, s, _ = await end(proxy, f"c-{mode}", mode)
        # no usage from the echo script: "hi" estimated at 4 characters a token, its 5 chunks counted
        assert status == 200 and (s["prompt_tokens"], s["completion_tokens"]) == (1, 5)
        on_cloud = mode != "local"
        assert s["cloud_usd"] == pytest.approx(
            (2.0 * s["prompt_tokens"] + 8.0 * s["completion_tokens"]) / 1e6 if on_cloud else 0.0)
        assert s["cloud_j"] == pytest.approx(0.5 * s["completion_tokens"] if on_cloud else 0.0)
        # a separate axis: the device's sum does not include it
        assert s["device_j"] == pytest.approx(s["baseline_j"] + s["compute_j"] + s["tools_j"] + s["radio_j"])


def test_cloud_cost_config_errors():
    with pytest.raises(ValueError, match=r"energy\.cloud\.m\.usd_per_mtok_in: must be a non-negative number"):
        ComputeEnergy.from_config({"cloud": {"m": {"usd_per_mtok_in": -1}}})
    with pytest.raises(ValueError, match=r"energy\.cloud\.m: must be a mapping with keys"):
        ComputeEnergy.from_config({"cloud": {"m": {"dollars": 1}}})
