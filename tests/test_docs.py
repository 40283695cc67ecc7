"""The docs hold together: every relative link in README.md and docs/*.md resolves (a file in the
repository, and an ``#anchor`` to one of its Markdown headings, slugged as GitHub does), and every
``python -m ...`` command they show, plus the console scripts pyproject.toml declares, answers
``--help``."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUR_PACKAGES = {"proxy", "backends", "harness", "tests"}

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


# ------------------------------------------------------------------ links

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links reduced to their text) lowercased, every
    character but letters, digits, '_', '-' and spaces dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        s = slug(heading)
        out.add(f"{s}-{seen[s]}" if seen[s] else s)
        seen[s] += 1
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of a Markdown page that do not resolve, each with the reason."""
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[A-Za-z][\w+.-]*:", target):  # http:, https:, mailto: are not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(root.resolve()) or not dest.exists():
            bad.append(f"{page.name}: {target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{page.name}: {target}: no heading with anchor #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(page):
    assert broken_links(page) == []


def test_the_checker_reports_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page: `one` & two\n\n"
        "[fine](other.md) [fine](other.md#twice-1) [fine](#page-one--two) [web](https://example.org/x)\n"
        "[missing file](nothere.md) [missing heading](other.md#three) [escapes the root](../x.md)\n"
        "```\n[in a code block](ignored.md)\n```\n")
    assert broken_links(page, root=tmp_path) == [
        "page.md: nothere.md: no such file in the repository",
        "page.md: other.md#three: no heading with anchor #three",
        "page.md: ../x.md: no such file in the repository",
    ]


@pytest.mark.parametrize("heading, anchor", [
    ("MLX next to llama.cpp", "mlx-next-to-llamacpp"),
    ("Overhead: what the proxy costs", "overhead-what-the-proxy-costs"),
    ("`python -m harness` & co", "python--m-harness--co"),
    ("Network and radio model", "network-and-radio-model"),
])
def test_slug_matches_github(heading, anchor):
    assert slug(heading) == anchor


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(readme.read_text())}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


# ------------------------------------------------------------------ commands

def _shown_code(markdown: str) -> list[str]:
    """The lines of every code block and inline code span, continuation lines joined, with
    shell variables set in a block (H=".venv/bin/python -m harness") expanded in it."""
    lines = []
    for block in FENCE.findall(markdown):
        block = block.replace("\\\n", " ")
        variables = dict(re.findall(r"^(\w+)=\"([^\"]*)\"", block, re.M))
        for name, value in variables.items():
            block = block.replace(f"${name}", value)
        lines += block.splitlines()
    return lines + [span.strip("`") for span in INLINE_CODE.findall(FENCE.sub("", markdown))]


def documented_commands() -> list[tuple[str, ...]]:
    """Module plus subcommand words of every ``python -m`` command shown, deduplicated:
    ``python -m harness bench link --chunks 10`` gives ("harness", "bench", "link")."""
    found = set()
    for page in PAGES:
        for line in _shown_code(page.read_text()):
            for m in re.finditer(r"python -m ([A-Za-z_][\w.]*)((?:[ \t]+[a-z][\w-]*(?=\s|$))*)", line):
                found.add((m.group(1), *m.group(2).split()))
    return sorted(found)


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: name -> "module:function"."""
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section.group(1), re.M))


def _argv(command: tuple[str, ...]) -> list[str]:
    if command[0] == "script":  # the entry point object itself, as the installed script calls it
        module, func = console_scripts()[command[1]].split(":")
        code = f"import sys; from {module} import {func}; sys.argv = [{command[1]!r}, '--help']; sys.exit({func}())"
        return [sys.executable, "-c", code]
    return [sys.executable, "-m", *command, "--help"]


COMMANDS = documented_commands() + [("script", name) for name in sorted(console_scripts())]


@pytest.fixture(scope="module")
def help_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every command's --help, run in parallel from the repository root (each a few tenths of
    a second: imports only)."""
    def run(command):
        return subprocess.run(_argv(command), cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(COMMANDS, pool.map(run, COMMANDS)))


def test_the_docs_show_the_commands_that_matter():
    """The scan finds what the docs show: the two README commands and every benchmark."""
    from harness.bench import BENCHMARKS
    assert {("harness", "quickstart"), ("pytest",), ("proxy",)} <= set(COMMANDS)
    assert {("harness", "bench", name) for name in BENCHMARKS} <= set(COMMANDS)
    assert {("script", "edgemeter"), ("script", "edgemeter-harness")} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_help_exits_0(command, help_runs):
    r = help_runs[command]
    if r.returncode != 0:
        missing = re.search(r"No module named '?([\w.]+)'?", r.stderr)
        if missing and missing.group(1).split(".")[0] not in OUR_PACKAGES:
            reason = f"{' '.join(command)} --help needs {missing.group(1)}, which is not installed"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    assert r.returncode == 0, f"{' '.join(_argv(command))} exited {r.returncode}:\n{r.stderr[-2000:]}"
    assert r.stdout.strip(), "printed no help"
