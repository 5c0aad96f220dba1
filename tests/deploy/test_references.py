"""Everything deploy/ and docs/operations.md name exists in the code.

Every `THERMOSTAT_*` variable is a field of `monitor.settings.Settings`
(nested sections with `__`), every value they set is accepted by it, and every
`thermostat ...` command line parses with the real CLI parser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from monitor.cli import COMMANDS, build_parser
from monitor.settings import load_settings
from tests.deploy import test_compose
from tests.deploy.manifests import (
    DEPLOY,
    ENV_NAME,
    NOT_SETTINGS,
    OPERATIONS,
    ROOT,
    SYSTEMD,
    compose,
    deploy_text_files,
    env_file,
    pod_specs,
    setting_for,
    thermostat_commands,
)


def variables_by_file() -> dict[str, set[str]]:
    found = {}
    for path in deploy_text_files():
        names = set(ENV_NAME.findall(path.read_text())) - NOT_SETTINGS
        if names:
            found[str(path.relative_to(DEPLOY.parent))] = names
    return found


def test_setting_lookup_follows_pydantic_settings() -> None:
    assert setting_for("THERMOSTAT_DATABASE_URL").annotation == SecretStr | None
    assert setting_for("THERMOSTAT_WORKER__DEVICE").default == "auto"
    for wrong in ("THERMOSTAT_PORT", "THERMOSTAT_WORKER__GPU", "THERMOSTAT_HOME__X", "HOME"):
        with pytest.raises(KeyError):
            setting_for(wrong)


def test_every_thermostat_variable_is_a_setting() -> None:
    found = variables_by_file()
    everywhere = set().union(*found.values())
    # the scan sees the files it must: each kind of manifest and the docs
    assert {"deploy/compose.yaml", "deploy/k8s/model-server.yaml", "docs/operations.md"} <= set(
        found
    )
    assert {"THERMOSTAT_UPSTREAM_URL", "THERMOSTAT_WORKER__DEVICE"} <= everywhere
    unknown = {
        f"{file}: {name}"
        for file, names in found.items()
        for name in names
        if not _is_setting(name)
    }
    assert not unknown, f"not settings: {sorted(unknown)}"


def _is_setting(name: str) -> bool:
    try:
        setting_for(name)
    except KeyError:
        return False
    return True


def literal_environments() -> dict[str, dict[str, str]]:
    """Each place that sets THERMOSTAT_* values: compose services, pods, the systemd env file."""
    envs: dict[str, dict[str, str]] = {}
    resolved = test_compose.interpolate(compose(), env_file(DEPLOY / "compose.env.example"))
    for name, service in resolved["services"].items():
        values = service.get("environment") or {}
        envs[f"compose:{name}"] = {k: str(v) for k, v in values.items()}
    for where, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            values = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            envs[f"k8s:{where}:{container['name']}"] = values
    envs["systemd:thermostat.env.example"] = env_file(SYSTEMD / "thermostat.env.example")
    return {
        where: selected
        for where, env in envs.items()
        if (selected := {n: v for n, v in env.items() if n.startswith("THERMOSTAT_")})
    }


@pytest.mark.parametrize("where", sorted(literal_environments()))
def test_the_values_set_are_accepted_by_settings(
    where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = literal_environments()[where]
    for name, value in env.items():
        if name == "THERMOSTAT_CONFIG":
            # the file sits at /etc/thermostat in every deployment; validate ours in its place
            local = tmp_path / "config.yaml"
            local.write_text((DEPLOY / "config.yaml").read_text())
            value = str(local)
        if name == "THERMOSTAT_HOME":
            value = str(tmp_path / "home")
        monkeypatch.setenv(name, value)
    settings = load_settings()
    for name, value in env.items():
        if name not in ("THERMOSTAT_CONFIG", "THERMOSTAT_HOME"):
            field = name.removeprefix("THERMOSTAT_").lower().split("__")
            actual: Any = settings
            for part in field:
                actual = getattr(actual, part)
            if isinstance(actual, SecretStr):  # the tokens and the database URL
                actual = actual.get_secret_value()
            assert str(actual) == value or actual == yaml.safe_load(value), name


def test_example_config_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOSTAT_CONFIG", str(DEPLOY / "config.yaml"))
    settings = load_settings()
    assert settings.config_file.task("default").ece_threshold == 0.15


def structured_command_lines() -> dict[str, list[str]]:
    """Commands given as argument lists: compose `command:` and Kubernetes `args:`."""
    found = {}
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("thermostat-"):
            found[f"compose:{name}"] = [str(word) for word in service["command"]]
    for where, spec in pod_specs():
        for container in spec["containers"]:
            if container["image"].startswith("thermostat-"):
                found[f"k8s:{where}:{container['name']}"] = container["args"]
    return found


def text_command_lines() -> dict[str, list[str]]:
    found = {}
    for path in deploy_text_files():
        for index, argv in enumerate(thermostat_commands(path.read_text())):
            found[f"{path.name}#{index}"] = argv
    return found


def test_command_lines_are_found_in_every_kind_of_file() -> None:
    text = text_command_lines()
    structured = structured_command_lines()
    assert any(k.startswith("operations.md") for k in text)
    assert any(k.startswith("thermostat-api.service") for k in text)
    assert any(k.startswith("compose:") for k in structured)
    assert any(k.startswith("k8s:") for k in structured)
    seen = {tuple(argv[:3]) for argv in [*text.values(), *structured.values()]}
    for role in ("api", "scheduler", "worker"):
        assert ("serve", "--role", role) in seen
    assert ("db", "upgrade") in {argv[:2] for argv in map(tuple, text.values())}


ALL_COMMAND_LINES = sorted({**text_command_lines(), **structured_command_lines()}.items())


@pytest.mark.parametrize(
    ("where", "argv"), ALL_COMMAND_LINES, ids=[where for where, _ in ALL_COMMAND_LINES]
)
def test_every_command_line_parses_with_the_cli(where: str, argv: list[str]) -> None:
    assert argv and argv[0] in COMMANDS, f"{where}: unknown command {argv[:1]}"
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of saying no
        raise AssertionError(f"{where}: `thermostat {' '.join(argv)}` does not parse") from exc


def test_docs_runbook_covers_every_shipped_alert_rule() -> None:
    rules = [
        rule["name"]
        for path in sorted((ROOT / "alerts").glob("*.yaml"))
        for rule in yaml.safe_load(path.read_text())["rules"]
    ]
    assert "ece_above_threshold" in rules
    headings = re.findall(r"^### (.+)$", OPERATIONS.read_text(), re.M)
    for rule in rules:
        assert f"`{rule}`" in headings, f"docs/operations.md has no runbook for {rule}"
    for topic in ("webhook endpoint disabled", "recorder drops", "spool"):
        assert topic in " | ".join(headings).lower(), topic
