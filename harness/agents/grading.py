"""Decide whether an answer solves its task.

GSM8K: the number the answer commits to (``####``, ``\\boxed{}``, "final answer ...",
else the last number) equals the reference. MBPP: the code passes the task's asserts
with its ``test_setup_code``. HumanEval: ``check(entry_point)`` passes. Code runs only
in the sandbox.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from fractions import Fraction

from harness.common.datasets import Task
from harness.agents.sandbox import Limits, Sandbox

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+"
_MARKERS = (
    r"####\s*(" + _NUM + ")",
    r"\\boxed\{\s*(" + _NUM + r")\s*\}",
    r"final answer\s*(?:is|:)?\s*[:=]?\s*(" + _NUM + ")",
    r"answer\s*(?:is|:)\s*(" + _NUM + ")",
)
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*)\Z", re.S | re.I)
GRADE_LIMITS = Limits(wall_s=15.0, cpu_s=15.0)


@dataclass
class Grade:
    passed: bool
    extracted: str | None
    detail: str | None = None


def _clean(num: str) -> str:
    return num.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")


def extract_number(text: str | None) -> str | None:
    """The number an answer commits to, normalised (no commas, currency or spaces)."""
    if not text:
        return None
    for pattern in _MARKERS:
        hits = re.findall(pattern, text, re.I)
        if hits:
            return _clean(hits[-1])
    hits = re.findall(_NUM, text)
    return _clean(hits[-1]) if hits else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return False


def extract_code(text: str | None) -> str:
    """The last fenced Python block (or an unclosed one cut by the token limit), else the whole
    text (models often answer with bare code)."""
    if not text:
        return ""
    blocks = _FENCE.findall(text)
    if blocks:
        return blocks[-1]
    unclosed = _OPEN_FENCE.search(text)
    return unclosed.group(1) if unclosed else text.strip("`\n")


def program(task: Task, code: str) -> str:
    """The test program for a code answer."""
    d = task.data
    if task.dataset == "mbpp":
        # the setup code builds test fixtures from the solution's own classes (e.g. task 367), so it follows it
        return "\n".join([code, "", d["test_setup_code"], "", *d["test_list"], ""])
    if task.dataset == "humaneval":
        # The prompt brings its imports and helpers (its stub, docstring only, is valid Python); a whole
        # function from the model then replaces the stub, a bare body completes it.
        whole = re.search(rf"^\s*def\s+{re.escape(d['entry_point'])}\s*\(", code, re.M)
        head = d["prompt"] + "\n" + code if whole else d["prompt"] + code
        return f"{head}\n\n{d['test']}\n\ncheck({d['entry_point']})\n"
    raise ValueError(f"{task.dataset} is not a code task")


def grade(task: Task, answer: str | None, sandbox: Sandbox | None, limits: Limits = GRADE_LIMITS) -> Grade:
    if task.dataset == "gsm8k":
        got = extract_number(answer)
        return Grade(numbers_equal(got, task.data["answer"]), got)
    code = extract_code(answer)
    if not code.strip():
        return Grade(False, "", "no code")
    r = sandbox.run(program(task, code), limits=limits)
    return Grade(r.ok, code, None if r.ok else f"{r.status}: {r.error}")


async def agrade(task: Task, answer: str | None, sandbox: Sandbox | None) -> Grade:
    if task.dataset == "gsm8k":
        return grade(task, answer, None)
    return await asyncio.to_thread(grade, task, answer, sandbox)
