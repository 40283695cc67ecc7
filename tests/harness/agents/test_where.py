"""Where should it run: the paired statistics and the decision on constructed results with known answers."""
import json

import pytest

from harness.agents import where
from harness.agents.report import write_report
from harness.common.stats import mcnemar_exact, paired_bootstrap_diff


def test_mcnemar_exact_on_known_counts():
    # b=1, c=5: 2 * P(Bin(6, 1/2) <= 1) = 2 * 7/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == mcnemar_exact(1, 5)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(0, 11) == pytest.approx(2 / 2048)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_of_the_difference():
    # five tasks only a solves, five both solve: difference 0.5; its bootstrap is Bin(10, 1/2)/10,
    # whose 2.5th and 97.5th percentiles are 0.2 and 0.8 (P(X<=1) = 1.1 %, P(X<=2) = 5.5 %)
    assert paired_bootstrap_diff([1.0] * 10, [0.0] * 5 + [1.0] * 5) == pytest.approx((0.5, 0.2, 0.8))
    assert paired_bootstrap_diff([1.0] * 4, [0.0] * 4) == (1.0, 1.0, 1.0)  # every pair the same: no spread
    mixed = [1.0, 0.0] * 5  # hard and easy tasks, both modes alike: paired, no difference at all
    assert paired_bootstrap_diff(mixed, mixed) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [])


def rows_for(mode, network, solved, n, wall, energy, *, placement=None, host=None, emulated=False, tokens=(100, 10)):
    rec = {"placement": placement or ("device" if mode == "local" else "cloud"), "served_host": host,
           "placement_emulated": emulated, "prompt_tokens": tokens[0], "completion_tokens": tokens[1]}
    return [{"dataset": "gsm8k", "model": "m", "mode": mode, "network": network, "task_id": str(i), "sample": 0,
             "repeat": 0, "passed": i in solved, "wall_s": wall, "energy_j": energy, "started_at": 1000.0,
             "llm_calls": [{"edgemeter": rec}]} for i in range(n)]


# 20 tasks. local solves 0-4, hybrid and cloud 0-15. local: slow, frugal; cloud: fastest; hybrid: dominated.
KNOWN = (rows_for("local", "local", range(5), 20, wall=10.0, energy=0.2)
         + rows_for("hybrid", "4g", range(16), 20, wall=4.0, energy=3.0)
         + rows_for("cloud", "4g", range(16), 20, wall=3.0, energy=0.5))


def test_known_winners_pareto_and_paired_comparison():
    (d,) = where.decide(KNOWN, price=(1.0, 2.0))
    assert d["network"] == "4g" and [r["mode"] for r in d["modes"]] == ["local", "hybrid", "cloud"]
    res = {r["mode"]: r for r in d["modes"]}
    assert res["local"]["accuracy"] == 0.25 and res["cloud"]["accuracy"] == 0.8
    assert res["local"]["device_j_per_solved"] == pytest.approx(0.2 * 20 / 5)
    assert res["cloud"]["accuracy_per_j"] == pytest.approx(0.8 / 0.5)
    assert res["cloud"]["accuracy_per_w"] == pytest.approx(0.8 / (0.5 / 3.0))  # accuracy / mean device power
    # cloud-placed calls pay: 100 * $1 + 10 * $2 per million tokens; local's device calls pay nothing
    assert res["cloud"]["cost_per_task"] == pytest.approx(120e-6) and res["local"]["cost_per_task"] == 0
    lc = d["pairs"]["local vs cloud"]
    assert (lc["pairs"], lc["only_a"], lc["only_b"]) == (20, 0, 11)
    assert lc["mcnemar_p"] == pytest.approx(2 / 2048) and lc["diff"] == pytest.approx(-0.55)
    assert d["pairs"]["hybrid vs cloud"]["mcnemar_p"] == 1.0
    assert d["accuracy_decides"] is True
    assert d["winners"] == {"accuracy": ["hybrid", "cloud"], "speed": ["cloud"], "device energy": ["local"],
                            "cloud cost": ["local"]}
    assert d["pareto"] == ["local", "cloud"]
    assert d["sentence"] == (
        "On 4g: hybrid and cloud solve the most tasks (80%; local 25%); cloud is fastest (task p50 3 s; "
        "local 7 s slower, hybrid 1 s slower); local uses the least device energy per task (0.2 J; "
        "15x less than hybrid, 2.5x less than cloud); per solved task, cloud uses least (0.625 J); "
        "local costs least ($0 per task). "
        "Pareto-optimal: local and cloud.")


def test_equal_accuracy_cannot_decide_and_same_host_is_labelled():
    rows = (rows_for("local", "local", [], 3, wall=5.0, energy=1.0, host="in-process")
            + rows_for("hybrid", "wifi", [], 3, wall=6.0, energy=2.0, host="same-host")
            + rows_for("cloud", "wifi", [], 3, wall=4.0, energy=0.5, host="same-host", emulated=True))
    (d,) = where.decide(rows)
    assert d["accuracy_decides"] is False and d["pareto"] == ["cloud"]
    assert d["sentence"].startswith("On wifi: accuracy cannot decide (every mode solved 0 of 3 tasks); "
                                    "cloud is fastest")
    assert "Cloud timings are same-host" in d["sentence"] and "stood in for both placements" in d["sentence"]
    # different but not significantly: 1 of 3 vs 0 of 3 (McNemar p = 1)
    rows = rows_for("local", "wifi", [0], 3, wall=5.0, energy=1.0) + rows_for("cloud", "wifi", [], 3, wall=4.0, energy=0.5)
    (d,) = where.decide(rows)
    assert "accuracy cannot decide (differences are within chance: smallest McNemar p 1 on 3 paired tasks)" in d["sentence"]
    # local's one extra solve is noise: it does not make the slower, costlier local Pareto-optimal
    assert d["pareto"] == ["cloud"] and "Pareto-optimal on the other objectives: cloud." in d["sentence"]


def test_local_point_joins_every_preset():
    rows = (rows_for("local", "local", [0], 2, wall=5.0, energy=1.0)
            + rows_for("hybrid", "wifi", [0], 2, wall=4.0, energy=2.0)
            + rows_for("hybrid", "4g", [0], 2, wall=6.0, energy=3.0))
    ds = where.decide(rows)
    assert [(d["network"], [r["mode"] for r in d["modes"]]) for d in ds] == \
        [("4g", ["local", "hybrid"]), ("wifi", ["local", "hybrid"])]


def grid_rows():
    """hybrid's wall time grows with RTT (1 + rtt/100 s); cloud's is 3 s: they cross at rtt = 200 ms.
    hybrid's device energy is rtt/100 J; local's 1.5 J: they cross at 150 ms."""
    presets, rows = {}, []
    for rtt in (50, 100, 300, 500):
        name = f"4g~rtt_ms={rtt}"
        presets[name] = {"base": "4g", "rtt_ms": rtt}
        rows += rows_for("local", name, [0], 2, wall=8.0, energy=1.5)
        rows += rows_for("hybrid", name, [0], 2, wall=1 + rtt / 100, energy=rtt / 100)
        rows += rows_for("cloud", name, [0], 2, wall=3.0, energy=6.0)
    return rows, {"axes": {"rtt_ms": [50, 100, 300, 500]}, "presets": presets}


def test_break_even_points_on_a_known_flip():
    rows, grid = grid_rows()
    flips = {(b["objective"], tuple(b["modes"])): b for b in where.break_even(where.decide(rows), grid)}
    assert set(flips) == {("speed", ("hybrid", "cloud")), ("device energy", ("local", "hybrid"))}
    speed = flips[("speed", ("hybrid", "cloud"))]
    assert speed["at"] == pytest.approx(200.0) and speed["between"] == [100, 300]
    assert (speed["below"], speed["above"]) == ("hybrid", "cloud")
    energy = flips[("device energy", ("local", "hybrid"))]
    assert energy["at"] == pytest.approx(150.0) and (energy["below"], energy["above"]) == ("hybrid", "local")


def test_report_has_the_section_and_figures(tmp_path):
    rows, grid = grid_rows()
    with open(tmp_path / "results.jsonl", "w") as f:
        for r in KNOWN + rows:
            f.write(json.dumps(r) + "\n")
    (tmp_path / "run.json").write_text(json.dumps({"replay": {"grid": grid}}))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Where should it run?" in md and "### gsm8k on 4g (m)" in md
    assert "On 4g: hybrid and cloud solve the most tasks" in md
    assert "| gsm8k | 4g | speed | hybrid vs cloud | rtt_ms | - | 200 | hybrid | cloud |" in md
    assert "### gsm8k on 4g~rtt_ms=50" not in md  # grid points are summed up as break-even points, not one section each
    assert (tmp_path / "where_should_it_run.png").stat().st_size > 0 and (tmp_path / "break_even.png").exists()
    saved = json.loads((tmp_path / "where.json").read_text())
    assert len(saved["break_even"]) == 2


def test_near_ties_are_no_break_even_points():
    rows, grid = grid_rows()
    for r in rows:  # cloud's device energy now within 1 % of hybrid's, on alternating sides
        if r["mode"] == "cloud":
            rtt = grid["presets"][r["network"]]["rtt_ms"]
            r["energy_j"] = rtt / 100 * (1.01 if rtt in (50, 300) else 0.99)
    flips = where.break_even(where.decide(rows), grid)
    assert not [b for b in flips if b["modes"] == ["hybrid", "cloud"] and b["objective"] == "device energy"]
