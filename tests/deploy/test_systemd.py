"""deploy/systemd/: units for a single-host install, checked structurally and by systemd."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from monitor.cli import build_parser
from tests.deploy.manifests import ROOT, SYSTEMD, env_file, unit_sections

ENVIRONMENT_FILE = "/etc/thermostat/thermostat.env"
SERVERS = {"api": "thermostat-api.service", "scheduler": "thermostat-scheduler.service"}
SERVERS["worker"] = "thermostat-worker.service"
UNITS = [*SERVERS.values(), "thermostat-migrate.service"]


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit_sections(path).get(section, []) if k == key]


def exec_start(path: Path) -> list[str]:
    (command,) = values(path, "Service", "ExecStart")
    argv = shlex.split(command)
    assert argv[0] == "/opt/thermostat/.venv/bin/thermostat", path.name
    return argv[1:]


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_as_its_own_user_with_the_environment_file(name: str) -> None:
    path = SYSTEMD / name
    assert values(path, "Service", "EnvironmentFile") == [ENVIRONMENT_FILE]
    assert values(path, "Service", "User") == ["thermostat"]
    assert values(path, "Service", "StateDirectory") == ["thermostat"]
    assert values(path, "Install", "WantedBy") == ["thermostat.target"]
    build_parser().parse_args(exec_start(path))


def test_migration_is_a_oneshot_every_server_requires() -> None:
    migrate = SYSTEMD / "thermostat-migrate.service"
    assert values(migrate, "Service", "Type") == ["oneshot"]
    assert values(migrate, "Service", "RemainAfterExit") == ["yes"]
    assert exec_start(migrate) == ["db", "upgrade"]
    ports = set()
    for role, name in SERVERS.items():
        path = SYSTEMD / name
        args = build_parser().parse_args(exec_start(path))
        assert (args.command, args.role) == ("serve", role)
        ports.add(args.port)
        for key in ("Requires", "After"):
            assert "thermostat-migrate.service" in " ".join(values(path, "Unit", key)), name
        assert values(path, "Service", "Restart") == ["on-failure"]
    assert len(ports) == 3, "each role needs its own port on one host"
    target = " ".join(values(SYSTEMD / "thermostat.target", "Unit", "Wants")).split()
    assert sorted(target) == sorted(UNITS)


def test_environment_file_example_names_the_contract_variables() -> None:
    example = env_file(SYSTEMD / "thermostat.env.example")
    assert example["THERMOSTAT_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert example["THERMOSTAT_UPSTREAM_URL"].endswith("/v1")
    assert {"THERMOSTAT_ADMIN_TOKEN", "THERMOSTAT_FEEDBACK_TOKEN"} <= set(example)


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """systemd's own checker, on copies whose ExecStart points at this checkout's venv."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    thermostat = ROOT / ".venv" / "bin" / "thermostat"
    assert thermostat.exists()
    copies = []
    for path in [*sorted(SYSTEMD.glob("thermostat*.service")), SYSTEMD / "thermostat.target"]:
        copy = tmp_path / path.name
        copy.write_text(
            path.read_text().replace("/opt/thermostat/.venv/bin/thermostat", str(thermostat))
        )
        copies.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *copies], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
