"""auto mode in the harness: the fitted table's choices, and auto beside the fixed modes in the decision
report, on constructed results with known answers (the embedded model's placements need not differ)."""
import pytest

from harness.agents import auto, where
from tests.harness.agents.test_where import KNOWN, rows_for


def test_fit_picks_the_objective_s_best_mode_within_the_slo():
    # KNOWN on 4g: local (joined from its no-network point) 10 s, 0.2 J/task, 5 solved -> 0.8 J/solved;
    # hybrid 4 s, 3 J, 16 solved -> 3.75; cloud 3 s, 0.5 J, 16 solved -> 0.625 J/solved
    cell = auto.fit(KNOWN, "device_j_per_task", None)["table"]["gsm8k"]["4g"]
    assert (cell["mode"], cell["value"], cell["slo_met"]) == ("local", pytest.approx(0.2), True)
    cell = auto.fit(KNOWN, "device_j_per_task", slo_s=5.0)["table"]["gsm8k"]["4g"]  # local's 10 s misses it
    assert (cell["mode"], cell["value"]) == ("cloud", pytest.approx(0.5))
    assert auto.fit(KNOWN, "device_j_per_solved", None)["table"]["gsm8k"]["4g"]["mode"] == "cloud"
    assert auto.fit(KNOWN, "accuracy", slo_s=3.5)["table"]["gsm8k"]["4g"]["mode"] == "cloud"
    cell = auto.fit(KNOWN, "device_j_per_task", slo_s=1.0)["table"]["gsm8k"]["4g"]  # nobody meets 1 s
    assert (cell["mode"], cell["slo_met"]) == ("cloud", False)  # the fastest, and it says so


def auto_rows(choices: dict[int, str], solved, wall, energy) -> list[dict]:
    """auto's rows on KNOWN's 20 tasks: task i's call answered where choices says (default hybrid)."""
    rows = rows_for("auto", "4g", solved, 20, wall=wall, energy=energy)
    for r in rows:
        chosen = choices.get(int(r["task_id"]), "hybrid")
        r["llm_calls"] = [{"edgemeter": {"placement": "device" if chosen == "local" else "cloud", "mode": chosen,
                                         "auto": {"chosen": chosen}}}]
    return rows


def test_auto_beside_the_fixed_modes_with_share_front_and_paired_differences():
    # auto keeps tasks 0-4 on the device, solves 0-15 like cloud, at 3 s and 0.3 J: between cloud and local
    rows = KNOWN + auto_rows({i: "local" for i in range(5)}, range(16), wall=3.0, energy=0.3)
    (d,) = where.decide(rows)
    res = {r["mode"]: r for r in d["modes"]}
    assert [r["mode"] for r in d["modes"]] == ["local", "hybrid", "cloud", "auto"]
    assert res["auto"]["device_share"] == 0.25 and res["local"]["device_share"] == 1.0
    a = d["auto"]
    assert a["on_front"] is True and a["dominated_by"] == [] and a["chosen"] == {"local": 5, "hybrid": 15}
    vc = a["versus"]["cloud"]
    assert vc["device_j"]["diff"] == pytest.approx(-0.2) and vc["device_j"]["diff_ci95"] == pytest.approx([-0.2, -0.2])
    assert vc["wall_s"]["diff"] == pytest.approx(0.0) and vc["accuracy"]["diff"] == 0.0
    vl = a["versus"]["local"]
    assert vl["accuracy"]["diff"] == pytest.approx(0.55) and vl["wall_s"]["diff"] == pytest.approx(-7.0)
    assert "auto (25% of calls on the device) is on the Pareto front" in d["sentence"]
    assert "vs local: accuracy +55% [" in d["sentence"] and "live runs" in d["sentence"]

    # slower and hungrier than cloud at the same accuracy: dominated, and the sentence says by whom
    rows = KNOWN + auto_rows({}, range(16), wall=3.5, energy=0.6)
    (d,) = where.decide(rows)
    assert d["auto"]["on_front"] is False and d["auto"]["dominated_by"] == ["cloud"]
    assert "is not on the Pareto front: cloud is as good on every objective and better on one" in d["sentence"]
    assert where.markdown([d]).count("| auto |") == 1
