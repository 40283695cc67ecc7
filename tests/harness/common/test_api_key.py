"""Keys stay off command lines: every harness command that calls an API reads OPENAI_API_KEY, and
``--api-key`` still works but warns that any process can read it."""
import pytest

from harness.agents import run
from harness.load import generator

PARSERS = {"run": (run.build_parser, ["--dataset", "gsm8k", "--out", "x"]), "load": (generator.build_parser, [])}


@pytest.mark.parametrize("command", PARSERS)
def test_key_comes_from_the_environment_silently(command, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    build, required = PARSERS[command]
    assert build().parse_args(required).api_key == "sk-from-env"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", PARSERS)
def test_key_on_the_command_line_warns(command, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    build, required = PARSERS[command]
    assert build().parse_args([*required, "--api-key", "sk-argv"]).api_key == "sk-argv"
    err = capsys.readouterr().err
    assert "warning: --api-key" in err and "OPENAI_API_KEY" in err and "sk-argv" not in err
