"""The harness end to end against a real OpenAI-compatible server running SmolLM2-135M
(``harness_base_url``): a couple of tasks per dataset, and a run killed and resumed."""
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.agents import run
from harness.agents.results import attempt_key, read_rows

from tests.harness_fixtures import ROOT, data_dir, harness_base_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
SHORT = ["--max-turns", "2", "--max-tokens", "96", "--max-tokens-per-call", "64", "--no-progress", "--repeats", "1"]


@pytest.mark.parametrize("dataset,ids", [("gsm8k", "0,1"), ("mbpp", "11,12"), ("humaneval", "0,2")])
async def test_agent_solves_or_fails_honestly_with_a_real_model(harness_base_url, tmp_path, dataset, ids):
    argv = ["--base-url", harness_base_url, "--dataset", dataset, "--data-dir", str(data_dir(dataset)), "--ids", ids,
            "--out", str(tmp_path), "--warmup", "0", *SHORT]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    assert [r["task_id"] for r in rows] == ids.split(",")
    for r in rows:
        assert r["error"] is None and r["turns"] >= 1 and isinstance(r["passed"], bool)
        assert r["answer"] and r["answer_source"] in ("final_marker", "message", "last_message")
        assert r["graded_source"] in ("final_answer", "last_code", "last_message", "none")
        assert r["passed"] or r["grade_detail"] or dataset == "gsm8k"
        for c in r["llm_calls"]:
            # a real model's output length and timing are not knowable: a streamed answer has a chunk,
            # and its first token comes within the call
            assert c["ok"] and c["chunks"] >= 1 and 0 < c["ttft_s"] <= c["e2e_s"]
            if c["edgemeter"]:  # behind Edgemeter: its record counts what the client was told
                assert c["edgemeter"]["completion_tokens"] == c["completion_tokens"]
        # the task's model time is its calls' time; calls and tools run one after another inside its wall
        # time (tool times are rounded to 0.1 ms)
        assert r["llm_wall_s"] == pytest.approx(sum(c["e2e_s"] for c in r["llm_calls"]), rel=1e-12)
        assert r["wall_s"] >= r["llm_wall_s"] + r["tool_wall_s"] - 1e-4 * len(r["tool_calls"])
    assert "| " + dataset in (tmp_path / "report.md").read_text()


async def test_native_tool_protocol_runs_against_a_real_server(harness_base_url, tmp_path):
    argv = ["--base-url", harness_base_url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--ids", "3",
            "--out", str(tmp_path), "--warmup", "0", "--protocol", "native", "--no-report", *SHORT]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    (r,) = read_rows(tmp_path / "results.jsonl")
    assert r["protocol"] == "native" and r["error"] is None and r["stop_reason"] in ("answer", "max_turns", "max_tokens")


def _sandbox_workers_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if ppid == pid and b"sandbox_worker.py" in f.read():
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_resume_after_kill_loses_nothing_and_repeats_nothing(harness_base_url, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-c", "import sys, harness.agents.run as r; sys.exit(r.main(sys.argv[1:]))",
            "--base-url", harness_base_url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--limit", "6",
            "--seed", "11", "--out", str(out), "--warmup", "0", "--no-report", "--max-turns", "1",
            "--max-tokens", "24", "--no-progress", "--repeats", "1"]
    results = out / "results.jsonl"
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(read_rows(results)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
            time.sleep(0.05)
        workers = _sandbox_workers_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    before = results.read_bytes()
    assert workers and len(read_rows(results)) < 6
    with open(results, "ab") as f:
        f.write(b'{"dataset": "gsm8k", "task_id": "cut mid-wr')  # what a kill during a write leaves
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)], "sandbox workers outlived the killed run"

    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(results)
    keys = [attempt_key(r) for r in rows]
    assert len(rows) == 6 and len(set(keys)) == 6
    assert results.read_bytes().startswith(before)  # what was recorded before the kill is kept as it was
    assert "cut mid-wr" not in results.read_text()
