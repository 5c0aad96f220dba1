"""The command block of docs/operations.md, run as written against a fresh Postgres database.

`thermostat db upgrade`, then one `thermostat serve --role ...` process per role
side by side; each must answer /healthz and /readyz on its port and stop cleanly
on SIGTERM. Only the database URL, the tokens, the ports (free ones) and the
bind address (loopback) are swapped for the test's own. The api and scheduler
processes run with a `torch` that cannot be imported, as in the slim `api` image.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.manifests import documented_block, setting_for
from tests.support.cli import run_thermostat
from tests.support.databases import database_from
from tests.support.servers import free_port

pytestmark = pytest.mark.postgres

TOKENS = {"THERMOSTAT_ADMIN_TOKEN": "ops-admin-token", "THERMOSTAT_FEEDBACK_TOKEN": "ops-feedback"}


def documented_steps() -> tuple[dict[str, str], list[list[str]]]:
    """The block's exported variables, and its `thermostat` commands as argv."""
    exports: dict[str, str] = {}
    commands: list[list[str]] = []
    for line in documented_block():
        words = shlex.split(line)
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                exports[name] = value
        elif words[0] == "thermostat":
            commands.append([w for w in words[1:] if w != "&"])
        else:
            raise AssertionError(f"unexpected line in the tested block: {line!r}")
    return exports, commands


def adapt(argv: list[str]) -> tuple[list[str], int | None]:
    """Loopback and a free port instead of the documented bind; None for non-serving commands."""
    argv = list(argv)
    if argv[0] != "serve":
        return argv, None
    port = free_port()
    for option, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    return argv, port


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with database_from("postgres", None, tmp_path) as url:
        yield url


def test_the_block_is_what_this_test_expects() -> None:
    exports, commands = documented_steps()
    for name in exports:
        setting_for(name)
    assert {"THERMOSTAT_DATABASE_URL", *TOKENS} <= set(exports)
    assert exports["THERMOSTAT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert commands[0] == ["db", "upgrade"]
    roles = [argv[argv.index("--role") + 1] for argv in commands[1:]]
    assert roles == ["api", "scheduler", "worker"]


def wait_until_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> dict[str, int]:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        return {"healthz": health.status_code, "readyz": ready.status_code, **ready.json()}
    raise AssertionError(f"port {port} did not answer: {log.read_text()[-2000:]}")


def test_documented_commands_run_each_role_as_its_own_process(
    database: str, tmp_path: Path
) -> None:
    exports, commands = documented_steps()
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(exports)
    env.update(TOKENS, THERMOSTAT_DATABASE_URL=database, THERMOSTAT_HOME=str(tmp_path / "home"))

    no_torch = tmp_path / "no-torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('not in the api image')\n")

    servers: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
    try:
        for argv in commands:
            argv, port = adapt(argv)
            if port is None:
                run_thermostat(env, *argv)
                continue
            role = argv[argv.index("--role") + 1]
            log = tmp_path / f"{role}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "monitor", *argv],
                    env={**env, "PYTHONPATH": str(no_torch)} if role != "worker" else env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            servers.append((role, port, process, log))

        for role, port, process, log in servers:
            answer = wait_until_ready(port, process, log)
            assert answer["healthz"] == 200, (role, answer)
            assert answer["readyz"] == 200 and answer["status"] == "ready", (role, answer)
            assert answer["role"] == role

        for _, _, process, _ in servers:
            process.send_signal(signal.SIGTERM)
        for role, _, process, log in servers:
            # uvicorn shuts down gracefully, then re-raises the signal it caught
            code = process.wait(timeout=30)
            output = log.read_text()
            assert code in (0, -signal.SIGTERM), f"{role} exited {code}: {output[-2000:]}"
            assert "Application shutdown complete" in output, role
            assert "Traceback" not in output, role
    finally:
        for _, _, process, _ in servers:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
