"""argparse usage errors are one line on stderr, exit 2 (CONTRACT.md, "Command line").

argparse's default prints the whole usage block above the message; the
contract wants one line naming the problem, from every parser in the tree.
Run in-process: the parser is the same, and it spares a Python start per case.
"""

from __future__ import annotations

import argparse
import subprocess

import pytest

from monitor import cli
from tests.support.cli import assert_one_line_error

CASES = [
    ([], "", "the following arguments are required: COMMAND"),
    (["bogus"], "", "argument COMMAND: invalid choice: 'bogus'"),
    (["--bogus"], "", "unrecognized arguments: --bogus"),
    (["--bogus", "serve"], "serve", "unrecognized arguments: --bogus"),
    (["serve", "--role", "nope"], "serve", "argument --role: invalid choice: 'nope'"),
    (["serve", "--bogus"], "serve", "unrecognized arguments: --bogus"),
    (["serve", "--port", "eighty"], "serve", "argument --port: not a port number: 'eighty'"),
    (["calibrate"], "calibrate", "required: --task, --model, --data"),
    (
        ["calibrate", "--task", "qa", "--model", "m", "--data", "d", "--holdout", "2"],
        "calibrate",
        "argument --holdout: must be in (0, 1), got 2",
    ),
    (["model-server"], "model-server", "required: --model"),
    (["evaluate", "extra"], "evaluate", "unrecognized arguments: extra"),
    (["db"], "db", "the following arguments are required: ACTION"),
    (["db", "bogus"], "db", "argument ACTION: invalid choice: 'bogus'"),
    (["db", "upgrade", "head", "extra"], "db", "unrecognized arguments: extra"),
]


def run_main(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """main() as a finished process: argparse ends it with SystemExit."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    return subprocess.CompletedProcess(argv, code if isinstance(code, int) else 1, out, err)


@pytest.mark.parametrize(
    ("argv", "command", "expected"), CASES, ids=[" ".join(c[0]) or "none" for c in CASES]
)
def test_usage_error_is_one_line_exit_2(
    argv: list[str], command: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_main(argv, capsys)
    assert_one_line_error(result, command, expected, returncode=2)
    assert result.stdout == ""
    prog = f"thermostat {command}".strip()
    assert result.stderr.rstrip().endswith(f"; see '{prog} --help'")


def test_help_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every parser's help is what plain argparse prints, on stdout, exit 0."""
    argvs = [[], *([name] for name in cli.COMMANDS), ["db", "upgrade"]]
    ours = {}
    for argv in argvs:
        result = run_main([*argv, "--help"], capsys)
        assert result.returncode == 0 and result.stderr == ""
        assert result.stdout.startswith("usage: thermostat")
        ours[tuple(argv)] = result.stdout
    monkeypatch.setattr(cli, "OneLineParser", argparse.ArgumentParser)
    for argv in argvs:
        assert run_main([*argv, "--help"], capsys).stdout == ours[tuple(argv)]
