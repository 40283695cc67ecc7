"""``python -m harness replay TRACES --live BASE_URL``: recorded agent sessions as load on a live server.

Where ``harness load`` sends independent single requests, this sends the recorded agent
sessions again (a ``harness run`` directory or results.jsonl, a proxy request log, a trace
file), as AIPerf's fixed schedule and GuideLLM's trace replay do: each session starts at its
recorded offset from the first, on its recorded device; each turn asks for the recorded
completion length, and its prompt is the previous turn's prompt plus the server's reply
plus new user text of the recorded growth (the tool output and the next instruction), so a
server with a prefix cache sees what it would see from a real agent. A turn is sent its
recorded gap (client and tool time) after the previous one returned, so a slower or faster
server shifts the schedule as it would shift a real agent's.
"""
from __future__ import annotations

import asyncio
import random
import time

from harness.common.client import OpenAIClient
from harness.load.generator import H_DEVICE, WORDS, Sample, summarize
from harness.replay import trace as tr

H_SESSION = "X-Edgemeter-Session"


def new_text(n: int, rng: random.Random) -> str:
    """``n`` words that BPE tokenizers keep as one token each (harness.load's synthetic prompts)."""
    return " ".join(rng.choices(WORDS, k=max(1, n)))


async def replay_session(client: OpenAIClient, s: tr.Session, start: float, model: str, headers: dict,
                         stream: bool, seed: int | str) -> list[dict]:
    """One session's turns, each sent its recorded gap after the previous one returned."""
    rng = random.Random(f"{seed}:{s.id}")
    messages: list[dict] = []
    covered = 0  # prompt tokens the conversation so far stands for
    rows = []
    due = start + s.lead_s
    for i, c in enumerate(s.calls):
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        messages.append({"role": "user", "content": new_text(c.prompt_tokens - covered, rng)})
        body = {"model": model, "messages": list(messages), "max_tokens": max(1, c.completion_tokens),
                "stream": stream}
        sent = time.perf_counter()
        res = await client.chat(body, headers={**headers, H_DEVICE: s.device, H_SESSION: s.id})
        done = time.perf_counter()
        messages.append({"role": "assistant", "content": res.content or "."})
        covered = max(c.prompt_tokens, res.prompt_tokens or 0) + (res.completion_tokens or c.completion_tokens)
        sample = Sample(i, False, sent, done, res, stream)
        rows.append({"session": s.id, "turn": i, "due_s": due - start, "sent_s": sent - start,
                     "late_s": sent - due, "messages": len(messages) - 1, "ok": res.ok, "error": res.error,
                     "prompt_tokens": res.prompt_tokens, "output_tokens": sample.output_tokens,
                     "ttft_ms": None if sample.ttft is None else sample.ttft * 1000,
                     "e2el_ms": None if res.e2e_s is None else res.e2e_s * 1000, "sample": sample})
        due = done + c.gap_s
    return rows


async def replay_live(sessions: list[tr.Session], base_url: str, *, api_key: str | None = None,
                      model: str | None = None, headers: dict | None = None, stream: bool = True, seed: int | str = 0,
                      timeout_s: float = 600.0, slo: dict | None = None) -> dict:
    first = min(s.started_at for s in sessions)
    async with OpenAIClient(base_url, api_key=api_key, timeout_s=timeout_s,
                            max_connections=max(4, 2 * len(sessions))) as client:
        model = model or next(iter(await client.models()), None)
        t0 = time.perf_counter()
        per = await asyncio.gather(*(replay_session(client, s, t0 + s.started_at - first, model or s.model or "",
                                                    headers or {}, stream, seed) for s in sessions))
    turns = [t for rows in per for t in rows]
    late = [t["late_s"] for t in turns]
    summary = summarize([t.pop("sample") for t in turns], slo)
    return {"name": "sessions", "profile": "trace", "sessions": len(sessions), "turns": len(turns),
            "late_s_max": max(late, default=None), "late_s_mean": sum(late) / len(late) if late else None,
            **summary, "requests": turns}
