"""Recorded multi-turn sessions replayed against a live HTTP server: turn order, growing prompts,
pacing. Pacing tolerance: a turn is never sent early, and at most 100 ms late (event-loop lag on a
loaded 2-core machine; the recorded gaps are 200-300 ms)."""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from harness.replay import live
from harness.replay import trace as tr
from tests.fake_upstream import chunk
from tests.harness.replay.test_replay import call, session

LATE_S = 0.1


async def recording_server(aiohttp_server):
    seen = []

    async def chat(request):
        body = await request.json()
        seen.append({"session": request.headers["X-Edgemeter-Session"], "device": request.headers["X-Edgemeter-Device"],
                     "messages": body["messages"], "max_tokens": body["max_tokens"], "t": asyncio.get_running_loop().time()})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk({"content": f"reply{len(seen)}"}))
        await resp.write(chunk(finish="stop"))
        await resp.write(chunk(usage={"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1}, choices=False))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request):
        return web.json_response({"data": [{"id": "m"}]})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    server = await aiohttp_server(app)
    return seen, str(server.make_url("/v1"))


async def test_multi_turn_sessions_keep_order_growing_prompts_and_pacing(aiohttp_server, tmp_path):
    seen, url = await recording_server(aiohttp_server)
    turns = [call(prompt_tokens=20, completion_tokens=3, gap_s=0.2), call(prompt_tokens=40, completion_tokens=4,
             gap_s=0.3), call(prompt_tokens=70, completion_tokens=5, gap_s=0.0)]
    sessions = [session("a", device="p1", started_at=1000.0, calls=turns, lead_s=0.0),
                session("b", device="p2", started_at=1000.25, calls=turns, lead_s=0.0)]
    tr.save(tmp_path / "t.jsonl", sessions)  # through the trace file format, as the CLI reads it
    result = await live.replay_live(tr.load(tmp_path / "t.jsonl"), url)
    assert result["completed"] == 6 and result["failed"] == 0
    for sid, device in (("a", "p1"), ("b", "p2")):
        mine = [r for r in seen if r["session"] == sid]
        assert {r["device"] for r in mine} == {device}
        assert [len(r["messages"]) for r in mine] == [1, 3, 5]  # turn order: each extends the last
        for prev, nxt in zip(mine, mine[1:]):
            assert nxt["messages"][:len(prev["messages"])] == prev["messages"]
            assert nxt["messages"][len(prev["messages"])]["role"] == "assistant"
        assert [r["max_tokens"] for r in mine] == [3, 4, 5]
        # new user text: the recorded prompt growth, one word per token: 20, then 40 - (20 + the 1-token reply)
        assert [len(mine[i]["messages"][2 * i]["content"].split()) for i in range(3)] == [20, 19, 29]
    rows = result["requests"]
    assert all(0 <= r["late_s"] <= LATE_S for r in rows)
    by = {(r["session"], r["turn"]): r for r in rows}
    start_gap = [r["t"] for r in seen if r["session"] == "b"][0] - [r["t"] for r in seen if r["session"] == "a"][0]
    assert start_gap == pytest.approx(0.25, abs=LATE_S)  # the recorded offset between the sessions
    for sid in ("a", "b"):  # each turn its recorded gap after the previous returned
        assert by[(sid, 1)]["due_s"] - by[(sid, 0)]["due_s"] >= 0.2 and by[(sid, 2)]["due_s"] - by[(sid, 1)]["due_s"] >= 0.3
    json.dumps(result)  # the CLI writes it as is
