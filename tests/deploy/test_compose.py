"""deploy/compose.yaml: valid against the Compose Specification's schema and wired as documented.

`docker compose config` needs the compose plugin, which this machine lacks, so
the file is validated against the compose-spec JSON schema that check-jsonschema
ships, and its interpolation is resolved here with compose.env.example.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import DEPLOY, compose, env_file

INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"{name} is required ({arg}) but compose.env.example lacks it")
        return arg or ""

    return INTERPOLATION.sub(resolve, value)


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result: dict[str, Any] = interpolate(compose(), env_file(DEPLOY / "compose.env.example"))
    return result


def test_compose_file_is_valid_against_the_compose_spec(resolved: dict[str, Any]) -> None:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator_class(schema).validate(compose())
    validator_class(schema).validate(resolved)
    broken = {**resolved, "services": {"x": {"image": "a", "depends_on": {"y": {"condition": 1}}}}}
    with pytest.raises(jsonschema.ValidationError):
        validator_class(schema).validate(broken)


def test_every_required_variable_has_an_example(resolved: dict[str, Any]) -> None:
    assert "${" not in yaml.safe_dump(resolved)


def test_services_and_their_order(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert {"postgres", "migrate", "sidecar", "scheduler", "worker", "vllm"} <= set(services)
    assert services["postgres"]["healthcheck"]["test"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, role in (("sidecar", "api"), ("scheduler", "scheduler"), ("worker", "worker")):
        service = services[name]
        assert service["command"][:3] == ["serve", "--role", role], name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["sidecar"]["ports"] == ["8080:8080"]
    assert services["sidecar"]["command"][-2:] == ["--port", "8080"]


def test_build_targets_exist_in_the_dockerfile(resolved: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for name, service in resolved["services"].items():
        build = service.get("build")
        if build:
            assert build["dockerfile"] == "deploy/Dockerfile", name
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
            assert build["target"] in targets, name
            expected = "thermostat-worker" if build["target"] == "worker" else "thermostat-api"
            assert service["image"].split(":")[0] == expected, name


def test_environment_wiring(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    password = env_file(DEPLOY / "compose.env.example")["POSTGRES_PASSWORD"]
    database = f"postgresql+psycopg://thermostat:{password}@postgres:5432/thermostat"
    vllm_port = services["vllm"]["command"][services["vllm"]["command"].index("--port") + 1]
    for name in ("migrate", "sidecar", "scheduler", "worker"):
        assert services[name]["environment"]["THERMOSTAT_DATABASE_URL"] == database, name
    for name in ("sidecar", "scheduler", "worker"):
        env = services[name]["environment"]
        assert env["THERMOSTAT_UPSTREAM_URL"] == f"http://vllm:{vllm_port}/v1", name
        assert env["THERMOSTAT_ADMIN_TOKEN"] and env["THERMOSTAT_FEEDBACK_TOKEN"], name
        mounts = [m for m in services[name]["volumes"] if isinstance(m, dict)]
        (config,) = [m for m in mounts if m["target"] == env["THERMOSTAT_CONFIG"]]
        assert (DEPLOY / config["source"]).is_file()
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password


def test_vllm_serves_raw_logprobs_on_a_gpu(resolved: dict[str, Any]) -> None:
    vllm = resolved["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    command = vllm["command"]
    assert command[command.index("--logprobs-mode") + 1] == "raw_logprobs"
    assert int(command[command.index("--max-logprobs") + 1]) >= 20
    for name in ("vllm", "worker"):
        (device,) = resolved["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"], name
