"""Service settings written once: a frozen dataclass field is the single source of a setting's default,
and its flag, environment variable and help live in the field's metadata. `add_config_arguments` derives
the argparse flags from it and `config_from_args` builds the dataclass back from the parsed flags, so a
default is never repeated in argparse.

    @dataclass(frozen=True)
    class Config:
        port: int = setting(50051, "0 picks a free port", env="INTERNVL_ENCODER_PORT")
        limits: Limits = nested(Limits)          # a nested settings dataclass, flags of its own

A flag's value may be in another unit than the field (`scale`: `--max-image-mb 32` sets 32 MiB of bytes)
or parsed by a function (`parse`: "a,b" -> ("a", "b")); `parse` is the flag's argparse type, so bad text is
a usage error naming the flag. With `scale`, the flag's text is a float (or what `parse` makes of it) in the
flag's unit, multiplied by `scale` into the field's. A bool setting is a switch: a False default gets
`--x` (turns it on), a True default must have a `--no-x` flag (turns it off). A field without a setting()
(or nested()) has no flag and keeps its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

_KEY = "internvl_setting"


@dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None  # default: --field-name
    env: str | None = None  # an environment variable that overrides the default
    scale: float | None = None  # a byte count given in a larger unit: field = int(flag value * scale)
    parse: Callable[[str], Any] | None = None  # flag text -> flag value (the field's, unless `scale`)
    choices: tuple[str, ...] | None = None
    secret: bool = False  # a token: never shown in --help or the config's repr


@dataclass(frozen=True)
class Nested:
    """A field holding another settings dataclass (built from its own flags)."""

    cls: type
    defaults: Mapping[str, Any]


def setting(default: Any = MISSING, help: str = "", **kwargs) -> Any:
    """A dataclass field with a flag. No default: the flag is required."""
    spec = Setting(help, **kwargs)
    return field(default=default, repr=not spec.secret, metadata={_KEY: spec})


def nested(cls: type, **defaults: Any) -> Any:
    """A field holding a `cls` settings dataclass; `defaults` replace some of cls's own defaults."""
    return field(default_factory=lambda: cls(**defaults), metadata={_KEY: Nested(cls, defaults)})


def _flag(f: dataclasses.Field, spec: Setting) -> str:
    return spec.flag or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field, spec: Setting) -> str:
    """The flag's own name (flags are unique in a parser, so these are too): args.redis_url for --redis-url."""
    return _flag(f, spec).lstrip("-").replace("-", "_")


def _default(f: dataclasses.Field, overrides: Mapping[str, Any]) -> Any:
    if f.name in overrides:
        return overrides[f.name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _type_of(value: Any) -> Callable[[str], Any] | None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, (int, float)):
        return type(value)
    return None


def _walk(cls: type, overrides: Mapping[str, Any] | None = None):
    """(field, Setting, default) for every flag of cls, nested dataclasses included."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if isinstance(spec, Nested):
            yield from _walk(spec.cls, spec.defaults)
        elif isinstance(spec, Setting):
            yield f, spec, _default(f, overrides or {})


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, env: Mapping[str, str] | None = None) -> None:
    """One flag per setting of `cls`; its default is the field's (or the environment variable's)."""
    env = os.environ if env is None else env
    for f, spec, default in _walk(cls):
        flag = _flag(f, spec)
        dest = _dest(f, spec)
        shown = default
        if spec.env and spec.env in env:
            shown = _from_text(env[spec.env], default, spec)
        if isinstance(default, bool):  # a switch: --x turns on a False default, --no-x off a True one
            if default and not flag.startswith("--no-"):
                raise ValueError(f"{cls.__name__}.{f.name} defaults to True: its flag must be --no-..., not {flag}")
            action = "store_false" if default else "store_true"
            parser.add_argument(flag, dest=dest, action=action, default=shown, help=spec.help)
            continue
        if shown is not MISSING and shown is not None and spec.scale:
            shown = shown / spec.scale  # in the flag's unit
        if isinstance(shown, tuple):
            shown = ",".join(shown)
        kwargs: dict[str, Any] = {"dest": dest, "help": _help(spec, shown)}
        if shown is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = shown
        if spec.choices:
            kwargs["choices"] = list(spec.choices)
        kind = _flag_type(spec, default)
        if kind is not None:
            kwargs["type"] = kind  # bad text: "argument --x: invalid ... value", exit 2
        parser.add_argument(flag, **kwargs)


def _flag_type(spec: Setting, default: Any) -> Callable[[str], Any] | None:
    """Flag text -> value in the flag's unit (None: the text itself)."""
    if spec.parse is not None:
        return spec.parse
    return float if spec.scale else _type_of(default)


def _help(spec: Setting, shown: Any) -> str:
    if shown is MISSING or shown is None or shown == "" or spec.secret:
        return spec.help
    return f"{spec.help} (default: {shown:g})" if isinstance(shown, float) else f"{spec.help} (default: {shown})"


def _from_text(text: str, default: Any, spec: Setting) -> Any:
    """An environment value as the flag would take it, in the field's unit."""
    if isinstance(default, bool) and spec.parse is None:
        return text.strip().lower() in ("1", "true", "yes", "on")
    kind = _flag_type(spec, default)
    try:
        value = kind(text) if kind is not None else text
    except ValueError as exc:
        raise ValueError(f"{spec.env}={text!r}: {exc}") from None
    return value * spec.scale if spec.scale and value is not None else value


def config_from_args(cls: type, args: argparse.Namespace, overrides: Mapping[str, Any] | None = None, **extra: Any):
    """Build `cls` from parsed flags (plus `extra` fields that have no flag, e.g. telemetry settings)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if isinstance(spec, Nested):
            values[f.name] = config_from_args(spec.cls, args, spec.defaults)
        elif isinstance(spec, Setting):
            raw = getattr(args, _dest(f, spec))  # argparse applied the flag's type (string defaults too)
            if spec.scale and raw is not None:
                raw = int(raw * spec.scale)  # scaled settings count bytes
            values[f.name] = raw
    for name, value in (overrides or {}).items():
        values.setdefault(name, value)
    values.update(extra)
    return cls(**values)


def comma_list(text: str) -> tuple[str, ...]:
    """ "a, b,,c" -> ("a", "b", "c")."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def field_default(cls: type, name: str) -> Any:
    """The default of `cls.name`, for tools (internvl-serve up) that must not repeat it."""
    value = _default(next(f for f in dataclasses.fields(cls) if f.name == name), {})
    if value is MISSING:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return value


def field_env(cls: type, name: str) -> str | None:
    """The environment variable that overrides the default of `cls.name` (None: it has none)."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get(_KEY)
    return spec.env if isinstance(spec, Setting) else None
