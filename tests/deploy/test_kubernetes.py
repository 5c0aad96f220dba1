"""deploy/k8s/: every object valid against the Kubernetes schemas, and wired as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from monitor.config import load_config_file
from monitor.settings import load_settings
from tests.deploy.manifests import K8S, k8s_documents, pod_specs

# The oldest Kubernetes release still supported upstream that these manifests target.
KUBERNETES_VERSION = "1.32.0"

DOCUMENTS = list(k8s_documents())


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def thermostat_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (where, container)
        for where, spec in pod_specs()
        for container in spec["containers"]
        if container["image"].startswith("thermostat-")
    ]


@pytest.mark.parametrize(
    "document",
    [doc for _, doc in DOCUMENTS],
    ids=[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in DOCUMENTS],
)
def test_object_is_valid_against_the_kubernetes_schema(document: dict[str, Any]) -> None:
    # strict: unknown fields (a typo such as `readinesProbe`) fail too
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_object() -> None:
    """Guards the test above against a validator that accepts anything."""
    _, deployment = next((p, d) for p, d in DOCUMENTS if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_expected_objects_exist() -> None:
    assert {"model-server", "thermostat-scheduler", "thermostat-worker"} <= set(
        objects("Deployment")
    )
    assert "thermostat-worker" in objects("CronJob")
    assert "thermostat-migrate" in objects("Job")
    assert {"thermostat-secrets", "thermostat-webhook-secrets"} <= set(objects("Secret"))
    assert "thermostat-config" in objects("ConfigMap")
    assert {"model-server", "thermostat-scheduler", "thermostat-worker"} <= set(objects("Service"))


def test_sidecar_shares_the_model_servers_pod_and_calls_it_on_loopback() -> None:
    spec = objects("Deployment")["model-server"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    vllm, sidecar = containers["vllm"], containers["thermostat"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    args = vllm["args"]
    assert args[args.index("--logprobs-mode") + 1] == "raw_logprobs"
    assert int(args[args.index("--max-logprobs") + 1]) >= 20
    port = args[args.index("--port") + 1]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["THERMOSTAT_UPSTREAM_URL"] == f"http://127.0.0.1:{port}/v1"
    assert sidecar["args"][:3] == ["serve", "--role", "api"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_roles_scheduler_single_replica_workers_on_gpus_and_migration_job() -> None:
    deployments = objects("Deployment")
    scheduler = deployments["thermostat-scheduler"]
    assert scheduler["spec"]["replicas"] == 1
    (container,) = scheduler["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["serve", "--role", "scheduler"]
    assert container["image"].startswith("thermostat-api:")

    always_on = deployments["thermostat-worker"]["spec"]["template"]["spec"]
    cron = objects("CronJob")["thermostat-worker"]["spec"]
    batch = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and batch["restartPolicy"] == "Never"
    (batch_worker,) = batch["containers"]
    assert batch_worker["args"] == ["serve", "--role", "worker", "--until-idle"]
    for spec in (always_on, batch):
        (worker,) = spec["containers"]
        assert worker["args"][:3] == ["serve", "--role", "worker"]
        assert worker["image"].startswith("thermostat-worker:")
        assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1

    job = objects("Job")["thermostat-migrate"]["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    assert migrate["args"] == ["db", "upgrade"]
    assert job["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("where", "container"),
    thermostat_containers(),
    ids=[f"{where}:{c['name']}" for where, c in thermostat_containers()],
)
def test_thermostat_container_probes_resources_and_user(
    where: str, container: dict[str, Any]
) -> None:
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container.get("securityContext", {})
    assert security.get("allowPrivilegeEscalation") is False
    if container["args"][0] != "serve" or "--until-idle" in container["args"]:
        return  # a batch command binds no port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("http") == int(container["args"][container["args"].index("--port") + 1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize(
    ("where", "spec"), list(pod_specs()), ids=[where for where, _ in pod_specs()]
)
def test_pods_run_as_non_root_and_are_scraped_on_the_http_port(
    where: str, spec: dict[str, Any]
) -> None:
    pod_security = spec.get("securityContext", {})
    for container in spec.get("initContainers", []) + spec["containers"]:
        if not container["image"].startswith("thermostat-"):
            continue
        merged = {**pod_security, **container.get("securityContext", {})}
        assert merged.get("runAsNonRoot") is True and merged.get("runAsUser", 0) != 0, where


def test_scrape_annotations_name_the_serving_port() -> None:
    for name, deployment in objects("Deployment").items():
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = [
            p["containerPort"]
            for c in template["spec"]["containers"]
            if c["image"].startswith("thermostat-")
            for p in c["ports"]
            if p["name"] == "http"
        ]
        assert ports == [int(annotations["prometheus.io/port"])], name


def test_services_select_pods_and_target_named_ports() -> None:
    templates = [doc["spec"]["template"] for doc in objects("Deployment").values()]
    for name, service in objects("Service").items():
        selector = service["spec"]["selector"]
        matching = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert len(matching) == 1, f"Service {name} selects {len(matching)} pod templates"
        port_names = {
            p["name"] for c in matching[0]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["name"] == "http"  # what a ServiceMonitor selects
            assert port["targetPort"] in port_names


def test_secret_and_config_references_resolve() -> None:
    secrets = {name: set(doc["stringData"]) for name, doc in objects("Secret").items()}
    configmaps = {name: set(doc["data"]) for name, doc in objects("ConfigMap").items()}
    checked = 0
    for where, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets[ref["name"]], f"{where}: {env['name']}"
                    checked += 1
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] in secrets, where
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, where
    assert checked >= 7


def test_kustomization_lists_every_manifest_and_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # the placeholder Secrets stay out, so that `apply -k` never overwrites the real ones;
    # the always-on workers are the alternative to the CronJob's, applied instead of it
    assert set(kustomization["resources"]) == manifests - {
        "secrets.yaml",
        "worker-deployment.yaml",
    }
    used = {
        c["image"].split(":")[0]
        for _, spec in pod_specs()
        for c in spec.get("initContainers", []) + spec["containers"]
        if c["image"].startswith("thermostat-")
    }
    assert {image["name"] for image in kustomization["images"]} == used


def test_config_map_renders_with_the_webhook_secrets_into_a_valid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs the render-config init container's own command on the ConfigMap's file."""
    template = tmp_path / "template.yaml"
    template.write_text(objects("ConfigMap")["thermostat-config"]["data"]["config.yaml"])
    rendered = tmp_path / "config.yaml"
    secrets = objects("Secret")["thermostat-webhook-secrets"]["stringData"]
    spec = objects("Deployment")["thermostat-scheduler"]["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    command = [sys.executable, *init["command"][1:-2], str(template), str(rendered)]
    assert init["command"][0] == "python"
    env = {**os.environ, **secrets}
    subprocess.run(command, env=env, check=True, timeout=30)

    config = load_config_file(rendered)
    assert [w.secret.get_secret_value() for w in config.webhooks] == list(secrets.values())
    assert "${" not in rendered.read_text()
    assert config.task("math_reasoning").recalibrate_cron
    monkeypatch.setenv("THERMOSTAT_CONFIG", str(rendered))
    assert load_settings().config_file.webhooks
