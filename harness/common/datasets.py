"""Benchmark tasks read from the data sets as their authors published them.

GSM8K (test, 1,319), MBPP (the standard test split, task_ids 11-510) and HumanEval
(164). Each loader yields ``Task``s holding what the agent is shown (``prompt``) and
what the grader needs (``data``); ``reference`` is the dataset's own solution, used to
validate the graders. Files come from ``harness.data``, verified against their pinned sha256.
"""
from __future__ import annotations

import gzip
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from harness import data

DATASETS = ("gsm8k", "mbpp", "humaneval")
MBPP_PROMPT_TESTS = ("first", "all")


@dataclass(frozen=True)
class Task:
    dataset: str
    id: str
    prompt: str
    reference: str
    data: dict

    @property
    def kind(self) -> str:
        return "math" if self.dataset == "gsm8k" else "code"


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k(path: Path) -> list[Task]:
    tasks = []
    for i, row in enumerate(_jsonl(path)):
        answer = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        tasks.append(Task("gsm8k", str(i), row["question"], answer, {"answer": answer}))
    return tasks


def _mbpp_entry_point(row: dict) -> str:
    m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(?:math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(", row["test_list"][0])
    return m.group(1) if m else ""


def _mbpp(path: Path, prompt_tests: str = "first") -> list[Task]:
    """``prompt_tests``: ``first`` shows one of the asserts graded on (bigcode-evaluation-harness's
    MBPP prompt, after InCoder), ``all`` shows all three (the MBPP paper's prompt)."""
    if prompt_tests not in MBPP_PROMPT_TESTS:
        raise ValueError(f"prompt_tests must be one of {MBPP_PROMPT_TESTS}")
    tasks = []
    for row in _jsonl(path):
        if not 11 <= row["task_id"] <= 510:
            continue
        name = _mbpp_entry_point(row)
        shown = row["test_list"][:1] if prompt_tests == "first" else row["test_list"]
        prompt = (f"{row['text']}\nWrite a Python function named `{name}`. Your code should pass "
                  + ("this test:\n" if len(shown) == 1 else "these tests:\n") + "\n".join(shown))
        tasks.append(Task("mbpp", str(row["task_id"]), prompt, row["code"],
                          {"test_list": row["test_list"], "test_setup_code": row["test_setup_code"],
                           "entry_point": name}))
    return tasks


def _humaneval(path: Path) -> list[Task]:
    tasks = []
    for row in _jsonl(path):
        prompt = ("Complete this Python function. Reply with the whole function, including its signature.\n"
                  + row["prompt"])
        tasks.append(Task("humaneval", row["task_id"].split("/")[1], prompt, row["prompt"] + row["canonical_solution"],
                          {"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}))
    return tasks


_LOADERS = {"gsm8k": _gsm8k, "mbpp": _mbpp, "humaneval": _humaneval}


def load_with_source(dataset: str, data_dir: str | os.PathLike | None = None, *,
                     mbpp_prompt_tests: str = "first") -> tuple[list[Task], data.Source]:
    """The tasks and the verified file they were read from (``data.DataError`` says how to get a
    missing one); MBPP prompts show its first test, or all with ``mbpp_prompt_tests="all"``."""
    if dataset not in _LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    source = data.resolve(dataset, data_dir)
    if dataset == "mbpp":
        return _mbpp(source.path, mbpp_prompt_tests), source
    return _LOADERS[dataset](source.path), source


def load(dataset: str, data_dir: str | os.PathLike | None = None, *, mbpp_prompt_tests: str = "first") -> list[Task]:
    return load_with_source(dataset, data_dir, mbpp_prompt_tests=mbpp_prompt_tests)[0]


def select(tasks: list[Task], *, limit: int | None = None, ids: list[str] | None = None,
           seed: int | None = None) -> list[Task]:
    """Pick tasks: by ``ids`` (in the order given), else a seeded random sample, else the first ``limit``."""
    if ids:
        by_id = {t.id: t for t in tasks}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"unknown task ids: {', '.join(missing[:10])}")
        tasks = [by_id[i] for i in ids]
    elif seed is not None:
        tasks = random.Random(seed).sample(tasks, len(tasks))
    return tasks[:limit] if limit else tasks
