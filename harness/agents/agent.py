"""The multi-turn agent: chat with the model, run the tools it asks for, stop at an answer.

Two tool protocols:
  native  OpenAI ``tools`` / ``tool_calls``; the ``submit`` tool ends the task.
  text    works with any chat model: a fenced ```python block is run and its output
          comes back as the next user message; a line starting ``FINAL ANSWER:`` ends
          the task. A reply with neither is taken as the answer.
The loop stops at an answer, after ``max_turns`` model calls, when the task's
completion-token budget is spent, or on a failed call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.common.client import OpenAIClient
from harness.common.datasets import Task
from harness.agents.tools import SPECS, Toolbox

PROTOCOLS = ("text", "native")

_SYSTEM = {
    "text": ("You are a careful problem solver with a Python interpreter. To run code, write one ```python "
             "block and stop; you will see its output. When you are sure, write a line starting with "
             "'FINAL ANSWER:' followed by the answer: only the number for a math problem, the complete "
             "function in a ```python block for a coding task."),
    "native": ("You are a careful problem solver. Use the python tool to compute or test code, read_file and "
               "write_file for files, and call submit with the final answer: only the number for a math "
               "problem, the complete function for a coding task."),
}
_FINAL = re.compile(r"^[ \t*#>_]*final answer[ \t*_]*[:\-]?[ \t*_]*", re.I | re.M)  # also **Final Answer:**
_PY_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)[ \t]*\n(.*?)```", re.S | re.I)


@dataclass(frozen=True)
class AgentConfig:
    model: str
    protocol: str = "text"
    max_turns: int = 6
    max_tokens: int = 1024  # completion tokens per task, over all its calls
    max_tokens_per_call: int = 512
    temperature: float = 0.0
    seed: int | None = None
    stream: bool = True


@dataclass
class Outcome:
    answer: str | None = None
    answer_source: str | None = None  # submit | final_marker | message | last_code | last_message
    stop_reason: str | None = None  # answer | max_turns | max_tokens | error
    error: str | None = None
    turns: int = 0
    llm_calls: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)


def task_message(task: Task) -> str:
    if task.kind == "math":
        return f"{task.prompt}\n\nSolve it and give the final answer as a number."
    return task.prompt


def final_answer(text: str) -> str | None:
    """What follows the FINAL ANSWER marker (the whole reply when the marker stands alone)."""
    m = None
    for m in _FINAL.finditer(text):
        pass
    if m is None:
        return None
    rest = text[m.end():].strip()
    return rest or text[:m.start()].strip()


def python_code(text: str) -> str:
    return "\n".join(_PY_BLOCK.findall(text))


async def solve(client: OpenAIClient, toolbox: Toolbox, task: Task, cfg: AgentConfig,
                headers: dict[str, str] | None = None) -> Outcome:
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    out = Outcome(messages=[{"role": "system", "content": _SYSTEM[cfg.protocol]},
                            {"role": "user", "content": task_message(task)}])
    msgs = out.messages
    used = 0
    for _ in range(cfg.max_turns):
        budget = cfg.max_tokens - used
        if budget <= 0:
            out.stop_reason = "max_tokens"
            break
        body = {"model": cfg.model, "messages": msgs, "max_tokens": min(cfg.max_tokens_per_call, budget),
                "temperature": cfg.temperature, "stream": cfg.stream}
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.protocol == "native":
            body["tools"] = SPECS
        r = await client.chat(body, headers=headers)
        out.turns += 1
        out.llm_calls.append(r.record())
        used += r.completion_tokens or r.chunks
        if not r.ok:
            out.stop_reason, out.error = "error", r.error
            break
        if cfg.protocol == "native" and r.tool_calls:
            calls = [{**c, "id": c.get("id") or f"call_{out.turns}_{i}"} for i, c in enumerate(r.tool_calls)]
            msgs.append({"role": "assistant", "content": r.content or None, "tool_calls": calls})
            for c in calls:
                res = await toolbox.call(c["function"]["name"], c["function"]["arguments"])
                out.tool_calls.append(res.record())
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": res.observation})
                if res.final_answer is not None:
                    out.answer, out.answer_source = res.final_answer, "submit"
            if out.answer is not None:
                out.stop_reason = "answer"
                break
            continue
        msgs.append({"role": "assistant", "content": r.content})
        if cfg.protocol == "text":
            final = final_answer(r.content)
            if final is not None:
                out.answer, out.answer_source, out.stop_reason = final, "final_marker", "answer"
                break
            code = python_code(r.content)
            if code:
                res = await toolbox.python(code)
                out.tool_calls.append(res.record())
                msgs.append({"role": "user", "content": f"Output:\n{res.observation}\n\n"
                                                        "Continue, or write FINAL ANSWER: when you are sure."})
                continue
        out.answer, out.answer_source, out.stop_reason = r.content, "message", "answer"
        break
    else:
        out.stop_reason = "max_turns"
    if out.answer is None:
        _fallback(out, task)
    return out


def _fallback(out: Outcome, task: Task) -> None:
    """No explicit answer: grade the last code written (code tasks) or the last reply."""
    replies = [m.get("content") or "" for m in out.messages if m["role"] == "assistant"]
    if task.kind == "code":
        code = next((python_code(t) for t in reversed(replies) if python_code(t)), None)
        if code:
            out.answer, out.answer_source = f"```python\n{code}\n```", "last_code"
            return
    if replies:
        out.answer, out.answer_source = replies[-1], "last_message"
