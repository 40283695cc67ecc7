"""The code's layering is a contract: import-linter checks `.importlinter` (harness -> proxy ->
backends, never upward; inside the harness, benchmarks over replay over agents and load, all over
the shared helpers)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[dev]')")
    return subprocess.run([exe, "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_layers_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the tree where a backend imports the proxy is rejected."""
    for pkg in ("harness", "proxy", "backends"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    (tmp_path / "backends" / "upward.py").write_text("import proxy.config\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert "backends.upward -> proxy.config" in r.stdout
