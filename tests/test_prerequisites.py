"""A missing prerequisite skips a test on a developer's machine, with the reason in the summary,
and fails it under CI, naming what is missing (tests.conftest.require)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require, require_import


def outcome(check, *args) -> tuple[type, str]:
    """The skip or failure ``check`` raises, caught whichever it is (a skip escaping here would
    skip this test instead of failing it)."""
    with pytest.raises(BaseException) as e:
        check(*args)
    return e.type, str(e.value)


def test_require_skips_without_ci_and_fails_with_it(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    require(True, "nothing", "nothing to do")
    assert outcome(require, False, "the widget", "apt-get install widget") == (
        pytest.skip.Exception, "missing the widget: apt-get install widget")
    monkeypatch.setenv("CI", "1")
    require(True, "nothing", "nothing to do")
    assert outcome(require, False, "the widget", "apt-get install widget") == (
        pytest.fail.Exception, "CI is set, so a missing prerequisite fails the run: missing the widget: "
                               "apt-get install widget")


def test_require_import_names_the_import_error(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert require_import("json", "-").dumps(1) == "1"
    kind, message = outcome(require_import, "no_such_module", "pip install it")
    assert kind is pytest.fail.Exception
    assert message.endswith("missing no_such_module (No module named 'no_such_module'): pip install it")


@pytest.mark.parametrize("ci", [None, "1"])
def test_a_data_test_without_its_data_skips_or_under_ci_fails_saying_how_to_fetch(tmp_path, ci):
    """A real data-needing test run with no $EDGEMETER_DATA and an empty cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEMETER_DATA", "CI", "PYTEST_ADDOPTS")}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(ROOT), **({"CI": ci} if ci else {}))
    test = "tests/harness/load/test_load.py::test_gsm8k_prompts_are_the_test_questions_in_a_seeded_order"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    fetch = "fetch it with `python -m harness data fetch --dataset gsm8k`"
    if ci:
        assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout
        assert "CI is set, so a missing prerequisite fails the run: missing benchmark data set gsm8k" in r.stdout
    else:
        assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout
        assert "SKIPPED [1] tests/harness/load/test_load.py" in r.stdout  # -rs: the summary says why
    assert fetch in r.stdout
