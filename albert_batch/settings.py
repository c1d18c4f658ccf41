"""How settings are declared and read: a field declares its setting once, with its command-line flag's help
text (`setting`); YAML files give settings by name, ``model-actors`` or ``model_actors`` (`load_yaml`); and a
settings class is built from a mapping with a message naming what is unknown, missing or wrong (`build`).
`albert_batch.config` (a batch run) and `albert_batch.training.config` (training) declare theirs this way."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from albert_batch.errors import ConfigError


def setting(default: Any = dataclasses.MISSING, *, help: str, metavar: str | None = None, default_factory: Any = None,
            **flag: Any) -> Any:
    """A settings field with the help text of its command-line flag (``--name-with-dashes``): the CLI builds
    its flags, and the command line that rebuilds a config, from these fields. ``flag`` takes argparse's
    ``type``, ``choices`` and ``action``."""
    metadata = {"help": help, "metavar": metavar, **flag}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text: {err}") from err
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a date that does not exist (2026-02-30)
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    settings = _snake_case_keys(data)
    if isinstance(settings.get("resources"), dict):
        settings["resources"] = _snake_case_keys(settings["resources"])
    return settings


def _snake_case_keys(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """``model-actors`` and ``model_actors`` name the same setting."""
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def build(cls: type, settings: Mapping[str, Any], where: str) -> Any:
    """``cls`` built from ``settings``; a ConfigError names unknown and missing settings of ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if settings.get(name) in (None, "")]
    if missing:
        raise ConfigError(f"missing required {where} setting(s): {', '.join(missing)}")
    try:
        return cls(**settings)
    except TypeError as err:
        raise ConfigError(f"invalid {where}: {err}") from err
