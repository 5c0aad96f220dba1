"""What every command's expected error must look like (CONTRACT.md, "Command line")."""

from __future__ import annotations

import subprocess


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], command: str, expected: str
) -> None:
    """Exit 1 and one stderr line, `thermostat <command>: error: ...`, with no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"thermostat {command}: error: ") and expected in lines[0]
