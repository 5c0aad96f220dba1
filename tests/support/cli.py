"""Running `thermostat` in tests, and what every command's expected error must look like
(CONTRACT.md, "Command line")."""

from __future__ import annotations

import subprocess
import sys


def thermostat(
    *argv: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGV` in `env`, as a user runs it; its result, whatever it is."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_thermostat(env: dict[str, str], *argv: str) -> str:
    """`python -m monitor ARGV` in `env`, which must succeed; its stdout."""
    done = thermostat(*argv, env=env)
    assert done.returncode == 0, f"thermostat {' '.join(argv)}: {done.stdout}{done.stderr}"
    return done.stdout


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], command: str, expected: str, *, returncode: int = 1
) -> None:
    """One stderr line, `thermostat <command>: error: ...`, with no traceback.

    Expected errors exit 1; argparse usage errors pass `returncode=2`.
    """
    assert result.returncode == returncode, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"thermostat {command}: error: " if command else "thermostat: error: "
    assert lines[0].startswith(prefix) and expected in lines[0], lines[0]
