"""`thermostat serve` and `thermostat db` as users run them: real processes, real ports."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from monitor.db import migrate
from monitor.db.engine import build_engine
from tests.recorder.helpers import spool_held_elsewhere
from tests.support.cli import assert_one_line_error, thermostat
from tests.support.databases import postgres_url
from tests.support.servers import free_port


def wait_ready(port: int, process: subprocess.Popen[str], timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("serve did not answer in time")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    values["THERMOSTAT_HOME"] = str(tmp_path / "home")
    return values


def test_serve_on_embedded_sqlite_is_ready(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        response = wait_ready(port, process)
        assert response.status_code == 200 and response.json()["status"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        for probe in ("healthz", "readyz"):  # as load balancers probe
            head = httpx.head(f"http://127.0.0.1:{port}/{probe}")
            assert (head.status_code, head.content) == (200, b""), probe
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
        assert (tmp_path / "home" / "thermostat.db").exists()
        assert_idle_connection_kept(port, idle_s=6.5)
    finally:
        process.terminate()
        process.wait(timeout=20)


def assert_idle_connection_kept(port: int, idle_s: float) -> None:
    """A keep-alive connection idle longer than uvicorn's own 5 s default still serves.

    A server that closes idle connections before its clients (httpx and the
    openai SDK keep them 5 s, load balancers 60 s) races their next request.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() == b'{"status":"ok"}'
        sock = connection.sock
        time.sleep(idle_s)
        connection.request("GET", "/healthz")  # on the same socket: a closed one raises
        assert connection.getresponse().status == 200 and connection.sock is sock
    finally:
        connection.close()


def test_serve_refuses_unmigrated_postgres_until_db_upgrade(
    env: dict[str, str], empty_db_url: str, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("SQLite migrates itself on start")
    env["THERMOSTAT_DATABASE_URL"] = empty_db_url
    refused = thermostat("serve", "--port", str(free_port()), env=env)
    assert refused.returncode == 1
    assert "run `thermostat db upgrade` first" in refused.stderr
    assert "Traceback" not in refused.stderr
    upgraded = thermostat("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    engine = build_engine(empty_db_url)
    try:
        head = migrate.head_revision(engine)
    finally:
        engine.dispose()
    assert thermostat("db", "current", env=env).stdout.startswith(f"{head} (head)")
    assert thermostat("db", "check", env=env).returncode == 0


def test_serve_refuses_public_bind_without_tokens(env: dict[str, str]) -> None:
    result = thermostat("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert "refusing to bind 0.0.0.0 without THERMOSTAT_ADMIN_TOKEN" in result.stderr


def test_bad_config_refused_at_start(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("tasks:\n  t:\n    recalibrate_cron: 'not a cron'\n")
    env["THERMOSTAT_CONFIG"] = str(config)
    result = thermostat("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and "recalibrate_cron" in lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [("foo://", "only sqlite and postgresql"), ("not a url", "not a valid SQLAlchemy URL")],
)
def test_bad_database_url_is_one_line(env: dict[str, str], url: str, expected: str) -> None:
    env["THERMOSTAT_DATABASE_URL"] = url
    result = thermostat("db", "current", env=env)
    assert result.returncode == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_postgres_is_one_line(env: dict[str, str]) -> None:
    env["THERMOSTAT_DATABASE_URL"] = postgres_url("thermostat_no_such_database")
    result = thermostat("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 1 and "cannot reach the database" in result.stderr


def test_every_command_has_help(env: dict[str, str]) -> None:
    from monitor.cli import COMMANDS

    for name in COMMANDS:
        result = thermostat(name, "--help", env=env)
        assert result.returncode == 0 and "usage: thermostat" in result.stdout


@pytest.mark.parametrize(
    ("name", "url", "expected"),
    [
        ("UPSTREAM_URL", "http://", "upstream_url: has no host"),
        ("UPSTREAM_URL", "http://host:abc/v1", "upstream_url: not a valid URL"),
        ("MODEL_ADMIN_URL", "http://", "model_admin_url: has no host"),
        ("MODEL_ADMIN_URL", "http://host:abc", "model_admin_url: not a valid URL"),
    ],
)
def test_bad_upstream_url_is_one_line(
    env: dict[str, str], name: str, url: str, expected: str
) -> None:
    env[f"THERMOSTAT_{name}"] = url
    result = thermostat("serve", "--port", str(free_port()), env=env)
    assert_one_line_error(result, "serve", f"invalid settings: {expected}")


@pytest.mark.parametrize("role", ["all", "scheduler"])
def test_missing_alert_rules_are_one_line(env: dict[str, str], role: str) -> None:
    env["THERMOSTAT_ALERT_RULES"] = "/nonexistent"
    result = thermostat("serve", "--role", role, "--port", str(free_port()), env=env)
    assert_one_line_error(result, "serve", "alert rules /nonexistent does not exist")


def test_unreadable_alert_rules_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [\n")
    env["THERMOSTAT_ALERT_RULES"] = str(rules)
    result = thermostat("serve", "--port", str(free_port()), env=env)
    assert_one_line_error(result, "serve", f"alert rules file {rules} cannot be read")


def test_unknown_log_level_is_one_line(env: dict[str, str]) -> None:
    env["THERMOSTAT_LOG_LEVEL"] = "bogus"
    result = thermostat("serve", "--port", str(free_port()), env=env)
    assert_one_line_error(result, "serve", "invalid settings: log_level: ")


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "eighty"])
def test_port_out_of_range_is_a_usage_error(
    port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """70000 used to bind port 4464 (70000 - 65536) without a word."""
    import uvicorn

    from monitor.cli import main

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve got as far as binding a port")

    monkeypatch.setattr(uvicorn, "run", refuse)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", port])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("thermostat serve: error: argument --port")


@pytest.mark.parametrize("role", ["all", "api", "scheduler"])
def test_until_idle_without_the_worker_role_is_a_usage_error(
    role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--role", role, "--until-idle"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "thermostat serve: error: --until-idle runs the worker role only: add --role worker; "
        "see 'thermostat serve --help'"
    )


def test_empty_upstream_url_means_not_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    monkeypatch.setenv("THERMOSTAT_UPSTREAM_URL", "")
    monkeypatch.setenv("THERMOSTAT_MODEL_ADMIN_URL", " ")
    assert main(["evaluate", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False  # the worker's resolve_device then finds no CUDA either
    return bool(torch.cuda.is_available())


@pytest.mark.parametrize("role", ["worker", "all"])
def test_worker_device_cuda_without_cuda_is_refused_at_start(
    env: dict[str, str], role: str
) -> None:
    """It used to start, then fail every job with a ValueError until it gave up."""
    if _cuda_available():
        pytest.skip("CUDA is available here: the device is fine")
    env["THERMOSTAT_WORKER__DEVICE"] = "cuda"
    result = thermostat("serve", "--role", role, "--port", str(free_port()), env=env)
    assert_one_line_error(
        result, "serve", "worker.device: device 'cuda' requested but CUDA is not available"
    )


def test_api_role_skips_the_device_check_and_never_imports_torch(env: dict[str, str]) -> None:
    env["THERMOSTAT_WORKER__DEVICE"] = "cuda"
    code = (
        "import sys\n"
        "from monitor.cli import main\n"
        "try:\n"
        "    main(['serve', '--role', 'api', '--host', '0.0.0.0', '--port', '1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert "refusing to bind 0.0.0.0" in result.stderr  # the next check, not the device's
    assert "worker.device" not in result.stderr
    assert result.stdout.strip() == "False"


def test_serve_refuses_a_spool_another_process_uses(env: dict[str, str], tmp_path: Path) -> None:
    env.update(THERMOSTAT_ADMIN_TOKEN="a", THERMOSTAT_FEEDBACK_TOKEN="f")  # no warning line
    env["THERMOSTAT_RECORDER__SPOOL_CLAIM_WAIT_S"] = "1.5"
    spool = tmp_path / "home" / "spool"
    started = time.monotonic()
    with spool_held_elsewhere(spool):
        result = thermostat("serve", "--port", str(free_port()), env=env)
    assert time.monotonic() - started >= 1.5  # it waited as long as it was told
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"thermostat serve: error: another thermostat process is using the spool at "
        f"{spool.resolve()}; give each api process its own THERMOSTAT_HOME"
    ]


@pytest.mark.parametrize("role", ["scheduler", "worker"])
def test_roles_without_a_recorder_leave_the_spool_alone(
    env: dict[str, str], tmp_path: Path, role: str
) -> None:
    port = free_port()
    with spool_held_elsewhere(tmp_path / "home" / "spool"):
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "serve", "--role", role, "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_ready(port, process).status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=20)
