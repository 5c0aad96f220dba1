"""What every command's expected error must look like (CONTRACT.md, "Command line")."""

from __future__ import annotations

import subprocess


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
