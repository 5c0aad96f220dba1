"""Readers for the files in deploy/ and docs/operations.md, shared by the deploy tests."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from monitor.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
OPERATIONS = ROOT / "docs" / "operations.md"

ENV_NAME = re.compile(r"\bTHERMOSTAT_[A-Z0-9_]*[A-Z0-9]\b")
# `thermostat WORD ...` as a command: at a line start, after a space, a backtick, `=` or
# a path; not a namespace (`kubectl -n thermostat ...`) nor a path (`thermostat deploy/...`).
COMMAND = re.compile(
    r"(?<!-n)(?:^|[\s`(;&|=])(?:\S*/)?thermostat ([a-z][a-z-]*(?=[\s`]|$)[^`\n)]*)"
)
# Variables of the test harness, not of the product.
NOT_SETTINGS = {"THERMOSTAT_TEST_POSTGRES_URL"}


def deploy_text_files() -> list[Path]:
    """Every file a user reads or runs: manifests, units, examples, the Dockerfile, the docs."""
    files = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file()]
    return [*files, OPERATIONS]


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s/ (the kustomization is not an object)."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path, document


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, document in k8s_documents():
        spec = document.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if template:
            yield f"{path.name}:{document['metadata']['name']}", template["spec"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def setting_for(env_name: str) -> Any:
    """The Settings field an environment variable sets, or raise KeyError naming it.

    Follows pydantic-settings' rules: prefix `THERMOSTAT_`, case-insensitive,
    nested sections joined by `__`.
    """
    if not env_name.startswith(ENV_PREFIX):
        raise KeyError(env_name)
    model: type[BaseModel] = Settings
    parts = env_name[len(ENV_PREFIX) :].lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            raise KeyError(env_name)
        annotation = field.annotation
        if index < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise KeyError(env_name)
            model = annotation
    return field


def unit_sections(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def documented_block() -> list[str]:
    """The shell block of docs/operations.md marked as exercised by the tests."""
    text = OPERATIONS.read_text()
    match = re.search(
        r"<!-- tested-by: tests/deploy/test_operations_commands.py -->\s*```bash\n(.*?)```",
        text,
        re.S,
    )
    assert match, "docs/operations.md lost its tested command block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def thermostat_commands(text: str) -> list[list[str]]:
    """Each `thermostat ...` command line written in a text, as argv (without `thermostat`).

    Reads shell lines and JSON/YAML argument lists that start with `thermostat`
    or a path ending in `/thermostat`; stops at shell operators and comments.
    """
    commands = []
    for line in text.splitlines():
        for match in COMMAND.finditer(line):
            words = []
            for word in shlex.split(match.group(1), comments=True):
                if word in {"&", "&&", ";", "|", "||"} or word.startswith(("&", ";", "|")):
                    break
                words.append(word)
            commands.append(words)
    return commands
