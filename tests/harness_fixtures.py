"""Fixtures for the harness tests. The OpenAI-compatible endpoint under test comes from one
place, ``harness_base_url``: $EDGEMETER_TEST_BASE_URL when set (point it at a running
Edgemeter proxy), else llama-cpp-python's own server on SmolLM2 (conftest's ``llama_server``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    d = Path(os.environ.get("EDGEMETER_DATA") or ROOT.parent / "shared" / "data")
    if not (d / "gsm8k").is_dir():
        pytest.skip(f"benchmark data not found at {d}")
    return d


@pytest.fixture(scope="session")
def harness_base_url(request) -> str:
    return os.environ.get("EDGEMETER_TEST_BASE_URL") or request.getfixturevalue("llama_server")
