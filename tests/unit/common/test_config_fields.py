"""Settings written once: the dataclass field is the only default; flags and environment derive from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from internvl_serve.common.config_fields import add_config_arguments, comma_list, config_from_args, field_env, setting
from internvl_serve.common.embedding_cache import CacheSettings
from internvl_serve.common.telemetry import TelemetrySettings
from internvl_serve.decoder.config import DecoderConfig, add_decoder_arguments, decoder_config_from_args
from internvl_serve.encoder.config import EncoderConfig, MiB, add_encoder_arguments, encoder_config_from_args

SERVICES = [
    (EncoderConfig, add_encoder_arguments, encoder_config_from_args),
    (DecoderConfig, add_decoder_arguments, decoder_config_from_args),
]


def _parse(add, build, argv, env=None):
    parser = argparse.ArgumentParser()
    if env is None:
        add(parser)
    else:
        add_config_arguments(parser, add, env)  # `add` is the config class here
    return build(parser.parse_args(["--model", "m", *argv]), env={})


@pytest.mark.parametrize("config_type, add, build", SERVICES)
def test_no_flags_give_exactly_the_dataclass_defaults(monkeypatch, config_type, add, build):
    for name in (
        "INTERNVL_HOST",
        "INTERNVL_DEVICE",
        "INTERNVL_DTYPE",
        "INTERNVL_REDIS_URL",
        "INTERNVL_ENCODERS",
        "INTERNVL_LOG_LEVEL",
        "INTERNVL_ENCODER_PORT",
        "INTERNVL_DECODER_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    from_flags = _parse(add, build, [])
    from_code = config_type(model="m", telemetry=from_flags.telemetry)
    assert from_flags == from_code
    assert dataclasses.asdict(from_flags.cache) == dataclasses.asdict(CacheSettings())


def test_environment_and_units_reach_the_fields():
    env = {"INTERNVL_HOST": "0.0.0.0", "INTERNVL_REDIS_URL": "redis://r:6379/0", "INTERNVL_ENCODER_PORT": "7000"}
    config = _parse(
        EncoderConfig, encoder_config_from_args, ["--max-image-mb", "1.5", "--redis-timeout-s", "2"], env=env
    )
    assert (config.host, config.port, config.cache.url) == ("0.0.0.0", 7000, "redis://r:6379/0")
    assert config.limits.max_image_bytes == int(1.5 * MiB) and isinstance(config.limits.max_image_bytes, int)
    assert config.cache.op_timeout_s == 2.0 and config.cache.connect_timeout_s == 0.5
    flags_win = _parse(EncoderConfig, encoder_config_from_args, ["--port", "1"], env=env)
    assert flags_win.port == 1


def test_the_decoder_takes_the_same_redis_settings_as_the_encoder():
    config = _parse(
        DecoderConfig,
        decoder_config_from_args,
        [
            "--redis-url",
            "redis://x:1/0",
            "--cache-ttl-s",
            "60",
            "--redis-backoff-s",
            "0.25",
            "--encoder",
            "a:1, b:2",
            "--max-receive-mb",
            "8",
        ],
        env={},
    )
    assert config.cache == CacheSettings(url="redis://x:1/0", ttl_s=60, backoff_s=0.25)
    assert config.encoders == ("a:1", "b:2") and config.max_receive_bytes == 8 * MiB


def test_telemetry_settings_come_from_the_otel_environment_in_the_builder_only():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "INTERNVL_TRACE_CONTENT": "1"}
    parser = argparse.ArgumentParser()
    add_decoder_arguments(parser)
    config = decoder_config_from_args(parser.parse_args(["--model", "m"]), env=env)
    assert config.telemetry.traces_exporters == ("otlp",) and config.telemetry.capture_content
    assert config.telemetry.service_name == "internvl-decoder"
    assert DecoderConfig(model="m").telemetry == TelemetrySettings.off("internvl-decoder")


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"max_batch_tiles": 0}, "--max-batch-tiles"),
        ({"video_workers": 0}, "--video-workers"),
        ({"dtype": "int4"}, "--dtype"),
        ({"cache": CacheSettings(op_timeout_s=0)}, "--redis-timeout-s"),
        ({"grace_s": -1}, "--grace-s"),
        ({"num_threads": -1}, "--num-threads"),
        ({"max_send_bytes": 0}, "--max-send-mb"),
    ],
)
def test_encoder_config_refuses_bad_values_naming_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        EncoderConfig(model="m", **kwargs)


def test_a_parsed_setting_with_bad_text_is_a_usage_error_naming_the_flag(capsys):
    parser = argparse.ArgumentParser(prog="internvl-serve decoder")
    add_decoder_arguments(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--model", "m", "--num-kv-blocks", "abc"])
    assert exit_.value.code == 2
    assert "argument --num-kv-blocks: invalid int value: 'abc'" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class _Units:
    size: int | None = setting(None, "in MiB", scale=MiB, env="X_SIZE")
    parsed: int | None = setting(None, "in MiB, parsed", scale=MiB, parse=float, env="X_PARSED")
    names: tuple[str, ...] = setting(("a",), "a list", parse=comma_list, env="X_NAMES")


@pytest.mark.parametrize("env", [{}, {"X_SIZE": "2", "X_PARSED": "1.5", "X_NAMES": "b, c"}])
def test_flags_and_environment_give_the_field_its_own_unit(env):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Units, env)
    from_env = config_from_args(_Units, parser.parse_args([]))
    if env:
        assert from_env == _Units(size=2 * MiB, parsed=int(1.5 * MiB), names=("b", "c"))
    else:
        assert from_env == _Units()
    flags = config_from_args(_Units, parser.parse_args(["--size", "3", "--parsed", "0.5", "--names", "x,y"]))
    assert flags == _Units(size=3 * MiB, parsed=MiB // 2, names=("x", "y"))


def test_a_switch_on_by_default_must_be_a_no_flag():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        feature: bool = setting(True, "turns the feature off?", flag="--feature")

    @dataclasses.dataclass(frozen=True)
    class Good:
        feature: bool = setting(True, "turn the feature off", flag="--no-feature")
        extra: bool = setting(False, "turn the extra on")

    with pytest.raises(ValueError, match="--no-"):
        add_config_arguments(argparse.ArgumentParser(), Bad, {})
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Good, {})
    assert config_from_args(Good, parser.parse_args([])) == Good()
    assert config_from_args(Good, parser.parse_args(["--no-feature", "--extra"])) == Good(feature=False, extra=True)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["encoder", "--model", "m", "--max-batch-tiles", "0"], "internvl-serve encoder: error: --max-batch-tiles"),
        (["decoder", "--model", "m", "--grace-s", "-1"], "internvl-serve decoder: error: --grace-s must be >= 0"),
    ],
)
def test_a_config_that_fails_validation_is_a_usage_error(argv, words, capsys):
    from internvl_serve.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_field_env_names_the_variable():
    assert field_env(EncoderConfig, "host") == field_env(DecoderConfig, "host") == "INTERNVL_HOST"
    assert field_env(DecoderConfig, "grace_s") is None
