"""docker-compose.yml, the Dockerfile and the collector config, checked without a Docker engine: they parse, and
every command, flag, health check and environment variable in them is a real one of ours (or the OTel SDK's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from internvl_serve.cli import build_parser

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR:-default} interpolation, recursively; a variable with no default and no value fails."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        assert default is not None, f"${{{name}}} has no default in docker-compose.yml"
        return default

    return VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw_text) -> dict:
    return interpolate(yaml.safe_load(raw_text), {})


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def our_services(services):
    return {name: s for name, s in services.items() if s.get("command", [""])[0] == "internvl-serve"}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_stack_has_its_services(services):
    assert set(services) == {"redis", "encoder", "decoder", "otel-collector", "jaeger", "prometheus", "grafana"}
    assert set(our_services(services)) == {"encoder", "decoder"}


def test_redis_is_a_bounded_lru_cache_without_persistence(services):
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert re.fullmatch(r"\d+[kmg]b", flag(command, "--maxmemory"))
    assert flag(command, "--maxmemory-policy") == "allkeys-lru"
    assert flag(command, "--save") == "" and flag(command, "--appendonly") == "no"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def subcommand_flags(parser, name: str) -> set[str]:
    """The exact option strings of `internvl-serve NAME` (argparse would also take unambiguous prefixes)."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[name]._option_string_actions)


def test_every_command_of_ours_is_accepted_by_our_parser_and_config(services):
    from internvl_serve.decoder.config import decoder_config_from_args
    from internvl_serve.encoder.config import encoder_config_from_args

    to_config = {"encoder": encoder_config_from_args, "decoder": decoder_config_from_args}
    parser = build_parser()
    for name, service in our_services(services).items():
        argv = service["command"][1:]
        assert argv[0] == name
        unknown = {a for a in argv if a.startswith("--")} - subcommand_flags(parser, name)
        assert not unknown, f"{name}: not flags of `internvl-serve {name}`: {unknown}"
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `internvl-serve {' '.join(argv)}` is refused by our parser")
        config = to_config[name](args)  # the configs validate their values
        assert config.host == "0.0.0.0", "in a container the service must listen on every interface"
        assert config.model.startswith("/models/")


def test_the_model_directory_is_mounted_read_only_where_the_commands_look(services):
    for name, service in our_services(services).items():
        mounts = [v.split(":") for v in service["volumes"]]
        assert ["./models", "/models", "ro"] in mounts, name


def test_health_checks_are_our_own_subcommand_on_each_services_port(services):
    parser = build_parser()
    for name, service in our_services(services).items():
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "internvl-serve", "healthcheck"], name
        args = parser.parse_args(test[2:])
        assert {a for a in test[3:] if a.startswith("--")} <= subcommand_flags(parser, "healthcheck")
        assert args.address == f"127.0.0.1:{flag(service['command'], '--port')}", name
        assert service["stop_grace_period"]  # longer than --grace-s, below


def test_stop_grace_exceeds_the_services_own_drain_time(services):
    for name, service in our_services(services).items():
        grace = float(flag(service["command"], "--grace-s"))
        assert float(service["stop_grace_period"].rstrip("s")) > grace, name


def test_encoders_are_replicated_and_the_decoder_points_at_them(services):
    encoder, decoder = services["encoder"], services["decoder"]
    assert int(encoder["deploy"]["replicas"]) >= 2
    assert "ports" not in encoder  # replicas cannot share a host port
    host, port = flag(decoder["command"], "--encoder").split(":")
    assert host == "encoder" and port == flag(encoder["command"], "--port")
    assert decoder["ports"] == [
        f"50052:{flag(decoder['command'], '--port')}",
        f"8000:{flag(decoder['command'], '--http-port')}",  # the OpenAI-compatible API
    ]
    for name in ("encoder", "decoder"):
        assert flag(services[name]["command"], "--redis-url") == "redis://redis:6379/0"


def test_depends_on_waits_for_health_only_where_a_health_check_exists(services):
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}'s missing healthcheck"
    assert services["decoder"]["depends_on"]["encoder"]["condition"] == "service_healthy"


def _names_in_our_source() -> str:
    return "\n".join(p.read_text() for folder in ("services", "clients") for p in (ROOT / folder).rglob("*.py"))


def test_every_environment_variable_is_read_by_our_code_or_the_otel_sdk(services):
    import opentelemetry.sdk.environment_variables as otel_env

    source = _names_in_our_source()
    seen = set()
    for name, service in our_services(services).items():
        for key in service["environment"]:
            seen.add(key)
            if key.startswith("INTERNVL_"):
                assert f'"{key}"' in source or f"'{key}'" in source, f"{name}: {key} is read by none of our code"
            elif key.startswith("OTEL_"):
                assert hasattr(otel_env, key) or f'"{key}"' in source, f"{name}: {key} is no OTel SDK variable"
            else:
                pytest.fail(f"{name}: unexpected environment variable {key}")
        assert service["environment"]["OTEL_SERVICE_NAME"] == f"internvl-{name}"
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert {"INTERNVL_DEVICE", "INTERNVL_DTYPE", "INTERNVL_LOG_LEVEL"} <= seen


def test_every_compose_variable_is_documented_in_the_header(raw_text):
    header = raw_text.split("\nname:", 1)[0]
    for name in sorted({m.group(1) for m in VARIABLE.finditer(raw_text)}):
        assert re.search(rf"^#\s+{name}\s", header, re.M), f"${{{name}}} is not documented at the top"


def test_every_service_and_command_flag_is_commented(raw_text):
    lines = raw_text.split("\nservices:\n", 1)[1].splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^  [a-z-]+:$", line):  # a service: the line above it is a comment
            assert lines[i - 1].lstrip().startswith("#"), f"service {line.strip()} has no comment above it"
    for name in ("encoder", "decoder"):
        service = raw_text.split(f"\n  {name}:\n", 1)[1].splitlines()
        start = next(i for i, line in enumerate(service) if line.startswith("    command: ["))
        end = next(i for i in range(start, len(service)) if service[i].split("#")[0].rstrip().endswith("]"))
        command_lines = service[start : end + 1]
        flags = [f for line in command_lines for f in re.findall(r'"(--[a-z-]+)"', line.split("#")[0])]
        assert len(flags) >= 4, name
        for flag_name in flags:
            line = next(s for s in command_lines if f'"{flag_name}"' in s)
            assert "#" in line, f"{name}: {flag_name} has no comment"


def test_gpu_reservation_is_offered_commented_out(raw_text):
    assert "#       - driver: nvidia" in raw_text or "#         - driver: nvidia" in raw_text
    assert "capabilities: [gpu]" in raw_text


def test_a_variable_overrides_its_default():
    data = interpolate(yaml.safe_load(COMPOSE.read_text()), {"INTERNVL_MODEL": "tiny", "ENCODER_REPLICAS": "3"})
    assert flag(data["services"]["encoder"]["command"], "--model") == "/models/tiny"
    assert data["services"]["encoder"]["deploy"]["replicas"] == "3"


def test_the_dockerfile_declares_the_build_args_and_copies_what_exists(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    declared = set(re.findall(r"^ARG ([A-Z_]+)", dockerfile, re.M))
    for name in ("encoder", "decoder"):
        assert services[name]["build"]["context"] == "." and services[name]["build"]["dockerfile"] == "Dockerfile"
        assert set(services[name]["build"]["args"]) <= declared
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"}
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert "scripts/install.sh" in dockerfile


def test_the_collector_config_parses_and_every_pipeline_part_is_defined(services):
    volume = services["otel-collector"]["volumes"][0].split(":")
    config_path = ROOT / volume[0]
    assert volume[1] in services["otel-collector"]["command"][0]
    config = yaml.safe_load(config_path.read_text())
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined under {kind}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    jaeger_host = config["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0]
    assert jaeger_host in services and services[jaeger_host]["image"].startswith("jaegertracing/")
    assert any(p.endswith(":16686") for p in services["jaeger"]["ports"])


def test_prometheus_scrapes_each_service_on_its_metrics_port(services, monkeypatch):
    from internvl_serve.decoder.config import decoder_config_from_args
    from internvl_serve.encoder.config import encoder_config_from_args

    to_config = {"encoder": encoder_config_from_args, "decoder": decoder_config_from_args}
    volume = services["prometheus"]["volumes"][0].split(":")
    assert volume[1] in services["prometheus"]["command"][0] and volume[2] == "ro"
    config = yaml.safe_load((ROOT / volume[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    decoder_target = jobs["internvl-decoder"]["static_configs"][0]["targets"]
    encoder_sd = jobs["internvl-encoder"]["dns_sd_configs"][0]  # every replica, by DNS
    scraped = {"decoder": decoder_target[0], "encoder": f"{encoder_sd['names'][0]}:{encoder_sd['port']}"}
    for name, service in our_services(services).items():
        port = service["environment"]["INTERNVL_METRICS_PORT"]
        monkeypatch.setenv("INTERNVL_METRICS_PORT", port)  # the flags' defaults come from the environment
        config = to_config[name](build_parser().parse_args(service["command"][1:]))
        assert str(config.metrics_port) == port
        assert scraped[name] == f"{name}:{port}"
        assert port in service["expose"], f"{name} does not expose its /metrics port {port}"


def test_grafana_provisions_prometheus_and_the_dashboard(services):
    import json

    grafana = services["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and "prometheus" in services
    provider = yaml.safe_load((provisioning / "dashboards" / "internvl-serve.yml").read_text())["providers"][0]
    dashboards = [path for where, path in mounts.items() if where.startswith(provider["options"]["path"] + "/")]
    assert [p.name for p in dashboards] == ["internvl-serve-dashboard.json"]
    dashboard = json.loads(dashboards[0].read_text())  # its queries are checked against real scrapes elsewhere
    assert dashboard["templating"]["list"][0]["query"] == "prometheus"
