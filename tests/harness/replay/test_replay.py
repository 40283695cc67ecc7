"""Replay: recorded agent sessions costed under other modes and networks through the proxy's
own link and radio, checked against hand-computed delays and a live recording."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import json

import orjson
import pytest
from aiohttp import web

from harness.agents import run
from harness.replay import replay
from harness.replay import trace as tr
from harness.agents.results import read_rows
from proxy.energy import ComputeEnergy
from proxy.link import HEADER, pocket_agent, presets_from_config
from proxy.profiles import PROFILES
from proxy.radio import LTE
from tests.conftest import make_config, wait_ready
from tests.fake_upstream import chunk

from tests.harness_fixtures import data_dir

# 4G without jitter or loss: every delay is a closed form.
FIXED = {"fixed4g": {"base": "4g", "jitter_ms": 0, "loss": 0.0}}
# One event's time on the live proxy's clock, as tests/proxy/test_timing_truth.py states it: wake-ups
# run up to 15 ms late on a loaded 2-core machine.
TOL_S = 0.020
PRESETS = presets_from_config(FIXED)
ENERGY = ComputeEnergy("estimate", watts_per_core=10.0, sample_s=None)
PROMOTION, ONE_WAY, UP_BPS, DOWN_BPS = 0.26, 0.04, 5.9e6, 20e6  # the 4g preset and the LTE radio
HANDSHAKE = 2 * 2 * ONE_WAY  # a new connection: TCP + TLS 1.3, one RTT each


def ser(nbytes: int, bps: float) -> float:
    """Serialization of one small write (a single TCP segment) at a wire rate."""
    return (nbytes + HEADER) * 8 / bps


def call(**over) -> tr.Call:
    c = dict(bytes_up=1000, frames=[[0.05, 150, 1], [0.07, 120, 1], [0.09, 120, 1], [0.10, 110, 0]],
             tail_s=0.002, finish_reason="stop", completion_tokens=3, prompt_tokens=20, client_ttft_s=0.001,
             client_e2e_s=0.003, gap_s=0.5, status=200, in_process=True, cpu_s=0.2, compute_j=3.0,
             compute_method="rapl", client={"chunks": 5, "bytes_in": 900, "completion_tokens": 3, "prompt_tokens": 20})
    c.update(over)
    return tr.Call(**c)


def session(sid="s1", device="phone", started_at=1000.0, calls=None, **over) -> tr.Session:
    calls = calls if calls is not None else [call(), call(gap_s=0.0)]
    s = dict(id=sid, device=device, mode="local", network="local", model="m", started_at=started_at, calls=calls,
             lead_s=0.01, end_s=0.02, final_answer_bytes=40, tool_s=0.5,
             task={"dataset": "gsm8k", "task_id": sid, "sample": 0, "repeat": 0, "passed": True})
    s.update(over)
    s = tr.Session(**s)
    s.wall_s = s.lead_s + sum((c.frames or [[0.0]])[-1][0] + c.tail_s + c.client_e2e_s + c.gap_s
                              for c in s.calls) + s.end_s
    return s


def replay_one(s: tr.Session, mode: str, network: str = "fixed4g", seed=0) -> dict:
    (row,) = replay.Replayer(mode, PRESETS[network], seed, ENERGY).device_rows(s.device, [s])
    return row


def test_local_mode_gives_back_the_recorded_timings():
    s = session()
    row = replay_one(s, "local", "4g")
    c1, c2 = row["llm_calls"]
    assert c1["edgemeter"]["ttft_s"] == pytest.approx(0.05) and c1["edgemeter"]["e2e_s"] == pytest.approx(0.102)
    assert c1["ttft_s"] == pytest.approx(0.051) and c1["e2e_s"] == pytest.approx(0.105)
    assert c1["itl_mean_s"] == pytest.approx(0.02)  # between the three content frames; the finish frame is not one
    assert c2["started_at"] - c1["started_at"] == pytest.approx(0.105 + 0.5)  # after the recorded tool time
    assert row["wall_s"] == pytest.approx(s.wall_s)
    assert row["net_delay_s"] == 0 and row["radio_j"] == 0 and row["promotions"] == 0
    assert row["compute_j"] == pytest.approx(6.0) and c1["edgemeter"]["compute_energy_method"] == "rapl"
    # the zero-delay preset over a link: only microseconds of serialization at 10 Gb/s, no radio
    hybrid = replay_one(s, "hybrid", "local")
    assert hybrid["wall_s"] == pytest.approx(s.wall_s, abs=1e-4) and hybrid["radio_j"] == 0
    assert hybrid["compute_j"] == 0  # the model is not on the device


def test_fixed_delay_preset_adds_promotion_and_link_delays_exactly():
    s = session()
    row = replay_one(s, "hybrid")
    c1, c2 = (c["edgemeter"] for c in row["llm_calls"])
    up = ser(1000, UP_BPS) + ONE_WAY
    assert c1["ttft_s"] == pytest.approx(0.05 + PROMOTION + HANDSHAKE + up + ser(150, DOWN_BPS) + ONE_WAY, abs=1e-9)
    assert c1["net_delay_s"]["promotion"] == pytest.approx(PROMOTION)
    assert c1["net_delay_s"]["handshake"] == pytest.approx(HANDSHAKE)
    assert c1["net_delay_s"]["total"] == pytest.approx(PROMOTION + HANDSHAKE + up + ser(110, DOWN_BPS) + ONE_WAY,
                                                       abs=1e-9)
    # half a second later the radio is still connected (LTE's tail) and the connection open (keep-alive):
    # no second promotion, no second handshake
    assert c2["ttft_s"] == pytest.approx(0.05 + up + ser(150, DOWN_BPS) + ONE_WAY, abs=1e-9)
    assert row["promotions"] == 1 and c2["promotions"] == 0
    net = c1["net_delay_s"]["total"] + c2["net_delay_s"]["total"]
    assert row["net_delay_s"] == pytest.approx(net) and row["wall_s"] == pytest.approx(s.wall_s + net)
    # each record shows its tail as provisional, as the proxy's do; the session's total is settled
    assert not c1["radio_settled"] and c1["radio_tail_provisional_j"] == pytest.approx(LTE.tail_j)
    assert row["session_record"]["radio_tail_provisional_j"] == 0
    cut = row["radio_j"] - c1["radio_j"] - c2["radio_j"] - LTE.tail_j  # c1's tail, cut short by c2
    assert 0 < cut < 0.6 * LTE.base_w  # ~0.5 s of tail between the calls, at most at the CR-tail power
    assert row["radio_j"] < sum(c["radio_j"] + c["radio_tail_provisional_j"] for c in (c1, c2)) - 9


def test_cloud_mode_charges_only_the_task_up_and_the_answer_down():
    s = session(calls=[call(), call(), call(gap_s=0.0)])
    row = replay_one(s, "cloud")
    c1, c2, c3 = (c["edgemeter"] for c in row["llm_calls"])
    assert c1["net_delay_s"]["total"] == pytest.approx(PROMOTION + HANDSHAKE + ser(1000, UP_BPS) + ONE_WAY, abs=1e-9)
    assert c1["ttft_s"] == pytest.approx(c1["net_delay_s"]["total"] + 0.05, abs=1e-9)  # frames stay in the cloud
    assert [c["net_delay_s"]["total"] for c in (c2, c3)] == [0, 0] and c2["radio_j"] == c3["radio_j"] == 0
    answer = row["session_record"]["final_answer_delay_s"]
    assert answer == pytest.approx(ser(40, DOWN_BPS) + ONE_WAY, abs=1e-9)
    assert row["net_delay_s"] == pytest.approx(c1["net_delay_s"]["total"] + answer)
    assert row["radio_j"] > c1["radio_j"] and row["promotions"] == 1
    assert row["wall_s"] == pytest.approx(s.wall_s + row["net_delay_s"])


def test_pocket_agent_compat_charges_one_rtt_per_call_and_its_radio():
    s = session()
    (row,) = replay.Replayer("hybrid", pocket_agent(PRESETS["fixed4g"]), 0, ENERGY).device_rows(s.device, [s])
    c1, c2 = (c["edgemeter"] for c in row["llm_calls"])
    rtt = 2 * ONE_WAY  # jitter 0: the study's Gaussian RTT is exactly the RTT
    assert c1["net_delay_s"]["handshake"] == 0.0
    assert c1["net_delay_s"]["total"] == pytest.approx(PROMOTION + 1000 * 8 / UP_BPS + rtt + 110 * 8 / DOWN_BPS,
                                                       abs=1e-9)
    assert c2["ttft_s"] == pytest.approx(0.05 + 1000 * 8 / UP_BPS + rtt + 150 * 8 / DOWN_BPS, abs=1e-9)
    assert row["radio"] == "pocket-agent" and row["promotions"] == 1
    # its 0.5 J promotion, 1.2 W while busy (well under a second), and a 7 s tail at 0.6 W, still
    # provisional when the call finished (the next call cuts it)
    assert c1["radio_tail_provisional_j"] == pytest.approx(7 * 0.6)
    assert 0.5 < c1["radio_j"] < 0.5 + 1.2 * 1.0
    # the task's total is what the radio spent: both calls' promotion and transfers, the first
    # tail up to the second call, and the last tail in full
    assert 0.5 + 7 * 0.6 < row["radio_j"] < c1["radio_j"] + 1.2 * 1.0 + 7 * 0.6 + 0.6 * s.wall_s


def test_same_seed_same_replay_other_seed_other_draws():
    sessions = [session("a", started_at=1000.0), session("b", started_at=1010.0)]

    def run_(seed):
        rows = replay.sweep(sessions, ["hybrid"], [PRESETS["4g"]], seed, ENERGY)
        return json.dumps([{k: v for k, v in r.items() if k != "replay"} for r in rows], sort_keys=True)
    assert run_(7) == run_(7)
    assert run_(7) != run_(8)


def test_session_end_waits_out_the_tail_so_the_next_session_starts_idle():
    near = [session("a", started_at=1000.0), session("b", started_at=1000.0 + 1.3 + 2.0)]  # 2 s apart
    rows = replay.sweep(near, ["hybrid"], [PRESETS["fixed4g"]], 0, ENERGY)
    assert [r["promotions"] for r in rows] == [1, 1]  # as live: the end waited for a's tail
    a = rows[0]["session_record"]
    assert a["radio_settle_wait_s"] == pytest.approx(LTE.tail_s, abs=0.05)  # ends right after its last frame
    assert a["radio_tail_j"] > LTE.tail_j  # its whole last tail, plus the cut-short ones before
    assert rows[0]["wall_s"] < 5  # the wait is not the task's time
    apart = [session("a", started_at=1000.0), session("b", started_at=1000.0 + 1.3 + 30.0)]  # past the tail
    assert [r["promotions"] for r in replay.sweep(apart, ["hybrid"], [PRESETS["fixed4g"]], 0, ENERGY)] == [1, 1]


def test_violating_traces_are_flagged_with_a_reason():
    failed = session("failed", calls=[call(status=504, error="upstream_timeout")])
    cut = session("cut", started_at=2000.0, calls=[call(delivered=2)])
    unfinished = session("unfinished", started_at=3000.0, calls=[call(finish_reason=None)])
    untimed = session("untimed", started_at=4000.0, calls=[call(frames=None)])
    busy = session("busy", started_at=5000.0, calls=[call(gap_s=3.0), call(gap_s=0.0)], tool_s=0.2)
    first, second = session("first", started_at=6000.0), session("second", started_at=6000.5)  # one device, both live
    elsewhere = session("elsewhere", device="tablet", started_at=6000.5)
    ok = session("ok", started_at=7000.0)
    tr.validate([failed, cut, unfinished, untimed, busy, first, second, elsewhere, ok])
    assert failed.flags[0].startswith("call_error: call 1: upstream_timeout")
    assert cut.flags == ["stream_cut: call 1 delivered 2 of 4 frames"]
    assert unfinished.flags[0].startswith("stream_cut") and untimed.flags[0].startswith("no_timeline")
    assert busy.flags[0].startswith("unexplained_gap")
    assert first.flags[0].startswith("overlap") and second.flags[0].startswith("overlap")
    assert elsewhere.flags == ok.flags == []
    # latency the client would not have waited for: the replayed call outlives the client's timeout
    slow = session("slow", timeout_s=2.0, calls=[call(bytes_up=200_000)])
    row = replay_one(slow, "hybrid", "fixed4g")
    assert row["error"] is None
    row = replay.Replayer("hybrid", presets_from_config({})["edge_case"], 0, ENERGY).device_rows("phone", [slow])[0]
    assert "timeout" in row["error"] and row["passed"] is False


def test_cli_skips_flagged_sessions_and_reports_why(tmp_path, capsys):
    sessions = [session("good"), session("bad", started_at=2000.0, calls=[call(status=500, error="upstream_5xx")])]
    tr.save(tmp_path / "t.jsonl", sessions)
    assert [s.id for s in tr.load(tmp_path / "t.jsonl")] == ["good", "bad"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1"}},
                               "networks": FIXED}))
    out = tmp_path / "out"
    argv = [str(tmp_path / "t.jsonl"), "--out", str(out), "--modes", "local,hybrid", "--networks", "fixed4g,wifi",
            "--config", str(cfg), "--no-plots"]
    assert replay.main(argv) == 0
    rows = read_rows(out / "results.jsonl")
    assert {r["session"] for r in rows} == {"good"} and len(rows) == 4
    info = json.loads((out / "run.json").read_text())
    assert info["replay"]["skipped"][0]["reasons"][0].startswith("call_error: call 1: upstream_5xx")
    assert "hybrid / fixed4g" in (out / "report.md").read_text()
    assert "| hybrid / wifi | wifi | 1 |" in capsys.readouterr().out
    assert replay.main(argv + ["--keep-flagged", "--radio", "3g"]) == 0
    rows = read_rows(out / "results.jsonl")
    assert {r["session"] for r in rows} == {"good", "bad"}
    assert {r["radio"] for r in rows if r["mode"] != "local"} == {"3g"}
    assert next(r["replay"]["flags"] for r in rows if r["session"] == "bad")


# --- a live recording through a real proxy ---

CODE = "```python\nprint(6 * 7)\n```"


async def scripted(request: web.Request) -> web.StreamResponse:
    """Write code first, then answer: two calls per task, a tool run between them."""
    body = await request.json()
    text = CODE if len(body["messages"]) <= 2 else "FINAL ANSWER: 42"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for word in text.split(" "):
        await resp.write(chunk({"content": word + " "}))
        await asyncio.sleep(0.01)
    await resp.write(chunk(finish="stop") + b"data: [DONE]\n\n")
    return resp


async def test_a_live_recording_round_trips_into_replay(aiohttp_server, tmp_path):
    up = web.Application()
    up.router.add_post("/v1/chat/completions", scripted)
    upstream = await aiohttp_server(up)
    log = tmp_path / "requests.jsonl"
    models = {"scripted": {"backend": "upstream", "base_url": str(upstream.make_url("/v1"))}}
    from proxy.app import create_app
    proxy = await aiohttp_server(create_app(make_config(models, networks=FIXED,
                                                        server={"record_traces": True, "request_log": str(log)})))
    await wait_ready(proxy)
    live = tmp_path / "live"
    argv = ["--base-url", str(proxy.make_url("/v1")), "--dataset", "gsm8k", "--data-dir", str(data_dir()),
            "--ids", "0,1", "--out", str(live), "--modes", "local", "--warmup", "0", "--no-progress", "--no-report",
            "--repeats", "1"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0

    sessions = tr.validate(tr.load(live))
    recorded = read_rows(live / "results.jsonl")
    assert [s.flags for s in sessions] == [[], []] and [len(s.calls) for s in sessions] == [2, 2]
    for s, row in zip(sessions, recorded):
        assert s.final_answer_bytes == 2 and s.device == "harness-0"
        for c, rec in zip(s.calls, row["llm_calls"]):
            em = rec["edgemeter"]
            assert len(c.frames) == em["chunks"] == 4  # the script's three words and its finish
            assert c.bytes_up == em["bytes_up"]
            assert sum(f[1] for f in c.frames) == em["bytes_down"]
            offsets = [f[0] for f in c.frames]
            # the script sleeps 10 ms after each word: the finish comes three sleeps after the first word,
            # as the proxy saw them within one event's tolerance (TOL_S)
            assert offsets == sorted(offsets) and offsets[-1] - offsets[0] == pytest.approx(0.03, abs=TOL_S)
        # the second call carries the first one's conversation, plus its answer and the tool's output
        assert s.calls[1].bytes_up >= s.calls[0].bytes_up + len(CODE)
        assert s.calls[0].gap_s >= row["tool_calls"][0]["wall_s"]  # the python tool ran between the calls
    # the proxy's own log holds the same calls, grouped by session
    from_log = {s.id: s for s in tr.load(log)}
    assert set(from_log) == {s.id for s in sessions}
    for s in sessions:
        assert [c.frames for c in from_log[s.id].calls] == [c.frames for c in s.calls]

    out = tmp_path / "replayed"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"models": models, "networks": FIXED}))
    assert replay.main([str(live), "--out", str(out), "--modes", "local,hybrid,cloud", "--networks", "fixed4g",
                        "--config", str(cfg), "--no-plots"]) == 0
    rows = {(r["mode"], r["session"]): r for r in read_rows(out / "results.jsonl")}
    for i, row in enumerate(recorded):
        local, hybrid, cloud = (rows[(m, row["session"])] for m in ("local", "hybrid", "cloud"))
        # every second of the live session is accounted for: lead, calls, tools, end
        assert local["wall_s"] == pytest.approx(row["wall_s"], abs=0.1)
        assert local["passed"] == row["passed"] and local["net_delay_s"] == 0
        first = hybrid["llm_calls"][0]["edgemeter"]["net_delay_s"]
        # one device, but a task's end waits out its radio tail (docs/energy.md): each task promotes
        assert first["promotion"] == pytest.approx(PROMOTION)
        assert first["propagation"] == pytest.approx(2 * ONE_WAY)
        assert hybrid["wall_s"] > local["wall_s"] + 4 * ONE_WAY  # two calls, each up and down
        assert cloud["session_record"]["final_answer_delay_s"] >= ONE_WAY
        assert cloud["llm_calls"][1]["edgemeter"]["net_delay_s"]["total"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {(s["mode"], s["network"]) for s in summary} == {("local", "fixed4g"), ("hybrid", "fixed4g"),
                                                            ("cloud", "fixed4g")}


def test_trace_files_keep_every_field():
    s = session(calls=[call(), call(gap_s=0.0, frames=[[0.2, 900, 12]], stream=False, first_token_s=0.03)])
    s.flags = ["x"]
    again = tr.Session.from_json(orjson.loads(orjson.dumps(s.to_json())))
    assert again == s
    bad = copy.deepcopy(s.to_json())
    bad["version"] = 99
    with pytest.raises(ValueError, match="version"):
        tr.Session.from_json(bad)


def test_device_profile_regenerates_local_calls_at_its_token_rates_and_throttles():
    phone = PROFILES["phone"]
    energy = ComputeEnergy.from_config({"method": "estimate", "device": "phone"})
    s = session(tool_cpu_s=0.25)
    (row,) = replay.Replayer("local", PRESETS["4g"], 0, energy).device_rows(s.device, [s])
    c1, c2 = (c["edgemeter"] for c in row["llm_calls"])
    prefill, tok = 20 / phone.prefill_tok_s, 1 / phone.decode_tok_s
    assert c1["backend_ttft_s"] == pytest.approx(prefill + tok)
    assert c1["e2e_s"] == pytest.approx(prefill + 3 * tok + 0.002)  # last frame + the recorded tail
    assert c1["compute_j"] == pytest.approx(phone.generating_w * (prefill + 3 * tok))
    assert c1["compute_energy_method"] == "profile:phone"
    sr = row["session_record"]
    assert sr["tools_j"] == pytest.approx(0.25 * phone.cpu_core_w)
    assert sr["baseline_j"] == pytest.approx(phone.baseline_w * row["wall_s"])
    assert row["energy_j"] == pytest.approx(sr["baseline_j"] + row["compute_j"] + sr["tools_j"] + row["radio_j"])
    # a phone that throttles during call 2's third token: 2 prefills + 4.5 tokens into the session
    slow = dataclasses.replace(phone, throttle_after_s=2 * prefill + 4.5 * tok)
    c, gen = replay.on_device(s.calls[1], slow, prefill + 3 * tok)
    assert gen == pytest.approx(prefill + 2 * tok + tok / slow.throttled)
    assert [f[0] for f in c.frames][-1] == pytest.approx(gen)


def test_replay_prices_the_cloud_side_apart_from_the_device():
    energy = ComputeEnergy.from_config({"method": "estimate", "device": "phone",
                                        "cloud": {"m": {"usd_per_mtok_in": 1.0, "usd_per_mtok_out": 4.0,
                                                        "dc_j_per_output_token": 0.3}}})
    rows = {mode: replay.Replayer(mode, PRESETS["fixed4g"], 0, energy).device_rows("phone", [session()])[0]
            for mode in ("local", "hybrid")}
    assert rows["local"]["cloud_usd"] == 0 and rows["local"]["cloud_j"] == 0  # the model is on the device
    h = rows["hybrid"]
    assert h["cloud_usd"] == pytest.approx((2 * 20 * 1.0 + 2 * 3 * 4.0) / 1e6)  # 2 calls: 20 in, 3 out each
    assert h["cloud_j"] == pytest.approx(2 * 3 * 0.3)
    sr = h["session_record"]
    assert h["energy_j"] == pytest.approx(sr["baseline_j"] + sr["compute_j"] + sr["tools_j"] + sr["radio_j"])


def test_grid_axis_specs():
    assert replay.grid_axis("rtt_ms=10..1000:3") == ("rtt_ms", [10.0, 100.0, 1000.0])
    assert replay.grid_axis("loss=0..0.1:3") == ("loss", [0.0, 0.05, 0.1])
    assert replay.grid_axis("down_mbps=5,0.5,50") == ("down_mbps", [0.5, 5.0, 50.0])
    assert replay.grid_axis("rtt_ms=10..500")[1] == [10.0, 26.6, 70.7, 188.0, 500.0]
    for bad in ("rtt=1..2", "rtt_ms=5..1", "rtt_ms=1..2:1", "rtt_ms=x"):
        with pytest.raises(ValueError):
            replay.grid_axis(bad)


def test_cli_grid_sweeps_custom_presets_and_reports_break_even(tmp_path, capsys):
    tr.save(tmp_path / "t.jsonl", [session("a"), session("b", started_at=2000.0)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1"}},
                               "networks": FIXED}))
    out = tmp_path / "out"
    assert replay.main([str(tmp_path / "t.jsonl"), "--out", str(out), "--networks", "fixed4g", "--config", str(cfg),
                        "--grid", "rtt_ms=10..1000:3", "down_mbps=1,100", "--no-plots"]) == 0
    grid = json.loads((out / "run.json").read_text())["replay"]["grid"]
    assert grid["axes"] == {"rtt_ms": [10.0, 100.0, 1000.0], "down_mbps": [1.0, 100.0]}
    assert grid["presets"]["fixed4g~rtt_ms=100,down_mbps=1"] == {"base": "fixed4g", "rtt_ms": 100.0, "down_mbps": 1.0}
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 2 * 3 * (1 + 6)  # sessions x modes x (base + grid points)
    hybrid = {r["network"]: r["wall_s"] for r in rows if r["mode"] == "hybrid" and r["session"] == "a"}
    walls = [hybrid[f"fixed4g~rtt_ms={rtt},down_mbps=100"] for rtt in (10, 100, 1000)]
    # no jitter or loss: two calls, each one RTT (up and down one-way) later per extra RTT, and the
    # first call's new connection pays its TCP and TLS handshakes (2 RTTs) too
    assert walls[1] - walls[0] == pytest.approx(4 * 0.09) and walls[2] - walls[0] == pytest.approx(4 * 0.99)
    rec = next(r for r in rows if r["mode"] == "hybrid")["llm_calls"][0]["edgemeter"]
    assert (rec["placement"], rec["placement_emulated"]) == ("cloud", True)  # recorded on the device
    md = (out / "report.md").read_text()
    assert "### gsm8k on fixed4g" in md and "### gsm8k on fixed4g~" not in md
    assert "### Break-even network conditions" in md and "### Break-even network conditions" in capsys.readouterr().out


def test_recorded_modes_filter_and_pairing_by_session(tmp_path):
    task = {"dataset": "gsm8k", "task_id": "t", "sample": 0, "repeat": 0, "passed": True}
    tr.save(tmp_path / "t.jsonl", [session("a", task=task),
                                   session("b", started_at=2000.0, mode="hybrid", network="4g", task=task)])
    out = tmp_path / "out"
    argv = [str(tmp_path / "t.jsonl"), "--out", str(out), "--modes", "local,cloud", "--networks", "wifi", "--no-plots"]
    assert replay.main(argv + ["--recorded-modes", "local"]) == 0
    assert {r["session"] for r in read_rows(out / "results.jsonl")} == {"a"}
    assert replay.main(argv) == 0
    where = json.loads((out / "where.json").read_text())["decisions"][0]
    # one task recorded twice (in local and in hybrid mode): each recording pairs with its own replay
    assert where["pairs"]["local vs cloud"]["pairs"] == 2


def test_task_gap_and_cold_radio_pace_sessions_on_the_virtual_clock():
    lan = presets_from_config({"fixedlan": {"base": "lan", "jitter_ms": 0}})["fixedlan"]  # no radio tail to wait
    two = [session("a", started_at=1000.0), session("b", started_at=1000.0 + 60.0)]

    def rows(**kw):
        return replay.sweep(two, ["hybrid"], [lan], 0, ENERGY, **kw)
    recorded, gapped = rows(), rows(task_gap=("fixed", 1.0))
    for r in (recorded, gapped):
        assert r[0]["session_record"]["radio_settle_wait_s"] == 0
    end_a = gapped[0]["started_at"] + gapped[0]["wall_s"]
    assert gapped[1]["started_at"] - end_a == pytest.approx(1.0)  # the drawn think time, not the recorded 60 s
    assert recorded[1]["started_at"] - end_a > 50
    # 1 s apart the connection is still open (keepalive 5 s); 60 s apart, or reset, it is set up again
    first_net = [r[1]["llm_calls"][0]["edgemeter"]["net_delay_s"]["total"] for r in
                 (gapped, rows(task_gap=("fixed", 1.0), cold_radio=True), recorded)]
    handshake = lan.handshake_rtts * lan.rtt_ms / 1000
    assert first_net[1] - first_net[0] == pytest.approx(handshake) and first_net[2] == pytest.approx(first_net[1])
