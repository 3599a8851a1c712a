"""deploy/kubernetes, checked without a cluster: every overlay renders with `kubectl kustomize`, every object
passes the Kubernetes schemas in strict mode (kubernetes-validate), and the manifests agree with our services
and with each other: the commands and environment are accepted by our own parser and configs, probes are on
the ports the services listen on, the decoder reaches the encoders through their headless Service, pods drain
before they are killed, GPUs only in the GPU overlays, non-root read-only containers, every ConfigMap is
rendered and every Secret is one create-secrets.sh makes (with the keys mounted), the NetworkPolicies allow
exactly the documented paths, and create-secrets.sh's certificates and tokens work with our TLS code.

Without kubectl these tests are skipped, unless CI is set or INTERNVL_REQUIRE_KUBECTL=1 (then they fail).
"""

from __future__ import annotations

import base64
import functools
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"  # the schemas checked against (kubectl v1.32's kustomize renders them)
OVERLAYS = ("cpu", "gpu", "gpu-tls")
NAMESPACE = "internvl"
SERVICES = {"encoder": "internvl.v1.VisionEncoderService", "decoder": "internvl.v1.GenerationService"}
IMAGE_UID = 10001
TELEMETRY_FLUSH_S = 5  # a stopping service flushes spans and metrics for at most this long (docs/telemetry.md)
# Environment variables that are not our settings: read by libraries, or expanded into args / other values.
LIBRARY_ENV = {"HF_HOME", "HF_HUB_OFFLINE", "TRITON_CACHE_DIR"}
MANIFEST_ENV = {"MODEL_PATH", "REDIS_URL", "K8S_POD_NAME", "K8S_NAMESPACE"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        message = "kubectl is not on PATH (it renders deploy/kubernetes with its built-in kustomize)"
        if os.environ.get("CI") or os.environ.get("INTERNVL_REQUIRE_KUBECTL") == "1":
            pytest.fail(message + "; CI / INTERNVL_REQUIRE_KUBECTL=1 require it")
        pytest.skip(message + "; set INTERNVL_REQUIRE_KUBECTL=1 to make this a failure")
    return path


@functools.cache
def _render(directory: Path) -> tuple[dict, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(directory: Path) -> list[dict]:
    return list(_render(directory))


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return render(KUBE / "overlays" / overlay)


# ---- reading the rendered objects -----------------------------------------------------------------------


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workload(docs: list[dict], component: str) -> dict:
    (found,) = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return found


def pod_spec(docs: list[dict], component: str) -> dict:
    return workload(docs, component)["spec"]["template"]["spec"]


def container(docs: list[dict], component: str) -> dict:
    (only,) = pod_spec(docs, component)["containers"]
    return only


def pod_templates(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def quantity(text) -> float:
    """A Kubernetes quantity ("500m", "4", "3Gi") or a redis size ("2gb": redis' gb is 1024^3)."""
    text = str(text)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    units |= {"k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """kubelet's $(VAR) expansion: defined variables are replaced, others kept, $$ is a literal $."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REFERENCE.sub(one, text)


def secret_value(name: str, key: str) -> str:
    return f"<secret {name}/{key}>"


def container_env(docs: list[dict], workload_doc: dict, c: dict) -> dict[str, str]:
    """The container's environment as kubelet builds it: envFrom in order, then env in order (each value
    expanded with what is defined before it). Secrets and pod fields become placeholders."""
    maps = {name: cm.get("data", {}) for name, cm in objects(docs, "ConfigMap").items()}
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in maps, f"envFrom ConfigMap {ref} is not rendered"
        env |= {source.get("prefix", "") + k: v for k, v in maps[ref].items()}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            env[item["name"]] = secret_value(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.namespace": workload_doc["metadata"]["namespace"]}.get(path, f"<{path}>")
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref["containerName"] == c["name"]
            kind, resource = ref["resource"].split(".", 1)
            value = quantity(c["resources"][kind][resource]) / quantity(ref.get("divisor", "1"))
            env[item["name"]] = str(math.ceil(value))
        else:
            pytest.fail(f"{item['name']}: unexpected valueFrom {source}")
    return env


def command_line(docs: list[dict], component: str) -> tuple[list[str], dict[str, str]]:
    doc, c = workload(docs, component), container(docs, component)
    env = container_env(docs, doc, c)
    argv = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
    unresolved = [a for a in argv if _REFERENCE.search(a)]
    assert not unresolved, f"{component}: $(VAR) with no such variable: {unresolved}"
    return argv, env


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def container_port(c: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return port


@pytest.fixture
def service_config(monkeypatch):
    """component -> (EncoderConfig | DecoderConfig) of the rendered command, parsed by our own CLI parser
    with the container's environment (the flags' defaults come from it)."""
    from internvl_serve.cli import build_parser
    from internvl_serve.decoder.config import decoder_config_from_args
    from internvl_serve.encoder.config import encoder_config_from_args

    to_config = {"encoder": encoder_config_from_args, "decoder": decoder_config_from_args}

    def build(docs: list[dict], component: str):
        argv, env = command_line(docs, component)
        assert argv[:2] == ["internvl-serve", component]
        for key in list(os.environ):
            if key.startswith(("INTERNVL_", "OTEL_")):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        try:
            args = build_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{component}: `{' '.join(argv)}` is refused by our parser")
        return to_config[component](args, env)  # the config checks its values (exit 2 at start otherwise)

    return build


# ---- schemas --------------------------------------------------------------------------------------------


def test_every_object_passes_the_kubernetes_schemas_in_strict_mode():
    import kubernetes_validate

    for directory in [KUBE / "overlays" / o for o in OVERLAYS] + [KUBE / "model"]:
        for doc in render(directory):
            where = f"{directory.relative_to(KUBE)}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")


def test_each_overlay_renders_the_same_set_of_objects(docs):
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert set(objects(docs, "Deployment")) == {"internvl-redis", "internvl-encoder", "internvl-decoder"}
    assert set(objects(docs, "Service")) == {
        "internvl-redis",
        "internvl-encoder",
        "internvl-decoder",
        "internvl-decoder-headless",
    }
    assert not objects(docs, "Secret"), "no secret material is committed (Secrets are created by the operator)"
    assert not objects(docs, "Namespace"), "`kubectl delete -k` must not delete the namespace (Secrets, model)"


def test_names_labels_and_namespace(docs):
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["namespace"] == NAMESPACE, name
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "internvl-serve", name
    for doc in objects(docs, "Deployment").values():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"} <= set(labels)
        assert matches(doc["spec"]["selector"], labels), doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]


# ---- our services' commands, ports and probes -----------------------------------------------------------


def test_commands_and_environment_are_accepted_by_our_parser_and_configs(docs, service_config):
    for component in SERVICES:
        config = service_config(docs, component)
        c = container(docs, component)
        assert config.host == "0.0.0.0", "in a pod the service must listen on the pod's address"
        assert config.port == container_port(c, "grpc")
        assert config.metrics_port == container_port(c, "metrics")
        assert config.model.startswith("/models/")
        assert (
            config.cache.url
            == f"redis://internvl-redis:{objects(docs, 'Service')['internvl-redis']['spec']['ports'][0]['port']}/0"
        )
        _, env = command_line(docs, component)
        assert env["OTEL_SERVICE_NAME"] == f"internvl-{component}" and config.telemetry.traces_exporters == ("otlp",)
        assert config.num_threads == math.ceil(quantity(c["resources"]["limits"]["cpu"]))
        expected = "cuda" if overlay_is_gpu(docs) else "cpu"
        assert config.device == expected, component
    assert service_config(docs, "decoder").http_port == container_port(container(docs, "decoder"), "http")


def overlay_is_gpu(docs: list[dict]) -> bool:
    return any(
        "nvidia.com/gpu" in c["resources"].get("limits", {})
        for t in pod_templates(docs)
        for c in t["spec"]["containers"]
    )


def _settings_env(cls) -> set[str]:
    from internvl_serve.common.config_fields import _walk

    return {spec.env for _, spec, _ in _walk(cls) if spec.env}


def test_every_environment_variable_is_a_setting_of_that_service_or_known(docs):
    import opentelemetry.sdk.environment_variables as otel_env

    from internvl_serve.decoder.config import DecoderConfig
    from internvl_serve.encoder.config import EncoderConfig

    ours = {"encoder": _settings_env(EncoderConfig), "decoder": _settings_env(DecoderConfig)}
    for component in SERVICES:
        c = container(docs, component)
        argv, env = command_line(docs, component)
        for key in env:
            if key.startswith("INTERNVL_"):
                assert key in ours[component], f"{component}: {key} is not a setting of `internvl-serve {component}`"
            elif key.startswith("OTEL_"):
                assert hasattr(otel_env, key), f"{component}: {key} is no OTel SDK variable"
            else:
                assert key in LIBRARY_ENV | MANIFEST_ENV, f"{component}: unexpected environment variable {key}"
        used = " ".join(c.get("args", []) + [e.get("value", "") for e in c.get("env", [])])
        for key in MANIFEST_ENV:
            assert f"$({key})" in used, f"{component}: {key} is defined but never expanded"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://") and env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(
            ":4317"
        )


def test_probes_ask_grpc_health_on_the_services_ports(docs, overlay, service_config):
    tls = overlay == "gpu-tls"
    for component, service_name in SERVICES.items():
        config = service_config(docs, component)
        c = container(docs, component)
        probes = {kind: c[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        for kind, probe in probes.items():
            where = f"{component} {kind}"
            if not tls:  # kubelet's own grpc.health.v1 probe
                assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, where
                assert probe["grpc"]["port"] == config.port, where
                assert probe["grpc"].get("service", "") == (service_name if kind == "readinessProbe" else ""), where
            elif component == "encoder":  # mutual TLS: our probe script, same port and service names
                command = probe["exec"]["command"]
                assert command[:2] == ["python", "/etc/internvl/probe/tls_health.py"], where
                assert int(command[2]) == config.port, where
                assert command[3:] == ([service_name] if kind == "readinessProbe" else []), where
            else:  # TLS: HTTPS GET /health (503 while loading and draining) on the HTTP API's port
                get = probe["httpGet"]
                assert (get["path"], get["scheme"]) == ("/health", "HTTPS"), where
                assert container_port(c, get["port"]) == config.http_port, where
        assert probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"] >= 300
        # A draining pod answers NOT_SERVING: liveness must not kill it before the drain is over.
        live = probes["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > config.drain_notice_s + config.grace_s, component


def test_pods_get_longer_than_their_drain_before_sigkill(docs, service_config):
    for component in SERVICES:
        config = service_config(docs, component)
        grace = pod_spec(docs, component)["terminationGracePeriodSeconds"]
        assert grace > config.drain_notice_s + config.grace_s + TELEMETRY_FLUSH_S, component
        assert config.drain_notice_s >= 1, f"{component}: clients need a notice before refusals start"


def test_the_encoders_are_behind_a_headless_service_that_selects_only_them(docs):
    service = objects(docs, "Service")["internvl-encoder"]
    assert service["spec"]["clusterIP"] == "None", "headless: DNS answers with every pod, gRPC balances"
    assert not service["spec"].get("publishNotReadyAddresses"), "a loading or draining pod must leave DNS"
    selected = [
        t for t in pod_templates(docs) if matches({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
    ]
    assert selected == [workload(docs, "encoder")["spec"]["template"]]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    c = container(docs, "encoder")
    assert container_port(c, ports["grpc"]["targetPort"]) == ports["grpc"]["port"]


def test_the_decoder_dials_that_service_by_its_dns_name(docs, service_config):
    from internvl_serve.decoder.service.encoder_target import encoder_target

    config = service_config(docs, "decoder")
    target = encoder_target(config.encoders)
    service = objects(docs, "Service")["internvl-encoder"]
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert target == f"dns:///{name}:{grpc_port}"
    assert grpc_port == service_config(docs, "encoder").port


def test_the_decoder_service_exposes_grpc_http_and_metrics_by_name(docs, service_config):
    config = service_config(docs, "decoder")
    service = objects(docs, "Service")["internvl-decoder"]
    assert service["spec"]["type"] == "ClusterIP"
    c = container(docs, "decoder")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: p["port"] for n, p in ports.items()} == {"grpc": 50052, "http": 8000, "metrics": 9464}
    for name, port in ports.items():
        assert port["targetPort"] == name and container_port(c, name) == port["port"]
    assert (config.port, config.http_port, config.metrics_port) == (50052, 8000, 9464)
    assert matches(
        {"matchLabels": service["spec"]["selector"]},
        workload(docs, "decoder")["spec"]["template"]["metadata"]["labels"],
    )
    headless = objects(docs, "Service")["internvl-decoder-headless"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == service["spec"]["selector"]


def test_rolling_updates_scaling_and_disruptions_keep_capacity(docs):
    for component in SERVICES:
        strategy = workload(docs, component)["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}, component
    encoder = workload(docs, "encoder")
    assert "replicas" not in encoder["spec"], "the HorizontalPodAutoscaler owns the encoders' count"
    (hpa,) = objects(docs, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": encoder["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container(docs, "encoder")["resources"]["requests"], "CPU utilization is relative to requests"
    (pdb,) = objects(docs, "PodDisruptionBudget").values()
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert [t for t in pod_templates(docs) if matches(pdb["spec"]["selector"], t["metadata"]["labels"])] == [
        encoder["spec"]["template"]
    ]


def test_gpus_are_asked_for_in_the_gpu_overlays_only(docs, overlay):
    gpus = {
        component: container(docs, component)["resources"]["limits"].get("nvidia.com/gpu")
        for component in (*SERVICES, "embedding-cache")
    }
    if overlay == "cpu":
        assert gpus == {"encoder": None, "decoder": None, "embedding-cache": None}
    else:
        assert gpus == {"encoder": 1, "decoder": 1, "embedding-cache": None}
        assert any(
            v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in pod_spec(docs, "decoder")["volumes"]
        )


def test_redis_is_a_bounded_lru_cache_without_persistence(docs):
    argv, _ = command_line(docs, "embedding-cache")
    assert argv[0] == "redis-server"
    assert flag(argv, "--maxmemory-policy") == "allkeys-lru"
    assert flag(argv, "--save") == "" and flag(argv, "--appendonly") == "no"
    c = container(docs, "embedding-cache")
    assert quantity(flag(argv, "--maxmemory")) < quantity(c["resources"]["limits"]["memory"])
    assert c["readinessProbe"]["exec"]["command"][0] == "redis-cli" and "ping" in c["readinessProbe"]["exec"]["command"]
    assert c["livenessProbe"]["tcpSocket"]["port"] == "redis"
    assert pod_spec(docs, "embedding-cache")["securityContext"]["runAsUser"] != 0


# ---- security: users, file systems, volumes, secrets -----------------------------------------------------


def test_containers_are_non_root_with_a_read_only_root(overlay):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"useradd .*--uid {IMAGE_UID} ", dockerfile) and "ENV HOME=/home/internvl" in dockerfile
    docs = render(KUBE / "overlays" / overlay) + render(KUBE / "model")
    for template in pod_templates(docs):
        spec = template["spec"]
        name = template["metadata"]["labels"]["app.kubernetes.io/component"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "limits" in c["resources"] and "requests" in c["resources"], name
    for component in SERVICES:
        spec = pod_spec(docs, component)
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        writable = {m["mountPath"] for m in container(docs, component)["volumeMounts"] if not m.get("readOnly")}
        emptydirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        mounted = {m["mountPath"]: m["name"] for m in container(docs, component)["volumeMounts"]}
        assert {"/home/internvl", "/tmp"} <= writable and {mounted["/home/internvl"], mounted["/tmp"]} <= emptydirs
        _, env = command_line(docs, component)
        for key in ("HF_HOME", "TRITON_CACHE_DIR"):
            assert env[key].startswith("/home/internvl/"), f"{component}: {key} must be on a writable volume"
        models = next(m for m in container(docs, component)["volumeMounts"] if m["mountPath"] == "/models")
        assert models["readOnly"] is True
        claim = next(v for v in spec["volumes"] if v["name"] == models["name"])["persistentVolumeClaim"]
        assert claim["readOnly"] is True


def operator_secrets() -> dict[str, set[str]]:
    """Secret -> keys, as deploy/kubernetes/create-secrets.sh creates them (`secret NAME KEY=FILE...` lines)."""
    script = (KUBE / "create-secrets.sh").read_text().replace("\\\n", " ")  # join continued lines
    made: dict[str, set[str]] = {}
    for name, pairs in re.findall(r"^  secret (internvl-\S+) (.+)$", script, re.M):
        made[name] = {p.split("=", 1)[0] for p in pairs.split()}
    return made


def test_every_volume_and_reference_is_rendered_or_made_by_create_secrets(overlay):
    """The rule: a ConfigMap or PersistentVolumeClaim a pod uses is rendered (the overlay, or
    deploy/kubernetes/model for the claim); a Secret is one create-secrets.sh makes, with every key used."""
    docs = render(KUBE / "overlays" / overlay)
    config_maps = objects(docs, "ConfigMap")
    claims = objects(render(KUBE / "model"), "PersistentVolumeClaim")
    secrets = operator_secrets()
    assert set(secrets) == {
        "internvl-encoder-tls",
        "internvl-encoder-tokens",
        "internvl-decoder-tls",
        "internvl-decoder-tokens",
    }
    used: set[str] = set()
    for template in pod_templates(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{c['name']}: mounts undefined volume {mount['name']}"
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for item in c.get("env", []):
                ref = item.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["key"] in config_maps[ref["configMapKeyRef"]["name"]]["data"]
                if "secretKeyRef" in ref:
                    used.add(ref["secretKeyRef"]["name"])
                    assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], item["name"]
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume["name"]
            elif "secret" in volume:
                name = volume["secret"]["secretName"]
                used.add(name)
                assert name in secrets, f"Secret {name} is made by no line of create-secrets.sh"
                keys = {i["key"] for i in volume["secret"].get("items", [])} or secrets[name]
                assert keys <= secrets[name], name
            elif "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            else:
                assert set(volume) == {"name", "emptyDir"}, volume
    assert used == (set(secrets) if overlay == "gpu-tls" else set())
    assert "create-secrets.sh" in (ROOT / "docs" / "deploy.md").read_text()


def mounted_file(docs: list[dict], component: str, path: str) -> tuple[str, str]:
    """(Secret, key) that `path` is in the container, or a failure: the service would exit 2 at start."""
    spec, c = pod_spec(docs, component), container(docs, component)
    directory, filename = path.rsplit("/", 1)
    mount = next((m for m in c["volumeMounts"] if m["mountPath"] == directory), None)
    assert mount is not None, f"{component}: {path} is on no mounted volume"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume, f"{component}: {path} is not from a Secret"
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    key = items.get(filename, filename) if items else filename
    assert not items or filename in items, f"{component}: {filename} is not among the volume's items"
    return volume["secret"]["secretName"], key


def test_every_tls_and_token_file_a_service_reads_is_mounted(docs, overlay, service_config):
    secrets = operator_secrets()
    encoder, decoder = service_config(docs, "encoder"), service_config(docs, "decoder")
    files = {
        "encoder": [encoder.tls.cert, encoder.tls.key, encoder.tls.client_ca, encoder.auth_tokens_file],
        "decoder": [
            decoder.tls.cert,
            decoder.tls.key,
            decoder.auth_tokens_file,
            decoder.encoder_tls.ca,
            decoder.encoder_tls.cert,
            decoder.encoder_tls.key,
        ],
    }
    if overlay != "gpu-tls":
        assert all(f is None for paths in files.values() for f in paths) and decoder.encoder_token is None
        return
    for component, paths in files.items():
        for path in paths:
            assert path is not None, f"{component}: a TLS or token setting is missing"
            secret, key = mounted_file(docs, component, path)
            assert key in secrets[secret], (
                f"{component}: {path} -> {secret}/{key}, which create-secrets.sh does not make"
            )
    assert decoder.encoder_token == secret_value("internvl-decoder-tokens", "encoder-token")
    assert mounted_file(docs, "encoder", encoder.tls.cert)[0] == "internvl-encoder-tls"
    assert mounted_file(docs, "decoder", decoder.encoder_tls.cert) == ("internvl-decoder-tls", "client.crt")


# ---- network policies -----------------------------------------------------------------------------------


def allowed(docs: list[dict], source: tuple[dict, dict], destination: str, port_name: str) -> bool:
    """Would a pod with `source` = (pod labels, namespace labels) reach `destination`'s named port?"""
    template = workload(docs, destination)["spec"]["template"]
    labels, ports = (
        template["metadata"]["labels"],
        {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]},
    )
    policies = [p for p in objects(docs, "NetworkPolicy").values() if matches(p["spec"]["podSelector"], labels)]
    assert policies, f"no NetworkPolicy selects {destination}"
    source_labels, source_ns = source
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            rule_ports = [p["port"] for p in rule.get("ports", [])]
            if rule_ports and port_name not in rule_ports and ports[port_name] not in rule_ports:
                continue
            peers = rule.get("from", [])
            for peer in peers or [{}]:
                if not peer:
                    return True
                ns_ok = (
                    matches(peer["namespaceSelector"], source_ns)
                    if "namespaceSelector" in peer
                    else (source_ns.get("kubernetes.io/metadata.name") == policy["metadata"]["namespace"])
                )
                pod_ok = matches(peer["podSelector"], source_labels) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


def test_network_policies_select_existing_pods_and_named_ports(docs):
    templates = pod_templates(docs)
    for policy in objects(docs, "NetworkPolicy").values():
        name = policy["metadata"]["name"]
        selected = [t for t in templates if matches(policy["spec"]["podSelector"], t["metadata"]["labels"])]
        assert selected, f"{name} selects no pod"
        assert policy["spec"]["policyTypes"] == ["Ingress"], name
        names = {p["name"] for t in selected for c in t["spec"]["containers"] for p in c["ports"]}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert port["port"] in names, f"{name}: port {port['port']} is no named port of its pods"
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(matches(peer["podSelector"], t["metadata"]["labels"]) for t in templates), name
    deny = objects(docs, "NetworkPolicy")["internvl-default-deny-ingress"]
    assert not deny["spec"].get("ingress") and all(
        matches(deny["spec"]["podSelector"], t["metadata"]["labels"]) for t in templates
    )


def test_network_policies_allow_exactly_the_documented_paths(docs):
    ns = {"kubernetes.io/metadata.name": NAMESPACE}
    sources = {
        c: (workload(docs, c)["spec"]["template"]["metadata"]["labels"], ns) for c in (*SERVICES, "embedding-cache")
    }
    sources["monitoring"] = ({"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
    sources["client"] = ({"app": "shop"}, {"kubernetes.io/metadata.name": "apps"})
    sources["neighbour"] = ({"app": "other"}, ns)  # another pod of the same namespace
    expected = [
        ("client", "decoder", "grpc", True),
        ("client", "decoder", "http", True),
        ("client", "decoder", "metrics", False),
        ("client", "encoder", "grpc", False),
        ("client", "embedding-cache", "redis", False),
        ("neighbour", "decoder", "grpc", True),
        ("neighbour", "encoder", "grpc", False),
        ("neighbour", "encoder", "metrics", False),
        ("neighbour", "embedding-cache", "redis", False),
        ("decoder", "encoder", "grpc", True),
        ("decoder", "embedding-cache", "redis", True),
        ("encoder", "embedding-cache", "redis", True),
        ("encoder", "encoder", "grpc", False),
        ("embedding-cache", "encoder", "grpc", False),
        ("monitoring", "decoder", "metrics", True),
        ("monitoring", "encoder", "metrics", True),
        ("monitoring", "encoder", "grpc", False),
        ("monitoring", "embedding-cache", "redis", False),
    ]
    for source, destination, port, want in expected:
        assert allowed(docs, sources[source], destination, port) is want, f"{source} -> {destination}:{port}"


# ---- create-secrets.sh: a working PKI and token set -------------------------------------------------------


def _grpc_health_server(key: bytes, cert: bytes, client_ca: bytes):
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    for name in ("", SERVICES["encoder"]):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    return server, port


def test_create_secrets_makes_certificates_and_tokens_our_services_accept(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    import grpc
    from cryptography import x509
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from internvl_serve.common.auth import TokenTable
    from internvl_serve.common.tls import EncoderLinkTls, ServerTls

    env = {
        **os.environ,
        "OUT_DIR": str(tmp_path / "pki"),
        "DRY_RUN": "1",
        "PATH": f"{Path(kubectl()).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", str(KUBE / "create-secrets.sh"), NAMESPACE], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    made = {d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout) if d}
    assert {n: set(d["data"]) for n, d in made.items()} == operator_secrets()
    files = tmp_path / "files"
    paths: dict[tuple[str, str], str] = {}
    for name, secret in made.items():
        assert secret["kind"] == "Secret" and secret["metadata"]["namespace"] == NAMESPACE
        for key, value in secret["data"].items():
            path = files / name / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(value))
            paths[name, key] = str(path)

    def p(secret: str, key: str) -> str:
        return paths[f"internvl-{secret}", key]

    # What each service checks at start (exit 2 otherwise): key pairs, CAs, token files.
    ServerTls(p("encoder-tls", "tls.crt"), p("encoder-tls", "tls.key"), p("encoder-tls", "ca.crt")).credentials()
    ServerTls(p("decoder-tls", "tls.crt"), p("decoder-tls", "tls.key")).credentials()
    link = EncoderLinkTls(p("decoder-tls", "ca.crt"), p("decoder-tls", "client.crt"), p("decoder-tls", "client.key"))
    assert not link.problems()
    service_token = Path(p("decoder-tokens", "encoder-token")).read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", service_token), "INTERNVL_ENCODER_TOKEN is the file's bytes, no newline"
    assert TokenTable.from_file(p("encoder-tokens", "tokens")).lookup(service_token).tenant == "*"
    assert TokenTable.from_file(p("decoder-tokens", "tokens")).lookup(service_token) is None

    # The encoders' certificate carries the name the decoders dial (and localhost, for its own probe).
    docs = render(KUBE / "overlays" / "gpu-tls")
    target = objects(docs, "ConfigMap")
    (encoders,) = [
        cm["data"]["INTERNVL_ENCODERS"] for cm in target.values() if "INTERNVL_ENCODERS" in cm.get("data", {})
    ]
    host = encoders.removeprefix("dns:///").rsplit(":", 1)[0]
    encoder_cert = x509.load_pem_x509_certificate(Path(p("encoder-tls", "tls.crt")).read_bytes())
    names = encoder_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert host in names and "localhost" in names
    decoder_cert = x509.load_pem_x509_certificate(Path(p("decoder-tls", "tls.crt")).read_bytes())
    names = decoder_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"internvl-decoder.{NAMESPACE}.svc.cluster.local" in names and "internvl-decoder" in names

    # A real handshake: an encoder-like server asking for client certificates signed by the CA.
    read = lambda key: Path(p("encoder-tls", key)).read_bytes()  # noqa: E731
    server, port = _grpc_health_server(read("tls.key"), read("tls.crt"), read("ca.crt"))
    try:
        # The decoder's link credentials, checking the certificate against the name it dials.
        options = [("grpc.ssl_target_name_override", host)]
        with grpc.secure_channel(f"localhost:{port}", link.credentials(), options) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICES["encoder"]), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Without a client certificate: refused.
        anonymous = grpc.ssl_channel_credentials(root_certificates=read("ca.crt"))
        with grpc.secure_channel(f"localhost:{port}", anonymous, options) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        # The encoder's own TLS probe, with the pod's environment.
        probe_env = {
            **os.environ,
            "INTERNVL_TLS_CERT": p("encoder-tls", "tls.crt"),
            "INTERNVL_TLS_KEY": p("encoder-tls", "tls.key"),
            "INTERNVL_TLS_CLIENT_CA": p("encoder-tls", "ca.crt"),
        }
        probe = KUBE / "components" / "tls-and-tokens" / "tls_health.py"
        for service, code in (("", 0), (SERVICES["encoder"], 0), ("no.such.Service", 1)):
            result = subprocess.run(
                [sys.executable, str(probe), str(port), service],
                env=probe_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == code, result.stdout + result.stderr
    finally:
        server.stop(0)


# ---- the model volume and the docs ----------------------------------------------------------------------


def test_the_model_volume_is_shared_read_write_many_and_filled_by_a_job():
    docs = render(KUBE / "model")
    (claim,) = objects(docs, "PersistentVolumeClaim").values()
    assert claim["metadata"]["namespace"] == NAMESPACE and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    job = workload(docs, "model-download")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    model_id = next(e["value"] for e in c["env"] if e["name"] == "MODEL_ID")
    compile(c["args"][0], "download-job", "exec")  # the script is Python
    for overlay in OVERLAYS:
        _, env = command_line(render(KUBE / "overlays" / overlay), "decoder")
        assert env["MODEL_PATH"] == "/models/" + model_id.rsplit("/", 1)[-1], "the Job downloads what the services load"


def test_the_deploy_guide_has_a_kubernetes_section():
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("\n## Kubernetes", 1)[1]
    for needle in (
        "kubectl apply -k deploy/kubernetes/overlays/gpu",
        "kubectl apply -k deploy/kubernetes/model",
        "create-secrets.sh",
        "kubernetes.io/metadata.name: monitoring",
        "--tensor-parallel-size",
        "terminationGracePeriodSeconds",
        "InternVL3-78B",
    ):
        assert needle in section, needle
