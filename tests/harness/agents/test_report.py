"""Summaries computed from recorded attempts: accuracy, pass@k, energy, network share, outputs."""
import json

import pytest

from harness.agents.report import summaries, write_report
from harness.agents.results import ResultsFile, read_rows
from harness.agents.run import task_totals


def row(task, passed, *, mode="local", network="wifi", wall=10.0, energy=2.0, net=1.0, sample=0):
    return {"dataset": "gsm8k", "task_id": task, "sample": sample, "repeat": 0, "mode": mode, "network": network,
            "model": "m", "passed": passed, "wall_s": wall, "started_at": 1000.0, "error": None,
            "energy_j": energy, "radio_j": energy and energy / 2, "compute_j": energy and energy / 2, "net_delay_s": net,
            "llm_wall_s": wall / 2, "tool_wall_s": 1.0, "turns": 2, "n_tool_calls": 1,
            "prompt_tokens": 100, "completion_tokens": 50,
            "llm_calls": [{"ttft_s": 0.5, "e2e_s": wall / 2, "itl_mean_s": 0.02, "edgemeter": {"ttft_s": 0.4}}]}


def test_summary_per_sweep_point():
    rows = [row("1", True, sample=0), row("1", False, sample=1), row("2", False, sample=0), row("2", False, sample=1),
            row("1", True, network="4g", energy=5.0, net=4.0)]
    s = {x["network"]: x for x in summaries(rows, [1, 2])}
    wifi = s["wifi"]
    assert wifi["attempts"] == 4 and wifi["tasks"] == 2 and wifi["solved"] == 1
    assert wifi["accuracy"] == 0.25
    assert wifi["pass@1"] == pytest.approx(0.25) and wifi["pass@2"] == pytest.approx(0.5)
    assert wifi["energy_j_mean"] == 2.0 and wifi["energy_j_per_solved"] == 8.0
    assert wifi["net_share"] == pytest.approx(0.1)
    assert wifi["solved_per_agent_hour"] == pytest.approx(1 / (40 / 3600))
    assert wifi["ttft_s_p50"] == 0.5 and wifi["proxy_ttft_s_p50"] == 0.4
    assert s["4g"]["energy_j_per_solved"] == 5.0 and s["4g"]["pass@2"] is None


def test_no_energy_record_means_not_available():
    rows = [row("1", True, energy=None, net=None)]
    s = summaries(rows, [1])[0]
    assert s["energy_j_mean"] is None and s["energy_j_per_solved"] is None and s["net_share"] is None


def test_session_record_is_the_authority_for_task_totals():
    calls = [{"prompt_tokens": 10, "completion_tokens": 5, "chunks": 5,
              "edgemeter": {"radio_j": 1.0, "compute_j": 2.0, "bytes_up": 100, "bytes_down": 50,
                            "net_delay_s": {"total": 0.25}}}] * 2
    t = task_totals(calls, None)
    assert t["energy_j"] == 6.0 and t["net_delay_s"] == 0.5 and t["completion_tokens"] == 10
    session = {"calls": 2, "radio_j": 2.5, "compute_j": 4.0, "bytes_up": 200, "bytes_down": 140, "net_delay_s": 0.9}
    t = task_totals(calls, session)
    assert t["energy_j"] == 6.5 and t["net_delay_s"] == 0.9 and t["energy_source"] == "session"
    plain = task_totals([{"prompt_tokens": 3, "completion_tokens": 4, "chunks": 4, "edgemeter": None}], None)
    assert plain["energy_j"] is None and not plain["metered"] and not plain["tokens_estimated"]
    no_usage = task_totals([{"prompt_tokens": 0, "completion_tokens": 0, "chunks": 7, "edgemeter": None}], None)
    assert no_usage["completion_tokens"] == 7 and no_usage["tokens_estimated"]


def test_write_report_outputs(tmp_path):
    results = ResultsFile(tmp_path / "results.jsonl")
    for r in [row("1", True), row("2", False), row("1", False, mode="cloud")]:
        results.append(r)
    results.close()
    (tmp_path / "run.json").write_text(json.dumps({"k": [1], "args": {"base_url": "x"}, "run_mode": "accurate"}))
    sums = write_report(tmp_path)
    assert len(sums) == 2
    md = (tmp_path / "report.md").read_text()
    assert "| gsm8k | local / wifi / m | 2 (0 err) | 0.5 [" in md
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3
    for name in ("energy_per_solved.png", "latency_breakdown.png", "accuracy_vs_cost.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_results_file_ignores_and_repairs_a_truncated_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"task_id": "1"}\n{"task_id": "2"')
    assert [r["task_id"] for r in read_rows(path)] == ["1"]
    f = ResultsFile(path)
    f.append({"task_id": "3"})
    f.close()
    assert [r["task_id"] for r in read_rows(path)] == ["1", "3"]


def test_sweep_from_flags_and_yaml(tmp_path):
    from harness.agents.run import Combo, build_parser, load_combos

    def combos(*extra):
        return load_combos(build_parser().parse_args(["--dataset", "gsm8k", "--out", "x", *extra]), "dflt")
    assert combos() == [Combo(None, None, "dflt")]
    assert len(combos("--modes", "local,hybrid", "--networks", "wifi,4g", "--models", "a,b")) == 8
    grid = tmp_path / "grid.yaml"
    grid.write_text("modes: [local, cloud]\nnetworks: [wifi]\n")
    assert combos("--sweep", str(grid)) == [Combo("local", "wifi", "dflt"), Combo("cloud", "wifi", "dflt")]
    assert combos("--sweep", str(grid), "--networks", "4g")[1] == Combo("cloud", "4g", "dflt")  # flags win
    runs = tmp_path / "runs.yaml"
    runs.write_text("runs:\n  - {mode: local, network: local}\n  - {mode: cloud, network: 4g, model: big}\n")
    assert combos("--sweep", str(runs)) == [Combo("local", "local", "dflt"), Combo("cloud", "4g", "big")]
    with pytest.raises(SystemExit):
        combos("--modes", "orbit")
