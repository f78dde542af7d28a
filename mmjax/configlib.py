"""Config files, their `get_config(arg)` variants, command-line overrides and the resolved-config JSON.

A config file is a Python module with `get_config(arg: str | None) -> ml_collections.ConfigDict`. The string after
the colon in `configs/vit/digits.py:variant=S/4,steps=500` is the `arg`; `parse_arg` turns it into typed values,
refusing keys the config does not declare. Overrides such as `--config.optim.lr=3e-4` are applied to the *locked*
config, so a misspelt field fails with its name instead of silently creating a new one.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file, variant string or override that cannot be applied; the message names the culprit."""


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"key=value,key2=value2"` into a ConfigDict typed like `defaults`; unknown keys are refused.

    Values are cast to the type of their default (bools accept true/false/1/0); a bare `key` means `key=True`.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config variant key {key!r} in {arg!r}; known: {sorted(defaults)}")
        default = defaults[key]
        value: Any = raw.strip() if sep else True
        if isinstance(default, bool):
            value = str(value).lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        out[key] = value
    return out


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and returns its locked config."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"_mmjax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config(arg) function")
    config = module.get_config(arg or None)
    config.lock()
    return config


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `field.sub=value` overrides (the `--config.` prefix already stripped) to a locked config."""
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form --config.field=value")
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config field {'.'.join(parents[: i + 1])!r} (from --config.{dotted})")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"unknown config field {dotted!r}; fields here: {sorted(node.keys())}")
        current = node[leaf]
        value = _literal(raw)
        if isinstance(current, bool):
            value = str(raw).lower() in ("1", "true", "yes", "on")
        elif isinstance(current, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(current, str) and not isinstance(value, str):
            value = raw
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"--config.{dotted}={raw}: {e}") from None
    return config


def check_known(section: ml_collections.ConfigDict | dict, allowed: Sequence[str], where: str) -> None:
    """Refuses fields of a config section that the consumer does not know (e.g. a misspelt model option)."""
    unknown = sorted(set(section.keys()) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} in config.{where}; allowed: {sorted(allowed)}")


def to_dict(config: ml_collections.ConfigDict | dict) -> dict:
    """Plain nested dict (tuples as lists) for JSON."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def write_json(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the resolved config as `config.json` (what a run actually used, overrides included)."""
    with open(path, "w") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)
