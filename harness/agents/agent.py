"""The multi-turn agent: chat with the model, run the tools it asks for, stop at an answer.

Two tool protocols:
  native  OpenAI ``tools`` / ``tool_calls``; the ``submit`` tool ends the task.
  text    works with any chat model: a fenced ```python block is run and its output
          comes back as the next user message; a line starting ``FINAL ANSWER`` ends
          the task (the answer follows it, or precedes it when the marker stands alone).
          A reply with neither is taken as the answer.
The loop stops at an answer, after ``max_turns`` model calls, when the task's
answer-token budget is spent, or on a failed call. Only the answer is ever parsed:
``reasoning_content`` is not read, and ``<think>`` sections left in ``content`` are cut.
The agent keeps every piece of code it wrote, so the grader can grade the agent's work
when its final answer holds none (``grading.code_to_grade``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.common.client import OpenAIClient
from harness.common.datasets import Task
from harness.agents.tools import SPECS, ToolResult, Toolbox

PROTOCOLS = ("text", "native")

# No instruction below is itself a plausible answer: a small model that echoes instruction text
# (e.g. "write FINAL ANSWER: when you are sure" came back as "FINAL ANSWER: when you are sure.")
# then commits to nothing, and the grader falls back to its work (grading.code_to_grade).
_SYSTEM = {
    ("text", "math"): ("You are a careful problem solver with a Python interpreter. To run code, write one "
                       "```python block and stop there; its output comes back to you. When you are sure, end your "
                       "reply with a last line that starts with FINAL ANSWER: and gives the number."),
    ("text", "code"): ("You are a careful programmer with a Python interpreter. To test code, write one ```python "
                       "block with the code and a few checks, and stop there; its output comes back to you. When "
                       "the code is right, reply with the complete solution (imports, helpers and the function) "
                       "in one ```python block, and end that reply with the line FINAL ANSWER"),
    ("native", "math"): ("You are a careful problem solver. Use the python tool to compute, then call submit "
                         "with the number alone."),
    ("native", "code"): ("You are a careful programmer. Use the python tool to test your code, read_file and "
                         "write_file for files, then call submit with the complete solution: imports, helpers "
                         "and the function."),
}
_FINAL = re.compile(r"^[ \t*#>_]*final answer[ \t*_]*[:\-]?[ \t*_]*", re.I | re.M)  # also **Final Answer:**
_PY_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)[ \t]*\n(.*?)```", re.S | re.I)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)|^.*?</think>", re.S)  # also a reply whose opening tag was in the prompt


@dataclass(frozen=True)
class AgentConfig:
    model: str
    protocol: str = "text"
    max_turns: int = 6
    max_tokens: int = 1024  # answer tokens per task, over all its calls (reasoning tokens not counted)
    max_tokens_per_call: int = 512
    reasoning_budget: int = 0  # extra completion tokens per call for a thinking model's reasoning
    temperature: float = 0.0
    seed: int | None = None
    stream: bool = True
    extra_body: dict = field(default_factory=dict)  # e.g. {"chat_template_kwargs": {"enable_thinking": False}}


@dataclass
class Outcome:
    answer: str | None = None
    answer_source: str | None = None  # submit | final_marker | message | last_message
    stop_reason: str | None = None  # answer | max_turns | max_tokens | error
    error: str | None = None
    turns: int = 0
    reply: str | None = None  # the last reply's answer text (thinking removed)
    code_written: list[str] = field(default_factory=list)  # every piece of code the agent wrote, oldest first
    code_executed: list[str] = field(default_factory=list)  # the code it ran
    llm_calls: list[dict] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        """The answer was given as the answer, not taken from a reply that did not say so."""
        return self.answer_source in ("submit", "final_marker")


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


def without_thinking(text: str) -> str:
    """The answer part of a reply: ``<think>`` sections removed (a server that does not split
    reasoning into ``reasoning_content`` leaves them in ``content``; an unclosed one runs to the end)."""
    return _THINK.sub("", text).strip() if "<think>" in text or "</think>" in text else text


def reasoning_tokens(usage: dict | None, edgemeter: dict | None) -> int | None:
    """Reasoning tokens of one call: OpenAI's ``usage.completion_tokens_details.reasoning_tokens``,
    else the Edgemeter record's ``reasoning_tokens``; None when neither says."""
    for value in (((usage or {}).get("completion_tokens_details") or {}).get("reasoning_tokens"),
                  (edgemeter or {}).get("reasoning_tokens")):
        try:
            if value is not None:
                return int(value)
        except (TypeError, ValueError):
            continue
    return None


async def solve(client: OpenAIClient, toolbox: Toolbox, task: Task, cfg: AgentConfig,
                headers: dict[str, str] | None = None) -> Outcome:
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    out = Outcome(messages=[{"role": "system", "content": _SYSTEM[cfg.protocol, task.kind]},
                            {"role": "user", "content": task_message(task)}])
    msgs = out.messages
    used = 0
    for _ in range(cfg.max_turns):
        budget = cfg.max_tokens - used
        if budget <= 0:
            out.stop_reason = "max_tokens"
            break
        body = {**cfg.extra_body, "model": cfg.model, "messages": msgs, "temperature": cfg.temperature,
                "max_tokens": min(cfg.max_tokens_per_call, budget) + cfg.reasoning_budget, "stream": cfg.stream}
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.protocol == "native":
            body["tools"] = SPECS
        r = await client.chat(body, headers=headers)
        out.turns += 1
        thinking = reasoning_tokens(r.usage, r.edgemeter)
        out.llm_calls.append({**r.record(), "reasoning_tokens": thinking})
        used += (r.completion_tokens or r.chunks) - (thinking or 0)
        if not r.ok:
            out.stop_reason, out.error = "error", r.error
            break
        content = without_thinking(r.content or "")
        out.reply = content
        out.code_written += _PY_BLOCK.findall(content)  # also blocks in a final reply, never run
        if cfg.protocol == "native" and r.tool_calls:
            calls = [{**c, "id": c.get("id") or f"call_{out.turns}_{i}"} for i, c in enumerate(r.tool_calls)]
            msgs.append({"role": "assistant", "content": content or None, "tool_calls": calls})
            for c in calls:
                res = await toolbox.call(c["function"]["name"], c["function"]["arguments"])
                _keep_code(out, res)
                out.tool_calls.append(res.record())
                msgs.append({"role": "tool", "tool_call_id": c["id"], "content": res.observation})
                if res.final_answer is not None:
                    out.answer, out.answer_source = res.final_answer, "submit"
            if out.answer is not None:
                out.stop_reason = "answer"
                break
            continue
        msgs.append({"role": "assistant", "content": content})
        if cfg.protocol == "text":
            final = final_answer(content)
            if final is not None:
                out.answer, out.answer_source, out.stop_reason = final, "final_marker", "answer"
                break
            code = python_code(content)
            if code:
                res = await toolbox.python(code)
                _keep_code(out, res)
                out.tool_calls.append(res.record())
                msgs.append({"role": "user", "content": f"Output:\n{res.observation}"})
                continue
        out.answer, out.answer_source, out.stop_reason = content, "message", "answer"
        break
    else:
        out.stop_reason = "max_turns"
    if out.answer is None:
        # No answer given: the last reply stands in; for code the grader prefers the last code written.
        replies = [m.get("content") for m in msgs if m["role"] == "assistant" and m.get("content")]
        if replies:
            out.answer, out.answer_source = replies[-1], "last_message"
    return out


def _keep_code(out: Outcome, res: ToolResult) -> None:
    if res.code is not None:
        out.code_written.append(res.code)
        if res.name == "python":
            out.code_executed.append(res.code)
