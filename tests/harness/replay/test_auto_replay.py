"""auto in replay: the policy picks a placement per session and the task's outcome comes from the
recording graded under that placement; tasks recorded under one placement only are left out, and said so."""
import json

import yaml

from harness.agents.results import read_rows
from harness.replay import replay
from harness.replay import trace as tr
from tests.harness.replay.test_replay import call, session

RULES = {"policy": "rules", "default": "hybrid", "rules": [
    {"name": "short_task", "when": {"prompt_tokens": "<= 30"}, "mode": "local"}]}


def test_auto_takes_each_task_from_the_recording_of_the_placement_it_chose(tmp_path):
    def task(tid, passed):
        return {"dataset": "gsm8k", "task_id": tid, "sample": 0, "repeat": 0, "passed": passed}
    short = [call(prompt_tokens=20), call(gap_s=0.0)]
    long = [call(prompt_tokens=100), call(gap_s=0.0)]
    sessions = [  # t1 short: solved only in the cloud; t2 long: solved only on the device; t3 device only
        session("t1-dev", calls=short, task=task("t1", False)),
        session("t1-wifi", started_at=1050.0, calls=short, mode="hybrid", network="wifi", task=task("t1", False)),
        session("t1-cloud", started_at=1100.0, calls=short, mode="hybrid", network="4g", task=task("t1", True)),
        session("t2-dev", started_at=1200.0, calls=long, task=task("t2", True)),
        session("t2-cloud", started_at=1300.0, calls=long, mode="cloud", network="4g", task=task("t2", False)),
        session("t3-dev", started_at=1400.0, calls=short, task=task("t3", True)),
    ]
    tr.save(tmp_path / "t.jsonl", sessions)
    cfg = tmp_path / "auto.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {"backend": "upstream", "base_url": "http://127.0.0.1:9/v1",
                                                    "model": "m"}}, "auto": RULES}))
    out = tmp_path / "out"
    assert replay.main([str(tmp_path / "t.jsonl"), "--out", str(out), "--modes", "local,hybrid,auto",
                        "--networks", "4g", "--config", str(cfg), "--no-plots"]) == 0
    rows = read_rows(out / "results.jsonl")
    got = {(r["mode"], r["task_id"]): r for r in rows}
    assert set(got) == {(m, t) for m in ("local", "hybrid", "auto") for t in ("t1", "t2")}  # t3 left out
    # each fixed mode replays its own placement's recording: local the device's, hybrid the cloud's,
    # the one recorded on the replayed network when there are several (t1-cloud on 4g, not t1-wifi)
    assert [got[("local", t)]["session"] for t in ("t1", "t2")] == ["t1-dev", "t2-dev"]
    assert [got[("hybrid", t)]["session"] for t in ("t1", "t2")] == ["t1-cloud", "t2-cloud"]
    a1, a2 = got[("auto", "t1")], got[("auto", "t2")]
    assert (a1["auto"]["chosen"], a1["auto"]["reason"], a1["auto"]["recording"], a1["passed"]) == \
        ("local", "short_task", "t1-dev", False)
    assert (a2["auto"]["chosen"], a2["auto"]["reason"], a2["auto"]["recording"], a2["passed"]) == \
        ("hybrid", "default", "t2-cloud", False)
    # the same replay as the fixed mode it chose, so its time and energy are that mode's exactly
    assert a1["wall_s"] == got[("local", "t1")]["wall_s"] and a2["energy_j"] == got[("hybrid", "t2")]["energy_j"]
    info = json.loads((out / "run.json").read_text())["replay"]["auto"]
    assert info["tasks"] == 2 and info["chosen"] == {"local": 1, "hybrid": 1}
    assert info["missing_a_placement"] == [{"task": ["gsm8k", "t3", 0, 0], "recorded": ["device"]}]
    (d,) = json.loads((out / "where.json").read_text())["decisions"]
    assert d["auto"]["device_share"] == 0.5 and d["auto"]["versus"]["local"]["accuracy"]["pairs"] == 2
    assert "recording graded under the placement auto chose" in d["sentence"]
