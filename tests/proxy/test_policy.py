"""auto mode's policies: known request features and device states in, known decisions out."""
from __future__ import annotations

import json

import pytest

from proxy import policy
from proxy.config import ConfigError, from_dict
from proxy.policy import DeviceState, Features

RULES = {"policy": "rules", "default": "hybrid", "battery_pct": 15, "rules": [
    {"name": "low_battery", "when": {"battery_pct": "< 20"}, "mode": "hybrid"},
    {"name": "long_generation", "when": {"max_tokens": "> 500"}, "mode": "hybrid"},
    {"name": "idle_radio_short", "when": {"radio_connected": False, "prompt_tokens": "<= 50"}, "mode": "local"},
    {"name": "slow_link", "when": {"rtt_ms": ">= 200"}, "mode": "local"},
    {"name": "maths", "when": {"task": ["gsm8k"], "tools": False}, "mode": "cloud"},
]}


def state(**over) -> DeviceState:
    base = dict(rtt_ms=80, up_mbps=5.9, down_mbps=20, loss=0.005, radio_connected=True, battery_pct=80, network="4g")
    return DeviceState(**{**base, **over})


def feats(**over) -> Features:
    return Features(**{**dict(prompt_tokens=100, max_tokens=256, tools=False, task=None), **over})


def test_estimate_tokens_is_characters_over_four_rounded_up():
    body = {"messages": [{"role": "user", "content": "x" * 9},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 3}]}]}
    assert policy.estimate_tokens(body) == 3  # 12 characters
    assert policy.estimate_tokens({"prompt": "abcde"}) == 2
    f = policy.features({"messages": [], "max_tokens": 7, "tools": [{"type": "function"}]}, "mbpp")
    assert f == Features(0, 7, True, "mbpp")
    assert policy.features({"messages": [], "max_completion_tokens": 9}, None).max_tokens == 9


@pytest.mark.parametrize("f, d, chosen, reason", [
    (feats(), state(battery_pct=10), "hybrid", "low_battery"),                      # first rule wins over later ones
    (feats(max_tokens=600, prompt_tokens=10), state(radio_connected=False), "hybrid", "long_generation"),
    (feats(prompt_tokens=50), state(radio_connected=False), "local", "idle_radio_short"),  # <= is inclusive
    (feats(prompt_tokens=51), state(radio_connected=False), "hybrid", "default"),
    (feats(prompt_tokens=10), state(radio_connected=True), "hybrid", "default"),    # promoted radio: cheap to send
    (feats(), state(rtt_ms=200), "local", "slow_link"),
    (feats(task="gsm8k"), state(), "cloud", "maths"),
    (feats(task="gsm8k", tools=True), state(), "hybrid", "default"),
    (feats(task="mbpp"), state(), "hybrid", "default"),
])
def test_rules_first_match_decides(f, d, chosen, reason):
    pol = policy.from_config(RULES)
    dec = pol.decide(f, d)
    assert (dec.chosen, dec.policy, dec.reason) == (chosen, "rules", reason)


def test_cloud_per_call_is_served_by_the_cloud_placement_and_says_so():
    dec = policy.Decision("cloud", "rules", "maths")
    assert dec.served("session") == dec
    assert dec.served("call") == policy.Decision("hybrid", "rules", "maths:cloud_needs_session")
    assert policy.Decision("local", "rules", "x").served("call").chosen == "local"


def test_table_picks_the_cell_of_task_and_network_else_default(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"objective": "device_j_per_solved", "table": {
        "gsm8k": {"4g": {"mode": "local"}, "wifi": {"mode": "hybrid"}},
        "mbpp": {"4g": {"mode": "cloud"}}}}))
    pol = from_dict({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "model": "x"}},
                     "auto": {"policy": "table", "table": str(path), "default": "hybrid"}}).auto
    pick = [pol.decide(feats(task=t), state(network=n)) for t, n in
            (("gsm8k", "4g"), ("gsm8k", "wifi"), ("mbpp", "4g"), ("mbpp", "wifi"), (None, "4g"))]
    assert [(d.chosen, d.reason) for d in pick] == [("local", "cell"), ("hybrid", "cell"), ("cloud", "cell"),
                                                     ("hybrid", "default"), ("hybrid", "default")]


@pytest.mark.parametrize("auto, message", [
    ({"rules": [{"name": "a", "when": {"prompt_tokens": "50"}, "mode": "local"}]}, "auto.rules[0].when.prompt_tokens"),
    ({"rules": [{"name": "a", "when": {"rtt_ms": "=< 50"}, "mode": "local"}]}, "auto.rules[0].when.rtt_ms"),
    ({"rules": [{"name": "a", "when": {"colour": True}, "mode": "local"}]}, "auto.rules[0].when.colour: unknown"),
    ({"rules": [{"name": "a", "when": {}, "mode": "edge"}]}, "auto.rules[0].mode"),
    ({"rules": [{"name": "default", "mode": "local"}]}, "auto.rules[0].name"),
    ({"rules": [{"when": {"tools": "yes"}, "mode": "local"}]}, "auto.rules[0].when.tools: must be true or false"),
    ({"scope": "task"}, "auto.scope"),
    ({"battery_pct": 120}, "auto.battery_pct"),
    ({"policy": "table"}, "auto.table"),
    ({"policy": "table", "table": "/nonexistent.json"}, "auto.table: cannot read"),
    ({"colour": 1}, "auto.colour: unknown key"),
])
def test_bad_auto_config_names_the_key(auto, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "model": "x"}},
                   "auto": auto})


def test_default_mode_auto_needs_a_policy():
    with pytest.raises(ConfigError, match="defaults.mode: auto needs an auto: section"):
        from_dict({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "model": "x"}},
                   "defaults": {"mode": "auto"}})


def test_device_state_reads_the_preset_and_whether_the_radio_is_up():
    import time

    from proxy.device import Devices
    from proxy.meter import NetTally
    from proxy.router import Router
    cfg = from_dict({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1", "model": "x"}},
                     "auto": {"battery_pct": 35}, "networks": {"umts": {"base": "4g", "radio": "3g"}}})
    router = Router(cfg, {}, Devices.from_config(cfg))
    fresh = router.state("phone", "4g")
    assert (fresh.rtt_ms, fresh.up_mbps, fresh.down_mbps, fresh.loss, fresh.battery_pct, fresh.network) == \
        (80, 5.9, 20, 0.005, 35, "4g")
    assert fresh.radio_connected is False  # a radio never used is idle: a send pays a promotion
    assert router.devices.devices == {}     # looking did not create a link
    router.devices.get("phone", "4g").send("up", time.perf_counter(), 1000, NetTally())
    assert router.state("phone", "4g").radio_connected is True  # just sent: connected (or in its tail)
    assert router.state("other", "4g").radio_connected is False
    # LTE's tail is 10.1 s (0.1 s connected, 20 ms short DRX, 10 s long DRX): a send 5 s ago left the
    # radio in long DRX, which sends without a promotion; one 30 s ago left it idle again
    now = time.perf_counter()
    router.devices.get("tail", "4g").send("up", now - 5, 1000, NetTally())
    router.devices.get("slept", "4g").send("up", now - 30, 1000, NetTally())
    assert (router.state("tail", "4g").radio_connected, router.state("slept", "4g").radio_connected) == (True, False)
    # 3G: 5 s of DCH tail, then FACH, from which a send needs a 1.5 s promotion: not idle, yet not connected
    router.devices.get("fach", "umts").send("up", now - 8, 1000, NetTally())
    assert router.state("fach", "umts").radio_connected is False
    assert router.state("phone", "lan").radio_connected is True  # wired: nothing to promote
